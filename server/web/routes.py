"""HTTP routes of the Open Inference Protocol (V2) and its key-registry extension. Routes stay thin."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected

from heserve.protocol import v2
from heserve.server import __version__
from heserve.server.service import privacy
from heserve.server.service.errors import BadRequest, NotFound, PayloadTooLarge, RequestTimeout
from heserve.server.service.inference import InferenceLimits, infer
from heserve.server.service.keystore import KeyStoreUnavailable
from heserve.server.service.services import Services
from heserve.server.web import openapi

bp = Blueprint("v2", __name__)

EXTENSIONS = ["binary_tensor_data", "ckks_encrypted_inference", "evaluation_key_registry", "privacy_report"]


def services() -> Services:
    return current_app.extensions["heserve"]


def read_body() -> bytes:
    """The request body, read under the configured timeout (408 for a client that stalls)."""
    timeout = services().config.read_timeout_seconds
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        sock.settimeout(timeout)
    started = time.monotonic()
    try:
        return request.get_data(cache=False)
    except (OSError, ClientDisconnected):
        # gunicorn's reader reports a socket timeout as an early end of the body: tell them apart by time.
        if time.monotonic() - started >= 0.9 * timeout:
            raise RequestTimeout(f"request body not received within {timeout:g} s") from None
        raise BadRequest("the client disconnected before sending the whole body") from None


def header_length() -> int | None:
    raw = request.headers.get(v2.HEADER_LENGTH)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{v2.HEADER_LENGTH} must be an integer, got {raw[:40]!r}") from None
    if value < 0:
        raise BadRequest(f"{v2.HEADER_LENGTH} must not be negative")
    return value


def model_or_404(name: str, version: str | None = None):
    model = services().registry.get(name)
    if model is None or (version is not None and version != model.version):
        raise NotFound(f"model {name!r}" + (f" version {version!r}" if version else "") + " is not served here")
    return model


def owner() -> str:
    """The tenant of the current request (set by `authenticate`)."""
    return g.get("tenant", "")


def quota_tenant() -> str:
    """Whom quotas charge: the API key's tenant, or the client's address when there are no API keys."""
    return owner() or f"addr:{request.remote_addr}"


@bp.before_app_request
def authenticate() -> None:
    svc = services()
    if request.path.startswith("/v2/health/") and svc.config.auth_exempt_health:
        return
    if svc.config.auth_exempt_metrics and request.path == "/metrics":
        return
    g.tenant = svc.api_keys.tenant(request.headers.get("Authorization"))
    # Probes and scrapes aside, every request counts against the tenant's rate, before its body is read.
    if not request.path.startswith("/v2/health/") and request.path != "/metrics":
        svc.quotas.check_request(quota_tenant())


@bp.get("/v2/health/live")
def live():
    return jsonify({"live": True})


@bp.get("/v2/health/ready")
def ready():
    """Ready when models are loaded and the key store answers; liveness never depends on Redis."""
    svc = services()
    if not svc.registry.models:
        return jsonify({"ready": False, "reason": "no models loaded"}), 503
    try:
        svc.keys.store.ping()
    except KeyStoreUnavailable as exc:
        return jsonify({"ready": False, "reason": str(exc)}), 503
    return jsonify({"ready": True})


@bp.get("/v2")
def server_metadata():
    return jsonify({"name": "heserve", "version": __version__, "extensions": EXTENSIONS})


@bp.get("/v2/models")
def model_index():
    registry = services().registry
    return jsonify(
        {
            "models": [
                {"name": m.name, "versions": [m.version], "platform": m.metadata()["platform"], "state": "READY"}
                for m in (registry.get(n) for n in registry.names())
            ]
        }
    )


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    return jsonify(model_or_404(name, version).metadata())


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    model = model_or_404(name, version)
    return jsonify({"name": model.name, "ready": True})


def body_too_large(limit: int, what: str, advice: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} may take {limit} bytes{advice}", "body_too_large")


def json_too_large(limit: int) -> PayloadTooLarge:
    # A JSON body becomes a Python object per number: bounded well below the binary body limit.
    return body_too_large(limit, "a JSON body", "; send larger tensors in binary")


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def model_infer(name: str, version: str | None = None):
    model = model_or_404(name, version)
    svc = services()
    limit = svc.config.max_json_body_bytes
    json_only = header_length() is None
    if json_only and (request.content_length or 0) > limit:
        raise json_too_large(limit)
    info: dict = {}
    started = time.perf_counter()
    try:
        tenant = quota_tenant()
        payload = read_body()
        if json_only and len(payload) > limit:  # chunked bodies declare no length up front
            raise json_too_large(limit)
        body, length = infer(
            model,
            svc.keys,
            payload,
            header_length(),
            InferenceLimits.from_config(svc.config),
            owner(),
            info,
            charge_rows=lambda rows: svc.quotas.charge_rows(tenant, rows),
        )
    finally:
        g.audit_key_id = info.get("key_id")
    current_app.extensions["heserve.metrics"].inference.labels(model.name, info.get("layout", "")).observe(
        time.perf_counter() - started
    )
    if length is None:
        return Response(body, mimetype=v2.JSON_CONTENT_TYPE)
    response = Response(body, mimetype=v2.BINARY_CONTENT_TYPE)
    response.headers[v2.HEADER_LENGTH] = str(length)
    return response


@bp.get("/metrics")
def prometheus_metrics():
    svc = services()
    exposition = current_app.extensions["heserve.metrics"].exposition(svc.keys.store, svc.quotas.limits())
    return Response(exposition, mimetype="text/plain; version=0.0.4")


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(openapi.document())


@bp.get("/v2/privacy")
def privacy_report():
    return jsonify(privacy.report(services()))


@bp.get("/v2/quota")
def quota_usage():
    """The calling tenant's own use of its quotas, and the limits."""
    svc = services()
    return jsonify({"limits": svc.quotas.limits(), "usage": svc.quotas.usage(quota_tenant())})


@bp.post("/v2/keys")
def register_keys():
    keys = services().keys
    limit = keys.largest_upload()
    if (request.content_length or 0) > limit:
        raise body_too_large(limit, "a key registration")
    body = read_body()
    if len(body) > limit:  # chunked bodies declare no length up front
        raise body_too_large(limit, "a key registration")
    record = keys.register(body, header_length(), owner(), quota_tenant())
    g.audit_key_id = record.key_id
    return jsonify(record.public_view()), 201


@bp.get("/v2/keys/<key_id>")
def key_status(key_id: str):
    return jsonify(services().keys.record(key_id, owner()).public_view())


@bp.delete("/v2/keys/<key_id>")
def erase_key(key_id: str):
    services().keys.erase(key_id, owner(), quota_tenant())
    return jsonify({"key_id": key_id, "status": "erased"})
