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

from api_fixtures import QUIET_SCHEDULE, Api

LONG = {"task_module": "sleep", "task_params": {"seconds": 30, "steps": 300}}
QUICK = {"task_module": "sleep", "task_params": {"seconds": 0}}
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


async def test_concurrent_v1_batches_are_all_or_nothing(api: Api) -> None:
    """50 batches sent at once, each creating `unique-i` and `shared`: one is saved whole
    (both of its tasks), the other 49 answer 409 and leave nothing behind."""
    batches = [
        [{"task": {"name": f"unique-{i}", **QUICK}}, {"task": {"name": "shared", **QUICK}}]
        for i in range(N)
    ]
    replies = await asyncio.gather(*(api.unix.post("/api/v1/task", b) for b in batches))
    assert Counter(reply.status for reply in replies) == {200: 1, 409: N - 1}
    [winner] = [i for i, reply in enumerate(replies) if reply.status == 200]
    listed = (await api.unix.get("/api/v2/tasks", params={"limit": "1000"})).json
    assert sorted(t["name"] for t in listed["tasks"]) == sorted([f"unique-{winner}", "shared"])


async def test_concurrent_partial_puts_keep_every_change(api: Api) -> None:
    """PUTs without `version` sent at once, each changing one field, all land: none
    overwrites another's field with the value it read before."""
    task = await api.create("merged", schedules=QUIET_SCHEDULE, **QUICK)
    path = f"/api/v2/tasks/{task['id']}"
    changes = [
        {"comment": "changed"},
        {"workflow_type": "data_exchange"},
        {"workflow_action": "copy"},
        {"metadata": {"team": "ops"}},
        {"task_timeout_sec": 77},
        {"options": {"priority": 5}},
    ]
    replies = await asyncio.gather(*(api.unix.put(path, change) for change in changes))
    assert [reply.status for reply in replies] == [200] * len(changes)
    shown = (await api.unix.get(path)).json
    for change in changes:
        for key, value in change.items():
            if isinstance(value, dict):
                assert value.items() <= shown[key].items(), key
            else:
                assert shown[key] == value, key
    assert shown["version"] == 1 + len(changes)
