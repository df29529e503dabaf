"""How soon the web page shows its first screen of tasks, with N tasks (default 10,000).

Starts `taskd serve` on a config of N tasks (a temporary directory, TCP on a free port),
then, `--repeat` times, opens /ui/ in a fresh context of Debian's headless Chromium (the
tab already signed in) and measures, in the browser's own clock (`performance.now()`, from
the start of the navigation):

- `first row`: the first task row is in the table (a MutationObserver notes it);
- `list`: how long the one API request for the first page of tasks took (resource timing).

It also prints how many task rows the table holds (only those on screen, and a few around).
Wall-clock figures on a shared machine: read them with the load average printed beside them.

    PYTHONPATH=. .venv/bin/python bench/ui_first_screen.py --tasks 10000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    calibration_ms,
    daemon_toml,
    free_port,
    load_average,
    python_and_cpus,
    state_dir,
    write_private,
)
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "b" * 43
READY_SEC = 300.0  # the bound on the daemon's start (N tasks to apply)
# Installed before the page's scripts: note when the first task row enters the table.
_WATCH = """
new MutationObserver((changes, observer) => {
  if (document.querySelector("table.tasks tbody tr[data-task-id]")) {
    window.__firstRow = performance.now();
    observer.disconnect();
  }
}).observe(document, { childList: true, subtree: true });
"""


def _config(folder: Path, tasks: int, port: int) -> Path:
    lines = [
        daemon_toml(port),
        '[[api.keys]]\nname = "bench"\nkey_file = "key"\nscopes = ["*"]\n',
    ]
    lines += [
        f'[[task]]\nname = "task-{i:06d}"\ntask_module = "sleep"\n'
        f"task_params = {{ seconds = 0 }}\n"
        f"schedules = [{{ hours = [{i % 24}], minutes = [{i * 7 % 60}] }}]\n"
        for i in range(tasks)
    ]
    write_private(folder / "key", KEY + "\n")
    config = folder / "taskd.toml"
    write_private(config, "\n".join(lines))
    return config


def _wait_ready(log: Path, process: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < READY_SEC:
        if process.poll() is not None:
            raise SystemExit(f"taskd exited ({process.returncode}):\n{log.read_text()[-2000:]}")
        if '"api ready"' in log.read_text():
            return time.monotonic() - started
        time.sleep(0.1)
    raise SystemExit(f"taskd was not ready within {READY_SEC:g} s")


def main() -> None:
    """Parse the arguments, run the measurements, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    print(
        f"# {python_and_cpus()}; load {load_average():.2f}; calibration {calibration_ms():.0f} ms"
    )
    with state_dir(args.keep, "taskd-ui-bench-") as folder:
        port = free_port()
        config = _config(folder, args.tasks, port)
        log = folder / "taskd.log"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "taskd", "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=env,
            )
        try:
            ready = _wait_ready(log, process)
            print(f"# {args.tasks} tasks; the daemon was ready after {ready:.1f} s")
            first_rows, lists, rows = [], [], []
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for _ in range(args.repeat):
                    context = browser.new_context(viewport={"width": 1280, "height": 800})
                    context.add_init_script(
                        f"sessionStorage.setItem('taskd.authorization', 'Bearer {KEY}');"
                    )
                    context.add_init_script(_WATCH)
                    page = context.new_page()
                    page.goto(f"http://127.0.0.1:{port}/ui/")
                    # Not wait_for_function: the page's CSP refuses the eval it uses.
                    page.locator("table.tasks tbody tr[data-task-id]").first.wait_for(
                        timeout=30_000
                    )
                    first_rows.append(page.evaluate("window.__firstRow"))
                    lists.append(
                        page.evaluate(
                            """performance.getEntriesByType("resource")
                               .filter((e) => e.name.includes("/api/v2/tasks?"))[0].duration"""
                        )
                    )
                    rows.append(page.locator("table.tasks tbody tr[data-task-id]").count())
                    context.close()
                browser.close()
        finally:
            process.terminate()
            process.wait(30)
    print(f"first row  ms: median {statistics.median(first_rows):.0f}, "
          f"min {min(first_rows):.0f}, max {max(first_rows):.0f}")  # fmt: skip
    print(f"list req   ms: median {statistics.median(lists):.0f}, "
          f"min {min(lists):.0f}, max {max(lists):.0f}")  # fmt: skip
    print(f"task rows in the table: {sorted(set(rows))} (of {args.tasks})")
    print(f"# load {load_average():.2f} at the end")


if __name__ == "__main__":
    main()
