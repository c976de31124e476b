"""Running the real server as a child process: a free loopback port, readiness, a polite stop.

For the demo, the notebooks, the benchmarks and the tests, which all start `python -m
heserve.server` (gunicorn) the way an operator would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def terminate(process: subprocess.Popen, sig: int, timeout: float) -> None:
    """Ask a child to stop with `sig`; kill it if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class ServerProcess:
    url: str
    keys_dir: Path
    log_path: Path
    process: subprocess.Popen
    env: dict = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(p) for p in children.read_text().split()} if children.exists() else set()

    def stop(self) -> None:
        terminate(self.process, signal.SIGTERM, 30)


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_server(tmp: Path, workers: int = 2, models_dir: Path | None = None, **env: str) -> ServerProcess:
    """A server on a free loopback port with its key store and log under `tmp`, once it answers ready.

    `env`: HESERVE_* settings by lower-case name (quotas are off unless given: one client sending
    many requests is the usual caller here)."""
    port = free_port()
    keys_dir = tmp / "keys"
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / "server.log"
    environ = dict(os.environ)
    settings = {f"quota_{name}": "0" for name in ("max_keys", "max_key_bytes", "requests_per_second", "rows_per_hour")}
    settings.update(env)
    environ.update({f"HESERVE_{k.upper()}": str(v) for k, v in settings.items()})
    command = [sys.executable, "-m", "heserve.server", "--port", str(port), "--workers", str(workers)]
    command += ["--keys-dir", str(keys_dir)]
    if models_dir is not None:
        command += ["--models-dir", str(models_dir)]
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, env=environ, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(f"http://127.0.0.1:{port}", keys_dir, log_path, process, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited at start:\n{server.log()}")
        if ready(server.url) and len(server.worker_pids()) >= workers:
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready in time:\n{server.log()}")
