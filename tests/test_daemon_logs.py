"""Log hygiene of the real daemon (issue 10, item 11): everything on stderr is one JSON
object a line, the libraries' logging included; a malformed request is at most one line
per interval, never a traceback.
"""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_daemon import Daemon, start_daemon

__all__ = ["start_daemon"]  # the fixture, used by name below

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _exchange(port: int, request: bytes) -> bytes:
    """Send `request` on a fresh TCP connection; return what came back (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received


def test_malformed_requests_log_one_json_line(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """Five requests with a NUL byte in a header are each answered 400; stderr holds only
    JSON lines, no traceback, and one line about them (the next four fall in its
    interval); the stdlib loggers' lines carry the logger's name."""
    port = _free_port()
    config = tmp_path / "taskd.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "state"\n[api]\nlisten = ["127.0.0.1:{port}"]\n'
        "unix_socket = false\n"
    )
    config.chmod(0o600)
    daemon = start_daemon(config)
    daemon.wait_for("api ready")
    head = b"GET /api/v2/health HTTP/1.1\r\nHost: x\r\n"
    for _ in range(5):
        answer = _exchange(port, head + b"X-A: a\x00b\r\n\r\n")
        assert b" 400 " in answer.split(b"\r\n")[0]
    healthy = _exchange(port, head + b"Connection: close\r\n\r\n")
    assert b" 200 " in healthy.split(b"\r\n")[0]
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    text = daemon.stderr_text()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is JSON
    assert all(isinstance(event, dict) and "event" in event for event in events)
    malformed = [event for event in events if "malformed" in event["event"]]
    assert len(malformed) == 1, malformed
    assert malformed[0]["logger"].startswith("aiohttp")
    assert "Invalid header value char" in malformed[0]["problem"]
    assert malformed[0]["level"] == "info"


def test_running_out_of_descriptors_is_one_json_line(tmp_path: Path) -> None:
    """A daemon limited to 64 descriptors, sent 100 connections that stay open: accepts
    fail with EMFILE again and again (asyncio retries each second), and stderr holds one
    JSON line about it per minute, no traceback; health answers once the idle connections
    were closed (keep-alive timeout 1 s)."""
    port = _free_port()
    config = tmp_path / "taskd.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "state"\n[api]\nlisten = ["127.0.0.1:{port}"]\n'
        "unix_socket = false\nkeepalive_timeout_sec = 1\n"
    )
    config.chmod(0o600)
    stderr_path = tmp_path / "stderr.txt"

    def limit_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "taskd", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=limit_descriptors,
            start_new_session=True,
        )
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 10
        while b"api ready" not in stderr_path.read_bytes():
            assert time.monotonic() < deadline, stderr_path.read_text()
            assert process.poll() is None, stderr_path.read_text()
            time.sleep(0.05)
        for _ in range(100):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(2.5)  # accepts fail and are retried each second
        for connection in held:
            connection.close()
        held.clear()
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = _exchange(
                    port, b"GET /api/v2/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
            except OSError:
                answer = b""
            if b" 200 " in answer.split(b"\r\n")[0]:
                break
            assert time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.2)
    finally:
        for connection in held:
            connection.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    text = stderr_path.read_text()
    assert "Traceback" not in text, text
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    out_of = [event for event in events if "out of file descriptors" in event["event"]]
    assert len(out_of) == 1, out_of


def test_the_event_loop_switch_runs_the_loop_named() -> None:
    """`[daemon] event_loop`: "uvloop" runs on uvloop (installed here), "asyncio" on
    asyncio's own loop; a file that cannot be read asks for the default (asyncio)."""
    import asyncio

    from taskd.daemon import event_loop_of, run_on_loop

    async def loop_module() -> int:
        return 1 if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else 0

    assert run_on_loop(loop_module(), "uvloop") == 1
    assert run_on_loop(loop_module(), "asyncio") == 0
    assert event_loop_of(Path("/nonexistent/taskd.toml")) == "asyncio"
