"""The key registry in Redis, shared by every server instance behind a load balancer.

One Redis hash per key, `<prefix>:key:<id>`, with two fields: `meta` (the record as JSON)
and `material` (the serialized evaluation keys). Both are written in one MULTI/EXEC with
the expiry, so a key is either wholly registered or absent, Redis's own TTL erases it, and
one DEL erases it everywhere at once. Each use reads only `meta` (a few hundred bytes); the
material is read on a worker's cache miss.

Every Redis failure (refused, timed out, out of memory, read-only replica) becomes
KeyStoreUnavailable, answered 503: a request never hangs past the socket timeout and the
next request after Redis comes back succeeds, because redis-py reconnects on demand.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from heserve.server.service.keystore import (
    KEY_ID_PATTERN,
    LEGACY_SEAL_VERSION,
    KeyRecord,
    KeyStoreUnavailable,
    new_record,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class RedisKeyStore:
    def __init__(
        self,
        url: str,
        ttl_seconds: float,
        timeout_seconds: float = 2.0,
        prefix: str = "heserve",
        clock: Callable[[], float] = time.time,
    ):
        self.ttl_seconds = ttl_seconds
        self.prefix = prefix
        self.clock = clock
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            # One immediate retry covers a pooled connection that a Redis restart closed;
            # anything longer would hold a request thread while Redis is down.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        kwargs = self.client.connection_pool.connection_kwargs
        # For log lines: never the URL, which may carry a password.
        self.address = f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}:key:{key_id}"

    def _call(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except redis.RedisError as exc:
            log.warning("key store at %s unavailable: %s", self.address, type(exc).__name__)
            raise KeyStoreUnavailable("the key registry is unavailable; retry in a few seconds") from None

    def put(
        self,
        material: bytes,
        params: dict,
        galois_elements: list[int],
        has_relin_keys: bool,
        owner: str = "",
        binding_key: str = "",
        key_id: str | None = None,
        seal_version: str = LEGACY_SEAL_VERSION,
    ) -> KeyRecord:
        record = new_record(
            material,
            params,
            galois_elements,
            has_relin_keys,
            owner,
            binding_key,
            self.clock(),
            self.ttl_seconds,
            key_id,
            seal_version,
        )
        key = self._key(record.key_id)

        def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, mapping={"meta": json.dumps(asdict(record)), "material": material})
            pipe.pexpireat(key, int(record.expires_at * 1000))
            pipe.execute()

        self._call(write)
        return record

    def get(self, key_id: str) -> KeyRecord | None:
        if not KEY_ID_PATTERN.match(key_id):
            return None
        raw = self._call(lambda: self.client.hget(self._key(key_id), "meta"))
        if raw is None:
            return None
        try:
            record = KeyRecord(**json.loads(raw))
        except (ValueError, TypeError):
            return None
        # Redis's TTL is authoritative; this also covers the gap until it fires.
        if record.expires_at <= self.clock():
            return None
        return record

    def material(self, key_id: str) -> bytes | None:
        return self._call(lambda: self.client.hget(self._key(key_id), "material"))

    def delete(self, key_id: str) -> bool:
        if not KEY_ID_PATTERN.match(key_id):
            return False
        return bool(self._call(lambda: self.client.delete(self._key(key_id))))

    def sweep(self) -> int:
        return 0  # Redis expires keys itself

    def count(self) -> int:
        def scan() -> int:
            return sum(1 for _ in self.client.scan_iter(match=self._key("*"), count=1000))

        return self._call(scan)

    def ping(self) -> None:
        self._call(self.client.ping)

    def describe(self) -> str:
        return "a Redis database shared by this service's instances (erased by Redis's own expiry)"
