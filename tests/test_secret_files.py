"""Secret params named as files are read off the event loop (issue 10, item 9 and practice
14): on an API write and before each run the files are read in a thread, a few at a time,
within a deadline. A FIFO stands for a slow or hung file system: opening it for reading
blocks until a writer comes, as a read on a hung mount would.

No secret is stored here: the "secret" is the made-up text `from-fifo`, written at run time
into a FIFO under the test's temporary directory (named `token` only for what it stands for).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import Api

from taskd.modules import params as params_module

pytestmark = pytest.mark.usefixtures("no_blocking")  # a read on the loop would block it

SLOW_SEC = 0.3  # how long the "file system" takes to answer: far over no_blocking's 50 ms


def _feed(fifo: Path, text: str, times: int) -> threading.Thread:
    """A thread that answers `times` reads of `fifo` with `text`, each after SLOW_SEC."""

    def feed() -> None:
        for _ in range(times):
            time.sleep(SLOW_SEC)
            with fifo.open("w") as writer:  # blocks until the reader has opened it
                writer.write(text + "\n")

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A private FIFO; whoever still waits to read it at the end is let go (EOF)."""
    path = tmp_path / "token"
    os.mkfifo(path, 0o600)
    yield path
    with contextlib.suppress(OSError):  # ENXIO: no reader left
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # a reader waiting gets EOF


@pytest.mark.slow
async def test_a_slow_secret_file_holds_neither_the_write_nor_the_run_on_the_loop(
    api: Api, fifo: Path
) -> None:
    """Creating a shell task whose env names a slow secret file, then running it: both
    read the file (once each) without holding the loop, the run sees its content, and
    health answers while the write waits for the file."""
    feeder = _feed(fifo, "from-fifo", times=2)
    seen = fifo.parent / "seen"
    script = f'printf %s "$TOKEN" > {seen}'
    params = {"argv": ["sh", "-c", script], "env": {"TOKEN": {"file": str(fifo)}}}
    create = asyncio.ensure_future(
        api.unix.post(
            "/api/v2/tasks", {"name": "slow", "task_module": "shell", "task_params": params}
        )
    )
    health = await (await api.tcp(None)).get("/api/v2/health")
    assert health.status == 200
    assert not create.done()  # health was answered while the file was still being read
    created = await create
    assert created.status == 201, created
    run = await api.unix.put(f"/api/v2/tasks/{created.json['id']}/action/run")
    await api.wait_execution(run.json["execution_id"], "done")
    assert await asyncio.to_thread(seen.read_text) == "from-fifo"
    await asyncio.to_thread(feeder.join, 5)
    assert not feeder.is_alive()


async def test_a_secret_file_that_never_answers_is_refused_in_time(
    api: Api, fifo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that does not answer: the write is refused (422 at the reference's
    path, saying so) once the deadline passed, instead of waiting for ever."""
    monkeypatch.setattr(params_module, "SECRET_FILE_READ_SEC", 0.2)
    params = {"argv": ["true"], "env": {"TOKEN": {"file": str(fifo)}}}
    reply = await api.unix.post(
        "/api/v2/tasks", {"name": "hung", "task_module": "shell", "task_params": params}
    )
    assert reply.status == 422, reply
    assert reply.json["messages"] == [
        "task_params.env.TOKEN.file: no answer from the file system within 0.2 s"
    ]
    assert await api.store.find_task("hung") is None
