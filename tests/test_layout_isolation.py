"""Single-layout results answer one honest row, whatever the client encrypted.

The attacker here holds a valid key and its own secret key: it encrypts arbitrary slot
vectors (different data per period, per hidden-unit copy, unit vectors, complex values)
or, for the linear models' coefficient layout, arbitrary polynomials, has the shipped
models' plans evaluate them as the server does, and decrypts every slot (every
coefficient) of the result. Each result must be the model applied to one input vector the attacker
could have sent honestly (the average of the periods of what it sent), in every slot,
and nothing else: no hidden unit on its own, no partial sum, no second row.

In process, real SEAL, the plans compiled from models/ by server.models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tenseal.sealapi as sealapi

from heserve.client import encoding
from heserve.client.keys import SecretContext
from heserve.engine import seal_io
from heserve.engine.linear import LinearPlan
from heserve.engine.neural import NETWORK_PARAMS, NetworkPlan
from heserve.engine.packing import PackedLayout
from heserve.engine.rotations import Rotator
from heserve.engine.spec import SINGLE
from heserve.engine.zero_encryption import ZeroEncryptor
from heserve.models.nets import digits_split, mnist_size_split
from heserve.server.service.registry import ServedModel, load_registry

MODELS = Path(__file__).resolve().parent.parent / "models"
LINEAR_ONE = ["breast-cancer-logreg", "diabetes-linreg"]
LINEAR_MANY = ["linnerud-linreg"]
NETWORKS = ["digits-mlp", "digits-cnn", "mnist-size-mlp"]
# Slots that must hold the same value differ by key-switching noise only (~1e-6).
SAME = 1e-4
# Model outputs against plaintext, and slots that must hold no output: the rounding of a
# plaintext's zeros times hidden activations stays ~1e-4 (see server.network).
OUTPUT_TOL, EMPTY_TOL = 2e-3, 1e-3


@pytest.fixture(scope="module")
def registry():
    return load_registry(MODELS)


@dataclass
class Keys:
    galois: sealapi.GaloisKeys
    relin: sealapi.RelinKeys | None
    public: ZeroEncryptor | None = None


class Attacker:
    """A client with its own secret key and the evaluation keys the model's spec asks for."""

    def __init__(self, plan: LinearPlan | NetworkPlan):
        self.plan = plan
        spec = plan.spec()
        self.secret = SecretContext.generate(spec.ckks)
        galois = sealapi.GaloisKeys()
        self.secret._keygen.create_galois_keys(plan.required_galois_elements(SINGLE), galois)
        relin = None
        if spec.relin_keys_needed:
            relin = sealapi.RelinKeys()
            self.secret._keygen.create_relin_keys(relin)
        public = sealapi.PublicKey()
        self.secret._keygen.create_public_key(public)
        self.keys = Keys(galois, relin, ZeroEncryptor(plan.runtime.context, public))
        self.layout = spec.layouts[SINGLE]
        self.scale = 2.0 ** self.layout.input_scale_bits(spec.input_scale_bits)
        self.slots = self.secret.slot_count

    def encrypt(self, values: np.ndarray) -> bytes:
        """Any slot vector, complex values included, as the wire carries it."""
        plain = sealapi.Plaintext()
        if np.iscomplexobj(values):
            self.secret._encoder.encode([complex(v) for v in values], self.scale, plain)
        else:
            self.secret._encoder.encode(np.asarray(values, dtype=np.float64).tolist(), self.scale, plain)
        return seal_io.dump(self.secret._encryptor.encrypt_symmetric(plain))

    def run(self, vectors: list[np.ndarray]) -> np.ndarray:
        """Every slot of the result, as complex numbers, for the server's evaluation of these inputs."""
        return self.run_blobs([self.encrypt(vector) for vector in vectors])

    def run_blobs(self, blobs: list[bytes]) -> np.ndarray:
        """Every slot of the result for these serialized input ciphertexts, sent as they are."""
        cts = []
        for i, blob in enumerate(blobs):
            ct = seal_io.load(sealapi.Ciphertext, self.plan.runtime.context, blob, "input")
            self.plan.check_input(ct, f"input {i}")
            cts.append(ct)
        (result,) = self.plan.evaluate_single(cts, self.keys)
        self.result_scale = result.scale
        plain = sealapi.Plaintext()
        self.secret._decryptor.decrypt(result, plain)
        return np.asarray(self.secret._encoder.decode_complex(plain))


def period_average(vectors: list[np.ndarray], period: int) -> np.ndarray:
    """The one input vector the server reads: each ciphertext's periods averaged, concatenated."""
    return np.concatenate([v.reshape(-1, period).mean(axis=0) for v in vectors])


def network(plan: NetworkPlan, x: np.ndarray) -> np.ndarray:
    """The plan's network on preprocessed features (complex inputs work the same way)."""
    h = plan.W1 @ x[: plan.n_features] + plan.b1
    if not plan.two_layers:
        return h
    return plan.W2 @ (h * (h + plan.beta)) + plan.b2


def assert_one_network_row(plan: NetworkPlan, slots: np.ndarray, expected: np.ndarray) -> None:
    """The slots j = k (mod s) sum to output k, or to nothing; each slot alone is the server's mask,
    at the size of q0 over the scale, not of any value of the model (the mask's classes sum to 0)."""
    period = plan.layout.out_period
    sums = slots.reshape(-1, period).sum(axis=0)
    assert np.max(np.abs(sums[: plan.n_outputs] - expected)) < OUTPUT_TOL
    assert np.max(np.abs(sums[plan.n_outputs :]), initial=0.0) < EMPTY_TOL
    mask_size = plan.moduli[2][0] / plan.single_output_scale
    assert np.median(np.abs(slots)) > mask_size, "a slot of the result is readable on its own"
    assert np.median(np.abs(slots)) > 100 * max(1.0, float(np.max(np.abs(expected))))


def preprocess(served: ServedModel, x: np.ndarray) -> np.ndarray:
    pre = served.manifest.get("preprocess", {})
    if pre.get("type") == "standardize":
        return (x - np.asarray(pre["mean"])) / np.asarray(pre["scale"])
    return x


def test_every_plan_declares_the_rows_one_request_row_answers(registry):
    for name in registry.names():
        plan = registry.get(name).plan
        assert plan.single_rows_answered == 1, name
        assert plan.batch_rows_answered == plan.runtime.slots, name


# --- linear: coefficient layout ---------------------------------------------------------
class CoefficientAttacker:
    """Encrypts any polynomial (every coefficient its own choice) and reads every coefficient back."""

    def __init__(self, plan: LinearPlan):
        self.plan = plan
        self.secret = SecretContext.generate(plan.spec().ckks)
        self.codec = self.secret.codec

    def run(self, coefficients: np.ndarray, public_key: ZeroEncryptor | None = None) -> list[np.ndarray]:
        """`public_key`: re-randomize the results with it, as the server does with the registered one."""
        plain = self.codec.encode(coefficients, self.plan.input_scale)
        ct = sealapi.Ciphertext()
        self.secret._encryptor.encrypt_symmetric(plain, ct)
        q = self.codec.moduli[0]
        out = []
        for result in self.plan.evaluate_single([ct]):
            if public_key is not None:
                self.plan.runtime.rerandomize(result, public_key)
            decrypted = sealapi.Plaintext()
            self.secret._decryptor.decrypt(result, decrypted)
            values = self.codec.from_ntt(self.codec.plaintext_residues(decrypted))[0]
            centred = np.where(values > q // 2, values.astype(np.float64) - q, values.astype(np.float64))
            out.append(centred / result.scale)
        return out


@pytest.mark.parametrize("name", LINEAR_ONE + LINEAR_MANY)
def test_linear_results_read_only_the_first_features_and_mask_the_rest(registry, name):
    """Arbitrary values in all N coefficients, or a unit vector beyond the features: the constant
    coefficient of result k is w_k . x[:n] + b_k, and every other coefficient is uniform mod q
    (unmasked they would be partial sums of w_i x_j, within a few units)."""
    plan = registry.get(name).plan
    attacker = CoefficientAttacker(plan)
    n, size = plan.n_features, attacker.codec.n
    rng = np.random.default_rng(1)
    q_over_scale = attacker.codec.moduli[0] / plan.output_scale
    for vector in (rng.normal(0.0, 1.0, size), np.where(np.arange(size) == n + 3, 5.0, 0.0)):
        results = attacker.run(vector)
        assert len(results) == plan.n_outputs
        expected = plan.weights @ vector[:n] + plan.bias
        for k, coefficients in enumerate(results):
            assert abs(coefficients[0] - expected[k]) < OUTPUT_TOL
            far = np.abs(coefficients[1:]) > q_over_scale / 4
            assert 0.45 < far.mean() < 0.55, "coefficients other than the output are readable"


def forged_public_key(attacker: CoefficientAttacker, scalar: int) -> ZeroEncryptor:
    """pk0 = -a*s + e + scalar, pk1 = a from the honest seed: a result re-randomized with it decrypts
    to ... + scalar*u, so wherever a coefficient is readable, the server's ternary u is too."""
    from heserve.engine import seal_raw

    honest = sealapi.PublicKey()
    attacker.secret._keygen.create_public_key(honest)
    polys = seal_raw.polynomials(seal_raw.own_uncompressed(seal_io.dump(honest))).copy()  # (2, primes, N)
    context = attacker.plan.runtime.context
    moduli = [m.value() for m in context.key_context_data().parms().coeff_modulus()]
    # With a special prime SEAL encrypts zero at the key level and divides by it on the way down: the
    # forged term is then scalar * special prime, so that scalar * u is what reaches the result.
    # Without one (the linear set) zero is encrypted at the result's own level: scalar itself. A
    # constant polynomial is the same value at every NTT point.
    term = scalar * moduli[-1] if context.using_keyswitching() else scalar
    for i, q in enumerate(moduli):
        polys[0, i] = (polys[0, i] + np.uint64(term % q)) % np.uint64(q)
    blob = seal_raw.build(list(context.key_parms_id()), 1.0, polys, seal_raw.seal_version())
    return ZeroEncryptor(context, seal_io.load(sealapi.PublicKey, context, blob, "forged public key"))


@pytest.mark.parametrize("name", LINEAR_ONE + LINEAR_MANY)
def test_a_forged_public_key_does_not_expose_the_servers_randomness(registry, name):
    """The README's open case (a forged pk0 undoes re-randomization in slot layouts) does not reach
    the coefficient layout: scalar*u lands under the uniform mask everywhere but the constant
    coefficient. Unmasked, ~98 % of the coefficients would sit next to -scalar, 0 or +scalar and give
    u away; masked, about as many as chance puts there (3 windows of q/32: ~9 %)."""
    plan = registry.get(name).plan
    attacker = CoefficientAttacker(plan)
    q = attacker.codec.moduli[0]
    scalar = q // 8
    forged = forged_public_key(attacker, scalar)

    def near_u(coefficients: np.ndarray, scale: float) -> float:
        raw = coefficients[1:] * scale
        distance = np.min(np.abs(raw[:, None] - np.array([-scalar, 0, scalar])[None, :]), axis=1)
        return float(np.mean(distance < q / 64))

    # The forgery works: a bare encryption of zero under it decrypts to scalar * u, u in plain sight.
    zero = forged.zero(list(attacker.codec.parms_id), 1.0)
    decrypted = sealapi.Plaintext()
    attacker.secret._decryptor.decrypt(zero, decrypted)
    values = attacker.codec.from_ntt(attacker.codec.plaintext_residues(decrypted))[0]
    centred = np.where(values > q // 2, values.astype(np.float64) - q, values.astype(np.float64))
    assert near_u(centred, 1.0) > 0.95
    assert 0.6 < float(np.mean(np.abs(np.abs(centred) - scalar) < q / 64)) < 0.73  # u = +-1: two thirds
    row = np.random.default_rng(10).normal(0.0, 1.0, plan.n_features)  # an honest row: most products are 0
    for coefficients in attacker.run(row, public_key=forged):
        near = near_u(coefficients, plan.output_scale)
        assert near < 0.15, f"{near:.0%} of the coefficients reveal the server's randomness"


# --- networks -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def attackers(registry):
    return {name: Attacker(registry.get(name).plan) for name in NETWORKS}


@pytest.mark.parametrize("name", NETWORKS)
def test_network_arbitrary_slots_answer_one_row(registry, attackers, name):
    plan, attacker = registry.get(name).plan, attackers[name]
    lay = plan.layout
    rng = np.random.default_rng(3)
    vectors = [rng.normal(0.0, 0.5, attacker.slots) for _ in range(lay.ciphertexts)]
    slots = attacker.run(vectors).real
    assert_one_network_row(plan, slots, network(plan, period_average(vectors, lay.period)))


@pytest.mark.parametrize("name", NETWORKS)
def test_network_data_in_one_hidden_copy_isolates_nothing(registry, attackers, name):
    """Inputs only in hidden unit c's slots, +-v e_i: once W2[:, c] (h_c^2 - b1_c^2) and W1[c, i]^2."""
    plan, attacker = registry.get(name).plan, attackers[name]
    lay = plan.layout
    copy = lay.copy_slots(attacker.slots)
    rng = np.random.default_rng(4)
    for c in (0, 1, lay.hidden - 1):
        for vector in (
            np.where(np.arange(attacker.slots) // copy == c, rng.normal(0.0, 1.0, attacker.slots), 0.0),
            np.where(np.arange(attacker.slots) == c * copy + 5, 3.0, 0.0),
            np.where(np.arange(attacker.slots) == c * copy + 5, -3.0, 0.0),
        ):
            vectors = [vector] + [np.zeros(attacker.slots)] * (lay.ciphertexts - 1)
            slots = attacker.run(vectors).real
            assert_one_network_row(plan, slots, network(plan, period_average(vectors, lay.period)))


@pytest.mark.parametrize("name", NETWORKS)
def test_network_complex_slots_answer_the_model_at_one_complex_point(registry, attackers, name):
    """X + iY gets f(X + iY): for this quadratic f, what the three rows X, X + Y, X - Y answer."""
    plan, attacker = registry.get(name).plan, attackers[name]
    lay = plan.layout
    rng = np.random.default_rng(5)
    vectors = [
        rng.normal(0.0, 0.5, attacker.slots) + 1j * rng.normal(0.0, 0.5, attacker.slots) for _ in range(lay.ciphertexts)
    ]
    slots = attacker.run(vectors)
    x = period_average(vectors, lay.period)
    expected = network(plan, x)
    assert_one_network_row(plan, slots.real, expected.real)
    assert_one_network_row(plan, slots.imag, expected.imag)
    re, im = x.real, x.imag
    f0, fp, fm = network(plan, re), network(plan, re + im), network(plan, re - im)
    assert np.allclose(expected, 2 * f0 - (fp + fm) / 2 + 1j * (fp - fm) / 2)


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cryptonets"])
def test_each_result_has_its_own_mask(registry, attackers, name):
    """The same input twice: the slot sums agree, every slot on its own differs by the mask's size (a
    mask drawn once would let two results be subtracted into the unmasked slots). One activation
    (engine.neural) and several (engine.deep) mask their results the same way."""
    plan = registry.get(name).plan
    attacker = attackers[name] if name in attackers else Attacker(plan)
    vectors = [np.random.default_rng(11).normal(0.0, 0.5, attacker.slots)]
    first, second = attacker.run(vectors), attacker.run(vectors)
    period = attacker.layout.result_period
    sums = first.real.reshape(-1, period).sum(axis=0), second.real.reshape(-1, period).sum(axis=0)
    assert np.max(np.abs(sums[0] - sums[1])) < OUTPUT_TOL  # two encryptions' noise: ~1e-4 at 2^27
    expected = plan.plaintext(period_average(vectors, attacker.layout.period))[0]
    assert np.max(np.abs(sums[0][: plan.n_outputs] - expected)) < OUTPUT_TOL
    q0, scale = plan.moduli[-1][0], attacker.result_scale
    assert np.median(np.abs(first.real - second.real)) > q0 / scale
    # Alone, a slot is the mask: above every output, and far above an output's share of one slot.
    largest = float(np.max(np.abs(sums[0])))
    assert np.median(np.abs(first.real)) > max(largest, 100 * largest * period / attacker.slots)


def test_a_one_output_network_keeps_only_the_constant_coefficient():
    """period 1: SEAL's rotations by 1, 2, ... (Galois elements 3^k) are not the group whose trace keeps
    the multiples of N/2, but the real part of the sum of all slots is N/2 times the constant
    coefficient: the mask leaves only that coefficient, and the client reads the sum's real part."""
    from heserve.engine.linear import SealRuntime
    from heserve.engine.packing import slot_sum_lattice

    rng = np.random.default_rng(9)
    arrays = {"W0": rng.normal(0.0, 0.5, (4, 8)), "b0": rng.normal(0.0, 0.5, 4),
              "W1": rng.normal(0.0, 0.5, (1, 4)), "b1": rng.normal(0.0, 0.5, 1)}
    layers = [{"type": "dense", "weights": "W0", "bias": "b0"}, {"type": "act", "beta": 0.5},
              {"type": "dense", "weights": "W1", "bias": "b1", "output_bound": 20.0}]
    plan = NetworkPlan(layers, arrays, SealRuntime(NETWORK_PARAMS))
    assert plan.layout.out_period == 1 and plan.spec().layouts[SINGLE].result_period == 1
    assert np.flatnonzero(slot_sum_lattice(8192, 1)).tolist() == [0]
    attacker = Attacker(plan)
    for vector in (rng.normal(0.0, 1.0, attacker.slots), np.where(np.arange(attacker.slots) == 2, 1.5, 0.0)):
        slots = attacker.run([vector]).real
        assert_one_network_row(plan, slots, network(plan, period_average([vector], plan.layout.period)))
    honest = rng.normal(0.0, 1.0, 8)
    slots = attacker.run(encoding.pack_single(honest, attacker.layout, attacker.slots)).real
    assert abs(encoding.unpack_single_result(slots, attacker.layout, 1)[0] - network(plan, honest)[0]) < 1e-3


def test_one_layer_network_answers_one_row():
    """A single dense layer: the identity takes layer 2's place, with the same structure around it."""
    from heserve.engine.linear import SealRuntime

    rng = np.random.default_rng(7)
    weights, bias = rng.normal(0.0, 0.5, (6, 20)), rng.normal(0.0, 1.0, 6)
    layers = [{"type": "dense", "weights": "W0", "bias": "b0", "output_bound": 40.0}]
    plan = NetworkPlan(layers, {"W0": weights, "b0": bias}, SealRuntime(NETWORK_PARAMS))
    attacker = Attacker(plan)
    lay = plan.layout
    for vector in (rng.normal(0.0, 1.0, attacker.slots), np.where(np.arange(attacker.slots) == 3, 2.0, 0.0)):
        slots = attacker.run([vector]).real
        assert_one_network_row(plan, slots, weights @ period_average([vector], lay.period)[:20] + bias)
    honest = rng.normal(0.0, 1.0, 20)
    slots = attacker.run(encoding.pack_single(honest, attacker.layout, attacker.slots)).real
    assert np.max(np.abs(encoding.unpack_single_result(slots, attacker.layout, 6) - (weights @ honest + bias))) < 1e-4


# --- the honest path ----------------------------------------------------------------------
def honest_rows(name: str, count: int) -> np.ndarray:
    if name in ("digits-mlp", "digits-cnn"):
        return digits_split()[1][:count]
    if name == "mnist-size-mlp":
        return mnist_size_split()[1][:count]
    from heserve.benchmarks.linear import SPLITS

    return SPLITS[name]()[1][:count]


@pytest.mark.parametrize("name", LINEAR_ONE + LINEAR_MANY + NETWORKS)
def test_honest_rows_match_plaintext(registry, attackers, name):
    served = registry.get(name)
    rows = honest_rows(name, 8)
    expected = served.plaintext_predict(rows)
    if isinstance(served.plan, LinearPlan):
        attacker = CoefficientAttacker(served.plan)
        for row, want in zip(preprocess(served, rows), expected, strict=True):
            got = np.array([coefficients[0] for coefficients in attacker.run(row)])
            assert np.max(np.abs(got - want)) < 1e-3
        return
    attacker = attackers[name]
    for row, want in zip(preprocess(served, rows), expected, strict=True):
        slots = attacker.run(encoding.pack_single(row, attacker.layout, attacker.slots)).real
        got = encoding.unpack_single_result(slots, attacker.layout, served.plan.n_outputs)
        assert np.max(np.abs(got - want)) < 1e-3


def test_packing_round_trips_and_asks_only_power_of_two_rotations(registry):
    for name in NETWORKS:
        plan = registry.get(name).plan
        lay = plan.layout
        assert PackedLayout.from_json(lay.to_json()) == lay
        steps = lay.rotation_steps(plan.runtime.slots)
        assert steps == plan.single_steps and all(s & (s - 1) == 0 for s in steps)
        assert plan.spec().layouts[SINGLE].period == lay.period


def _mulmod(a: np.ndarray, b: np.ndarray, moduli: list[int]) -> np.ndarray:
    """a * b mod q, per prime (rows), exactly (Python integers: these primes pass 32 bits)."""
    return np.array(
        [[int(x) * int(y) % q for x, y in zip(ra, rb, strict=True)] for ra, rb, q in zip(a, b, moduli, strict=True)],
        dtype=np.uint64,
    )


@pytest.mark.parametrize("rerandomized", [True, False])
def test_a_forged_galois_key_adds_noise_the_client_cannot_steer(registry, monkeypatch, rerandomized):
    """A Galois key for g made from sigma_g(s) + D instead of sigma_g(s) adds c1' * D to the rotation by
    g (c1' the rotated ciphertext's second polynomial, up to the automorphism). The server cannot tell
    such a key from an honest one. Here the forged key's effect is emulated on the first rotation of the
    periodic sum, with D = Z / c1 for the c1 the client sent: Z is a non-periodic slot vector it wants
    to slip past the periodic sum. Without the server's encryption of zero added to the input first,
    the term is exactly Z, the same every run: the client steers the evaluation. With it, c1' carries
    the server's u * p1 and the term is noise: two runs of one input disagree."""
    served = registry.get("digits-cryptonets")
    plan = served.plan
    attacker = Attacker(plan)
    moduli = plan.moduli[0]
    vector = np.tile(np.random.default_rng(21).uniform(0, 1, attacker.layout.period), attacker.slots // 64)
    blob = attacker.encrypt(vector)
    sent = seal_io.load(sealapi.Ciphertext, plan.runtime.context, blob, "input")
    c1 = plan._coefficients(sent, 0)[1]
    inject = np.zeros(attacker.slots)
    inject[:8] = 3.0  # in the first period only: not periodic
    codec = plan._result_codec.__class__(plan.runtime.context, plan.levels[0])
    z = codec.plaintext_residues(plan._encode(inject, sent.scale, 0))
    d = _mulmod(z, np.array([[pow(int(v), q - 2, q) for v in row] for row, q in zip(c1, moduli, strict=True)],
                            dtype=np.uint64), moduli)
    first_step = plan.schedule.periodic_steps[0]
    real_rotated = Rotator.rotated

    def forged_rotated(self, ct, step):
        out = real_rotated(self, ct, step)
        if step != first_step or ct.parms_id() != plan.levels[0]:
            return out
        data = plan._coefficients(out, 0)
        term = _mulmod(plan._coefficients(ct, 0)[1], d, moduli)
        data[0] = (data[0] + term) % np.array(moduli, dtype=np.uint64)[:, None]
        return plan._ciphertext(data, 0, out.scale)

    monkeypatch.setattr(Rotator, "rotated", forged_rotated)
    if not rerandomized:
        monkeypatch.setattr(type(plan), "_rerandomized_input", lambda self, ct, keys: ct)
    period = attacker.layout.result_period
    runs = [attacker.run_blobs([blob]).real.reshape(-1, period).sum(axis=0)[: plan.n_outputs] for _ in range(2)]
    honest = plan.plaintext(vector[: attacker.layout.period])[0]
    if rerandomized:
        assert np.max(np.abs(runs[0] - runs[1])) > 1e3 * OUTPUT_TOL, "the forged key's term is predictable"
    else:  # the attack works: a steered, repeatable answer that is not the honest row's
        assert np.max(np.abs(runs[0] - runs[1])) < OUTPUT_TOL
        assert np.max(np.abs(runs[0] - honest)) > 100 * OUTPUT_TOL
