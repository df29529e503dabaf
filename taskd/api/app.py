"""The aiohttp application: both dialects over one core, auth and error middlewares, and
the sites it listens on (TCP addresses and a Unix socket).
"""

from __future__ import annotations

import asyncio
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
from taskd.api.auth import Authenticator
from taskd.api.cache import ReadCache
from taskd.api.common import (
    API_SETTINGS,
    AUTH,
    CONNECTIONS,
    CORE,
    HEALTH,
    IN_FLIGHT,
    LOGIN_LIMITER,
    METRICS,
    READ_CACHE,
    scope,
)
from taskd.api.connections import (
    LOG_INTERVAL_SEC,
    CappedTCPSite,
    engine_first,
    exception_handler,
)
from taskd.api.limits import ConnectionCap, FailureLimiter, InFlight, LogThrottle
from taskd.api.middleware import V2, authenticate, errors, guard
from taskd.api.openapi import METRICS_PATH
from taskd.api.ui import add_ui, is_ui_route
from taskd.core import Core
from taskd.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from taskd.metrics import Metrics
from taskd.settings import ApiSettings

log = structlog.get_logger("taskd.api")

V1_PREFIX = "/api/v1"
V2_PREFIX = "/api/v2"


@scope("metrics", "tasks/index")
async def _metrics(request: web.Request) -> web.Response:
    """taskd's metrics in the Prometheus text format. A scraper's key needs only `metrics`;
    `tasks/index` already lists more than the metrics tell, so it is enough too.
    """
    body = request.config_dict[METRICS].render()
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
    `metrics`.

    Each dialect is a sub-app with its own error middleware; the services reach their
    handlers through the root app's keys (`request.config_dict[CORE]`). The root app
    answers what no dialect serves (metrics, unknown paths) the Nodeum way.
    """
    app = web.Application(
        client_max_size=api_settings.max_body_bytes,
        middlewares=[guard, errors(V2), authenticate],
    )
    app[CORE] = core
    app[AUTH] = auth
    app[API_SETTINGS] = api_settings
    app[HEALTH] = health
    app[LOGIN_LIMITER] = FailureLimiter(api_settings.auth_failures_per_minute)
    app[IN_FLIGHT] = InFlight(api_settings.max_in_flight)
    app[CONNECTIONS] = ConnectionCap(api_settings.max_connections)
    # Reads are cached only while no other process writes the store (Core.sole_writer).
    app[READ_CACHE] = ReadCache(
        lambda: core.writes_committed(), enabled=core is None or core.sole_writer
    )
    # Live log streams end before the server waits for its handlers to finish.
    app.on_shutdown.append(_stop_following)
    app.add_subapp(V2_PREFIX, v2.app())
    app.add_subapp(V1_PREFIX, v1.app())
    if metrics is not None:
        app[METRICS] = metrics
        app.router.add_get(METRICS_PATH, _metrics)
    add_ui(app)  # the web page: public static files, no API route
    return app


async def _stop_following(app: web.Application) -> None:
    app[CORE].stop_following()


def registered_routes(app: web.Application) -> list[AbstractRoute]:
    """Every API route the app serves, the web page's files apart (for the OpenAPI coverage
    test)."""
    return [
        route
        for route in app.router.routes()
        if route.method != "HEAD"
        and not (route.resource is not None and is_ui_route(route.resource.canonical))
    ]


@asynccontextmanager
async def serve_api(
    app: web.Application, settings: ApiSettings, *, unix_socket_fd: int | None = None
) -> AsyncIterator[web.AppRunner]:
    """Listen on every configured TCP address and the Unix socket until the block ends.

    TCP connections are counted and capped (`max_connections`), idle ones closed after
    `keepalive_timeout_sec`, slow request heads after `request_timeout_sec`; the loop's
    exception handler logs accept failures once per interval (see `taskd.api.connections`).
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=settings.keepalive_timeout_sec,
    )
    await runner.setup()
    throttle = LogThrottle(LOG_INTERVAL_SEC)
    cap = app.get(CONNECTIONS) or ConnectionCap(settings.max_connections)
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(exception_handler(throttle))
    created: Path | None = None  # the socket file this call made, and so must remove
    try:
        for address in settings.listen:
            site = CappedTCPSite(
                runner,
                address.host,
                address.port,
                cap=cap,
                request_timeout_sec=settings.request_timeout_sec,
                throttle=throttle,
            )
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
        core = app.get(CORE)
        stepping_aside = (
            None
            if core is None
            else asyncio.create_task(
                engine_first(cap, core.scheduler, core.runner), name="taskd-engine-first"
            )
        )
        try:
            yield runner
        finally:
            if stepping_aside is not None:
                stepping_aside.cancel()
            cap.resume_all()
    finally:
        await runner.cleanup()
        loop.set_exception_handler(previous_handler)
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
