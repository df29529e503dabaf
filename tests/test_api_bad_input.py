"""Bad input, route by route, in both dialects: never a 500, never a change to stored data.

Each case sends one bad request and checks the status, the dialect's error shape (v2:
`model_error` with `messages` and `details` keyed by attribute path; v1: `{"code",
"statuscode", "description", "errors"}`), the attribute the error names, and that every
table of the database is as it was before (a snapshot read by a separate connection).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import Api, Reply, open_api

MAX_BODY = 65_536  # api.max_body_bytes of the harness
QUICK = {"task_module": "sleep", "task_params": {"seconds": 0}}
VALID = {"name": "fresh", **QUICK}
TASK = "/api/v2/tasks/1"
V1_TASK = "/api/v1/task/1"


@dataclass(frozen=True)
class Case:
    """One bad request and what must come back."""

    method: str
    path: str
    status: int
    body: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    names: str | None = None  # the attribute (v2 details key / v1 error path) named

    @property
    def v1(self) -> bool:
        """Whether the route is of the fylr dialect."""
        return self.path.startswith("/api/v1/")

    def __str__(self) -> str:
        shown = (self.body or b"")[:60]
        return f"{self.method} {self.path} {self.params or ''} {shown!r}"


def j(value: Any) -> bytes:
    """`value` as a JSON body."""
    return json.dumps(value).encode()


V2_BODY_ROUTES = [("POST", "/api/v2/tasks"), ("PUT", TASK)]
V2_ACTION_BODY_ROUTES = [("PUT", f"{TASK}/action/run"), ("PUT", f"{TASK}/action/defer_run")]
ALL_BODY_ROUTES = [*V2_BODY_ROUTES, *V2_ACTION_BODY_ROUTES, ("POST", "/api/v1/task")]

MALFORMED = [
    b'{"name": ',
    b"{'name': 'x'}",
    b'{"name": "x",}',
    b"\xff\xfe{}",  # not UTF-8
    b'{"name": NaN}',
    b'{"name": Infinity}',
    b'{"name": ' + b"1" * 5000 + b"}",  # more digits than Python converts
    b"[" * 5000 + b"]" * 5000,  # nested past the recursion limit
    j({"frontend_prefs": json.loads('{"a":' * 70 + "1" + "}" * 70)}),  # nested too deep
]


def malformed_cases() -> list[Case]:
    """Bodies that are not JSON (or not JSON Python should read), on every body route."""
    return [
        Case(method, path, 400, body=body, names="base" if not path.startswith("/api/v1") else None)
        for method, path in ALL_BODY_ROUTES
        for body in MALFORMED
    ]


def not_object_cases() -> list[Case]:
    """Bodies of the wrong JSON kind: v2 wants an object (422), v1 an array (400)."""
    cases = [
        Case(method, path, 422, body=j(value), names="base")
        for method, path in V2_BODY_ROUTES
        for value in ([VALID], "task", 42, True, None)
    ]
    cases += [
        Case(method, path, 422, body=j(value), names="base")
        for method, path in V2_ACTION_BODY_ROUTES
        for value in ([1], "metadata", 42, False)  # (null is "no body": allowed there)
    ]
    cases += [
        Case("POST", "/api/v1/task", 400, body=j(value), names="")
        for value in ({"task": QUICK}, "task", 42, None)
    ]
    cases += [
        Case("POST", "/api/v1/task", 400, body=j([item]), names="[0]")
        for item in ("task", 42, None, [], {"_user": {}}, {"task": "x"})
    ]
    return cases


# (fields merged into a valid body, the attribute path the error names)
INVALID_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"name": 5}, "name"),
    ({"name": ""}, "name"),
    ({"name": "with space"}, "name"),
    ({"comment": 5}, "comment"),
    ({"task_module": "nonexistent"}, "task_module"),
    ({"task_params": "x"}, "task_params"),
    ({"task_params": {"seconds": "x"}}, "task_params.seconds"),
    ({"task_params": {"seconds": 1, "bogus": 1}}, "task_params.bogus"),
    ({"task_timeout_sec": -1}, "task_timeout_sec"),
    ({"task_timeout_sec": 1.5}, "task_timeout_sec"),
    ({"options": {"priority": "high"}}, "options.priority"),
    ({"options": {"overlap": "sometimes"}}, "options.overlap"),
    ({"options": {"retry_delay_sec": 0}}, "options.retry_delay_sec"),
    ({"workflow_type": "nonsense"}, "workflow_type"),
    ({"metadata": {"files": {"a": 1}}}, "metadata.files.a"),
    ({"email": {"recipients": [{"email": "nope"}]}}, "email.recipients[0].email"),
    ({"next_run_at": "tomorrow"}, "next_run_at"),
    ({"next_run_at": "0001-01-01T00:00:00+14:00"}, "next_run_at"),  # before year 1 in UTC
    ({"next_run_at": "9999-12-31T23:59:59-14:00"}, "next_run_at"),  # after year 9999 in UTC
    (
        {"schedules": [{"interval_sec": 60, "start_at": "9999-12-31T23:59:59-14:00"}]},
        "schedules[0].start_at",
    ),
    ({"schedules": [{"cron": "0 0 30 2 *"}]}, "schedules[0].cron"),  # never fires
    ({"schedules": [{"cron": "0 0 31 4,6,9,11 *"}]}, "schedules[0].cron"),  # never fires
    ({"schedules": [{"interval_sec": 60 + i} for i in range(101)]}, "schedules"),
    ({"bogus": 1}, "bogus"),
    ({"schedules": "daily"}, "schedules"),
    ({"schedules": [{}]}, "schedules[0]"),
    ({"schedules": [{"hours": [25]}]}, "schedules[0].hours[0]"),
    ({"schedules": [{"minutes": ["0"]}]}, "schedules[0].minutes[0]"),
    ({"schedules": [{"weekdays": ["funday"]}]}, "schedules[0].weekdays[0]"),
    ({"schedules": [{"hours": [1], "timezone": "Mars/Base"}]}, "schedules[0].timezone"),
    ({"schedules": [{"cron": "61 * * * *"}]}, "schedules[0].cron"),
    ({"schedules": [{"interval_sec": 0}]}, "schedules[0].interval_sec"),
    ({"schedules": [{"hours": [1], "dst_gap": "jump"}]}, "schedules[0].dst_gap"),
]


def invalid_field_cases() -> list[Case]:
    """Wrong types, unknown fields and invalid schedules, in both dialects' bodies."""
    cases = []
    for fields, name in INVALID_FIELDS:
        cases.append(Case("POST", "/api/v2/tasks", 422, body=j({**VALID, **fields}), names=name))
        if "name" not in fields:  # an update merges over the stored fields
            cases.append(Case("PUT", TASK, 422, body=j(fields), names=name))
        v1_fields = {"description": 5} if name == "comment" else fields
        v1_name = "description" if name == "comment" else name
        cases.append(
            Case(
                "POST",
                "/api/v1/task",
                400,
                body=j(
                    [{"task": {"description": "ok", **QUICK}}, {"task": {**VALID, **v1_fields}}]
                ),
                names=f"[1].task.{v1_name}",
            )
        )
    cases += [
        Case("PUT", TASK, 422, body=j({"version": "2"}), names="version"),
        Case(
            "POST",
            "/api/v1/task",
            400,
            body=j([{"task": {"_id": "x", "version": 2}}]),
            names="[0].task._id",
        ),
        Case(
            "POST",
            "/api/v1/task",
            400,
            body=j([{"task": {"_id": 1.5, "version": 2}}]),
            names="[0].task._id",
        ),
        Case(
            "POST",
            "/api/v1/task",
            400,
            body=j([{"task": {"_id": True, "version": 2}}]),
            names="[0].task._id",
        ),
        Case(
            "POST",
            "/api/v1/task",
            400,
            body=j([{"task": {"_id": 10**30, "version": 2}}]),
            names="[0].task._id",
        ),
        Case(
            "POST",
            "/api/v1/task",
            400,
            body=j([{"task": {"_id": 1, "version": "2"}}]),
            names="[0].task.version",
        ),
    ]
    return cases


def query_cases() -> list[Case]:
    """Query values out of their type or range."""
    cases = []
    for params, name in [
        ({"limit": "-1"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "1_0"}, "limit"),
        ({"limit": " 10"}, "limit"),
        ({"limit": "10 "}, "limit"),
        ({"limit": "+10"}, "limit"),
        ({"limit": "\u0661\u0660"}, "limit"),  # Arabic-Indic digits: int() reads them
        ({"offset": "\uff11"}, "offset"),  # a fullwidth digit
        ({"offset": "0_1"}, "offset"),
        ({"created_at": "0001-01-01T00:00:00+14:00"}, "created_at"),
        ({"updated_at": "<9999-12-31T23:59:59-14:00"}, "updated_at"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"sort_by": "bogus"}, "sort_by"),
        ({"sort_by": "name:up"}, "sort_by"),
        ({"sort_by": "name|task_params"}, "sort_by"),
        ({"id": "abc"}, "id"),
        ({"id": "1,two"}, "id"),
        ({"id": "\u00b2"}, "id"),
        ({"id": "9" * 30}, "id"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"updated_at": ">=2026-13-01"}, "updated_at"),
        ({"all": "maybe"}, "all"),
    ]:
        cases.append(Case("GET", "/api/v2/tasks", 400, params=params, names=name))
    for path in (f"{TASK}/executions", f"{TASK}/log", "/api/v1/task", f"{V1_TASK}/log"):
        for params, name in [
            ({"limit": "-1"}, "limit"),
            ({"limit": "abc"}, "limit"),
            ({"offset": "-1"}, "offset"),
            ({"limit": "1_0"}, "limit"),
            ({"offset": "\u0661"}, "offset"),
        ]:
            v1_name = None if path.startswith("/api/v1") else name
            cases.append(Case("GET", path, 400, params=params, names=v1_name or name))
    for params, name in [
        ({"follow": "maybe"}, "follow"),
        ({"follow": "true", "limit": "0"}, "limit"),
        ({"execution_id": "abc"}, "execution_id"),
        ({"execution_id": "0"}, "execution_id"),
    ]:
        cases.append(Case("GET", f"{TASK}/log", 400, params=params, names=name))
    cases.append(Case("PUT", "/api/v2/tasks/-/action/run_defer", 400, names="defer_id"))
    cases.append(
        Case(
            "PUT",
            "/api/v2/tasks/-/action/run_defer",
            400,
            params={"defer_id": ""},
            names="defer_id",
        )
    )
    return cases


UNKNOWN_REFS = ["999999", "no-such-task", "\u00b2", "9" * 30, "0", "-1"]


def unknown_id_cases() -> list[Case]:
    """Ids and names that name nothing, on every route that takes one."""
    cases = []
    for ref in UNKNOWN_REFS:
        for method, suffix, body in [
            ("GET", "", None),
            ("PUT", "", j({"comment": "x"})),
            ("DELETE", "", None),
            ("GET", "/executions", None),
            ("GET", "/log", None),
            *[
                ("PUT", f"/action/{verb}", None)
                for verb in ("run", "defer_run", "pause", "stop", "force_stop", "resume")
            ],
        ]:
            cases.append(Case(method, f"/api/v2/tasks/{ref}{suffix}", 404, body=body, names="base"))
        for method, suffix in [("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/log")]:
            cases.append(Case(method, f"/api/v1/task/{ref}{suffix}", 404))
        cases.append(Case("GET", f"/api/v2/executions/{ref}", 404, names="base"))
    cases.append(
        Case("PUT", "/api/v2/tasks/-/action/run_defer", 404, params={"defer_id": "unknown"})
    )
    cases.append(Case("GET", f"{TASK}/log", 404, params={"execution_id": "999999"}, names="base"))
    return cases


def oversized_cases() -> list[Case]:
    """A body over api.max_body_bytes, on every body route: 413."""
    big = j({"name": "big", **QUICK, "frontend_prefs": {"blob": "x" * MAX_BODY}})
    big_v1 = j([{"task": {**QUICK, "frontend_prefs": {"blob": "x" * MAX_BODY}}}])
    return [
        Case(
            method,
            path,
            413,
            body=big_v1 if path.startswith("/api/v1") else big,
            names="base" if not path.startswith("/api/v1") else None,
        )
        for method, path in ALL_BODY_ROUTES
    ]


def check_error_shape(case: Case, reply: Reply) -> None:
    """The dialect's error object, with the status, naming `case.names` if given."""
    body = reply.json
    if case.v1:
        assert body["statuscode"] == case.status, reply
        assert body["code"].startswith("error.api."), reply
        assert isinstance(body["description"], str)
        assert body["description"]
        paths = [error["path"] for error in body.get("errors", [])]
        if case.names is not None:
            assert case.names in paths, reply
        return
    if "id" in body:  # data_management_error (a refused deferred run)
        assert body["code"] == case.status, reply
        assert isinstance(body["detail"], str)
        return
    assert isinstance(body["messages"], list)
    assert body["messages"]
    assert all(isinstance(message, str) and message for message in body["messages"])
    details = body["details"]
    assert details, reply
    for errors in details.values():
        assert errors
        assert all(isinstance(error["error"], str) for error in errors), reply
    if case.names is not None:
        assert case.names in details, reply


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """A live API holding a task (id 1) with a finished run, its log, a pending deferred
    run and a config-defined task: something for bad requests to damage."""
    async with open_api(tmp_path, max_body_bytes=MAX_BODY) as served:
        task = await served.create("victim", comment="keep me")
        assert task["id"] == "1"
        run = await served.unix.put(f"{TASK}/action/run", {"seed": True})
        await served.wait_execution(run.json["execution_id"], "done")
        await served.unix.put(f"{TASK}/action/defer_run", {"later": True})
        yield served
        assert not served.failures()


async def send(api: Api, case: Case) -> Reply:
    """Send a case over the trusted socket."""
    headers = {"Content-Type": "application/json"} if case.body is not None else None
    return await api.unix.call(
        case.method, case.path, data=case.body, params=case.params, headers=headers
    )


async def check_cases(api: Api, cases: list[Case]) -> None:
    """Send each case; check status, shape, and that no table changed."""
    before = await api.snapshot()
    problems = []
    for case in cases:
        reply = await send(api, case)
        try:
            assert reply.status == case.status, f"expected {case.status}, got {reply}"
            assert reply.content_type.startswith("application/json"), reply
            check_error_shape(case, reply)
        except AssertionError as error:
            problems.append(f"{case}: {error}")
        if await api.snapshot() != before:
            problems.append(f"{case}: changed the stored data")
            before = await api.snapshot()
    assert problems == [], "\n".join(problems)


async def test_malformed_json_is_400(api: Api) -> None:
    """Text that is not JSON, not UTF-8, NaN/Infinity, a 5000-digit number or nesting
    past the limits: 400 on every route that reads a body."""
    await check_cases(api, malformed_cases())


async def test_bodies_of_the_wrong_kind(api: Api) -> None:
    """v2 bodies must be objects (422); the v1 body must be an array of `{"task": {...}}`."""
    await check_cases(api, not_object_cases())


async def test_wrong_types_unknown_fields_and_invalid_schedules(api: Api) -> None:
    """Each invalid field is named by its attribute path (v2 422 details, v1 400 errors)."""
    await check_cases(api, invalid_field_cases())


async def test_bad_query_values_are_400(api: Api) -> None:
    """limit=-1, limit=abc, sort_by=bogus, follow=maybe, bad ids and times: 400 naming the
    parameter."""
    await check_cases(api, query_cases())


async def test_unknown_ids_are_404(api: Api) -> None:
    """Ids that name nothing (also non-ASCII digits and numbers past SQLite's integers):
    404 on every route that takes one."""
    await check_cases(api, unknown_id_cases())


async def test_oversized_bodies_are_413(api: Api) -> None:
    """A body larger than api.max_body_bytes is 413 on every route that reads a body."""
    await check_cases(api, oversized_cases())


async def test_the_daemon_still_serves_after_the_whole_matrix(api: Api) -> None:
    """After every bad request above, the same task still reads back unchanged."""
    for cases in (malformed_cases(), invalid_field_cases(), unknown_id_cases()):
        for case in cases[:20]:
            await send(api, case)
    shown = await api.unix.get(TASK)
    assert (shown.status, shown.json["comment"], shown.json["version"]) == (200, "keep me", 1)


async def test_a_body_that_is_not_what_its_content_encoding_says_is_400(api: Api) -> None:
    """`Content-Encoding: gzip` (or deflate) on a body that is not compressed that way is
    400 naming the body, in both dialects; nothing is stored."""
    before = await api.snapshot()
    for method, path in ALL_BODY_ROUTES:
        for encoding in ("gzip", "deflate"):
            body = j([{"task": VALID}]) if path.startswith("/api/v1") else j(VALID)
            reply = await api.unix.call(
                method,
                path,
                data=body,
                headers={"Content-Type": "application/json", "Content-Encoding": encoding},
            )
            case = Case(method, path, 400, names=None if path.startswith("/api/v1") else "base")
            assert reply.status == 400, reply
            check_error_shape(case, reply)
            assert encoding.encode() in reply.body, reply
    assert await api.snapshot() == before


# -- input that once crashed the core (overflows, odd ids) ------------------------------


async def test_an_interval_too_large_for_a_timedelta_is_refused(tmp_path: Path) -> None:
    """An interval schedule of 10**30 seconds is a 422 naming it, not a 500."""
    async with open_api(tmp_path) as api:
        reply = await api.unix.post(
            "/api/v2/tasks", {**VALID, "schedules": [{"interval_sec": 10**30}]}
        )
        assert reply.status == 422, reply
        assert "schedules[0].interval_sec" in reply.json["details"]


async def test_a_retry_delay_too_large_to_schedule_is_refused_or_kept(tmp_path: Path) -> None:
    """A huge retry delay is either refused at creation or its retry is recorded; the
    outcome handler never fails."""
    async with open_api(tmp_path) as api:
        reply = await api.unix.post(
            "/api/v2/tasks",
            {
                "name": "retrying",
                "task_module": "sleep",
                "task_params": {"seconds": 0, "fail": True},
                "options": {"max_retries": 1, "retry_delay_sec": 1e300},
            },
        )
        if reply.status == 422:
            assert "options.retry_delay_sec" in reply.json["details"]
            return
        assert reply.status == 201, reply
        run = await api.unix.put("/api/v2/tasks/retrying/action/run")
        await api.wait_execution(run.json["execution_id"], "error")
        await api.store.flush()
        failed = [e for e in api.logs if e.get("event") == "outcome handler failed"]
        assert failed == []
        executions = (await api.unix.get("/api/v2/tasks/retrying/executions")).json
        assert [e["trigger"] for e in executions["executions"]] == ["retry", "manual"]


async def test_core_find_raises_not_found_for_any_text(tmp_path: Path) -> None:
    """Core.find answers NotFoundError for text that names no task, whatever its digits."""
    from taskd.errors import NotFoundError

    async with open_api(tmp_path) as api:
        for text in ("\u00b2", "9" * 30):
            with pytest.raises(NotFoundError):
                await api.core.find(text)
