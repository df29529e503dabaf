"""The PostgreSQL schema, as a list of migrations, and the function that applies it.

The schema version is the one row of `schema_version`: the number of migrations applied.
Migrations run under an advisory lock, so nodes starting together migrate once; a database
written by a newer taskd (a higher version than this one knows) is refused before anything
in it changes.

Times are bigint microseconds since the Unix epoch (UTC), as in the SQLite store, so both
stores share their conversions and the scheduler's due index; JSON is `jsonb`.
"""

from __future__ import annotations

import asyncpg

# Each entry moves the schema from version i to i + 1. Never edit a released entry: append
# a new one, so a newer taskd opens any older database.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tasks (
        id bigserial PRIMARY KEY,
        name text NOT NULL UNIQUE,
        source text NOT NULL,
        spec jsonb NOT NULL,
        enabled boolean NOT NULL DEFAULT true,
        next_run_at bigint,
        status text NOT NULL DEFAULT 'new',
        status_msg text,
        status_percent double precision,
        run_started_at bigint,
        run_finished_at bigint,
        run_canceled_at bigint,
        state jsonb,
        version integer NOT NULL DEFAULT 1,
        last_execution_id bigint,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        created_by text,
        updated_by text,
        retired_at bigint
    );
    CREATE INDEX tasks_due ON tasks (next_run_at) WHERE next_run_at IS NOT NULL AND enabled;
    CREATE INDEX tasks_source ON tasks (source);
    -- An owner's API tasks (`query_tasks(owner=...)`).
    CREATE INDEX tasks_owner ON tasks (created_by) WHERE source = 'api';
    CREATE TABLE executions (
        id bigserial PRIMARY KEY,
        task_id bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        trigger text NOT NULL,
        trigger_metadata jsonb,
        slot_at bigint,
        scheduled_for bigint,
        queued_at bigint NOT NULL,
        started_at bigint,
        finished_at bigint,
        status text NOT NULL,
        status_msg text,
        progress double precision,
        size_todo bigint,
        size_done bigint,
        nodes_todo bigint,
        nodes_done bigint,
        bandwidth double precision,
        dispatcher text,
        attempt integer NOT NULL DEFAULT 0,
        process_group integer,
        process_start text,
        -- The node that claimed (queued) the execution: only it starts and runs it.
        node text,
        -- Queued by one node for another (the node busy with the task): not yet taken up.
        handoff boolean NOT NULL DEFAULT false
    );
    CREATE INDEX executions_handoff ON executions (node) WHERE handoff;
    -- A schedule slot is accounted for once: run, or skipped with a reason. Never twice,
    -- whichever node claims it.
    CREATE UNIQUE INDEX executions_slot ON executions (task_id, slot_at)
        WHERE slot_at IS NOT NULL;
    CREATE INDEX executions_task ON executions (task_id, id);
    CREATE INDEX executions_active ON executions (node, status)
        WHERE status IN ('queued', 'running', 'paused');
    CREATE TABLE log_entries (
        task_id bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        idx bigint NOT NULL,
        execution_id bigint REFERENCES executions (id) ON DELETE CASCADE,
        level text NOT NULL,
        msg text NOT NULL,
        status_percent double precision,
        timestamp bigint NOT NULL,
        PRIMARY KEY (task_id, idx)
    );
    CREATE INDEX log_entries_execution ON log_entries (execution_id);
    -- A task's next log idx, out of the tasks row: a node logging a run does not lock the
    -- row another node claims a slot of.
    CREATE TABLE log_counters (
        task_id bigint PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
        next_idx bigint NOT NULL
    );
    CREATE TABLE deferred_runs (
        defer_id text PRIMARY KEY,
        task_id bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        metadata jsonb,
        created_at bigint NOT NULL,
        expires_at bigint NOT NULL,
        used_at bigint,
        execution_id bigint
    );
    -- The nodes sharing the database: each heartbeats; a survivor declares a silent one dead.
    CREATE TABLE nodes (
        name text PRIMARY KEY,
        started_at bigint NOT NULL,
        heartbeat_at bigint NOT NULL,
        stopped_at bigint,
        dead_at bigint,
        dead_by text,
        config_hash text,
        config_at bigint
    );
    -- Actions sent through one node to the node that runs the execution.
    CREATE TABLE commands (
        id bigserial PRIMARY KEY,
        node text NOT NULL,
        execution_id bigint NOT NULL,
        action text NOT NULL,
        reason text,
        created_at bigint NOT NULL,
        done_at bigint,
        result text
    );
    CREATE INDEX commands_pending ON commands (node) WHERE done_at IS NULL;
    """,
)

# Any fixed number: the advisory lock every node takes while it migrates.
_MIGRATION_LOCK = 0x7461736B64  # "taskd"


async def schema_version(conn: asyncpg.Connection) -> int:
    """Return the schema version of the database (0 for a new one)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT max(version) FROM schema_version")
    return int(version or 0)


async def migrate(conn: asyncpg.Connection) -> None:
    """Apply the migrations the database lacks, each in its own transaction with its version.

    Raises RuntimeError (changing nothing) for a database of a newer schema than this taskd.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        version = await schema_version(conn)
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"the database has schema version {version}; this taskd knows up to "
                f"{len(MIGRATIONS)}: upgrade taskd"
            )
        for number in range(version, len(MIGRATIONS)):
            async with conn.transaction():
                if number == 0:
                    await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
                await conn.execute(MIGRATIONS[number])
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version VALUES ($1)", number + 1)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
