"""The files module through the v2 API and the config file: validation (422 naming the
field), the `sources.type` / `destinations.type` filters, and the execution counters of a
real run in `last_execution` and the executions list."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import Api

from taskd.daemon import load_settings
from taskd.errors import ValidationError
from taskd.modules.registry import ModuleRegistry


def place(path: Path | str, kind: str = "local") -> dict[str, str]:
    """A `{"type": ..., "path": ...}` object."""
    return {"type": kind, "path": str(path)}


def files_task(name: str, sources: list[Any], destination: Any = None, **fields: Any) -> Any:
    """A v2 body of a files task."""
    params: dict[str, Any] = {"sources": sources}
    if destination is not None:
        params["destination"] = destination
    return {"name": name, "task_module": "files", "task_params": params, **fields}


async def post(api: Api, body: dict[str, Any]) -> tuple[int, Any]:
    reply = await api.unix.post("/api/v2/tasks", body)
    return reply.status, reply.json


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"options": {"conflict_resolution": "merge"}}, "options.conflict_resolution"),
        ({"options": {"file_checksum": "sha1"}}, "options.file_checksum"),
        ({"options": {"processing_order": "random"}}, "options.processing_order"),
        ({"options": {"parallel": 0}}, "options.parallel"),
        ({"options": {"soft_erase": "yes"}}, "options.soft_erase"),
        ({"workflow_action": "restore"}, "workflow_action"),
        ({"workflow_action": None}, "task_params.action"),
        ({"task_params": {"sources": [place("data")]}}, "task_params.sources[0].path"),
        ({"task_params": {"sources": [place("/d", "s3")]}}, "task_params.sources[0].type"),
        (
            {"task_params": {"sources": [place("/d")], "destination": place("/d/in")}},
            "task_params.destination",
        ),
        ({"task_params": {"sources": [place("/d")]}}, "task_params.destination"),
    ],
)
async def test_bad_definitions_are_422_naming_the_field(
    api: Api, changes: dict[str, Any], field: str
) -> None:
    """Each mistake in a files task is refused with the field named; nothing is stored."""
    body = files_task("bad", [place("/srv/in")], place("/srv/out"), workflow_action="copy")
    body.update(changes)
    if body.get("workflow_action") is None:
        body.pop("workflow_action", None)
    status, answer = await post(api, body)
    assert status == 422, answer
    assert list(answer["details"]) == [field], answer
    assert (await api.unix.get("/api/v2/tasks", params={"name": "bad"})).json["count"] == 0


async def test_options_are_stored_and_shown(api: Api) -> None:
    """Nodeum's data-mover options round-trip through the API, beside taskd's own."""
    options = {"conflict_resolution": "overwrite", "file_checksum": "md5", "parallel": 4}
    body = files_task("mover", [place("/srv/in")], place("/srv/out"), workflow_action="copy")
    status, created = await post(api, {**body, "options": options})
    assert status == 201, created
    shown = (await api.unix.get(f"/api/v2/tasks/{created['id']}")).json["options"]
    assert {key: shown[key] for key in options} == options
    assert shown["priority"] == 0


async def test_sources_and_destinations_type_filters(api: Api) -> None:
    """`sources.type` / `destinations.type` match the types in the files tasks' params;
    other tasks and other types match nothing; an empty filter filters nothing."""
    await api.create("plain")
    copy = files_task("copy", [place("/srv/in")], place("/srv/out"), workflow_action="copy")
    scan = files_task("scan", [place("/srv/in")], workflow_action="scan")
    dup = files_task(
        "dup", [place("/a")], [place("/b"), place("/c")], workflow_action="duplication"
    )
    for body in (copy, scan, dup):
        assert (await post(api, body))[0] == 201

    async def names(**query: str) -> list[str]:
        reply = await api.unix.get("/api/v2/tasks", params=query)
        assert reply.status == 200, reply
        return sorted(task["name"] for task in reply.json["tasks"])

    assert await names(**{"sources.type": "local"}) == ["copy", "dup", "scan"]
    assert await names(**{"destinations.type": "local"}) == ["copy", "dup"]
    assert await names(**{"sources.type": "s3"}) == []
    assert await names(**{"destinations.type": "%"}) == []
    assert await names(**{"sources.type": "local", "workflow_action": "scan"}) == ["scan"]
    assert len(await names(**{"sources.type": ""})) == 4
    refused = await api.unix.get("/api/v2/tasks", params={"sort_by": "sources.type"})
    assert refused.status == 400


async def test_a_run_fills_last_execution_and_executions_with_counters(
    api: Api, tmp_path: Path
) -> None:
    """After a copy, last_execution and the executions list show the counters of the
    scan (todo) and of the copy (done), the bandwidth and 100 %."""
    src, dst = tmp_path / "src", tmp_path / "dst"

    def make() -> int:
        for i in range(20):
            (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
            (src / f"d{i % 3}" / f"f{i}").write_bytes(os.urandom(1000 + i))
        return sum(1000 + i for i in range(20))

    size = await asyncio.to_thread(make)
    body = files_task("run-me", [place(src)], place(dst), workflow_action="copy")
    status, created = await post(api, {**body, "options": {"file_checksum": "xxhash64"}})
    assert status == 201, created
    run = await api.unix.put(f"/api/v2/tasks/{created['id']}/action/run")
    assert run.status == 200, run
    await api.wait_status(created["id"], "done")
    await api.store.flush()
    last = (await api.unix.get(f"/api/v2/tasks/{created['id']}")).json["last_execution"]
    assert (last["size_todo"], last["size_done"]) == (size, size)
    assert (last["nodes_todo"], last["nodes_done"]) == (20, 20)
    assert last["progress"] == 100
    assert last["bandwidth"] > 0
    assert last["status_msg"] == f"copied 20 files, {size} bytes"
    listed = (await api.unix.get(f"/api/v2/tasks/{created['id']}/executions")).json
    [execution] = listed["executions"]
    assert execution["nodes_done"] == 20
    assert sorted(p.name for p in (dst / "src").rglob("f*")) == sorted(f"f{i}" for i in range(20))


def test_config_load_refuses_bad_files_tasks_naming_the_fields(tmp_path: Path) -> None:
    """The daemon's own loading refuses the same mistakes, at the task's paths."""
    config = tmp_path / "taskd.toml"
    config.write_text(
        textwrap.dedent(
            """\
            [daemon]
            state_dir = "state"

            [[task]]
            name = "no-destination"
            task_module = "files"
            workflow_action = "move"
            task_params = { sources = [{ type = "local", path = "/srv/in" }] }

            [[task]]
            name = "no-action"
            task_module = "files"
            task_params = { sources = [{ type = "local", path = "/srv/in" }] }

            [[task]]
            name = "relative"
            task_module = "files"
            task_params = { action = "scan", sources = [{ type = "local", path = "in" }] }

            [[task]]
            name = "fine"
            task_module = "files"
            workflow_action = "copy"
            options = { conflict_resolution = "ignore", file_checksum = "crc32" }
            task_params = { sources = [{ type = "local", path = "/srv/in/*.csv" }], \
destination = { type = "local", path = "/srv/out" } }
            """
        )
    )
    with pytest.raises(ValidationError) as info:
        load_settings(config, ModuleRegistry.builtin())
    assert sorted(e.path for e in info.value.errors) == [
        "task[no-action].task_params.action",
        "task[no-destination].task_params.destination",
        "task[relative].task_params.sources[0].path",
    ]


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_files_section() -> str:
    """The README's "The files module" section."""
    text = README.read_text(encoding="utf-8")
    start = text.index("### The files module")
    return text[start : text.index("\n## ", start)]


async def test_the_readme_examples_are_valid(api: Api, tmp_path: Path) -> None:
    """The section's TOML task loads as a config task, its curl body is accepted (201)."""
    section = readme_files_section()
    toml_task = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "readme.toml"
    config.write_text('[daemon]\nstate_dir = "state"\n\n' + toml_task)
    [task] = load_settings(config, ModuleRegistry.builtin()).tasks
    assert task.options.files["file_checksum"] == "xxhash64"
    body = json.loads(section.split("-d '", 1)[1].split("'", 1)[0])
    status, created = await post(api, body)
    assert status == 201, created
    assert created["task_params"] == {
        "sources": [{"type": "local", "path": "/srv/reports/*.pdf"}],
        "destination": {"type": "local", "path": "/mnt/archive/reports"},
    }
