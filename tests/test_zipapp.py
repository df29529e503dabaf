"""The single-file build: `make zipapp` makes a shiv archive that runs with plain Python."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

# Builds the shiv archive and runs it outside the venv.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_zipapp_builds_and_runs_outside_the_venv(tmp_path: Path, example_checkout: Path) -> None:
    """The archive built by shiv answers `schedule next` and `check-config` without the venv."""
    shiv = Path(sys.executable).parent / "shiv"
    if not shiv.exists():
        pytest.skip("shiv is not installed (it comes with the test extra)")
    archive = tmp_path / "taskd.pyz"
    built = subprocess.run(
        [str(shiv), "--quiet", "--reproducible", "--console-script", "taskd",
         "--output-file", str(archive), str(REPO)],
        capture_output=True, text=True, timeout=220, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    # The web page's files travel inside the archive (package data).
    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
    for page_file in ("index.html", "app.js", "style.css"):
        assert any(name.endswith(f"taskd/api/static/{page_file}") for name in names), page_file
    # A clean environment: no venv on PATH, no PYTHONPATH, shiv's cache in tmp_path.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHIV_ROOT": str(tmp_path / "shiv")}
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    ran = subprocess.run(
        [python, str(archive), "schedule", "next", "--schedule",
         '{"hours": [2], "minutes": [30], "timezone": "Europe/Berlin"}',
         "--after", "2026-03-28T12:00:00Z", "--count", "2"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
    checked = subprocess.run(
        [python, str(archive), "check-config", str(example_checkout / "etc" / "taskd.toml")],
        capture_output=True, text=True, env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "OK, 7 tasks" in checked.stdout
    assert os.access(archive, os.X_OK)
