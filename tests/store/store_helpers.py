"""Helpers shared by the store's contract suite and its SQLite-specific tests.

They talk to the store through the `Store` Protocol only.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from taskd.model import Task, TaskSource, TriggerKind
from taskd.store import NewExecution, SlotClaim, Store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SPEC: dict[str, Any] = {"task_module": "sleep", "task_params": {"seconds": 1}}

# Opens the one database of a test (keywords: the store's limits): each call, the same data.
StoreOpener = Callable[..., AbstractAsyncContextManager[Store]]


def at(seconds: float) -> datetime:
    """Return the instant `seconds` after T0."""
    return T0 + timedelta(seconds=seconds)


def insert(store: Store, name: str, **kwargs: Any) -> Coroutine[Any, Any, Task]:
    """Return the insert_task call of an enabled api task without a due time (overridable)."""
    values: dict[str, Any] = {
        "source": TaskSource.API,
        "spec": SPEC,
        "enabled": True,
        "next_run_at": None,
        "now": T0,
    }
    values.update(kwargs)
    return store.insert_task(name=name, **values)


async def add_task(store: Store, name: str = "t", **kwargs: Any) -> int:
    """Insert a task as `insert` does and return its id."""
    return (await insert(store, name, **kwargs)).id


def schedule_row(task_id: int, slot: datetime) -> NewExecution:
    """A queued execution row for the schedule slot `slot` of `task_id`."""
    return NewExecution(task_id=task_id, trigger=TriggerKind.SCHEDULE, slot_at=slot)


def slot_claim(
    task_id: int, expected: datetime | None, following: datetime | None, *slots: datetime
) -> SlotClaim:
    """A claim moving `task_id` from `expected` to `following`, queueing `slots`."""
    return SlotClaim(
        task_id=task_id,
        expected_next_run_at=expected,
        next_run_at=following,
        executions=tuple(schedule_row(task_id, slot) for slot in slots),
    )


async def queue(store: Store, task_id: int, when: datetime = T0, **kwargs: Any) -> int:
    """Add one queued manual execution of `task_id` and return its id."""
    [execution_id] = await store.add_executions(
        [NewExecution(task_id=task_id, trigger=TriggerKind.MANUAL, **kwargs)], when
    )
    assert execution_id is not None
    return execution_id


async def start(store: Store, task_id: int, when: datetime = T0) -> int:
    """Queue and start one execution of `task_id`; return its id."""
    execution_id = await queue(store, task_id, when)
    await store.mark_started_many([(execution_id, task_id)], when, "host-a")
    return execution_id
