"""A PostgreSQL server of the test run's own, started from the machine's binaries.

`postgres_server` (session scope) runs `initdb` and `pg_ctl start` in a temporary directory:
Unix socket only (`listen_addresses = ''`, no TCP port opened), trust authentication for
the local socket, no fsync (the tests kill taskd, never the server). PostgreSQL refuses to
run as root: as root, the server runs as the unprivileged `postgres` user (Debian's
package creates it; `nobody` otherwise), through `runuser`, in a directory that user owns.

`postgres_url` gives each test a fresh, empty schema of its own in the run's test database
(the URL selects it through `search_path`; taskd migrates it on open), dropped at teardown:
a schema costs a tenth of a database to make, which keeps the contract suite quick.
`postgres_database_url` gives a whole fresh database, copied from a template that holds
taskd's schema already (`CREATE DATABASE ... TEMPLATE`), for tests that need a database's
isolation (several daemons, LISTEN/NOTIFY, advisory locks).

Where the binaries are missing the fixtures skip with the reason, except in CI (`CI` set,
as `.ci/run` does), where a missing server is a failure: a machine that is meant to run the
whole suite must have it (`make test` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from taskd.store.pg_schema import migrate

SUPERUSER = "postgres"  # the server's superuser role (initdb -U), trusted on the socket
TEMPLATE_DB = "taskd_template"
TESTS_DB = "taskd_tests"  # the schemas of `postgres_url` live here
_START_TIMEOUT_SEC = 60


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory with initdb and pg_ctl, or None."""
    override = os.environ.get("TASKD_PG_BINDIR")
    candidates = [override] if override else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(path.split("/")[-2]) if path.split("/")[-2].isdigit() else 0,
        reverse=True,
    )
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


@dataclass
class PostgresServer:
    """A running server: its socket directory and the psql to talk to it."""

    bindir: Path
    root: Path
    run_as: str | None  # the user the server runs as, when we are root
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's Unix socket (the host of a URL)."""
        return self.root / "run"

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    def url(self, database: str) -> str:
        """The URL of a database on this server, over the Unix socket."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def _as_owner(self, *argv: str) -> list[str]:
        if self.run_as is None:
            return list(argv)
        return ["runuser", "-u", self.run_as, "--", *argv]

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql as the superuser; return its output (raises on error)."""
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({sql!r}): {done.stderr.strip()}")
        return done.stdout

    def start(self) -> None:
        """initdb (first time only) and start the server; wait until it takes connections."""
        if not self.data_dir.exists():
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            )
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-c unix_socket_directories='{self.socket_dir}'",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
                "-c shared_buffers=32MB",
            ]
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(_START_TIMEOUT_SEC),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate` is as abrupt as a crash)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            self._as_owner(*argv),
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_SEC + 30,
            check=False,
            cwd=self.root,
        )
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv[:1])} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}\n{tail}"
            )

    def create_database(self) -> str:
        """Create a fresh database from the template; return its name."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE_DB}')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, ending the sessions still connected to it."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create_schema(self) -> str:
        """Create a fresh schema in the test database; return the URL that selects it."""
        name = f"s{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE SCHEMA {name}", TESTS_DB)
        return f"{self.url(TESTS_DB)}&search_path={name}"

    def drop_schema(self, url: str) -> None:
        """Drop the schema a `create_schema` URL selects, with everything in it."""
        name = url.rsplit("search_path=", 1)[1]
        self.psql(f"SET lock_timeout = '20s'; DROP SCHEMA IF EXISTS {name} CASCADE", TESTS_DB)


def _migrate(url: str) -> None:
    """Bring a database to taskd's schema (on a thread of its own: pytest's event loop may
    be running in this one)."""

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def _existing_user(*names: str) -> str:
    for name in names:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise LookupError(f"none of the users {', '.join(names)} exists to run PostgreSQL as")


def start_server() -> PostgresServer:
    """Start a server in a new temporary directory (as `postgres` when we are root).

    Raises LookupError (with what to install) when the binaries are missing.
    """
    bindir = find_bindir()
    if bindir is None:
        raise LookupError(
            "PostgreSQL's initdb and pg_ctl are not installed "
            "(Debian: apt-get install postgresql; `make test` does it as root)"
        )
    run_as = None
    # Short: the socket's path must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="taskd-pg-", dir="/tmp"))
    (root / "run").mkdir()
    if os.geteuid() == 0:
        # Debian's package creates `postgres`; a server built otherwise may lack it.
        run_as = _existing_user(SUPERUSER, "nobody")
        owner = pwd.getpwnam(run_as)
        for path in (root, root / "run"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    root.chmod(0o755)  # the server's socket must be reachable by the tests' user
    server = PostgresServer(bindir=bindir, root=root, run_as=run_as)
    try:
        server.start()
        server.psql(f"CREATE DATABASE {TEMPLATE_DB}")
        server.psql(f"CREATE DATABASE {TESTS_DB}")
        _migrate(server.url(TEMPLATE_DB))
    except BaseException:
        with contextlib.suppress(Exception):
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The test run's PostgreSQL server (started on first use, stopped at the end).

    Skips when the binaries are missing, unless `CI` is set: then it fails.
    """
    try:
        server = start_server()
    except LookupError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL: {error}", pytrace=False)
        pytest.skip(str(error))
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty schema of the test's own (dropped afterwards)."""
    url = postgres_server.create_schema()
    try:
        yield url
    finally:
        postgres_server.drop_schema(url)


@pytest.fixture
def postgres_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh database of the test's own, migrated (dropped afterwards)."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)
