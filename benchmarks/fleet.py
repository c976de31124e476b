"""Scale-out measurements: instances behind nginx with keys in Redis, key-cache cost, capacity.

    python -m heserve.benchmarks.fleet [--seconds 15] [--out benchmarks/results]

Starts real redis-server, nginx and gunicorn processes on free loopback ports (the
configurations in deploy/), and measures, in one run:

1. throughput of encrypted inference through nginx with one instance and with two (one
   worker each), and one instance with two workers without nginx, for the same load;
2. the cost of a key-cache miss (evaluation keys fetched from Redis and deserialized)
   against a hit (one small Redis read), per model, inside one process;
3. capacity: rows/s one fully busy worker (one core) sustains per model and layout, the
   number to size a fleet with.

The load is requests encrypted once and sent over and over by threads of this process,
so the client's encryption does not compete with the servers for the two cores; what is
measured is the service: nginx, HTTP, the workers and Redis.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heserve.client import Client
from heserve.client.keys import SecretContext
from heserve.engine.spec import EncryptionSpec
from heserve.models.nets import digits_split, mnist_size_split
from heserve.models.recipes import breast_cancer_split, diabetes_split
from heserve.server.service.keys import KeyService
from heserve.server.service.keystore import DiskKeyStore, KeyCache
from heserve.server.service.redis_keystore import RedisKeyStore
from heserve.server.service.registry import load_registry

from .cluster import ROOT, start_cluster, start_redis


@dataclass
class Workload:
    model: str
    layout: str
    rows: int
    data: np.ndarray


def workloads() -> list[Workload]:
    bc = breast_cancer_split()[1]
    diabetes = diabetes_split()[1]
    digits = digits_split()[1]
    mnist = mnist_size_split()[1]
    return [
        Workload("breast-cancer-logreg", "single", 1, bc[:1]),
        Workload("breast-cancer-logreg", "batch", 2048, np.resize(bc, (2048, bc.shape[1]))),
        Workload("diabetes-linreg", "single", 1, diabetes[:1]),
        Workload("diabetes-linreg", "batch", 2048, np.resize(diabetes, (2048, diabetes.shape[1]))),
        Workload("digits-mlp", "single", 1, digits[:1]),
        Workload("digits-mlp", "batch", 4096, np.resize(digits, (4096, digits.shape[1]))),
        Workload("mnist-size-mlp", "single", 1, mnist[:1]),
    ]


def drive(url: str, work: Workload, threads: int, seconds: float) -> dict:
    """Send the same encrypted request from `threads` threads for `seconds`; rows/s and latency."""
    clients = [Client(url, timeout=120) for _ in range(threads)]
    models = [c.model(work.model) for c in clients]
    requests_ = []
    for model in models:
        model.register()
        requests_.append(model.encrypt(work.data, work.layout)[0])
        model.send(requests_[-1])  # warm: keys deserialized in the worker that served it
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop(index: int) -> None:
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            try:
                models[index].send(requests_[index])
            except Exception as exc:  # counted, never raised
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                latencies.append(time.perf_counter() - began)

    started = time.monotonic()
    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.monotonic() - started
    for model, client in zip(models, clients, strict=True):
        model.delete_key()
        client.close()
    lat = np.array(latencies or [np.nan])
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "rows_per_s": len(latencies) * work.rows / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p95_ms": float(np.percentile(lat, 95) * 1e3),
    }


def scale_out(seconds: float) -> list[dict]:
    setups = [
        ("nginx + 1 instance x 1 worker", 1, 1, True),
        ("nginx + 2 instances x 1 worker", 2, 1, True),
        ("1 instance x 2 workers, no nginx", 1, 2, False),
    ]
    chosen = [
        w
        for w in workloads()
        if (w.model, w.layout)
        in {("breast-cancer-logreg", "single"), ("digits-mlp", "single"), ("breast-cancer-logreg", "batch")}
    ]
    rows = []
    for label, instances, workers, balancer in setups:
        with (
            tempfile.TemporaryDirectory(prefix="heserve-fleet-") as tmp,
            start_cluster(Path(tmp), instances, workers, balancer) as cluster,
        ):
            for work in chosen:
                result = drive(cluster.url, work, threads=4, seconds=seconds)
                rows.append({"setup": label, "model": work.model, "layout": work.layout, **result})
                print(f"  {label:34} {work.model:22} {work.layout:6} {result['rows_per_s']:>10,.0f} rows/s", flush=True)
    return rows


def capacity(seconds: float) -> list[dict]:
    """One instance with one worker, two requests in flight so that it is never idle."""
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="heserve-capacity-") as tmp,
        start_cluster(Path(tmp), instances=1, workers=1, balancer=False) as cluster,
    ):
        for work in workloads():
            result = drive(cluster.url, work, threads=2, seconds=seconds)
            rows.append({"model": work.model, "layout": work.layout, "rows_per_request": work.rows, **result})
            print(f"  {work.model:22} {work.layout:6} {result['rows_per_s']:>10,.0f} rows/s per core", flush=True)
    return rows


def key_cache(repeats: int = 7) -> list[dict]:
    """Time evaluation-key lookups in one process: cache hit against miss, Redis and disk."""
    registry = load_registry(ROOT / "models")
    rows = []
    with tempfile.TemporaryDirectory(prefix="heserve-keys-") as tmp:
        redis_server = start_redis(Path(tmp) / "redis")
        try:
            stores = {
                "redis": RedisKeyStore(redis_server.url, ttl_seconds=600),
                "disk": DiskKeyStore(Path(tmp) / "disk", ttl_seconds=600),
            }
            for name in ("breast-cancer-logreg", "digits-mlp", "mnist-size-mlp"):
                spec: EncryptionSpec = registry.get(name).spec
                secret = SecretContext.generate(spec.ckks)
                body, header_length = secret.evaluation_key_request(list(spec.rotation_steps), spec.relin_keys_needed)
                for backend, store in stores.items():
                    service = KeyService(store, KeyCache(1 << 30), registry)
                    key_id = service.register(body, header_length).key_id
                    hits, misses, fetches = [], [], []
                    for _ in range(repeats):
                        began = time.perf_counter()
                        service.evaluation_keys(key_id)
                        hits.append(time.perf_counter() - began)
                        service.cache.discard(key_id)
                        began = time.perf_counter()
                        service.evaluation_keys(key_id)
                        misses.append(time.perf_counter() - began)
                        began = time.perf_counter()
                        store.material(key_id)
                        fetches.append(time.perf_counter() - began)
                    rows.append(
                        {
                            "model": name,
                            "store": backend,
                            "key_bytes": store.get(key_id).size_bytes,
                            "hit_ms": float(np.median(hits)) * 1e3,
                            "miss_ms": float(np.median(misses)) * 1e3,
                            "fetch_ms": float(np.median(fetches)) * 1e3,
                        }
                    )
                    print(f"  {name:22} {backend:5} hit {rows[-1]['hit_ms']:.2f} ms, miss {rows[-1]['miss_ms']:.1f} ms")
                    store.delete(key_id)
        finally:
            redis_server.stop()
    return rows


def markdown(results: dict) -> str:
    lines = [
        "Scale-out through nginx (4 client threads resending one encrypted request; rows/s):",
        "",
        "| setup | model | layout | rows/s | p50 ms | p95 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["scale_out"]:
        lines.append(
            f"| {r['setup']} | {r['model']} | {r['layout']} | {r['rows_per_s']:,.0f} | {r['p50_ms']:.1f} "
            f"| {r['p95_ms']:.1f} | {r['errors']} |"
        )
    lines += [
        "",
        "Key cache (one process; a miss fetches the evaluation keys and deserializes them):",
        "",
        "| model | store | key bytes | hit ms | miss ms | of which fetch ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["key_cache"]:
        lines.append(
            f"| {r['model']} | {r['store']} | {r['key_bytes']:,} | {r['hit_ms']:.2f} | {r['miss_ms']:.1f} "
            f"| {r['fetch_ms']:.1f} |"
        )
    lines += [
        "",
        "Capacity of one worker process (one core), two requests in flight:",
        "",
        "| model | layout | rows/request | rows/s per core | p50 ms |",
        "|---|---|---|---|---|",
    ]
    for r in results["capacity"]:
        lines.append(
            f"| {r['model']} | {r['layout']} | {r['rows_per_request']:,} | {r['rows_per_s']:,.0f} | {r['p50_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m heserve.benchmarks.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per workload and setup")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    print("key cache: hit against miss", flush=True)
    results = {"key_cache": key_cache()}
    print("scale-out through nginx", flush=True)
    results["scale_out"] = scale_out(args.seconds)
    print("capacity per core", flush=True)
    results["capacity"] = capacity(args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (args.out / "fleet.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
