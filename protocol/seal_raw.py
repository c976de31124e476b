"""SEAL ciphertext serialization read and written with numpy, without SEAL in the loop.

A SEAL object is a 16-byte header (magic 0xA15E, header size, version, compression mode
at byte 5, total size as uint64 at bytes 8..16) and a body. A ciphertext's body is
parms_id (4 x uint64), NTT flag (1 byte), size, N, number of primes (uint64 each), scale
(float64), correction factor (uint64), then its coefficients as a nested SEAL object:
header, element count (uint64), and size x primes x N uint64 values, poly by poly and
prime by prime. Reading that array directly lets a dense layer over many batch-layout
ciphertexts run as one modular matrix product instead of thousands of SEAL calls.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = 0xA15E
HEADER = 16
PREFIX = 32 + 1 + 8 * 5  # parms_id, ntt flag, size, N, primes, scale, correction factor
COMPR_NONE, COMPR_ZSTD = 0, 2


class RawCiphertextError(ValueError):
    """Bytes that are not a fresh, full (unseeded) ciphertext for the expected parameters."""


@dataclass
class RawCiphertext:
    parms_id: tuple[int, int, int, int]
    scale: float
    data: np.ndarray  # uint64, shape (2, primes, N)


def _decompress(body: bytes, expected: int) -> bytes:
    import zstandard

    try:
        out = zstandard.ZstdDecompressor().decompress(body, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise RawCiphertextError(f"compressed ciphertext is corrupt: {exc}") from None
    return out


def parse(blob: bytes, n: int, moduli: list[int], what: str) -> RawCiphertext:
    """Parse and check the form of a 2-polynomial NTT-form ciphertext with len(moduli) primes."""
    primes = len(moduli)
    expected_body = PREFIX + HEADER + 8 + 2 * primes * n * 8
    if len(blob) < HEADER:
        raise RawCiphertextError(f"{what} is too short")
    magic, header_size = struct.unpack_from("<HB", blob, 0)
    compression = blob[5]
    (total,) = struct.unpack_from("<Q", blob, 8)
    if magic != MAGIC or header_size != HEADER or total != len(blob):
        raise RawCiphertextError(f"{what} is not a SEAL object of {len(blob)} bytes")
    body = memoryview(blob)[HEADER:]  # no copy: batch requests carry hundreds of MB
    if compression == COMPR_ZSTD:
        body = _decompress(body, expected_body)
    elif compression != COMPR_NONE:
        raise RawCiphertextError(f"{what} uses an unsupported compression mode {compression}")
    if len(body) != expected_body:
        raise RawCiphertextError(
            f"{what} is not a full {primes}-prime ciphertext at N={n} (seeded or of other parameters)"
        )
    if isinstance(body, bytes):
        body = memoryview(body)
    parms_id = struct.unpack_from("<4Q", body, 0)
    ntt = body[32]
    size, degree, count = struct.unpack_from("<3Q", body, 33)
    (scale,) = struct.unpack_from("<d", body, 57)
    if ntt != 1 or size != 2 or degree != n or count != primes:
        raise RawCiphertextError(f"{what} has the wrong form (NTT {ntt}, size {size}, N {degree}, primes {count})")
    (elements,) = struct.unpack_from("<Q", body, PREFIX + HEADER)
    if elements != 2 * primes * n:
        raise RawCiphertextError(f"{what} declares {elements} coefficients, expected {2 * primes * n}")
    # Coefficients are checked against their moduli where they are read (server.modmath gather).
    data = np.frombuffer(body, dtype="<u8", offset=PREFIX + HEADER + 8).reshape(2, primes, n)
    return RawCiphertext(parms_id, scale, data)


def seal_version() -> bytes:
    """The (major, minor) version bytes SEAL writes into its headers."""
    import tenseal.sealapi as sealapi

    from .seal_io import dump

    return dump(sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS))[3:5]


def build(parms_id: list[int] | tuple[int, ...], scale: float, data: np.ndarray, version: bytes) -> bytes:
    """Serialize (uncompressed) a ciphertext with these coefficients, readable by SEAL's Ciphertext.load."""
    twos, primes, n = data.shape
    payload = np.ascontiguousarray(data, dtype="<u8").tobytes()
    prefix = bytearray(PREFIX)
    struct.pack_into("<4Q", prefix, 0, *parms_id)
    prefix[32] = 1
    struct.pack_into("<3Q", prefix, 33, twos, n, primes)
    struct.pack_into("<d", prefix, 57, scale)
    struct.pack_into("<Q", prefix, 65, 1)
    inner_total = HEADER + 8 + len(payload)
    inner = struct.pack("<HBBBBHQ", MAGIC, HEADER, version[0], version[1], COMPR_NONE, 0, inner_total)
    body = bytes(prefix) + inner + struct.pack("<Q", twos * primes * n) + payload
    outer = struct.pack("<HBBBBHQ", MAGIC, HEADER, version[0], version[1], COMPR_NONE, 0, HEADER + len(body))
    return outer + body


def to_uncompressed(blob: bytes) -> bytes:
    """SEAL's own (zstd) serialization of any object, rewritten uncompressed."""
    if len(blob) < HEADER or blob[5] == COMPR_NONE:
        return blob
    import zstandard

    body = zstandard.ZstdDecompressor().decompress(blob[HEADER:], max_output_size=1 << 31)
    header = bytearray(blob[:HEADER])
    header[5] = COMPR_NONE
    struct.pack_into("<Q", header, 8, HEADER + len(body))
    return bytes(header) + body
