"""Concurrent writes through the API keep the rules a single write keeps (issue 10, item 7).

- 50 concurrent `run` actions on a task with overlap `skip`: exactly one starts, the
  others are refused (409).
- 50 concurrent v1 `POST /task` batches, each with a unique name and one shared name: a
  batch is all or nothing, so the one that wins creates both of its tasks and no refused
  batch leaves its unique task behind.
- Concurrent partial v2 `PUT`s without `version`, each changing another field: every
  change is kept (the merge happens inside the store's transaction).

The requests are sent at once with `asyncio.gather` over the Unix socket; counts are small
and fixed, and each wait is bounded by the fixture's `WAIT_SEC`.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from api_fixtures import Api

LONG = {"task_module": "sleep", "task_params": {"seconds": 30, "steps": 300}}
N = 50


async def test_concurrent_runs_under_overlap_skip_start_exactly_one(api: Api) -> None:
    """Of 50 `run` actions sent at once on an overlap-`skip` task, one starts (200) and 49
    are refused (409); one execution exists and one runs."""
    task = await api.create("skipper", options={"overlap": "skip"}, **LONG)
    path = f"/api/v2/tasks/{task['id']}/action/run"
    replies = await asyncio.gather(*(api.unix.put(path) for _ in range(N)))
    assert Counter(reply.status for reply in replies) == {200: 1, 409: N - 1}
    await api.wait_status(task["id"], "running")
    executions = (await api.unix.get(f"/api/v2/tasks/{task['id']}/executions")).json
    assert len(executions["executions"]) == 1
    assert len(api.runner.running_for_task(int(task["id"]))) == 1
