"""The first pass of the `files` module: what the sources hold, in processing order.

Blocking (it walks folders): the module runs it in a worker thread. It expands the sources'
patterns, resolves each match to its real path (a root), refuses a destination inside a
root, and lists the files below each root with the size and the path each maps to under a
destination. It never follows a symlink out of a root: a link to a file inside the root is
taken as that file, every other link is skipped with a warning. taskd's own leftovers (the
`.taskd-trash` folders, temporary files of an interrupted copy) are never sources.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import threading
from dataclasses import dataclass, field

from taskd.modules.base import ModuleError
from taskd.modules.files_options import Settings

__all__ = [
    "TRASH",
    "Entry",
    "Folder",
    "Plan",
    "ScanStopped",
    "build_plan",
    "is_temporary",
    "temporary_name",
]

TRASH = ".taskd-trash"
_TMP_MARK = ".taskd-tmp-"
_MAX_WARNINGS = 100  # kept in full; later ones are only counted


def temporary_name(name: str, task_id: int) -> str:
    """The hidden name a file is written under before it is renamed into place: the same
    for every run of a task, so a retry overwrites what a killed run left behind."""
    if len(name.encode("utf-8", "surrogateescape")) > 200:  # NAME_MAX is 255 bytes
        name = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f".{name}{_TMP_MARK}{task_id}"


def is_temporary(name: str) -> bool:
    """Whether `name` is one `temporary_name` gave."""
    return name.startswith(".") and _TMP_MARK in name


@dataclass(frozen=True, slots=True)
class Entry:
    """One file to act on."""

    path: str  # where it is (absolute, below its root)
    target: str  # where it goes, relative to a destination folder
    size: int
    root: str  # the real path of the source it was found under
    link: str | None = None  # the symlink it was found through (what erase and move remove)

    @property
    def own_path(self) -> str:
        """The path that is this entry in its folder: the link, or the file."""
        return self.link or self.path


@dataclass(frozen=True, slots=True)
class Folder:
    """A folder below (or being) a root, for empty folders, folder dates and clean-up."""

    path: str
    target: str  # relative to a destination folder; "" for the destination itself
    root: str
    depth: int


@dataclass(slots=True)
class Plan:
    """What the sources hold, files in processing order."""

    entries: list[Entry] = field(default_factory=list)
    folders: list[Folder] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    warnings_left_out: int = 0
    size: int = 0

    def warn(self, message: str) -> None:
        """Keep a warning for the task log (the first `_MAX_WARNINGS`, then a count)."""
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings.append(message)
        else:
            self.warnings_left_out += 1


class ScanStopped(Exception):
    """The scan was asked to stop (`halt` set): a stop or a cancellation of the run."""


def build_plan(settings: Settings, halt: threading.Event | None = None) -> Plan:
    """Walk the sources; raise ModuleError for a missing source or an unsafe destination,
    ScanStopped once `halt` is set (checked at every folder)."""
    plan = Plan()
    destinations = [os.path.realpath(path) for path in settings.destinations]
    for index, pattern in enumerate(settings.sources):
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, include_hidden=not settings.ignore_hidden))
            matches = [m for m in matches if not _taskd_leftover(m)]
            if not matches:
                plan.warn(f"sources[{index}]: {pattern} matches nothing")
        else:
            if not os.path.lexists(pattern):
                raise ModuleError(f"sources[{index}]: {pattern} does not exist")
            matches = [pattern]
        for match in matches:
            root = os.path.realpath(match)
            for destination in destinations:
                if destination == root or destination.startswith(root.rstrip("/") + "/"):
                    raise ModuleError(
                        f"the destination {destination} is inside the source {root}"
                        f" (sources[{index}]): refusing to copy a folder into itself"
                    )
            _add_root(plan, root, settings, halt)
    plan.entries.sort(
        key=lambda e: (e.own_path, e.target), reverse=settings.processing_order == "dsc"
    )
    plan.size = sum(entry.size for entry in plan.entries)
    return plan


def _taskd_leftover(path: str) -> bool:
    return TRASH in path.split("/") or is_temporary(os.path.basename(path))


def _add_root(plan: Plan, root: str, settings: Settings, halt: threading.Event | None) -> None:
    try:
        info = os.stat(root)
    except OSError as error:
        raise ModuleError(f"cannot read {root}: {error.strerror}") from None
    plan.roots.append(root)
    name = os.path.basename(root)
    if stat.S_ISREG(info.st_mode):
        plan.entries.append(Entry(root, name, info.st_size, root))
        return
    if not stat.S_ISDIR(info.st_mode):
        plan.warn(f"skipped {root}: not a file or a folder")
        return
    base = "" if settings.remove_root_folder else name
    plan.folders.append(Folder(root, base, root, 0))
    stack = [(root, base, 0)]
    while stack:
        if halt is not None and halt.is_set():
            raise ScanStopped
        folder, target, depth = stack.pop()
        try:
            with os.scandir(folder) as listing:
                items = list(listing)
        except OSError as error:
            raise ModuleError(f"cannot list {folder}: {error.strerror}") from None
        for item in items:
            if item.name == TRASH or is_temporary(item.name):
                continue
            if settings.ignore_hidden and item.name.startswith("."):
                continue
            item_target = f"{target}/{item.name}" if target else item.name
            try:
                if item.is_symlink():
                    _add_link(plan, item.path, item_target, root)
                elif item.is_dir(follow_symlinks=False):
                    if settings.recursive:
                        plan.folders.append(Folder(item.path, item_target, root, depth + 1))
                        stack.append((item.path, item_target, depth + 1))
                elif item.is_file(follow_symlinks=False):
                    size = item.stat(follow_symlinks=False).st_size
                    plan.entries.append(Entry(item.path, item_target, size, root))
                else:
                    plan.warn(f"skipped {item.path}: not a regular file")
            except OSError as error:
                raise ModuleError(f"cannot read {item.path}: {error.strerror}") from None


def _add_link(plan: Plan, path: str, target: str, root: str) -> None:
    """A symlink is taken as the file it names only when that file is inside the root."""
    real = os.path.realpath(path)
    if not real.startswith(root.rstrip("/") + "/"):
        plan.warn(f"skipped {path}: a symlink out of the source {root} (to {real})")
        return
    try:
        info = os.stat(real)
    except OSError:
        plan.warn(f"skipped {path}: a broken symlink")
        return
    if not stat.S_ISREG(info.st_mode):
        plan.warn(f"skipped {path}: a symlink to a folder (not followed)")
        return
    plan.entries.append(Entry(real, target, info.st_size, root, link=path))
