"""The files module on real files in temporary folders: every action and option.

The module runs with a `FakeContext` (progress, log and saved state recorded); validation
is the registry's own, the definition checks (`check_task`) included. The tests set their
files up on the event loop (short blocking calls); `test_the_event_loop_is_never_blocked`
sets up in a thread and runs every action under the `no_blocking` fixture.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import xxhash

from taskd.errors import ValidationError
from taskd.model import Trigger
from taskd.modules import files_io
from taskd.modules.base import LogLevel, ModuleError
from taskd.modules.files import FilesModule
from taskd.modules.files_options import Settings
from taskd.modules.registry import ModuleRegistry
from taskd.testing import FakeContext, wait_until

OLD_NS = 1_500_000_000_123_456_789  # 2017: a date no file written now has


def place(path: Path | str) -> dict[str, str]:
    """A `{"type": "local", "path": ...}` object."""
    return {"type": "local", "path": str(path)}


def files_ctx(
    sources: Sequence[Path | str],
    destination: Path | Sequence[Path] | None = None,
    *,
    action: str | None = None,
    workflow_action: str | None = None,
    ctx_class: type[FakeContext] = FakeContext,
    state: dict[str, Any] | None = None,
    **options: Any,
) -> FakeContext:
    """A context for the files module, params validated as the daemon does (check_task
    included, with the definition's `workflow_action` and `options`)."""
    raw: dict[str, Any] = {"sources": [place(s) for s in sources]}
    if destination is not None:
        raw["destination"] = (
            place(destination) if isinstance(destination, Path) else [place(d) for d in destination]
        )
    if action is not None:
        raw["action"] = action
    task = {"workflow_action": workflow_action, "options": options}
    params = ModuleRegistry.builtin().validate("files", raw, task=task)
    return ctx_class(
        params=params, workflow_action=workflow_action, task_options=options, state=state
    )


def fingerprint_of(ctx: FakeContext) -> dict[str, Any]:
    """The fingerprint a run of `ctx` saves its position under."""
    return Settings.resolve(ctx.params, ctx.workflow_action, ctx.task_options).fingerprint()


async def run(ctx: FakeContext) -> str:
    """Run the module to its end."""
    return await FilesModule().run(ctx)


def write(path: Path, data: bytes | str, mtime_ns: int | None = OLD_NS) -> Path:
    """Write a file (folders made), with an old modification time by default."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Every file below `root` by relative path, with its content."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def sample(src: Path) -> dict[str, bytes]:
    """A small tree: files at two depths, an empty folder, a hidden file."""
    write(src / "a.txt", "alpha")
    write(src / "sub" / "b.bin", os.urandom(3000))
    write(src / "sub" / "deeper" / "c.txt", "gamma" * 1000)
    write(src / ".hidden", "h")
    (src / "empty").mkdir()
    os.utime(src / "sub", ns=(OLD_NS, OLD_NS))
    return tree(src)


def last_report(ctx: FakeContext) -> dict[str, Any]:
    """The progress fields as the last reports left them."""
    merged: dict[str, Any] = {}
    for report in ctx.progress_reports:
        merged.update(report)
    return merged


# ---- copy


async def test_copy_copies_a_tree_keeping_dates_modes_and_empty_folders(tmp_path: Path) -> None:
    """The folder arrives below the destination under its own name, with every file, the
    empty folder, the files' mode and dates and the folders' dates; progress ends at 100 %
    with the counters of the first scan."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = sample(src)
    (src / "a.txt").chmod(0o640)
    dst.mkdir()
    ctx = files_ctx([src], dst, action="copy")
    assert await run(ctx) == f"copied 4 files, {sum(map(len, files.values()))} bytes"
    assert tree(dst / "src") == files
    assert (dst / "src" / "empty").is_dir()
    copied = dst / "src" / "a.txt"
    assert copied.stat().st_mtime_ns == OLD_NS
    assert copied.stat().st_mode & 0o777 == 0o640
    assert (dst / "src" / "sub").stat().st_mtime_ns == OLD_NS
    first = ctx.progress_reports[0]
    assert first["nodes_todo"] == 4
    assert first["size_todo"] == sum(map(len, files.values()))
    final = last_report(ctx)
    assert final["percent"] == 100
    assert (final["size_done"], final["nodes_done"]) == (first["size_todo"], 4)
    assert final["bandwidth"] > 0
    assert not [p for p in dst.rglob("*") if "taskd-tmp" in p.name]


async def test_the_action_defaults_to_the_workflow_action(tmp_path: Path) -> None:
    """Without `action`, the task's workflow_action says what to do."""
    src = write(tmp_path / "in" / "x.txt", "x").parent
    ctx = files_ctx([src], workflow_action="scan")
    assert await run(ctx) == "scanned 1 files, 1 bytes in 1 folders"


@pytest.mark.parametrize(
    ("name", "digest"),
    [
        ("crc32", lambda data: f"{zlib.crc32(data):08x}"),
        ("md5", lambda data: hashlib.md5(data).hexdigest()),
        ("xxhash64", lambda data: xxhash.xxh64(data).hexdigest()),
    ],
)
async def test_file_checksum_is_computed_verified_and_logged(
    tmp_path: Path, name: str, digest: Any
) -> None:
    """Each checksum of each file copied is in the log, and is the file's."""
    data = os.urandom(3 * files_io.CHUNK + 17)
    src = write(tmp_path / "in" / "data.bin", data).parent
    dst = tmp_path / "out"
    ctx = files_ctx([src], dst, action="copy", file_checksum=name)
    await run(ctx)
    assert (dst / "in" / "data.bin").read_bytes() == data
    line = f"copied {src / 'data.bin'} to {dst / 'in' / 'data.bin'} ({len(data)} bytes, "
    assert f"{line}{name} {digest(data)})" in ctx.messages(LogLevel.INFO)


async def test_a_file_changed_under_the_copy_ends_in_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source is rewritten after the first chunk was read (from the copying thread,
    through the byte counter): the checksum read differs from the file's; the run ends in
    error naming the file, and nothing is left under its name or a temporary one."""
    source = write(tmp_path / "in" / "big.bin", os.urandom(4 * files_io.CHUNK))
    dst = tmp_path / "out"
    original = files_io.Counters.add_bytes

    def change_source(self: files_io.Counters, count: int) -> None:
        original(self, count)
        if self.bytes == count:  # the first chunk
            with source.open("r+b") as file:
                file.write(b"changed!")

    monkeypatch.setattr(files_io.Counters, "add_bytes", change_source)
    ctx = files_ctx([source.parent], dst, action="copy", file_checksum="xxhash64")
    with pytest.raises(ModuleError, match=rf"{source}: checksum mismatch"):
        await run(ctx)
    assert [p.name for p in dst.rglob("*") if p.is_file()] == []


async def test_copy_without_checksum_still_refuses_a_source_that_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without file_checksum, a change of the source's size or times refuses the copy."""
    source = write(tmp_path / "in" / "big.bin", os.urandom(2 * files_io.CHUNK))
    original = files_io.Counters.add_bytes

    def append(self: files_io.Counters, count: int) -> None:
        original(self, count)
        with source.open("ab") as file:  # after every chunk: the file keeps growing
            file.write(b"more")

    monkeypatch.setattr(files_io.Counters, "add_bytes", append)
    with pytest.raises(ModuleError, match=rf"{source}: changed while it was copied"):
        await run(files_ctx([source.parent], tmp_path / "out", action="copy"))


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """Collect, then freeze what earlier tests left on the heap: a full collection of it
    (tens of ms late in a long test session) is no part of the module. Set up before
    `no_blocking` (and off the event loop), undone after it."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.slow
@pytest.mark.usefixtures("frozen_heap", "no_blocking")
async def test_the_event_loop_is_never_blocked(tmp_path: Path) -> None:
    """Copy (4 at once, with a checksum), check, duplicate, move, scan and erase 10 MB in
    100 files: the scans, the copies and the hashing all run in worker threads."""
    src = tmp_path / "src"

    def make() -> None:
        for i in range(100):
            write(src / f"d{i % 7}" / f"f{i}.bin", os.urandom(100_000))

    await asyncio.to_thread(make)
    await run_every_action(tmp_path, src)


async def run_every_action(tmp_path: Path, src: Path) -> None:
    """Copy, check, duplicate, scan, move and erase `src` (100 files), 4 at a time."""
    dst, twins = tmp_path / "dst", [tmp_path / "t1", tmp_path / "t2"]
    destinations: list[tuple[str, Path | list[Path] | None]] = [
        ("copy", dst),
        ("check_consistency", dst),
        ("duplication", twins),
        ("scan", None),
        ("move", tmp_path / "moved"),
        ("erase", None),
    ]
    for action, destination in destinations:
        sources = [dst / "src"] if action == "erase" else [src]
        ctx = files_ctx(sources, destination, action=action, file_checksum="xxhash64", parallel=4)
        await run(ctx)
        assert last_report(ctx)["nodes_done"] == 100, action


# ---- conflicts


async def test_conflict_rename_writes_name_1_ext_and_keeps_identical_files(
    tmp_path: Path,
) -> None:
    """A different file at the target: the copy goes to `a (1).txt`, then `a (2).txt`;
    a file identical to the source (same size and date) is kept, not copied again."""
    src = write(tmp_path / "in" / "a.txt", "new").parent
    dst = tmp_path / "out"
    write(dst / "in" / "a.txt", "old content")
    await run(files_ctx([src], dst, action="copy", conflict_resolution="rename"))
    assert tree(dst / "in") == {"a.txt": b"old content", "a (1).txt": b"new"}
    ctx = files_ctx([src], dst, action="copy", conflict_resolution="rename")
    await run(ctx)
    assert tree(dst / "in") == {"a.txt": b"old content", "a (1).txt": b"new"}
    assert any("already there" in m for m in ctx.messages())
    write(src / "a.txt", "newer")
    await run(files_ctx([src], dst, action="copy", conflict_resolution="rename"))
    assert tree(dst / "in")["a (2).txt"] == b"newer"


async def test_conflict_overwrite_and_ignore(tmp_path: Path) -> None:
    """`overwrite` replaces the file at the target; `ignore` leaves it and says so."""
    src = write(tmp_path / "in" / "a.txt", "new").parent
    dst = tmp_path / "out"
    write(dst / "in" / "a.txt", "old", mtime_ns=OLD_NS + 1)
    ctx = files_ctx([src], dst, action="copy", conflict_resolution="ignore")
    await run(ctx)
    assert tree(dst / "in") == {"a.txt": b"old"}
    assert any("conflict_resolution is ignore" in m for m in ctx.messages())
    await run(files_ctx([src], dst, action="copy", conflict_resolution="overwrite"))
    assert tree(dst / "in") == {"a.txt": b"new"}


async def test_rename_keeps_a_double_extension_and_a_dot_file(tmp_path: Path) -> None:
    """`r.tar.gz` becomes `r.tar (1).gz`; `.env` becomes `.env (1)`."""
    src = tmp_path / "in"
    write(src / "r.tar.gz", "new")
    write(src / ".env", "new")
    dst = tmp_path / "out"
    write(dst / "r.tar.gz", "old", mtime_ns=OLD_NS + 1)
    write(dst / ".env", "old", mtime_ns=OLD_NS + 1)
    await run(files_ctx([src], dst, action="copy", remove_root_folder=True))
    assert tree(dst)["r.tar (1).gz"] == b"new"
    assert tree(dst)[".env (1)"] == b"new"


# ---- options


async def test_recursive_false_takes_the_top_files_only(tmp_path: Path) -> None:
    """Without recursion, the files directly in the source folder."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    sample(src)
    await run(files_ctx([src], dst, action="copy", recursive=False))
    assert sorted(tree(dst / "src")) == [".hidden", "a.txt"]


async def test_ignore_hidden_skips_dot_files_and_folders(tmp_path: Path) -> None:
    """Names starting with a dot are left out, folders with everything in them."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    sample(src)
    write(src / ".git" / "config", "x")
    await run(files_ctx([src], dst, action="copy", ignore_hidden=True))
    assert sorted(tree(dst / "src")) == ["a.txt", "sub/b.bin", "sub/deeper/c.txt"]


async def test_processing_order_asc_and_dsc_by_path(tmp_path: Path) -> None:
    """Files are handled by path, ascending or descending."""
    src = tmp_path / "src"
    for name in ("b", "a", "c"):
        write(src / name, name)

    async def order(direction: str) -> list[str]:
        ctx = files_ctx([src], tmp_path / direction, action="copy", processing_order=direction)
        await run(ctx)
        return [m.split()[1] for m in ctx.messages(LogLevel.INFO) if m.startswith("copied ")]

    assert await order("asc") == [str(src / n) for n in "abc"]
    assert await order("dsc") == [str(src / n) for n in "cba"]


async def test_parallel_copies_many_files(tmp_path: Path) -> None:
    """With parallel = 4 every file arrives, each once."""
    src = tmp_path / "src"
    expected = {f"d{i % 5}/f{i}.txt": str(i).encode() * 100 for i in range(200)}
    for name, data in expected.items():
        write(src / name, data)
    ctx = files_ctx([src], tmp_path / "dst", action="copy", parallel=4)
    await run(ctx)
    assert tree(tmp_path / "dst" / "src") == expected
    assert last_report(ctx)["nodes_done"] == 200


async def test_reset_file_date_and_reset_folder_date(tmp_path: Path) -> None:
    """The copies get the time of the copy, not the source's."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    sample(src)
    before = time.time_ns() - 2_000_000_000
    await run(files_ctx([src], dst, action="copy", reset_file_date=True, reset_folder_date=True))
    assert (dst / "src" / "a.txt").stat().st_mtime_ns > before
    assert (dst / "src" / "sub").stat().st_mtime_ns > before


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner takes root")
async def test_keep_file_ownership(tmp_path: Path) -> None:
    """With keep_file_ownership the copy has the source's owner; without, taskd's."""
    src = write(tmp_path / "src" / "a.txt", "a").parent
    os.chown(src / "a.txt", 4321, 4322)
    os.chown(src, 4321, 4322)
    await run(files_ctx([src], tmp_path / "kept", action="copy", keep_file_ownership=True))
    info = (tmp_path / "kept" / "src" / "a.txt").stat()
    assert (info.st_uid, info.st_gid) == (4321, 4322)
    assert (tmp_path / "kept" / "src").stat().st_uid == 4321
    await run(files_ctx([src], tmp_path / "plain", action="copy"))
    assert (tmp_path / "plain" / "src" / "a.txt").stat().st_uid == os.geteuid()


async def test_remove_root_folder_copies_the_contents(tmp_path: Path) -> None:
    """The source folder's contents land directly in the destination."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = sample(src)
    await run(files_ctx([src], dst, action="copy", remove_root_folder=True))
    assert tree(dst) == files


async def test_globs_select_the_sources(tmp_path: Path) -> None:
    """A pattern's matches are the sources; a pattern matching nothing is a warning."""
    src = tmp_path / "src"
    write(src / "one.csv", "1")
    write(src / "two.csv", "2")
    write(src / "three.txt", "3")
    dst = tmp_path / "dst"
    ctx = files_ctx([src / "*.csv", src / "*.none"], dst, action="copy")
    await run(ctx)
    assert tree(dst) == {"one.csv": b"1", "two.csv": b"2"}
    assert any("matches nothing" in m for m in ctx.messages(LogLevel.WARNING))


async def test_symlinks_never_lead_out_of_a_source(tmp_path: Path) -> None:
    """A link to a file inside the source is copied as that file; links out of the
    source, to folders or to nothing are skipped with a warning."""
    src, outside = tmp_path / "src", tmp_path / "secret"
    write(src / "real.txt", "inside")
    write(outside / "passwd", "outside")
    (src / "inner-link").symlink_to(src / "real.txt")
    (src / "outer-link").symlink_to(outside / "passwd")
    (src / "dir-link").symlink_to(outside)
    (src / "broken").symlink_to(tmp_path / "nowhere")
    dst = tmp_path / "dst"
    ctx = files_ctx([src], dst, action="copy")
    await run(ctx)
    assert tree(dst / "src") == {"inner-link": b"inside", "real.txt": b"inside"}
    warnings = " ".join(ctx.messages(LogLevel.WARNING))
    assert "outer-link: a symlink out of the source" in warnings
    assert "dir-link" in warnings
    assert "broken" in warnings


# ---- the other actions


async def test_move_copies_verifies_then_removes_the_sources(tmp_path: Path) -> None:
    """The files arrive, the sources are gone, emptied subfolders too; the named source
    folder stays."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = sample(src)
    assert (await run(files_ctx([src], dst, action="move", file_checksum="md5"))).startswith(
        "moved 4 files"
    )
    assert tree(dst / "src") == files
    assert list(src.iterdir()) == []


async def test_move_with_ignore_leaves_a_conflicting_source_in_place(tmp_path: Path) -> None:
    """A source whose target holds another file (ignored) is not removed: it was not
    copied. An identical file at the target counts as copied: that source goes."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "differs.txt", "new")
    write(src / "same.txt", "same")
    write(dst / "src" / "differs.txt", "old", mtime_ns=OLD_NS + 1)
    write(dst / "src" / "same.txt", "same")
    ctx = files_ctx([src], dst, action="move", conflict_resolution="ignore")
    await run(ctx)
    assert tree(src) == {"differs.txt": b"new"}
    assert tree(dst / "src") == {"differs.txt": b"old", "same.txt": b"same"}
    assert f"not moved, left in place: {src / 'differs.txt'}" in ctx.messages(LogLevel.WARNING)


async def test_erase_deletes_and_soft_erase_moves_to_the_trash(tmp_path: Path) -> None:
    """`erase` deletes the files and emptied subfolders; with soft_erase they go to the
    source's `.taskd-trash`, and a second erase finds nothing more to do."""
    hard, soft = tmp_path / "hard", tmp_path / "soft"
    sample(hard)
    files = sample(soft)
    size = sum(map(len, files.values()))
    assert await run(files_ctx([hard], action="erase")) == f"erased 4 files, {size} bytes"
    assert list(hard.iterdir()) == []
    await run(files_ctx([soft], action="erase", soft_erase=True))
    assert [p.name for p in soft.iterdir()] == [".taskd-trash"]
    assert tree(soft / ".taskd-trash") == files
    assert await run(files_ctx([soft], action="erase", soft_erase=True)) == (
        "erased 0 files, 0 bytes"
    )


async def test_scan_counts_files_and_sizes(tmp_path: Path) -> None:
    """`scan` reports the counters and changes nothing."""
    src = tmp_path / "src"
    files = sample(src)
    ctx = files_ctx([src], action="scan")
    size = sum(map(len, files.values()))
    assert await run(ctx) == f"scanned 4 files, {size} bytes in 4 folders"
    assert last_report(ctx) == {
        "size_todo": size,
        "nodes_todo": 4,
        "size_done": size,
        "nodes_done": 4,
        "percent": 100,
    }
    assert tree(src) == files


async def test_check_consistency_passes_then_reports_every_difference(tmp_path: Path) -> None:
    """After a copy the check passes; then a missing file, a size and a content change
    and a file only in the destination are each reported, and the run ends in error
    counting them."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    sample(src)
    await run(files_ctx([src], dst, action="copy"))
    ctx = files_ctx([src], dst, action="check_consistency", file_checksum="md5")
    assert (await run(ctx)).startswith("consistent: 4 files")
    (dst / "src" / "a.txt").unlink()
    (dst / "src" / "sub" / "b.bin").write_bytes(b"short")
    copy = dst / "src" / "sub" / "deeper" / "c.txt"
    copy.write_bytes(copy.read_bytes().replace(b"g", b"G", 1))
    write(dst / "src" / "sub" / "extra.txt", "not from the source")
    ctx = files_ctx([src], dst, action="check_consistency", file_checksum="md5")
    with pytest.raises(ModuleError, match="check_consistency: 4 differences in 4 files"):
        await run(ctx)
    differences = ctx.messages(LogLevel.WARNING)
    assert f"differs: {dst / 'src' / 'sub' / 'extra.txt'}: only in the destination" in differences
    assert any("a.txt: missing" in m for m in differences)
    assert any("b.bin: 5 bytes, source" in m for m in differences)
    assert any("c.txt: md5" in m for m in differences)


async def test_duplication_writes_every_destination(tmp_path: Path) -> None:
    """Each file is read once and written to each destination of the list."""
    src = tmp_path / "src"
    files = sample(src)
    targets = [tmp_path / "d1", tmp_path / "d2", tmp_path / "d3"]
    ctx = files_ctx([src], targets, action="duplication", file_checksum="crc32")
    assert (await run(ctx)).startswith("duplicated 4 files")
    for target in targets:
        assert tree(target / "src") == files
    assert len([m for m in ctx.messages(LogLevel.INFO) if m.startswith("copied ")]) == 12


# ---- safety


async def test_a_destination_inside_a_source_is_refused(tmp_path: Path) -> None:
    """Written literally, at validation; reached through a pattern or a symlink, at run
    time, before anything is copied."""
    src = write(tmp_path / "src" / "a.txt", "a").parent
    with pytest.raises(ValidationError, match=r"task_params.destination: .* is inside the source"):
        files_ctx([src], src / "copy", action="copy")
    with pytest.raises(ModuleError, match="is inside the source"):
        await run(files_ctx([tmp_path / "sr*"], src / "copy", action="copy"))
    (tmp_path / "link").symlink_to(src)
    with pytest.raises(ModuleError, match="is inside the source"):
        await run(files_ctx([tmp_path / "link"], src / "copy", action="copy"))
    assert not (src / "copy").exists()


async def test_a_missing_source_ends_in_error(tmp_path: Path) -> None:
    """A source that does not exist is named."""
    with pytest.raises(ModuleError, match=r"sources\[0\]: .*/nope does not exist"):
        await run(files_ctx([tmp_path / "nope"], tmp_path / "dst", action="copy"))


@pytest.mark.parametrize(
    ("raw", "task", "path"),
    [
        ({"sources": [{"type": "local", "path": "rel/x"}]}, {}, "task_params.sources[0].path"),
        ({"sources": [{"type": "s3", "path": "/x"}]}, {}, "task_params.sources[0].type"),
        ({"sources": [{"type": "local", "path": "/"}]}, {}, "task_params.sources[0].path"),
        ({"sources": []}, {}, "task_params.sources"),
        ({"sources": ["/x"]}, {}, "task_params.sources[0]"),
        (
            {"sources": [place("/x")], "destination": place("/y/*")},
            {},
            "task_params.destination.path",
        ),
        ({"sources": [place("/x")], "destination": 3}, {}, "task_params.destination"),
        ({"sources": [place("/x")], "action": "restore"}, {}, "task_params.action"),
        ({"sources": [place("/x")]}, {}, "task_params.action"),
        ({"sources": [place("/x")]}, {"workflow_action": "restore"}, "workflow_action"),
        ({"sources": [place("/x")], "action": "copy"}, {}, "task_params.destination"),
        (
            {"sources": [place("/x")], "action": "copy", "destination": [place("/y")]},
            {},
            "task_params.destination",
        ),
        (
            {"sources": [place("/x")], "action": "duplication", "destination": place("/y")},
            {},
            "task_params.destination",
        ),
    ],
)
def test_bad_params_are_refused_naming_the_field(
    raw: dict[str, Any], task: dict[str, Any], path: str
) -> None:
    """Each mistake is a ValidationError at the field's path."""
    with pytest.raises(ValidationError) as info:
        ModuleRegistry.builtin().validate("files", raw, task=task)
    assert [e.path for e in info.value.errors] == [path], info.value


# ---- pause, stop, resume


class StopAfter(FakeContext):
    """Requests a stop once `limit` files were copied."""

    limit = 3

    def log(self, level: LogLevel | str, msg: str) -> None:
        """Record; stop after the `limit`th copy."""
        super().log(level, msg)
        if msg.startswith("copied ") and len(self.messages_starting("copied ")) == self.limit:
            self.stop()

    def messages_starting(self, prefix: str) -> list[str]:
        """The messages that start with `prefix`."""
        return [m for m in self.messages() if m.startswith(prefix)]


async def test_stop_saves_the_position_and_resume_copies_only_the_rest(tmp_path: Path) -> None:
    """A stop acts between files and saves the position; the next run, given that state,
    copies only the files after it and then clears the state."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(10):
        write(src / f"f{i}.txt", f"file {i}")
    ctx = files_ctx([src], dst, action="copy", ctx_class=StopAfter)
    assert await run(ctx) == "stopped after 3 of 10 files; resume continues"
    assert sorted(tree(dst / "src")) == ["f0.txt", "f1.txt", "f2.txt"]
    state = ctx.saved_states[-1]
    assert state["after"] == str(src / "f2.txt")
    first_copies = {p: (dst / "src" / p).stat().st_ino for p in tree(dst / "src")}

    resumed = files_ctx([src], dst, action="copy", state=state)
    resumed.trigger = Trigger(kind="resume")
    await run(resumed)
    assert tree(dst / "src") == tree(src)
    copied = [m.split()[1] for m in resumed.messages() if m.startswith("copied ")]
    assert copied == [str(src / f"f{i}.txt") for i in range(3, 10)]
    assert {p: (dst / "src" / p).stat().st_ino for p in first_copies} == first_copies
    assert resumed.saved_states[-1] == {}
    assert last_report(resumed)["nodes_done"] == 10


async def test_a_new_run_starts_over_and_keeps_what_is_there(tmp_path: Path) -> None:
    """A scheduled or manual run does not use the saved position (files before it may
    have changed): it checks every file, keeps the identical ones, copies a changed one."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(4):
        write(src / f"f{i}.txt", f"file {i}")
    await run(files_ctx([src], dst, action="copy"))
    write(src / "f0.txt", "changed since")
    state: dict[str, Any] = {"after": str(src / "f2.txt")}
    ctx = files_ctx([src], dst, action="copy", state=state, conflict_resolution="overwrite")
    state["fingerprint"] = fingerprint_of(ctx)
    await run(ctx)
    assert any("starting over" in m for m in ctx.messages())
    assert tree(dst / "src")["f0.txt"] == b"changed since"
    assert len([m for m in ctx.messages() if m.startswith("kept ")]) == 3


async def test_a_stop_during_the_scan_ends_it(tmp_path: Path) -> None:
    """A stop requested before the scan reaches the next folder ends the run there (here:
    requested before the run, so the first folder is not even listed)."""
    src = write(tmp_path / "src" / "a" / "x.txt", "x").parent.parent
    ctx = files_ctx([src], tmp_path / "dst", action="copy")
    ctx.stop()
    assert await run(ctx) == "stopped while scanning the sources"
    assert not (tmp_path / "dst").exists()


async def test_saved_state_for_other_work_is_not_used(tmp_path: Path) -> None:
    """State saved for other sources starts the run over (and says so)."""
    src = write(tmp_path / "src" / "a.txt", "a").parent
    state = {"fingerprint": {"action": "copy"}, "after": str(src / "zzz")}
    ctx = files_ctx([src], tmp_path / "dst", action="copy", state=state)
    ctx.trigger = Trigger(kind="retry")
    await run(ctx)
    assert tree(tmp_path / "dst" / "src") == {"a.txt": b"a"}
    assert any("starting over" in m for m in ctx.messages())


class PauseAfterFirst(FakeContext):
    """Pauses once, when the first file was copied."""

    paused_once = False

    def log(self, level: LogLevel | str, msg: str) -> None:
        """Record; pause after the first copy."""
        super().log(level, msg)
        if msg.startswith("copied ") and not self.paused_once:
            self.paused_once = True
            self.pause()


async def test_pause_holds_between_files_until_resumed(tmp_path: Path) -> None:
    """While paused no further file is copied; after resume the run completes."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(5):
        write(src / f"f{i}.txt", f"file {i}")
    ctx = files_ctx([src], dst, action="copy", ctx_class=PauseAfterFirst)
    running = asyncio.create_task(run(ctx))
    await asyncio.wait_for(ctx.held_at_checkpoint.wait(), 10)
    assert sorted(tree(dst / "src")) == ["f0.txt"]
    assert not running.done()
    ctx.resume()
    await asyncio.wait_for(running, 10)
    assert tree(dst / "src") == tree(src)


async def test_a_cancelled_copy_leaves_no_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forced stop (cancellation) mid-file: the worker stops at its next chunk and
    removes its temporary file; nothing is left under the real name."""
    source = write(tmp_path / "in" / "big.bin", os.urandom(8 * files_io.CHUNK))
    dst = tmp_path / "out"
    reading = threading.Event()
    release = threading.Event()
    original = files_io.Counters.add_bytes

    def hold(self: files_io.Counters, count: int) -> None:
        original(self, count)
        reading.set()
        release.wait(10)

    monkeypatch.setattr(files_io.Counters, "add_bytes", hold)
    running = asyncio.create_task(run(files_ctx([source.parent], dst, action="copy")))
    await asyncio.to_thread(reading.wait, 10)
    assert [p.name for p in (dst / "in").iterdir()] == [".big.bin.taskd-tmp-1"]
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    release.set()
    # The worker thread cleans up right after its chunk.
    await wait_until(lambda: not list((dst / "in").iterdir()))
