"""CKKS evaluation of linear models on ciphertexts, through SEAL's evaluator.

Parameters: one data prime of 60 bits plus a 49-bit special prime at N=4096
(109 bits, the 128-bit ceiling). A linear model has multiplicative depth one, so
nothing is rescaled: the product of the input scale and the weight scale stays
below the data prime, which keeps every bit of it for precision and keeps
ciphertexts, keys and rotations at a single RNS prime (the cheapest there is).

Layouts:
- single, one output: the input is tiled with period d (a power of two >= n);
  multiply by the tiled weights and rotate-and-sum over log2(d) steps. Each window
  of d consecutive slots then covers every feature once, so *every* slot holds the
  full inner product: no slot carries a partial sum that would reveal a weight.
- single, several outputs: diagonal method, rotating the plaintext products (one
  rotation per non-zero diagonal). Diagonals are zero outside the output slots, so
  every other slot of the result is zero: nothing but the outputs is readable.
- batch: ciphertext j holds feature j of up to N/2 rows; output k is a sum of
  scalar multiplies, no rotation and no Galois key.
"""

from __future__ import annotations

import math

import numpy as np
import tenseal.sealapi as sealapi

from protocol.params import CKKSParams, galois_element
from protocol.spec import BATCH, SINGLE, EncryptionSpec, LayoutSpec

LINEAR_PARAMS = CKKSParams(4096, (60, 49))
DATA_PRIME_BITS = 60
# Keep this many bits of the data prime free above |output| * scale (sign, rounding, noise).
HEADROOM_BITS = 2
MAX_INPUT_SCALE_BITS = 30


class EvaluationError(ValueError):
    """Ciphertexts that cannot be evaluated (wrong level, scale, size, layout or keys)."""


class SealRuntime:
    """SEAL objects for one parameter set, shared by every model and key in a worker."""

    def __init__(self, params: CKKSParams):
        self.params = params
        self.context = params.seal_context()
        self.encoder = sealapi.CKKSEncoder(self.context)
        self.evaluator = sealapi.Evaluator(self.context)
        self.slots = self.encoder.slot_count()
        self.first_parms_id = self.context.first_parms_id()

    def encode(self, values: np.ndarray | float, scale: float) -> sealapi.Plaintext:
        plain = sealapi.Plaintext()
        if isinstance(values, np.ndarray):
            self.encoder.encode(values.astype(np.float64).tolist(), self.first_parms_id, scale, plain)
        else:
            self.encoder.encode(float(values), self.first_parms_id, scale, plain)
        return plain


def next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def choose_scales(output_bound: float, weight_max: float) -> tuple[int, int]:
    """Input and weight scale bits such that output_bound * 2^(x+w) fits the data prime."""
    out_bits = max(0, math.ceil(math.log2(max(output_bound, 1e-9))))
    budget = DATA_PRIME_BITS - 1 - HEADROOM_BITS - out_bits
    x_bits = min(MAX_INPUT_SCALE_BITS, budget // 2 + 4)
    w_bits = budget - x_bits
    if w_bits < 16 or x_bits < 20:
        raise ValueError(f"output bound {output_bound:g} leaves too little precision at N=4096")
    # Encoded weights must stay well inside the data prime as well.
    w_bits = min(w_bits, DATA_PRIME_BITS - 2 - max(0, math.ceil(math.log2(max(weight_max, 1e-9)))))
    return x_bits, w_bits


class LinearPlan:
    """A compiled linear model y = W x + b for both layouts."""

    batch_reads_coefficients = False
    single_ciphertexts = 1

    def __init__(self, weights: np.ndarray, bias: np.ndarray, output_bound: float, runtime: SealRuntime):
        if weights.ndim != 2 or bias.shape != (weights.shape[0],):
            raise ValueError("weights must be (n_outputs, n_features) and bias (n_outputs,)")
        if not np.all(np.isfinite(weights)) or not np.all(np.isfinite(bias)):
            raise ValueError("weights and bias must be finite")
        self.runtime = runtime
        self.weights = weights.astype(np.float64)
        self.bias = bias.astype(np.float64)
        self.n_outputs, self.n_features = weights.shape
        bound = max(output_bound, float(np.max(np.abs(bias))) * 2, 1.0)
        self.input_scale_bits, self.weight_scale_bits = choose_scales(bound, float(np.max(np.abs(weights))))
        self.input_scale = 2.0**self.input_scale_bits
        self.weight_scale = 2.0**self.weight_scale_bits
        self.output_scale = self.input_scale * self.weight_scale
        slots = runtime.slots
        self.period = next_power_of_two(max(self.n_features, self.n_outputs))
        if self.period > slots:
            raise ValueError(f"{self.period} slots needed, only {slots} available")
        if self.n_outputs == 1:
            self.single_method = "rotate-and-sum"
            self.single_steps = tuple(1 << i for i in range(int(math.log2(self.period))))
            self._compile_rotate_and_sum()
        else:
            self.single_method = "diagonal"
            self._compile_diagonals()
        self._compile_batch()

    # --- compilation -------------------------------------------------------------------
    def _compile_rotate_and_sum(self) -> None:
        slots = self.runtime.slots
        row = np.zeros(self.period)
        row[: self.n_features] = self.weights[0]
        self._single_weight = self.runtime.encode(np.tile(row, slots // self.period), self.weight_scale)
        self._single_bias = self.runtime.encode(np.full(slots, self.bias[0]), self.output_scale)

    def _compile_diagonals(self) -> None:
        # y = sum_o rot(Q_o * x, o) with Q_o = diagonal o shifted right by o. The rotations act
        # on the products (scale 2^(x+w)), where key-switching noise is negligible; rotating
        # the fresh input (baby-step giant-step) would add that noise at the input's scale,
        # which with a single 60-bit data prime and a 49-bit special prime costs ~1e-1.
        slots, d = self.runtime.slots, self.period
        padded = np.zeros((d, d))
        padded[: self.n_outputs, : self.n_features] = self.weights
        rows = np.arange(self.n_outputs)
        terms = []
        for offset in range(d):
            diag = np.zeros(slots)
            diag[: self.n_outputs] = padded[rows, (rows + offset) % d]
            if not np.any(diag):
                continue  # a zero plaintext would make SEAL's result transparent
            terms.append((offset, self.runtime.encode(np.roll(diag, offset), self.weight_scale)))
        self._diagonal_terms = terms
        self.single_steps = tuple(offset for offset, _ in terms if offset)
        bias = np.zeros(slots)
        bias[: self.n_outputs] = self.bias
        self._single_bias = self.runtime.encode(bias, self.output_scale)

    def _compile_batch(self) -> None:
        # Zero weights are skipped: SEAL refuses a product with a zero plaintext.
        self._batch_terms = [
            [(j, self.runtime.encode(float(w), self.weight_scale)) for j, w in enumerate(row) if w != 0.0]
            for row in self.weights
        ]
        if any(not terms for terms in self._batch_terms):
            raise ValueError("an output with all-zero weights cannot be evaluated")
        self._batch_bias_cache: dict[int, list[sealapi.Plaintext]] = {}

    # --- description ---------------------------------------------------------------------
    def spec(self) -> EncryptionSpec:
        slots = self.runtime.slots
        return EncryptionSpec(
            ckks=self.runtime.params,
            input_scale_bits=self.input_scale_bits,
            n_features=self.n_features,
            n_outputs=self.n_outputs,
            layouts={
                SINGLE: LayoutSpec(
                    SINGLE, capacity=1, rotation_steps=self.single_steps, period=self.period, method=self.single_method
                ),
                BATCH: LayoutSpec(BATCH, capacity=slots, method="scalar-multiply-add"),
            },
            extra={"weight_scale_bits": self.weight_scale_bits, "multiplicative_depth": 1},
        )

    def required_galois_elements(self, layout: str) -> list[int]:
        if layout != SINGLE:
            return []
        n = self.runtime.params.poly_modulus_degree
        return [galois_element(s, n) for s in self.single_steps]

    # --- evaluation ------------------------------------------------------------------------
    def check_input(self, ct: sealapi.Ciphertext, what: str) -> None:
        if ct.size() != 2:
            raise EvaluationError(f"{what} has {ct.size()} polynomials, expected a fresh ciphertext (2)")
        if ct.parms_id() != self.runtime.first_parms_id:
            raise EvaluationError(f"{what} is not at the first data level of the model's parameters")
        if not ct.is_ntt_form():
            raise EvaluationError(f"{what} is not in NTT form")
        if not math.isclose(ct.scale, self.input_scale, rel_tol=1e-9):
            raise EvaluationError(
                f"{what} has scale 2^{math.log2(ct.scale):.2f}, the model expects 2^{self.input_scale_bits}"
            )

    def evaluate_single(self, cts: list[sealapi.Ciphertext], keys) -> sealapi.Ciphertext:
        ct, galois_keys = cts[0], keys.galois
        ev = self.runtime.evaluator
        if self.n_outputs == 1:
            acc = sealapi.Ciphertext()
            ev.multiply_plain(ct, self._single_weight, acc)
            for step in self.single_steps:
                rotated = sealapi.Ciphertext()
                ev.rotate_vector(acc, step, galois_keys, rotated)
                ev.add_inplace(acc, rotated)
        else:
            acc = None
            for offset, plain in self._diagonal_terms:
                term = sealapi.Ciphertext()
                ev.multiply_plain(ct, plain, term)
                if offset:
                    rotated = sealapi.Ciphertext()
                    ev.rotate_vector(term, offset, galois_keys, rotated)
                    term = rotated
                if acc is None:
                    acc = term
                else:
                    ev.add_inplace(acc, term)
        ev.add_plain_inplace(acc, self._single_bias)
        return acc

    def _batch_bias(self, rows: int) -> list[sealapi.Plaintext]:
        # Bias only in the slots of real rows, so unused slots decrypt to zero.
        cached = self._batch_bias_cache.get(rows)
        if cached is None:
            cached = []
            for b in self.bias:
                vector = np.zeros(self.runtime.slots)
                vector[:rows] = b
                cached.append(self.runtime.encode(vector, self.output_scale))
            if len(self._batch_bias_cache) > 64:
                self._batch_bias_cache.clear()
            self._batch_bias_cache[rows] = cached
        return cached

    def evaluate_batch(self, cts: list[sealapi.Ciphertext], rows: int, keys=None) -> list[sealapi.Ciphertext]:
        if len(cts) != self.n_features:
            raise EvaluationError(f"batch layout needs {self.n_features} ciphertexts per chunk, got {len(cts)}")
        ev = self.runtime.evaluator
        outputs = []
        for terms, bias in zip(self._batch_terms, self._batch_bias(rows), strict=False):
            acc = None
            for j, plain in terms:
                term = sealapi.Ciphertext()
                ev.multiply_plain(cts[j], plain, term)
                if acc is None:
                    acc = term
                else:
                    ev.add_inplace(acc, term)
            ev.add_plain_inplace(acc, bias)
            outputs.append(acc)
        return outputs
