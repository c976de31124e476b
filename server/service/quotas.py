"""Per-tenant quotas: live evaluation keys (count and bytes), requests per second, rows per hour.

A public encrypted inference service is open to model extraction and scraping: a tenant that
may send unlimited requests, evaluate unlimited rows or park unlimited keys can copy the
model or exhaust the key store. Every limit here is per tenant (an API key's tenant, or
"addr:<client address>" when the server has no API keys) and shared by every worker of an
instance and, with the Redis store, by every instance behind the load balancer.

- Keys: the number and bytes of a tenant's LIVE keys. Each admitted key carries its
  expiry, so an expired key stops counting without anyone erasing it; an erased key is
  released at once.
- Requests: a token bucket, `requests_per_second` refilled up to `request_burst`.
- Rows: the rows a request's ciphertexts can answer (not what the client claims), over a
  sliding hour of 60 one-minute slots: the current minute and the 59 before it never hold
  more than `rows_per_hour`. Slots bound the state to 60 counters per tenant and avoid the
  fixed window's double allowance across the hour boundary.

Every check and its charge are one atomic step in the store (an SQLite transaction taken
with BEGIN IMMEDIATE, or one Lua script in Redis), so concurrent workers can never together
pass a limit, and a refused request is not charged at all. A limit of 0 means unlimited.

Times are wall-clock seconds (`time.time()`, injectable) because key expiries are, and with
Redis every instance's clock takes part: keep the hosts' clocks synchronized (NTP). A clock
that steps back never refills a bucket twice; it only delays refills.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from heserve.server.service.errors import ServiceError
from heserve.server.service.keystore import KeyStoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

SLOT_SECONDS = 60  # the row window's granularity
WINDOW_SLOTS = 60  # slots in the row window: one hour
# Retry-After for a request no wait can admit (a key larger than the byte limit, more rows than an
# hour allows): long enough that a well-behaved client does not hammer, and the message says why.
NEVER_SECONDS = 3600
SWEEP_INTERVAL_SECONDS = 60.0  # how often one process deletes other tenants' stale SQLite rows
# Wall-clock seconds near 1.8e9 are exact to ~0.2 µs only, so a refill computed from two of them can
# fall short of a whole token by rate x 2e-7. A thousandth of a token counts as none missing; it
# cannot accumulate, since a bucket never goes below -TOKEN_EPSILON.
TOKEN_EPSILON = 1e-3

# Which limit refused: the reason a store returns for key admission.
KEYS_COUNT = "keys"
KEYS_BYTES = "bytes"


class QuotaExceeded(ServiceError):
    """A tenant is over one of its limits: 429, with `retry_after` seconds for Retry-After.

    `limit` names the QuotaLimits field that refused the request, for metrics labels.
    Nothing is charged for a refused request.
    """

    code = "quota_exceeded"

    def __init__(self, message: str, retry_after: float, code: str | None = None, limit: str = ""):
        super().__init__(message, code=code)
        # Whole seconds, at least 1: Retry-After takes an integer, and 0 would invite a busy loop.
        self.retry_after: int = max(1, math.ceil(retry_after))
        self.limit = limit


@dataclass(frozen=True)
class QuotaLimits:
    """Per-tenant limits; 0 in any field means unlimited.

    The defaults suit a public service with 15-minute keys:
    - max_keys = 20 live keys (a client re-registers one set at a time; 20 covers several
      models and overlapping re-registrations);
    - max_key_bytes = 512 MiB of live keys (several full key sets of the largest served
      parameters; one tenant once parked ~8 GB);
    - requests_per_second = 20 with request_burst = 40 (an interactive client or a batch
      pipeline never notices; a scraper is slowed to 72,000 requests an hour);
    - rows_per_hour = 1,000,000 rows evaluated (rows a ciphertext can answer, charged in
      full whether or not the client packed every slot).

    With requests_per_second > 0 and request_burst 0, the burst is one second's worth
    (at least 1 request).
    """

    max_keys: int = 20
    max_key_bytes: int = 512 * 1024 * 1024
    requests_per_second: float = 20.0
    request_burst: int = 40
    rows_per_hour: int = 1_000_000

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise ValueError(f"quota {name} must be 0 (unlimited) or positive, got {value}")

    @property
    def burst(self) -> int:
        """The bucket's capacity: request_burst, or one second's worth when it is 0."""
        if self.request_burst > 0:
            return self.request_burst
        return max(1, math.ceil(self.requests_per_second))

    @classmethod
    def from_config(cls, config: Any) -> QuotaLimits:
        """Limits from a ServerConfig's `quota_*` fields; a field it lacks keeps its default."""
        defaults = cls()
        return cls(
            max_keys=int(getattr(config, "quota_max_keys", defaults.max_keys)),
            max_key_bytes=int(getattr(config, "quota_max_key_bytes", defaults.max_key_bytes)),
            requests_per_second=float(getattr(config, "quota_requests_per_second", defaults.requests_per_second)),
            request_burst=int(getattr(config, "quota_request_burst", defaults.request_burst)),
            rows_per_hour=int(getattr(config, "quota_rows_per_hour", defaults.rows_per_hour)),
        )


class QuotaStore(Protocol):
    """Counters shared by every worker (and, for Redis, every instance). Each method is atomic.

    Refusals are returned, not raised, as the seconds until the request could pass
    (None: admitted and charged; a negative number: no wait will do).
    """

    def take_request(self, tenant: str, rate: float, burst: int, now: float) -> float | None: ...

    def charge_rows(self, tenant: str, rows: int, limit: int, now: float) -> float | None: ...

    def admit_key(
        self,
        tenant: str,
        key_id: str,
        size_bytes: int,
        expires_at: float,
        max_keys: int,
        max_bytes: int,
        now: float,
    ) -> tuple[str, float] | None:
        """None if admitted and recorded; otherwise (KEYS_COUNT or KEYS_BYTES, seconds to wait)."""

    def release_key(self, tenant: str, key_id: str) -> bool: ...

    def usage(self, tenant: str, rate: float, burst: int, now: float) -> dict[str, Any]:
        """{"keys", "key_bytes", "rows_last_hour", "request_tokens" (None without a rate)}."""

    def ping(self) -> None: ...

    def describe(self) -> str: ...


def _slot(now: float) -> int:
    return math.floor(now / SLOT_SECONDS)


def _rows_retry(slots: list[tuple[int, int]], used: int, rows: int, limit: int, now: float) -> float:
    """Seconds until enough old slots leave the window for `rows` more; -1 if never (rows > limit)."""
    if rows > limit:
        return -1
    freed = 0
    for slot, n in sorted(slots):
        freed += n
        if used - freed + rows <= limit:
            return (slot + WINDOW_SLOTS) * SLOT_SECONDS - now
    return -1  # unreachable: with every slot gone, rows <= limit fits


def _keys_retry(live: list[tuple[float, int]], size: int, max_keys: int, max_bytes: int) -> tuple[str, float] | None:
    """Which limit a new key of `size` would pass and when it would fit, from live (expiry, size) pairs.

    The second element is an absolute time (the expiry that frees enough), or -1 if never.
    """
    live = sorted(live)
    count, used = len(live), sum(s for _, s in live)
    if max_keys and count + 1 > max_keys:
        return KEYS_COUNT, live[count - max_keys][0]
    if max_bytes and used + size > max_bytes:
        if size > max_bytes:
            return KEYS_BYTES, -1
        freed = 0
        for expires_at, s in live:
            freed += s
            if used - freed + size <= max_bytes:
                return KEYS_BYTES, expires_at
    return None


def _bucket(tokens: float | None, updated_at: float | None, rate: float, burst: int, now: float) -> tuple[float, float]:
    """The bucket refilled up to now: (tokens, time of that level). A missing bucket is full."""
    if tokens is None or updated_at is None:
        return float(burst), now
    if now > updated_at:  # a clock that stepped back (or another host's) refills nothing
        return min(float(burst), tokens + (now - updated_at) * rate), now
    return tokens, updated_at


SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    tenant TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS buckets_updated ON buckets (updated_at);
CREATE TABLE IF NOT EXISTS row_slots (
    tenant TEXT NOT NULL,
    slot INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    PRIMARY KEY (tenant, slot)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS row_slots_slot ON row_slots (slot);
CREATE TABLE IF NOT EXISTS live_keys (
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (tenant, key_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS live_keys_expiry ON live_keys (expires_at);
"""


_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


class SqliteQuotaStore:
    """Counters in one SQLite file shared by the worker processes (and threads) of one instance.

    WAL lets readers and the single writer proceed together; synchronous=NORMAL skips the
    fsync per commit (a power cut may forget the last counts, which only errs in the
    tenant's favour for a moment). Each check-and-charge is one BEGIN IMMEDIATE
    transaction: the write lock is taken before the counters are read, so two workers
    cannot both see room for the last request. A worker killed mid-transaction leaves only
    uncommitted WAL frames, which SQLite ignores, and its lock dies with the process.
    """

    FILENAME = "quotas.sqlite3"

    def __init__(self, directory: Path, busy_timeout_seconds: float = 5.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # tenant names and client addresses are in it
        self.path = self.directory / self.FILENAME
        self.busy_timeout_seconds = busy_timeout_seconds
        # One connection per process and thread: sqlite3 connections must not cross a fork,
        # and gunicorn's gthread workers call in from several threads.
        self._local = threading.local()
        self._next_sweep: dict[str, float] = {}
        with self._transaction() as db:
            # Statement by statement: executescript would commit outside this transaction.
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        os.chmod(self.path, 0o600)
        # No connection stays open here: a master that builds the store before forking its
        # workers must not hand them a connection (each opens its own on first use).
        self.close()

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is not None:
            if self._local.pid == os.getpid():
                return db
            # Inherited across a fork: SQLite forbids using or closing it in the child (closing
            # would drop this process's locks on the file), so keep it from the garbage collector.
            _INHERITED_CONNECTIONS.append(db)
        try:
            db = sqlite3.connect(
                self.path, timeout=self.busy_timeout_seconds, isolation_level=None, check_same_thread=False
            )
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_seconds * 1000)}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        self._local.db, self._local.pid = db, os.getpid()
        return db

    def _unavailable(self, exc: BaseException) -> KeyStoreUnavailable:
        log.warning("quota store %s unavailable: %s", self.path, type(exc).__name__)
        return KeyStoreUnavailable("the quota store is unavailable; retry in a few seconds")

    @contextmanager
    def _transaction(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        except sqlite3.Error as exc:  # busy past the timeout, disk full, file gone
            raise self._unavailable(exc) from None
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(exc, sqlite3.Error):
                raise self._unavailable(exc) from None
            raise

    def _sweep_due(self, table: str, now: float) -> bool:
        """At most once a minute per process: tenants that never come back leave no rows behind."""
        if now < self._next_sweep.get(table, 0.0):
            return False
        self._next_sweep[table] = now + SWEEP_INTERVAL_SECONDS
        return True

    def take_request(self, tenant: str, rate: float, burst: int, now: float) -> float | None:
        with self._transaction() as db:
            if self._sweep_due("buckets", now):
                # A bucket idle for a full refill is full: deleting it changes nothing.
                db.execute("DELETE FROM buckets WHERE updated_at < ?", (now - burst / rate - 1,))
            row = db.execute("SELECT tokens, updated_at FROM buckets WHERE tenant = ?", (tenant,)).fetchone()
            tokens, updated_at = _bucket(*(row or (None, None)), rate, burst, now)
            if tokens < 1 - TOKEN_EPSILON:
                return (1 - tokens) / rate
            db.execute(
                "INSERT INTO buckets (tenant, tokens, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (tenant) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at",
                (tenant, tokens - 1, updated_at),
            )
            return None

    def charge_rows(self, tenant: str, rows: int, limit: int, now: float) -> float | None:
        current = _slot(now)
        oldest = current - WINDOW_SLOTS + 1
        with self._transaction() as db:
            if self._sweep_due("row_slots", now):
                db.execute("DELETE FROM row_slots WHERE slot < ?", (oldest,))
            else:
                db.execute("DELETE FROM row_slots WHERE tenant = ? AND slot < ?", (tenant, oldest))
            slots = db.execute("SELECT slot, rows FROM row_slots WHERE tenant = ?", (tenant,)).fetchall()
            used = sum(n for _, n in slots)
            if limit and used + rows > limit:
                return _rows_retry(slots, used, rows, limit, now)
            db.execute(
                "INSERT INTO row_slots (tenant, slot, rows) VALUES (?, ?, ?) "
                "ON CONFLICT (tenant, slot) DO UPDATE SET rows = rows + excluded.rows",
                (tenant, current, rows),
            )
            return None

    def admit_key(
        self,
        tenant: str,
        key_id: str,
        size_bytes: int,
        expires_at: float,
        max_keys: int,
        max_bytes: int,
        now: float,
    ) -> tuple[str, float] | None:
        with self._transaction() as db:
            if self._sweep_due("live_keys", now):
                db.execute("DELETE FROM live_keys WHERE expires_at <= ?", (now,))
            else:
                db.execute("DELETE FROM live_keys WHERE tenant = ? AND expires_at <= ?", (tenant, now))
            # A key admitted again (same id) replaces its own entry instead of counting twice.
            live = db.execute(
                "SELECT expires_at, size_bytes FROM live_keys WHERE tenant = ? AND key_id != ?", (tenant, key_id)
            ).fetchall()
            refusal = _keys_retry(live, size_bytes, max_keys, max_bytes)
            if refusal is not None:
                reason, at = refusal
                return reason, (at - now if at >= 0 else -1)
            if expires_at > now:
                db.execute(
                    "INSERT INTO live_keys (tenant, key_id, size_bytes, expires_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (tenant, key_id) DO UPDATE SET "
                    "size_bytes = excluded.size_bytes, expires_at = excluded.expires_at",
                    (tenant, key_id, size_bytes, expires_at),
                )
            return None

    def release_key(self, tenant: str, key_id: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM live_keys WHERE tenant = ? AND key_id = ?", (tenant, key_id)).rowcount > 0

    def usage(self, tenant: str, rate: float, burst: int, now: float) -> dict[str, Any]:
        with self._transaction(immediate=False) as db:  # a read snapshot; nothing is written
            keys, key_bytes = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM live_keys WHERE tenant = ? AND expires_at > ?",
                (tenant, now),
            ).fetchone()
            (rows,) = db.execute(
                "SELECT COALESCE(SUM(rows), 0) FROM row_slots WHERE tenant = ? AND slot >= ?",
                (tenant, _slot(now) - WINDOW_SLOTS + 1),
            ).fetchone()
            tokens = None
            if rate:
                row = db.execute("SELECT tokens, updated_at FROM buckets WHERE tenant = ?", (tenant,)).fetchone()
                tokens = _bucket(*(row or (None, None)), rate, burst, now)[0]
        return {"keys": keys, "key_bytes": key_bytes, "rows_last_hour": rows, "request_tokens": tokens}

    def ping(self) -> None:
        try:
            self._connection().execute("SELECT 1 FROM buckets LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None

    def describe(self) -> str:
        return (
            "an SQLite file on this server's disk (directory mode 0700): per tenant (its name, or the "
            "client's address without API keys), request and row counters for at most an hour and the "
            "ids, sizes and expiries of its live keys until they expire"
        )

    def close(self) -> None:
        """Close this thread's connection; the next call opens another (a worker's close when it exits)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            if self._local.pid == os.getpid():
                db.close()
            else:
                _INHERITED_CONNECTIONS.append(db)
        self._local.db = None


# Redis scripts. Times are integer milliseconds from the caller's clock (ARGV), so every
# instance and the tests agree on "now" and no script depends on Redis's TIME. Lua numbers
# become integer replies (truncated), so fractions travel as strings.

TAKE_REQUEST = """
-- KEYS[1] bucket hash {t = tokens, ts = ms}; ARGV now_ms, rate per s, burst, ttl_ms, epsilon
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then
  tokens, ts = burst, now
elseif now > ts then
  tokens, ts = math.min(burst, tokens + (now - ts) * rate / 1000), now
end
if tokens < 1 - tonumber(ARGV[5]) then
  return {0, tostring((1 - tokens) / rate)}
end
redis.call('HSET', KEYS[1], 't', tostring(tokens - 1), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, '0'}
"""

CHARGE_ROWS = """
-- KEYS[1] hash slot -> rows; ARGV now_ms, rows, limit (0: unlimited), slot_ms, slots
local now, rows, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local slot_ms, nslots = tonumber(ARGV[4]), tonumber(ARGV[5])
local current = math.floor(now / slot_ms)
local oldest = current - nslots + 1
local flat = redis.call('HGETALL', KEYS[1])
local used, live = 0, {}
for i = 1, #flat, 2 do
  local slot, n = tonumber(flat[i]), tonumber(flat[i + 1])
  if slot < oldest then
    redis.call('HDEL', KEYS[1], flat[i])
  else
    used = used + n
    table.insert(live, {slot, n})
  end
end
if limit > 0 and used + rows > limit then
  local retry = -1
  if rows <= limit then
    table.sort(live, function(a, b) return a[1] < b[1] end)
    local freed = 0
    for _, entry in ipairs(live) do
      freed = freed + entry[2]
      if used - freed + rows <= limit then
        retry = (entry[1] + nslots) * slot_ms - now
        break
      end
    end
  end
  return {0, retry}
end
redis.call('HINCRBY', KEYS[1], string.format('%d', current), rows)
redis.call('PEXPIRE', KEYS[1], (nslots + 1) * slot_ms)
return {1, 0}
"""

ADMIT_KEY = """
-- KEYS[1] sorted set key id -> expiry ms, KEYS[2] hash key id -> bytes
-- ARGV now_ms, key_id, size, expires_ms, max_keys, max_bytes (0: unlimited)
local now, key_id, size, expires = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local max_keys, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
-- Expired keys stop counting: drop them (and their sizes) first.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[2], id) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
local size_of = {}
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do size_of[flat[i]] = tonumber(flat[i + 1]) end
-- Live keys by expiry, earliest first; a key admitted again does not count against itself.
local zs = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local scores, sizes, used = {}, {}, 0
for i = 1, #zs, 2 do
  if zs[i] ~= key_id then
    local s = size_of[zs[i]] or 0
    table.insert(scores, tonumber(zs[i + 1]))
    table.insert(sizes, s)
    used = used + s
  end
end
local count = #scores
if max_keys > 0 and count + 1 > max_keys then
  return {0, 1, scores[count + 1 - max_keys] - now}
end
if max_bytes > 0 and used + size > max_bytes then
  local retry = -1
  if size <= max_bytes then
    local freed = 0
    for i = 1, count do
      freed = freed + sizes[i]
      if used - freed + size <= max_bytes then
        retry = scores[i] - now
        break
      end
    end
  end
  return {0, 2, retry}
end
if expires > now then
  redis.call('ZADD', KEYS[1], expires, key_id)
  redis.call('HSET', KEYS[2], key_id, size)
  -- Both keys live until the last key in them expires (plus a second), so nothing outlives its keys.
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local until_ms = tonumber(last[2]) + 1000
  redis.call('PEXPIREAT', KEYS[1], until_ms)
  redis.call('PEXPIREAT', KEYS[2], until_ms)
end
return {1, 0, 0}
"""

RELEASE_KEY = """
-- KEYS[1] sorted set, KEYS[2] hash; ARGV key_id
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return removed
"""

USAGE = """
-- KEYS bucket, row slots, key set, key sizes; ARGV now_ms, rate, burst, slot_ms, slots. Reads only.
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local slot_ms, nslots = tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens = burst
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
if state[1] and state[2] then
  tokens = tonumber(state[1])
  local ts = tonumber(state[2])
  if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) end
end
local oldest = math.floor(now / slot_ms) - nslots + 1
local rows = 0
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do
  if tonumber(flat[i]) >= oldest then rows = rows + tonumber(flat[i + 1]) end
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. string.format('%d', now), '+inf')
local bytes = 0
for _, id in ipairs(ids) do bytes = bytes + (tonumber(redis.call('HGET', KEYS[4], id)) or 0) end
return {tostring(tokens), rows, #ids, bytes}
"""


class RedisQuotaStore:
    """Counters in Redis, shared by every instance: one Lua script per check-and-charge.

    Keys, all under `<prefix>:quota:`, each with a TTL so an idle tenant leaves nothing:
    `rate:<tenant>` (hash: tokens, time; expires once a full refill would have made it
    full), `rows:<tenant>` (hash: minute slot -> rows; expires an hour and a minute after
    its last charge), `keys:<tenant>` and `keysize:<tenant>` (sorted set of key ids scored
    by expiry, hash of their sizes; both expire a second after the last of those keys).
    A script runs alone in Redis, so its read, check and write are one atomic step, and
    EVALSHA sends only the script's digest once Redis has it.

    Every Redis failure becomes KeyStoreUnavailable (503 with Retry-After), as in the key
    store: a request never waits past about twice `timeout_seconds`.
    """

    def __init__(self, redis_or_url: Any, prefix: str = "heserve", timeout_seconds: float = 2.0):
        import redis  # redis-py is needed only by this backend
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.prefix = prefix
        self._errors = redis.RedisError
        if isinstance(redis_or_url, str):
            self.client = redis.Redis.from_url(
                redis_or_url,
                socket_timeout=timeout_seconds,
                socket_connect_timeout=timeout_seconds,
                # As in the key store: one immediate retry covers a connection a Redis restart closed.
                retry=Retry(NoBackoff(), 1),
                health_check_interval=30,
            )
        else:  # a client already configured, e.g. the key store's, sharing its connection pool
            self.client = redis_or_url
        kwargs = self.client.connection_pool.connection_kwargs
        # For log lines: never the URL, which may carry a password.
        self.address = f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"
        self._take_request = self.client.register_script(TAKE_REQUEST)
        self._charge_rows = self.client.register_script(CHARGE_ROWS)
        self._admit_key = self.client.register_script(ADMIT_KEY)
        self._release_key = self.client.register_script(RELEASE_KEY)
        self._usage = self.client.register_script(USAGE)

    def _key(self, kind: str, tenant: str) -> str:
        # The tenant comes last so that no tenant name can produce another kind's key.
        return f"{self.prefix}:quota:{kind}:{tenant}"

    def _call(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except self._errors as exc:
            log.warning("quota store at %s unavailable: %s", self.address, type(exc).__name__)
            # The same Redis holds the keys: clients see one outage, with one message.
            raise KeyStoreUnavailable("the key registry is unavailable; retry in a few seconds") from None

    @staticmethod
    def _ms(seconds: float) -> int:
        return round(seconds * 1000)

    def take_request(self, tenant: str, rate: float, burst: int, now: float) -> float | None:
        # Once a full refill has passed, a missing bucket and a full one are the same.
        ttl_ms = math.ceil(burst / rate * 1000) + 1000
        ok, wait = self._call(
            lambda: self._take_request(
                keys=[self._key("rate", tenant)], args=[self._ms(now), rate, burst, ttl_ms, TOKEN_EPSILON]
            )
        )
        return None if ok else float(wait)

    def charge_rows(self, tenant: str, rows: int, limit: int, now: float) -> float | None:
        ok, retry_ms = self._call(
            lambda: self._charge_rows(
                keys=[self._key("rows", tenant)],
                args=[self._ms(now), rows, limit, SLOT_SECONDS * 1000, WINDOW_SLOTS],
            )
        )
        return None if ok else (retry_ms / 1000 if retry_ms >= 0 else -1)

    def admit_key(
        self,
        tenant: str,
        key_id: str,
        size_bytes: int,
        expires_at: float,
        max_keys: int,
        max_bytes: int,
        now: float,
    ) -> tuple[str, float] | None:
        ok, reason, retry_ms = self._call(
            lambda: self._admit_key(
                keys=[self._key("keys", tenant), self._key("keysize", tenant)],
                args=[self._ms(now), key_id, size_bytes, self._ms(expires_at), max_keys, max_bytes],
            )
        )
        if ok:
            return None
        return (KEYS_COUNT if reason == 1 else KEYS_BYTES), (retry_ms / 1000 if retry_ms >= 0 else -1)

    def release_key(self, tenant: str, key_id: str) -> bool:
        removed = self._call(
            lambda: self._release_key(keys=[self._key("keys", tenant), self._key("keysize", tenant)], args=[key_id])
        )
        return bool(removed)

    def usage(self, tenant: str, rate: float, burst: int, now: float) -> dict[str, Any]:
        keys = [self._key(kind, tenant) for kind in ("rate", "rows", "keys", "keysize")]
        tokens, rows, count, key_bytes = self._call(
            lambda: self._usage(keys=keys, args=[self._ms(now), rate, burst, SLOT_SECONDS * 1000, WINDOW_SLOTS])
        )
        return {
            "keys": int(count),
            "key_bytes": int(key_bytes),
            "rows_last_hour": int(rows),
            "request_tokens": float(tokens) if rate else None,
        }

    def ping(self) -> None:
        self._call(self.client.ping)

    def describe(self) -> str:
        return (
            "the Redis database shared by this service's instances: per tenant (its name, or the client's "
            "address without API keys), request and row counters for at most an hour and the ids, sizes and "
            "expiries of its live keys until they expire, each erased by Redis's own expiry"
        )


def _mib(value: int) -> str:
    return f"{value / (1024 * 1024):g} MiB"


class Quotas:
    """The limits of QuotaLimits enforced on a QuotaStore; every refusal raises QuotaExceeded (429).

    A limit of 0 is unlimited: an unlimited request rate skips the store entirely; rows and
    keys are still counted (for `usage`) but never refused.
    """

    def __init__(self, limits: QuotaLimits, store: QuotaStore, clock: Callable[[], float] = time.time):
        self._limits = limits
        self.store = store
        self.clock = clock

    def check_request(self, tenant: str) -> None:
        """Take one request from the tenant's bucket, or raise QuotaExceeded ("rate_limited")."""
        limits = self._limits
        if not limits.requests_per_second:
            return
        wait = self.store.take_request(tenant, limits.requests_per_second, limits.burst, self.clock())
        if wait is not None:
            raise QuotaExceeded(
                f"request rate limit exceeded: {limits.requests_per_second:g} requests per second "
                f"(bursts of {limits.burst}) per tenant; retry in {max(1, math.ceil(wait))} s",
                wait,
                "rate_limited",
                "requests_per_second",
            )

    def charge_rows(self, tenant: str, rows: int) -> None:
        """Charge `rows` evaluated rows (what the ciphertexts can answer), or raise ("row_quota_exceeded")."""
        if rows < 0:
            raise ValueError(f"rows must not be negative, got {rows}")
        if rows == 0:
            return
        limit = self._limits.rows_per_hour
        retry = self.store.charge_rows(tenant, rows, limit, self.clock())
        if retry is None:
            return
        if retry < 0:
            raise QuotaExceeded(
                f"row quota exceeded: one request may not evaluate more than the {limit:,} rows per hour "
                f"a tenant may; this one would evaluate {rows:,}: send fewer rows per request",
                NEVER_SECONDS,
                "row_quota_exceeded",
                "rows_per_hour",
            )
        raise QuotaExceeded(
            f"row quota exceeded: {limit:,} rows per hour per tenant; this request would evaluate {rows:,} more; "
            f"retry in {max(1, math.ceil(retry))} s",
            retry,
            "row_quota_exceeded",
            "rows_per_hour",
        )

    def admit_key(self, tenant: str, key_id: str, size_bytes: int, expires_at: float) -> None:
        """Check the tenant's live-key count and bytes with this key added, then record it.

        Raises QuotaExceeded ("key_quota_exceeded"), recording nothing. Admitting the same
        key id again updates its size and expiry instead of counting it twice.
        """
        if size_bytes < 0:
            raise ValueError(f"size_bytes must not be negative, got {size_bytes}")
        limits = self._limits
        refusal = self.store.admit_key(
            tenant, key_id, size_bytes, expires_at, limits.max_keys, limits.max_key_bytes, self.clock()
        )
        if refusal is None:
            return
        reason, wait = refusal
        if reason == KEYS_COUNT:
            raise QuotaExceeded(
                f"key quota exceeded: at most {limits.max_keys} live keys per tenant; erase a key you no longer "
                f"use, or retry in {max(1, math.ceil(wait))} s when the oldest expires",
                wait,
                "key_quota_exceeded",
                "max_keys",
            )
        if wait < 0:
            raise QuotaExceeded(
                f"key quota exceeded: these keys ({size_bytes:,} bytes) are larger than the "
                f"{limits.max_key_bytes:,} bytes ({_mib(limits.max_key_bytes)}) of live keys a tenant may hold",
                NEVER_SECONDS,
                "key_quota_exceeded",
                "max_key_bytes",
            )
        raise QuotaExceeded(
            f"key quota exceeded: at most {limits.max_key_bytes:,} bytes ({_mib(limits.max_key_bytes)}) of live "
            f"keys per tenant; erase a key you no longer use, or retry in {max(1, math.ceil(wait))} s",
            wait,
            "key_quota_exceeded",
            "max_key_bytes",
        )

    def release_key(self, tenant: str, key_id: str) -> bool:
        """Stop counting an erased key; False if it was not counted (unknown, expired, released)."""
        return self.store.release_key(tenant, key_id)

    def usage(self, tenant: str) -> dict[str, Any]:
        """The tenant's own use against each limit; a limit of None is unlimited."""
        limits = self._limits
        now = self.clock()
        used = self.store.usage(tenant, limits.requests_per_second, limits.burst, now)
        tokens = used["request_tokens"]
        return {
            "keys": {"used": used["keys"], "limit": limits.max_keys or None},
            "key_bytes": {"used": used["key_bytes"], "limit": limits.max_key_bytes or None},
            "rows_per_hour": {"used": used["rows_last_hour"], "limit": limits.rows_per_hour or None},
            "requests_per_second": {
                "limit": limits.requests_per_second or None,
                "burst": limits.burst if limits.requests_per_second else None,
                # Requests that could be sent at once right now.
                "available": math.floor(tokens + TOKEN_EPSILON) if tokens is not None else None,
            },
        }

    def limits(self) -> dict[str, Any]:
        """The configured limits by QuotaLimits field name (0: unlimited), for the privacy report and metrics."""
        return asdict(self._limits)

    def describe(self) -> str:
        """Where the counters are kept, in words for the privacy report."""
        return self.store.describe()

    def ping(self) -> None:
        """Raise KeyStoreUnavailable if the counters cannot be reached (for readiness)."""
        self.store.ping()
