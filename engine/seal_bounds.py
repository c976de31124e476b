"""A strict, bounded walker of SEAL's serialization for what clients send: ciphertexts and key-switching keys.

SEAL trusts its input more than a server can afford to: it decompresses whatever a zstd or
zlib frame holds, allocates what declared counts ask for, and ignores bytes after an object.
Every object a client sends goes through here first. The walker reads the format exactly as
SEAL writes it, checks every declared count against the CKKS parameters before anything
proportional to it is allocated or decompressed, decompresses by streaming under a hard
limit derived from the parameters (never from a frame's own declared size), refuses bytes
after a frame or an object, and returns the same object fully uncompressed. SEAL then loads
those canonical bytes, whose size is bounded by the parameters, so it never inflates anything.

Versions: SEAL loads only headers of its own major.minor, and browsers' and Node's SEAL
(node-seal 7) is 4.1 where this server's is 4.3. Between those two the members of every
object a client sends are laid out identically, so the walker accepts exactly
ACCEPTED_VERSIONS, requires every header of one object to carry the same version, and writes
the local version into each header it copies; `with_version` writes a result back in the
client's version. tests/test_seal41.py establishes that identity with node-seal's own bytes;
any other version is refused, its layout never having been shown identical.

Layouts (SEAL 4.x, confirmed against the bytes tenseal.sealapi writes):

* every object: a 16-byte header (magic 0xA15E, header size 16, major and minor version,
  compression mode at byte 5: none 0, zlib 1, zstd 2; two reserved bytes; total size as
  uint64 at bytes 8..16), then its members, compressed as a whole when the mode says so;
* Ciphertext: parms_id (4 x uint64), NTT flag (1 byte), size, N, number of primes, scale
  (float64), correction factor (uint64); then a nested DynArray object (element count as
  uint64, then the uint64 coefficients). A full ciphertext holds size x primes x N
  coefficients; a seeded one (SEAL's `encrypt_symmetric` Serializable) holds only the first
  polynomial, primes x N, followed by a nested UniformRandomGeneratorInfo object (PRNG type
  byte, 64-byte seed) from which SEAL regenerates the second;
* KSwitchKeys (GaloisKeys, RelinKeys): parms_id, the number of key slots (uint64), then per
  slot the number of keys (uint64) and that many PublicKey objects, each serialized exactly
  as a size-2 Ciphertext at the key level (all primes, special prime included). GaloisKeys
  have one slot per coefficient (N), slot i holding the key of Galois element 2i + 1 (empty
  slots have 0 keys); RelinKeys have one slot. A filled slot holds one key per data prime.

Any of these nested objects may itself be compressed, at any depth; each level is
decompressed under its own limit.

Refusals raise protocol.seal_io.SealDecodeError whose `code` is one of:
"malformed_seal_object" (not the expected object for these parameters: wrong counts, sizes,
flags, version, truncated, corrupt compressed data), "seal_frame_too_large" (a compressed
section that declares, asks a window for, or decompresses to more than the object can
hold), "seal_trailing_bytes" (bytes after a frame or an object, or an object declaring more
bytes than its contents), "compressed_not_accepted", "seeded_not_accepted",
"galois_element_not_allowed" and "too_many_galois_elements".
"""

from __future__ import annotations

import functools
import math
import struct
import sys
import zlib
from collections.abc import Callable
from typing import Protocol

from heserve.engine.seal_io import SealDecodeError

MAGIC = 0xA15E
HEADER = 16
COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD = 0, 1, 2
# parms_id (32), NTT flag (1), size, N, primes, scale, correction factor (8 each)
CT_PREFIX = 32 + 1 + 8 * 5
PRNG_MEMBERS = 1 + 64  # PRNG type, seed
PRNG_TYPES = (1, 2)  # blake2xb, shake256
KSWITCH_PREFIX = 32 + 8  # parms_id, number of key slots
SEAL_CIPHERTEXT_SIZE_MAX = 16

# The serialization versions taken from clients (and written back to them). Adding one is only
# sound once tests/test_seal41.py shows, with that SEAL's own bytes, that every object kind a
# client sends has the same members as the local version's; the local version must be here.
ACCEPTED_VERSIONS: frozenset[tuple[int, int]] = frozenset({(4, 1), (4, 3)})

MALFORMED = "malformed_seal_object"
TOO_LARGE = "seal_frame_too_large"
TRAILING = "seal_trailing_bytes"
COMPRESSED = "compressed_not_accepted"
SEEDED = "seeded_not_accepted"
NOT_ALLOWED = "galois_element_not_allowed"
TOO_MANY = "too_many_galois_elements"

# Decompressed output is pulled in pieces of this size, so a small read (a count, a header)
# never makes the decompressor produce more than this beyond what the walker has checked.
_CHUNK = 1 << 16
_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_BLOCK_MAX = 1 << 17
# A zstd frame that does not declare its size carries a window the decoder allocates in
# full: honest encoders use at most 8 MiB (level 19) unless the object itself is larger.
_ZSTD_WINDOW_FLOOR = 1 << 23
_ZSTD_WINDOW_CAP = 1 << 27
# Blocks are walked in Python to find the frame's exact end: an honest encoder emits blocks
# of up to 128 KiB of output, so a frame with far more blocks than its output could need is
# a CPU-burning fabrication, refused before decompression.
_ZSTD_BLOCKS_PER_KIB = 1
_ZSTD_BLOCKS_SLACK = 64

# What deserialized keys occupy (RSS measured when SEAL loads them in a fresh process): the
# coefficients of every public key, 2 x primes x N uint64, plus one std::vector per key slot
# (a GaloisKeys object has N slots) and about a page per public key for its allocation.
_VECTOR_BYTES = 24
_PUBLIC_KEY_OVERHEAD = 4096


# --- byte bounds for given parameters -------------------------------------------------------


def dynarray_bytes(count: int) -> int:
    """Serialized size of an uncompressed DynArray of `count` uint64 values."""
    return HEADER + 8 + 8 * count


def ciphertext_bound(n: int, primes: int, *, size: int = 2, seeded: bool = False) -> int:
    """Exact uncompressed serialized size of a Ciphertext (seeded: SEAL's half-size form, size 2)."""
    if seeded:
        return HEADER + CT_PREFIX + dynarray_bytes(primes * n) + HEADER + PRNG_MEMBERS
    return HEADER + CT_PREFIX + dynarray_bytes(size * primes * n)


def kswitch_keys_bound(n: int, key_primes: int, count: int, *, relin: bool = False, seeded: bool = False) -> int:
    """Uncompressed serialized size of `count` key-switching keys (Galois elements, or 1 for relin).

    `key_primes` counts every prime, the special one included. With seeded=False this is the
    largest size canonical_kswitch_keys can return for that many keys.
    """
    slots = 1 if relin else n
    public_key = ciphertext_bound(n, key_primes, seeded=seeded)
    return HEADER + KSWITCH_PREFIX + 8 * slots + count * (key_primes - 1) * public_key


def kswitch_keys_memory_bytes(n: int, key_primes: int, count: int, *, relin: bool = False) -> int:
    """What `count` deserialized key-switching keys occupy in a worker, whatever their upload size.

    SEAL expands seeded keys on load, so every key is (key_primes - 1) public keys of
    2 x key_primes x N uint64 coefficients. Against the RSS growth of seal_io.load of honest
    canonical Galois keys in a fresh process, the formula is never below the measurement:
    N=8192 with 4 primes, 8 / 32 / 64 keys: 12.88 / 50.92 / 101.65 MB charged for 12.26 /
    50.01 / 100.40 MB measured (+5% / +1.8% / +1.2%); N=4096 with 2 primes, 8 / 32 / 64 keys:
    +12% / +5% / +9%; a single key is overcharged by its slot vectors (+13% at N=8192,
    +78% at N=4096).
    SEAL's memory pool keeps the memory after the keys are freed, for later keys to reuse.
    While loading, the canonical bytes (kswitch_keys_bound) are held as well.
    """
    public_keys = count * (key_primes - 1)
    coefficients = public_keys * 2 * key_primes * n * 8
    return coefficients + public_keys * _PUBLIC_KEY_OVERHEAD + (1 if relin else n) * _VECTOR_BYTES


def _compressed_bound(limit: int) -> int:
    """The largest compressed payload an honest encoder writes for `limit` bytes (zstd or zlib)."""
    # zstd: 3 bytes per 128 KiB block plus an 18-byte frame header and checksum; zlib: 5
    # bytes per 16 KiB stored block plus 6 bytes of header and checksum. Both well below this.
    return limit + (limit >> 10) + 1024


# --- errors -----------------------------------------------------------------------------------


def _fail(message: str, code: str = MALFORMED) -> SealDecodeError:
    return SealDecodeError(message, code)


@functools.lru_cache(maxsize=1)
def local_version() -> tuple[int, int]:
    """The (major, minor) version SEAL here writes into headers and, alone, loads."""
    import tenseal.sealapi as sealapi

    from heserve.engine.seal_io import dump

    header = dump(sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS))
    return header[3], header[4]


def version_text(version: tuple[int, int]) -> str:
    """The text of a version, "4.1" for (4, 1), as key records and model metadata show it."""
    return f"{version[0]}.{version[1]}"


def parse_version(text: str) -> tuple[int, int]:
    """(4, 1) for "4.1"; ValueError unless it is one of ACCEPTED_VERSIONS."""
    try:
        major, minor = (int(part) for part in str(text).split("."))
    except ValueError:
        raise ValueError(f"{text!r} is not a SEAL serialization version (major.minor)") from None
    if (major, minor) not in ACCEPTED_VERSIONS:
        raise ValueError(f"SEAL serialization version {text} is not one of {_accepted_text()}")
    return major, minor


def _accepted_text() -> str:
    return ", ".join(version_text(v) for v in sorted(ACCEPTED_VERSIONS))


def serialization_metadata() -> dict[str, object]:
    """What a model's metadata says about serialization: the version results are written in by
    default, and every version keys and ciphertexts may come in (results follow the keys')."""
    return {
        "serialization_version": version_text(local_version()),
        "accepts": [version_text(v) for v in sorted(ACCEPTED_VERSIONS)],
    }


def object_version(blob: bytes | bytearray | memoryview) -> tuple[int, int]:
    """The version in a SEAL object's outer header.

    Once canonical_ciphertext or canonical_kswitch_keys has taken the object, every header in
    it carries this same version: it is the version of the SEAL that wrote the object.
    """
    view = _view(blob, "SEAL object")
    return view[3], view[4]


def _version_refusal(label: str, major: int, minor: int) -> SealDecodeError:
    return _fail(f"{label} was written by SEAL {major}.{minor}; objects of SEAL {_accepted_text()} are accepted here")


# --- sources of member bytes ------------------------------------------------------------------


class _Source(Protocol):
    def read(self, k: int) -> bytes | memoryview: ...

    def copy(self, out: bytearray, k: int) -> None: ...

    def remaining(self) -> int: ...

    def finish(self) -> None: ...


class _BufferSource:
    """Bytes already in memory: slices are views, nothing is copied until written out."""

    def __init__(self, view: memoryview, label: str):
        self._view = view
        self._pos = 0
        self._label = label

    def read(self, k: int) -> memoryview:
        if k > len(self._view) - self._pos:
            raise _fail(f"{self._label} is truncated")
        start = self._pos
        self._pos += k
        return self._view[start : self._pos]

    def copy(self, out: bytearray, k: int) -> None:
        out += self.read(k)

    def remaining(self) -> int:
        return len(self._view) - self._pos

    def finish(self) -> None:
        extra = len(self._view) - self._pos
        if extra:
            raise _fail(f"{self._label} is followed by {extra} unexpected bytes", TRAILING)


class _SubSource:
    """The members of one uncompressed nested object: exactly the bytes its header declares."""

    def __init__(self, parent: _Source, length: int, label: str):
        self._parent = parent
        self._left = length
        self._length = length
        self._label = label

    def _take(self, k: int) -> None:
        if k > self._left:
            raise _fail(f"{self._label} declares {self._length} bytes, fewer than its contents need")
        self._left -= k

    def read(self, k: int) -> bytes | memoryview:
        self._take(k)
        return self._parent.read(k)

    def copy(self, out: bytearray, k: int) -> None:
        self._take(k)
        self._parent.copy(out, k)

    def remaining(self) -> int:
        return self._left

    def finish(self) -> None:
        if self._left:
            raise _fail(f"{self._label} declares {self._left} bytes more than its contents", TRAILING)


class _StreamSource:
    """Decompressed members, produced on demand and never more than `limit` bytes in total."""

    def __init__(self, limit: int, label: str):
        self._limit = limit
        self._label = label
        self._produced = 0
        self._buf = bytearray()
        self._pos = 0

    def _pull(self, want: int) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def _more(self, want: int) -> bytes:
        # One more byte than the limit is asked for, so output beyond it is seen and refused.
        room = self._limit + 1 - self._produced
        if room <= 0:
            raise self._too_large()
        chunk = self._pull(min(max(want, _CHUNK), room))
        self._produced += len(chunk)
        if self._produced > self._limit:
            raise self._too_large()
        return chunk

    def _too_large(self) -> SealDecodeError:
        return _fail(f"{self._label} decompresses to more than the {self._limit} bytes it can hold", TOO_LARGE)

    def _truncated(self) -> SealDecodeError:
        return _fail(f"{self._label} is truncated (its compressed data ends early)")

    def read(self, k: int) -> bytes:
        while len(self._buf) - self._pos < k:
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            chunk = self._more(k - len(self._buf))
            if not chunk:
                raise self._truncated()
            self._buf += chunk
        start = self._pos
        self._pos += k
        return bytes(self._buf[start : self._pos])

    def copy(self, out: bytearray, k: int) -> None:
        buffered = min(k, len(self._buf) - self._pos)
        out += self._buf[self._pos : self._pos + buffered]
        self._pos += buffered
        k -= buffered
        while k:
            chunk = self._pull_exact_max(k)
            out += chunk
            k -= len(chunk)

    def _pull_exact_max(self, k: int) -> bytes:
        room = self._limit - self._produced
        if k > room:
            raise self._too_large()
        chunk = self._pull(k)
        if not chunk:
            raise self._truncated()
        self._produced += len(chunk)
        return chunk

    def remaining(self) -> int:
        return self._limit - self._produced + len(self._buf) - self._pos

    def peek(self, k: int) -> bytes:
        """Up to `k` next bytes (fewer only when the stream ends first), left unread."""
        while len(self._buf) - self._pos < k:
            chunk = self._more(k - len(self._buf) + self._pos)
            if not chunk:
                break
            self._buf += chunk
        return bytes(self._buf[self._pos : self._pos + k])

    def set_limit(self, limit: int) -> None:
        """Tighten the limit once the object's own prefix tells how large it can be."""
        if self._produced > limit:
            raise self._too_large()
        self._limit = min(self._limit, limit)

    def finish(self) -> None:
        # Whatever follows the object inside the compressed stream is refused, however little.
        if len(self._buf) - self._pos or self._pull(1):
            raise _fail(f"{self._label} decompresses to more bytes than the object it holds", TRAILING)
        self._end()

    def _end(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def read_all(self) -> bytes:
        """Everything the frame holds (at most the limit), then the frame's end checks."""
        out = bytearray(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        while chunk := self._more(_CHUNK):
            out += chunk
        self._end()
        return bytes(out)


class _ZstdSource(_StreamSource):
    def __init__(self, payload: memoryview, limit: int, label: str):
        super().__init__(limit, label)
        import zstandard

        self._zstd_error = zstandard.ZstdError
        self._declared = _check_zstd_frame(payload, limit, label)
        self._reader = zstandard.ZstdDecompressor(max_window_size=_zstd_window_cap(limit)).stream_reader(
            payload, read_across_frames=False, closefd=False
        )

    def _pull(self, want: int) -> bytes:
        try:
            out = self._reader.read(want)
        except self._zstd_error as exc:
            code = TOO_LARGE if "memory" in str(exc) else MALFORMED
            raise _fail(f"{self._label} is corrupt zstd data: {exc}", code) from None
        if self._declared is not None and self._produced + len(out) > self._declared:
            raise _fail(f"{self._label} decompresses to more than the {self._declared} bytes its frame declares")
        return out

    def _end(self) -> None:
        # The frame's exact extent was checked before decompressing; its end has been reached.
        if self._declared is not None and self._produced != self._declared:
            raise _fail(f"{self._label} holds {self._produced} bytes, its frame declares {self._declared}")


class _ZlibSource(_StreamSource):
    def __init__(self, payload: memoryview, limit: int, label: str):
        super().__init__(limit, label)
        if len(payload) < 2 or payload[0] & 0x0F != 8 or payload[0] >> 4 > 7 or payload[1] & 0x20:
            raise _fail(f"{label} is not a zlib stream (or needs a preset dictionary)")
        self._payload = payload
        self._in = 0
        self._d = zlib.decompressobj()

    def _pull(self, want: int) -> bytes:
        # decompress(data, max_length) never produces more than asked; input is fed in pieces
        # so the unconsumed tail it keeps stays small.
        try:
            while True:
                if self._d.eof:
                    return b""
                if self._d.unconsumed_tail:
                    data = self._d.unconsumed_tail
                elif self._in < len(self._payload):
                    data = self._payload[self._in : self._in + _CHUNK]
                    self._in += len(data)
                else:
                    return self._d.decompress(b"", want)
                out = self._d.decompress(data, want)
                if out:
                    return out
        except zlib.error as exc:
            raise _fail(f"{self._label} is corrupt zlib data: {exc}") from None

    def _end(self) -> None:
        if not self._d.eof:
            raise self._truncated()
        if self._d.unused_data or self._d.unconsumed_tail or self._in < len(self._payload):
            raise _fail(f"{self._label} has bytes after its zlib stream", TRAILING)


def _zstd_window_cap(limit: int) -> int:
    """The largest window a frame for `limit` bytes may ask the decoder to allocate."""
    return min(_ZSTD_WINDOW_CAP, max(_ZSTD_WINDOW_FLOOR, 1 << max(10, (limit - 1).bit_length())))


def _check_zstd_frame(p: memoryview, limit: int, label: str) -> int | None:
    """Check a single zstd frame spans exactly `p` and cannot be made to exceed `limit`.

    Walks the frame header and block headers (RFC 8878) without decompressing. Returns the
    content size the frame declares, if any.
    """
    size = len(p)
    if size < 6 or struct.unpack_from("<I", p, 0)[0] != _ZSTD_MAGIC:
        raise _fail(f"{label} is not a zstd frame")
    fhd = p[4]
    fcs_flag, single, reserved, checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 3) & 1, (fhd >> 2) & 1, fhd & 3
    if reserved or dict_flag:
        raise _fail(f"{label} is a zstd frame with a dictionary or reserved flags")
    pos = 5
    window = None
    if not single:
        descriptor = p[pos]
        pos += 1
        base = 1 << (10 + (descriptor >> 3))
        window = base + (base >> 3) * (descriptor & 7)
    fcs_size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if pos + fcs_size > size:
        raise _fail(f"{label} is a truncated zstd frame")
    declared = None
    if fcs_size:
        declared = int.from_bytes(p[pos : pos + fcs_size], "little") + (256 if fcs_size == 2 else 0)
        pos += fcs_size
    if declared is not None and declared > limit:
        raise _fail(f"{label} declares {declared} bytes, more than the {limit} it can hold", TOO_LARGE)
    if window is None:
        window = declared or 0
    window_cap = _zstd_window_cap(limit)
    if window > window_cap:
        raise _fail(f"{label} asks for a {window}-byte zstd window, more than {window_cap}", TOO_LARGE)
    block_max = min(window, _ZSTD_BLOCK_MAX) if window else _ZSTD_BLOCK_MAX
    max_blocks = _ZSTD_BLOCKS_SLACK + _ZSTD_BLOCKS_PER_KIB * (limit >> 10)
    explicit = 0  # output of raw and RLE blocks, known without decompressing
    blocks = 0
    while True:
        if pos + 3 > size:
            raise _fail(f"{label} is a truncated zstd frame")
        header = p[pos] | p[pos + 1] << 8 | p[pos + 2] << 16
        pos += 3
        blocks += 1
        last, kind, length = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3 or length > block_max:
            raise _fail(f"{label} is a corrupt zstd frame (bad block header)")
        if blocks > max_blocks:
            raise _fail(f"{label} is a zstd frame of more than {max_blocks} blocks", TOO_LARGE)
        if kind == 1:  # RLE: one byte repeated `length` times
            explicit += length
            pos += 1
        else:
            pos += length
            if kind == 0:
                explicit += length
        if explicit > limit:
            raise _fail(f"{label} decompresses to more than the {limit} bytes it can hold", TOO_LARGE)
        if last:
            break
    if checksum:
        pos += 4
    if pos > size:
        raise _fail(f"{label} is a truncated zstd frame")
    if pos < size:
        raise _fail(f"{label} has {size - pos} bytes after its zstd frame", TRAILING)
    return declared


def _stream_source(payload: memoryview, mode: int, limit: int, label: str) -> _StreamSource:
    if mode == COMPR_ZSTD:
        return _ZstdSource(payload, limit, label)
    if mode == COMPR_ZLIB:
        return _ZlibSource(payload, limit, label)
    raise _fail(f"{label} uses unknown compression mode {mode}")


def decompress_bounded(payload: bytes | bytearray | memoryview, mode: int, limit: int, what: str) -> bytes:
    """Decompress one zstd (mode 2) or zlib (mode 1) stream that must hold at most `limit` bytes.

    Nothing proportional to a declared size is allocated: a frame declaring more than the
    limit is refused from its header, output is produced in bounded pieces and refused past
    the limit, and bytes after the frame are refused.
    """
    view = payload if isinstance(payload, memoryview) else memoryview(payload)
    return _stream_source(view.cast("B") if view.format != "B" else view, mode, limit, what).read_all()


# Without parameters to bound it, an object's decompressed size is capped here (SEAL's own
# objects stay far below: a 16-polynomial ciphertext at N=32768 with 20 primes is 80 MiB).
UNKNOWN_OBJECT_LIMIT = 1 << 31


def _ciphertext_limit_from_prefix(prefix: bytes) -> int | None:
    """The largest members size of a ciphertext with this prefix, if it looks like one."""
    ntt = prefix[32]
    size, degree, count = struct.unpack_from("<3Q", prefix, 33)
    (scale,) = struct.unpack_from("<d", prefix, 57)
    (correction,) = struct.unpack_from("<Q", prefix, 65)
    # Every field must fit SEAL's own limits, so the bytes of another object type (whose
    # limit then stays UNKNOWN_OBJECT_LIMIT) are not mistaken for a small ciphertext.
    sane = (
        ntt in (0, 1)
        and 2 <= size <= SEAL_CIPHERTEXT_SIZE_MAX
        and 2 <= degree <= 131072
        and degree & (degree - 1) == 0
        and 1 <= count <= 256
        and math.isfinite(scale)
        and scale > 0
        and 1 <= correction
    )
    if not sane:
        return None
    return CT_PREFIX + dynarray_bytes(size * count * degree) + HEADER + PRNG_MEMBERS


def uncompress_outer(blob: bytes | bytearray | memoryview, what: str, limit: int | None = None) -> bytes:
    """A SEAL object's serialization with its outer compression removed (nested objects as they are).

    For a client's own objects (SEAL compresses only the outer level). The members may
    decompress to at most `limit` bytes; by default the size a ciphertext's own prefix allows,
    or UNKNOWN_OBJECT_LIMIT for anything that does not look like a ciphertext.
    """
    view = _view(blob, what)
    magic, header_size, _major, _minor, mode, _reserved, size = struct.unpack_from("<HBBBBHQ", view, 0)
    if magic != MAGIC or header_size != HEADER:
        raise _fail(f"{what} is not a SEAL object")
    if size < len(view):
        raise _fail(f"{what} is followed by {len(view) - size} unexpected bytes", TRAILING)
    if size > len(view):
        raise _fail(f"{what} declares {size} bytes but is truncated")
    if mode == COMPR_NONE:
        return bytes(view)
    src = _stream_source(view[HEADER:], mode, UNKNOWN_OBJECT_LIMIT if limit is None else limit, what)
    if limit is None:
        prefix = src.peek(CT_PREFIX)
        inferred = _ciphertext_limit_from_prefix(prefix) if len(prefix) == CT_PREFIX else None
        if inferred is not None:
            src.set_limit(inferred)
    body = src.read_all()
    header = bytearray(view[:HEADER])
    header[5] = COMPR_NONE
    struct.pack_into("<Q", header, 8, HEADER + len(body))
    return bytes(header) + body


# --- the walker -------------------------------------------------------------------------------


Members = Callable[[_Source], object]


class _Walker:
    """Reads one object tree and writes its canonical (uncompressed) serialization to `out`."""

    def __init__(self, allow_compressed: bool, write_version: tuple[int, int] | None = None):
        self.out = bytearray()
        self.allow_compressed = allow_compressed
        # Every header copied to `out` gets this version: the one the SEAL loading `out` reads.
        self.write_version = write_version or local_version()
        self.found_version: tuple[int, int] | None = None

    def object(self, src: _Source, members: Members, limit: int, label: str, top: bool = False) -> object:
        """One SEAL object of at most `limit` member bytes (uncompressed): header, then members."""
        header = bytes(src.read(HEADER))
        magic, header_size, major, minor, mode, reserved, size = struct.unpack("<HBBBBHQ", header)
        if magic != MAGIC or header_size != HEADER or reserved:
            raise _fail(f"{label} is not a SEAL object")
        if (major, minor) not in ACCEPTED_VERSIONS:
            raise _version_refusal(label, major, minor)
        # One SEAL writes an object and all it nests: headers that disagree were put together by hand.
        if self.found_version is None:
            self.found_version = (major, minor)
        elif (major, minor) != self.found_version:
            found = version_text(self.found_version)
            raise _fail(f"{label} was written by SEAL {major}.{minor}, the object holding it by SEAL {found}")
        if mode not in (COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD):
            raise _fail(f"{label} uses unknown compression mode {mode}")
        if size < HEADER:
            raise _fail(f"{label} declares a size of {size} bytes, smaller than its header")
        body = size - HEADER
        if top and body < src.remaining():
            raise _fail(f"{label} is followed by {src.remaining() - body} unexpected bytes", TRAILING)
        if body > src.remaining():
            raise _fail(f"{label} declares {size} bytes but is truncated")
        start = len(self.out)
        self.out += header
        self.out[start + 3 : start + 5] = bytes(self.write_version)
        if mode == COMPR_NONE:
            # At the top the bytes are already in memory and the walk says precisely what is
            # wrong (e.g. a Galois element not allowed); a nested object must fit its parent.
            if body > limit and not top:
                raise _fail(f"{label} declares {body} bytes of contents, more than the {limit} it can hold")
            sub = _SubSource(src, body, label)
            result = members(sub)
            sub.finish()
        else:
            if not self.allow_compressed:
                raise _fail(f"{label} is compressed; only uncompressed objects are accepted here", COMPRESSED)
            if body > _compressed_bound(limit):
                raise _fail(f"{label} has {body} bytes of compressed data, more than its contents allow", TOO_LARGE)
            payload = src.read(body)
            stream = _stream_source(memoryview(payload), mode, limit, label)
            result = members(stream)
            stream.finish()
        self.out[start + 5] = COMPR_NONE
        struct.pack_into("<Q", self.out, start + 8, len(self.out) - start)
        return result

    # --- Ciphertext ---------------------------------------------------------------------------

    def ciphertext(
        self,
        src: _Source,
        label: str,
        *,
        n: int,
        primes: int,
        max_size: int,
        allow_seeded: bool,
        parms_id: tuple[int, ...] | None,
    ) -> bool:
        """A Ciphertext's members; True when it is seeded."""
        prefix = bytes(src.read(CT_PREFIX))
        found_parms = struct.unpack_from("<4Q", prefix, 0)
        ntt = prefix[32]
        size, degree, count = struct.unpack_from("<3Q", prefix, 33)
        (scale,) = struct.unpack_from("<d", prefix, 57)
        (correction,) = struct.unpack_from("<Q", prefix, 65)
        if degree != n or count != primes:
            raise _fail(f"{label} is for N={degree} with {count} primes; expected N={n} with {primes}")
        if not 2 <= size <= max_size:
            raise _fail(f"{label} has {size} polynomials; expected 2..{max_size}")
        if ntt != 1:
            raise _fail(f"{label} is not in NTT form")
        if not (math.isfinite(scale) and scale >= sys.float_info.min):
            raise _fail(f"{label} has an invalid scale {scale!r}")
        if correction != 1:
            raise _fail(f"{label} has correction factor {correction}; CKKS uses 1")
        if parms_id is not None and found_parms != tuple(parms_id):
            raise _fail(f"{label} is not at the expected level of these parameters")
        self.out += prefix
        full = size * primes * n
        seeded_count = primes * n if size == 2 else None

        def coefficients(inner: _Source) -> int:
            (elements,) = struct.unpack("<Q", inner.read(8))
            if elements == seeded_count and not allow_seeded:
                raise _fail(f"{label} is seeded; only full ciphertexts are accepted here", SEEDED)
            if elements not in (full, seeded_count):
                raise _fail(f"{label} declares {elements} coefficients; expected {full} (or {seeded_count} seeded)")
            self.out += struct.pack("<Q", elements)
            inner.copy(self.out, 8 * elements)
            return elements

        elements = self.object(src, coefficients, 8 + 8 * full, f"{label} coefficients")
        if elements != seeded_count:
            return False

        def seed(inner: _Source) -> None:
            info = bytes(inner.read(PRNG_MEMBERS))
            if info[0] not in PRNG_TYPES:
                raise _fail(f"{label} has an unknown PRNG type {info[0]}")
            self.out += info

        self.object(src, seed, PRNG_MEMBERS, f"{label} seed")
        return True

    # --- KSwitchKeys --------------------------------------------------------------------------

    def kswitch_keys(
        self,
        src: _Source,
        label: str,
        *,
        n: int,
        key_primes: int,
        relin: bool,
        allowed: set[int] | frozenset[int] | None,
        cap: int,
        parms_id: tuple[int, ...] | None,
        elements: list[int],
    ) -> None:
        head = bytes(src.read(KSWITCH_PREFIX))
        found_parms = struct.unpack_from("<4Q", head, 0)
        (slots,) = struct.unpack_from("<Q", head, 32)
        if parms_id is not None and found_parms != tuple(parms_id):
            raise _fail(f"{label} is not at the key level of these parameters")
        expected_slots = 1 if relin else n
        if slots != expected_slots:
            raise _fail(f"{label} declares {slots} key slots; expected {expected_slots}")
        self.out += head
        per_slot = key_primes - 1
        key_limit = ciphertext_bound(n, key_primes) - HEADER
        for index in range(slots):
            (keys,) = struct.unpack("<Q", src.read(8))
            if keys == 0 and not relin:
                self.out += b"\0" * 8
                continue
            if keys != per_slot:
                raise _fail(f"{label} slot {index} declares {keys} keys; expected {per_slot}")
            if not relin:
                element = 2 * index + 1
                if allowed is not None and element not in allowed:
                    raise _fail(f"{label} holds a key for Galois element {element}, which is not allowed", NOT_ALLOWED)
                elements.append(element)
                if len(elements) > cap:
                    raise _fail(f"{label} holds more than the {cap} Galois keys allowed", TOO_MANY)
            self.out += struct.pack("<Q", keys)
            for j in range(keys):
                key_label = f"{label} key {j} of slot {index}"
                self.object(
                    src,
                    functools.partial(
                        self.ciphertext,
                        label=key_label,
                        n=n,
                        primes=key_primes,
                        max_size=2,
                        allow_seeded=True,
                        parms_id=parms_id,
                    ),
                    key_limit,
                    key_label,
                )


def _view(blob: bytes | bytearray | memoryview, what: str) -> memoryview:
    view = memoryview(blob)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if len(view) < HEADER:
        raise _fail(f"{what} is too short to be a SEAL object")
    return view


def _plain_ciphertext(
    view: memoryview, n: int, primes: int, max_size: int, allow_seeded: bool, parms_id: tuple[int, ...] | None
) -> tuple[int, int] | None:
    """The version of `view` when it is exactly a well-formed, uncompressed ciphertext (the common case).

    The same checks as the walker, on a few fixed offsets and without copying, so that a
    batch of hundreds of ciphertexts pays microseconds each. Anything else (compression,
    a field out of place, headers of different versions) returns None and takes the walker,
    which names what is wrong.
    """
    try:
        version = (view[3], view[4])
        if version not in ACCEPTED_VERSIONS:
            return None

        def header(offset: int, expected_size: int | None = None) -> int | None:
            magic, size_of_header, major, minor, mode, reserved, size = struct.unpack_from("<HBBBBHQ", view, offset)
            good = (
                magic == MAGIC
                and size_of_header == HEADER
                and not reserved
                and mode == COMPR_NONE
                and (major, minor) == version
            )
            return size if good and (expected_size is None or size == expected_size) else None

        if header(0, len(view)) is None:
            return None
        found_parms = struct.unpack_from("<4Q", view, HEADER)
        ntt = view[HEADER + 32]
        size, degree, count = struct.unpack_from("<3Q", view, HEADER + 33)
        (scale,) = struct.unpack_from("<d", view, HEADER + 57)
        (correction,) = struct.unpack_from("<Q", view, HEADER + 65)
        if degree != n or count != primes or not 2 <= size <= max_size or ntt != 1 or correction != 1:
            return None
        if not (math.isfinite(scale) and scale >= sys.float_info.min):
            return None
        if parms_id is not None and found_parms != tuple(parms_id):
            return None
        inner = HEADER + CT_PREFIX
        inner_size = header(inner)
        if inner_size is None:
            return None
        (elements,) = struct.unpack_from("<Q", view, inner + HEADER)
        seeded = size == 2 and elements == primes * n
        if elements != size * primes * n and not (seeded and allow_seeded):
            return None
        if inner_size != HEADER + 8 + 8 * elements:
            return None
        end = inner + inner_size
        if seeded:
            if header(end, HEADER + PRNG_MEMBERS) is None or view[end + HEADER] not in PRNG_TYPES:
                return None
            end += HEADER + PRNG_MEMBERS
        return version if end == len(view) else None
    except (struct.error, IndexError):
        return None


def _retagged(view: memoryview, version: tuple[int, int]) -> bytes:
    """A copy of a ciphertext that _plain_ciphertext accepted, with `version` in each of its headers.

    Its headers are where that check found them: the ciphertext's own, its coefficient array's
    after the fixed prefix, and, when more follows the array, the seed's.
    """
    out = bytearray(view)
    inner = HEADER + CT_PREFIX
    (inner_size,) = struct.unpack_from("<Q", out, inner + 8)
    offsets = [0, inner] if inner + inner_size == len(out) else [0, inner, inner + inner_size]
    for offset in offsets:
        out[offset + 3 : offset + 5] = bytes(version)
    return bytes(out)


def canonical_ciphertext(
    blob: bytes | bytearray | memoryview,
    n: int,
    primes: int,
    what: str,
    *,
    allow_seeded: bool = True,
    allow_compressed: bool = True,
    max_size: int = 2,
    parms_id: tuple[int, ...] | list[int] | None = None,
) -> bytes:
    """The ciphertext in `blob`, checked against the parameters and rewritten uncompressed.

    `primes` counts the primes at the ciphertext's level (all but the special prime for a
    fresh ciphertext). The result is at most ciphertext_bound(n, primes, size=max_size)
    bytes and is what SEAL should load; SealDecodeError (with a `code`) otherwise.
    """
    if not 2 <= max_size <= SEAL_CIPHERTEXT_SIZE_MAX:
        raise ValueError(f"max_size must be 2..{SEAL_CIPHERTEXT_SIZE_MAX}")
    view = _view(blob, what)
    expected = tuple(parms_id) if parms_id is not None else None
    found = _plain_ciphertext(view, n, primes, max_size, allow_seeded, expected)
    if found is not None:
        # Already canonical: what the walker would have copied, byte for byte (versions included).
        return bytes(view) if found == local_version() else _retagged(view, local_version())
    walker = _Walker(allow_compressed)
    walker.object(
        _BufferSource(view, what),
        functools.partial(
            walker.ciphertext,
            label=what,
            n=n,
            primes=primes,
            max_size=max_size,
            allow_seeded=allow_seeded,
            parms_id=expected,
        ),
        ciphertext_bound(n, primes, size=max_size) - HEADER,
        what,
        top=True,
    )
    return bytes(walker.out)


def with_version(blob: bytes, version: tuple[int, int]) -> bytes:
    """A ciphertext this server serialized (seal_io.dump), written for a client whose SEAL is `version`.

    In the version it already has: `blob` itself, as it was. In another accepted version (SEAL
    4.1 loads only 4.1 headers): checked as a client's ciphertext is, with `version` in every
    header its structure holds, and zstd-compressed as SEAL writes it when that is smaller.
    Layouts are identical between accepted versions, so no other byte of the contents changes.
    ValueError for a version not in ACCEPTED_VERSIONS.
    """
    version = (int(version[0]), int(version[1]))
    if version not in ACCEPTED_VERSIONS:
        raise ValueError(f"SEAL serialization version {version_text(version)} is not one of {_accepted_text()}")
    what = "result ciphertext"
    view = _view(blob, what)
    if object_version(view) == version:
        return blob
    from heserve.engine import seal_raw  # seal_raw builds on this module: imported when first needed

    plain = memoryview(seal_raw.own_uncompressed(bytes(view)))
    if len(plain) < HEADER + CT_PREFIX:
        raise _fail(f"{what} is too short to be a ciphertext")
    _, degree, count = struct.unpack_from("<3Q", plain, HEADER + 33)
    if _plain_ciphertext(plain, degree, count, SEAL_CIPHERTEXT_SIZE_MAX, True, None) is not None:
        return _zstd_framed(_retagged(plain, version))
    # Not the ciphertext SEAL writes: the walker says what is wrong with it.
    walker = _Walker(allow_compressed=False, write_version=version)
    walker.object(
        _BufferSource(plain, what),
        functools.partial(
            walker.ciphertext,
            label=what,
            n=degree,
            primes=count,
            max_size=SEAL_CIPHERTEXT_SIZE_MAX,
            allow_seeded=True,
            parms_id=None,
        ),
        UNKNOWN_OBJECT_LIMIT,
        what,
        top=True,
    )
    return bytes(walker.out)


def _zstd_framed(plain: bytes) -> bytes:
    """A SEAL object compressed as SEAL compresses it (header with mode zstd, then one zstd frame of
    everything after it), when that is smaller: coefficients below 2^45 in 64-bit words leave a
    quarter of the bytes to gain, uniformly random 60-bit ones nothing."""
    import zstandard

    body = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(plain[HEADER:])
    if HEADER + len(body) >= len(plain):
        return plain
    header = bytearray(plain[:HEADER])
    header[5] = COMPR_ZSTD
    struct.pack_into("<Q", header, 8, HEADER + len(body))
    return bytes(header) + body


def canonical_kswitch_keys(
    blob: bytes | bytearray | memoryview,
    n: int,
    key_primes: int,
    what: str,
    *,
    allowed_galois_elements: set[int] | frozenset[int] | None = None,
    relin: bool = False,
    max_elements: int | None = None,
    allow_compressed: bool = True,
    parms_id: tuple[int, ...] | list[int] | None = None,
) -> tuple[bytes, list[int]]:
    """GaloisKeys (relin=False) or RelinKeys (relin=True) checked and rewritten uncompressed.

    `key_primes` counts all primes, the special one included. For Galois keys every present
    element must be in `allowed_galois_elements` (None: any element) and there may be at most
    `max_elements` of them (default: as many as allowed); each is refused when its slot is
    reached, before its key is decompressed or copied. Returns the canonical bytes (at most
    kswitch_keys_bound(n, key_primes, number of elements)) and the Galois elements present,
    ascending (empty for relinearization keys).
    """
    view = _view(blob, what)
    if relin:
        cap = 1
    else:
        cap = n - 1 if allowed_galois_elements is None else len(allowed_galois_elements)
        if max_elements is not None:
            cap = min(cap, max_elements)
    walker = _Walker(allow_compressed)
    elements: list[int] = []
    try:
        walker.object(
            _BufferSource(view, what),
            functools.partial(
                walker.kswitch_keys,
                label=what,
                n=n,
                key_primes=key_primes,
                relin=relin,
                allowed=allowed_galois_elements,
                cap=cap,
                parms_id=tuple(parms_id) if parms_id is not None else None,
                elements=elements,
            ),
            kswitch_keys_bound(n, key_primes, cap, relin=relin) - HEADER,
            what,
            top=True,
        )
    except SealDecodeError as exc:
        if exc.code != TOO_LARGE or relin:
            raise
        # A compressed upload is bounded by the number of keys it may hold: say so.
        raise _fail(f"{exc} (keys for at most {cap} Galois elements are accepted here)", TOO_LARGE) from None
    return bytes(walker.out), elements
