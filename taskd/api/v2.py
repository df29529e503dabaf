"""The Nodeum dialect (`/api/v2`), plus what neither spec covers: executions, per-execution
logs (with live following), modules and health, in the same style.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from taskd.api.common import (
    CORE,
    HEALTH,
    LIVE_FIELDS,
    PUBLIC,
    parse_id,
    principal,
    query_bool,
    query_int,
    query_time,
    read_object,
    scope,
    task_from_path,
)
from taskd.api.errors import ApiError
from taskd.api.render import execution_json, log_entry_json, task_v2
from taskd.core import Core
from taskd.errors import FieldError, NotFoundError, ValidationError
from taskd.model import TASK_QUERY_FIELDS, Execution, Task
from taskd.schedule import format_utc

routes = web.RouteTableDef()

# Fields a client may send back as it got them; they are not part of a definition.
READ_ONLY = LIVE_FIELDS | {"id", "user"}
MAX_PAGE = 1000
_SORTABLE = frozenset(TASK_QUERY_FIELDS)
_TIME_FILTERS = ("created_at", "updated_at")


def definition_from_v2(
    body: Mapping[str, Any], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The core definition a v2 body asks for, merged over `base` (an update)."""
    raw = dict(base or {})
    for key, value in body.items():
        if key in READ_ONLY:
            continue
        raw["description" if key == "comment" else key] = value
    return raw


def _v2_paths(error: ValidationError) -> ValidationError:
    """Name fields as v2 clients know them (`comment`, not `description`)."""
    return ValidationError(
        [
            FieldError("comment" + e.path[len("description") :], e.reason)
            if e.path.startswith("description")
            else e
            for e in error.errors
        ]
    )


def _expected_version(body: Mapping[str, Any]) -> int | None:
    if "version" not in body:
        return None
    version = body["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValidationError.single("version", "must be an integer (the current version + 1)")
    return version - 1


async def render_tasks(core: Core, tasks: list[Task]) -> list[dict[str, Any]]:
    """Render tasks with their last executions, fetched in one query."""
    ids = [t.last_execution_id for t in tasks if t.last_execution_id is not None]
    executions = await core.store.get_executions(ids) if ids else {}
    return [
        task_v2(t, executions.get(t.last_execution_id) if t.last_execution_id else None)
        for t in tasks
    ]


def _filters(request: web.Request) -> list[tuple[str, str, Any]]:
    where: list[tuple[str, str, Any]] = []
    query = request.query
    if "id" in query:
        ids = [parse_id(part.strip()) for part in query["id"].split(",") if part.strip()]
        if not ids or None in ids:
            raise ApiError(
                400,
                "invalid_query",
                "query parameter 'id' takes ids, e.g. 1,2,3",
                [FieldError("id", "must be a comma-separated list of ids")],
            )
        where.append(("id", "in", ids))
    if "name" in query:
        name = query["name"]
        # `*` is a wildcard; the rest matches literally.
        if "*" in name:
            pattern = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(("name", "like", pattern.replace("*", "%")))
        else:
            where.append(("name", "=", name))
    for key in ("workflow_type", "workflow_action", "status", "source", "task_module"):
        if key in query:
            where.append((key, "=", query[key]))
    for key in ("sources.type", "destinations.type"):
        if query.get(key):
            where.append(("id", "in", []))  # taskd tasks have no sources or destinations
    for key in _TIME_FILTERS:
        if key in query:
            where.append(_time_condition(key, query[key]))
    return where


def _time_condition(key: str, text: str) -> tuple[str, str, Any]:
    """`2026-01-01T00:00:00Z` (exactly), or with a leading `>`, `>=`, `<`, `<=`."""
    for operator in (">=", "<=", ">", "<"):
        if text.startswith(operator):
            return key, operator, query_time(text[len(operator) :], key)
    return key, "=", query_time(text, key)


def _order(request: web.Request) -> list[tuple[str, bool]]:
    text = request.query.get("sort_by", "")
    order = []
    for item in filter(None, (part.strip() for part in text.split("|"))):
        name, _, direction = item.partition(":")
        if name not in _SORTABLE or direction not in {"", "asc", "desc"}:
            raise ApiError(
                400,
                "invalid_query",
                f"cannot sort by {item!r}: use one of {', '.join(sorted(_SORTABLE))}, "
                "optionally with :asc or :desc",
                [FieldError("sort_by", f"{item!r} is not a sortable attribute")],
            )
        order.append((name, direction == "desc"))
    return order


@routes.get("/tasks")
@scope("tasks/index")
async def index_tasks(request: web.Request) -> web.Response:
    """List tasks: `count` is the total before paging."""
    core = request.app[CORE]
    limit = query_int(request, "limit", 50, low=0, high=MAX_PAGE)
    offset = query_int(request, "offset", 0) or 0
    query_bool(request, "all")  # validated; every API user sees every task
    tasks, count = await core.store.query_tasks(
        where=_filters(request), order=_order(request), limit=limit, offset=offset
    )
    return web.json_response({"count": count, "tasks": await render_tasks(core, tasks)})


@routes.post("/tasks")
@scope("tasks/create")
async def create_task(request: web.Request) -> web.Response:
    """Create a task from a v2 body."""
    core = request.app[CORE]
    body = await read_object(request)
    try:
        spec = core.validate(definition_from_v2(body))
    except ValidationError as error:
        raise _v2_paths(error) from None
    task = await core.create_task(spec, by=_who(request))
    return web.json_response(task_v2(task), status=201)


@routes.get("/tasks/{task_id}")
@scope("tasks/show")
async def show_task(request: web.Request) -> web.Response:
    """One task with its last execution."""
    core = request.app[CORE]
    task_id = parse_id(request.match_info["task_id"])
    if task_id is not None:
        # The common case, a numeric id: task and last execution in one read.
        found = await core.store.get_task_with_last_execution(task_id)
        if found is not None:
            return web.json_response(task_v2(*found))
    task = await task_from_path(request, "task_id")
    [rendered] = await render_tasks(core, [task])
    return web.json_response(rendered)


@routes.put("/tasks/{task_id}")
@scope("tasks/update")
async def update_task(request: web.Request) -> web.Response:
    """Update a task: the given fields replace the stored ones."""
    core = request.app[CORE]
    task = await task_from_path(request, "task_id")
    body = await read_object(request)
    if task.next_run_at is not None and body.get("next_run_at") == format_utc(task.next_run_at):
        # The computed due time a GET showed, sent back unchanged: not a one-shot request.
        body = {key: value for key, value in body.items() if key != "next_run_at"}
    try:
        expected = _expected_version(body)
        spec = core.validate(definition_from_v2(body, task.spec))
    except ValidationError as error:
        raise _v2_paths(error) from None
    updated = await core.update_task(task.id, spec, expected_version=expected, by=_who(request))
    [rendered] = await render_tasks(core, [updated])
    return web.json_response(rendered)


@routes.delete("/tasks/{task_id}")
@scope("tasks/destroy")
async def destroy_task(request: web.Request) -> web.Response:
    """Delete a task (its running executions are stopped)."""
    task = await task_from_path(request, "task_id")
    await request.app[CORE].delete_task(task.id)
    return web.Response(status=204)


@routes.put("/tasks/-/action/run_defer")
@scope("tasks/run_defer")
async def run_defer_task(request: web.Request) -> web.Response:
    """Start a deferred run, once."""
    defer_id = request.query.get("defer_id", "")
    if not defer_id:
        raise ApiError(
            400,
            "invalid_query",
            "query parameter 'defer_id' is required",
            [FieldError("defer_id", "is required")],
        )
    execution_id = await request.app[CORE].run_defer(defer_id)
    return web.json_response({"execution_id": str(execution_id), "msg": "deferred run started"})


@routes.put("/tasks/{task_id}/action/run")
@scope("tasks/action")
async def run_task(request: web.Request) -> web.Response:
    """Run a task now; the body is the trigger metadata."""
    task = await task_from_path(request, "task_id")
    metadata = await read_object(request, required=False)
    execution_id = await request.app[CORE].run(task.id, metadata)
    return web.json_response({"execution_id": str(execution_id), "msg": "task run started"})


@routes.put("/tasks/{task_id}/action/defer_run")
@scope("tasks/action")
async def defer_run_task(request: web.Request) -> web.Response:
    """Prepare a run to be started later with `run_defer`."""
    task = await task_from_path(request, "task_id")
    metadata = await read_object(request, required=False)
    defer_id = await request.app[CORE].defer_run(task.id, metadata)
    return web.json_response({"defer_id": defer_id, "msg": "run deferred"})


async def _action(request: web.Request, verb: str) -> web.Response:
    task = await task_from_path(request, "task_id")
    core = request.app[CORE]
    operation = {
        "pause": core.pause,
        "resume": core.resume,
        "stop": core.stop,
        "force_stop": core.force_stop,
    }[verb]
    executions = await operation(task.id)
    listed = ", ".join(str(e) for e in executions)
    return web.json_response({"msg": f"{verb}: execution {listed}"})


@routes.put("/tasks/{task_id}/action/pause")
@scope("tasks/action")
async def pause_task(request: web.Request) -> web.Response:
    """Pause the task's running execution."""
    return await _action(request, "pause")


@routes.put("/tasks/{task_id}/action/resume")
@scope("tasks/action")
async def resume_task(request: web.Request) -> web.Response:
    """Resume a paused execution, or continue an interrupted or stopped one."""
    return await _action(request, "resume")


@routes.put("/tasks/{task_id}/action/stop")
@scope("tasks/action")
async def stop_task(request: web.Request) -> web.Response:
    """Stop the task's running execution (cooperatively, forced after the grace period)."""
    return await _action(request, "stop")


@routes.put("/tasks/{task_id}/action/force_stop")
@scope("tasks/action")
async def force_stop_task(request: web.Request) -> web.Response:
    """Stop the task's running execution now."""
    return await _action(request, "force_stop")


# -- beyond the Nodeum spec -----------------------------------------------------------------


@routes.get("/tasks/{task_id}/executions")
@scope("tasks/show")
async def index_executions(request: web.Request) -> web.Response:
    """A task's executions, newest first, paged."""
    task = await task_from_path(request, "task_id")
    limit = query_int(request, "limit", 50, low=0, high=MAX_PAGE) or 0
    offset = query_int(request, "offset", 0) or 0
    executions = await request.app[CORE].store.list_executions(task.id, limit=limit, offset=offset)
    return web.json_response({"executions": [execution_json(e) for e in executions]})


@routes.get("/executions/{execution_id}")
@scope("tasks/show")
async def show_execution(request: web.Request) -> web.Response:
    """One execution."""
    text = request.match_info["execution_id"]
    execution_id = parse_id(text)
    if execution_id is None:
        raise ApiError(404, "not_found", f"execution {text!r} not found")
    try:
        execution = await request.app[CORE].store.get_execution(execution_id)
    except NotFoundError as error:
        raise ApiError(404, "not_found", str(error)) from None
    return web.json_response(execution_json(execution))


@routes.get("/tasks/{task_id}/log")
@scope("tasks/show")
async def task_log(request: web.Request) -> web.StreamResponse:
    """A task's log from `offset`; with `follow=true`, new entries stream as server-sent
    events until the execution (the given one, or the task's latest) has ended.
    """
    task = await task_from_path(request, "task_id")
    core = request.app[CORE]
    offset = query_int(request, "offset", 0) or 0
    limit = query_int(request, "limit", 100, low=1, high=10_000) or 100
    execution_id = query_int(request, "execution_id", None, low=1)
    follow = query_bool(request, "follow")
    if execution_id is not None:
        await _check_execution_of(core, task, execution_id)
    if not follow:
        entries = await core.store.read_log(
            task.id, offset=offset, limit=limit, execution_id=execution_id
        )
        return web.json_response({"entries": [log_entry_json(e) for e in entries]})
    return await _follow_log(request, core, task, offset, execution_id)


async def _check_execution_of(core: Core, task: Task, execution_id: int) -> None:
    """404 unless `execution_id` is one of the task's executions."""
    execution = await _execution_or_none(core, execution_id)
    if execution is None or execution.task_id != task.id:
        raise ApiError(404, "not_found", f"task {task.name!r} has no execution {execution_id}")


async def _execution_or_none(core: Core, execution_id: int) -> Execution | None:
    try:
        return await core.store.get_execution(execution_id)
    except NotFoundError:
        return None


async def _newest_execution_id(core: Core, task: Task) -> int | None:
    """The task's newest execution, queued ones included: its `last_execution_id` names
    the latest one that started, which is not the run just asked for.
    """
    newest = await core.store.list_executions(task.id, limit=1)
    return newest[0].id if newest else None


FOLLOW_POLL_SEC = 0.2


async def _follow_log(
    request: web.Request, core: Core, task: Task, offset: int, execution_id: int | None
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        await _stream_log(request, response, core, task, offset, execution_id)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away: nothing to answer, nothing went wrong
    return response


async def _stream_log(
    request: web.Request,
    response: web.StreamResponse,
    core: Core,
    task: Task,
    offset: int,
    execution_id: int | None,
) -> None:
    """Write log events until the watched execution has ended and its log is read.

    Without `execution_id` the watched one is the task's newest execution; a task that has
    never run is waited for until its first execution comes.
    """
    watched = execution_id
    if watched is None:
        watched = await _newest_execution_id(core, task)
    while watched is None:
        # The task has never run: follow its first run, whenever that comes.
        if request.transport is None or request.transport.is_closing():
            return
        await asyncio.sleep(FOLLOW_POLL_SEC)
        watched = await _newest_execution_id(core, task)
    while True:
        if request.transport is None or request.transport.is_closing():
            return  # the client went away; stop polling for it
        entries = await core.store.read_log(
            task.id, offset=offset, limit=500, execution_id=execution_id
        )
        for entry in entries:
            payload = json.dumps(log_entry_json(entry))
            await response.write(f"id: {entry.idx}\nevent: log\ndata: {payload}\n\n".encode())
            offset = entry.idx + 1
        if entries:
            continue
        if not core.runner.is_active(watched):
            execution = await _execution_or_none(core, watched)
            if execution is None or execution.status.finished:
                await core.store.flush()
                if not await core.store.read_log(
                    task.id, offset=offset, limit=1, execution_id=execution_id
                ):
                    end = {
                        "execution_id": str(watched),
                        "status": str(execution.status) if execution else None,
                    }
                    await response.write(f"event: end\ndata: {json.dumps(end)}\n\n".encode())
                    return
                continue
        await asyncio.sleep(FOLLOW_POLL_SEC)


@routes.get("/modules")
@scope("tasks/index")
async def index_modules(request: web.Request) -> web.Response:
    """The modules tasks can use, with their params."""
    return web.json_response({"modules": request.app[CORE].modules.describe()})


@routes.get("/health")
@scope(PUBLIC)
async def health(request: web.Request) -> web.Response:
    """Liveness: scheduler running, store writable, version. No credentials needed."""
    report = await request.app[HEALTH]()
    return web.json_response(report, status=200 if report["status"] == "ok" else 503)


def _who(request: web.Request) -> str:
    return principal(request).name
