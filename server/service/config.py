"""Server configuration: defaults, overridden by HESERVE_* environment variables and CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import heserve.models

# The shipped artifacts travel with the package (heserve.models); HESERVE_MODELS_DIR points elsewhere.
SHIPPED_MODELS_DIR = Path(heserve.models.__file__).resolve().parent
ENV_PREFIX = "HESERVE_"
KEY_STORES = ("disk", "redis")


def _default_web_dir() -> Path | None:
    """The web page (js/app) of a source checkout: <repo>/server/service/config.py -> <repo>/js/app.
    An installed wheel has no js/: None, and /app/ answers 404 web_app_not_installed."""
    candidate = Path(__file__).resolve().parents[2] / "js" / "app"
    return candidate if (candidate / "index.html").is_file() else None


def _default_keys_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "heserve" / "keys"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 0  # 0: one per core
    models_dir: Path = SHIPPED_MODELS_DIR
    key_store: str = "disk"  # "disk": embedded, one machine; "redis": shared by several instances
    keys_dir: Path = field(default_factory=_default_keys_dir)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_seconds: float = 2.0  # a request waits at most about twice this for Redis, then gets 503
    redis_prefix: str = "heserve"
    key_ttl_seconds: float = 900.0  # short by default: keys are re-registered in one call
    max_body_bytes: int = 512 * 1024 * 1024  # one batch chunk of a 784-input network is ~308 MB
    # One key set of a 3-activation network at N=16384 is 237 MiB once deserialized (digits-mlp3).
    key_cache_bytes: int = 768 * 1024 * 1024
    allow_plaintext: bool = True
    max_single_rows: int = 256
    max_batch_chunks: int = 16  # chunks of N/2 rows in one batch request (also bounded by the body size)
    max_request_elements: int = 1 << 22  # tensor elements one request may declare, checked before allocating
    max_request_ciphertexts: int = 1 << 15  # BYTES elements (ciphertexts) one request may declare
    max_json_body_bytes: int = 16 * 1024 * 1024  # pure JSON bodies (plaintext); ciphertexts come in binary
    max_request_seconds: float = 30.0  # worker time one inference may take; past it the request gets 413
    # Threads one network batch chunk computes on: its CPU time is up to this many times its wall time.
    # 1 where a host's workers already fill its cores (workers x threads x this <= cores avoids queuing).
    batch_threads: int = 2  # engine.plan.DEFAULT_BATCH_THREADS (not imported: this module loads without SEAL)
    max_worker_rss_bytes: int = 3 * 1024**3  # a worker past this resident size is replaced after its request
    key_sweep_interval_seconds: float = 10.0  # expired keys' bytes are erased within this many seconds
    # Per tenant (the API key's tenant, or the client's address when there are no API keys); 0 = unlimited.
    quota_max_keys: int = 20
    quota_max_key_bytes: int = 512 * 1024 * 1024
    quota_requests_per_second: float = 20.0
    quota_request_burst: int = 40
    quota_rows_per_hour: int = 1_000_000
    timeout_seconds: int = 60
    read_timeout_seconds: float = 20.0  # a request body that stalls longer gets 408
    log_level: str = "info"
    api_keys_file: Path | None = None
    api_keys: str = ""  # inline "tenant:key,tenant:key" (prefer the file)
    auth_exempt_health: bool = True
    auth_exempt_metrics: bool = False  # true where only the network (not an API key) guards /metrics
    gunicorn_config_file: Path | None = None  # None: server/gunicorn_conf.py; deploy/gunicorn.conf.py extends it
    # State the workers of one server share (models an operator unloaded); heserve-server makes a fresh
    # one per start. None: kept in memory (an application built in process).
    run_dir: Path | None = None
    # The browser page served at /app/ (static files; the JS SDK beside it in ../src). None: not served.
    web_dir: Path | None = field(default_factory=_default_web_dir)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> ServerConfig:
        environ = dict(os.environ if environ is None else environ)
        config = cls()
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                setattr(config, f.name, _coerce(f.name, getattr(config, f.name), raw))
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, value)
        config.models_dir = Path(config.models_dir)
        config.keys_dir = Path(config.keys_dir)
        if config.web_dir is not None:
            config.web_dir = Path(config.web_dir)
        if not 1 <= config.batch_threads <= 64:
            raise ValueError(f"{ENV_PREFIX}BATCH_THREADS must be between 1 and 64, got {config.batch_threads}")
        if config.key_store not in KEY_STORES:
            raise ValueError(f"{ENV_PREFIX}KEY_STORE must be one of {', '.join(KEY_STORES)}, got {config.key_store!r}")
        return config

    def effective_workers(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)


def _coerce(name: str, current: object, raw: str) -> object:
    if isinstance(current, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{ENV_PREFIX}{name.upper()} must be true or false, got {raw!r}")
    if isinstance(current, Path) or name.endswith(("_file", "_dir")):
        return Path(raw) if raw else None
    try:
        return type(current)(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {type(current).__name__}") from None
