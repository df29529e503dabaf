"""The store under test: one fixture per implementation, one parametrized fixture over them.

Contract tests (`test_contract.py`) take `store` (a fresh, open store) or `store_opener`
(to open one with other limits, or to close and reopen the same database) and see nothing
but the `Store` Protocol. Each implementation is a fixture named `<param>_opener`; it joins
the suite with one entry in `STORE_IMPLEMENTATIONS` (as APScheduler 4's `datastore` fixture
does for its stores). Its disk faults (`disk_faults.DiskFaults`) are a fixture named
`<param>_disk`, reached through `disk`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from disk_faults import DiskFaults, PostgresDiskFaults, SqliteDiskFaults
from store_helpers import StoreOpener

from taskd.store import Store, open_store

STORE_IMPLEMENTATIONS = ["sqlite", "postgresql"]
# `make test-fast` runs the contract on SQLite only (a server round trip per step doubles
# its time); `make test` runs it on both.
_SLOW_IMPLEMENTATIONS = {"postgresql"}


@pytest.fixture
def sqlite_opener(tmp_path: Path) -> StoreOpener:
    """Open the SQLite store of a state directory under `tmp_path`, as the daemon does."""
    state_dir = tmp_path / "state"

    def opener(
        *,
        history_per_task: int = 100,
        log_entries_per_execution: int = 1000,
        log_backlog_entries: int = 8192,
        write_timeout_sec: float = 10.0,
    ) -> AbstractAsyncContextManager[Store]:
        return open_store(
            state_dir,
            history_per_task=history_per_task,
            log_entries_per_execution=log_entries_per_execution,
            log_backlog_entries=log_backlog_entries,
            write_timeout_sec=write_timeout_sec,
        )

    return opener


@pytest.fixture
def postgresql_opener(tmp_path: Path, postgres_url: str) -> StoreOpener:
    """Open the PostgreSQL store of a fresh database (`postgres_url`), as node `node-a`."""

    def opener(
        *,
        history_per_task: int = 100,
        log_entries_per_execution: int = 1000,
        log_backlog_entries: int = 8192,
        write_timeout_sec: float = 10.0,
    ) -> AbstractAsyncContextManager[Store]:
        return open_store(
            tmp_path / "unused",
            url=postgres_url,
            node="node-a",
            history_per_task=history_per_task,
            log_entries_per_execution=log_entries_per_execution,
            log_backlog_entries=log_backlog_entries,
            write_timeout_sec=write_timeout_sec,
        )

    return opener


@pytest.fixture(
    params=[
        pytest.param(name, marks=pytest.mark.slow) if name in _SLOW_IMPLEMENTATIONS else name
        for name in STORE_IMPLEMENTATIONS
    ]
)
def store_opener(request: pytest.FixtureRequest) -> StoreOpener:
    """Open a store of the implementation under test (keywords: its limits)."""
    opener: StoreOpener = request.getfixturevalue(f"{request.param}_opener")
    return opener


@pytest.fixture
async def store(store_opener: StoreOpener) -> AsyncIterator[Store]:
    """A store with the default limits on a fresh database."""
    async with store_opener() as opened:
        yield opened


@pytest.fixture
def sqlite_disk() -> DiskFaults:
    """Disk faults of the SQLite store."""
    return SqliteDiskFaults()


@pytest.fixture
def postgresql_disk() -> DiskFaults:
    """Faults of the PostgreSQL store (a read-only session, disk-full triggers, tables
    locked by another session)."""
    return PostgresDiskFaults()


@pytest.fixture
def disk(request: pytest.FixtureRequest, store_opener: StoreOpener) -> DiskFaults:
    """Disk faults of the implementation under test (the one `store` is)."""
    implementation = request.node.callspec.params["store_opener"]
    faults: DiskFaults = request.getfixturevalue(f"{implementation}_disk")
    return faults
