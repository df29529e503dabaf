"""`taskd serve`: the daemon's lifecycle, signals and config reloads.

Start: open the store, reconcile the config file's tasks, recover what a crash left behind,
start the runner and scheduler. SIGTERM / SIGINT: stop taking new work, let running
executions finish for up to `shutdown_grace_sec`, then stop them (cooperatively, then forced)
and exit 0; a second signal skips the grace. SIGHUP: reload the config file; an invalid file
is refused whole and nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog

from taskd import __version__
from taskd.api.app import build_app, serve_api
from taskd.api.auth import Authenticator
from taskd.clock import Clock, SystemClock
from taskd.config import Settings, load_config
from taskd.core import Core, config_errors_for
from taskd.errors import ValidationError
from taskd.modules.registry import ModuleRegistry
from taskd.runner import Runner
from taskd.scheduler import Scheduler, SchedulerSettings
from taskd.store import DB_FILE, Store

log = structlog.get_logger("taskd.daemon")


def configure_logging(*, json_lines: bool | None = None, level: int = logging.INFO) -> None:
    """structlog: JSON lines when stderr is not a terminal, readable lines when it is."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def load_settings(path: Path, modules: ModuleRegistry) -> Settings:
    """Load the config file and check every task's params. Raises ValidationError."""
    settings = load_config(path, known_modules=modules.names())
    errors = config_errors_for(settings.tasks, modules)
    if errors:
        raise ValidationError(errors)
    return settings


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
        self._reloading: asyncio.Task[bool] | None = None

    async def run(self) -> int:
        """Serve until SIGTERM / SIGINT; return the exit code."""
        try:
            settings = load_settings(self.config_path, self.modules)
        except ValidationError as error:
            for problem in error.errors:
                log.error("invalid config", problem=str(problem))
            return 2
        try:
            auth = Authenticator.from_settings(settings.api)
        except ValidationError as error:
            for problem in error.errors:
                log.error("invalid API credentials", problem=str(problem))
            return 2
        if settings.api.listen and not auth.has_credentials:
            log.warning(
                "no API key or user configured: TCP answers 401 to everything but health "
                "(see README, 'API keys')"
            )
        daemon = settings.daemon
        async with AsyncExitStack() as stack:
            store = await stack.enter_async_context(
                Store.open(
                    daemon.state_dir / DB_FILE,
                    history_per_task=daemon.history_per_task,
                    log_entries_per_execution=daemon.log_entries_per_execution,
                )
            )
            runner = Runner(
                store=store,
                modules=self.modules,
                clock=self.clock,
                max_running=daemon.max_running,
                stop_grace_sec=daemon.stop_grace_sec,
            )
            await stack.enter_async_context(runner)
            scheduler = Scheduler(
                store=store,
                runner=runner,
                clock=self.clock,
                settings=SchedulerSettings(default_timezone=daemon.timezone),
            )
            self.core = Core(
                store=store,
                scheduler=scheduler,
                runner=runner,
                modules=self.modules,
                clock=self.clock,
                default_timezone=daemon.timezone,
                config_source=str(self.config_path),
            )
            changes = await self.core.apply_config(settings.tasks)
            log.info(
                "config applied",
                added=len(changes.added),
                updated=len(changes.updated),
                removed=len(changes.removed),
            )
            await stack.enter_async_context(scheduler)
            self.scheduler = scheduler
            app = build_app(
                core=self.core, auth=auth, api_settings=settings.api, health=self.health
            )
            await stack.enter_async_context(serve_api(app, settings.api))
            self._install_signals()
            log.info("taskd started", state_dir=str(daemon.state_dir), pid=os.getpid())
            await self.stopping.wait()
            log.info("taskd stopping", grace_sec=daemon.shutdown_grace_sec)
            await scheduler.stop()
            await runner.shutdown(0 if self.skip_grace else daemon.shutdown_grace_sec)
        log.info("taskd stopped")
        return 0

    async def health(self) -> dict[str, Any]:
        """What `GET /api/v2/health` reports: scheduler alive, store writable, version."""
        assert self.core is not None
        report: dict[str, Any] = {"status": "ok", "version": __version__}
        alive = self.scheduler is not None and self.scheduler.alive
        report["scheduler"] = "running" if alive else "stopped"
        try:
            async with asyncio.timeout(2):
                await self.core.store.ping()
            report["store"] = "writable"
        except Exception as error:  # any failure to write is what health reports
            report["store"] = f"not writable: {error}"
            alive = False
        report["running"] = self.core.runner.running_count
        report["queued"] = self.core.runner.queued_count
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
            self._reloading = asyncio.create_task(self.reload())

    async def reload(self) -> bool:
        """Reload the config file's tasks; refuse an invalid file whole. Returns success."""
        assert self.core is not None
        try:
            settings = load_settings(self.config_path, self.modules)
        except ValidationError as error:
            for problem in error.errors:
                log.error("config reload refused", problem=str(problem))
            return False
        changes = await self.core.apply_config(settings.tasks)
        self.core.runner.max_running = settings.daemon.max_running
        log.info(
            "config reloaded",
            added=list(changes.added),
            updated=list(changes.updated),
            removed=list(changes.removed),
        )
        return True


def serve(config_path: Path) -> int:
    """Run the daemon on `config_path` until stopped; return the exit code."""
    configure_logging()
    return asyncio.run(Daemon(config_path).run())
