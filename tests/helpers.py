"""Building raw protocol requests for tests that go around the SDK."""

from __future__ import annotations

import numpy as np
import requests

from heserve.client import encoding
from heserve.client.keys import SecretContext
from heserve.engine.params import CKKSParams
from heserve.engine.spec import EncryptionSpec
from heserve.protocol import v2


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


def in_process_client(models_dir, keys_dir, **settings):
    """The SDK's Client, calling a server's Flask app in this process through WSGITransport (no socket)."""
    from heserve.client import Client
    from heserve.client.transport import WSGITransport
    from heserve.server.service.config import ServerConfig
    from heserve.server.web.app import create_app

    app = create_app(ServerConfig.from_env(models_dir=models_dir, keys_dir=keys_dir, **settings))
    return Client("http://in-process", transport=WSGITransport(app))


def infer_with_key(model, key_id: str, rows: np.ndarray) -> list[bytes]:
    """Encrypted inference through the SDK's lower level with exactly this key id (no re-registration)."""
    request = model.encrypt(rows, "single")[0]
    results, _ = model.client.infer_ciphertexts(
        model.name, key_id, request.layout, request.ciphertexts, request.shape, request.rows, request.bindings
    )
    return results
