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

import asyncpg

from taskd.store import Store
from taskd.store.postgres import PostgresStore, _Write
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


class PostgresDiskFaults:
    """`DiskFaults` of the PostgreSQL store.

    Writes refused: the store's own session is made read-only (`default_transaction_read_only`),
    so every write fails with SQLSTATE 25006, as on a server whose database was switched to
    read-only (or a hot standby). A full disk: PostgreSQL has no per-database size cap to
    set, so triggers on the store's tables raise SQLSTATE 53100 (`disk_full`, the server's
    own "could not extend file" error class) for a row that needs more than 8 kB, the
    share of a full disk a test can make without mounting a small file system (root and
    CAP_SYS_ADMIN). Both changes are made as empty writes of the store (`probe`), so they
    do not count as a write that succeeded. A frozen file system (`fsfreeze` under the
    server, a hung network): a second session holds every table of the store locked
    (`ACCESS EXCLUSIVE`) in an open transaction until `thaw`, and the store's writer is
    held inside a statement waiting for that lock, as a write() or fsync() would hang.
    """

    _TABLES = ("tasks", "executions", "log_entries", "deferred_runs")
    _ALL_TABLES = (*_TABLES, "log_counters", "nodes", "commands")

    def __init__(self) -> None:
        self._locker: Any = None  # the session holding the locks while frozen
        self._released: asyncio.Event | None = None

    async def _session(self, store: Store, sql: str) -> None:
        assert isinstance(store, PostgresStore)

        async def apply(cx: Any) -> None:
            await cx.execute(sql)

        await store._submit(apply, probe=True)

    async def _admin(self, store: Store, sql: str) -> None:
        assert isinstance(store, PostgresStore)
        conn = await asyncpg.connect(store.url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def fill(self, store: Store) -> None:
        """Refuse rows of more than 8 kB with the server's disk-full error."""
        statements = [
            "CREATE OR REPLACE FUNCTION taskd_test_disk_full() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN IF octet_length(NEW::text) > 8192 THEN"
            " RAISE EXCEPTION 'could not extend file: No space left on device'"
            " USING ERRCODE = 'disk_full'; END IF; RETURN NEW; END $$"
        ]
        statements += [
            f"CREATE TRIGGER taskd_test_disk_full BEFORE INSERT OR UPDATE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION taskd_test_disk_full()"
            for table in self._TABLES
        ]
        await self._admin(store, "; ".join(statements))

    async def refuse_writes(self, store: Store) -> None:
        """Make the store's session read-only."""
        await self._session(store, "SET SESSION default_transaction_read_only = on")

    async def restore(self, store: Store) -> None:
        """Drop the disk-full triggers and make the session writable again."""
        await self._session(store, "SET SESSION default_transaction_read_only = off")
        await self._admin(
            store,
            "; ".join(
                f"DROP TRIGGER IF EXISTS taskd_test_disk_full ON {table}" for table in self._TABLES
            ),
        )

    async def freeze(self, store: Store) -> None:
        """Lock every table from another session; hold the store's writer waiting for it."""
        assert isinstance(store, PostgresStore)
        assert self._locker is None
        locker = await asyncpg.connect(store.url)
        await locker.execute("BEGIN")
        await locker.execute(f"LOCK TABLE {', '.join(self._ALL_TABLES)} IN ACCESS EXCLUSIVE MODE")
        self._locker = locker
        entered, released = asyncio.Event(), asyncio.Event()
        self._released = released

        async def hang(cx: Any) -> None:
            entered.set()
            try:
                await cx.execute("SELECT 1 FROM tasks LIMIT 1")  # waits for the locks
            finally:
                released.set()

        # An empty write queued behind the store's API, as the SQLite faults use the
        # connection's thread: its batch holds the writer until the locks go.
        store._pending.append(_Write(hang, None, probe=True, safe=True))
        store._wake.set()
        await entered.wait()  # the writer is in the batch: what comes later waits

    async def thaw(self, store: Store) -> None:
        """End the locking session's transaction; wait for the writer to go on."""
        assert self._locker is not None
        assert self._released is not None
        try:
            await self._locker.execute("ROLLBACK")
        finally:
            await self._locker.close()
        await self._released.wait()
        self._locker = self._released = None
