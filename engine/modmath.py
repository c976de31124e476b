"""Exact modular matrix products through float64 BLAS.

A dense layer in the batch layout is, prime by prime, out = W_int @ C mod q, where C
holds the input ciphertexts' NTT coefficients (< q) and W_int the weights scaled to
integers. float64 products are exact while every partial sum stays below 2^53, so W
(small) and, when q is large, C are split into limbs small enough for that; a few BLAS
calls do the work of tens of thousands of separate SEAL multiply-adds.
"""

from __future__ import annotations

import math

import numpy as np

EXACT_BITS = 52


def mulmod_scalar(a: np.ndarray, b: int, q: int) -> np.ndarray:
    """(a * b) mod q for uint64 a < q < 2^50, with a float quotient estimate and one correction."""
    if q >= 1 << 50:
        raise ValueError("moduli above 50 bits are not supported here")
    b %= q
    if q < 1 << 26:  # the product is exact in float64
        return reduce_float(a.astype(np.float64) * float(b), q)
    estimate = a.astype(np.float64)
    estimate *= float(b) / float(q)
    np.floor(estimate, out=estimate)
    return _correct(a * np.uint64(b), estimate, q)


def mulmod_vector(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """(a * b) mod q elementwise for uint64 a, b < q < 2^50."""
    if q >= 1 << 50:
        raise ValueError("moduli above 50 bits are not supported here")
    estimate = a.astype(np.float64)
    estimate *= b
    estimate *= 1.0 / q
    np.floor(estimate, out=estimate)
    with np.errstate(over="ignore"):
        return _correct(a * b, estimate, q)


def _correct(product: np.ndarray, estimate: np.ndarray, q: int) -> np.ndarray:
    """product - floor-estimate * q, brought into [0, q): the estimate is off by at most one, so the
    difference (exact modulo 2^64) lies in (-q, 2q). In place: these arrays are large."""
    quotient = estimate.astype(np.uint64)
    with np.errstate(over="ignore"):
        quotient *= np.uint64(q)
        product -= quotient
    r = product.view(np.int64)
    r[r < 0] += q
    r[r >= q] -= q
    return r.view(np.uint64)


def _limbs(values: np.ndarray, bits: int, count: int) -> list[np.ndarray]:
    """Split non-negative float64 integers into `count` limbs of `bits` bits (exact float arithmetic)."""
    out, rest, base = [], values, float(1 << bits)
    for _ in range(count - 1):
        high = np.floor(rest * (1.0 / base))
        out.append(rest - high * base)
        rest = high
    out.append(rest)
    return out


def reduce_float(values: np.ndarray, q: int) -> np.ndarray:
    """values mod q for float64 integers below 2^53 in magnitude, as uint64 (faster than np.mod)."""
    return _residues_float(values, q).astype(np.uint64)


def _residues_float(values: np.ndarray, q: int, exact: bool = True) -> np.ndarray:
    """values mod q for float64 integers below 2^53 in magnitude, as float64 in [0, q); with
    `exact` False, a representative in (-q, 2q) (the float quotient may be off by one)."""
    quotient = values * (1.0 / q)
    np.floor(quotient, out=quotient)
    quotient *= float(q)
    np.subtract(values, quotient, out=quotient)
    if exact:
        quotient[quotient < 0] += q
        quotient[quotient >= q] -= q
    return quotient


class ModularDense:
    """out = weights @ C mod q for every prime of a level, weights fixed at construction."""

    def __init__(self, weights: np.ndarray, moduli: list[int]):
        self.moduli = moduli
        n = weights.shape[1]
        log_n = max(1, math.ceil(math.log2(n)))
        w_bits = max(1, math.ceil(math.log2(float(np.max(np.abs(weights))) + 1)))
        self.plans = []
        for q in moduli:
            q_bits = q.bit_length()
            c_count = 1 if q_bits + log_n + 8 <= EXACT_BITS else 2
            c_bits = math.ceil(q_bits / c_count)
            w_limb = EXACT_BITS - c_bits - log_n
            w_count = max(1, math.ceil(w_bits / w_limb))
            sign, magnitude = np.sign(weights), np.abs(weights)
            w_limbs = [sign * limb for limb in _limbs(magnitude, w_limb, w_count)]
            shifts = [[pow(2, a * w_limb + b * c_bits, q) for b in range(c_count)] for a in range(w_count)]
            # Where every shifted partial residue (in (-q, 2q), not brought into [0, q)), plus the
            # unshifted product (below 2^52), stays below 2^53, the limbs recombine in float64 and
            # one exact reduction ends the sum (two limbs of a 27-bit prime: 2^52 + 2q * 2^19).
            exponents = [[a * w_limb + b * c_bits for b in range(c_count)] for a in range(w_count)]
            in_float = sum((2 * q) << k for row in exponents for k in row if k) + (1 << EXACT_BITS) < 1 << 53
            self.plans.append((q, c_bits, c_count, w_limbs, shifts, exponents if in_float else None))

    def gather(self, prime: int, rows: list[np.ndarray]) -> list[np.ndarray] | None:
        """Limb matrices (float64, n x cols) of uint64 input rows (any shape, flattened into cols);
        None if a value is not below q."""
        q, c_bits, c_count = self.plans[prime][:3]
        cols = rows[0].size
        limbs = [np.empty((len(rows), *rows[0].shape)) for _ in range(c_count)]
        mask, shift = np.uint64((1 << c_bits) - 1), np.uint64(c_bits)
        for i, row in enumerate(rows):
            if row.max() >= q:
                return None
            if c_count == 1:
                limbs[0][i] = row
            else:
                np.bitwise_and(row, mask, out=limbs[0][i], casting="unsafe")
                np.right_shift(row, shift, out=limbs[1][i], casting="unsafe")
        return [limb.reshape(len(rows), cols) for limb in limbs]

    def apply(self, prime: int, coeffs: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """coeffs: float64 (n, cols) integers in [0, q), or its limbs from gather(); uint64 (rows, cols) mod q."""
        q, c_bits, c_count, w_limbs, shifts, exponents = self.plans[prime]
        if isinstance(coeffs, list):
            c_limbs = coeffs
        else:
            c_limbs = _limbs(coeffs, c_bits, c_count) if c_count > 1 else [coeffs]
        if exponents is not None:
            acc = None
            for a, w in enumerate(w_limbs):
                for b, c in enumerate(c_limbs):
                    part = w @ c
                    if exponents[a][b]:
                        part = _residues_float(part, q, exact=False)
                        part *= float(1 << exponents[a][b])
                    if acc is None:
                        acc = part
                    else:
                        acc += part
            return reduce_float(acc, q)
        total = None
        for a, w in enumerate(w_limbs):
            for b, c in enumerate(c_limbs):
                part = reduce_float(w @ c, q)
                if shifts[a][b] != 1:
                    part = mulmod_scalar(part, shifts[a][b], q)
                if total is None:
                    total = part
                else:
                    total += part
                    np.subtract(total, np.uint64(q), out=total, where=total >= q)
        return total
