"""The `[store]` and `[cluster]` sections and `[daemon] node`: several servers over one
PostgreSQL database."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskd.config import parse_config
from taskd.errors import ValidationError
from taskd.settings import ClusterSettings, Settings, StoreSettings

BASE = Path("/srv/taskd/etc")


def parse(text: str, base_dir: Path = BASE) -> Settings:
    """Parse a config text against `base_dir`."""
    return parse_config(text, source="test.toml", base_dir=base_dir)


def reasons(text: str, base_dir: Path = BASE) -> dict[str, str]:
    """{path: reason} of every problem of a config text that must be refused."""
    with pytest.raises(ValidationError) as raised:
        parse(text, base_dir)
    return {error.path: error.reason for error in raised.value.errors}


def test_without_store_and_cluster_sections_a_single_sqlite_server() -> None:
    """No `[store]`: the SQLite file in state_dir; the node is the host name ("")."""
    settings = parse("")
    assert settings.store == StoreSettings()
    assert settings.store.url is None
    assert settings.cluster == ClusterSettings(failover_sec=5.0, heartbeat_sec=1.0)
    assert settings.daemon.node == ""


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://taskd@db.example.org/taskd",
        "postgres://taskd@db.example.org:5433/taskd?sslmode=require",
        "postgresql:///taskd?host=/run/postgresql",
        "postgresql://taskd@/taskd?host=/run/postgresql&application_name=node1",
    ],
)
def test_store_urls_of_each_form_are_taken(url: str) -> None:
    """Host names, ports, parameters and Unix-socket directories are all accepted."""
    assert parse(f'[store]\nurl = "{url}"\n').store.url == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://taskd@db/taskd", "must be a postgresql:// URL"),
        ("postgresql://taskd:hunter2@db/taskd", "a secret is never written in the config file"),
        ("postgresql://taskd@db", "must name the database"),
        ("postgresql://taskd@db/", "must name the database"),
        ("postgresql://taskd@db:99999/taskd", "must be a postgresql:// URL"),
        ("postgresql://taskd@db/taskd?sslmod=require", "unknown URL parameter 'sslmod'"),
        ("postgresql:///taskd", "must name the server"),
        ("postgresql:///taskd?host=run/postgresql", "absolute path"),
        ("postgresql://db/task d", "without spaces"),
    ],
)
def test_bad_store_urls_are_refused_naming_the_field(url: str, reason: str) -> None:
    """Each malformed URL is refused at `store.url` with what is wrong."""
    found = reasons(f'[store]\nurl = "{url}"\n')
    assert list(found) == ["store.url"]
    assert reason in found["store.url"]
    assert "hunter2" not in found["store.url"]


def test_password_file_is_relative_to_the_config_and_must_exist(tmp_path: Path) -> None:
    """`password_file` resolves against the config's directory and must name a file."""
    (tmp_path / "db-password").write_text("secret\n")
    settings = parse(
        '[store]\nurl = "postgresql://taskd@db/taskd"\npassword_file = "db-password"\n', tmp_path
    )
    assert settings.store.password_file == tmp_path / "db-password"
    found = reasons(
        '[store]\nurl = "postgresql://taskd@db/taskd"\npassword_file = "missing"\n', tmp_path
    )
    assert "does not exist" in found["store.password_file"]


def test_a_password_written_in_the_file_is_refused() -> None:
    """`password = ...` in [store] is refused, pointing at password_file."""
    found = reasons('[store]\nurl = "postgresql://taskd@db/taskd"\npassword = "x"\n')
    assert "password_file" in found["store.password"]


def test_password_file_needs_a_url(tmp_path: Path) -> None:
    """A password without a database to use it for is a mistake."""
    (tmp_path / "pw").write_text("x")
    assert "required" in reasons('[store]\npassword_file = "pw"\n', tmp_path)["store.url"]


def test_node_names_and_cluster_timings() -> None:
    """`[daemon] node` takes host-name-like names; failover must be at least two beats."""
    settings = parse(
        '[daemon]\nnode = "node-1.eu"\n[cluster]\nfailover_sec = 3\nheartbeat_sec = 0.5\n'
    )
    assert settings.daemon.node == "node-1.eu"
    assert settings.cluster == ClusterSettings(failover_sec=3.0, heartbeat_sec=0.5)
    found = reasons(
        '[daemon]\nnode = "bad name"\n[cluster]\nfailover_sec = 1\nheartbeat_sec = 1\n'
        "failover = 3\n"
    )
    assert "not a node name" in found["daemon.node"]
    assert "at least twice heartbeat_sec" in found["cluster.failover_sec"]
    assert "unknown field" in found["cluster.failover"]
