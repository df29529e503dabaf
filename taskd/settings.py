"""The settings records: one validated snapshot of the config file, frozen.

Built by the config loader (`taskd.config`), read by every part the config tunes. A reload
builds a new `Settings` and swaps one reference; nothing here is ever mutated. Paths are
absolute; secrets are never held here, only the files that hold them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from taskd.model import TaskSpec

__all__ = [
    "DEFAULT_STATE_DIR",
    "NOTIFY_EVENTS",
    "SOCKET_NAME",
    "ApiKeyRef",
    "ApiSettings",
    "ApiUser",
    "ClusterSettings",
    "DaemonSettings",
    "JwtIssuer",
    "ListenAddress",
    "NotifySettings",
    "Settings",
    "SmtpSecurity",
    "SmtpSettings",
    "StoreSettings",
    "WebhookSettings",
    "resolve_path",
]

# The endings of an execution a webhook may subscribe to (`skipped` slots never notify).
NOTIFY_EVENTS = ("done", "error", "canceled")
DEFAULT_STATE_DIR = "./var"  # relative to the config file's directory
SOCKET_NAME = "taskd.sock"  # in state_dir, or in systemd's RuntimeDirectory=


def resolve_path(base_dir: Path, text: str) -> Path:
    """Make `text` absolute against `base_dir`, lexically (the path need not exist yet)."""
    return Path(os.path.normpath(os.path.join(base_dir, text)))


class SmtpSecurity(StrEnum):
    """How the connection to the mail server is protected."""

    NONE = "none"  # plain text (no STARTTLS even if offered)
    STARTTLS = "starttls"  # plain connect, then STARTTLS, required
    TLS = "tls"  # TLS from the first byte (SMTPS, port 465)


# ---------------------------------------------------------------------------------------
# The records


EVENT_LOOPS = ("uvloop", "asyncio")
DEFAULT_EVENT_LOOP = "asyncio"


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
    # "asyncio" (the default) or "uvloop" (about a tenth less loop CPU per API-started run;
    # but malformed requests and running out of descriptors are handled as asyncio does
    # only on asyncio's loop; asyncio's loop if uvloop is not installed). Read at start.
    event_loop: str = DEFAULT_EVENT_LOOP
    node: str = ""  # this server's name in a cluster; "" means the host name


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
class JwtIssuer:
    """One `[[api.jwt]]` entry: an issuer whose JSON Web Tokens the API accepts.

    Exactly one of `secret_file` (HS256: a shared secret) and `public_key_file` (RS256 or
    ES256, told by the key's type) is set; both absolute, read by the API. A token's scopes
    are its `scope` claim intersected with `scopes`.
    """

    issuer: str
    audience: str
    secret_file: Path | None = None
    public_key_file: Path | None = None
    leeway_sec: float = 0.0
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
    jwt: tuple[JwtIssuer, ...] = ()
    # Pressure limits (see README, "Under pressure"). Failed logins per client address and
    # minute over TCP (0: no limit); beyond them 429 with Retry-After.
    auth_failures_per_minute: int = 30
    # A request's header and body must arrive within this; idle keep-alive connections close.
    request_timeout_sec: float = 10.0
    keepalive_timeout_sec: float = 15.0
    # Open TCP connections at once (the Unix socket apart); beyond, new ones are closed.
    max_connections: int = 256
    # Requests being handled at once (health apart); beyond, 503 with Retry-After.
    max_in_flight: int = 8


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
class StoreSettings:
    """The `[store]` section: where taskd keeps its state.

    `url` None: the SQLite file in `daemon.state_dir` (a single server). A
    `postgresql://user@host/db` URL: that PostgreSQL database, shared by the nodes of a
    cluster; its password stays in `password_file` (absolute; it existed when the config
    was loaded), read when taskd connects.
    """

    url: str | None = None
    password_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSettings:
    """The `[cluster]` section: how nodes sharing a PostgreSQL store watch each other.

    Each node writes a heartbeat twice per `heartbeat_sec`; one silent for `failover_sec -
    heartbeat_sec` is declared dead by a survivor, which takes over its work: within
    `failover_sec` of the node's death.
    """

    failover_sec: float = 5.0
    heartbeat_sec: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """One validated snapshot of the config file; a reload builds a new one."""

    source: str  # where it came from, for messages ("task defined in etc/taskd.toml")
    daemon: DaemonSettings
    api: ApiSettings
    tasks: tuple[TaskSpec, ...] = ()
    smtp: SmtpSettings | None = None  # None: no `[smtp]`, no mail
    notify: NotifySettings = field(default_factory=NotifySettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
