"""Rendered answers of single-object reads, kept while no write commits.

A `GET /api/v2/tasks/{id}` costs a trip to the store's read thread (about a third of its
CPU and most of its latency under load), the conversion of a row and the rendering to
JSON. When nothing was written since, the answer is the one given before: `ReadCache`
keeps such answers (the bytes of the body) and hands them out again.

Current by construction: every entry is stamped with `Core.writes_committed()` as it was
*before* its read began, and the whole cache is dropped as soon as that number moves (the
store counts a transaction as it commits, before any awaited write returns, so a client
that wrote and then reads never gets the answer from before its write). An entry whose
read overlapped a commit carries the old stamp and is never handed out. The count is this
process's: the daemon holds the state dir's lock, so no other process writes its store.
With a store several processes write (cluster nodes over one PostgreSQL) the cache is off:
`build_app` passes `enabled=Core.sole_writer`, which such a store's wiring sets False.

Bounded: at most `max_bytes` of bodies (16 MiB: some 16,000 tasks with their last
executions); when full, the oldest entries go first. What is cached is
what every caller is shown (`Core.shown`: secrets masked); scopes are checked before a
handler runs, so the cache never answers a request its credentials may not read.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

# Bytes of bodies kept (about 1 kB each: one task with its last execution).
CACHE_BYTES = 16 * 1024 * 1024


class ReadCache:
    """Bodies by key, valid while `version()` (`Core.writes_committed`) does not move."""

    def __init__(
        self, version: Callable[[], int], *, max_bytes: int = CACHE_BYTES, enabled: bool = True
    ) -> None:
        self._version = version
        self.max_bytes = max_bytes if enabled else 0
        self.bytes = 0  # of the bodies kept
        self._entries: dict[Hashable, bytes] = {}
        self._valid_for: int | None = None  # no entries yet
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> bytes | None:
        """The body cached for `key`, or None (the caller reads, then `put`s)."""
        version = self._version()
        if version != self._valid_for:
            self._clear()  # a write committed: every entry may be out of date
            self._valid_for = version
        body = self._entries.get(key)
        if body is None:
            self.misses += 1
        else:
            self.hits += 1
        return body

    def stamp(self) -> int:
        """The version a read beginning now is current for: take it before reading."""
        return self._version()

    def put(self, key: Hashable, stamp: int, body: bytes) -> None:
        """Keep `body` for `key` if no write committed since `stamp` was taken."""
        if len(body) > self.max_bytes or stamp != self._version():
            return
        if stamp != self._valid_for:
            self._clear()
            self._valid_for = stamp
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        while self.bytes + len(body) > self.max_bytes:
            # The oldest first (dicts keep insertion order).
            self.bytes -= len(self._entries.pop(next(iter(self._entries))))
        self._entries[key] = body
        self.bytes += len(body)

    def _clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
