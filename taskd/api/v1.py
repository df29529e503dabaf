"""The fylr dialect (`/api/v1`): tasks wrapped as `{"_user": ..., "task": {...}}`.

`POST /task` takes an array: items without `_id` are created, items with `_id` are updated
and must carry `version` = current + 1. The whole array is checked (validation, versions,
config-owned tasks, names taken) before anything is written, so one bad item changes nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from taskd.api.common import (
    CORE,
    json_array,
    json_text_response,
    listing_owner,
    owner_scope,
    parse_id,
    principal,
    query_int,
    read_json,
    scope,
)
from taskd.api.errors import ApiError
from taskd.api.middleware import V1, dialect_app
from taskd.api.render import log_entry_json, task_v1
from taskd.definition import Edit
from taskd.errors import FieldError, NotFoundError, ValidationError
from taskd.model import Task

routes = web.RouteTableDef()

# Tasks read from the store (and rendered) per step of a list.
LIST_PAGE = 250

# fylr's names for what is no part of a definition (`comment` is v2's `description`);
# the core ignores the fields it keeps itself.
_NOT_DEFINITION = frozenset({"_id", "comment"})


async def _task(request: web.Request) -> Task:
    """The task the path names: fylr names tasks by id only. NotFoundError (404) if none."""
    text = request.match_info["task_id"]
    task_id = parse_id(text)
    if task_id is None:
        raise NotFoundError(f"task {text!r} not found")
    return await request.config_dict[CORE].get_task(task_id, owner=owner_scope(request))


@routes.get("/task")
@scope("tasks/index")
async def list_tasks(request: web.Request) -> web.StreamResponse:
    """The principal's tasks and the config tasks (every owner's with `all=true`, admins
    only, as in v2), or `limit` of them from `offset`, wrapped, by id.

    Read, rendered and sent `LIST_PAGE` tasks at a time, yielding to the loop in between:
    fylr clients ask without `limit`, and converting tens of thousands of rows in one piece
    would hold the loop (and so every due start) for hundreds of milliseconds. After the
    first page the next one starts after the last id seen (not at an offset the store
    would have to skip again), so a task created meanwhile is listed at most once. A list
    of one page is one plain response; a longer one is sent in chunks as its pages come
    (memory bounded by a page and the socket's buffer), so a failure after the first page
    (the store stops answering) can only cut the connection, not answer an error.
    """
    limit = query_int(request, "limit", None, low=0, high=100_000)
    offset = query_int(request, "offset", 0) or 0
    core = request.config_dict[CORE]
    owner = listing_owner(request)

    def render(task: Task) -> Any:
        return task_v1(core.shown(task))

    size = LIST_PAGE if limit is None else min(LIST_PAGE, limit)
    page, _ = await core.query_tasks(limit=size, offset=offset, owner=owner)
    if len(page) < size or size == limit:
        return json_text_response(await json_array(request, page, render))
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    left = None if limit is None else limit - len(page)
    await response.write(b"[" + (await json_array(request, page, render))[1:-1].encode())
    while left is None or left > 0:
        size = LIST_PAGE if left is None else min(LIST_PAGE, left)
        page, _ = await core.query_tasks(where=[("id", ">", page[-1].id)], limit=size, owner=owner)
        if page:
            items = (await json_array(request, page, render))[1:-1]
            await response.write(b", " + items.encode())
        if len(page) < size:
            break
        left = None if left is None else left - len(page)
    await response.write(b"]")
    await response.write_eof()
    return response


def _changes(item: Mapping[str, Any], *, new: bool) -> dict[str, Any]:
    """The definition fields a fylr item gives."""
    changes = {key: value for key, value in item.items() if key not in _NOT_DEFINITION}
    if new and "name" not in changes:
        # fylr tasks have no name; taskd's CLI and config need one, so one is made up.
        changes["name"] = f"task-{secrets.token_hex(4)}"
    return changes


@routes.post("/task")
@scope("tasks/create")
async def save_tasks(request: web.Request) -> web.Response:
    """Create or update tasks from an array of wrapped tasks: all or nothing.

    Everything that can refuse an item is checked before the first write: validation (400),
    the scope for updates (403), versions, config-owned tasks and names already taken (409).
    """
    core = request.config_dict[CORE]
    body = await read_json(request)
    if not isinstance(body, list):
        raise ApiError(
            400,
            "invalid",
            "the body must be an array of tasks",
            [FieldError("", "must be an array")],
        )
    errors: list[FieldError] = []
    edits: list[Edit] = []
    updated_ids: set[int] = set()
    for index, item in enumerate(body):
        path = f"[{index}].task"
        inner = item.get("task") if isinstance(item, dict) else None
        if not isinstance(inner, dict):
            errors.append(FieldError(f"[{index}]", "must be an object with a 'task' object"))
            continue
        existing: Task | None = None
        if "_id" in inner:
            task_id = parse_id(inner["_id"])
            if task_id is None:
                errors.append(FieldError(f"{path}._id", "must be the id of a task"))
                continue
            if task_id in updated_ids:
                errors.append(FieldError(f"{path}._id", f"task {task_id} is given twice"))
                continue
            try:
                existing = await core.get_task(task_id, owner=owner_scope(request))
            except NotFoundError:
                errors.append(FieldError(f"{path}._id", f"no task {task_id}"))
                continue
            updated_ids.add(task_id)
        changes = _changes(inner, new=existing is None)
        try:
            edits.append(await core.edit(changes, existing, path=path, version_required=True))
        except ValidationError as error:
            errors.extend(error.errors)
    if errors:
        raise ValidationError(errors)
    if any(edit.task for edit in edits) and not principal(request).allows("tasks/update"):
        raise ApiError(403, "forbidden", "updating tasks needs the scope tasks/update")
    saved = await core.save(edits, by=principal(request).name)
    return web.json_response([task_v1(core.shown(task)) for task in saved])


@routes.get("/task/modules")
@scope("tasks/index")
async def list_modules(request: web.Request) -> web.Response:
    """The modules, keyed by name (the spec types `modules` as an object)."""
    described = request.config_dict[CORE].describe_modules()
    return web.json_response({"modules": {module["name"]: module for module in described}})


# The spec's text names the singular path too.
routes.get("/task/module")(list_modules)


@routes.get("/task/{task_id}")
@scope("tasks/show")
async def get_task(request: web.Request) -> web.Response:
    """One task, wrapped."""
    return web.json_response(task_v1(request.config_dict[CORE].shown(await _task(request))))


@routes.delete("/task/{task_id}")
@scope("tasks/destroy")
async def delete_task(request: web.Request) -> web.Response:
    """Delete a task."""
    task = await _task(request)
    await request.config_dict[CORE].delete_task(task.id)
    return web.json_response({"acknowledged": "ok"})


@routes.post("/task/{task_id}/cancel")
@scope("tasks/action")
async def cancel_task(request: web.Request) -> web.Response:
    """Cancel the task's running execution (a cooperative stop, forced after the grace)."""
    task = await _task(request)
    await request.config_dict[CORE].stop(task.id, "canceled")
    return web.json_response({"acknowledged": "ok"})


@routes.get("/task/{task_id}/log")
@scope("tasks/show")
async def task_log(request: web.Request) -> web.Response:
    """Log entries from `offset`, at most `limit`."""
    task = await _task(request)
    offset = query_int(request, "offset", 0) or 0
    limit = query_int(request, "limit", 100, low=1, high=10_000) or 100
    entries = await request.config_dict[CORE].read_log(task.id, offset=offset, limit=limit)
    return web.json_response([log_entry_json(entry) for entry in entries])


def app() -> web.Application:
    """The fylr sub-app (mounted at `/api/v1`), answering failures the fylr way."""
    return dialect_app(routes, V1)
