"""What both dialects' handlers share: typed app keys, scopes, request parsing."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from taskd.api.auth import Authenticator, Principal
from taskd.api.cache import ReadCache
from taskd.api.errors import ApiError
from taskd.api.limits import ConnectionCap, FailureLimiter, InFlight
from taskd.core import Core
from taskd.definition import MAX_ID
from taskd.errors import FieldError
from taskd.metrics import Metrics
from taskd.model import Task
from taskd.settings import ApiSettings

CORE = web.AppKey("core", Core)
AUTH = web.AppKey("auth", Authenticator)
API_SETTINGS = web.AppKey("api_settings", ApiSettings)
HealthCheck = Callable[[], Awaitable[dict[str, Any]]]
HEALTH: web.AppKey[HealthCheck] = web.AppKey("health")
METRICS = web.AppKey("metrics", Metrics)
LOGIN_LIMITER = web.AppKey("login_limiter", FailureLimiter)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
CONNECTIONS = web.AppKey("connections", ConnectionCap)
READ_CACHE = web.AppKey("read_cache", ReadCache)
if TYPE_CHECKING or hasattr(web, "RequestKey"):
    # A typed key: aiohttp 3.14 warns about str keys, and a warning must not fail a request
    # where warnings are errors (the test suite).
    PRINCIPAL = web.RequestKey("taskd_principal", Principal)
else:  # older aiohttp has no RequestKey and no warning
    PRINCIPAL = "taskd_principal"

if TYPE_CHECKING or hasattr(web, "RequestKey"):
    IN_FLIGHT_RELEASE: web.RequestKey[Callable[[], None]] = web.RequestKey(
        "taskd_in_flight_release"
    )
else:
    IN_FLIGHT_RELEASE = "taskd_in_flight_release"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
T = TypeVar("T")

PUBLIC = "public"


def scope(*names: str) -> Callable[[H], H]:
    """Mark a handler with the scope it needs (`tasks/show`), or `PUBLIC`; given several
    (`"metrics", "tasks/index"`), any one of them suffices."""

    def mark(handler: H) -> H:
        handler.taskd_scope = names  # type: ignore[attr-defined]
        return handler

    return mark


# Items rendered to JSON between two yields to the event loop: a page of 1,000 tasks (v1
# lists up to 100,000) never holds the loop in one piece.
RENDER_STEP = 100


async def json_array(request: web.Request, items: Sequence[T], render: Callable[[T], Any]) -> str:
    """`items` rendered and serialized as a JSON array, `RENDER_STEP` at a time, yielding to
    the loop in between (and waiting while the engine goes first)."""
    parts: list[str] = []
    gate = request.config_dict[CONNECTIONS]
    for start in range(0, len(items), RENDER_STEP):
        if start:
            await asyncio.sleep(0)
        await gate.wait_open()
        parts.extend(json.dumps(render(item)) for item in items[start : start + RENDER_STEP])
    return "[" + ", ".join(parts) + "]"


def json_body_response(body: bytes, status: int = 200) -> web.Response:
    """A response whose body is `body`, JSON already encoded as UTF-8."""
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")


def json_text_response(text: str, status: int = 200) -> web.Response:
    """A response whose body is `text`, already JSON."""
    return web.Response(text=text, status=status, content_type="application/json")


def leave_in_flight(request: web.Request) -> None:
    """Stop counting `request` among the requests in flight: for a live stream, which may
    last hours and holds a connection (capped), not the loop."""
    release = request.get(IN_FLIGHT_RELEASE)
    if release is not None:
        release()


def principal(request: web.Request) -> Principal:
    """Who the request acts for (set by the auth middleware)."""
    found: Principal = request[PRINCIPAL]
    return found


# Nesting deeper than this is refused: nothing taskd stores needs it, and validating,
# storing and rendering a value recurse over it (Python's stack is the limit otherwise).
MAX_JSON_DEPTH = 64


def _malformed(reason: str) -> ApiError:
    return ApiError(400, "malformed_json", f"the body is not valid JSON: {reason}")


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON does not have.
    raise _malformed(f"{name} is not a JSON value")


def _depth(value: Any) -> int:
    """How deeply `value` nests arrays and objects (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            level += 1
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break
            stack.extend(
                (item, level) for item in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


async def read_body(request: web.Request) -> bytes:
    """The request body (aiohttp keeps it once read); 400 if it is not what its
    `Content-Encoding` says."""
    try:
        return await request.read()
    except web.RequestPayloadError:
        # aiohttp undoes a Content-Encoding while reading; a body that is not what the
        # header says (not gzip under `gzip`) fails there, and is the client's error.
        encoding = request.headers.get("Content-Encoding", "")
        raise ApiError(
            400,
            "malformed_body",
            f"the body could not be read: it is not encoded as its Content-Encoding"
            f" {encoding!r} says",
            # The stream is out of step with the request: the connection cannot carry another.
            headers={"Connection": "close"},
        ) from None


async def read_json(request: web.Request) -> Any:
    """Parse the request body as JSON (UTF-8, RFC 8259); 400 saying why if it is not.

    Refused: bytes that are not UTF-8, NaN and Infinity, numbers Python will not convert
    (more than 4300 digits), nesting deeper than `MAX_JSON_DEPTH`.
    """
    raw = await read_body(request)
    try:
        # JSON is UTF-8 (RFC 8259, 8.1); a charset parameter is not consulted.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _malformed(f"it is not UTF-8 (invalid byte at offset {error.start})") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise _malformed(f"{error.msg} at line {error.lineno}, column {error.colno}") from None
    except (ValueError, RecursionError) as error:
        # int() refusing a huge number, or arrays nested past Python's recursion limit.
        reason = "it nests too deeply" if isinstance(error, RecursionError) else str(error)
        raise _malformed(reason) from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise _malformed(f"it nests arrays and objects more than {MAX_JSON_DEPTH} deep")
    return value


def parse_id(value: object) -> int | None:
    """An id as a path, query or body gives it (ASCII digits, or a JSON integer), or None.

    None for anything that cannot name a row: other digits (`'²'.isdigit()` holds, but
    `int('²')` fails), signs, bools, fractions, numbers past SQLite's integers.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > 19:
            return None
        number = int(value)
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        return None
    return number if 0 < number <= MAX_ID else None


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


_QUERY_INT = re.compile(r"-?[0-9]{1,19}")


def query_int(
    request: web.Request, name: str, default: int | None, *, low: int = 0, high: int = 10**9
) -> int | None:
    """Read an integer query parameter in low..high; 400 naming it otherwise (an empty
    value too: `?limit=` is no integer, as the OpenAPI document says)."""
    text = request.query.get(name)
    if text is None:
        return default
    # int() also reads `1_0`, ` 10`, `+10` and digits of other scripts (Arabic-Indic): a query
    # integer is ASCII digits with an optional minus, nothing else.
    value = int(text) if _QUERY_INT.fullmatch(text) else None
    if value is None or not low <= value <= high:
        raise ApiError(
            400,
            "invalid_query",
            f"query parameter {name!r} must be an integer in {low}..{high}, got {text!r}",
            [FieldError(name, f"must be an integer in {low}..{high}")],
        )
    return value


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """Read a boolean query parameter (`true`/`false`/`1`/`0`); 400 otherwise (an empty
    value too)."""
    text = request.query.get(name)
    if text is None:
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
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is in year 0 in UTC
        raise ApiError(
            400,
            "invalid_query",
            f"query parameter {name!r}: {value!r} is outside the years 1..9999 in UTC",
            [FieldError(name, "must be a date-time within the years 1..9999 in UTC")],
        ) from None


def owner_scope(request: web.Request) -> str | None:
    """Whose tasks the request may reach: the principal's own and the config tasks (its
    name), or every task (None) for an admin (the scope `admin`, `*`, the trusted socket).
    """
    who = principal(request)
    return None if who.is_admin else who.name


def listing_owner(request: web.Request) -> str | None:
    """Whose tasks a list shows: the principal's own and the config tasks by default, an
    admin's included (Nodeum's rule); every owner's (None) with `all=true`, which only an
    admin may ask for (403 otherwise)."""
    who = principal(request)
    if not query_bool(request, "all"):
        return who.name
    if not who.is_admin:
        raise ApiError(
            403, "forbidden", "all=true lists every owner's tasks: it needs the scope admin"
        )
    return None


async def task_from_path(request: web.Request, key: str = "task_id") -> Task:
    """The task named by a path parameter: numeric id or name. NotFoundError (404) if there
    is none, or if it is another owner's and the principal is no admin (not 403: its
    existence is not disclosed)."""
    return await request.config_dict[CORE].find(request.match_info[key], owner=owner_scope(request))
