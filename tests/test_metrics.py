"""`GET /metrics`: Prometheus metrics of the real daemon, read with prometheus-client's parser.

The daemon is `taskd.daemon.Daemon` itself, run in this process (so its own wiring of the
runner's and the store's hooks is what is tested), on a Unix socket and a TCP port of
127.0.0.1. Tasks are created and run over the v2 API; the runner takes one execution at a
time (`max_running = 1`), so a long task keeps a second one queued.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from api_fixtures import WAIT_SEC, Client, Reply, SpecCheck
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from taskd import __version__
from taskd.daemon import Daemon
from taskd.metrics import Metrics
from taskd.model import ExecutionStatus
from taskd.testing import FakeClock

# Key name -> scopes.
KEYS = {"scraper": ["metrics"], "index": ["tasks/index"], "show": ["tasks/show"]}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (the config file cannot name port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_config(tmp_path: Path, port: int) -> tuple[Path, dict[str, str]]:
    """Write key files (mode 0600, as the daemon demands) and the config file."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    secrets_by_name = {}
    lines = [
        "[daemon]",
        'state_dir = "state"',
        'timezone = "UTC"',
        "max_running = 1",
        "stop_grace_sec = 0.5",
        "shutdown_grace_sec = 0",
        "",
        "[api]",
        f'listen = ["127.0.0.1:{port}"]',
        f'unix_socket = "{tmp_path / "taskd.sock"}"',
        "trust_unix_socket = true",
    ]
    for name, scopes in KEYS.items():
        secret = secrets.token_urlsafe(24)
        key_file = keys_dir / name
        key_file.write_text(secret + "\n")
        key_file.chmod(0o600)
        secrets_by_name[name] = secret
        lines += ["", "[[api.keys]]", f'name = "{name}"', f'key_file = "keys/{name}"']
        lines.append("scopes = [" + ", ".join(f'"{scope}"' for scope in scopes) + "]")
    path = tmp_path / "taskd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, secrets_by_name


class Served:
    """The running daemon and clients to it."""

    def __init__(self, daemon: Daemon, unix: Client, tcp_base: str, keys: dict[str, str]) -> None:
        self.daemon = daemon
        self.unix = unix
        self.tcp_base = tcp_base
        self.keys = keys
        self.sessions: list[aiohttp.ClientSession] = []

    def tcp(self, key: str | None) -> Client:
        """A TCP client sending the named key (none for None)."""
        session = aiohttp.ClientSession()
        self.sessions.append(session)
        authorization = None if key is None else f"Bearer {self.keys[key]}"
        return Client(session, self.tcp_base, "tcp", [], authorization)

    async def create(self, name: str, module: str, params: dict[str, Any]) -> int:
        """Create an unscheduled task over v2; return its id."""
        body = {"name": name, "task_module": module, "task_params": params}
        reply = await self.unix.post("/api/v2/tasks", body)
        assert reply.status == 201, str(reply)
        return int(reply.json["id"])

    async def run(self, task_id: int) -> None:
        """Ask for a run of the task now."""
        reply = await self.unix.put(f"/api/v2/tasks/{task_id}/action/run")
        assert reply.status < 300, str(reply)

    async def scrape(self) -> Samples:
        """GET /metrics over the Unix socket, parsed."""
        return parse(await self.unix.get("/metrics"))


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """The real daemon on a Unix socket and a TCP port, with the keys of `KEYS`."""
    port = free_port()
    config, keys = write_config(tmp_path, port)
    daemon = Daemon(config)
    with capture_logs() as logs:
        running = asyncio.create_task(daemon.run())
        connector = aiohttp.UnixConnector(path=str(tmp_path / "taskd.sock"))
        async with aiohttp.ClientSession(connector=connector) as session:
            unix = Client(session, "http://taskd", "unix", [])
            async with asyncio.timeout(WAIT_SEC):
                while True:
                    assert not running.done(), f"the daemon ended: {logs}"
                    try:
                        if (await unix.get("/api/v2/health")).status == 200:
                            break
                    except aiohttp.ClientConnectionError:
                        pass  # not listening yet
                    await asyncio.sleep(0.02)
            result = Served(daemon, unix, f"http://127.0.0.1:{port}", keys)
            try:
                yield result
            finally:
                for client_session in result.sessions:
                    await client_session.close()
                daemon.stopping.set()
                async with asyncio.timeout(WAIT_SEC):
                    assert await running == 0
    assert [e for e in logs if e.get("event") == "request failed"] == []


def parse(reply: Reply) -> Samples:
    """A 200 text/plain reply's body, parsed (`parse_text`)."""
    assert reply.status == 200, str(reply)
    assert reply.content_type.startswith("text/plain"), reply.content_type
    return parse_text(reply.body.decode())


def parse_text(text: str) -> Samples:
    """Prometheus text read with prometheus-client's parser: every sample by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 if absent: a labelled series appears with its first event)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def executions_total(samples: Samples) -> float:
    """Executions ended, all modules and statuses."""
    return sum(v for (name, _), v in samples.items() if name == "taskd_executions_total")


async def run_to_end(served: Served, task_id: int) -> None:
    """Run the task and wait until /metrics has counted its ending."""
    before = executions_total(await served.scrape())
    await served.run(task_id)
    async with asyncio.timeout(WAIT_SEC):
        while True:
            if executions_total(await served.scrape()) == before + 1:
                return
            await asyncio.sleep(0.01)


async def test_metrics_count_executions_latency_load_and_store_writes(served: Served) -> None:
    """Counts by module/status, duration and lateness histograms, load gauges, store writes."""
    runs = [
        ("sleep-ok", "sleep", {"seconds": 0}),
        ("sleep-ok-again", "sleep", {"seconds": 0}),
        ("sleep-fail", "sleep", {"seconds": 0, "fail": True}),
        ("shell-ok", "shell", {"argv": ["true"]}),
        ("shell-fail", "shell", {"argv": ["false"]}),
    ]
    for name, module, params in runs:
        await run_to_end(served, await served.create(name, module, params))
    long_a = await served.create("long-a", "sleep", {"seconds": 60})
    long_b = await served.create("long-b", "sleep", {"seconds": 60})
    await served.run(long_a)
    await served.run(long_b)  # max_running = 1: it waits for long-a
    runner = served.daemon.core.runner if served.daemon.core else None
    assert runner is not None
    async with asyncio.timeout(WAIT_SEC):
        while True:
            if (runner.running_count, runner.queued_count) == (1, 1):
                break
            await asyncio.sleep(0.01)

    samples = await served.scrape()
    done, error = str(ExecutionStatus.DONE), str(ExecutionStatus.ERROR)
    counted = {
        (dict(labels)["module"], dict(labels)["status"]): count
        for (name, labels), count in samples.items()
        if name == "taskd_executions_total"
    }
    assert counted == {
        ("sleep", done): 2,
        ("sleep", error): 1,
        ("shell", done): 1,
        ("shell", error): 1,
    }
    assert value(samples, "taskd_execution_duration_seconds_count", module="sleep") == 3
    assert value(samples, "taskd_execution_duration_seconds_count", module="shell") == 2
    assert value(samples, "taskd_execution_duration_seconds_sum", module="shell") > 0
    # Every start is seen: the five ended ones and long-a, running now.
    assert value(samples, "taskd_start_lateness_seconds_count") == 6
    assert value(samples, "taskd_start_lateness_seconds_bucket", le="+Inf") == 6
    assert value(samples, "taskd_start_lateness_seconds_bucket", le="60.0") == 6
    assert value(samples, "taskd_running_executions") == 1
    assert value(samples, "taskd_queue_depth") == 1
    batches = value(samples, "taskd_store_write_seconds_count")
    assert batches > 0
    assert value(samples, "taskd_store_write_seconds_sum") > 0
    assert value(samples, "taskd_store_writes_total") >= batches  # a batch holds >= 1 write
    assert value(samples, "taskd_build_info", version=__version__) == 1


async def test_metrics_access_over_tcp(served: Served) -> None:
    """TCP needs a `metrics` or `tasks/index` key (401 without, 403 with neither); Unix doesn't."""
    scraper = served.tcp("scraper")
    samples = parse(await scraper.get("/metrics"))
    assert value(samples, "taskd_build_info", version=__version__) == 1
    assert parse(await served.tcp("index").get("/metrics"))
    assert (await scraper.get("/api/v2/tasks")).status == 403
    assert (await served.tcp(None).get("/metrics")).status == 401
    forbidden = await served.tcp("show").get("/metrics")
    assert forbidden.status == 403
    assert forbidden.json["messages"] == ["the credentials lack the scope metrics or tasks/index"]
    assert parse(await served.unix.get("/metrics"))


async def test_metrics_route_is_in_the_openapi_document(served: Served) -> None:
    """The daemon's OpenAPI document lists GET /metrics, and the answer conforms to it."""
    document = (await served.unix.get("/api/v2/openapi.json")).json
    assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    reply = await served.unix.get("/metrics")
    assert SpecCheck("taskd").response_errors(reply) == []


def test_metrics_of_one_process_do_not_collide_and_measure_by_the_given_clock() -> None:
    """Own registries; durations by the given clock; early starts 0 s late; refused jobs count."""
    clock = FakeClock()
    first = Metrics(
        load=SimpleNamespace(running_count=2, queued_count=5), monotonic=clock.monotonic
    )
    Metrics(load=SimpleNamespace(running_count=0, queued_count=0), monotonic=FakeClock().monotonic)
    job = SimpleNamespace(execution_id=7, task=SimpleNamespace(module="sleep"))
    refused = SimpleNamespace(execution_id=8, task=SimpleNamespace(module="shell"))
    first.observe_started(job, -3.0)  # type: ignore[arg-type]
    clock.advance(2.5)
    first.observe_outcome(SimpleNamespace(job=job, status=ExecutionStatus.DONE))  # type: ignore[arg-type]
    first.observe_outcome(SimpleNamespace(job=refused, status=ExecutionStatus.ERROR))  # type: ignore[arg-type]
    first.observe_batch(0.004, 3)
    samples = parse_text(first.render().decode())
    assert value(samples, "taskd_execution_duration_seconds_sum", module="sleep") == 2.5
    assert value(samples, "taskd_execution_duration_seconds_count", module="shell") == 0
    assert value(samples, "taskd_executions_total", module="shell", status="error") == 1
    assert value(samples, "taskd_start_lateness_seconds_sum") == 0
    assert value(samples, "taskd_start_lateness_seconds_bucket", le="0.001") == 1
    assert value(samples, "taskd_running_executions") == 2
    assert value(samples, "taskd_queue_depth") == 5
    assert value(samples, "taskd_store_writes_total") == 3
    assert math.isclose(value(samples, "taskd_store_write_seconds_sum"), 0.004)
