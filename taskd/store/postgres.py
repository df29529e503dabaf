"""`PostgresStore`: the `Store` contract over a PostgreSQL database, shared by taskd nodes.

asyncpg (asyncio-native, binary protocol, no thread) on two kinds of connections: one
connection takes every write of this process, through a group-commit queue like the SQLite
store's (everything submitted while a transaction is being written goes into the next one,
each write in its own savepoint so one refused write never takes its batch-mates down);
reads go through a small pool, so they never wait behind a batch.

Several nodes (processes, usually on several machines) share one database. Each store is
opened with its node's name: the executions it queues (claims, manual runs, retries) carry
that name, and only that node lists them as queued, starts them, and recovers them after
its own restart; process groups are looked up by node too (a pgid means nothing on another
machine). A slot is claimed once whichever node claims it: a claim is a compare-and-set of
the task's `next_run_at` (PostgreSQL re-checks the condition on the newest row when two
nodes race), and the unique (task, slot) index is the last guard. Rows one node takes
over from another (a dead node's work, see `taskd.cluster`) are picked with
`FOR UPDATE SKIP LOCKED`.

Failures: when the server cannot be reached, refuses writes (read-only) or is out of space,
writes raise `StoreUnavailableError` with the reason; the store remembers it until a write
succeeds, holds failed `*_nowait` writes (bounded) and retries them with backoff, and
reconnects the write connection on the next batch. Deadlocks and serialization failures
between nodes are retried inside the batch. Reads time out after `read_timeout_sec`;
awaited writes after `write_timeout_sec` (a server that hangs, a lock another session
holds): a write the batch has not begun is withdrawn then (never run), one it has begun
stays in its transaction, which commits or rolls back whenever the server answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, TypeAlias, TypeVar

import asyncpg
import structlog

from taskd.clock import from_micros, to_micros
from taskd.errors import ConflictError, DeferError, NotFoundError, StoreUnavailableError
from taskd.model import (
    Execution,
    ExecutionStatus,
    LogEntry,
    Task,
    TaskSource,
    TaskStatus,
    TriggerKind,
)
from taskd.store.base import (
    ClaimResult,
    Definition,
    NewExecution,
    SlotClaim,
    TaskInsert,
    TaskUpdate,
    new_defer_id,
)
from taskd.store.pg_schema import migrate

T = TypeVar("T")

log = structlog.get_logger("taskd.store")

HELD_WRITES_MAX = 10_000
HELD_RETRY_FIRST_SEC = 0.1
HELD_RETRY_MAX_SEC = 5.0
READ_TIMEOUT_SEC = 10.0
# How long an awaited write waits for its commit before it raises StoreUnavailableError.
WRITE_TIMEOUT_SEC = 10.0
# The result of a write withdrawn before its batch began it (not run).
_WITHDRAWN = object()
CONNECT_TIMEOUT_SEC = 10.0
# A statement that gets no answer this long fails (the server hangs, the network is gone).
COMMAND_TIMEOUT_SEC = 30.0
LOG_BACKLOG_ENTRIES = 8192
LOG_BACKLOG_BYTES = 8 * 1024 * 1024
READ_POOL_SIZE = 4
# A write that lost a deadlock or a serialization race with another node is tried again.
CONFLICT_RETRIES = 5

_TASK_COLUMNS = (
    "id, name, source, spec, enabled, next_run_at, status, status_msg, status_percent, "
    "run_started_at, run_finished_at, run_canceled_at, state, version, last_execution_id, "
    "created_at, updated_at, created_by, updated_by, retired_at"
)
_EXECUTION_COLUMNS = (
    "id, task_id, trigger, trigger_metadata, slot_at, scheduled_for, queued_at, started_at, "
    "finished_at, status, status_msg, progress, size_todo, size_done, nodes_todo, nodes_done, "
    "bandwidth, dispatcher, attempt, node"
)


def _types_sql(param: str) -> str:
    """`,type1,type2,` of the objects in `task_params.<param>` (an object or an array), as
    SQLite's store computes it; NULL when there is none (matches no `like`)."""
    value = f"(spec #> '{{task_params,{param}}}')"
    items = (
        f"CASE jsonb_typeof({value}) WHEN 'array' THEN {value}"
        f" WHEN 'object' THEN jsonb_build_array({value}) ELSE '[]'::jsonb END"
    )
    return (
        "((SELECT ',' || string_agg(DISTINCT item->>'type', ',') || ','"
        f" FROM jsonb_array_elements({items}) AS item"
        " WHERE jsonb_typeof(item) = 'object') COLLATE \"C\")"
    )


# The SQL behind each of model.TASK_QUERY_FIELDS, with the type of its values. Text sorts
# and compares bytewise (COLLATE "C"), as in SQLite, whatever the database's locale.
_TASK_QUERY_SQL: dict[str, tuple[str, str]] = {
    "id": ("id", "bigint"),
    "name": ('name COLLATE "C"', "text"),
    "status": ('status COLLATE "C"', "text"),
    "source": ('source COLLATE "C"', "text"),
    "next_run_at": ("next_run_at", "bigint"),
    "created_at": ("created_at", "bigint"),
    "updated_at": ("updated_at", "bigint"),
    "task_module": ("(spec->>'task_module') COLLATE \"C\"", "text"),
    "workflow_type": ("(spec->>'workflow_type') COLLATE \"C\"", "text"),
    "workflow_action": ("(spec->>'workflow_action') COLLATE \"C\"", "text"),
    "priority": ("coalesce((spec #>> '{options,priority}')::numeric, 0)", "numeric"),
    "sources.type": (_types_sql("sources"), "text"),
    "destinations.type": (_types_sql("destination"), "text"),
}
# Every committed task write is announced here, "<node>:<task id>" (see `taskd.cluster`).
TASKS_CHANNEL = "taskd_tasks"
# How the message of a run another node took over (its node was declared dead) begins.
TAKEN_OVER_PREFIX = "interrupted: node "
# A node queued a run for another (the one busy with the task): payload, that node's name.
HANDOFF_CHANNEL = "taskd_handoff"
_PROGRESS_FIELDS = ("progress", "size_todo", "size_done", "nodes_todo", "nodes_done", "bandwidth")
_WHOLE_FIELDS = ("size_todo", "size_done", "nodes_todo", "nodes_done")

# Errors that say the database cannot do the work now (not a bug, not a refusal): the same
# call may succeed later.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57", "58", "25")
_RETRY_SQLSTATES = ("40001", "40P01")  # serialization failure, deadlock

# asyncpg ships no type information: its connection is Any to mypy.
Cx: TypeAlias = asyncpg.Connection


def _micros(instant: datetime | None) -> int | None:
    return None if instant is None else to_micros(instant)


def _instant(micros: int | None) -> datetime | None:
    return None if micros is None else from_micros(micros)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _task_from_row(row: Sequence[Any]) -> Task:
    return Task(
        id=row[0],
        name=row[1],
        source=TaskSource(row[2]),
        spec=row[3],
        enabled=bool(row[4]),
        next_run_at=_instant(row[5]),
        status=TaskStatus(row[6]),
        status_msg=row[7],
        status_percent=row[8],
        run_started_at=_instant(row[9]),
        run_finished_at=_instant(row[10]),
        run_canceled_at=_instant(row[11]),
        state=row[12],
        version=row[13],
        last_execution_id=row[14],
        created_at=from_micros(row[15]),
        updated_at=from_micros(row[16]),
        created_by=row[17],
        updated_by=row[18],
        retired_at=_instant(row[19]),
    )


def execution_from_row(row: Sequence[Any]) -> Execution:
    """An `Execution` from a row of `execution_columns()`."""
    return Execution(
        id=row[0],
        task_id=row[1],
        trigger=TriggerKind(row[2]),
        trigger_metadata=row[3] or {},
        slot_at=_instant(row[4]),
        scheduled_for=_instant(row[5]),
        queued_at=from_micros(row[6]),
        started_at=_instant(row[7]),
        finished_at=_instant(row[8]),
        status=ExecutionStatus(row[9]),
        status_msg=row[10],
        progress=row[11],
        size_todo=row[12],
        size_done=row[13],
        nodes_todo=row[14],
        nodes_done=row[15],
        bandwidth=row[16],
        dispatcher=row[17],
        attempt=row[18],
        node=row[19],
    )


def execution_columns() -> str:
    """The columns `execution_from_row` reads, in order."""
    return _EXECUTION_COLUMNS


def unavailable(error: BaseException) -> StoreUnavailableError | None:
    """The `StoreUnavailableError` an error of the database means, or None (a bug, or a
    refusal such as a conflict)."""
    if isinstance(error, StoreUnavailableError):
        return error
    if isinstance(error, asyncpg.ReadOnlySQLTransactionError):
        return StoreUnavailableError(f"the database is readonly: {error}")
    if isinstance(error, asyncpg.DiskFullError):
        return StoreUnavailableError(f"the database server's disk is full: {error}")
    if isinstance(error, asyncpg.PostgresError):
        state = getattr(error, "sqlstate", "") or ""
        if state.startswith(_UNAVAILABLE_SQLSTATE_CLASSES):
            return StoreUnavailableError(f"the database cannot take the work now: {error}")
        return None
    if isinstance(error, asyncpg.InterfaceError | OSError | TimeoutError):
        reason = str(error) or type(error).__name__
        return StoreUnavailableError(f"the database server cannot be reached: {reason}")
    return None


def _retryable(error: BaseException) -> bool:
    return isinstance(error, asyncpg.PostgresError) and (
        getattr(error, "sqlstate", "") in _RETRY_SQLSTATES
    )


async def _init_connection(conn: Cx) -> None:
    """JSON values cross as Python values (keys sorted, as the SQLite store writes them)."""
    for name in ("jsonb", "json"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=json.loads, schema="pg_catalog")


async def connect(url: str, password: str | None = None) -> Cx:
    """Open one prepared connection to `url`. Raises StoreUnavailableError with the reason."""
    try:
        conn = await asyncpg.connect(
            url,
            password=password,
            timeout=CONNECT_TIMEOUT_SEC,
            command_timeout=COMMAND_TIMEOUT_SEC,
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise StoreUnavailableError(f"cannot connect to the database: {reason}") from error
    try:
        await _init_connection(conn)
    except BaseException:
        await conn.close()
        raise
    return conn


@dataclass(slots=True)
class _Write:
    apply: Callable[[Cx], Awaitable[Any]]
    future: asyncio.Future[Any] | None
    probe: bool = False
    log_bytes: int = -1
    log_record: _LogRecord | None = None  # a log entry: inserted with its neighbours
    # A write that refuses nothing (it can fail only with the whole transaction): it runs
    # without a savepoint of its own, which saves two round trips to the server.
    safe: bool = False
    # Set by the writer as it begins the write (`begun`), or by `_overdue` when the caller
    # stopped waiting before that (`withdrawn`): never both (one thread, the event loop's).
    begun: bool = False
    withdrawn: bool = False


@dataclass(frozen=True, slots=True)
class _LogRecord:
    task_id: int
    execution_id: int | None
    level: str
    msg: str
    status_percent: float | None
    at_us: int


@dataclass(slots=True)
class _ExecutionLog:
    """One execution's log between its head and its ending (see `SqliteStore`)."""

    task_id: int
    head_left: int
    tail: deque[tuple[str, str, datetime, float | None]]
    left_out: int = 0


class PostgresStore:
    """The `Store` contract (`taskd.store.base`) over PostgreSQL, for one node.

    Use `async with PostgresStore.open(url, node=...) as store:` (or
    `taskd.store.open_store`). Each method's contract is in the Protocol's docstrings; what
    is said here is how PostgreSQL keeps it.
    """

    def __init__(
        self,
        url: str,
        *,
        node: str,
        password: str | None,
        history_per_task: int,
        log_entries_per_execution: int,
        read_timeout_sec: float = READ_TIMEOUT_SEC,
        log_backlog_entries: int = LOG_BACKLOG_ENTRIES,
        log_backlog_bytes: int = LOG_BACKLOG_BYTES,
        write_timeout_sec: float = WRITE_TIMEOUT_SEC,
    ) -> None:
        self.url = url
        self.node = node
        self._password = password
        self._conn: Cx | None = None
        self._pool: asyncpg.Pool | None = None
        self._history = history_per_task
        self._log_cap = log_entries_per_execution
        self._read_timeout_sec = read_timeout_sec
        self._write_timeout_sec = write_timeout_sec
        self._log_tail = (log_entries_per_execution - 1) // 2
        self._log_head = log_entries_per_execution - 1 - self._log_tail
        self._execution_logs: dict[int, _ExecutionLog] = {}
        self._log_high = (log_backlog_entries, log_backlog_bytes)
        self._log_pending_entries = 0
        self._log_pending_bytes = 0
        self._log_room = asyncio.Event()
        self._log_room.set()
        self._pending: list[_Write] = []
        self._held: list[_Write] = []
        self._held_delay = HELD_RETRY_FIRST_SEC
        self._held_retry_at = 0.0
        self._failure: str | None = None
        self.writes_dropped = 0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        # Entries logged per execution, for the cap (an execution logs on one node only).
        self._log_count: dict[int, int] = {}
        # What the batch being written changed in `_log_count` (old values): a batch that
        # is rolled back gives them back.
        self._log_undo: dict[int, int | None] = {}
        self._finished_since_prune: dict[int, int] = {}
        self.batches_written = 0
        self.last_batch_seconds = 0.0
        self.on_batch: Callable[[float, int], None] | None = None

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        node: str,
        password: str | None = None,
        history_per_task: int = 100,
        log_entries_per_execution: int = 1000,
        read_timeout_sec: float = READ_TIMEOUT_SEC,
        log_backlog_entries: int = LOG_BACKLOG_ENTRIES,
        write_timeout_sec: float = WRITE_TIMEOUT_SEC,
    ) -> AsyncIterator[PostgresStore]:
        """Connect to the database at `url` (migrating it if needed) as node `node`.

        Raises StoreUnavailableError (with the reason) when the server cannot be reached
        or refuses the connection, RuntimeError for a database of a newer schema version.
        Closing commits pending `*_nowait` writes.
        """
        store = cls(
            url,
            node=node,
            password=password,
            history_per_task=history_per_task,
            log_entries_per_execution=log_entries_per_execution,
            read_timeout_sec=read_timeout_sec,
            log_backlog_entries=log_backlog_entries,
            write_timeout_sec=write_timeout_sec,
        )
        conn = await connect(url, password)
        try:
            try:
                await migrate(conn)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
                problem = unavailable(error)
                if problem is None:
                    raise
                raise StoreUnavailableError(f"cannot migrate the database: {error}") from error
            store._conn = conn
            try:
                store._pool = await asyncpg.create_pool(
                    url,
                    password=password,
                    min_size=1,
                    max_size=READ_POOL_SIZE,
                    timeout=CONNECT_TIMEOUT_SEC,
                    command_timeout=COMMAND_TIMEOUT_SEC,
                    init=_init_connection,
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as e:
                raise StoreUnavailableError(f"cannot connect to the database: {e}") from e
            try:
                store._writer = asyncio.create_task(store._write_loop(), name="taskd-store-writer")
                try:
                    yield store
                finally:
                    await store._close()
            finally:
                await store._pool.close()
        finally:
            for opened in {conn, store._conn}:  # the write connection may have been replaced
                if opened is not None:
                    with contextlib.suppress(Exception):
                        await opened.close()

    # -- group commit -------------------------------------------------------------------

    async def _submit(
        self, apply: Callable[[Cx], Awaitable[T]], *, probe: bool = False, safe: bool = False
    ) -> T:
        if self._closing:
            raise RuntimeError("store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        write = _Write(apply, future, probe, safe=safe)
        self._pending.append(write)
        self._wake.set()
        try:
            async with asyncio.timeout(self._write_timeout_sec):
                return await future
        except TimeoutError:
            raise self._overdue(write) from None

    def _overdue(self, write: _Write) -> StoreUnavailableError:
        """The error of an awaited write that got no answer in time (the server hangs, or
        a lock another session holds keeps the batch waiting).

        A write the writer has not begun is withdrawn: it will not run, so it changed
        nothing and may be tried again. One it has begun cannot be taken back: it stays in
        its transaction, which commits or rolls back when the server answers (not
        acknowledged either way; the message says so). The failure is remembered, so
        health reports it until a write succeeds.
        """
        if not write.begun:
            write.withdrawn = True
            with contextlib.suppress(ValueError):
                self._pending.remove(write)
            outcome = "nothing was written"
        else:
            outcome = "the write was under way and may still be recorded"
        reason = f"no answer from the database within {self._write_timeout_sec:g} s"
        if self._failure is None:
            log.warning("store writes fail", reason=reason)
            self._failure = reason
        return StoreUnavailableError(f"{reason}; {outcome}")

    def _submit_nowait(
        self,
        apply: Callable[[Cx], Awaitable[Any]],
        log_bytes: int = -1,
        log_record: _LogRecord | None = None,
    ) -> None:
        if self._closing:
            return
        self._pending.append(
            _Write(apply, None, log_bytes=log_bytes, log_record=log_record, safe=True)
        )
        if log_bytes >= 0:
            self._log_pending_entries += 1
            self._log_pending_bytes += log_bytes
            entries, size = self._log_high
            if self._log_pending_entries > entries or self._log_pending_bytes > size:
                self._log_room.clear()
        self._wake.set()

    def _log_committed(self, batch: Sequence[_Write]) -> None:
        for write in batch:
            if write.log_bytes >= 0:
                self._log_pending_entries -= 1
                self._log_pending_bytes -= write.log_bytes
        entries, size = self._log_high
        if self._log_pending_entries <= entries // 2 and self._log_pending_bytes <= size // 2:
            self._log_room.set()

    @property
    def log_pending(self) -> int:
        """Log entries submitted and not yet committed."""
        return self._log_pending_entries

    @property
    def log_full(self) -> bool:
        """True from when the log backlog passes its bound until it drained to half of it."""
        return not self._log_room.is_set()

    async def wait_log_room(self) -> None:
        """Return once `log_full` is False (at once if it is)."""
        await self._log_room.wait()

    async def flush(self) -> None:
        """Return once everything submitted before this call has been committed."""
        await self._submit(_nothing, probe=True, safe=True)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._held and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(self._held_retry_at):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            batch, self._held, self._pending = [*self._held, *self._pending], [], []
            if not batch:
                if self._closing:
                    return
                continue
            started = loop.time()
            try:
                conn = await self._write_connection()
                results = await self._apply_batch(conn, batch)
            except Exception as error:  # the commit itself failed: nothing in it is durable
                results = [error] * len(batch)
                if self._conn is not None and self._conn.is_closed():
                    self._conn = None  # reconnect for the next batch
            self.last_batch_seconds = loop.time() - started
            self.batches_written += 1
            self._log_committed(batch)
            if self.on_batch is not None:
                self.on_batch(self.last_batch_seconds, len(batch))
            self._settle(batch, results, loop.time())
            if self._pending:
                self._wake.set()
            elif self._closing:
                if self._held:
                    log.error(
                        "store closed with writes it could not commit",
                        writes=len(self._held),
                        reason=self._failure,
                    )
                return

    async def _write_connection(self) -> Cx:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await connect(self.url, self._password)
        return self._conn

    async def _apply_batch(self, conn: Cx, batch: Sequence[_Write]) -> list[Any]:
        """Run a batch of writes in one transaction: each write that may be refused in its
        own savepoint (a refusal undoes that write only), the others (`safe`) without one.

        A safe write that fails takes the transaction down: the batch is tried again, at
        once when it lost a deadlock or serialization race with another node, else with a
        savepoint for every write, so that each write gets its own result (the server
        refusing writes fails them one by one, and an empty write still commits).
        """
        for attempt in range(CONFLICT_RETRIES + 1):
            self._log_undo = {}
            try:
                return await self._apply_batch_once(conn, batch, savepoints=False)
            except Exception as error:
                self._undo_log_counts()
                if conn.is_closed():
                    raise
                if not (_retryable(error) and attempt < CONFLICT_RETRIES):
                    break
        self._log_undo = {}
        try:
            return await self._apply_batch_once(conn, batch, savepoints=True)
        except BaseException:
            self._undo_log_counts()
            raise

    def _undo_log_counts(self) -> None:
        """Give the per-execution log counts back what a rolled-back batch added."""
        for execution_id, count in self._log_undo.items():
            if count is None:
                self._log_count.pop(execution_id, None)
            else:
                self._log_count[execution_id] = count
        self._log_undo = {}

    async def _apply_batch_once(
        self, conn: Cx, batch: Sequence[_Write], *, savepoints: bool
    ) -> list[Any]:
        results: list[Any] = []
        async with conn.transaction():
            start = 0
            while start < len(batch):
                end = start + 1
                write = batch[start]
                if write.withdrawn:  # its caller stopped waiting (see `_overdue`)
                    results.append(_WITHDRAWN)
                    start = end
                    continue
                write.begun = True
                apply: Callable[[Cx], Awaitable[Any]] = write.apply
                if write.log_record is not None:  # a run of log entries goes in as one write
                    while end < len(batch) and batch[end].log_record is not None:
                        end += 1
                    logs = [w.log_record for w in batch[start:end] if w.log_record is not None]
                    apply = partial(self._insert_logs, logs=logs)
                if write.safe and not savepoints:
                    result = await apply(conn)
                else:
                    result = await self._in_savepoint(conn, apply)
                results.extend([result] * (end - start))
                start = end
        return results

    async def _in_savepoint(self, conn: Cx, apply: Callable[[Cx], Awaitable[Any]]) -> Any:
        """Run one write in its own savepoint; its result, or the error that undid it."""
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                async with conn.transaction():
                    return await apply(conn)
            except Exception as error:
                if _retryable(error) and attempt < CONFLICT_RETRIES:
                    continue
                if conn.is_closed():
                    raise
                return error
        raise AssertionError("unreachable")

    def _settle(self, batch: list[_Write], results: list[Any], now: float) -> None:
        """Hand each write its result; hold failed `*_nowait` writes; track the failure."""
        failure: StoreUnavailableError | None = None
        succeeded = False
        for write, result in zip(batch, results, strict=True):
            if write.withdrawn:  # never run: it proves nothing, its caller has its error
                continue
            if isinstance(result, BaseException):
                problem = unavailable(result)
                if problem is not None:
                    failure, result = problem, problem
                    if write.future is None:
                        self._hold(write)
                        continue
            elif not write.probe:
                succeeded = True
            if write.future is None or write.future.done():
                continue
            if isinstance(result, BaseException):
                write.future.set_exception(result)
            else:
                write.future.set_result(result)
        if failure is not None:
            if self._failure is None:
                log.warning("store writes fail", reason=failure.reason)
            self._failure = failure.reason
            self._held_retry_at = now + self._held_delay
            self._held_delay = min(self._held_delay * 2, HELD_RETRY_MAX_SEC)
        elif succeeded and self._failure is not None:
            log.info("store writes succeed again", held=len(self._held))
            self._failure = None
            self._held_delay = HELD_RETRY_FIRST_SEC
            self._held_retry_at = 0.0
            if self._held:
                self._wake.set()

    def _hold(self, write: _Write) -> None:
        write.log_bytes = -1
        if len(self._held) >= HELD_WRITES_MAX:
            if not self.writes_dropped:
                log.error(
                    "store writes fail and too many are held: dropping the newest",
                    held=len(self._held),
                    reason=self._failure,
                )
            self.writes_dropped += 1
            return
        self._held.append(write)

    @property
    def failure(self) -> str | None:
        """Why the last write failed, until a write (other than an empty one) succeeds."""
        return self._failure

    async def ping(self) -> None:
        """Commit an empty write: proves the database takes writes (for health checks).

        An empty write may commit on a server out of space: while a failure is remembered
        (see `failure`), a probe that needs room is written instead (`_probe_room`); if it
        commits the failure is forgotten, so health recovers on an idle daemon, else that
        failure is raised as StoreUnavailableError.
        """
        if self._failure is None:
            await self._submit(_nothing, probe=True, safe=True)
        else:
            with contextlib.suppress(StoreUnavailableError):
                await self._submit(partial(_probe_room, node=self.node))
        if self._failure is not None:
            raise StoreUnavailableError(self._failure)

    async def _close(self) -> None:
        for execution_id in list(self._execution_logs):
            self._write_tail(execution_id)
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer

    async def run_write(self, apply: Callable[[Cx], Awaitable[T]]) -> T:
        """Run `apply` as one awaited write of the group-commit queue (for `taskd.cluster`,
        whose bookkeeping shares this store's connection and order)."""
        return await self._submit(apply)

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        assert self._pool is not None
        try:
            async with asyncio.timeout(self._read_timeout_sec):
                return list(await self._pool.fetch(sql, *params))
        except TimeoutError:
            raise StoreUnavailableError(
                f"no answer from the database within {self._read_timeout_sec:g} s"
            ) from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
            problem = unavailable(error)
            if problem is None:
                raise
            raise problem from error

    async def read(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        """Run a read-only query on the read pool (for `taskd.cluster`); errors as reads."""
        return await self._fetch(sql, *params)

    # -- tasks ---------------------------------------------------------------------------

    async def insert_task(
        self,
        *,
        name: str,
        source: TaskSource,
        spec: Mapping[str, Any],
        enabled: bool,
        next_run_at: datetime | None,
        now: datetime,
        by: str | None = None,
    ) -> Task:
        """Insert a new task (version 1). Raises ConflictError if the name is taken."""
        definition = Definition(name=name, spec=spec, enabled=enabled, next_run_at=next_run_at)
        now_us = to_micros(now)

        async def apply(cx: Cx) -> Task:
            task_id = await _insert_task(cx, source, definition, now_us, by)
            await _announce(cx, self.node, [task_id])
            return await _get_task(cx, task_id)

        return await self._submit(apply)

    async def update_task(
        self,
        task_id: int,
        *,
        spec: Mapping[str, Any],
        enabled: bool,
        next_run_at: datetime | None,
        now: datetime,
        by: str | None = None,
        name: str | None = None,
        expected_version: int | None = None,
    ) -> Task:
        """Replace a task's definition and bump its version (see the Protocol)."""

        async def apply(cx: Cx) -> Task:
            version = await cx.fetchval(
                "SELECT version FROM tasks WHERE id = $1 FOR NO KEY UPDATE", task_id
            )
            if version is None:
                raise NotFoundError(f"task {task_id} not found")
            if expected_version is not None and version != expected_version:
                raise ConflictError(
                    f"task {task_id} is at version {version}, not {expected_version}"
                )
            await _guarded_by_name(
                name,
                cx.execute(
                    "UPDATE tasks SET spec = $1, enabled = $2, next_run_at = $3, updated_at = $4,"
                    " updated_by = $5, name = coalesce($6, name), version = version + 1,"
                    " retired_at = NULL WHERE id = $7",
                    dict(spec),
                    enabled,
                    _micros(next_run_at),
                    to_micros(now),
                    by,
                    name,
                    task_id,
                ),
            )
            await _announce(cx, self.node, [task_id])
            return await _get_task(cx, task_id)

        return await self._submit(apply)

    async def write_tasks(
        self, writes: Sequence[TaskInsert | TaskUpdate], *, now: datetime, by: str | None = None
    ) -> list[Task]:
        """Insert and update tasks in one write (its savepoint makes them atomic)."""
        now_us = to_micros(now)

        async def apply(cx: Cx) -> list[Task]:
            ids = []
            for write in writes:
                if isinstance(write, TaskInsert):
                    ids.append(await _insert_task(cx, write.source, write.definition, now_us, by))
                    continue
                row = await cx.fetchrow(
                    f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = $1 FOR NO KEY UPDATE",
                    write.task_id,
                )
                if row is None:
                    raise NotFoundError(f"task {write.task_id} not found")
                definition = write.build(_task_from_row(row))
                if definition is not None:
                    await _update_task(cx, write.task_id, definition, now_us, by)
                ids.append(write.task_id)
            await _announce(cx, self.node, ids)
            return [await _get_task(cx, task_id) for task_id in ids]

        return await self._submit(apply)

    async def retire_task(self, task_id: int, *, now: datetime, by: str | None = None) -> Task:
        """Retire a task: disabled, no due time, `retired_at` set, version + 1."""
        now_us = to_micros(now)

        async def apply(cx: Cx) -> Task:
            done = await cx.execute(
                "UPDATE tasks SET retired_at = coalesce(retired_at, $1), enabled = false,"
                " next_run_at = NULL, updated_at = $1, updated_by = $2, version = version + 1"
                " WHERE id = $3",
                now_us,
                by,
                task_id,
            )
            if done == "UPDATE 0":
                raise NotFoundError(f"task {task_id} not found")
            await _announce(cx, self.node, [task_id])
            return await _get_task(cx, task_id)

        return await self._submit(apply)

    async def set_next_run_at(self, task_id: int, next_run_at: datetime | None) -> None:
        """Set a task's next due time (without a version bump: the server's own update)."""

        async def apply(cx: Cx) -> None:
            await cx.execute(
                "UPDATE tasks SET next_run_at = $1 WHERE id = $2", _micros(next_run_at), task_id
            )
            await _announce(cx, self.node, [task_id])

        await self._submit(apply, safe=True)

    async def delete_task(self, task_id: int) -> None:
        """Delete a task with its executions, log and deferred runs. NotFoundError if absent."""
        for execution_id, entry in list(self._execution_logs.items()):
            if entry.task_id == task_id:
                del self._execution_logs[execution_id]

        async def apply(cx: Cx) -> None:
            if await cx.execute("DELETE FROM tasks WHERE id = $1", task_id) == "DELETE 0":
                raise NotFoundError(f"task {task_id} not found")
            self._finished_since_prune.pop(task_id, None)
            await _announce(cx, self.node, [task_id])

        await self._submit(apply)

    async def get_task(self, task_id: int) -> Task:
        """Return the task with id `task_id`; NotFoundError if there is none."""
        rows = await self._fetch(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = $1", task_id)
        if not rows:
            raise NotFoundError(f"task {task_id} not found")
        return _task_from_row(rows[0])

    async def get_tasks(self, task_ids: Sequence[int]) -> dict[int, Task]:
        """Return the tasks among `task_ids` that exist, by id (one query per 5,000 ids)."""
        found: dict[int, Task] = {}
        ids = list(task_ids)
        for start in range(0, len(ids), 5000):
            rows = await self._fetch(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ANY($1::bigint[])",
                ids[start : start + 5000],
            )
            for row in rows:
                task = _task_from_row(row)
                found[task.id] = task
        return found

    async def get_task_with_last_execution(
        self, task_id: int
    ) -> tuple[Task, Execution | None] | None:
        """Return a task and its last execution in one query, or None if there is no task."""
        columns = ", ".join(f"e.{c.strip()}" for c in _EXECUTION_COLUMNS.split(","))
        task_columns = ", ".join(f"t.{c.strip()}" for c in _TASK_COLUMNS.split(","))
        rows = await self._fetch(
            f"SELECT {task_columns}, {columns} FROM tasks t LEFT JOIN executions e"
            " ON e.id = t.last_execution_id WHERE t.id = $1",
            task_id,
        )
        if not rows:
            return None
        row = tuple(rows[0])
        width = len(_TASK_COLUMNS.split(","))
        last = None if row[width] is None else execution_from_row(row[width:])
        return _task_from_row(row[:width]), last

    async def find_task(self, name: str) -> Task | None:
        """Return the task called `name`, or None."""
        rows = await self._fetch(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE name = $1", name)
        return _task_from_row(rows[0]) if rows else None

    async def list_tasks(
        self,
        *,
        source: TaskSource | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Task]:
        """Return tasks ordered by id, optionally of one source, paged."""
        where = [("source", "=", str(source))] if source else []
        tasks, _ = await self.query_tasks(where=where, limit=limit, offset=offset, with_total=False)
        return tasks

    async def query_tasks(
        self,
        *,
        where: Sequence[tuple[str, str, Any]] = (),
        order: Sequence[tuple[str, bool]] = (),
        limit: int | None = None,
        offset: int = 0,
        with_total: bool = True,
        owner: str | None = None,
    ) -> tuple[list[Task], int]:
        """Return one page of tasks and the total count matching all conditions (see the
        Protocol). `like` is case-insensitive for ASCII letters, as in SQLite. With `owner`,
        only its API tasks and every config task (main's owners contract, ported ahead).
        Empty values sort after the others ascending, before them descending (PostgreSQL's
        own rule)."""
        for name in (*(name for name, _, _ in where), *(name for name, _ in order)):
            if name not in _TASK_QUERY_SQL:
                raise ValueError(f"unknown task field {name!r}")
        clauses: list[str] = []
        params: list[Any] = []
        for name, operator, value in where:
            column, kind = _TASK_QUERY_SQL[name]
            if operator == "in":
                params.append([_param(item) for item in value])
                clauses.append(f"{column} = ANY(${len(params)}::{kind}[])")
                continue
            if operator == "like":
                params.append(value)
                clauses.append(f"{column} ILIKE ${len(params)}::text")
                continue
            if operator not in {"=", "!=", "<", "<=", ">", ">="}:
                raise ValueError(f"unknown operator {operator!r}")
            params.append(_param(value))
            clauses.append(f"{column} {operator} ${len(params)}::{kind}")
        if owner is not None:
            params.append(owner)
            clauses.append(f"(created_by = ${len(params)} AND source = 'api' OR source = 'config')")
        where_sql = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order_sql = ", ".join(
            f"{_TASK_QUERY_SQL[name][0]} {'DESC' if descending else 'ASC'}"
            for name, descending in order
        )
        order_sql = f"ORDER BY {order_sql + ', ' if order_sql else ''}id"
        page = len(params)
        rows = await self._fetch(
            f"SELECT {_TASK_COLUMNS} FROM tasks {where_sql} {order_sql}"
            f" LIMIT ${page + 1}::bigint OFFSET ${page + 2}::bigint",
            *params,
            limit,
            offset,
        )
        tasks = [_task_from_row(row) for row in rows]
        if not with_total:
            return tasks, -1
        total = (await self._fetch(f"SELECT count(*) FROM tasks {where_sql}", *params))[0][0]
        return tasks, int(total)

    async def get_executions(self, execution_ids: Sequence[int]) -> dict[int, Execution]:
        """Return the executions among `execution_ids` that exist, by id."""
        found: dict[int, Execution] = {}
        ids = list(execution_ids)
        for start in range(0, len(ids), 5000):
            rows = await self._fetch(
                f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE id = ANY($1::bigint[])",
                ids[start : start + 5000],
            )
            for row in rows:
                found[row[0]] = execution_from_row(row)
        return found

    async def due_index(self) -> list[tuple[int, int]]:
        """Return (next_run_at in microseconds, task id) of every enabled, scheduled task."""
        rows = await self._fetch(
            "SELECT next_run_at, id FROM tasks WHERE next_run_at IS NOT NULL AND enabled"
        )
        return [(row[0], row[1]) for row in rows]

    async def due_entry(self, task_id: int) -> tuple[int, int] | None:
        """Return (next_run_at in microseconds, id) of one task if it is enabled and due."""
        rows = await self._fetch(
            "SELECT next_run_at, id FROM tasks WHERE id = $1 AND next_run_at IS NOT NULL"
            " AND enabled",
            task_id,
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def count_tasks(self) -> int:
        """Return how many tasks are stored."""
        return int((await self._fetch("SELECT count(*) FROM tasks"))[0][0])

    async def save_state(self, task_id: int, state: Mapping[str, Any] | None) -> None:
        """Store a task's module state (JSON) for a later resume."""
        value = None if state is None else dict(state)

        async def apply(cx: Cx) -> None:
            await cx.execute("UPDATE tasks SET state = $1 WHERE id = $2", value, task_id)

        await self._submit(apply, safe=True)

    # -- slots and executions -------------------------------------------------------------

    async def claim(self, claims: Sequence[SlotClaim], now: datetime) -> list[ClaimResult]:
        """Apply slot claims in one transaction; see `SlotClaim`. Returns one result each.

        Each claim is a compare-and-set of `next_run_at`: when another node advanced it
        meanwhile (or is advancing it: PostgreSQL waits for that transaction, then checks
        the condition on the newest row), the claim is void.
        """
        now_us = to_micros(now)
        bulk = len({claim.task_id for claim in claims}) == len(claims) and all(
            new.slot_at is not None for claim in claims for new in claim.executions
        )

        async def apply(cx: Cx) -> list[ClaimResult]:
            if bulk:  # the usual case: a handful of statements for the whole batch
                return await self._claim_bulk(cx, claims, now_us)
            results = []
            for claim in claims:
                # RETURNING whether the task runs in parallel: then no other node's run
                # of it matters (one query less per claim).
                parallel = await cx.fetchval(
                    "UPDATE tasks SET next_run_at = $1 WHERE id = $2"
                    " AND next_run_at IS NOT DISTINCT FROM $3"
                    " RETURNING coalesce(spec #>> '{options,overlap}', 'skip') = 'parallel'",
                    _micros(claim.next_run_at),
                    claim.task_id,
                    _micros(claim.expected_next_run_at),
                )
                if parallel is None:
                    results.append(ClaimResult(False))
                    continue
                owner = None
                if not parallel and any(
                    new.status is ExecutionStatus.QUEUED for new in claim.executions
                ):
                    owner = await self._busy_elsewhere(cx, claim.task_id, locked=True)
                inserted = [
                    await _insert_execution(cx, new, now_us, owner or self.node, bool(owner))
                    if owner and new.status is ExecutionStatus.QUEUED
                    else await _insert_execution(cx, new, now_us, self.node)
                    for new in claim.executions
                ]
                ids = tuple(
                    None if owner and new.status is ExecutionStatus.QUEUED else execution_id
                    for execution_id, new in zip(inserted, claim.executions, strict=True)
                )
                for new in claim.executions:
                    if new.status is ExecutionStatus.SKIPPED:
                        await self._prune(cx, claim.task_id)
                if any(
                    i is not None and new.status is ExecutionStatus.QUEUED
                    for i, new in zip(inserted, claim.executions, strict=True)
                ):
                    await _mark_task_queued(cx, claim.task_id)
                    if owner:
                        await cx.execute("SELECT pg_notify($1, $2)", HANDOFF_CHANNEL, owner)
                results.append(ClaimResult(True, ids))
            return results

        return await self._submit(apply, safe=True)

    async def _claim_bulk(
        self, cx: Cx, claims: Sequence[SlotClaim], now_us: int
    ) -> list[ClaimResult]:
        """`claim` for claims of distinct tasks whose rows all have a slot: one UPDATE and
        one INSERT for all of them (a statement per claim would cap a node at the round
        trips to the server). Tasks are locked in id order (no deadlock between nodes)."""
        order = sorted(range(len(claims)), key=lambda i: claims[i].task_id)
        rows = await cx.fetch(
            "UPDATE tasks t SET next_run_at = c.next FROM unnest($1::bigint[], $2::bigint[],"
            " $3::bigint[], $4::int[]) AS c(id, expected, next, ord)"
            " WHERE t.id = c.id AND t.next_run_at IS NOT DISTINCT FROM c.expected"
            " RETURNING c.ord, coalesce(t.spec #>> '{options,overlap}', 'skip') = 'parallel'",
            [claims[i].task_id for i in order],
            [_micros(claims[i].expected_next_run_at) for i in order],
            [_micros(claims[i].next_run_at) for i in order],
            order,
        )
        applied = {int(row[0]): bool(row[1]) for row in rows}
        owners: dict[int, str] = {}
        for index in sorted(applied, key=lambda i: claims[i].task_id):
            claim = claims[index]
            if not applied[index] and any(
                new.status is ExecutionStatus.QUEUED for new in claim.executions
            ):
                owner = await self._busy_elsewhere(cx, claim.task_id, locked=True)
                if owner:
                    owners[index] = owner
        columns: tuple[list[Any], ...] = tuple([] for _ in range(11))
        for index in sorted(applied):
            owner = owners.get(index)
            for new in claims[index].executions:
                handoff = owner is not None and new.status is ExecutionStatus.QUEUED
                values = (
                    new.task_id,
                    str(new.trigger),
                    _dumps(dict(new.trigger_metadata)) if new.trigger_metadata else None,
                    _micros(new.slot_at),
                    _micros(new.scheduled_for),
                    str(new.status),
                    new.status_msg,
                    new.attempt,
                    now_us if new.status is ExecutionStatus.SKIPPED else None,
                    owner if handoff else self.node,
                    handoff,
                )
                for column, value in zip(columns, values, strict=True):
                    column.append(value)
        inserted: dict[tuple[int, int], int] = {}
        if columns[0]:
            rows = await cx.fetch(
                "INSERT INTO executions (task_id, trigger, trigger_metadata, slot_at,"
                " scheduled_for, queued_at, status, status_msg, attempt, finished_at, node,"
                " handoff) SELECT r.task_id, r.trigger, r.metadata::jsonb, r.slot_at,"
                " r.scheduled_for, $12, r.status, r.status_msg, r.attempt, r.finished_at,"
                " r.node, r.handoff FROM unnest($1::bigint[], $2::text[], $3::text[],"
                " $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::int[], $9::bigint[],"
                " $10::text[], $11::bool[]) WITH ORDINALITY AS r(task_id, trigger, metadata,"
                " slot_at, scheduled_for, status, status_msg, attempt, finished_at, node,"
                " handoff, ord) ORDER BY r.ord ON CONFLICT (task_id, slot_at)"
                " WHERE slot_at IS NOT NULL DO NOTHING RETURNING id, task_id, slot_at",
                *columns,
                now_us,
            )
            inserted = {(int(row[1]), int(row[2])): int(row[0]) for row in rows}
        results: list[ClaimResult] = []
        queued_tasks: list[int] = []
        notify: set[str] = set()
        for index, claim in enumerate(claims):
            if index not in applied:
                results.append(ClaimResult(False))
                continue
            owner = owners.get(index)
            ids: list[int | None] = []
            queued = False
            for new in claim.executions:
                key = (new.task_id, _micros(new.slot_at) or 0)
                execution_id = inserted.pop(key, None)  # a slot is inserted once
                if execution_id is not None and new.status is ExecutionStatus.QUEUED:
                    queued = True
                handed = owner is not None and new.status is ExecutionStatus.QUEUED
                ids.append(None if handed else execution_id)
                if new.status is ExecutionStatus.SKIPPED:
                    await self._prune(cx, claim.task_id)
            if queued:
                queued_tasks.append(claim.task_id)
                if owner is not None:
                    notify.add(owner)
            results.append(ClaimResult(True, tuple(ids)))
        if queued_tasks:
            await cx.execute(
                "UPDATE tasks SET status = 'queued' WHERE id = ANY($1::bigint[])"
                " AND status NOT IN ('running', 'paused')",
                sorted(queued_tasks),
            )
        for owner in sorted(notify):
            await cx.execute("SELECT pg_notify($1, $2)", HANDOFF_CHANNEL, owner)
        return results

    async def add_executions(
        self, executions: Sequence[NewExecution], now: datetime
    ) -> list[int | None]:
        """Insert execution rows (owned by this node) in one transaction (see the Protocol)."""
        now_us = to_micros(now)

        async def apply(cx: Cx) -> list[int | None]:
            ids = []
            for new in executions:
                owner = None
                if new.status is ExecutionStatus.QUEUED:
                    owner = await self._busy_elsewhere(cx, new.task_id)
                try:
                    execution_id = await _insert_execution(
                        cx, new, now_us, owner or self.node, bool(owner)
                    )
                except asyncpg.ForeignKeyViolationError as error:
                    raise NotFoundError(f"task {new.task_id} not found") from error
                if execution_id is not None and new.status is ExecutionStatus.QUEUED:
                    await _mark_task_queued(cx, new.task_id)
                    if owner:
                        await cx.execute("SELECT pg_notify($1, $2)", HANDOFF_CHANNEL, owner)
                ids.append(execution_id)
            return ids

        return await self._submit(apply)

    async def _busy_elsewhere(self, cx: Cx, task_id: int, *, locked: bool = False) -> str | None:
        """The live node, other than this one, that runs (or has queued) a run of the task,
        if the task's overlap policy is not `parallel`: a new run of it goes to that node,
        whose scheduler applies the policy (`skip`, `queue`, `replace`) against what it runs.
        The task row is locked by the caller's write, so two nodes never both decide the
        task is free (`locked`: the caller's write holds it already)."""
        if not locked:
            await cx.execute("SELECT 1 FROM tasks WHERE id = $1 FOR NO KEY UPDATE", task_id)
        row = await cx.fetchrow(
            "SELECT e.node FROM executions e JOIN tasks t ON t.id = e.task_id"
            " JOIN nodes n ON n.name = e.node WHERE e.task_id = $1"
            " AND e.status IN ('queued', 'running', 'paused') AND e.node <> $2"
            " AND n.dead_at IS NULL AND n.stopped_at IS NULL"
            " AND coalesce(t.spec #>> '{options,overlap}', 'skip') <> 'parallel'"
            " ORDER BY e.id DESC LIMIT 1",
            task_id,
            self.node,
        )
        return None if row is None else str(row[0])

    async def take_handoffs(self) -> list[Execution]:
        """Take up the runs other nodes queued for this one (see `_busy_elsewhere`), oldest
        first; each is returned once."""

        async def apply(cx: Cx) -> list[Execution]:
            rows = await cx.fetch(
                f"UPDATE executions SET handoff = false WHERE node = $1 AND handoff"
                f" RETURNING {_EXECUTION_COLUMNS}",
                self.node,
            )
            return sorted((execution_from_row(row) for row in rows), key=lambda e: e.id)

        return await self._submit(apply, safe=True)

    async def mark_started_many(
        self, started: Sequence[tuple[int, int]], started_at: datetime, dispatcher: str
    ) -> set[int]:
        """Record that executions (execution id, task id) start now, in one write.

        Only this node's queued executions start: a node starts only what it claimed.
        Returns the ids that started.
        """
        if not started:
            return set()
        at = to_micros(started_at)

        async def apply(cx: Cx) -> set[int]:
            ids = await cx.fetch(
                "UPDATE executions SET status = 'running', started_at = $1, dispatcher = $2"
                " WHERE id = ANY($3::bigint[]) AND status = 'queued' AND node = $4"
                " RETURNING id, task_id",
                at,
                dispatcher,
                [execution_id for execution_id, _ in started],
                self.node,
            )
            if not ids:
                return set()
            await cx.executemany(
                "UPDATE tasks SET status = 'running', status_msg = NULL,"
                " status_percent = NULL, run_started_at = $1, run_finished_at = NULL,"
                " run_canceled_at = NULL, last_execution_id = $2 WHERE id = $3",
                [(at, row[0], row[1]) for row in sorted(ids, key=lambda row: row[1])],
            )
            return {int(row[0]) for row in ids}

        return await self._submit(apply, safe=True)

    async def unstart_many(self, started: Sequence[tuple[int, int]]) -> None:
        """Take back starts committed ahead that did not happen (main's contract, ported
        ahead): this node's `running` executions go back to `queued`, their tasks (where
        they show them) to `queued` showing the run before."""
        if not started:
            return

        async def apply(cx: Cx) -> None:
            await _unstart(cx, started, self.node)

        await self._submit(apply, safe=True)

    def set_running_status_nowait(
        self, execution_id: int, task_id: int, status: ExecutionStatus
    ) -> None:
        """Record a pause or resume (`paused` / `running`) with the next batch."""

        async def apply(cx: Cx) -> None:
            changed = await cx.execute(
                "UPDATE executions SET status = $1 WHERE id = $2"
                " AND status IN ('running', 'paused')",
                str(status),
                execution_id,
            )
            if changed != "UPDATE 0":
                await cx.execute(
                    "UPDATE tasks SET status = $1 WHERE id = $2 AND last_execution_id = $3",
                    str(status),
                    task_id,
                    execution_id,
                )

        self._submit_nowait(apply)

    def progress_nowait(self, execution_id: int, task_id: int, fields: Mapping[str, Any]) -> None:
        """Record progress fields (`progress` is the percent) with the next batch."""
        columns = [name for name in _PROGRESS_FIELDS if name in fields]
        if not columns:
            return
        assignments = ", ".join(f"{name} = ${n}" for n, name in enumerate(columns, start=1))
        values = [
            None
            if fields[name] is None
            else (int(fields[name]) if name in _WHOLE_FIELDS else float(fields[name]))
            for name in columns
        ]
        percent = fields.get("progress")

        async def apply(cx: Cx) -> None:
            await cx.execute(
                f"UPDATE executions SET {assignments} WHERE id = ${len(columns) + 1}",
                *values,
                execution_id,
            )
            if percent is not None:
                await cx.execute(
                    "UPDATE tasks SET status_percent = $1 WHERE id = $2 AND last_execution_id = $3",
                    float(percent),
                    task_id,
                    execution_id,
                )

        self._submit_nowait(apply)

    def log_nowait(
        self,
        task_id: int,
        execution_id: int | None,
        level: str,
        msg: str,
        at: datetime,
        status_percent: float | None = None,
    ) -> None:
        """Queue a log entry; an execution's past its head wait in its tail ring (memory)."""
        if execution_id is None:
            self._queue_log(task_id, None, level, msg, at, status_percent)
            return
        entry = self._execution_logs.get(execution_id)
        if entry is None:
            entry = _ExecutionLog(task_id, self._log_head, deque(maxlen=self._log_tail + 1))
            self._execution_logs[execution_id] = entry
        if entry.head_left > 0:
            entry.head_left -= 1
            self._queue_log(task_id, execution_id, level, msg, at, status_percent)
            return
        if len(entry.tail) == entry.tail.maxlen:
            entry.left_out += 1
        entry.tail.append((level, msg, at, status_percent))

    def log_keeps_last(self, execution_id: int) -> int | None:
        """The ring's size once the execution's head is full, else None (see the Protocol)."""
        entry = self._execution_logs.get(execution_id)
        if entry is None or entry.head_left > 0:
            return None
        return entry.tail.maxlen

    def log_left_out_nowait(self, execution_id: int, count: int) -> None:
        """Count entries of the execution as left out without their text (see the Protocol)."""
        entry = self._execution_logs.get(execution_id)
        if entry is not None and entry.head_left == 0 and count > 0:
            entry.left_out += count

    def _tail_entries(
        self, execution_id: int
    ) -> tuple[int, list[tuple[str, str, datetime, float | None]]]:
        entry = self._execution_logs.pop(execution_id, None)
        if entry is None:
            return 0, []
        entries = list(entry.tail)
        if entry.left_out:
            _, _, when, percent = entries.pop(0)
            left_out = entry.left_out + 1
            plural = "line" if left_out == 1 else "lines"
            entries.insert(0, ("warning", f"... {left_out} {plural} left out ...", when, percent))
        return entry.task_id, entries

    def _write_tail(self, execution_id: int) -> None:
        task_id, entries = self._tail_entries(execution_id)
        for level, msg, at, percent in entries:
            self._queue_log(task_id, execution_id, level, msg, at, percent)

    async def _write_tail_within_bound(self, execution_id: int) -> None:
        task_id, entries = self._tail_entries(execution_id)
        for level, msg, at, percent in entries:
            if not self._log_room.is_set():
                await self._log_room.wait()
            self._queue_log(task_id, execution_id, level, msg, at, percent)

    def _queue_log(
        self,
        task_id: int,
        execution_id: int | None,
        level: str,
        msg: str,
        at: datetime,
        status_percent: float | None,
    ) -> None:
        record = _LogRecord(task_id, execution_id, level, msg, status_percent, to_micros(at))
        self._submit_nowait(_nothing, len(msg), record)

    async def _insert_logs(self, cx: Cx, *, logs: Sequence[_LogRecord]) -> None:
        """Insert a run of log entries with a handful of statements, whatever their number:
        a statement per entry would cap a busy log at the round trips to the server.

        Entries of unknown executions or tasks are dropped; an execution's are capped at
        `log_entries_per_execution` (a guard for one that goes on logging after a reopen);
        each task's idx comes from its counter row, taken in task order (no deadlock
        between nodes).
        """
        records = logs
        executions = {r.execution_id for r in records if r.execution_id is not None}
        owners: dict[int, int] = {}
        counts: dict[int, int] = {}
        if executions:
            rows = await cx.fetch(
                "SELECT id, task_id FROM executions WHERE id = ANY($1::bigint[])",
                sorted(executions),
            )
            owners = {row[0]: row[1] for row in rows}
            uncounted = [e for e in owners if e not in self._log_count]
            if uncounted:
                counts = dict.fromkeys(uncounted, 0)
                rows = await cx.fetch(
                    "SELECT execution_id, count(*) FROM log_entries"
                    " WHERE execution_id = ANY($1::bigint[]) GROUP BY execution_id",
                    uncounted,
                )
                counts.update({row[0]: int(row[1]) for row in rows})
        kept: list[_LogRecord] = []
        for record in records:
            if record.execution_id is not None:
                if owners.get(record.execution_id) != record.task_id:
                    continue  # the execution (or its task) was deleted
                count = self._log_count.get(record.execution_id)
                if count is None:
                    count = counts.get(record.execution_id, 0)
                if count >= self._log_cap:
                    continue
                if record.execution_id not in self._log_undo:
                    self._log_undo[record.execution_id] = self._log_count.get(record.execution_id)
                self._log_count[record.execution_id] = count + 1
            kept.append(record)
        if not kept:
            return
        per_task = Counter(record.task_id for record in kept)
        task_ids = sorted(per_task)
        rows = await cx.fetch(
            "INSERT INTO log_counters (task_id, next_idx) SELECT c.id, c.n"
            " FROM unnest($1::bigint[], $2::bigint[]) AS c(id, n)"
            " WHERE EXISTS (SELECT 1 FROM tasks t WHERE t.id = c.id) ORDER BY c.id"
            " ON CONFLICT (task_id) DO UPDATE SET next_idx = log_counters.next_idx"
            " + EXCLUDED.next_idx RETURNING task_id, next_idx",
            task_ids,
            [per_task[task_id] for task_id in task_ids],
        )
        next_idx = {row[0]: row[1] - per_task[row[0]] for row in rows}
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        for record in kept:
            idx = next_idx.get(record.task_id)
            if idx is None:
                continue  # the task was deleted
            next_idx[record.task_id] = idx + 1
            for column, value in zip(
                columns,
                (
                    record.task_id,
                    idx,
                    record.execution_id,
                    record.level,
                    record.msg,
                    record.status_percent,
                    record.at_us,
                ),
                strict=True,
            ):
                column.append(value)
        if columns[0]:
            await cx.execute(
                "INSERT INTO log_entries (task_id, idx, execution_id, level, msg,"
                " status_percent, timestamp) SELECT * FROM unnest($1::bigint[], $2::bigint[],"
                " $3::bigint[], $4::text[], $5::text[], $6::float8[], $7::bigint[])",
                *columns,
            )

    async def finish(
        self,
        execution_id: int,
        task_id: int,
        status: ExecutionStatus,
        status_msg: str | None,
        finished_at: datetime,
    ) -> None:
        """Write the execution's log tail, then record how it ended (see the Protocol)."""
        await self._write_tail_within_bound(execution_id)
        at = to_micros(finished_at)
        canceled_at = at if status is ExecutionStatus.CANCELED else None

        async def apply(cx: Cx) -> None:
            ended = await cx.execute(
                "UPDATE executions SET status = $1, status_msg = $2, finished_at = $3"
                " WHERE id = $4 AND status IN ('queued', 'running', 'paused')",
                str(status),
                status_msg,
                at,
                execution_id,
            )
            if ended == "UPDATE 0":
                return
            self._log_count.pop(execution_id, None)
            if status is ExecutionStatus.SKIPPED:
                await cx.execute(
                    "UPDATE tasks SET status = coalesce((SELECT status FROM executions"
                    " WHERE id = tasks.last_execution_id), 'new') WHERE id = $1"
                    " AND status = 'queued' AND NOT EXISTS (SELECT 1 FROM executions"
                    " WHERE task_id = $1 AND status = 'queued' AND id != $2)",
                    task_id,
                    execution_id,
                )
                await self._prune(cx, task_id)
                return
            await cx.execute(
                "UPDATE tasks SET status = $1, status_msg = $2, run_finished_at = $3,"
                " run_canceled_at = $4, status_percent = CASE WHEN $1 = 'done' THEN 100"
                " ELSE status_percent END, last_execution_id = $5 WHERE id = $6 AND"
                " (last_execution_id IS NULL OR last_execution_id <= $5"
                "  OR status NOT IN ('running', 'paused'))",
                str(status),
                status_msg,
                at,
                canceled_at,
                execution_id,
                task_id,
            )
            await self._prune(cx, task_id)

        await self._submit(apply, safe=True)

    async def _prune(self, cx: Cx, task_id: int) -> None:
        """Keep the newest `history_per_task` executions of a task (once per tenth)."""
        count = self._finished_since_prune.get(task_id, 0) + 1
        if count < max(1, self._history // 10):
            self._finished_since_prune[task_id] = count
            return
        self._finished_since_prune[task_id] = 0
        keep_from = await cx.fetchval(
            "SELECT id FROM executions WHERE task_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2",
            task_id,
            self._history - 1,
        )
        if keep_from is not None:
            await cx.execute(
                "DELETE FROM executions WHERE task_id = $1 AND id < $2 AND status NOT IN"
                " ('queued', 'running', 'paused')",
                task_id,
                keep_from,
            )

    async def record_process_group(self, execution_id: int, pgid: int, start: str) -> None:
        """Record the process group of a running or paused execution (see the Protocol)."""

        async def apply(cx: Cx) -> None:
            await cx.execute(
                "UPDATE executions SET process_group = $1, process_start = $2 WHERE id = $3"
                " AND status IN ('running', 'paused')",
                pgid,
                start,
                execution_id,
            )

        await self._submit(apply, safe=True)

    async def interrupted_process_groups(self) -> list[tuple[int, int, int, str]]:
        """(execution id, task id, pgid, start) of this node's running or paused executions:
        a process group means something on its own machine only. Those another node took
        over while this one was dead count too (they are marked interrupted already, but
        their processes may have outlived the taskd that was killed); `recover_interrupted`
        forgets them once they are ended."""
        rows = await self._fetch(
            "SELECT id, task_id, process_group, process_start FROM executions"
            " WHERE node = $1 AND process_group IS NOT NULL AND (status IN ('running', 'paused')"
            " OR (status = 'error' AND status_msg LIKE $2)) ORDER BY id",
            self.node,
            TAKEN_OVER_PREFIX + "%",
        )
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    async def recover_interrupted(self, now: datetime) -> list[Execution]:
        """Mark this node's executions left `running` or `paused` as `error`, "interrupted"
        (other nodes' runs go on; a dead node's are taken over by `taskd.cluster`); a start
        committed ahead of an instant after `now` goes back to `queued` instead."""

        async def apply(cx: Cx) -> list[Execution]:
            # The process groups of runs taken over while this node was dead were ended
            # by now (`interrupted_process_groups`): forget them.
            await cx.execute(
                "UPDATE executions SET process_group = NULL WHERE node = $1"
                " AND process_group IS NOT NULL AND status = 'error' AND status_msg LIKE $2",
                self.node,
                TAKEN_OVER_PREFIX + "%",
            )
            return await interrupt_executions(cx, self.node, now, "interrupted")

        recovered = await self._submit(apply, safe=True)
        for execution in recovered:
            self._write_tail(execution.id)
        return recovered

    async def queued_executions(self) -> list[Execution]:
        """Return this node's executions waiting to start, oldest first."""
        rows = await self._fetch(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE status = 'queued'"
            " AND node = $1 ORDER BY id",
            self.node,
        )
        return [execution_from_row(row) for row in rows]

    async def get_execution(self, execution_id: int) -> Execution:
        """Return one execution; NotFoundError if there is none."""
        rows = await self._fetch(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE id = $1", execution_id
        )
        if not rows:
            raise NotFoundError(f"execution {execution_id} not found")
        return execution_from_row(rows[0])

    async def list_executions(
        self, task_id: int, *, limit: int = 50, offset: int = 0
    ) -> list[Execution]:
        """Return a task's executions, newest first."""
        rows = await self._fetch(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE task_id = $1"
            " ORDER BY id DESC LIMIT $2 OFFSET $3",
            task_id,
            limit,
            offset,
        )
        return [execution_from_row(row) for row in rows]

    async def read_log(
        self,
        task_id: int,
        *,
        offset: int = 0,
        limit: int = 100,
        execution_id: int | None = None,
    ) -> list[LogEntry]:
        """Return a task's log entries from index `offset` on, oldest first."""
        rows = await self._fetch(
            "SELECT task_id, idx, execution_id, level, msg, status_percent, timestamp"
            " FROM log_entries WHERE task_id = $1 AND idx >= $2"
            " AND ($3::bigint IS NULL OR execution_id = $3) ORDER BY idx LIMIT $4",
            task_id,
            offset,
            execution_id,
            limit,
        )
        return [
            LogEntry(
                task_id=row[0],
                idx=row[1],
                execution_id=row[2],
                level=row[3],
                msg=row[4],
                status_percent=row[5],
                timestamp=from_micros(row[6]),
            )
            for row in rows
        ]

    # -- deferred runs --------------------------------------------------------------------

    async def create_defer(
        self, task_id: int, metadata: Mapping[str, Any], now: datetime, expires_at: datetime
    ) -> str:
        """Record a deferred run of a task and return its unguessable `defer_id`."""
        defer_id = new_defer_id()

        async def apply(cx: Cx) -> None:
            done = await cx.execute(
                "INSERT INTO deferred_runs (defer_id, task_id, metadata, created_at,"
                " expires_at) SELECT $1, $2, $3, $4, $5 WHERE EXISTS"
                " (SELECT 1 FROM tasks WHERE id = $2)",
                defer_id,
                task_id,
                dict(metadata),
                to_micros(now),
                to_micros(expires_at),
            )
            if done == "INSERT 0 0":
                raise NotFoundError(f"task {task_id} not found")

        await self._submit(apply)
        return defer_id

    async def use_defer(self, defer_id: str, now: datetime) -> tuple[int, dict[str, Any]]:
        """Mark a deferred run used and return (task id, metadata); once only."""
        now_us = to_micros(now)

        async def apply(cx: Cx) -> tuple[int, dict[str, Any]]:
            row = await cx.fetchrow(
                "SELECT task_id, metadata, expires_at, used_at FROM deferred_runs"
                " WHERE defer_id = $1 FOR UPDATE",
                defer_id,
            )
            if row is None:
                raise DeferError(f"unknown defer_id {defer_id!r}")
            if row[3] is not None:
                raise DeferError(f"defer_id {defer_id!r} was used already")
            if row[2] <= now_us:
                raise DeferError(f"defer_id {defer_id!r} has expired")
            await cx.execute(
                "UPDATE deferred_runs SET used_at = $1 WHERE defer_id = $2", now_us, defer_id
            )
            return row[0], dict(row[1] or {})

        return await self._submit(apply)


async def _nothing(cx: Cx) -> None:
    """An empty write (flush, ping)."""


class _ProbeWritten(Exception):
    """Raised inside `_probe_room`'s savepoint once its row is written, to roll it back."""


async def _probe_room(cx: Cx, *, node: str) -> None:
    """A write that needs room and leaves nothing behind: a task row of about 16 kB of
    incompressible text (new pages for the row's TOAST), inserted and rolled back in a
    savepoint. Refused wherever a real write would be: a read-only server, a full disk
    (and the test's disk-full triggers); it takes no id from the tasks' sequence."""
    with contextlib.suppress(_ProbeWritten):
        async with cx.transaction():
            await cx.execute(
                "INSERT INTO tasks (id, name, source, spec, created_at, updated_at)"
                " SELECT -1 - floor(random() * 1e15)::bigint, 'taskd room probe ' || $1,"
                " 'api', jsonb_build_object('pad', string_agg(md5(random()::text), '')), 0, 0"
                " FROM generate_series(1, 512)",
                node,
            )
            raise _ProbeWritten


def _param(value: Any) -> Any:
    return to_micros(value) if isinstance(value, datetime) else value


async def _announce(cx: Cx, node: str, task_ids: Sequence[int]) -> None:
    """Tell the other nodes (on commit) that these tasks changed."""
    if task_ids:
        await cx.execute(
            "SELECT pg_notify($1, $2 || ':' || id) FROM unnest($3::bigint[]) AS id",
            TASKS_CHANNEL,
            node,
            list(task_ids),
        )


async def _get_task(cx: Cx, task_id: int) -> Task:
    row = await cx.fetchrow(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = $1", task_id)
    if row is None:
        raise NotFoundError(f"task {task_id} not found")
    return _task_from_row(row)


async def _guarded_by_name(name: str | None, write: Awaitable[T]) -> T:
    """Await a write that may take a task name; a name taken is a ConflictError."""
    try:
        return await write
    except asyncpg.UniqueViolationError as error:
        raise ConflictError(f"a task named {name!r} exists already") from error


async def _insert_task(
    cx: Cx, source: TaskSource, definition: Definition, now_us: int, by: str | None
) -> int:
    # ON CONFLICT keeps the savepoint usable: a taken name is a refusal, not an error.
    task_id = await cx.fetchval(
        "INSERT INTO tasks (name, source, spec, enabled, next_run_at, created_at,"
        " updated_at, created_by, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $7)"
        " ON CONFLICT (name) DO NOTHING RETURNING id",
        definition.name,
        str(source),
        dict(definition.spec),
        definition.enabled,
        _micros(definition.next_run_at),
        now_us,
        by,
    )
    if task_id is None:
        raise ConflictError(f"a task named {definition.name!r} exists already")
    return int(task_id)


async def _update_task(
    cx: Cx, task_id: int, definition: Definition, now_us: int, by: str | None
) -> None:
    await _guarded_by_name(
        definition.name,
        cx.execute(
            "UPDATE tasks SET spec = $1, enabled = $2, next_run_at = $3, updated_at = $4,"
            " updated_by = $5, name = $6, version = version + 1, retired_at = NULL WHERE id = $7",
            dict(definition.spec),
            definition.enabled,
            _micros(definition.next_run_at),
            now_us,
            by,
            definition.name,
            task_id,
        ),
    )


async def _mark_task_queued(cx: Cx, task_id: int) -> None:
    await cx.execute(
        "UPDATE tasks SET status = 'queued' WHERE id = $1 AND status NOT IN ('running', 'paused')",
        task_id,
    )


async def _insert_execution(
    cx: Cx, new: NewExecution, now_us: int, node: str, handoff: bool = False
) -> int | None:
    execution_id = await cx.fetchval(
        "INSERT INTO executions (task_id, trigger, trigger_metadata, slot_at, scheduled_for,"
        " queued_at, status, status_msg, attempt, finished_at, node, handoff) VALUES ($1, $2,"
        " $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (task_id, slot_at)"
        " WHERE slot_at IS NOT NULL DO NOTHING RETURNING id",
        new.task_id,
        str(new.trigger),
        dict(new.trigger_metadata) if new.trigger_metadata else None,
        _micros(new.slot_at),
        _micros(new.scheduled_for),
        now_us,
        str(new.status),
        new.status_msg,
        new.attempt,
        now_us if new.status is ExecutionStatus.SKIPPED else None,
        node,
        handoff,
    )
    return None if execution_id is None else int(execution_id)


async def _unstart(cx: Cx, started: Sequence[tuple[int, int]], node: str) -> None:
    """Return `node`'s `running` executions (id, task id) that never started to `queued`,
    their tasks too where they show them (see `Store.unstart_many`): the task shows its run
    before this one again (as the claim left it), but `queued`."""
    for execution_id, task_id in sorted(started, key=lambda pair: pair[1]):
        await cx.execute(
            "UPDATE tasks SET status = 'queued', last_execution_id = previous.id,"
            " status_msg = previous.status_msg, run_started_at = previous.started_at,"
            " run_finished_at = previous.finished_at, run_canceled_at = CASE WHEN"
            " previous.status = 'canceled' THEN previous.finished_at END"
            " FROM (SELECT max(id) AS last FROM executions WHERE task_id = $1"
            "  AND id < $2 AND status NOT IN ('queued', 'skipped')) AS prior"
            " LEFT JOIN executions AS previous ON previous.id = prior.last"
            " WHERE tasks.id = $1 AND tasks.last_execution_id = $2"
            " AND tasks.status = 'running' AND EXISTS (SELECT 1 FROM executions"
            " WHERE id = $2 AND status = 'running' AND node = $3)",
            task_id,
            execution_id,
            node,
        )
    await cx.execute(
        "UPDATE executions SET status = 'queued', started_at = NULL, dispatcher = NULL"
        " WHERE id = ANY($1::bigint[]) AND status = 'running' AND node = $2",
        [execution_id for execution_id, _ in started],
        node,
    )


async def interrupt_executions(
    cx: Cx, node: str, now: datetime, message: str, *, own: bool = True
) -> list[Execution]:
    """Mark `node`'s running and paused executions `error` with `message`, finished `now`,
    and their tasks likewise where they show them; return them as they are now, oldest
    first. Rows another transaction holds are skipped (SKIP LOCKED): a node that is
    finishing them right now wins.

    In a node's own recovery (`own`: the process that committed them is gone), a `running`
    row whose `started_at` is after `now` was committed ahead of an instant not reached
    ("Starts committed ahead" in `taskd.store.base`): it never started, so it goes back to
    `queued` (still `node`'s; not returned) instead. Taking over another node (`own`
    False), such a row is interrupted like the others: a node declared dead may only be
    cut off, and would still release it at its instant, so running it again here would
    run the slot twice; it runs again only under its retry policy."""
    at = to_micros(now)
    rows = await cx.fetch(
        f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE status IN ('running', 'paused')"
        " AND node = $1 ORDER BY id FOR UPDATE SKIP LOCKED",
        node,
    )
    ahead = {row[0] for row in rows if own and row[9] == "running" and (row[7] or 0) > at}
    if ahead:
        await _unstart(cx, [(row[0], row[1]) for row in rows if row[0] in ahead], node)
        rows = [row for row in rows if row[0] not in ahead]
    if not rows:
        return []
    await cx.execute(
        "UPDATE executions SET status = 'error', status_msg = $1, finished_at = $2"
        " WHERE id = ANY($3::bigint[])",
        message,
        at,
        [row[0] for row in rows],
    )
    await cx.executemany(
        "UPDATE tasks SET status = 'error', status_msg = $1, run_finished_at = $2"
        " WHERE id = $3 AND last_execution_id = $4",
        [(message, at, row[1], row[0]) for row in sorted(rows, key=lambda row: row[1])],
    )
    return [
        execution_from_row((*tuple(row)[:8], at, ExecutionStatus.ERROR, message, *tuple(row)[11:]))
        for row in rows
    ]
