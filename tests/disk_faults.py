"""Faults of the disk under a store, made for real without root: a full disk and a
file system that refuses writes.

A full disk: SQLite's `PRAGMA max_page_count` set to the database's current size, so any
write that needs a new page fails with SQLITE_FULL ("database or disk is full"), as on a
full disk; a write that fits in the pages the file has still succeeds, as it would there.
Writes refused whole: `PRAGMA query_only`, so every write fails with SQLITE_READONLY
("attempt to write a readonly database"), as on a file system remounted read-only (which
a test running as root cannot get from chmod). `restore` lifts both: space returns.
A frozen file system (`fsfreeze`, a hung network mount): the store's database thread is
held inside a call that does not return until `thaw`, as a write() or fsync() would hang.

Each works on the store's own connection (the only one that writes), reached underneath
the Protocol: a test hook, not part of the contract.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Protocol

from taskd.store import Store
from taskd.store.sqlite import SqliteStore


class DiskFaults(Protocol):
    """Make a store's writes fail the way a sick disk makes them fail, and heal it."""

    async def fill(self, store: Store) -> None:
        """From now on, writes that need more space fail (the disk is full)."""
        ...

    async def refuse_writes(self, store: Store) -> None:
        """From now on, every write fails (the file system is read-only)."""
        ...

    async def restore(self, store: Store) -> None:
        """Space returns and the file system takes writes again."""
        ...

    async def freeze(self, store: Store) -> None:
        """From now on, nothing the store asks of its storage returns (a frozen FS)."""

    async def thaw(self, store: Store) -> None:
        """The storage answers again; what waited goes on."""


class SqliteDiskFaults:
    """`DiskFaults` of the SQLite store, through pragmas on its connection (a frozen file
    system: a wait on its database thread)."""

    def __init__(self) -> None:
        self._frozen: threading.Event | None = None
        self._holding: asyncio.Future[Any] | None = None

    async def _pragma(self, store: Store, sql: str) -> None:
        assert isinstance(store, SqliteStore)
        await store._conn.execute_fetchall(sql)

    async def fill(self, store: Store) -> None:
        """Cap the file at its current number of pages."""
        assert isinstance(store, SqliteStore)
        [(pages,)] = await store._conn.execute_fetchall("PRAGMA page_count")
        await self._pragma(store, f"PRAGMA max_page_count = {int(pages)}")

    async def refuse_writes(self, store: Store) -> None:
        """Make the connection read-only."""
        await self._pragma(store, "PRAGMA query_only = ON")

    async def restore(self, store: Store) -> None:
        """Lift the cap and the read-only switch."""
        await self._pragma(store, "PRAGMA query_only = OFF")
        await self._pragma(store, "PRAGMA max_page_count = 1073741823")

    async def freeze(self, store: Store) -> None:
        """Hold the store's database thread in a wait that ends at `thaw`."""
        assert isinstance(store, SqliteStore)
        assert self._frozen is None
        frozen, held = threading.Event(), threading.Event()

        def hang() -> None:
            held.set()
            frozen.wait()

        self._frozen = frozen
        self._holding = asyncio.ensure_future(store._conn._execute(hang))  # type: ignore[no-untyped-call]
        # The thread is inside `hang` once this returns (it sets a thread's event).
        await asyncio.to_thread(held.wait)

    async def thaw(self, store: Store) -> None:
        """Let the database thread go on."""
        assert self._frozen is not None
        assert self._holding is not None
        self._frozen.set()
        await self._holding
        self._frozen = self._holding = None


BIG_TEXT = "x" * 64_000  # needs new pages whatever the file's free space
