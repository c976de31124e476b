"""What a result depends on: machine, library versions, the server's revision, the machine's load."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_revision() -> str:
    """The checkout's commit, with "-dirty" when tracked files differ from it; "unknown" outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + ("-dirty" if dirty else "")


def load_average() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def environment(command: str, workers: int) -> dict:
    """The header of a result: everything needed to judge whether two results are comparable."""
    cpu, n = cpu_model(), cores()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "machine": f"{cpu}, {n} cores, {platform.machine()}, {platform.system()}",
        "cpu": cpu,
        "cores": n,
        "python": platform.python_version(),
        "numpy": version("numpy"),
        "tenseal": version("tenseal"),
        "torch": version("torch"),
        "matplotlib": version("matplotlib"),
        "server revision": git_revision(),
        "server": f"gunicorn, {workers} gthread workers x {os.environ.get('HESERVE_THREADS', '4')} threads, "
        "loopback HTTP; client in the same machine",
        "load average at start": load_average(),
    }
