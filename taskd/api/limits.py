"""What keeps API load from taking the event loop away from the engine (DESIGN.md, "The
engine first"): failed logins limited per client address, requests in flight capped, TCP
connections counted and capped, and log lines about the same trouble rate-limited.

Every structure here is bounded and says what it does when full:

- `FailureLimiter`: a token bucket per TCP client address (`auth_failures_per_minute` of
  them, refilled at that rate); an address with no token left is refused (429 with
  `Retry-After`) without its credentials being checked. At most `MAX_ADDRESSES` addresses are
  tracked; beyond that the least recently failed one is forgotten (it starts afresh).
- `InFlight`: at most `max_in_flight` requests handled at once; one more is refused at once
  (503 with `Retry-After`), never queued.
- `ConnectionCap`: at most `max_connections` TCP connections open at once; one more is
  closed as soon as it is accepted (the Unix socket has its own listener and is not counted).
- `LogThrottle`: one log line per kind of trouble per interval, with the count of what was
  left out.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MAX_ADDRESSES = 4096
RETRY_AFTER_BUSY_SEC = 1


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class FailureLimiter:
    """Failed logins per client address: a token bucket each, `per_minute` deep.

    `retry_after(address)` is 0 while the address may try, else the whole seconds until it
    may again; `failed(address)` takes a token. `per_minute = 0` turns the limit off.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0  # tokens per second
        self._monotonic = monotonic
        self._max = max_addresses
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _tokens(self, address: str, now: float) -> float:
        bucket = self._buckets.get(address)
        if bucket is None:
            return float(self.per_minute)
        return min(float(self.per_minute), bucket.tokens + (now - bucket.at) * self._rate)

    def retry_after(self, address: str) -> int:
        """0 if `address` may present credentials now, else the seconds it must wait."""
        if not self.per_minute:
            return 0
        tokens = self._tokens(address, self._monotonic())
        if tokens >= 1:
            return 0
        return max(1, math.ceil((1 - tokens) / self._rate))

    def failed(self, address: str) -> None:
        """Count one failed login from `address`."""
        if not self.per_minute:
            return
        now = self._monotonic()
        tokens = self._tokens(address, now)
        self._buckets[address] = _Bucket(max(0.0, tokens - 1), now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)  # the least recently failed: forgotten

    def __len__(self) -> int:
        return len(self._buckets)


class InFlight:
    """A count of requests being handled, at most `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.refused = 0

    def enter(self) -> bool:
        """Take a slot; False (and counted as refused) when all `limit` are taken."""
        if self.count >= self.limit:
            self.refused += 1
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        """Give a slot back."""
        self.count -= 1


class Pausable(Protocol):
    """A connection whose reading can be paused (`CountedProtocol`)."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...


class ConnectionCap:
    """Open TCP connections, at most `limit`; `refused` counts those closed at once.

    Also pauses and resumes reading on all of them at once (`pause_all`, `resume_all`): the
    engine-first window, in which the API reads no new request (see `engine_first`).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0
        self.paused = False
        self.connections: set[Pausable] = set()
        self._open = asyncio.Event()
        self._open.set()

    async def wait_open(self) -> None:
        """Return at once outside the engine-first window, else when it closes: handlers
        wait here between their steps, so requests in flight step aside too."""
        if not self.paused:
            return
        await self._open.wait()

    def pause_all(self) -> None:
        """Stop reading from every connection (new ones start paused) until `resume_all`."""
        self.paused = True
        self._open.clear()
        for connection in self.connections:
            connection.pause()

    def resume_all(self) -> None:
        """Read from every connection again."""
        self.paused = False
        self._open.set()
        for connection in self.connections:
            connection.resume()

    def admit(self) -> bool:
        """Count a new connection in; False (and counted as refused) when at the cap."""
        if self.open >= self.limit:
            self.refused += 1
            return False
        self.open += 1
        return True

    def release(self) -> None:
        """Count a closed connection out."""
        self.open -= 1


class LogThrottle:
    """At most one log line per kind per `interval_sec`: `allow(kind)` says whether to log
    now and how many were left out since the last line of that kind."""

    def __init__(
        self, interval_sec: float, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_sec = interval_sec
        self._monotonic = monotonic
        self._last: dict[str, float] = {}  # one entry per kind: the kinds are a fixed few
        self._suppressed: dict[str, int] = {}

    def allow(self, kind: str) -> tuple[bool, int]:
        """(log now?, how many of `kind` were not logged since the last line)."""
        now = self._monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_sec:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False, 0
        self._last[kind] = now
        return True, self._suppressed.pop(kind, 0)
