"""The command line: `taskd check-config FILE` and `taskd schedule next ...`.

This is the edge where typed errors become messages and exit codes: 0 success, 2 invalid input
(usage, config file, schedule), 70 an internal error (a bug). Messages go to stderr, one per
line, prefixed `taskd: `; results go to stdout. Invalid input never shows a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn

from taskd import __version__
from taskd.config import TaskSpec, load_config
from taskd.errors import FieldError, ValidationError
from taskd.schedule import ScheduleSet, format_utc, load_timezone, parse_schedule, parse_schedules

__all__ = ["EXIT_INTERNAL", "EXIT_INVALID", "EXIT_OK", "main"]

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE from sysexits.h
_EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process killed by SIGPIPE

MAX_COUNT = 10_000
CHECK_CONFIG_TIMES = 3
# The built-in modules, known before the module registry exists; third-party modules
# register through this entry-point group.
_BUILTIN_MODULES = frozenset({"shell", "http", "sleep", "python"})
_MODULE_ENTRY_POINTS = "taskd.modules"

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
        "--config", required=True, type=Path, metavar="FILE", help="the TOML config file"
    )
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    # Imported here: `taskd schedule next` and `check-config` need none of the daemon.
    from taskd.daemon import serve

    return serve(args.config)


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
    actions = schedule.add_subparsers(title="commands", dest="schedule_command", required=True)
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
    file: Path = args.file
    try:
        settings = load_config(file, known_modules=_known_module_names())
    except ValidationError as error:
        # Errors at an attribute path do not name the file; the others already do.
        return _refuse(f"{file}: {e}" if e.path else str(e) for e in error.errors)
    after: datetime = args.after or datetime.now(UTC)
    rows = [(task.name, task.task_module, _when(task, after)) for task in settings.tasks]
    name_width = max((len(name) for name, _, _ in rows), default=0)
    module_width = max((len(module) for _, module, _ in rows), default=0)
    for name, module, when in rows:
        print(f"{name:<{name_width}}  {module:<{module_width}}  {when}")
    count = len(rows)
    print(f"{file}: OK, {count} task{'' if count == 1 else 's'}")
    return EXIT_OK


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


def _known_module_names() -> frozenset[str]:
    # Module names only, nothing imported: a broken third-party module is the engine's
    # problem at start-up, not a reason to refuse the config file.
    return _BUILTIN_MODULES | {ep.name for ep in entry_points(group=_MODULE_ENTRY_POINTS)}


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
