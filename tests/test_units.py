"""Plain functions: parameters, wire codec, key store, engine scale choice."""

from __future__ import annotations

import numpy as np
import pytest

from heserve.engine.linear import LINEAR_PARAMS, choose_scales
from heserve.engine.params import MAX_COEFF_BITS_128, CKKSParams, ParameterError, galois_element
from heserve.protocol import v2
from heserve.server.service.keystore import DiskKeyStore, KeyCache


def test_security_table_is_enforced():
    for n, cap in MAX_COEFF_BITS_128.items():
        if n < 2048:
            continue
        count = -(-cap // 50)
        bits = [cap // count + (1 if i < cap % count else 0) for i in range(count)]
        CKKSParams(n, tuple(bits)).validate()
        bits[0] += 1
        with pytest.raises(ParameterError, match="128-bit"):
            CKKSParams(n, tuple(bits)).validate()
    with pytest.raises(ParameterError):
        CKKSParams(3000, (30, 30)).validate()
    with pytest.raises(ParameterError):
        CKKSParams.from_json({"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": "60,49"})
    with pytest.raises(ParameterError):
        CKKSParams.from_json({"poly_modulus_degree": True, "coeff_mod_bit_sizes": [60, 49]})
    assert LINEAR_PARAMS.total_bits <= MAX_COEFF_BITS_128[LINEAR_PARAMS.poly_modulus_degree]


def test_galois_elements_match_seal():
    assert galois_element(1, 4096) == 3
    assert galois_element(2, 4096) == 9
    assert galois_element(-1, 4096) == pow(3, 2047, 8192)


def test_v2_binary_round_trip():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    message = v2.Message(
        [v2.Tensor("input", "FP32", [2, 3], x), v2.Tensor("blobs", "BYTES", [2], [b"ab", b""])],
        parameters={"k": 1},
        id="r1",
    )
    body, header_length = v2.encode(message, "inputs", binary=True)
    back = v2.decode(body, header_length, "inputs")
    assert back.id == "r1" and back.parameters == {"k": 1}
    assert np.array_equal(back.tensors[0].data, x)
    assert back.tensors[1].data == [b"ab", b""]
    json_body, none = v2.encode(v2.Message([v2.Tensor("input", "FP32", [2, 3], x)]), "inputs", binary=False)
    assert none is None and np.array_equal(v2.decode(json_body, None, "inputs").tensors[0].data, x)


@pytest.mark.parametrize("tail", [b"\x01", b"\x05\x00\x00\x00ab", b"\x02\x00\x00\x00abc"])
def test_v2_bytes_elements_must_fill_exactly(tail):
    header = b'{"inputs":[{"name":"b","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":%d}}]}' % len(
        tail
    )
    with pytest.raises(v2.ProtocolError):
        v2.decode(header + tail, len(header), "inputs")


def test_keystore_ttl_and_sweep(tmp_path):
    now = [1000.0]
    store = DiskKeyStore(tmp_path, ttl_seconds=10, clock=lambda: now[0])
    record = store.put(b"material", {"p": 1}, [3, 9], False)
    assert store.get(record.key_id).galois_elements == [3, 9]
    assert store.material(record.key_id) == b"material"
    now[0] += 11
    other = store.put(b"x", {}, [], False)
    assert store.sweep() == 1
    assert store.get(record.key_id) is None and store.material(record.key_id) is None
    assert store.get(other.key_id) is not None
    assert store.get("../../etc/passwd") is None
    assert not store.delete("not-an-id")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{other.key_id}.json", f"{other.key_id}.keys"])


def test_key_cache_is_bounded_in_bytes():
    cache = KeyCache(max_bytes=100)
    cache.put("a", "A", 60)
    cache.put("b", "B", 30)
    cache.get("a")
    cache.put("c", "C", 30)  # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("a") == "A" and cache.get("c") == "C"
    cache.put("huge", "H", 1000)
    assert cache.get("huge") is None
    cache.discard("a")
    assert len(cache) == 1


def test_scales_fit_the_data_prime():
    for bound in (1.0, 30.0, 1200.0, 50000.0):
        x_bits, w_bits = choose_scales(bound, 5.0)
        assert x_bits + w_bits + np.log2(bound) <= 58
        assert x_bits >= 20 and w_bits >= 16
    with pytest.raises(ValueError):
        choose_scales(2.0**40, 1.0)


@pytest.mark.parametrize("q", [33292289, 1073692673, 35184371613697])
@pytest.mark.parametrize("weight_bits", [8, 20, 30])
def test_modular_dense_is_exact(q, weight_bits):
    from heserve.engine.modmath import ModularDense, mulmod_vector

    rng = np.random.default_rng(weight_bits)
    W = rng.integers(-(2**weight_bits), 2**weight_bits, size=(4, 300)).astype(np.float64)
    rows = [rng.integers(0, q, size=(2, 16), dtype=np.uint64) for _ in range(300)]
    dense = ModularDense(W, [q])
    got = dense.apply(0, dense.gather(0, rows))
    C = np.stack([r.reshape(-1) for r in rows])
    expected = [[sum(int(W[i, k]) * int(C[k, j]) for k in range(300)) % q for j in range(32)] for i in range(4)]
    assert got.tolist() == expected
    rows[7][1, 3] = q  # a coefficient outside its modulus is caught where it is read
    assert dense.gather(0, rows) is None
    a, b = rng.integers(0, q, 1000, dtype=np.uint64), rng.integers(0, q, 1000, dtype=np.uint64)
    assert mulmod_vector(a, b, q).tolist() == [int(x) * int(y) % q for x, y in zip(a, b, strict=True)]


@pytest.mark.parametrize(("q_bits", "n_in", "weight_bits", "in_float"),
                         [(27, 64, 30, True), (27, 256, 28, True), (36, 32, 27, False), (40, 64, 40, False)])
def test_modular_dense_recombines_limbs_in_float_only_where_it_is_exact(q_bits, n_in, weight_bits, in_float):
    # The batch networks' primes and widths (digits-cryptonets: 27-bit primes, 64 and 256 inputs);
    # the float recombination must be taken where its bound holds, and agree with integers everywhere.
    import tenseal.sealapi as sealapi

    from heserve.engine.modmath import ModularDense

    q = sealapi.CoeffModulus.Create(8192, [q_bits])[0].value()
    rng = np.random.default_rng(q_bits + n_in)
    W = rng.integers(-(2**weight_bits), 2**weight_bits, size=(5, n_in)).astype(np.float64)
    W[0, :] = 2**weight_bits - 1  # the largest products the bound allows
    rows = [rng.integers(0, q, size=(3, 8), dtype=np.uint64) for _ in range(n_in)]
    rows[0][:] = q - 1
    dense = ModularDense(W, [q])
    assert (dense.plans[0][5] is not None) == in_float
    got = dense.apply(0, dense.gather(0, rows))
    C = np.stack([r.reshape(-1) for r in rows])
    expected = [[sum(int(W[i, k]) * int(C[k, j]) for k in range(n_in)) % q for j in range(24)] for i in range(5)]
    assert got.tolist() == expected


def test_raw_ciphertext_round_trip_through_seal():
    import tenseal.sealapi as sealapi

    from heserve.client.keys import SecretContext
    from heserve.engine import seal_io, seal_raw

    params = CKKSParams(8192, (45, 45, 45, 60))
    secret = SecretContext.generate(params)
    moduli = [m.value() for m in secret._context.first_context_data().parms().coeff_modulus()]
    blob = secret.encrypt(np.arange(10) * 0.5, 2.0**30, seeded=False)
    raw = seal_raw.parse(blob, 8192, moduli, "x")
    assert raw.scale == 2.0**30 and list(raw.parms_id) == list(secret._context.first_parms_id())
    doubled = (raw.data * np.uint64(2)) % np.asarray(moduli, dtype=np.uint64).reshape(1, -1, 1)
    rebuilt = seal_raw.build(raw.parms_id, raw.scale, doubled, seal_raw.seal_version())
    seal_io.load(sealapi.Ciphertext, secret._context, rebuilt, "rebuilt")
    assert np.allclose(secret.decrypt(rebuilt)[:10], np.arange(10) * 1.0, atol=1e-4)
    with pytest.raises(seal_raw.RawCiphertextError, match="seeded or of other parameters"):
        seal_raw.parse(secret.encrypt(np.zeros(4), 2.0**30), 8192, moduli, "x")
    with pytest.raises(seal_raw.RawCiphertextError):
        seal_raw.parse(blob[:100], 8192, moduli, "x")


def test_log_lines_inside_a_request_carry_its_id(tmp_path):
    import json
    import logging

    from flask import g

    from heserve.server import create_app
    from heserve.server.service.config import ServerConfig
    from heserve.server.web.audit import JSONLineFormatter

    app = create_app(ServerConfig.from_env(keys_dir=tmp_path))
    record = logging.LogRecord("server.x", logging.WARNING, __file__, 1, "something %s", ("odd",), None)
    with app.test_request_context("/v2"):
        g.request_id = "abc123"
        line = json.loads(JSONLineFormatter().format(record))
    assert line["request_id"] == "abc123" and line["message"] == "something odd" and line["level"] == "warning"
    assert "request_id" not in json.loads(JSONLineFormatter().format(record))


def test_coefficient_codec_round_trips_and_masks_all_but_the_constant():
    from heserve.engine.coefficients import CoefficientCodec, uniform_mod

    codec = CoefficientCodec(LINEAR_PARAMS.seal_context())
    q, n = codec.moduli[0], codec.n
    values = np.random.default_rng(0).normal(0.0, 3.0, 40)
    plain = codec.encode(values, 2.0**30)
    coefficients = codec.from_ntt(codec.plaintext_residues(plain))[0]
    signed = [int(c) - q if c > q // 2 else int(c) for c in coefficients]  # exact: floats lose the low bits
    assert signed[:40] == [int(v) for v in np.rint(values * 2.0**30)] and not any(signed[40:])
    assert codec.constant(plain) == np.rint(values[0] * 2.0**30) / 2.0**30
    mask = codec.from_ntt(codec.uniform_except_constant([12345]))[0]
    assert int(mask[0]) == 12345
    assert 0.45 < np.mean(mask[1:] > q // 2) < 0.55  # uniform: as many above q/2 as below
    drawn = uniform_mod(q, 100_000)
    assert drawn.max() < q and 0.49 < np.mean(drawn > q // 2) < 0.51
    with pytest.raises(ValueError, match="do not fit"):
        codec.encode(np.zeros(n + 1), 1.0)


def test_an_engine_fault_is_a_500_with_a_request_id_and_a_logged_traceback(tmp_path, caplog, monkeypatch):
    """Only what the client caused is a 4xx: a bug in the engine is the server's, and says so."""
    from heserve.client.keys import SecretContext
    from heserve.engine.linear import LinearPlan
    from heserve.protocol import v2
    from heserve.server.service.config import ServerConfig
    from heserve.server.web.app import create_app

    app = create_app(ServerConfig(keys_dir=tmp_path / "keys"))
    services = app.extensions["heserve"]
    spec = services.registry.get("diabetes-linreg").spec
    secret = SecretContext.generate(spec.ckks)
    body, length = secret.evaluation_key_request(spec.rotation_steps)
    key_id = services.keys.register(body, length).key_id
    blob = secret.encrypt_coefficients(np.zeros(spec.n_features), 2.0**spec.input_scale_bits)
    message = v2.Message([v2.Tensor("ciphertext", "BYTES", [1], [blob])], parameters={"key_id": key_id})
    payload, header = v2.encode(message, "inputs", binary=True)

    def broken(self, cts, keys=None):
        raise ValueError("an engine bug")

    monkeypatch.setattr(LinearPlan, "evaluate_single", broken)
    with caplog.at_level("ERROR"):
        response = app.test_client().post(
            "/v2/models/diabetes-linreg/infer",
            data=payload,
            headers={v2.HEADER_LENGTH: str(header), "Content-Type": v2.BINARY_CONTENT_TYPE},
        )
    assert response.status_code == 500
    body = response.get_json()
    assert body["code"] == "internal" and body["request_id"] and "engine bug" not in response.text
    assert any(r.exc_info and "an engine bug" in str(r.exc_info[1]) for r in caplog.records)


def test_two_apps_in_one_process_keep_their_own_metrics(tmp_path):
    """No module-level registry: each application counts its own requests."""
    from heserve.server.service.config import ServerConfig
    from heserve.server.web.app import create_app

    first = create_app(ServerConfig(keys_dir=tmp_path / "a"))
    second = create_app(ServerConfig(keys_dir=tmp_path / "b"))
    for _ in range(3):
        assert first.test_client().get("/v2/health/live").status_code == 200
    second.test_client().get("/v2/health/live")

    def live_requests(app) -> float:
        text = app.test_client().get("/metrics").text
        line = next(
            line
            for line in text.splitlines()
            if line.startswith("heserve_requests_total") and 'route="/v2/health/live"' in line
        )
        return float(line.rsplit(" ", 1)[1])

    assert (live_requests(first), live_requests(second)) == (3.0, 1.0)
