"""The command line, run for real as `python -m taskd ...` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from taskd.cli import main

# Each test runs `python -m taskd` as a subprocess (about 0.2 s apiece).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BERLIN_0230 = '{"hours":[2],"minutes":[30],"timezone":"Europe/Berlin"}'


def taskd(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run the CLI (from the repository root unless `cwd`) and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "taskd", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Check exit status 2, nothing on stdout, only `taskd: ` lines on stderr; return them."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines
    assert all(line.startswith("taskd: ") for line in lines), lines
    return lines


# ---------------------------------------------------------------------------------------
# schedule next


def test_schedule_next_prints_utc_rfc3339_across_the_dst_gap() -> None:
    """02:30 Berlin on the spring-forward night fires at 03:00 CEST, 01:00 UTC."""
    result = taskd(
        "schedule", "next", "--schedule", BERLIN_0230,
        "--after", "2026-03-28T12:00:00Z", "--count", "2",
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout == "2026-03-29T01:00:00Z\n2026-03-30T00:30:00Z\n"
    assert result.stderr == ""


def test_schedule_next_explain_marks_the_dst_moved_and_doubled_slots() -> None:
    """--explain: a table with UTC, local time, schedule index and a DST note for the
    shifted spring slot and both occurrences of a repeated autumn slot."""
    moved = taskd(
        "schedule", "next", "--schedule", BERLIN_0230, "--explain",
        "--after", "2026-03-28T12:00:00Z", "--count", "2",
    )  # fmt: skip
    assert moved.returncode == 0, moved
    header, first, second = moved.stdout.splitlines()
    assert header.split() == ["UTC", "LOCAL", "SCHEDULE", "DST"]
    assert first.split()[:3] == ["2026-03-29T01:00:00Z", "2026-03-29T03:00:00+02:00", "0"]
    assert "moved" in first
    assert "skipped" in first
    assert second.split() == ["2026-03-30T00:30:00Z", "2026-03-30T02:30:00+02:00", "0"]
    doubled = taskd(
        "schedule", "next", "--schedule", '[{"hours": [5]}, {"minutes": [30]}]', "--explain",
        "--timezone", "America/New_York", "--after", "2026-11-01T05:00:00Z", "--count", "2",
    )  # fmt: skip
    assert doubled.returncode == 0, doubled
    _, first, second = doubled.stdout.splitlines()
    assert first.split()[:3] == ["2026-11-01T05:30:00Z", "2026-11-01T01:30:00-04:00", "1"]
    assert "1st occurrence" in first
    assert second.split()[:3] == ["2026-11-01T06:30:00Z", "2026-11-01T01:30:00-05:00", "1"]
    assert "2nd occurrence" in second
    too_many = taskd("schedule", "next", "--schedule", BERLIN_0230, "--explain", "--count", "5000")
    assert "--count" in assert_refused(too_many)[0]


def test_schedule_next_prints_five_by_default() -> None:
    """Without --count, five times are printed."""
    result = taskd(
        "schedule", "next", "--schedule", '{"minutes":[0]}', "--after", "2026-01-01T00:30:00Z"
    )
    assert result.returncode == 0
    assert result.stdout.splitlines() == [f"2026-01-01T{hour:02}:00:00Z" for hour in range(1, 6)]


def test_schedule_next_takes_a_list_and_merges_it() -> None:
    """A list of schedules fires at the earliest time over all of them."""
    schedules = json.dumps([{"hours": [12], "minutes": [0]}, {"cron": "0 6 * * *"}])
    result = taskd(
        "schedule", "next", "--schedule", schedules,
        "--after", "2026-01-01T00:00:00Z", "--count", "3",
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "2026-01-01T06:00:00Z",
        "2026-01-01T12:00:00Z",
        "2026-01-02T06:00:00Z",
    ]


def test_schedule_next_timezone_is_the_default_zone() -> None:
    """--timezone applies to a schedule that names no zone."""
    result = taskd(
        "schedule", "next", "--schedule", '{"hours":[2],"minutes":[30]}',
        "--timezone", "Europe/Berlin", "--after", "2026-03-28T12:00:00Z", "--count", "2",
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout == "2026-03-29T01:00:00Z\n2026-03-30T00:30:00Z\n"


@pytest.mark.parametrize("after", ["2026-03-28T12:00:00", "2026-03-28T13:00:00+01:00"])
def test_schedule_next_after_naive_is_utc_and_offsets_are_honoured(after: str) -> None:
    """A naive --after is UTC; one with an offset means the same instant in UTC."""
    result = taskd("schedule", "next", "--schedule", BERLIN_0230, "--after", after, "--count", "1")
    assert result.returncode == 0
    assert result.stdout == "2026-03-29T01:00:00Z\n"


def test_schedule_next_is_strictly_after() -> None:
    """A fire time equal to --after is not printed."""
    result = taskd(
        "schedule", "next", "--schedule", '{"interval_sec": 60}',
        "--after", "2026-01-01T00:00:00Z", "--count", "1",
    )  # fmt: skip
    assert result.stdout == "2026-01-01T00:01:00Z\n"


def test_schedule_next_help_says_naive_after_is_utc() -> None:
    """The help text documents how a naive --after is read."""
    result = taskd("schedule", "next", "--help")
    assert result.returncode == 0
    assert "without an offset it is taken as UTC" in " ".join(result.stdout.split())


def test_schedule_that_never_fires_is_refused_as_invalid() -> None:
    """February 30th never comes: the schedule is invalid (exit 2), as a task holding it
    would be, with the field and the reason on stderr."""
    result = taskd(
        "schedule", "next", "--schedule", '{"cron":"0 0 30 2 *"}', "--after", "2026-01-01T00:00:00Z"
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "schedule.cron" in result.stderr
    assert "never fires" in result.stderr


def test_empty_schedule_list_never_fires() -> None:
    """An empty list is valid and never fires."""
    result = taskd("schedule", "next", "--schedule", "[]", "--after", "2026-01-01T00:00:00Z")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "never fires" in result.stderr


def test_invalid_schedule_object_names_the_path() -> None:
    """An invalid single schedule exits 2 with its attribute path under `schedule`."""
    lines = assert_refused(taskd("schedule", "next", "--schedule", '{"hours":[2, 24]}'))
    assert len(lines) == 1
    assert lines[0].startswith("taskd: schedule.hours[1]: ")
    assert "24" in lines[0]


def test_invalid_schedule_list_reports_every_error_one_per_line() -> None:
    """Each problem in a list of schedules gets its own line with its path."""
    schedules = json.dumps([{"hours": [1]}, {"hours": [24]}, {"cron": "61 * * * *"}])
    lines = assert_refused(taskd("schedule", "next", "--schedule", schedules))
    assert [line.split(": ")[1] for line in lines] == ["schedules[1].hours[0]", "schedules[2].cron"]


def test_invalid_json_is_refused() -> None:
    """Text that is not JSON exits 2 with the decoder's position."""
    lines = assert_refused(taskd("schedule", "next", "--schedule", '{"hours":'))
    assert lines == ["taskd: --schedule: invalid JSON: Expecting value: line 1 column 10 (char 9)"]


def test_json_that_is_not_a_schedule_is_refused() -> None:
    """A JSON number is neither a schedule nor a list of them."""
    lines = assert_refused(taskd("schedule", "next", "--schedule", "5"))
    assert lines == ["taskd: --schedule: must be a schedule object or a list of schedule objects"]


def test_unknown_timezone_is_refused() -> None:
    """--timezone must be an IANA zone."""
    lines = assert_refused(
        taskd("schedule", "next", "--schedule", '{"hours":[1]}', "--timezone", "Mars/Olympus")
    )
    assert lines == ["taskd: --timezone: unknown time zone 'Mars/Olympus'"]


@pytest.mark.parametrize("count", ["0", "10001", "many"])
def test_count_out_of_range_is_refused(count: str) -> None:
    """--count must be an integer in 1..10000."""
    lines = assert_refused(
        taskd("schedule", "next", "--schedule", '{"hours":[1]}', "--count", count)
    )
    assert lines == [
        f"taskd: argument --count: must be an integer in 1..10000, got '{count}' "
        "(see 'taskd schedule next --help')"
    ]


def test_bad_after_is_refused() -> None:
    """--after must be an ISO 8601 date-time."""
    lines = assert_refused(
        taskd("schedule", "next", "--schedule", '{"hours":[1]}', "--after", "tomorrow")
    )
    assert lines[0].startswith("taskd: argument --after: 'tomorrow' is not an ISO 8601 date-time")


def test_count_upper_bound_is_accepted() -> None:
    """--count 10000 prints ten thousand lines."""
    result = taskd(
        "schedule", "next", "--schedule", '{"minutes":[0,30]}',
        "--after", "2026-01-01T00:00:00Z", "--count", "10000",
    )  # fmt: skip
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 10_000
    assert lines[-1] == "2026-07-28T08:00:00Z"


def test_schedule_without_a_command_names_what_is_missing() -> None:
    """`taskd schedule` alone asks for a COMMAND (as `taskd ctl` does), not for an internal
    name like `schedule_command`."""
    lines = assert_refused(taskd("schedule"))
    assert lines == [
        "taskd: the following arguments are required: COMMAND (see 'taskd schedule --help')"
    ]


# ---------------------------------------------------------------------------------------
# check-config


def test_check_config_example_lists_every_task(example_checkout: Path) -> None:
    """etc/taskd.toml is valid; each task is shown with its next three fire times."""
    result = taskd(
        "check-config", "etc/taskd.toml", "--after", "2026-03-28T12:00:00Z", cwd=example_checkout
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows == [
        ["TASK", "MODULE", "NEXT", "3", "FIRE", "TIMES", "(UTC)"],
        ["nightly-backup", "shell", "2026-03-29T01:00:00Z", "2026-03-29T03:00:00Z",
         "2026-03-30T00:30:00Z"],
        ["health-check", "http", "2026-03-30T06:00:00Z", "2026-03-30T06:15:00Z",
         "2026-03-30T06:30:00Z"],
        ["heartbeat", "sleep", "2026-03-28T12:05:00Z", "2026-03-28T12:10:00Z",
         "2026-03-28T12:15:00Z"],
        ["uptime", "shell", "2026-03-28T12:01:00Z", "2026-03-28T12:02:00Z",
         "2026-03-28T12:03:00Z"],
        ["friday-13th-report", "python", "disabled"],
        ["new-year-announcement", "shell", "2026-12-31T23:00:00Z"],
        ["manual-cleanup", "shell", "not", "scheduled"],
        ["etc/taskd.toml:", "OK,", "7", "tasks"],
    ]  # fmt: skip


def test_check_config_example_now(example_checkout: Path) -> None:
    """Without --after the example still checks out (times are relative to now)."""
    result = taskd("check-config", "etc/taskd.toml", cwd=example_checkout)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "etc/taskd.toml: OK, 7 tasks"


def test_check_config_past_one_shot(example_checkout: Path) -> None:
    """A one-shot whose time has passed says so instead of "not scheduled"."""
    result = taskd(
        "check-config", "etc/taskd.toml", "--after", "2027-06-01T00:00:00Z", cwd=example_checkout
    )
    line = next(line for line in result.stdout.splitlines() if "new-year" in line)
    assert line.split(None, 2)[2] == (
        "once at 2026-12-31T23:00:00Z (past; its catch_up policy decides)"
    )


def test_check_config_invalid_values(tmp_path: Path) -> None:
    """Every problem is printed, one per line, with the file and the attribute path."""
    path = tmp_path / "taskd.toml"
    path.write_text(
        "[daemon]\nmax_running = 0\n"
        '[[task]]\nname = "backup"\ntask_module = "shell"\n'
        'options = { overlap = "sometimes" }\nschedules = [{ hours = [24] }]\n'
    )
    lines = assert_refused(taskd("check-config", path))
    assert lines[0] == f"taskd: {path}: daemon.max_running: must be an integer >= 1, got 0"
    assert lines[1].startswith(f"taskd: {path}: task[backup].schedules[0].hours[0]: ")
    assert lines[2] == (
        f"taskd: {path}: task[backup].options.overlap: must be one of 'skip', 'queue', "
        "'parallel', 'replace', got the string 'sometimes'"
    )
    assert len(lines) == 3


def test_check_config_syntax_error(tmp_path: Path) -> None:
    """A TOML syntax error is one line naming file, line and column."""
    path = tmp_path / "broken.toml"
    path.write_text("[daemon]\nmax_running = \n")
    lines = assert_refused(taskd("check-config", path))
    assert lines == [f"taskd: {path}:2:15: invalid TOML: Invalid value"]


def test_check_config_unknown_module(tmp_path: Path) -> None:
    """check-config knows the built-in modules and refuses a misspelt one."""
    path = tmp_path / "taskd.toml"
    path.write_text('[[task]]\nname = "t"\ntask_module = "shel"\n')
    lines = assert_refused(taskd("check-config", path))
    assert len(lines) == 1
    assert lines[0].startswith(f"taskd: {path}: task[t].task_module: unknown module 'shel'; ")
    assert "http, python, shell, sleep" in lines[0]


def test_check_config_missing_file(tmp_path: Path) -> None:
    """A missing file exits 2 and says why."""
    path = tmp_path / "nope.toml"
    lines = assert_refused(taskd("check-config", path))
    assert lines == [f"taskd: {path}: cannot read the config file: No such file or directory"]


def test_check_config_directory_is_unreadable(tmp_path: Path) -> None:
    """A directory given as FILE exits 2, not with a traceback."""
    lines = assert_refused(taskd("check-config", tmp_path))
    assert lines[0].startswith(f"taskd: {tmp_path}: cannot read the config file: ")


def test_empty_config_is_valid(tmp_path: Path) -> None:
    """An empty file has no tasks and is valid."""
    path = tmp_path / "empty.toml"
    path.write_text("")
    result = taskd("check-config", path)
    assert result.returncode == 0
    assert result.stdout == f"{path}: OK, 0 tasks\n"


def test_the_example_needs_the_key_make_run_makes(example_checkout: Path) -> None:
    """The example config names `var/keys/admin`, which `make run` makes on first use:
    without it, check-config says serve would refuse, naming the key file."""
    (example_checkout / "var" / "keys" / "admin").unlink()
    lines = assert_refused(taskd("check-config", "etc/taskd.toml", cwd=example_checkout))
    assert lines[0].startswith(
        "taskd: etc/taskd.toml: taskd serve would refuse to start: api.keys[0].key_file: "
    )
    assert "var/keys/admin" in lines[0]
    makefile = (REPO / "Makefile").read_text()
    assert "test -e var/keys/admin || $(BIN)/taskd gen-key --out var/keys/admin" in makefile


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("missing key file", "api.keys[0].key_file: "),
        ("key readable by others", "key"),
        ("config writable by others", "chmod go-w"),
    ],
)
def test_check_config_refuses_what_serve_refuses(
    tmp_path: Path, problem: str, expected: str
) -> None:
    """check-config runs the checks `taskd serve` runs before it starts: a missing key file,
    a key file of mode 0644, a config file others can write each end in exit 2 with the
    reason, where before check-config said OK."""
    key = tmp_path / "keys" / "admin"
    key.parent.mkdir()
    if problem != "missing key file":
        key.write_text("k" * 40 + "\n")
        key.chmod(0o644 if problem == "key readable by others" else 0o600)
    path = tmp_path / "taskd.toml"
    path.write_text(
        '[api]\nlisten = ["127.0.0.1:8470"]\n'
        '[[api.keys]]\nname = "admin"\nkey_file = "keys/admin"\nscopes = ["*"]\n'
    )
    path.chmod(0o666 if problem == "config writable by others" else 0o600)
    lines = assert_refused(taskd("check-config", path))
    assert len(lines) == 1
    assert lines[0].startswith(f"taskd: {path}: ")
    assert expected in lines[0]
    if problem != "missing key file":
        assert "taskd serve would refuse to start" in lines[0]


def test_check_config_accepts_a_private_key_file(tmp_path: Path) -> None:
    """The same config with a key of mode 0600 and a private config file checks out."""
    key = tmp_path / "admin"
    key.write_text("k" * 40 + "\n")
    key.chmod(0o600)
    path = tmp_path / "taskd.toml"
    path.write_text('[[api.keys]]\nname = "admin"\nkey_file = "admin"\nscopes = ["*"]\n')
    path.chmod(0o600)
    result = taskd("check-config", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: OK, 0 tasks\n"


# ---------------------------------------------------------------------------------------
# The entry point itself


def test_no_command_is_a_usage_error() -> None:
    """`taskd` alone exits 2 and names what is missing."""
    lines = assert_refused(taskd())
    assert lines == ["taskd: the following arguments are required: command (see 'taskd --help')"]


def test_main_returns_exit_codes_instead_of_raising(capsys: pytest.CaptureFixture[str]) -> None:
    """main() returns the status for --version and usage errors rather than exiting."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == "taskd 0.1.0\n"
    assert main(["schedule", "next"]) == 2
    assert "--schedule" in capsys.readouterr().err
