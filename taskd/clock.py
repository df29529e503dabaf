"""Time, injected: the scheduler and runner ask a `Clock`, so tests can control it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Wall time decides what is due; monotonic time bounds how long things may take."""

    def now(self) -> datetime:
        """Return the current wall time as an aware UTC datetime."""
        ...

    def monotonic(self) -> float:
        """Return a monotonic reading in seconds (for durations only)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of real (or simulated) time; cancellable."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> datetime:
        """Return the current wall time as an aware UTC datetime."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Return `time.monotonic()`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """`asyncio.sleep`, never negative."""
        await asyncio.sleep(max(0.0, seconds))


def to_micros(instant: datetime) -> int:
    """Return an aware datetime as integer microseconds since the Unix epoch (UTC)."""
    delta = instant - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """Return integer microseconds since the Unix epoch as an aware UTC datetime."""
    seconds, micro = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micro)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
