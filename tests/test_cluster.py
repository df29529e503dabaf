"""Several `taskd serve` nodes over one PostgreSQL database (`taskd.cluster`).

Real daemons as subprocesses (the helpers of `test_daemon.py`), a real PostgreSQL server
(`pg_server.py`), a fresh database per test; the test reads the database with asyncpg.
Every wait is bounded; every daemon is killed at teardown.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pg_server import PostgresServer
from test_daemon import Daemon, start_daemon, task_toml, wait_until

from taskd.model import TaskSource
from taskd.store import open_store

__all__ = ["start_daemon"]  # the fixture, used by name

pytestmark = pytest.mark.slow

FAILOVER_SEC = 2.0
HEARTBEAT_SEC = 0.5


def node_config(
    directory: Path,
    url: str,
    node: str,
    tasks: str = "",
    api_socket: Path | None = None,
    **daemon: object,
) -> Path:
    """A node's config: its own state_dir, the shared database, the API off (or on a
    trusted Unix socket at `api_socket`)."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = {"state_dir": "state", "node": node, **daemon}
    lines = ["[daemon]", *(f"{key} = {json.dumps(value)}" for key, value in settings.items())]
    socket_value = json.dumps(str(api_socket)) if api_socket else "false"
    lines += ["", "[api]", "listen = []", f"unix_socket = {socket_value}", ""]
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
    start: Callable[[Path], Daemon],
    tmp_path: Path,
    url: str,
    names: list[str],
    tasks: str = "",
    sockets: Path | None = None,
) -> dict[str, Daemon]:
    """Start one daemon per name (the same tasks in each file), each with its API on
    `sockets/<name>` if given; wait until each serves."""
    nodes = {
        name: start(
            node_config(
                tmp_path / name,
                url,
                name,
                tasks,
                api_socket=None if sockets is None else sockets / name,
                stop_grace_sec=0.5,
                shutdown_grace_sec=0.5,
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
    instant = datetime.now(UTC) + timedelta(seconds=1)
    tasks = task_toml(
        "long", "sleep", "{ seconds = 30, steps = 30 }", next_run_at=json.dumps(instant.isoformat())
    )
    nodes = start_nodes(start_daemon, tmp_path, url, ["node-a", "node-b"], tasks)

    def running() -> list[asyncpg.Record]:
        return rows(url, "SELECT id, node FROM executions WHERE status = 'running'")

    [(execution_id, owner)] = wait_until(running, "the execution to run")
    # `running` shows from the start committed ahead of the instant; a stop before the
    # instant gives the run back to the queue (and so to the other node). Stop after it.
    time.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()) + 0.5)
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


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the API trusts its socket: no credentials)."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=20)
        self.socket_path = path

    def connect(self) -> None:
        """Connect to the socket instead of a TCP address."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(20)
        conn.connect(str(self.socket_path))
        self.sock = conn


def call(path: Path, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """One request to the API on the socket at `path` (`body` sent as JSON if given):
    (status, JSON body)."""
    status, answer = call_raw(path, method, url, body)
    return status, json.loads(answer or b"null")


def call_raw(path: Path, method: str, url: str, body: Any = None) -> tuple[int, bytes]:
    """One request to the API on the socket at `path`: (status, body)."""
    conn = UnixHTTPConnection(path)
    try:
        if body is None:
            conn.request(method, url)
        else:
            headers = {"Content-Type": "application/json"}
            conn.request(method, url, json.dumps(body).encode(), headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short directory for the nodes' API sockets (sun_path holds 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="taskd-api-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_actions_through_any_node_reach_the_node_that_runs_the_execution(
    tmp_path: Path,
    start_daemon: Callable[[Path], Daemon],
    postgres_database_url: str,
    sockets: Path,
) -> None:
    """pause / resume / stop sent to the node that does not run the execution are carried
    out by the one that does; health on either node lists both nodes. A node that does not
    answer (stopped with SIGSTOP) makes the action 504 naming it."""
    url = postgres_database_url
    tasks = task_toml(
        "long",
        "sleep",
        "{ seconds = 30, steps = 60 }",
        next_run_at=json.dumps((datetime.now(UTC) + timedelta(seconds=1)).isoformat()),
    )
    nodes = start_nodes(start_daemon, tmp_path, url, ["node-a", "node-b"], tasks, sockets)

    def running() -> list[asyncpg.Record]:
        return rows(url, "SELECT id, node, task_id FROM executions WHERE status = 'running'")

    [(execution_id, owner, task_id)] = wait_until(running, "the execution to run")
    other = "node-b" if owner == "node-a" else "node-a"
    status, body = call(sockets / other, "GET", "/api/v2/health")
    assert status == 200, body
    assert {node["name"] for node in body["nodes"]} == {"node-a", "node-b"}
    assert {node["state"] for node in body["nodes"]} == {"alive"}
    assert body["node"] == other
    status, metrics = call_raw(sockets / other, "GET", "/metrics")
    assert status == 200
    assert f'taskd_node_info{{node="{other}"}} 1.0' in metrics.decode()

    status, body = call(sockets / other, "GET", f"/api/v2/executions/{execution_id}")
    assert status == 200, body
    assert body["node"] == owner
    status, body = call(sockets / other, "PUT", f"/api/v2/tasks/{task_id}/action/pause")
    assert (status, body) == (200, {"msg": f"pause: execution {execution_id}"})
    [(state,)] = rows(url, "SELECT status FROM executions WHERE id = $1", execution_id)
    assert state == "paused"
    status, body = call(sockets / other, "PUT", f"/api/v2/tasks/{task_id}/action/resume")
    assert (status, body) == (200, {"msg": f"resume: execution {execution_id}"})

    nodes[owner].send(signal.SIGSTOP)
    try:
        status, body = call(sockets / other, "PUT", f"/api/v2/tasks/{task_id}/action/stop")
    finally:
        nodes[owner].send(signal.SIGCONT)
    assert status == 504, body
    assert f"node {owner}" in json.dumps(body)


def test_a_task_read_through_one_node_shows_an_update_made_through_another(
    tmp_path: Path,
    start_daemon: Callable[[Path], Daemon],
    postgres_database_url: str,
    sockets: Path,
) -> None:
    """GET of a task on node A, an update through node B, GET on node A again: A shows
    the update at once. Another node writes the shared store, so the API's read cache (kept
    only while the daemon is the store's sole writer) is off on a PostgreSQL store."""
    url = postgres_database_url
    start_nodes(start_daemon, tmp_path, url, ["node-a", "node-b"], sockets=sockets)
    a, b = sockets / "node-a", sockets / "node-b"
    definition = {"name": "shared", "task_module": "sleep", "task_params": {"seconds": 0}}
    status, created = call(a, "POST", "/api/v2/tasks", definition)
    assert status == 201, created
    path = f"/api/v2/tasks/{created['id']}"
    for _ in range(2):  # read twice: a cache would hold the task now
        status, before = call(a, "GET", path)
        assert (status, before.get("comment")) == (200, None), before

    status, updated = call(b, "PUT", path, {"comment": "edited through node-b"})
    assert (status, updated["comment"]) == (200, "edited through node-b"), updated

    status, after = call(a, "GET", path)
    assert status == 200, after
    assert after["comment"] == "edited through node-b"
    assert after == updated


def test_when_the_nodes_files_differ_the_newest_file_wins_and_the_older_node_is_stale(
    tmp_path: Path,
    start_daemon: Callable[[Path], Daemon],
    postgres_database_url: str,
    sockets: Path,
) -> None:
    """node-a's file is newer: its definition is stored; node-b, started after it with an
    older, different file, leaves it alone (no flapping, nothing retired) and its health
    says `config: stale`; node-a's says `current`."""
    url = postgres_database_url
    newer = task_toml("t", "sleep", "{ seconds = 1 }", description='"from the newer file"')
    older = task_toml("u", "sleep", "{ seconds = 1 }", description='"from the older file"')
    a = start_daemon(node_config(tmp_path / "a", url, "node-a", newer, sockets / "a"))
    a.wait_for("node joined the cluster")
    config_b = node_config(tmp_path / "b", url, "node-b", older, sockets / "b")
    stamp = time.time() - 3600
    os.utime(config_b, (stamp, stamp))
    b = start_daemon(config_b)
    b.wait_for("node joined the cluster")
    assert b.find(
        "config file is older than the one another node applied: its tasks are "
        "left as stored (the newest file wins); update this node's file"
    )
    stored = rows(url, "SELECT name, retired_at FROM tasks ORDER BY name")
    assert [(row[0], row[1]) for row in stored] == [("t", None)]
    assert call(sockets / "b", "GET", "/api/v2/health")[1]["config"] == "stale"
    assert call(sockets / "a", "GET", "/api/v2/health")[1]["config"] == "current"


# ---------------------------------------------------------------------------------------
# The multi-node crash test. In the suite: 2 rounds. By hand, longer and with the default
# failover: `TASKD_CLUSTER_ROUNDS=20 TASKD_CLUSTER_FAILOVER_SEC=5 pytest
# tests/test_cluster.py -k crash -s` (prints the failover times).

CRASH_ROUNDS = int(os.environ.get("TASKD_CLUSTER_ROUNDS", "2"))
CRASH_FAILOVER_SEC = float(os.environ.get("TASKD_CLUSTER_FAILOVER_SEC", str(FAILOVER_SEC)))
CRASH_TASKS = 50


def _crash_config(directory: Path, url: str, node: str, tasks: str) -> Path:
    path = node_config(directory, url, node, tasks, stop_grace_sec=0.5, shutdown_grace_sec=0.5)
    text = (
        path.read_text()
        .replace(f"failover_sec = {FAILOVER_SEC}", f"failover_sec = {CRASH_FAILOVER_SEC}")
        .replace(f"heartbeat_sec = {HEARTBEAT_SEC}", f"heartbeat_sec = {CRASH_FAILOVER_SEC / 4}")
    )
    path.write_text(text)
    return path


def _event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def test_crash_three_nodes_fifty_tasks_a_node_killed_each_round(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon], postgres_database_url: str
) -> None:
    """3 nodes, 50 tasks firing every second; each round one node is killed with kill -9
    and restarted once a survivor declared it dead. Afterwards: no slot stored (so run)
    twice, every slot of every task between its first and last became an execution or a
    recorded skip, every run the killed node was running was taken over (ended, naming
    the node) and nothing is left running; the failover times are printed."""
    url = postgres_database_url
    tasks = "\n".join(
        task_toml(
            f"t{n:02d}",
            "sleep",
            "{ seconds = 0.3, steps = 3 }",
            schedules="[{ interval_sec = 1 }]",
            options="{ max_retries = 1, retry_delay_sec = 0.2, overlap = 'skip' }",
        )
        for n in range(CRASH_TASKS)
    )
    names = ["node-a", "node-b", "node-c"]
    configs = {name: _crash_config(tmp_path / name, url, name, tasks) for name in names}
    nodes = {name: start_daemon(configs[name]) for name in names}
    for daemon in nodes.values():
        daemon.wait_for("node joined the cluster", timeout=30)
    failovers: list[float] = []
    taken_over: dict[str, list[int]] = {}
    for round_ in range(CRASH_ROUNDS):
        time.sleep(2 + round_ % 3)  # a few seconds of work between kills
        victim = names[round_ % len(names)]
        nodes[victim].send(signal.SIGKILL)
        killed_at = time.time()
        nodes[victim].wait_exit()
        running = [
            row[0]
            for row in rows(
                url, "SELECT id FROM executions WHERE node = $1 AND status = 'running'", victim
            )
        ]
        survivors = [nodes[name] for name in names if name != victim]

        def declared(
            victim: str = victim, survivors: list[Daemon] = survivors, killed_at: float = killed_at
        ) -> float | None:
            for survivor in survivors:
                for event in survivor.find("node declared dead: its work is taken over"):
                    if event.get("dead_node") == victim and _event_time(event) > killed_at:
                        return _event_time(event)
            return None

        declared_at = wait_until(declared, f"{victim} declared dead", timeout=30)
        failovers.append(declared_at - killed_at)
        taken_over.setdefault(victim, []).extend(running)
        nodes[victim] = start_daemon(configs[victim])
        nodes[victim].wait_for("node joined the cluster", timeout=30)
    time.sleep(1)
    for daemon in nodes.values():
        daemon.send(signal.SIGTERM)
    for daemon in nodes.values():
        assert daemon.wait_exit(30) == 0

    twice = rows(
        url,
        "SELECT task_id, slot_at FROM executions WHERE slot_at IS NOT NULL"
        " GROUP BY task_id, slot_at HAVING count(*) > 1",
    )
    assert twice == []
    assert rows(url, "SELECT id FROM executions WHERE status IN ('running', 'paused')") == []
    gaps = rows(
        url,
        "SELECT task_id, count(*), (max(slot_at) - min(slot_at)) / 1000000 + 1"
        " FROM executions WHERE slot_at IS NOT NULL GROUP BY task_id",
    )
    assert len(gaps) == CRASH_TASKS
    for task_id, count, span in gaps:
        assert count == span, f"task {task_id}: {count} slots recorded over {span} seconds"
    ordered = sorted(failovers)
    print(
        f"\nfailover over {len(ordered)} kills (failover_sec {CRASH_FAILOVER_SEC:g}): "
        f"p50 {ordered[len(ordered) // 2]:.2f} s, max {ordered[-1]:.2f} s; "
        f"runs taken over: {sum(len(ids) for ids in taken_over.values())}"
    )
    for ids in taken_over.values():
        for execution_id in ids:
            found = rows(
                url, "SELECT status, status_msg FROM executions WHERE id = $1", execution_id
            )
            if not found:
                continue  # pruned by the history bound: only ended runs are pruned
            [(status, message)] = found
            assert status == "error", (execution_id, status, message)
            assert message.startswith("interrupted"), message
    assert len(rows(url, "SELECT id FROM tasks WHERE enabled")) == CRASH_TASKS


def test_serve_waits_for_a_database_it_cannot_reach_and_starts_once_it_answers(
    tmp_path: Path,
    start_daemon: Callable[[Path], Daemon],
    postgres_server: PostgresServer,
) -> None:
    """A database that does not exist yet: `taskd serve` logs `database unreachable` with
    the server's reason and tries again; once the database is created it starts."""
    name = f"late_{os.getpid()}"
    url = postgres_server.url(name)
    daemon = start_daemon(node_config(tmp_path / "a", url, "node-a"))
    event = daemon.wait_for("database unreachable")
    assert name in event["problem"]
    assert event["retry_in_sec"] == 1.0
    postgres_server.psql(f'CREATE DATABASE "{name}"')
    try:
        daemon.wait_for("node joined the cluster", timeout=20)
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
    finally:
        postgres_server.drop_database(name)
