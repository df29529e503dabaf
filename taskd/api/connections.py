"""TCP connections under control: counted and capped, a deadline for a request's head, and
accept errors (out of file descriptors) logged once per interval, never per attempt.

- `CappedTCPSite` listens like `web.TCPSite`, but wraps each connection's protocol in a
  `CountedProtocol`: beyond `max_connections` open TCP connections a new one is closed as
  soon as it is accepted (aborted: no request is read, nothing waits). The Unix socket is a
  separate site, not counted: the admin's way in stays open when TCP is full.
- A connection that started sending a request must deliver its whole head within
  `request_timeout_sec`, else it is closed (a slow-loris client holds a descriptor only
  that long). A connection that sends nothing is closed by aiohttp's keep-alive timer
  (`keepalive_timeout_sec`, counted from the connection or from its last answer). A body
  must arrive within `request_timeout_sec` too (the API's guard middleware reads it).
- `exception_handler` replaces the loop's: "out of file descriptors" (EMFILE, ENFILE,
  ENOBUFS, ENOMEM on accept; asyncio retries each second per listening socket) is one JSON
  line per `LOG_INTERVAL_SEC` with the count since the last; anything else one line with
  the error, its traceback only at debug level.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from typing import Any

import structlog
from aiohttp import web

from taskd.api.limits import ConnectionCap, LogThrottle
from taskd.clock import to_micros
from taskd.runner import Runner
from taskd.scheduler import Scheduler

log = structlog.get_logger("taskd.api")

LOG_INTERVAL_SEC = 60.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class CountedProtocol(asyncio.Protocol):
    """The protocol of one TCP connection: aiohttp's handler inside, counted by `cap`.

    The API's guard middleware calls `request_started` / `request_ended` (it finds this
    object as `request.transport.get_protocol()`), which is how the head deadline knows a
    request's head arrived.
    """

    def __init__(
        self,
        inner: asyncio.Protocol,
        cap: ConnectionCap,
        request_timeout_sec: float,
        throttle: LogThrottle,
    ) -> None:
        self._inner = inner
        self._cap = cap
        self._timeout = request_timeout_sec
        self._throttle = throttle
        self._transport: asyncio.Transport | None = None
        self._admitted = False
        self._active = 0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._cap.admit():
            transport.abort()  # at the cap: closed at once, nothing read
            allowed, left_out = self._throttle.allow("connections")
            if allowed:
                log.warning(
                    "too many connections: new ones are closed",
                    max_connections=self._cap.limit,
                    closed_since_last_line=left_out + 1,
                )
            return
        self._admitted = True
        self._transport = transport
        self._inner.connection_made(transport)
        self._cap.connections.add(self)
        if self._cap.paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self._active == 0 and self._deadline is None and self._transport is not None:
            self._deadline = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if not self._admitted:
            return
        self._admitted = False
        self._transport = None
        self._cap.connections.discard(self)
        self._cap.release()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def pause(self) -> None:
        """Read nothing more from the client until `resume` (the engine goes first)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume(self) -> None:
        """Read from the client again."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def request_started(self) -> None:
        """A request's head arrived: its deadline is met."""
        self._active += 1
        self._cancel_deadline()

    def request_ended(self) -> None:
        """A request was answered; the next one's head gets a new deadline when it starts."""
        self._active -= 1

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._active or self._transport is None:
            return
        allowed, left_out = self._throttle.allow("slow requests")
        if allowed:
            log.info(
                "closed a connection whose request did not arrive in time",
                timeout_sec=self._timeout,
                closed_since_last_line=left_out + 1,
            )
        self._transport.abort()


class CappedTCPSite(web.TCPSite):
    """A `web.TCPSite` whose connections are counted, capped and given a head deadline."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        cap: ConnectionCap,
        request_timeout_sec: float,
        throttle: LogThrottle,
    ) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        self._cap = cap
        self._request_timeout = request_timeout_sec
        self._throttle = throttle

    async def start(self) -> None:
        """Listen, as `web.TCPSite.start` does, through the counting protocol."""
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def protocol() -> CountedProtocol:
            return CountedProtocol(server(), self._cap, self._request_timeout, self._throttle)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            protocol, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


# The engine-first windows. With starts committed ahead, the engine needs the loop twice per
# due instant: to claim and reserve its slots (from this long before the claim begins, i.e.
# the scheduler's look-ahead plus this margin, until they are claimed), and for the release
# itself (from this long before the instant until its starts were handed over: long enough
# for the requests in flight to finish their current step, a page of tasks rendered say,
# and wait at the gate; 5 ms let them delay the release by 30-80 ms under load, 20 ms and
# 50 ms gave loaded p99 22 / 15 ms and health p99 44 / 55 ms, bench/README.md);
ENGINE_FIRST_MARGIN_SEC = 0.05
ENGINE_FIRST_RELEASE_SEC = 0.05
# each window at most this long;
ENGINE_FIRST_MAX_SEC = 0.5
# then the API reads for at least this long before the next release window.
ENGINE_FIRST_MIN_OPEN_SEC = 0.1


async def engine_first(cap: ConnectionCap, scheduler: Scheduler, runner: Runner) -> None:
    """Keep the API's TCP connections from being read while the engine claims and starts
    due runs (DESIGN.md, "The engine first"); runs until cancelled.

    Two short windows per due instant: the claim window opens `lookahead + MARGIN` before
    the instant and closes once its slots are claimed (`Scheduler.claim_pending`); the
    release window opens `ENGINE_FIRST_RELEASE_SEC` before it and closes once the instant
    has passed and its jobs were handed over (the runner announces each hand-over:
    `Runner.handover`, no polling). Between the two the API reads as usual. Each
    window lasts at most `ENGINE_FIRST_MAX_SEC`; after a release window the API has at
    least `ENGINE_FIRST_MIN_OPEN_SEC`. Requests already being handled go on; new ones wait
    in the kernel's buffers (nothing is refused). The Unix socket is never paused.
    """
    loop = asyncio.get_running_loop()
    while True:
        handover = runner.handover
        handover.clear()
        due_us = scheduler.next_due_us()
        if due_us is None:
            await _wait(handover, 1.0)  # a new due time also wakes this up
            continue
        claiming = scheduler.claim_pending(due_us)
        lead_sec = (
            scheduler.lookahead_sec() + ENGINE_FIRST_MARGIN_SEC
            if claiming
            else ENGINE_FIRST_RELEASE_SEC
        )
        until_window = (due_us - to_micros(scheduler.clock.now())) / 1e6 - lead_sec
        if until_window > 0:
            await asyncio.sleep(min(until_window, 1.0))  # edits may bring a due time closer
            continue
        cap.pause_all()
        try:
            deadline = loop.time() + ENGINE_FIRST_MAX_SEC
            while (left := deadline - loop.time()) > 0:
                handover.clear()  # before the checks: no announcement is missed
                now_us = to_micros(scheduler.clock.now())
                if claiming and not scheduler.claim_pending(due_us):
                    # Claimed (and reserved); the release window follows at the instant.
                    if due_us - now_us > ENGINE_FIRST_RELEASE_SEC * 1e6:
                        break
                    claiming = False
                if _fired(scheduler, runner, due_us):
                    break
                wait = left if now_us >= due_us else min(left, (due_us - now_us) / 1e6)
                await _wait(handover, wait)
            await asyncio.sleep(0)  # the started runs take their first step first
        finally:
            cap.resume_all()
        if not claiming:
            await asyncio.sleep(ENGINE_FIRST_MIN_OPEN_SEC)


async def _wait(event: asyncio.Event, timeout_sec: float) -> None:
    """Wait for `event`, at most `timeout_sec`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_sec):
            await event.wait()


def _fired(scheduler: Scheduler, runner: Runner, due_us: int) -> bool:
    """Whether the slot at `due_us` was claimed and its jobs handed to the runner."""
    if to_micros(scheduler.clock.now()) < due_us:
        return False
    following = scheduler.next_due_us()
    # Jobs queued behind a full runner start when a run ends, not at this instant: they
    # must not keep the API closed for the whole window.
    runner_full = runner.running_count + runner.reserved_count >= runner.max_running
    handed_over = runner.starting == 0 and (runner.queued_count == 0 or runner_full)
    return (following is None or following > due_us) and handed_over


def exception_handler(throttle: LogThrottle) -> Any:
    """A loop exception handler logging one JSON line per problem, rate-limited for running
    out of descriptors (see the module docstring)."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        message = str(context.get("message", "unhandled error in the event loop"))
        if isinstance(error, OSError) and error.errno in _OUT_OF_RESOURCES:
            allowed, left_out = throttle.allow(f"accept {error.errno}")
            if allowed:
                log.error(
                    "out of file descriptors: connections wait in the backlog",
                    error=f"{type(error).__name__}: {error.strerror or error}",
                    hint="raise LimitNOFILE= or lower [api] max_connections",
                    left_out_since_last_line=left_out,
                )
            return
        fields: dict[str, Any] = {}
        if error is not None:
            fields["error"] = f"{type(error).__name__}: {error}"
        allowed, left_out = throttle.allow(f"loop {message}")
        if allowed:
            log.error(message, left_out_since_last_line=left_out, **fields)
            if error is not None:
                log.debug(message, exc_info=error)

    return handle
