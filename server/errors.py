"""The server's error types and the one place that maps them to HTTP responses."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from . import metrics
from .keystore import KeyStoreUnavailable

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered with `status` and an Open Inference Protocol body {"error": message}."""

    status = 400
    code: str | None = None  # machine-readable kind, for clients that act on it

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class BadRequest(APIError):
    status = 400
    code = "bad_request"


class NotFound(APIError):
    status = 404


class KeyNotFound(NotFound):
    """An evaluation key that is unknown, expired or erased: the client registers its keys again."""

    code = "key_not_found"


class Forbidden(APIError):
    status = 403


def _body(message: str, status: int, code: str | None = None):
    response = jsonify({"error": message, "code": code} if code else {"error": message})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def api_error(exc: APIError):
        response = _body(exc.message, exc.status, exc.code)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="heserve"'
        if exc.status in (408, 429):
            response.headers["Connection"] = "close"  # the rest of the body may still arrive, unread
        if exc.status == 429:
            metrics.QUOTA_REFUSALS.labels(exc.code or "").inc()
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(max(1, int(retry_after)))
        return response

    @app.errorhandler(KeyStoreUnavailable)
    def key_store_unavailable(exc: KeyStoreUnavailable):
        response = _body(str(exc), 503, "key_store_unavailable")
        response.headers["Retry-After"] = "2"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        response = _body(exc.description or exc.name, exc.code or 500)
        if exc.code == 413:
            response.headers["Connection"] = "close"  # the body was not read
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        # Never echo internals; the log line names the type only (no payloads).
        log.error("unhandled %s", type(exc).__name__, exc_info=app.debug)
        return _body("internal server error", 500)
