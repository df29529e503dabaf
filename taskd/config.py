"""The config file: TOML -> frozen `Settings` (the records live in `taskd.settings`).

`load_config` / `parse_config` build a `Settings` snapshot or raise `ValidationError` with every
problem found, each at an attribute path (`daemon.max_running`, `api.keys[0].scopes[1]`,
`task[nightly-backup].options.overlap`, `task #3 (line 40).schedules[0].hours[1]`). A task is
named by `task[<name>]` when its name is valid and unique in the file, else by its position
counted from 1 and the line of its `[[task]]` header (`task #3 (line 40)`); each is checked
by the one task validator the API shares (`taskd.taskspec`). Unknown keys are errors
everywhere except inside the opaque JSON values (`task_params`, `frontend_prefs`,
`metadata`), so a typo never passes silently.

Relative paths in the file (`state_dir`, `unix_socket`, `key_file`, `password_file`,
`secret_file`, `ca_file`) are relative to the directory of the config file, not to the working
directory, and are stored absolute. Secrets are never read here: API keys, the SMTP password
and webhook secrets stay in their files until the part that uses them reads them (a password
or secret written in the file itself is refused); the `[smtp]` and `[notify]` files must exist.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import tomllib
import urllib.parse
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, cast

from taskd import systemd
from taskd.errors import FieldError, ValidationError, join_path
from taskd.model import TaskSpec
from taskd.schedule import load_timezone
from taskd.settings import (
    DEFAULT_EVENT_LOOP,
    DEFAULT_STATE_DIR,
    EVENT_LOOPS,
    NOTIFY_EVENTS,
    SOCKET_NAME,
    ApiKeyRef,
    ApiSettings,
    ApiUser,
    ClusterSettings,
    DaemonSettings,
    JwtIssuer,
    ListenAddress,
    NotifySettings,
    Settings,
    SmtpSecurity,
    SmtpSettings,
    StoreSettings,
    WebhookSettings,
    resolve_path,
)
from taskd.taskspec import (
    check_name,
    email_address,
    task_header_lines,
    task_paths,
    validate_task_spec,
)
from taskd.validate import (
    Check,
    Fields,
    array_of_tables,
    boolean,
    choice,
    describe,
    fail,
    integer,
    list_of,
    member,
    number,
    string,
    table,
)

__all__ = ["SCOPES", "load_config", "parse_config"]

# The scopes an API key or user may be given. They would sit best with the API's auth, but
# only the loader refuses unknown ones, and `taskd.api` takes no new code in this change.
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
        "admin",
        "tasks/*",
        "*",
    }
)

_NO_DIRECTORIES = systemd.Directories()
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
# sun_path holds 108 bytes on Linux and 104 on the BSDs and macOS, including the final NUL.
_MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103
_TOML_POSITION = re.compile(
    r"(?P<message>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)",
    re.DOTALL,
)


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
    tasks = raw.get("task")
    return _build_settings(
        raw,
        task_lines=task_header_lines(text, len(tasks)) if isinstance(tasks, list) else None,
        source=source,
        base_dir=base_dir,
        known_modules=known_modules,
        directories=directories,
    )


# ---------------------------------------------------------------------------------------
# Sections


def _build_settings(
    raw: Mapping[str, Any],
    *,
    task_lines: list[int] | None,
    source: str,
    base_dir: Path,
    known_modules: Collection[str] | None,
    directories: systemd.Directories,
) -> Settings:
    base_dir = Path(os.path.abspath(base_dir))
    top = Fields(raw, "")
    daemon_raw: dict[str, Any] = top.get("daemon", table, {})
    api_raw: dict[str, Any] = top.get("api", table, {})
    tasks_raw: list[Any] = top.get("task", array_of_tables("[[task]]"), [])
    smtp_raw: dict[str, Any] | None = top.get("smtp", table, None)
    notify_raw: dict[str, Any] = top.get("notify", table, {})
    store_raw: dict[str, Any] = top.get("store", table, {})
    cluster_raw: dict[str, Any] = top.get("cluster", table, {})
    errors = top.unknown_keys()
    # Sections fall back to the default of each value they refuse, so the rest is still
    # checked and one round shows every problem; an invalid daemon.timezone, for one, is
    # reported once there, and the schedules are meanwhile checked against UTC.
    daemon = _daemon_settings(daemon_raw, "daemon", base_dir, directories.state, errors)
    socket_dir = directories.runtime or daemon.state_dir
    api = _api_settings(api_raw, "api", base_dir, socket_dir, errors)
    tasks = _task_specs(tasks_raw, "task", task_lines, daemon.timezone, known_modules, errors)
    smtp = None if smtp_raw is None else _smtp_settings(smtp_raw, "smtp", base_dir, errors)
    notify = _notify_settings(notify_raw, "notify", base_dir, errors)
    store = _store_settings(store_raw, "store", base_dir, errors)
    cluster = _cluster_settings(cluster_raw, "cluster", errors)
    if errors:
        raise ValidationError(errors)
    return Settings(
        source=source,
        daemon=daemon,
        api=api,
        tasks=tasks,
        smtp=smtp,
        notify=notify,
        store=store,
        cluster=cluster,
    )


def _daemon_settings(
    raw: Mapping[str, Any],
    path: str,
    base_dir: Path,
    systemd_state: Path | None,
    errors: list[FieldError],
) -> DaemonSettings:
    fields = Fields(raw, path)
    default_state = systemd_state or resolve_path(base_dir, DEFAULT_STATE_DIR)
    settings = DaemonSettings(
        state_dir=fields.get("state_dir", _path_in(base_dir), default_state),
        timezone=fields.get("timezone", _timezone, "UTC"),
        max_running=fields.get("max_running", integer(minimum=1), 16),
        shutdown_grace_sec=fields.get("shutdown_grace_sec", number(minimum=0), 30.0),
        stop_grace_sec=fields.get("stop_grace_sec", number(minimum=0), 10.0),
        history_per_task=fields.get("history_per_task", integer(minimum=1), 100),
        log_entries_per_execution=fields.get("log_entries_per_execution", integer(minimum=1), 1000),
        event_loop=fields.get("event_loop", choice(EVENT_LOOPS), DEFAULT_EVENT_LOOP),
        node=fields.get("node", _node_name, ""),
    )
    errors.extend(fields.unknown_keys())
    return settings


def _api_settings(
    raw: Mapping[str, Any], path: str, base_dir: Path, socket_dir: Path, errors: list[FieldError]
) -> ApiSettings:
    fields = Fields(raw, path)
    listen = fields.get("listen", list_of(_listen_address, unique=True), ApiSettings().listen)
    default_socket: Path | None = socket_dir / SOCKET_NAME
    unix_socket = fields.get("unix_socket", _socket_path(base_dir), default_socket)
    if "unix_socket" not in raw and unix_socket is not None:
        # The default lives in state_dir, which may be deep enough to overflow sun_path.
        fields.check("unix_socket", _socket_length, unix_socket, None)
    trust = fields.get("trust_unix_socket", boolean, True)
    max_body = fields.get("max_body_bytes", integer(minimum=1), 1_048_576)
    defaults = ApiSettings()
    auth_failures = fields.get(
        "auth_failures_per_minute", integer(minimum=0), defaults.auth_failures_per_minute
    )
    request_timeout = fields.get(
        "request_timeout_sec", number(minimum=0.1), defaults.request_timeout_sec
    )
    keepalive_timeout = fields.get(
        "keepalive_timeout_sec", number(minimum=0.1), defaults.keepalive_timeout_sec
    )
    max_connections = fields.get("max_connections", integer(minimum=1), defaults.max_connections)
    max_in_flight = fields.get("max_in_flight", integer(minimum=1), defaults.max_in_flight)
    keys: list[ApiKeyRef] = fields.get(
        "keys", array_of_tables("[[api.keys]]", _api_key(base_dir)), []
    )
    users: list[ApiUser] = fields.get("users", array_of_tables("[[api.users]]", _api_user), [])
    _check_unique_principals(keys, users, path, fields)
    jwt: list[JwtIssuer] = fields.get("jwt", array_of_tables("[[api.jwt]]", _jwt(base_dir)), [])
    seen_issuers: dict[str, int] = {}
    for index, issuer in enumerate(jwt):
        if issuer.issuer in seen_issuers:
            fields.error(
                f"jwt[{index}].issuer",
                f"duplicate issuer {issuer.issuer!r}, also jwt[{seen_issuers[issuer.issuer]}]",
            )
        seen_issuers.setdefault(issuer.issuer, index)
    errors.extend(fields.unknown_keys())
    return ApiSettings(
        listen=listen,
        unix_socket=unix_socket,
        trust_unix_socket=trust,
        max_body_bytes=max_body,
        keys=tuple(keys),
        users=tuple(users),
        jwt=tuple(jwt),
        auth_failures_per_minute=auth_failures,
        request_timeout_sec=request_timeout,
        keepalive_timeout_sec=keepalive_timeout,
        max_connections=max_connections,
        max_in_flight=max_in_flight,
    )


def _check_unique_principals(
    keys: list[ApiKeyRef], users: list[ApiUser], path: str, fields: Fields
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
        fields = Fields.of(value, path)
        name = fields.require("name", check_name)
        key_file = fields.require("key_file", _path_in(base_dir))
        scopes = fields.require("scopes", _scopes)
        fields.close()
        return ApiKeyRef(
            name=cast(str, name), key_file=cast(Path, key_file), scopes=cast(frozenset[str], scopes)
        )

    return check


# The most clock skew a JWT issuer may be granted: beyond it "expired" means little.
MAX_JWT_LEEWAY_SEC = 3600


def _jwt(base_dir: Path) -> Check[JwtIssuer]:
    def check(value: Any, path: str) -> JwtIssuer:
        fields = Fields.of(value, path)
        issuer = fields.require("issuer", string())
        audience = fields.require("audience", string())
        secret_file = fields.get("secret_file", _path_in(base_dir), None)
        public_key_file = fields.get("public_key_file", _path_in(base_dir), None)
        leeway = fields.get("leeway_sec", number(minimum=0, maximum=MAX_JWT_LEEWAY_SEC), 0.0)
        scopes = fields.require("scopes", _scopes)
        _refuse_inline_secret(value, "secret", "secret_file", fields)
        if ("secret_file" in value) == ("public_key_file" in value):
            fields.error(
                "secret_file",
                "give exactly one of secret_file (HS256) and public_key_file (RS256, ES256)",
            )
        fields.close()
        return JwtIssuer(
            issuer=cast(str, issuer),
            audience=cast(str, audience),
            secret_file=secret_file,
            public_key_file=public_key_file,
            leeway_sec=float(leeway),
            scopes=cast(frozenset[str], scopes),
        )

    return check


def _api_user(value: Any, path: str) -> ApiUser:
    fields = Fields.of(value, path)
    name = fields.require("name", check_name)
    password_hash = fields.require("password_hash", string())
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
    fields = Fields(raw, path)
    host = fields.require("host", _host)
    security = fields.get("security", member(SmtpSecurity), SmtpSecurity.STARTTLS)
    port = fields.get("port", integer(minimum=1, maximum=65535), None)
    username = fields.get("username", string(), None)
    password_file = fields.get("password_file", _existing_file(base_dir), None)
    from_address = fields.require("from", email_address)
    timeout = fields.get("timeout_sec", number(minimum=0, exclusive=True), 30.0)
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
    fields = Fields(raw, path)
    webhooks: list[WebhookSettings] = fields.get(
        "webhooks", array_of_tables("[[notify.webhooks]]", _webhook(base_dir)), []
    )
    defaults = NotifySettings()
    settings = NotifySettings(
        webhooks=tuple(webhooks),
        log_lines=fields.get("log_lines", integer(minimum=0, maximum=1000), defaults.log_lines),
        max_attempts=fields.get(
            "max_attempts", integer(minimum=1, maximum=100), defaults.max_attempts
        ),
        retry_base_delay_sec=fields.get(
            "retry_base_delay_sec",
            number(minimum=0, exclusive=True),
            defaults.retry_base_delay_sec,
        ),
        retry_max_delay_sec=fields.get(
            "retry_max_delay_sec",
            number(minimum=0, exclusive=True),
            defaults.retry_max_delay_sec,
        ),
        queue_size=fields.get("queue_size", integer(minimum=1), defaults.queue_size),
        shutdown_timeout_sec=fields.get(
            "shutdown_timeout_sec", number(minimum=0), defaults.shutdown_timeout_sec
        ),
    )
    errors.extend(fields.unknown_keys())
    return settings


# -- [store] and [cluster] (several servers over one PostgreSQL) --------------------------

_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# What a store URL's query may set: where the server is and how to talk to it.
_STORE_URL_PARAMS = frozenset(
    {"host", "port", "sslmode", "application_name", "connect_timeout", "search_path"}
)


def _node_name(value: Any, path: str) -> str:
    name = string()(value, path)
    if not _NODE_NAME.fullmatch(name):
        fail(
            path,
            f"{name!r} is not a node name: 1 to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return name


def _store_url(value: Any, path: str) -> str:
    """A `postgresql://[user@][host][:port]/database[?host=/socket/dir&...]` URL, without a
    password (that goes in `password_file`)."""
    url = string()(value, path)
    example = "such as 'postgresql://taskd@db.example.org/taskd'"
    if any(char.isspace() or not char.isprintable() for char in url):
        fail(path, f"must be a postgresql:// URL {example}, without spaces, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError as error:
        fail(path, f"must be a postgresql:// URL {example}: {error}")
    if parts.scheme not in ("postgresql", "postgres"):
        fail(path, f"must be a postgresql:// URL {example}, got {url!r}")
    if parts.password is not None:
        fail(
            path,
            "a secret is never written in the config file: put the password in a file only "
            "taskd can read and name that file in password_file",
        )
    database = parts.path.lstrip("/")
    if not database or "/" in database:
        fail(path, f"must name the database after the host ({example}), got {url!r}")
    if port == 0:
        fail(path, f"port must be in 1..65535, got {url!r}")
    unknown = sorted(set(query) - _STORE_URL_PARAMS)
    if unknown:
        fail(
            path,
            f"unknown URL parameter {unknown[0]!r}: known are "
            f"{', '.join(sorted(_STORE_URL_PARAMS))}",
        )
    for host in query.get("host", []):
        if not host.startswith("/"):
            fail(
                path,
                f"host= must be the absolute path of the server's socket directory, got {host!r}",
            )
    if not parts.hostname and "host" not in query:
        fail(
            path,
            f"must name the server: a host ({example}) or a socket directory "
            "('postgresql:///taskd?host=/run/postgresql')",
        )
    return url


def _store_settings(
    raw: Mapping[str, Any], path: str, base_dir: Path, errors: list[FieldError]
) -> StoreSettings:
    fields = Fields(raw, path)
    url = fields.get("url", _store_url, None)
    password_file = fields.get("password_file", _existing_file(base_dir), None)
    _refuse_inline_secret(raw, "password", "password_file", fields)
    if "password_file" in raw and "url" not in raw:
        fields.error("url", "is required when password_file is set")
    errors.extend(fields.unknown_keys())
    return StoreSettings(url=url, password_file=password_file)


def _cluster_settings(
    raw: Mapping[str, Any], path: str, errors: list[FieldError]
) -> ClusterSettings:
    fields = Fields(raw, path)
    defaults = ClusterSettings()
    heartbeat = fields.get("heartbeat_sec", number(minimum=0.1, maximum=60), defaults.heartbeat_sec)
    failover = fields.get("failover_sec", number(minimum=1, maximum=3600), defaults.failover_sec)
    if failover < 2 * heartbeat:
        fields.error(
            "failover_sec",
            f"must be at least twice heartbeat_sec ({heartbeat:g}), or one late heartbeat "
            "would declare a live node dead",
        )
    errors.extend(fields.unknown_keys())
    return ClusterSettings(failover_sec=failover, heartbeat_sec=heartbeat)


def _webhook(base_dir: Path) -> Check[WebhookSettings]:
    def check(value: Any, path: str) -> WebhookSettings:
        fields = Fields.of(value, path)
        url = fields.require("url", _http_url)
        events = fields.get("events", _events, frozenset(NOTIFY_EVENTS))
        secret_file = fields.get("secret_file", _existing_file(base_dir), None)
        timeout = fields.get("timeout_sec", number(minimum=0, exclusive=True), 10.0)
        _refuse_inline_secret(value, "secret", "secret_file", fields)
        fields.close()
        return WebhookSettings(
            url=cast(str, url), events=events, secret_file=secret_file, timeout_sec=timeout
        )

    return check


def _refuse_inline_secret(raw: Mapping[str, Any], key: str, file_key: str, fields: Fields) -> None:
    """Refuse a secret written in the config, with a better message than "unknown field"."""

    def check(value: Any, path: str) -> None:
        fail(
            path,
            f"a secret is never written in the config file: put it in a file only taskd "
            f"can read and name that file in {file_key}",
        )

    fields.get(key, check, None)


def _events(value: Any, path: str) -> frozenset[str]:
    events = list_of(choice(NOTIFY_EVENTS), unique=True)(value, path)
    if not events:
        fail(path, f"must name at least one of {', '.join(NOTIFY_EVENTS)}")
    return frozenset(events)


def _task_specs(
    raw: list[Any],
    path: str,
    lines: list[int] | None,
    default_timezone: str,
    known_modules: Collection[str] | None,
    errors: list[FieldError],
) -> tuple[TaskSpec, ...]:
    paths, name_errors = task_paths(raw, path, lines=lines)
    errors.extend(name_errors)
    specs: list[TaskSpec] = []
    for item, item_path in zip(raw, paths, strict=True):
        try:
            spec = validate_task_spec(
                item, path=item_path, default_timezone=default_timezone, known_modules=known_modules
            )
        except ValidationError as error:
            errors.extend(error.errors)
        else:
            specs.append(spec)
    return tuple(specs)


# ---------------------------------------------------------------------------------------
# Checks of the config file's own values


def _path_in(base_dir: Path) -> Check[Path]:
    def check(value: Any, path: str) -> Path:
        text = string()(value, path)
        if "\0" in text:
            fail(path, "must not contain a NUL character")
        return resolve_path(base_dir, text)

    return check


def _socket_path(base_dir: Path) -> Check[Path | None]:
    def check(value: Any, path: str) -> Path | None:
        if value is False:
            return None
        if not isinstance(value, str) or not value:
            fail(path, f"must be a path, or false to turn the socket off, got {describe(value)}")
        socket = _path_in(base_dir)(value, path)
        return _socket_length(socket, path)

    return check


def _socket_length(socket: Path, path: str) -> Path:
    size = len(os.fsencode(socket))
    if size > _MAX_SOCKET_PATH:
        fail(
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
            fail(path, f"{file} {reason}; it must name a file")
        return file

    return check


def _host(value: Any, path: str) -> str:
    host = string()(value, path)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host) or host.replace(".", "").isdigit():
            fail(path, f"{host!r} is not a host name or IP address")
    return host


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_url(value: Any, path: str) -> str:
    url = string()(value, path)
    example = "such as 'https://hooks.example.org/taskd'"
    if any(char.isspace() or not char.isprintable() for char in url):
        fail(path, f"must be an http or https URL {example}, without spaces, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as error:
        fail(path, f"must be an http or https URL {example}: {error}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(path, f"must be an http or https URL {example}, got {url!r}")
    if port == 0:
        fail(path, f"port must be in 1..65535, got {url!r}")
    return url


def _timezone(value: Any, path: str) -> str:
    """An IANA zone name, returned in its canonical spelling (`europe/berlin` is taken)."""
    name = string()(value, path)
    errors: list[FieldError] = []
    zone = load_timezone(name, path, errors)
    if zone is None:
        raise ValidationError(errors)
    return zone.key


def _listen_address(value: Any, path: str) -> ListenAddress:
    example = "'127.0.0.1:8470' or '[::1]:8470'"
    text = string()(value, path)
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        fail(path, f"must be host:port such as {example}, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            fail(path, f"{host!r} is not an IPv6 address")
    elif ":" in host:
        fail(path, f"an IPv6 address goes in brackets, such as '[::1]:8470', got {text!r}")
    elif not _HOSTNAME.fullmatch(host) or (host.replace(".", "").isdigit() and not _is_ipv4(host)):
        fail(path, f"{host!r} is not a host name or IPv4 address")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        fail(path, f"port must be an integer in 1..65535, got {port_text!r}")
    return ListenAddress(host=host, port=int(port_text))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _scopes(value: Any, path: str) -> frozenset[str]:
    scopes = list_of(choice(sorted(SCOPES)))(value, path)
    if not scopes:
        fail(path, "must name at least one scope, such as 'tasks/*'")
    return frozenset(scopes)


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
