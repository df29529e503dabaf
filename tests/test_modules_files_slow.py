"""The files module at scale and across a crash: kill -9 of a real daemon mid-copy, 10,000
small files, a 1 GB sparse file. Slow (seconds each)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash
from api_fixtures import Api
from test_daemon import Daemon, started, utc_in, wait_until

from taskd.modules.base import LogLevel
from taskd.modules.files import FilesModule
from taskd.modules.registry import ModuleRegistry
from taskd.testing import FakeContext

pytestmark = pytest.mark.slow

MiB = 1 << 20


def tree(root: Path) -> dict[str, bytes]:
    """Every file below `root` by relative path, with its content."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def files_ctx(src: Path, dst: Path, **options: object) -> FakeContext:
    """A copy of `src` into `dst` with `options`."""
    raw = {
        "sources": [{"type": "local", "path": str(src)}],
        "destination": {"type": "local", "path": str(dst)},
        "action": "copy",
    }
    params = ModuleRegistry.builtin().validate("files", raw, task={"options": options})
    return FakeContext(params=params, task_options=options)


@pytest.fixture
def start_daemon() -> Iterator[Callable[[Path], Daemon]]:
    """Start daemons on config files; every one of them is killed at teardown."""
    daemons: list[Daemon] = []

    def start(config: Path) -> Daemon:
        daemons.append(Daemon(config))
        return daemons[-1]

    yield start
    for daemon in daemons:
        daemon.close()


def test_kill_9_mid_copy_leaves_no_partial_file_and_the_retry_completes(
    tmp_path: Path, start_daemon: Callable[[Path], Daemon]
) -> None:
    """A real daemon copies 6 files of 24 MiB with xxhash64; it is killed with SIGKILL as
    soon as anything shows at the destination. What is there under a real name is whole;
    the restart retries the run, which completes the copy, leaves no temporary file, and
    `taskd ctl show` reports the counters."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(6):
        (src / f"part{i}.bin").write_bytes(os.urandom(24 * MiB))
    config = tmp_path / "taskd.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [daemon]
            state_dir = "state"
            shutdown_grace_sec = 0.5
            stop_grace_sec = 0.5

            [api]
            listen = []
            unix_socket = "s.sock"

            [[task]]
            name = "mover"
            task_module = "files"
            workflow_action = "copy"
            next_run_at = {utc_in(0.3)}
            options = {{ file_checksum = "xxhash64", max_retries = 1, retry_delay_sec = 0.2 }}
            task_params = {{ sources = [{{ type = "local", path = "{src}" }}], \
destination = {{ type = "local", path = "{dst}" }} }}
            """
        )
    )
    first, db = started(start_daemon, config)

    def anything_written() -> bool:
        return dst.exists() and any(dst.rglob("*.bin*"))

    wait_until(anything_written, "the copy to begin", timeout=30)
    first.send(signal.SIGKILL)
    assert first.wait_exit() == -signal.SIGKILL
    sources = tree(src)
    for path in (dst / "src").iterdir():
        if "taskd-tmp" not in path.name:  # under its real name: whole and right
            assert path.read_bytes() == sources[path.name], path
    [interrupted] = db.executions()
    assert interrupted["status"] == "running"

    second, _ = started(start_daemon, config)
    wait_until(lambda: db.executions("status = 'done'"), "the retry to finish", timeout=60)
    [retry] = db.executions("status = 'done'")
    assert retry["trigger"] == "retry"
    assert tree(dst / "src") == sources
    assert not [p for p in dst.rglob("*") if "taskd-tmp" in p.name]
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskd",
            "ctl",
            "--socket",
            str(tmp_path / "s.sock"),
            "show",
            "mover",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "progress 100 %, 151.0 MB of 151.0 MB, 6 of 6 files" in shown, shown
    second.send(signal.SIGTERM)
    assert second.wait_exit() == 0


async def test_ten_thousand_small_files(tmp_path: Path) -> None:
    """10,000 files of 100 bytes in 100 folders, 4 at once: every one arrives, counted."""
    src, dst = tmp_path / "src", tmp_path / "dst"

    def make() -> None:
        for folder in range(100):
            (src / f"d{folder:03}").mkdir(parents=True)
            for i in range(100):
                (src / f"d{folder:03}" / f"f{i:03}").write_bytes(b"%06d" % (folder * 100 + i) * 16)

    await asyncio.to_thread(make)
    ctx = files_ctx(src, dst, parallel=4, file_checksum="crc32")
    assert await FilesModule().run(ctx) == "copied 10000 files, 960000 bytes"
    copied = await asyncio.to_thread(tree, dst / "src")
    assert copied == await asyncio.to_thread(tree, src)
    final: dict[str, object] = {}
    for report in ctx.progress_reports:
        final.update(report)
    assert (final["nodes_todo"], final["nodes_done"], final["percent"]) == (10000, 10000, 100)


async def test_a_1_gb_sparse_file_stays_sparse_and_checks_out(tmp_path: Path) -> None:
    """1 GiB with a few bytes of data at each end: the copy has the same size and
    checksum, and its holes are holes (a few blocks allocated, not 1 GiB)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    big = src / "sparse.img"
    with big.open("wb") as file:
        file.write(b"head")
        file.truncate(1 << 30)
        file.seek((1 << 30) - 4)
        file.write(b"tail")
    ctx = files_ctx(src, dst, file_checksum="xxhash64")
    await FilesModule().run(ctx)
    copy = dst / "src" / "sparse.img"
    info = copy.stat()
    assert info.st_size == 1 << 30
    assert info.st_blocks * 512 < 16 * MiB

    def digest(path: Path) -> str:
        hasher = xxhash.xxh64()
        with path.open("rb") as file:
            while chunk := file.read(8 * MiB):
                hasher.update(chunk)
        return hasher.hexdigest()

    expected = await asyncio.to_thread(digest, big)
    assert await asyncio.to_thread(digest, copy) == expected
    assert any(expected in message for message in ctx.messages(LogLevel.INFO))


async def test_stop_and_resume_through_the_api(api: Api, tmp_path: Path) -> None:
    """A copy of 600 files, one at a time, is stopped over the API once files arrive: it
    ends `canceled` with its position in the task's state; `resume` starts a run that does
    not even look at the files up to that position, handles the others (copies them, or
    keeps the ones the first run copied after its last save) and clears the state."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    names = [f"f{i:04}" for i in range(600)]

    def make() -> None:
        src.mkdir()
        for i, name in enumerate(names):
            (src / name).write_bytes(b"x" * (i + 1))

    await asyncio.to_thread(make)
    body = {
        "name": "stoppable",
        "task_module": "files",
        "workflow_action": "copy",
        "task_params": {
            "sources": [{"type": "local", "path": str(src)}],
            "destination": {"type": "local", "path": str(dst)},
        },
    }
    created = await api.unix.post("/api/v2/tasks", body)
    assert created.status == 201, created
    task_id = created.json["id"]
    assert (await api.unix.put(f"/api/v2/tasks/{task_id}/action/run")).status == 200
    await api.wait_task(task_id, lambda _: dst.exists() and any(dst.rglob("f*")), "a copy")
    assert (await api.unix.put(f"/api/v2/tasks/{task_id}/action/stop")).status == 200
    stopped = await api.wait_status(task_id, "canceled")
    assert stopped.state is not None
    after = Path(stopped.state["after"]).name
    assert after in names[:-1]
    before_position = {name for name in names if name <= after}

    assert (await api.unix.put(f"/api/v2/tasks/{task_id}/action/resume")).status == 200
    done = await api.wait_status(task_id, "done")
    assert done.state == {}
    assert await asyncio.to_thread(tree, dst / "src") == await asyncio.to_thread(tree, src)
    await api.store.flush()
    log = await api.unix.get(
        f"/api/v2/tasks/{task_id}/log",
        params={"execution_id": str(done.last_execution_id), "limit": "5000"},
    )
    handled = {
        Path(entry["msg"].split()[1]).name
        for entry in log.json["entries"]
        if entry["msg"].startswith(("copied ", "kept "))
    }
    assert handled == set(names) - before_position
