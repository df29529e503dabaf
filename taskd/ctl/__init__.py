"""`taskd ctl`: the command-line client of a running daemon, over its v2 HTTP API.

It talks to the daemon's Unix socket (found through the config file, `$TASKD_SOCKET` or
`--socket`) or to a TCP address (`--url`), with an API key read from a file (`--key-file`)
and sent as `Authorization: Bearer <key>`. The key never appears in any output.

Failures are raised as `CtlError`s carrying one message per line; `cli.py` prints them and
turns them into exit codes: `InvalidInputError` for input that the client or the server's
validation refused (a usage error, a bad task file, 400/413/422), any other `CtlError` for
what the daemon refused or could not do (401, 403, 404, 409, 5xx) and for a daemon that
cannot be reached.

Results go to an `Output`: aligned tables and key/value listings for people, or with
`--json` the server's JSON as it came (one document per command; `log -f` prints one JSON
object per line: `log -f --execution ID` each event's data, `log -f TASK` each event as
`{"event", "data"}`). Times are shown in UTC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from taskd.ctl.client import (
    Client,
    CtlError,
    Endpoint,
    InvalidInputError,
    RefusedError,
    UnreachableError,
    connect,
    default_config_path,
    find_endpoint,
    socket_from_config,
)
from taskd.ctl.output import Output
from taskd.ctl.reading import (
    current_execution,
    list_executions,
    list_modules,
    list_tasks,
    next_runs,
    show_log,
    show_task,
)
from taskd.ctl.writing import (
    TaskFile,
    act,
    apply,
    defer_task,
    delete_task,
    parse_metadata,
    read_task_file,
    run_deferred,
    run_task,
)

__all__ = [
    "Client",
    "Command",
    "CtlError",
    "Endpoint",
    "InvalidInputError",
    "Output",
    "RefusedError",
    "TaskFile",
    "UnreachableError",
    "act",
    "apply",
    "connect",
    "current_execution",
    "default_config_path",
    "defer_task",
    "delete_task",
    "find_endpoint",
    "list_executions",
    "list_modules",
    "list_tasks",
    "next_runs",
    "parse_metadata",
    "read_task_file",
    "run",
    "run_deferred",
    "run_task",
    "show_log",
    "show_task",
    "socket_from_config",
]

# ---------------------------------------------------------------------------------------
# Running a command


Command = Callable[[Client, Output], Awaitable[None]]


async def execute(endpoint: Endpoint, command: Command, out: Output) -> None:
    """Connect to `endpoint` and run `command`; its connections are closed afterwards."""
    async with connect(endpoint) as client:
        await command(client, out)


def run(endpoint: Endpoint, command: Command, out: Output) -> None:
    """Run `command` against `endpoint` in a fresh event loop. Raises `CtlError`."""
    asyncio.run(execute(endpoint, command, out))
