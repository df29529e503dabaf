"""The API's read cache (`taskd.api.cache`): answers of `GET /api/v2/tasks/{id}` given again
while nothing was written, and never once a write committed (through the API or by the
engine), nor a read that overlapped a commit."""

from __future__ import annotations

from api_fixtures import Api

from taskd.api.app import build_app
from taskd.api.cache import ReadCache
from taskd.api.common import AUTH, HEALTH, READ_CACHE


class Version:
    """A stand-in for `Core.writes_committed`: a number the test moves."""

    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def test_an_entry_lives_until_the_version_moves() -> None:
    version = Version()
    cache = ReadCache(version)
    assert cache.get("a") is None
    cache.put("a", cache.stamp(), b"1")
    assert cache.get("a") == b"1"
    version.value += 1  # a write committed
    assert cache.get("a") is None
    assert len(cache) == 0


def test_a_read_that_overlapped_a_commit_is_not_kept() -> None:
    version = Version()
    cache = ReadCache(version)
    stamp = cache.stamp()  # the read begins ...
    version.value += 1  # ... a write commits meanwhile ...
    cache.put("a", stamp, b"maybe from before the write")  # ... the read ends
    assert cache.get("a") is None
    assert len(cache) == 0


def test_the_cache_is_bounded_and_drops_the_oldest_first() -> None:
    cache = ReadCache(Version(), max_bytes=6)
    for key in "abcd":
        cache.put(key, cache.stamp(), key.encode() * 2)
    assert (len(cache), cache.bytes) == (3, 6)
    assert cache.get("a") is None
    assert [cache.get(key) for key in "bcd"] == [b"bb", b"cc", b"dd"]
    cache.put("e", cache.stamp(), b"e" * 7)  # larger than the whole cache: not kept
    assert (len(cache), cache.bytes) == (3, 6)


def test_a_disabled_cache_keeps_nothing() -> None:
    cache = ReadCache(Version(), enabled=False)
    cache.put("a", cache.stamp(), b"1")
    assert cache.get("a") is None


async def test_an_answer_is_given_again_until_a_write_commits(api: Api) -> None:
    """The second GET is a hit with the same body; an update through the API is seen by the
    next GET, by id and by name; a rename frees the old name; a delete answers 404."""
    cache = api.app[READ_CACHE]
    task = await api.create("cached", comment="first")
    path = f"/api/v2/tasks/{task['id']}"
    first = await api.unix.get(path)
    hits = cache.hits
    again = await api.unix.get(path)
    assert again.status == 200
    assert again.body == first.body
    assert cache.hits == hits + 1, "the second GET is answered from the cache"
    assert again.headers["Content-Type"] == "application/json; charset=utf-8"

    assert (await api.unix.get("/api/v2/tasks/cached")).json["comment"] == "first"
    updated = await api.unix.put(path, {"comment": "second", "name": "renamed"})
    assert updated.status == 200, updated
    assert (await api.unix.get(path)).json["comment"] == "second"
    assert (await api.unix.get("/api/v2/tasks/renamed")).json["comment"] == "second"
    assert (await api.unix.get("/api/v2/tasks/cached")).status == 404

    assert (await api.unix.delete(path)).status == 204
    assert (await api.unix.get(path)).status == 404


async def test_the_engines_writes_are_seen_at_once(api: Api) -> None:
    """A run the runner records (not an API write) shows in the very next GET once the
    store has committed its ending: the task's status and its last execution."""
    task = await api.create("engine-writes")
    path = f"/api/v2/tasks/{task['id']}"
    before = (await api.unix.get(path)).json
    assert "last_execution" not in before
    assert (await api.unix.get(path)).json == before  # cached now
    run = await api.unix.put(f"{path}/action/run")
    assert run.status == 200
    await api.wait_execution(run.json["execution_id"], "done")
    shown = (await api.unix.get(path)).json
    assert shown["status"] == "done"
    assert shown["last_execution"]["id"] == run.json["execution_id"]
    assert shown["last_execution"]["status"] == "done"


async def test_no_cache_when_other_processes_write_the_store(api: Api) -> None:
    """A core whose store other processes write too (`sole_writer=False`, cluster nodes)
    gets an app whose read cache keeps nothing."""
    api.core.sole_writer = False
    app = build_app(
        core=api.core, auth=api.app[AUTH], api_settings=api.settings, health=api.app[HEALTH]
    )
    cache = app[READ_CACHE]
    cache.put("a", cache.stamp(), b"1")
    assert cache.get("a") is None
    api.core.sole_writer = True
    assert (
        build_app(
            core=api.core, auth=api.app[AUTH], api_settings=api.settings, health=api.app[HEALTH]
        )[READ_CACHE].max_bytes
        > 0
    )


async def test_each_principal_has_its_own_entries(api: Api) -> None:
    """An answer cached for one principal is not handed to another (what a caller may see is
    the principal's to decide): the first GET of each principal reads the store."""
    cache = api.app[READ_CACHE]
    task = await api.create("per-principal")
    path = f"/api/v2/tasks/{task['id']}"
    show = await api.tcp("show")
    assert (await api.unix.get(path)).status == 200
    misses = cache.misses
    assert (await show.get(path)).status == 200
    assert cache.misses == misses + 1, "another principal: not answered from the first's entry"
    hits = cache.hits
    assert (await show.get(path)).status == 200
    assert cache.hits == hits + 1
