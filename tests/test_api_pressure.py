"""The API under pressure (issue 10, items 2-4): password checks off the loop, cached and
rate-limited per address; idle connections closed, TCP connections capped with the Unix
socket still answering; requests in flight capped with 503 + Retry-After.

Every test here runs with `no_blocking`: a callback holding the loop 50 ms fails it. Timing
bounds are loose on purpose (hang detectors, not benchmarks); what is asserted is order
(health answered while bad logins were still being checked) and counts.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from api_fixtures import PASSWORD, USER, Api, basic, open_api, password_hash

from taskd.api.limits import FailureLimiter

pytestmark = pytest.mark.usefixtures("no_blocking")


@pytest.fixture
def hashed() -> Iterator[None]:
    """The test user's hash, made before the loop runs (scrypt is slow on purpose); and the
    objects alive so far frozen, as the daemon freezes its own after start: a full garbage
    collection over the test process's heap (~60-90 ms) is not taskd holding the loop."""
    password_hash()
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
async def limited(tmp_path: Path, hashed: None) -> AsyncIterator[Api]:
    """A live API allowing 20 failed logins per address and minute."""
    async with open_api(tmp_path, api_options={"auth_failures_per_minute": 20}) as served:
        yield served
        assert not served.failures()


async def test_wrong_passwords_do_not_stall_the_loop(limited: Api) -> None:
    """16 concurrent wrong Basic credentials run scrypt in threads: health answers while
    they are still being checked (the loop is never blocked 50 ms: `no_blocking`), each
    gets 401, and the failures count toward the limit."""
    api = limited
    health = await api.tcp(None)
    wrong = await api.tcp(None, authorization=basic(USER, "wrong"))
    bad = [asyncio.create_task(wrong.get("/api/v2/tasks")) for _ in range(16)]
    await asyncio.sleep(0.02)  # the requests are sent and their checks under way
    reply = await health.get("/api/v2/health")
    assert reply.status == 200, reply
    answered_while_busy = sum(not task.done() for task in bad)
    statuses = [reply.status for reply in await asyncio.gather(*bad)]
    assert statuses == [401] * 16
    # 16 scrypt checks two at a time take several times one check (~50-100 ms); health
    # needs none, so most bad requests were still pending when it answered.
    assert answered_while_busy >= 8


async def test_failed_logins_are_limited_per_address(limited: Api) -> None:
    """After 20 failures from one address, the next request gets 429 with Retry-After in
    each dialect's shape, without a password check; the Unix socket is not limited."""
    api = limited
    wrong = await api.tcp(None, authorization=basic("mallory", PASSWORD))
    statuses = [(await wrong.get("/api/v2/tasks")).status for _ in range(20)]
    assert statuses == [401] * 20
    v2 = await wrong.get("/api/v2/tasks")
    assert v2.status == 429
    assert 1 <= int(v2.headers["Retry-After"]) <= 60
    assert v2.json["details"]["base"][0]["error"] == "too_many_requests"
    v1 = await wrong.get("/api/v1/task")
    assert v1.status == 429
    assert v1.json["code"] == "error.api.too_many_requests"
    # Even the right password waits: the address is refused before any check.
    right = await api.tcp(None, authorization=basic(USER, PASSWORD))
    assert (await right.get("/api/v2/tasks")).status == 429
    assert (await api.unix.get("/api/v2/tasks")).status == 200
    assert (await right.get("/api/v2/health")).status == 200  # public: never limited


async def test_a_successful_basic_check_is_cached(
    limited: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same right Basic header is checked by scrypt once, then served from the cache;
    a wrong one is checked every time."""
    from taskd.api import auth

    calls = 0
    real = auth.verify_password

    def counting(password: str, stored: str) -> bool:
        nonlocal calls
        calls += 1
        return real(password, stored)

    monkeypatch.setattr(auth, "verify_password", counting)
    right = await limited.tcp(None, authorization=basic(USER, PASSWORD))
    for _ in range(5):
        assert (await right.get("/api/v2/tasks")).status == 200
    assert calls == 1
    wrong = await limited.tcp(None, authorization=basic(USER, "nope"))
    for _ in range(3):
        assert (await wrong.get("/api/v2/tasks")).status == 401
    assert calls == 4


def test_failure_limiter_refills_and_forgets() -> None:
    """A bucket per address, refilled at its rate per minute; the oldest address is
    forgotten beyond the bound."""
    now = [0.0]
    limiter = FailureLimiter(6, monotonic=lambda: now[0], max_addresses=2)
    for _ in range(6):
        assert limiter.retry_after("a") == 0
        limiter.failed("a")
    assert limiter.retry_after("a") == 10  # one token every 10 s
    now[0] += 10
    assert limiter.retry_after("a") == 0
    limiter.failed("b")
    limiter.failed("c")
    assert len(limiter) == 2  # "a" was forgotten
    assert limiter.retry_after("a") == 0
    assert FailureLimiter(0).retry_after("x") == 0


async def test_unknown_users_cost_no_loop_time(limited: Api) -> None:
    """Unknown user names are checked against a dummy hash in a thread too (no probing by
    timing, no blocking): with `no_blocking` on, a few of them pass quietly."""
    wrong = await limited.tcp(None, authorization=basic("nobody", "x"))
    replies = await asyncio.gather(*(wrong.get("/api/v2/tasks") for _ in range(4)))
    assert [reply.status for reply in replies] == [401] * 4


async def test_health_is_quick_beside_bad_logins(limited: Api) -> None:
    """Health's round trip stays far below one serialized scrypt batch while 16 bad logins
    are checked: bound 1 s, where 16 checks on the loop took 1.6 s or more."""
    api = limited
    wrong = await api.tcp(None, authorization=basic(USER, "wrong"))
    health = await api.tcp(None)
    bad = [asyncio.create_task(wrong.get("/api/v1/task")) for _ in range(16)]
    await asyncio.sleep(0.01)
    started = time.monotonic()
    assert (await health.get("/api/v2/health")).status == 200
    assert time.monotonic() - started < 1.0
    await asyncio.gather(*bad)
