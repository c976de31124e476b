"""The HTTP client and the scikit-learn-shaped remote model.

    from heserve.client import Client
    with Client("http://127.0.0.1:8000") as c:
        model = c.model("breast-cancer-logreg")
        labels = model.predict(X)

Only public evaluation keys ever leave this process; the secret key stays in the
SecretContext. The protocol has no endpoint that accepts decrypted values: sharing
CKKS decryptions with the server would let it recover the secret key
(Li and Micciancio, EUROCRYPT 2021), so decrypted results never go back.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from heserve.client import encoding, postprocess
from heserve.client.errors import (
    ConnectionFailedError,
    HEClientError,
    InputError,
    KeyFileError,
    NotFoundError,
    error_for_status,
)
from heserve.client.keys import SecretContext
from heserve.client.ranges import InputRanges, InputRangeWarning
from heserve.client.transport import ConnectionBroken, HTTPTransport, Response, Transport
from heserve.engine import rotations
from heserve.engine.spec import BATCH, COEFFICIENTS, SINGLE, EncryptionSpec, SpecError
from heserve.protocol import v2

SINGLE_CIPHERTEXTS_PER_REQUEST = 64
REQUEST_BYTES_TARGET = 128 * 1024 * 1024  # split batch uploads near this size


class Client:
    """A connection to one server: one transport (by default one HTTP connection pool), a timeout
    on every call.

    transport: how requests reach the server (heserve.client.transport): HTTPTransport by
    default, or WSGITransport(app) to call a server's Flask app in this process.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        unavailable_wait: float = 10.0,
        transport: Transport | None = None,
    ):
        self.url = url.rstrip("/")
        self.timeout = timeout
        # A 503 with Retry-After (the key store restarting, say) is waited out once, up to this many seconds.
        self.unavailable_wait = unavailable_wait
        self._transport = transport if transport is not None else HTTPTransport()
        self._headers = {"User-Agent": "heserve-client/0.1"}
        # Models whose inputs already drew an InputRangeWarning: once per model and client is a hint, not noise.
        self._range_warned: set[str] = set()
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    # --- HTTP ------------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        # Reads, erasures and inferences change nothing on the server when repeated, so a connection
        # that breaks mid-request (a worker restarted, a proxy recycled) is retried once; a key
        # registration is not (it would register twice).
        idempotent = not (method == "POST" and path == "/v2/keys")
        response = self._send(method, path, body, headers, 2 if idempotent else 1)
        wait = _retry_after(response)
        if idempotent and response.status == 503 and wait is not None and wait <= self.unavailable_wait:
            time.sleep(wait)
            response = self._send(method, path, body, headers, 2)
        if response.status >= 400:
            try:
                answer = response.json()
                message, code = answer.get("error", ""), answer.get("code")
            except (ValueError, AttributeError):
                message, code = response.content[:500].decode("utf-8", "replace"), None
            raise error_for_status(response.status, message, code if isinstance(code, str) else None)
        return response

    def _send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None, attempts: int
    ) -> Response:
        for attempt in range(attempts):
            try:
                return self._transport.request(
                    method, self.url + path, body, {**self._headers, **(headers or {})}, self.timeout
                )
            except ConnectionBroken as exc:
                if attempt + 1 == attempts:
                    raise ConnectionFailedError(f"{method} {path}: cannot reach {self.url}: {exc}") from None
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        response = self._request(method, path, body, headers)
        try:
            return response.json()
        except ValueError:
            raise HEClientError(f"{method} {path}: the server's answer is not JSON") from None

    # --- metadata --------------------------------------------------------------------------
    def server_metadata(self) -> dict:
        return self._json("GET", "/v2")

    def models(self) -> list[dict]:
        return self._json("GET", "/v2/models")["models"]

    def model_metadata(self, name: str) -> dict:
        return self._json("GET", f"/v2/models/{name}")

    def model(
        self,
        name: str,
        key_file: str | os.PathLike | None = None,
        secret_context: SecretContext | None = None,
        rotation_keys: int | str | None = None,
    ) -> RemoteModel:
        """A remote model. `key_file`: load the secret key from there if it exists, else create and save it.

        `rotation_keys`: register Galois keys for at most this many of the model's rotation steps (the
        server composes the others from them): fewer bytes to upload and store, more server time per
        single-layout request; "fewest": as few as compose every step. None registers every step:
        the fastest evaluation.
        """
        return RemoteModel(self, name, self.model_metadata(name), key_file, secret_context, rotation_keys)

    # --- keys ------------------------------------------------------------------------------
    def register_keys(
        self, secret: SecretContext, rotation_steps: list[int] | tuple[int, ...], relin_keys: bool = False
    ) -> dict:
        """Upload public evaluation keys for these rotation steps; returns the key record (with key_id)."""
        body, header_length = secret.evaluation_key_request(rotation_steps, relin_keys)
        return self._json(
            "POST",
            "/v2/keys",
            body,
            {v2.HEADER_LENGTH: str(header_length), "Content-Type": v2.BINARY_CONTENT_TYPE},
        )

    def key_status(self, key_id: str) -> dict:
        return self._json("GET", f"/v2/keys/{key_id}")

    def delete_key(self, key_id: str) -> dict:
        return self._json("DELETE", f"/v2/keys/{key_id}")

    # --- inference -------------------------------------------------------------------------
    def infer_ciphertexts(
        self,
        model: str,
        key_id: str,
        layout: str,
        ciphertexts: list[bytes],
        shape: list[int],
        rows: int,
        bindings: list[str] | None = None,
    ) -> tuple[list[bytes], list[int]]:
        """Send ciphertexts (with their key-binding tags, if given), get result ciphertexts and their shape back."""
        parameters = {"key_id": key_id, "layout": layout, "rows": rows}
        if bindings is not None:
            parameters["bindings"] = bindings
        request = v2.Message([v2.Tensor("ciphertext", "BYTES", shape, ciphertexts)], parameters=parameters)
        body, header_length = v2.encode(request, "inputs", binary=True)
        response = self._request(
            "POST",
            f"/v2/models/{model}/infer",
            body,
            {v2.HEADER_LENGTH: str(header_length), "Content-Type": v2.BINARY_CONTENT_TYPE},
        )
        try:
            answer = v2.decode(response.content, _header_length(response), "outputs")
        except v2.ProtocolError as exc:
            raise HEClientError(f"the server's answer is malformed: {exc}") from None
        tensor = answer.tensors[0]
        return tensor.data, tensor.shape

    def infer_plaintext(self, model: str, x: np.ndarray) -> np.ndarray:
        """Plaintext V2 inference (for baselines): raw model outputs, shape (rows, outputs)."""
        x = np.asarray(x, dtype=np.float32)
        request = v2.Message([v2.Tensor("input", "FP32", list(x.shape), x)])
        body, _ = v2.encode(request, "inputs", binary=False)
        response = self._request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": v2.JSON_CONTENT_TYPE})
        try:
            answer = v2.decode(response.content, None, "outputs")
        except v2.ProtocolError as exc:
            raise HEClientError(f"the server's answer is malformed: {exc}") from None
        return np.asarray(answer.tensors[0].data, dtype=np.float64)


def _retry_after(response: Response) -> float | None:
    """Seconds from a Retry-After header given in seconds; None when absent or a date."""
    raw = next((v for k, v in response.headers.items() if k.lower() == "retry-after"), None)
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


_SDK_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside the SDK: a warning points at the application's predict call,
    however many SDK functions lie between."""
    level, frame = 1, sys._getframe(1)  # our caller, the one that calls warnings.warn: its stacklevel is 1
    while frame is not None and frame.f_code.co_filename.startswith(_SDK_DIR):
        level, frame = level + 1, frame.f_back
    return level


def _header_length(response: Response) -> int | None:
    raw = {k.lower(): v for k, v in response.headers.items()}.get(v2.HEADER_LENGTH.lower())
    return int(raw) if raw is not None else None


@dataclass
class EncryptedRequest:
    """Ciphertexts ready to send: `ciphertexts` in row-major order of `shape`."""

    layout: str
    rows: int
    shape: list[int]
    ciphertexts: list[bytes]
    bindings: list[str] | None = None

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.ciphertexts)


class RemoteModel:
    """A model served remotely, used like a scikit-learn estimator; inputs stay encrypted."""

    def __init__(
        self,
        client: Client,
        name: str,
        metadata: dict,
        key_file: str | os.PathLike | None = None,
        secret_context: SecretContext | None = None,
        rotation_keys: int | str | None = None,
    ):
        self.client = client
        self.name = name
        self.metadata = metadata
        parameters = metadata.get("parameters", {})
        try:
            self.spec = EncryptionSpec.from_json(parameters.get("encryption"))
        except (SpecError, ValueError) as exc:
            raise HEClientError(f"model {name!r} does not publish a usable encryption spec: {exc}") from None
        self.input_names: list[str] = list(parameters.get("input_names", []))
        self.n_features_in_ = self.spec.n_features
        self.n_outputs = self.spec.n_outputs
        self._preprocess = parameters.get("preprocess", {"type": "identity"})
        self._postprocess = parameters.get("postprocess", {"type": "identity"})
        self._input_ranges = InputRanges.from_metadata(parameters.get("input_ranges"), self.n_features_in_)
        if "classes" in self._postprocess:
            self.classes_ = np.asarray(self._postprocess["classes"])
        self._key_file = key_file
        self._secret = secret_context
        self.key_id: str | None = None
        self.rotation_steps = self._registered_steps(rotation_keys)

    # --- keys ------------------------------------------------------------------------------
    @property
    def secret_context(self) -> SecretContext:
        if self._secret is None:
            if self._key_file is not None and os.path.exists(self._key_file):
                self._secret = SecretContext.load(self._key_file)
            else:
                self._secret = SecretContext.generate(self.spec.ckks)
                if self._key_file is not None:
                    self._secret.save(self._key_file)
        if self._secret.params != self.spec.ckks:
            raise KeyFileError(
                f"the secret key is for {self._secret.params.to_json()}, model {self.name!r} needs "
                f"{self.spec.ckks.to_json()}"
            )
        return self._secret

    def _registered_steps(self, rotation_keys: int | str | None) -> tuple[int, ...]:
        """The rotation steps whose Galois keys `register` uploads."""
        steps = tuple(self.spec.rotation_steps)
        if rotation_keys is None:
            return steps
        try:
            rotations.check_count(rotation_keys)  # refused for every model alike, rotating or not
            if not steps:
                return steps
            slots = self.spec.ckks.poly_modulus_degree // 2
            return rotations.compact_steps(steps, slots, rotation_keys, self.spec.rotation_uses)
        except rotations.RotationError as exc:
            raise InputError(f"model {self.name!r}: rotation_keys={rotation_keys}: {exc}") from None

    def register(self) -> str:
        """Register this model's evaluation keys once; returns the server's key id."""
        if self.key_id is None:
            record = self.client.register_keys(self.secret_context, self.rotation_steps, self.spec.relin_keys_needed)
            self.key_id = record["key_id"]
        return self.key_id

    def delete_key(self) -> None:
        """Erase the server's copy of this model's evaluation keys (right to erasure)."""
        if self.key_id is not None:
            self.client.delete_key(self.key_id)
            self.key_id = None

    # --- the estimator surface -----------------------------------------------------------
    def decision_function(self, X: Any, layout: str | None = None) -> np.ndarray:
        scores = self.raw_scores(X, layout)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict_proba(self, X: Any, layout: str | None = None) -> np.ndarray:
        return postprocess.probabilities(self.raw_scores(X, layout), self._postprocess)

    def predict(self, X: Any, layout: str | None = None) -> np.ndarray:
        return postprocess.labels(self.raw_scores(X, layout), self._postprocess)

    def raw_scores(self, X: Any, layout: str | None = None) -> np.ndarray:
        """Model outputs before post-processing, shape (rows, n_outputs), computed encrypted."""
        x = self.validate(X)
        layout = layout or self.choose_layout(x.shape[0])
        scores = []
        for request in self.encrypt(x, layout, preprocessed=True):
            scores.append(self.decrypt(request, self.send(request)))
        return np.concatenate(scores, axis=0)

    # --- lower-level steps --------------------------------------------------------------------
    def validate(self, X: Any) -> np.ndarray:
        try:
            x = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"input must be numeric: {exc}") from None
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2:
            raise InputError(f"input must be 1-D (one row) or 2-D (rows, features), got {x.ndim}-D")
        if x.shape[1] != self.n_features_in_:
            raise InputError(
                f"X has {x.shape[1]} features, but model {self.name!r} expects {self.n_features_in_}"
                + (f" ({', '.join(self.input_names[:5])}, ...)" if self.input_names else "")
            )
        if x.shape[0] == 0:
            raise InputError("input has no rows")
        if not np.all(np.isfinite(x)):
            raise InputError("input contains NaN or infinite values")
        self._check_ranges(x)
        return x

    def _check_ranges(self, x: np.ndarray) -> None:
        """Warn (InputRangeWarning, once per model and client) when raw rows lie far outside the training ranges.

        Local only: the server learns nothing of it. See heserve.client.ranges for what counts as far.
        """
        warned = self.client._range_warned
        if self._input_ranges is None or self.name in warned:
            return
        finding = self._input_ranges.check(x, self._preprocess)
        if finding is None:
            return
        warned.add(self.name)
        message = finding.message(self.name, self.input_names, self._preprocess.get("type", "identity"))
        warnings.warn(message, InputRangeWarning, stacklevel=_caller_stacklevel())

    def choose_layout(self, rows: int) -> str:
        """Single-sample ciphertexts for a few rows (latency), SIMD batch for many (throughput)."""
        if BATCH not in self.spec.layouts:
            return SINGLE
        if SINGLE not in self.spec.layouts:
            return BATCH
        # One ciphertext per row against one per feature: batch wins once rows outgrow features/4.
        return SINGLE if rows * 4 <= self.n_features_in_ else BATCH

    def encrypt(self, X: Any, layout: str, preprocessed: bool = False) -> list[EncryptedRequest]:
        """Encrypt rows for `layout`, split into requests of a reasonable size."""
        x = X if preprocessed else self.validate(X)
        if layout not in self.spec.layouts:
            raise InputError(f"model {self.name!r} accepts layouts {sorted(self.spec.layouts)}, not {layout!r}")
        x = postprocess.preprocess(x, self._preprocess)
        secret = self.secret_context
        spec = self.spec.layouts[layout]
        scale = 2.0 ** spec.input_scale_bits(self.spec.input_scale_bits)
        requests_: list[EncryptedRequest] = []
        if layout == SINGLE:
            rows_per_request = max(1, SINGLE_CIPHERTEXTS_PER_REQUEST // spec.ciphertexts_per_row)
            if spec.rows_per_request > 0:  # the server's advice for expensive plans
                rows_per_request = min(rows_per_request, spec.rows_per_request)
            for start in range(0, x.shape[0], rows_per_request):
                part = x[start : start + rows_per_request]
                if spec.encoding == COEFFICIENTS:
                    cts = [secret.encrypt_coefficients(row, scale) for row in part]
                else:
                    cts = [
                        secret.encrypt(vector, scale)
                        for row in part
                        for vector in encoding.pack_single(row, spec, secret.slot_count)
                    ]
                requests_.append(
                    EncryptedRequest(
                        SINGLE, len(part), [len(part), spec.ciphertexts_per_row], cts, [secret.bind(ct) for ct in cts]
                    )
                )
        else:
            capacity = min(spec.capacity, secret.slot_count)
            chunk_bytes = self.n_features_in_ * (secret.ciphertext_bytes(seeded=spec.seeded))
            step = capacity * max(1, REQUEST_BYTES_TARGET // chunk_bytes)
            for start in range(0, x.shape[0], step):
                part = x[start : start + step]
                cts = []
                for chunk_start in range(0, part.shape[0], capacity):
                    columns = encoding.pack_batch(part[chunk_start : chunk_start + capacity], capacity)
                    cts.extend(secret.encrypt(column, scale, seeded=spec.seeded) for column in columns)
                chunks = math.ceil(part.shape[0] / capacity)
                requests_.append(
                    EncryptedRequest(
                        BATCH, part.shape[0], [chunks, self.n_features_in_], cts, [secret.bind(ct) for ct in cts]
                    )
                )
        return requests_

    def send(self, request: EncryptedRequest) -> list[bytes]:
        """Send one encrypted request; returns the result ciphertexts (still encrypted)."""

        def attempt() -> list[bytes]:
            results, _ = self.client.infer_ciphertexts(
                self.name,
                self.register(),
                request.layout,
                request.ciphertexts,
                request.shape,
                request.rows,
                request.bindings,
            )
            return results

        try:
            return attempt()
        except NotFoundError as exc:
            if exc.code != "key_not_found":
                raise
            # The server's copy expired (its time to live) or was erased: register again, once.
            self.key_id = None
            return attempt()

    def decrypt(self, request: EncryptedRequest, results: list[bytes]) -> np.ndarray:
        """Decrypt result ciphertexts locally: raw outputs of shape (rows, n_outputs)."""
        secret = self.secret_context
        if request.layout == SINGLE:
            spec = self.spec.layouts[SINGLE]
            if len(results) != request.rows * spec.results_per_row:
                raise HEClientError(
                    f"expected {request.rows * spec.results_per_row} result ciphertexts, got {len(results)}"
                )
            if spec.encoding == COEFFICIENTS:
                values = np.array([secret.decrypt_constant(r) for r in results])
                return values.reshape(request.rows, spec.results_per_row)[:, : self.n_outputs]
            return np.stack([encoding.unpack_single_result(secret.decrypt(r), spec, self.n_outputs) for r in results])
        k = self.n_outputs
        capacity = min(self.spec.layouts[BATCH].capacity, secret.slot_count)
        blocks = []
        for chunk in range(len(results) // k):
            rows = min(capacity, request.rows - chunk * capacity)
            slots = [secret.decrypt(r) for r in results[chunk * k : (chunk + 1) * k]]
            blocks.append(encoding.unpack_batch(slots, rows))
        return np.concatenate(blocks, axis=0)
