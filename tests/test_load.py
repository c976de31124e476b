"""16 concurrent encrypted clients for 60 s, one gunicorn worker SIGKILLed on the way."""

from __future__ import annotations

import time

from heserve.benchmarks.loadtest import run_load

from .serverproc import start_server


def test_sixteen_clients_for_a_minute_survive_a_killed_worker(tmp_path):
    server = start_server(tmp_path, workers=2)
    try:
        before = server.worker_pids()
        report = run_load(server.url, clients=16, seconds=60, kill=(20, before))
        assert report["errors"] == 0, report["error_samples"]
        assert report["requests"] > 16 * 60  # every client kept going (>1 request/s each)
        assert report["keys_alive_after"] == report["keys_registered"] == 16
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(server.worker_pids()) < 2:
            time.sleep(0.2)
        after = server.worker_pids()
        assert len(after) == 2 and report["killed_worker"] not in after
        assert "Traceback" not in server.log()
    finally:
        server.stop()
