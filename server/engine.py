"""CKKS evaluation of linear models on ciphertexts, through SEAL's evaluator.

Parameters: one data prime of 60 bits plus a 49-bit special prime at N=4096
(109 bits, the 128-bit ceiling). A linear model has multiplicative depth one, so
nothing is rescaled: the product of the input scale and the weight scale stays
below the data prime, which keeps every bit of it for precision and keeps
ciphertexts, keys and rotations at a single RNS prime (the cheapest there is).

Single layout: whoever holds the secret key decrypts every slot of the result, and a
client may encrypt anything, so each result must be a function of one input vector,
the same in every slot. Rotations only ever act on products (scale 2^(x+w)): rotating
the fresh input would add the key-switching noise of a 49-bit special prime under a
60-bit data prime at the input's scale (~1e-1 after a few rotations).
- one output: the client tiles its row with period d (a power of two >= n). The server
  multiplies by the weights, tiled and scaled by d/S, and rotate-and-sums over *every*
  step 1, 2, ..., S/2: a sum over the whole rotation group, so every slot holds the
  same w.X + b with X the average of the S/d periods, whatever the client sent (one
  honest row per ciphertext). Rotate-and-sum over 1..d/2 alone would leave slot j with
  the window x[j..j+d-1], i.e. up to S different rows in one ciphertext.
- several outputs: diagonal method over the first period only. Output k, in slot k,
  reads slots 0..n-1 through diagonals with offsets -(n_out-1)..n-1 (one rotation of the
  product per non-zero diagonal), so every output reads the same n input slots; other
  slots of the result hold only rounding residue of the zero weights times the input.
- batch: ciphertext j holds feature j of up to N/2 rows; output k is a sum of
  scalar multiplies, no rotation and no Galois key. Slots are independent, so a chunk
  answers at most N/2 rows.

Complex slots: CKKS slots are complex and nothing here projects on the real part, so a
client that encrypts X + iY gets f(X) + i(f(Y) - b): a single-layout row reveals what
two honest rows would (projecting needs a conjugation key, which the spec cannot ask for).
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


def choose_scales(
    output_bound: float, weight_max: float, averaged_bits: int = 0, input_minus_weight_bits: int | None = None
) -> tuple[int, int]:
    """Input and weight scale bits such that output_bound * 2^(x+w) fits the data prime.

    averaged_bits: the result sums 2^averaged_bits products per output (tiled input, tiled
    weights scaled down by as much), which takes as many bits of the prime; the input's
    noise averages out over the copies, the weights' rounding (periodic, so the same in
    every copy) does not. input_minus_weight_bits: how to split what is left (x - w).
    """
    out_bits = max(0, math.ceil(math.log2(max(output_bound, 1e-9))))
    budget = DATA_PRIME_BITS - 1 - HEADROOM_BITS - out_bits - averaged_bits
    if input_minus_weight_bits is None:
        x_bits = min(MAX_INPUT_SCALE_BITS, budget // 2 + 4)
    else:
        x_bits = min(MAX_INPUT_SCALE_BITS, (budget + input_minus_weight_bits) // 2)
    w_bits = budget - x_bits
    if w_bits < 16 or x_bits + averaged_bits / 2 < 20:
        raise ValueError(f"output bound {output_bound:g} leaves too little precision at N=4096")
    # Encoded weights must stay well inside the data prime as well.
    w_bits = min(w_bits, DATA_PRIME_BITS - 2 - max(0, math.ceil(math.log2(max(weight_max, 1e-9)))))
    return x_bits, w_bits


class RowCharges:
    """How many rows a tenant's quota is charged: what a ciphertext *can* answer, not what is claimed.

    A plan sets `single_rows_answered` (input vectors one single-layout result reads) and
    `complex_rows` (CKKS slots are complex: an input X + iY is worth that many real rows).
    """

    runtime: SealRuntime
    single_rows_answered = 1
    complex_rows = 1

    @property
    def batch_rows_answered(self) -> int:
        """Honest rows one batch chunk can answer: every slot is a row of its own."""
        return self.runtime.slots

    @property
    def single_rows_charged(self) -> int:
        return self.single_rows_answered * self.complex_rows

    @property
    def batch_rows_charged(self) -> int:
        return self.batch_rows_answered * self.complex_rows


class LinearPlan(RowCharges):
    """A compiled linear model y = W x + b for both layouts."""

    batch_reads_coefficients = False
    single_ciphertexts = 1
    # Honest rows one single-layout row can answer (every result slot reads one input vector).
    single_rows_answered = 1
    # CKKS slots are complex: X + iY yields w.X + b and w.Y, two rows' worth. Quotas charge that.
    complex_rows = 2

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
        weight_max = float(np.max(np.abs(weights)))
        self.input_scale_bits, self.weight_scale_bits = choose_scales(bound, weight_max)
        self.input_scale = 2.0**self.input_scale_bits
        self.weight_scale = 2.0**self.weight_scale_bits
        self.output_scale = self.input_scale * self.weight_scale
        slots = runtime.slots
        self.period = next_power_of_two(max(self.n_features, self.n_outputs))
        if self.period > slots:
            raise ValueError(f"{self.period} slots needed, only {slots} available")
        if self.n_outputs == 1:
            self.single_method = "periodic-sum"
            # Error ~ |x| 2^-w (weight rounding) + |w| 2^-x (input noise), with |x| ~ sqrt(n) for
            # standardized features: x - w = log2(|w| / sqrt(n)) + 3.6 balances them (the constant
            # measured on the shipped models).
            spread = round(3.6 + math.log2(max(float(np.linalg.norm(weights)), 1e-9) / math.sqrt(self.n_features)))
            spread = int(np.clip(spread, -4, 12))
            while True:
                copies = slots // self.period
                try:
                    x_bits, w_bits = choose_scales(bound, weight_max, int(math.log2(copies)), spread)
                    break
                except ValueError:
                    # Fewer, longer periods: less of the prime goes to summing copies (a row of a
                    # few features with large outputs would otherwise leave the weights no bits).
                    if copies == 1:
                        raise
                    self.period *= 2
            self._compile_periodic_sum(x_bits, w_bits, copies)
        else:
            self.single_method = "diagonal"
            x_bits, w_bits = self.input_scale_bits, self.weight_scale_bits
            self._compile_diagonals()
        self.single_input_scale_bits = x_bits
        self.single_input_scale = 2.0**x_bits
        self.single_weight_scale_bits = w_bits
        self._compile_batch()

    # --- compilation -------------------------------------------------------------------
    def _compile_periodic_sum(self, x_bits: int, w_bits: int, copies: int) -> None:
        # Slot j of the result is the sum over every slot: w . (sum of the periods) * (d/S) + b,
        # the same value everywhere. The weights carry the 1/copies of the average; encoding
        # them at a scale `copies` times larger keeps every bit of their precision.
        slots = self.runtime.slots
        self.single_steps = tuple(1 << i for i in range(int(math.log2(slots))))
        row = np.zeros(self.period)
        row[: self.n_features] = self.weights[0] / copies
        weight_scale = 2.0**w_bits * copies
        self._single_weight = self.runtime.encode(np.tile(row, copies), weight_scale)
        self._single_output_scale = 2.0**x_bits * weight_scale
        self._single_bias = self.runtime.encode(np.full(slots, self.bias[0]), self._single_output_scale)

    def _compile_diagonals(self) -> None:
        # y_k = sum_o rot(Q_o * x, o)[k] = sum_o W[k, k+o] x[k+o] with offsets o in
        # -(n_out-1)..n-1, so output k reads exactly slots 0..n-1, like every other output:
        # the usual cyclic diagonals (o >= 0 only) would make output k read x[k..k+d-1], a
        # different window, i.e. a different row, per output. The rotations act on the
        # products (scale 2^(x+w)), where key-switching noise is negligible; rotating the
        # fresh input (baby-step giant-step) would add that noise at the input's scale,
        # which with a single 60-bit data prime and a 49-bit special prime costs ~1e-1.
        slots = self.runtime.slots
        terms = []
        rows = np.arange(self.n_outputs)
        for offset in range(1 - self.n_outputs, self.n_features):
            columns = rows + offset
            inside = (columns >= 0) & (columns < self.n_features)
            diag = np.zeros(slots)
            diag[rows[inside]] = self.weights[rows[inside], columns[inside]]
            if not np.any(diag):
                continue  # a zero plaintext would make SEAL's result transparent
            terms.append((offset, self.runtime.encode(np.roll(diag, offset), self.weight_scale)))
        self._diagonal_terms = terms
        self.single_steps = tuple(offset for offset, _ in terms if offset)
        self._single_output_scale = self.output_scale
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
                    SINGLE,
                    capacity=1,
                    rotation_steps=self.single_steps,
                    period=self.period,
                    method=self.single_method,
                    scale_bits=self.single_input_scale_bits,
                    rows_charged=self.single_rows_charged,
                ),
                BATCH: LayoutSpec(
                    BATCH, capacity=slots, method="scalar-multiply-add", rows_charged=self.batch_rows_charged
                ),
            },
            extra={
                "weight_scale_bits": self.weight_scale_bits,
                "single_weight_scale_bits": self.single_weight_scale_bits,
                "multiplicative_depth": 1,
            },
        )

    def required_galois_elements(self, layout: str) -> list[int]:
        if layout != SINGLE:
            return []
        n = self.runtime.params.poly_modulus_degree
        return [galois_element(s, n) for s in self.single_steps]

    # --- evaluation ------------------------------------------------------------------------
    def check_input(self, ct: sealapi.Ciphertext, what: str, layout: str | None = None) -> None:
        """A fresh ciphertext at the first level, at the input scale of `layout` (None: of either)."""
        if ct.size() != 2:
            raise EvaluationError(f"{what} has {ct.size()} polynomials, expected a fresh ciphertext (2)")
        if ct.parms_id() != self.runtime.first_parms_id:
            raise EvaluationError(f"{what} is not at the first data level of the model's parameters")
        if not ct.is_ntt_form():
            raise EvaluationError(f"{what} is not in NTT form")
        scales = {SINGLE: self.single_input_scale_bits, BATCH: self.input_scale_bits}
        wanted = [scales[layout]] if layout else sorted(set(scales.values()))
        if not any(math.isclose(ct.scale, 2.0**bits, rel_tol=1e-9) for bits in wanted):
            expected = " or ".join(f"2^{bits}" for bits in wanted)
            raise EvaluationError(f"{what} has scale 2^{math.log2(ct.scale):.2f}, the model expects {expected}")

    def evaluate_single(self, cts: list[sealapi.Ciphertext], keys) -> sealapi.Ciphertext:
        ct, galois_keys = cts[0], keys.galois
        self.check_input(ct, "the single-layout ciphertext", SINGLE)
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
        for j, ct in enumerate(cts):
            self.check_input(ct, f"batch ciphertext {j}", BATCH)
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
