"""Every bad input gets a 4xx with a JSON error body; workers survive; nothing is stored."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import requests

from heserve.client.errors import HEClientError
from heserve.client.keys import SecretContext
from heserve.engine.params import CKKSParams
from heserve.protocol import v2

from .helpers import encrypt_single, infer_message, model_spec, post_binary, read_answer, register

MODEL = "breast-cancer-logreg"
NETWORK = "digits-mlp"


@pytest.fixture(scope="module")
def keyed(server):
    """A registered key and the matching secret context."""
    spec = model_spec(server.url, MODEL)
    secret = SecretContext.generate(spec.ckks)
    response = register(server.url, secret, spec.rotation_steps)
    assert response.status_code == 201, response.text
    return spec, secret, response.json()["key_id"]


# What the bounded SEAL reader (or SEAL itself, after it) answers for bytes that are not the object.
SEAL_CODES = {"malformed_seal_object", "seal_frame_too_large", "seal_trailing_bytes", "bad_ciphertext", "bad_key"}


def assert_error(response: requests.Response, status: int, fragment: str = "", codes: set[str] | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message
    assert fragment.lower() in message.lower(), message
    if codes is not None:
        assert response.json().get("code") in codes, response.json()


def key_files(server) -> set[str]:
    return set(os.listdir(server.keys_dir))


def test_truncated_random_and_empty_ciphertexts(server, keyed):
    spec, secret, key_id = keyed
    good = encrypt_single(secret, spec, np.zeros(spec.n_features))
    rng = np.random.default_rng(0)
    for blob, fragment in [
        (good[: len(good) // 2], "truncated"),
        (good[:10], ""),
        (rng.bytes(len(good)), ""),
        (b"", "too short"),
    ]:
        response = post_binary(server.url, f"/v2/models/{MODEL}/infer", infer_message([blob], key_id))
        assert_error(response, 400, fragment, SEAL_CODES)


def test_ciphertext_of_other_parameters(server, keyed):
    _spec, _, key_id = keyed
    other = SecretContext.generate(CKKSParams(8192, (60, 40, 60)))
    blob = other.encrypt(np.zeros(4), 2.0**30)
    response = post_binary(server.url, f"/v2/models/{MODEL}/infer", infer_message([blob], key_id))
    assert_error(response, 400, codes=SEAL_CODES)


def test_ciphertext_with_wrong_scale(server, keyed):
    spec, secret, key_id = keyed
    blob = encrypt_single(secret, spec, np.zeros(spec.n_features), scale_bits=spec.input_scale_bits - 3)
    response = post_binary(server.url, f"/v2/models/{MODEL}/infer", infer_message([blob], key_id))
    assert_error(response, 400, "scale")


def test_wrong_shapes_and_counts(server, keyed):
    spec, secret, key_id = keyed
    blob = encrypt_single(secret, spec, np.zeros(spec.n_features))
    url = f"/v2/models/{MODEL}/infer"
    # batch layout with the wrong number of ciphertexts per chunk
    response = post_binary(server.url, url, infer_message([blob] * 3, key_id, "batch", shape=[1, 3], rows=5))
    assert_error(response, 400, "batch layout")
    # single layout with a 2-D shape
    response = post_binary(server.url, url, infer_message([blob, blob], key_id, "single", shape=[1, 2]))
    assert_error(response, 400, "single layout")
    # unknown layout, missing rows, key id of the wrong type
    assert_error(post_binary(server.url, url, infer_message([blob], key_id, "diagonal")), 400, "layout")
    message = infer_message([blob], key_id, "batch", shape=[1, 1])
    message.parameters.pop("rows")
    assert_error(post_binary(server.url, url, message), 400, "rows")
    message = infer_message([blob], key_id)
    message.parameters["key_id"] = 7
    assert_error(post_binary(server.url, url, message), 400, "key_id")
    # two tensors
    message = infer_message([blob], key_id)
    message.tensors.append(message.tensors[0])
    assert_error(post_binary(server.url, url, message), 400, "'ciphertext' is given 2 times")


def test_malformed_bodies_and_headers(server):
    url = f"{server.url}/v2/models/{MODEL}/infer"
    for body, headers, fragment in [
        (b"{not json", {}, "malformed"),
        (b"[1, 2]", {}, "object"),
        (b"{}", {}, "inputs"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [1, 2]}]}', {}, "elements"),
        (b'{"inputs": [{"name": "input", "datatype": "FP99", "shape": [1], "data": [1]}]}', {}, "datatype"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1], "data": [1]}]}', {}, "shape"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": ["a"]}]}', {}, ""),
        (b'{"inputs": []}', {v2.HEADER_LENGTH: "14"}, "inputs"),
        (b'{"inputs": []}', {v2.HEADER_LENGTH: "999"}, "body has only"),
        (b'{"inputs": []}', {v2.HEADER_LENGTH: "abc"}, "integer"),
        (b'{"inputs": []}', {v2.HEADER_LENGTH: "-4"}, "negative"),
    ]:
        response = requests.post(url, data=body, headers=headers, timeout=10)
        assert_error(response, 400, fragment)


def test_binary_tensor_declared_longer_than_body(server, keyed):
    _, _, key_id = keyed
    header = json.dumps(
        {
            "parameters": {"key_id": key_id},
            "inputs": [
                {"name": "ciphertext", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 1000}}
            ],
        }
    ).encode()
    response = requests.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        data=header + b"\x05\x00\x00\x00abc",
        headers={v2.HEADER_LENGTH: str(len(header))},
        timeout=10,
    )
    assert_error(response, 400, "truncated")


def test_plaintext_shape_and_values(server):
    url = f"{server.url}/v2/models/{MODEL}/infer"
    for data, shape, fragment in [
        ([0.0] * 29, [1, 29], "shape"),
        ([0.0] * 30, [30], "shape"),  # the metadata says [-1, 30]: a 1-D tensor is refused, not guessed at
        ([0.0] * 30, [1, 30], ""),
    ]:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": data}]}
        response = requests.post(url, json=body, timeout=10)
        if fragment:
            assert_error(response, 400, fragment)
        else:
            assert response.status_code == 200
    body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    assert_error(requests.post(url, json=body, timeout=10), 400, "FP32")


def test_unknown_model_key_and_route(server, keyed):
    spec, secret, _ = keyed
    assert_error(requests.get(f"{server.url}/v2/models/nope", timeout=10), 404, "nope")
    assert_error(requests.get(f"{server.url}/v2/models/{MODEL}/versions/9", timeout=10), 404, "version")
    assert_error(requests.post(f"{server.url}/v2/models/nope/infer", json={}, timeout=10), 404)
    assert_error(requests.get(f"{server.url}/v2/nothing-here", timeout=10), 404)
    assert_error(requests.get(f"{server.url}/v2/keys/{'0' * 32}", timeout=10), 404, "unknown")
    assert_error(requests.get(f"{server.url}/v2/keys/../../etc/passwd", timeout=10), 404)
    assert_error(requests.delete(f"{server.url}/v2/keys/{'ab' * 16}", timeout=10), 404)
    blob = encrypt_single(secret, spec, np.zeros(spec.n_features))
    response = post_binary(server.url, f"/v2/models/{MODEL}/infer", infer_message([blob], "f" * 32))
    assert_error(response, 404, "register")
    assert_error(requests.put(f"{server.url}/v2/models/{MODEL}/infer", timeout=10), 405)


def test_body_over_limit_is_refused_before_reading(server):
    import socket

    # Announce a body one byte over the limit and send none of it: the answer comes anyway.
    host, port = server.url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        request = (
            f"POST /v2/keys HTTP/1.1\r\nHost: x\r\nContent-Length: {512 * 1024 * 1024 + 1}\r\n"
            f"{v2.HEADER_LENGTH}: 2\r\n\r\n"
        )
        sock.sendall(request.encode())
        answer = read_answer(sock)
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert '{"error":' in answer


def test_registration_refusals_store_nothing(server):
    spec = model_spec(server.url, NETWORK)  # a set with a special prime: Galois keys can be made for it
    secret = SecretContext.generate(spec.ckks)
    before = key_files(server)
    # parameters weaker than 128-bit security
    assert_error(register(server.url, secret, [1], CKKSParams(4096, (60, 60))), 400, "128-bit")
    assert_error(register(server.url, secret, [1], CKKSParams(2048, (30, 30))), 400, "128-bit")
    # secure, but no model here uses them
    assert_error(register(server.url, secret, [1], CKKSParams(8192, (60, 40, 60))), 400, "no model")
    # key bytes that are not Galois keys
    message = v2.Message(
        [v2.Tensor("galois_keys", "BYTES", [1], [os.urandom(5000)])], parameters={"ckks": spec.ckks.to_json()}
    )
    assert_error(post_binary(server.url, "/v2/keys", message), 400, "galois_keys")
    # unknown parts, duplicated parts, no parts, not binary
    message = v2.Message([v2.Tensor("public_context", "BYTES", [1], [b"x"])], parameters={"ckks": spec.ckks.to_json()})
    assert_error(post_binary(server.url, "/v2/keys", message), 400, "unknown key parts")
    assert_error(requests.post(f"{server.url}/v2/keys", json={"ckks": {}}, timeout=10), 400, "binary")
    assert key_files(server) == before


@pytest.mark.parametrize("name", [MODEL, NETWORK])
def test_secret_key_is_refused(server, name):
    spec = model_spec(server.url, name)
    secret = SecretContext.generate(spec.ckks)
    from heserve.engine import seal_io

    message = v2.Message(
        [v2.Tensor("secret_key", "BYTES", [1], [seal_io.dump(secret._secret_key)])],
        parameters={"ckks": spec.ckks.to_json()},
    )
    before = key_files(server)
    assert_error(post_binary(server.url, "/v2/keys", message), 400, "secret key")
    # A secret key disguised as a Galois key does not load as one either (the linear models' one-prime
    # set takes no Galois keys at all: refused before parsing).
    message.tensors[0].name = "galois_keys"
    codes = SEAL_CODES if spec.ckks.uses_key_switching else {"key_not_needed"}
    assert_error(post_binary(server.url, "/v2/keys", message), 400, codes=codes)
    assert key_files(server) == before


def test_key_without_the_needed_galois_keys(server):
    network = "digits-mlp"
    spec = model_spec(server.url, network)
    secret = SecretContext.generate(spec.ckks)
    response = register(server.url, secret, [], relin_keys=True)
    assert response.status_code == 201
    blob = encrypt_single(secret, spec, np.zeros(spec.n_features))
    response = post_binary(server.url, f"/v2/models/{network}/infer", infer_message([blob], response.json()["key_id"]))
    assert_error(response, 400, "galois")


def test_linear_models_need_no_galois_keys_and_refuse_them(server):
    spec = model_spec(server.url, MODEL)
    assert spec.rotation_steps == () and spec.layouts["single"].encoding == "coefficients"
    assert not spec.ckks.uses_key_switching  # one prime: nothing to switch keys with
    with pytest.raises(HEClientError, match="no special prime"):
        SecretContext.generate(spec.ckks).evaluation_key_request([1])
    # Galois keys made elsewhere and declared for the linear set are refused before they are parsed.
    network = SecretContext.generate(model_spec(server.url, NETWORK).ckks)
    assert_error(register(server.url, network, [1], spec.ckks), 400, "no special prime", {"key_not_needed"})


def test_registration_without_a_public_key_is_refused(server):
    """Every result is re-randomized with the client's public key: no key, no registration."""
    spec = model_spec(server.url, "digits-mlp")
    secret = SecretContext.generate(spec.ckks)
    body, length = secret.evaluation_key_request(spec.rotation_steps, relin_keys=True)
    message = v2.decode(body, length, "inputs")
    message.tensors = [t for t in message.tensors if t.name != "public_key"]
    before = key_files(server)
    assert_error(post_binary(server.url, "/v2/keys", message), 400, codes={"public_key_required"})
    # A full (unseeded) public key lets its owner choose the second polynomial: refused.
    import tenseal.sealapi as sealapi

    from heserve.engine import seal_io, seal_raw

    full = sealapi.PublicKey()
    secret._keygen.create_public_key(full)
    message.tensors = [v2.Tensor("public_key", "BYTES", [1], [seal_raw.own_uncompressed(seal_io.dump(full))])]
    assert_error(post_binary(server.url, "/v2/keys", message), 400, "seeded", {"public_key_not_seeded"})
    # A public key that is not one (a data-level ciphertext, or noise) is refused as malformed.
    fresh = secret.encrypt(np.zeros(4), 2.0**20)
    for bad in (fresh, os.urandom(4000)):
        message.tensors = [v2.Tensor("public_key", "BYTES", [1], [bad])]
        response = post_binary(server.url, "/v2/keys", message)
        assert response.status_code == 400 and response.json()["code"] != "internal", response.text
    assert key_files(server) == before


def test_workers_survive_everything(server, keyed):
    """Runs last in this module: the same workers still answer correct encrypted requests."""
    spec, secret, key_id = keyed
    pids = server.worker_pids()
    assert len(pids) == 2
    blob = encrypt_single(secret, spec, np.zeros(spec.n_features))
    for _ in range(6):
        response = post_binary(server.url, f"/v2/models/{MODEL}/infer", infer_message([blob], key_id))
        assert response.status_code == 200
    assert server.worker_pids() == pids
    assert "Traceback" not in server.log() and " 500 " not in server.log()


def test_a_stalled_body_gets_408_and_the_worker_keeps_serving(tmp_path):
    import socket
    import time

    from .serverproc import start_server

    slow = start_server(tmp_path, workers=1, read_timeout_seconds="1")
    try:
        pids = slow.worker_pids()
        host, port = slow.url.rsplit("/", 1)[1].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v2/keys HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                + f"{v2.HEADER_LENGTH}: 2\r\n\r\n".encode()
                + b"0123456789"
            )
            started = time.monotonic()
            # While this client stalls, the same worker answers others.
            assert requests.get(f"{slow.url}/v2/health/ready", timeout=5).status_code == 200
            answer = read_answer(sock)
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert '"error"' in answer and time.monotonic() - started < 5
        assert requests.get(f"{slow.url}/v2/models", timeout=5).status_code == 200
        assert slow.worker_pids() == pids
    finally:
        slow.stop()


def test_ciphertext_made_under_other_keys_is_refused(server):
    from heserve.client import BadRequestError, Client

    with Client(server.url) as client:
        mine = client.model("diabetes-linreg")
        mine.predict(np.zeros((1, 10)))  # registers my keys
        stranger = SecretContext.generate(mine.spec.ckks)
        other = client.model("diabetes-linreg", secret_context=stranger)
        for layout in ("single", "batch"):
            # The stranger's ciphertexts, tagged by the stranger's context, sent under my key id.
            request = other.encrypt(np.zeros((3, 10)), layout)[0]
            with pytest.raises(BadRequestError, match="not made with the secret context"):
                mine.send(request)
        tampered = mine.encrypt(np.zeros((1, 10)), "single")[0]
        blob = bytearray(tampered.ciphertexts[0])
        blob[100] ^= 0xFF
        tampered.ciphertexts = [bytes(blob)]
        with pytest.raises(BadRequestError, match="not made with the secret context"):
            mine.send(tampered)
        ok = mine.encrypt(np.zeros((1, 10)), "single")[0]
        assert len(mine.send(ok)) == 1
