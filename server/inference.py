"""Inference requests: plaintext V2 tensors or ciphertexts, evaluated by a model's plan."""

from __future__ import annotations

import math

import numpy as np
import tenseal.sealapi as sealapi

from protocol import binding, seal_io, v2
from protocol.spec import BATCH, LAYOUTS, SINGLE

from .engine import EvaluationError
from .errors import BadRequest, Forbidden
from .keys import KeyService
from .keystore import KEY_ID_PATTERN
from .models import ServedModel

CIPHERTEXT = "ciphertext"


def infer(
    model: ServedModel,
    keys: KeyService,
    body: bytes,
    header_length: int | None,
    allow_plaintext: bool,
    max_single_rows: int,
    owner: str = "",
    info: dict | None = None,
) -> tuple[bytes, int | None]:
    """Answer one V2 inference request; returns the response body and its JSON header length."""
    try:
        request = v2.decode(body, header_length, "inputs")
    except v2.ProtocolError as exc:
        raise BadRequest(str(exc)) from None
    if info is not None:
        info["layout"] = str(request.parameters.get("layout", "single")) if "key_id" in request.parameters else "plain"
        key_id = request.parameters.get("key_id")
        if isinstance(key_id, str) and KEY_ID_PATTERN.match(key_id):
            info["key_id"] = key_id  # for the audit line; anything else is not a key id worth logging
    if "key_id" in request.parameters:
        response = _infer_encrypted(model, keys, request, max_single_rows, owner)
        binary = True
    else:
        if not allow_plaintext:
            raise Forbidden("plaintext inference is disabled on this server; send ciphertexts")
        response = _infer_plaintext(model, request)
        binary = header_length is not None
    response.model_name = model.name
    response.id = request.id
    return v2.encode(response, "outputs", binary=binary)


def _infer_plaintext(model: ServedModel, request: v2.Message) -> v2.Message:
    if len(request.tensors) != 1:
        raise BadRequest(f"model {model.name!r} takes one input tensor, got {len(request.tensors)}")
    tensor = request.tensors[0]
    if tensor.datatype not in ("FP32", "FP64"):
        raise BadRequest(f"input {tensor.name!r} must be FP32 (or FP64), got {tensor.datatype}")
    x = np.asarray(tensor.data, dtype=np.float64)
    n = model.plan.n_features
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != n:
        raise BadRequest(f"input {tensor.name!r} must have shape [rows, {n}], got {tensor.shape}")
    if not np.all(np.isfinite(x)):
        raise BadRequest(f"input {tensor.name!r} contains NaN or infinite values")
    y = model.plaintext_predict(x).astype(np.float32)
    return v2.Message([v2.Tensor("output", "FP32", list(y.shape), y)])


def _int_param(parameters: dict, name: str) -> int:
    value = parameters.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"parameter {name!r} must be a positive integer")
    return value


def _infer_encrypted(
    model: ServedModel, keys: KeyService, request: v2.Message, max_single_rows: int, owner: str
) -> v2.Message:
    params = request.parameters
    key_id, layout = params.get("key_id"), params.get("layout", SINGLE)
    if not isinstance(key_id, str):
        raise BadRequest("parameter 'key_id' must be a string")
    if layout not in LAYOUTS:
        raise BadRequest(f"parameter 'layout' must be one of {list(LAYOUTS)}, got {layout!r}")
    if len(request.tensors) != 1 or request.tensors[0].datatype != "BYTES":
        raise BadRequest(f"an encrypted request carries one BYTES tensor of ciphertexts ({CIPHERTEXT!r})")
    tensor = request.tensors[0]
    # Everything the record alone can refuse is refused before the keys are fetched and deserialized.
    record = keys.record(key_id, owner)
    _check_bindings(params.get("bindings"), tensor.data, record.binding_key, key_id)
    if record.params != model.spec.ckks.to_json():
        raise BadRequest(f"key {key_id!r} was registered for other CKKS parameters than model {model.name!r} uses")
    if model.spec.relin_keys_needed and not record.has_relin_keys:
        raise BadRequest(f"model {model.name!r} needs relinearization keys; key {key_id!r} has none")
    eval_keys = keys.load(record)
    plan = model.plan
    runtime = plan.runtime
    if layout == SINGLE:
        per_row = plan.single_ciphertexts
        rows = tensor.shape[0] if tensor.shape else 0
        valid = tensor.shape in ([rows, per_row],) or (per_row == 1 and tensor.shape == [rows])
        if not valid or not 1 <= rows <= max_single_rows:
            raise BadRequest(
                f"single layout takes shape [rows, {per_row}] with 1..{max_single_rows} rows, got {tensor.shape}"
            )
        needed = plan.required_galois_elements(SINGLE)
        missing = [e for e in needed if eval_keys.galois is None or not eval_keys.galois.has_key(e)]
        if missing:
            raise BadRequest(
                f"key {key_id!r} lacks Galois keys for rotation steps {list(plan.single_steps)} "
                f"(galois elements {missing}); register keys with the steps in the model metadata"
            )
        outputs = []
        for row in range(rows):
            cts = [
                _load_ciphertext(runtime.context, blob, f"ciphertext [{row}, {j}]", plan)
                for j, blob in enumerate(tensor.data[row * per_row : (row + 1) * per_row])
            ]
            outputs.append(seal_io.dump(_evaluate(lambda c=cts: plan.evaluate_single(c, eval_keys))))
        shape = [len(outputs)]
        out_params = {"layout": SINGLE, "rows": len(outputs)}
    else:
        rows = _int_param(params, "rows")
        capacity = runtime.slots
        chunks = math.ceil(rows / capacity)
        expected = [chunks, plan.n_features]
        if tensor.shape != expected:
            raise BadRequest(
                f"batch layout with {rows} rows takes shape {expected} "
                f"({plan.n_features} ciphertexts per chunk of up to {capacity} rows), got {tensor.shape}"
            )
        outputs = []
        for chunk in range(chunks):
            chunk_rows = min(capacity, rows - chunk * capacity)
            blobs = tensor.data[chunk * plan.n_features : (chunk + 1) * plan.n_features]
            if plan.batch_reads_coefficients:
                cts = [
                    _evaluate(lambda b=blob, w=f"ciphertext [{chunk}, {j}]": plan.parse_batch_input(b, w))
                    for j, blob in enumerate(blobs)
                ]
            else:
                cts = [
                    _load_ciphertext(runtime.context, blob, f"ciphertext [{chunk}, {j}]", plan)
                    for j, blob in enumerate(blobs)
                ]
            results = _evaluate(lambda c=cts, r=chunk_rows: plan.evaluate_batch(c, r, eval_keys))
            outputs.extend(seal_io.dump(ct) for ct in results)
        shape = [chunks, plan.n_outputs]
        out_params = {"layout": BATCH, "rows": rows}
    return v2.Message([v2.Tensor(CIPHERTEXT, "BYTES", shape, outputs)], parameters=out_params)


def _check_bindings(bindings: object, ciphertexts: list, binding_key: str, key_id: str) -> None:
    """Tags are optional for raw V2 clients; when sent, each must match the key's binding key."""
    if bindings is None:
        return
    if not isinstance(bindings, list) or len(bindings) != len(ciphertexts):
        raise BadRequest(f"parameter 'bindings' must list one tag per ciphertext ({len(ciphertexts)})")
    if not binding_key:
        raise BadRequest(f"key {key_id!r} was registered without a binding key; send no 'bindings'")
    secret = bytes.fromhex(binding_key)
    for index, (blob, presented) in enumerate(zip(ciphertexts, bindings, strict=True)):
        if not binding.verify(secret, blob, presented):
            raise BadRequest(
                f"ciphertext {index} was not made with the secret context that registered key {key_id!r} "
                "(mixed-up keys or a corrupted ciphertext)"
            )


def _load_ciphertext(context, blob: bytes, what: str, plan) -> sealapi.Ciphertext:
    try:
        ct = seal_io.load(sealapi.Ciphertext, context, blob, what)
        plan.check_input(ct, what)
    except (seal_io.SealDecodeError, EvaluationError) as exc:
        raise BadRequest(str(exc)) from None
    return ct


def _evaluate(step):
    try:
        return step()
    except EvaluationError as exc:
        raise BadRequest(str(exc)) from None
    except (ValueError, RuntimeError) as exc:
        # SEAL's own checks (e.g. a transparent result from a crafted ciphertext).
        raise BadRequest(f"the ciphertexts could not be evaluated: {exc}") from None
