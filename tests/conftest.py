from __future__ import annotations

import pytest

from client import Client

from .serverproc import ServerProcess, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> ServerProcess:
    """One real gunicorn server with two workers for the whole session."""
    proc = start_server(tmp_path_factory.mktemp("server"), workers=2)
    yield proc
    proc.stop()


@pytest.fixture
def client(server) -> Client:
    with Client(server.url, timeout=60) as c:
        yield c
