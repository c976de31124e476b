"""The browser page at /app/: static files only, served by the same gunicorn as the API.

- /app/ and /app/<file>: the page (js/app: index.html, app.js, style.css);
- /app/sdk/<file>: the JS SDK's modules (js/src, or <web_dir>/sdk when a deployment ships a copy there);
- /app/vendor/<file>: node-seal's browser build (js/app/vendor, made by js/tools/build-app.mjs).

Every /app/ answer carries a Content-Security-Policy that lets the page load nothing from anywhere
but this server (and talk to nothing else), with the sha256 of the page's one inline script, its
import map; and X-Content-Type-Options: nosniff. Only an allow-list of file types is served, with
their exact media types (application/wasm for node-seal's WebAssembly). Paths go through werkzeug's
safe_join (send_from_directory): nothing outside those folders is reachable.

The page needs no API key (it is public, like the health probes); the API calls it makes carry the
key its user types.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from pathlib import Path

from flask import Blueprint, Response, request, send_from_directory

from heserve.server.service.errors import NotFound
from heserve.server.web.routes import services

bp = Blueprint("webapp", __name__)

PREFIX = "/app"
# What the page is made of; anything else (source maps, .d.ts, dotfiles) is not served.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
IMPORT_MAP = re.compile(rb"<script type=\"importmap\">(.*?)</script>", re.DOTALL)
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_hash_lock = threading.Lock()
_hash_cache: dict[Path, tuple[tuple[int, int], list[str]]] = {}


def web_dir() -> Path:
    directory = services().config.web_dir
    if directory is None or not (directory / "index.html").is_file():
        raise NotFound(
            "the web page is not installed on this server (HESERVE_WEB_DIR: a folder with index.html, "
            "such as js/app of a source checkout)",
            code="web_app_not_installed",
        )
    return directory.resolve()


def sdk_dir(directory: Path) -> Path:
    shipped = directory / "sdk"
    return shipped if shipped.is_dir() else directory.parent / "src"


def send(directory: Path, filename: str) -> Response:
    suffix = Path(filename).suffix.lower()
    if not _FILE_NAME.match(filename) or suffix not in MEDIA_TYPES:
        raise NotFound(f"no such file under {PREFIX}/", code="not_found")
    # safe_join inside: "..", absolute paths and anything outside `directory` are 404.
    response = send_from_directory(directory, filename, mimetype=MEDIA_TYPES[suffix], max_age=0)
    response.headers["Cache-Control"] = "no-cache"  # revalidated (ETag): a rebuilt page is seen at once
    return response


@bp.get(f"{PREFIX}/")
def page():
    return send(web_dir(), "index.html")


@bp.get(f"{PREFIX}/<filename>")
def asset(filename: str):
    return send(web_dir(), filename)


@bp.get(f"{PREFIX}/sdk/<filename>")
def sdk_module(filename: str):
    return send(sdk_dir(web_dir()), filename)


@bp.get(f"{PREFIX}/vendor/<filename>")
def vendor_file(filename: str):
    return send(web_dir() / "vendor", filename)


def inline_script_hashes(directory: Path | None) -> list[str]:
    """CSP sources ('sha256-...') of the inline import map(s) of index.html, recomputed when it changes."""
    if directory is None:
        return []
    index = directory / "index.html"
    try:
        stat = index.stat()
    except OSError:
        return []
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _hash_lock:
        cached = _hash_cache.get(index)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    try:
        html = index.read_bytes()
    except OSError:
        return []
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'" for body in IMPORT_MAP.findall(html)
    ]
    with _hash_lock:
        _hash_cache[index] = (stamp, hashes)
    return hashes


def content_security_policy(directory: Path | None) -> str:
    script_src = " ".join(["'self'", "'wasm-unsafe-eval'", *inline_script_hashes(directory)])
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {script_src}",
            "connect-src 'self'",
            "img-src 'self' data: blob:",
            "style-src 'self'",
            "font-src 'self'",
            "object-src 'none'",
            "worker-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


@bp.after_app_request
def security_headers(response: Response) -> Response:
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        response.headers["Content-Security-Policy"] = content_security_policy(services().config.web_dir)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
    return response
