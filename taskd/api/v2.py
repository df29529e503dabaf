"""The Nodeum dialect (`/api/v2`), plus what neither spec covers: executions, per-execution
logs (with live following), modules and health, in the same style.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from taskd.api.common import (
    CORE,
    HEALTH,
    METRICS,
    PUBLIC,
    READ_CACHE,
    Handler,
    json_array,
    json_body_response,
    json_text_response,
    leave_in_flight,
    listing_owner,
    owner_scope,
    parse_id,
    principal,
    query_int,
    query_time,
    read_object,
    scope,
    task_from_path,
)
from taskd.api.errors import ApiError
from taskd.api.middleware import V2, dialect_app
from taskd.api.openapi import openapi_text
from taskd.api.render import execution_json, log_entry_json, task_v2
from taskd.config import SCOPES
from taskd.core import Closing, Core, Follow, LogEvent, Quiet, RunEnded, RunFollowed
from taskd.errors import FieldError, ValidationError
from taskd.model import TASK_QUERY_FIELDS, LogEntry, Task
from taskd.preview import (
    DEFAULT_COUNT,
    MAX_COUNT,
    UpcomingRun,
    next_runs,
    parse_preview_request,
)
from taskd.schedule import ScheduleSet

routes = web.RouteTableDef()

# Nodeum's names for what is no part of a definition; the core ignores the fields it
# keeps itself.
_NOT_DEFINITION = frozenset({"id", "user"})
MAX_PAGE = 1000
_SORTABLE = frozenset(TASK_QUERY_FIELDS - {"sources.type", "destinations.type"})
# What a place's `type` may be (see the `files` module): other text matches no task.
_PLACE_TYPE = re.compile(r"[a-z0-9-]{1,50}")
_TIME_FILTERS = ("created_at", "updated_at")


def _changes(body: Mapping[str, Any]) -> dict[str, Any]:
    """The definition fields a v2 body gives, under the core's names."""
    return {
        "description" if key == "comment" else key: value
        for key, value in body.items()
        if key not in _NOT_DEFINITION
    }


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


async def _save(request: web.Request, body: Mapping[str, Any], task: Task | None) -> Task:
    """Check and write a v2 body: a new task, or changes to `task`."""
    core = request.config_dict[CORE]
    try:
        edit = await core.edit(_changes(body), task)
        # Merged again over the stored task when it is written (a concurrent partial
        # update may have changed it), so saving can refuse the result too.
        [saved] = await core.save([edit], by=principal(request).name)
    except ValidationError as error:
        raise _v2_paths(error) from None
    return saved


async def _rendered(core: Core, tasks: list[Task]) -> list[dict[str, Any]]:
    """Tasks with their last executions, in the v2 shape."""
    return [task_v2(core.shown(t), e) for t, e in await core.with_last_executions(tasks)]


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
        # The types of the task's `task_params.sources` / `.destination` (the `files`
        # module's places); an empty value filters nothing.
        if value := query.get(key):
            if _PLACE_TYPE.fullmatch(value):
                where.append((key, "like", f"%,{value},%"))
            else:
                where.append(("id", "in", []))
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
    """List tasks: `count` is the total before paging. The principal's own tasks and the
    config tasks; every owner's with `all=true` (admins only)."""
    core = request.config_dict[CORE]
    limit = query_int(request, "limit", 50, low=0, high=MAX_PAGE)
    offset = query_int(request, "offset", 0) or 0
    tasks, count = await core.query_tasks(
        where=_filters(request),
        order=_order(request),
        limit=limit,
        offset=offset,
        owner=listing_owner(request),
    )
    pairs = await core.with_last_executions(tasks)
    rendered = await json_array(request, pairs, lambda pair: task_v2(core.shown(pair[0]), pair[1]))
    return json_text_response(f'{{"count": {int(count)}, "tasks": {rendered}}}')


@routes.post("/tasks")
@scope("tasks/create")
async def create_task(request: web.Request) -> web.Response:
    """Create a task from a v2 body."""
    task = await _save(request, await read_object(request), None)
    return web.json_response(task_v2(request.config_dict[CORE].shown(task)), status=201)


@routes.get("/tasks/{task_id}")
@scope("tasks/show")
async def show_task(request: web.Request) -> web.Response:
    """One task with its last execution (an answer given before, while nothing was written
    since: `taskd.api.cache`)."""
    name_or_id = request.match_info["task_id"]
    cache = request.config_dict[READ_CACHE]
    # Per principal: what a caller may see (and so the answer) is the principal's to decide.
    key = ("v2", principal(request), name_or_id)
    body = cache.get(key)
    if body is None:
        stamp = cache.stamp()
        core = request.config_dict[CORE]
        task, last = await core.find_with_last_execution(name_or_id, owner=owner_scope(request))
        body = json.dumps(task_v2(core.shown(task), last)).encode()
        cache.put(key, stamp, body)
    return json_body_response(body)


@routes.put("/tasks/{task_id}")
@scope("tasks/update")
async def update_task(request: web.Request) -> web.Response:
    """Update a task: the given fields replace the stored ones."""
    task = await task_from_path(request)
    updated = await _save(request, await read_object(request), task)
    [rendered] = await _rendered(request.config_dict[CORE], [updated])
    return web.json_response(rendered)


@routes.delete("/tasks/{task_id}")
@scope("tasks/destroy")
async def destroy_task(request: web.Request) -> web.Response:
    """Delete a task (its running executions are stopped)."""
    task = await task_from_path(request)
    await request.config_dict[CORE].delete_task(task.id)
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
    execution_id = await request.config_dict[CORE].run_defer(defer_id)
    return web.json_response({"execution_id": str(execution_id), "msg": "deferred run started"})


async def _task_and_metadata(request: web.Request) -> tuple[Task, dict[str, Any]]:
    """The task a run is asked for, and the run's trigger metadata (the body, if any)."""
    return await task_from_path(request), await read_object(request, required=False)


@routes.put("/tasks/{task_id}/action/run")
@scope("tasks/action")
async def run_task(request: web.Request) -> web.Response:
    """Run a task now; the body is the trigger metadata."""
    task, metadata = await _task_and_metadata(request)
    execution_id = await request.config_dict[CORE].run(task.id, metadata)
    return web.json_response({"execution_id": str(execution_id), "msg": "task run started"})


@routes.put("/tasks/{task_id}/action/defer_run")
@scope("tasks/action")
async def defer_run_task(request: web.Request) -> web.Response:
    """Prepare a run to be started later with `run_defer`."""
    task, metadata = await _task_and_metadata(request)
    defer_id = await request.config_dict[CORE].defer_run(task.id, metadata)
    return web.json_response({"defer_id": defer_id, "msg": "run deferred"})


# The actions on a task's running executions: verb -> what Core does, and the route's
# description. Each answers which executions it acted on.
_EXECUTION_ACTIONS: dict[str, tuple[Callable[[Core, int], Awaitable[list[int]]], str]] = {
    "pause": (Core.pause, "Pause the task's running execution."),
    "resume": (
        Core.resume,
        "Resume a paused execution, or continue an interrupted or stopped one.",
    ),
    "stop": (
        Core.stop,
        "Stop the task's running execution (cooperatively, forced after the grace period).",
    ),
    "force_stop": (Core.force_stop, "Stop the task's running execution now."),
}


def _execution_action(verb: str) -> Handler:
    operation, description = _EXECUTION_ACTIONS[verb]

    @scope("tasks/action")
    async def act(request: web.Request) -> web.Response:
        task = await task_from_path(request)
        executions = await operation(request.config_dict[CORE], task.id)
        listed = ", ".join(str(e) for e in executions)
        return web.json_response({"msg": f"{verb}: execution {listed}"})

    act.__name__ = act.__qualname__ = f"{verb}_task"
    act.__doc__ = description
    return act


for _verb in _EXECUTION_ACTIONS:
    routes.put(f"/tasks/{{task_id}}/action/{_verb}")(_execution_action(_verb))


# -- beyond the Nodeum spec -----------------------------------------------------------------


@routes.get("/tasks/{task_id}/executions")
@scope("tasks/show")
async def index_executions(request: web.Request) -> web.Response:
    """A task's executions, newest first, paged."""
    task = await task_from_path(request)
    limit = query_int(request, "limit", 50, low=0, high=MAX_PAGE) or 0
    offset = query_int(request, "offset", 0) or 0
    core = request.config_dict[CORE]
    executions = await core.list_executions(task.id, limit=limit, offset=offset)
    return web.json_response({"executions": [execution_json(e) for e in executions]})


@routes.get("/executions/{execution_id}")
@scope("tasks/show")
async def show_execution(request: web.Request) -> web.Response:
    """One execution."""
    text = request.match_info["execution_id"]
    execution_id = parse_id(text)
    if execution_id is None:
        raise ApiError(404, "not_found", f"execution {text!r} not found")
    execution = await request.config_dict[CORE].get_execution(
        execution_id, owner=owner_scope(request)
    )
    return web.json_response(execution_json(execution))


# Seconds without an event after which a followed log sends a comment line, so proxies
# and clients do not take a quiet stream for a dead connection.
KEEPALIVE_SEC = 15.0
# How soon a follower notices that its client went away while nothing happens.
_GONE_CHECK_SEC = 1.0
_FOLLOW_MODES = {
    "task": Follow.TASK,
    "execution": Follow.EXECUTION,
    # `follow=true` came first and followed one execution: it still does.
    "true": Follow.EXECUTION,
    "1": Follow.EXECUTION,
    "yes": Follow.EXECUTION,
}
_NO_FOLLOW = frozenset({"", "false", "0", "no"})


def _follow_mode(request: web.Request) -> Follow | None:
    """The `follow` query parameter: `task`, `execution` (alias `true`) or none."""
    text = request.query.get("follow", "").lower()
    if text in _NO_FOLLOW:
        return None
    mode = _FOLLOW_MODES.get(text)
    if mode is None:
        raise ApiError(
            400,
            "invalid_query",
            "query parameter 'follow' must be task, execution (or true) or false, "
            f"got {request.query['follow']!r}",
            [FieldError("follow", "must be task, execution, true or false")],
        )
    return mode


@routes.get("/tasks/{task_id}/log")
@scope("tasks/show")
async def task_log(request: web.Request) -> web.StreamResponse:
    """A task's log from `offset`; with `follow`, live as server-sent events: `execution`
    (or `true`) until that execution (the given one, or the task's newest) has ended,
    `task` every run's lines for good.
    """
    task = await task_from_path(request)
    core = request.config_dict[CORE]
    offset = query_int(request, "offset", None)
    limit = query_int(request, "limit", 100, low=1, high=10_000) or 100
    execution_id = query_int(request, "execution_id", None, low=1)
    follow = _follow_mode(request)
    if execution_id is not None:
        await core.get_execution(execution_id, of=task)
    if follow is None:
        entries = await core.read_log(
            task.id, offset=offset or 0, limit=limit, execution_id=execution_id
        )
        return web.json_response({"entries": [log_entry_json(e) for e in entries]})
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    leave_in_flight(request)
    events = core.follow_log(
        task.id,
        mode=follow,
        offset=offset,
        execution_id=execution_id,
        idle_sec=min(_GONE_CHECK_SEC, KEEPALIVE_SEC),
    )
    try:
        async with aclosing(events):
            await _stream_log(request, response, events)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away: nothing to answer, nothing went wrong
    return response


def _event(kind: str, data: Any, event_id: int | None = None) -> bytes:
    head = "" if event_id is None else f"id: {event_id}\n"
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


async def _stream_log(
    request: web.Request, response: web.StreamResponse, events: AsyncGenerator[LogEvent, None]
) -> None:
    """Write Core's log events as server-sent events until they end or the client goes.

    `log` (an entry; `id` is its idx), `execution` (task mode: a run whose lines follow),
    `end` (`{execution_id, status}`: that run ended; in execution mode the last event),
    `shutdown` (the daemon stops; the last event), and `: keep-alive` comments.
    """
    loop = asyncio.get_running_loop()
    wrote = loop.time()
    async for event in events:
        if request.transport is None or request.transport.is_closing():
            return  # the client went away: stop reading for it
        match event:
            case LogEntry():
                await response.write(_event("log", log_entry_json(event), event.idx))
            case RunFollowed():
                await response.write(_event("execution", execution_json(event.execution)))
            case RunEnded():
                status = None if event.status is None else str(event.status)
                end = {"execution_id": str(event.execution_id), "status": status}
                await response.write(_event("end", end))
            case Closing():
                await response.write(_event("shutdown", {"msg": "taskd is shutting down"}))
                return
            case Quiet():
                if loop.time() - wrote < KEEPALIVE_SEC:
                    continue
                await response.write(b": keep-alive\n\n")
        wrote = loop.time()


_FIRST_INSTANT = datetime.min.replace(tzinfo=UTC)
_LAST_INSTANT = datetime.max.replace(tzinfo=UTC)


def _preview_answer(runs: list[UpcomingRun]) -> web.Response:
    return web.json_response({"next_runs": [run.to_json() for run in runs]})


def _after(text: str) -> datetime | None:
    """`after` of a preview: an RFC 3339 time (400 otherwise), None if not given. Every
    RFC 3339 time is accepted: one that is before year 1 in UTC (0001-01-01T00:00+05:00)
    means from the very start, one past year 9999 (9999-12-31T23:00-05:00) after the end."""
    if not text:
        return None
    try:
        return query_time(text, "after")
    except ApiError as refused:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise refused from None
        # It parses: query_time refused it for its range only.
        return _FIRST_INSTANT if parsed.year == 1 else _LAST_INSTANT


@routes.get("/tasks/{task_id}/next_runs")
@scope("tasks/show")
async def task_next_runs(request: web.Request) -> web.Response:
    """The task's next fire times from its schedules (`count`, default 10, up to 1000;
    strictly after `after`, default now), each with its schedule's index, its local time
    and its DST mark."""
    task = await task_from_path(request)
    core = request.config_dict[CORE]
    count = query_int(request, "count", DEFAULT_COUNT, low=1, high=MAX_COUNT) or DEFAULT_COUNT
    after = _after(request.query.get("after", "")) or core.clock.now()
    zone = ZoneInfo(core.default_timezone)
    try:
        schedules = task.schedule_set(core.default_timezone)
    except ValidationError:
        # A stored schedule that no longer parses (its zone left the system's database):
        # the scheduler does not fire it either.
        schedules = ScheduleSet()
    return _preview_answer(next_runs(schedules, after, count, timezone=zone))


@routes.post("/schedules/preview")
@scope("tasks/show")
async def preview_schedules(request: web.Request) -> web.Response:
    """The next fire times of schedules not stored anywhere (the body:
    `{"schedules": [...], "count": N, "after": TIME, "timezone": TZ}`), checked by the
    tasks' own validator."""
    core = request.config_dict[CORE]
    preview = parse_preview_request(
        await read_object(request), default_timezone=core.default_timezone
    )
    return _preview_answer(preview.runs(core.clock.now()))


@routes.get("/modules")
@scope("tasks/index")
async def index_modules(request: web.Request) -> web.Response:
    """The modules tasks can use, with their params."""
    return web.json_response({"modules": request.config_dict[CORE].describe_modules()})


# The scopes a principal may hold, wildcards spelled out.
_PLAIN_SCOPES = sorted(name for name in SCOPES if not name.endswith("*"))


@routes.get("/whoami")
async def whoami(request: web.Request) -> web.Response:
    """Who the credentials name, their scopes as configured, and every scope they allow
    with wildcards spelled out (the web page offers only the actions allowed). Any valid
    credentials may ask."""
    who = principal(request)
    return web.json_response(
        {
            "name": who.name,
            "scopes": sorted(who.scopes),
            "allowed": [name for name in _PLAIN_SCOPES if who.allows(name)],
        }
    )


@routes.get("/health")
@scope(PUBLIC)
async def health(request: web.Request) -> web.Response:
    """Liveness: scheduler running, store writable, version. No credentials needed."""
    report = await request.config_dict[HEALTH]()
    return web.json_response(report, status=200 if report["status"] == "ok" else 503)


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """taskd's OpenAPI document. Any valid credentials may read it (no scope is needed);
    health is the only route TCP serves without credentials (DESIGN.md, "Access").
    """
    text = openapi_text(
        metrics=METRICS in request.config_dict, modules=request.config_dict[CORE].modules
    )
    return web.Response(text=text, content_type="application/json")


def app() -> web.Application:
    """The Nodeum sub-app (mounted at `/api/v2`), with the routes beyond the spec, answering
    failures the Nodeum way."""
    return dialect_app(routes, V2)
