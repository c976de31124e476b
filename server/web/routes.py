"""HTTP routes of the Open Inference Protocol (V2) and its key-registry extension. Routes stay thin."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected

from heserve.protocol import v2
from heserve.server import __version__
from heserve.server.service import privacy
from heserve.server.service.errors import BadRequest, NotFound, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from heserve.server.service.inference import InferenceLimits, infer
from heserve.server.service.keystore import KeyStoreUnavailable
from heserve.server.service.registry import ModelNotFound, ServedModel
from heserve.server.service.services import Services
from heserve.server.web import openapi

bp = Blueprint("v2", __name__)

EXTENSIONS = [
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "ckks_encrypted_inference",
    "evaluation_key_registry",
    "privacy_report",
]
# Bodies of the POST routes: JSON, or the binary tensor extension's JSON header followed by bytes.
# Stock clients send one of these or no Content-Type at all; anything else is refused unread.
BODY_MEDIA_TYPES = ("", "application/json", "application/octet-stream")


def services() -> Services:
    return current_app.extensions["heserve"]


def read_body(limit: int | None = None, too_large=None) -> bytes:
    """The request body, read under the configured timeout (408 for a client that stalls).

    With `limit`, reading stops at limit + 1 bytes and `too_large()` is raised: a chunked body
    declares no length, and must not be buffered whole to learn that it is too long."""
    timeout = services().config.read_timeout_seconds
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        sock.settimeout(timeout)
    started = time.monotonic()
    try:
        if limit is None:
            return request.get_data(cache=False)
        chunks, size = [], 0
        while size <= limit:
            chunk = request.stream.read(min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise too_large()
        return b"".join(chunks)
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


def model_or_404(name: str, version: str | None = None) -> ServedModel:
    try:
        return services().repository.lookup(name, version)
    except ModelNotFound as exc:
        raise NotFound(str(exc), code="model_not_found") from None


def check_media_type() -> None:
    """415 for a body the route does not take (form posts, text, multipart), before it is read."""
    if request.mimetype not in BODY_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {request.mimetype!r:.80} is not taken here; send application/json, or "
            "application/octet-stream with the binary tensor extension",
        )


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
    if request.method in ("GET", "HEAD") and (request.path == "/app" or request.path.startswith("/app/")):
        return  # the web page's static files (heserve.server.web.webapp): public; its API calls carry the key
    if svc.config.auth_exempt_metrics and request.path == "/metrics":
        return
    g.tenant, g.role = svc.api_keys.identify(request.headers.get("Authorization"))
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
    svc.repository.sync()
    if not svc.registry.models:
        return jsonify({"ready": False, "reason": "no model is available"}), 503
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
    svc = services()
    svc.repository.sync()
    registry = svc.registry
    return jsonify(
        {
            "models": [
                {"name": m.name, "versions": registry.entry(m.name).versions, "platform": m.platform, "state": "READY"}
                for m in registry.models.values()
            ]
        }
    )


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    model = model_or_404(name, version)
    return jsonify(model.metadata(services().registry.entry(name).versions))


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    """200 when that model (version) serves; 503 with the reason when it is known but unavailable."""
    try:
        model = services().repository.lookup(name, version)
    except ModelNotFound as exc:
        if exc.reason is None and services().registry.entry(name) is None:
            raise NotFound(str(exc), code="model_not_found") from None
        body = {"name": name, "ready": False, "reason": exc.reason or str(exc)}
        body.update({"error": str(exc), "code": "model_unavailable"})
        g.error_code = "model_unavailable"
        return jsonify(body), 503
    return jsonify({"name": model.name, "version": model.version, "ready": True})


def body_too_large(limit: int, what: str, advice: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} may take {limit} bytes{advice}", "body_too_large")


def json_too_large(limit: int) -> PayloadTooLarge:
    # A JSON body becomes a Python object per number: bounded well below the binary body limit.
    return body_too_large(limit, "a JSON body", "; send larger tensors in binary")


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def model_infer(name: str, version: str | None = None):
    check_media_type()
    model = model_or_404(name, version)
    g.model = model
    svc = services()
    limit = svc.config.max_json_body_bytes
    json_only = header_length() is None
    if json_only and (request.content_length or 0) > limit:
        raise json_too_large(limit)
    info: dict = {}
    g.inference = info
    started = time.perf_counter()
    try:
        tenant = quota_tenant()
        # A JSON body is bounded while it is read (chunked bodies declare no length up front).
        payload = read_body(limit, lambda: json_too_large(limit)) if json_only else read_body()
        info["queue_ns"] = int((time.perf_counter() - g.get("started", started)) * 1e9)
        read_done = time.perf_counter()
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
    finished = time.perf_counter()
    current_app.extensions["heserve.metrics"].inference.labels(model.name, info.get("layout", "")).observe(
        finished - started
    )
    if length is None:
        response = Response(body, mimetype=v2.JSON_CONTENT_TYPE)
    else:
        response = Response(body, mimetype=v2.BINARY_CONTENT_TYPE)
        response.headers[v2.HEADER_LENGTH] = str(length)
    response.headers["Server-Timing"] = server_timing(read_done - started, finished - read_done)
    return response


def server_timing(read_seconds: float, infer_seconds: float) -> str:
    """`read`: receiving the body (the client's upload, as the worker saw it); `infer`: the worker's
    handling of it, parse to serialize. Homomorphic evaluation does not branch on the data, so the
    time tells nothing of the input; it does depend on the worker's caches and on other tenants'
    load, which whole milliseconds blur where a finer clock would show them. A client sees where its
    latency goes: its network, or the server."""
    return f"read;dur={round(read_seconds * 1e3)}, infer;dur={round(infer_seconds * 1e3)}"


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
    check_media_type()
    services().repository.refresh_all()  # a model another worker just loaded may bring new parameters
    keys = services().keys
    limit = keys.largest_upload()
    if (request.content_length or 0) > limit:
        raise body_too_large(limit, "a key registration")
    body = read_body(limit, lambda: body_too_large(limit, "a key registration"))
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
