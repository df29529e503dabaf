"""A secret never leaves taskd (issue 10, item 9): a value a module declares secret shows in
no line of the real daemon's log and in no API answer, wherever it went: a URL's password,
header values, an http body, a shell task's env that the command prints, an error message
quoting the URL, a response echoing the request, a run's metadata, a refused write.

The secret below is made up (nothing real): the test greps for it.
"""

from __future__ import annotations

import http.server
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_daemon import Daemon, start_daemon

__all__ = ["start_daemon"]  # the fixture, used by name below

pytestmark = pytest.mark.slow  # a real daemon

SECRET = "made-up-S3cr3t-d41f"  # not a credential of anything: the value grepped for
KEY = "k" * 43


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers 500 with the request's headers and body: a server that quotes what it got."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = (str(self.headers) + body.decode()).encode()
        self.send_response(500)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A loopback HTTP server that echoes requests (with a 500); its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class _Api:
    """Calls to the daemon's API with the admin key; every answer body is kept."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.answers: list[str] = []

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                status, text = reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode()
        self.answers.append(text)
        return status, json.loads(text) if text else None

    def wait_ended(self, task_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            _, executions = self.call("GET", f"/api/v2/tasks/{task_id}/executions")
            items = executions["executions"]
            ended = [e for e in items if e["status"] not in ("queued", "running")]
            if ended:
                return dict(ended[0])
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} did not end")


def test_a_secret_shows_in_no_log_line_and_no_api_answer(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon], echo_server: int
) -> None:
    """Tasks holding the made-up secret in every declared-secret place run and fail; the
    API lists, shows and logs them in both dialects; refused writes are answered: the
    secret is in none of it, nor on the daemon's stderr."""
    port = _free_port()
    (tmp_path / "admin.key").write_text(KEY + "\n")
    (tmp_path / "admin.key").chmod(0o600)
    config = tmp_path / "taskd.toml"
    config.write_text(
        '[daemon]\nstate_dir = "state"\n'
        f'[api]\nlisten = ["127.0.0.1:{port}"]\nunix_socket = false\n'
        '[[api.keys]]\nname = "admin"\nkey_file = "admin.key"\nscopes = ["*"]\n'
    )
    config.chmod(0o600)
    daemon = start_daemon(config)
    daemon.wait_for("api ready")
    api = _Api(port)
    hook = f"http://robot:{SECRET}@127.0.0.1:{echo_server}/hook"
    tasks = {
        "echoed": {
            "task_module": "http",
            "task_params": {
                "url": hook,
                "method": "POST",
                "headers": {"Authorization": f"Bearer {SECRET}"},
                "json": {"client_secret": SECRET},
            },
        },
        "bad-host": {
            "task_module": "http",
            "task_params": {"url": f"http://robot:{SECRET}@exa mple.invalid/", "body": SECRET},
        },
        "printing": {
            "task_module": "shell",
            "task_params": {
                "argv": ["sh", "-c", "echo token=$TOKEN; echo $TOKEN >&2; exit 3"],
                "env": {"TOKEN": SECRET},
            },
        },
    }
    ids = {}
    for name, definition in tasks.items():
        status, created = api.call("POST", "/api/v2/tasks", {"name": name, **definition})
        assert status == 201, created
        ids[name] = created["id"]
        status, _ = api.call(
            "PUT", f"/api/v2/tasks/{ids[name]}/action/run", {"note": f"copied {SECRET}"}
        )
        assert status in (200, 201, 202)
    ended = {name: api.wait_ended(task_id) for name, task_id in ids.items()}
    assert all(e["status"] == "error" for e in ended.values()), ended
    # Refused writes: a header with a line break, a URL without a host.
    bad_header = {"url": hook, "headers": {"X-Token": f"{SECRET}\n"}}
    status, _ = api.call(
        "POST", "/api/v2/tasks", {"name": "bad", "task_module": "http", "task_params": bad_header}
    )
    assert status == 422
    no_host = {"url": f"http://robot:{SECRET}@/x"}
    status, _ = api.call(
        "POST", "/api/v1/task", [{"task": {"task_module": "http", "task_params": no_host}}]
    )
    assert status == 400
    # Everything shown about them, in both dialects.
    api.call("GET", "/api/v2/tasks")
    api.call("GET", "/api/v1/task")
    for task_id in ids.values():
        api.call("GET", f"/api/v2/tasks/{task_id}")
        api.call("GET", f"/api/v1/task/{task_id}")
        api.call("GET", f"/api/v2/tasks/{task_id}/executions")
        api.call("GET", f"/api/v2/tasks/{task_id}/log")
        api.call("GET", f"/api/v1/task/{task_id}/log")
    logs = "".join(api.answers)
    assert "token=***" in logs  # the printed token is there, masked
    assert "exit code 3" in logs
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    for answer in api.answers:
        assert SECRET not in answer, answer
    stderr = daemon.stderr_text()
    assert SECRET not in stderr, [line for line in stderr.splitlines() if SECRET in line]
