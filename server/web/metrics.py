"""Prometheus metrics, correct across gunicorn workers (prometheus_client multiprocess mode).

`heserve-server` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers
start; each worker writes its samples there and any worker serves the aggregate at /metrics.
Without that variable (an app built in process) the application's own registry is shown.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

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
        self.key_loads = Histogram(
            "heserve_key_load_seconds",
            "cache misses: fetching evaluation keys from the key store and deserializing them",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )

    def observe(self, route: str, method: str, status: int, bytes_in: int, bytes_out: int) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.bytes_in.labels(route).inc(bytes_in)
        self.bytes_out.labels(route).inc(bytes_out)

    # heserve.server.service.keys.KeyObserver
    def key_loaded(self, seconds: float) -> None:
        self.key_loads.observe(seconds)

    def key_cache_hit(self) -> None:
        self.key_cache_hits.inc()

    def exposition(self, store, quota_limits: dict | None = None) -> bytes:
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        keys = CollectorRegistry()
        keys.register(RegisteredKeys(store))
        if quota_limits is not None:
            keys.register(QuotaLimitsCollector(quota_limits))
        return generate_latest(registry) + generate_latest(keys)
