"""What both dialects' handlers share: typed app keys, scopes, request parsing."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from taskd.api.auth import Authenticator, Principal
from taskd.api.errors import ApiError
from taskd.config import ApiSettings
from taskd.core import Core
from taskd.errors import FieldError, NotFoundError
from taskd.model import Task

CORE = web.AppKey("core", Core)
AUTH = web.AppKey("auth", Authenticator)
API_SETTINGS = web.AppKey("api_settings", ApiSettings)
HealthCheck = Callable[[], Awaitable[dict[str, Any]]]
HEALTH: web.AppKey[HealthCheck] = web.AppKey("health")
PRINCIPAL = "taskd_principal"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

PUBLIC = "public"


def scope(name: str) -> Callable[[H], H]:
    """Mark a handler with the scope it needs (`tasks/show`), or `PUBLIC`."""

    def mark(handler: H) -> H:
        handler.taskd_scope = name  # type: ignore[attr-defined]
        return handler

    return mark


def principal(request: web.Request) -> Principal:
    """Who the request acts for (set by the auth middleware)."""
    found: Principal = request[PRINCIPAL]
    return found


async def read_json(request: web.Request) -> Any:
    """Parse the request body as JSON; 400 naming the position if it is not."""
    text = await request.text()
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ApiError(
            400,
            "malformed_json",
            f"the body is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}",
        ) from None


async def read_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """Parse the body as a JSON object (an absent body is `{}` unless `required`)."""
    body = await read_json(request)
    if body is None and not required:
        return {}
    if not isinstance(body, dict):
        raise ApiError(
            422, "invalid", "the body must be a JSON object", [FieldError("", "must be an object")]
        )
    return body


def query_int(
    request: web.Request, name: str, default: int | None, *, low: int = 0, high: int = 10**9
) -> int | None:
    """Read an integer query parameter in low..high; 400 naming it otherwise."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ApiError(
            400,
            "invalid_query",
            f"query parameter {name!r} must be an integer in {low}..{high}, got {text!r}",
            [FieldError(name, f"must be an integer in {low}..{high}")],
        )
    return value


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """Read a boolean query parameter (`true`/`false`/`1`/`0`); 400 otherwise."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if text.lower() in {"true", "1", "yes"}:
        return True
    if text.lower() in {"false", "0", "no"}:
        return False
    raise ApiError(
        400,
        "invalid_query",
        f"query parameter {name!r} must be true or false, got {text!r}",
        [FieldError(name, "must be true or false")],
    )


def query_time(value: str, name: str) -> datetime:
    """Parse an RFC 3339 query value (a date alone means its UTC midnight); 400 otherwise."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(
            400,
            "invalid_query",
            f"query parameter {name!r}: {value!r} is not an RFC 3339 date-time",
            [FieldError(name, "must be an RFC 3339 date-time")],
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


async def task_from_path(request: web.Request, key: str) -> Task:
    """The task named by a path parameter: numeric id or name. 404 if there is none."""
    core = request.app[CORE]
    try:
        return await core.find(request.match_info[key])
    except NotFoundError as error:
        raise ApiError(404, "not_found", str(error)) from None
