"""The `files` module: Nodeum's data-mover workflows on local folders.

`action` (default: the task's `workflow_action`) is one of `copy`, `move`, `erase`, `scan`,
`check_consistency`, `duplication`; the task's `options` say how (see files_options).

A run first scans the sources (`size_todo`, `nodes_todo`), then handles the files in
`processing_order`, `parallel` at a time, in a pool of worker threads of that size: the
event loop only dispatches, counts and reports (`size_done`, `nodes_done`, `bandwidth`,
`progress`). Pause and stop act between files: the files being copied are finished, no
new one starts. The position (every file up to it is done) is saved as the task's state
every few seconds, on a stop and on a failure, so a resumed or retried run skips what is
done (a new run, scheduled or manual, starts over); a file that was copied but not yet
counted in the saved position is found at the destination, identical, and kept rather
than copied again. A forced stop or a timeout
aborts the copies in progress at their next chunk; their temporary files are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from taskd.errors import FieldError
from taskd.modules.base import LogLevel, ModuleContext, ModuleError
from taskd.modules.files_io import (
    Aborted,
    CopyError,
    Counters,
    compare_file,
    copy_file,
    erase_file,
    sync_folder,
)
from taskd.modules.files_options import PARAMS, Settings, check_params, check_task
from taskd.modules.files_plan import (
    TRASH,
    Entry,
    Plan,
    ScanStopped,
    build_plan,
    is_temporary,
)

__all__ = ["FilesModule"]

T = TypeVar("T")

_REPORT_SEC = 0.5  # progress at most this often
_SAVE_SEC = 2.0  # the position at most this often (each save waits for a commit)
_MAX_DIFFERENCES_LOGGED = 1000
_RESUMABLE = frozenset({"copy", "move", "erase", "duplication"})
# The triggers that continue an earlier run from its saved position.
_CONTINUING = frozenset({"resume", "retry"})

# (level, message) lines a worker hands back for the task log.
_Lines = list[tuple[LogLevel, str]]


class FilesModule:
    """Copies, moves, erases, scans, compares and duplicates local files; see the module
    docstring."""

    name = "files"
    description: Mapping[str, str] = {
        "en-US": "Copies, moves, erases, scans, compares or duplicates local files and "
        "folders, with checksums, conflict rules and resumable progress.",
        "de-DE": "Kopiert, verschiebt, löscht, zählt, vergleicht oder dupliziert lokale "
        "Dateien und Ordner, mit Prüfsummen, Konfliktregeln und fortsetzbarem Fortschritt.",
    }
    params: list[dict[str, Any]] = PARAMS

    def check_params(self, params: Mapping[str, Any]) -> list[FieldError]:
        """Sources and destinations: local, absolute, a destination not inside a source."""
        return check_params(params)

    def check_task(self, params: Mapping[str, Any], task: Mapping[str, Any]) -> list[FieldError]:
        """The action (or the task's `workflow_action`) is one this module performs."""
        return check_task(params, task)

    async def run(self, ctx: ModuleContext) -> str:
        """Do the action; return a summary, or raise ModuleError naming the failed file."""
        try:
            settings = Settings.resolve(ctx.params, ctx.workflow_action, ctx.task_options)
        except ValueError as error:
            raise ModuleError(str(error)) from None
        executor = ThreadPoolExecutor(
            max_workers=settings.parallel, thread_name_prefix=f"taskd-files-{ctx.execution_id}"
        )
        run = _Run(ctx, settings, executor)
        try:
            return await run.run()
        except BaseException:
            run.abort.set()  # the workers stop at their next chunk and clean up
            raise
        finally:
            executor.shutdown(wait=False, cancel_futures=True)


class _Run:
    """One execution."""

    def __init__(self, ctx: ModuleContext, settings: Settings, executor: ThreadPoolExecutor):
        self.ctx = ctx
        self.settings = settings
        self.executor = executor
        self.abort = threading.Event()
        self.counters = Counters()
        self.plan = Plan()
        self.base_files = 0  # done by an earlier run (resumed)
        self.base_bytes = 0
        self.started = time.monotonic()
        self.reported = 0.0
        self.saved = time.monotonic()
        self.differences: list[str] = []
        self.difference_count = 0

    async def in_thread(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking work in the pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def run(self) -> str:
        ctx, settings = self.ctx, self.settings
        ctx.log(LogLevel.INFO, f"{settings.action}: scanning {', '.join(settings.sources)}")
        try:
            self.plan = plan = await self.scan()
        except ScanStopped:
            return "stopped while scanning the sources"
        for warning in plan.warnings:
            ctx.log(LogLevel.WARNING, warning)
        if plan.warnings_left_out:
            ctx.log(LogLevel.WARNING, f"{plan.warnings_left_out} more warnings left out")
        ctx.progress(
            size_todo=plan.size,
            nodes_todo=len(plan.entries),
            size_done=0,
            nodes_done=0,
            percent=0.0 if plan.entries else 100.0,
        )
        summary = f"{len(plan.entries)} files, {plan.size} bytes"
        if settings.action == "scan":
            ctx.progress(size_done=plan.size, nodes_done=len(plan.entries), percent=100.0)
            return f"scanned {summary} in {len(plan.folders)} folders"
        start = self.resume_position()
        self.started = time.monotonic()
        position, failure = await self.process(start)
        self.report(force=True)
        if failure is not None:
            await self.save(position)
            raise ModuleError(failure)
        if position < len(plan.entries):  # stopped
            await self.save(position)
            return f"stopped after {position} of {len(plan.entries)} files; resume continues"
        try:
            await self.in_thread(self.finish_folders)
        except OSError as error:
            raise ModuleError(
                f"files done, but a folder could not be finished: {error.filename}:"
                f" {error.strerror}"
            ) from None
        await self.in_thread(self.counters.sync_folders)
        if ctx.state:
            await ctx.save_state({})  # done: the next run starts from the beginning
        if settings.action == "check_consistency":
            for extra in await self.in_thread(self.only_in_destination):
                ctx.log(LogLevel.WARNING, self.difference(extra))
            return self.consistency_outcome(summary)
        verb = {"erase": "erased", "move": "moved", "duplication": "duplicated"}
        return f"{verb.get(settings.action, 'copied')} {summary}"

    async def scan(self) -> Plan:
        """The first pass, in a worker thread; a stop (or `abort`) ends it at the next
        folder."""
        halt = threading.Event()
        if self.ctx.stopping:
            halt.set()

        async def follow_stop() -> None:
            await self.ctx.wait_stopping()
            halt.set()

        watcher = asyncio.create_task(follow_stop())
        try:
            return await self.in_thread(build_plan, self.settings, halt)
        except BaseException:
            halt.set()  # cancelled: the thread stops walking too
            raise
        finally:
            watcher.cancel()

    # -- the position ---------------------------------------------------------------------

    def resume_position(self) -> int:
        """How many entries (in order) an earlier run saved as done."""
        state = self.ctx.state
        if not state or self.settings.action not in _RESUMABLE:
            return 0
        if self.ctx.trigger.kind not in _CONTINUING:
            # A new run (schedule, manual): files before the position may have changed
            # since; starting over costs a check per file already copied (kept, not copied).
            self.ctx.log(LogLevel.INFO, "a new run: starting over, not from the saved position")
            return 0
        if state.get("fingerprint") != self.settings.fingerprint():
            self.ctx.log(LogLevel.INFO, "saved position is for other work; starting over")
            return 0
        after = state.get("after")
        if not isinstance(after, str):
            return 0
        entries = self.plan.entries
        descending = self.settings.processing_order == "dsc"
        position = 0
        while position < len(entries) and (
            entries[position].own_path >= after
            if descending
            else entries[position].own_path <= after
        ):
            position += 1
        self.base_files = position
        self.base_bytes = sum(entry.size for entry in entries[:position])
        self.ctx.log(LogLevel.INFO, f"resuming after {after} ({position} files done before)")
        return position

    async def save(self, position: int) -> None:
        """Save the position: every entry before it is done (and durable: the folders
        written to are synced first)."""
        self.saved = time.monotonic()
        if self.settings.action not in _RESUMABLE or position == 0:
            return
        await self.in_thread(self.counters.sync_folders)
        await self.ctx.save_state(
            {
                "fingerprint": self.settings.fingerprint(),
                "after": self.plan.entries[position - 1].own_path,
                "files_done": position,
            }
        )

    # -- the files ------------------------------------------------------------------------

    async def process(self, start: int) -> tuple[int, str | None]:
        """Handle the entries from `start`; return the position reached and the failure."""
        ctx, entries = self.ctx, self.plan.entries
        parallel = self.settings.parallel
        pending: dict[asyncio.Future[_Lines], int] = {}
        done = bytearray(len(entries))
        position = index = start
        failure: str | None = None
        while True:
            while index < len(entries) and len(pending) < parallel and failure is None:
                await ctx.checkpoint()  # a pause holds here, between files
                if ctx.stopping:
                    break
                future = asyncio.get_running_loop().run_in_executor(
                    self.executor, self.work, entries[index]
                )
                pending[future] = index
                index += 1
            if not pending:
                break
            finished, _ = await asyncio.wait(
                set(pending), timeout=_REPORT_SEC, return_when=asyncio.FIRST_COMPLETED
            )
            for future in finished:
                number = pending.pop(future)
                try:
                    lines = future.result()
                except CopyError as error:
                    failure = failure or str(error)
                    ctx.log(LogLevel.ERROR, str(error))
                    continue
                done[number] = 1
                for level, message in lines:
                    ctx.log(level, message)
            while position < len(entries) and done[position]:
                position += 1
            self.report()
            if ctx.log_full:
                await ctx.wait_log_room()
            if time.monotonic() - self.saved >= _SAVE_SEC:
                await self.save(position)
        return position, failure

    def work(self, entry: Entry) -> _Lines:
        """The blocking work on one entry (in a worker thread)."""
        settings = self.settings
        if self.abort.is_set():
            raise Aborted
        if settings.action == "erase":
            where = erase_file(entry, settings)
            self.counters.add_file(entry.size)
            return [(LogLevel.INFO, f"erased {entry.own_path}" + (f" to {where}" if where else ""))]
        if settings.action == "check_consistency":
            checksum = settings.file_checksum or "xxhash64"
            found = [
                compare_file(entry, folder, checksum, self.abort)
                for folder in settings.destinations
            ]
            self.counters.add_file(entry.size)
            return [(LogLevel.WARNING, self.difference(d)) for d in found if d is not None]
        copied = copy_file(
            entry,
            list(settings.destinations),
            settings,
            self.ctx.task_id,
            self.counters,
            self.abort,
        )
        checksum = f", {settings.file_checksum} {copied.digest}" if copied.digest else ""
        lines: _Lines = [
            (LogLevel.INFO, f"copied {entry.path} to {target} ({entry.size} bytes{checksum})")
            for target in copied.written
        ]
        lines += [(LogLevel.INFO, f"kept {kept}") for kept in copied.kept]
        if settings.action == "move" and copied.ignored:
            lines.append((LogLevel.WARNING, f"not moved, left in place: {entry.own_path}"))
        elif settings.action == "move":
            # The copy must be durable under its name before the source goes.
            for folder in {os.path.dirname(target) for target in copied.written}:
                sync_folder(folder)
            where = erase_file(entry, settings)
            lines.append(
                (LogLevel.DEBUG, f"removed {entry.own_path}" + (f" to {where}" if where else ""))
            )
        return lines

    def difference(self, text: str) -> str:
        """Count a difference (from a worker thread; list appends are atomic)."""
        self.difference_count += 1
        if len(self.differences) < _MAX_DIFFERENCES_LOGGED:
            self.differences.append(text)
        return f"differs: {text}"

    def only_in_destination(self) -> list[str]:
        """The files below the copies of the source folders that no source file maps to
        (with the same filters as the sources: hidden names, recursion, taskd's own)."""
        settings = self.settings
        expected = {entry.target for entry in self.plan.entries}
        extra: list[str] = []
        for folder in self.plan.folders:
            if folder.depth != 0:
                continue
            for destination in settings.destinations:
                top = os.path.join(destination, folder.target)
                for path, target in _walk(top, folder.target, settings):
                    if target not in expected:
                        extra.append(f"{path}: only in the destination")
        return extra

    def consistency_outcome(self, summary: str) -> str:
        if self.difference_count:
            first = self.differences[0] if self.differences else ""
            raise ModuleError(
                f"check_consistency: {self.difference_count} differences in {summary};"
                f" first: {first}"
            )
        return f"consistent: {summary} compared"

    # -- folders --------------------------------------------------------------------------

    def finish_folders(self) -> None:
        """Create the empty folders, give folders their source's dates and owner, remove the
        source folders a move or an erase emptied (the named source folders stay)."""
        settings = self.settings
        folders = sorted(self.plan.folders, key=lambda f: f.depth, reverse=True)
        if settings.action in ("copy", "move", "duplication"):
            for folder in folders:
                for destination in settings.destinations:
                    os.makedirs(os.path.join(destination, folder.target), exist_ok=True)
            for folder in folders:
                try:
                    info = os.stat(folder.path)
                except OSError:
                    continue
                for destination in settings.destinations:
                    target = os.path.join(destination, folder.target)
                    if folder.target == "":
                        continue  # the destination itself keeps its own
                    if settings.keep_file_ownership:
                        os.chown(target, info.st_uid, info.st_gid)
                    if not settings.reset_folder_date:
                        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
        if settings.action in ("move", "erase"):
            for folder in folders:
                if folder.depth > 0:
                    # Not empty: hidden or skipped files, or new ones.
                    with contextlib.suppress(OSError):
                        os.rmdir(folder.path)

    # -- progress -------------------------------------------------------------------------

    def report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.reported < _REPORT_SEC:
            return
        self.reported = now
        plan = self.plan
        files = self.base_files + self.counters.files
        size = self.base_bytes + self.counters.bytes
        elapsed = now - self.started
        if plan.size:
            percent = 100.0 * size / plan.size
        else:
            percent = 100.0 * files / len(plan.entries) if plan.entries else 100.0
        self.ctx.progress(
            percent=min(percent, 100.0),
            size_done=min(size, plan.size),
            nodes_done=files,
            bandwidth=self.counters.bytes / elapsed if elapsed > 0 else 0.0,
        )


def _walk(top: str, target: str, settings: Settings) -> list[tuple[str, str]]:
    """(path, target) of the files below `top` (a copy of a source folder), filtered as
    the sources are; nothing if `top` is missing."""
    found: list[tuple[str, str]] = []
    stack = [(top, target)]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as listing:
                items = list(listing)
        except OSError:
            continue
        for item in items:
            if item.name == TRASH or is_temporary(item.name):
                continue
            if settings.ignore_hidden and item.name.startswith("."):
                continue
            item_target = f"{prefix}/{item.name}" if prefix else item.name
            if item.is_dir(follow_symlinks=False):
                if settings.recursive:
                    stack.append((item.path, item_target))
            else:
                found.append((item.path, item_target))
    return sorted(found)
