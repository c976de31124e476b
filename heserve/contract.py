"""The plan contract, one reusable check (as scikit-learn's check_estimator is for estimators).

    from heserve.contract import check_plan
    check_plan(plan, x)   # x: a few preprocessed rows; raises PlanContractError on a breach

For a compiled plan (heserve.engine.plan.Plan) and real SEAL keys made here, it checks:
1. agreement: every layout's encrypted result, decrypted after the server's re-randomization,
   equals plan.plaintext(x), within `tolerance` of the outputs' size (absolute for outputs below 1:
   CKKS errors are relative to the values, a square doubling the relative error it receives);
2. nothing but the outputs: a single-layout input crafted by the key's owner (random values in
   every slot or every coefficient) gives, in every slot or coefficient of every result, an output
   for one input vector the owner could have sent honestly, or nothing readable;
3. rotations: the Galois elements the spec publishes are exactly those evaluation uses, each step
   exactly as many times per row as `rotation_uses` says (it runs with exactly those keys, none
   composed, and counts); with keys for only as few steps as compose the others (engine.rotations)
   the answer is the same, and crafted inputs reveal no more (check 2 again); the batch layout uses none.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal.sealapi as sealapi

from heserve.client import encoding
from heserve.client.keys import SecretContext
from heserve.engine import rotations, seal_io
from heserve.engine.coefficients import CoefficientCodec
from heserve.engine.packing import slot_sum_lattice
from heserve.engine.params import galois_element
from heserve.engine.plan import Plan
from heserve.engine.spec import BATCH, COEFFICIENTS, SINGLE, SLOT_SUMS
from heserve.engine.zero_encryption import ZeroEncryptor

# Empty slots of a network's result hold the rounding residue of zero weights (~1e-6 of the
# hidden activations); a value this large there would be readable.
EMPTY_SLOT_TOLERANCE = 1e-3


class PlanContractError(AssertionError):
    """A plan that breaks its contract; the message says which clause and by how much."""


@dataclass
class _Keys:
    galois: sealapi.GaloisKeys | None
    relin: sealapi.RelinKeys | None
    public: ZeroEncryptor | None = None
    # Rotations only by registered steps: with composition a missing key would go unnoticed.
    rotation_hops: int = 1
    rotation_log: list[int] | None = None


def _allowed(tolerance: float, outputs: np.ndarray) -> float:
    """The error allowed on these outputs: CKKS keeps a relative precision, not an absolute one."""
    return tolerance * max(1.0, float(np.max(np.abs(outputs), initial=0.0)))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise PlanContractError(message)


class _Owner:
    """The key's owner: encrypts what it likes and decrypts everything it gets back."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.spec = plan.spec()
        self.secret = SecretContext.generate(self.spec.ckks)
        keygen = self.secret._keygen
        public = sealapi.PublicKey()
        keygen.create_public_key(public)
        self.public = ZeroEncryptor(plan.runtime.context, public)
        self.relin = None
        if self.spec.relin_keys_needed:
            self.relin = sealapi.RelinKeys()
            keygen.create_relin_keys(self.relin)

    def keys(self, elements: list[int]) -> _Keys:
        galois = None
        if elements:
            galois = sealapi.GaloisKeys()
            self.secret._keygen.create_galois_keys(sorted(elements), galois)
        return _Keys(galois, self.relin, self.public)

    def scale(self, layout: str) -> float:
        return 2.0 ** self.spec.layouts[layout].input_scale_bits(self.spec.input_scale_bits)

    def load(self, blob: bytes) -> sealapi.Ciphertext:
        return seal_io.load(sealapi.Ciphertext, self.plan.runtime.context, blob, "input")

    def single_inputs(self, vectors: list[np.ndarray]) -> list[sealapi.Ciphertext]:
        """Ciphertexts of these vectors, in coefficients or slots as the single layout encodes."""
        layout = self.spec.layouts[SINGLE]
        scale = self.scale(SINGLE)
        if layout.encoding == COEFFICIENTS:
            return [self.load(self.secret.encrypt_coefficients(v, scale)) for v in vectors]
        return [self.load(self.secret.encrypt(v, scale)) for v in vectors]

    def honest_single(self, row: np.ndarray) -> list[np.ndarray]:
        layout = self.spec.layouts[SINGLE]
        if layout.encoding == COEFFICIENTS:
            return [row]
        return encoding.pack_single(row, layout, self.secret.slot_count)

    def evaluate_single(self, cts: list[sealapi.Ciphertext], keys: _Keys) -> list[bytes]:
        results = self.plan.evaluate_single(cts, keys)
        _require(len(results) == self.plan.single_results, "single_results does not count the results")
        out = []
        for ct in results:
            self.plan.runtime.rerandomize(ct, self.public)
            out.append(seal_io.dump(ct))
        return out

    def read_single(self, results: list[bytes]) -> np.ndarray:
        if self.spec.layouts[SINGLE].encoding == COEFFICIENTS:
            return np.array([self.secret.decrypt_constant(r) for r in results])
        layout = self.spec.layouts[SINGLE]
        return encoding.unpack_single_result(self.secret.decrypt(results[0]), layout, self.plan.n_outputs)

    def coefficients(self, blob: bytes) -> tuple[np.ndarray, int]:
        """Every coefficient of a decrypted one-prime result, centred mod q (not scaled), and q."""
        ct = seal_io.load(sealapi.Ciphertext, self.secret._context, blob, "result")
        plain = sealapi.Plaintext()
        self.secret._decryptor.decrypt(ct, plain)
        codec = CoefficientCodec(self.secret._context, ct.parms_id())
        _require(len(codec.moduli) == 1, "a slot-sums result is not on one prime")
        return codec.centred_coefficients(plain), codec.moduli[0]


def check_plan(plan: Plan, x: np.ndarray, tolerance: float = 2e-3, seed: int = 0) -> None:
    """Check the plan contract on preprocessed rows x (a few; up to one batch chunk)."""
    _require(isinstance(plan, Plan), f"{type(plan).__name__} does not offer the Plan interface")
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    _require(x.shape[1] == plan.n_features, f"rows have {x.shape[1]} features, the plan {plan.n_features}")
    owner = _Owner(plan)
    keys, compact = _check_rotations(plan, owner, x[0], tolerance)
    _check_single_agreement(plan, owner, keys, x, tolerance)
    _check_batch_agreement(plan, owner, x, tolerance)
    _check_crafted_single(plan, owner, keys, np.random.default_rng(seed), tolerance)
    if compact is not None:  # composed rotations reveal no more than direct ones
        _check_crafted_single(plan, owner, compact, np.random.default_rng(seed + 1), tolerance)


def _check_rotations(plan: Plan, owner: _Owner, row: np.ndarray, tolerance: float) -> tuple[_Keys, _Keys | None]:
    """Published rotations are exactly those evaluation makes, step by step and count by count; and
    with keys for as few steps as compose the others, the answer is the same."""
    n = owner.spec.ckks.poly_modulus_degree
    layout = owner.spec.layouts[SINGLE]
    used = sorted(plan.required_galois_elements(SINGLE))
    published = sorted(galois_element(s, n) for s in layout.rotation_steps)
    _require(used == published, f"the spec publishes Galois elements {published}, evaluation uses {used}")
    _require(not plan.required_galois_elements(BATCH), "the batch layout rotates")
    _require(not owner.spec.layouts[BATCH].rotation_steps, "the batch layout publishes rotations")
    slots = owner.secret.slot_count
    uses = {step % slots: count for step, count in zip(layout.rotation_steps, layout.rotation_uses, strict=False)}
    _require(
        len(layout.rotation_uses) == len(layout.rotation_steps) and all(u >= 1 for u in layout.rotation_uses),
        f"the spec publishes rotation steps {list(layout.rotation_steps)} with uses {list(layout.rotation_uses)}",
    )
    keys = owner.keys(used)  # rotation_hops 1: every rotation by a registered step, none composed
    keys.rotation_log = []
    owner.evaluate_single(owner.single_inputs(owner.honest_single(row)), keys)
    counted = Counter(keys.rotation_log)
    _require(counted == Counter(uses), f"the spec publishes rotations {uses} per row, evaluation made {dict(counted)}")
    keys.rotation_log = None
    fewest = rotations.compact_steps(layout.rotation_steps, slots, rotations.FEWEST, uses)
    compact = None
    if len(fewest) < len(layout.rotation_steps):
        compact = owner.keys([galois_element(s, n) for s in fewest])
        compact.rotation_hops = rotations.MAX_HOPS
        want = plan.plaintext(row[None, :])[0]
        got = owner.read_single(owner.evaluate_single(owner.single_inputs(owner.honest_single(row)), compact))
        error = float(np.max(np.abs(got - want)))
        _require(
            error < _allowed(tolerance, want),
            f"with Galois keys for steps {list(fewest)} only, the single layout differs from plaintext by {error:.2e}",
        )
    return keys, compact


def _check_single_agreement(plan: Plan, owner: _Owner, keys: _Keys, x: np.ndarray, tolerance: float) -> None:
    expected = plan.plaintext(x)
    for row, want in zip(x, expected, strict=True):
        got = owner.read_single(owner.evaluate_single(owner.single_inputs(owner.honest_single(row)), keys))
        error = float(np.max(np.abs(got - want)))
        _require(error < _allowed(tolerance, want), f"single layout differs from plaintext by {error:.2e}")


def _check_batch_agreement(plan: Plan, owner: _Owner, x: np.ndarray, tolerance: float) -> None:
    layout = owner.spec.layouts[BATCH]
    rows = x.shape[0]
    columns = encoding.pack_batch(x, owner.secret.slot_count)
    blobs = [owner.secret.encrypt(c, owner.scale(BATCH), seeded=layout.seeded) for c in columns]
    if plan.batch_reads_coefficients:
        inputs: list[Any] = [plan.parse_batch_input(b, f"column {j}") for j, b in enumerate(blobs)]
    else:
        inputs = [owner.load(b) for b in blobs]
    results = plan.evaluate_batch(inputs, rows, owner.keys([]))
    _require(len(results) == plan.n_outputs, "the batch layout returns one ciphertext per output")
    slots = []
    for ct in results:
        plan.runtime.rerandomize(ct, owner.public)
        slots.append(owner.secret.decrypt(seal_io.dump(ct)))
    got = encoding.unpack_batch(slots, rows)
    expected = plan.plaintext(x)
    error = float(np.max(np.abs(got - expected)))
    _require(error < _allowed(tolerance, expected), f"batch layout differs from plaintext by {error:.2e}")
    # Slots beyond the rows hold nothing, or (networks) the outputs of an all-zero row: a row the
    # chunk is charged for anyway (a chunk is charged for every slot).
    zero_row = plan.plaintext(np.zeros(plan.n_features))[0]
    allowed = _allowed(tolerance, np.concatenate([expected.ravel(), zero_row]))
    for k, values in enumerate(slots):
        beyond = values[rows:]
        spill = float(np.max(np.minimum(np.abs(beyond), np.abs(beyond - zero_row[k])), initial=0.0))
        _require(spill < allowed, f"batch output {k} holds {spill:.2e} in slots beyond the rows")


def _check_crafted_single(plan: Plan, owner: _Owner, keys: _Keys, rng: np.random.Generator, tolerance: float) -> None:
    layout = owner.spec.layouts[SINGLE]
    if layout.encoding == COEFFICIENTS:
        vector = rng.normal(0.0, 1.0, owner.secret.codec.n)  # something in every coefficient
        results = owner.evaluate_single(owner.single_inputs([vector]), keys)
        expected = plan.plaintext(vector[: plan.n_features])[0]
        for k, blob in enumerate(results):
            coefficients = owner.secret.decrypt_coefficients(blob)
            error = abs(coefficients[0] - expected[k])
            _require(error < _allowed(tolerance, expected),
                     f"output {k} reads more than the first features ({error:.2e})")
            # Uniform on (-q/2, q/2): half of them within half the largest. Partial sums, left
            # unmasked, would be a few values among zeros.
            rest = np.abs(coefficients[1:])
            inner = float(np.mean(rest < rest.max() / 2))
            _require(0.45 < inner < 0.55, f"result {k}: coefficients other than the output are not uniform noise")
        return
    packing = layout.packing or {}
    period, out_period = int(packing["period"]), int(packing["out_period"])
    slots = owner.secret.slot_count
    vectors = [rng.normal(0.0, 0.5, slots) for _ in range(layout.ciphertexts_per_row)]
    (blob,) = owner.evaluate_single(owner.single_inputs(vectors), keys)
    read = np.concatenate([v.reshape(-1, period).mean(axis=0) for v in vectors])[: plan.n_features]
    expected = plan.plaintext(read)[0]
    if layout.encoding == SLOT_SUMS:
        _check_slot_sums(owner, blob, layout.result_period, plan.n_outputs, expected, tolerance)
        return
    values = owner.secret.decrypt(blob).reshape(-1, out_period)
    # Copies of one output differ by the noise of the slots they come from, within the agreement's
    # tolerance; a slot that held something else would differ by the size of the values.
    allowed = _allowed(tolerance, expected)
    spread = float(np.max(np.abs(values - values[0])))
    _require(spread < allowed, f"slots of one output differ by {spread:.2e}")
    error = float(np.max(np.abs(values[0, : plan.n_outputs] - expected)))
    _require(error < allowed, f"a crafted input is answered with {error:.2e} off one honest row")
    empty = float(np.max(np.abs(values[0, plan.n_outputs :]), initial=0.0))
    _require(empty < EMPTY_SLOT_TOLERANCE, f"slots that hold no output read {empty:.2e}")


def _check_slot_sums(owner: _Owner, blob: bytes, period: int, n_outputs: int, expected: np.ndarray,
                     tolerance: float) -> None:
    """A "slot-sums" result: its classes of slots sum to the outputs of one row, and nothing else is
    readable: every coefficient off the multiples of g = S/period (what the sums do not read) is
    uniform mod q, the ones on them (the sums) within the q/8 that a plan's outputs are sized to
    (uniform ones would reach q/2)."""
    sums = encoding.unpack_slot_sums(owner.secret.decrypt(blob), period, period)  # real parts
    allowed = _allowed(tolerance, expected)
    error = float(np.max(np.abs(sums[:n_outputs] - expected)))
    _require(error < allowed, f"a crafted input is answered with {error:.2e} off one honest row")
    empty = float(np.max(np.abs(sums[n_outputs:]), initial=0.0))
    _require(empty < EMPTY_SLOT_TOLERANCE, f"slots that hold no output sum to {empty:.2e}")
    coefficients, q = owner.coefficients(blob)
    lattice = slot_sum_lattice(coefficients.size, period)
    rest = np.abs(coefficients[~lattice])
    if rest.size:  # period = S: every coefficient is read (each slot is its own output), none masked
        # Uniform on (-q/2, q/2): half of them within q/4. Unmasked slots would be small values.
        inner = float(np.mean(rest < q / 4))
        _require(0.45 < inner < 0.55, f"coefficients the slot sums do not read are not uniform noise ({inner:.2f})")
    read = float(np.max(np.abs(coefficients[lattice])))
    _require(read < q / 8, f"coefficients the slot sums read reach {read:.3g} of q = {q}")
