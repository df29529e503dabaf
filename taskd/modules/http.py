"""The `http` module: send one HTTP request and check the status of the answer.

It logs the status and the first KiB of the response body, each line after waiting for
room in the task log while it is full (`ctx.wait_log_room`), like every producer that can
wait: many requests answering at once add at most a line each past the store's bound. An
unexpected status raises `ModuleError("HTTP 500 from <url>")`; a connection error or a
timeout raises `ModuleError` with the reason. A stop request abandons a request still in flight.

Header values are never logged (they often hold tokens), and neither is a password in the
URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

from taskd.errors import FieldError
from taskd.modules.base import LogLevel, ModuleContext, ModuleError

__all__ = ["MAX_EXCERPT_BYTES", "HttpModule"]

MAX_EXCERPT_BYTES = 1024
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")


class HttpModule:
    """Sends one request; see the module docstring."""

    name = "http"
    description: Mapping[str, str] = {
        "en-US": "Sends an HTTP request and checks the response status.",
        "de-DE": "Sendet eine HTTP-Anfrage und prüft den Status der Antwort.",
    }
    params: list[dict[str, Any]] = [  # noqa: RUF012 (read-only by contract)
        {"name": "url", "type": "text", "required": True, "secret": "url_password"},
        {"name": "method", "type": "select", "options": list(METHODS), "default": "GET"},
        # Header values carry tokens and cookies: every one of them is secret.
        {"name": "headers", "type": "json", "schema": "object", "default": {}, "secret": True},
        # Bodies carry tokens too (an OAuth client secret, a webhook's signing key).
        {"name": "json", "type": "json", "secret": True},
        {"name": "body", "type": "text", "secret": True},
        # Accepted statuses; empty: any 2xx.
        {"name": "expect_status", "type": "json", "schema": "array", "default": []},
        {"name": "timeout_sec", "type": "float", "default": 30.0},
    ]

    def check_params(self, params: Mapping[str, Any]) -> list[FieldError]:
        """An http(s) URL with a host; string headers; not both `json` and `body`; ..."""
        errors: list[FieldError] = []
        try:
            url = URL(params["url"])
        except ValueError as error:
            errors.append(FieldError("url", f"is not a URL: {error}"))
        else:
            if url.scheme not in ("http", "https") or not url.host:
                errors.append(FieldError("url", "must be an http:// or https:// URL with a host"))
        for name, value in params["headers"].items():
            if not isinstance(value, str):
                errors.append(FieldError(f"headers.{name}", "must be a string"))
            elif "\n" in value or "\r" in value:
                errors.append(FieldError(f"headers.{name}", "must not contain a line break"))
        if params["json"] is not None and params["body"] is not None:
            errors.append(FieldError("body", "give at most one of json and body"))
        for index, status in enumerate(params["expect_status"]):
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                errors.append(FieldError(f"expect_status[{index}]", "must be a status in 100..599"))
        if params["timeout_sec"] <= 0:
            errors.append(FieldError("timeout_sec", "must be greater than 0"))
        return errors

    async def run(self, ctx: ModuleContext) -> str:
        """Send the request; return "HTTP <status>" or raise `ModuleError`."""
        request = asyncio.create_task(_request(ctx))
        stop = asyncio.create_task(ctx.wait_stopping())
        try:
            await asyncio.wait({request, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Forced stop or timeout: end the request here, so its session is closed.
            await _cancel_and_wait(request, stop)
            raise
        if request.done():
            await _cancel_and_wait(stop)
            return request.result()
        await _cancel_and_wait(request, stop)
        ctx.log(LogLevel.INFO, "stop requested: the request was abandoned")
        return "stopped before the response came"


async def _cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel `tasks` and wait until they have ended (their outcome is not wanted)."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)


async def _request(ctx: ModuleContext) -> str:
    params = ctx.params
    url = URL(params["url"])
    shown = _shown(url)
    method: str = params["method"]
    timeout_sec: float = params["timeout_sec"]
    body: str | None = params["body"]
    expected: list[int] = params["expect_status"]
    await _log(ctx, f"{method} {shown}")
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_sec)) as session,
            session.request(
                method,
                url,
                headers=params["headers"],
                json=params["json"],
                data=body,
            ) as response,
        ):
            excerpt, more = await _read_excerpt(response)
            status = response.status
    except TimeoutError:
        raise ModuleError(f"no response from {shown} within {timeout_sec:g} s") from None
    except aiohttp.ClientError as error:
        raise ModuleError(f"request to {shown} failed: {_reason(error)}") from None
    await _log(ctx, f"HTTP {status} from {shown}")
    if excerpt:
        suffix = " [cut]" if more else ""
        await _log(ctx, f"response body: {excerpt}{suffix}")
    ok = status in expected if expected else 200 <= status <= 299
    if not ok:
        raise ModuleError(f"HTTP {status} from {shown}")
    return f"HTTP {status}"


async def _log(ctx: ModuleContext, msg: str) -> None:
    """Log `msg` at info level once the task log has room."""
    if ctx.log_full:
        await ctx.wait_log_room()
    ctx.log(LogLevel.INFO, msg)


async def _read_excerpt(response: aiohttp.ClientResponse) -> tuple[str, bool]:
    """Read up to MAX_EXCERPT_BYTES of the body; return it as text and whether more came."""
    data = bytearray()
    while len(data) < MAX_EXCERPT_BYTES:
        chunk = await response.content.read(MAX_EXCERPT_BYTES - len(data))
        if not chunk:
            break
        data += chunk
    more = not response.content.at_eof()
    try:
        text = data.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = data.decode("utf-8", errors="replace")
    return text, more


def _shown(url: URL) -> str:
    """The URL as logged: a password in it is masked."""
    return str(url.with_password("***")) if url.password else str(url)


def _reason(error: aiohttp.ClientError) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
