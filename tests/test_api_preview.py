"""The schedule preview over HTTP: `GET /api/v2/tasks/{id}/next_runs` and
`POST /api/v2/schedules/preview` (the pure part is tested in test_preview.py)."""

from __future__ import annotations

from typing import Any

from api_fixtures import Api

BERLIN_0230 = [{"hours": [2], "minutes": [30], "timezone": "Europe/Berlin"}]


async def test_a_tasks_next_runs_mark_the_dst_shift(api: Api) -> None:
    """A task's route reads its stored schedules; `after` and `count` bound the answer."""
    created = await api.create("nightly", schedules=BERLIN_0230)
    reply = await api.unix.get(
        f"/api/v2/tasks/{created['id']}/next_runs",
        params={"count": "2", "after": "2026-03-28T12:00:00Z"},
    )
    assert reply.status == 200, reply
    assert reply.json == {
        "next_runs": [
            {
                "at": "2026-03-29T01:00:00Z",
                "local": "2026-03-29T03:00:00+02:00",
                "schedule": 0,
                "dst": "gap_shifted",
            },
            {
                "at": "2026-03-30T00:30:00Z",
                "local": "2026-03-30T02:30:00+02:00",
                "schedule": 0,
                "dst": None,
            },
        ]
    }
    by_name = await api.unix.get("/api/v2/tasks/nightly/next_runs")
    assert by_name.status == 200
    assert len(by_name.json["next_runs"]) == 10  # the default count


async def test_a_task_without_schedules_has_no_next_runs(api: Api) -> None:
    """No schedule: an empty list, not an error."""
    created = await api.create("manual")
    reply = await api.unix.get(f"/api/v2/tasks/{created['id']}/next_runs")
    assert (reply.status, reply.json) == (200, {"next_runs": []})


async def test_next_runs_refusals(api: Api) -> None:
    """Bad query values are 400 naming the parameter; an unknown task is 404."""
    created = await api.create("some")
    base = f"/api/v2/tasks/{created['id']}/next_runs"
    for params, name in [
        ({"count": "0"}, "count"),
        ({"count": "1001"}, "count"),
        ({"count": "ten"}, "count"),
        ({"after": "yesterday"}, "after"),
    ]:
        reply = await api.unix.get(base, params=params)
        assert reply.status == 400, reply
        assert name in reply.json["details"]
    assert (await api.unix.get("/api/v2/tasks/nope/next_runs")).status == 404


async def test_every_rfc3339_after_is_accepted_even_at_the_ends_of_time(api: Api) -> None:
    """An `after` before year 1 in UTC means from the start, one past year 9999 after the
    end (no runs): any RFC 3339 time is a valid `after`, as the document says."""
    created = await api.create("hourly", schedules=[{"minutes": [0]}])
    base = f"/api/v2/tasks/{created['id']}/next_runs"
    early = await api.unix.get(base, params={"after": "0001-01-01T00:00:00+05:00", "count": "1"})
    assert early.status == 200, early
    assert early.json["next_runs"][0]["at"].startswith("0001-01-0")
    late = await api.unix.get(base, params={"after": "9999-12-31T23:00:00-05:00"})
    assert (late.status, late.json) == (200, {"next_runs": []})


async def test_preview_of_schedules_in_a_body(api: Api) -> None:
    """Zone-less schedules are read in the body's timezone; runs name their schedule."""
    body: dict[str, Any] = {
        "schedules": [{"hours": [2], "minutes": [30]}, {"cron": "0 3 * * *"}],
        "count": 3,
        "after": "2026-10-24T12:00:00Z",
        "timezone": "Europe/Berlin",
    }
    reply = await api.unix.post("/api/v2/schedules/preview", body)
    assert reply.status == 200, reply
    assert [(r["at"], r["schedule"], r["dst"]) for r in reply.json["next_runs"]] == [
        ("2026-10-25T00:30:00Z", 0, "fold_first"),
        ("2026-10-25T02:00:00Z", 1, None),
        ("2026-10-26T01:30:00Z", 0, None),
    ]


async def test_preview_refusals_are_422_with_field_paths(api: Api) -> None:
    """Invalid schedules, count, after or timezone: the usual 422, every field named, in
    the v2 `details` form; nothing stored changes."""
    before = await api.snapshot()
    body = {
        "schedules": [{"hours": [24]}, {"cron": "61 * * * *"}],
        "count": 5000,
        "after": "soon",
        "timezone": "Nowhere/Else",
    }
    reply = await api.unix.post("/api/v2/schedules/preview", body)
    assert reply.status == 422, reply
    assert set(reply.json["details"]) >= {
        "schedules[0].hours[0]",
        "schedules[1].cron",
        "count",
        "after",
        "timezone",
    }
    assert (await api.unix.post("/api/v2/schedules/preview", [1])).status == 422
    assert (await api.unix.post("/api/v2/schedules/preview", {})).status == 422
    assert await api.snapshot() == before


async def test_preview_needs_the_show_scope(api: Api) -> None:
    """Over TCP, a key without tasks/show is refused (403); one with it is served."""
    body = {"schedules": [{"minutes": [0]}], "count": 1}
    index_only = await api.tcp("index")
    assert (await index_only.post("/api/v2/schedules/preview", body)).status == 403
    show = await api.tcp("show")
    reply = await show.post("/api/v2/schedules/preview", body)
    assert reply.status == 200, reply
    assert len(reply.json["next_runs"]) == 1
