"""`SqliteStore`: the `Store` contract over one SQLite file (the embedded default).

One aiosqlite connection, one thread. Writes go through a group-commit queue: everything
submitted while a transaction is being written goes into the next one, so a thousand
executions finishing at once cost a few transactions, not a thousand. A write's awaitable
resolves only after its transaction committed; each write runs in its own savepoint, so one
refused write (a version conflict, say) never takes its batch-mates down with it.

Times are stored as integer microseconds since the Unix epoch (UTC); JSON as text.
WAL with synchronous=NORMAL: a committed transaction survives a crash of the process
(kill -9), which is the durability the scheduler promises.

When the database cannot be written (disk full, read-only or failing file system), every
write that failed raises `StoreUnavailableError`; the store remembers the reason until a
write succeeds (`ping` reports it, so health does not trust an empty write, which may
commit on a full disk). Failed `*_nowait` writes are held, at most `HELD_WRITES_MAX`, and
retried ahead of the next batch, or alone with backoff when no other write comes; past the
bound the newest are dropped and counted in `writes_dropped`. Reads time out after
`read_timeout_sec`; awaited writes after `write_timeout_sec` (a frozen file system): a write
the database thread has not begun is withdrawn then (nothing written), one it has begun
stays in its transaction, which commits or rolls back whenever the file system answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiosqlite
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
    reads_separately,
)
from taskd.store.migrations import check_version, migrate

T = TypeVar("T")

log = structlog.get_logger("taskd.store")

DB_FILE = "taskd.db"
# Failed `*_nowait` writes held for a retry; past this many, the newest are dropped (counted).
HELD_WRITES_MAX = 10_000
# Held writes are retried after this delay, doubling up to the maximum, while writes fail.
HELD_RETRY_FIRST_SEC = 0.1
HELD_RETRY_MAX_SEC = 5.0
READ_TIMEOUT_SEC = 10.0
# How long an awaited write waits for its commit before it raises StoreUnavailableError.
WRITE_TIMEOUT_SEC = 10.0
# The result of a write withdrawn before the database thread began it (not run).
_WITHDRAWN = object()
# SQLite result codes (and their extended forms) that say the database cannot be used now:
# not a bug of taskd, and the same call may succeed later.
_UNAVAILABLE_CODES = (
    "SQLITE_FULL",
    "SQLITE_READONLY",
    "SQLITE_IOERR",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_CANTOPEN",
    "SQLITE_PERM",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "SQLITE_NOMEM",
)

_TASK_COLUMNS = (
    "id, name, source, spec, enabled, next_run_at, status, status_msg, status_percent, "
    "run_started_at, run_finished_at, run_canceled_at, state, version, last_execution_id, "
    "created_at, updated_at, created_by, updated_by, retired_at"
)
_EXECUTION_COLUMNS = (
    "id, task_id, trigger, trigger_metadata, slot_at, scheduled_for, queued_at, started_at, "
    "finished_at, status, status_msg, progress, size_todo, size_done, nodes_todo, nodes_done, "
    "bandwidth, dispatcher, attempt"
)


def _types_sql(param: str) -> str:
    """`,type1,type2,` of the objects in `task_params.<param>` (an object or an array)."""
    value = f"json_extract(spec, '$.task_params.{param}')"
    items = (
        f"CASE json_type(spec, '$.task_params.{param}') WHEN 'array' THEN {value}"
        f" WHEN 'object' THEN '[' || {value} || ']' ELSE '[]' END"
    )
    return (
        "(SELECT ',' || group_concat(DISTINCT json_extract(item.value, '$.type')) || ','"
        f" FROM json_each({items}) AS item WHERE item.type = 'object')"
    )


# The SQL behind each of model.TASK_QUERY_FIELDS.
_TASK_QUERY_SQL = {
    "id": "id",
    "name": "name",
    "status": "status",
    "source": "source",
    "next_run_at": "next_run_at",
    "created_at": "created_at",
    "updated_at": "updated_at",
    "task_module": "json_extract(spec, '$.task_module')",
    "workflow_type": "json_extract(spec, '$.workflow_type')",
    "workflow_action": "json_extract(spec, '$.workflow_action')",
    "priority": "coalesce(json_extract(spec, '$.options.priority'), 0)",
    "sources.type": _types_sql("sources"),
    "destinations.type": _types_sql("destination"),
}
_PROGRESS_FIELDS = ("progress", "size_todo", "size_done", "nodes_todo", "nodes_done", "bandwidth")


def _micros(instant: datetime | None) -> int | None:
    return None if instant is None else to_micros(instant)


def _instant(micros: int | None) -> datetime | None:
    return None if micros is None else from_micros(micros)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


_TASK_WIDTH = len(_TASK_COLUMNS.split(","))
# A task and its last execution, in one row (`get_task_with_last_execution`).
_TASK_WITH_LAST_EXECUTION = (
    "SELECT "
    + ", ".join(f"t.{c.strip()}" for c in _TASK_COLUMNS.split(","))
    + ", "
    + ", ".join(f"e.{c.strip()}" for c in _EXECUTION_COLUMNS.split(","))
    + " FROM tasks t LEFT JOIN executions e ON e.id = t.last_execution_id WHERE t.id = ?"
)


def _open_loop_reader(path: Path) -> sqlite3.Connection:
    """The read-only connection whose reads run on the event loop (`_read_on_loop`)."""
    # Made in a worker thread, used by the loop's thread only: hence check_same_thread.
    conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA busy_timeout = 0")  # never wait on the loop: busy -> read thread
    return conn


def _task_from_row(row: Sequence[Any]) -> Task:
    return Task(
        id=row[0],
        name=row[1],
        source=TaskSource(row[2]),
        spec=json.loads(row[3]),
        enabled=bool(row[4]),
        next_run_at=_instant(row[5]),
        status=TaskStatus(row[6]),
        status_msg=row[7],
        status_percent=row[8],
        run_started_at=_instant(row[9]),
        run_finished_at=_instant(row[10]),
        run_canceled_at=_instant(row[11]),
        state=None if row[12] is None else json.loads(row[12]),
        version=row[13],
        last_execution_id=row[14],
        created_at=from_micros(row[15]),
        updated_at=from_micros(row[16]),
        created_by=row[17],
        updated_by=row[18],
        retired_at=_instant(row[19]),
    )


def _execution_from_row(row: Sequence[Any]) -> Execution:
    return Execution(
        id=row[0],
        task_id=row[1],
        trigger=TriggerKind(row[2]),
        trigger_metadata=json.loads(row[3]) if row[3] else {},
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
    )


def _unavailable(error: BaseException) -> StoreUnavailableError | None:
    """The `StoreUnavailableError` an error of the database means, or None (a bug, or a
    refusal such as a conflict)."""
    if isinstance(error, StoreUnavailableError):
        return error
    if isinstance(error, sqlite3.Error) and not isinstance(error, sqlite3.IntegrityError):
        name = getattr(error, "sqlite_errorname", None) or ""
        if name.startswith(_UNAVAILABLE_CODES):
            return StoreUnavailableError(str(error))
    return None


@dataclass(slots=True)
class _Write:
    apply: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any] | None
    probe: bool = False  # an empty write (flush, ping): proves nothing about free space
    log_bytes: int = -1  # a log entry's text size; -1: not a log entry
    # Set under `_Write.gate` by the database thread as it begins the write (`begun`), or by
    # the loop when the caller stopped waiting before that (`withdrawn`): never both.
    begun: bool = False
    withdrawn: bool = False

    # One lock for every write's flags: held for a flag test and set, never across I/O.
    gate: ClassVar[threading.Lock] = threading.Lock()


# Log entries waiting to be committed: above either high-water mark `log_full` is True (the
# shell module stops reading its pipes); below both low-water marks (half) it is False again.
LOG_BACKLOG_ENTRIES = 8192
LOG_BACKLOG_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class _ExecutionLog:
    """What the event loop keeps of one execution's log between its head and its ending.

    The first `head` entries go straight to the write queue; later ones go to `tail`, a
    ring of the latest ones; what falls out of the ring is only counted (`left_out`).
    """

    task_id: int
    head_left: int
    tail: deque[tuple[str, str, datetime, float | None]]
    left_out: int = 0


class SqliteStore:
    """The `Store` contract (`taskd.store.base`) over one SQLite file.

    Use `async with SqliteStore.open(path) as store:` (or `taskd.store.open_store`). Each
    method's contract is in the Protocol's docstrings; what is said here is how SQLite keeps
    it. Every write is a function run on the database thread inside a batch transaction.
    """

    def __init__(
        self,
        conn: aiosqlite.Connection,
        *,
        history_per_task: int,
        log_entries_per_execution: int,
        read_timeout_sec: float = READ_TIMEOUT_SEC,
        log_backlog_entries: int = LOG_BACKLOG_ENTRIES,
        log_backlog_bytes: int = LOG_BACKLOG_BYTES,
        write_timeout_sec: float = WRITE_TIMEOUT_SEC,
    ) -> None:
        self._conn = conn
        self._history = history_per_task
        self._log_cap = log_entries_per_execution
        self._read_timeout_sec = read_timeout_sec
        self._write_timeout_sec = write_timeout_sec
        # An execution's log: `_log_head` first entries, a marker line, `_log_tail` last ones
        # (at most `_log_cap` in all); the ring holds one more, so that a log of exactly
        # `_log_cap` entries is kept whole, without a marker.
        self._log_tail = (log_entries_per_execution - 1) // 2
        self._log_head = log_entries_per_execution - 1 - self._log_tail
        self._execution_logs: dict[int, _ExecutionLog] = {}
        self._log_high = (log_backlog_entries, log_backlog_bytes)
        self._log_pending_entries = 0  # submitted, not yet committed (or failed)
        self._log_pending_bytes = 0
        self._log_room = asyncio.Event()
        self._log_room.set()
        self._pending: list[_Write] = []
        # Failed `*_nowait` writes waiting for their retry (bounded by HELD_WRITES_MAX).
        self._held: list[_Write] = []
        self._held_delay = HELD_RETRY_FIRST_SEC
        self._held_retry_at = 0.0  # loop time
        # Why the last write failed, until a (non-empty) write succeeds.
        self._failure: str | None = None
        self.writes_dropped = 0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        # Owned by the database thread (touched inside batch functions; the write loop
        # only clears `_batch_log_idx` between batches).
        # Entries logged per execution, for the cap: initialised from the database on an
        # execution's first line in this process, then counted here. An execution is run
        # (and so logged for) by one process only, so the count stays exact when several
        # processes share the file; counting rows on every line would cost a scan of up to
        # `log_entries_per_execution` index entries per line, and per dropped line after.
        self._log_count: dict[int, int] = {}
        # A task's next log idx as read from the file, kept for the rest of one batch only
        # (cleared before each): the batch's transaction holds the write lock, so no other
        # writer can add lines in between, and a task's later lines in the same batch skip
        # the lookup.
        self._batch_log_idx: dict[int, int] = {}
        # Executions finished per task since its last prune. Only sets how often pruning
        # runs (see `_prune`); losing it, or another process keeping its own, changes how
        # often, never what is kept.
        self._finished_since_prune: dict[int, int] = {}
        self.batches_written = 0
        self.last_batch_seconds = 0.0
        # Called after each batch with its duration (seconds) and size (writes).
        self.on_batch: Callable[[float, int], None] | None = None

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: Path,
        *,
        history_per_task: int = 100,
        log_entries_per_execution: int = 1000,
        read_timeout_sec: float = READ_TIMEOUT_SEC,
        log_backlog_entries: int = LOG_BACKLOG_ENTRIES,
        write_timeout_sec: float = WRITE_TIMEOUT_SEC,
    ) -> AsyncIterator[SqliteStore]:
        """Open (creating directories and file, migrating if needed) the database at `path`.

        Raises RuntimeError for a file of a newer schema version (left unchanged),
        StoreUnavailableError (naming the path and the reason) if the directory cannot be
        created or the database cannot be opened, written or read. Closing commits pending
        `*_nowait` writes (the tails of executions still logging included).
        """
        conn = await _connect(path)
        try:
            store = cls(
                conn,
                history_per_task=history_per_task,
                log_entries_per_execution=log_entries_per_execution,
                read_timeout_sec=read_timeout_sec,
                log_backlog_entries=log_backlog_entries,
                write_timeout_sec=write_timeout_sec,
            )
            # The API's reads (`separate_reads`) go through their own read-only connection,
            # on its own thread: WAL lets it read while the writer commits, so they never
            # wait for a batch, and the engine's reads never wait behind them.
            reader = await aiosqlite.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            # ... and their single-row reads by primary key run on the event loop itself,
            # through a third read-only connection (`_read_on_loop`).
            loop_reader = await asyncio.to_thread(_open_loop_reader, path)
            try:
                await reader.execute("PRAGMA busy_timeout = 5000")
                store._reader = reader
                store._loop_reader = loop_reader
                store._writer = asyncio.create_task(store._write_loop(), name="taskd-store-writer")
                try:
                    yield store
                finally:
                    await store._close()
            finally:
                store._loop_reader = None
                loop_reader.close()
                await reader.close()
        finally:
            await conn.close()

    # -- group commit -------------------------------------------------------------------

    async def _submit(self, apply: Callable[[sqlite3.Connection], T], *, probe: bool = False) -> T:
        if self._closing:
            raise RuntimeError("store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        write = _Write(apply, future, probe)
        self._pending.append(write)
        self._wake.set()
        try:
            async with asyncio.timeout(self._write_timeout_sec):
                return await future
        except TimeoutError:
            raise self._overdue(write) from None

    def _overdue(self, write: _Write) -> StoreUnavailableError:
        """The error of an awaited write that got no answer in time (a frozen file system).

        A write the database thread has not begun is withdrawn: it will not run, so it
        changed nothing and may be tried again. One it has begun cannot be taken back: it
        stays in its transaction, which commits or rolls back when the file system answers
        (not acknowledged either way; the message says so). The failure is remembered, so
        health reports it until a write succeeds.
        """
        with _Write.gate:
            if not write.begun:
                write.withdrawn = True
        if write.withdrawn:
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
        self, apply: Callable[[sqlite3.Connection], Any], log_bytes: int = -1
    ) -> None:
        if self._closing:
            return
        self._pending.append(_Write(apply, None, log_bytes=log_bytes))
        if log_bytes >= 0:
            self._log_pending_entries += 1
            self._log_pending_bytes += log_bytes
            entries, size = self._log_high
            if self._log_pending_entries > entries or self._log_pending_bytes > size:
                self._log_room.clear()
        self._wake.set()

    def _log_committed(self, batch: Sequence[_Write]) -> None:
        """Take a written batch's log entries off the backlog; open up below half the bound."""
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
        """Return once everything submitted before this call has been committed.

        An empty write joins the queue behind them: batches commit in order, so when it
        is acknowledged, so is everything ahead of it (later writes do not delay it).
        Failed `*_nowait` writes held for a retry are not waited for.
        """
        await self._submit(lambda cx: None, probe=True)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._held and not self._closing:
                # Held writes wait for their retry time, or for the next write.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(self._held_retry_at):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            # Held writes go first, with every batch (and alone when their retry time
            # comes): log lines keep their order, and a write that succeeds proves space
            # for them too.
            batch, self._held, self._pending = [*self._held, *self._pending], [], []
            if not batch:
                if self._closing:
                    return
                continue
            started = loop.time()
            self._batch_log_idx.clear()  # the database thread is idle between batches
            try:
                # One trip to the database thread per batch: aiosqlite has no public call for
                # running a function there, and a trip per statement would cap throughput.
                results = await self._conn._execute(  # type: ignore[no-untyped-call]
                    _apply_batch, self._conn._conn, batch
                )
            except Exception as error:  # the commit itself failed: nothing in it is durable
                results = [error] * len(batch)
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

    def _settle(self, batch: list[_Write], results: list[Any], now: float) -> None:
        """Hand each write its result; hold failed `*_nowait` writes; track the failure."""
        failure: StoreUnavailableError | None = None
        succeeded = False
        for write, result in zip(batch, results, strict=True):
            if result is _WITHDRAWN:
                continue
            if isinstance(result, BaseException):
                unavailable = _unavailable(result)
                if unavailable is not None:
                    failure, result = unavailable, unavailable
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
        # Its log entry left the backlog count with the batch that failed: held writes have
        # their own bound (HELD_WRITES_MAX), and a retry must not count it off again.
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

        An empty write may commit on a full disk: while a failure is remembered (see
        `failure`), a probe that needs room is written instead (`_probe_room`); if it
        commits the failure is forgotten, so health recovers on an idle daemon, else that
        failure is raised as StoreUnavailableError.
        """
        if self._failure is None:
            await self._submit(lambda cx: None, probe=True)
        else:
            with contextlib.suppress(StoreUnavailableError):
                await self._submit(_probe_room)
        if self._failure is not None:
            raise StoreUnavailableError(self._failure)

    async def _close(self) -> None:
        for execution_id in list(self._execution_logs):
            self._write_tail(execution_id)
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer

    _reader: aiosqlite.Connection | None = None  # set by `open`
    _loop_reader: sqlite3.Connection | None = None  # set by `open`

    def _read_on_loop(self, sql: str, params: Sequence[Any]) -> list[Any] | None:
        """The rows of a read by primary key, read right here on the event loop inside
        `separate_reads()`, or None (the caller reads through `_read` then).

        A trip to a read thread costs about 30 times what such a read costs (tens of µs of
        CPU and, under load, a queue behind other reads), so the API's single-task reads
        go through their own read-only connection on the loop: in WAL mode a reader neither
        waits for the writer nor holds it up, and the connection never waits for a lock
        (`busy_timeout` 0): when SQLite says busy (a checkpoint resetting the log), the
        read goes to the read thread instead. Only for reads of one row by an index.
        """
        if self._loop_reader is None or not reads_separately():
            return None
        try:
            return self._loop_reader.execute(sql, params).fetchall()
        except sqlite3.OperationalError as error:
            name = getattr(error, "sqlite_errorname", None) or ""
            if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                return None
            unavailable = _unavailable(error)
            if unavailable is None:
                raise
            raise unavailable from error

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        reader = self._reader if reads_separately() and self._reader is not None else None
        try:
            async with asyncio.timeout(self._read_timeout_sec):
                rows = await (reader or self._conn).execute_fetchall(sql, params)
        except TimeoutError:
            raise StoreUnavailableError(
                f"no answer from the database within {self._read_timeout_sec:g} s"
            ) from None
        except sqlite3.Error as error:
            unavailable = _unavailable(error)
            if unavailable is None:
                raise
            raise unavailable from error
        return rows if isinstance(rows, list) else list(rows)

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

        def apply(cx: sqlite3.Connection) -> int:
            return _insert_task(cx, source, definition, now_us, by)

        task_id = await self._submit(apply)
        return await self.get_task(task_id)

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
        """Replace a task's definition and bump its version.

        With `expected_version`, the write applies only if the stored version equals it
        (ConflictError otherwise). Raises NotFoundError for an unknown id.
        """

        def apply(cx: sqlite3.Connection) -> None:
            row = cx.execute("SELECT version FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"task {task_id} not found")
            if expected_version is not None and row[0] != expected_version:
                raise ConflictError(
                    f"task {task_id} is at version {row[0]}, not {expected_version}"
                )
            try:
                cx.execute(
                    "UPDATE tasks SET spec = ?, enabled = ?, next_run_at = ?, updated_at = ?,"
                    " updated_by = ?, name = coalesce(?, name), version = version + 1,"
                    " retired_at = NULL WHERE id = ?",
                    (_json(spec), enabled, _micros(next_run_at), to_micros(now), by, name, task_id),
                )
            except sqlite3.IntegrityError as error:
                raise ConflictError(f"a task named {name!r} exists already") from error

        await self._submit(apply)
        return await self.get_task(task_id)

    async def write_tasks(
        self, writes: Sequence[TaskInsert | TaskUpdate], *, now: datetime, by: str | None = None
    ) -> list[Task]:
        """Insert and update tasks in one write function: its savepoint makes them atomic,
        and an update's `build` sees the row as it is inside the transaction."""
        now_us = to_micros(now)

        def apply(cx: sqlite3.Connection) -> list[Task]:
            ids = []
            for write in writes:
                if isinstance(write, TaskInsert):
                    ids.append(_insert_task(cx, write.source, write.definition, now_us, by))
                    continue
                row = cx.execute(
                    f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?", (write.task_id,)
                ).fetchone()
                if row is None:
                    raise NotFoundError(f"task {write.task_id} not found")
                definition = write.build(_task_from_row(row))
                if definition is not None:
                    _update_task(cx, write.task_id, definition, now_us, by)
                ids.append(write.task_id)
            return [
                _task_from_row(
                    cx.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?", (i,)).fetchone()
                )
                for i in ids
            ]

        return await self._submit(apply)

    async def retire_task(self, task_id: int, *, now: datetime, by: str | None = None) -> Task:
        """Retire a task: disabled, no due time, `retired_at` set, version + 1."""
        now_us = to_micros(now)

        def apply(cx: sqlite3.Connection) -> None:
            if not cx.execute(
                "UPDATE tasks SET retired_at = coalesce(retired_at, ?), enabled = 0,"
                " next_run_at = NULL, updated_at = ?, updated_by = ?, version = version + 1"
                " WHERE id = ?",
                (now_us, now_us, by, task_id),
            ).rowcount:
                raise NotFoundError(f"task {task_id} not found")

        await self._submit(apply)
        return await self.get_task(task_id)

    async def set_next_run_at(self, task_id: int, next_run_at: datetime | None) -> None:
        """Set a task's next due time (without a version bump: the server's own update)."""

        def apply(cx: sqlite3.Connection) -> None:
            cx.execute(
                "UPDATE tasks SET next_run_at = ? WHERE id = ?", (_micros(next_run_at), task_id)
            )

        await self._submit(apply)

    async def delete_task(self, task_id: int) -> None:
        """Delete a task with its executions, log and deferred runs. NotFoundError if absent."""
        for execution_id, log in list(self._execution_logs.items()):
            if log.task_id == task_id:  # its tail has nowhere to go
                del self._execution_logs[execution_id]

        def apply(cx: sqlite3.Connection) -> None:
            if cx.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount == 0:
                raise NotFoundError(f"task {task_id} not found")
            self._batch_log_idx.pop(task_id, None)
            self._finished_since_prune.pop(task_id, None)

        await self._submit(apply)

    async def get_task(self, task_id: int) -> Task:
        """Return the task with id `task_id`; NotFoundError if there is none."""
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?"
        rows = self._read_on_loop(sql, (task_id,))
        if rows is None:
            rows = await self._read(sql, (task_id,))
        if not rows:
            raise NotFoundError(f"task {task_id} not found")
        return _task_from_row(rows[0])

    async def get_tasks(self, task_ids: Sequence[int]) -> dict[int, Task]:
        """Return the tasks among `task_ids` that exist, by id (one query per 500 ids)."""
        found: dict[int, Task] = {}
        ids = list(task_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._read(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id IN ({marks})", chunk
            )
            for row in rows:
                task = _task_from_row(row)
                found[task.id] = task
        return found

    async def get_task_with_last_execution(
        self, task_id: int
    ) -> tuple[Task, Execution | None] | None:
        """Return a task and its last execution in one query, or None if there is no task."""
        rows = self._read_on_loop(_TASK_WITH_LAST_EXECUTION, (task_id,))
        if rows is None:
            rows = await self._read(_TASK_WITH_LAST_EXECUTION, (task_id,))
        if not rows:
            return None
        row = rows[0]
        last = None if row[_TASK_WIDTH] is None else _execution_from_row(row[_TASK_WIDTH:])
        return _task_from_row(row[:_TASK_WIDTH]), last

    async def find_task(self, name: str) -> Task | None:
        """Return the task called `name`, or None."""
        rows = await self._read(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE name = ?", (name,))
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
        """Return one page of tasks and the total count matching all conditions
        (-1 without `with_total`, which saves the count query); with `owner`, only its own
        API tasks (`created_by`) and the config tasks.

        `where` holds (field, operator, value) with a field of `TASK_QUERY_FIELDS` and an
        operator of `=`, `!=`, `<`, `<=`, `>`, `>=`, `in` (value a list) or `like`;
        `order` holds (field, descending). Times are compared as datetimes. Raises
        ValueError for an unknown field or operator (the API validates before).
        """
        for name in (*(name for name, _, _ in where), *(name for name, _ in order)):
            if name not in _TASK_QUERY_SQL:
                raise ValueError(f"unknown task field {name!r}")
        clauses, params = [], []
        for name, operator, value in where:
            column = _TASK_QUERY_SQL[name]
            if operator == "in":
                clauses.append(f"{column} IN ({','.join('?' * len(value))})")
                params.extend(value)
                continue
            if operator not in {"=", "!=", "<", "<=", ">", ">=", "like"}:
                raise ValueError(f"unknown operator {operator!r}")
            clauses.append(f"{column} {operator.upper()} ?")
            params.append(to_micros(value) if isinstance(value, datetime) else value)
        if owner is not None:
            # Both sides have an index (tasks_owner, tasks_source): SQLite unions them.
            clauses.append("(created_by = ? AND source = 'api' OR source = 'config')")
            params.append(owner)
        where_sql = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # Empty values sort after the others ascending, before them descending: the
        # contract's rule (PostgreSQL's own), so a list by next run starts with what is due.
        order_sql = ", ".join(
            f"{_TASK_QUERY_SQL[name]} IS NULL {'DESC' if descending else 'ASC'}, "
            f"{_TASK_QUERY_SQL[name]} {'DESC' if descending else 'ASC'}"
            for name, descending in order
        )
        order_sql = f"ORDER BY {order_sql + ', ' if order_sql else ''}id"
        rows = await self._read(
            f"SELECT {_TASK_COLUMNS} FROM tasks {where_sql} {order_sql} LIMIT ? OFFSET ?",
            [*params, -1 if limit is None else limit, offset],
        )
        tasks = [_task_from_row(row) for row in rows]
        if not with_total:
            return tasks, -1
        total = (await self._read(f"SELECT count(*) FROM tasks {where_sql}", params))[0][0]
        return tasks, int(total)

    async def get_executions(self, execution_ids: Sequence[int]) -> dict[int, Execution]:
        """Return the executions among `execution_ids` that exist, by id."""
        found: dict[int, Execution] = {}
        ids = list(execution_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._read(
                f"SELECT {_EXECUTION_COLUMNS} FROM executions"
                f" WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for row in rows:
                found[row[0]] = _execution_from_row(row)
        return found

    async def due_index(self) -> list[tuple[int, int]]:
        """Return (next_run_at in microseconds, task id) of every enabled, scheduled task."""
        # The rows are (next_run_at, id) tuples already: no copy of a million-entry list.
        return await self._read(
            "SELECT next_run_at, id FROM tasks WHERE next_run_at IS NOT NULL AND enabled"
        )

    async def due_entry(self, task_id: int) -> tuple[int, int] | None:
        """Return (next_run_at in microseconds, id) of one task if it is enabled and due."""
        rows = await self._read(
            "SELECT next_run_at, id FROM tasks WHERE id = ? AND next_run_at IS NOT NULL"
            " AND enabled",
            (task_id,),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def count_tasks(self) -> int:
        """Return how many tasks are stored."""
        return int((await self._read("SELECT count(*) FROM tasks"))[0][0])

    # -- slots and executions -------------------------------------------------------------

    async def claim(self, claims: Sequence[SlotClaim], now: datetime) -> list[ClaimResult]:
        """Apply slot claims in one transaction; see `SlotClaim`. Returns one result each."""
        now_us = to_micros(now)

        def apply(cx: sqlite3.Connection) -> list[ClaimResult]:
            results = []
            for claim in claims:
                row = cx.execute(
                    "SELECT next_run_at FROM tasks WHERE id = ?", (claim.task_id,)
                ).fetchone()
                if row is None or row[0] != _micros(claim.expected_next_run_at):
                    results.append(ClaimResult(False))
                    continue
                cx.execute(
                    "UPDATE tasks SET next_run_at = ? WHERE id = ?",
                    (_micros(claim.next_run_at), claim.task_id),
                )
                ids = tuple(_insert_execution(cx, new, now_us) for new in claim.executions)
                for new in claim.executions:
                    if new.status is ExecutionStatus.SKIPPED:
                        self._prune(cx, claim.task_id)  # skipped rows count as history too
                queued = [
                    i
                    for i, new in zip(ids, claim.executions, strict=True)
                    if i is not None and new.status is ExecutionStatus.QUEUED
                ]
                if queued:
                    _mark_task_queued(cx, claim.task_id)
                results.append(ClaimResult(True, ids))
            return results

        return await self._submit(apply)

    async def add_executions(
        self, executions: Sequence[NewExecution], now: datetime
    ) -> list[int | None]:
        """Insert execution rows (manual runs, retries, skipped slots) in one transaction.

        Queued rows make their task `queued`. Returns the ids (None for a slot already
        accounted for). Raises NotFoundError if a task does not exist.
        """
        now_us = to_micros(now)

        def apply(cx: sqlite3.Connection) -> list[int | None]:
            ids = []
            for new in executions:
                try:
                    execution_id = _insert_execution(cx, new, now_us)
                except sqlite3.IntegrityError as error:
                    raise NotFoundError(f"task {new.task_id} not found") from error
                if execution_id is not None and new.status is ExecutionStatus.QUEUED:
                    _mark_task_queued(cx, new.task_id)
                ids.append(execution_id)
            return ids

        return await self._submit(apply)

    async def mark_started_many(
        self, started: Sequence[tuple[int, int]], started_at: datetime, dispatcher: str
    ) -> None:
        """Record that executions (execution id, task id) start now, in one write.

        Executions and their tasks become `running`; the task's last run times reset.
        """
        if not started:
            return
        at = to_micros(started_at)

        def apply(cx: sqlite3.Connection) -> None:
            # Only a queued execution starts: an ended one stays as it ended.
            cx.executemany(
                "UPDATE executions SET status = 'running', started_at = ?, dispatcher = ?"
                " WHERE id = ? AND status = 'queued'",
                [(at, dispatcher, execution_id) for execution_id, _ in started],
            )
            cx.executemany(
                "UPDATE tasks SET status = 'running', status_msg = NULL,"
                " status_percent = NULL, run_started_at = ?, run_finished_at = NULL,"
                " run_canceled_at = NULL, last_execution_id = ? WHERE id = ? AND EXISTS"
                " (SELECT 1 FROM executions WHERE id = ? AND status = 'running'"
                " AND started_at = ?)",
                [
                    (at, execution_id, task_id, execution_id, at)
                    for execution_id, task_id in started
                ],
            )

        await self._submit(apply)

    async def unstart_many(self, started: Sequence[tuple[int, int]]) -> None:
        """Return starts committed ahead that did not happen to `queued`, in one write."""
        if not started:
            return

        def apply(cx: sqlite3.Connection) -> None:
            _unstart(cx, started)

        await self._submit(apply)

    def set_running_status_nowait(
        self, execution_id: int, task_id: int, status: ExecutionStatus
    ) -> None:
        """Record a pause or resume (`paused` / `running`) with the next batch."""

        def apply(cx: sqlite3.Connection) -> None:
            changed = cx.execute(
                "UPDATE executions SET status = ? WHERE id = ? AND status IN ('running', 'paused')",
                (status, execution_id),
            ).rowcount
            if changed:  # a pause that comes after the end changes nothing
                cx.execute(
                    "UPDATE tasks SET status = ? WHERE id = ? AND last_execution_id = ?",
                    (status, task_id, execution_id),
                )

        self._submit_nowait(apply)

    def progress_nowait(self, execution_id: int, task_id: int, fields: Mapping[str, Any]) -> None:
        """Record progress fields (`progress` is the percent) with the next batch."""
        columns = [name for name in _PROGRESS_FIELDS if name in fields]
        if not columns:
            return
        assignments = ", ".join(f"{name} = ?" for name in columns)
        values = [fields[name] for name in columns]
        percent = fields.get("progress")

        def apply(cx: sqlite3.Connection) -> None:
            cx.execute(f"UPDATE executions SET {assignments} WHERE id = ?", (*values, execution_id))
            if percent is not None:
                cx.execute(
                    "UPDATE tasks SET status_percent = ? WHERE id = ? AND last_execution_id = ?",
                    (percent, task_id, execution_id),
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
        """Queue a log entry; an execution's past its head wait in its tail ring (memory).

        See the Protocol: the head goes to the write queue, the tail is written by `finish`.
        """
        if execution_id is None:
            self._queue_log(task_id, None, level, msg, at, status_percent)
            return
        log = self._execution_logs.get(execution_id)
        if log is None:
            log = _ExecutionLog(task_id, self._log_head, deque(maxlen=self._log_tail + 1))
            self._execution_logs[execution_id] = log
        if log.head_left > 0:
            log.head_left -= 1
            self._queue_log(task_id, execution_id, level, msg, at, status_percent)
            return
        if len(log.tail) == log.tail.maxlen:
            log.left_out += 1
        log.tail.append((level, msg, at, status_percent))

    def log_keeps_last(self, execution_id: int) -> int | None:
        """The ring's size once the execution's head is full, else None (see the Protocol)."""
        log = self._execution_logs.get(execution_id)
        if log is None or log.head_left > 0:
            return None
        return log.tail.maxlen

    def log_left_out_nowait(self, execution_id: int, count: int) -> None:
        """Count entries of the execution as left out without their text (see the Protocol)."""
        log = self._execution_logs.get(execution_id)
        if log is not None and log.head_left == 0 and count > 0:
            log.left_out += count

    def _tail_entries(
        self, execution_id: int
    ) -> tuple[int, list[tuple[str, str, datetime, float | None]]]:
        """Take an execution's tail: (task id, the marker if lines were left out + the tail)."""
        log = self._execution_logs.pop(execution_id, None)
        if log is None:
            return 0, []
        entries = list(log.tail)
        if log.left_out:
            # The ring holds one more than the tail: that one is left out too.
            _, _, when, percent = entries.pop(0)
            left_out = log.left_out + 1
            plural = "line" if left_out == 1 else "lines"
            entries.insert(0, ("warning", f"... {left_out} {plural} left out ...", when, percent))
        return log.task_id, entries

    def _write_tail(self, execution_id: int) -> None:
        """Queue an execution's tail at once (closing, recovery: nothing waits for room)."""
        task_id, entries = self._tail_entries(execution_id)
        for level, msg, at, percent in entries:
            self._queue_log(task_id, execution_id, level, msg, at, percent)

    async def _write_tail_within_bound(self, execution_id: int) -> None:
        """Queue an execution's tail, waiting for room whenever the backlog is full."""
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
        at_us = to_micros(at)

        def apply(cx: sqlite3.Connection) -> None:
            if execution_id is not None:
                count = self._log_count.get(execution_id)
                if count is None:
                    row = cx.execute(
                        "SELECT count(*) FROM log_entries WHERE execution_id = ?",
                        (execution_id,),
                    ).fetchone()
                    count = int(row[0])
                # The head and tail rule keeps a run within the cap; this guards the rest
                # (an execution that went on logging after the store was reopened).
                if count >= self._log_cap:
                    return
                self._log_count[execution_id] = count + 1
            idx = self._batch_log_idx.get(task_id)
            if idx is None:
                # From the file, inside the write transaction: one seek on the (task_id, idx)
                # key, and right whichever process wrote the task's previous line.
                row = cx.execute(
                    "SELECT coalesce(max(idx) + 1, 0) FROM log_entries WHERE task_id = ?",
                    (task_id,),
                ).fetchone()
                idx = int(row[0])
            try:
                cx.execute(
                    "INSERT INTO log_entries (task_id, idx, execution_id, level, msg,"
                    " status_percent, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (task_id, idx, execution_id, level, msg, status_percent, at_us),
                )
            except sqlite3.IntegrityError:
                return  # the task or execution was deleted meanwhile
            self._batch_log_idx[task_id] = idx + 1

        self._submit_nowait(apply, len(msg))

    async def save_state(self, task_id: int, state: Mapping[str, Any] | None) -> None:
        """Store a task's module state (JSON) for a later resume."""

        def apply(cx: sqlite3.Connection) -> None:
            cx.execute("UPDATE tasks SET state = ? WHERE id = ?", (_json(state), task_id))

        await self._submit(apply)

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

        def apply(cx: sqlite3.Connection) -> None:
            if not cx.execute(
                "UPDATE executions SET status = ?, status_msg = ?, finished_at = ? WHERE id = ?"
                " AND status IN ('queued', 'running', 'paused')",
                (status, status_msg, at, execution_id),
            ).rowcount:
                return  # unknown, or ended already: an ending is recorded once
            self._log_count.pop(execution_id, None)
            if status is ExecutionStatus.SKIPPED:
                # A skipped slot never ran: the task keeps the status of its last run.
                cx.execute(
                    "UPDATE tasks SET status = coalesce((SELECT status FROM executions"
                    " WHERE id = tasks.last_execution_id), 'new') WHERE id = ?"
                    " AND status = 'queued' AND NOT EXISTS (SELECT 1 FROM executions"
                    " WHERE task_id = ? AND status = 'queued' AND id != ?)",
                    (task_id, task_id, execution_id),
                )
                self._prune(cx, task_id)
                return
            # The task shows how its latest run ended, unless a newer one is running.
            cx.execute(
                "UPDATE tasks SET status = ?, status_msg = ?, run_finished_at = ?,"
                " run_canceled_at = ?, status_percent = CASE WHEN ? = 'done' THEN 100"
                " ELSE status_percent END, last_execution_id = ? WHERE id = ? AND"
                " (last_execution_id IS NULL OR last_execution_id <= ?"
                "  OR status NOT IN ('running', 'paused'))",
                (status, status_msg, at, canceled_at, status, execution_id, task_id, execution_id),
            )
            self._prune(cx, task_id)

        await self._submit(apply)

    def _prune(self, cx: sqlite3.Connection, task_id: int) -> None:
        """Keep the newest `history_per_task` executions of a task (their logs go with them).

        Runs once per tenth of the history finished, not after every execution: the bound
        is kept within 10%, and a busy task does not pay a delete per run.
        """
        count = self._finished_since_prune.get(task_id, 0) + 1
        if count < max(1, self._history // 10):
            self._finished_since_prune[task_id] = count
            return
        self._finished_since_prune[task_id] = 0
        row = cx.execute(
            "SELECT id FROM executions WHERE task_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
            (task_id, self._history - 1),
        ).fetchone()
        if row is not None:
            cx.execute(
                "DELETE FROM executions WHERE task_id = ? AND id < ? AND status NOT IN"
                " ('queued', 'running', 'paused')",
                (task_id, row[0]),
            )

    async def record_process_group(self, execution_id: int, pgid: int, start: str) -> None:
        """Record the process group of a running or paused execution (see the Protocol)."""

        def apply(cx: sqlite3.Connection) -> None:
            cx.execute(
                "UPDATE executions SET process_group = ?, process_start = ? WHERE id = ?"
                " AND status IN ('running', 'paused')",
                (pgid, start, execution_id),
            )

        await self._submit(apply)

    async def interrupted_process_groups(self) -> list[tuple[int, int, int, str]]:
        """(execution id, task id, pgid, start) of running or paused executions, by id."""
        rows = await self._read(
            "SELECT id, task_id, process_group, process_start FROM executions"
            " WHERE status IN ('running', 'paused') AND process_group IS NOT NULL ORDER BY id"
        )
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    async def recover_interrupted(self, now: datetime) -> list[Execution]:
        """Mark executions a dead process left `running` or `paused` as `error`, "interrupted".

        Returns them as they are now (for the retry policy).
        """
        at = to_micros(now)

        def apply(cx: sqlite3.Connection) -> list[Execution]:
            # Committed ahead, never started: claimed again at its time.
            ahead = cx.execute(
                "SELECT id, task_id FROM executions WHERE status = 'running' AND started_at > ?",
                (at,),
            ).fetchall()
            _unstart(cx, ahead)
            rows = cx.execute(
                f"SELECT {_EXECUTION_COLUMNS} FROM executions"
                " WHERE status IN ('running', 'paused') ORDER BY id"
            ).fetchall()
            for row in rows:
                cx.execute(
                    "UPDATE executions SET status = 'error', status_msg = 'interrupted',"
                    " finished_at = ? WHERE id = ?",
                    (at, row[0]),
                )
                cx.execute(
                    "UPDATE tasks SET status = 'error', status_msg = 'interrupted',"
                    " run_finished_at = ? WHERE id = ? AND last_execution_id = ?",
                    (at, row[1], row[0]),
                )
            return [
                _execution_from_row((*row[:8], at, ExecutionStatus.ERROR, "interrupted", *row[11:]))
                for row in rows
            ]

        recovered = await self._submit(apply)
        for execution in recovered:  # lines logged for it since (recovery's own) are kept
            self._write_tail(execution.id)
        return recovered

    async def queued_executions(self) -> list[Execution]:
        """Return executions waiting to start, oldest first."""
        rows = await self._read(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE status = 'queued' ORDER BY id"
        )
        return [_execution_from_row(row) for row in rows]

    async def get_execution(self, execution_id: int) -> Execution:
        """Return one execution; NotFoundError if there is none."""
        rows = await self._read(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE id = ?", (execution_id,)
        )
        if not rows:
            raise NotFoundError(f"execution {execution_id} not found")
        return _execution_from_row(rows[0])

    async def list_executions(
        self, task_id: int, *, limit: int = 50, offset: int = 0
    ) -> list[Execution]:
        """Return a task's executions, newest first."""
        rows = await self._read(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE task_id = ?"
            " ORDER BY id DESC LIMIT ? OFFSET ?",
            (task_id, limit, offset),
        )
        return [_execution_from_row(row) for row in rows]

    async def read_log(
        self,
        task_id: int,
        *,
        offset: int = 0,
        limit: int = 100,
        execution_id: int | None = None,
    ) -> list[LogEntry]:
        """Return a task's log entries from index `offset` on, oldest first."""
        where, params = "task_id = ? AND idx >= ?", [task_id, offset]
        if execution_id is not None:
            where += " AND execution_id = ?"
            params.append(execution_id)
        rows = await self._read(
            "SELECT task_id, idx, execution_id, level, msg, status_percent, timestamp"
            f" FROM log_entries WHERE {where} ORDER BY idx LIMIT ?",
            [*params, limit],
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

        def apply(cx: sqlite3.Connection) -> None:
            try:
                cx.execute(
                    "INSERT INTO deferred_runs (defer_id, task_id, metadata, created_at,"
                    " expires_at) VALUES (?, ?, ?, ?, ?)",
                    (
                        defer_id,
                        task_id,
                        _json(dict(metadata)),
                        to_micros(now),
                        to_micros(expires_at),
                    ),
                )
            except sqlite3.IntegrityError as error:
                raise NotFoundError(f"task {task_id} not found") from error

        await self._submit(apply)
        return defer_id

    async def use_defer(self, defer_id: str, now: datetime) -> tuple[int, dict[str, Any]]:
        """Mark a deferred run used and return (task id, metadata); once only.

        Raises DeferError if the id is unknown, used or expired.
        """
        now_us = to_micros(now)

        def apply(cx: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
            row = cx.execute(
                "SELECT task_id, metadata, expires_at, used_at FROM deferred_runs"
                " WHERE defer_id = ?",
                (defer_id,),
            ).fetchone()
            if row is None:
                raise DeferError(f"unknown defer_id {defer_id!r}")
            if row[3] is not None:
                raise DeferError(f"defer_id {defer_id!r} was used already")
            if row[2] <= now_us:
                raise DeferError(f"defer_id {defer_id!r} has expired")
            cx.execute(
                "UPDATE deferred_runs SET used_at = ? WHERE defer_id = ?", (now_us, defer_id)
            )
            return row[0], json.loads(row[1]) if row[1] else {}

        return await self._submit(apply)


def _try_open(path: Path) -> None:
    sqlite3.connect(path).close()


async def _connect(path: Path) -> aiosqlite.Connection:
    """Open and prepare (pragmas, migrations) the database at `path`.

    Raises StoreUnavailableError naming the path and the reason when that cannot be done.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreUnavailableError(
            f"cannot create the state directory {path.parent}: {error.strerror or error}"
        ) from error
    try:
        # Opened once in a plain thread first: aiosqlite leaves its thread behind when
        # its own connect fails, and that thread outlives the event loop.
        _create_private(path)
        await asyncio.to_thread(_try_open, path)
        conn = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
    except (sqlite3.Error, OSError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise StoreUnavailableError(f"cannot open the database {path}: {reason}") from error
    try:
        await check_version(conn)
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA busy_timeout = 5000")
        await migrate(conn)
    except BaseException as error:
        await conn.close()
        if isinstance(error, sqlite3.Error) and _unavailable(error) is not None:
            raise StoreUnavailableError(f"cannot use the database {path}: {error}") from error
        raise
    return conn


def _insert_task(
    cx: sqlite3.Connection,
    source: TaskSource,
    definition: Definition,
    now_us: int,
    by: str | None,
) -> int:
    try:
        cursor = cx.execute(
            "INSERT INTO tasks (name, source, spec, enabled, next_run_at, created_at,"
            " updated_at, created_by, updated_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                definition.name,
                source,
                _json(definition.spec),
                definition.enabled,
                _micros(definition.next_run_at),
                now_us,
                now_us,
                by,
                by,
            ),
        )
    except sqlite3.IntegrityError as error:
        raise ConflictError(f"a task named {definition.name!r} exists already") from error
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _update_task(
    cx: sqlite3.Connection, task_id: int, definition: Definition, now_us: int, by: str | None
) -> None:
    try:
        cx.execute(
            "UPDATE tasks SET spec = ?, enabled = ?, next_run_at = ?, updated_at = ?,"
            " updated_by = ?, name = ?, version = version + 1, retired_at = NULL WHERE id = ?",
            (
                _json(definition.spec),
                definition.enabled,
                _micros(definition.next_run_at),
                now_us,
                by,
                definition.name,
                task_id,
            ),
        )
    except sqlite3.IntegrityError as error:
        raise ConflictError(f"a task named {definition.name!r} exists already") from error


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (0600), whatever the umask.

    It holds task params (secrets among them): outside systemd (whose unit sets
    `UMask=0077`) the usual umask 022 would make it world-readable. SQLite gives its `-wal`
    and `-shm` files the database file's mode. An existing file is left as it is.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _mark_task_queued(cx: sqlite3.Connection, task_id: int) -> None:
    # A queued run does not hide a running one: the task shows its latest started execution.
    cx.execute(
        "UPDATE tasks SET status = 'queued' WHERE id = ? AND status NOT IN ('running', 'paused')",
        (task_id,),
    )


def _insert_execution(cx: sqlite3.Connection, new: NewExecution, now_us: int) -> int | None:
    cursor = cx.execute(
        "INSERT INTO executions (task_id, trigger, trigger_metadata, slot_at, scheduled_for,"
        " queued_at, status, status_msg, attempt, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?,"
        " ?, ?) ON CONFLICT (task_id, slot_at) WHERE slot_at IS NOT NULL DO NOTHING",
        (
            new.task_id,
            new.trigger,
            _json(dict(new.trigger_metadata)) if new.trigger_metadata else None,
            _micros(new.slot_at),
            _micros(new.scheduled_for),
            now_us,
            new.status,
            new.status_msg,
            new.attempt,
            now_us if new.status is ExecutionStatus.SKIPPED else None,
        ),
    )
    return cursor.lastrowid if cursor.rowcount == 1 else None


def _apply_batch(cx: sqlite3.Connection, batch: Iterable[_Write]) -> list[Any]:
    """Run a batch of writes in one transaction, each in its own savepoint (db thread)."""
    results: list[Any] = []
    cx.execute("BEGIN IMMEDIATE")
    try:
        for write in batch:
            with _Write.gate:
                if write.withdrawn:  # its caller stopped waiting (see SqliteStore._overdue)
                    results.append(_WITHDRAWN)
                    continue
                write.begun = True
            cx.execute("SAVEPOINT write")
            try:
                results.append(write.apply(cx))
            except Exception as error:
                if not cx.in_transaction:
                    raise  # SQLite rolled the whole transaction back (disk full, I/O error)
                cx.execute("ROLLBACK TO write")
                results.append(error)
            cx.execute("RELEASE write")
        cx.execute("COMMIT")
    except BaseException:
        if cx.in_transaction:
            cx.execute("ROLLBACK")
        raise
    return results


def _probe_room(cx: sqlite3.Connection) -> None:
    """A write that needs room (db thread): a header write, which must reach the log file
    (a read-only or frozen file system refuses or holds it), and a table of two pages
    allocated and rolled back (refused when the database cannot grow)."""
    cx.execute("SAVEPOINT probe")
    try:
        cx.execute("CREATE TABLE taskd_probe (pad BLOB)")
        page_size = int(cx.execute("PRAGMA page_size").fetchone()[0])
        cx.execute("INSERT INTO taskd_probe VALUES (zeroblob(?))", (2 * page_size,))
    finally:
        if cx.in_transaction:  # else SQLite rolled everything back itself (disk full)
            cx.execute("ROLLBACK TO probe")
            cx.execute("RELEASE probe")
    (application_id,) = cx.execute("PRAGMA application_id").fetchone()
    cx.execute(f"PRAGMA application_id = {int(application_id)}")


def _unstart(cx: sqlite3.Connection, started: Sequence[tuple[int, int]]) -> None:
    """Return `running` executions (id, task id) that never started to `queued`, their
    tasks too where they show them (see `Store.unstart_many`)."""
    # The task shows its run before this one again (as the claim left it), but `queued`.
    cx.executemany(
        "UPDATE tasks SET status = 'queued', last_execution_id = previous.id,"
        " status_msg = previous.status_msg, run_started_at = previous.started_at,"
        " run_finished_at = previous.finished_at, run_canceled_at = CASE WHEN"
        " previous.status = 'canceled' THEN previous.finished_at END"
        " FROM (SELECT max(id) AS last FROM executions WHERE task_id = ? AND id < ?"
        "  AND status NOT IN ('queued', 'skipped')) AS prior"
        " LEFT JOIN executions AS previous ON previous.id = prior.last"
        " WHERE tasks.id = ? AND tasks.last_execution_id = ? AND tasks.status = 'running'"
        " AND EXISTS (SELECT 1 FROM executions WHERE id = ? AND status = 'running')",
        [
            (task_id, execution_id, task_id, execution_id, execution_id)
            for execution_id, task_id in started
        ],
    )
    cx.executemany(
        "UPDATE executions SET status = 'queued', started_at = NULL, dispatcher = NULL"
        " WHERE id = ? AND status = 'running'",
        [(execution_id,) for execution_id, _ in started],
    )
