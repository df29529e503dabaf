"""Secret params are never shown (issue 10, item 9): a module's param definitions say which
values are secret (`secret: true`, `"url_password"`); both dialects show them as `"***"` to
every caller, read-only keys included; a write that sends `"***"` back keeps the stored
value.
"""

from __future__ import annotations

import json
from typing import Any

from api_fixtures import Api

MASK = "***"
# Made-up credentials (example.org, nothing real): only their masking is tested.
HTTP = {
    "task_module": "http",
    "task_params": {
        "url": "https://robot:s3cr%40t@example.org:8443/hook?x=1",
        "headers": {"Authorization": "Bearer tok", "Cookie": "session=abc"},
    },
}
SHELL = {"task_module": "shell", "task_params": {"argv": ["true"], "env": {"TOKEN": "t0k"}}}


def _masked_http(params: dict[str, Any]) -> None:
    assert params["url"] == f"https://robot:{MASK}@example.org:8443/hook?x=1"
    assert params["headers"] == {"Authorization": MASK, "Cookie": MASK}


async def test_secret_params_are_masked_for_every_caller(api: Api) -> None:
    """Create answers masked; v2 show and index and v1 get and list show masks to a
    read-only key and to the trusted socket alike; the store keeps the real values."""
    created = await api.create("hook", **HTTP)
    _masked_http(created["task_params"])
    shell = await api.create("env", **SHELL)
    assert shell["task_params"]["env"] == {"TOKEN": MASK}
    show, index = await api.tcp("show"), await api.tcp("index")
    for client in (show, api.unix):
        _masked_http((await client.get("/api/v2/tasks/hook")).json["task_params"])
        v1 = (await client.get(f"/api/v1/task/{created['id']}")).json["task"]
        _masked_http(v1["task_params"])
    for client in (index, api.unix):
        listed = (await client.get("/api/v2/tasks", params={"all": "true"})).json["tasks"]
        _masked_http(next(t for t in listed if t["name"] == "hook")["task_params"])
        v1_listed = (await client.get("/api/v1/task", params={"all": "true"})).json
        _masked_http(
            next(t for t in v1_listed if t["task"]["name"] == "hook")["task"]["task_params"]
        )
    stored = await api.task(created["id"])
    assert stored.spec["task_params"]["url"] == HTTP["task_params"]["url"]
    assert stored.spec["task_params"]["headers"]["Cookie"] == "session=abc"
    text = (await api.unix.get("/api/v2/tasks")).body.decode()
    for secret in ("s3cr", "Bearer tok", "session=abc", "t0k"):
        assert secret not in text


async def test_masks_sent_back_keep_the_stored_values(api: Api) -> None:
    """A task sent back as read (masks included) changes nothing, in both dialects; a PUT
    that changes one header and sends the mask for the other keeps the other's value."""
    created = await api.create("hook", **HTTP)
    path = f"/api/v2/tasks/{created['id']}"
    read = (await api.unix.get(path)).json
    del read["version"]  # a write that names a version names the next one
    assert (await api.unix.put(path, read)).status == 200
    assert (await api.task(created["id"])).version == 1, "nothing changed"
    [v1] = (await api.unix.get("/api/v1/task")).json
    v1["task"]["version"] += 1
    v1["task"]["description"] = "changed over v1"
    assert (await api.unix.post("/api/v1/task", [v1])).status == 200
    stored = await api.task(created["id"])
    assert stored.spec["description"] == "changed over v1"
    for name, value in HTTP["task_params"].items():
        assert stored.spec["task_params"][name] == value
    params = dict(read["task_params"])
    params["headers"] = {"Authorization": "Bearer new", "Cookie": MASK}
    assert (await api.unix.put(path, {"task_params": params})).status == 200
    stored = await api.task(created["id"])
    assert stored.spec["task_params"]["headers"] == {
        "Authorization": "Bearer new",
        "Cookie": "session=abc",
    }
    assert stored.spec["task_params"]["url"] == HTTP["task_params"]["url"]


async def test_masks_do_not_follow_a_changed_url(api: Api) -> None:
    """A PUT that points the task at another server while sending masks is refused (422
    naming each mask): the stored secrets never go where the client did not send them."""
    created = await api.create("hook", **HTTP)
    path = f"/api/v2/tasks/{created['id']}"
    params = dict((await api.unix.get(path)).json["task_params"])
    params["url"] = "https://robot:***@attacker.example/"
    reply = await api.unix.put(path, {"task_params": params})
    assert reply.status == 422, reply
    assert {"task_params.url", "task_params.headers.Cookie"} <= set(reply.json["details"])
    assert (await api.task(created["id"])).version == 1


async def test_a_secret_read_from_a_file_is_used_and_never_shown(api: Api) -> None:
    """A shell task whose env value names a private file: the API shows the reference,
    the run sees the file's content (masked in its log when printed); a file others may
    read is refused (422 at its path)."""
    token = api.tmp_path / "token"
    token.write_text("from-file\n")
    token.chmod(0o600)
    seen = api.tmp_path / "seen"
    script = f'printf %s "$TOKEN" > {seen}; echo got=$TOKEN'
    params = {"argv": ["sh", "-c", script], "env": {"TOKEN": {"file": str(token)}}}
    created = await api.create("filed", task_module="shell", task_params=params)
    assert created["task_params"]["env"] == {"TOKEN": {"file": str(token)}}
    run = await api.unix.put(f"/api/v2/tasks/{created['id']}/action/run")
    await api.wait_execution(run.json["execution_id"], "done")
    assert seen.read_text() == "from-file"
    log = (await api.unix.get(f"/api/v2/tasks/{created['id']}/log")).json
    assert "got=***" in json.dumps(log)  # printed, the file's secret is masked too
    assert "from-file" not in json.dumps(log)

    token.chmod(0o644)
    reply = await api.unix.post(
        "/api/v2/tasks", {"name": "leaky", "task_module": "shell", "task_params": params}
    )
    assert reply.status == 422, reply
    assert "task_params.env.TOKEN.file" in reply.json["details"]
