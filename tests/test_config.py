"""The config loader and the task validator the API shares with it."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from taskd.config import load_config, parse_config
from taskd.errors import FieldError, ValidationError
from taskd.model import CatchUp, Overlap, TaskOptions
from taskd.settings import ApiKeyRef, ListenAddress, Settings
from taskd.taskspec import validate_task_spec

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "etc" / "taskd.toml"
BUILTIN_MODULES = {"shell", "http", "sleep", "python", "files"}
MINIMAL_TASK = '[[task]]\nname = "t"\ntask_module = "shell"\n'


def parse(text: str, base_dir: Path = Path("/srv/taskd/etc"), **kwargs: object) -> Settings:
    """Parse config text as if it came from `x.toml` in `base_dir`."""
    return parse_config(text, source="x.toml", base_dir=base_dir, **kwargs)  # type: ignore[arg-type]


def errors_of(text: str, **kwargs: object) -> list[FieldError]:
    """Return the errors that parsing `text` raises (and fail if it does not raise)."""
    with pytest.raises(ValidationError) as caught:
        parse(text, **kwargs)
    return caught.value.errors


def utc(text: str) -> datetime:
    """An aware UTC datetime from ISO text."""
    return datetime.fromisoformat(text).astimezone(UTC)


# ---------------------------------------------------------------------------------------
# Valid files


def test_example_config_loads_with_every_field() -> None:
    """etc/taskd.toml loads against the built-in modules, with the values it spells out."""
    settings = load_config(EXAMPLE, known_modules=BUILTIN_MODULES)
    assert settings.source == str(EXAMPLE)
    assert settings.daemon.state_dir == REPO / "var"
    assert settings.daemon.timezone == "Europe/Berlin"
    assert settings.api.listen == (ListenAddress(host="127.0.0.1", port=8470),)
    assert settings.api.unix_socket == REPO / "var" / "taskd.sock"
    # The admin key `make run` makes on first use (issue 9.3).
    assert settings.api.keys == (
        ApiKeyRef(name="admin", key_file=REPO / "var" / "keys" / "admin", scopes=frozenset({"*"})),
    )
    names = [task.name for task in settings.tasks]
    assert names == [
        "nightly-backup",
        "health-check",
        "heartbeat",
        "uptime",
        "friday-13th-report",
        "new-year-announcement",
        "manual-cleanup",
    ]
    backup, health, heartbeat, uptime, friday, new_year, manual = settings.tasks
    assert backup.task_params["argv"][0] == "sh"
    assert uptime.task_params == {"command": "uptime"}
    assert backup.task_timeout_sec == 3600
    assert backup.options == TaskOptions(max_retries=2, retry_delay_sec=60.0)
    assert [r.email for r in backup.email_recipients] == ["ops@example.org"]
    assert backup.email_recipients[0].problems_only is True
    assert health.task_params == {
        "url": "http://127.0.0.1:8470/api/v2/health",
        "method": "GET",
    }
    assert heartbeat.options.overlap is Overlap.QUEUE
    assert heartbeat.options.priority == -10
    assert friday.enabled is False
    assert new_year.next_run_at == utc("2026-12-31T23:00:00+00:00")
    assert not new_year.schedules
    assert not manual.schedules
    assert manual.next_run_at is None


def test_example_schedules_fire_at_the_expected_instants() -> None:
    """The example's schedules give the documented times across the Berlin DST switch."""
    settings = load_config(EXAMPLE)
    backup, health, _, _, friday, _, _ = settings.tasks
    after = utc("2026-03-28T12:00:00+00:00")
    # 02:30 does not exist on 2026-03-29 in Berlin: it fires at 03:00 CEST = 01:00 UTC.
    assert backup.upcoming(after, 3) == [
        utc("2026-03-29T01:00:00+00:00"),
        utc("2026-03-29T03:00:00+00:00"),
        utc("2026-03-30T00:30:00+00:00"),
    ]
    # The cron schedule names no zone, so it takes the daemon's (Europe/Berlin).
    assert health.upcoming(after, 1) == [utc("2026-03-30T06:00:00+00:00")]
    assert friday.upcoming(after, 1) == [utc("2026-11-13T08:00:00+00:00")]


def test_empty_file_gives_the_defaults() -> None:
    """An empty file is valid: every default, no tasks, paths below the file's directory."""
    settings = parse("", base_dir=Path("/srv/taskd/etc"))
    daemon = settings.daemon
    assert daemon.state_dir == Path("/srv/taskd/etc/var")
    assert (daemon.timezone, daemon.max_running) == ("UTC", 16)
    assert (daemon.shutdown_grace_sec, daemon.stop_grace_sec) == (30.0, 10.0)
    assert (daemon.history_per_task, daemon.log_entries_per_execution) == (100, 1000)
    assert daemon.event_loop == "asyncio"
    assert parse('[daemon]\nevent_loop = "uvloop"\n').daemon.event_loop == "uvloop"
    api = settings.api
    assert [str(address) for address in api.listen] == ["127.0.0.1:8470"]
    assert api.unix_socket == Path("/srv/taskd/etc/var/taskd.sock")
    assert api.trust_unix_socket is True
    assert api.max_body_bytes == 1_048_576
    assert (api.keys, api.users, settings.tasks) == ((), (), ())


def test_task_defaults() -> None:
    """A task with only a name and a module gets the documented defaults."""
    (task,) = parse(MINIMAL_TASK).tasks
    assert (task.name, task.task_module) == ("t", "shell")
    assert (task.description, task.task_params) == ("", {})
    assert task.task_timeout_sec == 0
    assert not task.schedules
    assert task.next_run_at is None
    assert task.enabled is True
    assert task.options == TaskOptions()
    assert task.options.overlap is Overlap.SKIP
    assert task.options.catch_up is CatchUp.ONCE
    assert task.options.retry_delay_sec == 60.0
    assert task.email_recipients == ()
    assert (task.frontend_prefs, task.metadata) == ({}, {})
    assert (task.workflow_type, task.workflow_action) == (None, None)


def test_settings_are_frozen() -> None:
    """Settings and task specs cannot be changed after loading."""
    settings = parse(MINIMAL_TASK)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.daemon.max_running = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.tasks[0].name = "other"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------
# Paths


def test_relative_state_dir_is_relative_to_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """state_dir = "../var" in <dir>/etc/x.toml is <dir>/var, whatever the working directory."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "x.toml").write_text('[daemon]\nstate_dir = "../var"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_config(tmp_path / "etc" / "x.toml")
    assert settings.daemon.state_dir == tmp_path / "var"
    assert settings.api.unix_socket == tmp_path / "var" / "taskd.sock"


def test_relative_base_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config loaded by a relative path still yields absolute paths."""
    monkeypatch.chdir(tmp_path)
    settings = parse('[daemon]\nstate_dir = "state"\n', base_dir=Path("etc"))
    assert settings.daemon.state_dir == tmp_path / "etc" / "state"
    assert settings.daemon.state_dir.is_absolute()


def test_absolute_paths_are_kept() -> None:
    """Absolute state_dir, unix_socket and key_file are used as written."""
    settings = parse(
        '[daemon]\nstate_dir = "/var/lib/taskd"\n'
        '[api]\nunix_socket = "/run/taskd/taskd.sock"\n'
        '[[api.keys]]\nname = "ops"\nkey_file = "/etc/taskd/keys/ops"\nscopes = ["tasks/*"]\n'
    )
    assert settings.daemon.state_dir == Path("/var/lib/taskd")
    assert settings.api.unix_socket == Path("/run/taskd/taskd.sock")
    assert settings.api.keys == (
        ApiKeyRef(name="ops", key_file=Path("/etc/taskd/keys/ops"), scopes=frozenset({"tasks/*"})),
    )


def test_key_file_and_socket_are_relative_to_the_config_directory() -> None:
    """Relative key_file and unix_socket resolve against the config file's directory."""
    settings = parse(
        '[api]\nunix_socket = "../run/t.sock"\n'
        '[[api.keys]]\nname = "admin"\nkey_file = "../var/keys/admin"\nscopes = ["*"]\n',
        base_dir=Path("/srv/taskd/etc"),
    )
    assert settings.api.unix_socket == Path("/srv/taskd/run/t.sock")
    assert settings.api.keys[0].key_file == Path("/srv/taskd/var/keys/admin")


def test_unix_socket_false_turns_it_off() -> None:
    """unix_socket = false means no socket."""
    assert parse("[api]\nunix_socket = false\n").api.unix_socket is None


def test_listen_accepts_ipv6_host_names_and_no_addresses() -> None:
    """IPv6 in brackets, host names and an empty list (TCP off) are accepted."""
    settings = parse('[api]\nlisten = ["[::1]:8470", "localhost:9000", "0.0.0.0:80"]\n')
    assert settings.api.listen == (
        ListenAddress(host="::1", port=8470),
        ListenAddress(host="localhost", port=9000),
        ListenAddress(host="0.0.0.0", port=80),
    )
    assert str(settings.api.listen[0]) == "[::1]:8470"
    assert parse("[api]\nlisten = []\n").api.listen == ()


def test_default_socket_path_too_long_for_sun_path() -> None:
    """A state_dir so deep that <state_dir>/taskd.sock overflows sun_path is refused."""
    deep = "/" + "d" * 120
    (error,) = errors_of(f'[daemon]\nstate_dir = "{deep}"\n')
    assert error.path == "api.unix_socket"
    assert error.reason.startswith(f"{deep}/taskd.sock is 132 bytes long; a Unix socket path")
    assert error.reason.endswith("(set api.unix_socket to a shorter path)")


# ---------------------------------------------------------------------------------------
# Errors: exact path and reason

ERROR_CASES = [
    # (config text, path, reason)
    (
        '[daemon]\ntimezone = "Mars/Olympus"\n',
        "daemon.timezone",
        "unknown time zone 'Mars/Olympus'",
    ),
    ("[daemon]\nmax_running = 0\n", "daemon.max_running", "must be an integer >= 1, got 0"),
    (
        '[daemon]\nevent_loop = "trio"\n',
        "daemon.event_loop",
        "must be one of 'uvloop', 'asyncio', got the string 'trio'",
    ),
    (
        '[daemon]\nmax_running = "16"\n',
        "daemon.max_running",
        "must be an integer, got the string '16'",
    ),
    (
        "[daemon]\nhistory_per_task = 2.5\n",
        "daemon.history_per_task",
        "must be an integer, got the number 2.5",
    ),
    (
        "[daemon]\nshutdown_grace_sec = -1\n",
        "daemon.shutdown_grace_sec",
        "must be a number >= 0, got -1",
    ),
    (
        "[daemon]\nstop_grace_sec = nan\n",
        "daemon.stop_grace_sec",
        "must be a finite number, got nan",
    ),
    ("[daemon]\nstate_dir = 5\n", "daemon.state_dir", "must be a string, got the number 5"),
    ('[daemon]\nstate_dir = ""\n', "daemon.state_dir", "must not be empty"),
    ("daemon = 1\n", "daemon", "must be an object (a TOML table), got the number 1"),
    (
        '[api]\nlisten = ["::1:8470"]\n',
        "api.listen[0]",
        "an IPv6 address goes in brackets, such as '[::1]:8470', got '::1:8470'",
    ),
    (
        '[api]\nlisten = ["[::1]:0"]\n',
        "api.listen[0]",
        "port must be an integer in 1..65535, got '0'",
    ),
    (
        '[api]\nlisten = ["127.0.0.1:http"]\n',
        "api.listen[0]",
        "port must be an integer in 1..65535, got 'http'",
    ),
    (
        '[api]\nlisten = ["localhost"]\n',
        "api.listen[0]",
        "must be host:port such as '127.0.0.1:8470' or '[::1]:8470', got 'localhost'",
    ),
    (
        '[api]\nlisten = ["[fe80::zz]:80"]\n',
        "api.listen[0]",
        "'fe80::zz' is not an IPv6 address",
    ),
    (
        '[api]\nlisten = ["300.1.1.1:80"]\n',
        "api.listen[0]",
        "'300.1.1.1' is not a host name or IPv4 address",
    ),
    (
        '[api]\nlisten = ["a:1", "a:1"]\n',
        "api.listen[1]",
        "duplicate of api.listen[0]",
    ),
    ('[api]\nlisten = "a:1"\n', "api.listen", "must be an array, got the string 'a:1'"),
    (
        "[api]\nunix_socket = true\n",
        "api.unix_socket",
        "must be a path, or false to turn the socket off, got true",
    ),
    (
        '[api]\ntrust_unix_socket = "yes"\n',
        "api.trust_unix_socket",
        "must be true or false, got the string 'yes'",
    ),
    ("[api]\nmax_body_bytes = 0\n", "api.max_body_bytes", "must be an integer >= 1, got 0"),
    (
        '[[api.keys]]\nname = "ops"\nkey_file = "k"\nscopes = ["tasks/*", "tasks/delete"]\n',
        "api.keys[0].scopes[1]",
        "must be one of '*', 'admin', 'metrics', 'tasks/*', 'tasks/action', 'tasks/create', "
        "'tasks/destroy', 'tasks/index', 'tasks/run_defer', 'tasks/show', 'tasks/update', "
        "got the string 'tasks/delete'",
    ),
    (
        '[[api.keys]]\nname = "ops"\nkey_file = "k"\nscopes = []\n',
        "api.keys[0].scopes",
        "must name at least one scope, such as 'tasks/*'",
    ),
    ('[[api.keys]]\nname = "ops"\nscopes = ["*"]\n', "api.keys[0].key_file", "is required"),
    (
        '[[api.users]]\nname = "a:b"\npassword_hash = "h"\nscopes = ["*"]\n',
        "api.users[0].name",
        "must be 1 to 100 characters from A-Z a-z 0-9 _ . -, got 'a:b'",
    ),
    (
        '[[api.keys]]\nname = "ops"\nkey_file = "k"\nscopes = ["*"]\n'
        '[[api.users]]\nname = "ops"\npassword_hash = "h"\nscopes = ["*"]\n',
        "api.users[0].name",
        "duplicate name 'ops', also api.keys[0]",
    ),
    (
        "[api.keys]\nname = 1\n",
        "api.keys",
        "must be an array of tables ([[api.keys]]), got an object",
    ),
    ('[task]\nname = "t"\n', "task", "must be an array of tables ([[task]]), got an object"),
    ('[[task]]\nname = "t"\n', "task[t].task_module", "is required"),
    ('[[task]]\nname = "t"\ntask_module = ""\n', "task[t].task_module", "must not be empty"),
    ('[[task]]\ntask_module = "shell"\n', "task #1 (line 1).name", "is required"),
    (
        '[[task]]\nname = "no spaces"\ntask_module = "shell"\n',
        "task #1 (line 1).name",
        "must be 1 to 100 characters from A-Z a-z 0-9 _ . -, got 'no spaces'",
    ),
    (
        f'[[task]]\nname = "{"n" * 101}"\ntask_module = "shell"\n',
        "task #1 (line 1).name",
        f"must be 1 to 100 characters from A-Z a-z 0-9 _ . -, got '{'n' * 101}'",
    ),
    (
        MINIMAL_TASK + "task_timeout_sec = -1\n",
        "task[t].task_timeout_sec",
        "must be an integer >= 0, got -1",
    ),
    (
        MINIMAL_TASK + 'task_params = "x"\n',
        "task[t].task_params",
        "must be an object (a TOML table), got the string 'x'",
    ),
    (
        MINIMAL_TASK + "task_params = { since = 2026-01-01 }\n",
        "task[t].task_params.since",
        "TOML dates and times are not JSON; write '2026-01-01' as a string",
    ),
    (
        MINIMAL_TASK + "task_params = { argv = [1, inf] }\n",
        "task[t].task_params.argv[1]",
        "must be a finite number, got inf",
    ),
    (
        MINIMAL_TASK + 'schedules = "daily"\n',
        "task[t].schedules",
        "must be an array of schedules, got the string 'daily'",
    ),
    (
        MINIMAL_TASK + 'options = { overlap = "sometimes" }\n',
        "task[t].options.overlap",
        "must be one of 'skip', 'queue', 'parallel', 'replace', got the string 'sometimes'",
    ),
    (
        MINIMAL_TASK + 'options = { catch_up = "never" }\n',
        "task[t].options.catch_up",
        "must be one of 'once', 'skip', 'all', got the string 'never'",
    ),
    (
        MINIMAL_TASK + "options = { max_retries = -1 }\n",
        "task[t].options.max_retries",
        "must be an integer >= 0, got -1",
    ),
    (
        MINIMAL_TASK + "options = { retry_delay_sec = 0 }\n",
        "task[t].options.retry_delay_sec",
        "must be a number > 0, got 0",
    ),
    (
        MINIMAL_TASK + "options = { priority = 1.5 }\n",
        "task[t].options.priority",
        "must be an integer, got the number 1.5",
    ),
    (
        MINIMAL_TASK + 'enabled = "yes"\n',
        "task[t].enabled",
        "must be true or false, got the string 'yes'",
    ),
    (
        MINIMAL_TASK + 'email = { recipients = [{ email = "nobody" }] }\n',
        "task[t].email.recipients[0].email",
        "must be an e-mail address such as 'ops@example.org', got 'nobody'",
    ),
    (
        MINIMAL_TASK + "email = { recipients = [{ problems_only = true }] }\n",
        "task[t].email.recipients[0].email",
        "is required",
    ),
    (
        MINIMAL_TASK + 'workflow_action = "delete"\n',
        "task[t].workflow_action",
        "must be one of 'copy', 'move', 'erase', 'scan', 'rehydratation', 'format', "
        "'check_consistency', 'duplication', 'cache_cleaning', 'ejection', 'get_index', "
        "'full_backup', 'incremental_backup', 'restore', 'speedtest', got the string 'delete'",
    ),
    (
        MINIMAL_TASK + "metadata = { files = { a = 1 } }\n",
        "task[t].metadata.files.a",
        "must be a string",
    ),
    (
        MINIMAL_TASK + "frontend_prefs = []\n",
        "task[t].frontend_prefs",
        "must be an object (a TOML table), got an array",
    ),
]


@pytest.mark.parametrize(("text", "path", "reason"), ERROR_CASES)
def test_invalid_value_is_refused_at_its_path(text: str, path: str, reason: str) -> None:
    """Each invalid value yields exactly one error, at its path, naming what was expected."""
    assert errors_of(text) == [FieldError(path, reason)]


def test_schedule_errors_carry_the_full_path() -> None:
    """Schedule errors come from the schedule validator, below the task's path."""
    errors = errors_of(MINIMAL_TASK + "schedules = [{ hours = [2] }, { hours = [1, 24] }]\n")
    assert [error.path for error in errors] == ["task[t].schedules[1].hours[1]"]
    assert "0..23" in errors[0].reason


def test_next_run_at_needs_an_offset() -> None:
    """A local TOML date-time is refused for next_run_at: the instant would be ambiguous."""
    (error,) = errors_of(MINIMAL_TASK + "next_run_at = 2026-04-01T12:00:00\n")
    assert error.path == "task[t].next_run_at"
    assert "UTC offset" in error.reason


def test_next_run_at_accepts_toml_datetimes_and_strings() -> None:
    """next_run_at may be a TOML offset date-time or an RFC 3339 string; it is stored in UTC."""
    text = (
        '[[task]]\nname = "a"\ntask_module = "shell"\nnext_run_at = 2026-04-01T12:00:00+02:00\n'
        '[[task]]\nname = "b"\ntask_module = "shell"\nnext_run_at = "2026-04-01T10:00:00Z"\n'
    )
    a, b = parse(text).tasks
    assert a.next_run_at == b.next_run_at == datetime(2026, 4, 1, 10, tzinfo=UTC)
    assert a.next_run_at is not None
    assert a.next_run_at.tzinfo is UTC


# ---------------------------------------------------------------------------------------
# Unknown keys, names, collecting


def test_unknown_keys_are_errors_in_every_section() -> None:
    """A typo at any level is reported with a suggestion, never ignored."""
    text = (
        "tasks = []\n"
        "[daemon]\nmax_runing = 3\n"
        "[api]\nlisen = []\n"
        '[[api.keys]]\nname = "k"\nkey_file = "f"\nscopes = ["*"]\nscope = ["*"]\n'
        + MINIMAL_TASK
        + 'schedule = []\noptions = { overlapp = "skip" }\n'
        + 'email = { recipients = [{ email = "a@b.org", problem_only = true }], cc = [] }\n'
    )
    reasons = {error.path: error.reason for error in errors_of(text)}
    assert reasons == {
        "tasks": (
            "unknown field; did you mean 'task'? expected one of: api, cluster, daemon, notify,"
            " smtp, store, task"
        ),
        "daemon.max_runing": reasons["daemon.max_runing"],
        "api.lisen": reasons["api.lisen"],
        "api.keys[0].scope": (
            "unknown field; did you mean 'scopes'? expected one of: key_file, name, scopes"
        ),
        "task[t].schedule": reasons["task[t].schedule"],
        "task[t].options.overlapp": (
            "unknown field; did you mean 'overlap'? expected one of: catch_up, "
            "conflict_resolution, file_checksum, ignore_hidden, keep_file_ownership, "
            "max_retries, overlap, parallel, priority, processing_order, recursive, "
            "remove_root_folder, reset_file_date, reset_folder_date, retry_delay_sec, soft_erase"
        ),
        "task[t].email.recipients[0].problem_only": (
            "unknown field; did you mean 'problems_only'? expected one of: email, problems_only"
        ),
        "task[t].email.cc": "unknown field; expected one of: recipients",
    }
    # The long lists of the bigger sections are not repeated here; the hint is what matters.
    assert reasons["daemon.max_runing"].startswith("unknown field; did you mean 'max_running'?")
    assert reasons["api.lisen"].startswith("unknown field; did you mean 'listen'?")
    assert reasons["task[t].schedule"].startswith("unknown field; did you mean 'schedules'?")


def test_duplicate_task_names_are_refused_and_named_by_position_and_line() -> None:
    """Two tasks with one name: the second is the error, and both are addressed by their
    position counted from 1 and the line of their `[[task]]` (issue 9.10)."""
    text = (
        '[[task]]\nname = "a"\ntask_module = "shell"\n\n'
        '[[task]]\nname = "b"\ntask_module = "shell"\n\n'
        '# the same name again\n[[ task ]]\nname = "a"\ntask_module = "shell"\n'
        "task_timeout_sec = -1\n"
    )
    assert errors_of(text) == [
        FieldError(
            "task #3 (line 10).name", "duplicate task name 'a', also used by task #1 (line 1)"
        ),
        FieldError("task #3 (line 10).task_timeout_sec", "must be an integer >= 0, got -1"),
    ]


def test_task_position_without_line_when_the_headers_do_not_tell() -> None:
    """Tasks written as an inline array have no `[[task]]` lines: the position alone."""
    text = 'task = [{ name = "a", task_module = "shell" }, { name = "a", task_module = "shell" }]\n'
    assert errors_of(text) == [
        FieldError("task #2.name", "duplicate task name 'a', also used by task #1")
    ]


def test_tasks_are_named_by_name_when_valid_else_by_index() -> None:
    """task[<name>] for a valid name, `task #<position> (line <n>)` for an invalid or
    missing one."""
    text = (
        '[[task]]\nname = "nightly-backup"\ntask_module = "shell"\n'
        'options = { overlap = "x" }\n'
        '[[task]]\nname = "bad name!"\ntask_module = "shell"\noptions = { overlap = "x" }\n'
        '[[task]]\ntask_module = "shell"\noptions = { overlap = "x" }\n'
    )
    paths = [error.path for error in errors_of(text)]
    assert paths == [
        "task[nightly-backup].options.overlap",
        "task #2 (line 5).name",
        "task #2 (line 5).options.overlap",
        "task #3 (line 9).name",
        "task #3 (line 9).options.overlap",
    ]


def test_every_problem_is_reported_in_one_round() -> None:
    """Errors from every section are collected, in file order, not only the first."""
    text = (
        '[daemon]\nmax_running = 0\ntimezone = "Nowhere/City"\n'
        "[api]\nmax_body_bytes = -5\n" + MINIMAL_TASK + "task_timeout_sec = -1\n"
    )
    assert [error.path for error in errors_of(text)] == [
        "daemon.timezone",
        "daemon.max_running",
        "api.max_body_bytes",
        "task[t].task_timeout_sec",
    ]


def test_invalid_daemon_timezone_is_reported_once() -> None:
    """A bad daemon.timezone is not blamed again on each schedule that relies on it."""
    text = (
        '[daemon]\ntimezone = "Nowhere/City"\n' + MINIMAL_TASK + "schedules = [{ hours = [2] }]\n"
    )
    assert [error.path for error in errors_of(text)] == ["daemon.timezone"]


@pytest.mark.parametrize(
    ("text", "path", "hint"),
    [
        ('[daemon]\ntimezone = "Europe/Berln"\n', "daemon.timezone", "'Europe/Berlin'"),
        (
            '[[api.keys]]\nname = "ops"\nkey_file = "k"\nscopes = ["tasks/indx"]\n',
            "api.keys[0].scopes[0]",
            "'tasks/index'",
        ),
        (MINIMAL_TASK + 'options = { overlap = "skp" }\n', "task[t].options.overlap", "'skip'"),
    ],
    ids=["zone", "scope", "overlap"],
)
def test_misspelt_names_get_a_suggestion(text: str, path: str, hint: str) -> None:
    """Zones, scopes and choice values suggest the closest known name (issue 9.8)."""
    (error,) = errors_of(text)
    assert error.path == path
    assert error.reason.endswith(f"; did you mean {hint}?")


def test_time_zone_in_another_case_is_taken_canonical() -> None:
    """`daemon.timezone = "europe/berlin"` is Europe/Berlin (issue 9.8)."""
    assert parse('[daemon]\ntimezone = "europe/berlin"\n').daemon.timezone == "Europe/Berlin"


def test_known_modules_hook() -> None:
    """With known_modules an unknown module is an error; without it, any name passes."""
    text = '[[task]]\nname = "t"\ntask_module = "shel"\n'
    assert errors_of(text, known_modules={"shell", "http"}) == [
        FieldError(
            "task[t].task_module",
            "unknown module 'shel'; did you mean 'shell'? known modules: http, shell",
        )
    ]
    assert parse(text).tasks[0].task_module == "shel"


# ---------------------------------------------------------------------------------------
# Reading the file


def test_toml_syntax_error_names_file_line_and_column() -> None:
    """A TOML syntax error becomes one error naming the source, line and column."""
    assert errors_of("[daemon]\nmax_running = \n") == [
        FieldError("", "x.toml:2:15: invalid TOML: Invalid value")
    ]
    assert errors_of("[daemon]\nmax_running = 1\nmax_running = 2\n") == [
        FieldError("", "x.toml:3:16: invalid TOML: Cannot overwrite a value")
    ]


def test_toml_error_at_end_of_document_points_at_the_end() -> None:
    """An error tomllib places "at end of document" still gets a line and column."""
    assert errors_of('x = "abc') == [
        FieldError("", "x.toml:1:9: invalid TOML: Unterminated string")
    ]


def test_load_config_syntax_error_names_the_path(tmp_path: Path) -> None:
    """load_config names the file it read in a syntax error."""
    path = tmp_path / "bad.toml"
    path.write_text('[[task]]\nname = "a"\ntask_module = "shell\n')
    with pytest.raises(ValidationError) as caught:
        load_config(path)
    assert caught.value.errors == [
        FieldError("", f"{path}:3:21: invalid TOML: Illegal character '\\n'")
    ]


def test_missing_file_is_a_validation_error(tmp_path: Path) -> None:
    """A missing file is refused with its path and the OS's reason."""
    path = tmp_path / "missing.toml"
    with pytest.raises(ValidationError) as caught:
        load_config(path)
    assert caught.value.errors == [
        FieldError("", f"{path}: cannot read the config file: No such file or directory")
    ]


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    """A file that is not UTF-8 is refused with the offset of the bad byte."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[[task]]\nname = "caf\xe9"\n')
    with pytest.raises(ValidationError) as caught:
        load_config(path)
    assert caught.value.errors == [
        FieldError("", f"{path}: not UTF-8 text (invalid byte at offset 20)")
    ]


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark left by an editor does not make the file invalid."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL_TASK.encode())
    assert [task.name for task in load_config(path).tasks] == ["t"]


# ---------------------------------------------------------------------------------------
# validate_task_spec on its own (as the API calls it)


def test_validate_task_spec_for_an_api_body() -> None:
    """The shared validator takes a JSON body with an empty path prefix."""
    spec = validate_task_spec(
        {
            "name": "report",
            "task_module": "http",
            "task_params": {"url": "http://example.org", "method": "POST"},
            "schedules": [{"hours": [2], "minutes": [30]}],
            "options": {"overlap": "replace", "catch_up": "all", "retry_delay_sec": 0.5},
            "workflow_type": "maintenance",
            "metadata": {"task": {"k": 1}, "files": {"a": "b"}},
        },
        path="",
        default_timezone="Europe/Berlin",
    )
    assert spec.options == TaskOptions(
        overlap=Overlap.REPLACE, catch_up=CatchUp.ALL, retry_delay_sec=0.5
    )
    # The default zone applies: 02:30 Berlin in January is 01:30 UTC.
    assert spec.upcoming(utc("2026-01-10T00:00:00+00:00"), 1) == [utc("2026-01-10T01:30:00+00:00")]
    assert spec.workflow_type == "maintenance"
    assert spec.metadata == {"task": {"k": 1}, "files": {"a": "b"}}


def test_validate_task_spec_paths_without_prefix() -> None:
    """With path="" the errors name the body's own attributes."""
    with pytest.raises(ValidationError) as caught:
        validate_task_spec(
            {"name": "x", "task_module": "shell", "options": {"overlap": 1}, "id": 5},
            path="",
            default_timezone="UTC",
        )
    assert [error.path for error in caught.value.errors] == ["options.overlap", "id"]


def test_validate_task_spec_refuses_a_non_object() -> None:
    """A body that is not an object is refused at the prefix path."""
    with pytest.raises(ValidationError) as caught:
        validate_task_spec([], path="task[0]", default_timezone="UTC")  # type: ignore[arg-type]
    assert caught.value.errors == [
        FieldError("task[0]", "must be an object (a TOML table), got an array")
    ]


def test_explicit_null_next_run_at_disables_the_task() -> None:
    """JSON null for next_run_at means "do not run": the task is disabled."""
    spec = validate_task_spec(
        {"name": "x", "task_module": "shell", "next_run_at": None},
        path="",
        default_timezone="UTC",
    )
    assert spec.enabled is False
    assert spec.next_run_at is None


def test_null_next_run_at_contradicting_enabled_is_refused() -> None:
    """next_run_at null together with enabled true is a contradiction, not a guess."""
    with pytest.raises(ValidationError) as caught:
        validate_task_spec(
            {"name": "x", "task_module": "shell", "next_run_at": None, "enabled": True},
            path="",
            default_timezone="UTC",
        )
    assert caught.value.errors == [
        FieldError("next_run_at", "null means 'do not run', which contradicts enabled = true")
    ]


def test_spec_copies_its_json_values() -> None:
    """Mutating the input after validation does not change the spec."""
    params = {"argv": ["echo", "hi"]}
    spec = validate_task_spec(
        {"name": "x", "task_module": "shell", "task_params": params},
        path="",
        default_timezone="UTC",
    )
    params["argv"].append("changed")
    assert spec.task_params == {"argv": ["echo", "hi"]}


def test_upcoming_merges_the_one_shot_with_the_schedules() -> None:
    """upcoming() interleaves next_run_at with the schedules' slots, in order."""
    spec = validate_task_spec(
        {
            "name": "x",
            "task_module": "shell",
            "schedules": [{"hours": [0], "minutes": [0]}],
            "next_run_at": "2026-01-01T12:00:00Z",
        },
        path="",
        default_timezone="UTC",
    )
    assert spec.upcoming(utc("2026-01-01T06:00:00+00:00"), 3) == [
        utc("2026-01-01T12:00:00+00:00"),
        utc("2026-01-02T00:00:00+00:00"),
        utc("2026-01-03T00:00:00+00:00"),
    ]
    # Once past, the one-shot no longer counts.
    assert spec.upcoming(utc("2026-01-01T13:00:00+00:00"), 1) == [utc("2026-01-02T00:00:00+00:00")]


@pytest.mark.parametrize("index", range(6))
def test_example_task_json_form_round_trips(index: int) -> None:
    """to_json() of each example task validates back into an equal spec, and is JSON."""
    settings = load_config(EXAMPLE)
    spec = settings.tasks[index]
    data = json.loads(json.dumps(spec.to_json()))
    again = validate_task_spec(data, path="", default_timezone=settings.daemon.timezone)
    assert again == spec
    assert again.schedules.to_json() == spec.schedules.to_json()


def test_json_form_of_a_full_spec() -> None:
    """Every field appears in the JSON form, times as UTC RFC 3339."""
    body = {
        "name": "full",
        "description": "all fields",
        "task_module": "http",
        "task_params": {"url": "http://example.org"},
        "task_timeout_sec": 5,
        "schedules": [{"interval_sec": 60}],
        "next_run_at": "2026-04-01T12:00:00+02:00",
        "enabled": True,
        "options": {"priority": 3, "overlap": "parallel", "catch_up": "skip"},
        "email": {"recipients": [{"email": "a@example.org"}]},
        "frontend_prefs": {"app": {"color": "red"}},
        "workflow_type": "data_exchange",
        "workflow_action": "copy",
        "metadata": {"files": {"a": "b"}},
    }
    spec = validate_task_spec(body, path="", default_timezone="UTC")
    assert spec.to_json() == {
        **body,
        "next_run_at": "2026-04-01T10:00:00Z",
        "options": {
            "priority": 3,
            "overlap": "parallel",
            "catch_up": "skip",
            "max_retries": 0,
            "retry_delay_sec": 60.0,
        },
        "email": {"recipients": [{"email": "a@example.org", "problems_only": False}]},
    }
    assert validate_task_spec(spec.to_json(), path="", default_timezone="UTC") == spec


def test_systemd_directories_give_the_default_paths(tmp_path: Path) -> None:
    """Under systemd, state_dir and unix_socket default to StateDirectory= / RuntimeDirectory=."""
    from taskd.systemd import Directories

    dirs = Directories(state=Path("/var/lib/taskd"), runtime=Path("/run/taskd"))
    settings = parse_config("", source="t.toml", base_dir=tmp_path, directories=dirs)
    assert settings.daemon.state_dir == Path("/var/lib/taskd")
    assert settings.api.unix_socket == Path("/run/taskd/taskd.sock")
    explicit = parse_config(
        '[daemon]\nstate_dir = "s"\n[api]\nunix_socket = "x.sock"\n',
        source="t.toml",
        base_dir=tmp_path,
        directories=dirs,
    )
    assert explicit.daemon.state_dir == tmp_path / "s"
    assert explicit.api.unix_socket == tmp_path / "x.sock"
