"""Every response of both dialects validates against its original spec (openapi-core).

v2 is checked against `nodeum-openapi.json` (server `{url}/api/v2`), v1 against
`fylr-openapi.json` under `/api/v1`; requests too, except those that break the spec on
purpose (listed in `meant_invalid`). Each scenario drives every route of its dialect over
TCP with an all-scope key, in success and error cases, and validates all exchanges at the
end. The specs are patched only where they cannot be validated against (see
`api_fixtures.nodeum_spec_for_validation` and `fylr_spec_for_validation`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_fixtures import QUIET_SCHEDULE, Api, Reply, SpecCheck, spec_problems
from multidict import MultiDict

LONG = {"task_module": "sleep", "task_params": {"seconds": 30, "steps": 300}}
QUICK = {"task_module": "sleep", "task_params": {"seconds": 0}}
FYLR_READ_ONLY = {
    "run_canceled_at",
    "run_finished_at",
    "run_started_at",
    "state",
    "status",
    "status_msg",
    "status_percent",
}


def rfc3339(instant: datetime) -> str:
    """An instant as RFC 3339 UTC with a Z."""
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.slow  # openapi-core validates every exchange (CPU)
async def test_every_v2_exchange_conforms_to_the_nodeum_spec(api: Api) -> None:
    """Create, list (paging, sort, every filter), show, update, destroy and every action,
    with their 201/200/204 answers and 404, 409, 422 errors, all validate against Nodeum."""
    c = await api.tcp("all")
    meant_invalid: list[Reply] = []
    long_body = {
        "name": "conf-long",
        "comment": "runs until stopped",
        "workflow_type": "maintenance",
        "workflow_action": "scan",
        "options": {"priority": 2, "overlap": "skip"},
        "metadata": {"task": {"owner": "ops"}, "files": {"a": "b"}},
        "schedules": QUIET_SCHEDULE,
        **LONG,
    }
    created = await c.post("/api/v2/tasks", long_body)
    assert created.status == 201, created
    long_id = created.json["id"]
    quick = await c.post("/api/v2/tasks", {"name": "conf-quick", **QUICK})
    assert quick.status == 201, quick
    quick_id = quick.json["id"]
    wrong_type = await c.post("/api/v2/tasks", {"name": 5, **QUICK})
    assert wrong_type.status == 422
    meant_invalid.append(wrong_type)
    bad_schedule = await c.post(
        "/api/v2/tasks", {"name": "conf-bad", **QUICK, "schedules": [{"hours": [25]}]}
    )
    assert bad_schedule.status == 422

    since = rfc3339(datetime.now(UTC) - timedelta(hours=1))
    for params in (
        {},
        {"limit": "1", "offset": "1"},
        {"sort_by": "name:desc|id"},
        {"id": f"{long_id},{quick_id}"},
        {"name": "conf-*"},
        {"workflow_type": "maintenance", "workflow_action": "scan"},
        {"sources.type": "s3"},
        {"destinations.type": "tape"},
        {"created_at": f">={since}", "updated_at": f"<={rfc3339(datetime.now(UTC))}"},
        {"all": "true"},
    ):
        listed = await c.get("/api/v2/tasks", params=params)
        assert listed.status == 200, listed

    for ref in (long_id, "conf-long"):
        assert (await c.get(f"/api/v2/tasks/{ref}")).status == 200
    assert (await c.get("/api/v2/tasks/no-such-task")).status == 404
    assert (await c.put(f"/api/v2/tasks/{long_id}", {"comment": "edited"})).status == 200
    assert (await c.put(f"/api/v2/tasks/{long_id}", {"schedules": [{"minutes": []}]})).status == 422
    assert (await c.put("/api/v2/tasks/no-such-task", {"comment": "x"})).status == 404

    run = await c.put(f"/api/v2/tasks/{quick_id}/action/run", {"by": "conformance"})
    assert run.status == 200, run
    await api.wait_status(quick_id, "done")
    assert (await c.get(f"/api/v2/tasks/{quick_id}")).json["last_execution"]["status"] == "done"

    assert (await c.put(f"/api/v2/tasks/{long_id}/action/run")).status == 200
    await api.wait_status(long_id, "running")
    assert (await c.put(f"/api/v2/tasks/{long_id}/action/run")).status == 409  # overlap skip
    assert (await c.put(f"/api/v2/tasks/{long_id}/action/pause")).status == 200
    await api.wait_status(long_id, "paused")
    assert (await c.get(f"/api/v2/tasks/{long_id}")).status == 200
    assert (await c.put(f"/api/v2/tasks/{long_id}/action/resume")).status == 200
    assert (await c.put(f"/api/v2/tasks/{long_id}/action/stop")).status == 200
    await api.wait_status(long_id, "canceled")
    assert (await c.put(f"/api/v2/tasks/{long_id}/action/resume")).status == 200  # continues
    await api.wait_status(long_id, "running")
    assert (await c.put(f"/api/v2/tasks/{long_id}/action/force_stop")).status == 200
    await api.wait_status(long_id, "canceled")
    for verb in ("pause", "stop", "force_stop", "resume"):
        refused = await c.put(f"/api/v2/tasks/{quick_id}/action/{verb}")
        assert refused.status == 409, refused

    deferred = await c.put(f"/api/v2/tasks/{quick_id}/action/defer_run", {"why": "later"})
    assert deferred.status == 200, deferred
    defer_id = deferred.json["defer_id"]
    started = await c.put("/api/v2/tasks/-/action/run_defer", params={"defer_id": defer_id})
    assert started.status == 200, started
    again = await c.put("/api/v2/tasks/-/action/run_defer", params={"defer_id": defer_id})
    assert again.status == 409
    unknown = await c.put("/api/v2/tasks/-/action/run_defer", params={"defer_id": "nope"})
    assert unknown.status == 404
    assert (await c.put("/api/v2/tasks/-/action/run_defer")).status == 400
    assert (await c.put("/api/v2/tasks/no-such-task/action/run")).status == 404
    not_object = await c.put(f"/api/v2/tasks/{quick_id}/action/run", [1, 2])
    assert not_object.status == 422
    meant_invalid.append(not_object)
    await api.wait_status(quick_id, "done")

    assert (await c.delete(f"/api/v2/tasks/{long_id}")).status == 204
    assert (await c.delete(f"/api/v2/tasks/{long_id}")).status == 404

    assert len(api.exchanges) > 40
    assert spec_problems(api.exchanges, meant_invalid=meant_invalid) == []


@pytest.mark.slow  # openapi-core validates every exchange (CPU)
async def test_every_v1_exchange_conforms_to_the_fylr_spec(api: Api) -> None:
    """GET/POST /task, GET/DELETE /task/{id}, cancel, log and modules (and the alias), in
    success and error cases, all validate against fylr under /api/v1."""
    c = await api.tcp("all")
    meant_invalid: list[Reply] = []
    assert (await c.get("/api/v1/task")).json == []
    soon = rfc3339(datetime.now(UTC) + timedelta(seconds=0.2))
    created = await c.post(
        "/api/v1/task",
        [
            {"task": {"description": "long", "next_run_at": soon, **LONG}},
            {"task": {"description": "quick", "next_run_at": soon, **QUICK}},
        ],
    )
    assert created.status == 200, created
    long_id, quick_id = (item["task"]["_id"] for item in created.json)
    await api.wait_status(long_id, "running")
    await api.wait_status(quick_id, "done")

    assert (await c.get("/api/v1/task")).status == 200
    shown = await c.get(f"/api/v1/task/{quick_id}")
    assert shown.status == 200
    # What fylr marks readOnly is left out: the spec says a request should not carry it.
    task = {k: v for k, v in shown.json["task"].items() if k not in FYLR_READ_ONLY}
    update = {"task": {**task, "description": "edited", "version": task["version"] + 1}}
    assert (await c.post("/api/v1/task", [update])).status == 200
    stale = await c.post("/api/v1/task", [update])  # the same version again
    assert stale.status == 409
    wrong_type = await c.post("/api/v1/task", [{"task": {"task_module": 5}}])
    assert wrong_type.status == 400
    meant_invalid.append(wrong_type)
    assert (await c.get("/api/v1/task/999999")).status == 404

    assert (await c.post(f"/api/v1/task/{long_id}/cancel")).status == 200
    await api.wait_status(long_id, "canceled")
    assert (await c.post(f"/api/v1/task/{long_id}/cancel")).status == 409  # nothing runs
    assert (await c.post("/api/v1/task/999999/cancel")).status == 404

    log = await c.get(f"/api/v1/task/{quick_id}/log", params={"offset": "0", "limit": "5"})
    assert log.status == 200
    assert log.json, "a finished sleep task logs how it ended"
    assert (await c.get("/api/v1/task/999999/log")).status == 404
    assert (await c.get("/api/v1/task/modules")).status == 200
    assert (await c.get("/api/v1/task/module")).status == 200

    assert (await c.delete(f"/api/v1/task/{quick_id}")).json == {"acknowledged": "ok"}
    assert (await c.delete(f"/api/v1/task/{quick_id}")).status == 404

    assert spec_problems(api.exchanges, meant_invalid=meant_invalid) == []
    # fylr types its times as `format: datetime`, a format validators do not know (so they
    # skip it): check here that every time v1 renders is RFC 3339 UTC.
    times = [
        value
        for reply in api.exchanges
        if reply.path.startswith("/api/v1/") and reply.status == 200 and reply.body
        for value in _times(reply.json)
    ]
    assert len(times) > 20
    assert [t for t in times if not RFC3339_UTC.fullmatch(t)] == []


RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")
TIME_FIELDS = {
    "created_at",
    "updated_at",
    "next_run_at",
    "run_started_at",
    "run_finished_at",
    "run_canceled_at",
    "timestamp",
}


def _times(node: Any) -> list[str]:
    """Every value of a time field anywhere in `node`."""
    if isinstance(node, list):
        return [t for item in node for t in _times(item)]
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in TIME_FIELDS]
        return found + [t for k, v in node.items() if k not in TIME_FIELDS for t in _times(v)]
    return []


def fake_reply(method: str, path: str, status: int, body: Any) -> Reply:
    """A reply as if taskd had answered `body` (to check the checker)."""
    import json

    return Reply(
        method=method,
        url=path,
        path=path,
        query=MultiDict(),
        request_body=b"",
        request_headers={"Authorization": "Bearer x"},
        status=status,
        headers={"Content-Type": "application/json"},
        body=json.dumps(body).encode(),
        via="tcp",
    )


@pytest.mark.parametrize(
    ("dialect", "reply"),
    [
        ("v2", fake_reply("GET", "/api/v2/tasks/1", 200, {"id": 1})),
        ("v2", fake_reply("GET", "/api/v2/tasks", 200, {"count": "1", "tasks": []})),
        ("v2", fake_reply("POST", "/api/v2/tasks", 422, {"details": {"name": ["x"]}})),
        ("v2", fake_reply("PUT", "/api/v2/tasks/1/action/run", 409, {"code": "409"})),
        ("v2", fake_reply("PUT", "/api/v2/tasks/1", 404, {"messages": "not found"})),
        ("v1", fake_reply("GET", "/api/v1/task/1", 200, {"task": {"status": "queued"}})),
        ("v1", fake_reply("GET", "/api/v1/task/1", 200, {"task": {"_id": "1"}})),
        ("v1", fake_reply("DELETE", "/api/v1/task/1", 200, {"acknowledged": "yes"})),
        ("v1", fake_reply("GET", "/api/v1/task/1", 404, {"message": "not found"})),
        ("v1", fake_reply("GET", "/api/v1/task/module", 200, {"modules": []})),
    ],
)
def test_the_checker_refuses_answers_that_break_the_spec(dialect: str, reply: Reply) -> None:
    """The harness is not vacuous: answers that break the spec (or the error shape) fail."""
    assert SpecCheck(dialect).response_errors(reply) != []


# About 3 s: openapi-core compiles taskd's whole document (every zone name, every module).
@pytest.mark.slow
async def test_issue_13_routes_and_bodies_conform_to_taskds_own_document(api: Api) -> None:
    """The preview routes, whoami, owners' `all`, and task bodies of every module (both
    dialects) validate, request and response, against the document taskd serves."""
    c = await api.tcp("all")
    start = len(api.exchanges)
    created = await c.post(
        "/api/v2/tasks",
        {
            "name": "mover",
            "task_module": "files",
            "workflow_type": "data_migration",
            "workflow_action": "copy",
            "task_params": {
                "sources": [{"type": "local", "path": "/srv/in"}],
                "destination": {"type": "local", "path": "/srv/out"},
            },
            "options": {
                "file_checksum": "xxhash64",
                "parallel": 2,
                "conflict_resolution": "rename",
            },
            "schedules": [
                {"cron": "30 2 * * mon-fri", "timezone": "Europe/Berlin"},
                {"hours": [3], "minutes": [0], "weekdays": ["sat"], "dst_gap": "skip"},
                {"interval_sec": 3600, "start_at": "2026-01-01T00:00:00Z"},
            ],
        },
    )
    assert created.status == 201, str(created)
    task_id = created.json["id"]
    for module, params in (
        ("shell", {"argv": ["true"], "env": {"A": "1"}}),
        ("http", {"url": "http://127.0.0.1:9/", "expect_status": [200]}),
        ("python", {"target": "json:dumps"}),
    ):
        reply = await c.post(
            "/api/v2/tasks", {"name": f"m-{module}", "task_module": module, "task_params": params}
        )
        assert reply.status == 201, str(reply)
    updated = await c.put(f"/api/v2/tasks/{task_id}", {"comment": "moved", "enabled": False})
    assert updated.status == 200, str(updated)
    v1 = await c.post(
        "/api/v1/task",
        [{"task": {"task_module": "sleep", "task_params": {"seconds": 0}, "description": "x"}}],
    )
    assert v1.status == 200, str(v1)
    await c.get(f"/api/v2/tasks/{task_id}/next_runs?count=5&after=2026-03-27T00:00:00Z")
    await c.get("/api/v2/tasks/999999/next_runs")
    preview = {
        "schedules": [{"hours": [2], "minutes": [30]}],
        "count": 3,
        "after": "2026-03-28T00:00:00Z",
        "timezone": "Europe/Berlin",
    }
    ok = await c.post("/api/v2/schedules/preview", preview)
    assert ok.status == 200, str(ok)
    assert ok.json["next_runs"][1]["dst"] == "gap_shifted", str(ok)
    await c.get("/api/v2/whoami")
    await c.get("/api/v2/tasks?all=true&sort_by=name:desc|id&id=1,2&created_at=>=2020-01-01")
    await c.get("/api/v1/task?all=true&limit=5")
    stranger = await api.tcp(None, authorization="Bearer not-a-key")
    await stranger.get("/api/v2/whoami")
    assert spec_problems(api.exchanges[start:], dialect="taskd") == []
    # Refused on purpose: only the answers are checked.
    start = len(api.exchanges)
    refused = [
        await c.get(f"/api/v2/tasks/{task_id}/next_runs?count=0"),
        await c.post("/api/v2/schedules/preview", {"schedules": [{"cron": "0 0 31 2 *"}]}),
        await c.post("/api/v2/schedules/preview", {"schedules": [{"hours": [24]}], "count": 0}),
        await c.post("/api/v2/tasks", {"name": "bad", "task_module": "files", "task_params": {}}),
    ]
    assert [reply.status for reply in refused] == [400, 422, 422, 422]
    assert spec_problems(api.exchanges[start:], meant_invalid=refused, dialect="taskd") == []
