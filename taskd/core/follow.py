"""Following a task's log as it is written: the events a follower yields and the wake-ups.

`LogFollowers.follow` is an async generator over what a `FollowReader` (the Core) reads;
the store's commits wake it (`committed`, chained to the store's `on_batch` hook where the
engine is built), with a bounded re-read as a fallback, and `stop` ends every follow when
the daemon shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from taskd.errors import NotFoundError
from taskd.model import Execution, ExecutionStatus, LogEntry

# A follower re-reads at most this often (a busy store commits many batches a second) ...
FOLLOW_COALESCE_SEC = 0.05
# ... and at least this often even without a commit it heard of (a bounded fallback).
FOLLOW_RECHECK_SEC = 1.0
_FOLLOW_PAGE = 500


class Follow(StrEnum):
    """What a log follower follows: one execution to its end, or the task for good."""

    EXECUTION = "execution"
    TASK = "task"


@dataclass(frozen=True, slots=True)
class RunFollowed:
    """Task mode: the lines that come next include this execution's (told once per run,
    before its first line)."""

    execution: Execution


@dataclass(frozen=True, slots=True)
class RunEnded:
    """A followed execution has ended and every line it logged was given (status None if
    it is gone, deleted with its task)."""

    execution_id: int
    status: ExecutionStatus | None


@dataclass(frozen=True, slots=True)
class Quiet:
    """Nothing to tell for `idle_sec`: a chance to keep the connection alive, or to notice
    that the reader went away."""


@dataclass(frozen=True, slots=True)
class Closing:
    """The daemon is shutting down: the follow ends here."""


LogEvent = LogEntry | RunFollowed | RunEnded | Quiet | Closing


class FollowReader(Protocol):
    """The reads a follower needs (the Core has them)."""

    async def newest_execution_id(self, task_id: int) -> int | None:
        """The id of the task's newest execution, or None."""
        ...

    async def current_execution(self, task_id: int) -> Execution | None:
        """The execution "the log of the task" means, or None."""
        ...

    async def read_log(
        self,
        task_id: int,
        *,
        offset: int = 0,
        limit: int = 100,
        execution_id: int | None = None,
    ) -> list[LogEntry]:
        """A task's log entries from index `offset` on, oldest first."""
        ...

    async def get_execution(self, execution_id: int) -> Execution:
        """One execution; NotFoundError if it is gone."""
        ...

    async def ending(self, execution_id: int) -> tuple[bool, ExecutionStatus | None]:
        """Whether the execution has ended (its lines all committed), and how."""
        ...


class LogFollowers:
    """The wake-up every follower waits on, and the switch that ends them all."""

    def __init__(self) -> None:
        # Set (and replaced) at each store commit: followers wait on it.
        self._commit = asyncio.Event()
        self._closed = False

    def committed(self) -> None:
        """Wake the followers: the store committed a batch."""
        self._commit.set()
        self._commit = asyncio.Event()

    def stop(self) -> None:
        """End every follow (with `Closing`): the daemon is shutting down."""
        self._closed = True
        self.committed()

    async def follow(
        self,
        reader: FollowReader,
        task_id: int,
        *,
        mode: Follow,
        offset: int | None = None,
        execution_id: int | None = None,
        idle_sec: float = 1.0,
    ) -> AsyncGenerator[LogEvent, None]:
        """Yield a task's log entries as they are committed, oldest first.

        `Follow.EXECUTION`: entries from `offset` (default 0), only those of `execution_id`
        if given, until the watched execution (`execution_id`, else the task's newest,
        waited for if it has none) has ended: then `RunEnded` and the follow is over.

        `Follow.TASK`: every entry from `offset` on, for good; without `offset`, from the
        first line of the task's `current_execution` (waited for while it has none). Each
        execution is announced with `RunFollowed` before its first line, and `RunEnded`
        follows its last. `execution_id` is not used.

        Both yield `Quiet` after `idle_sec` without anything else, and `Closing` (then
        stop) once `stop_following` was called. Waking: each store commit wakes the
        follower (at most every `FOLLOW_COALESCE_SEC`), and it re-reads at least every
        `FOLLOW_RECHECK_SEC` anyway.
        """
        loop = asyncio.get_running_loop()
        told = loop.time()  # when the follower last yielded something

        async def wait(commit: asyncio.Event) -> None:
            """Wait for a commit, the re-check time or the end of the quiet time."""
            timeout = min(FOLLOW_RECHECK_SEC, max(0.0, told + idle_sec - loop.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await commit.wait()
                    await asyncio.sleep(FOLLOW_COALESCE_SEC)  # let a busy store batch more

        def idle() -> bool:
            return loop.time() - told >= idle_sec

        # Where to start, and (execution mode) what to watch.
        watched = execution_id
        start = offset
        while (mode is Follow.EXECUTION and watched is None) or (
            mode is Follow.TASK and start is None
        ):
            commit = self._commit  # taken before reading: a commit after it wakes us
            if self._closed:
                yield Closing()
                return
            if mode is Follow.EXECUTION:
                watched = await reader.newest_execution_id(task_id)
                if watched is not None:
                    break
            else:
                current = await reader.current_execution(task_id)
                if current is not None:
                    first = await reader.read_log(
                        task_id, offset=0, limit=1, execution_id=current.id
                    )
                    if first:
                        start = first[0].idx
                        break
            if idle():
                yield Quiet()
                told = loop.time()
            await wait(commit)
        offset = start or 0

        if mode is Follow.EXECUTION:
            assert watched is not None
            ended, status = False, None
            while True:
                commit = self._commit
                if self._closed:
                    yield Closing()
                    return
                entries = await reader.read_log(
                    task_id, offset=offset, limit=_FOLLOW_PAGE, execution_id=execution_id
                )
                for entry in entries:
                    yield entry
                    offset = entry.idx + 1
                if entries:
                    told = loop.time()
                    continue
                if ended:  # nothing left after the ending was committed: all was read
                    yield RunEnded(watched, status)
                    return
                ended, status = await reader.ending(watched)
                if ended:
                    continue
                if idle():
                    yield Quiet()
                    told = loop.time()
                await wait(commit)

        running: set[int] = set()  # announced, not ended
        done: deque[int] = deque(maxlen=1000)  # ended lately: not announced again
        endings: list[RunEnded] = []  # ended, to be told once their last lines are read
        while True:
            commit = self._commit
            if self._closed:
                yield Closing()
                return
            entries = await reader.read_log(task_id, offset=offset, limit=_FOLLOW_PAGE)
            for entry in entries:
                run = entry.execution_id
                if run is not None and run not in running and run not in done:
                    with contextlib.suppress(NotFoundError):  # deleted with its task
                        yield RunFollowed(await reader.get_execution(run))
                    running.add(run)
                yield entry
                offset = entry.idx + 1
            if entries:
                told = loop.time()
            if len(entries) == _FOLLOW_PAGE:
                continue
            for ending in endings:  # read after their endings were committed: all told
                running.discard(ending.execution_id)
                done.append(ending.execution_id)
                yield ending
                told = loop.time()
            endings = []
            for run in sorted(running):
                ended, status = await reader.ending(run)
                if ended:
                    endings.append(RunEnded(run, status))
            if endings:
                continue  # `ending` committed their last lines: read them first
            if idle():
                yield Quiet()
                told = loop.time()
            await wait(commit)
