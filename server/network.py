"""Compiled plans for shallow networks (dense -> x*(x+beta) -> dense, or one dense layer) on CKKS.

Parameters: N=8192, data primes [q0 45 bits, q_w2 25, q_act 30, q_w1 25] and a 60-bit
special prime (185 bits <= 218). Inputs come at scale 2^30; each dense layer's weights
are encoded at the scale of the prime that is rescaled away right after it, so every
rescale brings the scale back to ~2^30 and the output is read at level q0.

Single layout ("packed", no input rotation, no masking): the client sends m ciphertexts
in which slot j = (t, c, k) — block t of B = H*s slots, hidden index c < H, stride index
k < s — holds input feature i = (mu*G + t)*u + (k mod u). Layer 1 is m plaintext
products, then rotate-and-sum over the u-window and over the G blocks: slot (t, c, k)
then holds hidden unit c, for every t and k <= s-u. The activation works slot-wise.
Layer 2 multiplies slot (c, k) by W2[k, c] and rotates-and-sums over c (steps s, 2s, ...):
every slot then holds output k, and slots with k >= n_out hold zero. No slot of the
result carries a partial sum, so nothing but the outputs is readable.

Batch layout: ciphertext i holds feature i of up to N/2 rows. Layer 1 is a modular
matrix product on the ciphertexts' coefficients (server.modmath) instead of n_out*n_in
SEAL calls; the activation and layer 2 use SEAL.
"""

from __future__ import annotations

import math

import numpy as np
import tenseal.sealapi as sealapi

from protocol import seal_io, seal_raw
from protocol.packing import PackedLayout
from protocol.params import CKKSParams, galois_element
from protocol.spec import BATCH, SINGLE, EncryptionSpec, LayoutSpec

from .engine import EvaluationError, SealRuntime
from .modmath import ModularDense

NETWORK_PARAMS = CKKSParams(8192, (45, 25, 30, 25, 60))
INPUT_SCALE_BITS = 30
MAX_SINGLE_CIPHERTEXTS = 64
# Server milliseconds on this machine (N=8192): a rotation at level 1 and at level 3, and one more
# input ciphertext (load a seeded ciphertext, multiply, add). The packing minimizes their sum.
ROTATION_COST_TOP, ROTATION_COST_LOW, CIPHERTEXT_COST = 3.0, 0.8, 3.0


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def choose_packed_layout(n_in: int, n_hidden: int, n_out: int | None, slots: int) -> PackedLayout:
    """The packing with the least estimated server time (rotations) for at most 64 input ciphertexts."""
    hidden = _pow2(n_hidden)
    best = None
    strides = [1] if n_out is None else [_pow2(n_out) << e for e in range(3)]
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
        context = runtime.context
        data = context.first_context_data()
        self.levels, self.moduli = [], []
        while data is not None:
            self.levels.append(data.parms_id())
            self.moduli.append([m.value() for m in data.parms().coeff_modulus()])
            data = data.next_context_data()
        top = self.moduli[0]  # [q0, q_w2, q_act, q_w1]
        self.q_w1, self.q_act = float(top[-1]), float(top[-2])
        self.q_w2 = float(top[-3]) if self.two_layers else None
        self.input_scale = 2.0**INPUT_SCALE_BITS
        self.hidden_scale = self.input_scale  # rescaled by q_w1 after multiplying at scale q_w1
        self.act_scale = self.hidden_scale**2 / self.q_act
        self.output_level = 3 if self.two_layers else 1
        bound = float(layers[-1].get("output_bound", 1.0))
        out_scale = self.act_scale if self.two_layers else self.hidden_scale
        if bound * out_scale * 2 >= top[0]:
            raise ValueError(f"outputs up to {bound:g} do not fit the {top[0].bit_length()}-bit last prime")
        self.layout = choose_packed_layout(self.n_features, self.n_hidden, self.n_outputs if self.two_layers else None,
                                           runtime.slots)
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
        self._single_w1 = [self._encode(W1[hidden, safe_feature[mu]], self.q_w1, 0)
                           for mu in range(lay.ciphertexts)]
        b1 = np.zeros(lay.hidden)
        b1[: self.n_hidden] = self.b1
        self._single_b1 = self._encode(b1[hidden], self.hidden_scale, 1)
        self.single_steps = lay.rotation_steps(self.two_layers)
        if self.two_layers:
            self._beta_plain = self._encode(self.beta, self.hidden_scale, 1)
            k = lay.stride_index(slots)
            W2 = np.zeros((lay.stride, lay.hidden))
            W2[: self.n_outputs, : self.n_hidden] = self.W2
            self._single_w2 = self._encode(W2[k, hidden], self.q_w2, 2)
            b2 = np.zeros(lay.stride)
            b2[: self.n_outputs] = self.b2
            self._single_b2 = self._encode(b2[k], self.act_scale, 3)

    def _compile_batch(self) -> None:
        self._dense1 = ModularDense(np.round(self.W1 * self.q_w1), self.moduli[0])
        self._b1_int = [round(float(b) * self.input_scale * self.q_w1) for b in self.b1]
        self._seal_version = seal_raw.seal_version()
        if self.two_layers:
            self._w2_consts: dict[float, sealapi.Plaintext] = {}
            # Constant plaintexts at level 2 are 2 primes x N x 8 bytes; keep up to 256 MB of them.
            self._w2_cache_limit = (256 << 20) // (2 * self.runtime.params.poly_modulus_degree * 8)
            self._b2_plains = [self._encode(float(b), self.act_scale * self.q_w2, 2) for b in self.b2]

    # --- description -------------------------------------------------------------------------
    def spec(self) -> EncryptionSpec:
        slots = self.runtime.slots
        depth = 3 if self.two_layers else 1
        return EncryptionSpec(
            ckks=self.runtime.params,
            input_scale_bits=INPUT_SCALE_BITS,
            n_features=self.n_features,
            n_outputs=self.n_outputs,
            relin_keys_needed=self.two_layers,
            layouts={
                SINGLE: LayoutSpec(SINGLE, capacity=1, rotation_steps=self.single_steps, method="packed",
                                   packing=self.layout.to_json()),
                BATCH: LayoutSpec(BATCH, capacity=slots, method="modular-matmul", seeded=False),
            },
            extra={"multiplicative_depth": depth, "plan": self.plan()},
        )

    def plan(self) -> dict:
        lay, n = self.layout, self.runtime.params.poly_modulus_degree
        rot = list(self.single_steps)
        single_ops = [
            {"op": "multiply_plain", "count": lay.ciphertexts, "level": 0},
            {"op": "add", "count": lay.ciphertexts - 1, "level": 0},
            {"op": "rescale", "count": 1, "level": 0},
            {"op": "rotate", "count": len(lay.rotation_steps(False)), "level": 1},
        ]
        batch_ops = [{"op": "modular_matmul", "shape": [self.n_hidden, self.n_features], "level": 0},
                     {"op": "rescale", "count": self.n_hidden, "level": 0}]
        if self.two_layers:
            single_ops += [
                {"op": "multiply_relinearize", "count": 1, "level": 1}, {"op": "rescale", "count": 1, "level": 1},
                {"op": "multiply_plain", "count": 1, "level": 2},
                {"op": "rescale", "count": 1, "level": 2},
                {"op": "rotate", "count": int(math.log2(lay.hidden)), "level": 3},
            ]
            batch_ops += [
                {"op": "multiply_relinearize", "count": self.n_hidden, "level": 1},
                {"op": "rescale", "count": self.n_hidden, "level": 1},
                {"op": "multiply_plain", "count": self.n_outputs * self.n_hidden, "level": 2},
                {"op": "add", "count": self.n_outputs * self.n_hidden, "level": 2},
                {"op": "rescale", "count": self.n_outputs, "level": 2},
            ]
        return {
            "layers": ["dense", "x*(x+beta)", "dense"] if self.two_layers else ["dense"],
            "shape": [self.n_features, self.n_hidden] + ([self.n_outputs] if self.two_layers else []),
            "coeff_modulus": [list(map(int, m)) for m in self.moduli[:1]],
            "rotation_steps": rot,
            "galois_elements": [galois_element(s, n) for s in rot],
            "single": {"packing": lay.to_json(), "ops": single_ops},
            "batch": {"ops": batch_ops},
        }

    def required_galois_elements(self, layout: str) -> list[int]:
        if layout != SINGLE:
            return []
        return [galois_element(s, self.runtime.params.poly_modulus_degree) for s in self.single_steps]

    # --- evaluation --------------------------------------------------------------------------
    def check_input(self, ct: sealapi.Ciphertext, what: str) -> None:
        if ct.size() != 2 or not ct.is_ntt_form():
            raise EvaluationError(f"{what} is not a fresh ciphertext")
        if ct.parms_id() != self.levels[0]:
            raise EvaluationError(f"{what} is not at the first data level of the model's parameters")
        if not math.isclose(ct.scale, self.input_scale, rel_tol=1e-9):
            raise EvaluationError(f"{what} has scale 2^{math.log2(ct.scale):.2f}, expected 2^{INPUT_SCALE_BITS}")

    def _activation_and_layer2_single(self, acc, keys) -> sealapi.Ciphertext:
        ev = self.runtime.evaluator
        shifted = sealapi.Ciphertext()
        ev.add_plain(acc, self._beta_plain, shifted)
        ev.multiply_inplace(acc, shifted)
        ev.relinearize_inplace(acc, keys.relin)
        ev.rescale_to_next_inplace(acc)
        ev.multiply_plain_inplace(acc, self._single_w2)
        ev.rescale_to_next_inplace(acc)  # the rotations below then run on the last prime alone
        for step in self.layout.rotation_steps(True)[len(self.layout.rotation_steps(False)):]:
            rotated = sealapi.Ciphertext()
            ev.rotate_vector(acc, step, keys.galois, rotated)
            ev.add_inplace(acc, rotated)
        ev.add_plain_inplace(acc, self._single_b2)
        return acc

    @property
    def single_ciphertexts(self) -> int:
        return self.layout.ciphertexts

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
        # Rescale first: rotations commute with it and cost less with one prime fewer.
        ev.rescale_to_next_inplace(acc)
        for step in self.layout.rotation_steps(False):
            rotated = sealapi.Ciphertext()
            ev.rotate_vector(acc, step, keys.galois, rotated)
            ev.add_inplace(acc, rotated)
        ev.add_plain_inplace(acc, self._single_b1)
        if not self.two_layers:
            return acc
        return self._activation_and_layer2_single(acc, keys)

    def parse_batch_input(self, blob: bytes, what: str) -> seal_raw.RawCiphertext:
        try:
            raw = seal_raw.parse(blob, self.runtime.params.poly_modulus_degree, self.moduli[0], what)
        except seal_raw.RawCiphertextError as exc:
            raise EvaluationError(str(exc)) from None
        if list(raw.parms_id) != list(self.levels[0]):
            raise EvaluationError(f"{what} is not at the first data level of the model's parameters")
        if not math.isclose(raw.scale, self.input_scale, rel_tol=1e-9):
            raise EvaluationError(f"{what} has scale 2^{math.log2(raw.scale):.2f}, expected 2^{INPUT_SCALE_BITS}")
        return raw

    def _layer1_batch(self, inputs: list[seal_raw.RawCiphertext]) -> list[sealapi.Ciphertext]:
        n = self.runtime.params.poly_modulus_degree
        moduli = self.moduli[0]
        out = np.empty((self.n_hidden, 2, len(moduli), n), dtype=np.uint64)
        for prime, q in enumerate(moduli):
            limbs = self._dense1.gather(prime, [raw.data[:, prime, :] for raw in inputs])
            if limbs is None:
                raise EvaluationError("ciphertext coefficients lie outside their modulus")
            out[:, :, prime, :] = self._dense1.apply(prime, limbs).reshape(self.n_hidden, 2, n)
            # The bias is a constant polynomial: in NTT form, the same value in every coefficient of c0.
            bias = np.asarray([b % q for b in self._b1_int], dtype=np.uint64).reshape(-1, 1)
            c0 = out[:, 0, prime, :]
            c0 += bias
            np.subtract(c0, np.uint64(q), out=c0, where=c0 >= q)
        scale = self.input_scale * self.q_w1
        return [seal_io.load(sealapi.Ciphertext, self.runtime.context,
                             seal_raw.build(self.levels[0], scale, out[c], self._seal_version), "hidden")
                for c in range(self.n_hidden)]

    def evaluate_batch(self, inputs: list[seal_raw.RawCiphertext], rows: int, keys) -> list[sealapi.Ciphertext]:
        if len(inputs) != self.n_features:
            raise EvaluationError(f"batch layout needs {self.n_features} ciphertexts per chunk, got {len(inputs)}")
        ev = self.runtime.evaluator
        hidden = self._layer1_batch(inputs)
        for ct in hidden:
            ev.rescale_to_next_inplace(ct)
        if not self.two_layers:
            return hidden
        # Relinearization is linear, so it is deferred past layer 2: n_outputs key switches
        # instead of n_hidden, with layer 2 working on 3-polynomial ciphertexts meanwhile.
        for ct in hidden:
            shifted = sealapi.Ciphertext()
            ev.add_plain(ct, self._beta_plain, shifted)
            ev.multiply_inplace(ct, shifted)
            ev.rescale_to_next_inplace(ct)
        outputs = []
        for k in range(self.n_outputs):
            acc = None
            for c, ct in enumerate(hidden):
                w = float(self.W2[k, c])
                if w == 0.0:
                    continue
                term = sealapi.Ciphertext()
                ev.multiply_plain(ct, self._w2_constant(w), term)
                if acc is None:
                    acc = term
                else:
                    ev.add_inplace(acc, term)
            if acc is None:
                raise EvaluationError("an output with all-zero weights cannot be evaluated")
            ev.add_plain_inplace(acc, self._b2_plains[k])
            ev.relinearize_inplace(acc, keys.relin)
            ev.rescale_to_next_inplace(acc)
            outputs.append(acc)
        return outputs

    def _w2_constant(self, w: float) -> sealapi.Plaintext:
        plain = self._w2_consts.get(w)
        if plain is None:
            plain = self._encode(w, self.q_w2, 2)
            if len(self._w2_consts) < self._w2_cache_limit:
                self._w2_consts[w] = plain
        return plain
