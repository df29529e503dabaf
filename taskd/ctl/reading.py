"""The commands that read: list, show, executions, modules, and the log (`-f` follows a
run or the whole task)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from contextlib import aclosing
from typing import Any

from taskd.ctl.client import LOG_PAGE, PAGE, Client, Event, UnreachableError, task_path
from taskd.ctl.output import (
    Output,
    compact_json,
    duration_text,
    progress_text,
    seconds_between,
    status_text,
    utc_time,
)
from taskd.preview import EXPLAIN_HEADERS, explain_rows

# ---------------------------------------------------------------------------------------
# Commands: reading


async def list_tasks(client: Client, out: Output, every: bool = False) -> None:
    """`list`: the tasks the caller owns and the config tasks, sorted by name; with
    `every` (`--all`, for an admin: the trusted socket, or a key with the scope admin)
    every owner's."""
    tasks: list[dict[str, Any]] = []
    count = 0
    while True:
        query: dict[str, str | int] = {"limit": PAGE, "offset": len(tasks), "sort_by": "name"}
        if every:
            query["all"] = "true"
        page = await client.call("GET", "/tasks", query=query)
        tasks += page["tasks"]
        count = page["count"]
        if not page["tasks"] or len(tasks) >= count:
            break
    if out.json:
        out.document({"count": count, "tasks": tasks})
        return
    rows = [
        [
            task["name"],
            task["id"],
            # A retired config task left the file: what it did last matters less than that.
            "retired" if task.get("retired") else task.get("status", "-"),
            task.get("task_module", "-"),
            utc_time(task.get("next_run_at"))
            if task.get("enabled", True) and not task.get("retired")
            else "disabled",
            utc_time(task.get("run_started_at")),
        ]
        for task in tasks
    ]
    headers = ["NAME", "ID", "STATUS", "MODULE", "NEXT RUN", "LAST RUN"]
    if every:  # whose each task is matters once they are not all the caller's
        headers.append("OWNER")
        for row, task in zip(rows, tasks, strict=True):
            row.append(str(task.get("user") or "-"))
    out.table(headers, rows)


async def next_runs(client: Client, out: Output, name: str, count: int) -> None:
    """`next`: the task's next fire times, with the slots daylight-saving time moved or
    doubled marked."""
    answer = await client.call("GET", task_path(name, "next_runs"), query={"count": count})
    if out.json:
        out.document(answer)
        return
    runs = answer["next_runs"]
    if not runs:
        out.note("the task has no schedule that fires again")
        return
    out.table(EXPLAIN_HEADERS, explain_rows(runs))


async def show_task(client: Client, out: Output, name: str) -> None:
    """`show`: one task, all of its definition and its latest execution."""
    task = await client.call("GET", task_path(name))
    if out.json:
        out.document(task)
        return
    options = task.get("options") or {}
    recipients = (task.get("email") or {}).get("recipients") or []
    items = [
        ("name", task["name"]),
        ("id", task["id"]),
        ("source", task.get("source", "-")),
        *(
            [("retired", f"{utc_time(task.get('retired_at'))}: it left the config file")]
            if task.get("retired")
            else []
        ),
        ("module", task.get("task_module", "-")),
        ("status", status_text(task)),
        ("description", task.get("comment") or "-"),
        ("params", compact_json(task.get("task_params", {}))),
        ("schedules", "\n".join(compact_json(s) for s in task.get("schedules", [])) or "none"),
        ("enabled", "yes" if task.get("enabled", True) else "no"),
        ("next run", utc_time(task.get("next_run_at"))),
        ("last run", _last_run(task)),
        ("timeout", f"{task['task_timeout_sec']} s" if task.get("task_timeout_sec") else "none"),
        ("options", " ".join(f"{k}={v}" for k, v in sorted(options.items()))),
        (
            "email",
            ", ".join(
                r["email"] + (" (problems only)" if r.get("problems_only") else "")
                for r in recipients
            )
            or "none",
        ),
    ]
    for key in ("workflow_type", "workflow_action"):
        if key in task:
            items.append((key.replace("_", " "), str(task[key])))
    for key in ("metadata", "frontend_prefs", "state"):
        if task.get(key):
            items.append((key.replace("_", " "), compact_json(task[key])))
    items += [
        ("version", str(task.get("version", "-"))),
        ("created", f"{utc_time(task.get('created_at'))} by {task.get('created_by', '-')}"),
        ("updated", f"{utc_time(task.get('updated_at'))} by {task.get('updated_by', '-')}"),
    ]
    execution = task.get("last_execution")
    if execution:
        items.append(("last execution", _execution_summary(execution)))
    out.pairs(items)


def _last_run(task: Mapping[str, Any]) -> str:
    started = task.get("run_started_at")
    if not started:
        return "never"
    finished = task.get("run_finished_at")
    if not finished:
        return f"{utc_time(started)} ({'paused' if task.get('status') == 'paused' else 'running'})"
    return f"{utc_time(started)} ({duration_text(seconds_between(started, finished))})"


def _execution_summary(execution: Mapping[str, Any]) -> str:
    parts = [f"{execution['id']}", execution.get("trigger", "-"), status_text(execution)]
    if execution.get("started_at"):
        parts.append(f"started {utc_time(execution['started_at'])}")
    progress = progress_text(execution)
    if progress != "-":
        parts.append(f"progress {progress}")
    return ", ".join(parts)


async def list_executions(client: Client, out: Output, name: str, limit: int | None) -> None:
    """`executions`: a task's executions, newest first."""
    query = {} if limit is None else {"limit": limit}
    answer = await client.call("GET", task_path(name, "executions"), query=query)
    if out.json:
        out.document(answer)
        return
    rows = [
        [
            e["id"],
            e.get("status", "-"),
            e.get("trigger", "-"),
            utc_time(e.get("scheduled_for")),
            utc_time(e.get("started_at")),
            duration_text(seconds_between(e.get("started_at"), e.get("finished_at"))),
            progress_text(e),
            e.get("status_msg", ""),
        ]
        for e in answer["executions"]
    ]
    headers = ["ID", "STATUS", "TRIGGER", "SCHEDULED", "STARTED", "DURATION", "PROGRESS", "MESSAGE"]
    out.table(headers, rows)


async def list_modules(client: Client, out: Output) -> None:
    """`modules`: the modules tasks can use, with their params."""
    answer = await client.call("GET", "/modules")
    if out.json:
        out.document(answer)
        return
    rows = []
    for module in answer["modules"]:
        params = ", ".join(
            p["name"] + ("*" if p.get("required") else "") for p in module.get("params", [])
        )
        description = module.get("description") or {}
        text = description.get("en-US") or next(iter(description.values()), "")
        rows.append([module["name"], params or "-", text])
    out.table(["MODULE", "PARAMS (* required)", "DESCRIPTION"], rows)


# ---------------------------------------------------------------------------------------
# Commands: logs


async def show_log(
    client: Client,
    out: Output,
    name: str,
    *,
    follow: bool,
    execution: int | None,
    every_execution: bool,
    offset: int | None,
    limit: int | None,
    lines: int | None = None,
) -> None:
    """`log`: the log of the task's current execution (see `current_execution`), or of
    `execution`, or of every kept one, from the task's log line `offset` (at most `limit`
    lines from there, or the last `lines`).

    With `follow` and `execution`: that run's lines as they come, until it ends. With
    `follow` alone, like `journalctl -f`: the current run's lines (its last `lines`, or
    from `offset`; every kept line with `every_execution`), then every following run's
    as they come, each run under a header line, until interrupted.
    """
    if follow and execution is None:
        await _follow_task(client, out, name, every_execution, offset, lines)
        return
    if execution is None and not every_execution:
        execution = await current_execution(client, name)
        if execution is None and not follow:
            return  # it never ran: an empty log
    query: dict[str, str | int] = {"offset": offset or 0}
    if execution is not None:
        query["execution_id"] = execution
    show_execution = every_execution
    if follow:
        if lines is not None and offset is None:
            tail = await _read_log(client, name, dict(query), None, lines)
            if tail:
                query["offset"] = tail[0]["idx"]
        await _follow_execution(client, out, name, query, show_execution)
        return
    entries = await _read_log(client, name, query, limit, lines)
    if out.json:
        out.document({"entries": entries})
        return
    for entry in entries:
        out.line(_log_line(entry, show_execution))


async def _read_log(
    client: Client,
    name: str,
    query: dict[str, str | int],
    limit: int | None,
    lines: int | None = None,
) -> list[dict[str, Any]]:
    """The log entries `query` selects: the first `limit`, or the last `lines`, or all."""
    entries: deque[dict[str, Any]] = deque(maxlen=lines)
    count = 0
    while limit is None or count < limit:
        want = LOG_PAGE if limit is None else min(LOG_PAGE, limit - count)
        page = await client.call("GET", task_path(name, "log"), query={**query, "limit": want})
        entries.extend(page["entries"])
        count += len(page["entries"])
        if len(page["entries"]) < want:
            break
        query["offset"] = page["entries"][-1]["idx"] + 1
    return list(entries)


_ACTIVE = frozenset({"running", "paused"})


async def current_execution(client: Client, name: str) -> int | None:
    """The execution `log` shows by default: the newest running or paused one, else the
    newest one that is not a skipped slot (a run just asked for may still be queued), else
    the newest; None if the task has none.

    (The task's `last_execution` is the latest that started, and a slot skipped while a run
    goes on is newer than the run: neither is what "the log of the task" means.)
    """
    answer = await client.call("GET", task_path(name, "executions"), query={"limit": 50})
    executions = answer["executions"]
    for wanted in (
        lambda e: e.get("status") in _ACTIVE,
        lambda e: e.get("status") != "skipped",
        lambda e: True,
    ):
        found = next((e for e in executions if wanted(e)), None)
        if found is not None:
            return int(found["id"])
    return None


async def _follow_execution(
    client: Client, out: Output, name: str, query: dict[str, str | int], show_execution: bool
) -> None:
    """Print one execution's lines as they come (`follow=execution`) until it ends."""
    stream = client.events(task_path(name, "log"), {**query, "follow": "execution"})
    async with aclosing(stream) as events:
        async for event in events:
            if out.json:
                out.json_line(event.data)
            elif event.kind == "log":
                out.line(_log_line(event.data, show_execution))
            if event.kind == "end":
                return
            _check_shutdown(client, event)
    raise UnreachableError(f"the daemon at {client.endpoint} ended the log stream early")


async def _follow_task(
    client: Client,
    out: Output,
    name: str,
    every_execution: bool,
    offset: int | None,
    lines: int | None,
) -> None:
    """Print the task's log from where `show_log` says, then every run's lines as they
    come (`follow=task`), a header line before each run's; until interrupted."""
    query: dict[str, str | int] = {"follow": "task"}
    if offset is not None:
        query["offset"] = offset
    elif lines is not None:
        # Without an offset the server starts at the current run's first line; its last
        # `lines` (or the whole log's) start further on.
        selection: dict[str, str | int] = {"offset": 0}
        if not every_execution:
            current = await current_execution(client, name)
            if current is not None:
                selection["execution_id"] = current
        if every_execution or "execution_id" in selection:
            tail = await _read_log(client, name, selection, None, lines)
            if tail:
                query["offset"] = tail[0]["idx"]
    elif every_execution:
        query["offset"] = 0
    runs: dict[str, Mapping[str, Any]] = {}  # announced executions, by id
    shown: str | None = None  # the run of the last line printed
    stream = client.events(task_path(name, "log"), query)
    async with aclosing(stream) as events:
        async for event in events:
            _check_shutdown(client, event)
            if out.json:
                out.json_line({"event": event.kind, "data": event.data})
                continue
            if event.kind == "execution":
                runs[str(event.data.get("id"))] = event.data
            elif event.kind == "log":
                run = event.data.get("execution_id")
                if run is not None and run != shown:
                    out.line(_run_header(run, runs.get(run, {})))
                    shown = run
                out.line(_log_line(event.data, False))
    raise UnreachableError(f"the daemon at {client.endpoint} ended the log stream early")


def _check_shutdown(client: Client, event: Event) -> None:
    if event.kind == "shutdown":
        raise UnreachableError(
            f"the daemon at {client.endpoint} is shutting down: the log stream ended"
        )


def _run_header(execution_id: str, execution: Mapping[str, Any]) -> str:
    """`-- execution 42 (schedule, 2026-03-29T01:00:00Z) --`: which run the lines below
    are of, why it ran and when it was due."""
    why = [str(execution["trigger"])] if execution.get("trigger") else []
    when = execution.get("scheduled_for") or execution.get("started_at")
    if when:
        why.append(utc_time(when))
    return f"-- execution {execution_id}" + (f" ({', '.join(why)})" if why else "") + " --"


def _log_line(entry: Mapping[str, Any], show_execution: bool) -> str:
    prefix = f"[{entry.get('execution_id', '-')}] " if show_execution else ""
    time = utc_time(entry.get("timestamp"), millis=True)
    return f"{time} {prefix}{entry.get('level', '-'):<7} {entry.get('msg', '')}"
