"""Compiled plans for shallow networks (dense -> x*(x+beta) -> dense, or one dense layer) on CKKS.

Parameters: N=8192, three 45-bit data primes [q0, qa, qb] and a 60-bit special prime
(195 bits <= 218). Fewer primes than one-per-layer means smaller ciphertexts and cheaper
key switching.

Single layout (protocol.packing has the slot map). Whoever holds the secret key decrypts
every slot of the result and may have encrypted anything, so the server builds every
structure it relies on itself:
0. each input gets the server's encryption of zero under the client's public key before any
   key switch, so that a forged Galois or relinearization key adds noise the client cannot
   predict instead of a term it chose (engine.levels.LeveledPlan._rerandomized_input);
1. each input ciphertext is rotate-and-summed over the subgroup of rotations by multiples
   of its period Q (steps Q, 2Q, ..., S/2): whatever the client sent, every slot then holds
   the sum of its residue class mod Q, and the weights (scaled by Q/S) read the average of
   the periods. The client tiles its row, so the average is the row.
2. rotations by multiples of the window P (baby steps on the periodic input, giant steps
   on the products) and one plaintext product per rotation put W1[c, f] * x_f under the
   slots of hidden copy c (slots [c*R, (c+1)*R), R = S/H), and a rotate-and-sum over P
   consecutive slots completes the pre-activation: slot c*R + r, r <= R - P, reads every
   periodic input once, with hidden unit c's weights, so *every hidden unit and every
   such slot reads the same input vector*. (The last P - 1 slots of a copy mix two units.)
3. rescale (drop qb), bias, activation x*(x+beta), relinearization, all at two primes;
4. W2[k, c] at the slots c*R + r with r <= R - P and r = k (mod s), k < n_out (spread
   evenly over them): zero weight for every other slot, the mixed ones included. Rescale
   (drop qa);
5. output k is the sum of the slots j = k (mod s), s = n_out rounded up to a power of two
   (the sum over hidden units is part of it). That sum over the rotations by multiples of
   s is the trace onto the subring of polynomials in X^g, g = S/s: in coefficients, g times
   the projection that keeps the coefficients at multiples of g and zeroes the others. So
   instead of rotating (log2(S/s) key switches), the server adds a polynomial whose
   coefficients at multiples of g are zero and whose every other coefficient is uniform mod
   q0, from a CSPRNG, and the client sums the classes of slots itself ("slot-sums"): the
   mask's classes sum to zero, and each slot alone is uniform noise. What a client decrypts
   is then the projection (every output, as the rotations' sums gave it) and noise.
A result thus answers exactly one input vector (one honest row). Classes j mod s >= n_out
sum to the rounding residue of the zero weights times hidden activations (~1e-7 of them);
the encoding of a plaintext's zeros is never exact in CKKS. The one-layer case runs the
same steps without the activation and with the identity as W2.
Precision: the input (scale 2^34..2^55) is rotated before any product, where SEAL's
key-switching noise (~2^11 per slot) is negligible; z is rescaled once, after the window
sum and before the square (rescaling adds ~2^11 per slot, ~3e-5 of z at 2^26), which
leaves the level-1 modulus for the square and 2^26..2^30 layer-2 weights.
Complex slots: CKKS slots are complex and nothing projects on the real part, so a client
that encrypts X + iY gets f(X + iY): for a quadratic f that is (2f(X) - (f(X+Y) + f(X-Y))/2)
+ i(f(X+Y) - f(X-Y))/2, twice the numbers of one honest row, computed from three.

Batch layout: ciphertext i holds feature i of up to N/2 rows. The whole network runs on
the ciphertexts' NTT coefficients with numpy: layer 1 and layer 2 as modular matrix
products (server.modmath), the activation as coefficient-wise products of ciphertext
pairs (a ciphertext product is pointwise in NTT form). SEAL is called only at the end,
to relinearize and rescale each output: n_out key switches for the whole batch. Inputs
come at scale 2^s, weights at 2^a and 2^b (chosen per model so that the integer weights
fit the modular matrix products), and nothing is rescaled until the end: 2*(s+a)+b bits
of scale fit the 135-bit level-0 modulus, and two rescales bring the outputs down to
~2^30 under q0. Every slot is computed on its own: a chunk answers at most N/2 rows.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tenseal.sealapi as sealapi

from heserve.engine import seal_raw
from heserve.engine.levels import LeveledPlan
from heserve.engine.linear import EvaluationError, SealRuntime, next_power_of_two
from heserve.engine.modmath import ModularDense, mulmod_vector
from heserve.engine.packing import PackedLayout
from heserve.engine.params import CKKSParams, galois_element
from heserve.engine.plan import DEFAULT_BATCH_THREADS
from heserve.engine.rotations import Rotator
from heserve.engine.spec import BATCH, SINGLE, SLOT_SUMS, EncryptionSpec, LayoutSpec

NETWORK_PARAMS = CKKSParams(8192, (45, 45, 45, 60))
LEVEL0_BITS = 135
# Single layout scales (bits). W1 is encoded at 2^30 (its rounding, ~26/2^30 per slot, is then
# negligible); the input scale follows from the hidden scale the first rescale should leave:
# 2^26 for two layers balances that rescale's noise (~2^11 per slot, on z) against the
# rounding of W2, whose scale is what the level-1 modulus leaves after squaring 2^26 (measured
# on the shipped networks: 2^25 and 2^28 double the error). One layer has no square: a larger
# hidden scale, and a 0/1 plaintext (up to 2^40) in place of W2.
SINGLE_W1_BITS, SINGLE_W2_MAX_BITS, SINGLE_MASK_MAX_BITS = 30, 30, 40
SINGLE_HIDDEN_BITS = {True: 26, False: 45}  # by two_layers
MIN_SINGLE_W2_BITS = 16
# Integer weights of at most this many bits keep each limb product of server.modmath exact with
# two 23-bit limbs of a 45-bit coefficient (23 + 19 + log2(1024) = 52).
WEIGHT_BITS_LAYER1, WEIGHT_BITS_LAYER2 = 19, 20
MAX_SINGLE_CIPHERTEXTS = 64
# Per-operation costs (ms, N=8192) behind the packing choice and the plan's estimate, measured
# with `python -m benchmarks` (op-count floors) on a 2-core machine.
OP_COST_MS = {
    ("load_seeded_ciphertext", 0): 1.8,
    ("rerandomize", 0): 2.5,
    ("multiply_plain", 0): 0.33,
    ("add", 0): 0.11,
    ("rotate", 0): 2.9,
    ("rescale", 0): 0.8,
    ("multiply_plain", 1): 0.13,
    ("add", 1): 0.05,
    ("rotate", 1): 2.1,
    ("multiply_relinearize", 1): 2.2,
    ("rescale", 1): 0.6,
    ("add", 2): 0.04,
    ("mask", 2): 0.4,
}


def _single_ops(layout: PackedLayout, slots: int, two_layers: bool) -> list[dict]:
    """The SEAL operations of one single-layout sample, by level (see NetworkPlan.evaluate_single)."""
    rot = layout.rotations(slots)
    top = rot["periodic"] + rot["baby"] + rot["giant"] + rot["window"]
    products = layout.ciphertexts * layout.groups
    ops = [
        {"op": "load_seeded_ciphertext", "count": layout.ciphertexts, "level": 0},
        {"op": "rerandomize", "count": layout.ciphertexts, "level": 0},  # before any key switch
        {"op": "rotate", "count": top, "level": 0},
        {"op": "multiply_plain", "count": products, "level": 0},
        {"op": "add", "count": top - rot["baby"] + products - 1, "level": 0},
        {"op": "rescale", "count": 1, "level": 0},
        {"op": "add", "count": 3 if two_layers else 1, "level": 1},
    ]
    if two_layers:
        ops.append({"op": "multiply_relinearize", "count": 1, "level": 1})
    ops += [
        {"op": "multiply_plain", "count": 1, "level": 1},
        {"op": "rescale", "count": 1, "level": 1},
        {"op": "add", "count": int(two_layers), "level": 2},
        {"op": "mask", "count": 1, "level": 2},  # in place of the output sum's rotations
        {"op": "rerandomize", "count": 1, "level": 2},  # every result leaves the server re-randomized
    ]
    return [op for op in ops if op["count"]]


def _estimated_ms(ops: list[dict]) -> float:
    return sum(OP_COST_MS.get((o["op"], o["level"]), 0.0) * o["count"] for o in ops)


def choose_packed_layout(n_in: int, n_hidden: int, n_out: int | None, slots: int) -> PackedLayout:
    """The single-layout packing with the least estimated server time.

    n_out None: one dense layer, whose n_hidden outputs take the place of layer 2's.
    """
    hidden = next_power_of_two(n_hidden)
    outputs = n_hidden if n_out is None else n_out
    copy = slots // hidden
    out_period = next_power_of_two(outputs)
    if outputs > copy or out_period > copy:
        raise ValueError(
            f"a {n_in}-{n_hidden}-{n_out} network does not pack into {slots} slots: "
            f"{outputs} outputs need as many slots in each of {hidden} hidden copies of {copy}"
        )
    best = None
    window = 1
    # Slots r <= R - P of a copy hold the pre-activation; outputs 0..n_out-1 need r < n_out.
    while window <= min(copy - outputs + 1, next_power_of_two(n_in)):
        groups = min(next_power_of_two(math.ceil(n_in / window)), slots // window)
        ciphertexts = math.ceil(n_in / (groups * window))
        baby = 1
        while baby <= groups and ciphertexts <= MAX_SINGLE_CIPHERTEXTS:
            layout = PackedLayout(ciphertexts, groups * window, window, hidden, baby, out_period)
            cost = _estimated_ms(_single_ops(layout, slots, n_out is not None))
            if best is None or cost < best[0]:
                best = (cost, layout)
            baby *= 2
        window *= 2
    if best is None:
        raise ValueError(f"a {n_in}-{n_hidden}-{n_out} network does not pack into {slots} slots")
    return best[1]


def _scale_bits(weights: np.ndarray, target_bits: int) -> int:
    """Scale exponent that makes round(weights * 2^bits) fit target_bits bits (sign aside)."""
    largest = float(np.max(np.abs(weights))) or 1.0
    return int(np.clip(target_bits - 1 - math.ceil(math.log2(largest)), 10, 30))


class NetworkPlan(LeveledPlan):
    """dense1 [-> act -> dense2], compiled for both layouts."""

    batch_reads_coefficients = True
    # Honest rows one single-layout row can answer (every result slot reads one input vector).
    single_rows_answered = 1
    # CKKS slots are complex: for a quadratic network, X + iY yields two vectors that take three
    # honest rows (X, X + Y, X - Y) to compute. Quotas charge that.
    complex_rows = 3

    def __init__(self, layers: list[dict], arrays: dict[str, np.ndarray], runtime: SealRuntime):
        self.runtime = runtime
        dense = [layer for layer in layers if layer["type"] == "dense"]
        acts = [layer for layer in layers if layer["type"] == "act"]
        self.W1, self.b1 = arrays[dense[0]["weights"]].astype(np.float64), arrays[dense[0]["bias"]].astype(np.float64)
        self.two_layers = len(dense) == 2
        if self.two_layers:
            self.W2 = arrays[dense[1]["weights"]].astype(np.float64)
            self.b2 = arrays[dense[1]["bias"]].astype(np.float64)
            self.beta = float(acts[0]["beta"])
        self.n_features = self.W1.shape[1]
        self.n_hidden = self.W1.shape[0]
        self.n_outputs = self.W2.shape[0] if self.two_layers else self.n_hidden
        self._read_levels()
        q0, qa, qb = self.moduli[0]
        bound = float(layers[-1].get("output_bound", 1.0))
        w1_bits = _scale_bits(self.W1, WEIGHT_BITS_LAYER1)
        self.w1_scale = 2.0**w1_bits
        # The input scale fills what the weights leave of the level-0 modulus, so that the output
        # lands near 2^(135 - 90 - log2(bound)) under q0, well above the noise.
        top = LEVEL0_BITS - math.ceil(math.log2(max(bound, 1.0))) - 3
        if self.two_layers:
            w2_bits = _scale_bits(self.W2, WEIGHT_BITS_LAYER2)
            self.w2_scale = 2.0**w2_bits
            self.input_scale_bits = int(min(40, (top - w2_bits) // 2 - w1_bits))
        else:
            self.input_scale_bits = int(min(40, top - w1_bits))
        self.input_scale = 2.0**self.input_scale_bits
        self.hidden_scale = self.input_scale * self.w1_scale  # level 0, never rescaled before the activation
        if self.two_layers:
            self.product_scale = self.hidden_scale**2 * self.w2_scale  # batch: layer-2 output before rescaling
            top_bits = math.log2(self.product_scale) + math.log2(bound) + 2
            if top_bits > math.log2(q0) + math.log2(qa) + math.log2(qb):
                raise ValueError(f"scales need {top_bits:.0f} bits, more than the 135-bit modulus")
            self.output_scale = self.product_scale / (qb * qa)
        else:
            self.output_scale = self.hidden_scale / qb
        if bound * self.output_scale * 2 >= q0:
            raise ValueError(f"outputs up to {bound:g} do not fit the {q0.bit_length()}-bit last prime")
        self.layout = choose_packed_layout(
            self.n_features, self.n_hidden, self.n_outputs if self.two_layers else None, runtime.slots
        )
        self._choose_single_scales(bound)
        self._compile_single()
        self._compile_batch()

    # --- compilation -------------------------------------------------------------------------
    def _choose_single_scales(self, bound: float) -> None:
        """Input, W1, W2 scales of the single layout, from the hidden scale after the first rescale."""
        slots, lay = self.runtime.slots, self.layout
        q0, qa, qb = self.moduli[0]
        out_bits = math.ceil(math.log2(max(bound, 1.0)))
        averaged = int(math.log2(slots // lay.period))
        # x + w1 + averaged - log2(qb) = hidden bits: the periodic sum multiplies the input by
        # S/Q, which the weights divide back out (see _compile_single).
        self.single_input_bits = SINGLE_HIDDEN_BITS[self.two_layers] + qb.bit_length() - SINGLE_W1_BITS - averaged
        self.single_input_scale = 2.0**self.single_input_bits
        self.single_w1_scale = 2.0**SINGLE_W1_BITS * (slots // lay.period)
        # SEAL's own arithmetic on scales, so that the plaintexts added later match exactly.
        self.single_hidden_scale = self.single_input_scale * self.single_w1_scale / qb
        act_scale = self.single_hidden_scale**2 if self.two_layers else self.single_hidden_scale
        room = math.floor(math.log2(q0) + math.log2(qa) - math.log2(act_scale)) - 1 - 2 - out_bits
        if room < MIN_SINGLE_W2_BITS:
            raise ValueError("the single layout has no room for layer-2 weights at this output bound")
        self.single_w2_scale = 2.0 ** min(SINGLE_W2_MAX_BITS if self.two_layers else SINGLE_MASK_MAX_BITS, room)
        self.single_output_scale = act_scale * self.single_w2_scale / qa
        if bound * self.single_output_scale * 2 >= q0:
            raise ValueError(f"outputs up to {bound:g} do not fit the {q0.bit_length()}-bit last prime")

    def _compile_single(self) -> None:
        slots, lay = self.runtime.slots, self.layout
        copy, period, window = lay.copy_slots(slots), lay.period, lay.window
        giant_step = lay.baby * window
        # W1 with a zero row for padded hidden copies and zero columns past the features.
        w1 = np.zeros((lay.hidden, lay.ciphertexts * period))
        w1[: self.n_hidden, : self.n_features] = self.W1
        # The periodic sum adds S/Q copies of every input; dividing the weights by S/Q makes it
        # their average (and the scale S/Q times larger keeps the weights' precision).
        w1 *= period / slots
        slot = np.arange(slots)
        self._single_w1: list[list[list[sealapi.Plaintext | None]]] = []
        for mu in range(lay.ciphertexts):
            per_baby = []
            for j1 in range(lay.baby):
                per_giant = []
                for j2 in range(lay.giant):
                    # Product slot p is rotated by j2*b*P onto output slot q = p - j2*b*P, where it
                    # is summed with the periodic input at q + (j1 + b*j2)*P: hidden unit q // R,
                    # feature (q + j*P) mod Q of ciphertext mu.
                    q = (slot - j2 * giant_step) % slots
                    feature = mu * period + (q + (j1 + lay.baby * j2) * window) % period
                    values = w1[q // copy, feature]
                    # A zero plaintext would make SEAL's product transparent: skip the term.
                    per_giant.append(self._encode(values, self.single_w1_scale, 0) if np.any(values) else None)
                per_baby.append(per_giant)
            self._single_w1.append(per_baby)
        filled = [j2 for per_baby in self._single_w1 for per_giant in per_baby for j2, p in enumerate(per_giant) if p]
        if not filled:
            raise ValueError("layer 1 has no non-zero weight")
        # Horner over the giant steps starts at the highest block with a term: one rotation per block below it.
        self._giant_top = max(filled)
        hidden = slot // copy
        b1 = np.zeros(lay.hidden)
        b1[: self.n_hidden] = self.b1
        self._single_b1 = self._encode(b1[hidden], self.single_hidden_scale, 1)
        # Layer 2 reads hidden unit c at the slots c*R + r with r <= R - P (each computed from the
        # one periodic input) and r = k (mod s), for output k: W2[k, c] spread evenly over them, so
        # the final sum over r = k (mod s) averages their rescale noise. Every other slot, the mixed
        # ones at the end of each copy included, gets weight zero. One layer: the identity.
        r = slot % copy
        k = r % lay.out_period
        clean = r <= copy - window
        per_class = np.bincount(np.arange(copy - window + 1) % lay.out_period, minlength=lay.out_period)
        w2 = np.zeros((lay.hidden, lay.out_period))
        if self.two_layers:
            self._beta_plain = self._encode(self.beta, self.single_hidden_scale, 1)
            w2[: self.n_hidden, : self.n_outputs] = self.W2.T
            # The client sums S/s slots per output: each carries that share of the bias.
            b2 = np.zeros(lay.out_period)
            b2[: self.n_outputs] = self.b2 * lay.out_period / slots
            self._single_b2 = self._encode(b2[slot % lay.out_period], self.single_output_scale, 2)
        else:
            w2[np.arange(self.n_hidden), np.arange(self.n_hidden)] = 1.0
            self._single_b2 = None
        values = np.where(clean, w2[hidden, k] / np.maximum(per_class[k], 1), 0.0)
        self._single_w2 = self._encode(values, self.single_w2_scale, 1)
        uses = lay.rotation_uses(slots)
        if lay.giant_step():
            uses[lay.giant_step()] -= (lay.giant - 1) - self._giant_top
        self._publish_rotations(uses)
        self._compile_result_mask(2, lay.out_period)

    def _compile_batch(self) -> None:
        moduli = self.moduli[0]
        self._dense1 = ModularDense(np.round(self.W1 * self.w1_scale), moduli)
        self._b1_residues = self._constant_residues(self.b1, self.hidden_scale, moduli)
        if self.two_layers:
            self._beta_residues = self._constant_residues(np.array([self.beta]), self.hidden_scale, moduli)
            self._dense2 = ModularDense(np.round(self.W2 * self.w2_scale), moduli)
            self._b2_residues = self._constant_residues(self.b2, self.product_scale, moduli)

    @staticmethod
    def _constant_residues(values: np.ndarray, scale: float, moduli: list[int]) -> np.ndarray:
        """round(v * scale) mod q for each value and prime: a constant polynomial in NTT form."""
        ints = [round(float(v) * scale) for v in values]
        return np.array([[i % q for q in moduli] for i in ints], dtype=np.uint64)  # (values, primes)

    # --- description -------------------------------------------------------------------------
    def spec(self) -> EncryptionSpec:
        slots = self.runtime.slots
        depth = 3 if self.two_layers else 1
        return EncryptionSpec(
            ckks=self.runtime.params,
            input_scale_bits=self.input_scale_bits,
            n_features=self.n_features,
            n_outputs=self.n_outputs,
            relin_keys_needed=self.two_layers,
            layouts={
                SINGLE: LayoutSpec(
                    SINGLE,
                    capacity=1,
                    rotation_steps=self.single_steps,
                    rotation_uses=self.single_rotation_uses,
                    period=self.layout.period,
                    method="periodic-packed",
                    packing=self.layout.to_json(),
                    scale_bits=self.single_input_bits,
                    rows_charged=self.single_rows_charged,
                    encoding=SLOT_SUMS,
                    result_period=self.layout.out_period,
                ),
                BATCH: LayoutSpec(
                    BATCH, capacity=slots, method="modular-matmul", seeded=False, rows_charged=self.batch_rows_charged
                ),
            },
            extra={"multiplicative_depth": depth, "plan": self.plan()},
        )

    def plan(self) -> dict:
        lay, n = self.layout, self.runtime.params.poly_modulus_degree
        rot = list(self.single_steps)
        single_ops = _single_ops(lay, self.runtime.slots, self.two_layers)
        batch_ops = [{"op": "modular_matmul", "shape": [self.n_hidden, self.n_features], "level": 0}]
        if self.two_layers:
            batch_ops += [
                {"op": "coefficientwise_product", "count": self.n_hidden, "level": 0},
                {"op": "modular_matmul", "shape": [self.n_outputs, self.n_hidden], "level": 0},
                {"op": "relinearize", "count": self.n_outputs, "level": 0},
                {"op": "rescale", "count": self.n_outputs, "level": 0},
                {"op": "rescale", "count": self.n_outputs, "level": 1},
                {"op": "rerandomize", "count": self.n_outputs, "level": 2},
            ]
        else:
            batch_ops += [
                {"op": "rescale", "count": self.n_hidden, "level": 0},
                {"op": "rerandomize", "count": self.n_hidden, "level": 1},
            ]
        return {
            "layers": ["dense", "x*(x+beta)", "dense"] if self.two_layers else ["dense"],
            "shape": [self.n_features, self.n_hidden] + ([self.n_outputs] if self.two_layers else []),
            "coeff_modulus": [int(q) for q in self.moduli[0]],
            "scales_log2": {
                "single_input": self.single_input_bits,
                "input": self.input_scale_bits,
                "layer1_weights": math.log2(self.w1_scale),
                **({"layer2_weights": math.log2(self.w2_scale)} if self.two_layers else {}),
                "output": round(math.log2(self.output_scale), 3),
                "single_output": round(math.log2(self.single_output_scale), 3),
            },
            "rotation_steps": rot,
            "galois_elements": [galois_element(s, n) for s in rot],
            "single": {
                "packing": lay.to_json(),
                "rotations": lay.rotations(self.runtime.slots),
                "ops": single_ops,
                "estimated_ms": round(_estimated_ms(single_ops), 1),
                "rows_answered": self.single_rows_answered,
            },
            "batch": {"ops": batch_ops, "rows_answered": self.batch_rows_answered},
        }

    def required_galois_elements(self, layout: str) -> list[int]:
        if layout != SINGLE:
            return []
        return [galois_element(s, self.runtime.params.poly_modulus_degree) for s in self.single_steps]

    def plaintext(self, x: np.ndarray) -> np.ndarray:
        """The outputs for preprocessed features x (rows, n_features): dense, x*(x+beta), dense."""
        h = np.atleast_2d(x) @ self.W1.T + self.b1
        if not self.two_layers:
            return h
        return (h * (h + self.beta)) @ self.W2.T + self.b2

    # --- single layout -----------------------------------------------------------------------
    @property
    def single_ciphertexts(self) -> int:
        return self.layout.ciphertexts

    def check_input(self, ct: sealapi.Ciphertext, what: str, layout: str | None = SINGLE) -> None:
        """A single-layout input ciphertext (batch inputs are checked by parse_batch_input).

        `layout` mirrors LinearPlan.check_input; a network has one single-layout scale.
        """
        self._check_fresh(ct, what, self.single_input_scale, self.single_input_bits)

    def _rotate_and_sum(self, acc: sealapi.Ciphertext, steps, rotator: Rotator) -> None:
        for step in steps:
            self.runtime.evaluator.add_inplace(acc, rotator.rotated(acc, step))

    def _layer1(self, cts: list[sealapi.Ciphertext], rotator: Rotator) -> sealapi.Ciphertext:
        """Steps 1-2 of the module docstring, up to the window sum: T at level 0."""
        ev, lay = self.runtime.evaluator, self.layout
        babies = []
        for ct in cts:  # checked by evaluate_single before the server's encryption of zero was added
            periodic = ct
            for step in lay.periodic_steps(self.runtime.slots):
                summed = sealapi.Ciphertext()  # out of place: the caller's ciphertext stays as sent
                ev.add(periodic, rotator.rotated(periodic, step), summed)
                periodic = summed
            copies = [periodic]
            for j in range(1, lay.baby):
                low = j & -j
                copies.append(rotator.rotated(copies[j - low], low * lay.window))
            babies.append(copies)
        # Horner over the giant steps: acc = A_0 + rot(A_1 + rot(A_2 + ..., g), g) with
        # A_j2 = sum over ciphertexts and baby steps of (baby copy) * W1 plaintext (j1, j2).
        giant_step = lay.giant_step()
        acc = None
        for j2 in reversed(range(self._giant_top + 1)):
            if acc is not None:
                acc = rotator.rotated(acc, giant_step)
            for mu, copies in enumerate(babies):
                for j1, copy in enumerate(copies):
                    plain = self._single_w1[mu][j1][j2]
                    if plain is None:
                        continue
                    term = sealapi.Ciphertext()
                    ev.multiply_plain(copy, plain, term)
                    if acc is None:
                        acc = term
                    else:
                        ev.add_inplace(acc, term)
        return acc

    single_results = 1

    def evaluate_single(self, cts: list[sealapi.Ciphertext], keys) -> list[sealapi.Ciphertext]:
        ev, lay = self.runtime.evaluator, self.layout
        if len(cts) != lay.ciphertexts:
            raise EvaluationError(f"one sample takes {lay.ciphertexts} ciphertexts, got {len(cts)}")
        for mu, ct in enumerate(cts):
            self.check_input(ct, f"input ciphertext {mu}")
        rotator = self._rotator(keys)
        acc = self._layer1([self._rerandomized_input(ct, keys) for ct in cts], rotator)
        # The window sum before the rescale: after it, each step would add up the rescale noise
        # of twice as many slots (measured: twice the error for one step, for 25% less time).
        self._rotate_and_sum(acc, lay.window_steps(), rotator)
        ev.rescale_to_next_inplace(acc)  # z at 2^26 (two layers): the square then fits two primes
        ev.add_plain_inplace(acc, self._single_b1)
        if self.two_layers:
            shifted = sealapi.Ciphertext()
            ev.add_plain(acc, self._beta_plain, shifted)
            ev.multiply_inplace(acc, shifted)
            ev.relinearize_inplace(acc, keys.relin)
        ev.multiply_plain_inplace(acc, self._single_w2)
        ev.rescale_to_next_inplace(acc)
        if self._single_b2 is not None:
            ev.add_plain_inplace(acc, self._single_b2)
        ev.add_plain_inplace(acc, self._output_mask(acc.scale))  # step 5
        return [acc]

    # --- batch layout ------------------------------------------------------------------------
    def parse_batch_input(self, blob: bytes, what: str) -> seal_raw.RawCiphertext:
        return self._parse_coefficients(blob, what, self.input_scale, self.input_scale_bits)

    def _add_constant(self, c0: np.ndarray, residues: np.ndarray, prime: int, q: int) -> None:
        """c0 (rows, N) += residues[:, prime] per row, mod q (a constant polynomial in NTT form)."""
        c0 += residues[:, prime].reshape(-1, 1)
        np.subtract(c0, np.uint64(q), out=c0, where=c0 >= q)

    def _batch_prime(self, inputs: list[seal_raw.RawCiphertext], prime: int, out: np.ndarray) -> bool:
        """The whole network on one RNS prime's coefficients; writes out[:, :, prime, :]."""
        n = self.runtime.params.poly_modulus_degree
        q = self.moduli[0][prime]
        limbs = self._dense1.gather(prime, [raw.data[:, prime, :] for raw in inputs])
        if limbs is None:
            return False
        h = self._dense1.apply(prime, limbs).reshape(self.n_hidden, 2, n)
        self._add_constant(h[:, 0], self._b1_residues, prime, q)
        if not self.two_layers:
            out[:, :, prime, :] = h
            return True
        shifted0 = h[:, 0].copy()
        beta = np.broadcast_to(self._beta_residues, (self.n_hidden, len(self.moduli[0])))
        self._add_constant(shifted0, beta, prime, q)
        # (h0, h1) x (h0 + beta, h1): a ciphertext product is coefficient-wise in NTT form.
        z = np.empty((self.n_hidden, 3, n), dtype=np.uint64)
        z[:, 0] = mulmod_vector(h[:, 0], shifted0, q)
        cross = mulmod_vector(h[:, 0], h[:, 1], q) + mulmod_vector(h[:, 1], shifted0, q)
        z[:, 1] = np.where(cross >= q, cross - np.uint64(q), cross)
        z[:, 2] = mulmod_vector(h[:, 1], h[:, 1], q)
        y = self._dense2.apply(prime, self._dense2.gather(prime, list(z))).reshape(self.n_outputs, 3, n)
        self._add_constant(y[:, 0], self._b2_residues, prime, q)
        out[:, :, prime, :] = y
        return True

    def evaluate_batch(self, inputs: list[seal_raw.RawCiphertext], rows: int, keys,
                       threads: int = DEFAULT_BATCH_THREADS) -> list[sealapi.Ciphertext]:
        if len(inputs) != self.n_features:
            raise EvaluationError(f"batch layout needs {self.n_features} ciphertexts per chunk, got {len(inputs)}")
        n = self.runtime.params.poly_modulus_degree
        moduli = self.moduli[0]
        size = 3 if self.two_layers else 2
        out = np.empty((self.n_outputs, size, len(moduli), n), dtype=np.uint64)
        # Primes are independent until the end; numpy and BLAS release the GIL, so a second thread
        # overlaps one prime's element-wise passes with another's matrix products.
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            valid = list(pool.map(lambda prime: self._batch_prime(inputs, prime, out), range(len(moduli))))
        if not all(valid):
            raise EvaluationError("ciphertext coefficients lie outside their modulus")
        scale = self.product_scale if self.two_layers else self.hidden_scale
        ev = self.runtime.evaluator
        results = []
        for k in range(self.n_outputs):
            ct = self._ciphertext(out[k], 0, scale)
            if self.two_layers:
                ev.relinearize_inplace(ct, keys.relin)
                ev.rescale_to_next_inplace(ct)
            ev.rescale_to_next_inplace(ct)
            results.append(ct)
        return results
