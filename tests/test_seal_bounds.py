"""Bounded parsing of clients' SEAL objects, against real objects built as an attacker builds them.

Every object here is produced by tenseal.sealapi (honest ones through client.keys.SecretContext)
and then taken apart and rebuilt at the byte level: recompressed at each nesting level,
truncated, padded, its counts rewritten, or replaced by all-zero keys for many Galois elements.
"""

from __future__ import annotations

import functools
import json
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tenseal.sealapi as sealapi
import zstandard

from heserve.client.keys import SecretContext
from heserve.engine import seal_bounds, seal_io, seal_raw
from heserve.engine.params import CKKSParams, galois_element
from heserve.engine.seal_io import SealDecodeError

LINEAR = CKKSParams(4096, (60, 49))
NETWORK = CKKSParams(8192, (45, 45, 45, 60))
ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20

MALFORMED = "malformed_seal_object"
TOO_LARGE = "seal_frame_too_large"
TRAILING = "seal_trailing_bytes"
COMPRESSED = "compressed_not_accepted"
NOT_ALLOWED = "galois_element_not_allowed"
TOO_MANY = "too_many_galois_elements"


# --- building SEAL objects byte by byte -----------------------------------------------------------


def _header(mode: int, size: int) -> bytes:
    major, minor = seal_bounds.local_version()
    return struct.pack("<HBBBBHQ", 0xA15E, 16, major, minor, mode, 0, size)


def _compress(members: bytes, mode: int) -> bytes:
    if mode == 1:
        return zlib.compress(members)
    if mode == 2:
        return zstandard.ZstdCompressor().compress(members)
    return members


def _obj(members: bytes, mode: int = 0) -> bytes:
    """A SEAL object holding `members`, compressed with `mode` as SEAL would (0 none, 1 zlib, 2 zstd)."""
    payload = _compress(members, mode)
    return _header(mode, 16 + len(payload)) + payload


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def _split_ct(canonical: bytes, offset: int = 0) -> tuple[bytes, bytes, bytes | None, int]:
    """(prefix, coefficient members, seed members or None, end offset) of an uncompressed ciphertext."""
    (size,) = struct.unpack_from("<Q", canonical, offset + 8)
    body = canonical[offset + 16 : offset + size]
    prefix = body[:73]
    (dyn_size,) = struct.unpack_from("<Q", body, 73 + 8)
    coefficients = body[73 + 16 : 73 + dyn_size]
    rest = body[73 + dyn_size :]
    seed = rest[16:] if rest else None
    return prefix, coefficients, seed, offset + size


def _ct(prefix: bytes, coefficients: bytes, seed: bytes | None, modes: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    members = prefix + _obj(coefficients, modes[1]) + (_obj(seed, modes[2]) if seed is not None else b"")
    return _obj(members, modes[0])


def _split_keys(canonical: bytes) -> tuple[bytes, list[list[tuple[bytes, bytes, bytes | None]]]]:
    """(parms_id, slots of split public keys) of uncompressed GaloisKeys or RelinKeys."""
    parms_id = canonical[16:48]
    (slot_count,) = struct.unpack_from("<Q", canonical, 48)
    offset = 56
    slots = []
    for _ in range(slot_count):
        (keys,) = struct.unpack_from("<Q", canonical, offset)
        offset += 8
        slot = []
        for _ in range(keys):
            prefix, coefficients, seed, offset = _split_ct(canonical, offset)
            slot.append((prefix, coefficients, seed))
        slots.append(slot)
    assert offset == len(canonical)
    return parms_id, slots


def _keys(parms_id: bytes, slots, outer: int = 0, key_modes: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    parts = [parms_id, _u64(len(slots))]
    for slot in slots:
        parts.append(_u64(len(slot)))
        parts.extend(_ct(*key, modes=key_modes) for key in slot)
    return _obj(b"".join(parts), outer)


def _code(call) -> str:
    with pytest.raises(SealDecodeError) as info:
        call()
    return info.value.code


def _zstd_frame(blocks: list[bytes], content_size: int | None, window_log: int = 17) -> bytes:
    """A hand-made zstd frame: raw blocks, with any declared content size (FCS) and window."""
    if content_size is None:
        out = struct.pack("<IB", 0xFD2FB528, 0b00000000) + bytes([(window_log - 10) << 3])
    else:
        out = struct.pack("<IB", 0xFD2FB528, 0b11000000) + bytes([(window_log - 10) << 3]) + _u64(content_size)
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1
        header = int(last) | (0 << 1) | (len(block) << 3)
        out += header.to_bytes(3, "little") + block
    return out


def _raw_blocks(data: bytes) -> list[bytes]:
    return [data[i : i + (1 << 17)] for i in range(0, len(data), 1 << 17)] or [b""]


# --- attacker's all-zero Galois keys ---------------------------------------------------------------


def _zero_public_key(params: CKKSParams) -> tuple[bytes, bytes]:
    """The members of a valid full public key with all-zero coefficients: (prefix + header, zeros)."""
    n, primes = params.poly_modulus_degree, len(params.coeff_mod_bit_sizes)
    parms_id = struct.pack("<4Q", *params.seal_context().key_parms_id())
    count = 2 * primes * n
    prefix = parms_id + b"\x01" + struct.pack("<3Qd", 2, n, primes, 1.0) + _u64(1)
    return prefix + _header(0, 16 + 8 + 8 * count) + _u64(count), bytes(8 * count)


def zero_galois_members(params: CKKSParams, elements: list[int], key_mode: int = 0) -> Iterator[bytes]:
    """GaloisKeys members whose keys are valid full public keys with all-zero coefficients.

    key_mode compresses each public key on its own (the outer object then stays uncompressed).
    """
    n, primes = params.poly_modulus_degree, len(params.coeff_mod_bit_sizes)
    head, zeros = _zero_public_key(params)
    if key_mode:
        key = [_obj(head + zeros, key_mode)]
    else:
        key = [_header(0, 16 + len(head) + len(zeros)) + head, zeros]
    wanted = set(elements)
    yield struct.pack("<4Q", *params.seal_context().key_parms_id()) + _u64(n)
    for index in range(n):
        if 2 * index + 1 in wanted:
            yield _u64(primes - 1)
            for _ in range(primes - 1):
                yield from key
        else:
            yield _u64(0)


def zero_galois_attack(params: CKKSParams, elements: list[int], how: str) -> bytes:
    """The registration bomb: zero keys for many elements, as a few tens of KB.

    how: "streamed" (outer zstd frame without a declared size), "declared" (with its size),
    or "per key" (uncompressed outer object, every public key zstd-compressed on its own).
    """
    if how == "per key":
        return _obj(b"".join(zero_galois_members(params, elements, key_mode=2)))
    total = sum(len(part) for part in zero_galois_members(params, elements))
    compressor = zstandard.ZstdCompressor().compressobj(size=total if how == "declared" else -1)
    frame = b"".join(compressor.compress(part) for part in zero_galois_members(params, elements))
    frame += compressor.flush()
    return _header(2, 16 + len(frame)) + frame


def bomb_elements(params: CKKSParams, count: int) -> list[int]:
    n = params.poly_modulus_degree
    return sorted({galois_element(step, n) for step in range(1, count + 1)})


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear() -> SecretContext:
    return SecretContext.generate(LINEAR)


@pytest.fixture(scope="module")
def network() -> SecretContext:
    return SecretContext.generate(NETWORK)


def _np(params: CKKSParams) -> tuple[int, int]:
    return params.poly_modulus_degree, len(params.coeff_mod_bit_sizes)


def _galois(secret: SecretContext, steps: list[int]) -> tuple[bytes, list[int]]:
    n = secret.params.poly_modulus_degree
    elements = sorted({galois_element(s, n) for s in steps})
    return seal_io.dump(secret._keygen.create_galois_keys(elements)), elements


def _canonical_galois(secret: SecretContext, steps: list[int]) -> tuple[bytes, list[int]]:
    blob, elements = _galois(secret, steps)
    n, primes = _np(secret.params)
    canonical, found = seal_bounds.canonical_kswitch_keys(
        blob, n, primes, "galois_keys", allowed_galois_elements=set(elements)
    )
    assert found == elements
    return canonical, elements


def _scale(secret: SecretContext) -> float:
    # The linear models' single 60-bit data prime leaves room for a 2^40 scale, well above
    # the noise a rotation adds; the networks' 45-bit primes take 2^30.
    return 2.0**40 if secret.params == LINEAR else 2.0**30


def _canonical_ct(secret: SecretContext, seeded: bool) -> bytes:
    n, primes = _np(secret.params)
    blob = secret.encrypt(np.arange(8.0), _scale(secret), seeded=seeded)
    return seal_bounds.canonical_ciphertext(blob, n, primes - 1, "ciphertext")


# --- honest objects round-trip --------------------------------------------------------------------


def test_decode_error_keeps_its_one_argument_constructor():
    error = SealDecodeError("bad bytes")
    assert str(error) == "bad bytes" and error.code == MALFORMED
    assert SealDecodeError("x", TOO_LARGE).code == TOO_LARGE
    assert isinstance(seal_raw.RawCiphertextError("y"), SealDecodeError)


@pytest.mark.parametrize("which", ["linear", "network"])
@pytest.mark.parametrize("seeded", [True, False])
def test_honest_ciphertexts_round_trip(request, which, seeded):
    secret = request.getfixturevalue(which)
    n, primes = _np(secret.params)
    blob = secret.encrypt(np.arange(8.0) / 4, _scale(secret), seeded=seeded)
    canonical = seal_bounds.canonical_ciphertext(blob, n, primes - 1, "ciphertext")
    assert len(canonical) == seal_bounds.ciphertext_bound(n, primes - 1, seeded=seeded)
    assert canonical[5] == 0 and canonical[16 + 73 + 5] == 0
    if not seeded:
        assert canonical == blob  # already canonical: the client sends it uncompressed
    ct = seal_io.load(sealapi.Ciphertext, secret._context, canonical, "ciphertext")
    assert np.allclose(secret.decrypt(seal_io.dump(ct))[:8], np.arange(8.0) / 4, atol=1e-4)
    # A canonical serialization is a fixed point.
    assert seal_bounds.canonical_ciphertext(canonical, n, primes - 1, "ciphertext") == canonical


@pytest.mark.parametrize("which", ["linear", "network"])
def test_honest_galois_keys_round_trip_and_rotate(request, which):
    secret = request.getfixturevalue(which)
    n, primes = _np(secret.params)
    steps = [1, 2, 4, -1]
    blob, elements = _galois(secret, steps)
    canonical, found = seal_bounds.canonical_kswitch_keys(
        blob, n, primes, "galois_keys", allowed_galois_elements=set(elements)
    )
    assert found == elements
    # Seeded public keys stay seeded: half the full bound.
    assert len(canonical) == seal_bounds.kswitch_keys_bound(n, primes, len(elements), seeded=True)
    assert len(canonical) < seal_bounds.kswitch_keys_bound(n, primes, len(elements))
    keys = seal_io.load(sealapi.GaloisKeys, secret._context, canonical, "galois_keys")
    ct = seal_io.load(sealapi.Ciphertext, secret._context, _canonical_ct(secret, seeded=True), "ciphertext")
    evaluator = sealapi.Evaluator(secret._context)
    for step in steps:
        rotated = sealapi.Ciphertext()
        evaluator.rotate_vector(ct, step, keys, rotated)
        expected = np.roll(np.pad(np.arange(8.0), (0, secret.slot_count - 8)), -step)
        values = secret.decrypt(seal_io.dump(rotated))
        assert np.allclose(values[:16], expected[:16], atol=1e-3), step


def test_honest_relin_keys_round_trip_and_relinearize(network):
    n, primes = _np(NETWORK)
    blob = seal_io.dump(network._keygen.create_relin_keys())
    canonical, found = seal_bounds.canonical_kswitch_keys(blob, n, primes, "relin_keys", relin=True)
    assert found == []
    assert len(canonical) == seal_bounds.kswitch_keys_bound(n, primes, 1, relin=True, seeded=True)
    keys = seal_io.load(sealapi.RelinKeys, network._context, canonical, "relin_keys")
    ct = seal_io.load(sealapi.Ciphertext, network._context, _canonical_ct(network, seeded=False), "ciphertext")
    evaluator = sealapi.Evaluator(network._context)
    squared = sealapi.Ciphertext()
    evaluator.multiply(ct, ct, squared)
    assert squared.size() == 3
    three = seal_io.dump(squared)
    # A size-3 product is refused unless asked for (compressed, from its frame's declared size),
    # then relinearizes correctly after its round trip.
    assert _code(lambda: seal_bounds.canonical_ciphertext(three, n, primes - 1, "product")) == TOO_LARGE
    plain = seal_raw.to_uncompressed(three)
    assert _code(lambda: seal_bounds.canonical_ciphertext(plain, n, primes - 1, "product")) == MALFORMED
    product = seal_io.load(
        sealapi.Ciphertext,
        network._context,
        seal_bounds.canonical_ciphertext(three, n, primes - 1, "product", max_size=3),
        "product",
    )
    evaluator.relinearize_inplace(product, keys)
    assert product.size() == 2
    assert np.allclose(network.decrypt(seal_io.dump(product))[:8], np.arange(8.0) ** 2, atol=1e-2)


# --- compression at every nesting level -----------------------------------------------------------


@pytest.mark.parametrize("mode", [1, 2], ids=["zlib", "zstd"])
@pytest.mark.parametrize("level", ["outer", "coefficients", "seed", "all"])
def test_ciphertext_compressed_at_each_level(linear, mode, level):
    n, primes = _np(LINEAR)
    canonical = _canonical_ct(linear, seeded=True)
    prefix, coefficients, seed, _ = _split_ct(canonical)
    modes = {"outer": (mode, 0, 0), "coefficients": (0, mode, 0), "seed": (0, 0, mode), "all": (mode,) * 3}[level]
    blob = _ct(prefix, coefficients, seed, modes)
    assert seal_bounds.canonical_ciphertext(blob, n, primes - 1, "ct") == canonical
    assert _code(lambda: seal_bounds.canonical_ciphertext(blob, n, primes - 1, "ct", allow_compressed=False)) == (
        COMPRESSED
    )


@pytest.mark.parametrize("mode", [1, 2], ids=["zlib", "zstd"])
@pytest.mark.parametrize("level", ["outer", "key", "key coefficients", "key seed", "all"])
def test_galois_keys_compressed_at_each_level(linear, mode, level):
    n, primes = _np(LINEAR)
    canonical, elements = _canonical_galois(linear, [1, 3])
    parms_id, slots = _split_keys(canonical)
    outer, key_modes = {
        "outer": (mode, (0, 0, 0)),
        "key": (0, (mode, 0, 0)),
        "key coefficients": (0, (0, mode, 0)),
        "key seed": (0, (0, 0, mode)),
        "all": (mode, (mode, mode, mode)),
    }[level]
    blob = _keys(parms_id, slots, outer, key_modes)
    result, found = seal_bounds.canonical_kswitch_keys(
        blob, n, primes, "galois_keys", allowed_galois_elements=set(elements)
    )
    assert result == canonical and found == elements
    seal_io.load(sealapi.GaloisKeys, linear._context, result, "galois_keys")
    assert (
        _code(
            lambda: seal_bounds.canonical_kswitch_keys(
                blob, n, primes, "galois_keys", allowed_galois_elements=set(elements), allow_compressed=False
            )
        )
        == COMPRESSED
    )


def test_relin_keys_compressed_inside_uncompressed_outer(network):
    n, primes = _np(NETWORK)
    canonical, _ = seal_bounds.canonical_kswitch_keys(
        seal_io.dump(network._keygen.create_relin_keys()), n, primes, "relin_keys", relin=True
    )
    parms_id, slots = _split_keys(canonical)
    for key_modes in ((2, 0, 0), (0, 1, 0), (0, 0, 2), (1, 2, 1)):
        blob = _keys(parms_id, slots, 0, key_modes)
        assert seal_bounds.canonical_kswitch_keys(blob, n, primes, "relin_keys", relin=True)[0] == canonical


# --- decompression bombs --------------------------------------------------------------------------


_MEASURE_PRELUDE = """
import json, resource
def _status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
def rss():
    return _status('VmRSS')
def measure_from():
    global base, reset
    try:
        with open('/proc/self/clear_refs', 'w') as handle:
            handle.write('5')  # resets the peak RSS (VmHWM) to the current RSS
        reset = True
    except OSError:
        reset = False
    base = rss()
"""
_MEASURE_EPILOGUE = """
peak = _status('VmHWM') if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result['growth'] = peak - base
print(json.dumps(result))
"""


def _measured(code: str) -> dict:
    """Run `code` in a fresh interpreter: it calls measure_from() and fills `result`; adds peak RSS growth."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE_PRELUDE + code + _MEASURE_EPILOGUE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("how", "expected"),
    [("streamed", TOO_LARGE), ("declared", TOO_LARGE), ("per key", NOT_ALLOWED)],
)
def test_zero_galois_keys_for_512_elements_refused_before_inflating(how, expected):
    # SEAL alone grows a worker by ~770 MiB on this registration. Zero runs are RLE blocks
    # in zstd, refused from the frame's block headers (or its declared size); keys compressed
    # one by one are refused at the first slot whose element the models do not use.
    code = f"""
import gc
from heserve.engine import seal_bounds
from heserve.engine.params import galois_element
from heserve.engine.seal_io import SealDecodeError
from tests.test_seal_bounds import NETWORK, bomb_elements, zero_galois_attack
blob = zero_galois_attack(NETWORK, bomb_elements(NETWORK, 512), {how!r})
allowed = {{galois_element(s, 8192) for s in (1, 2, 4, 8, -1)}}
gc.collect()
measure_from()
result = {{'size': len(blob)}}
try:
    seal_bounds.canonical_kswitch_keys(blob, 8192, 4, 'galois_keys', allowed_galois_elements=allowed)
except SealDecodeError as exc:
    result['code'] = exc.code
"""
    result = _measured(code)
    assert result["size"] < 256 * 1024, result
    assert result.get("code") == expected, result
    assert result["growth"] < 50 * MIB, result


def test_zero_galois_keys_compressed_one_by_one_are_counted_before_inflating():
    elements = bomb_elements(NETWORK, 64)
    blob = zero_galois_attack(NETWORK, elements, "per key")
    tracemalloc.start()
    try:
        code = _code(lambda: seal_bounds.canonical_kswitch_keys(blob, 8192, 4, "g", max_elements=2))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == TOO_MANY
    # Two keys copied out, plus the third key's first decompressed piece at most.
    assert peak < 3 * seal_bounds.kswitch_keys_bound(8192, 4, 1) + 4 * MIB


def test_zero_galois_keys_are_valid_seal_objects(network):
    # The bomb is made of keys SEAL accepts: once allowed and bounded, they load.
    elements = bomb_elements(NETWORK, 2)
    blob = zero_galois_attack(NETWORK, elements, "declared")
    canonical, found = seal_bounds.canonical_kswitch_keys(
        blob, 8192, 4, "galois_keys", allowed_galois_elements=set(elements)
    )
    assert found == elements
    assert len(canonical) == seal_bounds.kswitch_keys_bound(8192, 4, 2)
    seal_io.load(sealapi.GaloisKeys, network._context, canonical, "galois_keys")


def test_frame_declaring_8_gib_is_refused_without_allocating(network):
    n, primes = _np(NETWORK)
    blob = network.encrypt(np.arange(4.0), 2.0**30, seeded=False)
    members = blob[16:]
    frame = _zstd_frame(_raw_blocks(members), content_size=8 << 30)
    bomb = _header(2, 16 + len(frame)) + frame
    moduli = [m.value() for m in network._context.first_context_data().parms().coeff_modulus()]
    tracemalloc.start()
    try:
        assert _code(lambda: seal_bounds.canonical_ciphertext(bomb, n, primes - 1, "ct")) == TOO_LARGE
        assert _code(lambda: seal_raw.parse(bomb, n, moduli, "ct")) == TOO_LARGE
        assert _code(lambda: seal_raw.to_uncompressed(bomb)) == TOO_LARGE
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB
    # The same frame declaring its true size is fine.
    honest = _zstd_frame(_raw_blocks(members), content_size=len(members))
    good = _header(2, 16 + len(honest)) + honest
    assert seal_bounds.canonical_ciphertext(good, n, primes - 1, "ct") == blob
    assert np.array_equal(seal_raw.parse(good, n, moduli, "ct").data, seal_raw.parse(blob, n, moduli, "ct").data)


def test_frame_producing_more_or_less_than_it_declares(linear):
    n, primes = _np(LINEAR)
    blob = linear.encrypt(np.arange(4.0), 2.0**30, seeded=False)
    members = blob[16:]

    def check(declared: int, max_size: int = 2) -> str:
        frame = _zstd_frame(_raw_blocks(members), content_size=declared)
        lying = _header(2, 16 + len(frame)) + frame
        return _code(lambda: seal_bounds.canonical_ciphertext(lying, n, primes - 1, "ct", max_size=max_size))

    assert check(len(members) - 1000) == MALFORMED  # produces more than it declares
    assert check(len(members) + 1000) == TOO_LARGE  # declares more than a ciphertext can hold
    assert check(len(members) + 1000, max_size=3) == MALFORMED  # ... or than it produces
    # zstd's own single-segment frame with its size field lowered.
    frame = bytearray(zstandard.ZstdCompressor().compress(members))
    assert frame[4] >> 6 == 1 and frame[4] & 0x20  # 2-byte content size (minus 256), single segment
    struct.pack_into("<H", frame, 5, len(members) - 8 - 256)
    lying = _header(2, 16 + len(frame)) + bytes(frame)
    assert _code(lambda: seal_bounds.canonical_ciphertext(lying, n, primes - 1, "ct")) == MALFORMED


@pytest.mark.parametrize("mode", [1, 2], ids=["zlib", "zstd"])
def test_output_beyond_the_limit_is_refused_while_streaming(mode):
    # 64 MiB in a stream that does not declare its size. For zstd a pseudo-random MiB repeated
    # (zeros would be RLE blocks, refused before decompressing); for zlib, whose window is
    # 32 KiB, zeros.
    if mode == 2:
        chunk = np.random.default_rng(1).bytes(MIB)
        compressor = zstandard.ZstdCompressor().compressobj()
    else:
        chunk = bytes(MIB)
        compressor = zlib.compressobj()
    payload = b"".join(compressor.compress(chunk) for _ in range(64)) + compressor.flush()
    assert len(payload) < 2 * MIB
    tracemalloc.start()
    try:
        assert _code(lambda: seal_bounds.decompress_bounded(payload, mode, 16 * MIB, "x")) == TOO_LARGE
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MIB + 8 * MIB
    assert len(seal_bounds.decompress_bounded(_compress(b"abc" * 1000, mode), mode, 3000, "x")) == 3000
    assert _code(lambda: seal_bounds.decompress_bounded(_compress(b"abc" * 1000, mode), mode, 2999, "x")) == TOO_LARGE


def test_rle_blocks_beyond_the_limit_are_refused_from_the_frame_alone():
    # Four-byte RLE blocks, each claiming 128 KiB: refused by walking block headers alone.
    def rle(last: bool) -> bytes:
        return (int(last) | (1 << 1) | ((1 << 17) << 3)).to_bytes(3, "little") + b"\0"

    frame = struct.pack("<IB", 0xFD2FB528, 0) + bytes([(17 - 10) << 3]) + rle(False) * 100 + rle(True)
    assert _code(lambda: seal_bounds.decompress_bounded(frame, 2, 4 * MIB, "x")) == TOO_LARGE
    assert seal_bounds.decompress_bounded(frame, 2, 101 << 17, "x") == bytes(101 << 17)


def test_zstd_window_larger_than_the_object_needs_is_refused():
    frame = (
        struct.pack("<IB", 0xFD2FB528, 0)
        + bytes([(30 - 10) << 3])
        + (1 | (0 << 1) | (3 << 3)).to_bytes(3, "little")
        + b"abc"
    )
    assert _code(lambda: seal_bounds.decompress_bounded(frame, 2, 1000, "x")) == TOO_LARGE
    small = struct.pack("<IB", 0xFD2FB528, 0) + bytes([(20 - 10) << 3]) + frame[6:]
    assert seal_bounds.decompress_bounded(small, 2, 1000, "x") == b"abc"


# --- trailing bytes -------------------------------------------------------------------------------


def test_galois_key_followed_by_a_secret_key_is_refused(linear):
    n, primes = _np(LINEAR)
    blob, elements = _galois(linear, [1])
    secret_key = seal_io.dump(linear._secret_key)
    allowed = set(elements)

    def check(data: bytes) -> str:
        return _code(
            lambda: seal_bounds.canonical_kswitch_keys(data, n, primes, "galois_keys", allowed_galois_elements=allowed)
        )

    assert check(blob + secret_key) == TRAILING
    assert check(blob + b"\0") == TRAILING
    # Appended inside the outer object's declared size: after the zstd frame ...
    padded = _header(2, len(blob) + len(secret_key)) + blob[16:] + secret_key
    assert check(padded) == TRAILING
    # ... or inside the decompressed members.
    canonical, _ = _canonical_galois(linear, [1])
    for mode in (0, 1, 2):
        assert check(_obj(canonical[16:] + secret_key, mode)) == TRAILING
    relin = seal_io.dump(linear._keygen.create_relin_keys())
    assert _code(lambda: seal_bounds.canonical_kswitch_keys(relin + secret_key, n, primes, "r", relin=True)) == (
        TRAILING
    )


def test_trailing_bytes_after_a_zlib_stream_or_a_second_zstd_frame(linear):
    n, primes = _np(LINEAR)
    canonical = _canonical_ct(linear, seeded=True)
    members = canonical[16:]
    for payload in (
        zlib.compress(members) + b"\0",
        zstandard.ZstdCompressor().compress(members) + zstandard.ZstdCompressor().compress(b""),
        zstandard.ZstdCompressor().compress(members) + b"\x50\x2a\x4d\x18" + _u64(0)[:4],  # a skippable frame
    ):
        mode = 1 if payload[0] == 0x78 else 2
        blob = _header(mode, 16 + len(payload)) + payload
        assert _code(lambda blob=blob: seal_bounds.canonical_ciphertext(blob, n, primes - 1, "ct")) == TRAILING


def test_nested_header_declaring_more_than_its_contents(linear):
    n, primes = _np(LINEAR)
    canonical = _canonical_ct(linear, seeded=True)
    prefix, coefficients, seed, _ = _split_ct(canonical)
    # The coefficient array's header claims 8 bytes more, which the array's members do not use.
    inner = _header(0, 16 + len(coefficients) + 8) + coefficients + b"\0" * 8
    members = prefix + inner + _obj(seed)
    blob = _header(0, 16 + len(members)) + members
    assert _code(lambda: seal_bounds.canonical_ciphertext(blob, n, primes - 1, "ct")) == TRAILING


def test_raw_parse_refuses_trailing_and_compressed_when_asked(network):
    n = NETWORK.poly_modulus_degree
    moduli = [m.value() for m in network._context.first_context_data().parms().coeff_modulus()]
    blob = network.encrypt(np.arange(4.0), 2.0**30, seeded=False)
    assert _code(lambda: seal_raw.parse(blob + b"\0" * 8, n, moduli, "ct")) == TRAILING
    for mode in (1, 2):
        packed = _obj(blob[16:], mode)
        assert np.array_equal(seal_raw.parse(packed, n, moduli, "ct").data, seal_raw.parse(blob, n, moduli, "ct").data)
        assert _code(lambda packed=packed: seal_raw.parse(packed, n, moduli, "ct", allow_compressed=False)) == (
            COMPRESSED
        )
    # A compressed coefficient array inside a plain ciphertext is not read in place.
    prefix, coefficients, _, _ = _split_ct(blob)
    nested = _ct(prefix, coefficients, None, (0, 2, 0))
    with pytest.raises(seal_raw.RawCiphertextError):
        seal_raw.parse(nested, n, moduli, "ct")


def test_to_uncompressed_is_bounded(network):
    ct = sealapi.Ciphertext()
    plain = sealapi.Plaintext()
    sealapi.CKKSEncoder(network._context).encode([1.0, 2.0], 2.0**30, plain)
    network._encryptor.encrypt_symmetric(plain, ct)
    packed = seal_io.dump(ct)
    assert packed[5] == 2
    full = seal_raw.to_uncompressed(packed)
    assert full[5] == 0 and len(full) == seal_bounds.ciphertext_bound(8192, 3)
    assert seal_raw.to_uncompressed(packed, limit=len(full) - 16) == full
    assert _code(lambda: seal_raw.to_uncompressed(packed, limit=len(full) - 17)) == TOO_LARGE
    # Its own prefix bounds it: more coefficients than the prefix allows are refused.
    prefix, coefficients, _, _ = _split_ct(full)
    stuffed = _obj(prefix + _obj(coefficients) + bytes(MIB), 2)
    assert _code(lambda: seal_raw.to_uncompressed(stuffed)) == TOO_LARGE


# --- declared counts ------------------------------------------------------------------------------


def _patched(blob: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def test_ciphertext_counts_are_checked_before_allocating(linear, network):
    n, primes = _np(LINEAR)
    full = _canonical_ct(linear, seeded=False)
    seeded = _canonical_ct(linear, seeded=True)
    ct = 16  # members start
    cases = {
        "ntt flag": _patched(full, ct + 32, "<B", 0),
        "size 3": _patched(full, ct + 33, "<Q", 3),
        "size 1": _patched(full, ct + 33, "<Q", 1),
        "size 2^40": _patched(full, ct + 33, "<Q", 1 << 40),
        "N": _patched(full, ct + 41, "<Q", 8192),
        "N 2^62": _patched(full, ct + 41, "<Q", 1 << 62),
        "primes": _patched(full, ct + 49, "<Q", 2),
        "primes 2^50": _patched(full, ct + 49, "<Q", 1 << 50),
        "scale nan": _patched(full, ct + 57, "<d", float("nan")),
        "scale negative": _patched(full, ct + 57, "<d", -1.0),
        "correction factor": _patched(full, ct + 65, "<Q", 3),
        "element count": _patched(full, ct + 73 + 16, "<Q", 1 << 61),
        "element count off by one": _patched(full, ct + 73 + 16, "<Q", 2 * n - 1),
        "coefficient header size": _patched(full, ct + 73 + 8, "<Q", 1 << 60),
        "coefficient magic": _patched(full, ct + 73, "<H", 0xBEEF),
        "outer magic": _patched(full, 0, "<H", 0xBEEF),
        "header size field": _patched(full, 2, "<B", 8),
        "version 3.4": _patched(full, 3, "<BB", 3, 4),
        "newer minor version": _patched(full, 3, "<BB", seal_bounds.local_version()[0], 200),
        "reserved": _patched(full, 6, "<H", 1),
        "compression mode 7": _patched(full, 5, "<B", 7),
        "outer size 2^63": _patched(full, 8, "<Q", 1 << 63),
        "outer size 8": _patched(full, 8, "<Q", 8),
        "outer size 8 bytes short": _patched(full, 8, "<Q", len(full) - 8),
        "prng type": _patched(seeded, len(seeded) - 65, "<B", 9),
        "seed header size": _patched(seeded, len(seeded) - 81 + 8, "<Q", 1 << 40),
    }
    for name, blob in cases.items():
        code = _code(lambda blob=blob: seal_bounds.canonical_ciphertext(blob, n, primes - 1, "ct"))
        assert code == (TRAILING if name == "outer size 8 bytes short" else MALFORMED), name
    # Parameters of another set, and a fresh ciphertext checked against the key level.
    other = _canonical_ct(network, seeded=True)
    assert _code(lambda: seal_bounds.canonical_ciphertext(other, n, primes - 1, "ct")) == MALFORMED
    assert _code(lambda: seal_bounds.canonical_ciphertext(full, n, primes, "ct")) == MALFORMED
    # Seeded only where allowed; the expected level when given.
    assert _code(lambda: seal_bounds.canonical_ciphertext(seeded, n, primes - 1, "ct", allow_seeded=False)) == (
        "seeded_not_accepted"
    )
    first = list(linear._context.first_parms_id())
    assert seal_bounds.canonical_ciphertext(full, n, primes - 1, "ct", parms_id=first) == full
    key_level = list(linear._context.key_parms_id())
    assert _code(lambda: seal_bounds.canonical_ciphertext(full, n, primes - 1, "ct", parms_id=key_level)) == MALFORMED


def test_key_counts_are_checked_before_allocating(linear):
    n, primes = _np(LINEAR)
    canonical, elements = _canonical_galois(linear, [1])
    allowed = set(elements)
    first_key = 56 + 8 * (elements[0] // 2) + 8  # the only filled slot's first public key
    cases = {
        "slots 2^50": _patched(canonical, 48, "<Q", 1 << 50),
        "slots N-1": _patched(canonical, 48, "<Q", n - 1),
        "keys per slot 1000": _patched(canonical, first_key - 8, "<Q", 1000),
        "keys per slot 2^60": _patched(canonical, first_key - 8, "<Q", 1 << 60),
        "key N": _patched(canonical, first_key + 16 + 41, "<Q", 2 * n),
        "key primes": _patched(canonical, first_key + 16 + 49, "<Q", primes - 1),
        "key size": _patched(canonical, first_key + 16 + 33, "<Q", 3),
        "key element count": _patched(canonical, first_key + 16 + 73 + 16, "<Q", 1 << 62),
        "key header size": _patched(canonical, first_key + 8, "<Q", 1 << 62),
    }
    for name, blob in cases.items():
        code = _code(
            lambda blob=blob: seal_bounds.canonical_kswitch_keys(
                blob, n, primes, "galois_keys", allowed_galois_elements=allowed
            )
        )
        assert code == MALFORMED, name
    # Checked against the wrong parameters, and at the wrong level.
    assert _code(lambda: seal_bounds.canonical_kswitch_keys(canonical, 8192, 4, "g")) == MALFORMED
    assert _code(lambda: seal_bounds.canonical_kswitch_keys(canonical, n, primes - 1, "g")) == MALFORMED
    first = list(linear._context.first_parms_id())
    assert _code(lambda: seal_bounds.canonical_kswitch_keys(canonical, n, primes, "g", parms_id=first)) == MALFORMED
    key_level = list(linear._context.key_parms_id())
    assert seal_bounds.canonical_kswitch_keys(canonical, n, primes, "g", parms_id=key_level)[0] == canonical
    # Galois keys are not relinearization keys, nor the other way round.
    assert _code(lambda: seal_bounds.canonical_kswitch_keys(canonical, n, primes, "r", relin=True)) == MALFORMED
    relin = seal_io.dump(linear._keygen.create_relin_keys())
    assert _code(lambda: seal_bounds.canonical_kswitch_keys(relin, n, primes, "g")) == MALFORMED


def test_galois_elements_outside_the_allowed_set(linear):
    n, primes = _np(LINEAR)
    blob, elements = _galois(linear, [1, 2, 4])
    assert len(elements) == 3
    for missing in elements:
        allowed = set(elements) - {missing}
        code = _code(
            lambda allowed=allowed: seal_bounds.canonical_kswitch_keys(
                blob, n, primes, "galois_keys", allowed_galois_elements=allowed
            )
        )
        assert code == NOT_ALLOWED
    # Uncompressed, the first key is refused by its element; SEAL's zstd frame declares more
    # than keys for no element at all can hold, and is refused from its header.
    canonical, _ = seal_bounds.canonical_kswitch_keys(blob, n, primes, "g")
    assert (
        _code(lambda: seal_bounds.canonical_kswitch_keys(canonical, n, primes, "g", allowed_galois_elements=set()))
        == NOT_ALLOWED
    )
    assert (
        _code(lambda: seal_bounds.canonical_kswitch_keys(blob, n, primes, "g", allowed_galois_elements=set()))
        == TOO_LARGE
    )
    assert _code(lambda: seal_bounds.canonical_kswitch_keys(blob, n, primes, "g", max_elements=2)) == TOO_MANY
    _, found = seal_bounds.canonical_kswitch_keys(blob, n, primes, "g", allowed_galois_elements=None)
    assert found == elements
    # A superset of what is present is fine.
    superset = set(elements) | {galois_element(s, n) for s in (8, 16)}
    assert seal_bounds.canonical_kswitch_keys(blob, n, primes, "g", allowed_galois_elements=superset)[1] == elements


# --- truncation -----------------------------------------------------------------------------------


def _cuts(boundaries: list[int], total: int) -> list[int]:
    return sorted({c for b in boundaries for c in (b - 1, b, b + 1) if 0 < c < total})


def test_truncated_ciphertexts_at_every_offset_class(linear):
    n, primes = _np(LINEAR)
    seeded = _canonical_ct(linear, seeded=True)
    end = len(seeded)
    boundaries = [8, 16, 16 + 32, 16 + 33, 16 + 41, 16 + 57, 16 + 73, 16 + 73 + 8, 105, 113, 113 + 8 * n, end - 81]
    boundaries += [end - 81 + 8, end - 65, end - 64, end - 1]
    for cut in _cuts(boundaries, end):
        short = seeded[:cut]
        assert _code(lambda short=short: seal_bounds.canonical_ciphertext(short, n, primes - 1, "ct")) == MALFORMED
        if cut >= 16:
            # With the outer size rewritten to match, the nested objects are found truncated.
            consistent = _patched(short, 8, "<Q", cut)
            for mode in (0, 1, 2):
                blob = consistent if mode == 0 else _obj(consistent[16:], mode)
                code = _code(lambda blob=blob: seal_bounds.canonical_ciphertext(blob, n, primes - 1, "ct"))
                assert code == MALFORMED, (cut, mode)


def test_truncated_keys_at_every_offset_class(linear):
    n, primes = _np(LINEAR)
    canonical, elements = _canonical_galois(linear, [1])
    end = len(canonical)
    first_key = 56 + 8 * (elements[0] // 2) + 8
    boundaries = [16, 48, 56, 64, first_key - 8, first_key, first_key + 16, first_key + 16 + 73, first_key + 16 + 89]
    boundaries += [first_key + 16 + 97, end - 81, end - 65, end - 1]
    for cut in _cuts(boundaries, end):
        consistent = _patched(canonical[:cut], 8, "<Q", cut) if cut >= 16 else canonical[:cut]
        for mode in (0, 2):
            blob = consistent if mode == 0 or cut < 16 else _obj(consistent[16:], mode)
            code = _code(
                lambda blob=blob: seal_bounds.canonical_kswitch_keys(
                    blob, n, primes, "galois_keys", allowed_galois_elements=set(elements)
                )
            )
            assert code == MALFORMED, (cut, mode)


def test_corrupt_and_truncated_frames(linear):
    n, primes = _np(LINEAR)
    canonical = _canonical_ct(linear, seeded=True)
    for mode in (1, 2):
        # zlib streams end with a checksum; zstd frames carry one only when asked (SEAL does not).
        if mode == 2:
            payload = zstandard.ZstdCompressor(write_checksum=True).compress(canonical[16:])
        else:
            payload = _compress(canonical[16:], mode)
        for cut in (1, 5, len(payload) // 2, len(payload) - 1):
            blob = _header(mode, 16 + cut) + payload[:cut]
            assert _code(lambda blob=blob: seal_bounds.canonical_ciphertext(blob, n, primes - 1, "ct")) == MALFORMED
        flipped = bytearray(payload)
        flipped[len(flipped) // 2] ^= 0xFF
        blob = _header(mode, 16 + len(flipped)) + bytes(flipped)
        assert _code(lambda blob=blob: seal_bounds.canonical_ciphertext(blob, n, primes - 1, "ct")) == MALFORMED


# --- bounds and the deserialized size of keys ------------------------------------------------------


def test_bounds_match_real_objects(linear, network):
    for secret in (linear, network):
        n, primes = _np(secret.params)
        assert len(secret.encrypt(np.zeros(4), 2.0**30, seeded=False)) == seal_bounds.ciphertext_bound(n, primes - 1)
        canonical, _ = _canonical_galois(secret, [1, 2])
        assert len(canonical) == seal_bounds.kswitch_keys_bound(n, primes, 2, seeded=True)
        galois = sealapi.GaloisKeys()
        secret._keygen.create_galois_keys([galois_element(1, n)], galois)
        assert len(seal_raw.to_uncompressed(seal_io.dump(galois), limit=1 << 26)) == seal_bounds.kswitch_keys_bound(
            n, primes, 1
        )
    # The numbers quoted for the server.
    assert seal_bounds.ciphertext_bound(4096, 1) == 65649
    assert seal_bounds.ciphertext_bound(8192, 3) == 393329
    assert seal_bounds.kswitch_keys_bound(8192, 4, 1) == 1638795


def test_memory_formula_against_measured_rss(network, tmp_path):
    n, primes = _np(NETWORK)
    blob, elements = _galois(network, list(range(1, 33)))
    path = tmp_path / "keys.bin"
    path.write_bytes(seal_bounds.canonical_kswitch_keys(blob, n, primes, "g")[0])
    code = f"""
import gc
import tenseal.sealapi as sealapi
from heserve.engine import seal_io
from tests.test_seal_bounds import NETWORK
context = NETWORK.seal_context()
data = open({str(path)!r}, 'rb').read()
gc.collect()
measure_from()
keys = seal_io.load(sealapi.GaloisKeys, context, data, 'g')
gc.collect()
result = {{'held': rss() - base}}
"""
    measured = _measured(code)["held"]
    formula = seal_bounds.kswitch_keys_memory_bytes(n, primes, len(elements))
    assert len(elements) == 32
    # Charged at least what SEAL holds (1.8% above it when measured), allowing for page noise.
    assert 0.99 * measured <= formula <= 1.10 * measured, (measured, formula)


def test_the_fast_path_for_plain_ciphertexts_agrees_with_the_walker():
    """Uncompressed ciphertexts skip the walk; any byte the fast path accepts, the walker accepts
    identically, and honest ciphertexts take the fast path."""
    import numpy as np

    from heserve.client.keys import SecretContext
    from heserve.engine.params import CKKSParams

    params = CKKSParams(4096, (60, 49))
    secret = SecretContext.generate(params)
    for seeded in (True, False):
        blob = secret.encrypt(np.arange(8.0), 2.0**30, seeded=seeded)
        blob = seal_raw.to_uncompressed(blob)
        view = memoryview(blob)
        assert seal_bounds._plain_ciphertext(view, 4096, 1, 2, True, None)
        for offset in [*range(160), len(blob) - 70, len(blob) - 66, len(blob) - 1]:
            for value in (0, 1, 0xFF):
                mutated = bytearray(blob)
                mutated[offset] = value
                if not seal_bounds._plain_ciphertext(memoryview(mutated), 4096, 1, 2, True, None):
                    continue
                walker = seal_bounds._Walker(True)
                walker.object(
                    seal_bounds._BufferSource(memoryview(bytes(mutated)), "x"),
                    functools.partial(
                        walker.ciphertext, label="x", n=4096, primes=1, max_size=2, allow_seeded=True, parms_id=None
                    ),
                    seal_bounds.ciphertext_bound(4096, 1) - seal_bounds.HEADER,
                    "x",
                    top=True,
                )
                assert bytes(walker.out) == bytes(mutated), offset
