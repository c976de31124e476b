"""Numpy views of the coefficient arrays of SEAL ciphertexts, without serialization.

tenseal.sealapi exchanges a ciphertext's coefficients only through SEAL's save and load,
and its save always compresses (zstd): ~6 ms for a 400 KB ciphertext at N=8192, where a
copy takes 0.02 ms. The batch layouts of the networks move hundreds of intermediate
ciphertexts per chunk between SEAL (rescaling, relinearization) and numpy (modular matrix
products), so that round trip was a fifth of their time.

A pybind11 instance holds a pointer to its C++ object right after the Python object header,
and SEAL 4.1's Ciphertext keeps, in order: parms_id (4 words), the NTT flag, size, degree,
prime count, scale, correction factor, then its DynArray (pool handle: 2 words, capacity,
size, data pointer). That is an implementation detail of the pinned tenseal build, so none
of it is trusted blindly: `available()` checks the layout once per process on ciphertexts
of known contents (every header field against SEAL's accessors, every coefficient against
SEAL's own serialization, a written ciphertext read back by SEAL's decryptor), and every view
checks the header fields it relies on against SEAL's accessors. Where the check fails the
callers keep the serialization path, which gives the same numbers more slowly.

A view is valid until SEAL next changes that ciphertext (an in-place operation may
reallocate it); callers copy what they keep.
"""

from __future__ import annotations

import ctypes
import functools
import math

import numpy as np
import tenseal.sealapi as sealapi

_OBJECT_HEADER = 16  # PyObject_HEAD: reference count and type pointer
_WORDS = 15  # parms_id[4], ntt, size, degree, primes, scale, correction, pool[2], capacity, count, data
_NTT, _SIZE, _DEGREE, _PRIMES, _SCALE, _COUNT, _DATA = 4, 5, 6, 7, 8, 13, 14


class LayoutError(RuntimeError):
    """A ciphertext's memory does not look like the layout this module reads."""


def _header(ct: sealapi.Ciphertext) -> tuple[int, ctypes.Array]:
    address = ctypes.c_uint64.from_address(id(ct) + _OBJECT_HEADER).value
    if not address:
        raise LayoutError("no C++ object behind this ciphertext")
    return address, (ctypes.c_uint64 * _WORDS).from_address(address)


def _checked(ct: sealapi.Ciphertext) -> tuple[int, ctypes.Array, tuple[int, int, int]]:
    address, words = _header(ct)
    shape = (ct.size(), ct.coeff_modulus_size(), ct.poly_modulus_degree())
    if list(words[0:4]) != list(ct.parms_id()) or (words[_SIZE], words[_PRIMES], words[_DEGREE]) != shape:
        raise LayoutError("the ciphertext's header is not where it was expected")
    if words[_COUNT] != math.prod(shape) or (shape[0] and not words[_DATA]):
        raise LayoutError("the ciphertext's coefficient array is not where it was expected")
    if np.float64(ct.scale).view(np.uint64) != words[_SCALE]:
        raise LayoutError("the ciphertext's scale is not where it was expected")
    return address, words, shape


def coefficients(ct: sealapi.Ciphertext) -> np.ndarray:
    """A writable (size, primes, N) uint64 view of the ciphertext's coefficients (it keeps `ct` alive)."""
    _, words, shape = _checked(ct)
    buffer = (ctypes.c_uint64 * math.prod(shape)).from_address(words[_DATA])
    buffer._owner = ct  # the view's base keeps the ciphertext, and so its memory, alive
    return np.frombuffer(buffer, dtype=np.uint64).reshape(shape)


def ciphertext(context: sealapi.SEALContext, parms_id, data: np.ndarray, scale: float) -> sealapi.Ciphertext:
    """A ciphertext in NTT form at `parms_id` holding `data` (size, primes, N), at `scale`."""
    ct = sealapi.Ciphertext(context)
    ct.resize(context, list(parms_id), data.shape[0])
    ct.scale = scale
    address, _ = _header(ct)
    flag = ctypes.c_uint8.from_address(address + 8 * _NTT)  # a C++ bool: one byte, then padding
    if flag.value not in (0, 1):
        raise LayoutError("the ciphertext's NTT flag is not where it was expected")
    flag.value = 1
    if not ct.is_ntt_form():
        raise LayoutError("the ciphertext's NTT flag is not where it was expected")
    view = coefficients(ct)
    if view.shape != data.shape:
        raise LayoutError(f"SEAL made a ciphertext of shape {view.shape} for data of shape {data.shape}")
    view[...] = data
    return ct


@functools.cache
def available() -> bool:
    """Whether this process's SEAL objects have the layout read here (checked once, on known data)."""
    from heserve.engine import seal_io, seal_raw

    try:
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(4096)
        parms.set_coeff_modulus(sealapi.CoeffModulus.Create(4096, [40, 40, 29]))
        context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
        keys = sealapi.KeyGenerator(context)
        encoder, evaluator = sealapi.CKKSEncoder(context), sealapi.Evaluator(context)
        encryptor = sealapi.Encryptor(context, keys.secret_key())
        decryptor = sealapi.Decryptor(context, keys.secret_key())
        values = np.linspace(-1.0, 1.0, encoder.slot_count())
        plain = sealapi.Plaintext()
        encoder.encode(values.tolist(), 2.0**20, plain)
        fresh = sealapi.Ciphertext()
        encryptor.encrypt_symmetric(plain, fresh)
        squared = sealapi.Ciphertext()
        evaluator.square(fresh, squared)  # three polynomials
        for ct in (fresh, squared):
            serialized = seal_raw.polynomials(seal_raw.own_uncompressed(seal_io.dump(ct)))
            if not np.array_equal(coefficients(ct), serialized):
                return False
        copy = ciphertext(context, fresh.parms_id(), coefficients(fresh).copy(), fresh.scale)
        decrypted = sealapi.Plaintext()
        decryptor.decrypt(copy, decrypted)
        out = np.array(encoder.decode_double(decrypted))
        return bool(np.max(np.abs(out - values)) < 1e-3)
    except (LayoutError, RuntimeError, ValueError, OverflowError):
        return False
