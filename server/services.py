"""Everything a worker builds once at start: configuration, models, key service."""

from __future__ import annotations

from dataclasses import dataclass

from .auth import APIKeys
from .config import ServerConfig
from .keys import KeyService
from .keystore import DiskKeyStore, KeyCache, KeyStore
from .models import ModelRegistry, load_registry


@dataclass
class Services:
    config: ServerConfig
    registry: ModelRegistry
    keys: KeyService
    api_keys: APIKeys

    @classmethod
    def build(cls, config: ServerConfig) -> Services:
        registry = load_registry(config.models_dir)
        store = open_key_store(config)
        keys = KeyService(store, KeyCache(config.key_cache_bytes), registry)
        api_keys = APIKeys.load(config.api_keys_file, config.api_keys)
        return cls(config, registry, keys, api_keys)


def open_key_store(config: ServerConfig) -> KeyStore:
    if config.key_store == "redis":
        from .redis_keystore import RedisKeyStore  # redis-py is needed only by this backend

        return RedisKeyStore(
            config.redis_url, config.key_ttl_seconds, config.redis_timeout_seconds, config.redis_prefix
        )
    return DiskKeyStore(config.keys_dir, config.key_ttl_seconds)
