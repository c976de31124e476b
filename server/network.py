"""Compiled plans for shallow networks (dense -> x*(x+beta) -> dense, or one dense layer) on CKKS.

Parameters: N=8192, three 45-bit data primes [q0, qa, qb] and a 60-bit special prime
(195 bits <= 218). Inputs come at scale 2^s, weights at 2^a and 2^b (all chosen per model
so that the integer weights fit the modular matrix products below), and nothing is
rescaled until the end: 2*(s+a)+b bits of scale fit the 135-bit level-0 modulus, and
two rescales (dropping qb and qa) bring the outputs down to ~2^30 under q0. Fewer
primes than one-per-layer means smaller ciphertexts and cheaper key switching.

Single layout ("packed", no input rotation, no masking): the client sends m ciphertexts
in which slot j = (t, c, k) — block t of B = H*s slots, hidden index c < H, stride index
k < s — holds input feature i = (mu*G + t)*u + (k mod u). Layer 1 is m plaintext
products, then rotate-and-sum over the u-window and over the G blocks: slot (t, c, k)
then holds hidden unit c, for every t and k <= s-u. The activation works slot-wise.
Layer 2 multiplies slot (c, k) by W2[k, c] and rotates-and-sums over c (steps s, 2s, ...):
every slot then holds output k, and slots with k >= n_out hold zero. No slot of the
result carries a partial sum, so nothing but the outputs is readable.

Batch layout: ciphertext i holds feature i of up to N/2 rows. The whole network runs on
the ciphertexts' NTT coefficients with numpy: layer 1 and layer 2 as modular matrix
products (server.modmath), the activation as coefficient-wise products of ciphertext
pairs (a ciphertext product is pointwise in NTT form). SEAL is called only at the end,
to relinearize and rescale each output: n_out key switches for the whole batch.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tenseal.sealapi as sealapi

from protocol import seal_io, seal_raw
from protocol.packing import PackedLayout
from protocol.params import CKKSParams, galois_element
from protocol.spec import BATCH, SINGLE, EncryptionSpec, LayoutSpec

from .engine import EvaluationError, SealRuntime, next_power_of_two
from .modmath import ModularDense, mulmod_vector

NETWORK_PARAMS = CKKSParams(8192, (45, 45, 45, 60))
LEVEL0_BITS, LEVEL1_BITS = 135, 90
# The single layout encodes weights as slot vectors, whose rounding error is ~sqrt(N)/scale per
# slot (a constant, as in the batch layout, rounds one coefficient only), so it uses its own,
# larger weight scales and a smaller input scale.
SINGLE_INPUT_BITS, SINGLE_W1_BITS, SINGLE_W2_MAX_BITS = 24, 25, 30
# Integer weights of at most this many bits keep each limb product of server.modmath exact with
# two 23-bit limbs of a 45-bit coefficient (23 + 19 + log2(1024) = 52).
WEIGHT_BITS_LAYER1, WEIGHT_BITS_LAYER2 = 19, 20
MAX_SINGLE_CIPHERTEXTS = 64
# Server milliseconds on this machine (N=8192): a rotation at level 0 and at level 1, and one more
# input ciphertext (load a seeded ciphertext, multiply, add). The packing minimizes their sum.
ROTATION_COST_TOP, ROTATION_COST_LOW, CIPHERTEXT_COST = 3.5, 2.5, 3.0
# Per-operation costs (ms) behind the plan's estimate, measured with `python -m benchmarks`.
OP_COST_MS = {
    ("load_seeded_ciphertext", 0): 2.3,
    ("multiply_plain", 0): 0.35,
    ("add", 0): 0.1,
    ("rotate", 0): 4.0,
    ("multiply_relinearize", 0): 6.0,
    ("rescale", 0): 1.2,
    ("multiply_plain", 1): 0.25,
    ("add", 1): 0.08,
    ("rotate", 1): 2.5,
    ("rescale", 1): 0.8,
}


def choose_packed_layout(n_in: int, n_hidden: int, n_out: int | None, slots: int) -> PackedLayout:
    """The packing with the least estimated server time (rotations) for at most 64 input ciphertexts."""
    hidden = next_power_of_two(n_hidden)
    best = None
    strides = [1] if n_out is None else [next_power_of_two(n_out) << e for e in range(3)]
    for stride in strides:
        block = hidden * stride
        if block > slots:
            continue
        blocks = slots // block
        max_group = stride if n_out is None else stride - n_out + 1
        if n_out is None and hidden > 1:
            max_group = 1  # a single layer with several outputs: a u-window would mix hidden units
        group = 1
        while group <= max_group:
            m = math.ceil(n_in / (blocks * group))
            top = int(math.log2(group)) + int(math.log2(blocks))
            low = int(math.log2(hidden)) if n_out else 0
            cost = ROTATION_COST_TOP * top + ROTATION_COST_LOW * low + CIPHERTEXT_COST * m
            if m <= MAX_SINGLE_CIPHERTEXTS and (best is None or cost < best[0]):
                best = (cost, PackedLayout(m, block, hidden, stride, group, blocks))
            group *= 2
    if best is None:
        raise ValueError(f"a {n_in}-{n_hidden}-{n_out} network does not pack into {slots} slots")
    return best[1]


def _scale_bits(weights: np.ndarray, target_bits: int) -> int:
    """Scale exponent that makes round(weights * 2^bits) fit target_bits bits (sign aside)."""
    largest = float(np.max(np.abs(weights))) or 1.0
    return int(np.clip(target_bits - 1 - math.ceil(math.log2(largest)), 10, 30))


class NetworkPlan:
    """dense1 [-> act -> dense2], compiled for both layouts."""

    batch_reads_coefficients = True

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
        data = runtime.context.first_context_data()
        self.levels, self.moduli = [], []
        while data is not None:
            self.levels.append(data.parms_id())
            self.moduli.append([m.value() for m in data.parms().coeff_modulus()])
            data = data.next_context_data()
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
        self._seal_version = seal_raw.seal_version()
        self.single_input_scale = 2.0**SINGLE_INPUT_BITS
        self.single_w1_scale = 2.0**SINGLE_W1_BITS
        self.single_hidden_scale = self.single_input_scale * self.single_w1_scale
        if self.two_layers:
            act_bits = 2 * (SINGLE_INPUT_BITS + SINGLE_W1_BITS) - qb.bit_length()
            room = LEVEL1_BITS - act_bits - math.ceil(math.log2(max(bound, 1.0))) - 2
            if room < 16:
                raise ValueError("the single layout has no room for layer-2 weights at this output bound")
            self.single_w2_scale = 2.0 ** min(SINGLE_W2_MAX_BITS, room)
        self._compile_single()
        self._compile_batch()

    # --- compilation -------------------------------------------------------------------------
    def _encode(self, values: np.ndarray | float, scale: float, level: int) -> sealapi.Plaintext:
        plain = sealapi.Plaintext()
        if isinstance(values, np.ndarray):
            self.runtime.encoder.encode(values.astype(np.float64).tolist(), self.levels[level], scale, plain)
        else:
            self.runtime.encoder.encode(float(values), self.levels[level], scale, plain)
        return plain

    def _compile_single(self) -> None:
        slots, lay = self.runtime.slots, self.layout
        feature = lay.input_index(slots)
        hidden = lay.hidden_index(slots)
        W1 = np.zeros((lay.hidden, self.n_features + 1))
        W1[: self.n_hidden, : self.n_features] = self.W1
        safe_feature = np.where(feature < self.n_features, feature, self.n_features)  # points at a zero column
        self._single_w1 = [
            self._encode(W1[hidden, safe_feature[mu]], self.single_w1_scale, 0) for mu in range(lay.ciphertexts)
        ]
        b1 = np.zeros(lay.hidden)
        b1[: self.n_hidden] = self.b1
        self._single_b1 = self._encode(b1[hidden], self.single_hidden_scale, 0)
        self.single_steps = lay.rotation_steps(self.two_layers)
        if self.two_layers:
            self._beta_plain = self._encode(self.beta, self.single_hidden_scale, 0)
            act_scale = self.single_hidden_scale**2 / self.moduli[0][2]  # after relinearizing and dropping qb
            k = lay.stride_index(slots)
            W2 = np.zeros((lay.stride, lay.hidden))
            W2[: self.n_outputs, : self.n_hidden] = self.W2
            self._single_w2 = self._encode(W2[k, hidden], self.single_w2_scale, 1)
            b2 = np.zeros(lay.stride)
            b2[: self.n_outputs] = self.b2
            self._single_b2 = self._encode(b2[k], act_scale * self.single_w2_scale, 1)

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
                    method="packed",
                    packing=self.layout.to_json(),
                    scale_bits=SINGLE_INPUT_BITS,
                ),
                BATCH: LayoutSpec(BATCH, capacity=slots, method="modular-matmul", seeded=False),
            },
            extra={"multiplicative_depth": depth, "plan": self.plan()},
        )

    def plan(self) -> dict:
        lay, n = self.layout, self.runtime.params.poly_modulus_degree
        rot = list(self.single_steps)
        first = len(lay.rotation_steps(False))
        single_ops = [
            {"op": "load_seeded_ciphertext", "count": lay.ciphertexts, "level": 0},
            {"op": "multiply_plain", "count": lay.ciphertexts, "level": 0},
            {"op": "add", "count": lay.ciphertexts - 1 + first + 1, "level": 0},
            {"op": "rotate", "count": first, "level": 0},
        ]
        batch_ops = [{"op": "modular_matmul", "shape": [self.n_hidden, self.n_features], "level": 0}]
        if self.two_layers:
            single_ops += [
                {"op": "multiply_relinearize", "count": 1, "level": 0},
                {"op": "rescale", "count": 1, "level": 0},
                {"op": "multiply_plain", "count": 1, "level": 1},
                {"op": "rotate", "count": len(rot) - first, "level": 1},
                {"op": "add", "count": len(rot) - first + 1, "level": 1},
                {"op": "rescale", "count": 1, "level": 1},
            ]
            batch_ops += [
                {"op": "coefficientwise_product", "count": self.n_hidden, "level": 0},
                {"op": "modular_matmul", "shape": [self.n_outputs, self.n_hidden], "level": 0},
                {"op": "relinearize", "count": self.n_outputs, "level": 0},
                {"op": "rescale", "count": self.n_outputs, "level": 0},
                {"op": "rescale", "count": self.n_outputs, "level": 1},
            ]
        else:
            single_ops.append({"op": "rescale", "count": 1, "level": 0})
            batch_ops.append({"op": "rescale", "count": self.n_hidden, "level": 0})
        return {
            "layers": ["dense", "x*(x+beta)", "dense"] if self.two_layers else ["dense"],
            "shape": [self.n_features, self.n_hidden] + ([self.n_outputs] if self.two_layers else []),
            "coeff_modulus": [int(q) for q in self.moduli[0]],
            "scales_log2": {
                "single_input": SINGLE_INPUT_BITS,
                "input": self.input_scale_bits,
                "layer1_weights": math.log2(self.w1_scale),
                **({"layer2_weights": math.log2(self.w2_scale)} if self.two_layers else {}),
                "output": round(math.log2(self.output_scale), 3),
            },
            "rotation_steps": rot,
            "galois_elements": [galois_element(s, n) for s in rot],
            "single": {
                "packing": lay.to_json(),
                "ops": single_ops,
                "estimated_ms": round(
                    sum(OP_COST_MS.get((o["op"], o["level"]), 0.0) * o["count"] for o in single_ops), 1
                ),
            },
            "batch": {"ops": batch_ops},
        }

    def required_galois_elements(self, layout: str) -> list[int]:
        if layout != SINGLE:
            return []
        return [galois_element(s, self.runtime.params.poly_modulus_degree) for s in self.single_steps]

    # --- single layout -----------------------------------------------------------------------
    @property
    def single_ciphertexts(self) -> int:
        return self.layout.ciphertexts

    def check_input(self, ct: sealapi.Ciphertext, what: str) -> None:
        """A single-layout input ciphertext (batch inputs are checked by parse_batch_input)."""
        if ct.size() != 2 or not ct.is_ntt_form():
            raise EvaluationError(f"{what} is not a fresh ciphertext")
        if ct.parms_id() != self.levels[0]:
            raise EvaluationError(f"{what} is not at the first data level of the model's parameters")
        if not math.isclose(ct.scale, self.single_input_scale, rel_tol=1e-9):
            raise EvaluationError(f"{what} has scale 2^{math.log2(ct.scale):.2f}, expected 2^{SINGLE_INPUT_BITS}")

    def _rotate_and_sum(self, acc: sealapi.Ciphertext, steps, galois) -> None:
        ev = self.runtime.evaluator
        for step in steps:
            rotated = sealapi.Ciphertext()
            ev.rotate_vector(acc, step, galois, rotated)
            ev.add_inplace(acc, rotated)

    def evaluate_single(self, cts: list[sealapi.Ciphertext], keys) -> sealapi.Ciphertext:
        ev = self.runtime.evaluator
        if len(cts) != self.layout.ciphertexts:
            raise EvaluationError(f"one sample takes {self.layout.ciphertexts} ciphertexts, got {len(cts)}")
        acc = None
        for ct, plain in zip(cts, self._single_w1, strict=True):
            term = sealapi.Ciphertext()
            ev.multiply_plain(ct, plain, term)
            if acc is None:
                acc = term
            else:
                ev.add_inplace(acc, term)
        first = self.layout.rotation_steps(False)
        self._rotate_and_sum(acc, first, keys.galois)
        ev.add_plain_inplace(acc, self._single_b1)
        if not self.two_layers:
            ev.rescale_to_next_inplace(acc)
            return acc
        shifted = sealapi.Ciphertext()
        ev.add_plain(acc, self._beta_plain, shifted)
        ev.multiply_inplace(acc, shifted)
        ev.relinearize_inplace(acc, keys.relin)
        ev.rescale_to_next_inplace(acc)  # layer 2 and its rotations then run on two primes
        ev.multiply_plain_inplace(acc, self._single_w2)
        self._rotate_and_sum(acc, self.single_steps[len(first) :], keys.galois)
        ev.add_plain_inplace(acc, self._single_b2)
        ev.rescale_to_next_inplace(acc)
        return acc

    # --- batch layout ------------------------------------------------------------------------
    def parse_batch_input(self, blob: bytes, what: str) -> seal_raw.RawCiphertext:
        try:
            raw = seal_raw.parse(blob, self.runtime.params.poly_modulus_degree, self.moduli[0], what)
        except seal_raw.RawCiphertextError as exc:
            raise EvaluationError(str(exc)) from None
        if list(raw.parms_id) != list(self.levels[0]):
            raise EvaluationError(f"{what} is not at the first data level of the model's parameters")
        if not math.isclose(raw.scale, self.input_scale, rel_tol=1e-9):
            raise EvaluationError(f"{what} has scale 2^{math.log2(raw.scale):.2f}, expected 2^{self.input_scale_bits}")
        return raw

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

    def evaluate_batch(self, inputs: list[seal_raw.RawCiphertext], rows: int, keys) -> list[sealapi.Ciphertext]:
        if len(inputs) != self.n_features:
            raise EvaluationError(f"batch layout needs {self.n_features} ciphertexts per chunk, got {len(inputs)}")
        n = self.runtime.params.poly_modulus_degree
        moduli = self.moduli[0]
        size = 3 if self.two_layers else 2
        out = np.empty((self.n_outputs, size, len(moduli), n), dtype=np.uint64)
        # Primes are independent until the end; numpy and BLAS release the GIL, so two threads
        # overlap one prime's element-wise passes with another's matrix products.
        with ThreadPoolExecutor(max_workers=2) as pool:
            valid = list(pool.map(lambda prime: self._batch_prime(inputs, prime, out), range(len(moduli))))
        if not all(valid):
            raise EvaluationError("ciphertext coefficients lie outside their modulus")
        scale = self.product_scale if self.two_layers else self.hidden_scale
        ev = self.runtime.evaluator
        results = []
        for k in range(self.n_outputs):
            ct = seal_io.load(
                sealapi.Ciphertext,
                self.runtime.context,
                seal_raw.build(self.levels[0], scale, out[k], self._seal_version),
                "output",
            )
            if self.two_layers:
                ev.relinearize_inplace(ct, keys.relin)
                ev.rescale_to_next_inplace(ct)
            ev.rescale_to_next_inplace(ct)
            results.append(ct)
        return results
