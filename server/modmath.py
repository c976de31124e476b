"""Exact modular matrix products through float64 BLAS.

A dense layer in the batch layout is, prime by prime, out = W_int @ C mod q, where C
holds the input ciphertexts' NTT coefficients (< q) and W_int the weights scaled to
integers. float64 products are exact while every partial sum stays below 2^53, so C
is split into limbs small enough for that; one BLAS call per limb does the work of
tens of thousands of separate SEAL multiply-adds.
"""

from __future__ import annotations

import math

import numpy as np

EXACT_BITS = 52


def mulmod_scalar(a: np.ndarray, b: int, q: int) -> np.ndarray:
    """(a * b) mod q for uint64 a < q < 2^50, with a float quotient estimate and one correction."""
    if q >= 1 << 50:
        raise ValueError("moduli above 50 bits are not supported here")
    if q < 1 << 26:
        return np.mod(a.astype(np.float64) * float(b), float(q)).astype(np.uint64)
    estimate = np.floor(a.astype(np.float64) * (float(b) / float(q))).astype(np.uint64)
    with np.errstate(over="ignore"):
        r = (a * np.uint64(b) - estimate * np.uint64(q)).view(np.int64)
    r = np.where(r < 0, r + q, r)
    r = np.where(r >= q, r - q, r)
    return r.astype(np.uint64)


def matmul_mod(weights: np.ndarray, coeffs: np.ndarray, q: int) -> np.ndarray:
    """weights (rows x n, signed integers as float64) @ coeffs (n x cols, uint64 < q), mod q, as uint64."""
    n = weights.shape[1]
    weight_bits = max(1, math.ceil(math.log2(float(np.max(np.abs(weights))) + 1)))
    limb_bits = EXACT_BITS - weight_bits - max(1, math.ceil(math.log2(n)))
    if limb_bits < 4:
        raise ValueError("weights too large for an exact float64 product")
    limbs = math.ceil(q.bit_length() / limb_bits)
    mask = np.uint64((1 << limb_bits) - 1)
    total = None
    for m in range(limbs):
        part = ((coeffs >> np.uint64(limb_bits * m)) & mask).astype(np.float64)
        reduced = np.mod(weights @ part, float(q)).astype(np.uint64)
        if m:
            reduced = mulmod_scalar(reduced, pow(2, limb_bits * m, q), q)
            total = total + reduced
            total = np.where(total >= q, total - np.uint64(q), total)
        else:
            total = reduced
    return total
