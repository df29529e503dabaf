"""Several taskd nodes over one PostgreSQL store: heartbeats, failover, task-change news.

Every node runs the scheduler, the runner and the API against the shared database. What
keeps them from stepping on each other lives in the store (`taskd.store.postgres`): a slot
is claimed once (a compare-and-set of the task's due time, the unique (task, slot) index),
and an execution belongs to the node that queued it, which alone starts it. This module
adds what needs a loop:

- **Heartbeats.** Each node has a row in `nodes` and stamps it twice per `heartbeat_sec`
  with the database server's clock (one clock for all nodes: no skew between machines).
- **Failover.** A node that finds another silent for `failover_sec - heartbeat_sec`
  declares it dead (so its work is taken over within `failover_sec` of its death), in
  one transaction, with the row locked `FOR UPDATE SKIP LOCKED` (one survivor does it): the
  dead node's running and paused executions end `error` with a message naming the node
  (a start it committed ahead of an instant not yet reached too: a node declared dead may
  only be cut off and still release it, so it runs again only under its retry policy, as
  any interrupted run), and its queued ones become the survivor's.
  The survivor's scheduler then applies each interrupted run's retry policy and takes up
  the queued ones (`Scheduler.adopt`). Queued executions of a node that stopped cleanly
  are taken over the same way; its running ones ended before it stopped (a clean stop
  hands nothing over).
- **Fencing.** A node that finds itself declared dead (it was cut off from the database
  longer than `failover_sec`, its work was taken over) stops what it still runs, without
  recording anything (the endings are recorded already), and joins again.
- **Task changes.** The store announces each task write with `NOTIFY taskd_tasks` (in the
  write's transaction, so only committed changes); each node listens on a connection of
  its own and hands other nodes' changes to its scheduler, so an edit made through any
  node's API is seen by every scheduler within milliseconds, not at the next restart.
  After the listening connection is lost, the node re-reads every due time.

Single servers (SQLite) have no cluster: `open_cluster` yields None for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import structlog
from prometheus_client import CollectorRegistry, Gauge, Info

from taskd.clock import Clock, from_micros
from taskd.core import ConfigChanges, Core
from taskd.errors import ActionError, NodeTimeoutError, NotFoundError, StoreUnavailableError
from taskd.model import Execution, Task, TaskSpec
from taskd.schedule import format_utc
from taskd.settings import ClusterSettings, Settings
from taskd.store import Store, open_store
from taskd.store.postgres import (
    HANDOFF_CHANNEL,
    TAKEN_OVER_PREFIX,
    TASKS_CHANNEL,
    Cx,
    PostgresStore,
    connect,
    execution_columns,
    execution_from_row,
    interrupt_executions,
    unavailable,
)

log = structlog.get_logger("taskd.cluster")

# The database server's clock, in microseconds since the epoch.
DB_NOW = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
OPEN_RETRY_FIRST_SEC = 1.0
OPEN_RETRY_MAX_SEC = 30.0
LISTEN_RETRY_SEC = 1.0
# Actions sent to another node: announced here (payload: that node's name), answered in
# the command row within COMMAND_TIMEOUT_SEC or the API answers 504.
COMMANDS_CHANNEL = "taskd_commands"
COMMAND_TIMEOUT_SEC = 5.0
COMMAND_POLL_SEC = 0.05
COMMANDS_KEPT_SEC = 3600  # answered commands are deleted after this
FORWARDED_ACTIONS = frozenset({"pause", "resume", "stop", "force_stop"})


def node_name(settings: Settings) -> str:
    """This server's node name: `[daemon] node`, else the host name."""
    return settings.daemon.node or socket.gethostname()


def read_password(path: Path | None) -> str | None:
    """The database password kept in `path` (one trailing newline dropped), or None."""
    if path is None:
        return None
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


@asynccontextmanager
async def open_store_retrying(
    settings: Settings, *, stopping: asyncio.Event, status: Callable[[str], None]
) -> AsyncIterator[Store | None]:
    """Open the configured store; a PostgreSQL server that cannot be reached is tried again
    with backoff (1 s doubling to 30 s), each failure logged with its reason and shown
    through `status` (systemd's STATUS=), until it answers or `stopping` is set (None).

    SQLite (no `[store] url`) is opened once: its errors are raised as they come.
    """
    daemon = settings.daemon
    url = settings.store.url

    def opener() -> contextlib.AbstractAsyncContextManager[Store]:
        return open_store(
            daemon.state_dir,
            history_per_task=daemon.history_per_task,
            log_entries_per_execution=daemon.log_entries_per_execution,
            url=url,
            password=read_password(settings.store.password_file),
            node=node_name(settings),
        )

    if url is None:
        async with opener() as store:
            yield store
        return
    delay = OPEN_RETRY_FIRST_SEC
    async with contextlib.AsyncExitStack() as stack:
        while True:
            try:
                store = await stack.enter_async_context(opener())
                break
            except StoreUnavailableError as error:
                log.error(
                    "database unreachable",
                    problem=error.reason,
                    url=_without_secrets(url),
                    retry_in_sec=delay,
                )
                status(f"waiting for the database: {error.reason}")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stopping.wait()
                if stopping.is_set():
                    yield None
                    return
                delay = min(delay * 2, OPEN_RETRY_MAX_SEC)
        yield store


def _without_secrets(url: str) -> str:
    return url.split("?", 1)[0]


class ClusterScheduler(Protocol):
    """What the cluster needs of the scheduler (`taskd.scheduler.Scheduler`)."""

    def task_changed(self, task_id: int, task: Task | None) -> None:
        """A task was created, edited or (None) deleted."""
        ...

    async def adopt(self, interrupted: Sequence[Execution], queued: Sequence[Execution]) -> None:
        """Apply the retry policy of runs interrupted elsewhere; take up queued ones."""
        ...

    async def resync(self) -> None:
        """Re-read every due time (after news of task changes may have been missed)."""
        ...


class ClusterRunner(Protocol):
    """What the cluster needs of the runner: to act on its executions for other nodes'
    API calls, and to stop what a fenced node still runs."""

    def pause(self, execution_id: int) -> None:
        """Pause a running execution (ActionError if it cannot)."""
        ...

    def resume(self, execution_id: int) -> None:
        """Resume a paused execution (ActionError if it cannot)."""
        ...

    def stop(self, execution_id: int, reason: str = "stopped") -> None:
        """Ask an execution to stop (ActionError if it does not run here)."""
        ...

    def running_ids(self) -> list[int]:
        """Ids of the executions this node runs now."""
        ...

    def force_stop(self, execution_id: int, reason: str = "force stopped") -> None:
        """Stop an execution now."""
        ...


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as health shows it."""

    name: str
    state: str  # alive, silent (late, not yet declared dead), dead, stopped
    heartbeat_at: datetime
    started_at: datetime

    def as_json(self) -> dict[str, Any]:
        """The JSON health shows."""
        return {
            "name": self.name,
            "state": self.state,
            "last_heartbeat": format_utc(self.heartbeat_at),
            "started_at": format_utc(self.started_at),
        }


class Cluster:
    """This node's membership in the cluster: `async with Cluster(...)` while it serves."""

    def __init__(
        self,
        store: PostgresStore,
        *,
        settings: ClusterSettings,
        scheduler: ClusterScheduler,
        runner: ClusterRunner,
        clock: Clock,
        password: str | None = None,
    ) -> None:
        self.store = store
        self.node = store.node
        self.settings = settings
        self.scheduler = scheduler
        self.runner = runner
        self.clock = clock
        self._password = password
        self._tasks: list[asyncio.Task[None]] = []
        self.failovers = 0  # dead nodes this node took over from
        self.fenced = 0  # times this node found itself declared dead
        self.last_beat_ok = True
        self._handoff_lock = asyncio.Lock()
        self._commands_lock = asyncio.Lock()
        self._beat_conn: Cx | None = None

    async def __aenter__(self) -> Cluster:
        await self.store.run_write(self._register)
        self._tasks = [
            asyncio.create_task(self._beat_loop(), name="taskd-cluster-heartbeat"),
            asyncio.create_task(self._listen_loop(), name="taskd-cluster-listen"),
        ]
        log.info("node joined the cluster", node=self.node)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._beat_conn is not None:
            with contextlib.suppress(Exception):
                await self._beat_conn.close()
        with contextlib.suppress(StoreUnavailableError, RuntimeError):
            await self.store.run_write(self._leave)
        log.info("node left the cluster", node=self.node)

    async def _register(self, cx: Cx) -> None:
        await cx.execute(
            f"INSERT INTO nodes (name, started_at, heartbeat_at) VALUES ($1, {DB_NOW}, {DB_NOW})"
            f" ON CONFLICT (name) DO UPDATE SET started_at = {DB_NOW}, heartbeat_at = {DB_NOW},"
            " stopped_at = NULL, dead_at = NULL, dead_by = NULL",
            self.node,
        )

    async def _leave(self, cx: Cx) -> None:
        await cx.execute(
            f"UPDATE nodes SET stopped_at = {DB_NOW} WHERE name = $1 AND dead_at IS NULL",
            self.node,
        )

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Add this node's name and failover counts to its `/metrics` (each node serves
        its own figures: scrape every node)."""
        Info("taskd_node", "This cluster node.", registry=registry).info({"node": self.node})
        failovers = Gauge(
            "taskd_node_failovers",
            "Dead nodes this node declared dead and took the work of, since it started.",
            registry=registry,
        )
        failovers.set_function(lambda: self.failovers)
        fenced = Gauge(
            "taskd_node_fenced",
            "Times this node found itself declared dead by another, since it started.",
            registry=registry,
        )
        fenced.set_function(lambda: self.fenced)

    # -- heartbeats and failover ----------------------------------------------------------

    async def _beat_loop(self) -> None:
        while True:
            try:
                await self.beat()
                self.last_beat_ok = True
            except (StoreUnavailableError, asyncpg.PostgresError) as error:
                if self.last_beat_ok:
                    log.warning("heartbeat failed", node=self.node, problem=str(error))
                self.last_beat_ok = False
            except Exception:
                log.exception("heartbeat failed")
                self.last_beat_ok = False
            # Twice per heartbeat_sec: a stamp is never late by more than half of it, and a
            # dead node is found within half of it.
            await asyncio.sleep(self.settings.heartbeat_sec / 2)

    async def beat(self) -> None:
        """One heartbeat: stamp this node, then take over from nodes found dead.

        On a connection of its own, in a transaction of its own: a long write batch of
        the store (thousands of claims) never delays the heartbeat into a false death.
        """
        if self._beat_conn is None or self._beat_conn.is_closed():
            self._beat_conn = None
            self._beat_conn = await connect(self.store.url, self._password)
        conn = self._beat_conn
        try:
            async with asyncio.timeout(self.settings.failover_sec), conn.transaction():
                fenced, taken = await self._beat(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as error:
            if conn.is_closed() or isinstance(error, TimeoutError):
                with contextlib.suppress(Exception):
                    await conn.close()
                self._beat_conn = None
            problem = unavailable(error)
            if problem is None:
                raise
            raise problem from error
        if fenced:
            self._fence()
        for dead, interrupted, queued in taken:
            self.failovers += 1
            log.warning(
                "node declared dead: its work is taken over",
                dead_node=dead,
                node=self.node,
                interrupted=[e.id for e in interrupted],
                queued=[e.id for e in queued],
            )
        interrupted_all = [e for _, interrupted, _ in taken for e in interrupted]
        queued_all = [e for _, _, queued in taken for e in queued]
        if interrupted_all or queued_all:
            await self.scheduler.adopt(interrupted_all, queued_all)
        # News may be missed (a lost listening connection): what waits is picked up here.
        await self.take_handoffs()
        await self.run_commands()

    async def _beat(
        self, cx: Cx
    ) -> tuple[bool, list[tuple[str, list[Execution], list[Execution]]]]:
        stamped = await cx.fetchval(
            f"UPDATE nodes SET heartbeat_at = {DB_NOW} WHERE name = $1 AND dead_at IS NULL"
            " AND stopped_at IS NULL RETURNING 1",
            self.node,
        )
        fenced = stamped is None
        if fenced:
            await self._register(cx)
        # Dead once its heartbeat is older than failover_sec - heartbeat_sec: found within
        # half a heartbeat after that, its work is taken over at most failover_sec after
        # it died (its last stamp was at most half a heartbeat before).
        failover_us = int((self.settings.failover_sec - self.settings.heartbeat_sec) * 1_000_000)
        dead_rows = await cx.fetch(
            "SELECT name, heartbeat_at FROM nodes WHERE name <> $1 AND dead_at IS NULL"
            f" AND stopped_at IS NULL AND heartbeat_at < {DB_NOW} - $2::bigint"
            " ORDER BY name FOR UPDATE SKIP LOCKED",
            self.node,
            failover_us,
        )
        now = self.clock.now()
        taken: list[tuple[str, list[Execution], list[Execution]]] = []
        for row in dead_rows:
            dead = row[0]
            await cx.execute(
                f"UPDATE nodes SET dead_at = {DB_NOW}, dead_by = $2 WHERE name = $1",
                dead,
                self.node,
            )
            message = (
                f"{TAKEN_OVER_PREFIX}{dead} stopped answering (no heartbeat for "
                f"{self.settings.failover_sec:g} s); taken over by {self.node}"
            )
            interrupted = await interrupt_executions(cx, dead, now, message, own=False)
            taken.append((dead, interrupted, []))
        # Queued runs of nodes that are gone (dead, or stopped cleanly) start here.
        queued_rows = await cx.fetch(
            "UPDATE executions SET node = $1, handoff = false WHERE id IN (SELECT e.id FROM"
            " executions e"
            " JOIN nodes n ON n.name = e.node WHERE e.status = 'queued'"
            " AND (n.dead_at IS NOT NULL OR n.stopped_at IS NOT NULL) AND n.name <> $1"
            f" ORDER BY e.id FOR UPDATE OF e SKIP LOCKED) RETURNING {execution_columns()}",
            self.node,
        )
        if queued_rows:
            queued = sorted((execution_from_row(row) for row in queued_rows), key=lambda e: e.id)
            taken.append(("(gone)", [], queued))
        await cx.execute(
            f"DELETE FROM commands WHERE done_at < {DB_NOW} - $1::bigint",
            COMMANDS_KEPT_SEC * 1_000_000,
        )
        return fenced, taken

    def _fence(self) -> None:
        """This node was declared dead while it still ran: its runs were taken over and
        retried elsewhere, so what still runs here is stopped (its endings are recorded
        already; `finish` leaves an ended execution as it is)."""
        self.fenced += 1
        running = self.runner.running_ids()
        log.error(
            "this node was declared dead by another (cut off from the database for longer "
            "than failover_sec): stopping what it still runs, joining again",
            node=self.node,
            stopping=running,
        )
        for execution_id in running:
            self.runner.force_stop(execution_id, "this node was declared dead; taken over")

    # -- news of task changes -------------------------------------------------------------

    async def _listen_loop(self) -> None:
        first = True
        while True:
            try:
                conn = await connect(self.store.url, self._password)
            except StoreUnavailableError as error:
                log.warning("cannot listen for task changes", problem=error.reason)
                await asyncio.sleep(LISTEN_RETRY_SEC)
                continue
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(TASKS_CHANNEL, self._on_notify)
                await conn.add_listener(HANDOFF_CHANNEL, self._on_node_news)
                await conn.add_listener(COMMANDS_CHANNEL, self._on_node_news)
                if not first:
                    # News may have been missed while the connection was down.
                    await self.scheduler.resync()
                first = False
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.heartbeat_sec * 5):
                            await lost.wait()
                    if not lost.is_set():
                        try:
                            async with asyncio.timeout(self.settings.heartbeat_sec * 5):
                                await conn.fetchval("SELECT 1")
                        except Exception:
                            lost.set()
                log.warning("lost the connection listening for task changes")
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
                log.warning("listening for task changes failed", problem=str(error))
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(LISTEN_RETRY_SEC)

    def _on_node_news(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if payload != self.node:
            return
        if channel == HANDOFF_CHANNEL:
            _spawn(self.take_handoffs())
        else:
            _spawn(self.run_commands())

    async def take_handoffs(self) -> None:
        """Take up the runs other nodes queued here (this node is busy with their task):
        the scheduler applies the task's overlap policy to each, as to its own slots."""
        async with self._handoff_lock:
            try:
                taken = await self.store.take_handoffs()
            except StoreUnavailableError as error:
                log.warning("cannot take up handed-over runs", problem=error.reason)
                return
            if taken:
                log.info("runs handed over by other nodes", executions=[e.id for e in taken])
                await self.scheduler.adopt([], taken)

    # -- actions through any node ---------------------------------------------------------

    async def forward(self, task_id: int, action: str, reason: str | None = None) -> list[int]:
        """Send `action` on the task's runs that other nodes run to those nodes; return the
        ids of the executions they acted on ([] if no other node runs the task).

        Each is a command row and a NOTIFY; the answer is the row's result, awaited up to
        COMMAND_TIMEOUT_SEC. Raises NodeTimeoutError (API: 504) naming the node that did
        not answer, ActionError with the owner's reason when none could act.
        """
        if action not in FORWARDED_ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        rows = await self.store.read(
            "SELECT id, node FROM executions WHERE task_id = $1"
            " AND status IN ('running', 'paused') AND node <> $2 ORDER BY id",
            task_id,
            self.node,
        )
        if not rows:
            return []
        targets = [(int(row[0]), str(row[1])) for row in rows]

        async def send(cx: Cx) -> list[int]:
            ids = []
            for execution_id, node in targets:
                ids.append(
                    await cx.fetchval(
                        "INSERT INTO commands (node, execution_id, action, reason, created_at)"
                        f" VALUES ($1, $2, $3, $4, {DB_NOW}) RETURNING id",
                        node,
                        execution_id,
                        action,
                        reason,
                    )
                )
            for node in sorted({node for _, node in targets}):
                await cx.execute("SELECT pg_notify($1, $2)", COMMANDS_CHANNEL, node)
            return [int(command_id) for command_id in ids]

        command_ids = await self.store.run_write(send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COMMAND_TIMEOUT_SEC
        while True:
            answers = {
                int(row[0]): row[1]
                for row in await self.store.read(
                    "SELECT id, result FROM commands WHERE id = ANY($1::bigint[])"
                    " AND done_at IS NOT NULL",
                    command_ids,
                )
            }
            if len(answers) == len(command_ids):
                break
            if loop.time() > deadline:
                waiting = [
                    target
                    for command_id, target in zip(command_ids, targets, strict=True)
                    if command_id not in answers
                ]
                execution_id, node = waiting[0]
                raise NodeTimeoutError(
                    f"node {node} runs execution {execution_id} and did not answer {action} "
                    f"within {COMMAND_TIMEOUT_SEC:g} s"
                )
            await asyncio.sleep(COMMAND_POLL_SEC)
        acted = [
            execution_id
            for command_id, (execution_id, _) in zip(command_ids, targets, strict=True)
            if answers[command_id] == "ok"
        ]
        if not acted:
            raise ActionError(str(answers[command_ids[0]]))
        return acted

    async def run_commands(self) -> None:
        """Carry out the actions other nodes sent here, and answer each."""
        async with self._commands_lock:
            try:
                rows = await self.store.read(
                    "SELECT id, execution_id, action, reason FROM commands"
                    " WHERE node = $1 AND done_at IS NULL ORDER BY id",
                    self.node,
                )
                if not rows:
                    return
                answers = [(int(row[0]), self._act(row[1], row[2], row[3])) for row in rows]

                async def answer(cx: Cx) -> None:
                    await cx.executemany(
                        f"UPDATE commands SET done_at = {DB_NOW}, result = $2 WHERE id = $1",
                        answers,
                    )

                await self.store.run_write(answer)
            except StoreUnavailableError as error:
                log.warning("cannot answer other nodes' actions", problem=error.reason)

    def _act(self, execution_id: int, action: str, reason: str | None) -> str:
        try:
            if action == "pause":
                self.runner.pause(execution_id)
            elif action == "resume":
                self.runner.resume(execution_id)
            elif action == "stop":
                self.runner.stop(execution_id, reason or "stopped")
            elif action == "force_stop":
                self.runner.force_stop(execution_id, reason or "force stopped")
            else:
                return f"unknown action {action!r}"
        except ActionError as error:
            return str(error)
        log.info("action from another node", action=action, execution_id=execution_id)
        return "ok"

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        node, _, task_text = payload.partition(":")
        if node == self.node or not task_text.isdigit():
            return  # our own change: the scheduler heard of it already
        _spawn(self._task_changed(int(task_text)))

    async def _task_changed(self, task_id: int) -> None:
        try:
            task: Task | None = await self.store.get_task(task_id)
        except NotFoundError:
            task = None
        except StoreUnavailableError as error:
            log.warning("cannot read a changed task", task_id=task_id, problem=error.reason)
            return
        self.scheduler.task_changed(task_id, task)

    # -- health ---------------------------------------------------------------------------

    async def nodes(self) -> list[NodeInfo]:
        """Every node that ever joined, with its state and last heartbeat."""
        rows = await self.store.read(
            f"SELECT name, heartbeat_at, started_at, stopped_at, dead_at, {DB_NOW}"
            " FROM nodes ORDER BY name"
        )
        failover_us = int(self.settings.failover_sec * 1_000_000)
        nodes = []
        for name, heartbeat_at, started_at, stopped_at, dead_at, now_us in rows:
            if dead_at is not None:
                state = "dead"
            elif stopped_at is not None:
                state = "stopped"
            elif heartbeat_at < now_us - failover_us // 2:
                state = "silent"
            else:
                state = "alive"
            nodes.append(
                NodeInfo(
                    name=name,
                    state=state,
                    heartbeat_at=from_micros(heartbeat_at),
                    started_at=from_micros(started_at),
                )
            )
        return nodes


# -- config-file tasks in a cluster --------------------------------------------------------

_CONFIG_LOCK = 0x7461736B64636667  # the advisory lock nodes take to apply their files


def config_fingerprint(specs: Sequence[TaskSpec]) -> str:
    """The content hash of a file's tasks (order of the file does not count)."""
    canonical = json.dumps(
        sorted((spec.to_json() for spec in specs), key=lambda spec: str(spec.get("name"))),
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ConfigOutcome:
    """What applying this node's config file did: `changes` (None when it was not applied
    because another node applied a newer file: `stale`)."""

    changes: ConfigChanges | None
    stale_against: str | None = None  # the node whose newer file is applied

    @property
    def state(self) -> str:
        """`current` or `stale`, as health shows it."""
        return "stale" if self.changes is None else "current"


async def apply_config_file(
    core: Core, store: Store, specs: Sequence[TaskSpec], *, config_path: Path, settings: Settings
) -> ConfigOutcome:
    """Apply the config file's tasks; on a cluster, only if no node applied a newer file.

    Each node applies its own file, one node at a time (an advisory lock). The file's
    content hash and modification time are recorded on the node's row: when the files of
    the nodes differ, the newest file wins. A node whose file is older (and different)
    leaves the stored definitions alone, logs a warning and reports `config: stale` in
    health, so the definitions never flap between nodes; tasks it lacks are not retired
    either. Identical files (the same hash) are applied by each node, changing nothing.
    """
    if not isinstance(store, PostgresStore):
        return ConfigOutcome(await core.apply_config(specs))
    digest = config_fingerprint(specs)
    written_us = (await asyncio.to_thread(config_path.stat)).st_mtime_ns // 1000
    conn = await connect(store.url, read_password(settings.store.password_file))
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _CONFIG_LOCK)
        newest = await conn.fetchrow(
            "SELECT name, config_hash, config_at FROM nodes WHERE config_hash IS NOT NULL"
            " AND name <> $1 ORDER BY config_at DESC, name LIMIT 1",
            store.node,
        )
        await conn.execute(
            "INSERT INTO nodes (name, started_at, heartbeat_at, config_hash, config_at)"
            f" VALUES ($1, {DB_NOW}, {DB_NOW}, $2, $3) ON CONFLICT (name) DO UPDATE"
            " SET config_hash = $2, config_at = $3",
            store.node,
            digest,
            written_us,
        )
        if newest is not None and newest[1] != digest and newest[2] > written_us:
            log.warning(
                "config file is older than the one another node applied: its tasks are left "
                "as stored (the newest file wins); update this node's file",
                node=store.node,
                newer_on=newest[0],
                file=str(config_path),
            )
            return ConfigOutcome(None, stale_against=str(newest[0]))
        return ConfigOutcome(await core.apply_config(specs))
    finally:
        with contextlib.suppress(Exception):
            await conn.execute("SELECT pg_advisory_unlock($1)", _CONFIG_LOCK)
        await conn.close()


@asynccontextmanager
async def open_cluster(
    store: Store,
    *,
    settings: Settings,
    scheduler: ClusterScheduler,
    runner: ClusterRunner,
    clock: Clock,
) -> AsyncIterator[Cluster | None]:
    """This node's `Cluster` when the store is shared (PostgreSQL); None for SQLite."""
    if not isinstance(store, PostgresStore):
        yield None
        return
    async with Cluster(
        store,
        settings=settings.cluster,
        scheduler=scheduler,
        runner=runner,
        clock=clock,
        password=read_password(settings.store.password_file),
    ) as cluster:
        yield cluster


_background: set[asyncio.Task[Any]] = set()


def _spawn(coroutine: Any) -> None:
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
