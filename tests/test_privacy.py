"""Privacy rules, each tested so that it fails if it breaks."""

from __future__ import annotations

import base64
import os
import time

import numpy as np
import pytest
import requests

from client import Client, NotFoundError
from client.keys import SecretContext
from models.recipes import breast_cancer_split
from protocol import seal_io

from .helpers import decode_outputs, encrypt_single, infer_message, infer_with_key, model_spec, post_binary, register
from .serverproc import start_server


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


class Recorder:
    """Wraps the client's connection pool and keeps every body it sends."""

    def __init__(self, pool):
        self.pool = pool
        self.sent: list[tuple[str, bytes]] = []

    def request(self, method, url, body=None, **kwargs):
        self.sent.append((url, body or b""))
        return self.pool.request(method, url, body=body, **kwargs)

    def clear(self):
        self.pool.clear()


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
    with Client(server.url) as client:
        client._http = recorder = Recorder(client._http)
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


def raw_result_slots(server, model_name: str, rows: np.ndarray, layout: str) -> tuple[np.ndarray, SecretContext]:
    spec = model_spec(server.url, model_name)
    secret = SecretContext.generate(spec.ckks)
    key_id = register(server.url, secret, spec.rotation_steps).json()["key_id"]
    with Client(server.url) as client:
        model = client.model(model_name, secret_context=secret)
        model.key_id = key_id
        request = model.encrypt(rows, layout)[0]
    response = post_binary(
        server.url,
        f"/v2/models/{model_name}/infer",
        infer_message(request.ciphertexts, key_id, layout, request.shape, request.rows),
    )
    assert response.status_code == 200
    blobs = decode_outputs(response).tensors[0].data
    return np.stack([secret.decrypt(b) for b in blobs]), secret


def test_single_layout_result_carries_only_the_output_in_every_slot(server):
    _, x_test, _, _ = breast_cancer_split()
    slots, _ = raw_result_slots(server, "breast-cancer-logreg", x_test[:2], "single")
    for row in slots:
        # Every slot holds the same full inner product: no partial sum x_i * w_i is readable.
        assert np.max(np.abs(row - row[0])) < 1e-3
        assert abs(row[0]) > 0.5


def test_multi_output_result_slots_beyond_outputs_are_zero(server):
    from models.recipes import linnerud_split

    _, x_test, _, _ = linnerud_split()
    slots, _ = raw_result_slots(server, "linnerud-linreg", x_test[:2], "single")
    assert np.all(np.abs(slots[:, :3]) > 1)
    assert np.max(np.abs(slots[:, 3:])) < 1e-3


def test_batch_result_slots_beyond_rows_are_zero(server):
    _, x_test, _, _ = breast_cancer_split()
    slots, _ = raw_result_slots(server, "breast-cancer-logreg", x_test[:37], "batch")
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
        "bytes_in",
        "bytes_out",
        "duration_ms",
    }
    infers = [line for line in lines if line.get("route") == "/v2/models/<name>/infer" and line["status"] == 200]
    assert infers and all(line["bytes_in"] > 0 for line in infers)
    # The key id travels in the body of registrations and inferences; the audit line still names it.
    mine = [line for line in lines if line.get("key_id") == key_id]
    assert {line["route"] for line in mine} >= {"/v2/keys", "/v2/models/<name>/infer"}
