"""A bounded load test: concurrent SDK clients doing encrypted inference against one server.

    python -m heserve.benchmarks.loadtest --clients 16 --seconds 60 [--kill-worker-after 20]

Starts its own server (two gunicorn workers) on a free loopback port unless --url is given.
With --kill-worker-after, one worker is SIGKILLed mid-run: the master replaces it and only
requests in flight on that worker may fail (the SDK retries an inference once on a broken
connection, so the clients normally see none of it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from heserve.client import Client
from heserve.models.recipes import breast_cancer_split


def run_load(url: str, clients: int, seconds: float, kill: tuple[float, set[int]] | None = None) -> dict:
    _, x_test, _, _ = breast_cancer_split()
    latencies: list[float] = []
    errors: list[str] = []
    key_ids: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + seconds

    def worker(index: int) -> None:
        rng = np.random.default_rng(index)
        with Client(url, timeout=60) as client:
            model = client.model("breast-cancer-logreg")
            model.register()
            with lock:
                key_ids.append(model.key_id)
            while time.monotonic() < stop_at:
                row = x_test[rng.integers(len(x_test))]
                began = time.perf_counter()
                try:
                    model.decision_function(row, layout="single")
                    with lock:
                        latencies.append(time.perf_counter() - began)
                except Exception as exc:  # counted and reported, never raised
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    killed = None
    if kill is not None:
        delay, pids = kill
        time.sleep(max(0.0, start + delay - time.monotonic()))
        killed = sorted(pids)[0]
        os.kill(killed, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=seconds + 120)
    with Client(url) as client:
        alive = sum(1 for key_id in key_ids if client.key_status(key_id)["status"] == "active")
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p95_ms": float(np.percentile(lat, 95) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "killed_worker": killed,
        "keys_registered": len(key_ids),
        "keys_alive_after": alive,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--kill-worker-after", type=float, default=None)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    if args.url:
        print(json.dumps(run_load(args.url, args.clients, args.seconds), indent=2))
        return 0
    from heserve.server.launch import start_server

    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), workers=2)
        try:
            kill = (args.kill_worker_after, server.worker_pids()) if args.kill_worker_after else None
            report = run_load(server.url, args.clients, args.seconds, kill)
        finally:
            server.stop()
    print(json.dumps(report, indent=2))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
