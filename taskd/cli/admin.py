"""The admin helpers: `gen-key` and `hash-password`."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from taskd.cli.common import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_REFUSED, SubCommands, say


def add_gen_key(commands: SubCommands) -> None:
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
        say(f"{out} exists; not overwriting it (remove it first to replace the key)")
        return EXIT_REFUSED
    except OSError as error:
        say(f"cannot create {out}: {(error.strerror or str(error)).lower()}")
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


def add_hash_password(commands: SubCommands) -> None:
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
                say("the two passwords differ")
                return EXIT_INVALID
        else:
            password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    except EOFError:  # Ctrl-D at the prompt
        password = ""
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the prompt's line
        return EXIT_INTERRUPTED
    if not password:
        say("no password given (an empty one is refused)")
        return EXIT_INVALID
    print(hash_password(password))
    return EXIT_OK
