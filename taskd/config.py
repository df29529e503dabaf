"""The config file: TOML -> frozen `Settings`, and the one task validator the API shares.

`load_config` / `parse_config` build a `Settings` snapshot or raise `ValidationError` with every
problem found, each at an attribute path (`daemon.max_running`, `api.keys[0].scopes[1]`,
`task[nightly-backup].options.overlap`, `task[2].schedules[0].hours[1]`). A task is named by
`task[<name>]` when its name is valid and unique in the file, else by `task[<index>]`
(0-based, in file order). Unknown keys are errors everywhere except inside the opaque JSON
values (`task_params`, `frontend_prefs`, `metadata`), so a typo never passes silently.

Relative paths in the file (`state_dir`, `unix_socket`, `key_file`, `password_file`,
`secret_file`, `ca_file`) are relative to the directory of the config file, not to the working
directory, and are stored absolute. Secrets are never read here: API keys, the SMTP password
and webhook secrets stay in their files until the part that uses them reads them (a password
or secret written in the file itself is refused); the `[smtp]` and `[notify]` files must exist.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import sys
import tomllib
import urllib.parse
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

from taskd import systemd
from taskd.errors import FieldError, ValidationError, join_path
from taskd.model import CatchUp, EmailRecipient, Overlap, TaskOptions, TaskSpec
from taskd.schedule import (
    ScheduleSet,
    load_timezone,
    parse_instant,
    parse_schedules,
)

__all__ = [
    "NOTIFY_EVENTS",
    "SCOPES",
    "WORKFLOW_ACTIONS",
    "WORKFLOW_TYPES",
    "ApiKeyRef",
    "ApiSettings",
    "ApiUser",
    "CatchUp",
    "DaemonSettings",
    "EmailRecipient",
    "ListenAddress",
    "NotifySettings",
    "Overlap",
    "Settings",
    "SmtpSecurity",
    "SmtpSettings",
    "TaskOptions",
    "TaskSpec",
    "WebhookSettings",
    "load_config",
    "parse_config",
    "validate_task_spec",
]

T = TypeVar("T")
D = TypeVar("D")
E = TypeVar("E", bound=StrEnum)
# A check validates one value found at a path and returns it converted; it raises
# ValidationError (possibly with several errors below that path) when the value is refused.
Check = Callable[[Any, str], T]

SCOPES = frozenset(
    {
        "tasks/index",
        "tasks/show",
        "tasks/create",
        "tasks/update",
        "tasks/destroy",
        "tasks/action",
        "tasks/run_defer",
        "metrics",
        "tasks/*",
        "*",
    }
)
# The enums of the Nodeum spec: a task stored with another value would make every v2
# response about it invalid against the spec.
WORKFLOW_TYPES = (
    "active_archive",
    "offline_archive",
    "data_exchange",
    "data_migration",
    "maintenance",
    "data_enrichment",
)
WORKFLOW_ACTIONS = (
    "copy",
    "move",
    "erase",
    "scan",
    "rehydratation",
    "format",
    "check_consistency",
    "duplication",
    "cache_cleaning",
    "ejection",
    "get_index",
    "full_backup",
    "incremental_backup",
    "restore",
    "speedtest",
)

# The endings of an execution a webhook may subscribe to (`skipped` slots never notify).
NOTIFY_EVENTS = ("done", "error", "canceled")

_NO_DIRECTORIES = systemd.Directories()
DEFAULT_STATE_DIR = "./var"  # relative to the config file's directory
SOCKET_NAME = "taskd.sock"  # in state_dir, or in systemd's RuntimeDirectory=
MAX_RETRIES = 100
MAX_RETRY_DELAY_SEC = 86_400.0  # the first delay; doubled delays are capped by the scheduler
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_NAME_RULE = "1 to 100 characters from A-Z a-z 0-9 _ . -"
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
# Characters that would break a `To:` header or smuggle a second recipient in.
_EMAIL = re.compile(r"[^@\s,;<>\"]+@[^@\s,;<>\"]+")
# sun_path holds 108 bytes on Linux and 104 on the BSDs and macOS, including the final NUL.
_MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103
_TOML_POSITION = re.compile(
    r"(?P<message>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)",
    re.DOTALL,
)


class SmtpSecurity(StrEnum):
    """How the connection to the mail server is protected."""

    NONE = "none"  # plain text (no STARTTLS even if offered)
    STARTTLS = "starttls"  # plain connect, then STARTTLS, required
    TLS = "tls"  # TLS from the first byte (SMTPS, port 465)


# ---------------------------------------------------------------------------------------
# The records


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSettings:
    """The `[daemon]` section."""

    state_dir: Path  # absolute; taskd.db lives here
    timezone: str = "UTC"  # IANA name; the default for schedules without one
    max_running: int = 16
    shutdown_grace_sec: float = 30.0
    stop_grace_sec: float = 10.0
    history_per_task: int = 100
    log_entries_per_execution: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenAddress:
    """One TCP address the API listens on; `str()` gives it back as `host:port`."""

    host: str  # an IPv6 address without its brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeyRef:
    """An API key by reference: the key itself stays in `key_file`, read by the API."""

    name: str
    key_file: Path  # absolute
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiUser:
    """A user for HTTP Basic auth; `password_hash` is checked by the API, opaque here."""

    name: str
    password_hash: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """The `[api]` section."""

    listen: tuple[ListenAddress, ...] = (ListenAddress(host="127.0.0.1", port=8470),)
    unix_socket: Path | None = None  # absolute; None turns the socket off
    trust_unix_socket: bool = True
    max_body_bytes: int = 1_048_576
    keys: tuple[ApiKeyRef, ...] = ()
    users: tuple[ApiUser, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpSettings:
    """The `[smtp]` section: the server mail goes through.

    The password stays in `password_file` (absolute; it existed when the config was
    loaded); the notifier reads it when it connects. `ca_file` names the CA certificates
    (PEM) to trust instead of the system's, for a server with a private CA.
    """

    host: str
    port: int  # default 465 with security = "tls", else 25
    security: SmtpSecurity = SmtpSecurity.STARTTLS
    username: str | None = None
    password_file: Path | None = None  # set exactly when username is
    from_address: str  # `from` in the file
    timeout_sec: float = 30.0
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    """One `[[notify.webhooks]]` entry: where to POST the JSON of a finished execution.

    With `secret_file` (absolute; read by the notifier), each POST carries
    `X-Taskd-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    """

    url: str  # http or https
    events: frozenset[str] = frozenset(NOTIFY_EVENTS)  # among NOTIFY_EVENTS
    secret_file: Path | None = None
    timeout_sec: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifySettings:
    """The `[notify]` section: webhooks and how notifications are queued and retried.

    A delivery is tried up to `max_attempts` times, waiting `retry_base_delay_sec`, then
    twice that, and so on (at most `retry_max_delay_sec`) between attempts. At most
    `queue_size` finished executions wait to be handled; more are dropped (and logged).
    At shutdown, pending deliveries get `shutdown_timeout_sec`.
    """

    webhooks: tuple[WebhookSettings, ...] = ()
    log_lines: int = 20  # the last log lines of the execution quoted in a mail
    max_attempts: int = 5
    retry_base_delay_sec: float = 5.0
    retry_max_delay_sec: float = 300.0
    queue_size: int = 1000
    shutdown_timeout_sec: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """One validated snapshot of the config file; a reload builds a new one."""

    source: str  # where it came from, for messages ("task defined in etc/taskd.toml")
    daemon: DaemonSettings
    api: ApiSettings
    tasks: tuple[TaskSpec, ...] = ()
    smtp: SmtpSettings | None = None  # None: no `[smtp]`, no mail
    notify: NotifySettings = field(default_factory=NotifySettings)


# ---------------------------------------------------------------------------------------
# Entry points


def load_config(path: Path, *, known_modules: Collection[str] | None = None) -> Settings:
    """Read and validate the config file at `path`.

    Raises `ValidationError` for anything that keeps the file from loading: unreadable,
    not UTF-8, TOML syntax (naming line and column) or any invalid value. With
    `known_modules`, a task naming another module is refused too.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValidationError.single("", f"{path}: cannot read the config file: {reason}") from None
    try:
        # utf-8-sig: a byte-order mark left by an editor is not worth refusing the file for.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        reason = f"{path}: not UTF-8 text (invalid byte at offset {error.start})"
        raise ValidationError.single("", reason) from None
    return parse_config(
        text,
        source=str(path),
        base_dir=path.parent,
        known_modules=known_modules,
        directories=systemd.directories(),
    )


def parse_config(
    text: str,
    *,
    source: str,
    base_dir: Path,
    known_modules: Collection[str] | None = None,
    directories: systemd.Directories = _NO_DIRECTORIES,
) -> Settings:
    """Validate config `text` and build `Settings`.

    `source` names the text in messages; relative paths are resolved against `base_dir`.
    `directories` (systemd's StateDirectory= and RuntimeDirectory=, when set) give the
    defaults of `state_dir` and `unix_socket`. Raises `ValidationError` listing every
    problem (see `load_config`).
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _syntax_error(error, text, source) from None
    return _build_settings(
        raw,
        source=source,
        base_dir=base_dir,
        known_modules=known_modules,
        directories=directories,
    )


def validate_task_spec(
    raw: Mapping[str, Any],
    *,
    path: str,
    default_timezone: str,
    known_modules: Collection[str] | None = None,
) -> TaskSpec:
    """Validate one task definition (a config `[[task]]` or an API body) into a `TaskSpec`.

    `path` prefixes every error path (`""` for an API body). `default_timezone` must be a
    valid IANA name; schedules without a `timezone` use it. With `known_modules`, an
    unknown `task_module` is an error. An explicit `next_run_at` of None (JSON `null`,
    "do not run") gives a disabled task. Raises `ValidationError` listing every problem.
    """
    fields = _Fields.of(raw, path)
    name = fields.require("name", _name)
    module = fields.require("task_module", _module_name(known_modules))
    description = fields.get("description", _string(allow_empty=True), "")
    params: dict[str, Any] = fields.get("task_params", _json_object, {})
    timeout = fields.get("task_timeout_sec", _integer(minimum=0), 0)
    schedules = fields.get("schedules", _schedules(default_timezone), ScheduleSet())
    next_run_at = fields.get("next_run_at", _optional_instant, None)
    enabled = fields.get("enabled", _boolean, None)
    options = fields.get("options", _task_options, TaskOptions())
    recipients: tuple[EmailRecipient, ...] = fields.get("email", _email, ())
    frontend_prefs: dict[str, Any] = fields.get("frontend_prefs", _json_object, {})
    workflow_type = fields.get("workflow_type", _choice(WORKFLOW_TYPES), None)
    workflow_action = fields.get("workflow_action", _choice(WORKFLOW_ACTIONS), None)
    metadata: dict[str, Any] = fields.get("metadata", _metadata, {})
    if "next_run_at" in raw and raw["next_run_at"] is None:
        if enabled:
            fields.error("next_run_at", "null means 'do not run', which contradicts enabled = true")
        enabled = False
    fields.close()
    return TaskSpec(
        name=cast(str, name),
        task_module=cast(str, module),
        description=description,
        task_params=params,
        task_timeout_sec=timeout,
        schedules=schedules,
        next_run_at=next_run_at,
        enabled=True if enabled is None else enabled,
        options=options,
        email_recipients=recipients,
        frontend_prefs=frontend_prefs,
        workflow_type=workflow_type,
        workflow_action=workflow_action,
        metadata=metadata,
    )


# ---------------------------------------------------------------------------------------
# Sections


def _build_settings(
    raw: Mapping[str, Any],
    *,
    source: str,
    base_dir: Path,
    known_modules: Collection[str] | None,
    directories: systemd.Directories,
) -> Settings:
    base_dir = Path(os.path.abspath(base_dir))
    top = _Fields(raw, "")
    daemon_raw: dict[str, Any] = top.get("daemon", _table, {})
    api_raw: dict[str, Any] = top.get("api", _table, {})
    tasks_raw: list[Any] = top.get("task", _array_of_tables("[[task]]"), [])
    smtp_raw: dict[str, Any] | None = top.get("smtp", _table, None)
    notify_raw: dict[str, Any] = top.get("notify", _table, {})
    errors = top.unknown_keys()
    # Sections fall back to the default of each value they refuse, so the rest is still
    # checked and one round shows every problem; an invalid daemon.timezone, for one, is
    # reported once there, and the schedules are meanwhile checked against UTC.
    daemon = _daemon_settings(daemon_raw, "daemon", base_dir, directories.state, errors)
    socket_dir = directories.runtime or daemon.state_dir
    api = _api_settings(api_raw, "api", base_dir, socket_dir, errors)
    tasks = _task_specs(tasks_raw, "task", daemon.timezone, known_modules, errors)
    smtp = None if smtp_raw is None else _smtp_settings(smtp_raw, "smtp", base_dir, errors)
    notify = _notify_settings(notify_raw, "notify", base_dir, errors)
    if errors:
        raise ValidationError(errors)
    return Settings(source=source, daemon=daemon, api=api, tasks=tasks, smtp=smtp, notify=notify)


def _daemon_settings(
    raw: Mapping[str, Any],
    path: str,
    base_dir: Path,
    systemd_state: Path | None,
    errors: list[FieldError],
) -> DaemonSettings:
    fields = _Fields(raw, path)
    default_state = systemd_state or resolve_path(base_dir, DEFAULT_STATE_DIR)
    settings = DaemonSettings(
        state_dir=fields.get("state_dir", _path_in(base_dir), default_state),
        timezone=fields.get("timezone", _timezone, "UTC"),
        max_running=fields.get("max_running", _integer(minimum=1), 16),
        shutdown_grace_sec=fields.get("shutdown_grace_sec", _number(minimum=0), 30.0),
        stop_grace_sec=fields.get("stop_grace_sec", _number(minimum=0), 10.0),
        history_per_task=fields.get("history_per_task", _integer(minimum=1), 100),
        log_entries_per_execution=fields.get(
            "log_entries_per_execution", _integer(minimum=1), 1000
        ),
    )
    errors.extend(fields.unknown_keys())
    return settings


def _api_settings(
    raw: Mapping[str, Any], path: str, base_dir: Path, socket_dir: Path, errors: list[FieldError]
) -> ApiSettings:
    fields = _Fields(raw, path)
    listen = fields.get("listen", _list_of(_listen_address, unique=True), ApiSettings().listen)
    default_socket: Path | None = socket_dir / SOCKET_NAME
    unix_socket = fields.get("unix_socket", _socket_path(base_dir), default_socket)
    if "unix_socket" not in raw and unix_socket is not None:
        # The default lives in state_dir, which may be deep enough to overflow sun_path.
        fields.check("unix_socket", _socket_length, unix_socket, None)
    trust = fields.get("trust_unix_socket", _boolean, True)
    max_body = fields.get("max_body_bytes", _integer(minimum=1), 1_048_576)
    keys: list[ApiKeyRef] = fields.get(
        "keys", _array_of_tables("[[api.keys]]", _api_key(base_dir)), []
    )
    users: list[ApiUser] = fields.get("users", _array_of_tables("[[api.users]]", _api_user), [])
    _check_unique_principals(keys, users, path, fields)
    errors.extend(fields.unknown_keys())
    return ApiSettings(
        listen=listen,
        unix_socket=unix_socket,
        trust_unix_socket=trust,
        max_body_bytes=max_body,
        keys=tuple(keys),
        users=tuple(users),
    )


def _check_unique_principals(
    keys: list[ApiKeyRef], users: list[ApiUser], path: str, fields: _Fields
) -> None:
    # Keys and users share one namespace: both end up in created_by / updated_by.
    seen: dict[str, str] = {}
    principals = [("keys", index, key.name) for index, key in enumerate(keys)]
    principals += [("users", index, user.name) for index, user in enumerate(users)]
    for section, index, name in principals:
        if name in seen:
            fields.error(f"{section}[{index}].name", f"duplicate name {name!r}, also {seen[name]}")
        else:
            seen[name] = f"{join_path(path, section)}[{index}]"


def _api_key(base_dir: Path) -> Check[ApiKeyRef]:
    def check(value: Any, path: str) -> ApiKeyRef:
        fields = _Fields.of(value, path)
        name = fields.require("name", _name)
        key_file = fields.require("key_file", _path_in(base_dir))
        scopes = fields.require("scopes", _scopes)
        fields.close()
        return ApiKeyRef(
            name=cast(str, name), key_file=cast(Path, key_file), scopes=cast(frozenset[str], scopes)
        )

    return check


def _api_user(value: Any, path: str) -> ApiUser:
    fields = _Fields.of(value, path)
    name = fields.require("name", _name)
    password_hash = fields.require("password_hash", _string())
    scopes = fields.require("scopes", _scopes)
    fields.close()
    return ApiUser(
        name=cast(str, name),
        password_hash=cast(str, password_hash),
        scopes=cast(frozenset[str], scopes),
    )


def _smtp_settings(
    raw: Mapping[str, Any], path: str, base_dir: Path, errors: list[FieldError]
) -> SmtpSettings | None:
    fields = _Fields(raw, path)
    host = fields.require("host", _host)
    security = fields.get("security", _member(SmtpSecurity), SmtpSecurity.STARTTLS)
    port = fields.get("port", _integer(minimum=1, maximum=65535), None)
    username = fields.get("username", _string(), None)
    password_file = fields.get("password_file", _existing_file(base_dir), None)
    from_address = fields.require("from", _email_address)
    timeout = fields.get("timeout_sec", _number(minimum=0, exclusive=True), 30.0)
    ca_file = fields.get("ca_file", _existing_file(base_dir), None)
    _refuse_inline_secret(raw, "password", "password_file", fields)
    if "username" in raw and "password_file" not in raw:
        fields.error("password_file", "is required when username is set")
    if "password_file" in raw and "username" not in raw:
        fields.error("username", "is required when password_file is set")
    if (
        "username" in raw
        and security is SmtpSecurity.NONE
        and host is not None
        and not _is_loopback(host)
    ):
        fields.error(
            "security",
            "'none' would send the password in clear text to a host that is not loopback; "
            "use 'starttls' or 'tls'",
        )
    errors.extend(fields.unknown_keys())
    if host is None or from_address is None:
        return None  # reported; nothing to build
    return SmtpSettings(
        host=host,
        port=port if port is not None else (465 if security is SmtpSecurity.TLS else 25),
        security=security,
        username=username,
        password_file=password_file,
        from_address=from_address,
        timeout_sec=timeout,
        ca_file=ca_file,
    )


def _notify_settings(
    raw: Mapping[str, Any], path: str, base_dir: Path, errors: list[FieldError]
) -> NotifySettings:
    fields = _Fields(raw, path)
    webhooks: list[WebhookSettings] = fields.get(
        "webhooks", _array_of_tables("[[notify.webhooks]]", _webhook(base_dir)), []
    )
    defaults = NotifySettings()
    settings = NotifySettings(
        webhooks=tuple(webhooks),
        log_lines=fields.get("log_lines", _integer(minimum=0, maximum=1000), defaults.log_lines),
        max_attempts=fields.get(
            "max_attempts", _integer(minimum=1, maximum=100), defaults.max_attempts
        ),
        retry_base_delay_sec=fields.get(
            "retry_base_delay_sec",
            _number(minimum=0, exclusive=True),
            defaults.retry_base_delay_sec,
        ),
        retry_max_delay_sec=fields.get(
            "retry_max_delay_sec",
            _number(minimum=0, exclusive=True),
            defaults.retry_max_delay_sec,
        ),
        queue_size=fields.get("queue_size", _integer(minimum=1), defaults.queue_size),
        shutdown_timeout_sec=fields.get(
            "shutdown_timeout_sec", _number(minimum=0), defaults.shutdown_timeout_sec
        ),
    )
    errors.extend(fields.unknown_keys())
    return settings


def _webhook(base_dir: Path) -> Check[WebhookSettings]:
    def check(value: Any, path: str) -> WebhookSettings:
        fields = _Fields.of(value, path)
        url = fields.require("url", _http_url)
        events = fields.get("events", _events, frozenset(NOTIFY_EVENTS))
        secret_file = fields.get("secret_file", _existing_file(base_dir), None)
        timeout = fields.get("timeout_sec", _number(minimum=0, exclusive=True), 10.0)
        _refuse_inline_secret(value, "secret", "secret_file", fields)
        fields.close()
        return WebhookSettings(
            url=cast(str, url), events=events, secret_file=secret_file, timeout_sec=timeout
        )

    return check


def _refuse_inline_secret(raw: Mapping[str, Any], key: str, file_key: str, fields: _Fields) -> None:
    """Refuse a secret written in the config, with a better message than "unknown field"."""

    def check(value: Any, path: str) -> None:
        _fail(
            path,
            f"a secret is never written in the config file: put it in a file only taskd "
            f"can read and name that file in {file_key}",
        )

    fields.get(key, check, None)


def _events(value: Any, path: str) -> frozenset[str]:
    events = _list_of(_choice(NOTIFY_EVENTS), unique=True)(value, path)
    if not events:
        _fail(path, f"must name at least one of {', '.join(NOTIFY_EVENTS)}")
    return frozenset(events)


def _task_specs(
    raw: list[Any],
    path: str,
    default_timezone: str,
    known_modules: Collection[str] | None,
    errors: list[FieldError],
) -> tuple[TaskSpec, ...]:
    names = [_valid_name_of(item) for item in raw]
    uses = Counter(name for name in names if name is not None)
    specs: list[TaskSpec] = []
    first_use: dict[str, str] = {}
    for index, (item, name) in enumerate(zip(raw, names, strict=True)):
        # By name when that is unambiguous, else by index.
        item_path = f"{path}[{name}]" if name and uses[name] == 1 else f"{path}[{index}]"
        if name in first_use:
            reason = f"duplicate task name {name!r}, also used by {first_use[name]}"
            errors.append(FieldError(join_path(item_path, "name"), reason))
        elif name is not None:
            first_use[name] = item_path
        try:
            spec = validate_task_spec(
                item, path=item_path, default_timezone=default_timezone, known_modules=known_modules
            )
        except ValidationError as error:
            errors.extend(error.errors)
        else:
            specs.append(spec)
    return tuple(specs)


def _valid_name_of(item: Any) -> str | None:
    name = item.get("name") if isinstance(item, Mapping) else None
    return name if isinstance(name, str) and _NAME.fullmatch(name) else None


# ---------------------------------------------------------------------------------------
# Reading one table


class _Fields:
    """Reads the keys of one table, collecting errors instead of stopping at the first.

    Every key read is remembered; `close()` reports the others as unknown, then raises one
    ValidationError with everything found, if anything was.
    """

    def __init__(self, raw: Mapping[str, Any], path: str) -> None:
        self._raw = raw
        self._path = path
        self._read: list[str] = []
        self._errors: list[FieldError] = []

    @classmethod
    def of(cls, value: Any, path: str) -> _Fields:
        """Start reading `value`, which must be a table."""
        return cls(_table(value, path), path)

    def get(self, key: str, check: Check[T], default: T) -> T:
        """Return the checked value of `key`, or `default` when absent or invalid."""
        self._read.append(key)
        if key not in self._raw:
            return default
        return self.check(key, check, self._raw[key], default)

    def require(self, key: str, check: Check[T]) -> T | None:
        """Like `get`, but a missing key is an error; None when missing or invalid."""
        self._read.append(key)
        if key not in self._raw:
            self.error(key, "is required")
            return None
        return self.check(key, check, self._raw[key], None)

    def check(self, key: str, check: Check[T], value: Any, default: D) -> T | D:
        """Run `check` on `value` as if found at `key`; on failure record it, return `default`."""
        try:
            return check(value, join_path(self._path, key))
        except ValidationError as error:
            self._errors.extend(error.errors)
            return default

    def error(self, key: str, reason: str) -> None:
        """Record a problem at `key` (a path below this table)."""
        self._errors.append(FieldError(join_path(self._path, key), reason))

    def unknown_keys(self) -> list[FieldError]:
        """Return the errors so far plus one per key that was never read (call it once)."""
        for key in self._raw:
            if key not in self._read:
                self.error(str(key), _unknown_key_reason(str(key), self._read))
        return self._errors

    def close(self) -> None:
        """Raise ValidationError if any problem was found, unknown keys included."""
        errors = self.unknown_keys()
        if errors:
            raise ValidationError(errors)


def _unknown_key_reason(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown field; {hint}expected one of: {', '.join(sorted(known))}"


# ---------------------------------------------------------------------------------------
# Checks: (value, path) -> converted value, or ValidationError


def _fail(path: str, reason: str) -> NoReturn:
    raise ValidationError.single(path, reason)


def _describe(value: Any) -> str:
    """Name a refused value for a message: its type, and the value if it is short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 60 else "a long string"
    if isinstance(value, datetime | date | time):
        return f"the TOML date/time {value.isoformat()}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    if value is None:
        return "null"
    return type(value).__name__


def _table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, f"must be an object (a TOML table), got {_describe(value)}")
    return dict(value)


def _array_of_tables(header: str, item_check: Check[T] | None = None) -> Check[list[Any]]:
    """Check an array (of tables, each checked by `item_check` when given)."""

    def check(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            _fail(path, f"must be an array of tables ({header}), got {_describe(value)}")
        if item_check is None:
            return list(value)
        return list(_list_of(item_check)(value, path))

    return check


def _string(*, allow_empty: bool = False) -> Check[str]:
    def check(value: Any, path: str) -> str:
        if not isinstance(value, str):
            _fail(path, f"must be a string, got {_describe(value)}")
        if not value and not allow_empty:
            _fail(path, "must not be empty")
        return value

    return check


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, f"must be true or false, got {_describe(value)}")
    return value


def _integer(*, minimum: int | None = None, maximum: int | None = None) -> Check[int]:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, f"must be an integer, got {_describe(value)}")
        if minimum is not None and value < minimum:
            _fail(path, f"must be an integer >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            _fail(path, f"must be an integer <= {maximum}, got {value}")
        return value

    return check


def _number(
    *, minimum: float, exclusive: bool = False, maximum: float | None = None
) -> Check[float]:
    def check(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(path, f"must be a number, got {_describe(value)}")
        if not math.isfinite(value):
            _fail(path, f"must be a finite number, got {value}")
        if value < minimum or (exclusive and value == minimum):
            bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
            _fail(path, f"must be a number {bound}, got {value:g}")
        if maximum is not None and value > maximum:
            _fail(path, f"must be a number <= {maximum:g}, got {value:g}")
        return float(value)

    return check


def _choice(allowed: Collection[str]) -> Check[str]:
    def check(value: Any, path: str) -> str:
        if not isinstance(value, str) or value not in allowed:
            options = ", ".join(repr(a) for a in allowed)
            _fail(path, f"must be one of {options}, got {_describe(value)}")
        return value

    return check


def _member(enum_type: type[E]) -> Check[E]:
    def check(value: Any, path: str) -> E:
        return enum_type(_choice([member.value for member in enum_type])(value, path))

    return check


def _list_of(item_check: Check[T], *, unique: bool = False) -> Check[tuple[T, ...]]:
    """Check an array item by item, collecting the errors of every item."""

    def check(value: Any, path: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            _fail(path, f"must be an array, got {_describe(value)}")
        errors: list[FieldError] = []
        items: list[T] = []
        first_index: dict[T, int] = {}
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            try:
                converted = item_check(item, item_path)
            except ValidationError as error:
                errors.extend(error.errors)
                continue
            if unique:
                if converted in first_index:
                    reason = f"duplicate of {path}[{first_index[converted]}]"
                    errors.append(FieldError(item_path, reason))
                first_index.setdefault(converted, index)
            items.append(converted)
        if errors:
            raise ValidationError(errors)
        return tuple(items)

    return check


def _path_in(base_dir: Path) -> Check[Path]:
    def check(value: Any, path: str) -> Path:
        text = _string()(value, path)
        if "\0" in text:
            _fail(path, "must not contain a NUL character")
        return resolve_path(base_dir, text)

    return check


def resolve_path(base_dir: Path, text: str) -> Path:
    """Make `text` absolute against `base_dir`, lexically (the path need not exist yet)."""
    return Path(os.path.normpath(os.path.join(base_dir, text)))


def _socket_path(base_dir: Path) -> Check[Path | None]:
    def check(value: Any, path: str) -> Path | None:
        if value is False:
            return None
        if not isinstance(value, str) or not value:
            _fail(path, f"must be a path, or false to turn the socket off, got {_describe(value)}")
        socket = _path_in(base_dir)(value, path)
        return _socket_length(socket, path)

    return check


def _socket_length(socket: Path, path: str) -> Path:
    size = len(os.fsencode(socket))
    if size > _MAX_SOCKET_PATH:
        _fail(
            path,
            f"{socket} is {size} bytes long; a Unix socket path may have at most "
            f"{_MAX_SOCKET_PATH} (set api.unix_socket to a shorter path)",
        )
    return socket


def _existing_file(base_dir: Path) -> Check[Path]:
    """A path (relative to the config's directory) naming a file that exists now."""

    def check(value: Any, path: str) -> Path:
        file = _path_in(base_dir)(value, path)
        if not file.is_file():
            reason = "is a directory" if file.is_dir() else "does not exist"
            _fail(path, f"{file} {reason}; it must name a file")
        return file

    return check


def _host(value: Any, path: str) -> str:
    host = _string()(value, path)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host) or host.replace(".", "").isdigit():
            _fail(path, f"{host!r} is not a host name or IP address")
    return host


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_url(value: Any, path: str) -> str:
    url = _string()(value, path)
    example = "such as 'https://hooks.example.org/taskd'"
    if any(char.isspace() or not char.isprintable() for char in url):
        _fail(path, f"must be an http or https URL {example}, without spaces, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as error:
        _fail(path, f"must be an http or https URL {example}: {error}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _fail(path, f"must be an http or https URL {example}, got {url!r}")
    if port == 0:
        _fail(path, f"port must be in 1..65535, got {url!r}")
    return url


def _timezone(value: Any, path: str) -> str:
    name = _string()(value, path)
    errors: list[FieldError] = []
    if load_timezone(name, path, errors) is None:
        raise ValidationError(errors)
    return name


def _listen_address(value: Any, path: str) -> ListenAddress:
    example = "'127.0.0.1:8470' or '[::1]:8470'"
    text = _string()(value, path)
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        _fail(path, f"must be host:port such as {example}, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            _fail(path, f"{host!r} is not an IPv6 address")
    elif ":" in host:
        _fail(path, f"an IPv6 address goes in brackets, such as '[::1]:8470', got {text!r}")
    elif not _HOSTNAME.fullmatch(host) or (host.replace(".", "").isdigit() and not _is_ipv4(host)):
        _fail(path, f"{host!r} is not a host name or IPv4 address")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        _fail(path, f"port must be an integer in 1..65535, got {port_text!r}")
    return ListenAddress(host=host, port=int(port_text))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _scopes(value: Any, path: str) -> frozenset[str]:
    scopes = _list_of(_choice(sorted(SCOPES)))(value, path)
    if not scopes:
        _fail(path, "must name at least one scope, such as 'tasks/*'")
    return frozenset(scopes)


def _name(value: Any, path: str) -> str:
    """A task's or an API principal's name: a principal's shows up as created_by, and for
    Basic auth it must also hold no ':' (which `_NAME` keeps out)."""
    name = _string()(value, path)
    if not _NAME.fullmatch(name):
        _fail(path, f"must be {_NAME_RULE}, got {name!r}")
    return name


def _module_name(known_modules: Collection[str] | None) -> Check[str]:
    def check(value: Any, path: str) -> str:
        name = _string()(value, path)
        if known_modules is not None and name not in known_modules:
            known = ", ".join(sorted(known_modules)) or "none"
            _fail(path, f"unknown module {name!r}; known modules: {known}")
        return name

    return check


def _schedules(default_timezone: str) -> Check[ScheduleSet]:
    def check(value: Any, path: str) -> ScheduleSet:
        if not isinstance(value, list):
            _fail(path, f"must be an array of schedules, got {_describe(value)}")
        return parse_schedules(value, default_timezone=default_timezone, path=path)

    return check


def _optional_instant(value: Any, path: str) -> datetime | None:
    if value is None:  # JSON null: "do not run"; see validate_task_spec
        return None
    errors: list[FieldError] = []
    instant = parse_instant(value, path, errors)
    if instant is None:
        raise ValidationError(errors)
    return instant.astimezone(UTC)


def _task_options(value: Any, path: str) -> TaskOptions:
    fields = _Fields.of(value, path)
    options = TaskOptions(
        priority=fields.get("priority", _integer(), 0),
        overlap=fields.get("overlap", _member(Overlap), Overlap.SKIP),
        catch_up=fields.get("catch_up", _member(CatchUp), CatchUp.ONCE),
        max_retries=fields.get("max_retries", _integer(minimum=0, maximum=MAX_RETRIES), 0),
        retry_delay_sec=fields.get(
            "retry_delay_sec",
            _number(minimum=0, exclusive=True, maximum=MAX_RETRY_DELAY_SEC),
            60.0,
        ),
    )
    fields.close()
    return options


def _email(value: Any, path: str) -> tuple[EmailRecipient, ...]:
    fields = _Fields.of(value, path)
    recipients: tuple[EmailRecipient, ...] = fields.get(
        "recipients", _list_of(_email_recipient), ()
    )
    fields.close()
    return recipients


def _email_recipient(value: Any, path: str) -> EmailRecipient:
    fields = _Fields.of(value, path)
    address = fields.require("email", _email_address)
    problems_only = fields.get("problems_only", _boolean, False)
    fields.close()
    return EmailRecipient(email=cast(str, address), problems_only=problems_only)


def _email_address(value: Any, path: str) -> str:
    address = _string()(value, path)
    if not _EMAIL.fullmatch(address):
        _fail(path, f"must be an e-mail address such as 'ops@example.org', got {address!r}")
    return address


def _metadata(value: Any, path: str) -> dict[str, Any]:
    # The Nodeum shape: `task` an object, `files` an object of strings; other keys are kept.
    metadata = _json_object(value, path)
    errors: list[FieldError] = []
    if "task" in metadata and not isinstance(metadata["task"], dict):
        errors.append(FieldError(join_path(path, "task"), "must be an object"))
    files = metadata.get("files")
    if files is not None and not isinstance(files, dict):
        errors.append(FieldError(join_path(path, "files"), "must be an object of strings"))
    elif files:
        errors.extend(
            FieldError(join_path(join_path(path, "files"), key), "must be a string")
            for key, item in files.items()
            if not isinstance(item, str)
        )
    if errors:
        raise ValidationError(errors)
    return metadata


def _json_object(value: Any, path: str) -> dict[str, Any]:
    _table(value, path)
    return cast(dict[str, Any], _json_value(value, path))


def _json_value(value: Any, path: str) -> Any:
    """Return a deep copy of `value`, refusing what JSON cannot hold (TOML dates, NaN).

    These values are stored and served as JSON; refusing them here beats failing later.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(path, f"must be a finite number, got {value}")
        return value
    if isinstance(value, list):
        return _collect_items((f"{path}[{index}]", item) for index, item in enumerate(value))
    if isinstance(value, Mapping):
        items = _collect_items((join_path(path, str(key)), item) for key, item in value.items())
        return dict(zip((str(key) for key in value), items, strict=True))
    if isinstance(value, datetime | date | time):
        _fail(path, f"TOML dates and times are not JSON; write {value.isoformat()!r} as a string")
    _fail(path, f"must be a JSON value, got {_describe(value)}")


def _collect_items(items: Any) -> list[Any]:
    errors: list[FieldError] = []
    result: list[Any] = []
    for item_path, item in items:
        try:
            result.append(_json_value(item, item_path))
        except ValidationError as error:
            errors.extend(error.errors)
    if errors:
        raise ValidationError(errors)
    return result


# ---------------------------------------------------------------------------------------
# TOML syntax errors


def _syntax_error(error: tomllib.TOMLDecodeError, text: str, source: str) -> ValidationError:
    """Turn tomllib's message into `source:line:column: invalid TOML: ...`."""
    message = str(error)
    match = _TOML_POSITION.fullmatch(message)
    if match is None:  # a message without a position: still name the file
        return ValidationError.single("", f"{source}: invalid TOML: {message}")
    message = match["message"]
    if match["line"] is not None:
        line, column = int(match["line"]), int(match["column"])
    else:  # "at end of document": point at the end
        lines = text.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
    return ValidationError.single("", f"{source}:{line}:{column}: invalid TOML: {message}")
