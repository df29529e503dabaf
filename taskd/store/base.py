"""The Store contract: everything durable taskd keeps, as one Protocol and its records.

Every storage backend (SQLite today, PostgreSQL later) implements `Store` and passes the one
contract suite in `tests/store/test_contract.py`. Nothing here names a storage technology:
the records are plain data, times are aware datetimes (returned in UTC), JSON values are
plain Python values.

Durability, for every implementation:

- An awaited method that changes data returns only after its change is committed: it
  survives a crash of the process (kill -9) from then on. If it raises, it changed nothing.
- A `*_nowait` method only queues its change: it is committed with the store's next write
  transaction, in submission order, and at the latest by the next `flush()` or when the
  store is closed. Its errors are never reported (the row it names is gone, say): they are
  best-effort records of a run (log lines, progress, pause state), not commands.
- Writes are applied in the order they were submitted (awaited and `*_nowait` alike).
- Each method's change is atomic: all of it is committed, or none of it.

Reads, for every implementation:

- A read sees every write whose awaitable has resolved (committed), never a partial one.
- Inside `separate_reads()` (and in the tasks started inside it), reads may go through a
  separate read-only connection: they then neither wait for the engine's write batches nor
  delay the engine's own reads. The API wraps each request in it, so load on the API cannot
  make a due start late. SQLite: a second, read-only connection on its own thread (WAL lets
  it read while the writer commits). A backend without one ignores it.

Errors: `NotFoundError` for an unknown task / execution id where the method says so,
`ConflictError` for a write refused by a uniqueness or version rule, `DeferError` for an
unusable defer id; `RuntimeError` for an awaited write after the store was closed (a
`*_nowait` one is dropped then). `StoreUnavailableError` (with the backend's reason) when the
store cannot do the work now: the disk is full, the file system is read-only or frozen, the
server is gone; a read that gets no answer within the store's read timeout raises it too.
An awaited write that raised it changed nothing and may be tried again, with one exception:
an awaited write gets no answer within the store's write timeout (a frozen file system):
it raises StoreUnavailableError then, whose reason ends in "nothing was written" if the
store had not begun it (it is withdrawn and never runs), or in "may still be recorded" if
it had (it stays in its transaction, which commits or rolls back when the storage answers;
it was not acknowledged, so a client retrying it meets the usual rules: a name taken, a
version moved on). Either way the timeout is remembered as the store's `failure`.

Starts committed ahead ("commit ahead, release at the instant"), for every implementation:

- A start is committed before the module starts (at most once per slot), but it may be
  committed before its instant: `mark_started_many` with a `started_at` in the future
  records a start that will happen at `started_at`. The engine commits the starts of an
  instant's slots during the look-ahead and releases the modules together at the instant.
- So a `running` row whose `started_at` is still in the future has not started. If the
  process dies, `recover_interrupted(now)` returns such a row to `queued` (claimed again by
  the next start, at its time); a `running` row whose `started_at` has passed may have
  started and is marked interrupted (the retry policy decides). A row the engine took back
  before its instant (a task edited, a shutdown) goes back to `queued` with
  `unstart_many`.
- Caveat of the rule: it trusts the wall clock. A clock set back across a crash by more than
  the look-ahead can make a started row look unstarted.

Failing writes, for every implementation:

- The store remembers why its last write failed (`failure`) until a write succeeds; `ping`
  raises it meanwhile (an empty write may commit on a full disk and proves nothing).
- A `*_nowait` write that failed because the store was unavailable is held and retried,
  in order, with backoff, until it commits; the store holds a bounded number (past the
  bound it drops the newest and counts them in `writes_dropped`). Closing tries once more.
  While writes fail, a held write may commit after writes submitted later.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from taskd.model import Execution, ExecutionStatus, LogEntry, Task, TaskSource, TriggerKind

_SEPARATE_READS: ContextVar[bool] = ContextVar("taskd_store_separate_reads", default=False)


@contextmanager
def separate_reads() -> Iterator[None]:
    """Let the reads made inside this block use the store's separate read connection (see
    the module docstring): for the API's requests, never for the engine."""
    token = _SEPARATE_READS.set(True)
    try:
        yield
    finally:
        _SEPARATE_READS.reset(token)


def new_defer_id() -> str:
    """A fresh unguessable defer id (22 URL-safe characters) that never starts with `-`:
    people pass it on a command line (`taskd ctl run-defer ID`), where a leading dash
    reads as an option."""
    while True:
        defer_id = secrets.token_urlsafe(16)
        if not defer_id.startswith("-"):
            return defer_id


def reads_separately() -> bool:
    """Whether the caller is inside `separate_reads()` (for store implementations)."""
    return _SEPARATE_READS.get()


@dataclass(frozen=True, slots=True, kw_only=True)
class NewExecution:
    """An execution row to insert: a run to be started, or a slot skipped with a reason."""

    task_id: int
    trigger: TriggerKind
    status: ExecutionStatus = ExecutionStatus.QUEUED
    status_msg: str | None = None
    slot_at: datetime | None = None
    scheduled_for: datetime | None = None
    trigger_metadata: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotClaim:
    """Advance one task's `next_run_at` and record what its due slot(s) became, atomically.

    Applied only if the task's `next_run_at` is still `expected_next_run_at` (else the task
    was edited meanwhile and the claim is void). Rows whose slot was already accounted for
    are not inserted again.
    """

    task_id: int
    expected_next_run_at: datetime | None
    next_run_at: datetime | None
    executions: tuple[NewExecution, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Definition:
    """A task's definition as a write stores it: name, spec (JSON), enabled, due time."""

    name: str
    spec: Mapping[str, Any]
    enabled: bool
    next_run_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskInsert:
    """A new task for `Store.write_tasks`."""

    source: TaskSource
    definition: Definition


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskUpdate:
    """A change of a stored task for `Store.write_tasks`.

    `build` gets the task as stored inside the write's transaction and returns its new
    definition, or None to leave it as it is (no write, no version bump). It must be pure
    (no I/O, no awaiting: it runs inside the transaction) and may raise (ConflictError,
    ValidationError, ...) to refuse the whole write.
    """

    task_id: int
    build: Callable[[Task], Definition | None]


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What a `SlotClaim` did: `applied` is False if the task changed (or is gone).

    `execution_ids` lines up with the claim's executions; None where the slot was already
    accounted for.
    """

    applied: bool
    execution_ids: tuple[int | None, ...] = ()


class Store(Protocol):
    """All persistent state of taskd: tasks, executions, log entries, deferred runs.

    Opened and closed as an async context manager by the backend's factory (`open_store`);
    closing commits whatever `*_nowait` writes are still pending. See the module docstring
    for what "committed" and "atomic" promise. Ids (task, execution) are issued by the store,
    increase, and are never issued again, not even after their row was deleted.
    """

    # -- writes and their commit ---------------------------------------------------------

    on_batch: Callable[[float, int], None] | None
    """Called (if set) after each write transaction ends (committed, or failed whole) with
    its duration in seconds and the number of writes it held; on the event loop, so it must
    be quick (metrics)."""

    @property
    def batches_written(self) -> int:
        """How many write transactions ran since the store was opened.

        A store that groups concurrent writes into one transaction (group commit) counts
        fewer transactions than writes; one that does not counts one per write.
        """
        ...

    async def flush(self) -> None:
        """Return once every write submitted before this call (`*_nowait` ones included) is
        committed. Writes submitted later do not delay it. A refused write among them does
        not make it raise (its own awaiter gets the error); a transaction that cannot
        commit does, with that error. A `*_nowait` write that failed and is held for a
        retry (see "Failing writes") is not waited for."""
        ...

    async def ping(self) -> None:
        """Commit an empty write: proves the store takes writes (health checks). Raises
        StoreUnavailableError while a write failure is remembered (see `failure`), or
        whatever stops the store from writing.

        While a failure is remembered, `ping` first tries a small write that needs room
        (it leaves no data behind); if that commits, the failure is forgotten and `ping`
        returns. So a daemon that pings on an interval reports a store that took writes
        again without waiting for a real write, and an idle one still finds out. Bounded
        by the write timeout like every awaited write."""
        ...

    @property
    def failure(self) -> str | None:
        """Why the last write failed (the reason of its StoreUnavailableError), kept until
        a write other than an empty one (`flush`, `ping`) succeeds; None while writes do."""
        ...

    @property
    def writes_dropped(self) -> int:
        """How many failed `*_nowait` writes were dropped because the store held as many as
        it may keep for a retry."""
        ...

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
        """Insert a new task, status `new`, version 1, created and updated `now` by `by`.

        Returns the stored task (with its new id). Raises ConflictError if the name is taken
        (nothing is written).
        """
        ...

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
        """Replace a task's definition (and its name, if given) and bump its version by one.

        Creation data, status and run data stay; a retired task is brought back
        (`retired_at` None). With `expected_version`, the write applies
        only if the stored version equals it. Returns the task as committed. Raises
        NotFoundError for an unknown id, ConflictError for a version mismatch or a name
        taken by another task; either way nothing is written.
        """
        ...

    async def write_tasks(
        self, writes: Sequence[TaskInsert | TaskUpdate], *, now: datetime, by: str | None = None
    ) -> list[Task]:
        """Insert and update tasks in order, in one atomic write: all of them or none.

        An insert is as `insert_task`; an update reads the task inside the transaction,
        hands it to its `build` and stores what that returns as `update_task` would (the
        version + 1), or leaves the task unchanged for None. The name rule is checked in the
        transaction, against every write before in the same call too. Returns the tasks as
        committed, in the order of `writes`. Raises NotFoundError for an unknown id,
        ConflictError for a name taken, or whatever a `build` raised; nothing is written
        then.
        """
        ...

    async def retire_task(self, task_id: int, *, now: datetime, by: str | None = None) -> Task:
        """Retire a task (a config task that left the file): disable it, clear its
        `next_run_at`, set `retired_at` (kept if it is retired already) and bump its version;
        its definition, executions and log stay. `update_task` and `write_tasks` bring it
        back (`retired_at` None). Returns the task as committed. Raises NotFoundError for an
        unknown id.
        """
        ...

    async def set_next_run_at(self, task_id: int, next_run_at: datetime | None) -> None:
        """Set a task's next due time without a version bump (the server's own update).

        An unknown id changes nothing and raises nothing.
        """
        ...

    async def delete_task(self, task_id: int) -> None:
        """Delete a task with its executions, log entries and deferred runs, atomically.

        Raises NotFoundError if there is no such task.
        """
        ...

    async def get_task(self, task_id: int) -> Task:
        """Return the committed task with id `task_id`. Raises NotFoundError if there is none."""
        ...

    async def get_tasks(self, task_ids: Sequence[int]) -> dict[int, Task]:
        """Return the tasks among `task_ids` that exist, keyed by id (unknown ids left out).

        Any number of ids is fine; an empty sequence returns {}.
        """
        ...

    async def get_task_with_last_execution(
        self, task_id: int
    ) -> tuple[Task, Execution | None] | None:
        """Return a task with its `last_execution_id` execution (None if it has none or it
        was pruned), read consistently; None if there is no such task."""
        ...

    async def find_task(self, name: str) -> Task | None:
        """Return the task called `name`, or None."""
        ...

    async def list_tasks(
        self,
        *,
        source: TaskSource | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Task]:
        """Return tasks ordered by id, only those of `source` if given; skip `offset`, at most
        `limit` (None: all)."""
        ...

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
        """Return one page of tasks and the total count matching all conditions (-1 without
        `with_total`, which saves the count).

        With `owner` (a principal's name), only the tasks it may see: API tasks whose
        `created_by` (the principal that created them: their owner, which never changes)
        equals `owner`, and every config task (source `config`), ANDed with `where`; the
        total counts only those. None: every task.

        `where` holds (field, operator, value) with a field of `model.TASK_QUERY_FIELDS` and
        an operator of `=`, `!=`, `<`, `<=`, `>`, `>=`, `in` (value a list) or `like`
        (SQL-style `%` and `_`); `order` holds (field, descending), ties broken by id
        ascending; a field's empty values (no next run) sort after the others ascending,
        before them descending. Times are compared as datetimes; `priority` is 0 where unset. Raises
        ValueError for an unknown field or operator (the API validates both before).
        """
        ...

    async def count_tasks(self) -> int:
        """Return how many tasks are stored."""
        ...

    async def due_index(self) -> list[tuple[int, int]]:
        """Return (next_run_at in microseconds since the epoch, task id) of every enabled task
        with a `next_run_at`, in no particular order (the scheduler heapifies it)."""
        ...

    async def due_entry(self, task_id: int) -> tuple[int, int] | None:
        """Return (next_run_at in microseconds, task id) of one task if it is enabled and has
        a `next_run_at`, else None (unknown ids too)."""
        ...

    async def save_state(self, task_id: int, state: Mapping[str, Any] | None) -> None:
        """Store a task's module state (JSON; None clears it) for a later resume.

        An unknown id changes nothing and raises nothing.
        """
        ...

    # -- slots and executions -------------------------------------------------------------

    async def claim(self, claims: Sequence[SlotClaim], now: datetime) -> list[ClaimResult]:
        """Apply slot claims (see `SlotClaim`) in one atomic write; one result per claim.

        Each claim is applied or void on its own (void: its task is gone or its
        `next_run_at` is no longer the expected one; nothing of it is written). An applied
        claim sets the task's `next_run_at`, inserts its rows (`queued_at = now`; a
        (task, `slot_at`) pair already stored is not inserted again: its id is None), and
        a queued row makes the task `queued` unless it is `running` or `paused`. Skipped
        rows count towards the history bound.
        """
        ...

    async def add_executions(
        self, executions: Sequence[NewExecution], now: datetime
    ) -> list[int | None]:
        """Insert execution rows (manual runs, retries, skipped slots) in one atomic write.

        Returns their ids in order (None for a (task, `slot_at`) already stored; rows
        without `slot_at` are never deduplicated). `queued_at` is `now`; a `skipped` row is
        also finished at `now`. Queued rows make their task `queued` unless it is `running`
        or `paused`. Raises NotFoundError if a task does not exist (nothing is written).
        """
        ...

    async def mark_started_many(
        self, started: Sequence[tuple[int, int]], started_at: datetime, dispatcher: str
    ) -> Collection[int] | None:
        """Record that executions (execution id, task id) start at `started_at`, in one
        atomic write.

        Only `queued` executions start (others stay as they are): they become `running` with
        `started_at` and `dispatcher`; their tasks become `running` with this execution as
        the last one, `run_started_at` set and the other run fields cleared. An empty
        sequence does nothing. `started_at` may lie in the future: a start committed ahead
        of its instant (see "Starts committed ahead" in the module docstring).

        Returns the ids that started, or None for "all that were queued" (a store only one
        process uses). A store shared by cluster nodes starts only the executions this node
        owns and returns their ids: the runner runs no other (`taskd.cluster`).
        """
        ...

    async def unstart_many(self, started: Sequence[tuple[int, int]]) -> None:
        """Take back starts committed ahead that did not happen, in one atomic write.

        Each (execution id, task id) that is `running` goes back to `queued` (`started_at`
        and `dispatcher` cleared); its task, if it shows that execution as running, becomes
        `queued` with `run_started_at` cleared. Rows in another status stay as they are. The
        caller guarantees the modules did not start (they wait for an instant not reached).
        """
        ...

    def set_running_status_nowait(
        self, execution_id: int, task_id: int, status: ExecutionStatus
    ) -> None:
        """Queue a pause or resume (`paused` / `running`) of a running or paused execution,
        and of its task if the task shows it. An execution that has ended stays as it is.
        Committed with the next write transaction."""
        ...

    def progress_nowait(self, execution_id: int, task_id: int, fields: Mapping[str, Any]) -> None:
        """Queue progress fields of an execution: `progress` (a percent, also shown as the
        task's `status_percent` while it is the task's last execution), `size_todo`,
        `size_done`, `nodes_todo`, `nodes_done`, `bandwidth`; other keys are ignored.
        Committed with the next write transaction."""
        ...

    def log_nowait(
        self,
        task_id: int,
        execution_id: int | None,
        level: str,
        msg: str,
        at: datetime,
        status_percent: float | None = None,
    ) -> None:
        """Queue a log entry of a task (and of an execution, if given). Never blocks.

        Its `idx` is allocated when it is committed, from what is stored: 0 for a task's
        first entry, one more than its latest entry after that (across executions, reopens
        and processes sharing the store). An entry of a deleted task or execution is
        dropped. Entries without an execution are queued and never capped.

        An execution's log keeps its first and its last entries, `log_entries_per_execution`
        (N) in all: the first `N - 1 - (N - 1) // 2` entries (the head) are queued as they
        come; every later one goes into a ring of the latest `(N - 1) // 2 + 1` held in
        memory (the tail), and what falls out of the ring is only counted, never queued.
        `finish` writes the tail, before the ending: a log of at most N entries is kept
        whole; a longer one is the head, one `warning` entry "... K lines left out ..."
        (K: how many were not kept), then the last `(N - 1) // 2` entries. The tail of
        an execution that is never finished is written when the store closes. Memory per
        execution is bounded by the tail, whatever it logs.

        When full (see `log_full`) the entry is still queued: the bound is kept by the
        producers that can wait, and the others add at most an execution's head.
        """
        ...

    def log_keeps_last(self, execution_id: int) -> int | None:
        """None while the execution's entries are still kept as they come (its head, or no
        entry yet); once its head is full, K: of what it logs from now on, only the last K
        entries can be kept (the tail ring's size), the others are only counted."""
        ...

    def log_left_out_nowait(self, execution_id: int, count: int) -> None:
        """Count `count` entries of the execution as left out without taking their text: for
        a producer that knows they would be pushed out of the tail anyway, because at least
        `log_keeps_last` more entries follow them (a chunk of output with more lines than
        that, say). Does nothing while `log_keeps_last` is None."""
        ...

    @property
    def log_pending(self) -> int:
        """How many log entries are queued (submitted and not yet committed) now."""
        ...

    @property
    def log_full(self) -> bool:
        """Whether the log backlog is over its bound: True once more than the bound's log
        entries (or bytes of their text) wait to be committed, False again once the
        backlog is down to half of it. A producer that can wait (the shell module reading
        a task's pipes) stops reading while it is True and waits for `wait_log_room`, so a
        task's output is read only as fast as the store writes it."""
        ...

    async def wait_log_room(self) -> None:
        """Return once `log_full` is False (at once if it is)."""
        ...

    async def finish(
        self,
        execution_id: int,
        task_id: int,
        status: ExecutionStatus,
        status_msg: str | None,
        finished_at: datetime,
    ) -> None:
        """Record how a queued, running or paused execution ended, atomically with its task.

        First the execution's log tail is queued (see `log_nowait`; waiting for room while
        the log backlog is full), so it is committed before, or with, the ending.

        The task takes the ending (status, message, `run_finished_at`, `run_canceled_at` if
        `canceled`, 100 % if `done`, `last_execution_id`) unless a newer execution of it is
        running or paused; a `skipped` ending gives a `queued` task back the status of its
        last run (`new` if none) once no other row of it waits. Then old history is pruned:
        at most `history_per_task` finished executions per task are kept (within 10 %), the
        newest, with their log entries. An execution that ended already (or an unknown id)
        stays as it is: an ending is recorded once.
        """
        ...

    async def record_process_group(self, execution_id: int, pgid: int, start: str) -> None:
        """Record the process group a `running` or `paused` execution started: its id and
        its leader's start (an opaque string, `taskd.processes.process_start`). A later call
        replaces it; an execution in another status, or an unknown id, changes nothing."""
        ...

    async def interrupted_process_groups(self) -> list[tuple[int, int, int, str]]:
        """Return (execution id, task id, process group id, start) of every `running` or
        `paused` execution with a recorded process group, oldest first. For start-up,
        before `recover_interrupted`: these groups may have outlived the process that ran
        them, and are ended before their runs are marked interrupted and retried."""
        ...

    async def recover_interrupted(self, now: datetime) -> list[Execution]:
        """Mark every `running` or `paused` execution that may have started `error`
        "interrupted", finished `now`, and its task likewise if it shows it; one atomic
        write. Returns them as they are now, oldest first (for the retry policy). Only for
        start-up, when no execution runs.

        A `running` row whose `started_at` is after `now` was committed ahead and never
        started: it goes back to `queued` as `unstart_many` does (not returned; it is among
        `queued_executions` after this)."""
        ...

    async def queued_executions(self) -> list[Execution]:
        """Return every `queued` execution, oldest (lowest id) first."""
        ...

    async def get_execution(self, execution_id: int) -> Execution:
        """Return one execution. Raises NotFoundError if there is none (or it was pruned)."""
        ...

    async def get_executions(self, execution_ids: Sequence[int]) -> dict[int, Execution]:
        """Return the executions among `execution_ids` that exist, keyed by id."""
        ...

    async def list_executions(
        self, task_id: int, *, limit: int = 50, offset: int = 0
    ) -> list[Execution]:
        """Return a task's executions, newest first, paged ([] for an unknown task)."""
        ...

    async def read_log(
        self,
        task_id: int,
        *,
        offset: int = 0,
        limit: int = 100,
        execution_id: int | None = None,
    ) -> list[LogEntry]:
        """Return a task's committed log entries with `idx >= offset`, oldest first, at most
        `limit`, only those of `execution_id` if given ([] for an unknown task)."""
        ...

    # -- deferred runs --------------------------------------------------------------------

    async def create_defer(
        self, task_id: int, metadata: Mapping[str, Any], now: datetime, expires_at: datetime
    ) -> str:
        """Record a deferred run of a task and return its unguessable `defer_id` (random,
        at least 16 characters, never starting with `-`: made by `new_defer_id`). Raises
        NotFoundError for an unknown task."""
        ...

    async def use_defer(self, defer_id: str, now: datetime) -> tuple[int, dict[str, Any]]:
        """Mark a deferred run used and return (task id, metadata); once only, atomically.

        Raises DeferError if the id is unknown (or its task was deleted), used already, or
        expired (`expires_at <= now`); nothing is written then.
        """
        ...
