"""A load generator for `fire_latency.py --api-load N`, run as a second process.

`python bench/_api_load.py URL KEY_FILE N DURATION_SEC`: N connections (one aiohttp
session, N workers each with its own connection) GET `URL` as fast as the answers come,
until SIGTERM or DURATION_SEC (a bound, whatever happens). Prints `ready` once the first
answer came, and at the end one JSON line: requests, answers per status, latency p50 / p99
in ms.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp


async def main(url: str, key: str, connections: int, duration: float) -> None:
    """Run the load until SIGTERM or `duration`; print the summary."""
    headers = {"Authorization": f"Bearer {key}"}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.call_later(duration, stop.set)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    first = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    async with session.get(url) as response:
                        await response.read()
                        statuses[response.status] += 1
                except aiohttp.ClientError:
                    statuses[0] += 1
                    await asyncio.sleep(0.01)
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                if not first.is_set():
                    first.set()
                    print("ready", flush=True)

        workers = [asyncio.create_task(worker()) for _ in range(connections)]
        await stop.wait()
        await asyncio.wait(workers, timeout=5)
        for task in workers:
            task.cancel()
    latencies.sort()

    def pick(fraction: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))]

    print(
        json.dumps(
            {
                "requests": sum(statuses.values()),
                "statuses": {str(k): v for k, v in sorted(statuses.items())},
                "p50_ms": round(pick(0.5), 1),
                "p99_ms": round(pick(0.99), 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    secret = Path(sys.argv[2]).read_text().strip()
    asyncio.run(main(sys.argv[1], secret, int(sys.argv[3]), float(sys.argv[4])))
