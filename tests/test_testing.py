"""`taskd.testing`: the fakes module authors (and taskd's own tests) build on."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from taskd.errors import ValidationError
from taskd.modules.sleep import SleepModule
from taskd.testing import DEFAULT_START, FakeClock, FakeContext, slow_callbacks, wait_until


def test_a_stopped_clock_moves_only_when_told() -> None:
    """`advance` moves both clocks; `jump` and `set` move the wall clock only."""
    clock = FakeClock()
    assert clock.now() == DEFAULT_START
    assert clock.monotonic() == 1000.0
    clock.advance(5)
    assert clock.now() == DEFAULT_START + timedelta(seconds=5)
    assert clock.monotonic() == 1005.0
    clock.jump(timedelta(hours=1))
    clock.set(DEFAULT_START - timedelta(days=1))
    assert clock.now() == DEFAULT_START - timedelta(days=1)
    assert clock.monotonic() == 1005.0


def test_a_clock_speaks_aware_utc_only() -> None:
    """An aware time in another zone reads back in UTC; a naive one is refused."""
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))))
    assert clock.now() == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert clock.now().tzinfo is UTC
    with pytest.raises(ValueError, match="aware"):
        clock.set(datetime(2026, 3, 1, 12, 0))  # naive on purpose


def test_a_running_clock_follows_the_machine_plus_what_the_test_adds() -> None:
    """`FakeClock.running()` reads the system clock; `jump` puts it ahead and it keeps going."""
    clock = FakeClock.running()
    before = datetime.now(UTC)
    clock.jump(timedelta(days=7))
    ahead = clock.now() - before
    assert timedelta(days=7) <= ahead < timedelta(days=7, minutes=1)
    first = clock.monotonic()
    assert clock.monotonic() >= first


async def test_for_module_validates_params_and_fills_in_defaults() -> None:
    """The params a module gets are the daemon's validated ones; refused ones raise."""
    ctx = FakeContext.for_module(SleepModule(), {"seconds": 0}, state={"step": 1})
    assert ctx.params["seconds"] == 0
    assert ctx.state == {"step": 1}
    with pytest.raises(ValidationError):
        FakeContext.for_module(SleepModule(), {"seconds": -1})


async def test_a_stop_releases_a_paused_checkpoint() -> None:
    """A paused module is held at its checkpoint; a stop lets it through."""
    ctx = FakeContext()
    ctx.pause()
    assert ctx.paused
    ctx.stop()
    await ctx.checkpoint()
    assert ctx.stopping


async def test_wait_until_is_bounded() -> None:
    """`wait_until` returns once the check holds and raises TimeoutError when it never does."""
    calls = []
    await wait_until(lambda: calls.append(1) or len(calls) >= 3)
    assert len(calls) == 3
    with pytest.raises(TimeoutError):
        await wait_until(lambda: False, timeout_sec=0.02)


async def test_slow_callbacks_reports_a_blocked_loop_and_only_that() -> None:
    """A step that blocks 120 ms is reported with its coroutine; quick steps are not."""
    original = asyncio.Handle._run
    with slow_callbacks(0.05) as reports:
        await asyncio.sleep(0)
    assert reports == []

    async def blocks() -> None:
        time.sleep(0.12)  # noqa: ASYNC251 - blocking the loop is the point

    with slow_callbacks(0.05) as reports:
        await asyncio.create_task(blocks())
    assert len(reports) == 1
    assert "blocks()" in reports[0]
    assert asyncio.Handle._run is original  # restored, not left wrapped
    assert not asyncio.get_running_loop().get_debug()
