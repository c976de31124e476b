"""Compact rotation keys: a client registers Galois keys for a few of a network's rotation steps and
the server composes the others from them, each step from at most MAX_HOPS registered rotations."""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import pytest

from heserve.benchmarks.inprocess import InProcess
from heserve.client import Client
from heserve.client.errors import InputError
from heserve.client.keys import SecretContext
from heserve.client.postprocess import preprocess
from heserve.contract import PlanContractError, check_plan
from heserve.engine import rotations
from heserve.engine.rotations import MAX_HOPS, RotationError
from heserve.engine.spec import SINGLE
from heserve.models.nets import digits_split, mnist_size_split
from heserve.server.service.registry import load_registry

from .helpers import decode_outputs, infer_message, model_spec, post_binary, register

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
POWERS = tuple(2**k for k in range(12))  # a 4,096-slot network's steps
FOUR_MB = 4_000_000


@pytest.fixture(scope="module")
def registry():
    return load_registry(MODELS_DIR)


# --- routes and the choice of steps (pure) ---------------------------------------------------


def test_a_route_is_a_shortest_sum_of_registered_steps():
    paths = rotations.routes(POWERS, (1, 8, 64, 512), 4096)
    assert set(paths) == set(POWERS)
    for step, path in paths.items():
        assert sum(path) % 4096 == step and set(path) <= {1, 8, 64, 512}
    assert [len(paths[s]) for s in POWERS] == [1, 2, 4] * 4
    assert rotations.cost(POWERS, POWERS, 4096) == 12
    assert rotations.cost(POWERS, (1, 8, 64, 512), 4096) == 28


def test_wrapping_around_the_slots_is_a_route_too():
    # 2048 + 2048 = 0 and 3 * 1024 = -1024 (mod 4096): rotating left by 3072 is rotating right by 1024
    assert rotations.routes([3072], [1024], 4096) == {3072: (1024, 1024, 1024)}


@pytest.mark.parametrize(
    ("available", "unreachable"),
    [((1,), [8, 16]), ((2, 4, 8), [1]), ((), [1, 8, 16]), ((1, 2048), [8, 16]), ((1, 2), [16])],
)
def test_a_step_more_than_max_hops_away_is_refused_by_name(available, unreachable):
    with pytest.raises(RotationError, match=r"rotation steps \[.*\] cannot be composed") as caught:
        rotations.routes([1, 8, 16], available, 4096)
    named = caught.value.args[0].split("[", 1)[1].split("]", 1)[0]
    assert [int(s) for s in named.split(",")] == unreachable
    assert caught.value.code == "key_mismatch"


def test_compact_steps_minimize_rotations_per_row_under_the_published_uses():
    assert rotations.compact_steps(POWERS, 4096, 4) == (1, 8, 64, 512)
    assert rotations.compact_steps(POWERS, 4096, 12) == POWERS
    assert rotations.compact_steps(POWERS, 4096, 99) == POWERS
    # Weighted: a step used 7 times a row is worth a key of its own.
    steps = (1, 2, 4, 8, 16, 32, 64, 128, 1024, 2048)
    uses = {1: 1, 2: 1, 4: 1, 8: 1, 16: 4, 32: 2, 64: 1, 128: 7, 1024: 1, 2048: 1}
    weighted = rotations.compact_steps(steps, 4096, 4, uses)
    unweighted = rotations.compact_steps(steps, 4096, 4)

    def per_row(chosen):
        return sum(uses[s] * len(p) for s, p in rotations.routes(steps, chosen, 4096).items())

    assert per_row(weighted) < per_row(unweighted)
    # Exhaustive: no other 4 steps do better.
    best = min(per_row(c) for c in itertools.combinations(steps, 4) if _composes(steps, c))
    assert per_row(weighted) == best


def _composes(steps, chosen) -> bool:
    try:
        rotations.routes(steps, chosen, 4096)
        return True
    except RotationError:
        return False


def test_the_fewest_keys_that_compose_every_step():
    assert rotations.compact_steps(POWERS, 4096, "fewest") == (1, 8, 64, 512)
    deep = (1, 2, 4, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # digits-mlp3, 8,192 slots
    fewest = rotations.compact_steps(deep, 8192, "fewest")
    assert len(fewest) == 5 and rotations.cost(deep, fewest, 8192) <= 4 * len(deep)
    assert rotations.compact_steps((1, 2), 4096, "fewest") == (1,)
    # Nothing smaller composes 1 and 3000 (no sum of four 3000s is 1 mod 4096): every step.
    assert rotations.compact_steps((1, 3000), 4096, "fewest") == (1, 3000)
    assert rotations.compact_steps((), 4096, "fewest") == ()
    assert rotations.compact_steps((-1, 4095, 1), 4096, "fewest") == (1, 4095)


def test_too_few_keys_to_compose_every_step_is_refused():
    with pytest.raises(RotationError, match="no 3 of the steps"):
        rotations.compact_steps(POWERS, 4096, 3)
    for bad in (0, -2, True, 2.0, "few"):
        with pytest.raises(RotationError, match="positive integer or 'fewest'"):
            rotations.compact_steps(POWERS, 4096, bad)
        with pytest.raises(RotationError, match="positive integer or 'fewest'"):
            rotations.compact_steps((), 4096, bad)


# --- the engine, in process, on real SEAL ciphertexts ----------------------------------------


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    return InProcess(tmp_path_factory.mktemp("keys"))


@pytest.mark.parametrize("name", ["digits-mlp", "mnist-size-mlp", "digits-cryptonets"])
def test_four_keys_give_the_outputs_all_keys_give(in_process, name):
    """Both engines (one activation, several): the single layout with Galois keys for 4 steps, every
    other step composed, agrees with the plaintext model as closely as with every key."""
    served = in_process.services.registry.get(name)
    x = (mnist_size_split if name == "mnist-size-mlp" else digits_split)()[1][:3]
    expected = served.plaintext_predict(x)
    allowed = 2e-3 * max(1.0, float(np.max(np.abs(expected))))
    for count in (None, 4):
        session = in_process.session(name, rotation_keys=count)
        assert len(session.remote.rotation_steps) == (count or len(served.spec.rotation_steps))
        _, outputs = session.evaluate(session.remote.encrypt(x, layout=SINGLE))
        session.close()
        assert np.max(np.abs(outputs - expected)) < allowed


def test_the_contract_counts_the_rotations_a_plan_publishes(registry, monkeypatch):
    """A plan whose spec understates its rotations (what clients weigh when they pick compact keys)
    breaks the plan contract."""
    served = registry.get("digits-mlp")
    plan = served.plan
    published = plan.spec()
    single = published.layouts[SINGLE]
    rows = preprocess(digits_split()[1][:1], served.manifest["preprocess"])
    for change, message in ((+1, "publishes rotations .* per row, evaluation made"), (-1, "with uses \\[0, ")):
        uses = list(single.rotation_uses)
        uses[0] += change
        wrong = dataclasses.replace(
            published, layouts={**published.layouts, SINGLE: dataclasses.replace(single, rotation_uses=tuple(uses))}
        )
        monkeypatch.setattr(type(plan), "spec", lambda self, wrong=wrong: wrong)
        with pytest.raises(PlanContractError, match=message):
            check_plan(plan, rows)


def test_the_contract_evaluates_with_the_fewest_keys_too(registry, monkeypatch):
    """A plan that breaks when a rotation is composed (here: a composed rotation by 2 that lands one
    slot off) breaks the plan contract, though it is right with every key."""
    served = registry.get("digits-mlp")
    real = rotations.Rotator.rotated

    def off_by_one_when_composed(self, ct, step):
        out = real(self, ct, step)
        return real(self, out, 1) if step == 2 and len(self.paths[2]) > 1 else out

    monkeypatch.setattr(rotations.Rotator, "rotated", off_by_one_when_composed)
    with pytest.raises(PlanContractError, match=r"with Galois keys for steps \[1, 8, 64, 512\] only"):
        check_plan(served.plan, preprocess(digits_split()[1][:1], served.manifest["preprocess"]))


# --- through gunicorn ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits-mlp", "mnist-size-mlp"])
def test_the_sdk_registers_under_4_mb_of_keys_and_predicts_the_same(client, server, registry, name):
    """rotation_keys=4: the upload is under 4 MB (from ~8-9 MB) and the predictions are the model's."""
    x = (mnist_size_split if name == "mnist-size-mlp" else digits_split)()[1][:12]
    expected = registry.get(name).plaintext_predict(x)
    model = client.model(name, rotation_keys=4)
    assert len(model.rotation_steps) == 4
    body, _ = model.secret_context.evaluation_key_request(model.rotation_steps, relin_keys=True)
    full, _ = model.secret_context.evaluation_key_request(model.spec.rotation_steps, relin_keys=True)
    assert len(body) < FOUR_MB < len(full)
    scores = model.raw_scores(x, layout=SINGLE)
    assert np.array_equal(scores.argmax(axis=1), expected.argmax(axis=1))
    assert np.max(np.abs(scores - expected)) < 2e-3 * max(1.0, float(np.max(np.abs(expected))))
    record = client.key_status(model.key_id)
    n = model.spec.ckks.poly_modulus_degree
    assert sorted(record["galois_elements"]) == sorted(pow(3, s, 2 * n) for s in model.rotation_steps)
    model.delete_key()


def test_keys_that_cannot_compose_a_step_in_max_hops_are_refused_before_any_work(server):
    """Keys for steps 1 and 2048 only: step 16 would take 16 rotations. The request is a 400 with
    code key_mismatch naming the steps, at once (it is refused before the rows are charged and the
    keys loaded: server/service/inference.py)."""
    spec = model_spec(server.url, "digits-mlp")
    secret = SecretContext.generate(spec.ckks)
    key_id = register(server.url, secret, [1, 2048], relin_keys=True).json()["key_id"]
    with Client(server.url) as c:
        request = c.model("digits-mlp", secret_context=secret).encrypt(digits_split()[1][:1], SINGLE)[0]
    started = time.perf_counter()
    response = post_binary(
        server.url, "/v2/models/digits-mlp/infer", infer_message(request.ciphertexts, key_id, SINGLE, request.shape, 1)
    )
    assert time.perf_counter() - started < 2.0
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "key_mismatch"
    assert "cannot be composed" in body["error"] and f"at most {MAX_HOPS} rotations" in body["error"]


def test_keys_for_a_composing_subset_are_served(server, registry):
    """The raw protocol, no SDK choice: keys for steps 1, 4, 16, 64, 256, 1024 compose every step of
    digits-mlp in at most 2 rotations; the answer decrypts to the model's outputs."""
    spec = model_spec(server.url, "digits-mlp")
    secret = SecretContext.generate(spec.ckks)
    key_id = register(server.url, secret, [1, 4, 16, 64, 256, 1024], relin_keys=True).json()["key_id"]
    x = digits_split()[1][:1]
    with Client(server.url) as c:
        request = c.model("digits-mlp", secret_context=secret).encrypt(x, SINGLE)[0]
    response = post_binary(
        server.url, "/v2/models/digits-mlp/infer", infer_message(request.ciphertexts, key_id, SINGLE, request.shape, 1)
    )
    assert response.status_code == 200
    layout = spec.layouts[SINGLE]
    sums = secret.decrypt(decode_outputs(response).tensors[0].data[0]).reshape(-1, layout.result_period).sum(axis=0)
    expected = registry.get("digits-mlp").plaintext_predict(x)[0]
    assert np.max(np.abs(sums[: len(expected)] - expected)) < 1e-3


def test_the_sdk_refuses_a_key_count_that_cannot_compose_the_steps(client):
    with pytest.raises(InputError, match="rotation_keys=3"):
        client.model("digits-mlp", rotation_keys=3)
    with pytest.raises(InputError, match="positive integer or 'fewest'"):
        client.model("digits-mlp", rotation_keys="few")
    with pytest.raises(InputError, match="positive integer or 'fewest'"):
        client.model("digits-mlp", rotation_keys=True)


def test_the_sdk_weighs_the_published_uses(client):
    """mnist-size-mlp rotates by 128 seven times a row and by 16 four times: the SDK, reading
    rotation_uses from the server's metadata, keeps a key near them (42 rotations a row, not 57)."""
    model = client.model("mnist-size-mlp", rotation_keys=4)
    layout = model.spec.layouts[SINGLE]
    uses = dict(zip(layout.rotation_steps, layout.rotation_uses, strict=True))
    assert uses[128] == 7 and uses[16] == 4
    assert model.rotation_steps == (1, 8, 64, 1024)
    paths = rotations.routes(layout.rotation_steps, model.rotation_steps, 4096)
    assert sum(uses[s] * len(p) for s, p in paths.items()) == 42


def test_the_javascript_sdk_picks_the_same_steps(registry):
    """js/src/rotations.js and engine/rotations.py choose the same keys for every shipped network,
    so a browser and a Python client of one model register the same subsets."""
    import json
    import subprocess

    from .test_js_sdk import JS, NODE, _need_node

    _need_node()
    cases = []
    for served in registry.served_models():
        layout = served.spec.layouts[SINGLE]
        if not layout.rotation_steps:
            continue
        uses = dict(zip(layout.rotation_steps, layout.rotation_uses, strict=True))
        slots = served.spec.ckks.slot_count
        for count in (4, 5, "fewest"):
            try:
                expected = list(rotations.compact_steps(layout.rotation_steps, slots, count, uses))
            except RotationError:
                expected = None
            cases.append([list(layout.rotation_steps), slots, count, uses, expected])
    # Beyond the shipped ones: negative and wrapped steps, uses keyed by either, nothing composable.
    for steps, uses in (
        ([-1, 4095, 1, 64], {"-1": 3, "64": 2}),
        ([1, 3000], {}),
        ([3, 5, 7, 11, 13, 4000], {"7": 9}),
        ([], {}),
    ):
        for count in (1, 2, "fewest"):
            try:
                expected = list(rotations.compact_steps(steps, 4096, count, {int(k): v for k, v in uses.items()}))
            except RotationError:
                expected = None
            cases.append([steps, 4096, count, uses, expected])
    script = (
        "import { compactSteps } from './src/rotations.js';"
        "const cases = JSON.parse(process.argv[1]);"
        "console.log(JSON.stringify(cases.map(([s, n, c, u]) => { try { return compactSteps(s, n, c, u) }"
        " catch (e) { return null } })))"
    )
    out = subprocess.run(
        [str(NODE), "--input-type=module", "-e", script, json.dumps(cases)],
        cwd=JS, capture_output=True, text=True, timeout=60, check=True,
    )
    assert json.loads(out.stdout) == [case[4] for case in cases]
    assert any(case[4] is None for case in cases) and sum(case[4] is not None for case in cases) >= 10


@pytest.mark.parametrize(("name", "layer_index", "step"), [("digits-cnn", 0, 32), ("digits-cryptonets", 4, 4)])
def test_a_giant_block_of_zero_weights_is_not_a_published_rotation(registry, name, layer_index, step):
    """Pruned or locally connected weights can leave the highest giant block of a layer without a term;
    evaluation then skips its rotation. The published uses (and steps) follow what evaluation does, so
    the plan contract holds and a client registers no key it does not need. One activation: digits-cnn's
    first layer with hidden unit c reading only half the pixels; several: digits-cryptonets' last layer
    without the diagonals of its top giant block."""
    from heserve.models import artifact
    from heserve.server.service.registry import network_plan

    served = registry.get(name)
    art = artifact.load(MODELS_DIR / name)
    arrays = dict(art.arrays)
    key = art.manifest["layers"][layer_index]["weights"]
    w = arrays[key].copy()
    rows, cols = np.indices(w.shape)
    if name == "digits-cnn":  # even units read pixels 16..31, odd ones 48..63: the block at 32 is empty
        keep = np.where(rows % 2 == 0, (cols >= 16) & (cols < 32), cols >= 48)
    else:  # d_out 16, baby 4, giant 4: the diagonals (c - r) mod 16 in 12..15 form the top block
        keep = (cols - rows) % 16 < 12
    arrays[key] = w * keep
    pruned = network_plan(art.manifest, arrays, registry.runtime_for)
    published = served.spec.layouts[SINGLE]
    before = dict(zip(published.rotation_steps, published.rotation_uses, strict=True))
    layout = pruned.spec().layouts[SINGLE]
    after = dict(zip(layout.rotation_steps, layout.rotation_uses, strict=True))
    assert after.get(step, 0) < before[step]
    check_plan(pruned, preprocess(digits_split()[1][:2], art.manifest["preprocess"]))
