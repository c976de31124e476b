"""Every shipped plan passes the reusable plan contract (heserve.contract), and the check catches
the breaches it is there for."""

from __future__ import annotations

import numpy as np
import pytest

from heserve.client.postprocess import preprocess
from heserve.contract import PlanContractError, check_plan
from heserve.engine.linear import LinearPlan
from heserve.engine.neural import NetworkPlan
from heserve.engine.plan import Plan
from heserve.models.nets import digits_split, mnist_size_split
from heserve.server.service.config import SHIPPED_MODELS_DIR
from heserve.server.service.registry import load_registry

SHIPPED = [
    "breast-cancer-logreg", "diabetes-linreg", "linnerud-linreg",
    "digits-mlp", "digits-cnn", "mnist-size-mlp", "digits-cryptonets", "digits-mlp3",
]  # fmt: skip


@pytest.fixture(scope="module")
def registry():
    return load_registry(SHIPPED_MODELS_DIR)


def preprocessed_rows(served, count: int) -> np.ndarray:
    if served.name in ("digits-mlp", "digits-cnn", "digits-cryptonets", "digits-mlp3"):
        raw = digits_split()[1][:count]
    elif served.name == "mnist-size-mlp":
        raw = mnist_size_split()[1][:count]
    else:
        from heserve.benchmarks.linear import SPLITS

        raw = SPLITS[served.name]()[1][:count]
    return preprocess(raw, served.manifest.get("preprocess", {"type": "identity"}))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_plan_keeps_the_contract(registry, name):
    served = registry.get(name)
    assert isinstance(served.plan, Plan)
    check_plan(served.plan, preprocessed_rows(served, 3))


def test_the_check_catches_an_unmasked_coefficient_result(registry, monkeypatch):
    plan = registry.get("diabetes-linreg").plan
    monkeypatch.setattr(plan.codec, "uniform_except_constant", lambda constants: np.zeros((1, plan.codec.n), np.uint64))
    with pytest.raises(PlanContractError):
        check_plan(plan, preprocessed_rows(registry.get("diabetes-linreg"), 2))


def test_the_check_catches_a_published_rotation_that_is_not_used(registry, monkeypatch):
    plan = registry.get("digits-mlp").plan
    extra = 3  # a Galois element no step of the plan uses
    original = NetworkPlan.required_galois_elements
    monkeypatch.setattr(NetworkPlan, "required_galois_elements", lambda self, layout: [*original(self, layout), extra])
    with pytest.raises(PlanContractError, match="Galois elements"):
        check_plan(plan, preprocessed_rows(registry.get("digits-mlp"), 1))


def test_the_check_catches_wrong_outputs(registry, monkeypatch):
    plan = registry.get("breast-cancer-logreg").plan
    monkeypatch.setattr(LinearPlan, "plaintext", lambda self, x: np.atleast_2d(x) @ self.weights.T + self.bias + 1.0)
    with pytest.raises(PlanContractError, match="differs from plaintext"):
        check_plan(plan, preprocessed_rows(registry.get("breast-cancer-logreg"), 1))


@pytest.mark.parametrize(("name", "activations"), [("digits-cryptonets", 2), ("digits-mlp3", 3)])
def test_a_deep_plan_charges_what_a_complex_slot_can_answer(registry, name, activations):
    """f(X + iY) for f of degree D = 2^a follows from D + 1 real rows: a single row is charged D + 1,
    a batch chunk D + 1 per slot, and the spec publishes both."""
    served = registry.get(name)
    charge = 2**activations + 1
    assert served.plan.single_rows_charged == charge
    assert served.plan.batch_rows_charged == charge * served.plan.runtime.slots
    layouts = served.spec.to_json()["layouts"]
    # Requests sized to a few seconds at the estimated rate (~0.6 s and ~0.9 s per row on 2 cores).
    assert layouts["single"]["rows_per_request"] * served.plan.schedule.single_row_seconds() <= 7.5
    assert layouts["single"]["rows_charged"] == charge
    assert layouts["batch"]["rows_charged"] == charge * served.plan.runtime.slots


def test_the_check_catches_a_deep_result_that_holds_something_in_an_empty_output(registry, monkeypatch):
    """A deep plan whose result held 0.05 in the class of slots of a padding output (16 classes for
    10 outputs), 5x the error allowed on these outputs of ~5, breaks the contract at the precision
    N=8192 with 27-bit primes leaves, though every real output is right."""
    served = registry.get("digits-cryptonets")
    plan = served.plan
    original = type(plan).evaluate_single

    def leaky(self, cts, keys):
        (ct,) = original(self, cts, keys)
        extra = np.zeros(self.runtime.slots)
        extra[self.n_outputs] = 0.05  # one slot of the first padding output's class
        self.runtime.evaluator.add_plain_inplace(ct, self._encode(extra, ct.scale, len(self.levels) - 1))
        return [ct]

    monkeypatch.setattr(type(plan), "evaluate_single", leaky)
    with pytest.raises(PlanContractError, match="hold no output sum to 5"):
        check_plan(plan, preprocessed_rows(served, 1))


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cryptonets"])
def test_the_check_catches_an_unmasked_slot_sums_result(registry, monkeypatch, name):
    """Without the mask the outputs are right, but each slot holds what the output sums would have
    added up (hidden units times weights, column blocks): the contract sees them as small values
    where there must be uniform noise."""
    served = registry.get(name)
    plan = served.plan
    original = type(plan)._output_mask
    monkeypatch.setattr(type(plan), "_output_mask", lambda self, scale: _zero_like(original(self, scale)))
    with pytest.raises(PlanContractError, match="not uniform noise"):
        check_plan(plan, preprocessed_rows(served, 1))


def _zero_like(plain):
    """A plaintext of the same level and scale as `plain`, all zero."""
    import tenseal.sealapi as sealapi

    zero = sealapi.Plaintext(plain)
    zero.set_zero()
    return zero


def test_a_linear_batch_leaves_no_trace_of_its_row_count_in_the_plan(registry):
    """A batch of an odd row count builds its bias for itself and keeps nothing: no later request's
    time can tell another tenant which row counts were sent before it (a per-worker cache did)."""
    from heserve.client import encoding
    from heserve.contract import _Owner

    plan = registry.get("breast-cancer-logreg").plan
    owner = _Owner(plan)
    state = {name: (id(value), len(value) if hasattr(value, "__len__") else None) for name, value in vars(plan).items()}
    x = np.random.default_rng(3).normal(size=(77, plan.n_features))
    columns = encoding.pack_batch(x, owner.secret.slot_count)
    inputs = [owner.load(owner.secret.encrypt(c, owner.scale("batch"))) for c in columns]
    assert len(plan.evaluate_batch(inputs, 77, owner.keys([]))) == plan.n_outputs
    after = {name: (id(value), len(value) if hasattr(value, "__len__") else None) for name, value in vars(plan).items()}
    assert after == state
