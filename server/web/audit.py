"""Request ids and the audit trail: one JSON line per request, never a payload or key byte."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid

from flask import Flask, g, has_request_context, request

AUDIT_LOGGER = "heserve.audit"
REQUEST_ID_HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class JSONLineFormatter(logging.Formatter):
    """One JSON object per line: audit records as they are, any other record as ts/level/logger/message."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, dict):
            return json.dumps(record.msg, separators=(",", ":"), sort_keys=True)
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context() and g.get("request_id"):
            entry["request_id"] = g.request_id
        if record.exc_info:
            entry["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(entry, separators=(",", ":"))


def install(app: Flask) -> None:
    logger = logging.getLogger(AUDIT_LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JSONLineFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    metrics = app.extensions["heserve.metrics"]

    @app.before_request
    def start() -> None:
        g.started = time.perf_counter()
        metrics.inflight.inc()
        g.inflight = True
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def finish(response):
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers[REQUEST_ID_HEADER] = request_id
        view_args = request.view_args or {}
        route = request.url_rule.rule if request.url_rule else "unmatched"
        bytes_out = response.calculate_content_length() or 0
        metrics.observe(route, request.method, response.status_code, request.content_length or 0, bytes_out)
        model = g.get("model")
        if model is not None:  # an inference request that reached a model: the statistics extension
            elapsed_ns = int((time.perf_counter() - g.get("started", time.perf_counter())) * 1e9)
            metrics.observe_inference(
                model.name, model.version, response.status_code < 400, elapsed_ns, g.get("inference") or {}
            )
        logger.info(
            {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "event": "request",
                "request_id": request_id,
                "tenant": g.get("tenant", ""),
                "method": request.method,
                "route": request.url_rule.rule if request.url_rule else None,
                "model": view_args.get("name"),
                # From the path, or set by the route (inference and registration carry it in the body).
                "key_id": view_args.get("key_id") or g.get("audit_key_id"),
                "status": response.status_code,
                # The machine-readable code of a refusal (absent on success): what an alert groups by.
                "code": g.get("error_code"),
                "bytes_in": request.content_length or 0,
                "bytes_out": bytes_out,
                "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1e3, 2),
            }
        )
        return response

    @app.teardown_request
    def done(exc: BaseException | None) -> None:
        if g.pop("inflight", False):
            metrics.inflight.dec()
