"""The real server for tests: heserve.server.launch, and the repository's root."""

from __future__ import annotations

from pathlib import Path

from heserve.server.launch import ServerProcess, free_port, start_server, terminate

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ROOT", "ServerProcess", "free_port", "start_server", "terminate"]
