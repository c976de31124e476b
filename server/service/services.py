"""Everything a worker builds once at start: configuration, models, key service."""

from __future__ import annotations

from dataclasses import dataclass

from heserve.server.service.auth import APIKeys
from heserve.server.service.config import ServerConfig
from heserve.server.service.keys import KeyObserver, KeyService
from heserve.server.service.keystore import DiskKeyStore, KeyCache, KeyStore, Sweeper
from heserve.server.service.quotas import QuotaLimits, Quotas
from heserve.server.service.registry import ModelRegistry, load_registry
from heserve.server.service.repository import Repository, RepositoryState


@dataclass
class Services:
    config: ServerConfig
    registry: ModelRegistry
    keys: KeyService
    api_keys: APIKeys
    quotas: Quotas
    repository: Repository
    sweeper: Sweeper | None = None

    @classmethod
    def build(cls, config: ServerConfig, sweep: bool = True, observer: KeyObserver | None = None) -> Services:
        """`sweep`: erase expired keys from a background thread (each worker runs one).
        `observer`: told of key loads and cache hits (the HTTP layer's metrics)."""
        state = RepositoryState(config.run_dir)
        registry = load_registry(config.models_dir, skip=state.unloaded())
        store = open_key_store(config)
        quotas = Quotas(QuotaLimits.from_config(config), open_quota_store(config))
        keys = KeyService(store, KeyCache(config.key_cache_bytes), registry, quotas, observer)
        api_keys = APIKeys.load(config.api_keys_file, config.api_keys)
        sweeper = Sweeper(store, config.key_sweep_interval_seconds).start() if sweep else None
        return cls(config, registry, keys, api_keys, quotas, Repository(registry, state), sweeper)


def open_key_store(config: ServerConfig) -> KeyStore:
    if config.key_store == "redis":
        from heserve.server.service.redis_keystore import RedisKeyStore  # redis-py is needed only by this backend

        return RedisKeyStore(
            config.redis_url, config.key_ttl_seconds, config.redis_timeout_seconds, config.redis_prefix
        )
    return DiskKeyStore(config.keys_dir, config.key_ttl_seconds)


def open_quota_store(config: ServerConfig):
    """Counters shared by every worker: in Redis beside the keys, or in SQLite beside the key directory
    (not in it: the key directory holds keys only)."""
    if config.key_store == "redis":
        from heserve.server.service.quotas import RedisQuotaStore

        return RedisQuotaStore(config.redis_url, config.redis_prefix, config.redis_timeout_seconds)
    from heserve.server.service.quotas import SqliteQuotaStore

    return SqliteQuotaStore(config.keys_dir.with_name(config.keys_dir.name + "-quotas"))
