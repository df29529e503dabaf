"""The aiohttp application: both dialects over one core, auth and error middlewares, and
the sites it listens on (TCP addresses and a Unix socket).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from taskd.api import v1, v2
from taskd.api.auth import UNIX_SOCKET_PRINCIPAL, Authenticator
from taskd.api.common import (
    API_SETTINGS,
    AUTH,
    CORE,
    HEALTH,
    METRICS,
    PRINCIPAL,
    PUBLIC,
    Handler,
    scope,
)
from taskd.api.errors import ApiError, v1_error, v2_error
from taskd.api.openapi import METRICS_PATH, openapi_document
from taskd.config import ApiSettings
from taskd.core import Core
from taskd.errors import ActionError, ConflictError, DeferError, NotFoundError, ValidationError
from taskd.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from taskd.metrics import Metrics

log = structlog.get_logger("taskd.api")

V1_PREFIX = "/api/v1"
V2_PREFIX = "/api/v2"


def _is_unix(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into an answer in the request's dialect; never a traceback."""
    v1_request = request.path.startswith(V1_PREFIX + "/")
    render = v1_error if v1_request else v2_error
    try:
        return await handler(request)
    except ApiError as error:
        return render(error)
    except ValidationError as error:
        return render(ApiError(400 if v1_request else 422, "invalid", str(error), error.errors))
    except NotFoundError as error:
        return render(ApiError(404, "not_found", str(error)))
    except ConflictError as error:
        return render(ApiError(409, "conflict", str(error)))
    except (ActionError, DeferError) as error:
        code = "conflict" if v1_request else "data_management_error"
        status = 404 if isinstance(error, DeferError) and "unknown" in str(error) else 409
        return render(ApiError(status, code, str(error)))
    except web.HTTPRequestEntityTooLarge as error:
        return render(ApiError(413, "too_large", error.text or "the body is too large"))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return render(
            ApiError(
                error.status,
                error.reason.lower().replace(" ", "_"),
                error.reason,
                headers={
                    k: v
                    for k, v in error.headers.items()
                    if k.lower() in {"allow", "www-authenticate"}
                },
            )
        )
    except Exception:
        log.exception("request failed", method=request.method, path=request.path)
        return render(ApiError(500, "internal", "internal error; see the daemon's log"))


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check credentials and the route's scope (401 without, 403 outside the scopes).

    A route marked with several scopes lets credentials with any one of them through; an
    unmarked route, any valid credentials.
    """
    route_handler = request.match_info.handler
    needed: tuple[str, ...] = getattr(route_handler, "taskd_scope", ())
    if PUBLIC in needed:
        return await handler(request)
    settings = request.app[API_SETTINGS]
    if _is_unix(request) and settings.trust_unix_socket:
        request[PRINCIPAL] = UNIX_SOCKET_PRINCIPAL
        return await handler(request)
    principal = request.app[AUTH].authenticate(request.headers.get("Authorization"))
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "credentials required: an API key (Authorization: Bearer <key>) or Basic auth",
            headers={"WWW-Authenticate": 'Basic realm="taskd", Bearer realm="taskd"'},
        )
    if needed and not any(principal.allows(name) for name in needed):
        raise ApiError(403, "forbidden", f"the credentials lack the scope {' or '.join(needed)}")
    request[PRINCIPAL] = principal
    return await handler(request)


async def _openapi(request: web.Request) -> web.Response:
    """taskd's OpenAPI document. Any valid credentials may read it (no scope is needed);
    health is the only route TCP serves without credentials (DESIGN.md, "Access").
    """
    return web.json_response(openapi_document(metrics=METRICS in request.app))


@scope("metrics", "tasks/index")
async def _metrics(request: web.Request) -> web.Response:
    """taskd's metrics in the Prometheus text format. A scraper's key needs only `metrics`;
    `tasks/index` already lists more than the metrics tell, so it is enough too.
    """
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def build_app(
    *,
    core: Core,
    auth: Authenticator,
    api_settings: ApiSettings,
    health: Callable[[], Awaitable[dict[str, Any]]],
    metrics: Metrics | None = None,
) -> web.Application:
    """The application serving both dialects over `core`, and `GET /metrics` if given
    `metrics`."""
    app = web.Application(client_max_size=api_settings.max_body_bytes, middlewares=[_errors, _auth])
    app[CORE] = core
    app[AUTH] = auth
    app[API_SETTINGS] = api_settings
    app[HEALTH] = health
    for prefix, table in ((V2_PREFIX, v2.routes), (V1_PREFIX, v1.routes)):
        for route in table:
            assert isinstance(route, web.RouteDef)
            app.router.add_route(route.method, prefix + route.path, route.handler)
    app.router.add_get(V2_PREFIX + "/openapi.json", _openapi)
    if metrics is not None:
        app[METRICS] = metrics
        app.router.add_get(METRICS_PATH, _metrics)
    return app


def registered_routes(app: web.Application) -> list[AbstractRoute]:
    """Every route the app serves (for the OpenAPI coverage test)."""
    return [route for route in app.router.routes() if route.method != "HEAD"]


@asynccontextmanager
async def serve_api(
    app: web.Application, settings: ApiSettings, *, unix_socket_fd: int | None = None
) -> AsyncIterator[web.AppRunner]:
    """Listen on every configured TCP address and the Unix socket until the block ends."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    created: Path | None = None  # the socket file this call made, and so must remove
    try:
        for address in settings.listen:
            site = web.TCPSite(runner, address.host, address.port, reuse_address=True)
            await site.start()
            log.info("listening", address=str(address))
        if unix_socket_fd is not None:
            sock = socket.socket(fileno=unix_socket_fd)
            await web.SockSite(runner, sock).start()
            log.info("listening on an inherited socket", fd=unix_socket_fd)  # systemd owns it
        elif settings.unix_socket is not None:
            socket_path = settings.unix_socket
            _clear_stale_socket(socket_path)
            socket_path.parent.mkdir(parents=True, exist_ok=True)
            await web.UnixSite(runner, str(socket_path)).start()
            created = socket_path
            os.chmod(socket_path, 0o660)
            log.info("listening", unix_socket=str(socket_path))
        yield runner
    finally:
        await runner.cleanup()
        # Only a file this call bound: when binding failed (a live daemon serves the path,
        # or a file that is no socket sits there), the file is someone else's.
        if created is not None:
            with contextlib.suppress(FileNotFoundError):
                created.unlink()


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file a crashed taskd left; refuse if a live daemon answers on it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another process serves {path}")
