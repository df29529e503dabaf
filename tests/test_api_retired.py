"""Retired config tasks through the API (issue 10, item 8): a config task that left the
file is listed in both dialects with `source` config and `retired` true (and `retired_at`),
cannot be edited or run, and a delete removes it for good, unlike a config task still in
the file (409).
"""

from __future__ import annotations

from typing import Any

import pytest
from api_fixtures import Api

QUICK = {"task_module": "sleep", "task_params": {"seconds": 0}}


@pytest.fixture
def api_tasks() -> list[dict[str, Any]]:
    """The `api` fixture's config file defines two tasks."""
    return [{"name": "kept", **QUICK}, {"name": "leaving", **QUICK}]


async def test_a_retired_config_task_is_shown_refused_and_deletable(api: Api) -> None:
    """After a reload without `leaving`: v2 and v1 show it retired with source config;
    run and edit are 409; deleting `kept` (still in the file) is 409, deleting `leaving`
    removes it."""
    leaving = await api.core.find("leaving")
    await api.core.apply_config([api.core.validate({"name": "kept", **QUICK})])
    shown = (await api.unix.get("/api/v2/tasks/leaving")).json
    assert (shown["source"], shown["retired"], shown["id"]) == ("config", True, str(leaving.id))
    assert shown["retired_at"]
    assert (await api.unix.get("/api/v2/tasks/kept")).json["retired"] is False
    v1 = (await api.unix.get(f"/api/v1/task/{leaving.id}")).json["task"]
    assert (v1["source"], v1["retired"]) == ("config", True)

    assert (await api.unix.put("/api/v2/tasks/leaving/action/run")).status == 409
    assert (await api.unix.put("/api/v2/tasks/leaving", {"comment": "x"})).status == 409
    taken = await api.unix.post("/api/v2/tasks", {"name": "leaving", **QUICK})
    assert taken.status == 409
    assert "retired config task: delete it first" in taken.json["messages"][0]
    assert (await api.unix.delete("/api/v2/tasks/kept")).status == 409
    assert (await api.unix.delete("/api/v2/tasks/leaving")).status == 204
    assert (await api.unix.get("/api/v2/tasks/leaving")).status == 404
