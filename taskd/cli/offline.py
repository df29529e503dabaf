"""The commands that need no daemon: `schedule next` and `check-config`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from taskd.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    SubCommands,
    instant_argument,
    refuse,
    say,
)
from taskd.errors import FieldError, ValidationError
from taskd.model import TaskSpec
from taskd.preview import EXPLAIN_HEADERS, explain_rows, next_runs
from taskd.preview import MAX_COUNT as PREVIEW_MAX
from taskd.schedule import ScheduleSet, format_utc, load_timezone, parse_schedule, parse_schedules

MAX_COUNT = 10_000
CHECK_CONFIG_TIMES = 3


def add_check_config(commands: SubCommands) -> None:
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
        type=instant_argument,
        metavar="ISO-8601",
        help="show fire times after this instant instead of now; without an offset it is UTC",
    )
    check.set_defaults(handler=_check_config)


def add_schedule(commands: SubCommands) -> None:
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
        type=instant_argument,
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
    upcoming.add_argument(
        "--explain",
        action="store_true",
        help="print a table instead: UTC and local time, the schedule's index, and which "
        "slots daylight-saving time moved (skipped hour) or doubled (repeated hour); "
        f"--count up to {PREVIEW_MAX}",
    )
    upcoming.set_defaults(handler=_schedule_next)


def _count_argument(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..{MAX_COUNT}, got {text!r}")
    return count


def _schedule_next(args: argparse.Namespace) -> int:
    zone_errors: list[FieldError] = []
    if load_timezone(args.timezone, "--timezone", zone_errors) is None:
        return refuse(map(str, zone_errors))
    try:
        raw = json.loads(args.schedule)
    except json.JSONDecodeError as error:
        say(f"--schedule: invalid JSON: {error}")
        return EXIT_INVALID
    try:
        schedules = _parse_schedule_argument(raw, args.timezone)
    except ValidationError as error:
        return refuse(map(str, error.errors))
    after: datetime = args.after or datetime.now(UTC)
    if args.explain:
        if args.count > PREVIEW_MAX:
            return refuse([f"--count: with --explain at most {PREVIEW_MAX}, got {args.count}"])
        zone = ZoneInfo(args.timezone)
        runs = [run.to_json() for run in next_runs(schedules, after, args.count, timezone=zone)]
        _print_table(EXPLAIN_HEADERS, explain_rows(runs))
        times = [datetime.fromisoformat(str(run["at"])) for run in runs]
    else:
        times = schedules.times(after, args.count)
        for instant in times:
            print(format_utc(instant))
    if len(times) < args.count:
        found = len(times)
        how_often = (
            f"fires only {found} time{'' if found == 1 else 's'}" if times else "never fires"
        )
        say(f"note: the schedule {how_often} after {format_utc(after)}")
    return EXIT_OK


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


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
        return refuse(_start_problem(file, event, problem) for event, problem in refused.problems)
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
