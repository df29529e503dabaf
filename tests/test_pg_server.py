"""The test run's own PostgreSQL server (`pg_server.py`): Unix socket only, a fresh
database per test."""

from __future__ import annotations

import asyncpg
from pg_server import PostgresServer


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


async def test_each_test_gets_a_fresh_database(postgres_url: str) -> None:
    """The database is new (no table of ours) and dropped after the test."""
    conn = await asyncpg.connect(postgres_url)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert tables == []
        await conn.execute("CREATE TABLE scratch (n int)")
    finally:
        await conn.close()
