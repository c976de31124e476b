"""Privacy rules, each tested so that it fails if it breaks."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from heserve.client import Client, NotFoundError
from heserve.client.keys import SecretContext
from heserve.client.transport import HTTPTransport
from heserve.engine import seal_io
from heserve.models.recipes import breast_cancer_split

from .helpers import decode_outputs, encrypt_single, infer_message, infer_with_key, model_spec, post_binary, register
from .serverproc import start_server

MODELS = Path(__file__).resolve().parent.parent / "models"


def windows(data: bytes, size: int = 32, count: int = 8) -> list[bytes]:
    step = max(1, (len(data) - size) // count)
    return [data[i : i + size] for i in range(0, len(data) - size, step)][:count]


def encodings(window: bytes) -> list[bytes]:
    return [window, window.hex().encode(), base64.b64encode(window)[:40]]


def files_under(directory) -> list[bytes]:
    out = []
    for root, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                out.append(handle.read())
    return out


class Recorder(HTTPTransport):
    """The SDK's HTTP transport, keeping every body it sends."""

    def __init__(self):
        super().__init__()
        self.sent: list[tuple[str, bytes]] = []

    def request(self, method, url, body, headers, timeout):
        self.sent.append((url, body or b""))
        return super().request(method, url, body, headers, timeout)


def recent_temp_files(since: float, exclude) -> list[bytes]:
    """Files written since `since` in the temporary directories (where a careless server would spill)."""
    import tempfile

    out = []
    for base in {tempfile.gettempdir(), "/dev/shm"}:
        for root, _, names in os.walk(base):
            if str(root).startswith(str(exclude)):
                continue
            for name in names:
                path = os.path.join(root, name)
                try:
                    info = os.stat(path)
                    if info.st_mtime >= since and info.st_size < 64 << 20:
                        with open(path, "rb") as handle:
                            out.append(handle.read())
                except OSError:
                    continue
    return out


def test_secret_key_never_leaves_the_client_and_nothing_private_is_kept(server, tmp_path):
    started = time.time() - 1
    _, x_test, _, _ = breast_cancer_split()
    recorder = Recorder()
    with Client(server.url, transport=recorder) as client:
        model = client.model("breast-cancer-logreg", key_file=tmp_path / "secret.key")
        model.predict(x_test[:3], layout="single")
        model.predict(x_test[:50], layout="batch")
        sent = recorder.sent
        secret_bytes = seal_io.dump(model.secret_context._secret_key)
    assert sent and secret_bytes
    # The SEAL secret key, in any encoding, appears in no request body.
    for window in windows(secret_bytes):
        for form in encodings(window):
            assert not any(form in body for _, body in sent)
    # Inference payloads (ciphertexts) are nowhere on the server's disk or in its log.
    ciphertext_bodies = [body for url, body in sent if url.endswith("/infer")]
    assert len(ciphertext_bodies) == 2
    stored = [*files_under(server.keys_dir), server.log().encode(), *recent_temp_files(started, tmp_path)]
    for body in ciphertext_bodies:
        for window in windows(body[-20000:]):
            for form in encodings(window):
                assert not any(form in blob for blob in stored)
    # Nor is the secret key anywhere on the server's side.
    for window in windows(secret_bytes):
        assert not any(window in blob for blob in stored)
    # The secret key file is readable by its owner only.
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0


def raw_results(server, model_name: str, rows: np.ndarray, layout: str, seeded: bool = True):
    """The encrypted request the SDK builds and the result ciphertexts, as an attacker sees them."""
    spec = model_spec(server.url, model_name)
    secret = SecretContext.generate(spec.ckks)
    key_id = register(server.url, secret, spec.rotation_steps, relin_keys=spec.relin_keys_needed).json()["key_id"]
    with Client(server.url) as client:
        model = client.model(model_name, secret_context=secret)
        model.key_id = key_id
        request = model.encrypt(rows, layout)[0]
    if not seeded:  # full ciphertexts: the attacker then knows every input polynomial
        from heserve.client import encoding

        scale = 2.0 ** spec.layouts[layout].input_scale_bits(spec.input_scale_bits)
        if layout == "single":
            request.ciphertexts = [full_coefficient_ciphertext(secret, row, scale) for row in rows]
        else:
            columns = encoding.pack_batch(rows, secret.slot_count)
            request.ciphertexts = [secret.encrypt(column, scale, seeded=False) for column in columns]
    response = post_binary(
        server.url,
        f"/v2/models/{model_name}/infer",
        infer_message(request.ciphertexts, key_id, layout, request.shape, request.rows),
    )
    assert response.status_code == 200, response.text
    return request, decode_outputs(response).tensors[0].data, secret


def full_coefficient_ciphertext(secret: SecretContext, row: np.ndarray, scale: float) -> bytes:
    import tenseal.sealapi as sealapi

    from heserve.engine import seal_raw

    ct = sealapi.Ciphertext()
    secret._encryptor.encrypt_symmetric(secret.codec.encode(row, scale), ct)
    return seal_raw.own_uncompressed(seal_io.dump(ct))


def result_coefficients(secret: SecretContext, blob: bytes) -> np.ndarray:
    """Every coefficient of a decrypted result, centred mod q (one prime)."""
    import tenseal.sealapi as sealapi

    ct = seal_io.load(sealapi.Ciphertext, secret._context, blob, "result")
    plain = sealapi.Plaintext()
    secret._decryptor.decrypt(ct, plain)
    codec = secret.codec
    q = codec.moduli[0]
    coefficients = codec.from_ntt(codec.plaintext_residues(plain))[0].astype(object)
    return np.array([int(c) - q if c > q // 2 else int(c) for c in coefficients], dtype=object), ct.scale, q


@pytest.mark.parametrize("name", ["breast-cancer-logreg", "linnerud-linreg"])
def test_single_layout_results_carry_only_the_outputs(server, name):
    """Decrypted, a result's constant coefficient is the output; every other coefficient is uniform
    mod q (unmasked, they would hold partial sums w_i x_i, far below q / 4)."""
    from heserve.server.service.registry import load_registry

    served = load_registry(MODELS).get(name)
    rows = np.random.default_rng(0).normal(0.0, 1.0, (2, served.plan.n_features))
    _, blobs, secret = raw_results(server, name, rows, "single")
    assert len(blobs) == 2 * served.plan.n_outputs
    expected = np.asarray(served.plaintext_predict(rows)).reshape(2, -1).T
    for index, blob in enumerate(blobs):
        row, output = divmod(index, served.plan.n_outputs)
        coefficients, scale, q = result_coefficients(secret, blob)
        assert abs(coefficients[0] / scale - expected[output, row]) < 1e-3
        rest = np.array([abs(c) < q // 4 for c in coefficients[1:]])
        assert 0.45 < rest.mean() < 0.55, "the other coefficients are not masked"


def solve_mod(matrix: list[list[int]], rhs: list[int], q: int) -> list[int]:
    """Gauss-Jordan elimination mod the prime q (square, invertible)."""
    n = len(matrix)
    rows = [[*r, b] for r, b in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = next(i for i in range(col, n) if rows[i][col] % q)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        inverse = pow(rows[col][col], -1, q)
        rows[col] = [v * inverse % q for v in rows[col]]
        for i in range(n):
            if i != col and rows[i][col]:
                factor = rows[i][col]
                rows[i] = [(a - factor * b) % q for a, b in zip(rows[i], rows[col], strict=True)]
    return [r[n] for r in rows]


def test_single_results_are_rerandomized_so_no_division_gives_the_weights(server):
    """Without re-randomization a result's second polynomial is the input's times the weight
    polynomial: dividing NTT value by NTT value gives the weights, sparse in coefficients."""
    from heserve.engine import seal_raw

    rows = np.random.default_rng(1).normal(0.0, 1.0, (1, 30))
    request, blobs, secret = raw_results(server, "breast-cancer-logreg", rows, "single", seeded=False)
    codec = secret.codec
    q = codec.moduli[0]
    c1_in = seal_raw.polynomials(request.ciphertexts[0])[1][0]
    c1_out = seal_raw.polynomials(seal_raw.own_uncompressed(blobs[0]))[1][0]
    ratio = np.array([int(b) * pow(int(a), -1, q) % q for a, b in zip(c1_in, c1_out, strict=True)], dtype=np.uint64)
    weights = codec.from_ntt(ratio[None, :])[0]
    small = np.minimum(weights, q - weights) < (q >> 10)  # chance alone: 2^-9 of them; weights: < 2^26
    assert small.sum() < 64, f"{small.sum()} of {codec.n} coefficients of the quotient are small: weights exposed"


def test_batch_results_are_rerandomized_so_no_linear_system_gives_the_weights(server):
    """Without re-randomization output k's second polynomial is sum_j w_kj c1_j: 30 NTT positions
    give 30 equations in the 30 weights, and every other position confirms them."""
    from heserve.engine import seal_raw

    rows = np.random.default_rng(2).normal(0.0, 1.0, (40, 30))
    request, blobs, secret = raw_results(server, "breast-cancer-logreg", rows, "batch", seeded=False)
    q = secret.codec.moduli[0]
    c1 = np.stack([seal_raw.polynomials(ct)[1][0] for ct in request.ciphertexts])  # (30, N)
    out = seal_raw.polynomials(seal_raw.own_uncompressed(blobs[0]))[1][0]
    positions = list(range(30))
    weights = solve_mod([[int(c1[j, t]) for j in range(30)] for t in positions], [int(out[t]) for t in positions], q)
    check = range(30, 60)
    consistent = sum(sum(w * int(c1[j, t]) for j, w in enumerate(weights)) % q == int(out[t]) for t in check)
    assert consistent == 0, "the result's second polynomial is a fixed combination of the inputs'"


def test_batch_result_slots_beyond_rows_are_zero(server):
    _, x_test, _, _ = breast_cancer_split()
    _, blobs, secret = raw_results(server, "breast-cancer-logreg", x_test[:37], "batch")
    slots = np.stack([secret.decrypt(b) for b in blobs])
    assert np.all(np.abs(slots[0, :37]) > 1e-2)
    assert np.max(np.abs(slots[0, 37:])) < 1e-3


def test_erasure_reaches_every_worker_and_the_disk(server):
    spec = model_spec(server.url, "breast-cancer-logreg")
    secret = SecretContext.generate(spec.ckks)
    key_id = register(server.url, secret, spec.rotation_steps).json()["key_id"]
    blob = encrypt_single(secret, spec, np.zeros(spec.n_features))
    path = "/v2/models/breast-cancer-logreg/infer"
    for _ in range(8):  # warm both workers' caches
        assert post_binary(server.url, path, infer_message([blob], key_id)).status_code == 200
    assert any(name.startswith(key_id) for name in os.listdir(server.keys_dir))
    assert requests.delete(f"{server.url}/v2/keys/{key_id}", timeout=10).status_code == 200
    assert not any(name.startswith(key_id) for name in os.listdir(server.keys_dir))
    for _ in range(8):
        response = post_binary(server.url, path, infer_message([blob], key_id))
        assert response.status_code == 404 and "register" in response.json()["error"]
    assert requests.get(f"{server.url}/v2/keys/{key_id}", timeout=10).status_code == 404
    assert requests.delete(f"{server.url}/v2/keys/{key_id}", timeout=10).status_code == 404


@pytest.fixture(scope="module")
def short_ttl_server(tmp_path_factory):
    proc = start_server(tmp_path_factory.mktemp("ttl"), workers=2, key_ttl_seconds="2")
    yield proc
    proc.stop()


def test_keys_expire_after_their_time_to_live(short_ttl_server):
    server = short_ttl_server
    _, x_test, _, _ = breast_cancer_split()
    with Client(server.url) as client:
        model = client.model("breast-cancer-logreg")
        model.predict(x_test[:2])
        key_id = model.key_id
        status = client.key_status(key_id)
        assert 0 < status["expires_in_seconds"] <= 2
        time.sleep(2.5)
        with pytest.raises(NotFoundError, match="expired") as refused:
            infer_with_key(model, key_id, x_test[:2])
        assert refused.value.code == "key_not_found"
        with pytest.raises(NotFoundError):
            client.key_status(key_id)
        # The SDK registers again by itself when the server's copy has expired.
        model.predict(x_test[:2])
        assert model.key_id not in (None, key_id)
        model.delete_key()
    # Registering again sweeps what expired: nothing of the old key is left on disk.
    spec = model_spec(server.url, "breast-cancer-logreg")
    register(server.url, SecretContext.generate(spec.ckks), spec.rotation_steps)
    assert not any(name.startswith(key_id) for name in os.listdir(server.keys_dir))


def test_registered_keys_survive_a_restart(tmp_path):
    first = start_server(tmp_path, workers=1)
    try:
        spec = model_spec(first.url, "diabetes-linreg")
        secret = SecretContext.generate(spec.ckks)
        key_id = register(first.url, secret, spec.rotation_steps).json()["key_id"]
    finally:
        first.stop()
    second = start_server(tmp_path, workers=1)
    try:
        blob = encrypt_single(secret, spec, np.zeros(spec.n_features))
        response = post_binary(second.url, "/v2/models/diabetes-linreg/infer", infer_message([blob], key_id))
        assert response.status_code == 200
    finally:
        second.stop()


def test_privacy_report_states_live_settings(short_ttl_server):
    report = requests.get(f"{short_ttl_server.url}/v2/privacy", timeout=10).json()
    assert report["live_settings"]["key_ttl_seconds"] == 2
    assert report["stored"][0]["retention_seconds"] == 2
    assert "DELETE /v2/keys/{key_id}" in report["stored"][0]["erasure"]
    assert all(m["security_level_bits"] == 128 for m in report["security"]["models"].values())
    assert any("secret keys" in item for item in report["never_stored"])


def test_every_response_has_a_request_id_and_an_audit_line_without_payload(server):
    import json as _json

    with Client(server.url) as client:
        model = client.model("diabetes-linreg")
        model.predict(np.zeros((2, 10)))
        key_id = model.key_id
    response = requests.get(f"{server.url}/v2/models/nope", headers={"X-Request-ID": "trace-42"}, timeout=10)
    assert response.status_code == 404 and response.headers["X-Request-ID"] == "trace-42"
    generated = requests.get(f"{server.url}/v2/health/live", timeout=10).headers["X-Request-ID"]
    assert len(generated) == 32
    bad = requests.get(f"{server.url}/v2", headers={"X-Request-ID": "no spaces allowed"}, timeout=10)
    assert bad.headers["X-Request-ID"] != "no spaces allowed"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "trace-42" not in server.log():
        time.sleep(0.1)
    lines = [_json.loads(line) for line in server.log().splitlines() if line.startswith('{"')]
    assert all(line.startswith("{") for line in server.log().splitlines() if line.strip())  # JSON lines only
    entry = next(line for line in lines if line.get("request_id") == "trace-42")
    assert entry["status"] == 404 and entry["model"] == "nope" and entry["route"] == "/v2/models/<name>"
    assert entry["code"] == "model_not_found"  # the refusal's machine-readable code, never its message
    assert set(entry) == {
        "ts",
        "event",
        "request_id",
        "tenant",
        "method",
        "route",
        "model",
        "key_id",
        "status",
        "code",
        "bytes_in",
        "bytes_out",
        "duration_ms",
    }
    infers = [line for line in lines if line.get("route") == "/v2/models/<name>/infer" and line["status"] == 200]
    assert infers and all(line["bytes_in"] > 0 for line in infers)
    # The key id travels in the body of registrations and inferences; the audit line still names it.
    mine = [line for line in lines if line.get("key_id") == key_id]
    assert {line["route"] for line in mine} >= {"/v2/keys", "/v2/models/<name>/infer"}


def test_a_registered_forged_public_key_reveals_no_randomness_in_linear_single_results(server):
    """An attacker registers pk0 + scalar (a seeded upload, its first polynomial edited: the server
    cannot tell) so that re-randomization decrypts to ... + scalar * u. The server's own bulk
    encryption of zero then carries u; in the coefficient layout the uniform mask covers every
    coefficient but the constant, so at most chance puts a coefficient next to -scalar, 0, +scalar."""
    from heserve.engine import seal_raw
    from heserve.protocol import v2

    name = "breast-cancer-logreg"
    spec = model_spec(server.url, name)
    secret = SecretContext.generate(spec.ckks)
    body, length = secret.evaluation_key_request([], relin_keys=False)
    message = v2.decode(body, length, "inputs")
    (public,) = [t for t in message.tensors if t.name == "public_key"]
    upload = bytearray(public.data[0])
    q = secret.codec.moduli[0]
    scalar = q // 8
    n = spec.ckks.poly_modulus_degree
    offset = seal_raw.HEADER + seal_raw.PREFIX + seal_raw.HEADER + 8  # the first polynomial's words
    c0 = np.frombuffer(bytes(upload[offset : offset + 8 * n]), dtype="<u8")
    upload[offset : offset + 8 * n] = ((c0 + np.uint64(scalar)) % np.uint64(q)).astype("<u8").tobytes()
    public.data[0] = bytes(upload)
    response = post_binary(server.url, "/v2/keys", message)
    assert response.status_code == 201, response.text
    key_id = response.json()["key_id"]
    rows = np.random.default_rng(11).normal(0.0, 1.0, (2, 30))
    ciphertexts = [encrypt_single(secret, spec, row) for row in rows]
    response = post_binary(server.url, f"/v2/models/{name}/infer", infer_message(ciphertexts, key_id))
    assert response.status_code == 200, response.text
    for blob in decode_outputs(response).tensors[0].data:
        coefficients, _, _ = result_coefficients(secret, blob)
        raw = np.array([float(c) for c in coefficients[1:]])
        near = np.min(np.abs(raw[:, None] - np.array([-scalar, 0.0, scalar])[None, :]), axis=1) < q / 64
        assert float(np.mean(near)) < 0.15, f"{np.mean(near):.0%} of the coefficients show the server's u"
