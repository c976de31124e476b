"""Prometheus metrics, correct across gunicorn workers (prometheus_client multiprocess mode).

`heserve-server` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers
start; each worker writes its samples there and any worker serves the aggregate at /metrics.
Without that variable (an app built in process) the default registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from heserve.server.service.keystore import KeyStoreUnavailable

REQUESTS = Counter("heserve_requests", "HTTP requests by route and status", ["route", "method", "status"])
BYTES_IN = Counter("heserve_request_bytes", "request body bytes received", ["route"])
BYTES_OUT = Counter("heserve_response_bytes", "response body bytes sent", ["route"])
INFERENCE = Histogram(
    "heserve_inference_seconds",
    "server time of successful inference requests",
    ["model", "layout"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

QUOTA_REFUSALS = Counter("heserve_quota_refusals", "requests refused with 429, by the limit they hit", ["code"])
KEY_CACHE_HITS = Counter("heserve_key_cache_hits", "uses of evaluation keys found deserialized in the worker's cache")
KEY_LOADS = Histogram(
    "heserve_key_load_seconds",
    "cache misses: fetching evaluation keys from the key store and deserializing them",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


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


def observe(route: str, method: str, status: int, bytes_in: int, bytes_out: int) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    BYTES_IN.labels(route).inc(bytes_in)
    BYTES_OUT.labels(route).inc(bytes_out)


def exposition(store, quota_limits: dict | None = None) -> bytes:
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    keys = CollectorRegistry()
    keys.register(RegisteredKeys(store))
    if quota_limits is not None:
        keys.register(QuotaLimitsCollector(quota_limits))
    return generate_latest(registry) + generate_latest(keys)


class ServiceMetrics:
    """The key service's reports (heserve.server.service.keys.KeyObserver), counted here."""

    def key_loaded(self, seconds: float) -> None:
        KEY_LOADS.observe(seconds)

    def key_cache_hit(self) -> None:
        KEY_CACHE_HITS.inc()
