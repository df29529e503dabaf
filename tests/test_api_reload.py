"""Config reloads reach the API (issue 10, item 8): `Daemon.reload` re-reads
`[[api.keys]]` and `[[api.users]]`, so a revoked key or user gets 401 at the next request
and a rotated key file takes effect; a reload signal that comes during a reload leads to one
more reload after it, however many came. The daemon-level SIGHUP test is in
`test_daemon.py`.
"""

from __future__ import annotations

import asyncio
import re

from api_fixtures import PASSWORD, USER, Api, basic


def _private(api: Api) -> None:
    """Give the config and key files the modes a reload insists on."""
    api.config_path.chmod(0o600)
    for key_file in (api.tmp_path / "keys").iterdir():
        key_file.chmod(0o600)


def _without_block(text: str, header: str, name: str) -> str:
    """`text` without the `[[header]]` table whose `name` is `name`."""
    pattern = rf"\[\[{re.escape(header)}\]\]\nname = \"{re.escape(name)}\"\n(?:[^\[\n].*\n)*"
    changed = re.sub(pattern, "", text)
    assert changed != text, f"no [[{header}]] named {name!r}"
    return changed


async def test_a_reload_revokes_keys_and_users_at_once(api: Api) -> None:
    """After a reload of a file without the key `index` and without the user, both get
    401; a key whose file was rotated answers to its new secret only; others still work."""
    assert api.daemon is not None
    _private(api)
    index, show = await api.tcp("index"), await api.tcp("show")
    user = await api.tcp(None, authorization=basic(USER, PASSWORD))
    for client in (index, show, user):
        assert (await client.get("/api/v2/tasks")).status in {200, 403}
    text = api.config_path.read_text()
    text = _without_block(text, "api.keys", "key-index")
    text = _without_block(text, "api.users", USER)
    api.config_path.write_text(text)
    rotated = "r" * 43
    (api.tmp_path / "keys" / "all").write_text(rotated + "\n")

    assert await api.daemon.reload()
    assert (await index.get("/api/v2/tasks")).status == 401
    assert (await user.get("/api/v2/tasks")).status == 401
    assert (await show.get("/api/v2/tasks/1")).status == 404, "kept keys still work"
    assert (await (await api.tcp("all")).get("/api/v2/tasks")).status == 401
    new_all = await api.tcp(None, authorization=f"Bearer {rotated}")
    assert (await new_all.get("/api/v2/tasks")).status == 200


async def test_an_unreadable_key_file_refuses_the_reload_whole(api: Api) -> None:
    """A key file that cannot be read refuses the reload: the old keys stay."""
    assert api.daemon is not None
    _private(api)
    (api.tmp_path / "keys" / "index").unlink()
    assert not await api.daemon.reload()
    assert (await (await api.tcp("index")).get("/api/v2/tasks")).status == 200
    refused = [e for e in api.logs if e.get("event") == "config reload refused"]
    assert refused
    assert "api.keys" in refused[0]["problem"]


async def test_reload_signals_during_a_reload_lead_to_one_more(api: Api) -> None:
    """Three signals while a reload runs: after it, exactly one more reload runs (the
    file may have changed after the first one read it); none is dropped, none piles up."""
    daemon = api.daemon
    assert daemon is not None
    _private(api)
    daemon._on_reload_signal()
    await asyncio.sleep(0)  # the reload starts: it has read the file and waits on the store
    assert daemon._reloading is not None
    assert not daemon._reloading.done()
    for _ in range(3):
        daemon._on_reload_signal()
    async with asyncio.timeout(10):
        assert await daemon._reloading
    reloads = [e for e in api.logs if e.get("event") == "config reloaded"]
    assert len(reloads) == 2
    daemon._on_reload_signal()  # after the reloads ended: one more, as usual
    async with asyncio.timeout(10):
        await daemon._reloading
    assert len([e for e in api.logs if e.get("event") == "config reloaded"]) == 3
