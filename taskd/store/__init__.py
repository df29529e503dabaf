"""Persistent state: the `Store` contract (`base.py`) and the factory that opens a store.

Everything outside this package types its store as `Store` and opens it with `open_store`;
only this module and `sqlite.py` name the SQLite implementation, only this module and
`postgres.py` the PostgreSQL one (`[store] url`, shared by the nodes of a cluster).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from taskd.store.base import (
    ClaimResult,
    Definition,
    NewExecution,
    SlotClaim,
    Store,
    TaskInsert,
    TaskUpdate,
)
from taskd.store.postgres import PostgresStore
from taskd.store.sqlite import DB_FILE, LOG_BACKLOG_ENTRIES, WRITE_TIMEOUT_SEC, SqliteStore

__all__ = [
    "DB_FILE",
    "ClaimResult",
    "Definition",
    "NewExecution",
    "SlotClaim",
    "Store",
    "TaskInsert",
    "TaskUpdate",
    "open_store",
]


@asynccontextmanager
async def open_store(
    state_dir: Path,
    *,
    history_per_task: int = 100,
    log_entries_per_execution: int = 1000,
    log_backlog_entries: int = LOG_BACKLOG_ENTRIES,
    write_timeout_sec: float = WRITE_TIMEOUT_SEC,
    url: str | None = None,
    password: str | None = None,
    node: str | None = None,
) -> AsyncIterator[Store]:
    """Open the store of a state directory (`state_dir / DB_FILE`, created and migrated if
    needed) and close it on exit, committing pending `*_nowait` writes.

    `history_per_task`: finished executions kept per task (within 10 %);
    `log_entries_per_execution`: log entries kept per execution (head, marker, tail);
    `log_backlog_entries`: log entries waiting to be written past which `log_full` holds
    (see `Store.log_full`); `write_timeout_sec`: how long an awaited write waits for its
    commit (see "Errors" in `taskd.store.base`). Raises RuntimeError for a database of a
    newer schema version than this taskd knows, StoreUnavailableError (naming the path and
    the reason) if the directory cannot be created or the database cannot be opened or
    written.

    With `url` (`postgresql://...`), the PostgreSQL database there instead (`state_dir` is
    not used), logged in with `password` if given, as cluster node `node` (default: the
    host name); StoreUnavailableError gives the server's reason when it cannot be reached.
    """
    if url is not None:
        async with PostgresStore.open(
            url,
            node=node or socket.gethostname(),
            password=password,
            history_per_task=history_per_task,
            log_entries_per_execution=log_entries_per_execution,
            log_backlog_entries=log_backlog_entries,
            write_timeout_sec=write_timeout_sec,
        ) as pg_store:
            yield pg_store
        return
    async with SqliteStore.open(
        state_dir / DB_FILE,
        history_per_task=history_per_task,
        log_entries_per_execution=log_entries_per_execution,
        log_backlog_entries=log_backlog_entries,
        write_timeout_sec=write_timeout_sec,
    ) as store:
        yield store
