"""Benchmark: microseconds per next-fire-time call, taskd's engine beside croniter's get_next.

Run by hand: `.venv/bin/python bench/schedule.py [--calls N] [--rounds R]`.

Both sides answer the same question for the same expressions, zone and base times: the next
fire time after a base instant, with base instants spread over a year (so both pay for
daylight-saving changes and month ends, not for one warm spot). Each round times a batch of
calls; the table shows the median round, per call, and the ratio croniter / taskd.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from taskd.schedule import parse_schedule

EXPRESSIONS = (
    "*/5 * * * *",
    "30 2 * * *",
    "0 9,17 * * 1-5",
    "0 0 1,15 * *",
    "15 10 * * 0",
    "0 0 29 2 1",
)
CALENDAR = (
    ("weekdays 9:00,17:00", {"weekdays": ["monday", "friday"], "hours": [9, 17], "minutes": [0]}),
    ("Friday the 13th", {"weekdays": ["friday"], "days_of_month": [13]}),
    ("every 15 minutes", {"minutes": [0, 15, 30, 45]}),
)
ZONE = "Europe/Berlin"


def median_micros(call: Callable[[datetime], object], bases: list[datetime], rounds: int) -> float:
    """Return the median over `rounds` of the mean time per call, in microseconds."""
    per_round = []
    for _ in range(rounds):
        started = time.perf_counter()
        for base in bases:
            call(base)
        per_round.append((time.perf_counter() - started) / len(bases) * 1e6)
    return statistics.median(per_round)


def main() -> None:
    """Print one table: per-call medians for taskd and croniter, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds")
    args = parser.parse_args()

    zone = ZoneInfo(ZONE)
    rng = random.Random(20261123)
    year_start = datetime(2026, 1, 1, tzinfo=UTC)
    bases = [year_start + timedelta(seconds=rng.randrange(365 * 86400)) for _ in range(args.calls)]
    local_bases = [base.astimezone(zone) for base in bases]

    print(f"# {platform.python_implementation()} {platform.python_version()}, {ZONE}")
    print(f"# {args.calls} calls x {args.rounds} rounds, base times spread over 2026; median round")
    print(f"{'schedule':<22} {'taskd us':>9} {'croniter us':>12} {'ratio':>7}")
    for expression in EXPRESSIONS:
        schedule = parse_schedule({"cron": expression, "timezone": ZONE})
        iterator = croniter(expression, local_bases[0])

        def croniter_next(base: datetime, iterator: croniter = iterator) -> datetime:
            iterator.set_current(base, force=True)
            return iterator.get_next(datetime)

        # Same answers first: a fast wrong engine is no result.
        for base, local in zip(bases[:200], local_bases[:200], strict=True):
            ours, theirs = schedule.next_after(base), croniter_next(local)
            assert ours == theirs, (expression, base, ours, theirs)
        schedule.next_after(bases[0])
        ours_us = median_micros(schedule.next_after, bases, args.rounds)
        theirs_us = median_micros(croniter_next, local_bases, args.rounds)
        print(f"{expression:<22} {ours_us:>9.2f} {theirs_us:>12.2f} {theirs_us / ours_us:>6.1f}x")
    for label, raw in CALENDAR:
        schedule = parse_schedule({**raw, "timezone": ZONE})
        ours_us = median_micros(schedule.next_after, bases, args.rounds)
        print(f"{label:<22} {ours_us:>9.2f} {'-':>12} {'-':>7}")


if __name__ == "__main__":
    main()
