"""Where the daemon is (socket, config, URL and key file), and the HTTP client that talks to
its v2 API; the errors `cli.py` turns into exit codes."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from taskd import __version__
from taskd.errors import FieldError, join_path
from taskd.settings import DEFAULT_STATE_DIR, SOCKET_NAME, resolve_path

API = "/api/v2"
SOCKET_ENV = "TASKD_SOCKET"
CONFIG_NAME = "taskd.toml"
SYSTEM_CONFIG = Path("/etc/taskd/taskd.toml")
LOCAL_CONFIG = Path("etc/taskd.toml")  # in the working directory: a checkout's example
CONNECT_TIMEOUT_SEC = 5.0
# Long enough for a delete that first force-stops the task's running executions.
REQUEST_TIMEOUT_SEC = 60.0
PAGE = 1000  # the API's largest page of tasks and executions
LOG_PAGE = 10_000  # ... and of log entries
# Log messages may be long lines; aiohttp's default read buffer (64 KiB) limits a line.
READ_BUFFER_BYTES = 2**22


# ---------------------------------------------------------------------------------------
# Errors


class CtlError(Exception):
    """A failure to report to the user: one problem per line, without a traceback.

    Each problem is a `FieldError`; a plain message is one with an empty path.
    """

    def __init__(self, *problems: str | FieldError) -> None:
        self.problems = tuple(
            p if isinstance(p, FieldError) else FieldError("", p) for p in problems
        )
        super().__init__("; ".join(self.messages))

    @property
    def messages(self) -> list[str]:
        """One line per problem: `path: reason`, or the reason alone."""
        return [str(problem) for problem in self.problems]

    def below(self, path: str) -> CtlError:
        """The same error with `path` put in front of every problem's path."""
        return type(self)(*(FieldError(join_path(path, p.path), p.reason) for p in self.problems))


class InvalidInputError(CtlError, ValueError):
    """The input is wrong: a usage error, a bad task file, or the server's validation."""


class RefusedError(CtlError):
    """The daemon refused the request or failed to do it (401, 403, 404, 409, 5xx)."""


class UnreachableError(CtlError):
    """The daemon could not be reached, or stopped answering."""


# ---------------------------------------------------------------------------------------
# Where the daemon is


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How to reach the daemon: a Unix socket, or a base URL; with an API key or without."""

    socket: Path | None
    base_url: str  # scheme://host[:port], without a trailing slash
    key: str | None = field(default=None, repr=False)
    key_file: Path | None = None

    def __str__(self) -> str:
        return str(self.socket) if self.socket is not None else self.base_url


def default_config_path(environ: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file `ctl` reads when `--config` is not given, or None if none exists.

    `$CONFIGURATION_DIRECTORY/taskd.toml` (set by systemd; the first of its colon-separated
    directories that holds the file), else `/etc/taskd/taskd.toml`, else `etc/taskd.toml`
    below `cwd`.
    """
    directories = [d for d in environ.get("CONFIGURATION_DIRECTORY", "").split(":") if d]
    candidates = [Path(d) / CONFIG_NAME for d in directories]
    candidates += [SYSTEM_CONFIG, cwd / LOCAL_CONFIG]
    return next((path for path in candidates if path.is_file()), None)


def find_endpoint(
    *,
    socket: Path | None,
    url: str | None,
    key_file: Path | None,
    config: Path | None,
    environ: Mapping[str, str],
    cwd: Path,
) -> Endpoint:
    """Decide where the daemon is: `--socket`, `--url`, `--config`, `$TASKD_SOCKET`, then the
    default config file, in that order. Raises `InvalidInputError` when none names a socket.
    """
    if socket is not None and url is not None:
        raise InvalidInputError("--socket and --url exclude each other: choose one")
    key = _read_key(key_file) if key_file is not None else None
    if url is not None:
        return Endpoint(None, _base_url(url), key, key_file)
    if socket is None and config is None:
        socket = Path(environ[SOCKET_ENV]) if environ.get(SOCKET_ENV) else None
    if socket is None:
        config = config or default_config_path(environ, cwd)
        if config is None:
            raise InvalidInputError(
                "no daemon to talk to: pass --socket PATH, --config FILE or --url URL, "
                f"or set {SOCKET_ENV} (no {SYSTEM_CONFIG} or ./{LOCAL_CONFIG} found)"
            )
        socket = socket_from_config(config)
    return Endpoint(socket, "http://localhost", key, key_file)


def socket_from_config(path: Path) -> Path:
    """The Unix socket a config file names: `api.unix_socket`, else `<state_dir>/taskd.sock`.

    Only these two values are read, with the daemon's rules (relative to the file's
    directory; `state_dir` defaults to `./var`), so a file whose tasks are invalid (the
    daemon keeps running on the previous version) still leads to the daemon.
    Raises `InvalidInputError`.
    """
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as error:
        raise InvalidInputError(
            f"cannot read the config file {path}: {os_reason(error)} (pass --socket PATH instead)"
        ) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InvalidInputError(f"{path}: not a valid TOML file: {error}") from None
    base_dir = Path(os.path.abspath(path.parent))
    daemon: dict[str, Any] = raw["daemon"] if isinstance(raw.get("daemon"), dict) else {}
    api: dict[str, Any] = raw["api"] if isinstance(raw.get("api"), dict) else {}
    socket = api.get("unix_socket")
    if socket is False:
        raise InvalidInputError(
            f"{path} turns the Unix socket off (api.unix_socket = false): use --url with --key-file"
        )
    if not isinstance(socket, str) or not socket:
        state_dir = daemon.get("state_dir")
        if not isinstance(state_dir, str) or not state_dir:
            state_dir = DEFAULT_STATE_DIR
        socket = os.path.join(state_dir, SOCKET_NAME)
    return resolve_path(base_dir, socket)


def _base_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidInputError(
            f"--url: {text!r} is not an http(s) URL such as http://127.0.0.1:8470"
        )
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError as error:
        raise InvalidInputError(f"--url: {text!r}: {error}") from None
    if parts.username is not None or parts.password is not None:
        raise InvalidInputError("--url must not hold credentials: pass --key-file FILE")
    if parts.query or parts.fragment:
        raise InvalidInputError(f"--url: {text!r} must not have a query or a fragment")
    path = parts.path.rstrip("/")
    path = path.removesuffix(API)  # the API's base path is accepted too
    return f"{parts.scheme}://{parts.netloc}{path}"


def _read_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise InvalidInputError(f"--key-file: cannot read {path}: {os_reason(error)}") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"--key-file: {path} is not UTF-8 text") from None
    if not key or any(ch.isspace() or not ch.isprintable() for ch in key):
        # A header cannot carry it; say so without showing any of it.
        raise InvalidInputError(f"--key-file: {path} does not hold one API key on one line")
    return key


def os_reason(error: OSError) -> str:
    """The reason of an OS error in lower case, for "cannot ..." messages."""
    return (error.strerror or str(error)).lower()


# ---------------------------------------------------------------------------------------
# The HTTP client


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its type (`log`, `end`) and its parsed JSON data."""

    kind: str
    data: Any


class Client:
    """Calls the v2 API of one daemon; every failure becomes a `CtlError`."""

    def __init__(self, endpoint: Endpoint, session: aiohttp.ClientSession) -> None:
        self.endpoint = endpoint
        self._session = session

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        body: Any = None,
    ) -> Any:
        """Send a request below `/api/v2`; return the parsed JSON answer (None for 204).

        Raises `InvalidInputError` (400, 413, 422), `RefusedError` (other statuses),
        `UnreachableError` (no connection, no answer in time).
        """
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SEC, connect=CONNECT_TIMEOUT_SEC)
        kwargs: dict[str, Any] = {"params": dict(query or {}), "timeout": timeout}
        if body is not None:
            kwargs["json"] = body
        try:
            async with self._session.request(method, self._url(path), **kwargs) as response:
                text = await response.text()
                if response.status >= 400:
                    raise self._http_error(response.status, text)
                if response.status == 204:
                    return None
                return self._parse(response.status, text)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise self._transport_error(error) from None

    async def events(
        self, path: str, query: Mapping[str, str | int]
    ) -> AsyncGenerator[Event, None]:
        """Stream the server-sent events of a GET below `/api/v2`, as they come.

        Ends when the server closes the stream. Raises as `call` does.
        """
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_SEC, sock_read=None)
        try:
            async with self._session.get(
                self._url(path), params=dict(query), timeout=timeout
            ) as response:
                if response.status >= 400:
                    raise self._http_error(response.status, await response.text())
                kind, data = "message", list[str]()
                async for raw in response.content:
                    line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    if not line:  # the end of one event
                        if data:
                            yield Event(kind, self._parse(response.status, "\n".join(data)))
                        kind, data = "message", []
                    elif not line.startswith(":"):  # a comment otherwise
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "event":
                            kind = value
                        elif name == "data":
                            data.append(value)
        except CtlError:
            raise
        except (aiohttp.ClientError, TimeoutError) as error:
            raise self._transport_error(error) from None
        except ValueError as error:  # a line longer than the read buffer
            raise UnreachableError(f"cannot read the event stream: {error}") from None

    def _url(self, path: str) -> URL:
        return URL(self.endpoint.base_url + API + path, encoded=True)

    def _parse(self, status: int, text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise RefusedError(
                f"{self.endpoint} answered {status} with something other than JSON "
                "(is it a taskd API?)"
            ) from None

    def _http_error(self, status: int, text: str) -> CtlError:
        try:
            body = json.loads(text)
        except json.JSONDecodeError:
            body = None
        problems: list[str | FieldError] = [*_problems(body)] or [
            f"{self.endpoint} answered HTTP {status} without an error in taskd's shape "
            "(is it a taskd API?)"
        ]
        if status in {400, 413, 422}:
            return InvalidInputError(*problems)
        if status == 401:
            key_file = self.endpoint.key_file
            hint = (
                f"the daemon refused the API key in {key_file}"
                if key_file is not None
                else "pass --key-file FILE with an API key"
            )
            return RefusedError(f"{self.endpoint} wants credentials: {hint}")
        if status >= 500:
            return RefusedError(*(f"the daemon failed: {problem}" for problem in problems))
        return RefusedError(*problems)

    def _transport_error(self, error: BaseException) -> CtlError:
        where = f"cannot reach the daemon at {self.endpoint}"
        if isinstance(error, aiohttp.ClientConnectorError):
            os_error = error.os_error
            if isinstance(os_error, ConnectionRefusedError | FileNotFoundError):
                what = (
                    "connection refused"
                    if isinstance(os_error, ConnectionRefusedError)
                    else "no such socket"
                )
                return UnreachableError(f"{where}: {what} (is 'taskd serve' running?)")
            if isinstance(os_error, PermissionError):
                return UnreachableError(
                    f"{where}: permission denied (is your user in the group that owns it?)"
                )
            return UnreachableError(f"{where}: {os_reason(os_error)}")
        if isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
            return UnreachableError(
                f"the daemon at {self.endpoint} closed the connection before its answer ended"
            )
        if isinstance(error, TimeoutError):
            return UnreachableError(f"the daemon at {self.endpoint} did not answer in time")
        return UnreachableError(f"{where}: {error}")


@asynccontextmanager
async def connect(endpoint: Endpoint) -> AsyncIterator[Client]:
    """A `Client` for `endpoint`; its connections are closed when the block ends."""
    connector: aiohttp.BaseConnector = (
        aiohttp.UnixConnector(path=str(endpoint.socket))
        if endpoint.socket is not None
        else aiohttp.TCPConnector()
    )
    headers = {"User-Agent": f"taskd-ctl/{__version__}", "Accept": "application/json"}
    if endpoint.key is not None:
        headers["Authorization"] = f"Bearer {endpoint.key}"
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, read_bufsize=READ_BUFFER_BYTES
    ) as session:
        yield Client(endpoint, session)


def _problems(body: Any) -> list[FieldError]:
    """The problems of a v2 error body: one per field in `details` (`base`: the body as a
    whole), else its `detail` (a refused action) or its `messages`.
    """
    if not isinstance(body, dict):
        return []
    details = body.get("details")
    found = []
    if isinstance(details, dict):
        for path, items in details.items():
            for item in items if isinstance(items, list) else []:
                reason = item.get("reason") if isinstance(item, dict) else None
                if reason:
                    found.append(FieldError("" if path == "base" else str(path), str(reason)))
    if not found and isinstance(body.get("detail"), str):
        found.append(FieldError("", body["detail"]))
    if not found and isinstance(body.get("messages"), list):
        found += [FieldError("", str(message)) for message in body["messages"]]
    return found


def task_path(name_or_id: str, *rest: str) -> str:
    """The API path of a task by name or id (the daemon tries the id first)."""
    segment = quote(name_or_id, safe="")
    if segment in {".", ".."}:  # would be taken as a relative path
        segment = segment.replace(".", "%2E")
    return "/".join(["/tasks", segment, *rest])
