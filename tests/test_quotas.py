"""Per-tenant quotas on SQLite and on a real redis-server: semantics with an injected clock,
atomicity across processes and instances, expiry, TTLs, failures become 503."""

from __future__ import annotations

import math
import multiprocessing
import os
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from heserve.benchmarks.cluster import start_redis
from heserve.server.service.errors import ServiceError
from heserve.server.service.keystore import KeyStoreUnavailable
from heserve.server.service.quotas import (
    NEVER_SECONDS,
    QuotaExceeded,
    QuotaLimits,
    Quotas,
    QuotaStore,
    RedisQuotaStore,
    SqliteQuotaStore,
)
from heserve.server.web.errors import status_for

from .serverproc import ROOT, free_port

MiB = 1024 * 1024
UNLIMITED = QuotaLimits(max_keys=0, max_key_bytes=0, requests_per_second=0, request_burst=0, rows_per_hour=0)


class Clock:
    """Starts at the next whole minute, near the real time: Redis's own expiries (PEXPIREAT) must
    see key expiries in the future, and a whole minute makes the row window's slots easy to reason about."""

    def __init__(self) -> None:
        self.now = (math.floor(time.time() / 60) + 1) * 60.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def open_store(spec: tuple) -> QuotaStore:
    """A store from a picklable description, so that other processes open their own."""
    if spec[0] == "sqlite":
        return SqliteQuotaStore(Path(spec[1]))
    return RedisQuotaStore(spec[1], prefix=spec[2])


@pytest.fixture(params=["sqlite", "redis"])
def store_spec(request, tmp_path) -> tuple:
    if request.param == "sqlite":
        return ("sqlite", str(tmp_path / "quotas"))
    return ("redis", request.getfixturevalue("redis_server").url, f"q-{secrets.token_hex(4)}")


@pytest.fixture
def store(store_spec) -> QuotaStore:
    return open_store(store_spec)


def limited(**fields) -> QuotaLimits:
    return QuotaLimits(**{**asdict(UNLIMITED), **fields})


# Semantics, on both stores


def test_token_bucket_allows_the_burst_then_the_rate(store):
    clock = Clock()
    quotas = Quotas(limited(requests_per_second=2, request_burst=4), store, clock)
    for _ in range(4):
        quotas.check_request("a")
    with pytest.raises(QuotaExceeded) as refused:
        quotas.check_request("a")
    assert (status_for(refused.value), refused.value.code, refused.value.limit) == (
        429,
        "rate_limited",
        "requests_per_second",
    )
    assert refused.value.retry_after == 1  # half a second to the next token, rounded up
    assert "2 requests per second" in refused.value.message and "bursts of 4" in refused.value.message
    quotas.check_request("b")  # another tenant has its own bucket
    clock.advance(0.25)
    with pytest.raises(QuotaExceeded):
        quotas.check_request("a")  # half a token
    clock.advance(0.25)
    quotas.check_request("a")  # one token: the refusals before took nothing
    with pytest.raises(QuotaExceeded):
        quotas.check_request("a")
    clock.advance(1000)
    for _ in range(4):  # a long idle refills to the burst, no further
        quotas.check_request("a")
    with pytest.raises(QuotaExceeded):
        quotas.check_request("a")


def test_rate_retry_after_is_the_time_to_the_next_token(store):
    clock = Clock()
    quotas = Quotas(limited(requests_per_second=0.1, request_burst=1), store, clock)
    quotas.check_request("a")
    with pytest.raises(QuotaExceeded) as refused:
        quotas.check_request("a")
    assert refused.value.retry_after == 10
    clock.advance(9.5)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.check_request("a")
    assert refused.value.retry_after == 1
    clock.advance(0.5)
    quotas.check_request("a")


def test_a_clock_that_steps_back_refills_nothing(store):
    clock = Clock()
    quotas = Quotas(limited(requests_per_second=1, request_burst=1), store, clock)
    clock.advance(10)
    quotas.check_request("a")
    clock.advance(-5)  # another instance's clock, a little behind
    with pytest.raises(QuotaExceeded):
        quotas.check_request("a")
    clock.advance(5.5)
    with pytest.raises(QuotaExceeded):
        quotas.check_request("a")  # half a second after the last take, by the later clock
    clock.advance(0.5)
    quotas.check_request("a")


def test_row_window_slides_by_the_minute(store):
    clock = Clock()
    start = clock()
    quotas = Quotas(limited(rows_per_hour=100), store, clock)
    quotas.charge_rows("a", 60)
    clock.advance(600)
    quotas.charge_rows("a", 40)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.charge_rows("a", 1)
    assert (refused.value.code, refused.value.limit) == ("row_quota_exceeded", "rows_per_hour")
    assert refused.value.retry_after == 3000  # when the first minute's 60 rows leave the hour
    assert "100 rows per hour" in refused.value.message
    assert quotas.usage("a")["rows_per_hour"] == {"used": 100, "limit": 100}  # the refusal charged nothing
    quotas.charge_rows("b", 100)  # another tenant has its own hour
    clock.now = start + 3599
    with pytest.raises(QuotaExceeded) as refused:
        quotas.charge_rows("a", 1)
    assert refused.value.retry_after == 1
    clock.now = start + 3600
    quotas.charge_rows("a", 60)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.charge_rows("a", 1)
    assert refused.value.retry_after == 600  # the 40 rows of minute 10
    clock.now = start + 3 * 3600
    assert quotas.usage("a")["rows_per_hour"]["used"] == 0
    quotas.charge_rows("a", 100)


def test_more_rows_than_an_hour_allows_is_refused_for_good(store):
    quotas = Quotas(limited(rows_per_hour=100), store, Clock())
    with pytest.raises(QuotaExceeded) as refused:
        quotas.charge_rows("a", 101)
    assert refused.value.retry_after == NEVER_SECONDS
    assert "fewer rows" in refused.value.message
    assert quotas.usage("a")["rows_per_hour"]["used"] == 0
    quotas.charge_rows("a", 0)  # nothing to charge
    with pytest.raises(ValueError):
        quotas.charge_rows("a", -1)


def test_key_count_frees_itself_when_keys_expire(store):
    clock = Clock()
    quotas = Quotas(limited(max_keys=2), store, clock)
    now = clock()
    quotas.admit_key("a", "k1", 1000, now + 100)
    quotas.admit_key("a", "k2", 1000, now + 200)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.admit_key("a", "k3", 1000, now + 300)
    assert (refused.value.code, refused.value.limit) == ("key_quota_exceeded", "max_keys")
    assert refused.value.retry_after == 100  # when k1 expires
    assert "at most 2 live keys" in refused.value.message
    assert quotas.usage("a")["keys"] == {"used": 2, "limit": 2}
    quotas.admit_key("b", "k1", 1000, now + 100)  # another tenant counts its own keys
    clock.advance(100)  # k1 expires: nobody erases or releases it
    assert quotas.usage("a")["keys"]["used"] == 1
    quotas.admit_key("a", "k3", 1000, now + 300)
    assert quotas.release_key("a", "k1") is False  # expired: no longer counted


def test_release_frees_and_readmission_counts_once(store):
    clock = Clock()
    quotas = Quotas(limited(max_keys=2), store, clock)
    now = clock()
    quotas.admit_key("a", "k1", 1000, now + 100)
    quotas.admit_key("a", "k2", 1000, now + 100)
    quotas.admit_key("a", "k1", 2000, now + 900)  # the same key again: its entry is replaced
    assert quotas.usage("a")["keys"] == {"used": 2, "limit": 2}
    assert quotas.usage("a")["key_bytes"]["used"] == 3000
    assert quotas.release_key("a", "k1") is True
    assert quotas.release_key("a", "k1") is False
    assert quotas.release_key("b", "k2") is False  # another tenant cannot release it
    quotas.admit_key("a", "k3", 1000, now + 100)
    assert quotas.usage("a")["keys"]["used"] == 2


def test_key_bytes_count_live_keys_only(store):
    clock = Clock()
    quotas = Quotas(limited(max_key_bytes=10 * MiB), store, clock)
    now = clock()
    quotas.admit_key("a", "k1", 6 * MiB, now + 100)
    quotas.admit_key("a", "k2", 3 * MiB, now + 200)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.admit_key("a", "k3", 4 * MiB, now + 300)
    assert (refused.value.code, refused.value.limit) == ("key_quota_exceeded", "max_key_bytes")
    assert refused.value.retry_after == 100
    assert "10 MiB" in refused.value.message
    with pytest.raises(QuotaExceeded) as refused:
        quotas.admit_key("a", "huge", 11 * MiB, now + 300)
    assert refused.value.retry_after == NEVER_SECONDS and "larger than" in refused.value.message
    assert quotas.usage("a")["key_bytes"] == {"used": 9 * MiB, "limit": 10 * MiB}
    clock.advance(100)
    quotas.admit_key("a", "k3", 4 * MiB, now + 300)
    assert quotas.usage("a")["key_bytes"]["used"] == 7 * MiB


def test_zero_is_unlimited_and_still_counted(store):
    clock = Clock()
    quotas = Quotas(UNLIMITED, store, clock)
    for _ in range(200):
        quotas.check_request("a")
    quotas.charge_rows("a", 10**9)
    for i in range(30):
        quotas.admit_key("a", f"k{i}", 100 * MiB, clock() + 60)
    assert quotas.usage("a") == {
        "keys": {"used": 30, "limit": None},
        "key_bytes": {"used": 3000 * MiB, "limit": None},
        "rows_per_hour": {"used": 10**9, "limit": None},
        "requests_per_second": {"limit": None, "burst": None, "available": None},
    }


def test_usage_reports_the_requests_available(store):
    clock = Clock()
    quotas = Quotas(QuotaLimits(), store, clock)
    assert quotas.usage("a")["requests_per_second"] == {"limit": 20.0, "burst": 40, "available": 40}
    for _ in range(5):
        quotas.check_request("a")
    assert quotas.usage("a")["requests_per_second"]["available"] == 35
    clock.advance(0.1)  # two tokens back
    assert quotas.usage("a")["requests_per_second"]["available"] == 37


# The facade's types and configuration


def test_quota_exceeded_is_a_429_api_error():
    exc = QuotaExceeded("over", 0.2)
    assert isinstance(exc, ServiceError)
    assert (status_for(exc), exc.code, exc.message, exc.retry_after) == (429, "quota_exceeded", "over", 1)
    assert QuotaExceeded("over", 61.01, "rate_limited").retry_after == 62
    assert QuotaExceeded("over", 0.2, "rate_limited").code == "rate_limited"


def test_limits_from_config_and_defaults():
    defaults = QuotaLimits()
    assert asdict(defaults) == {
        "max_keys": 20,
        "max_key_bytes": 512 * MiB,
        "requests_per_second": 20.0,
        "request_burst": 40,
        "rows_per_hour": 1_000_000,
    }
    assert QuotaLimits.from_config(SimpleNamespace()) == defaults  # a config without the fields
    config = SimpleNamespace(quota_max_keys=3, quota_requests_per_second="2.5", quota_rows_per_hour=0)
    assert QuotaLimits.from_config(config) == QuotaLimits(
        max_keys=3, max_key_bytes=512 * MiB, requests_per_second=2.5, request_burst=40, rows_per_hour=0
    )
    with pytest.raises(ValueError, match="max_keys"):
        QuotaLimits(max_keys=-1)
    assert QuotaLimits(requests_per_second=2.5, request_burst=0).burst == 3  # one second's worth
    assert QuotaLimits(requests_per_second=0.1, request_burst=0).burst == 1


def test_limits_and_description_for_the_privacy_report(tmp_path):
    quotas = Quotas(QuotaLimits(max_keys=7), SqliteQuotaStore(tmp_path / "quotas"))
    assert quotas.limits() == {**asdict(QuotaLimits()), "max_keys": 7}
    assert "0700" in quotas.describe()


# SQLite: one file shared by the workers of an instance


def test_sqlite_file_is_private(tmp_path):
    store = SqliteQuotaStore(tmp_path / "quotas")
    store.ping()
    assert stat.S_IMODE((tmp_path / "quotas").stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    db_mode = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sqlite3; print(sqlite3.connect({str(store.path)!r}).execute('PRAGMA journal_mode').fetchone()[0])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert db_mode.stdout.strip() == "wal"


HAMMER_LIMITS = QuotaLimits(max_keys=30, max_key_bytes=0, requests_per_second=1, request_burst=100, rows_per_hour=250)
# Attempts per thread of each operation: 0.6 of its limit per process (two threads), 1.2 for both. One
# process alone cannot reach a limit, so the totals reach it only if both took part (with 150 each, one
# process that got the SQLite lock first once took every row while the other waited).
HAMMER_ATTEMPTS = {"requests": 30, "rows": 75, "keys": 9}


def _hammer(spec: tuple, now: float, worker: int, start, results) -> None:
    """One process: two threads race the other process for the same tenant's last requests, rows and keys."""
    quotas = Quotas(HAMMER_LIMITS, open_store(spec), clock=lambda: now)  # a still clock: nothing refills
    counts = {"requests": 0, "rows": 0, "keys": 0, "errors": 0}
    lock = threading.Lock()

    def run(thread: int) -> None:
        for i in range(max(HAMMER_ATTEMPTS.values())):
            key_id = f"w{worker}-t{thread}-{i}"
            for name, call, args in (
                ("requests", quotas.check_request, ("hammer",)),
                ("rows", quotas.charge_rows, ("hammer", 1)),
                ("keys", quotas.admit_key, ("hammer", key_id, 1000, now + 3600)),
            ):
                if i >= HAMMER_ATTEMPTS[name]:
                    continue
                try:
                    call(*args)
                except QuotaExceeded:
                    continue
                except KeyStoreUnavailable:  # e.g. a busy SQLite lock: must not happen under this load
                    name = "errors"
                with lock:
                    counts[name] += 1

    start.wait()
    threads = [threading.Thread(target=run, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(counts)


def test_two_processes_never_pass_a_limit_together(store_spec):
    """Two processes (for Redis, two store objects: two instances), two threads each, one tenant:
    exactly the limits pass, whatever the interleaving, and the store's totals agree."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as gunicorn workers or other hosts
    start, results = context.Barrier(2), context.Queue()
    now = Clock()()
    processes = [context.Process(target=_hammer, args=(store_spec, now, w, start, results)) for w in range(2)]
    open_store(store_spec)  # the SQLite schema exists before the race (each process would create it otherwise)
    for process in processes:
        process.start()
    counts = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    total = {name: sum(c[name] for c in counts) for name in ("requests", "rows", "keys", "errors")}
    assert total == {"requests": 100, "rows": 250, "keys": 30, "errors": 0}
    # Both processes took part: neither alone could reach a limit.
    assert all(c[name] > 0 for c in counts for name in ("requests", "rows", "keys"))
    usage = Quotas(HAMMER_LIMITS, open_store(store_spec), clock=lambda: now).usage("hammer")
    assert usage["keys"]["used"] == 30 and usage["key_bytes"]["used"] == 30_000
    assert usage["rows_per_hour"]["used"] == 250
    assert usage["requests_per_second"]["available"] == 0


def test_workers_forked_after_the_store_was_built_share_it(tmp_path):
    """As gunicorn with a preloaded application: the master builds the store, then forks its workers."""
    quotas = Quotas(limited(rows_per_hour=10), SqliteQuotaStore(tmp_path / "quotas"))
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=quotas.charge_rows, args=("a", n)) for n in (4, 5)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert quotas.usage("a")["rows_per_hour"]["used"] == 9
    with pytest.raises(QuotaExceeded):
        quotas.charge_rows("a", 2)


KILLED_WRITER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO row_slots (tenant, slot, rows) VALUES ('a', ?, 1000)", (int(sys.argv[2]),))
print("locked", flush=True)
time.sleep(60)
"""


def test_a_worker_killed_mid_transaction_leaves_no_charge_and_no_lock(tmp_path):
    clock = Clock()
    store = SqliteQuotaStore(tmp_path / "quotas")
    quotas = Quotas(limited(rows_per_hour=100), store, clock)
    impatient = Quotas(limited(rows_per_hour=100), SqliteQuotaStore(tmp_path / "quotas", 0.2), clock)
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(store.path), str(math.floor(clock() / 60))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(KeyStoreUnavailable, match="quota store"):
            impatient.charge_rows("a", 1)  # the lock is held: 503 after the busy timeout, not a hang
        assert time.monotonic() - started < 2
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    quotas.charge_rows("a", 100)  # the lock died with the process, its 1000 rows were never committed
    assert quotas.usage("a")["rows_per_hour"]["used"] == 100
    impatient.charge_rows("b", 1)


# Redis: counters shared by every instance


def test_every_redis_key_has_a_ttl_and_expires(redis_server):
    prefix = f"ttl-{secrets.token_hex(4)}"
    store = RedisQuotaStore(redis_server.url, prefix=prefix)
    quotas = Quotas(QuotaLimits(max_keys=2, requests_per_second=10, request_burst=5), store)
    now = time.time()
    for tenant in ("a", "addr:::1"):
        quotas.check_request(tenant)
        quotas.charge_rows(tenant, 10)
        quotas.admit_key(tenant, "k1", 1000, now + 0.5)
        quotas.admit_key(tenant, "k2", 1000, now + 0.5)
        with pytest.raises(QuotaExceeded):
            quotas.admit_key(tenant, "k3", 1000, now + 0.5)
        quotas.release_key(tenant, "k2")
        quotas.usage(tenant)
    raw = redis.Redis.from_url(redis_server.url)
    try:
        names = sorted(k.decode() for k in raw.scan_iter(match=f"{prefix}:*"))
        assert names == sorted(
            f"{prefix}:quota:{kind}:{tenant}"
            for kind in ("rate", "rows", "keys", "keysize")
            for tenant in ("a", "addr:::1")
        )
        for name in names:
            ttl_ms = raw.pttl(name)
            kind = name.split(":")[2]
            bound = {"rate": 5 / 10 + 1, "rows": 3660, "keys": 1.5, "keysize": 1.5}[kind]
            assert 0 < ttl_ms <= bound * 1000, (name, ttl_ms)
        time.sleep(1.8)  # the bucket is full again and the keys have expired: Redis erased both
        assert sorted(k.decode().split(":")[2] for k in raw.scan_iter(match=f"{prefix}:*")) == ["rows", "rows"]
    finally:
        raw.close()


def test_a_shared_client_and_scripts_reloaded_after_a_restart(tmp_path):
    server = start_redis(tmp_path)
    try:
        client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
        quotas = Quotas(limited(rows_per_hour=10), RedisQuotaStore(client, prefix="shared"))
        quotas.charge_rows("a", 4)
        client.script_flush()  # as after a restart: Redis no longer knows the scripts' digests
        quotas.charge_rows("a", 5)
        with pytest.raises(QuotaExceeded):
            quotas.charge_rows("a", 2)
        assert quotas.usage("a")["rows_per_hour"]["used"] == 9
    finally:
        server.stop()


def test_redis_down_is_unavailable_quickly_and_recovers(tmp_path):
    server = start_redis(tmp_path)
    try:
        quotas = Quotas(QuotaLimits(), RedisQuotaStore(server.url, prefix="down", timeout_seconds=2))
        quotas.check_request("a")
        server.stop()
        started = time.monotonic()
        for call in (
            lambda: quotas.check_request("a"),
            lambda: quotas.charge_rows("a", 1),
            lambda: quotas.admit_key("a", "k", 1, time.time() + 60),
            lambda: quotas.release_key("a", "k"),
            lambda: quotas.usage("a"),
            quotas.store.ping,
        ):
            with pytest.raises(KeyStoreUnavailable, match="unavailable"):
                call()
        assert time.monotonic() - started < 2
        server.start()  # same port, empty script cache
        quotas.check_request("a")
    finally:
        server.stop()


def test_a_refused_connection_is_unavailable_at_once():
    quotas = Quotas(QuotaLimits(), RedisQuotaStore(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=2))
    started = time.monotonic()
    with pytest.raises(KeyStoreUnavailable):
        quotas.check_request("a")
    assert time.monotonic() - started < 2


def test_the_module_imports_without_redis_installed():
    """The embedded deployment needs no redis-py: only RedisQuotaStore imports it."""
    code = (
        "import sys; sys.modules['redis'] = None; "
        "import heserve.server.service.quotas as q; print(q.SqliteQuotaStore.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    assert out.stdout.strip() == "SqliteQuotaStore", out.stderr
