"""CKKS plaintexts written in polynomial coefficients instead of slots.

A linear model's single-sample layout puts feature i in coefficient i (times 2^s) and the
weights, reversed and negated as X^N = -1 asks, in a plaintext polynomial: the product's
constant coefficient is then w.x, with no rotation and no Galois key (server.engine).

SEAL keeps CKKS plaintexts and ciphertexts in NTT form (the polynomial's values at the
primitive 2N-th roots of unity). tenseal.sealapi exposes SEAL's transform for ciphertexts
only, so a coefficient vector is carried into NTT form as the first polynomial of a
ciphertext built byte by byte. The way back is not needed: the constant coefficient of a
polynomial is the sum of its NTT values divided by N (every root's zeroth power is 1, and
every other power sums to zero over the roots).
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as sealapi

from heserve.engine import seal_io, seal_memory, seal_raw

# Coefficients are carried as int64 before reduction, and must leave room for the sum.
MAX_COEFFICIENT = 2.0**62


class CoefficientCodec:
    """Coefficient-encoded plaintexts at one level (by default the first data level) of a context."""

    def __init__(self, context: sealapi.SEALContext, parms_id: list[int] | None = None):
        self.context = context
        self._evaluator = sealapi.Evaluator(context)
        data = context.get_context_data(parms_id) if parms_id is not None else context.first_context_data()
        parms = data.parms()
        self.parms_id = list(data.parms_id())
        self.moduli = [m.value() for m in parms.coeff_modulus()]
        self.n = parms.poly_modulus_degree()
        self._version = seal_raw.seal_version()
        self._n_inverse = [pow(self.n, -1, q) for q in self.moduli]

    # --- coefficient form -------------------------------------------------------------------
    def residues(self, coefficients: np.ndarray) -> np.ndarray:
        """Signed integer coefficients (at most N, |c| < 2^62), as residues of shape (primes, N)."""
        ints = np.zeros(self.n, dtype=np.int64)
        ints[: len(coefficients)] = coefficients
        return np.stack([np.remainder(ints, q).astype(np.uint64) for q in self.moduli])

    def to_ntt(self, residues: np.ndarray) -> np.ndarray:
        """The NTT form of a coefficient-form polynomial (primes, N), computed by SEAL."""
        return self._transform(residues, to_ntt=True)

    def from_ntt(self, ntt_residues: np.ndarray) -> np.ndarray:
        """The coefficient form of an NTT-form polynomial (primes, N), computed by SEAL."""
        return self._transform(ntt_residues, to_ntt=False)

    def _transform(self, residues: np.ndarray, to_ntt: bool) -> np.ndarray:
        # The second polynomial only keeps SEAL from refusing a "transparent" ciphertext.
        pair = np.stack([residues, np.ones_like(residues)])
        if seal_memory.available():
            ct = seal_memory.ciphertext(self.context, self.parms_id, pair, 1.0, ntt_form=not to_ntt)
            if to_ntt:
                self._evaluator.transform_to_ntt_inplace(ct)
            else:
                self._evaluator.transform_from_ntt_inplace(ct)
            return seal_memory.coefficients(ct)[0].copy()
        blob = seal_raw.build(self.parms_id, 1.0, pair, self._version, ntt_form=not to_ntt)
        ct = seal_io.load(sealapi.Ciphertext, self.context, blob, "polynomial")
        if to_ntt:
            self._evaluator.transform_to_ntt_inplace(ct)
        else:
            self._evaluator.transform_from_ntt_inplace(ct)
        return seal_raw.polynomials(seal_raw.own_uncompressed(seal_io.dump(ct)))[0].copy()

    def plaintext_residues(self, plain: sealapi.Plaintext) -> np.ndarray:
        """The NTT-form residues (primes, N) of a plaintext."""
        if seal_memory.available():
            return seal_memory.plaintext_coefficients(plain).reshape(-1, self.n).copy()
        return seal_raw.plaintext_residues(seal_raw.own_uncompressed(seal_io.dump(plain)), self.n)

    def centred_coefficients(self, plain: sealapi.Plaintext) -> np.ndarray:
        """Every coefficient of a one-prime plaintext, centred mod q (not divided by its scale)."""
        if len(self.moduli) != 1:
            raise ValueError("reading coefficients needs a single-prime level here")
        q = self.moduli[0]
        values = self.from_ntt(self.plaintext_residues(plain))[0].astype(np.float64)
        return np.where(values > q // 2, values - q, values)

    # --- plaintexts --------------------------------------------------------------------------
    def plaintext(self, ntt_residues: np.ndarray, scale: float) -> sealapi.Plaintext:
        """A SEAL plaintext with these NTT-form residues at this level and scale."""
        if seal_memory.available():
            return seal_memory.plaintext(self.parms_id, ntt_residues, scale)
        blob = seal_raw.build_plaintext(self.parms_id, scale, ntt_residues, self._version)
        return seal_io.load(sealapi.Plaintext, self.context, blob, "plaintext")

    def encode(self, values: np.ndarray, scale: float) -> sealapi.Plaintext:
        """values[i] * scale, rounded, in coefficient i (every other coefficient zero)."""
        scaled = np.rint(np.asarray(values, dtype=np.float64).ravel() * scale)
        if scaled.size > self.n:
            raise ValueError(f"{scaled.size} values do not fit {self.n} coefficients")
        if scaled.size and not np.max(np.abs(scaled)) < MAX_COEFFICIENT:
            raise ValueError(f"values times the scale 2^{np.log2(scale):.0f} exceed 2^62")
        return self.plaintext(self.to_ntt(self.residues(scaled.astype(np.int64))), scale)

    def constant_residues(self, plain: sealapi.Plaintext) -> list[int]:
        """The constant coefficient of an NTT-form plaintext, one residue per prime."""
        data = self.plaintext_residues(plain)
        out = []
        for residues, q, n_inverse in zip(data, self.moduli, self._n_inverse, strict=True):
            # Split at 32 bits so that neither partial sum of N values can overflow 64 bits.
            low = int(np.sum(residues & np.uint64(0xFFFFFFFF)))
            high = int(np.sum(residues >> np.uint64(32)))
            out.append(((high << 32) + low) * n_inverse % q)
        return out

    def constant(self, plain: sealapi.Plaintext) -> float:
        """The constant coefficient of a one-prime plaintext, centred and divided by its scale."""
        if len(self.moduli) != 1:
            raise ValueError("reading a coefficient needs a single-prime level here")
        (value,) = self.constant_residues(plain)
        q = self.moduli[0]
        if value > q // 2:
            value -= q
        return value / plain.scale

    # --- masking -----------------------------------------------------------------------------
    def uniform_except_constant(self, constants: list[int]) -> np.ndarray:
        """NTT-form residues of a polynomial whose constant coefficient is `constants` (per prime)
        and whose every other coefficient is uniformly random, from a CSPRNG.

        Uniform NTT values with one of them fixed so that their sum is N * constant: the NTT is a
        bijection, so the coefficients are uniform on the polynomials with that constant term."""
        out = np.empty((len(self.moduli), self.n), dtype=np.uint64)
        for i, (q, constant) in enumerate(zip(self.moduli, constants, strict=True)):
            values = uniform_mod(q, self.n)
            low = int(np.sum(values & np.uint64(0xFFFFFFFF)))
            high = int(np.sum(values >> np.uint64(32)))
            total = (high << 32) + low
            values[0] = (int(values[0]) + self.n * constant - total) % q
            out[i] = values
        return out


def uniform_mod(q: int, count: int) -> np.ndarray:
    """count values uniform in [0, q) from a CSPRNG (engine.randomness), by rejection (no modulo bias)."""
    # Imported here: masks are drawn by the server only, and the SDK does not depend on cryptography.
    from heserve.engine.randomness import random_bytes

    limit = np.uint64(((1 << 64) // q) * q - 1)
    values = np.frombuffer(random_bytes(8 * count), dtype=np.uint64).copy()
    while True:
        rejected = values > limit
        if not rejected.any():
            return values % np.uint64(q)
        values[rejected] = np.frombuffer(random_bytes(8 * int(rejected.sum())), dtype=np.uint64)
