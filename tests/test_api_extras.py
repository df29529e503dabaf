"""What neither spec covers, served under /api/v2 in the Nodeum style: executions, logs
(paged, per execution, followed live as server-sent events), modules, health, and taskd's
own OpenAPI document, which must be valid and describe every route the app registers.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from api_fixtures import WAIT_SEC, Api, open_api, spec_problems
from disk_faults import BIG_TEXT, SqliteDiskFaults
from openapi_spec_validator import validate

from taskd.api import v2
from taskd.api.app import registered_routes
from taskd.core import Follow, RunEnded, RunFollowed
from taskd.core import follow as follow_module
from taskd.daemon import probe_store
from taskd.model import ExecutionStatus, LogEntry
from taskd.testing import wait_until

QUICK = {"task_module": "sleep", "task_params": {"seconds": 0}}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


async def run_to_end(api: Api, task_id: str, body: dict[str, Any] | None = None) -> str:
    """Run the task and wait until that execution is done; return its id."""
    reply = await api.unix.put(f"/api/v2/tasks/{task_id}/action/run", body or {})
    assert reply.status == 200, reply
    execution_id: str = reply.json["execution_id"]
    await api.wait_execution(execution_id, "done")
    return execution_id


async def test_executions_newest_first_and_paged(api: Api) -> None:
    """A task's executions are listed newest first; limit/offset page them."""
    task = await api.create("history")
    ids = [await run_to_end(api, task["id"], {"n": n}) for n in range(3)]
    listed = (await api.unix.get(f"/api/v2/tasks/{task['id']}/executions")).json["executions"]
    assert [e["id"] for e in listed] == ids[::-1]
    assert [e["trigger_metadata"] for e in listed] == [{"n": 2}, {"n": 1}, {"n": 0}]
    assert all(e["task_id"] == task["id"] and e["status"] == "done" for e in listed)
    page = await api.unix.get(f"/api/v2/tasks/{task['id']}/executions?limit=1&offset=1")
    assert [e["id"] for e in page.json["executions"]] == [ids[1]]
    by_name = await api.unix.get("/api/v2/tasks/history/executions")
    assert by_name.json["executions"] == listed
    assert (await api.unix.get("/api/v2/tasks/nope/executions")).status == 404


async def test_execution_by_id(api: Api) -> None:
    """One execution by id, with its times, status and dispatcher; unknown ids are 404."""
    task = await api.create("one-run")
    execution_id = await run_to_end(api, task["id"])
    execution = (await api.unix.get(f"/api/v2/executions/{execution_id}")).json
    assert execution["id"] == execution_id
    assert execution["status"] == "done"
    assert execution["progress"] == 100
    assert execution["started_at"] <= execution["finished_at"]
    assert execution["dispatcher"]
    for ref in ("999999", "abc", "0"):
        missing = await api.unix.get(f"/api/v2/executions/{ref}")
        assert missing.status == 404
        assert missing.json["details"]["base"][0]["error"] == "not_found"


async def test_log_offset_limit_and_execution_id(api: Api) -> None:
    """The v2 log pages by offset/limit and narrows to one execution with execution_id; an
    execution of another task is 404."""
    task = await api.create(
        "talker", task_module="shell", task_params={"command": "echo one; echo two"}
    )
    first = await run_to_end(api, task["id"])
    second = await run_to_end(api, task["id"])
    path = f"/api/v2/tasks/{task['id']}/log"
    entries = (await api.unix.get(path)).json["entries"]
    assert [e["idx"] for e in entries] == list(range(len(entries)))
    assert {e["execution_id"] for e in entries} == {first, second}
    page = (await api.unix.get(path, params={"offset": "1", "limit": "2"})).json["entries"]
    assert page == entries[1:3]
    mine = (await api.unix.get(path, params={"execution_id": second})).json["entries"]
    assert mine == [e for e in entries if e["execution_id"] == second]
    assert [e["msg"] for e in mine if e["msg"] in {"one", "two"}] == ["one", "two"]
    other = await api.create("other")
    other_run = await run_to_end(api, other["id"])
    foreign = await api.unix.get(path, params={"execution_id": other_run})
    assert foreign.status == 404


@pytest.mark.parametrize(
    ("module", "params"),
    [
        ("shell", {"command": "for i in 1 2 3; do echo line $i; sleep 0.1; done"}),
        ("sleep", {"seconds": 0.5, "steps": 5}),
    ],
)
@pytest.mark.slow
async def test_follow_streams_a_running_task_until_end(
    api: Api, module: str, params: dict[str, Any]
) -> None:
    """`follow=true` answers text/event-stream: one `log` event per entry while the task
    runs, then an `end` event naming the execution and how it ended."""
    task = await api.create(f"follow-{module}", task_module=module, task_params=params)
    run = await api.unix.put(f"/api/v2/tasks/{task['id']}/action/run")
    await api.wait_status(task["id"], "running")
    response, raw_events = await api.unix.events(
        f"/api/v2/tasks/{task['id']}/log", {"follow": "true"}
    )
    assert response.headers["Content-Type"] == "text/event-stream"
    document = (await api.unix.get("/api/v2/openapi.json")).json
    event_schema = document["components"]["schemas"]["taskd_log_event"]
    for event in raw_events:
        jsonschema.validate(event, event_schema)  # each event as the document says
    events = [(event["event"], json.loads(event["data"])) for event in raw_events]
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "end"
    assert set(kinds[:-1]) == {"log"}
    assert events[-1][1] == {"execution_id": run.json["execution_id"], "status": "done"}
    logged = [data for kind, data in events if kind == "log"]
    assert [entry["idx"] for entry in logged] == list(range(len(logged)))
    assert [event["id"] for event in raw_events[:-1]] == [str(e["idx"]) for e in logged]
    stored = (await api.unix.get(f"/api/v2/tasks/{task['id']}/log")).json["entries"]
    assert logged == stored, "the stream carries every entry, in order"
    if module == "shell":
        assert [e["msg"] for e in logged if e["msg"].startswith("line")] == [
            "line 1",
            "line 2",
            "line 3",
        ]


@pytest.mark.slow
@pytest.mark.parametrize("follow", ["1", "true", "execution"])
async def test_follow_a_task_that_never_ran_waits_for_its_first_run(api: Api, follow: str) -> None:
    """Following an execution (`follow=execution`, or `true` as before) of a task that
    never ran waits for its first run, then streams it to its end."""
    task = await api.create("idle", task_module="shell", task_params={"command": "echo first run"})
    follower = asyncio.ensure_future(
        api.unix.events(f"/api/v2/tasks/{task['id']}/log", {"follow": follow})
    )
    await asyncio.sleep(0.5)
    assert not follower.done(), "the stream waits while the task has not run"
    run = await api.unix.put(f"/api/v2/tasks/{task['id']}/action/run")
    _, events = await follower
    assert events[-1]["event"] == "end"
    assert json.loads(events[-1]["data"]) == {
        "execution_id": run.json["execution_id"],
        "status": "done",
    }
    assert "first run" in [json.loads(e["data"])["msg"] for e in events[:-1]]


async def sse(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, str]]:
    """The events of a server-sent event stream as they come: one dict of fields each
    (`event`, `data`, `id`); a comment line comes as `{"comment": text}`."""
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif fields:
            yield fields
            fields = {}


@pytest.mark.slow
async def test_follow_task_streams_every_run_with_a_header_event_and_stays_open(
    api: Api,
) -> None:
    """`follow=task` over TCP: for each run an `execution` event before its first line,
    its `log` lines, an `end` event after its last line; the stream stays open for the
    next run (it does not end with a run)."""
    task = await api.create(
        "follow-task", task_module="shell", task_params={"command": "echo hello; echo bye"}
    )
    first = await run_to_end(api, task["id"])  # the latest run, shown first
    client = await api.tcp("show")
    document = (await api.unix.get("/api/v2/openapi.json")).json
    event_schema = document["components"]["schemas"]["taskd_log_event"]
    seen: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(WAIT_SEC):
        response = await client.session.get(
            f"{api.tcp_base}/api/v2/tasks/{task['id']}/log",
            params={"follow": "task"},
            headers={"Authorization": client.authorization or ""},
        )
        async with response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            events = sse(response)
            second = None
            async for event in events:
                if "comment" in event:
                    continue
                jsonschema.validate(event, event_schema)
                seen.append((event["event"], json.loads(event["data"])))
                ends = [data for kind, data in seen if kind == "end"]
                if len(ends) == 1 and second is None:
                    second = await run_to_end(api, task["id"])
                if len(ends) == 2:
                    break
            # The stream goes on after the second run: no end of stream within a while.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(events)
    runs = [data["id"] for kind, data in seen if kind == "execution"]
    assert runs == [first, second]
    for run in runs:
        kinds = [kind for kind, data in seen if data.get("execution_id", data.get("id")) == run]
        assert (kinds[0], kinds[-1]) == ("execution", "end"), kinds
        assert set(kinds[1:-1]) == {"log"}
        said = [d["msg"] for k, d in seen if k == "log" and d["execution_id"] == run]
        assert said.index("hello") < said.index("bye")
    assert [data for kind, data in seen if kind == "end"] == [
        {"execution_id": first, "status": "done"},
        {"execution_id": second, "status": "done"},
    ]
    [header] = [data for kind, data in seen if kind == "execution" and data["id"] == second]
    assert header["trigger"] == "manual"


async def test_followers_wake_on_commits_not_on_a_timer(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Core.follow_log` hears of new lines and endings through the store's commits: with
    its fallback re-check and its quiet time set to a minute, a run still comes through
    (announced, its lines, its end) in moments."""
    monkeypatch.setattr(follow_module, "FOLLOW_RECHECK_SEC", 60.0)
    task = await api.create("woken", task_module="shell", task_params={"command": "echo hi"})
    events = api.core.follow_log(int(task["id"]), mode=Follow.TASK, idle_sec=60.0)
    seen: list[object] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aclosing(events):
        await api.unix.put(f"/api/v2/tasks/{task['id']}/action/run")
        async with asyncio.timeout(WAIT_SEC):
            async for event in events:
                seen.append(event)
                if isinstance(event, RunEnded):
                    break
    assert loop.time() - started < 5
    assert isinstance(seen[0], RunFollowed)
    assert "hi" in [event.msg for event in seen if isinstance(event, LogEntry)]
    assert seen[-1] == RunEnded(seen[0].execution.id, ExecutionStatus.DONE)


@pytest.mark.slow
async def test_follow_task_sends_keep_alive_comments_while_idle(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A followed task that logs nothing gets comment lines, so the connection is not
    taken for dead; a comment is no event."""
    monkeypatch.setattr(v2, "KEEPALIVE_SEC", 0.2)
    task = await api.create("quiet", task_module="sleep", task_params={"seconds": 0})
    comments = 0
    async with asyncio.timeout(WAIT_SEC):
        response = await api.unix.session.get(
            f"http://taskd/api/v2/tasks/{task['id']}/log", params={"follow": "task"}
        )
        async with response:
            async for event in sse(response):
                assert event == {"comment": "keep-alive"}
                comments += 1
                if comments == 2:
                    break


@pytest.mark.slow
async def test_follow_streams_end_when_the_daemon_shuts_down(tmp_path: Path) -> None:
    """Shutting the API down ends every live stream at once with a `shutdown` event, in
    both modes, instead of keeping the shutdown waiting for them."""
    events: dict[str, list[dict[str, str]]] = {"task": [], "execution": []}

    async def follow(base: str, key: str, task_id: str, mode: str) -> None:
        async with aiohttp.ClientSession() as session:
            response = await session.get(
                f"{base}/api/v2/tasks/{task_id}/log",
                params={"follow": mode},
                headers={"Authorization": f"Bearer {key}"},
            )
            async with response:
                async for event in sse(response):
                    events[mode].append(event)

    loop = asyncio.get_running_loop()
    async with open_api(tmp_path) as api:
        task = await api.create("long", task_module="sleep", task_params={"seconds": 30})
        await api.unix.put(f"/api/v2/tasks/{task['id']}/action/run")
        await api.wait_status(task["id"], "running")
        followers = [
            asyncio.create_task(follow(api.tcp_base, api.keys["show"], task["id"], mode))
            for mode in events
        ]
        await asyncio.sleep(0.3)
        assert not any(follower.done() for follower in followers)
        closing = loop.time()
    async with asyncio.timeout(WAIT_SEC):
        await asyncio.gather(*followers)
    assert loop.time() - closing < 5, "the streams did not hold the shutdown up"
    for mode, seen in events.items():
        assert seen[-1]["event"] == "shutdown", (mode, seen)
        assert json.loads(seen[-1]["data"]) == {"msg": "taskd is shutting down"}


@pytest.mark.slow  # a real 0.6 s task runs to its end
async def test_a_follower_that_goes_away_is_no_error(api: Api) -> None:
    """A client that drops a live stream leaves no failed request behind."""
    task = await api.create("dropped", task_module="sleep", task_params={"seconds": 0.6})
    await api.unix.put(f"/api/v2/tasks/{task['id']}/action/run")
    await api.wait_status(task["id"], "running")
    assert api.socket_path is not None
    reader, writer = await asyncio.open_unix_connection(str(api.socket_path))
    writer.write(
        f"GET /api/v2/tasks/{task['id']}/log?follow=true HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    )
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.close()
    await writer.wait_closed()
    await api.wait_status(task["id"], "done")
    await asyncio.sleep(0.5)  # the handler notices at its next poll
    assert api.failures() == []


async def test_v2_modules(api: Api) -> None:
    """GET /modules lists the modules with descriptions and params, sorted by name."""
    modules = (await api.unix.get("/api/v2/modules")).json["modules"]
    assert [m["name"] for m in modules] == ["files", "http", "python", "shell", "sleep"]
    shell = next(m for m in modules if m["name"] == "shell")
    assert {p["name"] for p in shell["params"]} >= {"argv", "command"}
    v1 = (await api.unix.get("/api/v1/task/modules")).json["modules"]
    assert {m["name"]: m for m in modules} == v1


async def test_health_needs_no_credentials(api: Api) -> None:
    """Health answers over TCP without credentials: scheduler running, store writable."""
    anonymous = await api.tcp(None)
    health = await anonymous.get("/api/v2/health")
    assert health.status == 200
    assert health.json["status"] == "ok"
    assert health.json["scheduler"] == "running"
    assert health.json["store"] == "writable"
    assert (health.json["running"], health.json["queued"]) == (0, 0)


async def test_openapi_document_is_valid(api: Api) -> None:
    """GET /api/v2/openapi.json is a valid OpenAPI document (openapi-spec-validator)."""
    document = (await (await api.tcp("index")).get("/api/v2/openapi.json")).json
    validate(document)
    assert document["openapi"].startswith("3.")


def _normalized(path: str) -> str:
    """A path template with every `{param}` (and aiohttp's `{param:regex}`) as `{}`."""
    return re.sub(r"\{[^}]*\}", "{}", path)


async def test_openapi_document_covers_every_registered_route(api: Api) -> None:
    """Every (method, path) the app registers is in the document, and nothing else is."""
    document = (await api.unix.get("/api/v2/openapi.json")).json
    documented = {
        (method.upper(), _normalized(path))
        for path, operations in document["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }
    registered = {
        (route.method, _normalized(route.resource.canonical))
        for route in registered_routes(api.app)
        if route.resource is not None
    }
    assert registered == documented


@pytest.mark.slow
async def test_beyond_the_specs_answers_conform_to_taskds_own_document(api: Api) -> None:
    """Executions, logs, modules, health and their 404s validate against openapi.json."""
    c = await api.tcp("all")
    task = await api.create("documented", task_module="shell", task_params={"argv": ["true"]})
    execution_id = await run_to_end(api, task["id"])
    start = len(api.exchanges)
    for path in (
        f"/api/v2/tasks/{task['id']}/executions?limit=5&offset=0",
        f"/api/v2/executions/{execution_id}",
        f"/api/v2/tasks/{task['id']}/log?offset=0&limit=10&execution_id={execution_id}",
        "/api/v2/modules",
        "/api/v2/health",
        "/api/v2/openapi.json",
        "/api/v2/executions/999999",
        "/api/v2/tasks/nope/executions",
        "/api/v2/tasks/nope/log",
    ):
        await c.get(path)
    assert spec_problems(api.exchanges[start:], dialect="taskd") == []


async def test_health_reports_a_stopped_scheduler_as_degraded(api: Api) -> None:
    """With the scheduler's loop stopped, health answers 503 `degraded`."""
    await api.scheduler.stop()
    health = await (await api.tcp(None)).get("/api/v2/health")
    assert health.status == 503
    assert (health.json["status"], health.json["scheduler"]) == ("degraded", "stopped")
    assert health.json["store"] == "writable"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v2/nothing-here", 404),
        ("GET", "/api/v1/nothing-here", 404),
        ("POST", "/api/v2/tasks/1", 405),
        ("PATCH", "/api/v2/tasks", 405),
        ("PUT", "/api/v1/task", 405),
        ("GET", "/api/v2/tasks/1/action/run", 405),
    ],
)
async def test_unknown_routes_and_methods_answer_in_the_dialect(
    api: Api, method: str, path: str, status: int
) -> None:
    """Unknown paths are 404 and wrong methods 405 (with Allow), in the dialect's shape."""
    await api.create("present")
    reply = await api.unix.call(method, path)
    assert reply.status == status
    if status == 405:
        assert reply.headers["Allow"]
    if path.startswith("/api/v1/"):
        assert reply.json["statuscode"] == status
    else:
        assert reply.json["details"]["base"][0]["error"] in {"not_found", "method_not_allowed"}


# ---------------------------------------------------------------------------------------
# a full disk

DISK = SqliteDiskFaults()  # the API's store is SQLite


async def test_a_write_on_a_full_disk_answers_503_store_unavailable_in_each_dialect(
    api: Api,
) -> None:
    """Creating a task on a full disk is 503 `store unavailable: <reason>` with Retry-After,
    in the error shape of the dialect asked (not 500 "internal error"); nothing is created,
    and the same request succeeds once space returns."""
    big = {"task_module": "sleep", "task_params": {"seconds": 0}, "description": BIG_TEXT}
    await DISK.fill(api.store)
    v2_reply = await api.unix.post("/api/v2/tasks", {"name": "big", **big})
    assert v2_reply.status == 503, v2_reply
    assert v2_reply.headers["Retry-After"] == "5"
    assert v2_reply.json["messages"] == ["store unavailable: database or disk is full"]
    assert v2_reply.json["details"]["base"][0]["error"] == "store_unavailable"
    v1_reply = await api.unix.post("/api/v1/task", [{"task": {"name": "big", **big}}])
    assert v1_reply.status == 503, v1_reply
    assert v1_reply.headers["Retry-After"] == "5"
    assert v1_reply.json == {
        "code": "error.api.store_unavailable",
        "statuscode": 503,
        "description": "store unavailable: database or disk is full",
    }
    assert await api.store.find_task("big") is None
    await DISK.restore(api.store)
    assert (await api.unix.post("/api/v2/tasks", {"name": "big", **big})).status == 201


async def test_health_reports_a_failing_store_with_its_reason_until_a_write_succeeds(
    api: Api,
) -> None:
    """After a write failed for lack of space, health answers 503 `degraded` with the store
    `failing: <reason>` (an empty write would still commit); after space returned and a
    write succeeded, `writable` again."""
    anonymous = await api.tcp(None)
    big = {"task_module": "sleep", "task_params": {"seconds": 0}, "description": BIG_TEXT}
    await DISK.fill(api.store)
    assert (await api.unix.post("/api/v2/tasks", {"name": "big", **big})).status == 503
    health = await anonymous.get("/api/v2/health")
    assert health.status == 503
    assert health.json["status"] == "degraded"
    assert health.json["store"] == "failing: database or disk is full"
    await DISK.restore(api.store)
    assert (await api.unix.post("/api/v2/tasks", {"name": "big", **big})).status == 201
    health = await anonymous.get("/api/v2/health")
    assert (health.status, health.json["store"]) == (200, "writable")


@pytest.mark.slow
async def test_a_write_that_gets_no_answer_is_503_not_a_hang(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a frozen file system a create is 503 `store unavailable` in each dialect's shape
    within the store's write timeout; the write was withdrawn (nothing is created after
    the thaw), and health, which said `failing` meanwhile, recovers on an idle daemon by
    the periodic probe alone."""
    monkeypatch.setattr(api.store, "_write_timeout_sec", 0.2)
    quick = {"task_module": "sleep", "task_params": {"seconds": 0}}
    anonymous = await api.tcp(None)
    await DISK.freeze(api.store)
    try:
        reply = await api.unix.post("/api/v2/tasks", {"name": "frozen", **quick})
        assert reply.status == 503, reply
        assert reply.json["messages"] == [
            "store unavailable: no answer from the database within 0.2 s; nothing was written"
        ]
        v1_reply = await api.unix.post("/api/v1/task", [{"task": {"name": "frozen1", **quick}}])
        assert (v1_reply.status, v1_reply.json["code"]) == (503, "error.api.store_unavailable")
        health = await anonymous.get("/api/v2/health")
        assert health.status == 503
        assert health.json["store"].startswith("failing: no answer from the database")
    finally:
        await DISK.thaw(api.store)
    probe = asyncio.create_task(probe_store(api.store, 0.05))
    try:
        await wait_until(lambda: api.store.failure is None)
    finally:
        probe.cancel()
    health = await anonymous.get("/api/v2/health")
    assert (health.status, health.json["store"]) == (200, "writable")
    assert await api.store.find_task("frozen") is None
    assert await api.store.find_task("frozen1") is None


@pytest.mark.slow
async def test_a_read_that_gets_no_answer_is_503_not_a_hang(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read the database does not answer in time (a frozen file system) is 503 `store
    unavailable` in the dialect's shape, within the store's read timeout."""
    monkeypatch.setattr(api.store, "_read_timeout_sec", 0.05)
    # A frozen file system holds both connections: the writer's and the API's reader.
    hangs = [
        asyncio.ensure_future(connection._execute(time.sleep, 0.5))
        for connection in (api.store._conn, api.store._reader)  # type: ignore[attr-defined]
    ]
    await asyncio.sleep(0)
    try:
        reply = await api.unix.get("/api/v2/tasks")
        assert reply.status == 503, reply
        assert reply.json["messages"] == [
            "store unavailable: no answer from the database within 0.05 s"
        ]
        v1_reply = await api.unix.get("/api/v1/task")
        assert (v1_reply.status, v1_reply.json["code"]) == (503, "error.api.store_unavailable")
    finally:
        await asyncio.gather(*hangs)
