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

SEAL 4.1's Plaintext keeps parms_id (4 words), the coefficient count, the scale, then the
same DynArray; `plaintext` writes one (an NTT-form CKKS plaintext) without serialization,
checked the same way.

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
_PLAIN_WORDS = 11  # parms_id[4], coefficient count, scale, pool[2], capacity, count, data
_PLAIN_COEFFS, _PLAIN_SCALE, _PLAIN_COUNT, _PLAIN_DATA = 4, 5, 9, 10


class LayoutError(RuntimeError):
    """A ciphertext's memory does not look like the layout this module reads."""


def _header(obj, words: int = _WORDS) -> tuple[int, ctypes.Array]:
    address = ctypes.c_uint64.from_address(id(obj) + _OBJECT_HEADER).value
    if not address:
        raise LayoutError(f"no C++ object behind this {type(obj).__name__}")
    return address, (ctypes.c_uint64 * words).from_address(address)


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


def ciphertext(
    context: sealapi.SEALContext, parms_id, data: np.ndarray, scale: float, ntt_form: bool = True
) -> sealapi.Ciphertext:
    """A ciphertext at `parms_id` holding `data` (size, primes, N), at `scale`, in NTT form or not."""
    ct = sealapi.Ciphertext(context)
    ct.resize(context, list(parms_id), data.shape[0])  # a new ciphertext is in coefficient form
    ct.scale = scale
    if ntt_form:
        address, _ = _header(ct)
        flag = ctypes.c_uint8.from_address(address + 8 * _NTT)  # a C++ bool: one byte, then padding
        if flag.value not in (0, 1):
            raise LayoutError("the ciphertext's NTT flag is not where it was expected")
        flag.value = 1
    if ct.is_ntt_form() != ntt_form:
        raise LayoutError("the ciphertext's NTT flag is not where it was expected")
    view = coefficients(ct)
    if view.shape != data.shape:
        raise LayoutError(f"SEAL made a ciphertext of shape {view.shape} for data of shape {data.shape}")
    view[...] = data
    return ct


def _checked_plain(plain: sealapi.Plaintext, count: int) -> ctypes.Array:
    _, words = _header(plain, _PLAIN_WORDS)
    if words[_PLAIN_COEFFS] != count or words[_PLAIN_COUNT] != count or (count and not words[_PLAIN_DATA]):
        raise LayoutError("the plaintext's coefficient array is not where it was expected")
    if list(words[0:4]) != list(plain.parms_id()) or np.float64(plain.scale).view(np.uint64) != words[_PLAIN_SCALE]:
        raise LayoutError("the plaintext's header is not where it was expected")
    return words


def plaintext_coefficients(plain: sealapi.Plaintext) -> np.ndarray:
    """A writable (coefficient count,) uint64 view of a plaintext's data (it keeps `plain` alive)."""
    count = plain.coeff_count()
    words = _checked_plain(plain, count)
    buffer = (ctypes.c_uint64 * count).from_address(words[_PLAIN_DATA])
    buffer._owner = plain
    return np.frombuffer(buffer, dtype=np.uint64)


def plaintext(parms_id, data: np.ndarray, scale: float) -> sealapi.Plaintext:
    """An NTT-form CKKS plaintext at `parms_id` holding the residues `data` (primes, N), at `scale`."""
    plain = sealapi.Plaintext()
    plain.resize(data.size)
    words = _checked_plain(plain, data.size)
    if plain.is_ntt_form():
        raise LayoutError("the plaintext's header is not where it was expected")
    words[0:4] = [int(w) for w in parms_id]
    words[_PLAIN_SCALE] = int(np.float64(scale).view(np.uint64))
    if list(plain.parms_id()) != list(parms_id) or plain.scale != scale or not plain.is_ntt_form():
        raise LayoutError("the plaintext's header is not where it was expected")
    buffer = (ctypes.c_uint64 * data.size).from_address(words[_PLAIN_DATA])
    np.frombuffer(buffer, dtype=np.uint64)[:] = np.ascontiguousarray(data, dtype=np.uint64).reshape(-1)
    return plain


def dump(ct: sealapi.Ciphertext) -> bytes:
    """SEAL's serialization of `ct` without compression, written from its memory.

    Byte for byte what SEAL writes with compr_mode none (tests/test_seal_memory.py), which
    tenseal.sealapi cannot ask for: its save always runs zstd, which costs ~0.15 ms for a
    64 KB ciphertext and saves nothing when the primes fill their 64-bit words.
    """
    from heserve.engine import seal_raw

    return seal_raw.build(ct.parms_id(), ct.scale, coefficients(ct), seal_raw.seal_version(), ct.is_ntt_form())


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
        if not np.max(np.abs(out - values)) < 1e-3:
            return False
        # A written plaintext: SEAL serializes the residues it was given, and decodes its values.
        residues = seal_raw.plaintext_residues(seal_raw.own_uncompressed(seal_io.dump(plain)), 4096)
        if not np.array_equal(plaintext_coefficients(plain), residues.reshape(-1)):
            return False
        written = plaintext(plain.parms_id(), residues.copy(), plain.scale)
        if seal_io.dump(written) != seal_io.dump(plain):
            return False
        return bool(np.max(np.abs(np.array(encoder.decode_double(written)) - values)) < 1e-3)
    except (LayoutError, RuntimeError, ValueError, OverflowError):
        return False
