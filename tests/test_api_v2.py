"""The Nodeum dialect (`/api/v2`): what each route does, beyond the shape of its answers.

Listing (paging, `count`, `sort_by`, every filter of the spec), create / show / update /
destroy with versions, every action and its refusals, deferred runs (once, unknown,
expired), and tasks owned by the config file. Requests go over the trusted Unix socket
unless a test is about credentials.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import QUIET_SCHEDULE, Api, open_api

LONG = {"task_module": "sleep", "task_params": {"seconds": 30, "steps": 300}}
CONFIG_TASK = {"name": "from-config", "task_module": "sleep", "task_params": {"seconds": 0}}


@pytest.fixture
def api_tasks() -> list[dict[str, Any]]:
    """The `api` fixture's config file defines one task."""
    return [CONFIG_TASK]


def rfc3339(instant: datetime) -> str:
    """An instant as RFC 3339 UTC with a Z."""
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def names(api: Api, **params: str) -> tuple[list[str], int]:
    """The names a list request returns, in order, and its `count`."""
    reply = await api.unix.get("/api/v2/tasks", params=params)
    assert reply.status == 200, reply
    return [task["name"] for task in reply.json["tasks"]], reply.json["count"]


def assert_data_management_error(body: dict[str, Any], status: int, *words: str) -> None:
    """A Nodeum `data_management_error` with `status`, whose detail says each of `words`."""
    assert body["id"] == "data_management_error"
    assert body["code"] == status
    assert body["status"] == str(status)
    for word in words:
        assert word in body["detail"]


async def test_limit_offset_and_count_before_paging(api: Api) -> None:
    """`limit`/`offset` page the list; `count` is the total before paging."""
    for index in range(5):
        await api.create(f"page-{index}")
    listed, count = await names(api, name="page-*", limit="2", offset="1", sort_by="name")
    assert (listed, count) == (["page-1", "page-2"], 5)
    listed, count = await names(api, name="page-*", limit="0")
    assert (listed, count) == ([], 5)
    listed, count = await names(api, name="page-*", offset="4", sort_by="name")
    assert (listed, count) == (["page-4"], 5)
    listed, count = await names(api, name="page-*", offset="10")
    assert (listed, count) == ([], 5)


async def test_sort_by_several_attributes_with_directions(api: Api) -> None:
    """`sort_by` takes attributes separated by `|`, each with `:asc` (default) or `:desc`."""
    await api.create("sort-b", workflow_type="maintenance")
    await api.create("sort-a", workflow_type="maintenance")
    await api.create("sort-c", workflow_type="data_exchange")
    by_name_desc, _ = await names(api, name="sort-*", sort_by="name:desc")
    assert by_name_desc == ["sort-c", "sort-b", "sort-a"]
    by_name, _ = await names(api, name="sort-*", sort_by="name:asc")
    assert by_name == ["sort-a", "sort-b", "sort-c"]
    mixed, _ = await names(api, name="sort-*", sort_by="workflow_type:desc|name")
    assert mixed == ["sort-a", "sort-b", "sort-c"]
    mixed, _ = await names(api, name="sort-*", sort_by="workflow_type|name:desc")
    assert mixed == ["sort-c", "sort-b", "sort-a"]
    by_id_desc, _ = await names(api, name="sort-*", sort_by="id:desc")
    assert by_id_desc == ["sort-c", "sort-a", "sort-b"]


async def test_every_filter_of_the_spec(api: Api) -> None:
    """Filters on id (one or several), name (exact or with `*`), workflow_type,
    workflow_action, sources.type, destinations.type; they combine with AND."""
    first = await api.create("f-backup", workflow_type="maintenance", workflow_action="scan")
    second = await api.create("f-copy", workflow_type="data_exchange", workflow_action="copy")
    await api.create("g-other", workflow_type="maintenance", workflow_action="copy")
    assert (await names(api, id=first["id"]))[0] == ["f-backup"]
    assert (await names(api, id=f"{first['id']},{second['id']}"))[0] == ["f-backup", "f-copy"]
    assert (await names(api, name="f-copy"))[0] == ["f-copy"]
    assert (await names(api, name="f-*"))[0] == ["f-backup", "f-copy"]
    assert (await names(api, name="*copy"))[0] == ["f-copy"]
    assert (await names(api, name="f_*"))[0] == [], "`_` is literal, not a LIKE wildcard"
    assert (await names(api, name="f-"))[0] == [], "without `*` the name matches exactly"
    assert (await names(api, workflow_type="maintenance"))[0] == ["f-backup", "g-other"]
    assert (await names(api, workflow_action="copy"))[0] == ["f-copy", "g-other"]
    both = await names(api, workflow_type="maintenance", workflow_action="copy")
    assert both == (["g-other"], 1)
    # taskd's tasks have no sources or destinations: a type filter matches none of them,
    # and an empty one filters nothing.
    assert await names(api, **{"sources.type": "s3"}) == ([], 0)
    assert await names(api, **{"destinations.type": "tape"}) == ([], 0)
    assert (await names(api, **{"sources.type": ""}))[1] == 4


async def test_created_at_and_updated_at_filters_with_prefixes(api: Api) -> None:
    """created_at / updated_at take an instant, exactly or after `>=`, `<=`, `>`, `<`."""
    old = await api.create("t-old")
    api.clock.jump(timedelta(hours=2))
    new = await api.create("t-new")
    between = rfc3339(datetime.now(UTC) + timedelta(hours=1))
    assert (await names(api, name="t-*", created_at=f">={between}"))[0] == ["t-new"]
    assert (await names(api, name="t-*", created_at=f"<={between}"))[0] == ["t-old"]
    assert (await names(api, name="t-*", created_at=f">{old['updated_at']}"))[0] == ["t-new"]
    assert (await names(api, name="t-*", created_at=f"<{new['updated_at']}"))[0] == ["t-old"]
    assert (await names(api, name="t-*", created_at=old["updated_at"]))[0] == ["t-old"]
    api.clock.jump(timedelta(hours=2))
    assert (await api.unix.put(f"/api/v2/tasks/{old['id']}", {"comment": "x"})).status == 200
    later = rfc3339(datetime.now(UTC) + timedelta(hours=3))
    assert (await names(api, name="t-*", updated_at=f">={later}"))[0] == ["t-old"]
    assert (await names(api, name="t-*", updated_at=f"<{later}"))[0] == ["t-new"]
    assert (await names(api, name="t-*", created_at=">=2000-01-01"))[1] == 2, "a date alone"


async def test_create_show_update_destroy(api: Api) -> None:
    """A task's life: create (201), show by id and by name, update (version + 1; a stale
    version is 409), destroy (204), then 404."""
    created = await api.create(
        "life", comment="first", schedules=QUIET_SCHEDULE, options={"priority": 3}
    )
    assert created["version"] == 1
    assert created["comment"] == "first"
    assert created["source"] == "api"
    assert created["user"] == created["created_by"] == "unix-socket"
    assert created["options"]["priority"] == 3
    assert created["next_run_at"].endswith("-01-01T00:00:00Z")
    by_id = await api.unix.get(f"/api/v2/tasks/{created['id']}")
    by_name = await api.unix.get("/api/v2/tasks/life")
    assert by_id.json == by_name.json
    assert by_id.json["id"] == created["id"]

    updated = await api.unix.put(f"/api/v2/tasks/{created['id']}", {"comment": "second"})
    assert updated.status == 200
    assert updated.json["comment"] == "second"
    assert updated.json["version"] == 2
    assert updated.json["options"]["priority"] == 3, "fields not given are kept"
    stale = await api.unix.put("/api/v2/tasks/life", {"comment": "third", "version": 2})
    assert stale.status == 409
    assert "version" in stale.json["messages"][0]
    fresh = await api.unix.put("/api/v2/tasks/life", {"comment": "third", "version": 3})
    assert (fresh.status, fresh.json["version"]) == (200, 3)
    renamed = await api.unix.put("/api/v2/tasks/life", {"name": "life-2"})
    assert renamed.json["name"] == "life-2"
    assert (await api.unix.get("/api/v2/tasks/life")).status == 404

    destroyed = await api.unix.delete(f"/api/v2/tasks/{created['id']}")
    assert (destroyed.status, destroyed.body) == (204, b"")
    assert (await api.unix.get(f"/api/v2/tasks/{created['id']}")).status == 404
    assert (await api.unix.delete(f"/api/v2/tasks/{created['id']}")).status == 404


async def test_a_taken_name_is_a_conflict(api: Api) -> None:
    """Creating or renaming onto a name that exists is 409; nothing changes."""
    await api.create("taken")
    other = await api.create("other")
    again = await api.unix.post(
        "/api/v2/tasks", {"name": "taken", "task_module": "sleep", "task_params": {"seconds": 0}}
    )
    assert again.status == 409
    renamed = await api.unix.put(f"/api/v2/tasks/{other['id']}", {"name": "taken"})
    assert renamed.status == 409
    assert (await api.task(other["id"])).name == "other"


async def test_run_starts_an_execution_with_the_body_as_trigger_metadata(api: Api) -> None:
    """`run` answers the execution id; the body becomes the trigger metadata."""
    task = await api.create("runner")
    run = await api.unix.put(f"/api/v2/tasks/{task['id']}/action/run", {"ticket": "OPS-1"})
    assert run.status == 200
    execution_id = run.json["execution_id"]
    await api.wait_execution(execution_id, "done")
    execution = (await api.unix.get(f"/api/v2/executions/{execution_id}")).json
    assert execution["trigger"] == "manual"
    assert execution["trigger_metadata"] == {"ticket": "OPS-1"}
    shown = (await api.unix.get(f"/api/v2/tasks/{task['id']}")).json
    assert shown["status"] == "done"
    assert shown["last_execution"]["id"] == execution_id
    no_body = await api.unix.put(f"/api/v2/tasks/{task['id']}/action/run")
    assert no_body.status == 200, "the trigger metadata is optional"


async def test_run_while_running_under_overlap_skip_is_refused(api: Api) -> None:
    """A second `run` while the task runs with overlap `skip` is 409 data_management_error;
    with overlap `parallel` it starts a second execution."""
    skip = await api.create("skipper", **LONG)
    assert (await api.unix.put(f"/api/v2/tasks/{skip['id']}/action/run")).status == 200
    await api.wait_status(skip["id"], "running")
    refused = await api.unix.put(f"/api/v2/tasks/{skip['id']}/action/run")
    assert refused.status == 409
    assert_data_management_error(refused.json, 409, "skip")
    assert len(api.runner.running_for_task(int(skip["id"]))) == 1

    parallel = await api.create("parallel", options={"overlap": "parallel"}, **LONG)
    for _ in range(2):
        assert (await api.unix.put(f"/api/v2/tasks/{parallel['id']}/action/run")).status == 200
    await api.wait_task(
        parallel["id"], lambda _: len(api.runner.running_for_task(int(parallel["id"]))) == 2
    )


async def test_pause_resume_stop_and_force_stop(api: Api) -> None:
    """pause -> paused (a second pause is 409), resume -> running, stop -> canceled with
    the state saved, resume after a stop continues in a new execution, force_stop ->
    canceled at once."""
    task = await api.create("actions", **LONG)
    path = f"/api/v2/tasks/{task['id']}/action"
    first = (await api.unix.put(f"{path}/run")).json["execution_id"]
    await api.wait_status(task["id"], "running")
    paused = await api.unix.put(f"{path}/pause")
    assert paused.status == 200
    assert first in paused.json["msg"]
    await api.wait_status(task["id"], "paused")
    again = await api.unix.put(f"{path}/pause")
    assert again.status == 409
    assert_data_management_error(again.json, 409, "paused already")
    assert (await api.unix.put(f"{path}/resume")).status == 200
    await api.wait_status(task["id"], "running")

    assert (await api.unix.put(f"{path}/stop")).status == 200
    await api.wait_execution(first, "canceled")
    stopped = await api.task(task["id"])
    assert stopped.state is not None
    assert "done_steps" in stopped.state

    resumed = await api.unix.put(f"{path}/resume")
    assert resumed.status == 200
    executions = (await api.unix.get(f"/api/v2/tasks/{task['id']}/executions")).json
    newest = executions["executions"][0]
    assert newest["id"] != first
    assert newest["trigger"] == "resume"
    await api.wait_status(task["id"], "running")
    assert (await api.unix.put(f"{path}/force_stop")).status == 200
    await api.wait_execution(newest["id"], "canceled")
    forced = (await api.unix.get(f"/api/v2/executions/{newest['id']}")).json
    assert "force stopped" in forced["status_msg"]


@pytest.mark.parametrize("verb", ["pause", "stop", "force_stop", "resume"])
async def test_actions_with_nothing_running_are_refused(api: Api, verb: str) -> None:
    """pause / stop / force_stop / resume on a task that does not run: 409
    data_management_error, and nothing starts."""
    task = await api.create(f"idle-{verb}")
    refused = await api.unix.put(f"/api/v2/tasks/{task['id']}/action/{verb}")
    assert refused.status == 409
    assert_data_management_error(refused.json, 409)
    assert (await api.unix.get(f"/api/v2/tasks/{task['id']}/executions")).json == {"executions": []}


async def test_defer_run_then_run_defer_once(api: Api) -> None:
    """defer_run returns a defer id; run_defer starts it once (trigger `defer`, with the
    metadata given to defer_run); a second use, an unknown id and none at all are refused."""
    task = await api.create("deferred")
    deferred = await api.unix.put(f"/api/v2/tasks/{task['id']}/action/defer_run", {"k": 1})
    assert deferred.status == 200
    defer_id = deferred.json["defer_id"]
    assert len(defer_id) >= 16
    assert (await api.unix.get(f"/api/v2/tasks/{task['id']}/executions")).json[
        "executions"
    ] == [], "nothing runs before run_defer"
    started = await api.unix.put("/api/v2/tasks/-/action/run_defer", params={"defer_id": defer_id})
    assert started.status == 200
    execution_id = started.json["execution_id"]
    await api.wait_execution(execution_id, "done")
    execution = (await api.unix.get(f"/api/v2/executions/{execution_id}")).json
    assert (execution["trigger"], execution["trigger_metadata"]) == ("defer", {"k": 1})

    again = await api.unix.put("/api/v2/tasks/-/action/run_defer", params={"defer_id": defer_id})
    assert again.status == 409
    assert_data_management_error(again.json, 409, "used already")
    unknown = await api.unix.put("/api/v2/tasks/-/action/run_defer", params={"defer_id": "x" * 22})
    assert unknown.status == 404
    assert_data_management_error(unknown.json, 404, "unknown")
    missing = await api.unix.put("/api/v2/tasks/-/action/run_defer")
    assert missing.status == 400
    assert "defer_id" in missing.json["details"]
    executions = (await api.unix.get(f"/api/v2/tasks/{task['id']}/executions")).json
    assert len(executions["executions"]) == 1


async def test_an_expired_defer_id_is_refused(api: Api) -> None:
    """A defer id expires after 7 days; using it later is 409 and starts nothing."""
    task = await api.create("expiring")
    defer_id = (await api.unix.put(f"/api/v2/tasks/{task['id']}/action/defer_run")).json["defer_id"]
    api.clock.jump(timedelta(days=7, seconds=1))
    expired = await api.unix.put("/api/v2/tasks/-/action/run_defer", params={"defer_id": defer_id})
    assert expired.status == 409
    assert_data_management_error(expired.json, 409, "expired")
    assert (await api.unix.get(f"/api/v2/tasks/{task['id']}/executions")).json == {"executions": []}


async def test_a_defer_id_of_a_deleted_task_is_gone(api: Api) -> None:
    """Deleting a task drops its deferred runs: their ids become unknown (404)."""
    task = await api.create("deleted-later")
    defer_id = (await api.unix.put(f"/api/v2/tasks/{task['id']}/action/defer_run")).json["defer_id"]
    assert (await api.unix.delete(f"/api/v2/tasks/{task['id']}")).status == 204
    gone = await api.unix.put("/api/v2/tasks/-/action/run_defer", params={"defer_id": defer_id})
    assert gone.status == 404


async def test_config_tasks_run_but_cannot_be_edited_or_deleted(api: Api) -> None:
    """A task from the config file can be run, but PUT and DELETE are 409 naming the file
    (in both dialects), and it stays as it was."""
    before = await api.unix.get("/api/v2/tasks/from-config")
    assert before.json["source"] == "config"
    run = await api.unix.put("/api/v2/tasks/from-config/action/run")
    assert run.status == 200
    await api.wait_execution(run.json["execution_id"], "done")
    config_file = str(api.config_path)
    edit = await api.unix.put("/api/v2/tasks/from-config", {"comment": "changed"})
    assert edit.status == 409
    assert config_file in edit.json["messages"][0]
    delete = await api.unix.delete("/api/v2/tasks/from-config")
    assert delete.status == 409
    assert config_file in delete.json["messages"][0]
    task_id = before.json["id"]
    v1_delete = await api.unix.delete(f"/api/v1/task/{task_id}")
    assert v1_delete.status == 409
    assert config_file in v1_delete.json["description"]
    v1_update = await api.unix.post(
        "/api/v1/task",
        [{"task": {"_id": int(task_id), "version": 2, "description": "changed"}}],
    )
    assert v1_update.status == 409
    assert config_file in v1_update.json["description"]
    after = await api.task(task_id)
    assert (after.version, after.spec.get("description")) == (1, "")


@pytest.mark.slow
async def test_resume_continues_an_execution_a_crash_interrupted(tmp_path: Path) -> None:
    """After a crash (an execution left `running` with saved state), the restarted daemon
    marks it `error`/interrupted; `resume` then starts a new execution that continues from
    the saved state."""
    async with open_api(tmp_path) as api:
        task = await api.create("crashy", task_module="sleep", task_params={"seconds": 0.2})
        execution_id = await _run_to_end(api, task["id"])
    # What kill -9 leaves behind: the execution still `running`, its state saved.
    with closing(sqlite3.connect(tmp_path / "state" / "taskd.db")) as cx, cx:
        cx.execute(
            "UPDATE executions SET status = 'running', finished_at = NULL WHERE id = ?",
            (int(execution_id),),
        )
        cx.execute(
            "UPDATE tasks SET status = 'running', state = ? WHERE id = ?",
            (json.dumps({"done_steps": 7}), int(task["id"])),
        )
    async with open_api(tmp_path) as api:
        interrupted = (await api.unix.get(f"/api/v2/executions/{execution_id}")).json
        assert (interrupted["status"], interrupted["status_msg"]) == ("error", "interrupted")
        resumed = await api.unix.put(f"/api/v2/tasks/{task['id']}/action/resume")
        assert resumed.status == 200, resumed
        await api.wait_status(task["id"], "done")
        executions = (await api.unix.get(f"/api/v2/tasks/{task['id']}/executions")).json
        newest = executions["executions"][0]
        assert newest["trigger"] == "resume"
        log = (
            await api.unix.get(
                f"/api/v2/tasks/{task['id']}/log", params={"execution_id": newest["id"]}
            )
        ).json["entries"]
        assert any("resuming after step 7" in entry["msg"] for entry in log)
        assert api.failures() == []


async def _run_to_end(api: Api, task_id: str) -> str:
    reply = await api.unix.put(f"/api/v2/tasks/{task_id}/action/run")
    execution_id: str = reply.json["execution_id"]
    await api.wait_execution(execution_id, "done")
    return execution_id


async def test_destroying_a_running_task_stops_it_first(api: Api) -> None:
    """DELETE of a running task force-stops its execution, then removes the task with its
    executions and log (204); nothing of it is left running or stored."""
    task = await api.create("doomed", **LONG)
    assert (await api.unix.put(f"/api/v2/tasks/{task['id']}/action/run")).status == 200
    await api.wait_status(task["id"], "running")
    deleted = await api.unix.delete(f"/api/v2/tasks/{task['id']}")
    assert deleted.status == 204
    assert api.runner.running_for_task(int(task["id"])) == []
    assert (await api.unix.get(f"/api/v2/tasks/{task['id']}")).status == 404
    assert (await api.unix.get(f"/api/v2/tasks/{task['id']}/executions")).status == 404
    tables = await api.snapshot()
    assert [row for row in tables["executions"] if row[1] == int(task["id"])] == []
    assert [row for row in tables["log_entries"] if row[0] == int(task["id"])] == []


async def test_tasks_named_with_digits_are_found_by_name(api: Api) -> None:
    """`{task_id}` is an id or a name: a name of digits that is no id (leading zeros, past
    SQLite's integers) still finds its task; an id finds its task first."""
    for name in ("0042", "9" * 25):
        created = await api.create(name)
        shown = await api.unix.get(f"/api/v2/tasks/{name}")
        assert (shown.status, shown.json["id"]) == (200, created["id"]), name
    by_id = await api.unix.get("/api/v2/tasks/1")
    assert by_id.json["name"] == "from-config"


async def test_a_task_sent_back_as_it_was_read_changes_nothing(api: Api) -> None:
    """PUT of the JSON a GET returned keeps the schedule's due time and the version."""
    task = await api.create("roundtrip", schedules=[{"cron": "0 3 * * *"}])
    shown = (await api.unix.get(f"/api/v2/tasks/{task['id']}")).json
    assert "next_run_at" in shown
    reply = await api.unix.put(f"/api/v2/tasks/{task['id']}", {
        key: value for key, value in shown.items() if key != "version"
    })  # fmt: skip
    assert reply.status == 200, str(reply)
    stored = await api.task(task["id"])
    assert "next_run_at" not in stored.spec, "the computed due time did not become a one-shot"
    assert stored.version == 1
    assert reply.json["next_run_at"] == shown["next_run_at"]


async def test_a_wrong_version_is_refused_naming_what_was_sent_and_what_is_expected(
    api: Api,
) -> None:
    """A version other than current + 1 is 409, saying both (issue 9, item 5: it said
    "not 98" for a sent 99), in the same words as v1."""
    task = await api.create("versioned")
    await api.unix.put(f"/api/v2/tasks/{task['id']}", {"comment": "two"})
    refused = await api.unix.put(f"/api/v2/tasks/{task['id']}", {"comment": "x", "version": 99})
    assert refused.status == 409
    assert refused.json["messages"] == [
        f"task {task['id']} is at version 2: send version 3, not 99"
    ]
    assert (await api.task(task["id"])).version == 2
