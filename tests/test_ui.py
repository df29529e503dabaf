"""The web page at /ui/ in a real browser: Debian's headless Chromium driven by Playwright,
against a real `taskd serve` subprocess running the example config of `make run`.

One daemon and one browser serve the whole module (each test its own tasks and its own
browser context, so sessionStorage starts empty). Each test saves a screenshot of every
page it visits under its `tmp_path`, and fails if the page logged a console error, threw,
or opened a dialog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_daemon import Daemon, wait_until

from taskd.api.auth import hash_password

pytestmark = pytest.mark.slow

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
# A browser that runs as root in a container, fetches nothing by itself and never updates.
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
REPO = Path(__file__).resolve().parent.parent
WAIT_MS = 15_000  # the bound of every wait in the browser
PASSWORD = "correct horse battery staple"
XSS = "<img src=x onerror=alert(1)>"
# The example config's tasks: what `make run` shows.
EXAMPLE_TASKS = (
    "nightly-backup",
    "health-check",
    "heartbeat",
    "uptime",
    "friday-13th-report",
    "new-year-announcement",
    "manual-cleanup",
)

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium as root "
        "(apt-get install chromium)",
        allow_module_level=True,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _secret(path: Path, text: str) -> None:
    path.write_text(text + "\n")
    path.chmod(0o600)


@dataclass
class Served:
    """The daemon under test: its page's URL, its keys, and files its tasks wait for."""

    url: str
    next_runs_served: bool  # GET /api/v2/tasks/{id}/next_runs, another change's route
    keys: dict[str, str]
    socket_path: Path
    release_dir: Path
    daemon: Daemon


def _extra_config(release_dir: Path, user_hash: str) -> str:
    """Keys, a user and tasks added to the example config for the tests."""
    waiting = (
        "echo '<b>line 1</b>'; echo line 2; "
        f"for i in $(seq 600); do [ -e {release_dir}/go ] && break; sleep 0.1; done; "
        "echo line 3"
    )
    return f"""
[[api.keys]]
name = "viewer"
key_file = "../var/keys/viewer"
scopes = ["tasks/index", "tasks/show"]

[[api.users]]
name = "alice"
password_hash = "{user_hash}"
scopes = ["tasks/*"]

[[task]]
name = "log-lines"
description = "Logs two lines, waits for the test, logs a third"
task_module = "shell"
task_params = {{ command = {json.dumps(waiting)} }}

[[task]]
name = "long-steps"
description = "Sleeps a minute in 60 steps"
task_module = "sleep"
task_params = {{ seconds = 60, steps = 60 }}

[[task]]
name = "busy"
description = "Runs for an hour, its slot every 2 s skipped meanwhile"
task_module = "sleep"
task_params = {{ seconds = 3600, steps = 3600 }}
schedules = [{{ interval_sec = 2 }}]
options = {{ overlap = "skip" }}

[[task]]
name = "xss"
description = {json.dumps(XSS)}
task_module = "shell"
task_params = {{ command = "true" }}
"""


def _status(url: str, key: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`taskd serve` on a copy of etc/taskd.toml (a free port), plus the test's keys,
    user and tasks."""
    checkout = tmp_path_factory.mktemp("checkout")
    (checkout / "etc").mkdir()
    keys_dir = checkout / "var" / "keys"
    keys_dir.mkdir(parents=True, mode=0o700)
    keys = {"admin": "a" * 43, "viewer": "v" * 43}
    for name, key in keys.items():
        _secret(keys_dir / name, key)
    release_dir = checkout / "release"
    release_dir.mkdir()
    port = _free_port()
    example = (
        (REPO / "etc" / "taskd.toml").read_text().replace("127.0.0.1:8470", f"127.0.0.1:{port}")
    )
    config = checkout / "etc" / "taskd.toml"
    _secret(config, example + _extra_config(release_dir, hash_password(PASSWORD)))
    daemon = Daemon(config)
    try:
        ready = daemon.wait_for("api ready")
        assert ready["web_page"] == f"http://127.0.0.1:{port}/ui/"
        next_runs = _status(
            f"{ready['url']}/tasks/nightly-backup/next_runs?count=10", keys["admin"]
        )
        yield Served(
            ready["web_page"],
            next_runs == 200,
            keys,
            checkout / "var" / "taskd.sock",
            release_dir,
            daemon,
        )
        daemon.assert_no_errors()
    finally:
        daemon.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, launched once for the module."""
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """A page in a fresh browser context, with what it said on its console."""

    page: Any
    shots: Path
    problems: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def shot(self, name: str, height: int | None = None) -> Path:
        """Save a screenshot of the whole page (or its top `height` pixels) as
        `<tmp_path>/<name>.png`."""
        path = self.shots / f"{name}.png"
        if height is None:
            self.page.screenshot(path=str(path), full_page=True)
        else:
            width = self.page.viewport_size["width"]
            self.page.screenshot(
                path=str(path), clip={"x": 0, "y": 0, "width": width, "height": height}
            )
        return path


@pytest.fixture
def tab(browser: Any, served: Served, tmp_path: Path) -> Iterator[Tab]:
    """A fresh context and page (1280x800); fails the test on console errors, uncaught
    exceptions and dialogs (an `alert` would be a script the page did not mean to run)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    opened = Tab(page, tmp_path)

    def console(message: Any) -> None:
        url = message.location.get("url", "")
        if not served.next_runs_served and "/next_runs?" in url and "404" in message.text:
            return  # the route is not there yet: the page says "next runs unavailable"
        if message.type in {"error", "warning"}:
            opened.problems.append(f"console {message.type}: {message.text} {message.location}")

    def dialog(shown: Any) -> None:
        opened.dialogs.append(f"{shown.type}: {shown.message}")
        shown.dismiss()

    page.on("console", console)
    page.on("pageerror", lambda error: opened.problems.append(f"page error: {error}"))
    page.on("dialog", dialog)
    page.on("request", lambda request: opened.requests.append(request.url))
    try:
        yield opened
    finally:
        context.close()
    assert opened.problems == []
    assert opened.dialogs == []


def sign_in(tab: Tab, served: Served, key: str = "admin") -> None:
    """Open the page and sign in with one of the served keys."""
    tab.page.goto(served.url)
    tab.page.get_by_label("Key or token", exact=True).fill(served.keys[key])
    tab.page.get_by_role("button", name="Sign in").click()
    tab.page.get_by_text(f"Signed in as {key}").wait_for()


def task_row(tab: Tab, name: str) -> Any:
    """The task table's row of the task named `name`."""
    return tab.page.locator(
        "table.tasks tbody tr", has=tab.page.get_by_role("link", name=name, exact=True)
    )


def open_task(tab: Tab, name: str) -> None:
    """Follow the task list's link to the task named `name`."""
    tab.page.get_by_label("Name", exact=True).fill(name)
    tab.page.locator("#task-count", has_text=re.compile("^1 task$")).wait_for()
    tab.page.get_by_role("link", name=name, exact=True).click()
    tab.page.get_by_role("heading", level=1, name=name).wait_for()


def wait_for_badge(tab: Tab, where: str, status: str) -> None:
    """Wait until the status badge in `where` (a CSS selector) reads `status`."""
    tab.page.locator(f"{where} .badge", has_text=re.compile(f"^{status}$")).first.wait_for()


# ---------------------------------------------------------------------------------------


def test_sign_in_with_a_key_shows_the_example_tasks_sorted_by_next_run(
    tab: Tab, served: Served
) -> None:
    """The sign-in form, then the table of `make run`'s tasks: schedules in words, sorted by
    next run, filtered by name and status, with the page's security headers."""
    response = tab.page.goto(served.url)
    assert response is not None
    assert response.status == 200
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    tab.page.get_by_role("heading", name="Sign in to taskd").wait_for()
    tab.shot("sign-in")
    sign_in(tab, served)
    for name in EXAMPLE_TASKS:
        task_row(tab, name).wait_for()
    backup = task_row(tab, "nightly-backup")
    assert "02:30 Europe/Berlin" in backup.locator(".col-schedule").inner_text()
    heartbeat = task_row(tab, "heartbeat")
    assert heartbeat.locator(".col-schedule").inner_text() == "every 5 minutes"
    assert task_row(tab, "uptime").locator(".col-schedule").inner_text() == "every minute"
    assert task_row(tab, "friday-13th-report").locator(".col-next").inner_text() == "disabled"
    tab.shot("tasks")
    # Sorted by next run: the times shown never go back (tasks without one apart).
    shown = [
        cell.get_attribute("datetime")
        for cell in tab.page.locator("table.tasks tbody .col-next time").all()
    ]
    assert len(shown) >= 4
    assert shown == sorted(shown)
    # Filters: by name (a part of it), by status.
    tab.page.get_by_label("Name", exact=True).fill("night")
    tab.page.locator("#task-count", has_text=re.compile("^1 task$")).wait_for()
    assert tab.page.locator("table.tasks tbody tr[data-task-id]").count() == 1
    tab.page.get_by_label("Name", exact=True).fill("")
    tab.page.get_by_label("Status", exact=True).select_option("error")
    tab.page.locator("#task-count", has_text=re.compile("^0 tasks$")).wait_for()
    tab.page.get_by_text("No task matches.").wait_for()


def test_the_list_refreshes_itself_without_a_reload(tab: Tab, served: Served) -> None:
    """A run started elsewhere (the API) shows in the open list: no reload, no click."""
    sign_in(tab, served)
    row = task_row(tab, "xss")
    row.locator(".col-last", has_text="never").wait_for()
    tab.page.evaluate("window.__notReloaded = true")
    api = served.url.removesuffix("/ui/") + "/api/v2"
    request = urllib.request.Request(
        f"{api}/tasks/xss/action/run",
        method="PUT",
        headers={"Authorization": f"Bearer {served.keys['admin']}"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
    row.locator(".col-last .badge", has_text="done").wait_for()
    assert tab.page.evaluate("window.__notReloaded") is True


def test_sign_in_with_a_user_and_password_and_out_again(tab: Tab, served: Served) -> None:
    """Basic credentials from the form are kept for the tab; signing out forgets them."""
    tab.page.goto(served.url)
    tab.page.get_by_label("a user's password").check()
    tab.page.get_by_label("User", exact=True).fill("alice")
    tab.page.get_by_label("Password", exact=True).fill(PASSWORD)
    tab.page.get_by_role("button", name="Sign in").click()
    tab.page.get_by_text("Signed in as alice").wait_for()
    task_row(tab, "uptime").wait_for()
    stored = tab.page.evaluate("sessionStorage.getItem('taskd.authorization')")
    assert stored.startswith("Basic ")
    tab.page.reload()  # the tab keeps its sign-in
    task_row(tab, "uptime").wait_for()
    tab.page.get_by_role("button", name="Sign out").click()
    tab.page.get_by_role("heading", name="Sign in to taskd").wait_for()
    assert tab.page.evaluate("sessionStorage.getItem('taskd.authorization')") is None


def test_run_a_task_and_follow_its_log_live_until_done(tab: Tab, served: Served) -> None:
    """Run now opens the run's page; its lines arrive while it runs (the third only once
    the test lets the command go on), then the status turns done."""
    sign_in(tab, served)
    open_task(tab, "log-lines")
    tab.page.get_by_role("heading", name="Next runs").wait_for()
    tab.shot("task")
    tab.page.get_by_role("button", name="Run now").click()
    tab.page.wait_for_url(re.compile(r"#/runs/\d+$"))
    log = tab.page.get_by_role("log")
    log.get_by_text("line 2").wait_for()
    # The command waits for the test: the run is live, its third line not written yet.
    wait_for_badge(tab, ".run-status", "running")
    assert log.get_by_text("line 3").count() == 0
    # HTML in a log line is shown as text.
    assert log.get_by_text("<b>line 1</b>").count() == 1
    assert log.locator("b").count() == 0
    tab.shot("run-live")
    (served.release_dir / "go").touch()
    log.get_by_text("line 3").wait_for()
    wait_for_badge(tab, ".run-status", "done")
    tab.page.get_by_text("The run has ended.").wait_for()
    messages = [line.inner_text() for line in log.locator(".msg").all()]
    assert [m for m in messages if "line" in m] == ["<b>line 1</b>", "line 2", "line 3"]
    tab.shot("run-done")
    # Back on the task's page, the run is listed as done and drawn on the timeline.
    tab.page.get_by_role("link", name="log-lines").click()
    tab.page.locator("table.executions tbody tr", has_text="done").first.wait_for()
    tab.page.locator("svg.timeline rect.bar.st-done").first.wait_for()
    tab.shot("task-after-run")


def test_pause_and_resume_a_running_task(tab: Tab, served: Served) -> None:
    """Pause holds the run (status paused), Resume lets it go on; Force stop ends it."""
    sign_in(tab, served)
    open_task(tab, "long-steps")
    tab.page.get_by_role("button", name="Run now").click()
    tab.page.wait_for_url(re.compile(r"#/runs/\d+$"))
    wait_for_badge(tab, ".run-status", "running")
    pause = tab.page.get_by_role("button", name="Pause")
    pause.wait_for()
    wait_until(pause.is_enabled, "the Pause button to be enabled")
    pause.click()
    wait_for_badge(tab, ".run-status", "paused")
    tab.shot("run-paused")
    tab.page.get_by_role("button", name="Resume").click()
    wait_for_badge(tab, ".run-status", "running")
    tab.page.get_by_role("button", name="Force stop").click()
    wait_for_badge(tab, ".run-status", "canceled")


def test_skipped_slots_show_with_their_reason_and_on_the_timeline(tab: Tab, served: Served) -> None:
    """A task still running when its next slot comes: the slot is listed as skipped, with
    why, and marked on the timeline beside the running run's bar; the list shows progress."""
    sign_in(tab, served)
    task_row(tab, "busy").locator("progress").wait_for()
    open_task(tab, "busy")
    skipped = tab.page.locator("table.executions tbody tr.skipped").first
    skipped.wait_for()
    assert "the previous run is still running (overlap=skip)" in skipped.inner_text()
    assert skipped.locator(".badge").inner_text() == "skipped"
    tab.page.locator("svg.timeline rect.bar.st-skipped").first.wait_for()
    tab.page.locator("svg.timeline rect.bar.st-running").first.wait_for()
    tab.shot("task-skipped")


def test_a_key_without_tasks_action_sees_no_buttons(tab: Tab, served: Served) -> None:
    """tasks/index and tasks/show: the tasks and a task's page, and no action button."""
    sign_in(tab, served, "viewer")
    task_row(tab, "uptime").wait_for()
    open_task(tab, "uptime")
    tab.page.get_by_role("heading", name="Executions").wait_for()
    assert tab.page.locator("main button[data-verb]").count() == 0
    assert tab.page.get_by_role("button", name="Run now").count() == 0
    tab.shot("task-viewer")


def test_html_in_a_description_is_shown_as_text_and_runs_no_script(
    tab: Tab, served: Served
) -> None:
    """`<img src=x onerror=alert(1)>` shows as those characters; no image, no alert."""
    sign_in(tab, served)
    open_task(tab, "xss")
    description = tab.page.locator("p.description")
    description.wait_for()
    assert description.inner_text() == XSS
    assert tab.page.locator("main img").count() == 0
    assert not any(url.endswith("/x") for url in tab.requests)
    tab.shot("task-xss")
    # The fixture fails the test on a dialog (alert) or a console error.


def test_keyboard_alone_reaches_a_task_and_runs_it(tab: Tab, served: Served) -> None:
    """Tab and Enter: from the sign-in field to the task list, a task's link, Run now."""
    tab.page.goto(served.url)
    tab.page.get_by_label("Key or token", exact=True).wait_for()
    tab.page.keyboard.type(served.keys["admin"])  # the key field has the focus
    tab.page.keyboard.press("Enter")
    task_row(tab, "log-lines").locator(".badge", has_text="done").first.wait_for()
    tab.shot("tasks-after-runs", height=690)  # the README's picture (docs/web-page.png)
    tab.page.get_by_label("Name", exact=True).focus()
    tab.page.keyboard.type("manual-cleanup")
    tab.page.locator("#task-count", has_text=re.compile("^1 task$")).wait_for()
    link = tab.page.get_by_role("link", name="manual-cleanup", exact=True)
    for _ in range(10):
        if link.evaluate("element => element === document.activeElement"):
            break
        tab.page.keyboard.press("Tab")
    assert link.evaluate("element => element === document.activeElement")
    tab.page.keyboard.press("Enter")
    tab.page.get_by_role("heading", level=1, name="manual-cleanup").wait_for()
    run = tab.page.get_by_role("button", name="Run now")
    for _ in range(10):
        if run.evaluate("element => element === document.activeElement"):
            break
        tab.page.keyboard.press("Tab")
    tab.page.keyboard.press("Enter")
    tab.page.wait_for_url(re.compile(r"#/runs/\d+$"))


def test_readable_at_400_px(tab: Tab, served: Served) -> None:
    """At 400 px the list keeps name, status and next run, nothing scrolls sideways."""
    tab.page.set_viewport_size({"width": 400, "height": 800})
    sign_in(tab, served)
    task_row(tab, "uptime").wait_for()
    for column in (".col-name", ".col-status", ".col-next"):
        assert task_row(tab, "uptime").locator(column).is_visible()
    assert not task_row(tab, "uptime").locator(".col-module").is_visible()
    assert tab.page.evaluate("document.documentElement.scrollWidth") <= 400
    tab.shot("tasks-400px")
    open_task(tab, "nightly-backup")
    tab.page.get_by_role("heading", name="Executions").wait_for()
    assert tab.page.evaluate("document.documentElement.scrollWidth") <= 400
    tab.shot("task-400px")


class _Tunnel:
    """TCP on 127.0.0.1 forwarded to the daemon's Unix socket, as `ssh -L` would."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket_path))
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async def serve() -> None:
            server = await asyncio.start_server(forward, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.server = server
            started.set()
            async with server:
                await server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(serve())

    def close(self) -> None:
        """Stop forwarding and join the thread."""

        def stop() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)
        self.loop.close()


def test_over_the_trusted_unix_socket_no_sign_in_is_needed(tab: Tab, served: Served) -> None:
    """Through a tunnel to the Unix socket (trust_unix_socket = true) the tasks show at
    once, without a sign-in, and every action is offered."""
    tunnel = _Tunnel(served.socket_path)
    try:
        tab.page.goto(f"http://127.0.0.1:{tunnel.port}/ui/")
        tab.page.get_by_text("Signed in as unix-socket").wait_for()
        task_row(tab, "uptime").wait_for()
        assert tab.page.get_by_role("button", name="Sign out").is_hidden()
        tab.shot("tasks-over-socket")
        open_task(tab, "manual-cleanup")
        tab.page.get_by_role("button", name="Run now").wait_for()
        tab.shot("unix-socket")
    finally:
        tab.page.close()
        tunnel.close()


def test_the_task_page_shows_the_next_10_runs_or_says_they_are_unavailable(
    tab: Tab, served: Served
) -> None:
    """With the preview route: 10 runs with their local times; without it, a note."""
    sign_in(tab, served)
    open_task(tab, "nightly-backup")
    section = tab.page.locator("section", has=tab.page.get_by_role("heading", name="Next runs"))
    if served.next_runs_served:
        section.locator("table.next-runs tbody tr").nth(9).wait_for()
        assert section.locator("table.next-runs tbody tr").count() == 10
    else:
        section.get_by_text("Next runs unavailable.").wait_for()
    tab.shot("task-next-runs")


def test_daylight_saving_marks_of_next_runs_are_spelled_out(tab: Tab, served: Served) -> None:
    """A run that a spring-forward gap moved, and the two runs of a repeated hour, are
    marked in words; other runs are not marked."""
    sign_in(tab, served)
    rows = tab.page.evaluate(
        """async () => {
            const { nextRunsTable } = await import("./task.js");
            const run = (at, local, dst) => ({at, local, schedule: 0, dst});
            const table = nextRunsTable([
                run("2026-03-29T01:00:00Z", "2026-03-29T03:00:00+02:00", "gap_shifted"),
                run("2026-10-25T00:30:00Z", "2026-10-25T02:30:00+02:00", "fold_first"),
                run("2026-10-25T01:30:00Z", "2026-10-25T02:30:00+01:00", "fold_second"),
                run("2026-10-26T01:30:00Z", "2026-10-26T02:30:00+01:00", null),
            ]);
            const rows = [...table.tBodies[0].rows];
            return rows.map((row) => [row.className, row.cells[2].textContent]);
        }"""
    )
    assert [marked for marked, _ in rows] == ["dst", "dst", "dst", ""]
    assert "does not exist" in rows[0][1]
    assert "first of the two" in rows[1][1]
    assert "second of the two" in rows[2][1]
    assert rows[3][1] == ""


def test_schedules_in_words(tab: Tab, served: Served) -> None:
    """The words the task list shows for each kind of schedule."""
    sign_in(tab, served)
    cases = {
        '{"hours": [2], "minutes": [30], "timezone": "Europe/Berlin"}': "02:30 Europe/Berlin",
        '{"interval_sec": 900}': "every 15 minutes",
        '{"interval_sec": 90}': "every 90 seconds",
        '{"interval_sec": 7200}': "every 2 hours",
        '{"cron": "* * * * *"}': "every minute",
        '{"cron": "*/15 8-18 * * mon-fri"}': "every 15 minutes during hours 8-18 on Mon-Fri",
        '{"cron": "0 3 * * sun", "timezone": "UTC"}': "03:00 on Sun UTC",
        '{"weekdays": ["monday", "friday"], "hours": [9, 17], "minutes": [0]}': (
            "09:00, 17:00 on Mon, Fri"
        ),
        '{"minutes": [0, 30]}': "every hour at :00, :30",
        "{}": "every minute",
    }
    said = tab.page.evaluate(
        """async (cases) => {
            const { scheduleWords } = await import("./words.js");
            return cases.map((text) => scheduleWords(JSON.parse(text)));
        }""",
        list(cases),
    )
    assert dict(zip(cases.values(), said, strict=True)) == {v: v for v in cases.values()}


MANY = 10_000


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A daemon with 10,000 tasks from its config file (one a minute of the day, cycling)."""
    folder = tmp_path_factory.mktemp("many")
    _secret(folder / "key", "m" * 43)
    port = _free_port()
    lines = [
        '[daemon]\nstate_dir = "state"',
        f'[api]\nlisten = ["127.0.0.1:{port}"]\nunix_socket = false',
        '[[api.keys]]\nname = "admin"\nkey_file = "key"\nscopes = ["*"]',
    ]
    lines += [
        f'[[task]]\nname = "task-{i:05d}"\ntask_module = "sleep"\n'
        f"task_params = {{ seconds = 0 }}\n"
        f"schedules = [{{ hours = [{i % 24}], minutes = [{i * 7 % 60}] }}]"
        for i in range(MANY)
    ]
    config = folder / "taskd.toml"
    _secret(config, "\n\n".join(lines))
    daemon = Daemon(config)
    try:
        ready = daemon.wait_for("api ready", timeout=180)
        yield Served(ready["web_page"], True, {"admin": "m" * 43}, folder, folder, daemon)
    finally:
        daemon.close()


@pytest.mark.timeout(300)
def test_ten_thousand_tasks_page_the_api_and_render_only_the_rows_in_view(
    tab: Tab, many: Served
) -> None:
    """The list asks for pages of 100 and puts only the rows in view in the table; the
    scroll bar still spans all 10,000 (the last one is reached by scrolling)."""
    sign_in(tab, many)
    tab.page.locator("#task-count", has_text=f"{MANY} tasks").wait_for()
    rows = tab.page.locator("table.tasks tbody tr[data-task-id]")
    rows.first.wait_for()
    assert 10 <= rows.count() <= 60
    assert tab.page.locator("table.tasks").get_attribute("aria-rowcount") == str(MANY + 1)
    shown = [
        cell.get_attribute("datetime")
        for cell in tab.page.locator("table.tasks tbody .col-next time").all()
    ]
    assert shown == sorted(shown)
    tab.page.locator(".scroller").evaluate(
        "element => { element.scrollTop = element.scrollHeight; }"
    )
    tab.page.locator(f'table.tasks tbody tr[data-task-id][aria-rowindex="{MANY + 1}"]').wait_for()
    assert rows.count() <= 60
    tab.shot("tasks-10000-end")
    # Reloaded (the tab keeps its sign-in): the first screen, measured for the record.
    tab.page.reload()
    rows.first.wait_for()
    first_screen_ms = tab.page.evaluate("performance.now()")
    print(f"first screen of {MANY} tasks after {first_screen_ms:.0f} ms (upper bound)")
    lists = [url for url in tab.requests if "/api/v2/tasks?" in url]
    assert lists
    assert all("limit=100&" in url for url in lists), lists
