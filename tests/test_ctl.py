"""End-to-end tests of `taskd ctl`, `taskd gen-key` and `taskd hash-password`.

One real daemon (`python -m taskd serve`) serves the whole module: its state dir and Unix
socket live in a short directory under /tmp (sun_path holds 107 bytes), and it listens on
a free TCP port with an API key. The CLI runs as subprocesses, as a user runs it. Each test
uses task names of its own, so the tests do not see each other's tasks. The test's own
reads (waiting for an execution to reach a status) go straight to the socket with
`http.client`, which is quicker than a CLI process per poll. Every wait is bounded and the
daemon is killed at teardown.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from taskd.api.auth import verify_password
from taskd.ctl import InvalidInputError, read_task_file

# One `taskd serve` subprocess for the module; every test runs `taskd ctl` processes.
pytestmark = pytest.mark.slow

T = TypeVar("T")

WAIT_SEC = 10.0  # the bound of every wait
CLI_TIMEOUT_SEC = 20.0
CONFIG_TASK = "cfg-sleep"


# ---------------------------------------------------------------------------------------
# The daemon


@dataclass(frozen=True)
class Daemon:
    """The module's daemon: its process, config file, socket, TCP address and key file."""

    process: subprocess.Popen[bytes]
    config: Path
    socket: Path
    url: str
    key_file: Path
    log: Path
    work: Path  # a directory for the tests' files

    def get(self, path: str) -> tuple[int, bytes]:
        """GET `/api/v2<path>` over the socket; return the status and the body."""
        connection = _UnixConnection(self.socket)
        try:
            connection.request("GET", "/api/v2" + path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def api(self, path: str) -> Any:
        """GET `/api/v2<path>` over the socket; return the parsed JSON (asserting 200)."""
        status, body = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def create(self, name: str, module: str, params: Mapping[str, Any]) -> str:
        """Create a task straight through the API (setup, not under test); return its id."""
        body = {"name": name, "task_module": module, "task_params": params}
        connection = _UnixConnection(self.socket)
        try:
            connection.request("POST", "/api/v2/tasks", body=json.dumps(body))
            response = connection.getresponse()
            answer = response.read()
        finally:
            connection.close()
        assert response.status == 201, answer
        return str(json.loads(answer)["id"])

    def task_id(self, name: str) -> str:
        """The id of the task `name`."""
        [task] = self.api(f"/tasks?name={name}")["tasks"]
        return str(task["id"])

    def execution(self, execution_id: str) -> dict[str, Any]:
        """One execution as the API shows it."""
        found: dict[str, Any] = self.api(f"/executions/{execution_id}")
        return found


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=WAIT_SEC)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(check: Callable[[], T], what: str, timeout: float = WAIT_SEC) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """Start one daemon for the module; stop it at teardown, whatever happened."""
    base = Path(tempfile.mkdtemp(prefix="taskd-ctl-", dir="/tmp"))
    (base / "keys").mkdir()
    key_file = base / "keys" / "ops"
    key_file.write_text(secrets.token_urlsafe(32) + "\n")
    key_file.chmod(0o600)
    port = _free_port()
    config = base / "taskd.toml"  # the name `ctl` looks for in $CONFIGURATION_DIRECTORY
    config.write_text(
        textwrap.dedent(
            f"""\
            [daemon]
            state_dir = "state"
            stop_grace_sec = 2
            shutdown_grace_sec = 1

            [api]
            listen = ["127.0.0.1:{port}"]
            unix_socket = "s.sock"

            [[api.keys]]
            name = "ops"
            key_file = "keys/ops"
            scopes = ["*"]

            [[task]]
            name = "{CONFIG_TASK}"
            task_module = "sleep"
            task_params = {{ seconds = 1 }}
            schedules = [{{ cron = "0 3 * * *" }}]
            """
        )
    )
    log = base / "daemon.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "taskd", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # a Ctrl-C in the test's terminal is not for it
        )
    work = base / "work"
    work.mkdir()
    started = Daemon(
        process, config, base / "s.sock", f"http://127.0.0.1:{port}", key_file, log, work
    )
    try:

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the daemon exited:\n{log.read_text()}")
            try:
                status, body = started.get("/health")
            except OSError:
                return False
            # 503 ("scheduler": "stopped") while the API is up and the scheduler starting.
            return status == 200 and json.loads(body)["status"] == "ok"

        wait_until(healthy, "the daemon to answer GET /api/v2/health", timeout=3 * WAIT_SEC)
        yield started
    finally:
        # SIGTERM first, so the daemon stops the processes its shell tasks started; then
        # SIGKILL if it has not gone within the bound.
        process.terminate()
        try:
            process.wait(WAIT_SEC / 2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(WAIT_SEC)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Running the CLI


def taskd(
    *args: str | Path,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m taskd ARGS` and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "taskd", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SEC,
        check=False,
        env=None if env is None else {**os.environ, **env},
        cwd=cwd,
    )


def ctl(daemon: Daemon, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run `taskd ctl --socket SOCKET ARGS`."""
    return taskd("ctl", "--socket", daemon.socket, *args)


def parallel(*calls: Callable[[], T]) -> list[T]:
    """Make independent calls (CLI runs) at once; return their results in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def ctl_all(
    daemon: Daemon, *commands: tuple[str | Path, ...]
) -> list[subprocess.CompletedProcess[str]]:
    """Run several independent `taskd ctl --socket SOCKET ARGS` at once, in order."""
    return parallel(*(functools.partial(ctl, daemon, *args) for args in commands))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Check exit status 0 and a quiet stderr; return stdout."""
    assert result.returncode == 0, result
    assert result.stderr == "", result
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int) -> list[str]:
    """Check exit status `code`, no traceback, only `taskd: ` lines on stderr; return them."""
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines, result
    assert all(line.startswith("taskd: ") for line in lines), lines
    return lines


def table(text: str) -> list[list[str]]:
    """Split an aligned table into its rows of cells (cells hold no double spaces)."""
    return [
        [cell.strip() for cell in line.split("  ") if cell.strip()] for line in text.splitlines()
    ]


@contextlib.contextmanager
def following(daemon: Daemon, task: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Run `taskd ctl log -f TASK ARGS` with pipes; killed, reaped and closed at the end.

    The client gets SIGINT's default action, as from a terminal, even when this test run
    ignores SIGINT (a background job of a non-interactive shell does, and children inherit
    an ignored signal): Python then leaves SIGINT ignored and Ctrl-C could not be tested.
    """
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # reset to SIG_DFL by exec
    try:
        client = [sys.executable, "-m", "taskd", "ctl", "--socket", str(daemon.socket)]
        process = subprocess.Popen(
            [*client, "log", "-f", task, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    with process:
        try:
            yield process
        finally:
            process.kill()  # a no-op if it ended


def read_until(stream: IO[str], message: str) -> None:
    """Read log lines until one whose message is `message` (the test timeout bounds it)."""
    for _ in range(20):  # the shell module's own lines may come first, in either order
        line = stream.readline()
        assert line, f"the stream ended before {message!r}"
        if line.rstrip().endswith(f" {message}"):
            return
    raise AssertionError(f"no {message!r} in the first 20 lines")


def apply_toml(daemon: Daemon, name: str, text: str) -> subprocess.CompletedProcess[str]:
    """Write `text` to a TOML file and apply it."""
    path = daemon.work / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return ctl(daemon, "apply", path)


def wait_status(daemon: Daemon, execution_id: str, *statuses: str) -> dict[str, Any]:
    """Wait until the execution has one of `statuses`; return it."""
    return wait_until(
        lambda: (e := daemon.execution(execution_id))["status"] in statuses and e,
        f"execution {execution_id} to be {' or '.join(statuses)}",
    )


# ---------------------------------------------------------------------------------------
# Reading: list, show, modules, --json


def test_list_shows_tasks_in_an_aligned_table_with_utc_times(daemon: Daemon) -> None:
    """`list` prints a header and one row per task; times end in Z; --json parses."""
    text, *as_json = ctl_all(daemon, ("list",), ("--json", "list"), ("list", "--json"))
    rows = table(ok(text))
    assert rows[0] == ["NAME", "ID", "STATUS", "MODULE", "NEXT RUN", "LAST RUN"]
    [row] = [r for r in rows if r[0] == CONFIG_TASK]
    assert row[1] == daemon.task_id(CONFIG_TASK)
    assert row[2:4] == ["new", "sleep"]
    assert row[4].endswith("T03:00:00Z")
    assert row[5] == "-"
    header, *lines = text.stdout.splitlines()
    starts = [header.index(title) for title in ("ID", "STATUS", "MODULE", "NEXT RUN", "LAST")]
    for line in lines:  # every cell starts under its title
        assert all(line[start - 1] == " " and line[start] != " " for start in starts), line
    for result in as_json:  # the option goes either side of the command
        listed = json.loads(ok(result))
        assert CONFIG_TASK in [task["name"] for task in listed["tasks"]]
        assert listed["count"] == len(listed["tasks"])


def test_next_prints_the_next_fire_times_with_dst_notes(daemon: Daemon) -> None:
    """`next TASK --count N`: UTC, local, schedule index, DST note; `--json` is the server's
    answer; a bad count is a usage error (2); an unknown task is refused (1)."""
    apply_toml(
        daemon,
        "next-berlin",
        """
        [[task]]
        name = "next-berlin"
        task_module = "sleep"
        task_params = { seconds = 0 }
        schedules = [{ hours = [2], minutes = [30], timezone = "Europe/Berlin" }]
        """,
    )
    text, as_json, bad, unknown = ctl_all(
        daemon,
        ("next", "next-berlin", "--count", "3"),
        ("--json", "next", "next-berlin"),
        ("next", "next-berlin", "--count", "0"),
        ("next", "no-such-task"),
    )
    header, *rows = table(ok(text))
    assert header == ["UTC", "LOCAL", "SCHEDULE", "DST"]
    assert len(rows) == 3
    assert all(row[1].endswith(("+01:00", "+02:00")) and row[2] == "0" for row in rows)
    runs = json.loads(ok(as_json))["next_runs"]
    assert len(runs) == 10
    assert [r["at"] for r in runs[:3]] == [row[0] for row in rows]
    failed(bad, 2)
    failed(unknown, 1)


def test_show_finds_a_task_by_name_or_id(daemon: Daemon) -> None:
    """`show NAME` and `show ID` print the same task; `--json` prints the server's object."""
    task_id = daemon.task_id(CONFIG_TASK)
    by_name, by_id, as_json = map(
        ok,
        ctl_all(daemon, ("show", CONFIG_TASK), ("show", task_id), ("--json", "show", CONFIG_TASK)),
    )
    assert by_name == by_id
    assert re.search(rf"^id +{task_id}$", by_name, re.MULTILINE)
    assert re.search(r"^source +config$", by_name, re.MULTILINE)
    assert '{"cron": "0 3 * * *"}' in by_name
    assert json.loads(as_json) == daemon.api(f"/tasks/{task_id}")


def test_show_and_executions_showprogress_text(daemon: Daemon) -> None:
    """`show` (its last execution) and `executions` (a PROGRESS column) show the progress a
    module reported."""
    daemon.create("pg-nap", "sleep", {"seconds": 0.1, "steps": 2})
    execution_id = ok(ctl(daemon, "run", "pg-nap")).strip()
    wait_status(daemon, execution_id, "done")
    rows = table(ok(ctl(daemon, "executions", "pg-nap")))
    assert rows[0][:7] == [
        "ID",
        "STATUS",
        "TRIGGER",
        "SCHEDULED",
        "STARTED",
        "DURATION",
        "PROGRESS",
    ]
    assert rows[1][0] == execution_id
    assert rows[1][6] == "100 %"
    shown = ok(ctl(daemon, "show", "pg-nap"))
    assert re.search(rf"^last execution +{execution_id}, manual, done.*progress 100 %", shown, re.M)


def test_show_says_a_paused_run_is_paused() -> None:
    """`show`'s "last run" says `(paused)` for a paused run, not `(running)`."""
    from taskd.ctl.reading import _last_run

    started = "2026-12-03T14:27:17Z"
    assert _last_run({"run_started_at": started, "status": "paused"}) == f"{started} (paused)"
    assert _last_run({"run_started_at": started, "status": "running"}) == f"{started} (running)"
    assert _last_run({}) == "never"


def test_progress_cell_names_every_counter() -> None:
    """The progress cell carries the percent, sizes, files and bandwidth a module reported."""
    from taskd.ctl.output import progress_text

    assert progress_text({}) == "-"
    assert (
        progress_text(
            {
                "progress": 40,
                "size_done": 1_200_000_000,
                "size_todo": 3_000_000_000,
                "nodes_done": 12,
                "nodes_todo": 30,
                "bandwidth": 85_000_000,
            }
        )
        == "40 %, 1.2 GB of 3.0 GB, 12 of 30 files, 85.0 MB/s"
    )
    assert progress_text({"size_done": 512}) == "512 B"


def test_modules_lists_the_builtin_modules(daemon: Daemon) -> None:
    """`modules` prints each module with its params, required ones starred."""
    text, as_json = map(ok, ctl_all(daemon, ("modules",), ("modules", "--json")))
    rows = {row[0]: row for row in table(text)[1:]}
    assert {"shell", "sleep", "http", "python"} <= set(rows)
    assert rows["sleep"][1] == "seconds*, steps, fail"
    modules = json.loads(as_json)["modules"]
    assert "shell" in [module["name"] for module in modules]


# ---------------------------------------------------------------------------------------
# apply


def test_apply_creates_then_updates_and_says_what_changed(daemon: Daemon) -> None:
    """Creating, re-applying unchanged (no write) and updating, field by field."""
    tasks = """\
        [[task]]
        name = "ap-echo"
        task_module = "shell"
        task_params = { command = "echo hi" }

        [[task]]
        name = "ap-sleep"
        task_module = "sleep"
        task_params = { seconds = 5 }
        schedules = [{ hours = [2], minutes = [30], timezone = "Europe/Berlin" }]
        options = { overlap = "skip" }
        """
    out = ok(apply_toml(daemon, "apply", tasks)).splitlines()
    echo_id, sleep_id = daemon.task_id("ap-echo"), daemon.task_id("ap-sleep")
    assert out == [f"created   ap-echo (id {echo_id})", f"created   ap-sleep (id {sleep_id})"]

    out = ok(apply_toml(daemon, "apply", tasks)).splitlines()
    assert out == [f"unchanged ap-echo (id {echo_id})", f"unchanged ap-sleep (id {sleep_id})"]
    assert daemon.api(f"/tasks/{sleep_id}")["version"] == 1  # nothing was written

    changed = tasks.replace('overlap = "skip"', 'overlap = "queue"').replace("= 5", "= 7")
    changed = changed.replace(
        'schedules = [{ hours = [2], minutes = [30], timezone = "Europe/Berlin" }]\n', ""
    )
    out = ok(apply_toml(daemon, "apply", changed)).splitlines()
    assert out == [
        f"unchanged ap-echo (id {echo_id})",
        f"updated   ap-sleep (id {sleep_id}): options.overlap, schedules, task_params.seconds",
    ]
    task = daemon.api(f"/tasks/{sleep_id}")
    assert task["options"]["overlap"] == "queue"
    assert task["schedules"] == []  # left out of the file: back to the default
    assert task["task_params"] == {"seconds": 7}


def test_apply_of_a_secret_says_unchanged_or_updated_rightly(daemon: Daemon) -> None:
    """A secret param (shell `env`) is shown masked: re-applying it unchanged writes no
    version, and changing only the secret is reported as an update of task_params."""
    tasks = """\
        [[task]]
        name = "ap-secret"
        task_module = "shell"
        task_params = { command = "true", env = { TOKEN = "one" } }
        """
    ok(apply_toml(daemon, "apply", tasks))
    task_id = daemon.task_id("ap-secret")
    assert daemon.api(f"/tasks/{task_id}")["task_params"]["env"] == {"TOKEN": "***"}
    out = ok(apply_toml(daemon, "apply", tasks)).splitlines()
    assert out == [f"unchanged ap-secret (id {task_id})"]
    assert daemon.api(f"/tasks/{task_id}")["version"] == 1
    out = ok(apply_toml(daemon, "apply", tasks.replace('"one"', '"two"'))).splitlines()
    assert out == [f"updated   ap-secret (id {task_id}): task_params"]
    assert daemon.api(f"/tasks/{task_id}")["version"] == 2


def test_apply_reads_a_json_list_of_task_objects(daemon: Daemon) -> None:
    """A JSON file holds a list of task objects; `comment` is the v2 name of description."""
    path = daemon.work / "tasks.json"
    task = {"name": "ap-json", "task_module": "sleep", "task_params": {"seconds": 1}}
    path.write_text(json.dumps([{**task, "comment": "from JSON", "workflow_type": "maintenance"}]))
    result = json.loads(ok(ctl(daemon, "--json", "apply", path)))
    assert [(r["action"], r["task"]["name"]) for r in result] == [("created", "ap-json")]
    assert re.search(r"^description +from JSON$", ok(ctl(daemon, "show", "ap-json")), re.M)

    # Left out, the description goes back to its default; workflow_type cannot, and says so.
    path.write_text(json.dumps([task]))
    result = ctl(daemon, "apply", path)
    assert result.returncode == 0
    assert result.stdout == f"updated   ap-json (id {daemon.task_id('ap-json')}): description\n"
    assert result.stderr == (
        f"taskd: note: {path}: task[ap-json]: workflow_type stays 'maintenance': "
        "the API cannot clear it\n"
    )


def test_apply_refuses_an_invalid_file_whole_naming_each_field(daemon: Daemon) -> None:
    """Errors the client's validator finds: every one, with its path; nothing is applied."""
    result = apply_toml(
        daemon,
        "bad",
        """\
        [[task]]
        name = "bad-fine"
        task_module = "sleep"
        task_params = { seconds = 1 }

        [[task]]
        name = "bad-hours"
        task_module = "sleep"
        task_params = { seconds = 1 }
        schedules = [{ hours = [25] }]
        options = { overlapp = "skip" }
        """,
    )
    path = daemon.work / "bad.toml"
    hours, overlap = failed(result, 2)
    assert hours == f"taskd: {path}: task[bad-hours].schedules[0].hours[0]: 25 is not in 0..23"
    assert overlap.startswith(f"taskd: {path}: task[bad-hours].options.overlapp: unknown field")
    assert result.stdout == ""
    assert daemon.api("/tasks?name=bad-fine")["tasks"] == []


def test_apply_prints_the_servers_validation_errors_with_their_paths(daemon: Daemon) -> None:
    """Errors only the daemon finds (module params, modules), each under `task[name]`."""
    result = apply_toml(
        daemon,
        "params",
        """\
        [[task]]
        name = "sv-typo"
        task_module = "shell"
        task_params = { commnd = "echo" }
        """,
    )
    path = daemon.work / "params.toml"
    [line] = failed(result, 2)
    assert line.startswith(f"taskd: {path}: task[sv-typo].task_params.commnd: unknown parameter")

    result = apply_toml(daemon, "module", '[[task]]\nname = "sv-mod"\ntask_module = "nosuch"\n')
    [line] = failed(result, 2)
    assert "task[sv-mod].task_module: unknown module 'nosuch'" in line


def test_apply_reports_syntax_errors_and_refused_config_tasks(daemon: Daemon) -> None:
    """A TOML syntax error (exit 2, with the line) and a config-defined task (exit 1)."""
    [line] = failed(apply_toml(daemon, "syntax", "[[task]\n"), 2)
    assert "invalid TOML" in line
    assert "line 1" in line
    lines = failed(
        apply_toml(
            daemon,
            "config",
            f'[[task]]\nname = "{CONFIG_TASK}"\ntask_module = "sleep"\n'
            "task_params = { seconds = 2 }\n",
        ),
        1,
    )
    assert lines == [
        f"taskd: {daemon.work / 'config.toml'}: task[{CONFIG_TASK}]: task '{CONFIG_TASK}' is "
        f"defined in {daemon.config}: edit it there"
    ]


# ---------------------------------------------------------------------------------------
# run, executions, log


def test_run_prints_the_execution_id_which_shows_in_executions_and_log(daemon: Daemon) -> None:
    """`run` -> an id; the run ends `done`, `executions` lists it, `log` prints its lines."""
    daemon.create("rn-echo", "shell", {"command": "echo line-one; echo line-two"})
    execution_id = ok(ctl(daemon, "run", "rn-echo", "--metadata", '{"why": "test"}')).strip()
    assert execution_id.isdigit()
    wait_status(daemon, execution_id, "done")

    rows = table(ok(ctl(daemon, "executions", "rn-echo")))
    assert rows[0][:3] == ["ID", "STATUS", "TRIGGER"]
    assert rows[1][:3] == [execution_id, "done", "manual"]
    listed = json.loads(ok(ctl(daemon, "--json", "executions", "rn-echo", "--limit", "1")))
    [execution] = listed["executions"]
    assert execution["trigger_metadata"] == {"why": "test"}

    second = ok(ctl(daemon, "run", "rn-echo")).strip()
    wait_status(daemon, second, "done")
    latest, every, as_json = map(
        ok,
        ctl_all(
            daemon,
            ("log", "rn-echo"),
            ("log", "rn-echo", "--all"),
            ("log", "rn-echo", "--json", "--execution", execution_id, "--limit", "1"),
        ),
    )
    lines = latest.splitlines()  # the latest run's
    messages = [line.split(maxsplit=2)[2] for line in lines]
    assert messages.count("line-one") == 1
    assert messages.index("line-one") < messages.index("line-two")
    for line in lines:  # time (UTC, to the millisecond), level, message
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [a-z]+ +\S.*", line), line
    runs = [line.split()[1] for line in every.splitlines() if line.endswith(" line-one")]
    assert runs == [f"[{execution_id}]", f"[{second}]"]  # every kept run, named
    [entry] = json.loads(as_json)["entries"]
    assert entry["execution_id"] == execution_id


HEADER = re.compile(r"-- execution (\d+) \(([a-z_]+), (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\) --")


def read_runs(stream: IO[str], runs: int) -> list[tuple[str, list[str]]]:
    """Read `log -f TASK` output until `runs` runs have shown a header and then a line
    ending with their last message; return (header, messages) per run, in order."""
    found: list[tuple[str, list[str]]] = []
    for _ in range(400):  # the test timeout bounds the reads
        line = stream.readline()
        assert line, f"the stream ended after {found}"
        line = line.rstrip("\n")
        if line.startswith("-- "):
            found.append((line, []))
        else:
            assert found, f"a line before any header: {line!r}"
            found[-1][1].append(line.split(maxsplit=2)[2])
        complete = [run for run in found if "last" in run[1]]
        if len(complete) >= runs:
            return complete
    raise AssertionError(f"fewer than {runs} complete runs in 400 lines: {found}")


def test_log_follow_follows_every_run_of_the_task_until_ctrl_c(daemon: Daemon) -> None:
    """`log -f TASK`, like `journalctl -f`: the runs of a task due every second come one
    after the other, each under its header line, and the client keeps following until
    SIGINT (then 130, quietly)."""
    apply_toml(
        daemon,
        "ev-second",
        """\
        [[task]]
        name = "ev-second"
        task_module = "shell"
        task_params = { command = "echo first; echo last" }
        schedules = [{ interval_sec = 1 }]
        """,
    )
    try:
        with following(daemon, "ev-second") as follower:
            assert follower.stdout is not None
            runs = read_runs(follower.stdout, 3)
            assert follower.poll() is None, "it keeps following"
            follower.send_signal(signal.SIGINT)
            _, errors = follower.communicate(timeout=WAIT_SEC)
        assert follower.returncode == 130
        assert errors == ""
    finally:
        ok(ctl(daemon, "delete", "ev-second"))
    ids = []
    for header, messages in runs:
        match = HEADER.fullmatch(header)
        assert match is not None, header
        assert match.group(2) == "schedule"
        assert messages.index("first") < messages.index("last")
        ids.append(int(match.group(1)))
    assert ids == sorted(set(ids)), "successive runs, each once"


def test_log_follow_prints_the_last_lines_then_the_next_run(daemon: Daemon) -> None:
    """`log -f -n 2 TASK` prints the latest run's last two lines under its header, waits,
    then prints the run that `ctl run` starts; `log -n 2` alone prints those two lines."""
    daemon.create("ln-shell", "shell", {"command": "echo one; echo two; echo three; echo last"})
    earlier = ok(ctl(daemon, "run", "ln-shell")).strip()
    wait_status(daemon, earlier, "done")
    whole = ok(ctl(daemon, "log", "ln-shell")).splitlines()
    assert ok(ctl(daemon, "log", "ln-shell", "--lines", "2")).splitlines() == whole[-2:]
    with following(daemon, "ln-shell", "-n", "2") as follower:
        assert follower.stdout is not None
        header = follower.stdout.readline().rstrip("\n")
        assert HEADER.fullmatch(header), header
        assert header.startswith(f"-- execution {earlier} (manual, ")
        assert [follower.stdout.readline().rstrip("\n") for _ in whole[-2:]] == whole[-2:]
        later = ok(ctl(daemon, "run", "ln-shell")).strip()
        [(next_header, messages)] = read_runs(follower.stdout, 1)
        assert next_header.startswith(f"-- execution {later} (manual, ")
        said = [m for m in messages if m in {"one", "two", "three", "last"}]
        assert said == ["one", "two", "three", "last"]
        follower.send_signal(signal.SIGINT)
        _, errors = follower.communicate(timeout=WAIT_SEC)
    assert (follower.returncode, errors) == (130, "")


def test_log_follow_one_execution_prints_lines_as_they_come_until_the_end(
    daemon: Daemon,
) -> None:
    """`log -f --execution ID` prints each line while the run goes on and exits 0 when the
    run ends."""
    # The run waits for the test (not for a time): however slow the machine, "first" is
    # read while it still runs.
    go_on = daemon.work / "fl-go-on"
    command = (
        f"echo first; while [ ! -e {go_on} ]; do sleep 0.05; done; "
        "echo second; sleep 0.2; echo third"
    )
    daemon.create("fl-shell", "shell", {"command": command})
    execution_id = ok(ctl(daemon, "run", "fl-shell")).strip()
    with following(daemon, "fl-shell", "--execution", execution_id) as follower:
        assert follower.stdout is not None
        read_until(follower.stdout, "first")
        # It came while the task still ran: lines are streamed, not printed at the end.
        assert daemon.execution(execution_id)["status"] == "running"
        go_on.touch()
        rest, errors = follower.communicate(timeout=WAIT_SEC)
    assert follower.returncode == 0, errors
    assert errors == ""
    messages = [line.split(maxsplit=2)[2] for line in rest.splitlines()]
    assert messages.index("second") < messages.index("third")
    assert daemon.execution(execution_id)["status"] == "done"


def test_log_follow_exits_130_quietly_on_ctrl_c(daemon: Daemon) -> None:
    """SIGINT while following ends the client with status 130 and nothing on stderr."""
    daemon.create("cc-shell", "shell", {"command": "echo started; sleep 30"})
    ok(ctl(daemon, "run", "cc-shell"))
    with following(daemon, "cc-shell") as follower:
        assert follower.stdout is not None
        read_until(follower.stdout, "started")
        follower.send_signal(signal.SIGINT)
        _, errors = follower.communicate(timeout=WAIT_SEC)
    assert follower.returncode == 130
    assert errors == ""
    ok(ctl(daemon, "kill", "cc-shell"))


# ---------------------------------------------------------------------------------------
# Actions


def test_pause_resume_stop_and_kill_a_running_sleep(daemon: Daemon) -> None:
    """Each action reaches the running execution; a refused one is one line, exit 1."""
    daemon.create("ac-sleep", "sleep", {"seconds": 60, "steps": 120})
    first = ok(ctl(daemon, "run", "ac-sleep")).strip()
    wait_status(daemon, first, "running")
    assert ok(ctl(daemon, "pause", "ac-sleep")).strip() == f"pause: execution {first}"
    wait_status(daemon, first, "paused")
    [line] = failed(ctl(daemon, "pause", "ac-sleep"), 1)
    assert "paused already" in line
    ok(ctl(daemon, "resume", "ac-sleep"))
    wait_status(daemon, first, "running")
    ok(ctl(daemon, "stop", "ac-sleep"))
    assert wait_status(daemon, first, "canceled", "done", "error")["status"] == "canceled"

    second = ok(ctl(daemon, "run", "ac-sleep")).strip()
    wait_status(daemon, second, "running")
    assert ok(ctl(daemon, "kill", "ac-sleep")).strip() == f"force_stop: execution {second}"
    ended = wait_status(daemon, second, "canceled", "done", "error")
    assert ended["status"] == "canceled"
    assert ended["status_msg"] == "force stopped"
    [line] = failed(ctl(daemon, "stop", "ac-sleep"), 1)
    assert "no running execution" in line


def test_defer_then_run_defer_starts_the_run_once(daemon: Daemon) -> None:
    """`defer` prints a defer id; `run-defer` starts it and prints the execution id, once."""
    daemon.create("df-sleep", "sleep", {"seconds": 0.1})
    defer_id = ok(ctl(daemon, "defer", "df-sleep")).strip()
    assert defer_id
    execution_id = ok(ctl(daemon, "run-defer", defer_id)).strip()
    assert wait_status(daemon, execution_id, "done")["trigger"] == "defer"
    [line] = failed(ctl(daemon, "run-defer", defer_id), 1)
    assert "used already" in line


def test_delete_removes_the_task(daemon: Daemon) -> None:
    """`delete` says which task went; afterwards `show` is refused with one line."""
    task_id = daemon.create("dl-sleep", "sleep", {"seconds": 1})
    assert ok(ctl(daemon, "delete", "dl-sleep")) == f"deleted dl-sleep (id {task_id})\n"
    assert failed(ctl(daemon, "show", "dl-sleep"), 1) == ["taskd: no task 'dl-sleep'"]


# ---------------------------------------------------------------------------------------
# Finding the daemon, TCP and errors


def test_an_unreachable_daemon_is_one_clear_line_and_exit_1(daemon: Daemon) -> None:
    """No socket file, and a socket nobody listens on (connection refused)."""
    missing = daemon.work / "missing.sock"
    assert failed(taskd("ctl", "--socket", missing, "list"), 1) == [
        f"taskd: cannot reach the daemon at {missing}: no such socket (is 'taskd serve' running?)"
    ]
    dead = daemon.work / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(dead))  # bound, never listening: connect() is refused
        assert failed(taskd("ctl", "--socket", dead, "list"), 1) == [
            f"taskd: cannot reach the daemon at {dead}: connection refused "
            "(is 'taskd serve' running?)"
        ]


def test_the_socket_is_found_through_the_config_file_or_the_environment(daemon: Daemon) -> None:
    """--config, $TASKD_SOCKET and $CONFIGURATION_DIRECTORY/taskd.toml each lead to it."""
    clean = {"TASKD_SOCKET": "", "CONFIGURATION_DIRECTORY": ""}
    by_env = {**clean, "TASKD_SOCKET": str(daemon.socket)}
    by_directory = {**clean, "CONFIGURATION_DIRECTORY": f"/nonexistent:{daemon.config.parent}"}
    results = parallel(
        lambda: taskd("ctl", "--config", daemon.config, "list", env=clean),
        lambda: taskd("ctl", "list", env=by_env),
        lambda: taskd("ctl", "list", env=by_directory, cwd=daemon.work),
    )
    for result in results:
        assert CONFIG_TASK in ok(result)


def test_tcp_needs_the_key_file_and_never_prints_the_key(daemon: Daemon) -> None:
    """--url with --key-file works; without a key or with a wrong one: a clear exit 1."""
    key = daemon.key_file.read_text().strip()
    wrong = daemon.work / "wrong-key"
    wrong.write_text(secrets.token_urlsafe(32))
    with_key, without_key, wrong_key = parallel(
        lambda: taskd("ctl", "--url", daemon.url, "--key-file", daemon.key_file, "list"),
        lambda: taskd("ctl", "--url", daemon.url, "list"),
        lambda: taskd("ctl", "--url", daemon.url, "--key-file", wrong, "show", CONFIG_TASK),
    )
    assert CONFIG_TASK in ok(with_key)
    assert failed(without_key, 1) == [
        f"taskd: {daemon.url} wants credentials: pass --key-file FILE with an API key"
    ]
    assert failed(wrong_key, 1) == [
        f"taskd: {daemon.url} wants credentials: the daemon refused the API key in {wrong}"
    ]
    for result in (with_key, without_key, wrong_key):
        assert key not in result.stdout + result.stderr


def test_list_shows_the_callers_tasks_and_all_every_owners(daemon: Daemon) -> None:
    """A task created over TCP with the key `ops` belongs to it: `list` over the socket
    leaves it out, `list --all` shows it with its owner, the key lists it as its own."""
    path = daemon.work / "owned.toml"
    path.write_text(
        '[[task]]\nname = "owned-by-ops"\ntask_module = "sleep"\ntask_params = { seconds = 0 }\n'
    )
    tcp = ("ctl", "--url", daemon.url, "--key-file", daemon.key_file)
    ok(taskd(*tcp, "apply", path))
    mine, every, as_key = parallel(
        lambda: ctl(daemon, "list"),
        lambda: ctl(daemon, "list", "--all"),
        lambda: taskd(*tcp, "list"),
    )
    assert "owned-by-ops" not in ok(mine)
    header, *rows = table(ok(every))
    assert header[-1] == "OWNER"
    assert [r[-1] for r in rows if r[0] == "owned-by-ops"] == ["ops"]
    assert [r[-1] for r in rows if r[0] == CONFIG_TASK] == ["config"]
    assert "owned-by-ops" in ok(as_key)


def test_usage_errors_exit_2(daemon: Daemon) -> None:
    """Bad local input is refused before anything is sent."""
    no_config = daemon.work / "no-such-config.toml"
    metadata, limit, lines, both, scheme, config, missing = parallel(
        lambda: ctl(daemon, "run", CONFIG_TASK, "--metadata", "[1]"),
        lambda: ctl(daemon, "log", CONFIG_TASK, "--limit", "0"),
        lambda: ctl(daemon, "log", CONFIG_TASK, "--lines", "2", "--limit", "3"),
        lambda: ctl(daemon, "--url", daemon.url, "list"),
        lambda: taskd("ctl", "--url", "ftp://example.org", "list"),
        lambda: taskd("ctl", "--config", no_config, "list"),
        lambda: ctl(daemon, "apply", daemon.work / "no-such-file.toml"),
    )
    assert failed(metadata, 2)[0].startswith("taskd: --metadata: must be a JSON object")
    assert "--limit" in failed(limit, 2)[0]
    assert failed(lines, 2) == [
        "taskd: --lines does not go with --limit or --offset: it chooses the last lines"
    ]
    assert failed(both, 2) == ["taskd: --socket and --url exclude each other: choose one"]
    assert "is not an http(s) URL" in failed(scheme, 2)[0]
    assert failed(config, 2) == [
        f"taskd: cannot read the config file {no_config}: no such file or directory "
        "(pass --socket PATH instead)"
    ]
    assert failed(missing, 2) == [
        f"taskd: cannot read {daemon.work / 'no-such-file.toml'}: no such file or directory"
    ]


# ---------------------------------------------------------------------------------------
# gen-key, hash-password


def test_gen_key_prints_a_key_or_writes_a_0600_file_it_never_overwrites(tmp_path: Path) -> None:
    """Without --out the key is printed; with it the file is new, mode 0600, not replaced."""
    printed = ok(taskd("gen-key")).strip()
    assert len(printed) >= 32
    assert printed.replace("-", "").replace("_", "").isalnum()
    out = tmp_path / "ops.key"
    ok(taskd("gen-key", "--out", out))
    key = out.read_text().strip()
    assert len(key) >= 32
    assert key != printed
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    [line] = failed(taskd("gen-key", "--out", out), 1)
    assert "not overwriting" in line
    assert out.read_text().strip() == key


def test_gen_key_makes_missing_folders_private(tmp_path: Path) -> None:
    """`gen-key --out var/keys/admin` works in a fresh checkout: the missing folders are
    made, mode 0700, and the key file is mode 0600."""
    out = tmp_path / "var" / "keys" / "admin"
    ok(taskd("gen-key", "--out", out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    assert len(out.read_text().strip()) >= 32


def test_hash_password_reads_stdin_and_prints_a_verifiable_hash() -> None:
    """The printed hash verifies with the API's own check; an empty password is refused."""
    hashed = ok(taskd("hash-password", stdin="correct horse\n")).strip()
    assert hashed.startswith("scrypt$")
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horse\n", hashed)
    failed(taskd("hash-password", stdin=""), 2)


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        (
            "tasks.toml",
            '[[task]]\nname = "a"\ntask_module = "sleep"\n\n'
            '[[task]]\nname = "a"\ntask_module = "sleep"\n',
            ("task #2 (line 5)", "task #1 (line 1)"),
        ),
        (
            "tasks.json",
            '[{"name": "a", "task_module": "sleep"}, {"name": "a", "task_module": "sleep"}]',
            ("task #2", "task #1"),
        ),
    ],
    ids=["toml", "json"],
)
def test_task_file_duplicates_are_named_by_position(
    tmp_path: Path, name: str, text: str, where: tuple[str, str]
) -> None:
    """A reused name in a task file names both tasks as config files do: position from 1,
    and the `[[task]]` line in TOML (issue 9.10)."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidInputError) as info:
        read_task_file(path)
    second, first = where
    assert info.value.messages == [
        f"{path}: {second}.name: duplicate task name 'a', also used by {first}"
    ]
