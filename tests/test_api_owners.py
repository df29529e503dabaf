"""Owners (issue 13, item 2): every API task belongs to the principal that created it; a
principal lists and acts on its own tasks and on the config tasks; an admin (scope `admin`,
`*`, the trusted socket) lists its own by default and everyone's with `all=true`, and
reaches every task; another owner's task is 404 to a non-admin, word for word what an
unknown id gets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import PASSWORD, USER, Api, Client, basic, open_api

KEYS = {
    "ann": ["tasks/*"],
    "ben": ["tasks/*"],
    "root": ["tasks/*", "admin"],
}
CONFIG_TASK = {"name": "from-config", "task_module": "sleep", "task_params": {"seconds": 0}}
BODY = {"task_module": "sleep", "task_params": {"seconds": 0}}


@pytest.fixture
async def owners(tmp_path: Path) -> AsyncIterator[Api]:
    """A live API with two plain keys, an admin key, the Basic user and a config task."""
    async with open_api(tmp_path, keys=KEYS, tasks=[CONFIG_TASK]) as api:
        yield api
        assert not api.failures()


async def create(client: Client, name: str) -> dict[str, Any]:
    """Create a task as `client`'s principal; return its v2 JSON."""
    reply = await client.post("/api/v2/tasks", {"name": name, **BODY})
    assert reply.status == 201, reply
    created: dict[str, Any] = reply.json
    return created


async def listed(client: Client, path: str = "/api/v2/tasks", **params: str) -> list[str]:
    """The names a v2 list (or v1 list) shows `client`, sorted."""
    reply = await client.get(path, params=params)
    assert reply.status == 200, reply
    if path.startswith("/api/v1"):
        return sorted(item["task"]["name"] for item in reply.json)
    assert reply.json["count"] == len(reply.json["tasks"])
    return sorted(task["name"] for task in reply.json["tasks"])


async def test_each_principal_lists_its_own_tasks_and_the_config_tasks(owners: Api) -> None:
    """Plain keys and the Basic user see their own and the config tasks, in both dialects;
    an admin too by default, and everything with all=true; the socket is an admin."""
    ann, ben, root = [await owners.tcp(k) for k in ("ann", "ben", "root")]
    user = await owners.tcp(None, authorization=basic(USER, PASSWORD))
    await create(ann, "ann-1")
    await create(ann, "ann-2")
    await create(ben, "ben-1")
    await create(root, "root-1")
    await owners.create("socket-1")
    for path in ("/api/v2/tasks", "/api/v1/task"):
        assert await listed(ann, path) == ["ann-1", "ann-2", "from-config"]
        assert await listed(ben, path) == ["ben-1", "from-config"]
        assert await listed(user, path) == ["from-config"]
        assert await listed(root, path) == ["from-config", "root-1"]
        assert await listed(owners.unix, path) == ["from-config", "socket-1"]
        everything = ["ann-1", "ann-2", "ben-1", "from-config", "root-1", "socket-1"]
        assert await listed(root, path, all="true") == everything
        assert await listed(owners.unix, path, all="true") == everything
        assert await listed(root, path, all="false") == ["from-config", "root-1"]
    # Filters and paging apply within what a principal may see.
    reply = await ann.get("/api/v2/tasks", params={"name": "*-1", "limit": "1"})
    assert (reply.json["count"], [t["name"] for t in reply.json["tasks"]]) == (1, ["ann-1"])


async def test_all_true_needs_the_admin_scope(owners: Api) -> None:
    """A principal without `admin` asking for all=true is refused (403), in both dialects;
    a malformed value is 400 as before."""
    ann = await owners.tcp("ann")
    for path in ("/api/v2/tasks", "/api/v1/task"):
        refused = await ann.get(path, params={"all": "true"})
        assert refused.status == 403, refused
        assert "admin" in refused.body.decode()
    assert (await ann.get("/api/v2/tasks", params={"all": "maybe"})).status == 400


async def test_another_owners_task_is_not_found_wherever_it_is_named(owners: Api) -> None:
    """Every route that names a task answers 404 for another owner's, by id or by name,
    with the body an unknown id gets; nothing of it changes."""
    ann, ben = await owners.tcp("ann"), await owners.tcp("ben")
    theirs = await create(ben, "ben-secret")
    run = await ben.put(f"/api/v2/tasks/{theirs['id']}/action/run")
    assert run.status == 200, run
    execution_id = run.json["execution_id"]
    await owners.wait_execution(execution_id, "done")
    before = await owners.snapshot()
    unknown = "999999"
    for ref in (theirs["id"], "ben-secret"):
        paths: list[tuple[str, str, Any]] = [
            ("GET", f"/api/v2/tasks/{ref}", None),
            ("PUT", f"/api/v2/tasks/{ref}", {"comment": "mine now"}),
            ("DELETE", f"/api/v2/tasks/{ref}", None),
            ("PUT", f"/api/v2/tasks/{ref}/action/run", None),
            ("PUT", f"/api/v2/tasks/{ref}/action/defer_run", None),
            ("PUT", f"/api/v2/tasks/{ref}/action/stop", None),
            ("GET", f"/api/v2/tasks/{ref}/executions", None),
            ("GET", f"/api/v2/tasks/{ref}/log", None),
            ("GET", f"/api/v2/tasks/{ref}/next_runs", None),
        ]
        for method, path, body in paths:
            reply = await ann.call(method, path, **({} if body is None else {"json_body": body}))
            assert reply.status == 404, (method, path, reply)
            if ref == theirs["id"]:
                same = await ann.call(
                    method,
                    path.replace(f"/{ref}", f"/{unknown}", 1),
                    **({} if body is None else {"json_body": body}),
                )
                assert reply.body.replace(ref.encode(), b"ID") == same.body.replace(
                    unknown.encode(), b"ID"
                ), path
    for method, path in [
        ("GET", f"/api/v1/task/{theirs['id']}"),
        ("DELETE", f"/api/v1/task/{theirs['id']}"),
        ("POST", f"/api/v1/task/{theirs['id']}/cancel"),
        ("GET", f"/api/v1/task/{theirs['id']}/log"),
        ("GET", f"/api/v2/executions/{execution_id}"),
    ]:
        assert (await ann.call(method, path)).status == 404, path
    update = [{"task": {"_id": int(theirs["id"]), "version": 2, "description": "x"}}]
    refused = await ann.post("/api/v1/task", update)
    assert refused.status == 400
    assert refused.json["errors"] == [{"path": "[0].task._id", "reason": f"no task {theirs['id']}"}]
    assert await owners.snapshot() == before


async def test_admins_and_the_socket_reach_every_task(owners: Api) -> None:
    """An admin key and the trusted socket show, update and act on another owner's task;
    the owner stays who created it, `updated_by` says who changed it."""
    ann, root = await owners.tcp("ann"), await owners.tcp("root")
    task = await create(ann, "ann-task")
    path = f"/api/v2/tasks/{task['id']}"
    assert (await root.get(path)).status == 200
    updated = await root.put(path, {"comment": "by root"})
    assert updated.status == 200, updated
    assert (updated.json["user"], updated.json["created_by"], updated.json["updated_by"]) == (
        "key-ann",
        "key-ann",
        "key-root",
    )
    v1 = (await ann.get(f"/api/v1/task/{task['id']}")).json
    assert v1["_user"] == {"_basetype": "user", "user": {"_generated_displayname": "key-ann"}}
    by_socket = await owners.unix.put(path, {"comment": "by the socket"})
    assert by_socket.json["updated_by"] == "unix-socket"
    assert (await owners.unix.put(f"{path}/action/run")).status == 200
    assert (await ann.get(path)).json["comment"] == "by the socket", "still ann's own"


async def test_config_tasks_show_the_config_as_their_user(owners: Api) -> None:
    """A config task's `user` and `created_by` (v2) and `_user` (v1) name the config; any
    principal may show it and run it, none may edit it (409, as before)."""
    ann = await owners.tcp("ann")
    shown = await ann.get("/api/v2/tasks/from-config")
    assert (shown.json["user"], shown.json["created_by"]) == ("config", "config")
    v1 = (await ann.get(f"/api/v1/task/{shown.json['id']}")).json
    assert v1["_user"]["user"]["_generated_displayname"] == "config"
    assert (await ann.put("/api/v2/tasks/from-config/action/run")).status == 200
    assert (await ann.put("/api/v2/tasks/from-config", {"comment": "x"})).status == 409


async def test_a_jwt_subject_owns_what_it_creates(tmp_path: Path) -> None:
    """A token's `sub` is an owner like a key's name: it lists its own tasks only."""
    import time

    import jwt as pyjwt

    secret = "s" * 40
    (tmp_path / "jwt.secret").write_text(secret)
    issuer = {
        "issuer": "https://idp.example",
        "audience": "taskd",
        "secret_file": "jwt.secret",
        "scopes": ["tasks/*"],
    }
    async with open_api(tmp_path, keys=KEYS, api_options={"jwt": [issuer]}) as api:

        def token(sub: str) -> str:
            now = int(time.time())
            claims = {
                "iss": "https://idp.example",
                "aud": "taskd",
                "sub": sub,
                "exp": now + 600,
                "scope": "tasks/*",
            }
            return "Bearer " + pyjwt.encode(claims, secret, algorithm="HS256")

        dora = await api.tcp(None, authorization=token("dora@example.org"))
        eve = await api.tcp(None, authorization=token("eve"))
        created = await create(dora, "dora-task")
        assert created["user"] == "dora@example.org"
        assert await listed(dora) == ["dora-task"]
        assert await listed(eve) == []
        assert (await eve.get(f"/api/v2/tasks/{created['id']}")).status == 404
        assert not api.failures()
