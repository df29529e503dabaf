"""Benchmark: a task that floods its output, against a real daemon.

Run by hand: `.venv/bin/python bench/pressure.py [--scenario flood|chars|both] [--repeat 3]`.

Each run: a fresh state dir; `python -m taskd serve` with one TCP listener on 127.0.0.1 (a
free port, one API key) and one config task, a shell command that prints without end:

- `flood`: `--mb` MB (default 200) in 100-character lines (`yes <99 zeros> | head -c`);
- `chars`: `--lines` one-character lines (default 10,000,000; `yes x | head -n`).

Once health answers, the daemon's VmRSS is read (/proc/<pid>/status) and the run is started
(`PUT /api/v2/tasks/{name}/action/run`). While it runs, a thread asks `GET /api/v2/health`
every `--poll-ms` (10) ms on one keep-alive connection and records each answer's latency.
When the daemon logs "execution ended", VmHWM (the peak RSS) is read: peak increase = VmHWM
- VmRSS before the run. Then the daemon gets SIGTERM (it must exit 0) and the stored log of
the run is checked with sqlite3: `log_entries_per_execution` (1,000) entries, the marker line
"... K lines left out ..." in the middle and the command's last line before the ending.

Printed per run: seconds of the flood, MB/s and lines/s through the daemon, peak RSS
increase, health p50 / p99 / max (ms) and how many health answers; `--repeat N` adds the
median of each column. Targets (issue 10): peak RSS +<= 50 MB, health p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields
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

TASKD_ROOT = Path(__file__).resolve().parent.parent
TASK = "flood"
TARGET_RSS_MB = 50.0
TARGET_P99_MS = 50.0
TIMEOUT_SEC = 900.0


@dataclass(slots=True)
class Result:
    """One run's figures."""

    seconds: float
    mb_per_sec: float
    lines_per_sec: float
    rss_before_mb: float
    peak_increase_mb: float
    health_p50_ms: float
    health_p99_ms: float
    health_max_ms: float
    health_count: int


def command_of(scenario: str, args: argparse.Namespace) -> tuple[str, int, int]:
    """The shell command of a scenario, with the bytes and lines it prints."""
    if scenario == "flood":
        size = args.mb * 1_000_000
        return f"yes {'0' * 99} | head -c {size}", size, size // 100
    return f"yes x | head -n {args.lines}", args.lines * 2, args.lines


def write_config(directory: Path, port: int, key: str, command: str) -> Path:
    """TCP on 127.0.0.1:port with one key, no socket, the flood task (never due on its own)."""
    write_private(directory / "bench.key", key + "\n")
    config = directory / "taskd.toml"
    params = json.dumps(command)  # a JSON string is a TOML basic string
    write_private(
        config,
        daemon_toml(port)
        + f"""
[[api.keys]]
name = "bench"
key_file = "bench.key"
scopes = ["*"]

[[task]]
name = "{TASK}"
task_module = "shell"
task_params = {{ command = {params} }}
""",
    )
    return config


def status_mb(pid: int, field: str) -> float:
    """A field of /proc/<pid>/status (`VmRSS`, `VmHWM`) in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    raise LookupError(field)


class HealthPoller(threading.Thread):
    """Asks health every `interval` s on one connection; keeps each latency (ms)."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(name="health", daemon=True)
        self.port, self.interval = port, interval
        self.latencies: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        """Poll until stopped."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                connection.request("GET", "/api/v2/health")
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            elapsed = time.perf_counter() - started
            if ok:
                self.latencies.append(elapsed * 1000)
            else:
                self.failures += 1
            self.stop.wait(max(0.0, self.interval - elapsed))
        connection.close()


def request(port: int, method: str, path: str, key: str | None = None) -> tuple[int, bytes]:
    """One HTTP request on a fresh connection; (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    """Wait until health answers 200 (RuntimeError if the daemon exits, or after 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"taskd exited with {process.returncode}")
        try:
            if request(port, "GET", "/api/v2/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("taskd did not answer health within 60 s")


def wait_ended(log_path: Path, process: subprocess.Popen[bytes]) -> None:
    """Wait until the daemon logs "execution ended" (it writes JSON lines to its log file)."""
    deadline = time.monotonic() + TIMEOUT_SEC
    with open(log_path) as log:
        while time.monotonic() < deadline:
            line = log.readline()
            if not line:
                if process.poll() is not None:
                    raise RuntimeError(f"taskd exited with {process.returncode}")
                time.sleep(0.05)
                continue
            try:
                event = json.loads(line).get("event")
            except ValueError:
                continue
            if event == "execution ended":
                return
    raise RuntimeError("the flood did not end in time")


def check_log(db_path: Path) -> str:
    """Check the stored log of the run; return its marker line."""
    with sqlite3.connect(db_path) as cx:
        rows = cx.execute("SELECT msg FROM log_entries ORDER BY idx").fetchall()
        [(status, status_msg)] = cx.execute("SELECT status, status_msg FROM executions").fetchall()
    messages = [msg for (msg,) in rows]
    assert (status, status_msg) == ("done", "exit code 0"), (status, status_msg)
    assert len(messages) == 1000, len(messages)
    marker = messages[500]
    assert marker.startswith("... "), marker
    assert marker.endswith(" lines left out ..."), marker
    assert messages[-1] == "done: exit code 0", messages[-3:]
    return marker


def one_run(scenario: str, args: argparse.Namespace) -> Result:
    """Start a daemon, run the flood once, take the figures."""
    command, size, lines = command_of(scenario, args)
    with state_dir(args.keep, f"taskd-pressure-{scenario}-") as directory:
        port, key = free_port(), secrets.token_urlsafe(24)
        config = write_config(directory, port, key, command)
        log_path = directory / "taskd.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "taskd", "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=TASKD_ROOT,
                start_new_session=True,
            )
        poller = HealthPoller(port, args.poll_ms / 1000)
        try:
            wait_healthy(port, process)
            time.sleep(0.5)  # let start-up settle
            rss_before = status_mb(process.pid, "VmRSS")
            poller.start()
            started = time.monotonic()
            status, body = request(port, "PUT", f"/api/v2/tasks/{TASK}/action/run", key)
            assert status == 200, (status, body)
            wait_ended(log_path, process)
            seconds = time.monotonic() - started
            peak = status_mb(process.pid, "VmHWM")
            poller.stop.set()
            poller.join(30)
            process.send_signal(signal.SIGTERM)
            code = process.wait(60)
            assert code == 0, f"taskd exited with {code}"
        finally:
            poller.stop.set()
            if process.poll() is None:
                process.kill()
                process.wait()
        marker = check_log(directory / "state" / "taskd.db")
        print(f"# {scenario}: stored log ok ({marker!r})", file=sys.stderr)
    latencies = poller.latencies
    if poller.failures:
        print(f"# {poller.failures} health requests failed", file=sys.stderr)
    return Result(
        seconds=seconds,
        mb_per_sec=size / 1e6 / seconds,
        lines_per_sec=lines / seconds,
        rss_before_mb=rss_before,
        peak_increase_mb=peak - rss_before,
        health_p50_ms=percentile(latencies, 0.5),
        health_p99_ms=percentile(latencies, 0.99),
        health_max_ms=max(latencies),
        health_count=len(latencies),
    )


HEADER = (
    f"{'scenario':<8} {'run':>6} {'sec':>7} {'MB/s':>7} {'lines/s':>10} {'RSS MB':>7}"
    f" {'+peak MB':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'n':>6}"
)


def row(scenario: str, label: str, r: Result) -> str:
    """One table row."""
    return (
        f"{scenario:<8} {label:>6} {r.seconds:>7.1f} {r.mb_per_sec:>7.1f} {r.lines_per_sec:>10,.0f}"
        f" {r.rss_before_mb:>7.1f} {r.peak_increase_mb:>8.1f} {r.health_p50_ms:>7.1f}"
        f" {r.health_p99_ms:>7.1f} {r.health_max_ms:>7.1f} {r.health_count:>6}"
    )


def median(results: list[Result]) -> Result:
    """The median of each column."""
    values = {
        f.name: statistics.median(getattr(r, f.name) for r in results) for f in fields(Result)
    }
    values["health_count"] = int(values["health_count"])
    return Result(**values)


def main() -> None:
    """Parse the arguments, run the scenarios, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["flood", "chars", "both"], default="both")
    parser.add_argument("--mb", type=int, default=200, help="flood: MB in 100-char lines")
    parser.add_argument("--lines", type=int, default=10_000_000, help="chars: 1-char lines")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--poll-ms", type=float, default=10.0, help="health request interval")
    parser.add_argument("--keep", action="store_true", help="keep the state dirs")
    args = parser.parse_args()
    scenarios = ["flood", "chars"] if args.scenario == "both" else [args.scenario]
    print(
        f"# {python_and_cpus()}, load {load_average():.2f}, calibration {calibration_ms():.0f} ms,"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(f"# flood {args.mb} MB in 100-char lines; chars {args.lines:,} 1-char lines")
    print(HEADER)
    verdicts = []
    for scenario in scenarios:
        results = []
        for number in range(args.repeat):
            result = one_run(scenario, args)
            results.append(result)
            print(row(scenario, str(number + 1), result), flush=True)
        final = median(results) if len(results) > 1 else results[0]
        if len(results) > 1:
            print(row(scenario, "median", final))
        rss_ok = "ok" if final.peak_increase_mb <= TARGET_RSS_MB else "MISSED"
        p99_ok = "ok" if final.health_p99_ms <= TARGET_P99_MS else "MISSED"
        verdicts.append(
            f"{scenario}: peak RSS +{final.peak_increase_mb:.1f} MB ({rss_ok}, target"
            f" <= {TARGET_RSS_MB:.0f}), health p99 {final.health_p99_ms:.1f} ms ({p99_ok},"
            f" target <= {TARGET_P99_MS:.0f})"
        )
    print(f"# load {load_average():.2f} at the end")
    for verdict in verdicts:
        print(f"# {verdict}")


if __name__ == "__main__":
    main()
