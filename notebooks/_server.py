"""Helpers for the notebooks: a real server to talk to (the project is installed: `make setup`).

The notebooks run with notebooks/ as working directory and import this module first:

    import _server
    server = _server.start(workers=1)       # `heserve-server` (gunicorn) on a free loopback port
    ...
    server.stop()                           # also done at interpreter exit for every server started here

`_server.connect_or_start()` uses the server at $HESERVE_URL when that is set (its log is then not
readable from here) and starts one otherwise. Each started server gets a temporary directory with its
key store (`keys/`), its metrics files and its log (`server.log`, one JSON object per line), removed when it
stops. On Linux a started server also gets SIGTERM if the process that started it dies.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from heserve.server.launch import free_port, terminate

ROOT = Path(__file__).resolve().parent.parent

_STARTED: list[Server] = []

# On Linux the server is asked to receive SIGTERM when the process that started it dies (a kernel
# killed mid-notebook then leaves no server behind); the wrapper execs into `heserve-server`.
_WRAPPER = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "    if os.getppid() != int(sys.argv[1]):\n"
    "        sys.exit(1)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'heserve.server', *sys.argv[2:]])\n"
)


def repo_root() -> Path:
    """The repository root (the notebooks find the shipped models and data there)."""
    return ROOT


@dataclass
class Server:
    """A server this notebook talks to; `process` and `workdir` are None for one given by HESERVE_URL."""

    url: str
    process: subprocess.Popen | None = None
    workdir: Path | None = None

    @property
    def started_here(self) -> bool:
        return self.process is not None

    @property
    def keys_dir(self) -> Path | None:
        return self.workdir / "keys" if self.workdir else None

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "server.log" if self.workdir else None

    def log_lines(self) -> list[dict]:
        """Every JSON line the server wrote so far (gunicorn's, the application's, the audit trail)."""
        if self.log_path is None or not self.log_path.exists():
            return []
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"unparsed": line})
        return lines

    def audit_lines(self) -> list[dict]:
        """The audit trail: one line per request."""
        return [line for line in self.log_lines() if line.get("event") == "request"]

    def audit_line(self, request_id: str, timeout: float = 10.0) -> dict:
        """The audit line of one request (waits briefly: the line is written after the answer is sent)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.audit_lines():
                if line.get("request_id") == request_id:
                    return line
            if time.monotonic() > deadline:
                raise LookupError(f"no audit line for request {request_id!r}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM, gunicorn's graceful stop) and remove its key store and log."""
        if self.process is not None:
            terminate(self.process, signal.SIGTERM, 30)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self in _STARTED:
            _STARTED.remove(self)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"started here, pid {self.process.pid}" if self.process else "external"
        return f"Server({self.url!r}, {where})"


def start(
    models_dir: str | os.PathLike | None = None,
    workers: int = 1,
    key_ttl_seconds: float | None = None,
    timeout: float = 90.0,
    **env: str,
) -> Server:
    """Start `heserve-server` on a free loopback port and wait until it answers ready.

    `env`: further settings as HESERVE_* variables, e.g. `start(max_single_rows="16")`. HESERVE_*
    variables of this process are not passed on, so the server runs with the defaults plus these.
    """
    workdir = Path(tempfile.mkdtemp(prefix="heserve-notebook-"))
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HESERVE_")}
    environ.update({f"HESERVE_{k.upper()}": str(v) for k, v in env.items()})
    # The workers' shared metrics files live in the server's own directory, removed with it.
    (workdir / "metrics").mkdir()
    environ["PROMETHEUS_MULTIPROC_DIR"] = str(workdir / "metrics")
    args = [
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--keys-dir",
        str(workdir / "keys"),
        "--models-dir",
        str(Path(models_dir).resolve() if models_dir else ROOT / "models"),
    ]
    if key_ttl_seconds is not None:
        args += ["--key-ttl", str(key_ttl_seconds)]
    with open(workdir / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, str(os.getpid()), *args],
            cwd=ROOT,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, workdir)
    _STARTED.append(server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_text = (workdir / "server.log").read_text(errors="replace")
            server.stop()
            raise RuntimeError(f"the server exited at start:\n{log_text[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + "/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the server was not ready within {timeout:g} s")


def connect_or_start(**kwargs) -> Server:
    """The server at $HESERVE_URL if set, else a new one (`start(**kwargs)`)."""
    url = os.environ.get("HESERVE_URL", "").strip()
    if url:
        return Server(url.rstrip("/"))
    return start(**kwargs)


def stop_all() -> None:
    for server in list(_STARTED):
        server.stop()


atexit.register(stop_all)


def table(rows: list[list], headers: list[str]) -> str:
    """A plain-text table (numbers right-aligned), for printing small comparisons."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3e}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6) else f"{value:.6f}"
    return str(value)
