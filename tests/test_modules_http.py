"""The http module against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from taskd.errors import ValidationError
from taskd.modules.base import ModuleError
from taskd.modules.http import MAX_EXCERPT_BYTES, HttpModule
from taskd.modules.registry import ModuleRegistry
from taskd.testing import FakeContext, wait_until

# Nothing may block the loop; garbage is collected after each test, so an unclosed session
# warns in its own test.
pytestmark = pytest.mark.usefixtures("no_blocking", "collect_garbage")


@dataclass
class Server:
    """A running test server: its base URL and what it received."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # a /slow request came
    release: asyncio.Event = field(default_factory=asyncio.Event)  # lets /slow answer


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """Serve /ok, /status/{code}, /big, /echo and /slow on a free port of 127.0.0.1."""
    record = Server(url="")

    async def remember(request: web.Request) -> None:
        record.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )

    async def ok(request: web.Request) -> web.Response:
        await remember(request)
        return web.Response(text="hello")

    async def status(request: web.Request) -> web.Response:
        await remember(request)
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}")

    async def big(request: web.Request) -> web.Response:
        await remember(request)
        return web.Response(text="x" * 5000)

    async def slow(request: web.Request) -> web.Response:
        await remember(request)
        record.arrived.set()
        await record.release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/big", big)
    app.router.add_route("*", "/echo", ok)
    app.router.add_route("*", "/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    record.url = f"http://{host}:{port}"
    yield record
    record.release.set()  # so that cleanup does not wait for a held handler
    await runner.cleanup()


def http_ctx(**raw: Any) -> FakeContext:
    """A context holding `raw` validated as http params by the registry."""
    return FakeContext.for_module(HttpModule(), raw)


@pytest.mark.slow
async def test_ok_status_returns_and_logs_body(server: Server) -> None:
    """A 200 answer returns "HTTP 200" and logs the request line, status and body excerpt."""
    ctx = http_ctx(url=f"{server.url}/ok")
    assert await HttpModule().run(ctx) == "HTTP 200"
    assert ctx.messages() == [
        f"GET {server.url}/ok",
        f"HTTP 200 from {server.url}/ok",
        "response body: hello",
    ]
    assert server.requests[0]["method"] == "GET"


async def test_500_raises_module_error_naming_the_url(server: Server) -> None:
    """An unexpected 500 raises ModuleError("HTTP 500 from <url>")."""
    url = f"{server.url}/status/500"
    with pytest.raises(ModuleError, match=rf"^HTTP 500 from {url}$"):
        await HttpModule().run(http_ctx(url=url))


async def test_expect_status_replaces_the_2xx_rule(server: Server) -> None:
    """With expect_status [404], a 404 passes and a 200 fails."""
    ctx = http_ctx(url=f"{server.url}/status/404", expect_status=[404])
    assert await HttpModule().run(ctx) == "HTTP 404"
    with pytest.raises(ModuleError, match=r"^HTTP 200 from "):
        await HttpModule().run(http_ctx(url=f"{server.url}/status/200", expect_status=[404]))


async def test_any_2xx_passes_by_default(server: Server) -> None:
    """Without expect_status, 204 is fine and 302 with no location is not."""
    assert await HttpModule().run(http_ctx(url=f"{server.url}/status/204")) == "HTTP 204"
    with pytest.raises(ModuleError, match=r"^HTTP 302 from "):
        await HttpModule().run(http_ctx(url=f"{server.url}/status/302"))


async def test_json_body_reaches_the_server(server: Server) -> None:
    """json is sent as the body with content type application/json."""
    payload = {"a": [1, 2], "b": None}
    ctx = http_ctx(url=f"{server.url}/echo", method="POST", json=payload)
    assert await HttpModule().run(ctx) == "HTTP 200"
    [request] = server.requests
    assert request["method"] == "POST"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == payload


async def test_text_body_reaches_the_server(server: Server) -> None:
    """body is sent as UTF-8 text."""
    ctx = http_ctx(url=f"{server.url}/echo", method="PUT", body="grüße")
    await HttpModule().run(ctx)
    [request] = server.requests
    assert request["method"] == "PUT"
    assert request["body"] == "grüße".encode()
    assert request["headers"]["Content-Type"].startswith("text/plain")


async def test_header_values_are_sent_but_never_logged(server: Server) -> None:
    """An Authorization header reaches the server; its value appears in no log entry."""
    ctx = http_ctx(url=f"{server.url}/ok", headers={"Authorization": "Bearer s3cret-token"})
    await HttpModule().run(ctx)
    assert server.requests[0]["headers"]["Authorization"] == "Bearer s3cret-token"
    assert ctx.logs
    assert not any("s3cret" in msg for msg in ctx.messages())


async def test_password_in_url_is_masked_in_logs_and_errors(server: Server) -> None:
    """A password in the URL is used for Basic auth but shown as *** everywhere."""
    host = server.url.removeprefix("http://")
    ctx = http_ctx(url=f"http://user:pw-secret@{host}/status/500")
    with pytest.raises(ModuleError) as info:
        await HttpModule().run(ctx)
    assert server.requests[0]["headers"]["Authorization"].startswith("Basic ")
    assert str(info.value) == f"HTTP 500 from http://user:***@{host}/status/500"
    assert not any("pw-secret" in msg for msg in ctx.messages())


async def test_body_excerpt_is_bounded(server: Server) -> None:
    """Only the first KiB of a large body is logged, marked as cut."""
    ctx = http_ctx(url=f"{server.url}/big")
    await HttpModule().run(ctx)
    assert ctx.messages()[-1] == "response body: " + "x" * MAX_EXCERPT_BYTES + " [cut]"


@pytest.mark.slow
async def test_timeout_raises_module_error(server: Server) -> None:
    """No answer within timeout_sec raises ModuleError saying so, in about that time."""
    ctx = http_ctx(url=f"{server.url}/slow", timeout_sec=0.2)
    started = time.monotonic()
    with pytest.raises(ModuleError, match=rf"^no response from {server.url}/slow within 0.2 s$"):
        await HttpModule().run(ctx)
    assert 0.2 <= time.monotonic() - started < 1.5


async def test_connection_refused_raises_module_error() -> None:
    """A port nobody listens on raises ModuleError with the connection error."""
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(ModuleError, match=rf"^request to {url} failed: ClientConnectorError"):
        await HttpModule().run(http_ctx(url=url))


async def test_stop_abandons_a_request_in_flight(server: Server) -> None:
    """A stop while waiting for the answer returns promptly instead of waiting it out."""
    ctx = http_ctx(url=f"{server.url}/slow")
    run = asyncio.create_task(HttpModule().run(ctx))
    async with asyncio.timeout(2):
        await server.arrived.wait()
        ctx.stop()
        assert await run == "stopped before the response came"


async def test_cancel_ends_the_request_cleanly(server: Server) -> None:
    """Cancelling the module mid-request raises CancelledError and leaks no session."""
    run = asyncio.create_task(HttpModule().run(http_ctx(url=f"{server.url}/slow")))
    async with asyncio.timeout(2):
        await server.arrived.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"url": "ftp://example.org/"}, "task_params.url: must be an http:// or https:// URL"),
        ({"url": "http:///path"}, "task_params.url: must be an http:// or https:// URL"),
        ({"url": "http://x", "method": "TRACE"}, "task_params.method: must be one of GET, POST"),
        ({"url": "http://x", "headers": {"A": 1}}, "task_params.headers.A: must be a string"),
        ({"url": "http://x", "headers": {"A": "a\r\nB: b"}}, "task_params.headers.A: must not"),
        ({"url": "http://x", "json": {}, "body": "x"}, "task_params.body: give at most one of"),
        ({"url": "http://x", "expect_status": [99]}, "task_params.expect_status[0]: must be a"),
        ({"url": "http://x", "expect_status": 200}, "task_params.expect_status: must be an array"),
        ({"url": "http://x", "timeout_sec": 0}, "task_params.timeout_sec: must be greater than 0"),
    ],
)
def test_params_are_checked_by_the_registry(raw: dict[str, Any], expected: str) -> None:
    """Bad URLs, methods, headers, bodies, statuses and timeouts are refused at their paths."""
    with pytest.raises(ValidationError) as info:
        ModuleRegistry.builtin().validate("http", raw)
    errors = [str(error) for error in info.value.errors]
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected)


def test_defaults_are_filled_in() -> None:
    """Only url given: GET, no headers, no body, any 2xx, 30 s."""
    params = ModuleRegistry.builtin().validate("http", {"url": "https://example.org/"})
    assert params == {
        "url": "https://example.org/",
        "method": "GET",
        "headers": {},
        "json": None,
        "body": None,
        "expect_status": [],
        "timeout_sec": 30.0,
    }


async def test_each_line_waits_for_room_in_a_full_log(server: Server) -> None:
    """While the task log is full the module logs nothing and waits for room (as the shell
    module does), then logs its lines in order once the log has drained."""
    ctx = http_ctx(url=f"{server.url}/ok")
    ctx.fill_log()
    run = asyncio.create_task(HttpModule().run(ctx))
    await wait_until(lambda: ctx.log_waits >= 1)
    await asyncio.sleep(0.05)  # time enough for the request to go out, were it not held
    assert ctx.messages() == []
    assert server.requests == []
    ctx.drain_log()
    assert await run == "HTTP 200"
    assert ctx.messages() == [
        f"GET {server.url}/ok",
        f"HTTP 200 from {server.url}/ok",
        "response body: hello",
    ]
