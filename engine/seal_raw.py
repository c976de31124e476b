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

import functools
import struct
from dataclasses import dataclass

import numpy as np

from heserve.engine import seal_bounds
from heserve.engine.seal_io import SealDecodeError

MAGIC = 0xA15E
HEADER = 16
PREFIX = 32 + 1 + 8 * 5  # parms_id, ntt flag, size, N, primes, scale, correction factor
COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD = 0, 1, 2


class RawCiphertextError(SealDecodeError):
    """Bytes that are not a fresh, full (unseeded) ciphertext for the expected parameters.

    A SealDecodeError, so it carries the same machine-readable `code`.
    """


@dataclass
class RawCiphertext:
    parms_id: tuple[int, int, int, int]
    scale: float
    data: np.ndarray  # uint64, shape (2, primes, N)


def parse(blob: bytes, n: int, moduli: list[int], what: str, allow_compressed: bool = True) -> RawCiphertext:
    """Parse and check the form of a 2-polynomial NTT-form ciphertext with len(moduli) primes.

    The ciphertext must be full (not seeded) and exactly one object: no bytes after it. A
    compressed one (allow_compressed) is decompressed by bounded streaming to at most the
    size of a full ciphertext for these parameters, whatever its frame declares.
    """
    primes = len(moduli)
    coefficients = 2 * primes * n
    inner_total = HEADER + 8 + 8 * coefficients
    expected_body = PREFIX + inner_total
    if len(blob) < HEADER:
        raise RawCiphertextError(f"{what} is too short")
    magic, header_size, major, minor, compression, _reserved, total = struct.unpack_from("<HBBBBHQ", blob, 0)
    if magic != MAGIC or header_size != HEADER:
        raise RawCiphertextError(f"{what} is not a SEAL object")
    if total < len(blob):
        raise RawCiphertextError(f"{what} is followed by {len(blob) - total} unexpected bytes", "seal_trailing_bytes")
    if total != len(blob):
        raise RawCiphertextError(f"{what} is not a SEAL object of {len(blob)} bytes")
    if (major, minor) not in seal_bounds.ACCEPTED_VERSIONS:
        raise RawCiphertextError(
            f"{what} was written by SEAL {major}.{minor}; this server reads "
            + ", ".join(seal_bounds.version_text(v) for v in sorted(seal_bounds.ACCEPTED_VERSIONS))
        )
    body = memoryview(blob)[HEADER:]  # no copy: batch requests carry hundreds of MB
    if compression in (COMPR_ZLIB, COMPR_ZSTD):
        if not allow_compressed:
            raise RawCiphertextError(
                f"{what} is compressed; send batch ciphertexts uncompressed", "compressed_not_accepted"
            )
        try:
            body = memoryview(seal_bounds.decompress_bounded(body, compression, expected_body, what))
        except SealDecodeError as exc:
            raise RawCiphertextError(str(exc), exc.code) from None
    elif compression != COMPR_NONE:
        raise RawCiphertextError(f"{what} uses an unsupported compression mode {compression}")
    if len(body) != expected_body:
        raise RawCiphertextError(
            f"{what} is not a full {primes}-prime ciphertext at N={n} (seeded or of other parameters)"
        )
    parms_id = struct.unpack_from("<4Q", body, 0)
    ntt = body[32]
    size, degree, count = struct.unpack_from("<3Q", body, 33)
    (scale,) = struct.unpack_from("<d", body, 57)
    (correction,) = struct.unpack_from("<Q", body, 65)
    if ntt != 1 or size != 2 or degree != n or count != primes or correction != 1:
        raise RawCiphertextError(f"{what} has the wrong form (NTT {ntt}, size {size}, N {degree}, primes {count})")
    # The coefficient array is a nested object: it must be plainly stored and exactly this long,
    # since its bytes are read in place below.
    inner_magic, inner_header_size, inner_major, inner_minor, inner_compression, _, inner_size = struct.unpack_from(
        "<HBBBBHQ", body, PREFIX
    )
    if inner_magic != MAGIC or inner_header_size != HEADER or inner_size != inner_total:
        raise RawCiphertextError(f"{what} has a malformed coefficient array")
    if (inner_major, inner_minor) != (major, minor):
        raise RawCiphertextError(f"{what} mixes SEAL {major}.{minor} and {inner_major}.{inner_minor} headers")
    if inner_compression != COMPR_NONE:
        raise RawCiphertextError(f"{what} has a compressed coefficient array", "compressed_not_accepted")
    (elements,) = struct.unpack_from("<Q", body, PREFIX + HEADER)
    if elements != coefficients:
        raise RawCiphertextError(f"{what} declares {elements} coefficients, expected {coefficients}")
    # Coefficients are checked against their moduli where they are read (server.modmath gather).
    data = np.frombuffer(body, dtype="<u8", offset=PREFIX + HEADER + 8).reshape(2, primes, n)
    return RawCiphertext(parms_id, scale, data)


@functools.cache
def seal_version() -> bytes:
    """The (major, minor) version bytes SEAL writes into its headers."""
    import tenseal.sealapi as sealapi

    from heserve.engine.seal_io import dump

    return dump(sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS))[3:5]


def build(
    parms_id: list[int] | tuple[int, ...], scale: float, data: np.ndarray, version: bytes, ntt_form: bool = True
) -> bytes:
    """Serialize (uncompressed) a ciphertext with these coefficients, readable by SEAL's Ciphertext.load."""
    twos, primes, n = data.shape
    payload = np.ascontiguousarray(data, dtype="<u8").tobytes()
    prefix = bytearray(PREFIX)
    struct.pack_into("<4Q", prefix, 0, *parms_id)
    prefix[32] = 1 if ntt_form else 0
    struct.pack_into("<3Q", prefix, 33, twos, n, primes)
    struct.pack_into("<d", prefix, 57, scale)
    struct.pack_into("<Q", prefix, 65, 1)
    inner_total = HEADER + 8 + len(payload)
    inner = struct.pack("<HBBBBHQ", MAGIC, HEADER, version[0], version[1], COMPR_NONE, 0, inner_total)
    body = bytes(prefix) + inner + struct.pack("<Q", twos * primes * n) + payload
    outer = struct.pack("<HBBBBHQ", MAGIC, HEADER, version[0], version[1], COMPR_NONE, 0, HEADER + len(body))
    return outer + body


PLAINTEXT_PREFIX = 32 + 8 + 8  # parms_id, coefficient count, scale


def build_plaintext(parms_id: list[int] | tuple[int, ...], scale: float, data: np.ndarray, version: bytes) -> bytes:
    """Serialize (uncompressed) an NTT-form CKKS plaintext with these residues, shape (primes, N)."""
    payload = np.ascontiguousarray(data, dtype="<u8").tobytes()
    count = data.size
    inner_total = HEADER + 8 + len(payload)
    body = (
        struct.pack("<4QQd", *parms_id, count, scale)
        + struct.pack("<HBBBBHQ", MAGIC, HEADER, version[0], version[1], COMPR_NONE, 0, inner_total)
        + struct.pack("<Q", count)
        + payload
    )
    return struct.pack("<HBBBBHQ", MAGIC, HEADER, version[0], version[1], COMPR_NONE, 0, HEADER + len(body)) + body


def plaintext_residues(blob: bytes, n: int) -> np.ndarray:
    """The residues (primes, N) of a plaintext this process's SEAL serialized (own_uncompressed first)."""
    (count,) = struct.unpack_from("<Q", blob, HEADER + 32)
    offset = HEADER + PLAINTEXT_PREFIX + HEADER + 8
    return np.frombuffer(blob, dtype="<u8", count=count, offset=offset).reshape(count // n, n)


def polynomials(blob: bytes) -> np.ndarray:
    """The coefficients (size, primes, N) of a ciphertext this process's SEAL serialized (uncompressed)."""
    size, degree, count = struct.unpack_from("<3Q", blob, HEADER + 33)
    offset = HEADER + PREFIX + HEADER + 8
    return np.frombuffer(blob, dtype="<u8", count=size * count * degree, offset=offset).reshape(size, count, degree)


def to_uncompressed(blob: bytes, limit: int | None = None) -> bytes:
    """SEAL's own (zstd or zlib) serialization of an object, rewritten with its outer level uncompressed.

    Decompression is streamed and bounded: at most `limit` bytes, by default the size of a
    full ciphertext with the degree, size and prime count its own prefix declares (1 << 31
    for anything else).
    """
    if len(blob) < HEADER or blob[5] == COMPR_NONE:
        return blob
    return seal_bounds.uncompress_outer(blob, "ciphertext", limit)


def own_uncompressed(blob: bytes) -> bytes:
    """`to_uncompressed` for an object this process's SEAL has just serialized.

    The frame is SEAL's own, so its declared size is trusted and one C call inflates it (the
    bounded, streamed path is for bytes that come from elsewhere and costs ~20x more).
    """
    if len(blob) < HEADER or blob[5] != COMPR_ZSTD:
        return to_uncompressed(blob)
    import zstandard

    body = zstandard.ZstdDecompressor().decompress(blob[HEADER:])
    header = bytearray(blob[:HEADER])
    header[5] = COMPR_NONE
    struct.pack_into("<Q", header, 8, HEADER + len(body))
    return bytes(header) + body
