"""`taskd serve`: the daemon's lifecycle, signals and config reloads.

Start: open the store, reconcile the config file's tasks, recover what a crash left behind,
start the runner and scheduler. SIGTERM / SIGINT: stop taking new work, let running
executions finish for up to `shutdown_grace_sec`, then stop them (cooperatively, then forced)
and exit 0; a second signal skips the grace. SIGHUP: reload the config file; an invalid file
is refused whole and nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from taskd import __version__, systemd
from taskd.api.app import build_app, serve_api
from taskd.api.auth import Authenticator
from taskd.api.limits import LogThrottle
from taskd.clock import Clock, SystemClock
from taskd.cluster import Cluster, apply_config_file, open_cluster, open_store_retrying
from taskd.config import load_config
from taskd.core import ConfigChanges, Core, config_errors_for
from taskd.engine import EngineSettings, build_engine
from taskd.errors import FieldError, StoreUnavailableError, ValidationError
from taskd.metrics import Metrics
from taskd.modules.registry import ModuleRegistry
from taskd.notify import Notifier
from taskd.scheduler import Scheduler
from taskd.settings import DEFAULT_EVENT_LOOP, Settings
from taskd.store import Store

log = structlog.get_logger("taskd.daemon")


def configure_logging(*, json_lines: bool | None = None, level: int = logging.INFO) -> None:
    """structlog: JSON lines when stderr is not a terminal, readable lines when it is.

    What the libraries log through the standard `logging` module (aiohttp, asyncio) goes to
    the same renderer through a root handler, so every line on stderr has one shape. A
    malformed HTTP request (aiohttp logs each with its traceback) becomes at most one line
    per `MALFORMED_LOG_INTERVAL_SEC`, without a traceback, counting what it left out.
    """
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(allow=_LOG_EXTRAS),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(MalformedRequests(LogThrottle(MALFORMED_LOG_INTERVAL_SEC)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


MALFORMED_LOG_INTERVAL_SEC = 60.0
_LOG_EXTRAS = ("problem", "left_out_since_last_line")


class MalformedRequests(logging.Filter):
    """Turns aiohttp's report of a request it could not parse (logged with a traceback, one
    per request) into one line without a traceback per interval; passes everything else."""

    def __init__(self, throttle: LogThrottle) -> None:
        super().__init__()
        self._throttle = throttle

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a malformed request within the interval; True otherwise (rewritten)."""
        error = record.exc_info[1] if record.exc_info else None
        if not (record.name.startswith("aiohttp") and isinstance(error, HttpProcessingError)):
            return True
        allowed, left_out = self._throttle.allow("malformed request")
        if not allowed:
            return False
        record.msg, record.args = "malformed HTTP request: answered 400", ()
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        record.problem = " ".join(str(error.message).split())[:200]
        record.left_out_since_last_line = left_out
        return True


def load_settings(path: Path, modules: ModuleRegistry) -> Settings:
    """Load the config file and check every task's params. Raises ValidationError."""
    settings = load_config(path, known_modules=modules.names())
    errors = config_errors_for(settings.tasks, modules)
    if errors:
        raise ValidationError(errors)
    return settings


# How often an idle daemon pings its store, so health flips to failing (or back) without
# waiting for a request or a run to write something.
STORE_PROBE_INTERVAL_SEC = 5.0


async def probe_store(store: Store, interval_sec: float) -> None:
    """Ping `store` every `interval_sec` seconds, forever: a ping that fails makes the store
    remember the failure (health reports it), and one that commits while a failure is
    remembered clears it (see `Store.ping`). The store logs both changes; this logs nothing.
    """
    while True:
        await asyncio.sleep(interval_sec)
        with contextlib.suppress(Exception):  # the failure is the store's to remember
            async with asyncio.timeout(max(interval_sec, 1.0)):
                await store.ping()


_NO_CREDENTIALS = (
    "no API key or user configured: TCP answers 401 to everything but health "
    "(see README, 'Turning on the HTTP API')"
)


class StartRefused(Exception):
    """`taskd serve` would not start on this config.

    `problems` holds (event, problem) pairs: the log event (`invalid config`, `unsafe file`,
    `invalid API credentials`) and the problem, at its attribute path where it has one.
    """

    def __init__(self, problems: list[tuple[str, FieldError]]) -> None:
        super().__init__("; ".join(str(problem) for _, problem in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Preflight:
    """What the checks before a start found: the settings, the API's credentials, warnings."""

    settings: Settings
    auth: Authenticator
    warnings: tuple[str, ...]


def preflight(config_path: Path, modules: ModuleRegistry) -> Preflight:
    """Run every check `taskd serve` runs before it starts (check-config runs the same).

    Raises StartRefused with each problem: an invalid file or module params, an unsafe
    config or secret file (writable by others, a key readable by others), an unreadable key
    file or a bad password hash.
    """
    try:
        settings = load_settings(config_path, modules)
    except ValidationError as error:
        raise StartRefused([("invalid config", problem) for problem in error.errors]) from None
    unsafe = unsafe_files([(config_path, False), *secret_files(settings)])
    if unsafe:
        raise StartRefused([("unsafe file", FieldError("", reason)) for reason in unsafe])
    try:
        auth = Authenticator.from_settings(settings.api)
    except ValidationError as error:
        raise StartRefused(
            [("invalid API credentials", problem) for problem in error.errors]
        ) from None
    warnings = []
    if settings.api.listen and not auth.has_credentials:
        warnings.append(_NO_CREDENTIALS)
    return Preflight(settings=settings, auth=auth, warnings=tuple(warnings))


class Daemon:
    """One running taskd: store, runner, scheduler and core, with their lifecycles."""

    def __init__(self, config_path: Path, *, clock: Clock | None = None) -> None:
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.modules = ModuleRegistry.builtin()
        self.modules.load_entry_points()
        self.stopping = asyncio.Event()
        self.skip_grace = False
        self.core: Core | None = None
        self.scheduler: Scheduler | None = None
        self.notifier: Notifier | None = None
        self.metrics: Metrics | None = None
        self._reloading: asyncio.Task[bool] | None = None
        self.state_dir: Path | None = None
        # A SIGHUP came while a reload ran: it may have read the file before the edit the
        # signal announces, so one more reload follows (however many signals came).
        self._reload_again = False
        self.auth: Authenticator | None = None
        self.cluster: Cluster | None = None  # with a PostgreSQL store (`taskd.cluster`)
        self.config_state = "current"  # "stale": another node applied a newer file

    async def run(self) -> int:
        """Serve until SIGTERM / SIGINT; return the exit code."""
        try:
            return await self._run()
        except StoreUnavailableError as error:
            # Start-up writes (config tasks, crash recovery) found the store unusable.
            assert self.state_dir is not None
            _unusable_state_dir(self.state_dir, f"store unavailable: {error}")
            return 2

    async def _run(self) -> int:
        try:
            checked = preflight(self.config_path, self.modules)
        except StartRefused as refused:
            for event, problem in refused.problems:
                log.error(event, problem=str(problem))
            return 2
        settings, auth = checked.settings, checked.auth
        self.state_dir = settings.daemon.state_dir
        self.auth = auth
        for warning in checked.warnings:
            log.warning(warning)
        daemon = settings.daemon
        inherited = systemd.listen_fds()
        unix_socket_fd = systemd.unix_stream_fd(inherited)
        for extra in inherited:
            if extra.fd != unix_socket_fd:
                log.warning(
                    "closing an inherited descriptor taskd has no use for",
                    fd=extra.fd,
                    name=extra.name,
                )
                os.close(extra.fd)
        async with AsyncExitStack() as stack:
            try:
                stack.enter_context(_state_lock(daemon.state_dir))
            except BlockingIOError:
                log.error(
                    "another taskd runs on this state directory", state_dir=str(daemon.state_dir)
                )
                return 1
            except OSError as error:
                _unusable_state_dir(daemon.state_dir, f"{error.strerror or error}")
                return 2
            watchdog = asyncio.create_task(
                systemd.watchdog_loop(alive=self._alive, on_error=_notify_failed)
            )
            stack.callback(watchdog.cancel)
            try:
                # Cluster hook: a PostgreSQL server that does not answer is waited for.
                store = await stack.enter_async_context(
                    open_store_retrying(
                        settings,
                        stopping=self.stopping,
                        status=lambda text: _notify(f"STATUS={text}"),
                    )
                )
            except (StoreUnavailableError, RuntimeError) as error:  # RuntimeError: newer file
                if settings.store.url is not None:
                    log.error("cannot use the database", problem=str(error))
                else:
                    _unusable_state_dir(daemon.state_dir, str(error))
                return 2
            if store is None:  # stopped while waiting for the database
                return 0
            notifier = await stack.enter_async_context(
                Notifier.from_settings(settings, store=store, clock=self.clock)
            )
            self.notifier = notifier
            engine = build_engine(
                store=store,
                modules=self.modules,
                clock=self.clock,
                settings=EngineSettings(
                    default_timezone=daemon.timezone,
                    max_running=daemon.max_running,
                    stop_grace_sec=daemon.stop_grace_sec,
                    config_source=str(self.config_path),
                    dispatcher=daemon.node or None,
                    sole_writer=settings.store.url is None,
                ),
                # Queued: mail and webhooks never hold up the runner.
                on_ended=[notifier.submit],
            )
            self.metrics = engine.metrics
            runner, scheduler = engine.runner, engine.scheduler
            await stack.enter_async_context(runner)
            self.core = engine.core
            # Cluster hook: on a shared store the newest file wins (`taskd.cluster`).
            outcome = await apply_config_file(
                self.core, store, settings.tasks, config_path=self.config_path, settings=settings
            )
            self.config_state = outcome.state
            changes = outcome.changes or ConfigChanges()
            log.info(
                "config applied",
                added=len(changes.added),
                updated=len(changes.updated),
                retired=len(changes.retired),
            )
            app = build_app(
                core=self.core,
                auth=auth,
                api_settings=settings.api,
                health=self.health,
                metrics=engine.metrics,
            )
            # Listen before anything runs: a taken address stops taskd before any task did.
            try:
                site_runner = await stack.enter_async_context(
                    serve_api(app, settings.api, unix_socket_fd=unix_socket_fd)
                )
            except OSError as error:
                log.error("cannot listen", problem=str(error))
                return 1
            _say_how_to_reach(site_runner.addresses, settings)
            await stack.enter_async_context(scheduler)
            self.scheduler = scheduler
            # Cluster hook: heartbeats, failover and other nodes' task edits (PostgreSQL).
            self.cluster = await stack.enter_async_context(
                open_cluster(
                    store, settings=settings, scheduler=scheduler, runner=runner, clock=self.clock
                )
            )
            self.core.remote = self.cluster
            if self.cluster is not None:
                self.cluster.register_metrics(engine.metrics.registry)
            self._install_signals()
            status = asyncio.create_task(systemd.status_loop(self._status, on_error=_notify_failed))
            stack.callback(status.cancel)
            probe = asyncio.create_task(probe_store(store, STORE_PROBE_INTERVAL_SEC))
            stack.callback(probe.cancel)
            # Everything built so far lives as long as the daemon: keep the collector from
            # walking it again and again (full collections stalled requests for ~30 ms).
            gc.freeze()
            _notify("READY=1")
            log.info("taskd started", state_dir=str(daemon.state_dir), pid=os.getpid())
            await self.stopping.wait()
            _notify(f"STOPPING=1\nSTATUS={self._status()}")
            running = runner.running_count
            if running and not self.skip_grace:
                log.info(
                    "taskd stopping",
                    grace_sec=daemon.shutdown_grace_sec,
                    running=running,
                    hint=(
                        f"waiting up to {daemon.shutdown_grace_sec:g} s for {running} running "
                        "execution(s); a second Ctrl-C (or SIGTERM) stops them now"
                    ),
                )
            else:
                log.info("taskd stopping", grace_sec=daemon.shutdown_grace_sec)
            await scheduler.stop()
            await runner.shutdown(0 if self.skip_grace else daemon.shutdown_grace_sec)
        log.info("taskd stopped")
        return 0

    def _alive(self) -> bool:
        return self.stopping.is_set() or self.scheduler is None or self.scheduler.alive

    def _status(self) -> str:
        if self.core is None:
            return "starting"
        runner = self.core.runner
        counts = f"{runner.running_count} running, {runner.queued_count} queued"
        return f"stopping: {counts}" if self.stopping.is_set() else counts

    async def health(self) -> dict[str, Any]:
        """What `GET /api/v2/health` reports: scheduler alive, store writable, version.

        The store is `writable`, or `failing: <reason>` while its last write failed (until
        a write succeeds) or an empty write gets no answer within 2 s; `unrecorded` counts
        the endings that wait for the store (within `running`).
        """
        assert self.core is not None
        report: dict[str, Any] = {"status": "ok", "version": __version__}
        alive = self.scheduler is not None and self.scheduler.alive
        report["scheduler"] = "running" if alive else "stopped"
        try:
            async with asyncio.timeout(2):
                await self.core.store.ping()
            report["store"] = "writable"
        except TimeoutError:
            report["store"] = "failing: no answer from the store within 2 s"
            alive = False
        except Exception as error:  # any failure to write is what health reports
            report["store"] = f"failing: {error}"
            alive = False
        report["running"] = self.core.runner.running_count
        report["queued"] = self.core.runner.queued_count
        report["unrecorded"] = self.core.runner.unrecorded_count
        if self.cluster is not None:  # cluster hook: this node and every node's heartbeat
            report["node"] = self.cluster.node
            report["config"] = self.config_state
            try:
                report["nodes"] = [node.as_json() for node in await self.cluster.nodes()]
            except StoreUnavailableError as error:
                report["nodes"] = f"unknown: {error.reason}"
        if not alive:
            report["status"] = "degraded"
        return report

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)

    def _on_stop_signal(self) -> None:
        if self.stopping.is_set():
            self.skip_grace = True  # a second signal: do not wait for running executions
            if self.core is not None:
                self.core.runner.hurry()
            log.warning("second stop signal: stopping executions now")
        self.stopping.set()

    def _on_reload_signal(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self._reload_until_current())
        else:
            self._reload_again = True
            log.info("reload requested during a reload: another one follows it")

    async def _reload_until_current(self) -> bool:
        """Reload; again after it if SIGHUPs came meanwhile. Returns the last one's success."""
        while True:
            self._reload_again = False
            reloaded = await self.reload()
            if not self._reload_again:
                return reloaded

    async def reload(self) -> bool:
        """Reload the config file: its tasks, API keys and users, default timezone,
        `max_running` and notifications; refuse an invalid file (or an unreadable key file)
        whole. Returns success."""
        assert self.core is not None
        _notify(systemd.reloading_state())
        try:
            return await self._reload()
        finally:
            # Everything built so far lives as long as the daemon: keep the collector from
            # walking it again and again (full collections stalled requests for ~30 ms).
            gc.freeze()
            _notify("READY=1")

    async def _reload(self) -> bool:
        assert self.core is not None
        try:
            # In a thread: it reads the config file and the secret files tasks name.
            settings = await asyncio.to_thread(load_settings, self.config_path, self.modules)
        except ValidationError as error:
            for problem in error.errors:
                log.error("config reload refused", problem=str(problem))
            return False
        unsafe = unsafe_files([(self.config_path, False), *secret_files(settings)])
        for reason in unsafe:
            log.error("config reload refused", problem=reason)
        if unsafe:
            return False
        try:
            auth = Authenticator.from_settings(settings.api)
        except ValidationError as error:
            for problem in error.errors:
                log.error("config reload refused", problem=str(problem))
            return False
        moved = await self.core.set_default_timezone(settings.daemon.timezone)
        if moved:
            log.info("default timezone changed", timezone=settings.daemon.timezone, moved=moved)
        outcome = await apply_config_file(
            self.core,
            self.core.store,
            settings.tasks,
            config_path=self.config_path,
            settings=settings,
        )
        self.config_state = outcome.state
        changes = outcome.changes or ConfigChanges()
        self.core.runner.max_running = settings.daemon.max_running
        if self.auth is not None:
            # Keys and users as the file names them now: a revoked one gets 401 at once.
            self.auth.take_credentials(auth)
        if self.notifier is not None:
            self.notifier.reconfigure(smtp=settings.smtp, settings=settings.notify)
        log.info(
            "config reloaded",
            added=list(changes.added),
            updated=list(changes.updated),
            retired=list(changes.retired),
        )
        return True


def _say_how_to_reach(addresses: list[Any], settings: Settings) -> None:
    """Log where the API listens, which key file opens it, one curl line that works, and
    the web page.

    The key itself is never logged: the curl line reads it from its file.
    """
    tcp = [address for address in addresses if isinstance(address, tuple)]
    if not tcp:
        return
    host, port = tcp[0][0], tcp[0][1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/api/v2"
    if not settings.api.keys:
        log.info("api ready", url=url, health=f"curl -s {url}/health")
        return
    key_file = settings.api.keys[0].key_file
    log.info(
        "api ready",
        url=url,
        key_file=str(key_file),
        web_page=url.removesuffix("/api/v2") + "/ui/",  # sign in there with the key
        example=f'curl -s -H "Authorization: Bearer $(cat {key_file})" {url}/tasks',
    )


@contextlib.contextmanager
def _state_lock(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the state directory: one daemon per database.

    Raises BlockingIOError if another process holds it. The kernel drops the lock when the
    process dies, so a crash never leaves a stale one.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "taskd.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def secret_files(settings: Settings) -> list[tuple[Path, bool]]:
    """The files holding secrets the config names (API keys, SMTP password, webhook and
    JWT secrets, the database password), then those only taskd and root may write (JWT
    public keys)."""
    files = [key.key_file for key in settings.api.keys]
    if settings.smtp is not None and settings.smtp.password_file is not None:
        files.append(settings.smtp.password_file)
    files += [hook.secret_file for hook in settings.notify.webhooks if hook.secret_file]
    files += [issuer.secret_file for issuer in settings.api.jwt if issuer.secret_file]
    if settings.store.password_file is not None:
        files.append(settings.store.password_file)
    # A JWT issuer's public key is no secret, but whoever may change it may forge tokens.
    public = [issuer.public_key_file for issuer in settings.api.jwt if issuer.public_key_file]
    return [(path, True) for path in files] + [(path, False) for path in public]


def unsafe_files(files: list[tuple[Path, bool]]) -> list[str]:
    """Why each of `files` (path, secret) must not be trusted; [] when all may be."""
    problems = []
    for path, secret in files:
        try:
            systemd.check_private_file(path, secret=secret)
        except systemd.InsecureFileError as error:
            problems.append(str(error))
        except OSError:
            pass  # a file that cannot be read is reported by whoever reads it
    return problems


def _unusable_state_dir(state_dir: Path, problem: str) -> None:
    """Say which state directory taskd cannot use and why (it exits 2: fix and restart)."""
    log.error(
        "cannot use the state directory",
        state_dir=str(state_dir),
        problem=problem,
        hint=f"make {state_dir} a directory taskd can write (and the database in it readable)",
    )


def _notify(state: str) -> None:
    try:
        systemd.notify(state)
    except OSError as error:
        _notify_failed(error)


def _notify_failed(error: OSError) -> None:
    log.warning("cannot notify systemd", error=str(error))


def serve(config_path: Path) -> int:
    """Run the daemon on `config_path` until stopped; return the exit code."""
    configure_logging()
    return run_on_loop(Daemon(config_path).run(), event_loop_of(config_path))


def event_loop_of(config_path: Path) -> str:
    """The `[daemon] event_loop` the file asks for (the default if it cannot be read: the
    daemon then reports the file's problem itself)."""
    try:
        return load_config(config_path).daemon.event_loop
    except Exception:
        return DEFAULT_EVENT_LOOP


def run_on_loop(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """Run `main` on the event loop named (see `DaemonSettings.event_loop`); uvloop falls
    back to asyncio's own loop, with a warning, where it is not installed."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed: asyncio's own event loop runs taskd")
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)
