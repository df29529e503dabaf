"""Fixtures shared by the test modules.

- `eng`: the engine of `engine_fixtures` (real store, runner, scheduler, core) on a stopped
  `FakeClock` one second before T0, the scheduler's loop off. A module that needs another
  clock or grace overrides `eng`.
- `api`: a live API from `api_fixtures.open_api`; at teardown no request may have failed
  inside taskd. Config-defined tasks come from `api_tasks` (none unless a module overrides it).
- `collect_garbage`: collects garbage after the test, so an unclosed transport or session
  warns (and, warnings being errors, fails) in the test that leaked it.
- `no_blocking`: fails the test if a callback held the event loop 50 ms or longer (practice
  14). Opt in per module: `pytestmark = pytest.mark.usefixtures("no_blocking")`.

- `postgres_server`, `postgres_url`, `postgres_database_url`: the run's own PostgreSQL
  server, and a fresh schema (or database) on it per test (`pg_server.py`).

The store fixtures live in `tests/store/conftest.py`.
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import Api, open_api
from engine_fixtures import Engine, at, open_engine
from hypothesis import settings
from pg_server import postgres_database_url, postgres_server, postgres_url

from taskd.testing import SLOW_CALLBACK_SEC, FakeClock, slow_callbacks

# In CI every property test draws its examples from a fixed seed: CI checks what passed
# before the change landed, and a failure there can be replayed. Elsewhere each run draws
# new examples (that is how they find what is new).
if os.environ.get("CI"):
    settings.register_profile("ci", derandomize=True, database=None)
    settings.load_profile("ci")

__all__ = [
    "postgres_database_url",
    "postgres_server",
    "postgres_url",
]  # fixtures, re-exported for pytest


@pytest.fixture
async def eng(tmp_path: Path) -> AsyncIterator[Engine]:
    """An engine with the scheduler's loop off, the clock one second before T0."""
    async with open_engine(tmp_path / "taskd.db", clock=FakeClock(at(-1))) as engine:
        yield engine


@pytest.fixture
def api_tasks() -> Sequence[Mapping[str, Any]]:
    """The `[[task]]` tables of the `api` fixture's config file: none."""
    return ()


@pytest.fixture
async def api(tmp_path: Path, api_tasks: Sequence[Mapping[str, Any]]) -> AsyncIterator[Api]:
    """A live API with a key per scope, `tasks/*`, `*`, a Basic-auth user and `api_tasks`;
    no request may fail inside taskd."""
    async with open_api(tmp_path, tasks=api_tasks) as served:
        yield served
        assert not served.failures()


@pytest.fixture
def collect_garbage() -> Iterator[None]:
    """Collect garbage after the test, so what it leaked warns in its own test."""
    yield
    gc.collect()


@pytest.fixture
async def no_blocking() -> AsyncIterator[None]:
    """Fail the test if one callback held the event loop `SLOW_CALLBACK_SEC` or longer.

    Covers the fixtures set up after this one and their teardown (ask for it first, or
    through `usefixtures`, which comes before arguments).
    """
    with slow_callbacks(SLOW_CALLBACK_SEC) as reports:
        yield
    if reports:
        pytest.fail(
            f"the event loop was blocked for {SLOW_CALLBACK_SEC * 1000:g} ms or longer:\n"
            + "\n".join(reports),
            pytrace=False,
        )


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def example_checkout(tmp_path: Path) -> Path:
    """A directory laid out as a checkout after the first `make run`: `etc/taskd.toml` (the
    repository's example, mode 0600) and the admin key it names, `var/keys/admin` (0600)."""
    checkout = tmp_path / "checkout"
    (checkout / "etc").mkdir(parents=True)
    config = checkout / "etc" / "taskd.toml"
    config.write_text((REPO / "etc" / "taskd.toml").read_text())
    config.chmod(0o600)
    key = checkout / "var" / "keys" / "admin"
    key.parent.mkdir(parents=True, mode=0o700)
    key.write_text("k" * 43 + "\n")
    key.chmod(0o600)
    return checkout
