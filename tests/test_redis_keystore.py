"""The Redis key store against a real redis-server: TTL, erasure, atomicity, failures become 503."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest
import redis

from heserve.benchmarks.cluster import start_redis
from heserve.server.service.keystore import KeyStoreUnavailable
from heserve.server.service.redis_keystore import RedisKeyStore

from .serverproc import free_port

MATERIAL = os.urandom(200_000)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def put(store: RedisKeyStore, owner: str = "t"):
    return store.put(MATERIAL, {"n": 4096}, [5, 3], True, owner, "ab" * 32)


def test_put_get_material_delete_round_trip(redis_server):
    store = RedisKeyStore(redis_server.url, ttl_seconds=60, prefix="roundtrip")
    record = put(store)
    assert store.get(record.key_id) == record
    assert store.material(record.key_id) == MATERIAL
    assert store.count() == 1
    assert store.delete(record.key_id) is True
    assert store.get(record.key_id) is None and store.material(record.key_id) is None
    assert store.delete(record.key_id) is False
    assert store.count() == 0


def test_expiry_is_redis_ttl_and_erases_the_material(redis_server):
    store = RedisKeyStore(redis_server.url, ttl_seconds=1.0, prefix="ttl")
    record = put(store)
    raw = redis.Redis.from_url(redis_server.url)
    ttl_ms = raw.pttl(f"ttl:key:{record.key_id}")
    assert 0 < ttl_ms <= 1000
    time.sleep(1.3)
    assert store.get(record.key_id) is None
    assert raw.exists(f"ttl:key:{record.key_id}") == 0  # gone from Redis itself, material included
    raw.close()


def test_a_key_is_written_whole_or_not_at_all(redis_server):
    store = RedisKeyStore(redis_server.url, ttl_seconds=60, prefix="whole")
    record = put(store)
    raw = redis.Redis.from_url(redis_server.url)
    assert sorted(raw.hkeys(f"whole:key:{record.key_id}")) == [b"material", b"meta"]
    raw.close()


def test_malformed_ids_never_reach_redis(redis_server):
    store = RedisKeyStore(redis_server.url, ttl_seconds=60, prefix="ids")
    for bad in ["", "*", "ids:key:*", "../x", "A" * 32, "0" * 31]:
        assert store.get(bad) is None
        assert store.delete(bad) is False


def test_refused_connection_is_unavailable_at_once():
    store = RedisKeyStore(f"redis://127.0.0.1:{free_port()}/0", ttl_seconds=60, timeout_seconds=2)
    started = time.monotonic()
    for call in (lambda: put(store), lambda: store.get("0" * 32), store.count, store.ping):
        with pytest.raises(KeyStoreUnavailable, match="unavailable"):
            call()
    assert time.monotonic() - started < 2


def test_a_frozen_redis_costs_at_most_the_timeout(tmp_path):
    frozen = start_redis(tmp_path)
    store = RedisKeyStore(frozen.url, ttl_seconds=60, timeout_seconds=0.5)
    record = put(store)
    os.kill(frozen.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(KeyStoreUnavailable):
            store.get(record.key_id)
        # One attempt plus one retry, each bounded by the socket timeout.
        assert time.monotonic() - started < 2.5
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
    assert store.get(record.key_id) == record  # recovers by itself
    frozen.stop()


def test_password_never_appears_in_logs(tmp_path, caplog):
    secured = start_redis(tmp_path)
    raw = redis.Redis.from_url(secured.url)
    raw.config_set("requirepass", "s3cret-pass")
    raw.close()
    try:
        good = RedisKeyStore(f"redis://:s3cret-pass@127.0.0.1:{secured.port}/0", ttl_seconds=60)
        good.ping()
        bad = RedisKeyStore(f"redis://:wrong-pass@127.0.0.1:{secured.port}/0", ttl_seconds=60)
        with caplog.at_level(logging.DEBUG), pytest.raises(KeyStoreUnavailable):
            bad.ping()
        assert "127.0.0.1" in caplog.text
        assert "pass" not in caplog.text and "pass" not in bad.address
    finally:
        secured.stop()
