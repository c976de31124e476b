"""A hostile client against a real gunicorn server: it holds a valid API key and its own secret
key, and builds well-formed SEAL objects and protocol bodies to exhaust memory, CPU, disk or
quotas. Every case asserts the status and JSON error code, that the worker survived, that its
resident memory and the request's wall time stayed under stated bounds, and that stored state
is what it should be.

Bounds (measured on the reference 2-core machine, README "Security"): one attack grows the
worker's RSS by less than ATTACK_RSS_BOUND and is answered within ATTACK_SECONDS.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tenseal.sealapi as sealapi
import zstandard

from heserve.client.errors import HEClientError
from heserve.client.keys import SecretContext
from heserve.engine import seal_io, seal_raw
from heserve.engine.params import CKKSParams, galois_element
from heserve.protocol import v2
from heserve.server.service.keystore import KeyCache

from .helpers import decode_outputs, encrypt_single, infer_message, model_spec, post_binary, register
from .serverproc import start_server

LINEAR = "breast-cancer-logreg"
NETWORK = "digits-mlp"
ATTACK_RSS_BOUND = 150 * 1024**2
ATTACK_SECONDS = 10.0


# --- observing the worker -------------------------------------------------------------------
def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Watch:
    """Worker pids and their RSS before an attack; `check` asserts the bounds after it."""

    def __init__(self, server):
        self.server = server
        self.pids = server.worker_pids()
        self.before = {pid: rss(pid) for pid in self.pids}
        self.started = time.monotonic()

    def check(self, seconds: float = ATTACK_SECONDS, rss_bound: int = ATTACK_RSS_BOUND) -> None:
        elapsed = time.monotonic() - self.started
        assert elapsed < seconds, f"the attack took {elapsed:.1f} s"
        assert self.server.worker_pids() == self.pids, "a worker died"
        for pid in self.pids:
            grown = rss(pid) - self.before[pid]
            assert grown < rss_bound, f"worker {pid} grew by {grown / 2**20:.0f} MiB"


def assert_refused(response: requests.Response, status: int, code: str | set[str]) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:400])
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"]
    codes = {code} if isinstance(code, str) else code
    assert body.get("code") in codes, body
    return body


def post_raw(url: str, body: bytes, header_length: int | None = None, timeout: float = 60) -> requests.Response:
    headers = {"Content-Type": v2.BINARY_CONTENT_TYPE if header_length is not None else v2.JSON_CONTENT_TYPE}
    if header_length is not None:
        headers[v2.HEADER_LENGTH] = str(header_length)
    return requests.post(url, data=body, headers=headers, timeout=timeout)


def key_files(server) -> list[str]:
    return sorted(p.name for p in Path(server.keys_dir).glob("*") if p.suffix in (".json", ".keys"))


# --- building hostile SEAL objects ----------------------------------------------------------
HEADER = 16


def seal_header(body_length: int, compression: int, version: bytes) -> bytes:
    return struct.pack("<HBBBBHQ", 0xA15E, HEADER, version[0], version[1], compression, 0, HEADER + body_length)


def zstd_rle_frame(declared: int | None, blocks: int, block_size: int = 128 * 1024) -> bytes:
    """A zstd frame of RLE blocks: tiny on the wire, `blocks * block_size` zero bytes when inflated,
    and declaring `declared` bytes of content (or nothing) in its header."""
    out = bytearray(b"\x28\xb5\x2f\xfd")
    if declared is not None:
        out += bytes([0xE0]) + struct.pack("<Q", declared)  # single segment, 8-byte content size
    else:
        out += bytes([0x00, 0x38])  # no content size, 128 KiB window
    for index in range(blocks):
        last = 1 if index == blocks - 1 else 0
        value = last | (1 << 1) | (block_size << 3)
        out += struct.pack("<I", value)[:3] + b"\x00"
    return bytes(out)


def galois_bomb(params: CKKSParams, steps, compress: bool = True) -> bytes:
    """Seeded Galois keys for the rotations `steps` whose coefficients are all zero: valid for
    SEAL, a few KB once compressed, ~1.5 MiB per element once SEAL has expanded them (N=8192)."""
    context = params.seal_context()
    template = seal_raw.to_uncompressed(seal_io.dump(sealapi.KeyGenerator(context).create_galois_keys([3])))
    body = template[HEADER:]
    parms_id, offset = body[:32], 40
    (dim2,) = struct.unpack_from("<Q", body, offset + 8)  # slot 0 is empty, slot 1 holds element 3
    offset += 16
    (size,) = struct.unpack_from("<Q", body, offset + 8)
    key = bytearray(body[offset : offset + size])
    # Zero the coefficient array of the public key (its nested object: header, count, data).
    data_start = HEADER + 73 + HEADER + 8
    (coefficients,) = struct.unpack_from("<Q", key, HEADER + 73 + HEADER)
    key[data_start : data_start + 8 * coefficients] = bytes(8 * coefficients)
    n = params.poly_modulus_degree
    wanted = {(galois_element(step, n) - 1) >> 1 for step in steps}
    parts = [parms_id, struct.pack("<Q", n)]
    for index in range(n):
        if index in wanted:
            parts.append(struct.pack("<Q", dim2) + bytes(key) * dim2)
        else:
            parts.append(struct.pack("<Q", 0))
    raw = b"".join(parts)
    version = template[3:5]
    if not compress:
        return seal_header(len(raw), 0, version) + raw
    packed = zstandard.ZstdCompressor(level=19).compress(raw)
    return seal_header(len(packed), 2, version) + packed


def registration_body(params: CKKSParams, parts: dict[str, bytes], binding_key: str = "") -> tuple[bytes, int]:
    tensors = [v2.Tensor(name, "BYTES", [1], [blob]) for name, blob in parts.items()]
    parameters = {"ckks": params.to_json()}
    if binding_key:
        parameters["binding_key"] = binding_key
    return v2.encode(v2.Message(tensors, parameters=parameters), "inputs", binary=True)


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lone_worker(tmp_path_factory):
    """One worker, so that the process an attack lands on is known."""
    proc = start_server(
        tmp_path_factory.mktemp("adversary"),
        workers=1,
        max_batch_chunks="2",
        max_request_elements="4096",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def network_key(lone_worker):
    spec = model_spec(lone_worker.url, NETWORK)
    secret = SecretContext.generate(spec.ckks)
    response = register(lone_worker.url, secret, spec.rotation_steps, relin_keys=True)
    assert response.status_code == 201, response.text
    return spec, secret, response.json()["key_id"]


# --- 1. keys that inflate, keys that are not needed, bytes that are not keys ----------------
def test_zero_coefficient_galois_keys_for_512_elements_are_refused_before_inflating(lone_worker):
    spec = model_spec(lone_worker.url, NETWORK)
    bomb = galois_bomb(spec.ckks, range(1, 513))
    assert len(bomb) < 200_000
    # Few elements, but one no model uses: seen inside the frame and named.
    stranger = galois_bomb(spec.ckks, [*spec.rotation_steps[:2], 3001])
    before = key_files(lone_worker)
    watch = Watch(lone_worker)
    for _ in range(3):
        body, length = registration_body(spec.ckks, {"galois_keys": bomb})
        response = post_raw(lone_worker.url + "/v2/keys", body, length)
        # The frame would inflate past what every served model's elements together take.
        assert_refused(response, 400, "seal_frame_too_large")
    body, length = registration_body(spec.ckks, {"galois_keys": stranger})
    response = post_raw(lone_worker.url + "/v2/keys", body, length)
    assert_refused(response, 400, "galois_element_not_allowed")
    watch.check()
    assert key_files(lone_worker) == before


def test_a_registration_larger_than_any_keys_is_refused_before_it_is_read(lone_worker):
    import socket
    from urllib.parse import urlparse

    from .helpers import read_answer

    url = urlparse(lone_worker.url)
    watch = Watch(lone_worker)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        # 400 MB declared (under the 512 MiB body limit, over the ~249 MB that full keys take for the
        # largest served plan, digits-mlp3 at N=16384); none sent.
        sock.sendall(
            b"POST /v2/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Inference-Header-Content-Length: 10\r\nContent-Length: 400000000\r\n\r\n"
        )
        answer = read_answer(sock)
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert json.loads(answer.split("\r\n\r\n", 1)[1])["code"] == "body_too_large"
    watch.check(seconds=2)


@pytest.mark.parametrize("declared", [8 * 1024**3, None], ids=["declares-8GiB", "inflates-2GiB"])
def test_a_public_key_zstd_frame_is_refused_without_inflating(lone_worker, declared):
    """The one key part every registration carries, compressed to a bomb: bounded like the rest."""
    spec = model_spec(lone_worker.url, LINEAR)
    frame = zstd_rle_frame(declared, 1 if declared else 16_000)
    bomb = seal_header(len(frame), 2, seal_raw.seal_version()) + frame
    before = key_files(lone_worker)
    watch = Watch(lone_worker)
    body, length = registration_body(spec.ckks, {"public_key": bomb})
    assert_refused(post_raw(lone_worker.url + "/v2/keys", body, length), 400, "seal_frame_too_large")
    watch.check()
    assert key_files(lone_worker) == before


def test_galois_elements_no_model_uses_are_refused_with_their_names(lone_worker):
    spec = model_spec(lone_worker.url, NETWORK)
    secret = SecretContext.generate(spec.ckks)
    response = register(lone_worker.url, secret, [*spec.rotation_steps, 7], relin_keys=True)
    body = assert_refused(response, 400, "galois_element_not_allowed")
    assert str(galois_element(7, spec.ckks.poly_modulus_degree)) in body["error"]


def test_key_switching_keys_are_refused_where_nothing_switches_keys(lone_worker):
    """The linear models' one-prime set switches no keys (SEAL cannot make such keys for it): Galois
    or relinearization keys declared for it, here made under a set that has a special prime, are
    refused by name before any of their bytes is parsed, and nothing is stored."""
    linear = model_spec(lone_worker.url, LINEAR).ckks
    assert not linear.uses_key_switching
    network = model_spec(lone_worker.url, NETWORK)
    secret = SecretContext.generate(network.ckks)
    before = key_files(lone_worker)
    for steps, relin in ((network.rotation_steps, False), ((), True), (network.rotation_steps, True)):
        assert_refused(register(lone_worker.url, secret, steps, params=linear, relin_keys=relin), 400, "key_not_needed")
    assert key_files(lone_worker) == before
    with pytest.raises(HEClientError, match="no special prime"):
        SecretContext.generate(linear).evaluation_key_request([1], relin_keys=False)


def test_objects_of_the_former_two_prime_linear_set(lone_worker):
    """A client that still holds a key for the linear models' former set (60, 49) - or an attacker who
    builds objects for it - and a valid key id for the current one-prime set.

    Its public key declared for the new set is refused, nothing stored. Its key-level ciphertext (two
    primes) is refused before evaluation. Its first-level ciphertext has the same 60-bit prime, so SEAL
    gives it the same parms_id: it *is* a ciphertext of the current set (under another secret key,
    which no server can tell), answered like any crafted input - decrypted with the registered key,
    every coefficient but the constant is uniform noise mod q."""
    spec = model_spec(lone_worker.url, LINEAR)
    current = SecretContext.generate(spec.ckks)
    key_id = register(lone_worker.url, current, []).json()["key_id"]
    former = SecretContext.generate(CKKSParams(4096, (60, 49)))
    before = key_files(lone_worker)
    watch = Watch(lone_worker)
    body, length = former.evaluation_key_request([])
    message = v2.decode(body, length, "inputs")
    message.parameters["ckks"] = spec.ckks.to_json()
    assert_refused(post_binary(lone_worker.url, "/v2/keys", message), 400, {"bad_key", "malformed_seal_object"})
    assert key_files(lone_worker) == before

    def infer(blob: bytes) -> requests.Response:
        message = infer_message([blob], key_id)
        message.parameters["bindings"] = [current.bind(blob)]  # tagged as the key's owner would
        return post_binary(lone_worker.url, f"/v2/models/{LINEAR}/infer", message)

    key_level = seal_raw.own_uncompressed(
        seal_io.dump(former._encryptor.encrypt_zero_symmetric(former._context.key_parms_id()))
    )
    assert_refused(infer(key_level), 400, {"bad_ciphertext", "malformed_seal_object"})
    scale = 2.0 ** spec.layouts["single"].input_scale_bits(spec.input_scale_bits)
    response = infer(former.encrypt_coefficients(np.ones(spec.n_features), scale))
    assert response.status_code == 200, response.text[:300]
    (result,) = decode_outputs(response).tensors[0].data
    rest = np.abs(current.decrypt_coefficients(result)[1:])
    assert 0.45 < float(np.mean(rest < rest.max() / 2)) < 0.55
    watch.check()


def test_a_secret_key_appended_to_a_valid_key_is_refused_and_nothing_is_stored(lone_worker):
    spec = model_spec(lone_worker.url, NETWORK)
    secret = SecretContext.generate(spec.ckks)
    body, length = secret.evaluation_key_request(spec.rotation_steps, relin_keys=True)
    message = v2.decode(body, length, "inputs")
    secret_bytes = seal_io.dump(secret._secret_key)
    before = key_files(lone_worker)
    for index in range(len(message.tensors)):
        tampered = v2.decode(body, length, "inputs")
        tampered.tensors[index].data = [bytes(tampered.tensors[index].data[0]) + secret_bytes]
        new_body, new_length = v2.encode(tampered, "inputs", binary=True)
        assert_refused(post_raw(lone_worker.url + "/v2/keys", new_body, new_length), 400, "seal_trailing_bytes")
    assert key_files(lone_worker) == before


def test_the_store_holds_seals_reserialization_not_the_upload(lone_worker, network_key):
    spec, secret, key_id = network_key
    body, length = secret.evaluation_key_request(spec.rotation_steps, relin_keys=True)
    uploaded = [bytes(t.data[0]) for t in v2.decode(body, length, "inputs").tensors]
    stored = (Path(lone_worker.keys_dir) / f"{key_id}.keys").read_bytes()
    for blob in uploaded:
        assert blob not in stored and blob[HEADER : HEADER + 4096] not in stored


def test_memory_after_erasure_is_reused_not_grown(lone_worker):
    spec = model_spec(lone_worker.url, NETWORK)
    (pid,) = lone_worker.worker_pids()
    sizes = []
    for _ in range(16):
        secret = SecretContext.generate(spec.ckks)
        response = register(lone_worker.url, secret, spec.rotation_steps, relin_keys=True)
        assert response.status_code == 201, response.text
        assert requests.delete(f"{lone_worker.url}/v2/keys/{response.json()['key_id']}", timeout=10).status_code == 200
        sizes.append(rss(pid))
    # SEAL's pool keeps what an erased key held and gives it to the next one: 16 keys of ~20 MiB
    # each would add 320 MiB if nothing were reused; malloc arenas per thread add a few steps.
    assert sizes[-1] - sizes[0] < 100 * 1024**2, [s // 2**20 for s in sizes]


def test_a_worker_past_its_memory_ceiling_is_replaced_without_failing_a_request(tmp_path):
    server = start_server(tmp_path, workers=1, max_worker_rss_bytes=str(250 * 1024**2))
    try:
        spec = model_spec(server.url, NETWORK)
        first = server.worker_pids()
        pids = set(first)
        for _ in range(12):  # ~20 MiB of expanded keys each stay in the cache
            response = register(server.url, SecretContext.generate(spec.ckks), spec.rotation_steps, relin_keys=True)
            assert response.status_code == 201, response.text
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not server.worker_pids():
                time.sleep(0.1)
            pids |= server.worker_pids()
        assert len(pids) > 1, "the worker was never replaced"
        assert all(rss(pid) < 250 * 1024**2 + ATTACK_RSS_BOUND for pid in server.worker_pids())
        assert "Traceback" not in server.log()
    finally:
        server.stop()


# --- 2. decompression that trusts the frame -------------------------------------------------
@pytest.mark.parametrize(
    ("declared", "blocks"),
    [(8 * 1024**3, 1), (2 * 1024**3, 1), (None, 16_000)],
    ids=["declares-8GiB", "declares-2GiB", "inflates-2GiB"],
)
def test_batch_ciphertext_zstd_frames_are_refused_without_inflating(lone_worker, network_key, declared, blocks):
    spec, _, key_id = network_key
    frame = zstd_rle_frame(declared, blocks)
    blob = seal_header(len(frame), 2, seal_raw.seal_version()) + frame
    message = infer_message([blob] * spec.n_features, key_id, "batch", shape=[1, spec.n_features], rows=1)
    watch = Watch(lone_worker)
    response = post_binary(lone_worker.url, f"/v2/models/{NETWORK}/infer", message)
    assert_refused(response, 400, {"compressed_not_accepted", "seal_frame_too_large"})
    watch.check()


@pytest.mark.parametrize("declared", [8 * 1024**3, None], ids=["declares-8GiB", "inflates-2GiB"])
def test_single_layout_ciphertext_zstd_frames_are_refused_without_inflating(lone_worker, declared):
    spec = model_spec(lone_worker.url, LINEAR)
    secret = SecretContext.generate(spec.ckks)
    key_id = register(lone_worker.url, secret, spec.rotation_steps).json()["key_id"]
    frame = zstd_rle_frame(declared, 1 if declared else 16_000)
    blob = seal_header(len(frame), 2, seal_raw.seal_version()) + frame
    watch = Watch(lone_worker)
    response = post_binary(lone_worker.url, f"/v2/models/{LINEAR}/infer", infer_message([blob], key_id))
    assert_refused(response, 400, "seal_frame_too_large")
    watch.check()


# --- 3. work per request --------------------------------------------------------------------
def test_the_largest_single_request_of_a_several_output_model_is_bounded(lone_worker):
    """256 rows (HESERVE_MAX_SINGLE_ROWS) of linnerud: each row costs three products, three masks
    and three re-randomizations, and returns three full ciphertexts (~64 KB each): the most a
    linear single request can cost. Charged as 256 rows, answered in seconds, within a bounded RSS."""
    spec = model_spec(lone_worker.url, "linnerud-linreg")
    secret = SecretContext.generate(spec.ckks)
    key_id = register(lone_worker.url, secret, spec.rotation_steps).json()["key_id"]
    blob = encrypt_single(secret, spec, np.ones(spec.n_features))
    watch = Watch(lone_worker)
    response = post_binary(lone_worker.url, "/v2/models/linnerud-linreg/infer", infer_message([blob] * 256, key_id))
    assert response.status_code == 200, response.text[:300]
    watch.check(seconds=20, rss_bound=320 * 1024**2)
    results = decode_outputs(response).tensors[0]
    assert results.shape == [256, 3] and len(results.data) == 768
    too_many = post_binary(lone_worker.url, "/v2/models/linnerud-linreg/infer", infer_message([blob] * 257, key_id))
    assert_refused(too_many, 400, "bad_shape")


def test_batch_rows_must_agree_with_the_ciphertexts_sent(lone_worker, network_key):
    spec, secret, key_id = network_key
    blob = secret.encrypt(np.zeros(8), 2.0**spec.input_scale_bits, seeded=False)
    url = f"/v2/models/{NETWORK}/infer"
    chunk = [blob] * spec.n_features
    slots = spec.ckks.slot_count
    for rows in (slots + 1, 10**12):
        message = infer_message(chunk, key_id, "batch", shape=[1, spec.n_features], rows=rows)
        assert_refused(post_binary(lone_worker.url, url, message), 400, "bad_parameter")
    message = infer_message(chunk * 2, key_id, "batch", shape=[2, spec.n_features], rows=1)
    assert_refused(post_binary(lone_worker.url, url, message), 400, "bad_parameter")


def test_batch_chunks_are_bounded_by_configuration(lone_worker, network_key):
    spec, secret, key_id = network_key
    blob = secret.encrypt(np.zeros(8), 2.0**spec.input_scale_bits, seeded=False)
    message = infer_message([blob] * spec.n_features * 3, key_id, "batch", shape=[3, spec.n_features], rows=9000)
    watch = Watch(lone_worker)
    assert_refused(post_binary(lone_worker.url, f"/v2/models/{NETWORK}/infer", message), 400, "too_many_chunks")
    watch.check()


def test_compressed_full_ciphertexts_are_refused_where_the_layout_reads_coefficients(lone_worker, network_key):
    spec, secret, key_id = network_key
    full = secret.encrypt(np.zeros(8), 2.0**spec.input_scale_bits, seeded=False)
    packed = zstandard.ZstdCompressor().compress(full[HEADER:])
    blob = seal_header(len(packed), 2, full[3:5]) + packed
    message = infer_message([blob] * spec.n_features, key_id, "batch", shape=[1, spec.n_features], rows=1)
    assert_refused(post_binary(lone_worker.url, f"/v2/models/{NETWORK}/infer", message), 400, "compressed_not_accepted")


# --- 4. decoding ----------------------------------------------------------------------------
def hostile_bodies() -> list[tuple[str, bytes, int | None]]:
    deep = b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    huge_int = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,' + b"9" * 5000 + b'],"data":[1]}]}'
    cases = [("deep-json", deep, None), ("5000-digit-int", huge_int, None)]
    for shape in ([2**32, 2**32], [2**62, 4], [2**64], [2**31, 2**31, 2**31], [-1, 30]):
        entry = {"name": "x", "datatype": "FP32", "shape": shape, "data": [1.0] * 30}
        cases.append((f"json-shape-{shape}", json.dumps({"inputs": [entry]}).encode(), None))
        header = json.dumps(
            {"inputs": [{"name": "x", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": 8}}]}
        ).encode()
        cases.append((f"binary-shape-{shape}", header + b"\x00" * 8, len(header)))
    header = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,30],"parameters":{"binary_data_size":' + (
        b"9" * 400 + b"}}]}"
    )
    cases.append(("binary-size-digits", header, len(header)))
    return cases


@pytest.mark.parametrize(("body", "length"), [c[1:] for c in hostile_bodies()], ids=[c[0] for c in hostile_bodies()])
def test_hostile_bodies_get_a_400_with_a_code(lone_worker, body, length):
    watch = Watch(lone_worker)
    for path in (f"/v2/models/{LINEAR}/infer", "/v2/keys"):
        response = post_raw(lone_worker.url + path, body, length if length is not None else None)
        if path == "/v2/keys" and length is None:
            assert_refused(response, 400, "bad_framing")
            continue
        assert response.status_code == 400, (path, response.status_code, response.text[:300])
        assert isinstance(response.json().get("code"), str)
    watch.check()


# --- 5. quotas ------------------------------------------------------------------------------
TENANTS = {name: f"{name}-key-{index:04d}-0123456789abcdef" for index, name in enumerate(["ann", "bob", "cat", "dan"])}


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TENANTS[tenant]}"}


@pytest.fixture(scope="module")
def metered(tmp_path_factory):
    """Two workers (counters must be shared between them), small quotas, one tenant per test."""
    proc = start_server(
        tmp_path_factory.mktemp("metered"),
        workers=2,
        api_keys=",".join(f"{name}:{key}" for name, key in TENANTS.items()),
        quota_max_keys="3",
        quota_max_key_bytes=str(64 * 1024**2),
        quota_requests_per_second="5",
        quota_request_burst="10",
        quota_rows_per_hour="2000",
    )
    yield proc
    proc.stop()


def register_as(url: str, tenant: str, secret: SecretContext, steps) -> requests.Response:
    body, length = secret.evaluation_key_request(list(steps))
    return post_raw_headers(url + "/v2/keys", body, length, auth(tenant))


def post_raw_headers(url: str, body: bytes, length: int, headers: dict[str, str]) -> requests.Response:
    headers = {**headers, v2.HEADER_LENGTH: str(length), "Content-Type": v2.BINARY_CONTENT_TYPE}
    return requests.post(url, data=body, headers=headers, timeout=60)


def spec_as(url: str, tenant: str, name: str):
    from heserve.engine.spec import EncryptionSpec

    metadata = requests.get(f"{url}/v2/models/{name}", headers=auth(tenant), timeout=10).json()
    return EncryptionSpec.from_json(metadata["parameters"]["encryption"])


def test_key_count_quota_across_workers(metered):
    spec = spec_as(metered.url, "ann", LINEAR)
    ids, refused = [], None
    for _ in range(5):
        response = register_as(metered.url, "ann", SecretContext.generate(spec.ckks), spec.rotation_steps)
        if response.status_code != 201:
            refused = response
            break
        ids.append(response.json()["key_id"])
    assert len(ids) == 3
    body = assert_refused(refused, 429, "key_quota_exceeded")
    assert "3" in body["error"] and int(refused.headers["Retry-After"]) >= 1
    assert len(key_files(metered)) == 2 * 3
    usage = requests.get(f"{metered.url}/v2/quota", headers=auth("ann"), timeout=10).json()["usage"]
    assert usage["keys"] == {"used": 3, "limit": 3}
    # Another tenant is not affected; erasing one of ann's keys frees its place at once.
    assert register_as(metered.url, "bob", SecretContext.generate(spec.ckks), spec.rotation_steps).status_code == 201
    response = requests.delete(f"{metered.url}/v2/keys/{ids[0]}", headers=auth("ann"), timeout=10)
    assert response.status_code == 200
    assert register_as(metered.url, "ann", SecretContext.generate(spec.ckks), spec.rotation_steps).status_code == 201


def test_request_rate_limit_is_shared_by_the_workers(metered):
    statuses = []
    for _ in range(40):
        response = requests.get(f"{metered.url}/v2/models/{LINEAR}", headers=auth("cat"), timeout=10)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["code"] == "rate_limited" and int(response.headers["Retry-After"]) >= 1
    allowed = statuses.count(200)
    # A burst of 10 plus what 5/s refills while the loop runs, whichever worker answered.
    assert 10 <= allowed <= 25, statuses
    assert statuses.count(429) == len(statuses) - allowed
    # Health probes are never rate limited; another tenant is not limited by cat's use.
    assert requests.get(f"{metered.url}/v2/health/ready", timeout=10).status_code == 200
    assert requests.get(f"{metered.url}/v2/models/{LINEAR}", headers=auth("dan"), timeout=10).status_code == 200


def test_rows_are_charged_at_what_the_ciphertexts_can_answer(metered):
    spec = spec_as(metered.url, "dan", LINEAR)
    secret = SecretContext.generate(spec.ckks)
    response = register_as(metered.url, "dan", secret, spec.rotation_steps)
    assert response.status_code == 201, response.text
    key_id = response.json()["key_id"]
    rows = np.zeros((1, spec.n_features))
    batch = [secret.encrypt(rows[:, j], 2.0**spec.input_scale_bits) for j in range(spec.n_features)]
    url = f"{metered.url}/v2/models/{LINEAR}/infer"
    # One chunk claims one row but can answer a full slot vector (2048 complex slots, charged as
    # 4096 rows): over the 2000-row quota.
    message = infer_message(batch, key_id, "batch", shape=[1, spec.n_features], rows=1)
    body, length = v2.encode(message, "inputs", binary=True)
    assert_refused(post_raw_headers(url, body, length, auth("dan")), 429, "row_quota_exceeded")
    # A single-layout row is charged as published (1: its coefficients are real, it answers one
    # row) and passes; the refused chunk was not charged.
    blob = encrypt_single(secret, spec, np.zeros(spec.n_features))
    body, length = v2.encode(infer_message([blob], key_id), "inputs", binary=True)
    assert post_raw_headers(url, body, length, auth("dan")).status_code == 200
    usage = requests.get(f"{metered.url}/v2/quota", headers=auth("dan"), timeout=10).json()["usage"]
    assert usage["rows_per_hour"]["used"] == spec.layouts["single"].rows_charged == 1


# --- 7. expiry ------------------------------------------------------------------------------
def test_expired_keys_leave_the_disk_without_being_touched(tmp_path):
    server = start_server(tmp_path, workers=2, key_ttl_seconds="3", key_sweep_interval_seconds="1")
    try:
        spec = model_spec(server.url, LINEAR)
        key_id = register(server.url, SecretContext.generate(spec.ckks), spec.rotation_steps).json()["key_id"]
        assert {f"{key_id}.json", f"{key_id}.keys"} <= set(key_files(server))
        assert requests.get(f"{server.url}/v2/privacy", timeout=10).json()["live_settings"]["registered_keys"] == 1
        time.sleep(3.2)
        # Expired but perhaps not swept yet: no longer counted anywhere.
        assert requests.get(f"{server.url}/v2/privacy", timeout=10).json()["live_settings"]["registered_keys"] == 0
        assert "heserve_registered_keys 0.0" in requests.get(f"{server.url}/metrics", timeout=10).text
        deadline = time.monotonic() + 1 + 2  # sweep interval, slack
        while time.monotonic() < deadline and key_files(server):
            time.sleep(0.2)
        assert key_files(server) == []
    finally:
        server.stop()


# --- 8. the key cache under gthread's threads -----------------------------------------------
def test_key_cache_is_consistent_under_concurrent_use():
    cache = KeyCache(max_bytes=10 * 100)
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(20_000):
                key = f"k{rng.integers(40)}"
                action = rng.integers(3)
                if action == 0:
                    cache.put(key, object(), 100)
                elif action == 1:
                    cache.get(key)
                else:
                    cache.discard(key)
        except BaseException as exc:  # any failure in a thread is the finding
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert cache.bytes == 100 * len(cache) <= cache.max_bytes


def test_worker_pids_survived_the_whole_module(lone_worker):
    # The watch in each test compares pids; this also checks nothing was logged as a crash.
    log = lone_worker.log()
    assert "Traceback" not in log and "MemoryError" not in log and '"status": 500' not in log
    assert os.path.isdir(lone_worker.keys_dir)


def test_quotas_are_shared_by_instances_on_one_redis(tmp_path):
    from heserve.benchmarks.cluster import start_cluster

    limits = {"quota_max_keys": "2", "quota_requests_per_second": "100", "quota_request_burst": "100"}
    with start_cluster(tmp_path, instances=2, workers=1, balancer=False, **limits) as cluster:
        first, second = (server.url for server in cluster.servers)
        spec = model_spec(first, LINEAR)
        for url in (first, second):
            assert register(url, SecretContext.generate(spec.ckks), spec.rotation_steps).status_code == 201
        for url in (first, second):
            response = register(url, SecretContext.generate(spec.ckks), spec.rotation_steps)
            assert_refused(response, 429, "key_quota_exceeded")


# --- the deep networks: the costliest requests a key holder can send --------------------------------
DEEP = "digits-cryptonets"


@pytest.fixture(scope="module")
def deep_worker(tmp_path_factory):
    """One worker with a 1 s request limit: a deep single row costs ~0.25 s, a batch chunk ~1.5-2 s."""
    proc = start_server(tmp_path_factory.mktemp("deep"), workers=1, max_request_seconds="1")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def deep_key(deep_worker):
    spec = model_spec(deep_worker.url, DEEP)
    secret = SecretContext.generate(spec.ckks)
    response = register(deep_worker.url, secret, spec.rotation_steps, relin_keys=True)
    assert response.status_code == 201, response.text[:300]
    return spec, secret, response.json()["key_id"]


def test_deep_single_rows_past_the_time_limit_are_stopped_within_a_row(deep_worker, deep_key):
    """40 rows at ~0.25 s each ask for ~10 s of a worker; the limit stops them at 1 s plus one row."""
    spec, secret, key_id = deep_key
    row = encrypt_single(secret, spec, np.zeros(spec.n_features))
    watch = Watch(deep_worker)
    started = time.monotonic()
    response = post_binary(
        deep_worker.url, f"/v2/models/{DEEP}/infer", infer_message([row] * 40, key_id, "single", [40, 1], 40)
    )
    elapsed = time.monotonic() - started
    assert_refused(response, 413, "deadline_exceeded")
    assert elapsed < 1 + 2.5, f"the worker spent {elapsed:.1f} s"
    evaluated = re.search(r"stopped after (\d+) of 40 rows", response.json()["error"])
    assert evaluated and 1 <= int(evaluated.group(1)) < 40, response.json()["error"]
    watch.check(seconds=15, rss_bound=400 * 1024**2)


def test_deep_batch_chunks_past_the_time_limit_are_stopped_after_one_chunk(deep_worker, deep_key):
    """Full 4,096-row chunks (64 full ciphertexts each, ~50 MB), each longer than the 1 s limit: the
    limit is checked before every chunk, so one chunk is answered and of three only the first is
    evaluated; the worker's memory stays within what one chunk takes."""
    spec, secret, key_id = deep_key
    column = secret.encrypt(np.zeros(8), 2.0**spec.input_scale_bits, seeded=False)
    capacity = spec.layouts["batch"].capacity

    def send(chunks: int):
        started = time.monotonic()
        response = post_binary(
            deep_worker.url,
            f"/v2/models/{DEEP}/infer",
            infer_message([column] * (chunks * spec.n_features), key_id, "batch", [chunks, spec.n_features],
                          chunks * capacity),
        )
        return response, time.monotonic() - started

    one, one_elapsed = send(1)
    assert one.status_code == 200, one.text[:300]
    assert one_elapsed > 1, "a chunk should outlast the limit for this test to mean anything"
    watch = Watch(deep_worker)
    response, elapsed = send(3)
    assert_refused(response, 413, "deadline_exceeded")
    assert "stopped after 1 of 3 chunks" in response.json()["error"]
    watch.check(seconds=elapsed + 1, rss_bound=1024**3)
    # One chunk evaluated, not three (~3x): the upload and parse of the other two (~50 MB each) cost
    # about a third of one each on this machine, more when it is busy.
    assert elapsed < 2.5 * one_elapsed, f"three chunks took {elapsed:.1f} s, one {one_elapsed:.1f} s"


@pytest.mark.parametrize("craft", ["zero second polynomials", "uniform coefficients"])
def test_deep_batch_columns_built_by_hand_are_answered_or_refused_never_a_fault(deep_worker, deep_key, craft):
    """Full columns whose coefficients the client chose outright instead of encrypting: they reach the
    numpy activation (digits-cryptonets' first, fused) and SEAL's relinearization of the next layer.
    Zero second polynomials leave every unit independent of the key (SEAL refuses it: 400); uniform
    coefficients are answered, one result per output. Either way one chunk's work and
    memory, and the worker survives."""
    spec, secret, key_id = deep_key
    honest = secret.encrypt(np.zeros(8), 2.0**spec.input_scale_bits, seeded=False)
    n = spec.ckks.poly_modulus_degree
    moduli = [m.value() for m in sealapi.CoeffModulus.Create(n, list(spec.ckks.coeff_mod_bit_sizes))][:-1]
    raw = seal_raw.parse(honest, n, moduli, "column", allow_compressed=True)
    q = np.array(moduli, dtype=np.uint64).reshape(-1, 1)
    rng = np.random.default_rng(7)
    data = rng.integers(0, 2**63, size=raw.data.shape, dtype=np.uint64) % q
    if craft == "zero second polynomials":
        data[1] = 0
    column = seal_raw.build(raw.parms_id, raw.scale, data, seal_raw.seal_version())
    capacity = spec.layouts["batch"].capacity
    watch = Watch(deep_worker)
    response = post_binary(
        deep_worker.url,
        f"/v2/models/{DEEP}/infer",
        infer_message([column] * spec.n_features, key_id, "batch", [1, spec.n_features], capacity),
    )
    if craft == "zero second polynomials":
        assert_refused(response, 400, "bad_ciphertext")
    else:
        assert response.status_code == 200, response.text[:300]
        results = decode_outputs(response).tensors[0].data
        assert len(results) == spec.n_outputs
        for blob in results:
            assert np.all(np.isfinite(secret.decrypt(blob)))
    watch.check(seconds=20, rss_bound=1024**3)
