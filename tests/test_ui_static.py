"""The web page's files as taskd serves them (no browser: tests/test_ui.py drives one):
security headers, caching, what is and is not served, the sign-in marker by transport,
`GET /api/v2/whoami`, the package data that ships the files, and the rules the page's
code keeps (no inline script or style, no HTML built from strings).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import aiohttp
from api_fixtures import KEY_SCOPES, USER, USER_SCOPES, Api, basic, open_api

from taskd.api.ui import CONTENT_SECURITY_POLICY

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "taskd" / "api" / "static"


async def test_the_page_is_served_with_strict_security_headers(api: Api) -> None:
    """Every file: the CSP (no inline script or style, nothing from elsewhere, no frame),
    nosniff, no referrer; the right content type; no credentials needed."""
    anonymous = await api.tcp(None)
    for path, content_type in (
        ("/ui/", "text/html"),
        ("/ui/index.html", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/icon.svg", "image/svg+xml"),
    ):
        reply = await anonymous.get(path)
        assert reply.status == 200, path
        assert reply.content_type.startswith(content_type), path
        headers = reply.headers
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"
    policy = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"


async def test_an_unchanged_file_is_answered_304(api: Api) -> None:
    """The ETag comes back as If-None-Match: 304, no body, the same headers."""
    client = await api.tcp(None)
    first = await client.get("/ui/app.js")
    etag = {k.lower(): v for k, v in first.headers.items()}["etag"]
    again = await client.get("/ui/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.body == b""
    assert again.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


async def test_only_the_pages_files_are_served(api: Api) -> None:
    """Unknown names: 404; other folders, and paths outside /ui/: what any unknown path
    gets (401 without credentials); /ui redirects to /ui/."""
    client = await api.tcp(None)
    for path in ("/ui/nope.js", "/ui/ui.py"):
        assert (await client.get(path)).status == 404, path
    # `..` is resolved before it is sent: outside /ui/, the API asks for credentials.
    for path in ("/ui/static/app.js", "/ui/.env.js", "/ui/../api/ui.py"):
        assert (await client.get(path)).status == 401, path
    async with (
        aiohttp.ClientSession() as session,
        session.get(api.tcp_base + "/ui", allow_redirects=False) as reply,
    ):
        assert reply.status == 301
        assert reply.headers["Location"] == "/ui/"


async def test_the_page_asks_for_a_sign_in_except_over_a_trusted_socket(
    api: Api, tmp_path: Path
) -> None:
    """index.html says `required` over TCP, `not-needed` over the trusted Unix socket,
    and `required` again when the config does not trust the socket."""
    marker = re.compile(rb'<meta name="taskd-sign-in" content="([a-z-]+)">')
    over_tcp = await (await api.tcp(None)).get("/ui/")
    assert marker.findall(over_tcp.body) == [b"required"]
    over_socket = await api.unix.get("/ui/")
    assert marker.findall(over_socket.body) == [b"not-needed"]
    assert over_socket.headers["Etag"] != over_tcp.headers["Etag"]
    untrusted_dir = tmp_path / "untrusted"
    untrusted_dir.mkdir()
    async with open_api(untrusted_dir, trust_unix_socket=False) as untrusted:
        reply = await untrusted.unix.get("/ui/")
        assert marker.findall(reply.body) == [b"required"]


async def test_whoami_names_the_caller_and_spells_out_its_scopes(api: Api) -> None:
    """Keys, a wildcard, a user and the trusted socket; no credentials: 401."""
    action = (await (await api.tcp("action")).get("/api/v2/whoami")).json
    # The test keys are admins too (api_fixtures: they reach tasks made over the socket).
    assert action == {
        "name": "key-action",
        "scopes": ["admin", "tasks/action"],
        "allowed": ["admin", "tasks/action"],
    }
    tasks = (await (await api.tcp("tasks")).get("/api/v2/whoami")).json
    assert tasks["scopes"] == ["admin", "tasks/*"]
    assert tasks["allowed"] == sorted(
        {"admin"}
        | {
            scope
            for scopes in KEY_SCOPES.values()
            for scope in scopes
            if scope.startswith("tasks/") and "*" not in scope
        }
    )
    everything = (await (await api.tcp("all")).get("/api/v2/whoami")).json
    assert "metrics" in everything["allowed"]
    user = await api.tcp(None, authorization=basic(USER, "correct horse battery staple"))
    assert (await user.get("/api/v2/whoami")).json["allowed"] == sorted(USER_SCOPES)
    over_socket = (await api.unix.get("/api/v2/whoami")).json
    assert over_socket["name"] == "unix-socket"
    assert over_socket["allowed"] == everything["allowed"]
    assert (await (await api.tcp(None)).get("/api/v2/whoami")).status == 401


def test_every_file_of_the_page_ships_in_the_package() -> None:
    """pyproject's package-data names every file in taskd/api/static (the wheel and the
    zipapp carry them), and the page's files are all of a type taskd serves."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["taskd.api"]
    files = sorted(path.relative_to(STATIC.parent).as_posix() for path in STATIC.iterdir())
    assert files
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert unshipped == []
    assert {Path(f).suffix for f in files} <= {".html", ".js", ".css", ".svg"}


# What the page's code never does: build HTML from strings, run strings as code, or carry
# inline script or style (the CSP would block them; this finds them before a browser does).
_FORBIDDEN_JS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
    r"setAttribute\(\s*[\"']style|\.cssText|javascript:"
)


def test_the_pages_code_inserts_values_only_as_text() -> None:
    """No innerHTML and friends in the JavaScript; no inline script, style or event
    handler in the HTML; nothing loaded from another origin."""
    scripts = sorted(STATIC.glob("*.js"))
    assert len(scripts) >= 5
    for script in scripts:
        text = script.read_text(encoding="utf-8")
        assert _FORBIDDEN_JS.findall(text) == [], script.name
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), script.name
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    assert re.findall(r"<style|\sstyle=|\son[a-z]+=", html) == []
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_the_readme_shows_a_small_screenshot_of_the_page() -> None:
    """docs/web-page.png, a PNG under 300 KB, is shown in the README's web section."""
    shot = REPO / "docs" / "web-page.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size < 300_000
    assert "](docs/web-page.png)" in (REPO / "README.md").read_text(encoding="utf-8")
