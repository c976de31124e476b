"""Everything a worker builds once at start: configuration, models, key service."""

from __future__ import annotations

from dataclasses import dataclass

from .auth import APIKeys
from .config import ServerConfig
from .keys import KeyService
from .keystore import DiskKeyStore, KeyCache
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
        store = DiskKeyStore(config.keys_dir, config.key_ttl_seconds)
        keys = KeyService(store, KeyCache(config.key_cache_bytes), registry)
        api_keys = APIKeys.load(config.api_keys_file, config.api_keys)
        return cls(config, registry, keys, api_keys)
