"""Real redis-server and nginx processes for the multi-instance tests, from deploy/'s configurations.

Both come from Debian's packages (`make system-packages` installs them). Each runs in the
foreground as a child of the test, on a free loopback port, with its files in a temporary
directory; the configuration is the one an operator deploys, with only ports and paths
replaced.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from heserve.server.launch import ServerProcess, free_port, start_server, terminate

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def require(program: str) -> str:
    path = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise RuntimeError(f"{program} is not installed: `make system-packages` installs it from Debian's packages")
    return path


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited at start:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not open in time:\n{log.read_text(errors='replace')}")


@dataclass
class Cluster:
    redis: RedisServer
    servers: list[ServerProcess]
    nginx: Nginx | None

    @property
    def url(self) -> str:
        """Where clients go: nginx, or the only instance when there is no balancer."""
        return self.nginx.url if self.nginx is not None else self.servers[0].url

    @property
    def a(self) -> ServerProcess:
        return self.servers[0]

    @property
    def b(self) -> ServerProcess:
        return self.servers[1]


@dataclass
class RedisServer:
    directory: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> RedisServer:
        command = [
            require("redis-server"),
            str(DEPLOY / "redis" / "redis.conf"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--maxmemory", "512mb",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process, self.log_path)
        return self

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits, as on a clean restart."""
        if self.process is not None:
            terminate(self.process, signal.SIGTERM, 20)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def start_redis(directory: Path) -> RedisServer:
    directory.mkdir(parents=True, exist_ok=True)
    return RedisServer(directory, free_port()).start()


def render_nginx_site(upstreams: list[str], port: int, log_dir: Path) -> str:
    """deploy/nginx/heserve.conf with this test's instances, port and log directory."""
    site = (DEPLOY / "nginx" / "heserve.conf").read_text()
    servers = "\n".join(f"    server {u} max_fails=2 fail_timeout=5s;" for u in upstreams)
    site, n_servers = re.subn(r"(?m)^\s*server 127\.0\.0\.1:\d+[^;]*;\n", "", site)
    site, n_upstream = re.subn(r"(?m)^(upstream heserve \{\n)", lambda m: m.group(1) + servers + "\n", site)
    site, n_listen = re.subn(r"(?m)^(\s*)listen \d+;", lambda m: f"{m.group(1)}listen 127.0.0.1:{port};", site)
    site = site.replace("/var/log/nginx/", f"{log_dir}/")
    if (n_servers, n_upstream, n_listen) != (2, 1, 1):
        raise RuntimeError("deploy/nginx/heserve.conf changed shape: update render_nginx_site")
    return site


@dataclass
class Nginx:
    directory: Path
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        path = self.directory / "heserve-access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        terminate(self.process, signal.SIGQUIT, 20)  # SIGQUIT: graceful, finish the requests in flight


def start_nginx(directory: Path, upstreams: list[str]) -> Nginx:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (directory / "heserve.conf").write_text(render_nginx_site(upstreams, port, directory))
    # As root, nginx's workers would run as `nobody`, which cannot enter a private test directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    (directory / "nginx.conf").write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    default_type application/octet-stream;
    include {directory}/heserve.conf;
}}
"""
    )
    log = directory / "error.log"
    command = [require("nginx"), "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", str(log)]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nginx refused the configuration:\n{check.stderr}")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_port(port, process, log)
    return Nginx(directory, port, process)


@contextmanager
def start_cluster(tmp: Path, instances: int = 2, workers: int = 1, balancer: bool = True, **env: str):
    """redis-server, `instances` servers on the Redis key store with deploy/'s gunicorn configuration
    and, with `balancer`, nginx in front; everything started is stopped, also when a start fails."""
    started: list = []
    try:
        redis_server = start_redis(tmp / "redis")
        started.append(redis_server)
        settings = {
            "key_store": "redis",
            "redis_url": redis_server.url,
            "gunicorn_config_file": str(DEPLOY / "gunicorn.conf.py"),
            **env,
        }
        servers: list[ServerProcess] = []
        for i in range(instances):
            servers.append(start_server(tmp / f"instance-{i}", workers=workers, **settings))
            started.append(servers[-1])
        nginx = None
        if balancer:
            nginx = start_nginx(tmp / "nginx", [s.url.removeprefix("http://") for s in servers])
            started.append(nginx)
        yield Cluster(redis_server, servers, nginx)
    finally:
        for process in reversed(started):
            process.stop()
