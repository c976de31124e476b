"""Building raw protocol requests for tests that go around the SDK."""

from __future__ import annotations

import numpy as np
import requests

from client import encoding
from client.keys import SecretContext
from protocol import v2
from protocol.params import CKKSParams
from protocol.spec import EncryptionSpec


def model_spec(url: str, name: str) -> EncryptionSpec:
    metadata = requests.get(f"{url}/v2/models/{name}", timeout=10).json()
    return EncryptionSpec.from_json(metadata["parameters"]["encryption"])


def post_binary(url: str, path: str, message: v2.Message, tensor_key: str = "inputs", **kwargs) -> requests.Response:
    body, header_length = v2.encode(message, tensor_key, binary=True)
    return requests.post(
        url + path,
        data=body,
        timeout=60,
        headers={v2.HEADER_LENGTH: str(header_length), "Content-Type": v2.BINARY_CONTENT_TYPE},
        **kwargs,
    )


def register(
    url: str, secret: SecretContext, steps, params: CKKSParams | None = None, relin_keys: bool = False
) -> requests.Response:
    body, header_length = secret.evaluation_key_request(list(steps), relin_keys)
    if params is not None:  # rewrite the declared parameters, keep the key bytes
        message = v2.decode(body, header_length, "inputs")
        message.parameters = {"ckks": params.to_json()}
        body, header_length = v2.encode(message, "inputs", binary=True)
    return requests.post(
        url + "/v2/keys",
        data=body,
        timeout=60,
        headers={v2.HEADER_LENGTH: str(header_length), "Content-Type": v2.BINARY_CONTENT_TYPE},
    )


def encrypt_single(
    secret: SecretContext, spec: EncryptionSpec, row: np.ndarray, scale_bits: int | None = None
) -> bytes:
    layout = spec.layouts["single"]
    scale = 2.0 ** (scale_bits or layout.input_scale_bits(spec.input_scale_bits))
    if layout.encoding == "coefficients":
        return secret.encrypt_coefficients(np.asarray(row, dtype=float), scale)
    packed = encoding.pack_single(np.asarray(row, dtype=float), layout, secret.slot_count)[0]
    return secret.encrypt(packed, scale)


def infer_message(ciphertexts: list[bytes], key_id: str, layout: str = "single", shape=None, rows=None) -> v2.Message:
    shape = shape if shape is not None else [len(ciphertexts)]
    return v2.Message(
        [v2.Tensor("ciphertext", "BYTES", shape, ciphertexts)],
        parameters={"key_id": key_id, "layout": layout, "rows": rows or len(ciphertexts)},
    )


def read_answer(sock) -> str:
    """Read a raw HTTP answer from a socket until its JSON error body (or the end) has arrived."""
    answer = b""
    while b'"error"' not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer.decode()


def decode_outputs(response: requests.Response) -> v2.Message:
    raw = response.headers.get(v2.HEADER_LENGTH)
    return v2.decode(response.content, int(raw) if raw else None, "outputs")


class InProcessClient:
    """The SDK's Client, talking to a Services object through server.inference directly (no HTTP)."""

    def __init__(self, services):
        from client import Client

        self.services = services
        self.client = Client("http://in-process")
        self.client._request = self._request

    def _request(self, method, path, body=None, headers=None):
        import json as _json

        from client.client import Response
        from client.errors import error_for_status
        from server.errors import APIError
        from server.inference import InferenceLimits, infer

        headers = headers or {}
        length = headers.get(v2.HEADER_LENGTH)
        try:
            if method == "GET" and path.startswith("/v2/models/"):
                model = self.services.registry.get(path.split("/")[3])
                return Response(200, {}, _json.dumps(model.metadata()).encode())
            if method == "POST" and path == "/v2/keys":
                record = self.services.keys.register(body, int(length))
                return Response(201, {}, _json.dumps(record.public_view()).encode())
            if method == "POST" and path.endswith("/infer"):
                model = self.services.registry.get(path.split("/")[3])
                config = self.services.config
                out, out_length = infer(
                    model,
                    self.services.keys,
                    body,
                    int(length) if length else None,
                    InferenceLimits.from_config(config),
                )
                return Response(200, {v2.HEADER_LENGTH: str(out_length)} if out_length else {}, out)
        except APIError as exc:
            raise error_for_status(exc.status, exc.message, exc.code) from None
        raise AssertionError(f"unexpected {method} {path}")

    def model(self, name):
        return self.client.model(name)


def infer_with_key(model, key_id: str, rows: np.ndarray) -> list[bytes]:
    """Encrypted inference through the SDK's lower level with exactly this key id (no re-registration)."""
    request = model.encrypt(rows, "single")[0]
    results, _ = model.client.infer_ciphertexts(
        model.name, key_id, request.layout, request.ciphertexts, request.shape, request.rows, request.bindings
    )
    return results
