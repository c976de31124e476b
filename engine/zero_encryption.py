"""Fresh encryptions of zero under a client's public key, which every result is re-randomized with.

SEAL's Encryptor.encrypt_zero draws its randomness one coefficient at a time from a Blake2
generator: at N=4096 on one prime (the linear models' parameters) ~0.7 ms, most of a linear
single-sample request's server time, of which the arithmetic (three NTTs) is ~0.2 ms. Here
the same distributions are drawn in bulk from a CSPRNG (engine.randomness): u uniform in
{-1, 0, 1} and two errors from SEAL's centered binomial (the popcount of 42 random bits minus
21, variance 10.5, which is how SEAL 4.1 samples its noise), and SEAL does the arithmetic:
one NTT call for the three small polynomials, a plaintext product with the public key, an
addition: (u*p0 + e0, u*p1 + e1), exactly what SEAL computes for a context without a
special prime. Measured alternating with SEAL's in one run: 0.82-0.87x its time (and
0.69x back to back).

With a special prime (the networks' parameters) SEAL encrypts one level higher and divides
that prime out, which leaves a far smaller noise; redoing that here with the evaluator's
rescaling costs as much as SEAL's own, so SEAL's Encryptor does the work there, as it does
wherever the zero-copy layout is not available (engine.seal_memory).
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as sealapi

from heserve.engine import seal_memory
from heserve.engine.randomness import random_bytes

_CBD_BITS = np.uint64((1 << 42) - 1)
_CBD_MEAN = 21


def ternary(count: int) -> np.ndarray:
    """`count` values uniform in {-1, 0, 1} (int64), by rejection from random bytes."""
    out = np.empty(0, dtype=np.int64)
    while len(out) < count:
        draw = np.frombuffer(random_bytes(count + count // 16 + 16), dtype=np.uint8)
        draw = draw[draw < 255]  # 255 = 3 * 85: no bias
        out = np.concatenate([out, (draw % 3).astype(np.int64) - 1])
    return out[:count]


_BYTE_POPCOUNT = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.int64)


def centered_binomial(count: int) -> np.ndarray:
    """`count` values of SEAL's noise (int64): popcount of 42 random bits minus 21, in [-21, 21]."""
    words = np.frombuffer(random_bytes(8 * count), dtype=np.uint64) & _CBD_BITS
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words).astype(np.int64) - _CBD_MEAN
    # numpy 1.x (which the server extra allows) has no bitwise_count: a byte table, ~3x slower.
    return _BYTE_POPCOUNT[words.view(np.uint8)].reshape(count, 8).sum(axis=1) - _CBD_MEAN


class ZeroEncryptor:
    """Encryptions of zero under one public key, at the data levels of its context."""

    def __init__(self, context: sealapi.SEALContext, public_key: sealapi.PublicKey):
        self._context = context
        self._evaluator = sealapi.Evaluator(context)
        # One copy of the key, whichever path uses it (a worker's key cache counts one).
        bulk = seal_memory.available() and not context.using_keyswitching()
        self._key = seal_memory.coefficients(public_key.data()).copy() if bulk else None
        self._encryptor = sealapi.Encryptor(context, public_key) if self._key is None else None
        if bulk:  # no special prime: a single prime, so one level, the key's own
            self._parms_id = list(context.first_parms_id())
            moduli = [m.value() for m in context.first_context_data().parms().coeff_modulus()]
            self._moduli = np.array(moduli, dtype=np.int64)[None, :, None]  # every prime fits int64

    def zero(self, parms_id: list[int], scale: float) -> sealapi.Ciphertext:
        """A fresh NTT-form encryption of zero at `parms_id`, at `scale`."""
        if self._key is None:
            zero = sealapi.Ciphertext()
            self._encryptor.encrypt_zero(list(parms_id), zero)
            zero.scale = scale
            return zero
        n = self._key.shape[2]
        small = np.stack([ternary(n), centered_binomial(n), centered_binomial(n)])  # u, e0, e1
        residues = np.remainder(small[:, None, :], self._moduli).view(np.uint64)
        polys = seal_memory.ciphertext(self._context, self._parms_id, residues, 1.0, ntt_form=False)
        self._evaluator.transform_to_ntt_inplace(polys)
        transformed = seal_memory.coefficients(polys)
        zero = seal_memory.ciphertext(self._context, self._parms_id, self._key, scale)
        self._evaluator.multiply_plain_inplace(zero, seal_memory.plaintext(self._parms_id, transformed[0], 1.0))
        errors = seal_memory.ciphertext(self._context, self._parms_id, transformed[1:], scale)
        self._evaluator.add_inplace(zero, errors)
        return zero
