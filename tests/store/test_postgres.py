"""What the PostgreSQL store adds to the contract: nodes sharing one database.

Each test opens two stores on one fresh database, as two nodes would (`node-a`, `node-b`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from store_helpers import T0, add_task, at, queue, slot_claim, start

from taskd.errors import StoreUnavailableError
from taskd.model import Execution, ExecutionStatus, TaskSource, TaskStatus
from taskd.store import open_store
from taskd.store.pg_schema import MIGRATIONS
from taskd.store.postgres import interrupt_executions


def _open(tmp_path: Path, url: str, node: str):  # type: ignore[no-untyped-def]
    return open_store(tmp_path, url=url, node=node)


async def test_a_slot_raced_by_two_nodes_is_claimed_once(tmp_path: Path, postgres_url: str) -> None:
    """Both nodes claim the same due slot at once, many times over: each slot is applied
    by exactly one of them and stored once, owned by the node that applied it."""
    async with (
        _open(tmp_path, postgres_url, "node-a") as a,
        _open(tmp_path, postgres_url, "node-b") as b,
    ):
        task_id = await add_task(a, next_run_at=at(0))
        for n in range(30):
            claim = slot_claim(task_id, at(n), at(n + 1), at(n))
            results = await asyncio.gather(a.claim([claim], T0), b.claim([claim], T0))
            assert sorted(result[0].applied for result in results) == [False, True]
        executions = await a.list_executions(task_id, limit=100)
        assert len(executions) == len({e.slot_at for e in executions}) == 30
        mine = {e.id for e in await a.queued_executions()}
        theirs = {e.id for e in await b.queued_executions()}
        assert mine.isdisjoint(theirs)
        assert mine | theirs == {e.id for e in executions}
        assert {e.node for e in executions} <= {"node-a", "node-b"}


async def test_a_node_starts_and_recovers_only_its_own_executions(
    tmp_path: Path, postgres_url: str
) -> None:
    """mark_started_many ignores another node's queued rows; recover_interrupted and
    interrupted_process_groups see the node's own running rows only."""
    async with (
        _open(tmp_path, postgres_url, "node-a") as a,
        _open(tmp_path, postgres_url, "node-b") as b,
    ):
        task_id = await add_task(a, "t")
        other_id = await add_task(a, "u")
        theirs = await queue(b, task_id)
        await a.mark_started_many([(theirs, task_id)], T0, "host-a")
        assert (await a.get_execution(theirs)).status is ExecutionStatus.QUEUED
        mine = await start(a, other_id)
        await b.mark_started_many([(theirs, task_id)], T0, "host-b")
        await a.record_process_group(mine, 4242, "boot:1")
        await b.record_process_group(theirs, 4343, "boot:2")
        assert [row[0] for row in await a.interrupted_process_groups()] == [mine]
        recovered = await a.recover_interrupted(at(5))
        assert [e.id for e in recovered] == [mine]
        assert (await b.get_execution(theirs)).status is ExecutionStatus.RUNNING
        assert (await b.get_execution(theirs)).node == "node-b"


async def test_an_unreachable_server_is_reported_with_the_reason(tmp_path: Path) -> None:
    """Opening a store on a socket nobody listens on raises StoreUnavailableError saying so."""
    url = f"postgresql://taskd@/taskd?host={tmp_path}"
    with pytest.raises(StoreUnavailableError, match="cannot connect to the database"):
        async with open_store(tmp_path, url=url, node="n"):
            pass


async def test_a_database_of_a_newer_schema_is_refused_unchanged(
    tmp_path: Path, postgres_url: str
) -> None:
    """A database migrated by a newer taskd is refused before anything in it changes."""
    async with _open(tmp_path, postgres_url, "node-a"):
        pass
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("UPDATE schema_version SET version = $1", len(MIGRATIONS) + 1)
    finally:
        await conn.close()
    with pytest.raises(RuntimeError, match="upgrade taskd"):
        async with _open(tmp_path, postgres_url, "node-a"):
            pass


async def test_process_groups_of_runs_taken_over_are_ended_at_the_nodes_restart(
    tmp_path: Path, postgres_url: str
) -> None:
    """A run another node took over (marked interrupted naming this node) keeps its process
    group for this node's next start, which ends it; recovery then forgets it."""
    async with _open(tmp_path, postgres_url, "node-a") as a:
        task_id = await add_task(a)
        execution_id = await start(a, task_id)
        await a.record_process_group(execution_id, 4242, "boot:1")
        await a.finish(
            execution_id,
            task_id,
            ExecutionStatus.ERROR,
            "interrupted: node node-a stopped answering; taken over by node-b",
            at(3),
        )
        assert [row[0] for row in await a.interrupted_process_groups()] == [execution_id]
        assert await a.recover_interrupted(at(4)) == []
        assert await a.interrupted_process_groups() == []


async def test_query_by_owner_and_unstart_ported_from_mains_contract(
    tmp_path: Path, postgres_url: str
) -> None:
    """main's contract additions, ported ahead of the merge: `query_tasks(owner=...)` gives
    the owner's API tasks and every config task; `unstart_many` takes a start back to
    `queued`, the task showing its run before."""
    async with _open(tmp_path, postgres_url, "node-a") as a:
        mine = await add_task(a, "mine", by="alice")
        await add_task(a, "theirs", by="bob")
        await add_task(a, "config", source=TaskSource.CONFIG)
        tasks, total = await a.query_tasks(owner="alice")  # type: ignore[call-arg]
        assert ([t.name for t in tasks], total) == (["mine", "config"], 2)
        first = await start(a, mine)
        await a.finish(first, mine, ExecutionStatus.DONE, "ok", at(1))
        second = await start(a, mine, at(2))
        await a.unstart_many([(second, mine)])  # type: ignore[attr-defined]
        execution = await a.get_execution(second)
        assert (execution.status, execution.started_at) == (ExecutionStatus.QUEUED, None)
        task = await a.get_task(mine)
        assert (task.status, task.last_execution_id) == (TaskStatus.QUEUED, first)


async def test_a_dead_nodes_start_committed_ahead_is_interrupted_not_run_again(
    tmp_path: Path, postgres_url: str
) -> None:
    """The cluster's takeover of a dead node's runs (`interrupt_executions(own=False)`, as
    `Cluster._beat` calls it) interrupts its starts committed ahead too: a node declared
    dead may only be cut off and still release them at their instant, so queuing them here
    would run the slot twice (they run again only under their retry policy). The node's
    own recovery (`own`, the default) puts such a start back to `queued`."""
    async with (
        _open(tmp_path, postgres_url, "node-a") as a,
        _open(tmp_path, postgres_url, "node-b") as b,
    ):
        early_task, late_task = await add_task(b, "early"), await add_task(b, "late")
        passed = await queue(b, early_task, at(1))
        ahead = await queue(b, late_task, at(1))
        await b.mark_started_many([(passed, early_task)], at(50), "host-b")
        await b.mark_started_many([(ahead, late_task)], at(150), "host-b")

        async def take_over(cx: Any) -> list[Execution]:
            return await interrupt_executions(
                cx, "node-b", at(100), "interrupted: node b", own=False
            )

        interrupted = await a.run_write(take_over)  # type: ignore[attr-defined]

        assert [(e.id, e.status) for e in interrupted] == [
            (passed, ExecutionStatus.ERROR),
            (ahead, ExecutionStatus.ERROR),
        ]
        assert (await a.get_task(late_task)).status is TaskStatus.ERROR
        assert (await a.get_task(early_task)).status is TaskStatus.ERROR

        # The node's own recovery: what it committed ahead never began.
        again = await queue(b, late_task, at(2))
        await b.mark_started_many([(again, late_task)], at(150), "host-b")

        async def recover(cx: Any) -> list[Execution]:
            return await interrupt_executions(cx, "node-b", at(100), "interrupted")

        assert await b.run_write(recover) == []  # type: ignore[attr-defined]
        back = await b.get_execution(again)
        assert (back.status, back.started_at, back.node) == (
            ExecutionStatus.QUEUED,
            None,
            "node-b",
        )


async def test_a_write_begun_when_the_server_stops_answering_may_still_be_recorded(
    tmp_path: Path, postgres_url: str
) -> None:
    """A write the batch had begun when its deadline passed (it waits for a lock another
    session holds) raises StoreUnavailableError saying it may still be recorded; it stays
    in its transaction and commits once the lock goes; the failure is remembered until
    then and a ping clears it."""
    async with open_store(tmp_path, url=postgres_url, node="node-a", write_timeout_sec=0.3) as a:
        await add_task(a, "before")
        locker = await asyncpg.connect(postgres_url)
        try:
            await locker.execute("BEGIN")
            await locker.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailableError, match="may still be recorded"):
                await add_task(a, "begun")
            assert a.failure is not None
        finally:
            await locker.execute("ROLLBACK")
            await locker.close()
        await a.ping()
        assert a.failure is None
        assert sorted(t.name for t in await a.list_tasks()) == ["before", "begun"]
