"""CKKS evaluation of linear models on ciphertexts, through SEAL's evaluator.

Parameters: one prime of 60 bits at N=4096 and nothing else. A linear model has
multiplicative depth one, so nothing is rescaled: the product of the input scale and the
weight scale stays below the prime, which keeps every bit of it for precision. Nothing
rotates or relinearizes, so there is no special prime either: the public key that
re-randomizes results lives at the ciphertexts' own level, where SEAL encrypts zero without
the modulus switch a special prime costs (1.2 ms instead of 1.8 ms per result on the reference
machine), and it is half the size (60 of the 109 bits N=4096 allows at 128-bit security).

Single layout: whoever holds the secret key decrypts all of a result, and a client may
encrypt anything, so a result must hold the outputs and nothing else readable.
- The client encodes its row in polynomial *coefficients* (protocol.coefficients): feature
  i times 2^x in coefficient i. Output k's weights sit in one plaintext polynomial,
  reversed (w_0 - sum_i w_i X^(N-i), since X^N = -1), so the constant coefficient of the
  product is exactly w_k . x over coefficients 0..n-1, whatever the client put elsewhere.
  No rotation, so no Galois key: one plaintext product per output.
- The server then adds a polynomial whose constant coefficient is the bias and whose every
  other coefficient is uniform mod q: decrypted, the result is the output and noise.
- Outputs come in separate ciphertexts. With several outputs in one product, output k
  would also read the input's coefficients n*k' away with the weights of output k - k'
  (a product is a convolution): a crafted input could mix rows.
- batch: ciphertext j holds feature j of up to N/2 rows; output k is a sum of
  scalar multiplies, no rotation and no Galois key. Slots are independent, so a chunk
  answers at most N/2 rows.

Complex slots (batch): CKKS slots are complex and nothing here projects on the real part, so
a client that encrypts X + iY gets f(X) + i(f(Y) - b), two rows' worth; quotas charge that.
Coefficients are real: a single-layout row is one row.

Every result leaves the server re-randomized with the client's public key
(SealRuntime.rerandomize): without it, the result's second polynomial is the input's
times the weights, and one division gives them back.
"""

from __future__ import annotations

import math

import numpy as np
import tenseal.sealapi as sealapi

from heserve.engine import seal_io, seal_memory
from heserve.engine.coefficients import CoefficientCodec
from heserve.engine.errors import EngineError
from heserve.engine.params import CKKSParams
from heserve.engine.spec import BATCH, COEFFICIENTS, SINGLE, EncryptionSpec, LayoutSpec
from heserve.engine.zero_encryption import ZeroEncryptor

LINEAR_PARAMS = CKKSParams(4096, (60,))
FULL_WORD_PRIME_BITS = 58
DATA_PRIME_BITS = 60
# Keep this many bits of the data prime free above |output| * scale (sign, rounding, noise).
HEADROOM_BITS = 2
MAX_INPUT_SCALE_BITS = 30


class EvaluationError(EngineError):
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
        # Decided once here, not per result: the levels whose results are written uncompressed from
        # SEAL's memory (zstd saves only unused high bits; with primes this large, ~6 % at most).
        # This also runs seal_memory's once-per-process layout check at start-up, not on a request.
        self._raw_levels: frozenset[tuple[int, ...]] = frozenset()
        if seal_memory.available():
            levels, data = set(), self.context.first_context_data()
            while data is not None:
                if min(q.bit_count() for q in data.parms().coeff_modulus()) >= FULL_WORD_PRIME_BITS:
                    levels.add(tuple(data.parms_id()))
                data = data.next_context_data()
            self._raw_levels = frozenset(levels)

    def rerandomize(self, ct: sealapi.Ciphertext, zeros: ZeroEncryptor) -> None:
        """Add a fresh encryption of zero under the client's public key.

        A result's second polynomial is otherwise a function of the client's own input
        polynomials and of the weights only (for a plaintext product: their product, which one
        division inverts). After this it is pseudorandom to the client (ring LWE), and the
        decryption changes by a small noise of the client's key and fresh randomness alone.
        """
        self.evaluator.add_inplace(ct, zeros.zero(ct.parms_id(), ct.scale))

    def serialize_result(self, ct: sealapi.Ciphertext) -> bytes:
        """A result ciphertext as SEAL serializes it: uncompressed where its primes fill most of
        their 64-bit words (zstd would only cost time), SEAL's zstd framing otherwise."""
        if tuple(ct.parms_id()) in self._raw_levels:
            return seal_memory.dump(ct)
        return seal_io.dump(ct)

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
    single_rows_answered = 1
    # Batch slots are complex: X + iY yields w.X + b and w.Y, two rows' worth. Quotas charge that.
    complex_rows = 2
    single_steps: tuple[int, ...] = ()

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
        self._compile_coefficients()
        self._compile_batch()

    @property
    def single_results(self) -> int:
        """Result ciphertexts per single-layout row: one per output."""
        return self.n_outputs

    @property
    def single_rows_charged(self) -> int:
        return self.single_rows_answered  # coefficients are real: no second row in an imaginary part

    def plaintext(self, x: np.ndarray) -> np.ndarray:
        """The outputs for preprocessed features x (rows, n_features)."""
        return np.atleast_2d(x) @ self.weights.T + self.bias

    # --- compilation -------------------------------------------------------------------
    def _compile_coefficients(self) -> None:
        n = self.runtime.params.poly_modulus_degree
        if self.n_features > n:
            raise ValueError(f"{self.n_features} features do not fit the {n} coefficients of one ciphertext")
        self.codec = CoefficientCodec(self.runtime.context)
        if len(self.codec.moduli) != 1:
            raise ValueError("the coefficient layout reads its outputs at a single-prime level")
        q = self.codec.moduli[0]
        reversed_positions = (n - np.arange(1, self.n_features)) % n
        self._single_weights = []
        self._single_bias = []
        for k in range(self.n_outputs):
            polynomial = np.zeros(n)
            polynomial[0] = self.weights[k, 0]
            polynomial[reversed_positions] = -self.weights[k, 1:]
            if not np.any(np.rint(polynomial * self.weight_scale)):
                raise ValueError("an output with all-zero weights cannot be evaluated")
            self._single_weights.append(self.codec.encode(polynomial, self.weight_scale))
            self._single_bias.append([round(float(self.bias[k]) * self.output_scale) % q])

    def _compile_batch(self) -> None:
        # Zero weights are skipped: SEAL refuses a product with a zero plaintext.
        self._batch_terms = [
            [(j, self.runtime.encode(float(w), self.weight_scale)) for j, w in enumerate(row) if w != 0.0]
            for row in self.weights
        ]
        if any(not terms for terms in self._batch_terms):
            raise ValueError("an output with all-zero weights cannot be evaluated")
        # Full chunks' bias, made once; a partial chunk's is made for its request and not kept, so
        # that no request's time depends on what rows counts other tenants sent before it.
        self._full_chunk_bias = self._encode_batch_bias(self.runtime.slots)

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
                    method="coefficient-product",
                    encoding=COEFFICIENTS,
                    results_per_row=self.single_results,
                    rows_charged=self.single_rows_charged,
                ),
                BATCH: LayoutSpec(
                    BATCH, capacity=slots, method="scalar-multiply-add", rows_charged=self.batch_rows_charged
                ),
            },
            extra={
                "weight_scale_bits": self.weight_scale_bits,
                "multiplicative_depth": 1,
            },
        )

    def required_galois_elements(self, layout: str) -> list[int]:
        return []  # neither layout rotates

    # --- evaluation ------------------------------------------------------------------------
    def check_input(self, ct: sealapi.Ciphertext, what: str, layout: str | None = None) -> None:
        """A fresh ciphertext at the first level and the input scale (the same in both layouts)."""
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

    def evaluate_single(self, cts: list[sealapi.Ciphertext], keys=None) -> list[sealapi.Ciphertext]:
        """One ciphertext per output: the output in the constant coefficient, uniform noise elsewhere."""
        ct = cts[0]
        self.check_input(ct, "the single-layout ciphertext", SINGLE)
        ev = self.runtime.evaluator
        results = []
        for weights, bias in zip(self._single_weights, self._single_bias, strict=True):
            out = sealapi.Ciphertext()
            ev.multiply_plain(ct, weights, out)
            ev.add_plain_inplace(out, self.codec.plaintext(self.codec.uniform_except_constant(bias), out.scale))
            results.append(out)
        return results

    def _batch_bias(self, rows: int) -> list[sealapi.Plaintext]:
        return self._full_chunk_bias if rows == self.runtime.slots else self._encode_batch_bias(rows)

    def _encode_batch_bias(self, rows: int) -> list[sealapi.Plaintext]:
        # Bias only in the slots of real rows, so unused slots decrypt to zero.
        plaintexts = []
        for b in self.bias:
            vector = np.zeros(self.runtime.slots)
            vector[:rows] = b
            plaintexts.append(self.runtime.encode(vector, self.output_scale))
        return plaintexts

    def evaluate_batch(self, cts: list[sealapi.Ciphertext], rows: int, keys=None, threads: int = 1
                       ) -> list[sealapi.Ciphertext]:
        # One thread: SEAL's scalar products hold the GIL, a second would only wait for it.
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
