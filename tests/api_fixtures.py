"""A live taskd API for tests: the real parts wired as `Daemon.run` wires them.

`open_api(tmp_path)` writes a config file into `tmp_path` (API keys in key files beside it,
a Basic-auth user hashed with `hash_password`, optional `[[task]]` tables), loads it with the
daemon's own `load_settings`, opens a real SQLite `Store`, the `Runner`, the `Scheduler` (its
loop running) and the `Core` with the built-in modules, applies the config's tasks, and
serves `build_app(...)` with `serve_api` on 127.0.0.1 port 0 and on a Unix socket in
`tmp_path`. Health is the daemon's own `Daemon.health`.

Clients are real `aiohttp.ClientSession`s: `api.unix` over the Unix socket (trusted unless
the config says otherwise) and `api.tcp(key)` over TCP. Every call is recorded in
`api.exchanges` (request and reply), so a test can validate all of them against a spec.

Log events are captured (`api.logs`, structlog's event dicts); `api.failures()` lists the
requests the error middleware logged as failed (answered 500). The clock is a running
`FakeClock`: the system clock plus what a test adds (`api.clock.jump`), for deferred runs
that expire after days. Waits are bounded by `WAIT_SEC` (a hang detector).

`SpecCheck` / `spec_problems` validate recorded exchanges with openapi-core against the
original specs, patched only where a spec cannot be validated against (each patch says why).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from multidict import MultiDict
from structlog.testing import capture_logs

from taskd.api.app import build_app, serve_api
from taskd.api.auth import Authenticator, hash_password
from taskd.core import Core
from taskd.daemon import Daemon, load_settings
from taskd.engine import EngineSettings, build_engine
from taskd.model import Task
from taskd.runner import Runner
from taskd.scheduler import Scheduler
from taskd.settings import ApiSettings, ListenAddress, Settings
from taskd.store import DB_FILE, Store, open_store
from taskd.testing import FakeClock

WAIT_SEC = 10.0

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "spec"
if not SPEC_DIR.is_dir():  # the package ships the same files
    SPEC_DIR = Path(__file__).resolve().parents[1] / "taskd" / "api" / "specs"

SCOPES = (
    "tasks/index",
    "tasks/show",
    "tasks/create",
    "tasks/update",
    "tasks/destroy",
    "tasks/action",
    "tasks/run_defer",
)
# Key name -> scopes: one key per single scope (named after its action), and the wildcards.
# Each is an admin too, so that it reaches the tasks a test creates over the trusted socket
# (owned by it); an admin still lists its own tasks unless it asks for `all=true`. Owners
# and keys that are no admins are tested in test_api_owners.py.
KEY_SCOPES: dict[str, list[str]] = {
    "all": ["*"],
    "tasks": ["tasks/*", "admin"],
    **{scope.split("/")[1]: [scope, "admin"] for scope in SCOPES},
}
USER = "alice"
PASSWORD = "correct horse battery staple"
USER_SCOPES = ["tasks/index", "tasks/show"]

# A schedule that fires once a year (1 January, 00:00 UTC): valid, and quiet during a test.
QUIET_SCHEDULE = [{"cron": "0 0 1 1 *", "timezone": "UTC"}]


@functools.cache
def password_hash() -> str:
    """The user's scrypt hash (made once: scrypt is slow on purpose)."""
    return hash_password(PASSWORD)


def basic(user: str, password: str) -> str:
    """An `Authorization` value for Basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True, eq=False)
class Reply:
    """One recorded exchange: what was sent and what came back."""

    method: str
    url: str  # the path and query, as sent
    path: str
    query: MultiDict[str]
    request_body: bytes
    request_headers: Mapping[str, str]
    status: int
    headers: Mapping[str, str]
    body: bytes
    via: str  # "tcp" or "unix"

    @property
    def content_type(self) -> str:
        """The reply's Content-Type header ('' if absent)."""
        return self.headers.get("Content-Type", "")

    @property
    def json(self) -> Any:
        """The reply's body parsed as JSON (fails the test if it is not JSON)."""
        assert self.body, f"{self.method} {self.url} -> {self.status} with an empty body"
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"{self.method} {self.url} -> {self.status} {self.body[:300]!r}"


_UNSET: Any = object()


class Client:
    """A real aiohttp session to the API, recording every exchange in `exchanges`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: str,
        via: str,
        exchanges: list[Reply],
        authorization: str | None = None,
    ) -> None:
        self.session = session
        self.base = base
        self.via = via
        self.exchanges = exchanges
        self.authorization = authorization

    def _headers(self, headers: Mapping[str, str] | None, body: bytes | None) -> dict[str, str]:
        sent = {}
        if self.authorization is not None:
            sent["Authorization"] = self.authorization
        if body is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        return sent

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = _UNSET,
        data: bytes | str | None = None,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one request; `json_body` is serialized, `data` sent as given."""
        if json_body is not _UNSET:
            body: bytes | None = json.dumps(json_body).encode()
        elif data is not None:
            body = data.encode() if isinstance(data, str) else data
        else:
            body = None
        sent_headers = self._headers(headers, body)
        async with self.session.request(
            method, self.base + path, data=body, params=params, headers=sent_headers
        ) as response:
            content = await response.read()
            url = response.url
            reply = Reply(
                method=method.upper(),
                url=url.raw_path_qs,
                path=url.path,
                query=MultiDict(url.query),
                request_body=body or b"",
                request_headers=sent_headers,
                status=response.status,
                headers=dict(response.headers),
                body=content,
                via=self.via,
            )
        self.exchanges.append(reply)
        return reply

    async def get(self, path: str, **kwargs: Any) -> Reply:
        """GET `path`."""
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, json_body: Any = _UNSET, **kwargs: Any) -> Reply:
        """POST `json_body` to `path`."""
        return await self.call("POST", path, json_body=json_body, **kwargs)

    async def put(self, path: str, json_body: Any = _UNSET, **kwargs: Any) -> Reply:
        """PUT `json_body` to `path`."""
        return await self.call("PUT", path, json_body=json_body, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Reply:
        """DELETE `path`."""
        return await self.call("DELETE", path, **kwargs)

    async def events(
        self, path: str, params: Mapping[str, str], *, timeout_sec: float = WAIT_SEC
    ) -> tuple[aiohttp.ClientResponse, list[dict[str, str]]]:
        """Read a server-sent event stream to its end: one dict of fields per event
        (`event`, `data`, `id` as sent, all strings)."""
        events: list[dict[str, str]] = []
        async with asyncio.timeout(timeout_sec):
            response = await self.session.get(
                self.base + path, params=params, headers=self._headers(None, None)
            )
            async with response:
                assert response.status == 200, await response.text()
                fields: dict[str, str] = {}
                async for raw in response.content:
                    line = raw.decode().rstrip("\n")
                    if line:
                        name, _, value = line.partition(": ")
                        fields[name] = value
                    elif fields:
                        events.append(fields)
                        fields = {}
        return response, events


@dataclass(eq=False)
class Api:
    """A served taskd API over real parts; see the module docstring."""

    tmp_path: Path
    config_path: Path
    store: Store
    runner: Runner
    scheduler: Scheduler
    core: Core
    clock: FakeClock
    settings: ApiSettings
    app: Any
    tcp_base: str
    socket_path: Path | None
    keys: dict[str, str]
    unix: Client
    stack: AsyncExitStack
    logs: list[dict[str, Any]]
    exchanges: list[Reply] = field(default_factory=list)
    # The daemon object whose health (and `reload`) the API uses.
    daemon: Daemon | None = None

    async def tcp(self, key: str | None = "all", *, authorization: str | None = None) -> Client:
        """A TCP client sending `Authorization: Bearer <key named key>` (or `authorization`)."""
        if authorization is None and key is not None:
            authorization = f"Bearer {self.keys[key]}"
        session = await self.stack.enter_async_context(aiohttp.ClientSession())
        return Client(session, self.tcp_base, "tcp", self.exchanges, authorization)

    async def create(self, name: str, **fields: Any) -> dict[str, Any]:
        """Create a task over v2 (unix socket); `fields` as in a v2 body. Returns its JSON."""
        body = {"name": name, "task_module": "sleep", "task_params": {"seconds": 0}, **fields}
        reply = await self.unix.post("/api/v2/tasks", body)
        assert reply.status == 201, str(reply)
        created: dict[str, Any] = reply.json
        return created

    async def task(self, task_id: int | str) -> Task:
        """Read a task from the store."""
        return await self.store.get_task(int(task_id))

    async def wait_task(
        self, task_id: int | str, check: Callable[[Task], bool], what: str = "a condition"
    ) -> Task:
        """Poll the store until `check(task)` holds; fail after WAIT_SEC."""
        try:
            async with asyncio.timeout(WAIT_SEC):
                while True:
                    await self.store.flush()
                    task = await self.task(task_id)
                    if check(task):
                        return task
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"task {task_id}: timed out waiting for {what}") from None

    async def wait_status(self, task_id: int | str, *statuses: str) -> Task:
        """Wait until the task's status is one of `statuses`."""
        return await self.wait_task(
            task_id, lambda t: str(t.status) in statuses, f"status in {statuses}"
        )

    async def wait_execution(self, execution_id: int | str, *statuses: str) -> None:
        """Wait until an execution's status is one of `statuses`."""
        async with asyncio.timeout(WAIT_SEC):
            while True:
                await self.store.flush()
                execution = await self.store.get_execution(int(execution_id))
                if str(execution.status) in statuses:
                    return
                await asyncio.sleep(0.01)

    def failures(self) -> list[dict[str, Any]]:
        """The log events of requests that failed inside taskd (answered with a 500)."""
        return [event for event in self.logs if event.get("event") == "request failed"]

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, read by a separate read-only connection."""
        await self.store.flush()
        return await asyncio.to_thread(read_tables, self.db_path)

    @property
    def db_path(self) -> Path:
        """The SQLite file."""
        return self.tmp_path / "state" / DB_FILE


def read_tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the database at `db`, in a stable order."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as cx:
        tables = [
            row[0]
            for row in cx.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                " ORDER BY name"
            )
        ]
        return {table: sorted(cx.execute(f"SELECT * FROM {table}"), key=repr) for table in tables}


def _toml(value: Any) -> str:
    """A TOML value for `value` (JSON syntax suffices for strings, numbers, bools, arrays)."""
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def write_config(
    tmp_path: Path,
    *,
    keys: Mapping[str, list[str]],
    users: bool,
    tasks: Sequence[Mapping[str, Any]],
    api: Mapping[str, Any],
) -> tuple[Path, dict[str, str]]:
    """Write key files and the config file; return its path and the keys by name."""
    key_dir = tmp_path / "keys"
    key_dir.mkdir(exist_ok=True)
    secrets_by_name = {}
    lines = [
        "[daemon]",
        'state_dir = "state"',
        'timezone = "UTC"',
        "max_running = 8",
        "stop_grace_sec = 0.5",
        "shutdown_grace_sec = 0",
        "",
        "[api]",
        "listen = []",
    ]
    lines += [f"{name} = {_toml(value)}" for name, value in api.items()]
    for name, scopes in keys.items():
        secret = secrets.token_urlsafe(24)
        (key_dir / name).write_text(secret + "\n")
        secrets_by_name[name] = secret
        lines += ["", "[[api.keys]]", f'name = "key-{name}"', f'key_file = "keys/{name}"']
        lines.append(f"scopes = {_toml(scopes)}")
    if users:
        lines += ["", "[[api.users]]", f'name = "{USER}"']
        lines += [f'password_hash = "{password_hash()}"', f"scopes = {_toml(USER_SCOPES)}"]
    for task in tasks:
        lines += ["", "[[task]]"] + [f"{k} = {_toml(v)}" for k, v in task.items()]
    path = tmp_path / "taskd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, secrets_by_name


@asynccontextmanager
async def open_api(
    tmp_path: Path,
    *,
    keys: Mapping[str, list[str]] | None = None,
    users: bool = True,
    tasks: Sequence[Mapping[str, Any]] = (),
    trust_unix_socket: bool = True,
    max_body_bytes: int = 65_536,
    unix_socket: bool = True,
    api_options: Mapping[str, Any] | None = None,
) -> AsyncIterator[Api]:
    """Serve a taskd API on real parts in `tmp_path`; see the module docstring.
    `api_options` adds keys to the config's `[api]` table (limits, timeouts)."""
    api_config: dict[str, Any] = {
        "trust_unix_socket": trust_unix_socket,
        "max_body_bytes": max_body_bytes,
        "unix_socket": str(tmp_path / "taskd.sock") if unix_socket else False,
        # Tests send bursts of concurrent requests to check races; the cap (8 by default)
        # is tested on its own (tests/test_api_pressure.py).
        "max_in_flight": 256,
        **(api_options or {}),
    }

    def prepare() -> tuple[Path, dict[str, str], Daemon, Settings]:
        # Files, hashing, entry points: blocking work, done in a thread so that tests
        # using `no_blocking` measure taskd, not this setup.
        config_path, secrets_by_name = write_config(
            tmp_path,
            keys=KEY_SCOPES if keys is None else keys,
            users=users,
            tasks=tasks,
            api=api_config,
        )
        daemon = Daemon(config_path)  # for its module registry and its health report
        return config_path, secrets_by_name, daemon, load_settings(config_path, daemon.modules)

    config_path, secrets_by_name, daemon, settings = await asyncio.to_thread(prepare)
    # The config file cannot name port 0; the test asks the OS for a free port.
    api_settings = dataclasses.replace(
        settings.api, listen=(ListenAddress(host="127.0.0.1", port=0),)
    )
    auth = Authenticator.from_settings(api_settings)
    clock = FakeClock.running()
    async with AsyncExitStack() as stack:
        # Log events are captured as dicts (and not rendered: a rendered traceback is slow).
        logs = stack.enter_context(capture_logs())
        store = await stack.enter_async_context(open_store(settings.daemon.state_dir))
        engine = build_engine(
            store=store,
            modules=daemon.modules,
            clock=clock,
            settings=EngineSettings(
                default_timezone=settings.daemon.timezone,
                max_running=settings.daemon.max_running,
                stop_grace_sec=settings.daemon.stop_grace_sec,
                config_source=str(config_path),
            ),
        )
        runner, scheduler, core = engine.runner, engine.scheduler, engine.core
        await stack.enter_async_context(runner)
        await core.apply_config(settings.tasks)
        await stack.enter_async_context(scheduler)
        daemon.core, daemon.scheduler, daemon.auth = core, scheduler, auth
        app = build_app(core=core, auth=auth, api_settings=api_settings, health=daemon.health)
        site_runner = await stack.enter_async_context(serve_api(app, api_settings))
        host, port = next(
            address
            for address in site_runner.addresses
            if isinstance(address, tuple) and len(address) == 2
        )
        exchanges: list[Reply] = []
        socket_path = api_settings.unix_socket
        if socket_path is not None:
            connector = aiohttp.UnixConnector(path=str(socket_path))
            unix_session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=connector)
            )
        else:
            unix_session = await stack.enter_async_context(aiohttp.ClientSession())
        api = Api(
            tmp_path=tmp_path,
            config_path=config_path,
            store=store,
            runner=runner,
            scheduler=scheduler,
            core=core,
            clock=clock,
            settings=api_settings,
            app=app,
            tcp_base=f"http://{host}:{port}",
            socket_path=socket_path,
            keys=secrets_by_name,
            unix=Client(unix_session, "http://taskd", "unix", exchanges),
            stack=stack,
            logs=logs,
            exchanges=exchanges,
            daemon=daemon,
        )
        # Stop executions before the sites close, as `Daemon.run` does on SIGTERM.
        stack.push_async_callback(runner.shutdown, 0)
        stack.push_async_callback(scheduler.stop)
        yield api


# ---------------------------------------------------------------------------------------
# Validating exchanges against the original specs (openapi-core)

# taskd's v1 error object: fylr's spec declares no error responses at all, so this is the
# shape DESIGN.md ("v1 answers with an error object in its own style") and
# `taskd.api.errors.v1_error` promise, checked here instead.
V1_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "statuscode", "description"],
    "properties": {
        "code": {"type": "string", "pattern": "^error\\.api\\."},
        "statuscode": {"type": "integer"},
        "description": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "reason"],
                "properties": {"path": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
}


def load_spec(name: str) -> dict[str, Any]:
    """An original spec file from shared/spec (or the copy the package ships)."""
    loaded: dict[str, Any] = json.loads((SPEC_DIR / name).read_text())
    return loaded


def _strip_discriminators_without_mapping(node: Any) -> None:
    """Drop `discriminator`s that have no `mapping` (in place).

    The Nodeum spec's `attribute_error` declares `discriminator: {propertyName: error}` with
    no mapping and no `oneOf`: a validator then looks for a schema named after each value of
    `error` ("invalid", "not_found", ...) and fails on a spec defect, not on taskd. Without
    `oneOf`/`anyOf` a discriminator selects nothing, so dropping it loses no constraint:
    `error` stays required and a string.
    """
    if isinstance(node, dict):
        discriminator = node.get("discriminator")
        if isinstance(discriminator, dict) and "mapping" not in discriminator:
            del node["discriminator"]
        for value in node.values():
            _strip_discriminators_without_mapping(value)
    elif isinstance(node, list):
        for value in node:
            _strip_discriminators_without_mapping(value)


def nodeum_spec_for_validation() -> dict[str, Any]:
    """nodeum-openapi.json, patched only where the spec itself cannot be validated against.

    - discriminators without mapping are dropped (see `_strip_discriminators_...`);
    - operations that declare neither the status taskd answers nor `default` get a `default`
      response with the spec's own `model_error` schema: DESIGN.md requires 404 for unknown
      ids, 409 for conflicts and 400/401/403/413 for bad requests on every route, which the
      source pages do not list (e.g. `PUT /tasks/{task_id}` declares only 200 and 422).
      Declared statuses are validated exactly as declared; `default` lets no 5xx pass
      (every test also asserts status < 500).
    """
    spec = load_spec("nodeum-openapi.json")
    _strip_discriminators_without_mapping(spec)
    error = {
        "description": "An error the source pages do not list (taskd's model_error).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/model_error"}}},
    }
    for operations in spec["paths"].values():
        for method, operation in operations.items():
            if method in {"get", "put", "post", "delete"}:
                operation["responses"].setdefault("default", error)
    return spec


def fylr_spec_for_validation() -> dict[str, Any]:
    """fylr-openapi.json, patched only where the spec itself cannot be validated against.

    - its paths are relative to `/api/v1` (DESIGN.md): a server with that base is added;
    - it declares no error responses: every operation gets a `default` response with the
      v1 error object (`V1_ERROR_SCHEMA`), so errors are checked for their shape too.
    `format: datetime` and `format: int` (fylr's own names, not OpenAPI's) are unknown
    formats, which JSON Schema validators ignore; taskd still renders RFC 3339 times, which
    the tests check separately.
    """
    spec = load_spec("fylr-openapi.json")
    spec["servers"] = [{"url": "/api/v1"}]
    spec.setdefault("components", {}).setdefault("schemas", {})["taskd_v1_error"] = V1_ERROR_SCHEMA
    error = {
        "description": "taskd's v1 error object.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/taskd_v1_error"}}
        },
    }
    for operations in spec["paths"].values():
        for method, operation in operations.items():
            if method in {"get", "put", "post", "delete"}:
                operation["responses"].setdefault("default", error)
    return spec


class _Request:
    """An exchange's request as openapi-core reads it."""

    def __init__(self, reply: Reply, host_url: str) -> None:
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        self.host_url = host_url
        self.path = reply.path
        self.full_url_pattern = host_url + reply.path
        self.method = reply.method.lower()
        self.body = reply.request_body or None
        self.content_type = reply.request_headers.get("Content-Type", "application/json")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(reply.query.items())),
            header=Headers(dict(reply.request_headers)),
            cookie=ImmutableMultiDict(),
            path={},
        )


class _Response:
    """An exchange's response as openapi-core reads it."""

    def __init__(self, reply: Reply) -> None:
        from werkzeug.datastructures import Headers

        self.data = reply.body
        self.status_code = reply.status
        self.headers = Headers(dict(reply.headers))
        self.content_type = reply.content_type.split(";")[0].strip()


# Paths taskd serves that a spec names differently: fylr's text names the singular
# `/task/module` beside its spec's `/task/modules`; both answer the same.
_ALIASES = {"/api/v1/task/module": "/api/v1/task/modules"}


class SpecCheck:
    """Validates recorded exchanges against a spec: `v2` (Nodeum), `v1` (fylr) or `taskd`
    (the document taskd serves, for the routes beyond both specs)."""

    HOST = "http://localhost"

    def __init__(self, dialect: str) -> None:
        from openapi_core import OpenAPI

        from taskd.api.openapi import openapi_document

        if dialect == "v2":
            document = nodeum_spec_for_validation()
        elif dialect == "v1":
            document = fylr_spec_for_validation()
        else:
            document = openapi_document()
            document["servers"] = [{"url": "/"}]
            _strip_discriminators_without_mapping(document)
        self.openapi = OpenAPI.from_dict(document)

    def _request(self, reply: Reply) -> _Request:
        path = _ALIASES.get(reply.path, reply.path)
        return _Request(dataclasses.replace(reply, path=path), self.HOST)

    def request_errors(self, reply: Reply) -> list[str]:
        """What the spec finds wrong with the request (for requests meant to be valid)."""
        return [_describe(e) for e in self.openapi.iter_request_errors(self._request(reply))]

    def response_errors(self, reply: Reply) -> list[str]:
        """What the spec finds wrong with the response."""
        errors = self.openapi.iter_response_errors(self._request(reply), _Response(reply))
        return [_describe(e) for e in errors]


def spec_problems(
    exchanges: Sequence[Reply], *, meant_invalid: Sequence[Reply] = (), dialect: str | None = None
) -> list[str]:
    """Every way the exchanges break their dialect's spec (requests in `meant_invalid`
    break it on purpose: only their responses are checked). Also any 5xx."""
    checks: dict[str, SpecCheck] = {}
    skip = {id(reply) for reply in meant_invalid}
    problems = []
    for reply in exchanges:
        if reply.status >= 500:
            problems.append(f"{reply}: a server error")
        name = dialect or ("v1" if reply.path.startswith("/api/v1/") else "v2")
        check = checks.setdefault(name, SpecCheck(name))
        errors = check.response_errors(reply)
        if id(reply) not in skip:
            errors += [f"(request) {error}" for error in check.request_errors(reply)]
        problems += [f"{reply}:\n{error}" for error in errors]
    return problems


def _describe(error: Exception) -> str:
    causes = []
    cause: BaseException | None = error
    while cause is not None:
        details = getattr(cause, "schema_errors", None)
        causes.append(f"{type(cause).__name__}: {cause}")
        if details:
            causes += [f"  - {getattr(d, 'message', d)}" for d in details]
        cause = cause.__cause__
    return "\n".join(causes)
