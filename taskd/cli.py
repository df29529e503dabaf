"""The command line: `taskd serve`, `check-config`, `schedule next`, `ctl ...` (the client
of a running daemon), and the admin helpers `gen-key` and `hash-password`.

This is the edge where typed errors become messages and exit codes: 0 success, 1 a refused
action (the daemon refused or failed, could not be reached, a file was not overwritten),
2 invalid input (usage, config file, schedule, task file, the API's validation), 70 an
internal error (a bug), 130 interrupted (Ctrl-C). Messages go to stderr, one per line,
prefixed `taskd: `; results go to stdout. Invalid input never shows a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from taskd import __version__
from taskd.errors import FieldError, ValidationError
from taskd.model import TaskSpec
from taskd.schedule import ScheduleSet, format_utc, load_timezone, parse_schedule, parse_schedules

if TYPE_CHECKING:
    from taskd import ctl

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_REFUSED",
    "main",
]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_INVALID = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE from sysexits.h
EXIT_INTERRUPTED = 128 + 2  # what a shell reports for a process ended by SIGINT
_EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process killed by SIGPIPE

MAX_COUNT = 10_000
CHECK_CONFIG_TIMES = 3

Handler = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    """Run the command line with `argv` (default: `sys.argv[1:]`); return the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version and usage errors
        return _exit_code(exit_request.code)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BrokenPipeError:
        # The reader went away (`taskd schedule next ... | head -1`): nothing left to say.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _EXIT_BROKEN_PIPE
    except Exception as error:
        if args.debug:
            raise
        _say(f"internal error: {type(error).__name__}: {error}")
        _say("this is a bug in taskd; run again with --debug for the traceback")
        return EXIT_INTERNAL


# ---------------------------------------------------------------------------------------
# Parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors read like taskd's other messages."""

    def error(self, message: str) -> NoReturn:
        """Print `taskd: <message>` and a pointer to --help, then exit 2."""
        self.exit(EXIT_INVALID, f"taskd: {message} (see '{self.prog} --help')\n")


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="taskd",
        description="taskd: an asyncio task scheduler daemon.",
    )
    parser.add_argument("--version", action="version", version=f"taskd {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of internal errors"
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    _add_serve(commands)
    _add_check_config(commands)
    _add_schedule(commands)
    _add_ctl(commands)
    _add_gen_key(commands)
    _add_hash_password(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction[_Parser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the daemon",
        description=(
            "Run the daemon on the config FILE until SIGTERM or SIGINT (a second one stops "
            "running executions at once). SIGHUP reloads the file. Logs go to stderr: JSON "
            "lines, or readable lines on a terminal."
        ),
    )
    serve.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the TOML config file (default under systemd: $CONFIGURATION_DIRECTORY/taskd.toml)",
    )
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    # Imported here: `taskd schedule next` and `check-config` need none of the daemon.
    from taskd import systemd
    from taskd.daemon import serve

    config = args.config
    if config is None:
        configuration = systemd.directories().configuration
        if configuration is None:
            _say("serve needs --config FILE (or $CONFIGURATION_DIRECTORY from systemd)")
            return EXIT_INVALID
        config = configuration / "taskd.toml"
    return serve(config)


def _add_check_config(commands: argparse._SubParsersAction[_Parser]) -> None:
    check = commands.add_parser(
        "check-config",
        help="validate a config file and show when each task fires",
        description=(
            "Validate FILE without starting the daemon. Prints one line per task: its name, "
            f"module and next {CHECK_CONFIG_TIMES} fire times in UTC. Exit status 2 when the "
            "file is invalid, with every problem on stderr."
        ),
    )
    check.add_argument("file", metavar="FILE", type=Path, help="the TOML config file")
    check.add_argument(
        "--after",
        type=_instant_argument,
        metavar="ISO-8601",
        help="show fire times after this instant instead of now; without an offset it is UTC",
    )
    check.set_defaults(handler=_check_config)


def _add_schedule(commands: argparse._SubParsersAction[_Parser]) -> None:
    schedule = commands.add_parser("schedule", help="evaluate schedules")
    actions = schedule.add_subparsers(
        title="commands", dest="schedule_command", metavar="COMMAND", required=True
    )
    upcoming = actions.add_parser(
        "next",
        help="print the next fire times of a schedule",
        description=(
            "Print the next fire times of a schedule, strictly after --after, one per line, "
            "as UTC RFC 3339 (2026-03-29T01:00:00Z)."
        ),
    )
    upcoming.add_argument(
        "--schedule",
        required=True,
        metavar="JSON",
        help='one schedule object or a list of them, e.g. \'{"hours": [2], "minutes": [30]}\'',
    )
    upcoming.add_argument(
        "--after",
        type=_instant_argument,
        metavar="ISO-8601",
        help="start after this instant (default: now); without an offset it is taken as UTC",
    )
    upcoming.add_argument(
        "--count",
        type=_count_argument,
        default=5,
        metavar="N",
        help=f"how many fire times to print, 1..{MAX_COUNT} (default: 5)",
    )
    upcoming.add_argument(
        "--timezone",
        default="UTC",
        metavar="TZ",
        help="IANA zone for schedules that name none (default: UTC)",
    )
    upcoming.set_defaults(handler=_schedule_next)


def _instant_argument(text: str) -> datetime:
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date-time such as 2026-03-28T12:00:00Z"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)  # documented in --help
    return instant


def _count_argument(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..{MAX_COUNT}, got {text!r}")
    return count


# ---------------------------------------------------------------------------------------
# Commands


def _schedule_next(args: argparse.Namespace) -> int:
    zone_errors: list[FieldError] = []
    if load_timezone(args.timezone, "--timezone", zone_errors) is None:
        return _refuse(map(str, zone_errors))
    try:
        raw = json.loads(args.schedule)
    except json.JSONDecodeError as error:
        _say(f"--schedule: invalid JSON: {error}")
        return EXIT_INVALID
    try:
        schedules = _parse_schedule_argument(raw, args.timezone)
    except ValidationError as error:
        return _refuse(map(str, error.errors))
    after: datetime = args.after or datetime.now(UTC)
    times = schedules.times(after, args.count)
    for instant in times:
        print(format_utc(instant))
    if len(times) < args.count:
        found = len(times)
        how_often = (
            f"fires only {found} time{'' if found == 1 else 's'}" if times else "never fires"
        )
        _say(f"note: the schedule {how_often} after {format_utc(after)}")
    return EXIT_OK


def _parse_schedule_argument(raw: Any, default_timezone: str) -> ScheduleSet:
    """Parse --schedule: one object (errors at `schedule.…`) or a list (`schedules[i].…`)."""
    if isinstance(raw, dict):
        schedule = parse_schedule(raw, default_timezone=default_timezone, path="schedule")
        return ScheduleSet(schedules=(schedule,))
    if isinstance(raw, list):
        return parse_schedules(raw, default_timezone=default_timezone, path="schedules")
    raise ValidationError.single(
        "--schedule", "must be a schedule object or a list of schedule objects"
    )


def _check_config(args: argparse.Namespace) -> int:
    # Imported here: `taskd schedule next` needs none of the daemon.
    from taskd.daemon import StartRefused, preflight
    from taskd.modules.registry import ModuleRegistry

    file: Path = args.file
    modules = ModuleRegistry.builtin()
    modules.load_entry_points()
    try:
        settings = preflight(file, modules).settings  # the very checks `taskd serve` runs
    except StartRefused as refused:
        return _refuse(_start_problem(file, event, problem) for event, problem in refused.problems)
    after: datetime = args.after or datetime.now(UTC)
    rows = [(task.name, task.task_module, _when(task, after)) for task in settings.tasks]
    if rows:
        rows.insert(0, ("TASK", "MODULE", f"NEXT {CHECK_CONFIG_TIMES} FIRE TIMES (UTC)"))
    name_width = max((len(name) for name, _, _ in rows), default=0)
    module_width = max((len(module) for _, module, _ in rows), default=0)
    for name, module, when in rows:
        print(f"{name:<{name_width}}  {module:<{module_width}}  {when}".rstrip())
    count = len(settings.tasks)
    print(f"{file}: OK, {count} task{'' if count == 1 else 's'}")
    return EXIT_OK


def _start_problem(file: Path, event: str, problem: FieldError) -> str:
    """One line of check-config's refusal, as `taskd serve` would log it."""
    if event == "invalid config":
        # Errors at an attribute path do not name the file; the others already do.
        return f"{file}: {problem}" if problem.path else str(problem)
    return f"{file}: taskd serve would refuse to start: {problem}"


def _when(task: TaskSpec, after: datetime) -> str:
    """Say when `task` fires next, for check-config."""
    if not task.enabled:
        return "disabled"
    times = task.upcoming(after, CHECK_CONFIG_TIMES)
    if times:
        return "  ".join(format_utc(instant) for instant in times)
    if task.next_run_at is not None:
        return f"once at {format_utc(task.next_run_at)} (past; its catch_up policy decides)"
    return "not scheduled"


# ---------------------------------------------------------------------------------------
# ctl: the client of a running daemon

_TASK_HELP = "a task's name or id"
_CTL_ACTIONS = {
    "pause": ("pause", "pause the task's running execution"),
    "resume": ("resume", "resume a paused execution, or continue a stopped or interrupted one"),
    "stop": ("stop", "stop the running execution (cooperatively, forced after the grace)"),
    "kill": ("force_stop", "stop the running execution now (force_stop)"),
}


def _add_ctl(commands: argparse._SubParsersAction[_Parser]) -> None:
    ctl = commands.add_parser(
        "ctl",
        help="control a running daemon",
        description=(
            "Talk to a running daemon over its Unix socket (by default the one its config "
            "file names: --config, else $TASKD_SOCKET, else $CONFIGURATION_DIRECTORY/taskd.toml, "
            "/etc/taskd/taskd.toml or ./etc/taskd.toml) or over TCP with --url and --key-file. "
            "TASK is a task's name or id (a number is tried as an id first). Times are UTC. "
            "Exit status: 0 done, 1 refused by the daemon or daemon unreachable, 2 invalid "
            "input, 130 interrupted."
        ),
    )
    _add_ctl_options(ctl, suppress=False)
    actions = ctl.add_subparsers(
        title="commands", dest="ctl_command", metavar="COMMAND", required=True
    )
    # The options are accepted after the command too (`taskd ctl list --json`).
    common = _Parser(add_help=False)
    _add_ctl_options(common, suppress=True)

    def add(name: str, help_text: str) -> _Parser:
        description = help_text[0].upper() + help_text[1:] + "."
        return actions.add_parser(name, help=help_text, description=description, parents=[common])

    add("list", "list the tasks: name, id, status, module, next and last run")
    add("show", "show one task in full").add_argument("task", metavar="TASK", help=_TASK_HELP)
    apply = add(
        "apply",
        "create or update the tasks of a file ([[task]] tables in TOML, or a JSON list of "
        "task objects; '-' reads stdin), found by name; fields left out get their defaults",
    )
    apply.add_argument("file", metavar="FILE", type=Path)
    for name, help_text, what in (
        ("run", "run a task now and print the execution id", "execution"),
        ("defer", "prepare a run for 'run-defer' and print the defer id", "deferred run"),
    ):
        action = add(name, help_text)
        action.add_argument("task", metavar="TASK", help=_TASK_HELP)
        action.add_argument(
            "--metadata",
            metavar="JSON",
            help=f"a JSON object handed to the {what} as trigger metadata",
        )
    add("run-defer", "start a deferred run and print the execution id").add_argument(
        "defer_id", metavar="DEFER_ID"
    )
    for name, (_, help_text) in _CTL_ACTIONS.items():
        add(name, help_text).add_argument("task", metavar="TASK", help=_TASK_HELP)
    add("delete", "delete a task (its running execution is stopped)").add_argument(
        "task", metavar="TASK", help=_TASK_HELP
    )
    log = add(
        "log",
        "print the log of the task's current execution (the running one, else the latest "
        "that was not a skipped slot), of --execution ID, or of --all kept ones; with -f, "
        "follow the task like journalctl -f: that log, then every following run's lines "
        "as they come, a header line before each run's, until Ctrl-C; with -f --execution "
        "ID, that run's until it ends (with --json: one JSON object per line)",
    )
    log.add_argument("task", metavar="TASK", help=_TASK_HELP)
    log.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new lines as they come: of every following run, or with "
        "--execution of that run until it ends",
    )
    which = log.add_mutually_exclusive_group()
    which.add_argument(
        "--execution", type=_positive_argument, metavar="ID", help="the log of execution ID"
    )
    which.add_argument(
        "--all", action="store_true", dest="every_execution", help="every kept execution"
    )
    log.add_argument(
        "--offset", type=_natural_argument, metavar="N", help="start at the task's log line N"
    )
    log.add_argument("--limit", type=_positive_argument, metavar="N", help="print at most N lines")
    log.add_argument(
        "-n",
        "--lines",
        type=_positive_argument,
        metavar="N",
        help="print only the last N lines (with -f: of the log shown before following)",
    )
    executions = add("executions", "list a task's executions, newest first")
    executions.add_argument("task", metavar="TASK", help=_TASK_HELP)
    executions.add_argument(
        "--limit", type=_positive_argument, metavar="N", help="list at most N (default: 50)"
    )
    add("modules", "list the modules tasks can use, with their params")
    ctl.set_defaults(handler=_ctl)


def _add_ctl_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--socket", type=Path, metavar="PATH", default=default(None),
        help="the daemon's Unix socket",
    )  # fmt: skip
    group.add_argument(
        "--url", metavar="URL", default=default(None),
        help="the daemon's TCP address instead, e.g. http://127.0.0.1:8470",
    )  # fmt: skip
    group.add_argument(
        "--key-file", type=Path, metavar="FILE", default=default(None),
        help="a file holding the API key to send (Authorization: Bearer)",
    )  # fmt: skip
    group.add_argument(
        "--config", type=Path, metavar="FILE", default=default(None),
        help="the daemon's config file, to find its socket",
    )  # fmt: skip
    group.add_argument(
        "--json", action="store_true", default=default(False),
        help="print the server's JSON instead of tables",
    )  # fmt: skip


def _natural_argument(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def _positive_argument(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def _ctl(args: argparse.Namespace) -> int:
    # Imported here: aiohttp is needed by `ctl` only.
    from taskd import ctl

    try:
        command = _ctl_command(args)
        endpoint = ctl.find_endpoint(
            socket=args.socket,
            url=args.url,
            key_file=args.key_file,
            config=args.config,
            environ=os.environ,
            cwd=Path.cwd(),
        )
        ctl.run(endpoint, command, ctl.Output(json=args.json))
    except ctl.InvalidInputError as error:
        return _refuse(error.messages)
    except ctl.CtlError as error:
        for message in error.messages:
            _say(message)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _ctl_command(args: argparse.Namespace) -> ctl.Command:
    """The command to run against the daemon, its local input (files, JSON) checked first."""
    from taskd import ctl

    task: str = getattr(args, "task", "")
    match args.ctl_command:
        case "list":
            return ctl.list_tasks
        case "show":
            return lambda client, out: ctl.show_task(client, out, task)
        case "apply":
            tasks = ctl.read_task_file(args.file)
            return lambda client, out: ctl.apply(client, out, tasks)
        case "run":
            metadata = ctl.parse_metadata(args.metadata)
            return lambda client, out: ctl.run_task(client, out, task, metadata)
        case "defer":
            metadata = ctl.parse_metadata(args.metadata)
            return lambda client, out: ctl.defer_task(client, out, task, metadata)
        case "run-defer":
            return lambda client, out: ctl.run_deferred(client, out, args.defer_id)
        case "delete":
            return lambda client, out: ctl.delete_task(client, out, task)
        case "log":
            if args.follow and args.limit is not None:
                raise ctl.InvalidInputError(
                    "--limit does not go with -f: following prints every line"
                )
            if args.lines is not None and (args.limit is not None or args.offset is not None):
                raise ctl.InvalidInputError(
                    "--lines does not go with --limit or --offset: it chooses the last lines"
                )
            return lambda client, out: ctl.show_log(
                client,
                out,
                task,
                follow=args.follow,
                execution=args.execution,
                every_execution=args.every_execution,
                offset=args.offset,
                limit=args.limit,
                lines=args.lines,
            )
        case "executions":
            return lambda client, out: ctl.list_executions(client, out, task, args.limit)
        case "modules":
            return ctl.list_modules
        case action:
            verb = _CTL_ACTIONS[action][0]
            return lambda client, out: ctl.act(client, out, task, verb)


# ---------------------------------------------------------------------------------------
# Admin helpers


def _add_gen_key(commands: argparse._SubParsersAction[_Parser]) -> None:
    gen_key = commands.add_parser(
        "gen-key",
        help="make a new random API key",
        description=(
            "Print a new random API key, or write it to FILE (created with mode 0600, missing "
            "folders with mode 0700; an existing file is never overwritten). Name the file in "
            "an [[api.keys]] key_file."
        ),
    )
    gen_key.add_argument("--out", type=Path, metavar="FILE", help="write the key to FILE")
    gen_key.set_defaults(handler=_gen_key)


def _gen_key(args: argparse.Namespace) -> int:
    from taskd.api.auth import new_key

    key = new_key()
    out: Path | None = args.out
    if out is None:
        print(key)
        return EXIT_OK
    try:
        _make_private_folders(out.parent)
        descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _say(f"{out} exists; not overwriting it (remove it first to replace the key)")
        return EXIT_REFUSED
    except OSError as error:
        _say(f"cannot create {out}: {(error.strerror or str(error)).lower()}")
        return EXIT_REFUSED
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        os.fchmod(descriptor, 0o600)  # whatever the umask
        file.write(key + "\n")
    print(f"wrote a new API key to {out} (mode 0600)")
    return EXIT_OK


def _make_private_folders(folder: Path) -> None:
    """Create `folder` and its missing parents with mode 0700: they hold nothing but secrets.

    (`Path.mkdir(parents=True)` would give the parents the default mode.)
    """
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700)
        path.chmod(0o700)  # whatever the umask


def _add_hash_password(commands: argparse._SubParsersAction[_Parser]) -> None:
    hash_command = commands.add_parser(
        "hash-password",
        help="hash a password for [[api.users]] password_hash",
        description=(
            "Read a password (asked twice without echo on a terminal, else the first line of "
            "stdin) and print its scrypt hash, for password_hash in an [[api.users]] table."
        ),
    )
    hash_command.set_defaults(handler=_hash_password)


def _hash_password(args: argparse.Namespace) -> int:
    from taskd.api.auth import hash_password

    try:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if password and getpass.getpass("Again: ") != password:
                _say("the two passwords differ")
                return EXIT_INVALID
        else:
            password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    except EOFError:  # Ctrl-D at the prompt
        password = ""
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the prompt's line
        return EXIT_INTERRUPTED
    if not password:
        _say("no password given (an empty one is refused)")
        return EXIT_INVALID
    print(hash_password(password))
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# Output


def _refuse(messages: Iterable[str]) -> int:
    for message in messages:
        _say(message)
    return EXIT_INVALID


def _say(message: str) -> None:
    print(f"taskd: {message}", file=sys.stderr)


def _exit_code(code: object) -> int:
    """Turn a SystemExit code into an exit status, as the interpreter would."""
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
