"""systemd integration, stdlib only: the notify protocol, the watchdog, socket activation,
the directories systemd hands over, and a check of the files taskd trusts.

Everything here is a no-op outside systemd: without `$NOTIFY_SOCKET` nothing is sent,
without `$WATCHDOG_USEC` there is no watchdog, without `$LISTEN_FDS` no socket is inherited.
The protocols are the ones of sd_notify(3), sd_watchdog_enabled(3) and sd_listen_fds(3),
reimplemented so that taskd needs no libsystemd.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pwd
import socket
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LISTEN_FDS_START",
    "Directories",
    "InsecureFileError",
    "ListenFd",
    "SystemdEnvironmentError",
    "check_private_file",
    "directories",
    "listen_fds",
    "notify",
    "reloading_state",
    "status_loop",
    "unix_stream_fd",
    "watchdog_interval",
    "watchdog_loop",
]

# The first file descriptor systemd passes (SD_LISTEN_FDS_START); the others follow it.
LISTEN_FDS_START = 3

OnError = Callable[[OSError], object]


class SystemdEnvironmentError(ValueError):
    """A variable systemd sets (`LISTEN_FDS`, `LISTEN_FDNAMES`, ...) has an invalid value."""


class InsecureFileError(PermissionError):
    """A config or key file that users other than taskd's own could change or read.

    `path` is the file, `mode` its permission bits; `str()` is the whole message, naming the
    file, its mode and the command that fixes it.
    """

    def __init__(self, path: Path, mode: int, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.mode = mode

    def __str__(self) -> str:
        return str(self.args[0])


# ---------------------------------------------------------------------------------------
# The notify protocol


def notify(state: str, *, timeout_sec: float = 1.0) -> bool:
    """Send `state` (`"READY=1"`, `"STATUS=3 running"`, several joined by newlines) to systemd.

    The address is `$NOTIFY_SOCKET`: a socket path, or an abstract socket name starting with
    `@`. Returns True when the message was sent, False when `$NOTIFY_SOCKET` is not set (not
    run by systemd, or as a Type= that does not listen). The send waits for room in
    systemd's queue for `timeout_sec` at most: the one moment this may block the event
    loop, and only while PID 1 does not keep up. Raises `OSError` when the variable is set
    and the message cannot be sent: an unsupported address, no socket there, the queue
    still full after `timeout_sec` (`TimeoutError`).
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]  # Linux's abstract namespace
    elif address.startswith("/"):
        target = address
    else:
        raise OSError(errno.EAFNOSUPPORT, f"NOTIFY_SOCKET={address!r}: unsupported address")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        # Connected, so that waiting for room waits for the receiver's queue (an
        # unconnected datagram socket always looks writable).
        sock.connect(target)
        sock.settimeout(timeout_sec)
        sock.send(state.encode())
    return True


def reloading_state() -> str:
    """The message that starts a reload: `RELOADING=1` with the `MONOTONIC_USEC=` that
    systemd 253+ requires alongside it. Send `READY=1` when the reload is over."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def watchdog_interval() -> float | None:
    """Seconds between two `WATCHDOG=1` pings, or None when systemd expects none.

    That is half of `$WATCHDOG_USEC` (systemd's advice: ping at half the timeout), when it is
    set to a positive integer and `$WATCHDOG_PID` is unset or this process's pid (a child
    that inherited the variables is not watched). Raises `SystemdEnvironmentError` when a
    variable is set but not a positive integer.
    """
    usec_text = os.environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = os.environ.get("WATCHDOG_PID")
    if pid_text and _positive_int("WATCHDOG_PID", pid_text) != os.getpid():
        return None
    return _positive_int("WATCHDOG_USEC", usec_text) / 2_000_000


async def watchdog_loop(
    interval_sec: float | None = None,
    *,
    alive: Callable[[], bool] | None = None,
    on_error: OnError | None = None,
) -> None:
    """Send `WATCHDOG=1` every `interval_sec` (default: `watchdog_interval()`), until cancelled.

    The pings come from the event loop itself, so a loop that stays blocked sends none and
    systemd restarts the service when `WatchdogSec=` runs out. With `alive`, a ping is only
    sent while `alive()` is true: a daemon whose scheduler died gets restarted too. Returns
    at once when there is no watchdog. A failed send goes to `on_error` (ignored without
    it) and the pings go on.
    """
    if interval_sec is None:
        interval_sec = watchdog_interval()
    if interval_sec is None:
        return
    while True:
        if alive is None or alive():
            _send("WATCHDOG=1", on_error)
        await asyncio.sleep(interval_sec)


async def status_loop(
    status: Callable[[], str],
    *,
    interval_sec: float = 2.0,
    on_error: OnError | None = None,
) -> None:
    """Send `STATUS=<status()>` (what `systemctl status` shows) whenever it changed, checking
    every `interval_sec`, until cancelled.

    Returns at once without `$NOTIFY_SOCKET`. Newlines in the text become spaces (a newline
    would start another variable). A failed send goes to `on_error` and is tried again at
    the next check.
    """
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    sent: str | None = None
    while True:
        text = " ".join(status().splitlines())
        if text != sent and _send(f"STATUS={text}", on_error):
            sent = text
        await asyncio.sleep(interval_sec)


def _send(state: str, on_error: OnError | None) -> bool:
    try:
        return notify(state)
    except OSError as error:
        if on_error is not None:
            on_error(error)
        return False


# ---------------------------------------------------------------------------------------
# Socket activation


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenFd:
    """A file descriptor systemd passed: `fd` and the `FileDescriptorName=` of its socket unit
    (by default the unit's name, e.g. `taskd.socket`; `unknown` when systemd gave none)."""

    fd: int
    name: str


def listen_fds() -> tuple[ListenFd, ...]:
    """Take the file descriptors systemd passed to this process (sd_listen_fds(3)).

    They are `$LISTEN_FDS` descriptors from fd 3 on, named by `$LISTEN_FDNAMES` (colon
    separated), and meant for this process only when `$LISTEN_PID` is its pid. Each is set
    close-on-exec, so the commands taskd runs do not inherit them. `LISTEN_PID`, `LISTEN_FDS`
    and `LISTEN_FDNAMES` are removed from the environment in every case, so they reach no
    child either; a second call returns `()`. Returns `()` when nothing was passed to this
    process. Raises `SystemdEnvironmentError` for a malformed variable and `OSError` when a
    descriptor is not open.
    """
    pid_text = os.environ.pop("LISTEN_PID", "")
    count_text = os.environ.pop("LISTEN_FDS", "")
    names_text = os.environ.pop("LISTEN_FDNAMES", None)
    if not pid_text or not count_text:
        return ()
    if _positive_int("LISTEN_PID", pid_text) != os.getpid():
        return ()
    count = _natural_int("LISTEN_FDS", count_text)
    if names_text is None:
        names = ["unknown"] * count
    else:
        names = names_text.split(":")
        if len(names) != count:
            raise SystemdEnvironmentError(
                f"LISTEN_FDNAMES={names_text!r} names {len(names)} descriptors, "
                f"but LISTEN_FDS={count}"
            )
    passed = []
    for fd, name in enumerate(names, start=LISTEN_FDS_START):
        os.set_inheritable(fd, False)
        passed.append(ListenFd(fd=fd, name=name))
    return tuple(passed)


def unix_stream_fd(fds: tuple[ListenFd, ...], *, name: str | None = None) -> int | None:
    """The first of `fds` that is a listening AF_UNIX stream socket (with `name`, only one
    of that name), for `serve_api(unix_socket_fd=...)`; None when there is none."""
    for passed in fds:
        if name is not None and passed.name != name:
            continue
        try:
            sock = socket.socket(fileno=passed.fd)
        except OSError:  # not a socket
            continue
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM and listening:
                return passed.fd
        finally:
            sock.detach()  # the descriptor stays open: it is systemd's, handed to us
    return None


def _positive_int(variable: str, text: str) -> int:
    value = _natural_int(variable, text)
    if value == 0:
        raise SystemdEnvironmentError(f"{variable}={text!r} is not a positive integer")
    return value


def _natural_int(variable: str, text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise SystemdEnvironmentError(f"{variable}={text!r} is not an integer")
    return int(text)


# ---------------------------------------------------------------------------------------
# Directories and files


@dataclass(frozen=True, slots=True, kw_only=True)
class Directories:
    """The directories systemd made for the service, each None when not run that way.

    `state` is `$STATE_DIRECTORY` (StateDirectory=, /var/lib/taskd), `runtime`
    `$RUNTIME_DIRECTORY` (RuntimeDirectory=, /run/taskd), `configuration`
    `$CONFIGURATION_DIRECTORY` (ConfigurationDirectory=, /etc/taskd).
    """

    state: Path | None = None
    runtime: Path | None = None
    configuration: Path | None = None


def directories(environ: Mapping[str, str] | None = None) -> Directories:
    """Read the directories systemd set in `environ` (default: `os.environ`).

    A variable naming several directories (colon separated, when the unit lists several)
    gives the first; an empty or relative one counts as unset.
    """
    env = os.environ if environ is None else environ

    def first(variable: str) -> Path | None:
        head = env.get(variable, "").split(":")[0]
        return Path(head) if head.startswith("/") else None

    return Directories(
        state=first("STATE_DIRECTORY"),
        runtime=first("RUNTIME_DIRECTORY"),
        configuration=first("CONFIGURATION_DIRECTORY"),
    )


def check_private_file(path: Path, *, secret: bool) -> None:
    """Refuse a file that users other than taskd's own may change, or, if `secret`, read.

    Refused: a file owned by someone other than root or the user taskd runs as (the owner
    may chmod it), a file group or others may write, and with `secret` one group or others
    may read (an API key: mode 0600 or 0400). Symlinks are followed: the file that counts is
    the one read. Only the file is checked, not the directories above it. Raises
    `InsecureFileError` with a message naming the file, its mode and the fix; `OSError`
    when the file cannot be examined (`FileNotFoundError`, ...).
    """
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    me = os.geteuid()
    if info.st_uid not in (0, me):
        raise InsecureFileError(
            path,
            mode,
            f"{path} belongs to {_user_name(info.st_uid)}, who can change it; it must belong "
            f"to root or to {_user_name(me)}, the user taskd runs as "
            f"(chown {_user_name(me)} {path})",
        )
    forbidden = 0o077 if secret else 0o022
    if mode & forbidden:
        granted = []
        for who, shift in (("its group", 3), ("other users", 0)):
            rights = [
                right
                for right, bit in (("read", 0o4), ("write", 0o2))
                if (mode & forbidden) >> shift & bit
            ]
            if rights:
                granted.append(f"{who} {' and '.join(rights)} it")
        if secret:
            what = "the secret"
            fix = f"chmod 600 {path}"
            if info.st_uid != me:
                fix = f"chown {_user_name(me)} {path} && {fix}"
        else:
            what = "the file"
            fix = f"chmod go-w {path}"
        raise InsecureFileError(
            path,
            mode,
            f"refusing {what} {path}: mode {mode:04o} lets {' and '.join(granted)} ({fix})",
        )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
