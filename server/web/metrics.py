"""Prometheus metrics, correct across gunicorn workers (prometheus_client multiprocess mode).

`heserve-server` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers
start; each worker writes its samples there and any worker serves the aggregate at /metrics.
Without that variable (an app built in process) the application's own registry is shown.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from heserve.server.service.keystore import KeyStoreUnavailable


class RegisteredKeys:
    """Reads the key store at scrape time, so every worker reports the same number."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        try:
            count = self.store.count()
        except KeyStoreUnavailable:
            count = None  # metrics must stay scrapable while the key store is down
        yield GaugeMetricFamily(
            "heserve_key_store_up", "1 if the key store answered this scrape", value=int(count is not None)
        )
        if count is not None:
            yield GaugeMetricFamily("heserve_registered_keys", "evaluation keys currently registered", value=count)


class QuotaLimitsCollector:
    """The configured per-tenant limits, so an alert can compare usage with them (0 = unlimited)."""

    def __init__(self, limits: dict):
        self.limits = limits

    def collect(self):
        family = GaugeMetricFamily("heserve_quota_limit", "per-tenant limit in force (0: unlimited)", labels=["limit"])
        for name, value in sorted(self.limits.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                family.add_metric([name], float(value))
        yield family


class ServerProcesses:
    """CPU time and resident memory of every process of this server, read from /proc at scrape time.

    prometheus_client's own process collector reports only the process that serves the scrape,
    and does nothing in multiprocess mode; here the worker that answers reads its gunicorn
    master and every sibling worker (under gunicorn), or itself (an application in process)."""

    def __init__(self, under_gunicorn: bool):
        self.under_gunicorn = under_gunicorn
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def processes(self) -> list[tuple[int, str]]:
        if not self.under_gunicorn:
            return [(os.getpid(), "process")]
        master = os.getppid()
        children = Path(f"/proc/{master}/task/{master}/children")
        try:
            workers = [int(pid) for pid in children.read_text().split()]
        except OSError:
            workers = [os.getpid()]
        return [(master, "master")] + [(pid, "worker") for pid in workers]

    def collect(self):
        cpu = CounterMetricFamily(
            "heserve_process_cpu_seconds", "user and system CPU time of each server process", labels=["pid", "role"]
        )
        memory = GaugeMetricFamily(
            "heserve_process_resident_memory_bytes", "resident memory of each server process", labels=["pid", "role"]
        )
        for pid, role in self.processes():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                statm = Path(f"/proc/{pid}/statm").read_text()
            except OSError:
                continue  # a worker that exited between the listing and the read
            fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
            cpu.add_metric([str(pid), role], (int(fields[11]) + int(fields[12])) / self.ticks)
            memory.add_metric([str(pid), role], int(statm.split()[1]) * self.page)
        yield cpu
        yield memory


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


class Metrics:
    """The service's counters, in a registry of the application's own (built by the app factory).

    In multiprocess mode (PROMETHEUS_MULTIPROC_DIR set) the samples go to the shared directory
    and any worker serves the aggregate; otherwise this registry is what /metrics shows.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "heserve_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=r
        )
        self.bytes_in = Counter("heserve_request_bytes", "request body bytes received", ["route"], registry=r)
        self.bytes_out = Counter("heserve_response_bytes", "response body bytes sent", ["route"], registry=r)
        self.inference = Histogram(
            "heserve_inference_seconds",
            "server time of successful inference requests",
            ["model", "layout"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.quota_refusals = Counter(
            "heserve_quota_refusals", "requests refused with 429, by the limit they hit", ["code"], registry=r
        )
        self.key_cache_hits = Counter(
            "heserve_key_cache_hits", "uses of evaluation keys found deserialized in the worker's cache", registry=r
        )
        self.inflight = Gauge(
            "heserve_inflight_requests",
            "requests being served now (all workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        # The statistics extension (GET /v2/models/stats) is computed from these, so that every
        # worker answers with the totals of all workers.
        self.model_requests = Counter(
            "heserve_model_requests",
            "inference requests that reached a model, by outcome",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.model_request_ns = Counter(
            "heserve_model_request_nanoseconds",
            "time of inference requests that reached a model, by outcome",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.model_rows = Counter(
            "heserve_model_rows", "rows answered by successful inference requests", ["model", "version"], registry=r
        )
        self.model_phase_ns = Counter(
            "heserve_model_phase_nanoseconds",
            "time of successful inference requests per phase (queue, compute_input, compute_infer, compute_output)",
            ["model", "version", "phase"],
            registry=r,
        )
        self.model_composed_rotations = Counter(
            "heserve_model_composed_rotations",
            "rotations (key switches) added by composing steps a client registered no Galois key for",
            ["model", "version"],
            registry=r,
        )
        self.model_last_inference = Gauge(
            "heserve_model_last_inference_milliseconds",
            "when the model last answered, in milliseconds since the epoch",
            ["model", "version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.key_loads = Histogram(
            "heserve_key_load_seconds",
            "cache misses: fetching evaluation keys from the key store and deserializing them",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )

    def observe(self, route: str, method: str, status: int, bytes_in: int, bytes_out: int) -> None:
        # The method is the client's word: any other token would be a new time series per request.
        method = method if method in HTTP_METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.bytes_in.labels(route).inc(bytes_in)
        self.bytes_out.labels(route).inc(bytes_out)

    def observe_inference(self, model: str, version: str, ok: bool, total_ns: int, info: dict) -> None:
        """One inference request that reached a model: its outcome, and on success rows and phases."""
        outcome = "success" if ok else "fail"
        self.model_requests.labels(model, version, outcome).inc()
        self.model_request_ns.labels(model, version, outcome).inc(total_ns)
        if not ok:
            return
        self.model_rows.labels(model, version).inc(info.get("rows", 0))
        self.model_composed_rotations.labels(model, version).inc(info.get("composed_rotations", 0))
        self.model_phase_ns.labels(model, version, "queue").inc(info.get("queue_ns", 0))
        times = info.get("times")
        for phase, ns in (times.ns.items() if times is not None else ()):
            self.model_phase_ns.labels(model, version, phase).inc(ns)
        self.model_last_inference.labels(model, version).set(time.time() * 1e3)

    def collected(self) -> CollectorRegistry:
        """The registry whose samples are the server's totals: all workers' in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return registry
        return self.registry

    def model_statistics(self, models: list[tuple[str, str]]) -> list[dict]:
        """Triton's statistics extension for these (name, version) pairs, totals of all workers."""
        wanted = set(models)
        totals: dict[tuple[str, str], dict] = {key: _empty_stats() for key in models}
        for family in self.collected().collect():
            for sample in family.samples:
                key = (sample.labels.get("model"), sample.labels.get("version"))
                if key not in wanted:
                    continue
                stats = totals[key]
                if sample.name == "heserve_model_requests_total":
                    stats["inference_stats"][sample.labels["outcome"]]["count"] += int(sample.value)
                elif sample.name == "heserve_model_request_nanoseconds_total":
                    stats["inference_stats"][sample.labels["outcome"]]["ns"] += int(sample.value)
                elif sample.name == "heserve_model_rows_total":
                    stats["inference_count"] += int(sample.value)
                elif sample.name == "heserve_model_phase_nanoseconds_total":
                    phase = stats["inference_stats"][sample.labels["phase"]]
                    phase["ns"] += int(sample.value)
                elif sample.name == "heserve_model_last_inference_milliseconds":
                    stats["last_inference"] = max(stats["last_inference"], int(sample.value))
        out = []
        for (name, version), stats in totals.items():
            succeeded = stats["inference_stats"]["success"]["count"]
            stats["execution_count"] = succeeded
            for phase in PHASES:
                stats["inference_stats"][phase]["count"] = succeeded
            out.append({"name": name, "version": version, **stats})
        return out

    # heserve.server.service.keys.KeyObserver
    def key_loaded(self, seconds: float) -> None:
        self.key_loads.observe(seconds)

    def key_cache_hit(self) -> None:
        self.key_cache_hits.inc()

    def exposition(self, store, quota_limits: dict | None = None) -> bytes:
        registry = self.collected()
        live = CollectorRegistry()
        live.register(RegisteredKeys(store))
        live.register(ServerProcesses(under_gunicorn=bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))))
        if quota_limits is not None:
            live.register(QuotaLimitsCollector(quota_limits))
        return generate_latest(registry) + generate_latest(live)


def _empty_stats() -> dict:
    phases = ("success", "fail", *PHASES)
    return {
        "last_inference": 0,
        "inference_count": 0,
        "execution_count": 0,
        "inference_stats": {phase: {"count": 0, "ns": 0} for phase in phases},
        "batch_stats": [],
    }
