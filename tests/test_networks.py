"""Networks: the shipped ones through gunicorn in both layouts (one activation and several), the exporter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from heserve.client.keys import SecretContext
from heserve.models.export import ExportError, sklearn_to_artifact, torch_layers, torch_to_artifact
from heserve.models.nets import digits_split, mnist_size_split
from heserve.models.nn import PolyActivation, Square
from heserve.server.service.registry import load_registry

from .helpers import decode_outputs, in_process_client, infer_message, model_spec, post_binary, register

NETWORKS = {
    "digits-mlp": digits_split,
    "digits-cnn": digits_split,
    "mnist-size-mlp": mnist_size_split,
    "digits-cryptonets": digits_split,
    "digits-mlp3": digits_split,
}
ROWS = 200
# Several activations: a single row takes ~0.25-1 s on 2 cores: fewer single rows.
DEEP_ROWS = 24
DEEP = {"digits-cryptonets", "digits-mlp3"}


MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def registry():
    return load_registry(MODELS_DIR)


@pytest.mark.parametrize("layout", ["single", "batch"])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_encrypted_network_matches_plaintext(client, registry, name, layout):
    _, x_test, _, y_test = NETWORKS[name]()
    count = DEEP_ROWS if name in DEEP else ROWS
    rows = x_test[:count] if layout == "single" else x_test
    expected = registry.get(name).plaintext_predict(rows)
    model = client.model(name)
    if name in DEEP and layout == "single":
        # ~0.5-1 s per row: the SDK follows the server's advice and splits into requests of a few seconds.
        advised = model.spec.layouts["single"].rows_per_request
        assert 1 <= advised <= 64
        assert [r.rows for r in model.encrypt(rows, "single")] == [
            min(advised, count - start) for start in range(0, count, advised)
        ]
    scores = model.raw_scores(rows, layout=layout)
    assert len(scores) >= count
    assert np.array_equal(scores.argmax(axis=1), expected.argmax(axis=1))
    # CKKS noise is relative to the values: digits-cnn's logits reach ~43, where single-layout errors
    # of ~1e-3 occur (a tail of the encryption and rescale noise, one row in a few hundred).
    largest = float(np.max(np.abs(expected)))
    assert np.max(np.abs(scores - expected)) <= (max(1e-3, 5e-5 * largest) if layout == "single" else 1e-2)
    assert np.mean(model.predict(rows[:20], layout=layout) == y_test[:20]) >= 0.8


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cryptonets"])
def test_network_result_slots_hold_only_outputs(server, registry, name):
    """One activation (engine.neural) or several (engine.deep): through gunicorn, what the client
    decrypts is the outputs' slot sums and, slot by slot, the server's mask."""
    spec = model_spec(server.url, name)
    secret = SecretContext.generate(spec.ckks)
    key_id = register(server.url, secret, spec.rotation_steps, relin_keys=True).json()["key_id"]
    _, x_test, _, _ = digits_split()
    from heserve.client import Client

    with Client(server.url) as c:
        model = c.model(name, secret_context=secret)
        request = model.encrypt(x_test[:1], "single")[0]
    response = post_binary(
        server.url,
        f"/v2/models/{name}/infer",
        infer_message(request.ciphertexts, key_id, "single", request.shape, 1),
    )
    assert response.status_code == 200
    slots = secret.decrypt(decode_outputs(response).tensors[0].data[0])
    layout = spec.layouts["single"]
    assert layout.encoding == "slot-sums" and layout.result_period == layout.packing["out_period"]
    sums = slots.reshape(-1, layout.result_period).sum(axis=0)
    expected = registry.get(name).plaintext_predict(x_test[:1])[0]
    # The slots j = k (mod s) sum to output k (k < 10) or nothing: no hidden unit, no partial sum...
    assert np.max(np.abs(sums[:10] - expected)) < 1e-3
    assert np.max(np.abs(sums[10:])) < 1e-3
    # ... and each slot alone is the server's mask: larger than any output, and far larger than an
    # output's share of one slot (uniform mod q0 off the coefficients the sums read; test_plan_contract
    # checks those coefficients themselves).
    largest = float(np.max(np.abs(expected)))
    assert np.median(np.abs(slots)) > max(largest, 100 * largest * layout.result_period / slots.size)


def test_network_needs_relin_keys(server):
    spec = model_spec(server.url, "digits-mlp")
    secret = SecretContext.generate(spec.ckks)
    key_id = register(server.url, secret, spec.rotation_steps)
    assert key_id.status_code == 201
    _, x_test, _, _ = digits_split()
    from heserve.client import Client

    with Client(server.url) as c:
        request = c.model("digits-mlp", secret_context=secret).encrypt(x_test[:1], "single")[0]
    response = post_binary(
        server.url,
        "/v2/models/digits-mlp/infer",
        infer_message(request.ciphertexts, key_id.json()["key_id"], "single", request.shape, 1),
    )
    assert response.status_code == 400 and "relinearization" in response.json()["error"]


def test_plan_is_published(client):
    metadata = client.model_metadata("mnist-size-mlp")
    encryption = metadata["parameters"]["encryption"]
    assert encryption["multiplicative_depth"] == 3
    assert encryption["ckks"]["poly_modulus_degree"] == 8192
    assert sum(encryption["ckks"]["coeff_mod_bit_sizes"]) <= 218
    plan = encryption["plan"]
    assert plan["shape"] == [784, 128, 10]
    assert plan["rotation_steps"] == encryption["rotation_steps"]
    assert plan["single"]["rows_answered"] == 1 and plan["batch"]["rows_answered"] == 4096
    assert {op["op"] for op in plan["batch"]["ops"]} >= {"modular_matmul", "coefficientwise_product", "relinearize"}
    assert encryption["layouts"]["batch"]["galois_keys_needed"] is False


# --- exporter and compiler (in process) ------------------------------------------------------
def test_conv_folding_equals_torch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(48, 4))
    layers = torch_layers(model, (1, 8, 8))
    x = torch.randn(5, 1, 8, 8)
    h = x.reshape(5, -1).double().numpy()
    for layer in layers:
        h = h @ layer["W"].T + layer["b"]
    assert np.allclose(h, model(x).detach().double().numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), r"layer 1 \(ReLU\)"),
        (nn.Sequential(nn.Linear(4, 3), nn.Sigmoid()), "layer 1 \\(Sigmoid\\)"),
        (nn.Sequential(nn.Linear(4, 3), Square()), "must end with a Linear"),
        (nn.Sequential(Square(), nn.Linear(4, 3)), "must follow a Linear"),
        (nn.Sequential(nn.Linear(5, 3)), "expects 5 inputs"),
    ],
)
def test_exporter_refuses_with_a_named_reason(tmp_path, bad, message):
    with pytest.raises(ExportError, match=message):
        torch_to_artifact(bad, (4,), tmp_path / "m", "m", preprocess="none", x_sample=np.zeros((2, 4)))


def test_poly_activation_network_runs_encrypted(tmp_path):
    """a*x^2 + b*x + c with b != 0 and c != 0 exercises the folding of a, b and c."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 5), PolyActivation(0.3, -0.7, 0.2), nn.Linear(5, 3))
    x = np.random.default_rng(0).normal(size=(40, 6))
    torch_to_artifact(
        model,
        (6,),
        tmp_path / "poly-net",
        "poly-net",
        preprocess="none",
        x_sample=x,
        postprocess={"type": "softmax", "classes": [0, 1, 2]},
    )
    expected = model(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    remote = in_process_client(tmp_path, tmp_path / "keys").model("poly-net")
    for layout in ("single", "batch"):
        assert np.max(np.abs(remote.raw_scores(x[:4], layout=layout) - expected[:4])) < 1e-3
    assert np.max(np.abs(remote.raw_scores(x, layout="batch") - expected)) < 1e-3


def test_a_two_activation_network_compiles_to_n8192_and_runs_encrypted(tmp_path):
    """Depth 5 fits N=8192 at 128-bit security with 26-27-bit data primes and a special prime 11
    bits above them: the compiler picks the smaller ring and the SDK follows."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 5), PolyActivation(0.3, -0.7, 0.2), nn.Linear(5, 4), Square(), nn.Linear(4, 3))
    x = np.random.default_rng(1).normal(size=(40, 6))
    torch_to_artifact(model, (6,), tmp_path / "deep-net", "deep-net", preprocess="none", x_sample=x)
    expected = model(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    client = in_process_client(tmp_path, tmp_path / "keys")
    encryption = client.model_metadata("deep-net")["parameters"]["encryption"]
    assert encryption["multiplicative_depth"] == 5
    assert encryption["ckks"]["poly_modulus_degree"] == 8192
    *data, special = encryption["ckks"]["coeff_mod_bit_sizes"]
    assert len(data) == 6 and special >= max(data) + 11 and sum(data) + special <= 218
    remote = client.model("deep-net")
    for layout in ("single", "batch"):
        assert np.max(np.abs(remote.raw_scores(x[:3], layout=layout) - expected[:3])) < 1e-3


def test_a_network_too_deep_for_any_ring_is_refused_by_name(tmp_path):
    from heserve.engine.compiler import CompileError
    from heserve.server.service.registry import network_plan

    layers, arrays = [], {}
    for i in range(16):  # 16 dense layers, 15 activations: depth 31
        arrays[f"W{i}"], arrays[f"b{i}"] = np.eye(2), np.zeros(2)
        if i:
            layers.append({"type": "act", "beta": 0.0})
        layers.append({"type": "dense", "weights": f"W{i}", "bias": f"b{i}"})
    with pytest.raises(CompileError, match=r"depth 31 does not fit at 128-bit security .*N=32768 allows \d+ levels"):
        network_plan({"layers": layers, "output_bound": 2.0}, arrays, lambda params: None)


def test_sklearn_models_export_through_the_same_path(tmp_path):
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test, y_train, _ = digits_split()
    multinomial = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
    sklearn_to_artifact(multinomial, tmp_path / "digits-logreg", "digits-logreg", x_sample=x_train)
    ridge = Ridge(alpha=1.0).fit(x_train, y_train.astype(float))
    sklearn_to_artifact(ridge, tmp_path / "digits-ridge", "digits-ridge", x_sample=x_train)
    ols = LinearRegression().fit(x_train[:, :10], np.column_stack([y_train, y_train * 2.0]))
    binary = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train % 2)
    sklearn_to_artifact(binary, tmp_path / "digits-odd", "digits-odd", x_sample=x_train, class_names=["even", "odd"])
    sklearn_to_artifact(ols, tmp_path / "two-targets", "two-targets", x_sample=x_train[:, :10])
    with pytest.raises(ExportError, match="not supported"):
        from sklearn.tree import DecisionTreeClassifier

        sklearn_to_artifact(DecisionTreeClassifier().fit(x_train, y_train), tmp_path / "t", "t", x_sample=x_train)
    remote = in_process_client(tmp_path, tmp_path / "keys")
    rows = x_test[:6]
    logreg = remote.model("digits-logreg")
    assert np.max(np.abs(logreg.raw_scores(rows, layout="single") - multinomial.decision_function(rows))) < 1e-3
    assert np.array_equal(logreg.predict(x_test[:100], layout="batch"), multinomial.predict(x_test[:100]))
    proba = logreg.predict_proba(rows, layout="batch")
    assert np.allclose(proba, multinomial.predict_proba(rows), atol=1e-4)
    assert np.max(np.abs(remote.model("digits-ridge").predict(rows) - ridge.predict(rows))) < 1e-3
    assert np.max(np.abs(remote.model("two-targets").predict(rows[:, :10]) - ols.predict(rows[:, :10]))) < 1e-3
    odd = remote.model("digits-odd")
    assert np.array_equal(odd.predict(x_test[:50], layout="batch"), binary.predict(x_test[:50]))
    assert np.allclose(odd.predict_proba(rows, layout="single"), binary.predict_proba(rows), atol=1e-4)


def test_network_batch_refuses_bad_ciphertexts(server):
    spec = model_spec(server.url, "digits-mlp")
    secret = SecretContext.generate(spec.ckks)
    key_id = register(server.url, secret, spec.rotation_steps, relin_keys=True).json()["key_id"]
    good = secret.encrypt(np.zeros(8), 2.0**spec.input_scale_bits, seeded=False)
    path = "/v2/models/digits-mlp/infer"
    cases = [
        (secret.encrypt(np.zeros(8), 2.0**spec.input_scale_bits), "seeded"),
        (secret.encrypt(np.zeros(8), 2.0 ** (spec.input_scale_bits - 2), seeded=False), "scale"),
        (good[:-8], "not a SEAL object"),
        (np.random.default_rng(0).bytes(len(good)), "not a SEAL object"),
        (good[:16] + b"\xff" * (len(good) - 16), ""),
    ]
    for blob, fragment in cases:
        blobs = [good] * 63 + [blob]
        response = post_binary(server.url, path, infer_message(blobs, key_id, "batch", [1, 64], 5))
        assert response.status_code == 400, response.text[:200]
        assert fragment in response.json()["error"]
    ok = post_binary(server.url, path, infer_message([good] * 64, key_id, "batch", [1, 64], 5))
    assert ok.status_code == 200


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cryptonets"])
def test_batch_threads_from_the_configuration_reach_the_plan(tmp_path, registry, monkeypatch, name):
    """HESERVE_BATCH_THREADS=1: a batch chunk computes on one thread, with the same answers."""
    from concurrent import futures

    from .helpers import in_process_client

    used = []
    real_pool = futures.ThreadPoolExecutor

    def counting_pool(max_workers=None, **kwargs):
        used.append(max_workers)
        return real_pool(max_workers=max_workers, **kwargs)

    plan_module = type(registry.get(name).plan).__module__
    monkeypatch.setattr(f"{plan_module}.ThreadPoolExecutor", counting_pool)
    monkeypatch.setenv("HESERVE_BATCH_THREADS", "1")
    _, x_test, _, _ = digits_split()
    with in_process_client(MODELS_DIR, tmp_path) as client:
        scores = client.model(name).raw_scores(x_test[:40], layout="batch")
    assert used and set(used) == {1}
    assert np.max(np.abs(scores - registry.get(name).plaintext_predict(x_test[:40]))) < 1e-2


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_batch_threads_out_of_range_are_refused_at_start(value):
    from heserve.server.service.config import ServerConfig

    with pytest.raises(ValueError, match="BATCH_THREADS"):
        ServerConfig.from_env({"HESERVE_BATCH_THREADS": value})
