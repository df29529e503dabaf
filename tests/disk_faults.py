"""Faults of the disk under a store, made for real without root: a full disk and a
file system that refuses writes.

A full disk: SQLite's `PRAGMA max_page_count` set to the database's current size, so any
write that needs a new page fails with SQLITE_FULL ("database or disk is full"), as on a
full disk; a write that fits in the pages the file has still succeeds, as it would there.
Writes refused whole: `PRAGMA query_only`, so every write fails with SQLITE_READONLY
("attempt to write a readonly database"), as on a file system remounted read-only (which
a test running as root cannot get from chmod). `restore` lifts both: space returns.

Each works on the store's own connection (the only one that writes), reached underneath
the Protocol: a test hook, not part of the contract.
"""

from __future__ import annotations

from typing import Protocol

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


class SqliteDiskFaults:
    """`DiskFaults` of the SQLite store, through pragmas on its connection."""

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


BIG_TEXT = "x" * 64_000  # needs new pages whatever the file's free space
