"""The middlewares every app of the API stacks: errors answered in the app's dialect, then
credentials and scopes.

Each dialect's sub-app has its own error middleware (`errors(V1)`, `errors(V2)`); the root
app has one for its own routes (metrics) and for paths no sub-app serves. `authenticate` sits
inside the error middleware of every app and checks only in the innermost app serving the
request, so a 401 or 403 answers in that app's dialect and credentials are checked once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from taskd.api.auth import UNIX_SOCKET_PRINCIPAL, TokenRefused
from taskd.api.common import (
    API_SETTINGS,
    AUTH,
    CONNECTIONS,
    CORE,
    IN_FLIGHT,
    IN_FLIGHT_RELEASE,
    LOGIN_LIMITER,
    PRINCIPAL,
    PUBLIC,
    Handler,
    read_body,
)
from taskd.api.connections import CountedProtocol
from taskd.api.errors import ApiError, Renderer, v1_error, v2_error
from taskd.api.limits import RETRY_AFTER_BUSY_SEC
from taskd.errors import (
    ActionError,
    ConflictError,
    DeferError,
    NodeTimeoutError,
    NotFoundError,
    StoreUnavailableError,
    ValidationError,
)

log = structlog.get_logger("taskd.api")

# What a 503 for an unavailable store suggests: long enough for the store's retries.
STORE_RETRY_AFTER_SEC = 5


@dataclass(frozen=True, slots=True)
class ErrorStyle:
    """How a dialect answers failures: its renderer, the status of invalid input, and the
    code word of a refused action."""

    render: Renderer
    invalid_status: int
    refused_code: str


V1 = ErrorStyle(v1_error, 400, "conflict")
V2 = ErrorStyle(v2_error, 422, "data_management_error")


def _as_api_error(error: Exception, style: ErrorStyle) -> ApiError | None:
    """The answer to a failure, or None for one that is a bug (answered 500, logged)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, ValidationError):
        return ApiError(style.invalid_status, "invalid", str(error), error.errors)
    if isinstance(error, NotFoundError):
        return ApiError(404, "not_found", str(error))
    if isinstance(error, ConflictError):
        return ApiError(409, "conflict", str(error))
    if isinstance(error, StoreUnavailableError):
        return ApiError(
            503,
            "store_unavailable",
            f"store unavailable: {error.reason}",
            headers={"Retry-After": str(STORE_RETRY_AFTER_SEC)},
        )
    if isinstance(error, NodeTimeoutError):  # cluster: the owner node did not answer
        return ApiError(504, "node_timeout", str(error))
    if isinstance(error, ActionError | DeferError):
        status = 404 if isinstance(error, DeferError) and "unknown" in str(error) else 409
        return ApiError(status, style.refused_code, str(error))
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return ApiError(413, "too_large", error.text or "the body is too large")
    if isinstance(error, web.HTTPException):
        headers = {
            k: v for k, v in error.headers.items() if k.lower() in {"allow", "www-authenticate"}
        }
        return ApiError(
            error.status, error.reason.lower().replace(" ", "_"), error.reason, headers=headers
        )
    return None


def errors(style: ErrorStyle) -> Middleware:
    """A middleware that turns every failure into an answer in `style`; never a traceback."""

    @web.middleware
    async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as error:
            if isinstance(error, web.HTTPException) and error.status < 400:
                raise  # a redirect is an answer already
            answer = _as_api_error(error, style)
            if answer is None:
                log.exception("request failed", method=request.method, path=request.path)
                answer = ApiError(500, "internal", "internal error; see the daemon's log")
            return style.render(answer)

    return answer_errors


def _is_unix(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


def _refusal(authorization: str | None) -> str:
    """Why credentials were refused: none were sent, or those sent are not valid (a wrong
    key should not read like a forgotten one)."""
    if not authorization or not authorization.strip():
        return "credentials required: an API key (Authorization: Bearer <key>) or Basic auth"
    if authorization.strip().partition(" ")[0].lower() == "basic":
        return "the user name or password is not valid"
    return "the API key is not valid"


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check credentials and the route's scope (401 without, 403 outside the scopes).

    A route marked with several scopes lets credentials with any one of them through; an
    unmarked route, any valid credentials. Only the innermost app serving the request checks.
    """
    if request.match_info.apps[-1] is not request.app:
        return await handler(request)  # a sub-app's own `authenticate` checks
    route_handler = request.match_info.handler
    needed: tuple[str, ...] = getattr(route_handler, "taskd_scope", ())
    if PUBLIC in needed:
        return await handler(request)
    settings = request.config_dict[API_SETTINGS]
    if _is_unix(request) and settings.trust_unix_socket:
        request[PRINCIPAL] = UNIX_SOCKET_PRINCIPAL
        return await handler(request)
    authorization = request.headers.get("Authorization")
    # Failed logins are limited per TCP client address; the Unix socket is not limited
    # (its file mode guards it, and its peers have no address to tell them apart).
    address = None if _is_unix(request) else (request.remote or "")
    limiter = request.config_dict[LOGIN_LIMITER]
    if address is not None:
        wait = limiter.retry_after(address)
        if wait:
            raise ApiError(
                429,
                "too_many_requests",
                f"too many failed logins from this address: retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
    refusal: str | None = None
    try:
        principal = await request.config_dict[AUTH].authenticate(authorization)
    except TokenRefused as refused:  # a JWT that is not valid: the reason is the answer
        principal, refusal = None, str(refused)
    if principal is None:
        if address is not None and authorization and authorization.strip():
            limiter.failed(address)
        raise ApiError(
            401,
            "unauthorized",
            refusal or _refusal(authorization),
            headers={"WWW-Authenticate": 'Basic realm="taskd", Bearer realm="taskd"'},
        )
    if needed and not any(principal.allows(name) for name in needed):
        raise ApiError(403, "forbidden", f"the credentials lack the scope {' or '.join(needed)}")
    request[PRINCIPAL] = principal
    return await handler(request)


HEALTH_PATH = "/api/v2/health"


def _style_of(path: str) -> ErrorStyle:
    return V1 if path == "/api/v1" or path.startswith("/api/v1/") else V2


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The root app's outermost middleware: tell the connection its request's head arrived
    (its deadline is met), and cap the requests in flight (health apart): one more is
    answered 503 with Retry-After in its dialect's shape, at once, never queued.
    """
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    counted = protocol if isinstance(protocol, CountedProtocol) else None
    if counted is not None:
        counted.request_started()
    try:
        if request.path == HEALTH_PATH:
            return await handler(request)
        in_flight = request.config_dict[IN_FLIGHT]
        if not in_flight.enter():
            return _style_of(request.path).render(
                ApiError(
                    503,
                    "busy",
                    f"taskd is handling {in_flight.limit} requests already: retry shortly",
                    headers={"Retry-After": str(RETRY_AFTER_BUSY_SEC)},
                )
            )
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                in_flight.leave()

        request[IN_FLIGHT_RELEASE] = leave
        try:
            await request.config_dict[CONNECTIONS].wait_open()  # the engine goes first
            # The engine's reads never queue behind the API's.
            with request.config_dict[CORE].front_end_reads():
                return await handler(request)
        finally:
            leave()
    finally:
        if counted is not None:
            counted.request_ended()


@web.middleware
async def read_body_first(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read the body (bounded by `max_body_bytes`) within `request_timeout_sec`, after the
    credentials were checked: a client trickling its body holds a slot only that long."""
    if request.body_exists and request.match_info.apps[-1] is request.app:
        timeout = request.config_dict[API_SETTINGS].request_timeout_sec
        try:
            async with asyncio.timeout(timeout):
                await read_body(request)
        except TimeoutError:
            raise ApiError(
                408, "request_timeout", f"the body did not arrive within {timeout:g} s"
            ) from None
    return await handler(request)


def dialect_app(routes: web.RouteTableDef, style: ErrorStyle) -> web.Application:
    """A sub-app serving `routes`, answering failures in `style`, checking credentials."""
    app = web.Application(middlewares=[errors(style), authenticate, read_body_first])
    app.router.add_routes(routes)
    return app
