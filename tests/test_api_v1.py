"""The fylr dialect (`/api/v1`): what each route does, beyond the shape of its answers.

`POST /task` takes an array: items without `_id` are created, items with `_id` are updated
and must name `version` = current + 1; one refused item changes nothing (compared with a
snapshot of every table). GET/DELETE `/task/{id}`, cancel, the log with offset/limit, the
modules (and the singular alias), and the status mapping (queued -> new, paused -> running).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_fixtures import Api

LONG = {"task_module": "sleep", "task_params": {"seconds": 30, "steps": 300}}
QUICK = {"task_module": "sleep", "task_params": {"seconds": 0}}
CONFIG_TASK = {"name": "from-config", **QUICK}


@pytest.fixture
def api_tasks() -> list[dict[str, Any]]:
    """The `api` fixture's config file defines one task."""
    return [CONFIG_TASK]


async def save(api: Api, *tasks: dict[str, Any], status: int = 200) -> Any:
    """POST wrapped `tasks` to /api/v1/task; expect `status`; return the body."""
    reply = await api.unix.post("/api/v1/task", [{"task": task} for task in tasks])
    assert reply.status == status, reply
    return reply.json


async def test_list_and_show_wrap_each_task(api: Api) -> None:
    """GET /task is an array of `{"_user", "task"}`; `_id` is a number; GET /task/{id}
    answers the same wrapper for one task."""
    [created] = await save(api, {"description": "one", **QUICK})
    listed = (await api.unix.get("/api/v1/task")).json
    assert [item["task"]["_id"] for item in listed] == [1, created["task"]["_id"]]
    shown = (await api.unix.get(f"/api/v1/task/{created['task']['_id']}")).json
    assert shown == created
    assert shown["_user"] == {
        "_basetype": "user",
        "user": {"_generated_displayname": "unix-socket"},
    }
    task = shown["task"]
    assert isinstance(task["_id"], int)
    assert (task["description"], task["status"], task["version"]) == ("one", "new", 1)
    assert task["task_params"] == {"seconds": 0}


async def test_post_creates_items_without_id(api: Api) -> None:
    """Items without `_id` are created (version 1, status new), in order; a fylr task
    has no name, so taskd makes one up."""
    created = await save(
        api,
        {"description": "a", **QUICK},
        {"description": "b", "name": "named-b", **QUICK},
    )
    assert [item["task"]["description"] for item in created] == ["a", "b"]
    assert [item["task"]["version"] for item in created] == [1, 1]
    assert created[0]["task"]["name"].startswith("task-")
    assert created[1]["task"]["name"] == "named-b"
    for item in created:
        stored = await api.task(item["task"]["_id"])
        assert stored.spec["description"] == item["task"]["description"]


async def test_post_updates_items_with_id_and_the_next_version(api: Api) -> None:
    """An item with `_id` updates that task when `version` is current + 1; the whole
    task as GET returned it may be sent back. The same version again is 409; a missing
    version is 400."""
    [created] = await save(api, {"description": "v1", **QUICK})
    task = created["task"]
    [updated] = await save(api, {**task, "description": "v2", "version": task["version"] + 1})
    assert (updated["task"]["description"], updated["task"]["version"]) == ("v2", 2)
    assert updated["task"]["_id"] == task["_id"]
    assert updated["task"]["name"] == task["name"], "fields not given are kept"

    stale = await api.unix.post(
        "/api/v1/task", [{"task": {"_id": task["_id"], "version": 2, "description": "v3"}}]
    )
    assert stale.status == 409
    assert stale.json["code"] == "error.api.conflict"
    assert "version" in stale.json["description"]
    missing = await api.unix.post(
        "/api/v1/task", [{"task": {"_id": task["_id"], "description": "v3"}}]
    )
    assert missing.status == 400
    assert missing.json["errors"] == [
        {"path": "[0].task.version", "reason": "is required: current version + 1"}
    ]
    assert (await api.task(task["_id"])).spec["description"] == "v2"


@pytest.mark.parametrize(
    ("items", "status"),
    [
        pytest.param([{"task": {"description": "ok", **QUICK}}, {"task": {}}], 400, id="invalid"),
        pytest.param([{"task": {"description": "ok", **QUICK}}, "x"], 400, id="not-an-object"),
        pytest.param(
            [{"task": {"description": "ok", **QUICK}}, {"task": {"_id": 2, "version": 5}}],
            409,
            id="wrong-version",
        ),
        pytest.param(
            [{"task": {"description": "ok", **QUICK}}, {"task": {"_id": 99, "version": 2}}],
            400,
            id="unknown-id",
        ),
        pytest.param(
            [{"task": {"name": "dup", **QUICK}}, {"task": {"name": "dup", **QUICK}}],
            409,
            id="same-name-twice",
        ),
        pytest.param(
            [{"task": {"name": "new-one", **QUICK}}, {"task": {"name": "existing", **QUICK}}],
            409,
            id="name-taken",
        ),
        pytest.param(
            [{"task": {"name": "new-one", **QUICK}}, {"task": {"_id": 1, "version": 2}}],
            409,
            id="config-task",
        ),
        pytest.param(
            [
                {"task": {"_id": 2, "version": 2, "description": "x"}},
                {"task": {"_id": 2, "version": 2, "description": "y"}},
            ],
            400,
            id="same-id-twice",
        ),
    ],
)
async def test_one_refused_item_changes_nothing(api: Api, items: list[Any], status: int) -> None:
    """If any item is refused (invalid, wrong version, name taken, config-owned, ...), the
    answer is an error and no item is written: every table is as it was."""
    [existing] = await save(api, {"name": "existing", **QUICK})
    assert existing["task"]["_id"] == 2
    before = await api.snapshot()
    reply = await api.unix.post("/api/v1/task", items)
    assert reply.status == status, reply
    assert reply.json["statuscode"] == status
    assert await api.snapshot() == before


async def test_post_refuses_a_body_that_is_not_an_array(api: Api) -> None:
    """The body must be an array of wrapped tasks: 400 naming the problem."""
    reply = await api.unix.post("/api/v1/task", {"task": QUICK})
    assert reply.status == 400
    assert reply.json["errors"] == [{"path": "", "reason": "must be an array"}]


async def test_get_and_delete_by_id(api: Api) -> None:
    """GET /task/{id} and DELETE /task/{id} (acknowledged ok); unknown or non-numeric ids
    are 404."""
    [created] = await save(api, QUICK)
    task_id = created["task"]["_id"]
    deleted = await api.unix.delete(f"/api/v1/task/{task_id}")
    assert (deleted.status, deleted.json) == (200, {"acknowledged": "ok"})
    for ref in (task_id, "999999", "abc", "from-config", "-1", "1.0"):
        for method in ("GET", "DELETE"):
            reply = await api.unix.call(method, f"/api/v1/task/{ref}")
            assert reply.status == 404, reply
            assert reply.json["code"] == "error.api.not_found"


async def test_cancel_stops_the_running_execution(api: Api) -> None:
    """cancel acknowledges and the run ends `canceled`; with nothing running it is 409."""
    [created] = await save(api, LONG)
    task_id = created["task"]["_id"]
    assert (await api.unix.put(f"/api/v2/tasks/{task_id}/action/run")).status == 200
    await api.wait_status(task_id, "running")
    canceled = await api.unix.post(f"/api/v1/task/{task_id}/cancel")
    assert (canceled.status, canceled.json) == (200, {"acknowledged": "ok"})
    task = await api.wait_status(task_id, "canceled")
    assert task.run_canceled_at is not None
    shown = (await api.unix.get(f"/api/v1/task/{task_id}")).json["task"]
    assert shown["status"] == "canceled"
    assert "run_canceled_at" in shown
    again = await api.unix.post(f"/api/v1/task/{task_id}/cancel")
    assert again.status == 409
    assert again.json["code"] == "error.api.conflict"


async def test_log_with_offset_and_limit(api: Api) -> None:
    """The log is read from `offset` (an entry's idx), at most `limit` entries."""
    [created] = await save(
        api,
        {
            "task_module": "shell",
            "task_params": {"command": "for i in 0 1 2 3 4; do echo $i; done"},
        },
    )
    task_id = created["task"]["_id"]
    run = await api.unix.put(f"/api/v2/tasks/{task_id}/action/run")
    await api.wait_execution(run.json["execution_id"], "done")
    everything = (await api.unix.get(f"/api/v1/task/{task_id}/log")).json
    assert [entry["msg"] for entry in everything if entry["msg"].isdigit()] == list("01234")
    assert [entry["idx"] for entry in everything] == list(range(len(everything)))
    page = (await api.unix.get(f"/api/v1/task/{task_id}/log?offset=2&limit=2")).json
    assert page == everything[2:4]
    assert (await api.unix.get(f"/api/v1/task/{task_id}/log?offset=1000")).json == []


async def test_modules_and_the_singular_alias(api: Api) -> None:
    """/task/modules lists the built-in modules keyed by name, with descriptions and
    params; /task/module answers the same."""
    modules = (await api.unix.get("/api/v1/task/modules")).json["modules"]
    assert set(modules) == {"shell", "http", "sleep", "python", "files"}
    assert modules["sleep"]["name"] == "sleep"
    assert set(modules["sleep"]["description"]) == {"en-US", "de-DE"}
    assert [param["name"] for param in modules["sleep"]["params"]] == ["seconds", "steps", "fail"]
    assert (await api.unix.get("/api/v1/task/module")).json == {"modules": modules}


async def test_statuses_fylr_lacks_are_mapped(api: Api) -> None:
    """v1 shows `queued` as `new` and `paused` as `running`; v2 shows them as they are."""
    [paused] = await save(api, LONG)
    paused_id = paused["task"]["_id"]
    assert (await api.unix.put(f"/api/v2/tasks/{paused_id}/action/run")).status == 200
    await api.wait_status(paused_id, "running")
    assert (await api.unix.put(f"/api/v2/tasks/{paused_id}/action/pause")).status == 200
    await api.wait_status(paused_id, "paused")
    assert (await api.unix.get(f"/api/v2/tasks/{paused_id}")).json["status"] == "paused"
    assert (await api.unix.get(f"/api/v1/task/{paused_id}")).json["task"]["status"] == "running"

    api.runner.max_running = 1  # the paused execution holds the only place
    [queued] = await save(api, QUICK)
    queued_id = queued["task"]["_id"]
    assert (await api.unix.put(f"/api/v2/tasks/{queued_id}/action/run")).status == 200
    await api.wait_status(queued_id, "queued")
    assert (await api.unix.get(f"/api/v2/tasks/{queued_id}")).json["status"] == "queued"
    assert (await api.unix.get(f"/api/v1/task/{queued_id}")).json["task"]["status"] == "new"
    listed = {item["task"]["_id"]: item["task"]["status"] for item in await list_v1(api)}
    assert (listed[paused_id], listed[queued_id]) == ("running", "new")


async def list_v1(api: Api) -> list[dict[str, Any]]:
    """GET /api/v1/task."""
    items: list[dict[str, Any]] = (await api.unix.get("/api/v1/task")).json
    return items


async def test_next_run_at_runs_a_task_once_and_null_means_never(api: Api) -> None:
    """fylr runs a task by its `next_run_at`: a one-shot time runs it once; `null` stores
    a task that does not run (and `next_run_at` is left out of it)."""
    soon = (datetime.now(UTC) + timedelta(seconds=0.2)).isoformat().replace("+00:00", "Z")
    once, never = await save(api, {"next_run_at": soon, **QUICK}, {"next_run_at": None, **QUICK})
    await api.wait_status(once["task"]["_id"], "done")
    shown = (await api.unix.get(f"/api/v1/task/{once['task']['_id']}")).json["task"]
    assert shown["status"] == "done"
    assert "next_run_at" not in shown
    assert "next_run_at" not in never["task"]
    assert (await api.task(never["task"]["_id"])).enabled is False


async def test_a_task_sent_back_as_it_was_read_keeps_its_computed_due_time(api: Api) -> None:
    """An update with the task as GET returned it (`next_run_at` included) does not make
    the computed due time a one-shot: the rule both dialects share (Core)."""
    [created] = await save(
        api, {"description": "due", **QUICK, "schedules": [{"cron": "0 3 * * *"}]}
    )
    task = created["task"]
    assert "next_run_at" in task
    [updated] = await save(api, {**task, "description": "due 2", "version": task["version"] + 1})
    assert updated["task"]["next_run_at"] == task["next_run_at"]
    assert "next_run_at" not in (await api.task(task["_id"])).spec
