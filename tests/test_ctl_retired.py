"""`taskd ctl list` and `show` make a retired config task visible (issue 10, item 8), from
the API's answers alone (a stub client: the daemon-level flow is in test_api_retired.py and
test_daemon.py)."""

from __future__ import annotations

import io
from typing import Any

from taskd.ctl.output import Output
from taskd.ctl.reading import list_tasks, show_task

TASKS = [
    {
        "id": "1",
        "name": "live",
        "status": "done",
        "task_module": "sleep",
        "source": "config",
        "retired": False,
        "next_run_at": "2026-01-01T03:00:00Z",
    },
    {
        "id": "2",
        "name": "gone",
        "status": "done",
        "task_module": "sleep",
        "source": "config",
        "retired": True,
        "retired_at": "2026-01-01T00:00:00Z",
    },
]


class StubClient:
    """Answers `GET /tasks` with TASKS and `GET /tasks/{name}` with that task."""

    async def call(self, method: str, path: str, **_: Any) -> Any:
        """The API's answer to `method path`."""
        assert method == "GET"
        if path == "/tasks":
            return {"count": len(TASKS), "tasks": TASKS}
        return next(t for t in TASKS if path.endswith(f"/{t['name']}"))


async def test_list_shows_a_retired_task_as_retired() -> None:
    """The STATUS column says `retired` and NEXT RUN `disabled`; live tasks are as before."""
    stream = io.StringIO()
    await list_tasks(StubClient(), Output(stream=stream))  # type: ignore[arg-type]
    rows = {line.split()[0]: line.split() for line in stream.getvalue().splitlines()[1:]}
    assert rows["gone"][2:5] == ["retired", "sleep", "disabled"]
    assert rows["live"][2:5] == ["done", "sleep", "2026-01-01T03:00:00Z"]


async def test_show_says_when_and_why_a_task_was_retired() -> None:
    """`show` of a retired task has a `retired` line with the time and the reason."""
    stream = io.StringIO()
    await show_task(StubClient(), Output(stream=stream), "gone")  # type: ignore[arg-type]
    text = stream.getvalue()
    assert "2026-01-01T00:00:00Z: it left the config file" in text
