"""The Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask

from . import audit
from .config import ServerConfig
from .errors import register_error_handlers
from .routes import bp
from .services import Services


def create_app(config: ServerConfig | None = None) -> Flask:
    config = config or ServerConfig.from_env()
    app = Flask("heserve")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False
    app.extensions["heserve"] = Services.build(config)
    register_error_handlers(app)
    audit.install(app)
    app.register_blueprint(bp)
    logging.getLogger("heserve").setLevel(config.log_level.upper())
    return app
