"""Encrypted predictions through a real gunicorn server equal the plaintext model's on every test row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heserve.models import artifact
from heserve.models.recipes import breast_cancer_split, diabetes_split, linnerud_split

ROOT = Path(__file__).resolve().parent.parent


def plaintext_scores(name: str, x: np.ndarray) -> np.ndarray:
    art = artifact.load(ROOT / "models" / name)
    pre = art.manifest["preprocess"]
    z = (x - np.asarray(pre["mean"])) / np.asarray(pre["scale"])
    return z @ art.arrays["W"].T + art.arrays["b"]


CASES = {
    "breast-cancer-logreg": breast_cancer_split,
    "diabetes-linreg": diabetes_split,
    "linnerud-linreg": linnerud_split,
}


@pytest.mark.parametrize("layout", ["single", "batch"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_encrypted_equals_plaintext_on_every_test_row(client, name, layout):
    _, x_test, _, _ = CASES[name]()
    expected = plaintext_scores(name, x_test)
    model = client.model(name)
    scores = model.raw_scores(x_test, layout=layout)
    assert scores.shape == expected.shape
    assert np.max(np.abs(scores - expected)) < 1e-3
    if name == "breast-cancer-logreg":
        labels = model.predict(x_test, layout=layout)
        assert np.array_equal(labels, (expected[:, 0] >= 0).astype(int))
        proba = model.predict_proba(x_test[:7], layout=layout)
        assert proba.shape == (7, 2) and np.allclose(proba.sum(axis=1), 1.0)


def test_sklearn_surface_shapes(client):
    _, x_test, _, _y_test = breast_cancer_split()
    model = client.model("breast-cancer-logreg")
    one = model.decision_function(x_test[0])
    assert one.shape == (1,)
    many = model.decision_function(x_test[:40])  # chooses the batch layout
    assert many.shape == (40,)
    assert np.array_equal(model.predict(x_test[:3]), model.predict(x_test[:3], layout="single"))
    assert list(model.classes_) == [0, 1]
    regression = client.model("linnerud-linreg")
    _, x_lin, _, _ = linnerud_split()
    assert regression.predict(x_lin).shape == (len(x_lin), 3)


def test_layout_choice_follows_row_count(client):
    model = client.model("breast-cancer-logreg")
    assert model.choose_layout(1) == "single"
    assert model.choose_layout(1000) == "batch"


def test_more_rows_than_one_ciphertext_holds(client):
    rng = np.random.default_rng(1)
    _, x_test, _, _ = diabetes_split()
    x = x_test[rng.integers(0, len(x_test), size=4096 + 100)]  # three chunks at 2048 slots
    scores = client.model("diabetes-linreg").raw_scores(x, layout="batch")
    assert np.max(np.abs(scores - plaintext_scores("diabetes-linreg", x))) < 1e-3


def test_plaintext_v2_request_matches_model(client):
    _, x_test, _, _ = breast_cancer_split()
    scores = client.infer_plaintext("breast-cancer-logreg", x_test[:10])
    assert np.allclose(scores, plaintext_scores("breast-cancer-logreg", x_test[:10]), atol=1e-4)


def test_keys_registered_once_per_model(client, server):
    _, x_test, _, _ = breast_cancer_split()
    model = client.model("breast-cancer-logreg")
    model.predict(x_test[:2])
    first = model.key_id
    model.predict(x_test[2:4])
    assert model.key_id == first
    status = client.key_status(first)
    assert status["status"] == "active" and status["expires_in_seconds"] > 0


def server_timing(response) -> dict[str, int]:
    entries = {}
    for entry in response.headers["Server-Timing"].split(","):
        name, _, duration = entry.strip().partition(";dur=")
        entries[name] = int(duration)
    return entries


def test_an_inference_reports_the_workers_time_in_server_timing(client, server):
    """Server-Timing: read;dur=<ms>, infer;dur=<ms>: receiving the body, then the worker's handling of
    it (JSON and binary answers alike), in whole milliseconds, within the client's wall time. A body
    that stalls for a second counts in `read`, not in `infer`: what tells a client whether its
    latency is its network or the server."""
    import socket
    import time

    import requests

    from heserve.protocol import v2

    from .helpers import infer_message, post_binary

    _, x_test, _, _ = breast_cancer_split()
    model = client.model("breast-cancer-logreg")
    request = model.encrypt(x_test[:1], "single")[0]
    message = infer_message(request.ciphertexts, model.register(), "single", request.shape, 1)
    started = time.perf_counter()
    binary = post_binary(server.url, "/v2/models/breast-cancer-logreg/infer", message)
    wall_ms = (time.perf_counter() - started) * 1e3
    plain = requests.post(
        server.url + "/v2/models/breast-cancer-logreg/infer",
        json={"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 30], "data": x_test[0].tolist()}]},
        timeout=30,
    )
    for response in (binary, plain):
        assert response.status_code == 200, response.text[:300]
        timing = server_timing(response)
        assert set(timing) == {"read", "infer"} and min(timing.values()) >= 0
    assert sum(server_timing(binary).values()) <= wall_ms + 1
    assert v2.HEADER_LENGTH in binary.headers

    body, header_length = v2.encode(message, "inputs", binary=True)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                "POST /v2/models/breast-cancer-logreg/infer HTTP/1.1\r\n"
                f"Host: {host}\r\nContent-Type: {v2.BINARY_CONTENT_TYPE}\r\n"
                f"{v2.HEADER_LENGTH}: {header_length}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + body[: len(body) // 2]
        )
        time.sleep(1.0)
        sock.sendall(body[len(body) // 2 :])
        answer = b""
        while chunk := sock.recv(65536):  # the binary answer, until the server closes
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 200"), head
    line = next(h for h in head.split("\r\n") if h.lower().startswith("server-timing:"))
    entries = (entry.partition(";dur=") for entry in line.split(":", 1)[1].split(","))
    stalled = {name.strip(): int(duration) for name, _, duration in entries}
    assert stalled["read"] >= 900 and stalled["infer"] < 500, line
