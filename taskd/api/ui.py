"""The web page at `/ui/`: static files shipped inside the package, served with strict
security headers.

The page is plain HTML, CSS and JavaScript modules (`taskd/api/static/`, no build step,
nothing fetched from elsewhere). It talks to the v2 API with the `Authorization` header the
person signed in with (held in the tab's sessionStorage), never a cookie, so no request can
be forged from another site. The files themselves are public: they hold no data.

The files are read once, when the app is built (a few tens of KiB), and answered from
memory with an ETag. `index.html` says whether the page needs a sign-in: not when it was
asked over a trusted Unix socket (through an SSH tunnel, say), where the API needs no
credentials either.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from taskd.api.common import API_SETTINGS, PUBLIC, scope

UI_PREFIX = "/ui"
_STATIC = ("taskd.api", "static")
# Each file type the page uses, and what it is served as. Anything else is not served.
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# No inline script or style, nothing from another origin, never inside a frame.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # for browsers that predate frame-ancestors
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidate every time (with the ETag): an upgraded daemon serves its own page.
    "Cache-Control": "no-cache",
}
# index.html carries this marker; the page reads it to know whether to ask for a sign-in.
_SIGN_IN_MARKER = b'<meta name="taskd-sign-in" content="required">'
_NO_SIGN_IN = b'<meta name="taskd-sign-in" content="not-needed">'


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    content_type: str
    etag: str


def _file(body: bytes, content_type: str) -> _File:
    return _File(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def load_files() -> dict[str, _File]:
    """The page's files by name (`index.html`, `app.js`, ...), read from the package."""
    folder = resources.files(_STATIC[0]).joinpath(_STATIC[1])
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = _file(entry.read_bytes(), _TYPES[suffix])
    if _SIGN_IN_MARKER not in files["index.html"].body:
        raise RuntimeError("index.html lacks the sign-in marker")  # a packaging mistake
    return files


_FILES: web.AppKey[dict[str, _File]] = web.AppKey("ui_files")
_INDEX_TRUSTED = web.AppKey("ui_index_trusted", _File)


def _trusted_socket(request: web.Request) -> bool:
    """Whether the request came over the Unix socket and the config trusts it."""
    transport = request.transport
    on_socket = transport is not None and isinstance(transport.get_extra_info("sockname"), str)
    return on_socket and request.config_dict[API_SETTINGS].trust_unix_socket


def _answer(request: web.Request, file: _File) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": file.etag}
    if file.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = file.content_type
    return web.Response(body=file.body, headers=headers)


@scope(PUBLIC)
async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently(f"{UI_PREFIX}/")


@scope(PUBLIC)
async def _index(request: web.Request) -> web.Response:
    if _trusted_socket(request):
        return _answer(request, request.app[_INDEX_TRUSTED])
    return _answer(request, request.app[_FILES]["index.html"])


@scope(PUBLIC)
async def _static(request: web.Request) -> web.Response:
    if request.match_info["name"] == "index.html":
        return await _index(request)
    found = request.app[_FILES].get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    return _answer(request, found)


def add_ui(app: web.Application) -> None:
    """Serve the web page on `app`: `/ui` (redirects), `/ui/` and `/ui/<file>`."""
    files = load_files()
    index = files["index.html"]
    app[_FILES] = files
    app[_INDEX_TRUSTED] = _file(
        index.body.replace(_SIGN_IN_MARKER, _NO_SIGN_IN), index.content_type
    )
    app.router.add_get(UI_PREFIX, _redirect)
    app.router.add_get(f"{UI_PREFIX}/", _index)
    app.router.add_get(UI_PREFIX + "/{name:[A-Za-z0-9_-]+\\.[a-z]+}", _static)


def is_ui_route(path: str) -> bool:
    """Whether `path` (a route's canonical path) belongs to the web page, not the API."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")
