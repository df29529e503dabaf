"""`taskd ctl`: its arguments, and which client command each one runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from taskd.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    Parser,
    SubCommands,
    refuse,
    say,
)
from taskd.preview import MAX_COUNT as MAX_PREVIEW

if TYPE_CHECKING:
    from taskd import ctl

_TASK_HELP = "a task's name or id"
_CTL_ACTIONS = {
    "pause": ("pause", "pause the task's running execution"),
    "resume": ("resume", "resume a paused execution, or continue a stopped or interrupted one"),
    "stop": ("stop", "stop the running execution (cooperatively, forced after the grace)"),
    "kill": ("force_stop", "stop the running execution now (force_stop)"),
}


def add_ctl(commands: SubCommands) -> None:
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
    common = Parser(add_help=False)
    _add_ctl_options(common, suppress=True)

    def add(name: str, help_text: str) -> Parser:
        description = help_text[0].upper() + help_text[1:] + "."
        return actions.add_parser(name, help=help_text, description=description, parents=[common])

    add(
        "list",
        "list the tasks: name, id, status, module, next and last run; yours (those created "
        "through the same socket or key) and the config file's",
    ).add_argument(
        "--all",
        action="store_true",
        dest="every_task",
        help="every owner's tasks, with an OWNER column (an admin's right: the trusted "
        "socket, or a key with the scope admin)",
    )
    add("show", "show one task in full").add_argument("task", metavar="TASK", help=_TASK_HELP)
    upcoming = add(
        "next",
        "show the task's next fire times (UTC and local), marking the slots daylight-saving "
        "time moved or doubled",
    )
    upcoming.add_argument("task", metavar="TASK", help=_TASK_HELP)
    upcoming.add_argument(
        "--count",
        type=_count_argument,
        default=10,
        metavar="N",
        help=f"how many fire times, 1..{MAX_PREVIEW} (default: 10)",
    )
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
    add(
        "delete",
        "delete a task with its history (its running execution is stopped); a config task "
        "only once it is retired (gone from the config file)",
    ).add_argument("task", metavar="TASK", help=_TASK_HELP)
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


def _count_argument(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_PREVIEW:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..{MAX_PREVIEW}, got {text!r}")
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
        return refuse(error.messages)
    except ctl.CtlError as error:
        for message in error.messages:
            say(message)
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
            return lambda client, out: ctl.list_tasks(client, out, args.every_task)
        case "show":
            return lambda client, out: ctl.show_task(client, out, task)
        case "next":
            return lambda client, out: ctl.next_runs(client, out, task, args.count)
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
