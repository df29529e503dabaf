"""The `shell` module: run a program or a `/bin/sh -c` command in its own process group.

The process starts in a new session, so its process group holds it and everything it starts
(unless a child calls setsid itself), and taskd can signal all of them at once:

- pause / resume: SIGSTOP / SIGCONT to the group;
- stop: SIGTERM to the group (and SIGCONT, so that a paused group can act on it), then
  SIGKILL once `ctx.stop_grace_sec` has passed with the process still running;
- cancellation (forced stop, timeout): SIGKILL to the group at once; the process is reaped
  before the CancelledError goes on, so nothing is left behind;
- when the process exits, what is left of its group is killed too, the way systemd ends a
  service's control group: a task's processes end with the task.

stdin is /dev/null. Each line of stdout goes to the task log at `info`, of stderr at
`warning`, as it comes, cut at 4 KiB, with invalid UTF-8 replaced.

Output is read only as fast as it is logged: each chunk read from a pipe is split into lines
a slice at a time (the event loop is never held for a whole chunk of one-character lines),
the pipe is paused meanwhile, and while the store's log backlog is full (`ctx.log_full`)
reading waits for room. The process then blocks on a full pipe, as under a slow terminal.
What taskd holds of a task's output is at most one chunk per pipe.

The group is recorded in the execution (`ctx.record_process_group`) as soon as it started:
should taskd be killed, its next start ends the group before the run is retried.

How it ends: exit code 0 returns "exit code 0"; another exit code raises
`ModuleError("exit code N")`; death by a signal raises `ModuleError` naming it, except for
the SIGTERM or SIGKILL of a requested stop, which returns "stopped by SIGTERM" (the stop did
what it was asked to do; the runner records the execution as canceled).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from taskd.errors import FieldError
from taskd.modules.base import LogLevel, ModuleContext, ModuleError

__all__ = ["MAX_LINE_BYTES", "SLICE_LINES", "ShellModule"]

MAX_LINE_BYTES = 4096
# After the process exits, how long its output may go without reaching end-of-file or being
# read further. Only a process that left the group (setsid) and kept the pipe open makes
# this wait the full time; `_DRAIN_MAX_SEC` bounds one that keeps writing.
_DRAIN_SEC = 1.0
_DRAIN_MAX_SEC = 30.0
# Lines split and logged per turn of the event loop: a few milliseconds of work.
SLICE_LINES = 200
# SIGKILL cannot be caught, so reaping after it is quick; the bound only guards a wedged
# kernel (a process in uninterruptible sleep on a dead NFS mount).
_REAP_SEC = 5.0


class ShellModule:
    """Runs `argv` or `command` in its own process group; see the module docstring."""

    name = "shell"
    description: Mapping[str, str] = {
        "en-US": "Runs a program or a shell command in its own process group; its output "
        "goes to the task log.",
        "de-DE": "Führt ein Programm oder einen Shell-Befehl in einer eigenen Prozessgruppe "
        "aus; die Ausgabe geht ins Task-Log.",
    }
    params: list[dict[str, Any]] = [  # noqa: RUF012 (read-only by contract)
        {"name": "argv", "type": "string-list"},
        {"name": "command", "type": "text"},
        {"name": "cwd", "type": "text"},
        # Environment values often carry tokens: the API never shows them.
        {"name": "env", "type": "json", "schema": "object", "default": {}, "secret": True},
    ]

    def check_params(self, params: Mapping[str, Any]) -> list[FieldError]:
        """Exactly one of `argv` and `command`; no NUL bytes; `env` maps names to strings."""
        errors: list[FieldError] = []
        argv, command = params["argv"], params["command"]
        if (argv is None) == (command is None):
            where = "command" if argv is not None else ""
            errors.append(FieldError(where, "give exactly one of argv and command"))
        if argv is not None and (not argv or not argv[0]):
            errors.append(FieldError("argv", "must name a program in its first item"))
        if command is not None and not command.strip():
            errors.append(FieldError("command", "must not be empty"))
        if params["cwd"] == "":
            errors.append(FieldError("cwd", "must not be empty"))
        for index, item in enumerate(argv or ()):
            if "\0" in item:
                errors.append(FieldError(f"argv[{index}]", "must not contain a NUL character"))
        for key in ("command", "cwd"):
            if params[key] is not None and "\0" in params[key]:
                errors.append(FieldError(key, "must not contain a NUL character"))
        for name, value in params["env"].items():
            if not name or "=" in name or "\0" in name:
                errors.append(FieldError(f"env.{name}", "is not a valid variable name"))
            elif value is not None and (not isinstance(value, str) or "\0" in value):
                errors.append(FieldError(f"env.{name}", "must be a string (or null to unset it)"))
        return errors

    async def run(self, ctx: ModuleContext) -> str:
        """Run the process until it exits; see the module docstring for the outcome."""
        params = ctx.params
        argv: list[str] = params["argv"] or ["/bin/sh", "-c", params["command"]]
        cwd: str | None = params["cwd"]
        env = dict(os.environ)
        for name, value in params["env"].items():
            if value is None:  # null unsets a variable of the daemon's environment
                env.pop(name, None)
            else:
                env[name] = value
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _Protocol(ctx),
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as error:
            raise ModuleError(_spawn_error(error, argv[0], cwd)) from None
        try:
            return await _supervise(ctx, transport, protocol)
        finally:
            transport.close()


async def _supervise(
    ctx: ModuleContext, transport: asyncio.SubprocessTransport, protocol: _Protocol
) -> str:
    """Follow pause and stop requests until the process exits; return or raise its outcome."""
    group = _Group(transport.get_pid())
    try:
        await ctx.record_process_group(group.pgid)
    except Exception as error:  # the run goes on; only a crash of taskd would need it
        ctx.log(LogLevel.WARNING, f"could not record process group {group.pgid}: {error}")
    watchers = [
        asyncio.create_task(_follow_pause(ctx, group)),
        asyncio.create_task(_follow_stop(ctx, group, protocol.exited)),
    ]
    try:
        await protocol.exited.wait()
        _stop_watching(watchers)
        # What the leader left behind ends with it; its SIGKILL also closes the pipes those
        # processes held, so the output reaches end-of-file.
        if group.signal(signal.SIGKILL):
            ctx.log(LogLevel.INFO, f"killed what was left of process group {group.pgid}")
        if not await _drain(protocol):
            ctx.log(LogLevel.WARNING, "output still open after the process exited; not read")
        protocol.finish()
    except BaseException as error:
        # Forced stop or timeout (or a bug): nothing may outlive the execution. SIGCONT lets
        # a paused group's processes die now rather than when someone continues them.
        group.signal(signal.SIGKILL)
        group.signal(signal.SIGCONT)
        protocol.finish()
        why = "cancelled" if isinstance(error, asyncio.CancelledError) else "failed"
        ctx.log(LogLevel.WARNING, f"{why}: killed process group {group.pgid}")
        try:
            async with asyncio.timeout(_REAP_SEC):
                await protocol.exited.wait()
        except TimeoutError:
            ctx.log(LogLevel.ERROR, f"process {group.pgid} did not die within {_REAP_SEC} s")
        raise
    finally:
        _stop_watching(watchers)
        await asyncio.gather(*watchers, return_exceptions=True)
    return _outcome(transport.get_returncode(), group.stop_signals)


async def _drain(protocol: _Protocol) -> bool:
    """Wait until all output was read and logged; False if it stalls or takes too long."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + _DRAIN_MAX_SEC
    while loop.time() < give_up:
        handled = protocol.handled
        try:
            async with asyncio.timeout(_DRAIN_SEC):
                await protocol.output_closed.wait()
        except TimeoutError:
            if protocol.handled == handled and not protocol.waiting_for_room:
                return False  # nothing came: a process outside the group holds the pipe
        else:
            return True
    return False


def _stop_watching(watchers: list[asyncio.Task[None]]) -> None:
    for watcher in watchers:
        watcher.cancel()


async def _follow_pause(ctx: ModuleContext, group: _Group) -> None:
    """Stop the group while the execution is paused, continue it on resume."""
    while not ctx.stopping:
        await ctx.wait_paused()
        if ctx.stopping:  # a stop wins: the process must run to act on SIGTERM
            return
        group.signal(signal.SIGSTOP)
        ctx.log(LogLevel.INFO, f"paused: stopped process group {group.pgid}")
        await ctx.wait_resumed()
        group.signal(signal.SIGCONT)
        if not ctx.stopping:  # a stop resumes too; _follow_stop tells about that one
            ctx.log(LogLevel.INFO, f"resumed: continued process group {group.pgid}")


async def _follow_stop(ctx: ModuleContext, group: _Group, exited: asyncio.Event) -> None:
    """On a stop request: SIGTERM, then SIGKILL if the process outlives the grace."""
    await ctx.wait_stopping()
    group.stop_signals.add(signal.SIGTERM)
    group.signal(signal.SIGTERM)
    group.signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
    grace = ctx.stop_grace_sec
    ctx.log(LogLevel.INFO, f"stop requested: sent SIGTERM to process group {group.pgid}")
    try:
        async with asyncio.timeout(grace):
            await exited.wait()
    except TimeoutError:
        group.stop_signals.add(signal.SIGKILL)
        group.signal(signal.SIGKILL)
        ctx.log(LogLevel.WARNING, f"still running {grace:g} s after SIGTERM: sent SIGKILL")


def _outcome(returncode: int | None, stop_signals: set[int]) -> str:
    """Return the status message of an exit, or raise `ModuleError` for a failure."""
    if returncode == 0:
        return "exit code 0"
    if returncode is None:  # cannot happen once exited; say so rather than guess
        raise ModuleError("the process ended without an exit status")
    if returncode > 0:
        raise ModuleError(f"exit code {returncode}")
    name = _signal_name(-returncode)
    if -returncode in stop_signals:
        return f"stopped by {name}"
    raise ModuleError(f"killed by signal {name}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _spawn_error(error: OSError, program: str, cwd: str | None) -> str:
    reason = error.strerror or str(error)
    # subprocess names the directory in the error when changing into it failed.
    if cwd is not None and error.filename == cwd:
        return f"cannot change to directory {cwd!r}: {reason}"
    return f"cannot run {program!r}: {reason}"


class _Group:
    """The process group of the started process; its id is the process's pid."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.stop_signals: set[int] = set()  # sent on a stop request, so an expected death

    def signal(self, sig: int) -> bool:
        """Send `sig` to the group; return False if no process of it is left."""
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            return False
        return True


class _Protocol(asyncio.SubprocessProtocol):
    """Turns the process's output into log lines and tells when it exited.

    A chunk read from a pipe waits in `_chunks` with its pipe paused until `_pump` logged
    its lines, a slice at a time; so at most one chunk per pipe is held.
    """

    def __init__(self, ctx: ModuleContext) -> None:
        self._ctx = ctx
        self._lines = {1: _Lines(ctx, LogLevel.INFO), 2: _Lines(ctx, LogLevel.WARNING)}
        self._chunks: deque[tuple[int, bytes | None]] = deque()  # None: the pipe closed
        self._arrived = asyncio.Event()
        self._transport: asyncio.SubprocessTransport | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._finished = False
        self.exited = asyncio.Event()
        self.output_closed = asyncio.Event()
        self.handled = 0  # chunks logged so far
        self.waiting_for_room = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Say which process started, then start logging its output."""
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._transport = transport
        self._ctx.log(
            LogLevel.DEBUG, f"started process {transport.get_pid()} in its own process group"
        )
        for fd, data in self._chunks:  # come before this call (asyncio does not do that today)
            if data is not None:
                self._reading(fd, False)
        self._pump_task = asyncio.create_task(self._pump(), name="taskd-shell-output")

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        """Hold the chunk, with its pipe paused, until its lines are logged."""
        if not self._finished:
            self._chunks.append((fd, data))
            self._reading(fd, False)
            self._arrived.set()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        """Note the end of a stream, after its last chunk."""
        self._chunks.append((fd, None))
        self._arrived.set()

    def process_exited(self) -> None:
        """Called once the process was reaped."""
        self.exited.set()

    def _reading(self, fd: int, on: bool) -> None:
        pipe = self._transport.get_pipe_transport(fd) if self._transport else None
        if isinstance(pipe, asyncio.ReadTransport):
            if on:
                pipe.resume_reading()
            else:
                pipe.pause_reading()

    async def _pump(self) -> None:
        open_fds = {1, 2}
        while open_fds:
            await self._arrived.wait()
            self._arrived.clear()
            while self._chunks:
                fd, data = self._chunks.popleft()
                if data is None:
                    self._lines[fd].flush()
                    open_fds.discard(fd)
                    continue
                for _ in self._lines[fd].feed(data, SLICE_LINES):
                    await self._next_slice()
                self.handled += 1
                self._reading(fd, True)
        self.output_closed.set()

    async def _next_slice(self) -> None:
        """Let the loop run; while the log is full, wait for room (the pipe stays paused)."""
        if self._ctx.log_full:
            self.waiting_for_room = True
            try:
                await self._ctx.wait_log_room()
            finally:
                self.waiting_for_room = False
        else:
            await asyncio.sleep(0)

    def finish(self) -> None:
        """Log the unterminated lines; log nothing more (the execution is ending)."""
        if not self._finished:
            self._finished = True
            if self._pump_task is not None:
                self._pump_task.cancel()
            self._chunks.clear()
            for lines in self._lines.values():
                lines.flush()


class _Lines:
    """Splits one stream into lines, keeping at most MAX_LINE_BYTES of each."""

    def __init__(self, ctx: ModuleContext, level: LogLevel) -> None:
        self._ctx = ctx
        self._log: Callable[[LogLevel, str], None] = ctx.log
        self._level = level
        self._buffer = bytearray()
        self._dropped = 0  # bytes of the current line beyond the limit

    def feed(self, data: bytes, slice_lines: int) -> Iterator[None]:
        """Take a chunk of output; log every line it completes, yielding after each
        `slice_lines` of them and after the last (the caller lets the loop run there)."""
        start = 0
        if self._buffer or self._dropped:  # finish the line the last chunk began
            end = data.find(b"\n")
            if end >= 0:
                self._keep(data, 0, end)
                self._emit()
                start = end + 1
        start = self._skip_to_kept(data, start)
        emitted = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._keep(data, start, end)
            self._emit()
            start = end + 1
            emitted += 1
            if emitted == slice_lines:
                emitted = 0
                yield
        self._keep(data, start, len(data))
        if emitted:
            yield

    def _skip_to_kept(self, data: bytes, start: int) -> int:
        """Where the lines worth logging begin: past the head, of a chunk's lines only the
        last `keeps_last` can be kept, so the ones before are counted, not split (C speed:
        a chunk of 100,000 one-character lines costs a count, not 100,000 log calls)."""
        keeps_last = self._ctx.log_keeps_last()
        if keeps_last is None:
            return start
        position = data.rfind(b"\n", start)  # the end of the chunk's last complete line
        for _ in range(keeps_last):
            if position < start:
                return start  # no more complete lines than are kept
            position = data.rfind(b"\n", start, position)
        if position < start:
            return start
        self._ctx.log_left_out(data.count(b"\n", start, position + 1))
        return position + 1

    def flush(self) -> None:
        """Log the unterminated line, if any."""
        if self._buffer or self._dropped:
            self._emit()

    def _keep(self, data: bytes, start: int, end: int) -> None:
        room = MAX_LINE_BYTES - len(self._buffer)
        take = min(room, end - start)
        self._buffer += data[start : start + take]
        self._dropped += end - start - take

    def _emit(self) -> None:
        text = self._buffer.removesuffix(b"\r").decode("utf-8", errors="replace")
        if self._dropped:
            text += f" [line cut at {MAX_LINE_BYTES} bytes, {self._dropped} more dropped]"
        self._log(self._level, text)
        self._buffer.clear()
        self._dropped = 0
