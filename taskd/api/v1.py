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

from taskd.api.common import CORE, LIVE_FIELDS, parse_id, principal, query_int, read_json, scope
from taskd.api.errors import ApiError
from taskd.api.render import log_entry_json, task_v1
from taskd.core import Core
from taskd.errors import ConflictError, FieldError, NotFoundError, ValidationError
from taskd.model import Task, TaskSource, TaskSpec

routes = web.RouteTableDef()

# Fields a client may send back as it got them; they are not part of a definition.
READ_ONLY = LIVE_FIELDS | {"_id", "comment"}


async def _task(request: web.Request) -> Task:
    text = request.match_info["task_id"]
    task_id = parse_id(text)
    try:
        if task_id is None:
            raise NotFoundError(f"task {text!r} not found")
        return await request.app[CORE].store.get_task(task_id)
    except NotFoundError as error:
        raise ApiError(404, "not_found", str(error)) from None


@routes.get("/task")
@scope("tasks/index")
async def list_tasks(request: web.Request) -> web.Response:
    """All tasks, wrapped."""
    core = request.app[CORE]
    limit = query_int(request, "limit", None, low=0, high=100_000)
    offset = query_int(request, "offset", 0) or 0
    tasks, _ = await core.store.query_tasks(limit=limit, offset=offset)
    return web.json_response([task_v1(task) for task in tasks])


def _definition(item: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    raw = dict(base or {})
    for key, value in item.items():
        if key not in READ_ONLY:
            raw[key] = value
    if "name" not in raw:
        # fylr tasks have no name; taskd's CLI and config need one, so one is made up.
        raw["name"] = f"task-{secrets.token_hex(4)}"
    return raw


@routes.post("/task")
@scope("tasks/create")
async def save_tasks(request: web.Request) -> web.Response:
    """Create or update tasks from an array of wrapped tasks: all or nothing.

    Everything that can refuse an item is checked before the first write: validation (400),
    the scope for updates (403), versions, config-owned tasks and names already taken (409).
    """
    core = request.app[CORE]
    body = await read_json(request)
    if not isinstance(body, list):
        raise ApiError(
            400,
            "invalid",
            "the body must be an array of tasks",
            [FieldError("", "must be an array")],
        )
    errors: list[FieldError] = []
    plans: list[tuple[Task | None, TaskSpec, int | None]] = []
    updated_ids: set[int] = set()
    for index, item in enumerate(body):
        path = f"[{index}].task"
        inner = item.get("task") if isinstance(item, dict) else None
        if not isinstance(inner, dict):
            errors.append(FieldError(f"[{index}]", "must be an object with a 'task' object"))
            continue
        existing: Task | None = None
        expected: int | None = None
        if "_id" in inner:
            task_id = parse_id(inner["_id"])
            if task_id is None:
                errors.append(FieldError(f"{path}._id", "must be the id of a task"))
                continue
            if task_id in updated_ids:
                errors.append(FieldError(f"{path}._id", f"task {task_id} is given twice"))
                continue
            try:
                existing = await core.store.get_task(task_id)
            except NotFoundError:
                errors.append(FieldError(f"{path}._id", f"no task {task_id}"))
                continue
            updated_ids.add(task_id)
            version = inner.get("version")
            if isinstance(version, bool) or not isinstance(version, int):
                errors.append(FieldError(f"{path}.version", "is required: current version + 1"))
                continue
            expected = version - 1
        try:
            spec = core.validate(_definition(inner, existing.spec if existing else None), path=path)
        except ValidationError as error:
            errors.extend(error.errors)
            continue
        plans.append((existing, spec, expected))
    if errors:
        raise ValidationError(errors)
    if not _user_may_update(request) and any(existing for existing, _, _ in plans):
        raise ApiError(403, "forbidden", "updating tasks needs the scope tasks/update")
    await _check_conflicts(core, plans)
    by = principal(request).name
    saved = []
    for existing, spec, expected in plans:
        if existing is None:
            saved.append(await core.create_task(spec, by=by))
        else:
            saved.append(
                await core.update_task(existing.id, spec, expected_version=expected, by=by)
            )
    return web.json_response([task_v1(task) for task in saved])


async def _check_conflicts(
    core: Core, plans: list[tuple[Task | None, TaskSpec, int | None]]
) -> None:
    """Raise ConflictError (409) for the first item the store would refuse.

    The store checks again when it writes; checking first keeps a refused item from leaving
    the items before it written.
    """
    names: dict[str, int] = {}
    for index, (existing, spec, expected) in enumerate(plans):
        if existing is not None:
            if existing.source is TaskSource.CONFIG:
                raise ConflictError(
                    f"task {existing.name!r} is defined in {core.config_source}: edit it there"
                )
            if expected is not None and expected != existing.version:
                raise ConflictError(
                    f"task {existing.id} is at version {existing.version}: send version "
                    f"{existing.version + 1}, not {expected + 1}"
                )
        if spec.name in names:
            raise ConflictError(
                f"items {names[spec.name]} and {index} are both named {spec.name!r}"
            )
        names[spec.name] = index
        holder = await core.store.find_task(spec.name)
        if holder is not None and (existing is None or holder.id != existing.id):
            raise ConflictError(f"a task named {spec.name!r} exists already")


def _user_may_update(request: web.Request) -> bool:
    return principal(request).allows("tasks/update")


@routes.get("/task/modules")
@scope("tasks/index")
async def list_modules(request: web.Request) -> web.Response:
    """The modules, keyed by name (the spec types `modules` as an object)."""
    described = request.app[CORE].modules.describe()
    return web.json_response({"modules": {module["name"]: module for module in described}})


# The spec's text names the singular path too.
routes.get("/task/module")(list_modules)


@routes.get("/task/{task_id}")
@scope("tasks/show")
async def get_task(request: web.Request) -> web.Response:
    """One task, wrapped."""
    return web.json_response(task_v1(await _task(request)))


@routes.delete("/task/{task_id}")
@scope("tasks/destroy")
async def delete_task(request: web.Request) -> web.Response:
    """Delete a task."""
    task = await _task(request)
    await request.app[CORE].delete_task(task.id)
    return web.json_response({"acknowledged": "ok"})


@routes.post("/task/{task_id}/cancel")
@scope("tasks/action")
async def cancel_task(request: web.Request) -> web.Response:
    """Cancel the task's running execution (a cooperative stop, forced after the grace)."""
    task = await _task(request)
    core = request.app[CORE]
    await core.stop(task.id, "canceled")
    return web.json_response({"acknowledged": "ok"})


@routes.get("/task/{task_id}/log")
@scope("tasks/show")
async def task_log(request: web.Request) -> web.Response:
    """Log entries from `offset`, at most `limit`."""
    task = await _task(request)
    offset = query_int(request, "offset", 0) or 0
    limit = query_int(request, "limit", 100, low=1, high=10_000) or 100
    entries = await request.app[CORE].store.read_log(task.id, offset=offset, limit=limit)
    return web.json_response([log_entry_json(entry) for entry in entries])
