"""Run the real server (`python -m server`, gunicorn) on a free loopback port for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def terminate(process: subprocess.Popen, sig: int, timeout: float) -> None:
    """Ask a child to stop with `sig`; kill it if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_server(tmp: Path, workers: int = 2, models_dir: Path | None = None, **env: str) -> ServerProcess:
    port = free_port()
    keys_dir = tmp / "keys"
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / "server.log"
    environ = dict(os.environ)
    # Quotas are off unless a test sets them: most tests are one client sending many requests.
    settings = {f"quota_{name}": "0" for name in ("max_keys", "max_key_bytes", "requests_per_second", "rows_per_hour")}
    settings.update(env)
    environ.update({f"HESERVE_{k.upper()}": str(v) for k, v in settings.items()})
    command = [
        sys.executable,
        "-m",
        "server",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--keys-dir",
        str(keys_dir),
        "--models-dir",
        str(models_dir or ROOT / "models"),
    ]
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(f"http://127.0.0.1:{port}", keys_dir, log_path, process, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited at start:\n{server.log()}")
        try:
            if requests.get(server.url + "/v2/health/ready", timeout=1).status_code == 200 and (
                len(server.worker_pids()) >= workers
            ):
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready in time:\n{server.log()}")
