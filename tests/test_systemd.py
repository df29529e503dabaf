"""The systemd integration: notify protocol, watchdog, socket activation, directories and
the file checks.

The notify tests bind a real AF_UNIX datagram socket (in `tmp_path`, or in the abstract
namespace) and point `NOTIFY_SOCKET` at it, as systemd does. The socket-activation tests
start a child the way systemd does: the sockets moved to fd 3 on, `LISTEN_PID` set to the
child's own pid just before exec. The watchdog tests sleep for real (the watchdog is a real
timer); they assert counts within generous bounds, never exact timings.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskd.systemd import (
    Directories,
    InsecureFileError,
    ListenFd,
    SystemdEnvironmentError,
    check_private_file,
    directories,
    listen_fds,
    notify,
    reloading_state,
    status_loop,
    unix_stream_fd,
    watchdog_interval,
    watchdog_loop,
)

WAIT_SEC = 5.0  # the bound of every wait for a message


class NotifyListener:
    """The receiving end of `NOTIFY_SOCKET`: what systemd would read."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def drain(self) -> list[str]:
        """Every message queued now, without waiting."""
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    async def receive(self) -> str:
        """The next message, waiting up to WAIT_SEC (from the event loop)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(WAIT_SEC):
            data = await loop.sock_recv(self.sock, 4096)
        return data.decode()

    def receive_now(self) -> str:
        """The next message, waiting up to WAIT_SEC (blocking: for synchronous tests)."""
        self.sock.settimeout(WAIT_SEC)
        try:
            return self.sock.recv(4096).decode()
        finally:
            self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No systemd variable leaks in from the environment the tests run in."""
    for variable in (
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
    ):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_environment: None
) -> Iterator[NotifyListener]:
    """A datagram socket in tmp_path, set as NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    receiver = NotifyListener(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield receiver
    receiver.close()


# ---------------------------------------------------------------------------------------
# notify


def test_notify_sends_each_state_to_the_socket(listener: NotifyListener) -> None:
    """READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 arrive as sent, one datagram each."""
    states = ["READY=1", "STATUS=2 running, 5 queued", "WATCHDOG=1", "STOPPING=1"]
    for state in states:
        assert notify(state) is True
    assert [listener.receive_now() for _ in states] == states


def test_notify_reaches_an_abstract_socket(
    monkeypatch: pytest.MonkeyPatch, clean_environment: None
) -> None:
    """An address starting with @ names a socket in the abstract namespace."""
    name = f"taskd-test-{uuid.uuid4().hex}"
    receiver = NotifyListener("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1\nSTATUS=ready")
        assert receiver.receive_now() == "READY=1\nSTATUS=ready"
    finally:
        receiver.close()


def test_notify_without_notify_socket_is_a_no_op(clean_environment: None) -> None:
    """Outside systemd nothing is sent and nothing fails."""
    assert notify("READY=1") is False


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("/nonexistent/notify.sock", "No such file or directory"),
        ("vsock:2:1234", "unsupported address"),
        ("relative", "unsupported address"),
    ],
)
def test_notify_to_an_unusable_address_raises(
    address: str, reason: str, monkeypatch: pytest.MonkeyPatch, clean_environment: None
) -> None:
    """A NOTIFY_SOCKET that cannot be reached is an OSError, not a silent loss."""
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with pytest.raises(OSError, match=reason):
        notify("READY=1")


def test_notify_gives_up_when_systemd_does_not_read(listener: NotifyListener) -> None:
    """With the receiver's queue full, a send waits `timeout_sec` at most, then raises."""
    started = time.monotonic()
    with pytest.raises(TimeoutError):  # noqa: PT012 - the queue fills after some sends
        for _ in range(100_000):
            notify("WATCHDOG=1", timeout_sec=0.05)
    assert time.monotonic() - started < WAIT_SEC
    assert listener.drain()  # what fitted in the queue was delivered


def test_reloading_state_carries_the_monotonic_time() -> None:
    """RELOADING=1 comes with MONOTONIC_USEC (CLOCK_MONOTONIC, in µs), as systemd 253 wants."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = reloading_state().split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert first == "RELOADING=1"
    name, value = second.split("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(value) <= after


# ---------------------------------------------------------------------------------------
# The watchdog


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("200000", None, 0.1),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),  # inherited from the parent: not for this process
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_process(
    usec: str | None,
    pid: str | None,
    expected: float | None,
    monkeypatch: pytest.MonkeyPatch,
    clean_environment: None,
) -> None:
    """WATCHDOG_USEC / 2, in seconds, when WATCHDOG_PID is unset or this process."""
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + (0 if pid == "self" else 1)))
    assert watchdog_interval() == expected


@pytest.mark.parametrize(("variable", "value"), [("WATCHDOG_USEC", "abc"), ("WATCHDOG_PID", "0")])
def test_watchdog_interval_refuses_a_malformed_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, clean_environment: None
) -> None:
    """A value that is not a positive integer is an error naming the variable."""
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemdEnvironmentError, match=variable):
        watchdog_interval()


async def collect(listener: NotifyListener, into: list[str]) -> None:
    """Append every message that arrives to `into`, until cancelled."""
    while True:
        into.append(await listener.receive())


@pytest.mark.slow  # a second of real watchdog pings
async def test_watchdog_loop_pings_at_half_the_timeout(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG_USEC=200000: a ping about every 0.1 s, so 3 to 15 pings in one second."""
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    received: list[str] = []
    collector = asyncio.create_task(collect(listener, received))
    watchdog = asyncio.create_task(watchdog_loop())
    await asyncio.sleep(1.0)
    watchdog.cancel()
    await asyncio.sleep(0.05)  # let the collector read the last ones
    collector.cancel()
    assert set(received) == {"WATCHDOG=1"}
    assert 3 <= len(received) <= 15, received


def block_the_event_loop(seconds: float) -> None:
    """Hold the event loop's thread, as a blocking call in a coroutine would."""
    time.sleep(seconds)


@pytest.mark.slow
async def test_a_blocked_event_loop_sends_no_ping(listener: NotifyListener) -> None:
    """While the loop is blocked no WATCHDOG=1 goes out, so systemd would restart taskd;
    once it runs again the pings resume."""
    watchdog = asyncio.create_task(watchdog_loop(0.05))
    try:
        assert await listener.receive() == "WATCHDOG=1"
        listener.drain()
        block_the_event_loop(0.5)  # ten intervals
        assert listener.drain() == []
        assert await listener.receive() == "WATCHDOG=1"
    finally:
        watchdog.cancel()


async def test_watchdog_loop_pings_only_while_alive(listener: NotifyListener) -> None:
    """With `alive` false no ping is sent (systemd restarts the service); true, they come."""
    healthy = False
    watchdog = asyncio.create_task(watchdog_loop(0.02, alive=lambda: healthy))
    try:
        await asyncio.sleep(0.2)  # ten intervals
        assert listener.drain() == []
        healthy = True
        assert await listener.receive() == "WATCHDOG=1"
    finally:
        watchdog.cancel()


async def test_watchdog_loop_reports_failed_pings_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, clean_environment: None
) -> None:
    """A ping that cannot be sent goes to `on_error`; the next one is still tried."""
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    errors: list[OSError] = []
    two_errors = asyncio.Event()

    def on_error(error: OSError) -> None:
        errors.append(error)
        if len(errors) == 2:
            two_errors.set()

    watchdog = asyncio.create_task(watchdog_loop(0.01, on_error=on_error))
    try:
        async with asyncio.timeout(WAIT_SEC):
            await two_errors.wait()
    finally:
        watchdog.cancel()
    assert all(isinstance(error, FileNotFoundError) for error in errors)


async def test_watchdog_loop_without_a_watchdog_returns_at_once(clean_environment: None) -> None:
    """No WATCHDOG_USEC: the loop ends instead of pinging nobody."""
    async with asyncio.timeout(WAIT_SEC):
        await watchdog_loop()


async def test_status_loop_sends_each_change_once(listener: NotifyListener) -> None:
    """STATUS= goes out when the text changes, not at every check; newlines become spaces."""
    text = "0 running, 0 queued"
    task = asyncio.create_task(status_loop(lambda: text, interval_sec=0.01))
    try:
        assert await listener.receive() == "STATUS=0 running, 0 queued"
        await asyncio.sleep(0.2)  # twenty checks, no change
        assert listener.drain() == []
        text = "3 running,\n1 queued"
        assert await listener.receive() == "STATUS=3 running, 1 queued"
    finally:
        task.cancel()


async def test_status_loop_without_notify_socket_returns_at_once(clean_environment: None) -> None:
    """Outside systemd there is nobody to tell."""
    async with asyncio.timeout(WAIT_SEC):
        await status_loop(lambda: "idle")


# ---------------------------------------------------------------------------------------
# Socket activation

# What systemd does between fork and exec: move the sockets to fd 3, 4, ..., and set
# LISTEN_PID to the pid that exec keeps. argv: source fds, pid offset, the program.
LAUNCHER = """
import fcntl, os, sys
sources = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[1].split(",")]
for target, source in enumerate(sources, start=3):
    os.dup2(source, target)
os.environ["LISTEN_PID"] = str(os.getpid() + int(sys.argv[2]))
os.execv(sys.executable, [sys.executable, "-c", sys.argv[3]])
"""

# The activated child: reports what listen_fds() found, then serves one connection on the
# Unix socket it picked.
CHILD = """
import json, os, socket
from taskd.systemd import listen_fds, unix_stream_fd
fds = listen_fds()
chosen = unix_stream_fd(fds)
report = {
    "fds": [[f.fd, f.name] for f in fds],
    "unix": chosen,
    "inheritable": [os.get_inheritable(f.fd) for f in fds],
    "environment": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    "again": len(listen_fds()),
}
print(json.dumps(report), flush=True)
if chosen is not None:
    connection, _ = socket.socket(fileno=chosen).accept()
    connection.sendall(b"served by the inherited socket")
    connection.close()
"""


def activate(fds: list[int], *, pid_offset: int, names: str) -> subprocess.Popen[str]:
    """Start CHILD with `fds` passed as systemd passes them."""
    environment = {**os.environ, "LISTEN_FDS": str(len(fds)), "LISTEN_FDNAMES": names}
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), str(pid_offset), CHILD],
        pass_fds=fds,
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_listen_fds_hands_over_the_socket_systemd_bound(tmp_path: Path) -> None:
    """LISTEN_FDS=2 (a file, then the socket): both found by name from fd 3, close-on-exec,
    the variables removed; the Unix socket is picked and accepts a connection."""
    path = tmp_path / "taskd.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    with (tmp_path / "other").open("w") as other:
        child = activate([other.fileno(), server.fileno()], pid_offset=0, names="log:api")
    server.close()  # the child holds it now
    with child:  # closes the pipe and reaps the child, whatever happens
        try:
            assert child.stdout is not None
            report = json.loads(child.stdout.readline())
            assert report == {
                "fds": [[3, "log"], [4, "api"]],
                "unix": 4,
                "inheritable": [False, False],
                "environment": [],
                "again": 0,
            }
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(WAIT_SEC)
                client.connect(str(path))
                assert client.recv(100) == b"served by the inherited socket"
            assert child.wait(WAIT_SEC) == 0
        finally:
            child.kill()


def test_listen_fds_for_another_pid_gives_nothing(tmp_path: Path) -> None:
    """LISTEN_PID naming another process: the fds are not ours; the variables go anyway."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "taskd.sock"))
    server.listen()
    child = activate([server.fileno()], pid_offset=1, names="api")
    server.close()
    with child:
        try:
            output, _ = child.communicate(timeout=WAIT_SEC)
        finally:
            child.kill()
    report = json.loads(output)
    assert report == {"fds": [], "unix": None, "inheritable": [], "environment": [], "again": 0}


def test_listen_fds_without_variables_gives_nothing(clean_environment: None) -> None:
    """Not socket-activated: no fds."""
    assert listen_fds() == ()


def test_listen_fds_with_a_mismatched_pid_removes_the_variables(
    monkeypatch: pytest.MonkeyPatch, clean_environment: None
) -> None:
    """The variables are removed even when they are not for this process."""
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "api")
    assert listen_fds() == ()
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)


@pytest.mark.parametrize(
    ("fds", "names", "message"),
    [("two", None, "LISTEN_FDS='two'"), ("2", "api", "names 1 descriptors, but LISTEN_FDS=2")],
)
def test_listen_fds_refuses_malformed_variables(
    fds: str,
    names: str | None,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    clean_environment: None,
) -> None:
    """A count that is no number, or names that do not match the count, are errors."""
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", fds)
    if names is not None:
        monkeypatch.setenv("LISTEN_FDNAMES", names)
    with pytest.raises(SystemdEnvironmentError, match=message):
        listen_fds()


def test_unix_stream_fd_skips_what_is_no_listening_unix_socket(tmp_path: Path) -> None:
    """A file, a TCP socket and an unlistening Unix socket are passed over."""
    with (
        (tmp_path / "file").open("w") as file,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        server.bind(str(tmp_path / "s"))
        server.listen()
        fds = tuple(
            ListenFd(fd=fd, name=name)
            for fd, name in [
                (file.fileno(), "a"),
                (tcp.fileno(), "b"),
                (idle.fileno(), "c"),
                (server.fileno(), "d"),
            ]
        )
        assert unix_stream_fd(fds) == server.fileno()
        assert unix_stream_fd(fds, name="c") is None
        assert unix_stream_fd(fds[:3]) is None
        # The probe leaves the descriptors open.
        assert server.fileno() != -1
        assert stat.S_ISSOCK(os.fstat(server.fileno()).st_mode)


# ---------------------------------------------------------------------------------------
# Directories


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, Directories()),
        (
            {
                "STATE_DIRECTORY": "/var/lib/taskd",
                "RUNTIME_DIRECTORY": "/run/taskd",
                "CONFIGURATION_DIRECTORY": "/etc/taskd",
            },
            Directories(
                state=Path("/var/lib/taskd"),
                runtime=Path("/run/taskd"),
                configuration=Path("/etc/taskd"),
            ),
        ),
        (
            {"STATE_DIRECTORY": "/var/lib/taskd:/var/lib/other"},
            Directories(state=Path("/var/lib/taskd")),
        ),
        ({"STATE_DIRECTORY": "", "RUNTIME_DIRECTORY": "relative"}, Directories()),
    ],
)
def test_directories_come_from_systemd_variables(
    environ: dict[str, str], expected: Directories
) -> None:
    """The first of each variable's directories; empty or relative ones count as unset."""
    assert directories(environ) == expected


# ---------------------------------------------------------------------------------------
# Private files


def private_file(tmp_path: Path, name: str, mode: int) -> Path:
    """A file in tmp_path with exactly `mode`, whatever the umask."""
    path = tmp_path / name
    path.write_text("content\n")
    path.chmod(mode)
    return path


def test_config_file_others_can_write_is_refused(tmp_path: Path) -> None:
    """Mode 0666 on a config file: refused, naming the file, the mode and the fix."""
    path = private_file(tmp_path, "taskd.toml", 0o666)
    with pytest.raises(InsecureFileError) as refused:
        check_private_file(path, secret=False)
    assert str(refused.value) == (
        f"refusing the file {path}: mode 0666 lets its group write it and other users "
        f"write it (chmod go-w {path})"
    )
    assert (refused.value.path, refused.value.mode) == (path, 0o666)


def test_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """Mode 0644 on a key file: refused, since group and others can read the secret."""
    path = private_file(tmp_path, "ops.key", 0o644)
    with pytest.raises(InsecureFileError) as refused:
        check_private_file(path, secret=True)
    message = str(refused.value)
    assert str(path) in message
    assert "0644" in message
    assert "lets its group read it and other users read it" in message
    assert f"chmod 600 {path}" in message


@pytest.mark.parametrize(
    ("mode", "secret", "refused"),
    [
        (0o644, False, False),
        (0o640, False, False),
        (0o600, False, False),
        (0o620, False, True),
        (0o602, False, True),
        (0o600, True, False),
        (0o400, True, False),
        (0o640, True, True),
        (0o604, True, True),
        (0o660, True, True),
    ],
)
def test_private_file_modes(tmp_path: Path, mode: int, secret: bool, refused: bool) -> None:
    """Config files: no write for group/others. Secrets: nothing for group/others."""
    path = private_file(tmp_path, "file", mode)
    if refused:
        with pytest.raises(InsecureFileError, match=f"mode {mode:04o}"):
            check_private_file(path, secret=secret)
    else:
        check_private_file(path, secret=secret)


def test_private_file_follows_symlinks(tmp_path: Path) -> None:
    """The file that counts is the one read: a symlink to a 0666 file is refused."""
    target = private_file(tmp_path, "target", 0o666)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(InsecureFileError, match="mode 0666"):
        check_private_file(link, secret=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_private_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """The owner can chmod the file at will, so a file of another user is refused."""
    path = private_file(tmp_path, "ops.key", 0o600)
    os.chown(path, 65534, -1)
    with pytest.raises(InsecureFileError, match="who can change it") as refused:
        check_private_file(path, secret=True)
    assert str(path) in str(refused.value)


def test_private_file_missing_raises_file_not_found(tmp_path: Path) -> None:
    """A missing file is the OSError of stat(), for the caller's own message."""
    with pytest.raises(FileNotFoundError):
        check_private_file(tmp_path / "absent", secret=False)
