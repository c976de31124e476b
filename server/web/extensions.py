"""Triton's model repository, model configuration and statistics extensions, in Triton's JSON shapes,
so that stock clients (tritonclient's get_model_repository_index, load_model, unload_model,
get_model_config, get_inference_statistics) work unchanged."""

from __future__ import annotations

import ipaddress
import json

from flask import Blueprint, current_app, g, jsonify, request

from heserve.server.service.auth import OPERATOR
from heserve.server.service.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from heserve.server.service.registry import READY, ModelNotFound, ServedModel
from heserve.server.web.routes import check_media_type, model_or_404, read_body, services

bp = Blueprint("extensions", __name__)

MAX_CONTROL_BODY = 64 * 1024  # a load or index request carries a few parameters at most
TRITON_TYPES = {"FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "BYTES": "TYPE_STRING"}


FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def control_body() -> dict:
    """The optional JSON body of a repository request (tritonclient sends "" or an object)."""
    check_media_type()
    if (request.content_length or 0) > MAX_CONTROL_BODY:
        raise PayloadTooLarge(f"a repository request may take {MAX_CONTROL_BODY} bytes")
    raw = read_body(
        MAX_CONTROL_BODY, lambda: PayloadTooLarge(f"a repository request may take {MAX_CONTROL_BODY} bytes")
    )
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("the body must be a JSON object", code="malformed_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_request")
    return body


def require_operator(what: str) -> None:
    """The repository and statistics extensions are for operators: an API key with the operator role
    or, on a server with no API keys, a client on this machine (loopback, and not relayed by a proxy
    on this machine: nginx in front would make every client look local)."""
    if services().api_keys.enabled:
        if g.get("role") != OPERATOR:
            raise Forbidden(f"{what} takes an API key with the operator role", "operator_only")
        return
    try:
        local = ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        local = False
    if not local or any(header in request.headers for header in FORWARDING_HEADERS):
        raise Forbidden(f"this server has no API keys: {what} is for clients on this machine only", "operator_only")


@bp.route("/v2/repository/index", methods=["GET", "POST"])
def repository_index():
    require_operator("the repository index")
    body = control_body() if request.method == "POST" else {}
    ready_only = body.get("ready", False)
    if not isinstance(ready_only, bool):
        raise BadRequest("'ready' must be true or false", code="bad_parameter")
    rows = services().repository.index()
    return jsonify([row for row in rows if row["state"] == READY] if ready_only else rows)


@bp.post("/v2/repository/models/<name>/load")
def repository_load(name: str):
    require_operator("loading models")
    parameters = control_body().get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object", code="bad_parameter")
    overrides = sorted(k for k in parameters if k == "config" or k.startswith("file:"))
    if overrides:
        raise BadRequest(
            f"{', '.join(overrides)}: a model is loaded from its directory in the model repository only",
            code="unsupported_parameter",
        )
    try:
        entry = services().repository.load(name)
    except ModelNotFound as exc:
        raise NotFound(str(exc), code="model_not_found") from None
    if entry.state != READY:
        reasons = entry.reason or "; ".join(f"version {v}: {r}" for v, r in sorted(entry.failed.items()))
        raise BadRequest(f"model {name!r} failed to load: {reasons}", code="model_load_failed")
    return jsonify({"name": name, "state": entry.state, "versions": entry.versions, "failed": entry.failed})


@bp.post("/v2/repository/models/<name>/unload")
def repository_unload(name: str):
    require_operator("unloading models")
    parameters = control_body().get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object", code="bad_parameter")
    try:
        services().repository.unload(name)
    except ModelNotFound as exc:
        raise NotFound(str(exc), code="model_not_found") from None
    return jsonify({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})


def model_config(model: ServedModel) -> dict:
    entry = services().registry.entry(model.name)
    metadata = model.metadata()

    def tensors(entries: list[dict]) -> list[dict]:
        return [
            {"name": t["name"], "data_type": TRITON_TYPES.get(t["datatype"], t["datatype"]), "dims": t["shape"]}
            for t in entries
        ]

    return {
        "name": model.name,
        "platform": model.platform,
        "backend": "heserve",
        "version_policy": entry.policy.to_json() if entry is not None else {"latest": {"num_versions": 1}},
        # The row dimension is part of the shape (-1): requests are not batched by the server.
        "max_batch_size": 0,
        "input": tensors(metadata["inputs"]),
        "output": tensors(metadata["outputs"]),
        "parameters": metadata["parameters"],
    }


@bp.get("/v2/models/<name>/config")
@bp.get("/v2/models/<name>/versions/<version>/config")
def model_configuration(name: str, version: str | None = None):
    return jsonify(model_config(model_or_404(name, version)))


@bp.get("/v2/models/stats")
@bp.get("/v2/models/<name>/stats")
@bp.get("/v2/models/<name>/versions/<version>/stats")
def model_statistics(name: str | None = None, version: str | None = None):
    # Counts and times of every tenant's requests: when and how much each model is used.
    require_operator("inference statistics")
    svc = services()
    if name is None:
        svc.repository.refresh_all()  # brings this worker up to date with loads made through the others
        pairs = [(m.name, m.version) for m in sorted(svc.registry.served_models(), key=lambda m: (m.name, m.version))]
    else:
        model_or_404(name, version)  # 404 for a model or version not served
        entry = svc.registry.entry(name)
        pairs = [(name, version)] if version is not None else [(name, v) for v in entry.versions]
    stats = current_app.extensions["heserve.metrics"].model_statistics(pairs)
    return jsonify({"model_stats": stats})
