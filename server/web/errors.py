"""The one place that maps errors to HTTP responses.

Service errors (heserve.server.service.errors) get the status of their class and a JSON body
{"error", "code"}; anything unexpected is a 500 whose body names the request id and whose
traceback goes to the log (never to the client).
"""

from __future__ import annotations

import logging

from flask import Flask, current_app, g, jsonify
from werkzeug.exceptions import HTTPException

from heserve.server.service.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
)
from heserve.server.service.keystore import KeyStoreUnavailable
from heserve.server.service.quotas import QuotaExceeded

log = logging.getLogger(__name__)

# Most specific first: a subclass takes its own status before its parent's.
STATUSES: tuple[tuple[type[ServiceError], int], ...] = (
    (QuotaExceeded, 429),
    (RequestTimeout, 408),
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (BadRequest, 400),
)


def status_for(exc: ServiceError) -> int:
    for kind, status in STATUSES:
        if isinstance(exc, kind):
            return status
    return 400


# Codes for the refusals werkzeug makes itself (no route, wrong method, body over the limit).
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


def _body(message: str, status: int, code: str | None = None):
    code = code or HTTP_CODES.get(status, "http_error")
    g.error_code = code  # for the audit line
    response = jsonify({"error": message, "code": code})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        status = status_for(exc)
        response = _body(exc.message, status, exc.code)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="heserve"'
        if status in (408, 429):
            response.headers["Connection"] = "close"  # the rest of the body may still arrive, unread
        if status == 429:
            current_app.extensions["heserve.metrics"].quota_refusals.labels(exc.code or "").inc()
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
        # A server fault: the traceback goes to the log, the client gets the request id to quote.
        request_id = getattr(g, "request_id", None)
        log.error("unhandled %s", type(exc).__name__, exc_info=exc, extra={"request_id": request_id})
        g.error_code = "internal"
        response = jsonify({"error": "internal server error", "code": "internal", "request_id": request_id})
        response.status_code = 500
        return response
