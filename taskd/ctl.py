"""`taskd ctl`: the command-line client of a running daemon, over its v2 HTTP API.

It talks to the daemon's Unix socket (found through the config file, `$TASKD_SOCKET` or
`--socket`) or to a TCP address (`--url`), with an API key read from a file (`--key-file`)
and sent as `Authorization: Bearer <key>`. The key never appears in any output.

Failures are raised as `CtlError`s carrying one message per line; `cli.py` prints them and
turns them into exit codes: `InvalidInputError` for input that the client or the server's
validation refused (a usage error, a bad task file, 400/413/422), any other `CtlError` for
what the daemon refused or could not do (401, 403, 404, 409, 5xx) and for a daemon that
cannot be reached.

Results go to an `Output`: aligned tables and key/value listings for people, or with
`--json` the server's JSON as it came (one document per command; `log -f` prints one JSON
object per line: `log -f --execution ID` each event's data, `log -f TASK` each event as
`{"event", "data"}`). Times are shown in UTC.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tomllib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from taskd import __version__
from taskd.api.render import SPEC_FIELDS
from taskd.errors import FieldError, ValidationError, join_path
from taskd.model import TaskSpec
from taskd.settings import DEFAULT_STATE_DIR, SOCKET_NAME, resolve_path
from taskd.taskspec import task_header_lines, task_paths, validate_task_spec
from taskd.validate import did_you_mean

__all__ = [
    "Client",
    "Command",
    "CtlError",
    "Endpoint",
    "InvalidInputError",
    "Output",
    "RefusedError",
    "TaskFile",
    "UnreachableError",
    "act",
    "apply",
    "connect",
    "current_execution",
    "default_config_path",
    "defer_task",
    "delete_task",
    "find_endpoint",
    "list_executions",
    "list_modules",
    "list_tasks",
    "parse_metadata",
    "read_task_file",
    "run",
    "run_deferred",
    "run_task",
    "show_log",
    "show_task",
    "socket_from_config",
]

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
# Schedules and params are validated again by the daemon; the client checks a file's
# structure with the same validator first, using a zone that always exists.
_CHECK_TIMEZONE = "UTC"
# A definition may set these, but a v2 update cannot clear them (an absent field keeps its
# stored value and the validator refuses null for them).
_UNCLEARABLE = ("workflow_type", "workflow_action")


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
            f"cannot read the config file {path}: {_reason(error)} (pass --socket PATH instead)"
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
        raise InvalidInputError(f"--key-file: cannot read {path}: {_reason(error)}") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"--key-file: {path} is not UTF-8 text") from None
    if not key or any(ch.isspace() or not ch.isprintable() for ch in key):
        # A header cannot carry it; say so without showing any of it.
        raise InvalidInputError(f"--key-file: {path} does not hold one API key on one line")
    return key


def _reason(error: OSError) -> str:
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
            return UnreachableError(f"{where}: {_reason(os_error)}")
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


# ---------------------------------------------------------------------------------------
# Output


@dataclass(slots=True)
class Output:
    """Where results go: readable text, or with `json` the server's JSON documents."""

    json: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    notes: TextIO = field(default_factory=lambda: sys.stderr)

    def note(self, message: str) -> None:
        """Tell the user something that is neither a result nor a failure (on stderr)."""
        print(f"taskd: note: {message}", file=self.notes, flush=True)

    def document(self, data: Any) -> None:
        """Print one JSON document."""
        print(json.dumps(data, indent=2, ensure_ascii=False), file=self.stream)

    def result(self, answer: Mapping[str, Any], key: str) -> None:
        """Print an action's answer: the JSON document, or the one value `key` of it."""
        if self.json:
            self.document(answer)
        else:
            self.line(str(answer.get(key, "")))

    def json_line(self, data: Any) -> None:
        """Print one JSON object on one line (for streams)."""
        print(json.dumps(data, ensure_ascii=False), file=self.stream, flush=True)

    def line(self, text: str = "") -> None:
        """Print one line of text."""
        print(text, file=self.stream, flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Print rows in columns aligned on the widest cell, headers first."""
        widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
        for row in [headers, *rows]:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
            self.line("  ".join(cells).rstrip())

    def pairs(self, items: Sequence[tuple[str, str]]) -> None:
        """Print `key  value` lines, values aligned; a multi-line value stays aligned."""
        width = max((len(key) for key, _ in items), default=0)
        for key, value in items:
            lines = value.splitlines() or [""]
            self.line(f"{key:<{width}}  {lines[0]}".rstrip())
            for more in lines[1:]:
                self.line(f"{'':<{width}}  {more}")


def _time(value: Any, *, millis: bool = False) -> str:
    """An RFC 3339 time from the API, shown in UTC to the second (or millisecond)."""
    if not isinstance(value, str):
        return "-"
    try:
        instant = datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return value
    timespec = "milliseconds" if millis else "seconds"
    return instant.isoformat(timespec=timespec).replace("+00:00", "Z")


def _seconds_between(start: Any, end: Any) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _bytes(count: Any) -> str:
    """A byte count for people: 1.5 GB, 320 kB, 12 B (decimal units, as `df -H`)."""
    amount = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(amount) < 1000 or unit == "TB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    raise AssertionError("unreachable")


def _progress(execution: Mapping[str, Any]) -> str:
    """An execution's progress and counters in one cell: `40 %, 1.2 GB of 3.0 GB, 12 of 30
    files, 85.0 MB/s`; `-` when the module reported none."""
    parts = []
    if isinstance(execution.get("progress"), int | float):
        parts.append(f"{execution['progress']:g} %")
    done, todo = execution.get("size_done"), execution.get("size_todo")
    if isinstance(done, int | float):
        parts.append(
            _bytes(done) + (f" of {_bytes(todo)}" if isinstance(todo, int | float) else "")
        )
    done, todo = execution.get("nodes_done"), execution.get("nodes_todo")
    if isinstance(done, int | float):
        parts.append(
            f"{done:g}" + (f" of {todo:g}" if isinstance(todo, int | float) else "") + " files"
        )
    if isinstance(execution.get("bandwidth"), int | float):
        parts.append(f"{_bytes(execution['bandwidth'])}/s")
    return ", ".join(parts) or "-"


def _status(record: Mapping[str, Any]) -> str:
    status = str(record.get("status", "-"))
    message = record.get("status_msg")
    return f"{status}: {message}" if message else status


# ---------------------------------------------------------------------------------------
# Commands: reading


async def list_tasks(client: Client, out: Output) -> None:
    """`list`: every task, sorted by name."""
    tasks: list[dict[str, Any]] = []
    count = 0
    while True:
        page = await client.call(
            "GET", "/tasks", query={"limit": PAGE, "offset": len(tasks), "sort_by": "name"}
        )
        tasks += page["tasks"]
        count = page["count"]
        if not page["tasks"] or len(tasks) >= count:
            break
    if out.json:
        out.document({"count": count, "tasks": tasks})
        return
    rows = [
        [
            task["name"],
            task["id"],
            task.get("status", "-"),
            task.get("task_module", "-"),
            _time(task.get("next_run_at")) if task.get("enabled", True) else "disabled",
            _time(task.get("run_started_at")),
        ]
        for task in tasks
    ]
    out.table(["NAME", "ID", "STATUS", "MODULE", "NEXT RUN", "LAST RUN"], rows)


async def show_task(client: Client, out: Output, name: str) -> None:
    """`show`: one task, all of its definition and its latest execution."""
    task = await client.call("GET", task_path(name))
    if out.json:
        out.document(task)
        return
    options = task.get("options") or {}
    recipients = (task.get("email") or {}).get("recipients") or []
    items = [
        ("name", task["name"]),
        ("id", task["id"]),
        ("source", task.get("source", "-")),
        ("module", task.get("task_module", "-")),
        ("status", _status(task)),
        ("description", task.get("comment") or "-"),
        ("params", _compact(task.get("task_params", {}))),
        ("schedules", "\n".join(_compact(s) for s in task.get("schedules", [])) or "none"),
        ("enabled", "yes" if task.get("enabled", True) else "no"),
        ("next run", _time(task.get("next_run_at"))),
        ("last run", _last_run(task)),
        ("timeout", f"{task['task_timeout_sec']} s" if task.get("task_timeout_sec") else "none"),
        ("options", " ".join(f"{k}={v}" for k, v in sorted(options.items()))),
        (
            "email",
            ", ".join(
                r["email"] + (" (problems only)" if r.get("problems_only") else "")
                for r in recipients
            )
            or "none",
        ),
    ]
    for key in ("workflow_type", "workflow_action"):
        if key in task:
            items.append((key.replace("_", " "), str(task[key])))
    for key in ("metadata", "frontend_prefs", "state"):
        if task.get(key):
            items.append((key.replace("_", " "), _compact(task[key])))
    items += [
        ("version", str(task.get("version", "-"))),
        ("created", f"{_time(task.get('created_at'))} by {task.get('created_by', '-')}"),
        ("updated", f"{_time(task.get('updated_at'))} by {task.get('updated_by', '-')}"),
    ]
    execution = task.get("last_execution")
    if execution:
        items.append(("last execution", _execution_summary(execution)))
    out.pairs(items)


def _last_run(task: Mapping[str, Any]) -> str:
    started = task.get("run_started_at")
    if not started:
        return "never"
    finished = task.get("run_finished_at")
    if not finished:
        return f"{_time(started)} (running)"
    return f"{_time(started)} ({_duration(_seconds_between(started, finished))})"


def _execution_summary(execution: Mapping[str, Any]) -> str:
    parts = [f"{execution['id']}", execution.get("trigger", "-"), _status(execution)]
    if execution.get("started_at"):
        parts.append(f"started {_time(execution['started_at'])}")
    progress = _progress(execution)
    if progress != "-":
        parts.append(f"progress {progress}")
    return ", ".join(parts)


async def list_executions(client: Client, out: Output, name: str, limit: int | None) -> None:
    """`executions`: a task's executions, newest first."""
    query = {} if limit is None else {"limit": limit}
    answer = await client.call("GET", task_path(name, "executions"), query=query)
    if out.json:
        out.document(answer)
        return
    rows = [
        [
            e["id"],
            e.get("status", "-"),
            e.get("trigger", "-"),
            _time(e.get("scheduled_for")),
            _time(e.get("started_at")),
            _duration(_seconds_between(e.get("started_at"), e.get("finished_at"))),
            _progress(e),
            e.get("status_msg", ""),
        ]
        for e in answer["executions"]
    ]
    headers = ["ID", "STATUS", "TRIGGER", "SCHEDULED", "STARTED", "DURATION", "PROGRESS", "MESSAGE"]
    out.table(headers, rows)


async def list_modules(client: Client, out: Output) -> None:
    """`modules`: the modules tasks can use, with their params."""
    answer = await client.call("GET", "/modules")
    if out.json:
        out.document(answer)
        return
    rows = []
    for module in answer["modules"]:
        params = ", ".join(
            p["name"] + ("*" if p.get("required") else "") for p in module.get("params", [])
        )
        description = module.get("description") or {}
        text = description.get("en-US") or next(iter(description.values()), "")
        rows.append([module["name"], params or "-", text])
    out.table(["MODULE", "PARAMS (* required)", "DESCRIPTION"], rows)


# ---------------------------------------------------------------------------------------
# Commands: logs


async def show_log(
    client: Client,
    out: Output,
    name: str,
    *,
    follow: bool,
    execution: int | None,
    every_execution: bool,
    offset: int | None,
    limit: int | None,
    lines: int | None = None,
) -> None:
    """`log`: the log of the task's current execution (see `current_execution`), or of
    `execution`, or of every kept one, from the task's log line `offset` (at most `limit`
    lines from there, or the last `lines`).

    With `follow` and `execution`: that run's lines as they come, until it ends. With
    `follow` alone, like `journalctl -f`: the current run's lines (its last `lines`, or
    from `offset`; every kept line with `every_execution`), then every following run's
    as they come, each run under a header line, until interrupted.
    """
    if follow and execution is None:
        await _follow_task(client, out, name, every_execution, offset, lines)
        return
    if execution is None and not every_execution:
        execution = await current_execution(client, name)
        if execution is None and not follow:
            return  # it never ran: an empty log
    query: dict[str, str | int] = {"offset": offset or 0}
    if execution is not None:
        query["execution_id"] = execution
    show_execution = every_execution
    if follow:
        if lines is not None and offset is None:
            tail = await _read_log(client, name, dict(query), None, lines)
            if tail:
                query["offset"] = tail[0]["idx"]
        await _follow_execution(client, out, name, query, show_execution)
        return
    entries = await _read_log(client, name, query, limit, lines)
    if out.json:
        out.document({"entries": entries})
        return
    for entry in entries:
        out.line(_log_line(entry, show_execution))


async def _read_log(
    client: Client,
    name: str,
    query: dict[str, str | int],
    limit: int | None,
    lines: int | None = None,
) -> list[dict[str, Any]]:
    """The log entries `query` selects: the first `limit`, or the last `lines`, or all."""
    entries: deque[dict[str, Any]] = deque(maxlen=lines)
    count = 0
    while limit is None or count < limit:
        want = LOG_PAGE if limit is None else min(LOG_PAGE, limit - count)
        page = await client.call("GET", task_path(name, "log"), query={**query, "limit": want})
        entries.extend(page["entries"])
        count += len(page["entries"])
        if len(page["entries"]) < want:
            break
        query["offset"] = page["entries"][-1]["idx"] + 1
    return list(entries)


_ACTIVE = frozenset({"running", "paused"})


async def current_execution(client: Client, name: str) -> int | None:
    """The execution `log` shows by default: the newest running or paused one, else the
    newest one that is not a skipped slot (a run just asked for may still be queued), else
    the newest; None if the task has none.

    (The task's `last_execution` is the latest that started, and a slot skipped while a run
    goes on is newer than the run: neither is what "the log of the task" means.)
    """
    answer = await client.call("GET", task_path(name, "executions"), query={"limit": 50})
    executions = answer["executions"]
    for wanted in (
        lambda e: e.get("status") in _ACTIVE,
        lambda e: e.get("status") != "skipped",
        lambda e: True,
    ):
        found = next((e for e in executions if wanted(e)), None)
        if found is not None:
            return int(found["id"])
    return None


async def _follow_execution(
    client: Client, out: Output, name: str, query: dict[str, str | int], show_execution: bool
) -> None:
    """Print one execution's lines as they come (`follow=execution`) until it ends."""
    stream = client.events(task_path(name, "log"), {**query, "follow": "execution"})
    async with aclosing(stream) as events:
        async for event in events:
            if out.json:
                out.json_line(event.data)
            elif event.kind == "log":
                out.line(_log_line(event.data, show_execution))
            if event.kind == "end":
                return
            _check_shutdown(client, event)
    raise UnreachableError(f"the daemon at {client.endpoint} ended the log stream early")


async def _follow_task(
    client: Client,
    out: Output,
    name: str,
    every_execution: bool,
    offset: int | None,
    lines: int | None,
) -> None:
    """Print the task's log from where `show_log` says, then every run's lines as they
    come (`follow=task`), a header line before each run's; until interrupted."""
    query: dict[str, str | int] = {"follow": "task"}
    if offset is not None:
        query["offset"] = offset
    elif lines is not None:
        # Without an offset the server starts at the current run's first line; its last
        # `lines` (or the whole log's) start further on.
        selection: dict[str, str | int] = {"offset": 0}
        if not every_execution:
            current = await current_execution(client, name)
            if current is not None:
                selection["execution_id"] = current
        if every_execution or "execution_id" in selection:
            tail = await _read_log(client, name, selection, None, lines)
            if tail:
                query["offset"] = tail[0]["idx"]
    elif every_execution:
        query["offset"] = 0
    runs: dict[str, Mapping[str, Any]] = {}  # announced executions, by id
    shown: str | None = None  # the run of the last line printed
    stream = client.events(task_path(name, "log"), query)
    async with aclosing(stream) as events:
        async for event in events:
            _check_shutdown(client, event)
            if out.json:
                out.json_line({"event": event.kind, "data": event.data})
                continue
            if event.kind == "execution":
                runs[str(event.data.get("id"))] = event.data
            elif event.kind == "log":
                run = event.data.get("execution_id")
                if run is not None and run != shown:
                    out.line(_run_header(run, runs.get(run, {})))
                    shown = run
                out.line(_log_line(event.data, False))
    raise UnreachableError(f"the daemon at {client.endpoint} ended the log stream early")


def _check_shutdown(client: Client, event: Event) -> None:
    if event.kind == "shutdown":
        raise UnreachableError(
            f"the daemon at {client.endpoint} is shutting down: the log stream ended"
        )


def _run_header(execution_id: str, execution: Mapping[str, Any]) -> str:
    """`-- execution 42 (schedule, 2026-03-29T01:00:00Z) --`: which run the lines below
    are of, why it ran and when it was due."""
    why = [str(execution["trigger"])] if execution.get("trigger") else []
    when = execution.get("scheduled_for") or execution.get("started_at")
    if when:
        why.append(_time(when))
    return f"-- execution {execution_id}" + (f" ({', '.join(why)})" if why else "") + " --"


def _log_line(entry: Mapping[str, Any], show_execution: bool) -> str:
    prefix = f"[{entry.get('execution_id', '-')}] " if show_execution else ""
    time = _time(entry.get("timestamp"), millis=True)
    return f"{time} {prefix}{entry.get('level', '-'):<7} {entry.get('msg', '')}"


# ---------------------------------------------------------------------------------------
# Commands: actions


def parse_metadata(text: str | None) -> dict[str, Any]:
    """`--metadata`: a JSON object, the trigger metadata of a run. InvalidInputError if not."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"--metadata: invalid JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidInputError('--metadata: must be a JSON object, e.g. \'{"reason": "test"}\'')
    return value


async def run_task(client: Client, out: Output, name: str, metadata: dict[str, Any]) -> None:
    """`run`: start a run now; print its execution id."""
    answer = await client.call("PUT", task_path(name, "action", "run"), body=metadata)
    out.result(answer, "execution_id")


async def defer_task(client: Client, out: Output, name: str, metadata: dict[str, Any]) -> None:
    """`defer`: prepare a run for `run-defer`; print the defer id."""
    answer = await client.call("PUT", task_path(name, "action", "defer_run"), body=metadata)
    out.result(answer, "defer_id")


async def run_deferred(client: Client, out: Output, defer_id: str) -> None:
    """`run-defer`: start a deferred run; print its execution id."""
    answer = await client.call("PUT", "/tasks/-/action/run_defer", query={"defer_id": defer_id})
    out.result(answer, "execution_id")


async def act(client: Client, out: Output, name: str, action: str) -> None:
    """`pause`, `resume`, `stop`, `kill` (force_stop): print what the daemon did."""
    answer = await client.call("PUT", task_path(name, "action", action))
    out.result(answer, "msg")


async def delete_task(client: Client, out: Output, name: str) -> None:
    """`delete`: delete a task (its running executions are stopped); print which one."""
    task = await client.call("GET", task_path(name))
    await client.call("DELETE", task_path(task["id"]))
    if out.json:
        out.document(task)
    else:
        out.line(f"deleted {task['name']} (id {task['id']})")


# ---------------------------------------------------------------------------------------
# apply


@dataclass(frozen=True, slots=True)
class FileTask:
    """One task of a task file: where it is (`task[name]`), its definition, its fields."""

    path: str
    spec: TaskSpec
    given: frozenset[str]  # the fields the file names (`comment` counted as `description`)


@dataclass(frozen=True, slots=True)
class TaskFile:
    """A task file read and checked: its tasks in file order."""

    source: str
    tasks: tuple[FileTask, ...]


def read_task_file(path: Path, stdin: TextIO | None = None) -> TaskFile:
    """Read `[[task]]` tables (TOML) or a list of task objects (JSON) from `path` (`-` for
    stdin). JSON when the name ends in `.json` or the text starts with `[` then `{` or `]`;
    TOML otherwise. Every task is checked with the daemon's validator (module params
    aside: only the daemon knows its modules). Raises `InvalidInputError` naming each
    problem as `FILE: task[<name>].<field>: <reason>`.
    """
    source = "stdin" if str(path) == "-" else str(path)
    try:
        text = (stdin or sys.stdin).read() if source == "stdin" else path.read_text("utf-8-sig")
    except OSError as error:
        raise InvalidInputError(f"cannot read {source}: {_reason(error)}") from None
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{source}: not UTF-8 text (offset {error.start})") from None
    if _looks_like_json(path, text):
        items, lines = _json_tasks(text, source), None
    else:
        items = _toml_tasks(text, source)
        lines = task_header_lines(text, len(items))
    tasks, errors = _check_tasks(items, lines)
    if errors:
        raise InvalidInputError(*(f"{source}: {error}" for error in errors))
    return TaskFile(source, tasks)


def _looks_like_json(path: Path, text: str) -> bool:
    if path.suffix.lower() == ".json":
        return True
    if path.suffix.lower() == ".toml":
        return False
    start = text.lstrip()
    return start.startswith("[") and start[1:].lstrip()[:1] in {"{", "]"}


def _json_tasks(text: str, source: str) -> list[Any]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(
            f"{source}: invalid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    if not isinstance(items, list):
        raise InvalidInputError(f"{source}: must hold a JSON list of task objects")
    return items


def _toml_tasks(text: str, source: str) -> list[Any]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidInputError(f"{source}: invalid TOML: {error}") from None
    unknown = sorted(set(raw) - {"task"})
    if unknown:
        raise InvalidInputError(
            *(
                f"{source}: {key}: unknown key; a task file holds [[task]] tables only"
                for key in unknown
            )
        )
    items = raw.get("task", [])
    if not isinstance(items, list):
        raise InvalidInputError(f"{source}: task: must be [[task]] tables")
    return items


def _check_tasks(
    items: list[Any], lines: list[int] | None
) -> tuple[tuple[FileTask, ...], list[FieldError]]:
    """Validate each item as the config file's `[[task]]` is validated, named the same way
    (`taskspec.task_paths`): `task[<name>]` when the name is valid and unique, else
    `task #<position>`, with its line when `lines` gives it.
    """
    paths, errors = task_paths(items, "task", lines=lines)
    tasks: list[FileTask] = []
    for item, path in zip(items, paths, strict=True):
        if not isinstance(item, dict):
            errors.append(FieldError(path, "must be a table (a JSON object)"))
            continue
        raw = dict(item)
        if "comment" in raw:  # the v2 name of `description`
            if "description" in raw:
                errors.append(FieldError(join_path(path, "comment"), "conflicts with description"))
                continue
            raw["description"] = raw.pop("comment")
        try:
            spec = validate_task_spec(raw, path=path, default_timezone=_CHECK_TIMEZONE)
        except ValidationError as error:
            errors.extend(error.errors)
            continue
        tasks.append(FileTask(path, spec, frozenset(raw)))
    return tuple(tasks), errors


@dataclass(frozen=True, slots=True)
class Applied:
    """What `apply` did to one task."""

    action: str  # created, updated, unchanged
    task: dict[str, Any]  # as the daemon renders it
    changed: tuple[str, ...] = ()


async def apply(client: Client, out: Output, tasks: TaskFile) -> None:
    """`apply`: create each task of the file that does not exist (by name) and update the
    others to match the file; print what changed.

    Fields the file leaves out are reset to their defaults, as the config file's tasks are,
    except what a v2 update cannot clear: `workflow_type` and `workflow_action` (a note
    names them) and a one-shot `next_run_at` (which the API does not show apart from the
    computed one). A task whose definition already matches is not written; one that names
    `next_run_at` always is, as it cannot be compared.
    Nothing is written when a task names a module the daemon lacks. Otherwise every task is
    tried, and the problems are raised together at the end (InvalidInputError if any is a
    validation error).
    """
    modules = await client.call("GET", "/modules")
    known = {module["name"] for module in modules["modules"]}
    unknown = [
        f"{tasks.source}: {item.path}.task_module: unknown module {item.spec.task_module!r} "
        f"(the daemon has: {', '.join(sorted(known))}){did_you_mean(item.spec.task_module, known)}"
        for item in tasks.tasks
        if item.spec.task_module not in known
    ]
    if unknown:
        raise InvalidInputError(*unknown)
    results: list[Applied] = []
    problems: list[CtlError] = []
    for item in tasks.tasks:
        try:
            applied = await _apply_one(client, out, item, tasks.source)
        except (InvalidInputError, RefusedError) as error:
            problems.append(error.below(item.path))
            continue
        results.append(applied)
        if not out.json:
            task = applied.task
            what = f"{applied.action:<9} {task['name']} (id {task['id']})"
            out.line(f"{what}: {', '.join(applied.changed)}" if applied.changed else what)
    if out.json:
        out.document(
            [{"action": r.action, "changed": list(r.changed), "task": r.task} for r in results]
        )
    if problems:
        messages = [f"{tasks.source}: {m}" for problem in problems for m in problem.messages]
        if any(isinstance(problem, InvalidInputError) for problem in problems):
            raise InvalidInputError(*messages)
        raise RefusedError(*messages)


async def _apply_one(client: Client, out: Output, item: FileTask, source: str) -> Applied:
    body = item.spec.to_json()
    found = await client.call("GET", "/tasks", query={"name": item.spec.name, "limit": 1})
    if not found["tasks"]:
        created = await client.call("POST", "/tasks", body=body)
        return Applied("created", created)
    before = found["tasks"][0]
    for key in _UNCLEARABLE:
        if key in before and key not in body:
            out.note(f"{source}: {item.path}: {key} stays {before[key]!r}: the API cannot clear it")
    if "next_run_at" not in item.given and not _differs(body, before):
        return Applied("unchanged", before)
    after = await client.call("PUT", task_path(before["id"]), body=body)
    changed = _changes(before, after)
    return Applied("updated" if changed else "unchanged", after, changed)


def _definition(rendered: Mapping[str, Any]) -> dict[str, Any]:
    """The definition fields of a rendered task, named as in `TaskSpec.to_json`: the
    rendered spec fields, and `comment` as `description` (`next_run_at` is rendered live,
    computed, so it is left out of comparisons).
    """
    fields = {key: rendered[key] for key in SPEC_FIELDS if key in rendered}
    fields["description"] = rendered.get("comment") or ""
    return fields


def _differs(body: Mapping[str, Any], rendered: Mapping[str, Any]) -> bool:
    """Whether writing `body` would change the stored definition that `rendered` shows."""
    stored = _definition(rendered)
    return any(
        stored.get(key) != value
        for key, value in body.items()
        if key not in {"name", "next_run_at"}
    )


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields that differ, one level deep for objects (`options.overlap`)."""
    old, new = _definition(before), _definition(after)
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [
                f"{key}.{sub}" for sub in sorted(set(a) | set(b)) if a.get(sub) != b.get(sub)
            ]
        else:
            changed.append(key)
    return tuple(changed)


# ---------------------------------------------------------------------------------------
# Running a command


Command = Callable[[Client, Output], Awaitable[None]]


async def execute(endpoint: Endpoint, command: Command, out: Output) -> None:
    """Connect to `endpoint` and run `command`; its connections are closed afterwards."""
    async with connect(endpoint) as client:
        await command(client, out)


def run(endpoint: Endpoint, command: Command, out: Output) -> None:
    """Run `command` against `endpoint` in a fresh event loop. Raises `CtlError`."""
    asyncio.run(execute(endpoint, command, out))
