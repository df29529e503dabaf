"""Benchmark: clients sending wrong Basic credentials, against a real daemon (issue 10.2).

Run by hand: `.venv/bin/python bench/bad_auth.py [--clients 16] [--seconds 15] [--repeat 3]`.

Each run: a fresh state dir; `python -m taskd serve` on 127.0.0.1 (a free port) with one
Basic-auth user (an scrypt hash) and one task due every second (`sleep` with 0 seconds).
Two phases of `--seconds` each, one after the other on the same daemon:

- `quiet`: nothing but a health poll (`GET /api/v2/health` every `--poll-ms` ms);
- `bad auth`: the same poll while `--clients` threads send `GET /api/v2/tasks` with a wrong
  password as fast as their answers come (each on its own connection; 401 or 429 answers).

Printed per phase: health p50 / p99 / max (ms), how many health answers, how many bad
requests were answered (401 / 429) and how many runs of the every-second task started
(read from the database: `started_at` inside the phase). Before the fix (scrypt on the loop,
no limiter) 16 clients took health p50 from 1 ms to 4.3 s and the task started 2 times in
17 s; the aim is health p99 <= 50 ms and one start a second.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import secrets
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    calibration_ms,
    daemon_toml,
    free_port,
    load_average,
    percentile,
    python_and_cpus,
    state_dir,
    write_private,
)
from pressure import HealthPoller, wait_healthy

from taskd.api.auth import hash_password

TASKD_ROOT = Path(__file__).resolve().parent.parent


def write_config(directory: Path, port: int, password: str) -> Path:
    """TCP on 127.0.0.1:port, one Basic user, a task due every second."""
    config = directory / "taskd.toml"
    write_private(
        config,
        daemon_toml(port)
        + f"""
[[api.users]]
name = "alice"
password_hash = "{hash_password(password)}"
scopes = ["*"]

[[task]]
name = "tick"
task_module = "sleep"
task_params = {{ seconds = 0 }}
schedules = [{{ interval_sec = 1 }}]
""",
    )
    return config


class BadClient(threading.Thread):
    """Sends requests with a wrong password until stopped; counts the answers by status."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.answers: dict[int, int] = {}
        wrong = base64.b64encode(b"alice:not-the-password").decode()
        self.headers = {"Authorization": f"Basic {wrong}"}

    def run(self) -> None:
        """Request until stopped (a new connection after every answer: the daemon may close)."""
        while not self.stop.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                connection.request("GET", "/api/v2/tasks", headers=self.headers)
                response = connection.getresponse()
                response.read()
                self.answers[response.status] = self.answers.get(response.status, 0) + 1
                if response.status == 429:  # back off as told, as a polite client would not
                    time.sleep(0.01)
            except OSError:
                self.answers[0] = self.answers.get(0, 0) + 1
            finally:
                connection.close()


def starts_between(db_path: Path, begin: float, end: float) -> int:
    """Runs of the task that started in [begin, end) (Unix seconds)."""
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        [(count,)] = connection.execute(
            "SELECT count(*) FROM executions WHERE started_at >= ? AND started_at < ?",
            (int(begin * 1e6), int(end * 1e6)),
        ).fetchall()
        return int(count)
    finally:
        connection.close()


def phase(
    port: int, db_path: Path, args: argparse.Namespace, clients: int
) -> tuple[list[float], dict[int, int], int, float]:
    """Poll health for `args.seconds` with `clients` bad clients; the figures of the phase."""
    poller = HealthPoller(port, args.poll_ms / 1000)
    stop = threading.Event()
    bad = [BadClient(port, stop) for _ in range(clients)]
    begin = time.time()
    poller.start()
    for client in bad:
        client.start()
    time.sleep(args.seconds)
    stop.set()
    poller.stop.set()
    end = time.time()
    for client in bad:
        client.join(timeout=35)
    poller.join(timeout=35)
    answers: dict[int, int] = {}
    for client in bad:
        for status, count in client.answers.items():
            answers[status] = answers.get(status, 0) + count
    time.sleep(1.5)  # let the last starts be committed
    return poller.latencies, answers, starts_between(db_path, begin, end), end - begin


Row = tuple[str, float, float, float, int, str, int, float]


def one_run(args: argparse.Namespace) -> list[Row]:
    """A daemon, the quiet phase then the bad-auth phase; a row per phase."""
    rows: list[Row] = []
    with state_dir(args.keep, "taskd-bench-auth-") as directory:
        port = free_port()
        config = write_config(directory, port, secrets.token_urlsafe(12))
        log = open(directory / "taskd.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [sys.executable, "-m", "taskd", "serve", "--config", str(config)],
            cwd=TASKD_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            wait_healthy(port, process)
            time.sleep(1.0)  # the scheduler has claimed its first slots
            for label, clients in (("quiet", 0), ("bad auth", args.clients)):
                latencies, answers, starts, seconds = phase(
                    port, directory / "state" / "taskd.db", args, clients
                )
                rows.append(
                    (
                        label,
                        percentile(latencies, 0.5) if latencies else float("nan"),
                        percentile(latencies, 0.99) if latencies else float("nan"),
                        max(latencies, default=float("nan")),
                        len(latencies),
                        json.dumps({str(k): v for k, v in sorted(answers.items())}),
                        starts,
                        seconds,
                    )
                )
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()
    return rows


def main() -> None:
    """Parse the options, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--poll-ms", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the state dirs")
    args = parser.parse_args()
    print(
        f"# taskd bad auth: {python_and_cpus()}, clients={args.clients}, "
        f"seconds={args.seconds:g} per phase, repeat={args.repeat}, "
        f"calibration {calibration_ms():.0f} ms, load {load_average()}"
    )
    print("  phase      p50 ms   p99 ms   max ms  health  answers (status: count)   starts")
    by_phase: dict[str, list[tuple[float, float, int]]] = {}
    for _ in range(args.repeat):
        for label, p50, p99, worst, count, answers, starts, seconds in one_run(args):
            print(
                f"  {label:<9} {p50:8.1f} {p99:8.1f} {worst:8.1f} {count:7d}  {answers:<26}"
                f" {starts:3d} in {seconds:.0f} s"
            )
            by_phase.setdefault(label, []).append((p50, p99, starts))
    if args.repeat > 1:
        for label, values in by_phase.items():
            p50 = statistics.median(v[0] for v in values)
            p99 = statistics.median(v[1] for v in values)
            starts = statistics.median(v[2] for v in values)
            print(f"  median {label:<9} p50 {p50:.1f} ms, p99 {p99:.1f} ms, starts {starts:g}")


if __name__ == "__main__":
    main()
