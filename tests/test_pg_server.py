"""The test run's own PostgreSQL server (`pg_server.py`): Unix socket only, a fresh
database per test."""

from __future__ import annotations

import asyncpg
from pg_server import TEMPLATE_DB, PostgresServer

from taskd.store.pg_schema import MIGRATIONS


async def test_the_server_listens_on_its_unix_socket_only(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """No TCP address: `listen_addresses` is empty; the socket lives in the temp dir."""
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SHOW listen_addresses") == ""
        assert await conn.fetchval("SHOW unix_socket_directories") == str(
            postgres_server.socket_dir
        )
    finally:
        await conn.close()


async def test_each_test_gets_a_fresh_schema(postgres_url: str) -> None:
    """`postgres_url` selects an empty schema of the test's own: what is made in it lands
    there, not in `public`."""
    conn = await asyncpg.connect(postgres_url)
    try:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
            )
            == 0
        )
        await conn.execute("CREATE TABLE scratch (n int)")
        assert (
            await conn.fetchval("SELECT schemaname FROM pg_tables WHERE tablename = 'scratch'")
            == postgres_url.rsplit("=", 1)[1]
        )
    finally:
        await conn.close()


async def test_each_test_can_get_a_fresh_database(postgres_database_url: str) -> None:
    """The database is a copy of the migrated template: taskd's schema, no rows."""
    conn = await asyncpg.connect(postgres_database_url)
    try:
        assert await conn.fetchval("SELECT version FROM schema_version") == len(MIGRATIONS)
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 0
        assert await conn.fetchval("SELECT current_database()") != TEMPLATE_DB
    finally:
        await conn.close()
