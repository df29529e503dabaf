"""The blocking work of the `files` module on one file: copy, erase, compare.

Run in worker threads, never on the event loop. A copy reads its source once, in 1 MiB
chunks, hashing as it goes and writing every destination at once (`duplication`); it writes
each under a hidden temporary name, fsyncs it, checks it and only then links it into place,
so a crash never leaves a half file under the real name. A chunk of zeros is skipped
rather than written (a sparse source stays sparse). The source is checked again after
the copy: if it changed meanwhile the copy is refused (`CopyError` naming it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
import zlib
from dataclasses import dataclass, field
from typing import Protocol

from taskd.modules.files_options import Settings
from taskd.modules.files_plan import TRASH, Entry, temporary_name

__all__ = [
    "CHUNK",
    "Aborted",
    "Copied",
    "CopyError",
    "Counters",
    "compare_file",
    "copy_file",
    "erase_file",
    "file_digest",
    "new_hasher",
    "sync_folder",
]

CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)
_MAX_RENAME = 10_000  # `name (1).ext` ... `name (10000).ext`, then give up


_local = threading.local()


def _buffer() -> bytearray:
    """This thread's chunk buffer: allocated (and zeroed) once per worker thread, not once
    per file (for thousands of small files, that was most of the CPU time)."""
    buffer: bytearray | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = bytearray(CHUNK)
    return buffer


class Hasher(Protocol):
    """What the three checksums have in common."""

    def update(self, data: bytes | memoryview, /) -> None:
        """Add data."""

    def hexdigest(self) -> str:
        """The checksum so far, in hex."""
        ...


class _Crc32:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


def new_hasher(name: str) -> Hasher:
    """A hasher for `crc32`, `md5` or `xxhash64`."""
    if name == "crc32":
        return _Crc32()
    if name == "md5":
        return hashlib.md5(usedforsecurity=False)
    if name == "xxhash64":
        # Imported when used: the rest of taskd runs where the C extension is missing.
        try:
            import xxhash
        except ImportError:
            raise CopyError(
                "xxhash64 needs the Python package xxhash (pip install xxhash)"
            ) from None
        hasher: Hasher = xxhash.xxh64()
        return hasher
    raise ValueError(f"unknown checksum {name!r}")


class Aborted(Exception):
    """The execution was cancelled: the file was left alone (its temporary file removed)."""


class CopyError(Exception):
    """One file could not be handled; the message names it."""


class Counters:
    """Bytes and files done, and the folders written to since they were last synced;
    shared by the worker threads and the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes = 0
        self.files = 0
        self._folders: set[str] = set()

    def touch(self, folder: str) -> None:
        """Note a folder that got a new name (to be synced by `sync_folders`)."""
        with self._lock:
            self._folders.add(folder)

    def sync_folders(self) -> None:
        """fsync every folder touched since the last call, so the renames into them are
        durable: called before a position is saved and at the end of a run (one fsync per
        folder, not one per file)."""
        with self._lock:
            folders, self._folders = self._folders, set()
        for folder in folders:
            sync_folder(folder)

    def add_bytes(self, count: int) -> None:
        """Count bytes read (a copy in progress shows in the bandwidth)."""
        with self._lock:
            self.bytes += count

    def add_file(self, unread: int) -> None:
        """Count a file done, and the bytes of it that were not read (skipped files)."""
        with self._lock:
            self.files += 1
            self.bytes += unread


def sync_folder(folder: str) -> None:
    """fsync a folder (its new names become durable); nothing if it is gone."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # gone (moved or erased by someone else): nothing to make durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class Copied:
    """What became of one file."""

    written: list[str] = field(default_factory=list)  # final paths written
    kept: list[str] = field(default_factory=list)  # targets left as they were, and why
    ignored: bool = False  # a different file was left at a target (`ignore`): not copied
    digest: str | None = None


def copy_file(
    entry: Entry,
    folders: list[str],
    settings: Settings,
    task_id: int,
    counters: Counters,
    abort: threading.Event,
) -> Copied:
    """Copy `entry` into each destination folder (its `target` below each); see the module
    docstring. Raises CopyError (naming the file) or Aborted."""
    result = Copied()
    targets: list[str] = []
    for folder in folders:
        final = os.path.join(folder, entry.target)
        chosen = _resolve_conflict(entry, final, settings)
        if chosen is None:
            result.kept.append(f"{final} (already there)")
        elif chosen == "":
            result.kept.append(f"{final} (exists; conflict_resolution is ignore)")
            result.ignored = True
        else:
            targets.append(chosen)
    if not targets:
        counters.add_file(entry.size)
        return result
    try:
        result.digest = _write_all(entry, targets, settings, task_id, counters, abort)
    except OSError as error:
        raise CopyError(f"{entry.path}: {error.strerror or error}") from None
    result.written = targets
    counters.add_file(0)
    return result


def _resolve_conflict(entry: Entry, final: str, settings: Settings) -> str | None:
    """Where to write: `final`, another name (`rename`), "" (`ignore`), or None when an
    identical file is there already (so a retried run does not copy it again)."""
    candidate = final
    stem, ext = _split_ext(os.path.basename(final))
    for number in range(1, _MAX_RENAME + 1):
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            return candidate
        except OSError as error:
            raise CopyError(f"{candidate}: {error.strerror}") from None
        if stat.S_ISREG(info.st_mode) and _same(entry, candidate, info, settings):
            return None
        if settings.conflict_resolution == "ignore":
            return ""
        if settings.conflict_resolution == "overwrite":
            if stat.S_ISDIR(info.st_mode):
                raise CopyError(f"{entry.path}: cannot overwrite the folder {candidate}")
            return candidate
        candidate = os.path.join(os.path.dirname(final), f"{stem} ({number}){ext}")
    raise CopyError(f"{entry.path}: {_MAX_RENAME} renamed copies exist at {final}")


def _split_ext(name: str) -> tuple[str, str]:
    """`report.tar.gz` -> (`report.tar`, `.gz`); a leading dot is no extension."""
    stem, ext = os.path.splitext(name)
    return (stem, ext) if stem else (name, "")


def _same(entry: Entry, candidate: str, info: os.stat_result, settings: Settings) -> bool:
    """Whether `candidate` already holds the file: same size and modification time (a copy
    keeps it), or, when dates are reset, the same content."""
    try:
        source = os.stat(entry.path)
    except OSError as error:
        raise CopyError(f"{entry.path}: {error.strerror}") from None
    if source.st_size != info.st_size:
        return False
    if not settings.reset_file_date:
        return source.st_mtime_ns == info.st_mtime_ns
    name = settings.file_checksum or "xxhash64"
    try:
        return file_digest(entry.path, name) == file_digest(candidate, name)
    except OSError as error:
        raise CopyError(
            f"{entry.path}: cannot compare with {candidate}: {error.strerror}"
        ) from None


def file_digest(path: str, name: str, abort: threading.Event | None = None) -> str:
    """The checksum `name` of the file at `path` (read in chunks)."""
    hasher = new_hasher(name)
    buffer = _buffer()
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            if abort is not None and abort.is_set():
                raise Aborted
            hasher.update(view[:count])
    return hasher.hexdigest()


def _write_all(
    entry: Entry,
    targets: list[str],
    settings: Settings,
    task_id: int,
    counters: Counters,
    abort: threading.Event,
) -> str | None:
    """Copy to temporary files beside each target, check, then link them into place."""
    hasher = new_hasher(settings.file_checksum) if settings.file_checksum else None
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    source_fd = os.open(entry.path, flags)
    temporaries: list[str] = []
    fds: list[int] = []
    try:
        before = os.fstat(source_fd)
        for target in targets:
            parent = os.path.dirname(target)
            temporary = os.path.join(parent, temporary_name(os.path.basename(target), task_id))
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(temporary, flags, 0o600)
            except FileNotFoundError:  # the first file of its folder: make the folder
                _make_folders(parent)
                fd = os.open(temporary, flags, 0o600)
            temporaries.append(temporary)
            fds.append(fd)
        _pump(source_fd, before.st_size, fds, hasher, counters, abort)
        for fd in fds:
            _finish(fd, before, settings)
        digest = hasher.hexdigest() if hasher is not None else None
        _check_source(entry, before, digest, settings)
        for fd in fds:
            os.close(fd)
        fds.clear()
        if hasher is not None and settings.file_checksum is not None:
            for temporary, target in zip(temporaries, targets, strict=True):
                written = file_digest(temporary, settings.file_checksum, abort)
                if written != digest:
                    raise CopyError(
                        f"{entry.path}: the copy at {target} reads back with"
                        f" {settings.file_checksum} {written}, expected {digest}"
                    )
        for temporary, target in zip(temporaries, targets, strict=True):
            _put_in_place(temporary, target, settings.conflict_resolution == "overwrite")
            counters.touch(os.path.dirname(target))
        temporaries.clear()
        return digest
    finally:
        os.close(source_fd)
        for fd in fds:
            os.close(fd)
        for temporary in temporaries:  # not placed: a failure or an abort
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _make_folders(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise CopyError(f"cannot create the folder {folder}: a file is in the way") from None


def _pump(
    source_fd: int,
    size: int,
    fds: list[int],
    hasher: Hasher | None,
    counters: Counters,
    abort: threading.Event,
) -> None:
    """Copy the first `size` bytes (what the source had when opened: a file that keeps
    growing ends the copy all the same, and the check after it refuses the copy)."""
    buffer = _buffer()
    view = memoryview(buffer)
    total = 0
    while total < size:
        if abort.is_set():
            raise Aborted
        count = os.readv(source_fd, [view[: min(CHUNK, size - total)]])
        if count == 0:
            break
        chunk = view[:count]
        if hasher is not None:
            hasher.update(chunk)
        # Only whole chunks are compared: a comparison of the full buffer costs no copy.
        if count == CHUNK and buffer == _ZEROS:
            for fd in fds:  # a hole: nothing to write (the final size is set below)
                os.lseek(fd, count, os.SEEK_CUR)
        else:
            for fd in fds:
                _write_fully(fd, chunk)
        total += count
        counters.add_bytes(count)
    for fd in fds:
        os.ftruncate(fd, total)


def _write_fully(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _finish(fd: int, source: os.stat_result, settings: Settings) -> None:
    """Mode, owner and dates like the source's (as asked), then fsync."""
    os.fchmod(fd, stat.S_IMODE(source.st_mode))
    if settings.keep_file_ownership:
        os.fchown(fd, source.st_uid, source.st_gid)
    if not settings.reset_file_date:
        os.utime(fd, ns=(source.st_atime_ns, source.st_mtime_ns))
    os.fsync(fd)


def _check_source(
    entry: Entry, before: os.stat_result, digest: str | None, settings: Settings
) -> None:
    """Refuse the copy if the source changed while it was read."""
    try:
        after = os.stat(entry.path)
    except OSError as error:
        raise CopyError(f"{entry.path}: gone while it was copied ({error.strerror})") from None
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ctime_ns,
        before.st_ino,
    ):
        return
    if digest is None or settings.file_checksum is None:
        raise CopyError(f"{entry.path}: changed while it was copied; not copied")
    now = file_digest(entry.path, settings.file_checksum)
    if now != digest:
        raise CopyError(
            f"{entry.path}: checksum mismatch, the file changed while it was copied"
            f" ({settings.file_checksum} {digest} read, {now} now); not copied"
        )


def _put_in_place(temporary: str, target: str, overwrite: bool) -> None:
    """Rename the checked file into place; without `overwrite`, never over another file
    (a hard link fails if the name was taken meanwhile). The folder is synced later
    (`Counters.sync_folders`)."""
    if overwrite:
        os.replace(temporary, target)
    else:
        try:
            os.link(temporary, target)
        except FileExistsError:
            raise CopyError(f"{target}: appeared while the file was copied; not replaced") from None
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                raise
            # No hard links here (FAT, some FUSE): a plain rename, checked just before.
            if os.path.lexists(target):
                raise CopyError(f"{target}: appeared while the file was copied") from None
            os.rename(temporary, target)
            return
        os.unlink(temporary)


def erase_file(entry: Entry, settings: Settings) -> str:
    """Delete the file (its symlink, if found through one); with `soft_erase` move it into
    the `.taskd-trash` folder of its root instead. Returns where it went ("" if deleted)."""
    path = entry.own_path
    try:
        if not settings.soft_erase:
            os.unlink(path)
            return ""
        root = entry.root if os.path.isdir(entry.root) else os.path.dirname(entry.root)
        relative = os.path.relpath(path, root)
        trash = os.path.join(root, TRASH, relative)
        os.makedirs(os.path.dirname(trash), exist_ok=True)
        stem, ext = _split_ext(os.path.basename(trash))
        candidate, number = trash, 0
        while os.path.lexists(candidate):
            number += 1
            candidate = os.path.join(os.path.dirname(trash), f"{stem} ({number}){ext}")
        os.rename(path, candidate)
        return candidate
    except OSError as error:
        raise CopyError(f"{path}: cannot erase: {error.strerror}") from None


def compare_file(entry: Entry, folder: str, checksum: str, abort: threading.Event) -> str | None:
    """How the copy of `entry` below `folder` differs from it (None if it does not)."""
    target = os.path.join(folder, entry.target)
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return f"{target}: missing (source {entry.path})"
    except OSError as error:
        return f"{target}: cannot read ({error.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return f"{target}: not a file (source {entry.path})"
    if info.st_size != entry.size:
        return f"{target}: {info.st_size} bytes, source {entry.path} has {entry.size}"
    try:
        ours, theirs = (
            file_digest(entry.path, checksum, abort),
            file_digest(target, checksum, abort),
        )
    except OSError as error:
        return f"{target}: cannot read ({error.strerror})"
    if ours != theirs:
        return f"{target}: {checksum} {theirs}, source {entry.path} has {ours}"
    return None
