"""The command line: `taskd serve`, `check-config`, `schedule next`, `ctl ...` (the client
of a running daemon), and the admin helpers `gen-key` and `hash-password`.

This is the edge where typed errors become messages and exit codes: 0 success, 1 a refused
action (the daemon refused or failed, could not be reached, a file was not overwritten),
2 invalid input (usage, config file, schedule, task file, the API's validation; for `serve`
also a state directory or database it cannot use), 70 an
internal error (a bug), 130 interrupted (Ctrl-C). Messages go to stderr, one per line,
prefixed `taskd: `; results go to stdout. Invalid input never shows a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from taskd import __version__
from taskd.cli.admin import add_gen_key, add_hash_password
from taskd.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REFUSED,
    Handler,
    Parser,
    SubCommands,
    say,
)
from taskd.cli.ctl_command import add_ctl
from taskd.cli.offline import add_check_config, add_schedule

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_REFUSED",
    "main",
]


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
        return EXIT_BROKEN_PIPE
    except Exception as error:
        if args.debug:
            raise
        say(f"internal error: {type(error).__name__}: {error}")
        say("this is a bug in taskd; run again with --debug for the traceback")
        return EXIT_INTERNAL


def _build_parser() -> Parser:
    parser = Parser(
        prog="taskd",
        description="taskd: an asyncio task scheduler daemon.",
    )
    parser.add_argument("--version", action="version", version=f"taskd {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of internal errors"
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    _add_serve(commands)
    add_check_config(commands)
    add_schedule(commands)
    add_ctl(commands)
    add_gen_key(commands)
    add_hash_password(commands)
    return parser


def _add_serve(commands: SubCommands) -> None:
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
            say("serve needs --config FILE (or $CONFIGURATION_DIRECTORY from systemd)")
            return EXIT_INVALID
        config = configuration / "taskd.toml"
    return serve(config)


def _exit_code(code: object) -> int:
    """Turn a SystemExit code into an exit status, as the interpreter would."""
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
