"""Everything a worker builds once at start: configuration, models, key service."""

from __future__ import annotations

from dataclasses import dataclass

from .config import ServerConfig
from .keys import KeyService
from .keystore import DiskKeyStore, KeyCache
from .models import ModelRegistry, load_registry


@dataclass
class Services:
    config: ServerConfig
    registry: ModelRegistry
    keys: KeyService

    @classmethod
    def build(cls, config: ServerConfig) -> Services:
        registry = load_registry(config.models_dir)
        store = DiskKeyStore(config.keys_dir, config.key_ttl_seconds)
        keys = KeyService(store, KeyCache(config.key_cache_bytes), registry)
        return cls(config, registry, keys)
