"""Inference requests: plaintext V2 tensors or ciphertexts, evaluated by a model's plan."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import tenseal.sealapi as sealapi

from heserve.engine import rotations, seal_bounds, seal_io
from heserve.engine.linear import EvaluationError
from heserve.engine.plan import DEFAULT_BATCH_THREADS
from heserve.engine.spec import BATCH, LAYOUTS, SINGLE
from heserve.protocol import binding, v2
from heserve.server.service.errors import BadRequest, Forbidden, PayloadTooLarge
from heserve.server.service.keys import KeyService
from heserve.server.service.keystore import KEY_ID_PATTERN
from heserve.server.service.registry import ServedModel

CIPHERTEXT = "ciphertext"
INPUT = "input"
OUTPUT = "output"
# Plaintext inputs: the metadata's FP32, and FP64 converted to FP32 (what stock clients send from
# float64 arrays); every other datatype is refused rather than guessed at.
PLAINTEXT_DATATYPES = ("FP32", "FP64")
PHASES = ("compute_input", "compute_infer", "compute_output")


@dataclass
class PhaseTimes:
    """Nanoseconds spent in each phase of one request (the statistics extension's phases)."""

    ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter_ns()
        try:
            yield
        finally:
            self.ns[name] += time.perf_counter_ns() - started


@dataclass(frozen=True)
class InferenceLimits:
    """What one inference request may cost, checked before any ciphertext is evaluated."""

    allow_plaintext: bool = True
    max_single_rows: int = 256
    max_batch_chunks: int = 16
    max_elements: int = 1 << 22  # tensor elements (plaintext values or ciphertexts) in one request
    max_ciphertexts: int = 1 << 15  # BYTES elements in one request
    deadline_seconds: float = 30.0  # evaluation stops and answers 413 past this (below the worker timeout)
    batch_threads: int = DEFAULT_BATCH_THREADS  # threads one network batch chunk computes on

    @classmethod
    def from_config(cls, config) -> InferenceLimits:
        return cls(
            allow_plaintext=config.allow_plaintext,
            max_single_rows=config.max_single_rows,
            max_batch_chunks=config.max_batch_chunks,
            max_elements=config.max_request_elements,
            max_ciphertexts=config.max_request_ciphertexts,
            deadline_seconds=config.max_request_seconds,
            batch_threads=config.batch_threads,
        )


class Deadline:
    """Checked between rows and chunks: a request that would run past its budget stops there."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def check(self, done: int, total: int, unit: str) -> None:
        """Before item `done` (0-based) of `total`: the message says how many were evaluated."""
        if time.monotonic() > self.ends:
            raise PayloadTooLarge(
                f"the request needs more than the {self.seconds:g} s of worker time one request may take "
                f"(stopped after {done} of {total} {unit}); send fewer {unit} per request",
                "deadline_exceeded",
            )


def infer(
    model: ServedModel,
    keys: KeyService,
    body: bytes,
    header_length: int | None,
    limits: InferenceLimits,
    owner: str = "",
    info: dict | None = None,
    charge_rows: Callable[[int], None] | None = None,
) -> tuple[bytes, int | None]:
    """Answer one V2 inference request; returns the response body and its JSON header length.

    `charge_rows` is called with the number of rows the request's ciphertexts can answer
    (not the number the client claims) after the request is checked and before it is
    evaluated; it raises to refuse the request (a tenant's quota). `info` receives the
    layout, key id, rows answered, the time spent per phase (PhaseTimes) and the rotations that
    composing the client's registered Galois keys added (engine.rotations).
    """
    info = info if info is not None else {}
    times = info.setdefault("times", PhaseTimes())
    with times.phase("compute_input"):
        try:
            request = v2.decode(
                body,
                header_length,
                "inputs",
                max_elements=limits.max_elements,
                max_bytes_elements=limits.max_ciphertexts,
            )
        except v2.ProtocolError as exc:
            raise BadRequest(str(exc), code=exc.code) from None
    encrypted = "key_id" in request.parameters
    info["layout"] = str(request.parameters.get("layout", "single")) if encrypted else "plain"
    key_id = request.parameters.get("key_id")
    if isinstance(key_id, str) and KEY_ID_PATTERN.match(key_id):
        info["key_id"] = key_id  # for the audit line; anything else is not a key id worth logging
    output_name = CIPHERTEXT if encrypted else OUTPUT
    binary = _output_format(request, output_name, encrypted)
    charge = charge_rows or (lambda rows: None)
    if encrypted:
        response = _infer_encrypted(model, keys, request, limits, owner, charge, times, info)
    else:
        if not limits.allow_plaintext:
            raise Forbidden("plaintext inference is disabled on this server; send ciphertexts")
        with times.phase("compute_infer"):
            response = _infer_plaintext(model, request, charge)
    info["rows"] = response.parameters["rows"] if encrypted else response.tensors[0].shape[0]
    response.model_name = model.name
    response.model_version = model.version
    response.id = request.id
    with times.phase("compute_output"):
        return v2.encode(response, "outputs", binary=binary)


def _output_format(request: v2.Message, output_name: str, encrypted: bool) -> set[str]:
    """The outputs to answer in binary; refuses outputs the model does not have."""
    for entry in request.outputs_requested or []:
        if entry["name"] != output_name:
            raise BadRequest(
                f"no output {entry['name']!r:.60} here: this request's one output is {output_name!r}",
                code="unknown_output",
            )
    try:
        binary = v2.binary_outputs(request, [output_name])
    except v2.ProtocolError as exc:
        raise BadRequest(str(exc), code="bad_parameter") from None
    if encrypted:
        chosen = [e.get("parameters", {}).get("binary_data") for e in request.outputs_requested or []]
        if False in chosen:
            raise BadRequest(
                f"output {CIPHERTEXT!r} holds ciphertexts, which have no JSON form: request it with binary_data true",
                code="binary_required",
            )
        return {CIPHERTEXT}  # ciphertexts always travel in binary
    return binary


def _one_input(model: ServedModel, request: v2.Message, name: str, datatypes: tuple[str, ...]) -> v2.Tensor:
    """The request's one input, which must carry the expected name and one of `datatypes`."""
    names = [t.name for t in request.tensors]
    unknown = [n for n in names if n != name]
    if unknown:
        raise BadRequest(
            f"model {model.name!r} has no input {unknown[0]!r:.60}; this request takes one input, {name!r}",
            code="unknown_input",
        )
    if len(names) > 1:
        raise BadRequest(f"input {name!r} is given {len(names)} times", code="duplicate_input")
    tensor = request.tensors[0]
    if tensor.datatype not in datatypes:
        accepted = " or ".join(datatypes)
        raise BadRequest(f"input {name!r} must be {accepted}, got {tensor.datatype}", code="bad_datatype")
    return tensor


def _infer_plaintext(model: ServedModel, request: v2.Message, charge: Callable[[int], None]) -> v2.Message:
    tensor = _one_input(model, request, INPUT, PLAINTEXT_DATATYPES)
    n = model.plan.n_features
    if len(tensor.shape) != 2 or tensor.shape[1] != n or tensor.shape[0] < 1:
        raise BadRequest(f"input {INPUT!r} must have shape [rows, {n}] with rows >= 1, got {tensor.shape}", "bad_shape")
    with np.errstate(over="ignore"):  # an FP64 value beyond FP32's range becomes inf, refused below
        x = np.asarray(tensor.data, dtype=np.float32).astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise BadRequest(f"input {INPUT!r} contains values that are NaN, infinite or beyond FP32", "bad_data")
    charge(x.shape[0])
    y = model.plaintext_predict(x).astype(np.float32)
    return v2.Message([v2.Tensor(OUTPUT, "FP32", list(y.shape), y)])


def _int_param(parameters: dict, name: str) -> int:
    value = parameters.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"parameter {name!r} must be a positive integer", code="bad_parameter")
    return value


def _infer_encrypted(
    model: ServedModel,
    keys: KeyService,
    request: v2.Message,
    limits: InferenceLimits,
    owner: str,
    charge: Callable[[int], None],
    times: PhaseTimes,
    info: dict,
) -> v2.Message:
    with times.phase("compute_input"):
        tensor, layout, eval_keys, rows, per_row, chunks, composed = _prepare_encrypted(
            model, keys, request, limits, owner, charge
        )
    info["composed_rotations"] = composed
    deadline = Deadline(limits.deadline_seconds)
    plan = model.plan
    runtime = plan.runtime
    outputs: list[bytes] = []
    if layout == SINGLE:
        for row in range(rows):
            deadline.check(row, rows, "rows")
            with times.phase("compute_input"):
                cts = [
                    _load_ciphertext(runtime, blob, f"ciphertext [{row}, {j}]", plan, SINGLE)
                    for j, blob in enumerate(tensor.data[row * per_row : (row + 1) * per_row])
                ]
            with times.phase("compute_infer"):
                results = _evaluate(lambda c=cts: plan.evaluate_single(c, eval_keys))
            with times.phase("compute_output"):
                outputs.extend(_rerandomized(runtime, results, eval_keys))
        shape = [rows] if plan.single_results == 1 else [rows, plan.single_results]
        out_params = {"layout": SINGLE, "rows": rows}
    else:
        rows = request.parameters["rows"]
        capacity = runtime.slots
        for chunk in range(chunks):
            deadline.check(chunk, chunks, "chunks")
            chunk_rows = min(capacity, rows - chunk * capacity)
            blobs = tensor.data[chunk * plan.n_features : (chunk + 1) * plan.n_features]
            with times.phase("compute_input"):
                if plan.batch_reads_coefficients:
                    cts = [
                        _evaluate(lambda b=blob, w=f"ciphertext [{chunk}, {j}]": plan.parse_batch_input(b, w))
                        for j, blob in enumerate(blobs)
                    ]
                else:
                    cts = [
                        _load_ciphertext(runtime, blob, f"ciphertext [{chunk}, {j}]", plan, BATCH)
                        for j, blob in enumerate(blobs)
                    ]
            with times.phase("compute_infer"):
                results = _evaluate(
                    lambda c=cts, r=chunk_rows: plan.evaluate_batch(c, r, eval_keys, limits.batch_threads)
                )
            with times.phase("compute_output"):
                outputs.extend(_rerandomized(runtime, results, eval_keys))
        shape = [chunks, plan.n_outputs]
        out_params = {"layout": BATCH, "rows": rows}
    return v2.Message([v2.Tensor(CIPHERTEXT, "BYTES", shape, outputs)], parameters=out_params)


def _prepare_encrypted(
    model: ServedModel,
    keys: KeyService,
    request: v2.Message,
    limits: InferenceLimits,
    owner: str,
    charge: Callable[[int], None],
):
    """Everything settled before the first ciphertext is parsed: shape, counts, key, quota."""
    params = request.parameters
    key_id, layout = params.get("key_id"), params.get("layout", SINGLE)
    if not isinstance(key_id, str):
        raise BadRequest("parameter 'key_id' must be a string", code="bad_parameter")
    if layout not in LAYOUTS or layout not in model.spec.layouts:
        raise BadRequest(
            f"parameter 'layout' must be one of {list(model.spec.layouts)}, got {layout!r}", code="bad_parameter"
        )
    tensor = _one_input(model, request, CIPHERTEXT, ("BYTES",))
    plan = model.plan
    # Shapes, counts and the tenant's share are settled before any key or ciphertext is parsed.
    if layout == SINGLE:
        per_row = plan.single_ciphertexts
        rows = tensor.shape[0] if tensor.shape else 0
        valid = tensor.shape == [rows, per_row] or (per_row == 1 and tensor.shape == [rows])
        if not valid or not 1 <= rows <= limits.max_single_rows:
            raise BadRequest(
                f"single layout takes shape [rows, {per_row}] with 1..{limits.max_single_rows} rows, "
                f"got {tensor.shape}",
                code="bad_shape",
            )
        answerable = rows * plan.single_rows_charged
    else:
        chunks = _batch_shape(plan, tensor, params, limits)
        answerable = chunks * plan.batch_rows_charged
    # Everything the record alone can refuse is refused before the keys are fetched and deserialized.
    record = keys.record(key_id, owner)
    _check_bindings(params.get("bindings"), tensor.data, record.binding_key, key_id)
    if record.params != model.spec.ckks.to_json():
        raise BadRequest(
            f"key {key_id!r} was registered for other CKKS parameters than model {model.name!r} uses",
            code="key_mismatch",
        )
    if model.spec.relin_keys_needed and not record.has_relin_keys:
        raise BadRequest(
            f"model {model.name!r} needs relinearization keys; key {key_id!r} has none", code="key_mismatch"
        )
    composed = _check_rotations(plan, record, key_id, model.spec) if plan.required_galois_elements(layout) else 0
    charge(answerable)
    eval_keys = keys.load(record)
    if eval_keys.public is None:
        raise BadRequest(
            f"key {key_id!r} has no public key, which every result is re-randomized with; register your keys again",
            code="key_mismatch",
        )
    if layout == SINGLE:
        return tensor, layout, eval_keys, rows, per_row, 0, composed * rows
    return tensor, layout, eval_keys, 0, 0, chunks, 0


def _check_rotations(plan, record, key_id: str, spec) -> int:
    """Every rotation step of the plan is a registered one or composed of at most MAX_HOPS of them;
    returns the rotations per row that composition adds (for the operators' metrics)."""
    n = plan.runtime.params.poly_modulus_degree
    registered = rotations.registered_steps(plan.single_steps, set(record.galois_elements), n)
    try:
        paths = rotations.routes(plan.single_steps, registered, plan.runtime.slots)
    except rotations.RotationError as exc:
        raise BadRequest(
            f"key {key_id!r} has Galois keys for rotation steps {registered}: {exc}; register keys for the "
            f"model's rotation steps {list(plan.single_steps)} or a subset that composes them",
            code="key_mismatch",
        ) from None
    uses = spec.rotation_uses
    return sum(uses.get(step, 1) * (len(path) - 1) for step, path in paths.items())


def _rerandomized(runtime, results: list, eval_keys) -> list[bytes]:
    """Serialized results, each first re-randomized with the client's public key (see
    SealRuntime.rerandomize): no result leaves the server without it. Each is written in the SEAL
    serialization version the client's keys came in: SEAL 4.1 loads only 4.1 headers."""
    version = seal_bounds.parse_version(eval_keys.record.seal_version)
    out = []
    for ct in results:
        runtime.rerandomize(ct, eval_keys.public)
        out.append(seal_bounds.with_version(runtime.serialize_result(ct), version))
    return out


def _batch_shape(plan, tensor: v2.Tensor, params: dict, limits: InferenceLimits) -> int:
    """Chunks of a batch request, from the ciphertexts actually sent; `rows` must agree with them."""
    rows = _int_param(params, "rows")
    capacity = plan.runtime.slots
    chunks = tensor.shape[0] if len(tensor.shape) == 2 else 0
    expected = [chunks, plan.n_features]
    if tensor.shape != expected or chunks < 1:
        raise BadRequest(
            f"batch layout takes shape [chunks, {plan.n_features}] "
            f"({plan.n_features} ciphertexts per chunk of up to {capacity} rows), got {tensor.shape}",
            code="bad_shape",
        )
    if chunks > limits.max_batch_chunks:
        raise BadRequest(
            f"{chunks} chunks in one request; at most {limits.max_batch_chunks} "
            f"({limits.max_batch_chunks * capacity} rows) are taken per request",
            code="too_many_chunks",
        )
    if not (chunks - 1) * capacity < rows <= chunks * capacity:
        raise BadRequest(
            f"{chunks} chunks hold {(chunks - 1) * capacity + 1}..{chunks * capacity} rows, "
            f"but parameter 'rows' is {rows}",
            code="bad_parameter",
        )
    return chunks


def _check_bindings(bindings: object, ciphertexts: list, binding_key: str, key_id: str) -> None:
    """Tags are optional for raw V2 clients; when sent, each must match the key's binding key."""
    if bindings is None:
        return
    if not isinstance(bindings, list) or len(bindings) != len(ciphertexts):
        raise BadRequest(
            f"parameter 'bindings' must list one tag per ciphertext ({len(ciphertexts)})", code="bad_parameter"
        )
    if not binding_key:
        raise BadRequest(
            f"key {key_id!r} was registered without a binding key; send no 'bindings'", code="bad_parameter"
        )
    secret = bytes.fromhex(binding_key)
    for index, (blob, presented) in enumerate(zip(ciphertexts, bindings, strict=True)):
        if not binding.verify(secret, blob, presented):
            raise BadRequest(
                f"ciphertext {index} was not made with the secret context that registered key {key_id!r} "
                "(mixed-up keys or a corrupted ciphertext)",
                code="binding_mismatch",
            )


def _load_ciphertext(runtime, blob: bytes, what: str, plan, layout: str) -> sealapi.Ciphertext:
    params = runtime.params
    try:
        # Sizes, counts and compression are bounded by the parameters before SEAL sees a byte.
        canonical = seal_bounds.canonical_ciphertext(
            blob,
            params.poly_modulus_degree,
            params.data_prime_count,
            what,
            parms_id=list(runtime.first_parms_id),
        )
        ct = seal_io.load(sealapi.Ciphertext, runtime.context, canonical, what)
        if ct.is_transparent():
            raise EvaluationError(f"{what} has a zero second polynomial: it is not an encryption under any key")
        plan.check_input(ct, what, layout)
    except seal_io.SealDecodeError as exc:
        raise BadRequest(str(exc), code=getattr(exc, "code", "bad_ciphertext")) from None
    except EvaluationError as exc:
        raise BadRequest(str(exc), code="bad_ciphertext") from None
    return ct


def _evaluate(step):
    try:
        return step()
    except seal_io.SealDecodeError as exc:
        raise BadRequest(str(exc), code=exc.code) from None
    except EvaluationError as exc:
        raise BadRequest(str(exc), code="bad_ciphertext") from None
    except (ValueError, RuntimeError) as exc:
        # SEAL refuses a result that no longer depends on the key: a crafted input whose second
        # polynomial the weights cancel. Anything else from the engine is a server fault (500).
        if "transparent" not in str(exc):
            raise
        raise BadRequest(f"the ciphertexts could not be evaluated: {exc}", code="bad_ciphertext") from None
