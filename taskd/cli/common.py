"""What every part of the command line shares: exit codes, the parser class, messages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import NoReturn, TypeAlias

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_INVALID = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE from sysexits.h
EXIT_INTERRUPTED = 128 + 2  # what a shell reports for a process ended by SIGINT
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process killed by SIGPIPE


Handler = Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------------------------
# Parser


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors read like taskd's other messages."""

    def error(self, message: str) -> NoReturn:
        """Print `taskd: <message>` and a pointer to --help, then exit 2."""
        self.exit(EXIT_INVALID, f"taskd: {message} (see '{self.prog} --help')\n")


def refuse(messages: Iterable[str]) -> int:
    for message in messages:
        say(message)
    return EXIT_INVALID


def say(message: str) -> None:
    print(f"taskd: {message}", file=sys.stderr)


# The object `add_subparsers` returns (a string: the class is not generic at run time).
SubCommands: TypeAlias = "argparse._SubParsersAction[Parser]"


def instant_argument(text: str) -> datetime:
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date-time such as 2026-03-28T12:00:00Z"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)  # documented in --help
    return instant
