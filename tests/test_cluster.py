"""Several `taskd serve` nodes over one PostgreSQL database (`taskd.cluster`).

Real daemons as subprocesses (the helpers of `test_daemon.py`), a real PostgreSQL server
(`pg_server.py`), a fresh database per test; the test reads the database with asyncpg.
Every wait is bounded; every daemon is killed at teardown.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_daemon import Daemon, start_daemon, task_toml, wait_until

from taskd.model import TaskSource
from taskd.store import open_store

__all__ = ["start_daemon"]  # the fixture, used by name

pytestmark = pytest.mark.slow

FAILOVER_SEC = 2.0
HEARTBEAT_SEC = 0.5


def node_config(directory: Path, url: str, node: str, tasks: str = "", **daemon: object) -> Path:
    """A node's config: its own state_dir, the shared database, the API off."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = {"state_dir": "state", "node": node, **daemon}
    lines = ["[daemon]", *(f"{key} = {json.dumps(value)}" for key, value in settings.items())]
    lines += ["", "[api]", "listen = []", "unix_socket = false", ""]
    lines += ["[store]", f"url = {json.dumps(url)}", ""]
    lines += ["[cluster]", f"failover_sec = {FAILOVER_SEC}", f"heartbeat_sec = {HEARTBEAT_SEC}"]
    lines += ["", tasks]
    path = directory / "taskd.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def rows(url: str, sql: str, *params: Any) -> list[asyncpg.Record]:
    """Run one query on a connection of its own; return its rows."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql, *params))
        finally:
            await conn.close()

    return asyncio.run(run())


def start_nodes(
    start: Callable[[Path], Daemon], tmp_path: Path, url: str, names: list[str], tasks: str = ""
) -> dict[str, Daemon]:
    """Start one daemon per name (the same tasks in each file); wait until each serves."""
    nodes = {
        name: start(
            node_config(
                tmp_path / name, url, name, tasks, stop_grace_sec=0.5, shutdown_grace_sec=0.5
            )
        )
        for name in names
    }
    for daemon in nodes.values():
        daemon.wait_for("node joined the cluster")
    return nodes


def test_a_killed_nodes_running_work_is_taken_over_and_retried_by_a_survivor(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon], postgres_database_url: str
) -> None:
    """kill -9 of the node running an execution: within failover_sec (plus a beat) a
    survivor declares it dead, marks the run interrupted naming the node, and queues and
    runs its retry; no slot is stored twice; every execution names its node."""
    url = postgres_database_url
    tasks = task_toml(
        "long",
        "sleep",
        "{ seconds = 30, steps = 30 }",
        schedules="[{ interval_sec = 3600 }]",
        next_run_at=json.dumps((datetime.now(UTC) + timedelta(seconds=1)).isoformat()),
        options="{ max_retries = 1, retry_delay_sec = 0.1, overlap = 'parallel' }",
    )
    nodes = start_nodes(start_daemon, tmp_path, url, ["node-a", "node-b"], tasks)

    def running() -> list[asyncpg.Record]:
        return rows(url, "SELECT id, node FROM executions WHERE status = 'running'")

    [(execution_id, owner)] = wait_until(running, "the execution to run")
    survivor = "node-b" if owner == "node-a" else "node-a"
    nodes[owner].send(signal.SIGKILL)
    killed_at = time.monotonic()
    nodes[survivor].wait_for("node declared dead: its work is taken over", dead_node=owner)
    failover = time.monotonic() - killed_at
    assert failover < FAILOVER_SEC + 3 * HEARTBEAT_SEC + 2

    [(status, message)] = rows(
        url, "SELECT status, status_msg FROM executions WHERE id = $1", execution_id
    )
    assert status == "error"
    assert f"node {owner}" in message

    def retry_running() -> list[asyncpg.Record]:
        return rows(
            url,
            "SELECT id, node FROM executions WHERE trigger = 'retry' AND status = 'running'",
        )

    [(_, retry_node)] = wait_until(retry_running, "the retry to run on the survivor")
    assert retry_node == survivor
    slots = rows(url, "SELECT task_id, slot_at FROM executions WHERE slot_at IS NOT NULL")
    assert len(slots) == len(set(slots))
    assert all(row[0] for row in rows(url, "SELECT node FROM executions"))
    [(state,)] = rows(url, "SELECT dead_by FROM nodes WHERE name = $1", owner)
    assert state == survivor
    nodes[survivor].send(signal.SIGTERM)
    assert nodes[survivor].wait_exit() == 0


def test_a_task_created_through_another_node_is_run_without_a_restart(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon], postgres_database_url: str
) -> None:
    """A task written by another node (here: a store opened by the test as node `editor`)
    reaches the running nodes through NOTIFY; one of them runs it, once."""
    url = postgres_database_url
    start_nodes(start_daemon, tmp_path, url, ["node-a", "node-b"])

    async def create() -> None:
        async with open_store(tmp_path, url=url, node="editor") as store:
            await store.insert_task(
                name="from-elsewhere",
                source=TaskSource.API,
                spec={"task_module": "sleep", "task_params": {"seconds": 0.1}},
                enabled=True,
                next_run_at=datetime.now(UTC) + timedelta(seconds=0.5),
                now=datetime.now(UTC),
            )

    asyncio.run(create())

    def done() -> list[asyncpg.Record]:
        return rows(url, "SELECT node FROM executions WHERE status = 'done'")

    [(node,)] = wait_until(done, "the new task to run on a node", timeout=5)
    assert node in {"node-a", "node-b"}
    time.sleep(0.5)
    assert len(rows(url, "SELECT id FROM executions")) == 1


def test_a_clean_stop_hands_nothing_over_and_the_node_shows_stopped(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon], postgres_database_url: str
) -> None:
    """SIGTERM: the node's run ends as on a single server (canceled by the shutdown), it
    is not declared dead, and its row says stopped."""
    url = postgres_database_url
    tasks = task_toml(
        "long",
        "sleep",
        "{ seconds = 30, steps = 30 }",
        next_run_at=json.dumps((datetime.now(UTC) + timedelta(seconds=1)).isoformat()),
    )
    nodes = start_nodes(start_daemon, tmp_path, url, ["node-a", "node-b"], tasks)

    def running() -> list[asyncpg.Record]:
        return rows(url, "SELECT id, node FROM executions WHERE status = 'running'")

    [(execution_id, owner)] = wait_until(running, "the execution to run")
    survivor = "node-b" if owner == "node-a" else "node-a"
    nodes[owner].send(signal.SIGTERM)
    assert nodes[owner].wait_exit() == 0
    time.sleep(FAILOVER_SEC + 2 * HEARTBEAT_SEC)
    assert not nodes[survivor].find("node declared dead: its work is taken over")
    [(status,)] = rows(url, "SELECT status FROM executions WHERE id = $1", execution_id)
    assert status != "running"
    [(stopped_at, dead_at)] = rows(
        url, "SELECT stopped_at, dead_at FROM nodes WHERE name = $1", owner
    )
    assert stopped_at is not None
    assert dead_at is None
