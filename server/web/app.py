"""The Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask

from heserve.server.service.config import ServerConfig
from heserve.server.service.services import Services
from heserve.server.web import audit, extensions, metrics, webapp
from heserve.server.web.errors import register_error_handlers
from heserve.server.web.routes import bp


def create_app(config: ServerConfig | None = None) -> Flask:
    config = config or ServerConfig.from_env()
    app = Flask("heserve")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False
    app_metrics = metrics.Metrics()
    app.extensions["heserve.metrics"] = app_metrics
    app.extensions["heserve"] = Services.build(config, observer=app_metrics)
    register_error_handlers(app)
    audit.install(app)
    app.register_blueprint(bp)
    app.register_blueprint(extensions.bp)
    app.register_blueprint(webapp.bp)
    logging.getLogger("heserve").setLevel(config.log_level.upper())
    return app
