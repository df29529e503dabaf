"""Who may call what: API keys (`Authorization: <key>` and `Bearer <key>`), Basic auth, the
scope of every route, 401 versus 403, the public health route, the Unix socket (trusted,
or not), a daemon without credentials, and the socket file itself (mode, removal, stale
files from a crash, a live daemon's socket left alone).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import stat
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from api_fixtures import (
    KEY_SCOPES,
    PASSWORD,
    USER,
    Api,
    Client,
    basic,
    open_api,
    spec_problems,
)

from taskd.api.app import build_app, registered_routes, serve_api

UNKNOWN = "999999"
# Every route with the scope it needs, and a request that passes auth without changing
# anything (unknown ids, empty or invalid bodies). `None`: any valid credentials.
ROUTES: list[tuple[str, str, str | None, object]] = [
    ("GET", "/api/v2/tasks", "tasks/index", None),
    ("POST", "/api/v2/tasks", "tasks/create", {}),
    ("GET", f"/api/v2/tasks/{UNKNOWN}", "tasks/show", None),
    ("PUT", f"/api/v2/tasks/{UNKNOWN}", "tasks/update", {}),
    ("DELETE", f"/api/v2/tasks/{UNKNOWN}", "tasks/destroy", None),
    ("PUT", f"/api/v2/tasks/{UNKNOWN}/action/run", "tasks/action", None),
    ("PUT", f"/api/v2/tasks/{UNKNOWN}/action/defer_run", "tasks/action", None),
    ("PUT", f"/api/v2/tasks/{UNKNOWN}/action/pause", "tasks/action", None),
    ("PUT", f"/api/v2/tasks/{UNKNOWN}/action/stop", "tasks/action", None),
    ("PUT", f"/api/v2/tasks/{UNKNOWN}/action/force_stop", "tasks/action", None),
    ("PUT", f"/api/v2/tasks/{UNKNOWN}/action/resume", "tasks/action", None),
    ("PUT", "/api/v2/tasks/-/action/run_defer?defer_id=unknown", "tasks/run_defer", None),
    ("GET", f"/api/v2/tasks/{UNKNOWN}/executions", "tasks/show", None),
    ("GET", f"/api/v2/executions/{UNKNOWN}", "tasks/show", None),
    ("GET", f"/api/v2/tasks/{UNKNOWN}/log", "tasks/show", None),
    ("GET", f"/api/v2/tasks/{UNKNOWN}/next_runs", "tasks/show", None),
    ("POST", "/api/v2/schedules/preview", "tasks/show", {}),
    ("GET", "/api/v2/modules", "tasks/index", None),
    ("GET", "/api/v2/openapi.json", None, None),
    ("GET", "/api/v2/whoami", None, None),
    ("GET", "/api/v1/task", "tasks/index", None),
    ("POST", "/api/v1/task", "tasks/create", []),
    ("GET", f"/api/v1/task/{UNKNOWN}", "tasks/show", None),
    ("DELETE", f"/api/v1/task/{UNKNOWN}", "tasks/destroy", None),
    ("POST", f"/api/v1/task/{UNKNOWN}/cancel", "tasks/action", None),
    ("GET", f"/api/v1/task/{UNKNOWN}/log", "tasks/show", None),
    ("GET", "/api/v1/task/modules", "tasks/index", None),
    ("GET", "/api/v1/task/module", "tasks/index", None),
]


async def call(client: Client, method: str, path: str, body: object) -> int:
    """Send one request of the route table; return the status."""
    if body is None:
        reply = await client.call(method, path)
    else:
        reply = await client.call(method, path, json_body=body)
    assert reply.status < 500, reply
    return reply.status


def test_the_route_table_names_every_route() -> None:
    """The scope table below covers every route the app registers (health apart)."""
    from taskd.api.auth import Authenticator
    from taskd.settings import ApiSettings

    app = build_app(core=None, auth=Authenticator([], []), api_settings=ApiSettings(), health=None)  # type: ignore[arg-type]
    registered = {
        (route.method, route.resource.canonical)
        for route in registered_routes(app)
        if route.resource is not None
    }
    tabled = {(method, path.split("?")[0]) for method, path, _, _ in ROUTES}
    tabled = {
        (method, path.replace(UNKNOWN, "{execution_id}" if "executions/" in path else "{task_id}"))
        for method, path in tabled
    }
    assert registered - tabled == {("GET", "/api/v2/health")}
    assert tabled <= registered


@pytest.mark.parametrize("key", sorted(KEY_SCOPES))
async def test_each_scope_lets_exactly_its_routes_through(api: Api, key: str) -> None:
    """A key passes the routes its scopes name (`tasks/*` and `*` pass all) and gets 403
    on every other; nothing is ever 401 for a known key."""
    client = await api.tcp(key)
    granted = set(KEY_SCOPES[key])
    wrong = []
    for method, path, needed, body in ROUTES:
        status = await call(client, method, path, body)
        allowed = needed is None or bool({needed, "tasks/*", "*"} & granted)
        if allowed == (status in {401, 403}):
            wrong.append(f"{method} {path} ({needed}): {status}")
    assert wrong == []


async def test_key_in_authorization_with_or_without_bearer(api: Api) -> None:
    """The key is taken as the whole header or after `Bearer` (any case, spaces trimmed)."""
    key = api.keys["index"]
    for header in (key, f"Bearer {key}", f"bearer  {key} ", f"BEARER {key}"):
        client = await api.tcp(None, authorization=header)
        assert (await client.get("/api/v2/tasks")).status == 200, header


async def test_basic_auth(api: Api) -> None:
    """A configured user with the right password passes (within the user's scopes: 403
    outside); a wrong password or an unknown user is 401."""
    user = await api.tcp(None, authorization=basic(USER, PASSWORD))
    assert (await user.get("/api/v2/tasks")).status == 200
    assert (await user.get(f"/api/v2/tasks/{UNKNOWN}")).status == 404  # tasks/show: granted
    assert (await user.post("/api/v2/tasks", {})).status == 403
    for authorization in (
        basic(USER, "wrong"),
        basic("mallory", PASSWORD),
        "Basic !!!not-base64",
        "Basic " + "w6k=",  # not `user:password`
    ):
        client = await api.tcp(None, authorization=authorization)
        assert (await client.get("/api/v2/tasks")).status == 401, authorization


async def test_401_without_credentials_403_outside_the_scopes(api: Api) -> None:
    """No or unknown credentials: 401 with WWW-Authenticate (both dialects' error shape);
    known credentials without the scope: 403 without it."""
    anonymous = await api.tcp(None)
    unknown_key = await api.tcp(None, authorization="Bearer " + "x" * 32)
    for client in (anonymous, unknown_key):
        v2 = await client.get("/api/v2/tasks")
        assert v2.status == 401
        assert "Bearer" in v2.headers["WWW-Authenticate"]
        assert "Basic" in v2.headers["WWW-Authenticate"]
        assert v2.json["details"]["base"][0]["error"] == "unauthorized"
        v1 = await client.get("/api/v1/task")
        assert v1.status == 401
        assert "WWW-Authenticate" in v1.headers
        assert (v1.json["code"], v1.json["statuscode"]) == ("error.api.unauthorized", 401)
    forbidden = await (await api.tcp("show")).get("/api/v2/tasks")
    assert forbidden.status == 403
    assert "WWW-Authenticate" not in forbidden.headers
    assert "tasks/index" in forbidden.json["messages"][0]
    forbidden_v1 = await (await api.tcp("show")).get("/api/v1/task")
    assert (forbidden_v1.status, forbidden_v1.json["code"]) == (403, "error.api.forbidden")


@pytest.mark.slow
async def test_a_wrong_key_is_told_apart_from_missing_credentials(api: Api) -> None:
    """401 says which: no credentials ("credentials required"), a key that is not valid,
    or a user name or password that is not valid; each answer still has its dialect's
    shape and validates against the dialect's spec."""
    start = len(api.exchanges)
    expected = {
        None: "credentials required: an API key (Authorization: Bearer <key>) or Basic auth",
        "Bearer " + "x" * 32: "the API key is not valid",
        "y" * 32: "the API key is not valid",
        basic(USER, "wrong"): "the user name or password is not valid",
    }
    for authorization, message in expected.items():
        client = await api.tcp(None, authorization=authorization)
        v2 = await client.get("/api/v2/tasks")
        assert v2.status == 401
        assert v2.json["messages"] == [message]
        assert v2.json["details"] == {"base": [{"error": "unauthorized", "reason": message}]}
        v1 = await client.get("/api/v1/task")
        assert (v1.status, v1.json["description"]) == (401, message)
    refused = api.exchanges[start:]
    # The requests break the specs' security on purpose: only the answers are checked.
    assert spec_problems(refused, meant_invalid=refused) == []


async def test_header_bytes_that_are_not_utf8_are_401_not_500(api: Api) -> None:
    """An Authorization header with bytes that are not UTF-8 is refused, not a crash."""
    host, port = api.tcp_base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /api/v2/tasks HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


async def test_updates_through_v1_post_need_the_update_scope(api: Api) -> None:
    """POST /api/v1/task needs tasks/create; an item that updates also needs tasks/update
    (403, nothing written)."""
    task = await api.create("v1-scoped")
    before = await api.snapshot()
    creator = await api.tcp("create")
    update = [{"task": {"_id": int(task["id"]), "version": 2, "description": "x"}}]
    refused = await creator.post("/api/v1/task", update)
    assert (refused.status, refused.json["code"]) == (403, "error.api.forbidden")
    assert await api.snapshot() == before
    assert (await (await api.tcp("tasks")).post("/api/v1/task", update)).status == 200


async def test_health_is_public(api: Api) -> None:
    """Health needs no credentials; wrong ones do not matter either."""
    for client in (await api.tcp(None), await api.tcp(None, authorization="Bearer nope")):
        assert (await client.get("/api/v2/health")).status == 200


async def test_the_trusted_unix_socket_needs_no_key(api: Api) -> None:
    """Over the trusted socket every route passes auth without credentials."""
    for method, path, _, body in ROUTES:
        assert await call(api.unix, method, path, body) not in {401, 403}, (method, path)


async def test_an_untrusted_unix_socket_needs_a_key(tmp_path: Path) -> None:
    """With trust_unix_socket = false the socket asks for credentials like TCP does."""
    async with open_api(tmp_path, trust_unix_socket=False) as api:
        assert (await api.unix.get("/api/v2/tasks")).status == 401
        assert (await api.unix.get("/api/v2/health")).status == 200
        keyed = await api.unix.get(
            "/api/v2/tasks", headers={"Authorization": f"Bearer {api.keys['index']}"}
        )
        assert keyed.status == 200
        forbidden = await api.unix.post(
            "/api/v2/tasks", {}, headers={"Authorization": f"Bearer {api.keys['index']}"}
        )
        assert forbidden.status == 403


async def test_without_keys_or_users_tcp_serves_health_only(tmp_path: Path) -> None:
    """No credentials configured: TCP answers 401 to every route but health; the trusted
    socket still serves everything."""
    async with open_api(tmp_path, keys={}, users=False) as api:
        anonymous = await api.tcp(None)
        for method, path, _, body in ROUTES:
            assert await call(anonymous, method, path, body) == 401, (method, path)
        assert (await anonymous.get("/api/v2/health")).status == 200
        assert (await api.unix.get("/api/v2/tasks")).status == 200


async def test_socket_file_mode_and_removal(tmp_path: Path) -> None:
    """The socket file is a socket with mode 0660 while serving, and gone afterwards."""
    async with open_api(tmp_path) as api:
        assert api.socket_path is not None
        mode = api.socket_path.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
        socket_path = api.socket_path
    assert not socket_path.exists()


async def test_a_stale_socket_file_from_a_crash_is_replaced(tmp_path: Path) -> None:
    """A socket file nobody listens on (a crashed daemon's) is replaced and served."""
    path = tmp_path / "taskd.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, as after kill -9
    assert stat.S_ISSOCK(path.lstat().st_mode)
    async with open_api(tmp_path) as api:
        assert (await api.unix.get("/api/v2/health")).status == 200
    assert not path.exists()


async def test_a_live_daemons_socket_is_refused_and_left_alone(tmp_path: Path) -> None:
    """If another process serves the socket path, starting fails with EADDRINUSE and the
    other daemon's socket file stays; a regular file at the path is refused and kept."""
    async with open_api(tmp_path) as api:
        assert api.socket_path is not None
        with pytest.raises(OSError, match="another process serves"):
            async with serve_api(web.Application(), api.settings):
                pass
        assert api.socket_path.exists()
        assert (await api.unix.get("/api/v2/health")).status == 200
    occupied = tmp_path / "plain-file"
    occupied.write_text("not a socket")
    async with open_api(tmp_path, unix_socket=False) as api:
        settings = dataclasses.replace(api.settings, listen=(), unix_socket=occupied)
        with pytest.raises(OSError, match="not a socket"):
            async with serve_api(web.Application(), settings):
                pass
    assert occupied.read_text() == "not a socket"


async def test_the_unix_socket_answers_the_same_as_tcp(api: Api) -> None:
    """A real aiohttp session over the socket gets the same answers as over TCP."""
    await api.create("same")
    tcp = await (await api.tcp("all")).get("/api/v2/tasks/same")
    unix = await api.unix.get("/api/v2/tasks/same")
    assert (tcp.status, tcp.json) == (unix.status, unix.json)
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(api.socket_path))
        ) as session,
        session.get("http://anything/api/v2/tasks/same") as response,
    ):
        assert response.status == 200
