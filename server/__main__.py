"""Start the server under gunicorn.

    heserve-server --host 127.0.0.1 --port 8000 --workers 2 --models-dir models --keys-dir /var/lib/heserve/keys

Every flag can also be set as an HESERVE_* environment variable (HESERVE_PORT, ...).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from heserve.server.service.config import ENV_PREFIX, KEY_STORES, ServerConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = ServerConfig.from_env()
    parser = argparse.ArgumentParser(prog="heserve-server", description="Encrypted inference server (gunicorn).")
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="0: one per core")
    parser.add_argument("--models-dir", type=Path, default=defaults.models_dir)
    parser.add_argument(
        "--key-store",
        choices=KEY_STORES,
        default=defaults.key_store,
        help="disk: embedded, this machine only (default); redis: shared by several instances",
    )
    parser.add_argument("--keys-dir", type=Path, default=defaults.keys_dir, help="for --key-store disk")
    parser.add_argument(
        "--redis-url",
        default=defaults.redis_url,
        help="for --key-store redis (prefer HESERVE_REDIS_URL when it carries a password)",
    )
    parser.add_argument("--key-ttl", type=float, default=defaults.key_ttl_seconds, help="seconds")
    parser.add_argument("--no-plaintext", action="store_true", help="refuse plaintext inference requests")
    parser.add_argument(
        "--api-keys-file",
        type=Path,
        default=defaults.api_keys_file,
        help="lines of 'tenant key' or 'tenant sha256:<hex>'; enables authentication",
    )
    parser.add_argument(
        "--gunicorn-config",
        type=Path,
        default=defaults.gunicorn_config_file,
        help="a gunicorn configuration file (default: the built-in one; see deploy/gunicorn.conf.py)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = ServerConfig.from_env(
        host=args.host,
        port=args.port,
        workers=args.workers,
        models_dir=args.models_dir.resolve(),
        key_store=args.key_store,
        keys_dir=args.keys_dir.resolve(),
        redis_url=args.redis_url,
        key_ttl_seconds=args.key_ttl,
        allow_plaintext=False if args.no_plaintext else None,
        api_keys_file=args.api_keys_file.resolve() if args.api_keys_file else None,
        gunicorn_config_file=args.gunicorn_config.resolve() if args.gunicorn_config else None,
    )
    env = dict(os.environ)
    env.update(
        {
            ENV_PREFIX + "HOST": config.host,
            ENV_PREFIX + "PORT": str(config.port),
            ENV_PREFIX + "WORKERS": str(config.effective_workers()),
            ENV_PREFIX + "MODELS_DIR": str(config.models_dir),
            ENV_PREFIX + "KEY_STORE": config.key_store,
            ENV_PREFIX + "KEYS_DIR": str(config.keys_dir),
            ENV_PREFIX + "REDIS_URL": config.redis_url,
            ENV_PREFIX + "KEY_TTL_SECONDS": str(config.key_ttl_seconds),
            ENV_PREFIX + "ALLOW_PLAINTEXT": "true" if config.allow_plaintext else "false",
        }
    )
    if config.api_keys_file:
        env[ENV_PREFIX + "API_KEYS_FILE"] = str(config.api_keys_file)
    # Workers share their Prometheus samples through files in a directory of this server's own.
    metrics_dir = env.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        metrics_dir = tempfile.mkdtemp(prefix="heserve-metrics-")
        env["HESERVE_METRICS_DIR_OWNED"] = "1"  # the master removes it when it exits
    for stale in Path(metrics_dir).glob("*.db"):
        stale.unlink()
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # The workers' shared repository state (models an operator unloaded) lives as long as this server.
    if not env.get(ENV_PREFIX + "RUN_DIR"):
        env[ENV_PREFIX + "RUN_DIR"] = tempfile.mkdtemp(prefix="heserve-run-")
        env["HESERVE_RUN_DIR_OWNED"] = "1"
    _json_logging(config.log_level)
    conf = config.gunicorn_config_file or Path(__file__).parent / "web" / "gunicorn_conf.py"
    try:
        startup = _startup_record(config)
    except Exception as exc:  # a models directory that is not there, an API key file that is wrong
        _fail(f"{type(exc).__name__}: {exc}")
    if not conf.is_file():
        _fail(f"gunicorn configuration {conf} not found")
    logging.getLogger("heserve.startup").info(startup)
    command = [sys.executable, "-m", "gunicorn", "-c", str(conf), "heserve.server.web.app:create_app()"]
    os.execvpe(command[0], command, env)


def _json_logging(level: str) -> None:
    """Every line this process writes on stderr is one JSON object, as the workers' are."""
    from heserve.server.web.audit import JSONLineFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _fail(message: str) -> None:
    logging.getLogger("heserve.startup").critical(message)
    sys.exit(2)


def _startup_record(config: ServerConfig) -> dict:
    """The one start-up line: what is served and how. Loading here also reports every bad artifact
    (one JSON line each) before a worker starts; none of them stops the server."""
    from heserve.server.service.auth import APIKeys
    from heserve.server.service.quotas import QuotaLimits
    from heserve.server.service.registry import load_registry

    registry = load_registry(config.models_dir)
    api_keys = APIKeys.load(config.api_keys_file, config.api_keys)
    models: dict[str, dict] = {}
    for row in registry.index():
        model = models.setdefault(
            row["name"], {"name": row["name"], "state": "UNAVAILABLE", "versions": [], "unavailable": []}
        )
        if row["state"] == "READY":
            model["versions"].append(row["version"])
            model["state"] = "READY"
        else:
            model["unavailable"].append({"version": row["version"], "reason": row["reason"]})
    return {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "level": "info",
        "event": "startup",
        "listen": f"{config.host}:{config.port}",
        "workers": config.effective_workers(),
        "models_dir": str(config.models_dir),
        "models": list(models.values()),
        "key_store": {"kind": config.key_store, "ttl_seconds": config.key_ttl_seconds, "up": _key_store_up(config)},
        "authentication": api_keys.describe(),
        "plaintext_inference": config.allow_plaintext,
        "quotas": asdict(QuotaLimits.from_config(config)),
    }


def _key_store_up(config: ServerConfig) -> bool:
    """A key store that is down at start is reported, not fatal: the server answers 503 until it returns."""
    from heserve.server.service.keystore import KeyStoreUnavailable
    from heserve.server.service.services import open_key_store

    try:
        open_key_store(config).ping()
    except KeyStoreUnavailable as exc:
        logging.getLogger("heserve.startup").warning("%s; not ready until it answers", exc)
        return False
    return True



if __name__ == "__main__":
    main()
