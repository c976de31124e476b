"""Property-based fuzzing: schemathesis against the OpenAPI document, hypothesis over ciphertext and
key bytes. Every answer must be below 500 and no worker may die."""

from __future__ import annotations

import numpy as np
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heserve.client.keys import SecretContext
from heserve.protocol import v2
from heserve.server import create_app
from heserve.server.service.config import ServerConfig
from heserve.server.web.openapi import document

from .helpers import encrypt_single, infer_message, model_spec, post_binary, register

FUZZ = settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def test_openapi_document_lists_every_route(tmp_path):
    app = create_app(ServerConfig.from_env(keys_dir=tmp_path))
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        routes |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    assert routes == documented


def test_schemathesis_finds_no_server_error(server):
    schema = schemathesis.openapi.from_dict(requests.get(f"{server.url}/openapi.json", timeout=10).json())
    pids = server.worker_pids()
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @FUZZ
        @given(case=operation.as_strategy())
        def check(case):
            nonlocal calls
            response = case.call(base_url=server.url, timeout=30)
            calls += 1
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:200])
            if response.status_code >= 400:
                assert "error" in response.json()

        check()
    assert calls >= 1000
    assert server.worker_pids() == pids


def test_hypothesis_ciphertext_and_key_bytes(server):
    spec = model_spec(server.url, "breast-cancer-logreg")
    secret = SecretContext.generate(spec.ckks)
    key_id = register(server.url, secret, spec.rotation_steps).json()["key_id"]
    good = encrypt_single(secret, spec, np.zeros(spec.n_features))
    # Galois keys are fuzzed where some model takes them: the linear models' one-prime set refuses
    # any before parsing.
    network = model_spec(server.url, "digits-mlp")
    galois = v2.decode(*SecretContext.generate(network.ckks).evaluation_key_request([1]), "inputs").tensors[1].data[0]
    pids = server.worker_pids()

    def mutate(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
        out = bytearray(data[: cut % (len(data) + 1)])
        for position, value in flips:
            if out:
                out[position % len(out)] = value
        return bytes(out)

    @FUZZ
    @given(
        cut=st.integers(0, 40000),
        flips=st.lists(st.tuples(st.integers(0, 40000), st.integers(0, 255)), max_size=4),
        noise=st.binary(max_size=64),
    )
    def ciphertexts(cut, flips, noise):
        blob = mutate(good, cut, flips) + noise
        response = post_binary(server.url, "/v2/models/breast-cancer-logreg/infer", infer_message([blob], key_id))
        assert response.status_code in (200, 400), response.text[:200]

    @FUZZ
    @given(
        cut=st.integers(0, 400000), flips=st.lists(st.tuples(st.integers(0, 400000), st.integers(0, 255)), max_size=4)
    )
    def keys(cut, flips):
        message = v2.Message(
            [v2.Tensor("galois_keys", "BYTES", [1], [mutate(galois, cut, flips)])],
            parameters={"ckks": network.ckks.to_json()},
        )
        response = post_binary(server.url, "/v2/keys", message)
        assert response.status_code in (201, 400), response.text[:200]

    @FUZZ
    @given(body=st.binary(max_size=2048), length=st.one_of(st.none(), st.integers(-5, 3000)))
    def framing(body, length):
        headers = {} if length is None else {v2.HEADER_LENGTH: str(length)}
        response = requests.post(
            f"{server.url}/v2/models/breast-cancer-logreg/infer", data=body, headers=headers, timeout=30
        )
        assert 400 <= response.status_code < 500 and "error" in response.json()

    ciphertexts()
    keys()
    framing()
    assert server.worker_pids() == pids
