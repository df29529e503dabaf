"""End-to-end tests of `taskd serve`: the real daemon as a subprocess.

Each test writes a config file into `tmp_path` (state_dir inside it, the API off), starts
`python -m taskd serve --config FILE`, follows its JSON log lines on stderr and reads its
SQLite file with the stdlib `sqlite3` (SELECTs only). Every wait is bounded and every daemon
is killed in the fixture teardown, whatever happened.

The kill -9 test can be repeated by hand:
`TASKD_KILL_LOOPS=20 pytest tests/test_daemon.py -k kill_9` runs it 20 times, each with a
fresh state dir and a different moment of the kill.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

# Each test starts `taskd serve` as a subprocess (kill -9 loops among them).
pytestmark = pytest.mark.slow

T = TypeVar("T")

WAIT_SEC = 10.0  # the bound of every wait for the daemon
KILL_LOOPS = int(os.environ.get("TASKD_KILL_LOOPS", "1"))
DB_NAME = "taskd.db"


# ---------------------------------------------------------------------------------------
# Helpers: config files, the daemon process, the database


def write_config(path: Path, tasks: str, **daemon: object) -> Path:
    """Write a config file with state_dir `state` next to it, the API off, and `tasks`."""
    settings = {"state_dir": "state", **daemon}
    lines = ["[daemon]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    lines += ["", "[api]", "listen = []", "unix_socket = false", "", tasks]
    temporary = path.with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.replace(path)  # atomic: a SIGHUP never reads half a file
    return path


def task_toml(name: str, module: str, params: str, **fields: str) -> str:
    """One `[[task]]` table; `fields` are TOML values written as given."""
    lines = ["[[task]]", f'name = "{name}"', f'task_module = "{module}"']
    lines.append(f"task_params = {params}")
    lines += [f"{key} = {value}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


def utc_in(seconds: float) -> str:
    """An RFC 3339 UTC instant `seconds` from now, as a TOML string."""
    instant = datetime.now(UTC) + timedelta(seconds=seconds)
    return json.dumps(instant.isoformat().replace("+00:00", "Z"))


def wait_until(check: Callable[[], T], what: str, timeout: float = WAIT_SEC) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


class Db:
    """Read-only access to the daemon's SQLite file (WAL: opened normally, SELECTs only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one SELECT on a fresh connection and return all rows."""
        assert sql.lstrip().upper().startswith("SELECT")
        # mode=rw: never create the file (a missing database is a failure, not an empty one).
        connection = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=5)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def value(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """Run a SELECT that yields one value."""
        [(result,)] = self.rows(sql, params)
        return result

    def task_ids(self) -> dict[str, int]:
        """Return {name: id} of every stored task."""
        return {name: task_id for task_id, name in self.rows("SELECT id, name FROM tasks")}

    def executions(self, where: str = "1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Return executions as dicts, oldest first."""
        columns = (
            "id, task_id, trigger, slot_at, scheduled_for, started_at, finished_at, status,"
            " status_msg, attempt, progress"
        )
        names = [name.strip() for name in columns.split(",")]
        rows = self.rows(f"SELECT {columns} FROM executions WHERE {where} ORDER BY id", params)
        return [dict(zip(names, row, strict=True)) for row in rows]


class Daemon:
    """One `taskd serve` process with its stderr followed by a reader thread."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskd", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # signals from the test's terminal never reach it
        )
        self._reader = threading.Thread(target=self._read, name="taskd-stderr", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            with self._lock:
                self.lines.append(line)
                if isinstance(event, dict) and "event" in event:
                    self.events.append(event)

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """Return the events named `event` whose fields include `fields`."""
        with self._lock:
            return [
                e
                for e in self.events
                if e["event"] == event and all(e.get(k) == v for k, v in fields.items())
            ]

    def wait_for(self, event: str, timeout: float = WAIT_SEC, **fields: Any) -> dict[str, Any]:
        """Wait for an event named `event` (with `fields`); fail if the daemon exits first."""

        def check() -> dict[str, Any] | None:
            found = self.find(event, **fields)
            if found:
                return found[0]
            if self.process.poll() is not None:
                time.sleep(0.1)  # let the reader catch the last lines
                if not self.find(event, **fields):
                    raise AssertionError(
                        f"daemon exited ({self.process.returncode}) before {event!r}:\n"
                        + self.stderr_tail()
                    )
            return None

        try:
            return wait_until(check, f"log event {event!r} {fields or ''}", timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.stderr_tail()}") from None

    def send(self, sig: signal.Signals) -> None:
        """Send `sig` to the daemon."""
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float = WAIT_SEC) -> int:
        """Wait for the daemon to exit; return its exit code."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"daemon still running {timeout:g} s later:\n{self.stderr_tail()}"
            ) from None
        self._reader.join(5)
        return code

    def stderr_text(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        with self._lock:
            return "\n".join(self.lines)

    def stderr_tail(self, count: int = 30) -> str:
        """The last lines of stderr, for failure messages."""
        with self._lock:
            return "\n".join(self.lines[-count:])

    def assert_no_errors(self) -> None:
        """No traceback on stderr, no error-level event, every line JSON."""
        text = self.stderr_text()
        assert "Traceback" not in text, text
        with self._lock:
            assert len(self.events) == len(self.lines), f"non-JSON lines on stderr:\n{text}"
            errors = [e for e in self.events if e.get("level") in {"error", "critical"}]
        assert not errors, errors

    def close(self) -> None:
        """Kill the daemon if it still runs, reap it and close its pipe."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(WAIT_SEC)
        self._reader.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def start_daemon() -> Iterator[Callable[[Path], Daemon]]:
    """Start daemons on config files; every one of them is killed at teardown."""
    started: list[Daemon] = []

    def start(config: Path) -> Daemon:
        daemon = Daemon(config)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


def started(start: Callable[[Path], Daemon], config: Path) -> tuple[Daemon, Db]:
    """Start a daemon and wait until it serves; return it and its database."""
    daemon = start(config)
    daemon.wait_for("taskd started")
    return daemon, Db(config.parent / "state" / DB_NAME)


def sleep_task(name: str, seconds: float, steps: int = 5, **fields: str) -> str:
    """A sleep task firing every second, unless `fields` say otherwise."""
    fields.setdefault("schedules", "[{ interval_sec = 1 }]")
    return task_toml(name, "sleep", f"{{ seconds = {seconds}, steps = {steps} }}", **fields)


# ---------------------------------------------------------------------------------------
# 1. kill -9 while executions run


RETRY_ONCE = "{ max_retries = 1, retry_delay_sec = 0.2 }"
KILL_TASKS = {
    # name: (seconds, options or None); max_retries per task below
    "retry-short": (0.5, RETRY_ONCE),
    "retry-long": (1.8, RETRY_ONCE),
    "retry-parallel": (1.5, "{ max_retries = 1, retry_delay_sec = 0.2, overlap = 'parallel' }"),
    "plain-short": (0.7, None),
    "plain-long": (2.0, None),
    "plain-queue": (1.2, "{ overlap = 'queue' }"),
}
MAX_RETRIES = {name: 1 if name.startswith("retry") else 0 for name in KILL_TASKS}


def kill_config(path: Path) -> Path:
    tasks = []
    for name, (seconds, options) in KILL_TASKS.items():
        fields = {"options": options} if options else {}
        tasks.append(sleep_task(name, seconds, **fields))
    return write_config(path, "\n".join(tasks), shutdown_grace_sec=0.5, stop_grace_sec=0.5)


@pytest.mark.parametrize("round_", range(KILL_LOOPS))
def test_kill_9_while_running_then_restart_loses_nothing_and_runs_no_slot_twice(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon], round_: int
) -> None:
    """SIGKILL mid-run, restart: interrupted runs become errors and retry, no slot runs twice."""
    config = kill_config(tmp_path / "taskd.toml")
    first, db = started(start_daemon, config)
    task_ids = db.task_ids()
    assert set(task_ids) == set(KILL_TASKS)
    name_of = {task_id: name for name, task_id in task_ids.items()}

    # Let it work a while, then kill it at a moment that differs from round to round.
    wait_until(
        lambda: db.value("SELECT count(*) FROM executions WHERE status = 'done'") >= 3,
        "three finished executions",
    )
    time.sleep(random.Random(round_).uniform(0.0, 1.0))
    wait_until(
        lambda: db.value("SELECT count(*) FROM executions WHERE status = 'running'"),
        "a running execution",
    )
    first.send(signal.SIGKILL)
    assert first.wait_exit() == -signal.SIGKILL
    first.assert_no_errors()

    interrupted = db.executions("status IN ('running', 'paused')")
    assert interrupted, "nothing was running at the kill"
    finished_before = {
        e["id"]: (e["status"], e["status_msg"], e["finished_at"])
        for e in db.executions("status IN ('done', 'error', 'canceled', 'skipped')")
    }
    last_id_before = db.value("SELECT max(id) FROM executions")

    # Restart on the same state dir.
    restarted_at_us = int(time.time() * 1e6)
    second, _ = started(start_daemon, config)
    recovered = {e["execution_id"] for e in second.find("execution was interrupted by a crash")}
    assert recovered == {e["id"] for e in interrupted}

    # Each interrupted run of a task that may retry gets one retry; wait until they started.
    expected_retries = Counter(
        (e["task_id"], e["attempt"] + 1)
        for e in interrupted
        if e["attempt"] < MAX_RETRIES[name_of[e["task_id"]]]
    )

    # retry-parallel always has a run going (1.5 s every second), so this path is exercised.
    assert expected_retries, interrupted

    def retries_started() -> bool:
        retries = db.executions("trigger = 'retry' AND started_at IS NOT NULL")
        return Counter((e["task_id"], e["attempt"]) for e in retries) == expected_retries

    wait_until(retries_started, f"retries {dict(expected_retries)} to start")
    # And the schedules go on after the restart.
    wait_until(
        lambda: (
            db.value(
                "SELECT count(*) FROM executions WHERE trigger = 'schedule' AND started_at > ?"
                " AND status = 'done'",
                (restarted_at_us,),
            )
            >= 2
        ),
        "scheduled runs after the restart",
    )

    second.send(signal.SIGTERM)
    assert second.wait_exit() == 0
    second.wait_for("taskd stopped")
    second.assert_no_errors()

    # No slot is accounted for twice, and no slot was started twice.
    assert (
        db.rows(
            "SELECT task_id, slot_at, count(*) FROM executions WHERE slot_at IS NOT NULL"
            " GROUP BY task_id, slot_at HAVING count(*) > 1"
        )
        == []
    )
    assert (
        db.rows(
            "SELECT task_id, scheduled_for, count(*) FROM executions WHERE started_at IS NOT NULL"
            " AND trigger IN ('schedule', 'catch_up') GROUP BY task_id, scheduled_for"
            " HAVING count(*) > 1"
        )
        == []
    )
    # What the kill left running is now an error, "interrupted", with an end time.
    for before in interrupted:
        [after] = db.executions("id = ?", (before["id"],))
        assert (after["status"], after["status_msg"]) == ("error", "interrupted"), after
        assert after["finished_at"] is not None
        assert after["started_at"] == before["started_at"]
    # What had ended before the kill did not change.
    for execution_id, ending in finished_before.items():
        [after] = db.executions("id = ?", (execution_id,))
        assert (after["status"], after["status_msg"], after["finished_at"]) == ending
    # Retries: exactly one per interrupted run that had a retry left, after it, none else.
    retries = db.executions("trigger = 'retry'")
    assert Counter((e["task_id"], e["attempt"]) for e in retries) == expected_retries
    for retry in retries:
        assert retry["id"] > last_id_before
        assert retry["status"] in {"done", "canceled"}, retry
    interrupted_tasks_with_retries = {
        name_of[e["task_id"]] for e in interrupted if MAX_RETRIES[name_of[e["task_id"]]]
    }
    assert {name_of[e["task_id"]] for e in retries} == interrupted_tasks_with_retries
    # No task lost or renumbered; nothing left running after the clean stop.
    assert db.task_ids() == task_ids
    assert db.executions("status IN ('running', 'paused')") == []
    assert db.rows("SELECT name FROM tasks WHERE status IN ('running', 'paused')") == []


# ---------------------------------------------------------------------------------------
# 2. SIGTERM with a long execution running


def run_long_task_then_sigterm(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> tuple[Daemon, Db, dict[str, Any], float]:
    """Start a 30 s sleep task, SIGTERM it after two steps; return the finished daemon."""
    config = write_config(
        tmp_path / "taskd.toml",
        sleep_task("long", 30, steps=30, options="{ max_retries = 1, retry_delay_sec = 0.2 }"),
        shutdown_grace_sec=0.5,
        stop_grace_sec=0.5,
    )
    daemon, db = started(start_daemon, config)
    [execution] = wait_until(
        lambda: db.executions("status = 'running' AND progress >= 6.6"),
        "two steps of the long execution",
    )
    started_at = time.monotonic()
    daemon.send(signal.SIGTERM)
    code = daemon.wait_exit()
    elapsed = time.monotonic() - started_at
    assert code == 0, daemon.stderr_tail()
    return daemon, db, execution, elapsed


def test_sigterm_stops_a_long_execution_within_the_grace_and_saves_its_state(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """SIGTERM: exit 0 quickly, the running execution canceled, the module's state saved."""
    daemon, db, execution, elapsed = run_long_task_then_sigterm(tmp_path, start_daemon)
    assert elapsed < 4.0, f"took {elapsed:.1f} s with shutdown_grace_sec = 0.5"
    daemon.wait_for("taskd stopped")
    daemon.assert_no_errors()
    ended = daemon.wait_for("execution ended", execution_id=execution["id"])
    assert ended["status"] == "canceled"

    [after] = db.executions("id = ?", (execution["id"],))
    assert after["status"] == "canceled", after
    assert after["finished_at"] is not None
    [(status, state, canceled_at)] = db.rows(
        "SELECT status, state, run_canceled_at FROM tasks WHERE name = 'long'"
    )
    assert status == "canceled"
    assert canceled_at == after["finished_at"]
    saved = json.loads(state)
    assert set(saved) == {"done_steps"}
    assert 2 <= saved["done_steps"] < 30
    # The record says why it stopped (the shutdown) and how far it got (the module).
    assert after["status_msg"] == f"daemon shutting down: stopped after {saved['done_steps']} steps"
    # A run stopped for the shutdown is not a failure: no retry, nothing left running.
    assert db.executions("trigger = 'retry'") == []
    assert db.executions("status IN ('running', 'paused')") == []


# ---------------------------------------------------------------------------------------
# 3. SIGHUP reload


def test_sighup_applies_a_changed_config_and_refuses_an_invalid_one_whole(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """SIGHUP: add, change and remove tasks; an invalid file is refused and changes nothing."""
    never = "[{ cron = '0 0 1 1 *' }]"  # 1 January: nothing runs during the test
    path = tmp_path / "taskd.toml"
    write_config(
        path,
        sleep_task("keep", 1, schedules=never)
        + sleep_task("change", 1, schedules=never)
        + sleep_task("remove", 1, schedules=never),
    )
    daemon, db = started(start_daemon, path)
    ids = db.task_ids()
    assert set(ids) == {"keep", "change", "remove"}

    write_config(
        path,
        sleep_task("keep", 1, schedules=never)
        + sleep_task("change", 2.5, steps=7, schedules=never)
        + sleep_task("added", 1, schedules=never),
    )
    daemon.send(signal.SIGHUP)
    reloaded = daemon.wait_for("config reloaded")
    assert (reloaded["added"], reloaded["updated"], reloaded["retired"]) == (
        ["added"],
        ["change"],
        ["remove"],
    )
    now_ids = db.task_ids()
    assert set(now_ids) == {"keep", "change", "added", "remove"}, "retired, not deleted"
    assert (now_ids["keep"], now_ids["change"]) == (ids["keep"], ids["change"])
    assert db.rows("SELECT enabled, retired_at IS NOT NULL FROM tasks WHERE name = 'remove'") == [
        (0, 1)
    ]
    rows = {
        name: (json.loads(spec), version, source)
        for name, spec, version, source in db.rows("SELECT name, spec, version, source FROM tasks")
    }
    assert rows["change"][0]["task_params"] == {"seconds": 2.5, "steps": 7}
    assert rows["change"][1] == 2
    assert rows["keep"][1] == 1
    assert rows["added"][0]["task_params"] == {"seconds": 1, "steps": 5}
    assert {source for _, _, source in rows.values()} == {"config"}
    retired_snapshot = db.rows("SELECT * FROM tasks ORDER BY id")

    # An invalid file (hours = 25) that would also add, change and remove: refused whole.
    snapshot = db.rows("SELECT * FROM tasks ORDER BY id")
    write_config(
        path,
        sleep_task("keep", 1, schedules="[{ hours = [25], minutes = [0] }]")
        + sleep_task("change", 9, schedules=never)
        + sleep_task("another", 1, schedules=never),
    )
    daemon.send(signal.SIGHUP)
    refused = daemon.wait_for("config reload refused")
    assert refused["level"] == "error"
    assert "task[keep].schedules[0].hours[0]" in refused["problem"], refused
    assert "25" in refused["problem"]
    time.sleep(0.3)  # nothing may follow the refusal
    assert db.rows("SELECT * FROM tasks ORDER BY id") == snapshot == retired_snapshot
    assert len(daemon.find("config reloaded")) == 1
    assert daemon.process.poll() is None, "the daemon died of an invalid reload"
    assert "Traceback" not in daemon.stderr_text()

    # An empty file retires every task; naming `remove` again brings it back, same id.
    path.write_text("")
    daemon.send(signal.SIGHUP)
    wait_until(lambda: len(daemon.find("config reloaded")) == 2, "the empty file's reload")
    assert db.value("SELECT count(*) FROM tasks WHERE retired_at IS NULL") == 0
    assert set(db.task_ids()) == {"keep", "change", "added", "remove"}
    write_config(path, sleep_task("remove", 1, schedules=never))
    daemon.send(signal.SIGHUP)
    wait_until(lambda: len(daemon.find("config reloaded")) == 3, "the restoring reload")
    assert db.rows("SELECT id, enabled, retired_at FROM tasks WHERE name = 'remove'") == [
        (ids["remove"], 1, None)
    ]

    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_sighup_revokes_an_api_key_at_once(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """A key removed from the file gets 401 right after the SIGHUP's reload; the key that
    stays keeps working (over TCP, as a client would see it)."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    secrets = {name: name[0] * 43 for name in ("ops", "gone")}
    for name, secret in secrets.items():
        (keys / name).write_text(secret + "\n")
        (keys / name).chmod(0o600)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def config(*names: str) -> str:
        blocks = "".join(
            f'[[api.keys]]\nname = "{n}"\nkey_file = "keys/{n}"\nscopes = ["*"]\n' for n in names
        )
        return (
            '[daemon]\nstate_dir = "state"\n'
            f'[api]\nlisten = ["127.0.0.1:{port}"]\nunix_socket = false\n{blocks}'
        )

    path = tmp_path / "taskd.toml"
    path.write_text(config("ops", "gone"))
    path.chmod(0o600)
    daemon, _ = started(start_daemon, path)

    def status(name: str) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v2/tasks",
            headers={"Authorization": f"Bearer {secrets[name]}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as error:
            return error.code

    assert (status("ops"), status("gone")) == (200, 200)
    path.write_text(config("ops"))
    daemon.send(signal.SIGHUP)
    daemon.wait_for("config reloaded")
    assert (status("ops"), status("gone")) == (200, 401)
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_sighup_with_a_new_default_timezone_moves_zoneless_schedules(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """A schedule without its own zone is stored without one and follows `[daemon].timezone`:
    a SIGHUP that changes it moves the task's due time; a task naming its zone stays."""
    noon = "[{ hours = [12], minutes = [0] }]"
    pinned = "[{ hours = [12], minutes = [0], timezone = 'UTC' }]"
    path = tmp_path / "taskd.toml"
    tasks = sleep_task("zoneless", 0, schedules=noon) + sleep_task("pinned", 0, schedules=pinned)
    write_config(path, tasks, timezone="UTC")
    daemon, db = started(start_daemon, path)

    def due() -> dict[str, datetime]:
        rows = db.rows("SELECT name, next_run_at FROM tasks")
        return {name: datetime.fromtimestamp(micros / 1e6, UTC) for name, micros in rows}

    before = due()
    assert (before["zoneless"].hour, before["pinned"].hour) == (12, 12)
    [spec] = db.rows("SELECT spec FROM tasks WHERE name = 'zoneless'")
    assert "timezone" not in json.loads(spec[0])["schedules"][0]

    write_config(path, tasks, timezone="Asia/Tokyo")  # UTC+9 all year: noon is 03:00 UTC
    daemon.send(signal.SIGHUP)
    daemon.wait_for("config reloaded")
    after = due()
    assert after["zoneless"].hour == 3
    assert after["pinned"] == before["pinned"]
    assert daemon.find("default timezone changed")
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


# ---------------------------------------------------------------------------------------
# 4. Invalid config at start


@pytest.mark.parametrize(
    ("tasks", "daemon_settings", "field"),
    [
        pytest.param(
            sleep_task("bad", 1, schedules="[{ hours = [25] }]"),
            {},
            "task[bad].schedules[0].hours[0]",
            id="hours",
        ),
        pytest.param(sleep_task("ok", 1), {"max_running": 0}, "daemon.max_running", id="daemon"),
        pytest.param(
            sleep_task("bad", 1, task_timeout="5"), {}, "task[bad].task_timeout", id="unknown-key"
        ),
        pytest.param(
            task_toml("bad", "sleep", "{ steps = 3 }"),
            {},
            "task[bad].task_params.seconds",
            id="module-params",
        ),
    ],
)
def test_invalid_config_at_start_exits_2_naming_the_field(
    tmp_path: Path,
    start_daemon: Callable[[Path], Daemon],
    tasks: str,
    daemon_settings: dict[str, object],
    field: str,
) -> None:
    """An invalid config file: exit 2, an error line naming the field, no traceback."""
    config = write_config(tmp_path / "taskd.toml", tasks, **daemon_settings)
    daemon = start_daemon(config)
    assert daemon.wait_exit() == 2
    problems = [e["problem"] for e in daemon.find("invalid config", level="error")]
    assert any(p.startswith(f"{field}:") for p in problems), daemon.stderr_text()
    text = daemon.stderr_text()
    assert "Traceback" not in text
    assert not daemon.find("taskd started")
    assert not (tmp_path / "state" / DB_NAME).exists(), "an invalid config touched the state"


# ---------------------------------------------------------------------------------------
# 5. The shell module under the daemon: a timeout kills the whole process group


def _process_groups() -> dict[int, tuple[int, int, str]]:
    """Return {pid: (pgid, session id, state)} of every process now."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[2]), int(fields[3]), fields[0])
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) `sleep 1000`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat[stat.rindex(")") + 2 :].split()[0]
    return cmdline == b"sleep\x001000\x00" and state != "Z"


def test_shell_timeout_ends_in_error_and_kills_the_whole_process_group(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """task_timeout_sec: the shell execution ends `error` "timed out" and no child survives."""
    work = tmp_path / "work"
    work.mkdir()
    pids_file = work / "pids"
    command = (
        "sh -c 'sleep 1000 & echo $! >> pids; sleep 1000 & echo $! >> pids; wait'"
        " & echo $! >> pids; wait"
    )
    params = "{ command = " + json.dumps(command) + ", cwd = " + json.dumps(str(work)) + " }"
    config = write_config(
        tmp_path / "taskd.toml",
        # 3 s: long enough for the test to see the children alive on a loaded machine.
        task_toml("hang", "shell", params, task_timeout_sec="3", next_run_at=utc_in(0.5)),
        stop_grace_sec=0.5,
        shutdown_grace_sec=0.5,
    )
    pids: list[int] = []
    try:
        daemon, db = started(start_daemon, config)
        wait_until(
            lambda: pids_file.exists() and len(pids_file.read_text().split()) == 3,
            "the shell to write its three pids",
        )
        pids = [int(p) for p in pids_file.read_text().split()]
        # Written in no fixed order: the inner `sh -c` and its two `sleep 1000`.
        assert sum(_alive(p) for p in pids) == 2, pids
        [execution] = wait_until(
            lambda: db.executions("status NOT IN ('queued', 'running')"), "the execution to end"
        )
        assert execution["status"] == "error", execution
        assert execution["status_msg"].startswith("timed out"), execution
        assert execution["trigger"] == "schedule"
        # The whole group is gone: the pids written, and anything else of the group/session.
        logs = [msg for (msg,) in db.rows("SELECT msg FROM log_entries ORDER BY idx")]
        leaders = [int(m[1]) for text in logs if (m := re.match(r"started process (\d+) ", text))]
        assert len(leaders) == 1, logs
        leader = leaders[0]

        def group_gone() -> bool:
            group = {
                pid
                for pid, (pgid, sid, state) in _process_groups().items()
                if (pgid == leader or sid == leader) and state != "Z"
            }
            return not group and not any(_alive(p) for p in pids)

        wait_until(group_gone, f"process group {leader} to be gone", timeout=5)
        assert daemon.process.poll() is None
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        daemon.assert_no_errors()
    finally:
        for pid in pids:  # only what this test's command started, should it have survived
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------
# 6. A second SIGTERM skips the grace


def test_second_sigterm_skips_the_shutdown_grace(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """A second SIGTERM during the shutdown grace stops the executions and exits at once."""
    config = write_config(
        tmp_path / "taskd.toml",
        sleep_task("long", 30, steps=30),
        shutdown_grace_sec=30,
        stop_grace_sec=0.5,
    )
    daemon, db = started(start_daemon, config)
    # `running` with a start time passed: its start may be committed ahead of its instant.
    wait_until(
        lambda: db.executions("status = 'running' AND started_at <= ?", (int(time.time() * 1e6),)),
        "the long execution to start",
    )
    daemon.send(signal.SIGTERM)
    stopping = daemon.wait_for("taskd stopping")
    # The first signal says what a second one does (a user at Ctrl-C wants to know).
    assert "a second Ctrl-C (or SIGTERM) stops them now" in stopping["hint"]
    time.sleep(0.3)  # the shutdown is now waiting for the running execution
    daemon.send(signal.SIGTERM)
    daemon.wait_for("second stop signal: stopping executions now")
    started_at = time.monotonic()
    assert daemon.wait_exit(timeout=5) == 0
    assert time.monotonic() - started_at < 3
    assert db.executions("status = 'canceled'")


# ---------------------------------------------------------------------------------------
# 7. overlap = "queue" under the daemon


def test_overlap_queue_starts_the_pending_slot_when_the_running_one_ends(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """overlap=queue: the slot that came during a run starts as soon as that run ends."""
    config = write_config(
        tmp_path / "taskd.toml",
        sleep_task("queued", 1.5, steps=3, options="{ overlap = 'queue' }"),
        shutdown_grace_sec=0.5,
        stop_grace_sec=0.5,
    )
    daemon, db = started(start_daemon, config)
    [first] = wait_until(lambda: db.executions("status = 'done'")[:1], "the first execution to end")
    time.sleep(0.5)
    [second] = db.executions("slot_at = ?", (first["slot_at"] + 1_000_000,))
    assert second["status"] != "queued", second
    assert second["started_at"] - first["finished_at"] < 300_000, (first, second)
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


# ---------------------------------------------------------------------------------------
# One daemon per state directory


def test_a_second_daemon_on_the_same_state_directory_is_refused(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """A second taskd on the same state_dir exits 1 at once and leaves the first untouched."""
    config = write_config(tmp_path / "taskd.toml", sleep_task("steady", 0.1))
    first, db = started(start_daemon, config)
    second = start_daemon(config)
    assert second.wait_exit() == 1
    assert second.find("another taskd runs on this state directory", level="error")
    assert not second.find("taskd started")
    assert "Traceback" not in second.stderr_text()
    first.send(signal.SIGTERM)
    assert first.wait_exit() == 0
    assert db.task_ids() == {"steady": 1}


@pytest.mark.parametrize(
    ("layout", "problem"),
    [
        ("state dir is a file", "File exists"),
        ("database is a directory", "cannot open the database"),
        ("database is not a database", "file is not a database"),
    ],
)
def test_an_unusable_state_directory_at_start_exits_2_naming_path_and_reason(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon], layout: str, problem: str
) -> None:
    """A state directory taskd cannot use (made of misplaced files: tests run as root, so
    modes would not stop them) is an error line naming the path and the reason, exit 2;
    never "internal error ... a bug" (exit 70) nor a traceback."""
    state_dir = tmp_path / "state"
    if layout == "state dir is a file":
        state_dir.write_text("not a directory\n")
    elif layout == "database is a directory":
        (state_dir / DB_NAME).mkdir(parents=True)
    else:
        state_dir.mkdir()
        (state_dir / DB_NAME).write_bytes(b"this is not an SQLite file, " * 100)
    daemon = start_daemon(write_config(tmp_path / "taskd.toml", sleep_task("never", 0.1)))
    assert daemon.wait_exit() == 2, daemon.stderr_text()
    [event] = daemon.find("cannot use the state directory", level="error")
    assert event["state_dir"] == str(state_dir)
    assert problem in event["problem"]
    text = daemon.stderr_text()
    assert "Traceback" not in text
    assert "bug" not in text
    assert not daemon.find("taskd started")


# ---------------------------------------------------------------------------------------
# A failure mail, end to end: the daemon, a failing task, a real SMTP server on loopback


def test_a_failing_task_sends_a_mail_through_the_configured_smtp_server(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """A task that fails under the real daemon mails its recipient through [smtp]."""
    from aiosmtpd.controller import Controller

    received: list[str] = []

    class Collect:
        async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
            received.append(envelope.content.decode())
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Collect(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        task = task_toml(
            "disk-check",
            "shell",
            '{ command = "echo disk almost full; exit 3" }',
            next_run_at=utc_in(1),
            email='{ recipients = [{ email = "ops@example.org", problems_only = true }] }',
        )
        smtp = (
            f'\n[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
            'from = "taskd@example.org"\n'
        )
        config = write_config(tmp_path / "taskd.toml", task + smtp)
        daemon, _ = started(start_daemon, config)
        wait_until(lambda: received, "the failure mail", timeout=15)
        mail = received[0]
        assert "Subject: [taskd] disk-check: error" in mail
        assert "exit code 3" in mail
        assert "disk almost full" in mail
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
    finally:
        controller.stop()


# ---------------------------------------------------------------------------------------
# Once it listens, taskd says how to reach it


def test_once_listening_the_daemon_prints_a_curl_line_that_works(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """With TCP and a key, the "api ready" event names the URL and the key file (never the
    key) and a curl line; that very line, run in a shell, lists the tasks."""
    key_file = tmp_path / "keys" / "admin"
    key_file.parent.mkdir(mode=0o700)
    key = "k" * 43
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "taskd.toml"
    config.write_text(
        '[daemon]\nstate_dir = "state"\n'
        f'[api]\nlisten = ["127.0.0.1:{port}"]\nunix_socket = false\n'
        '[[api.keys]]\nname = "admin"\nkey_file = "keys/admin"\nscopes = ["*"]\n'
        + task_toml("hello", "sleep", "{ seconds = 0 }")
    )
    config.chmod(0o600)
    daemon = start_daemon(config)
    ready = daemon.wait_for("api ready")
    assert ready["url"] == f"http://127.0.0.1:{port}/api/v2"
    assert ready["key_file"] == str(key_file)
    assert key not in json.dumps(ready)
    reply = subprocess.run(
        ["bash", "-c", ready["example"]], capture_output=True, text=True, timeout=20, check=True
    )
    assert [task["name"] for task in json.loads(reply.stdout)["tasks"]] == ["hello"]


# ---------------------------------------------------------------------------------------
# 12. kill -9 with a shell command running: the command never runs twice at once

# Each copy first notes any earlier copy that is still alive (not a zombie), then its pid.
_NOTE_AND_SLEEP = (
    "for p in $(cat pids 2>/dev/null); do"
    " s=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f1);"
    ' if [ -n "$s" ] && [ "$s" != Z ]; then echo "$p $s" >> overlaps; fi;'
    " done; echo $$ >> pids; exec sleep 1000"
)


def test_kill_9_with_a_shell_command_running_ends_it_before_the_retry(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """kill -9 leaves the command's process group running; the restart ends it (SIGTERM)
    before marking the run interrupted and starting the retry: never two copies at once."""
    work = tmp_path / "work"
    work.mkdir()
    pids_file = work / "pids"
    params = (
        "{ command = " + json.dumps(_NOTE_AND_SLEEP) + ", cwd = " + json.dumps(str(work)) + " }"
    )
    config = write_config(
        tmp_path / "taskd.toml",
        task_toml(
            "sleeper",
            "shell",
            params,
            next_run_at=utc_in(0.3),
            options="{ max_retries = 1, retry_delay_sec = 0.2 }",
        ),
        stop_grace_sec=2,
        shutdown_grace_sec=0.5,
    )
    pids: list[int] = []

    def copies() -> list[int]:
        return [int(p) for p in pids_file.read_text().split()] if pids_file.exists() else []

    try:
        first, db = started(start_daemon, config)
        [old] = pids = wait_until(copies, "the command to start")
        [execution] = wait_until(
            lambda: db.executions("status = 'running'"), "the execution to be running"
        )
        wait_until(
            lambda: (
                db.value("SELECT process_group FROM executions WHERE id = ?", (execution["id"],))
                == old
            ),
            "the process group to be recorded",
        )
        wait_until(lambda: _alive(old), "the command to exec sleep")
        first.send(signal.SIGKILL)
        assert first.wait_exit() == -signal.SIGKILL
        assert _alive(old)  # the daemon died, its command did not

        second, _ = started(start_daemon, config)
        pids = wait_until(lambda: len(copies()) == 2 and copies(), "the retry to start")
        assert not (work / "overlaps").exists(), (work / "overlaps").read_text()
        assert not _alive(old)
        ended = second.wait_for("process group of an interrupted execution")
        assert (ended["execution_id"], ended["pgid"]) == (execution["id"], old)
        assert ended["outcome"] == "ended 1 process(es) with SIGTERM"
        # The group was ended before the run was marked interrupted (and so retried).
        names = [event["event"] for event in second.events]
        assert names.index("process group of an interrupted execution") < names.index(
            "execution was interrupted by a crash"
        )
        [before, retry] = db.executions()
        assert (before["status"], before["status_msg"]) == ("error", "interrupted")
        assert (retry["trigger"], retry["status"]) == ("retry", "running")
        logged = [
            msg
            for (msg,) in db.rows(
                "SELECT msg FROM log_entries WHERE execution_id = ? ORDER BY idx",
                (execution["id"],),
            )
        ]
        assert f"taskd restarted: process group {old}: ended 1 process(es) with SIGTERM" in logged
        second.send(signal.SIGTERM)
        assert second.wait_exit() == 0
        second.assert_no_errors()
    finally:
        for pid in pids:  # only what this test's command started, should it have survived
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
