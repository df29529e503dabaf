"""The SQLite schema, as a list of migrations, and the functions that apply it.

The schema version is `PRAGMA user_version`: the number of migrations applied. A file written
by a newer taskd (a higher version than this one knows) is refused before anything in it
changes.
"""

from __future__ import annotations

import aiosqlite

# Each entry moves the schema from version i to i + 1 (PRAGMA user_version). Never edit a
# released entry: append a new one, so a newer taskd opens any older file.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        source TEXT NOT NULL,
        spec TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        next_run_at INTEGER,
        status TEXT NOT NULL DEFAULT 'new',
        status_msg TEXT,
        status_percent REAL,
        run_started_at INTEGER,
        run_finished_at INTEGER,
        run_canceled_at INTEGER,
        state TEXT,
        version INTEGER NOT NULL DEFAULT 1,
        last_execution_id INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        created_by TEXT,
        updated_by TEXT
    );
    CREATE INDEX tasks_due ON tasks (next_run_at) WHERE next_run_at IS NOT NULL AND enabled;
    CREATE TABLE executions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        trigger TEXT NOT NULL,
        trigger_metadata TEXT,
        slot_at INTEGER,
        scheduled_for INTEGER,
        queued_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        status TEXT NOT NULL,
        status_msg TEXT,
        progress REAL,
        size_todo INTEGER,
        size_done INTEGER,
        nodes_todo INTEGER,
        nodes_done INTEGER,
        bandwidth REAL,
        dispatcher TEXT,
        attempt INTEGER NOT NULL DEFAULT 0
    );
    -- A schedule slot is accounted for once: run, or skipped with a reason. Never twice.
    CREATE UNIQUE INDEX executions_slot ON executions (task_id, slot_at)
        WHERE slot_at IS NOT NULL;
    CREATE INDEX executions_task ON executions (task_id, id);
    CREATE INDEX executions_active ON executions (status)
        WHERE status IN ('queued', 'running', 'paused');
    CREATE TABLE log_entries (
        task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        execution_id INTEGER REFERENCES executions (id) ON DELETE CASCADE,
        level TEXT NOT NULL,
        msg TEXT NOT NULL,
        status_percent REAL,
        timestamp INTEGER NOT NULL,
        PRIMARY KEY (task_id, idx)
    ) WITHOUT ROWID;
    CREATE INDEX log_entries_execution ON log_entries (execution_id);
    CREATE TABLE deferred_runs (
        defer_id TEXT PRIMARY KEY,
        task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        metadata TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER,
        execution_id INTEGER
    );
    """,
    # Config reconciliation lists the tasks of one source on every start and reload.
    "CREATE INDEX tasks_source ON tasks (source)",
    # The process group a run started, with its leader's start (boot id and start ticks):
    # after a crash, recovery ends what is left of it before the run is retried.
    """
    ALTER TABLE executions ADD COLUMN process_group INTEGER;
    ALTER TABLE executions ADD COLUMN process_start TEXT;
    """,
    # A config task that left the file is retired (disabled, history kept), not deleted.
    "ALTER TABLE tasks ADD COLUMN retired_at INTEGER",
    # A principal lists its own tasks (an API task's owner is its `created_by`) among many.
    "CREATE INDEX tasks_owner ON tasks (created_by)",
)


async def schema_version(conn: aiosqlite.Connection) -> int:
    """Return the schema version of the open database (0 for a new file)."""
    row = await (await conn.execute("PRAGMA user_version")).fetchone()
    return int(row[0]) if row else 0


async def check_version(conn: aiosqlite.Connection) -> None:
    """Refuse a file written by a newer taskd before changing anything in it.

    Raises RuntimeError if the file's version is higher than `len(MIGRATIONS)`.
    """
    version = await schema_version(conn)
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"the database has schema version {version}; this taskd knows up to "
            f"{len(MIGRATIONS)}: upgrade taskd"
        )


async def migrate(conn: aiosqlite.Connection) -> None:
    """Apply the migrations the file lacks, each in its own transaction with its version."""
    version = await schema_version(conn)
    for number in range(version, len(MIGRATIONS)):
        await conn.executescript(
            f"BEGIN; {MIGRATIONS[number]}; PRAGMA user_version = {number + 1}; COMMIT;"
        )
