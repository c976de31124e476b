"""The server driven by the two stock Open Inference Protocol clients, as their users would.

NVIDIA's `tritonclient.http` (InferenceServerClient, geventhttpclient underneath) and KServe's
`InferenceRESTClient` (httpx, asyncio, protocol "v2") against a real gunicorn server with two
workers: health, metadata, model configuration, plaintext inference in JSON and with the binary
tensor extension both ways, every refusal, the model repository extension (index, load, unload,
under traffic and with the operator role), statistics and Prometheus metrics summed over the
workers, model versions and their policies, a corrupt artifact beside good ones, and a SIGHUP
that rescans the models directory. Raw `requests` shows what a client library hides (status
codes and the `code` of an error body).

Predictions are compared with a numpy reimplementation of the shipped small models
(tests/oip_helpers.py: weights.npz and the manifest's standardisation).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import requests
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from tritonclient.utils import InferenceServerException

from .oip_helpers import (
    SHIPPED,
    connections_per_worker,
    copy_model,
    corrupt_weights,
    expected_outputs,
    json_log_records,
    log_lines,
    n_features,
    parse_metrics,
    sample_rows,
    truncate_manifest,
    wait_for,
)
from .serverproc import ServerProcess, start_server

pytestmark = pytest.mark.slow

LOGREG, LINREG, MLP = "breast-cancer-logreg", "diabetes-linreg", "digits-mlp"
MODELS = (LOGREG, LINREG, MLP)
OUTPUTS = {LOGREG: 1, LINREG: 1, MLP: 10}
HEADER_LENGTH = "Inference-Header-Content-Length"
TIMEOUT = 60


# --- servers and clients -----------------------------------------------------------------------------


def small_models_dir(dest: Path, names=MODELS) -> Path:
    for name in names:
        copy_model(name, dest / name)
    return dest


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> ServerProcess:
    """The module's server: the three small shipped models, two workers, no API keys."""
    tmp = tmp_path_factory.mktemp("oip")
    proc = start_server(tmp / "server", workers=2, models_dir=small_models_dir(tmp / "models"))
    yield proc
    proc.stop()


def triton_client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(urlsplit(server.url).netloc, network_timeout=TIMEOUT)


@pytest.fixture(scope="module")
def tc(srv) -> triton.InferenceServerClient:
    client = triton_client(srv)
    yield client
    client.close()


def kserve(call):
    """Run `await call(client)` with a fresh KServe InferenceRESTClient (protocol v2)."""

    async def main():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=TIMEOUT))
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(main())


# --- building and reading V2 messages by hand ---------------------------------------------------------


def json_request(x: np.ndarray, name: str = "input", datatype: str = "FP32", shape=None, **extra) -> dict:
    body = {
        "inputs": [{"name": name, "datatype": datatype, "shape": list(shape or x.shape), "data": x.ravel().tolist()}]
    }
    body.update(extra)
    return body


def binary_request(x: np.ndarray, name: str = "input", datatype: str = "FP32", **extra) -> tuple[bytes, int]:
    raw = np.ascontiguousarray(x).tobytes()
    header = {
        "inputs": [
            {"name": name, "datatype": datatype, "shape": list(x.shape), "parameters": {"binary_data_size": len(raw)}}
        ]
    }
    header.update(extra)
    encoded = json.dumps(header).encode()
    return encoded + raw, len(encoded)


def post_json(url: str, path: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(url + path, json=body, timeout=TIMEOUT, **kwargs)


def post_binary(url: str, path: str, x: np.ndarray, **extra) -> requests.Response:
    body, length = binary_request(x, **extra)
    headers = {HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"}
    return requests.post(url + path, data=body, headers=headers, timeout=TIMEOUT)


def decode_response(headers, body: bytes) -> tuple[dict, dict[str, np.ndarray], bool]:
    """(JSON header, outputs by name as FP32 arrays, whether any output came in binary)."""
    lookup = {k.lower(): v for k, v in dict(headers).items()}
    raw_length = lookup.get(HEADER_LENGTH.lower())
    length = int(raw_length) if raw_length is not None else len(body)
    header = json.loads(body[:length])
    offset = length
    outputs, binary = {}, False
    for out in header["outputs"]:
        assert out["datatype"] == "FP32", out
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            assert "data" not in out, "an output is either binary or JSON"
            array = np.frombuffer(body[offset : offset + size], dtype="<f4")
            offset += size
            binary = True
        else:
            array = np.asarray(out["data"], dtype=np.float32)
        outputs[out["name"]] = array.reshape(out["shape"])
    assert offset == len(body), "bytes left over after the binary outputs"
    return header, outputs, binary


def assert_refusal(response: requests.Response, status: int, code: str | None) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("code"), str) and body["code"], body
    if code is not None:
        assert body["code"] == code, body
    return body


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.float32
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-4)


def index_entries(entries: list[dict], name: str) -> list[dict]:
    return [e for e in entries if e["name"] == name]


def model_stats(url: str, name: str, version: str | None = None) -> dict:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/stats"
    response = requests.get(url + path, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    entries = response.json()["model_stats"]
    assert len(entries) == 1 and entries[0]["name"] == name, entries
    return entries[0]


# === health, metadata, configuration ===================================================================


def test_tritonclient_health_and_metadata(srv, tc):
    assert tc.is_server_live()
    assert tc.is_server_ready()
    server = tc.get_server_metadata()
    assert {"binary_tensor_data", "model_repository", "model_configuration", "statistics"} <= set(
        server["extensions"]
    ), server
    for name in MODELS:
        assert tc.is_model_ready(name)
        assert tc.is_model_ready(name, "1")
        for metadata in (tc.get_model_metadata(name), tc.get_model_metadata(name, "1")):
            assert metadata["name"] == name
            assert metadata["versions"] == ["1"]
            assert isinstance(metadata["platform"], str) and metadata["platform"]
            assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, n_features(name)]}]
            assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, OUTPUTS[name]]}]
    assert not tc.is_model_ready("no-such-model")
    assert not tc.is_model_ready(LOGREG, "7")
    for call in (lambda: tc.get_model_metadata("no-such-model"), lambda: tc.get_model_metadata(LOGREG, "7")):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "404"


def test_kserve_health(srv):
    async def probe(client):
        return (
            await client.is_server_live(srv.url),
            await client.is_server_ready(srv.url),
            [await client.is_model_ready(srv.url, name) for name in MODELS],
            await client.is_model_ready(srv.url, "no-such-model"),
        )

    live, ready, models_ready, unknown_ready = kserve(probe)
    assert live is True and ready is True
    assert models_ready == [True] * len(MODELS)
    assert unknown_ready is False


def test_model_configuration_in_tritons_shape(srv, tc):
    for name in MODELS:
        for config in (tc.get_model_config(name), tc.get_model_config(name, "1")):
            assert config["name"] == name
            assert isinstance(config["platform"], str) and config["platform"]
            assert config["backend"] == "heserve"
            assert isinstance(config["version_policy"], dict) and config["version_policy"]
            assert config["max_batch_size"] == 0
            assert [{k: e[k] for k in ("name", "data_type", "dims")} for e in config["input"]] == [
                {"name": "input", "data_type": "TYPE_FP32", "dims": [-1, n_features(name)]}
            ]
            assert [{k: e[k] for k in ("name", "data_type", "dims")} for e in config["output"]] == [
                {"name": "output", "data_type": "TYPE_FP32", "dims": [-1, OUTPUTS[name]]}
            ]
            assert isinstance(config["parameters"], dict)
    with pytest.raises(InferenceServerException) as info:
        tc.get_model_config("no-such-model")
    assert info.value.status() == "404"


def test_startup_line_lists_the_models(srv):
    records = json_log_records(srv)  # every line JSON
    startup = [r for r in records if r.get("event") == "startup"]
    assert len(startup) == 1, startup
    line = startup[0]
    models = {m["name"]: m for m in line["models"]}
    assert set(models) == set(MODELS)
    for entry in models.values():
        assert entry["versions"] == ["1"] and entry.get("state") == "READY", entry
    flat_keys = " ".join(_flatten_keys(line))
    for what in ("store", "auth", "quota"):
        assert what in flat_keys, f"the startup line says nothing about {what}: {line}"


def _flatten_keys(value, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        keys = []
        for k, v in value.items():
            keys.append(prefix + k)
            keys += _flatten_keys(v, prefix + k + ".")
        return keys
    return []


# === inference: tritonclient ==============================================================================


@pytest.mark.parametrize("binary_out", [True, False, None], ids=["out-binary", "out-json", "out-default"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["in-binary", "in-json"])
@pytest.mark.parametrize("name", MODELS)
def test_tritonclient_infer(srv, tc, name, binary_in, binary_out):
    x = sample_rows(name, 5, seed=1)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outputs = None if binary_out is None else [triton.InferRequestedOutput("output", binary_data=binary_out)]
    result = tc.infer(name, [inp], outputs=outputs, request_id=f"req-{name}-{binary_in}-{binary_out}")
    assert_close(result.as_numpy("output"), expected_outputs(name, x).astype(np.float32))
    header = result.get_response()
    assert header["model_name"] == name
    assert header["model_version"] == "1"
    assert header["id"] == f"req-{name}-{binary_in}-{binary_out}"
    (out,) = header["outputs"]
    assert out["name"] == "output" and out["datatype"] == "FP32" and out["shape"] == [5, OUTPUTS[name]]
    # No requested outputs: tritonclient asks for binary_data_output, so binary is what it gets.
    wants_binary = binary_out is not False
    assert ("binary_data_size" in (out.get("parameters") or {})) == wants_binary, out
    assert ("data" in out) == (not wants_binary), out


def test_tritonclient_versioned_infer_and_json_equals_binary(srv, tc):
    x = sample_rows(LINREG, 7, seed=2)
    answers = []
    for binary in (False, True):
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        result = tc.infer(
            LINREG, [inp], model_version="1", outputs=[triton.InferRequestedOutput("output", binary_data=binary)]
        )
        assert result.get_response()["model_version"] == "1"
        answers.append(result.as_numpy("output"))
    np.testing.assert_allclose(answers[0], answers[1], rtol=1e-6)
    assert_close(answers[1], expected_outputs(LINREG, x).astype(np.float32))


def test_tritonclient_fp64_input_is_accepted(srv, tc):
    x = sample_rows(LOGREG, 3, seed=3).astype(np.float64)
    for binary in (False, True):
        inp = triton.InferInput("input", list(x.shape), "FP64")
        inp.set_data_from_numpy(x, binary_data=binary)
        result = tc.infer(LOGREG, [inp], outputs=[triton.InferRequestedOutput("output", binary_data=binary)])
        assert result.get_response()["outputs"][0]["datatype"] == "FP32"
        assert_close(result.as_numpy("output"), expected_outputs(LOGREG, x).astype(np.float32))


# === inference: KServe ====================================================================================

KSERVE_OUTPUT_MODES = {
    # id: (requested outputs, request parameters, binary answer expected)
    "out-binary": ([RequestedOutput("output", {"binary_data": True})], None, True),
    "out-json": ([RequestedOutput("output", {"binary_data": False})], None, False),
    "request-binary_data_output": (None, {"binary_data_output": True}, True),
    "out-json-over-binary_data_output": ([RequestedOutput("output", {"binary_data": False})],
                                         {"binary_data_output": True}, False),
    "nothing-asked": (None, None, False),
}  # fmt: skip


# Every output mode on one model; per-output binary and JSON on the others.
KSERVE_CASES = [(LOGREG, mode) for mode in sorted(KSERVE_OUTPUT_MODES)] + [
    (name, mode) for name in (LINREG, MLP) for mode in ("out-binary", "out-json")
]


@pytest.mark.parametrize("binary_in", [True, False], ids=["in-binary", "in-json"])
@pytest.mark.parametrize(("name", "mode"), KSERVE_CASES, ids=[f"{n}-{m}" for n, m in KSERVE_CASES])
def test_kserve_infer(srv, name, mode, binary_in):
    requested, parameters, wants_binary = KSERVE_OUTPUT_MODES[mode]
    x = sample_rows(name, 4, seed=4)
    inp = InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    request = InferRequest(name, [inp], request_id=f"k-{name}-{mode}", parameters=parameters, request_outputs=requested)
    response_headers: dict = {}

    async def call(client):
        return await client.infer(srv.url, request, model_name=name, response_headers=response_headers)

    response = kserve(call)
    assert response.model_name == name
    assert response.id == f"k-{name}-{mode}"
    (out,) = response.outputs
    assert out.name == "output" and out.datatype == "FP32" and list(out.shape) == [4, OUTPUTS[name]]
    assert_close(out.as_numpy(), expected_outputs(name, x).astype(np.float32))
    binary_answer = any(k.lower() == HEADER_LENGTH.lower() for k in response_headers)
    assert binary_answer == wants_binary, response_headers


def test_response_format_follows_requested_outputs_not_inputs(srv):
    """Raw requests: the answer is binary exactly where the request asked for binary outputs."""
    x = sample_rows(LINREG, 3, seed=5)
    expected = expected_outputs(LINREG, x).astype(np.float32)
    per_output = {
        True: [{"name": "output", "parameters": {"binary_data": True}}],
        False: [{"name": "output", "parameters": {"binary_data": False}}],
        None: [{"name": "output"}],
    }
    cases = [
        # (binary request, requested outputs, request's binary_data_output, binary answer)
        (False, True, None, True),
        (True, False, None, False),
        (True, "absent", None, False),
        (False, "absent", True, True),
        (False, None, True, True),
        (True, False, True, False),
        (False, True, False, True),
        (True, "absent", False, False),
    ]
    for binary_in, outputs, binary_data_output, wants_binary in cases:
        extra: dict = {"id": f"fmt-{binary_in}-{outputs}-{binary_data_output}"}
        if outputs != "absent":
            extra["outputs"] = per_output[outputs]
        if binary_data_output is not None:
            extra["parameters"] = {"binary_data_output": binary_data_output}
        path = f"/v2/models/{LINREG}/infer"
        if binary_in:
            response = post_binary(srv.url, path, x, **extra)
        else:
            response = post_json(srv.url, path, json_request(x, **extra))
        assert response.status_code == 200, response.text
        header, outs, binary = decode_response(response.headers, response.content)
        assert binary == wants_binary, (binary_in, outputs, binary_data_output, header)
        assert (HEADER_LENGTH in response.headers) == wants_binary
        assert header["model_name"] == LINREG and header["model_version"] == "1"
        assert header["id"] == extra["id"]
        assert_close(outs["output"], expected)


# === refusals =============================================================================================

N_LOGREG = 30
X2 = np.arange(2 * N_LOGREG, dtype=np.float32).reshape(2, N_LOGREG) / 10


def _raw(body: dict, content_type: str | None = "application/json") -> tuple[bytes, dict]:
    headers = {"Content-Type": content_type} if content_type else {}
    return json.dumps(body).encode(), headers


REFUSALS = {
    # id: (path, body, headers, status, code)
    "wrong-input-name": (f"/v2/models/{LOGREG}/infer", *_raw(json_request(X2, name="features")), 400, "unknown_input"),
    "int32": (f"/v2/models/{LOGREG}/infer", *_raw(json_request(X2.astype(np.int32), datatype="INT32")),
              400, "bad_datatype"),
    "int64": (f"/v2/models/{LOGREG}/infer", *_raw(json_request(X2.astype(np.int64), datatype="INT64")),
              400, "bad_datatype"),
    "bytes": (f"/v2/models/{LOGREG}/infer",
              *_raw({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1, 1], "data": ["x"]}]}),
              400, "bad_datatype"),
    "one-dimensional": (f"/v2/models/{LOGREG}/infer", *_raw(json_request(X2[0], shape=[N_LOGREG])),
                        400, "bad_shape"),
    "rank-3": (f"/v2/models/{LOGREG}/infer", *_raw(json_request(X2, shape=[1, 2, N_LOGREG])), 400, "bad_shape"),
    "wrong-width": (f"/v2/models/{LOGREG}/infer", *_raw(json_request(X2[:, :29], shape=[2, 29])),
                    400, "bad_shape"),
    "unknown-output": (f"/v2/models/{LOGREG}/infer", *_raw(json_request(X2, outputs=[{"name": "probability"}])),
                       400, "unknown_output"),
    "two-inputs": (f"/v2/models/{LOGREG}/infer",
                   *_raw({"inputs": json_request(X2)["inputs"] + json_request(X2, name="extra")["inputs"]}),
                   400, None),
    "text-plain": (f"/v2/models/{LOGREG}/infer", *_raw(json_request(X2), "text/plain"), 415,
                   "unsupported_media_type"),
    "form": (f"/v2/models/{LOGREG}/infer", b"inputs=1", {"Content-Type": "application/x-www-form-urlencoded"},
             415, "unsupported_media_type"),
    "multipart": (f"/v2/models/{LOGREG}/infer",
                  b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b--\r\n',
                  {"Content-Type": "multipart/form-data; boundary=b"}, 415, "unsupported_media_type"),
    "unknown-model-infer": ("/v2/models/no-such-model/infer", *_raw(json_request(X2)), 404, "model_not_found"),
    "unknown-version-infer": (f"/v2/models/{LOGREG}/versions/7/infer", *_raw(json_request(X2)),
                              404, "model_not_found"),
}  # fmt: skip

GET_REFUSALS = {
    "unknown-model-metadata": "/v2/models/no-such-model",
    "unknown-version-metadata": f"/v2/models/{LOGREG}/versions/7",
    "unknown-model-ready": "/v2/models/no-such-model/ready",
    "unknown-model-config": "/v2/models/no-such-model/config",
    "unknown-version-config": f"/v2/models/{LOGREG}/versions/7/config",
    "unknown-model-stats": "/v2/models/no-such-model/stats",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_raw(srv, case):
    path, body, headers, status, code = REFUSALS[case]
    response = requests.post(srv.url + path, data=body, headers=headers, timeout=TIMEOUT)
    assert_refusal(response, status, code)


@pytest.mark.parametrize("case", sorted(GET_REFUSALS))
def test_refusal_raw_get(srv, case):
    assert_refusal(requests.get(srv.url + GET_REFUSALS[case], timeout=TIMEOUT), 404, "model_not_found")


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "application/json; charset=utf-8"], ids=["none", "json", "charset"]
)
def test_accepted_json_content_types(srv, content_type):
    body, headers = _raw(json_request(X2), content_type)
    response = requests.post(f"{srv.url}/v2/models/{LOGREG}/infer", data=body, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    _, outs, _ = decode_response(response.headers, response.content)
    assert_close(outs["output"], expected_outputs(LOGREG, X2).astype(np.float32))


def test_fp64_accepted_raw_json_and_binary(srv):
    x = sample_rows(LOGREG, 2, seed=6).astype(np.float64)
    expected = expected_outputs(LOGREG, x).astype(np.float32)
    for response in (
        post_json(srv.url, f"/v2/models/{LOGREG}/infer", json_request(x, datatype="FP64")),
        post_binary(srv.url, f"/v2/models/{LOGREG}/infer", x, datatype="FP64"),
    ):
        assert response.status_code == 200, response.text
        _, outs, _ = decode_response(response.headers, response.content)
        assert_close(outs["output"], expected)


def _triton_input(x: np.ndarray, name: str, datatype: str, binary: bool) -> triton.InferInput:
    inp = triton.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


TRITON_REFUSALS = {
    # id: (model, version, input builder, requested output names, headers, status, code)
    "wrong-input-name": (LOGREG, "", lambda b: _triton_input(X2, "features", "FP32", b), None, None,
                         400, "unknown_input"),
    "int32": (LOGREG, "", lambda b: _triton_input(X2.astype(np.int32), "input", "INT32", b), None, None,
              400, "bad_datatype"),
    "one-dimensional": (LOGREG, "", lambda b: _triton_input(X2[0], "input", "FP32", b), None, None,
                        400, "bad_shape"),
    "unknown-output": (LOGREG, "", lambda b: _triton_input(X2, "input", "FP32", b), ["probability"], None,
                       400, "unknown_output"),
    "text-plain": (LOGREG, "", lambda b: _triton_input(X2, "input", "FP32", b), None,
                   {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    "unknown-model": ("no-such-model", "", lambda b: _triton_input(X2, "input", "FP32", b), None, None,
                      404, "model_not_found"),
    "unknown-version": (LOGREG, "7", lambda b: _triton_input(X2, "input", "FP32", b), None, None,
                        404, "model_not_found"),
}  # fmt: skip


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("case", sorted(TRITON_REFUSALS))
def test_refusal_through_tritonclient(srv, tc, case, binary):
    model, version, build, output_names, headers, status, code = TRITON_REFUSALS[case]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in output_names] if output_names else None
    with pytest.raises(InferenceServerException) as info:
        tc.infer(model, [build(binary)], model_version=version, outputs=outputs, headers=dict(headers or {}))
    assert info.value.status() == str(status), info.value
    # The very bytes tritonclient sends, through requests: the body's code, and the same message.
    body, json_size = triton.InferenceServerClient.generate_request_body([build(binary)], outputs=outputs)
    raw_headers = dict(headers or {})
    if json_size is not None:
        raw_headers[HEADER_LENGTH] = str(json_size)
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    refusal = assert_refusal(
        requests.post(srv.url + path, data=body, headers=raw_headers, timeout=TIMEOUT), status, code
    )
    assert info.value.message() == refusal["error"]


KSERVE_REFUSALS = {
    # id: (model, input (name, datatype, array), requested output names, status, code)
    "wrong-input-name": (LOGREG, ("features", "FP32", X2), None, 400, "unknown_input"),
    "int32": (LOGREG, ("input", "INT32", X2.astype(np.int32)), None, 400, "bad_datatype"),
    "one-dimensional": (LOGREG, ("input", "FP32", X2[0]), None, 400, "bad_shape"),
    "unknown-output": (LOGREG, ("input", "FP32", X2), ["probability"], 400, "unknown_output"),
    "unknown-model": ("no-such-model", ("input", "FP32", X2), None, 404, "model_not_found"),
}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("case", sorted(KSERVE_REFUSALS))
def test_refusal_through_kserve(srv, case, binary):
    model, (name, datatype, array), output_names, status, code = KSERVE_REFUSALS[case]
    inp = InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=binary)
    requested = [RequestedOutput(n, {"binary_data": binary}) for n in output_names] if output_names else None
    request = InferRequest(model, [inp], request_outputs=requested)

    async def call(client):
        return await client.infer(srv.url, request, model_name=model)

    with pytest.raises(httpx.HTTPStatusError) as info:
        kserve(call)
    refusal = assert_refusal(info.value.response, status, code)
    assert refusal["error"] in str(info.value)


# === model repository =====================================================================================


def test_repository_index_post_and_get(srv, tc):
    posted = tc.get_model_repository_index()  # POST, empty body, no Content-Type
    got = requests.get(f"{srv.url}/v2/repository/index", timeout=TIMEOUT)
    assert got.status_code == 200
    for entries in (posted, got.json()):
        assert sorted(e["name"] for e in entries) == sorted(MODELS), entries
        for entry in entries:
            assert set(entry) >= {"name", "version", "state", "reason"}, entry
            assert entry["version"] == "1" and entry["state"] == "READY", entry
    for ready in (True, False):
        filtered = requests.post(f"{srv.url}/v2/repository/index", json={"ready": ready}, timeout=TIMEOUT)
        assert filtered.status_code == 200 and sorted(e["name"] for e in filtered.json()) == sorted(MODELS)


def test_repository_refusals(srv, tc):
    for call in (lambda: tc.load_model("no-such-model"), lambda: tc.unload_model("no-such-model")):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "404"
    for action in ("load", "unload"):
        response = requests.post(f"{srv.url}/v2/repository/models/no-such-model/{action}", json={}, timeout=TIMEOUT)
        assert_refusal(response, 404, "model_not_found")
    # Configuration and file overrides: Triton's, not this server's.
    with pytest.raises(InferenceServerException) as info:
        tc.load_model(MLP, config=json.dumps({"max_batch_size": 8}))
    assert info.value.status() == "400"
    with pytest.raises(InferenceServerException) as info:
        tc.load_model(MLP, config="{}", files={"file:1/weights.npz": b"not weights"})
    assert info.value.status() == "400"
    for parameters in ({"config": "{}"}, {"file:1/weights.npz": "AAAA"}):
        response = requests.post(
            f"{srv.url}/v2/repository/models/{MLP}/load", json={"parameters": parameters}, timeout=TIMEOUT
        )
        assert_refusal(response, 400, "unsupported_parameter")
    assert tc.is_model_ready(MLP)  # refused overrides changed nothing


def test_load_and_unload_under_traffic(srv, tc):
    """Model B is unloaded and loaded again three times while steady traffic goes to model A."""
    a, b = LOGREG, MLP
    xa, xb = sample_rows(a, 2, seed=7), sample_rows(b, 3, seed=8)
    expected_a = expected_outputs(a, xa).astype(np.float32)
    expected_b = expected_outputs(b, xb).astype(np.float32)
    body_a, body_b = json_request(xa), json_request(xb)
    stop = threading.Event()
    failures: list = []
    answered = [0]

    def traffic():
        connections = list(connections_per_worker(srv).values())
        started = time.monotonic()
        try:
            while not stop.is_set() and answered[0] < 5000 and time.monotonic() - started < 120:
                conn = connections[answered[0] % len(connections)]
                try:
                    status, headers, data = conn.post_json(f"/v2/models/{a}/infer", body_a)
                    if status != 200:
                        failures.append((status, data[:300]))
                    else:
                        np.testing.assert_allclose(decode_response(headers, data)[1]["output"], expected_a,
                                                   rtol=2e-5, atol=2e-4)  # fmt: skip
                except Exception as exc:  # every failure is reported by the test
                    failures.append(repr(exc))
                answered[0] += 1
        finally:
            for conn in connections:
                conn.close()

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        wait_for(lambda: answered[0] >= 10, 30, 0.05, "traffic to model A")
        for cycle in range(3):
            before = answered[0]
            tc.unload_model(b)
            entries = index_entries(tc.get_model_repository_index(), b)
            assert entries and all(e["state"] == "UNAVAILABLE" for e in entries), entries
            assert all("unloaded" in e["reason"].lower() for e in entries), entries
            assert b not in {e["name"] for e in requests.post(
                f"{srv.url}/v2/repository/index", json={"ready": True}, timeout=TIMEOUT).json()}  # fmt: skip
            assert not tc.is_model_ready(b)
            assert kserve(lambda client: client.is_model_ready(srv.url, b)) is False
            for pid, conn in connections_per_worker(srv).items():  # every worker has heard of it
                status, _, data = conn.request("GET", f"/v2/models/{b}")
                assert status == 404 and json.loads(data)["code"] == "model_not_found", (cycle, pid, data)
                status, _, data = conn.post_json(f"/v2/models/{b}/infer", body_b)
                assert status == 404 and json.loads(data)["code"] == "model_not_found", (cycle, pid, data)
                conn.close()
            tc.load_model(b)
            entries = index_entries(tc.get_model_repository_index(), b)
            assert entries and all(e["state"] == "READY" for e in entries), entries
            assert tc.is_model_ready(b)
            assert kserve(lambda client: client.is_model_ready(srv.url, b)) is True
            for pid, conn in connections_per_worker(srv).items():
                status, headers, data = conn.post_json(f"/v2/models/{b}/infer", body_b)
                assert status == 200, (cycle, pid, data[:300])
                assert_close(decode_response(headers, data)[1]["output"], expected_b)
                conn.close()
            wait_for(lambda before=before: answered[0] > before + 3, 30, 0.05, "traffic during the cycle")
    finally:
        stop.set()
        thread.join(timeout=60)
        if not tc.is_model_ready(b):
            tc.load_model(b)
    assert not thread.is_alive()
    assert failures == [], failures[:5]
    assert answered[0] >= 20


# === statistics and metrics ===============================================================================


def test_statistics_sum_over_both_workers(srv, tc):
    name = LINREG
    n = n_features(name)
    before = model_stats(srv.url, name)
    started_ms = time.time() * 1000
    successes = rows = fails = 0
    connections = connections_per_worker(srv)
    assert len(connections) == 2
    for pid, conn in connections.items():
        for count in (1, 2, 3, 5):
            x = sample_rows(name, count, seed=count)
            status, _, data = conn.post_json(f"/v2/models/{name}/infer", json_request(x))
            assert status == 200, (pid, data[:300])
            successes, rows = successes + 1, rows + count
        body, length = binary_request(sample_rows(name, 4, seed=9))
        status, _, data = conn.request(
            "POST", f"/v2/models/{name}/infer", body,
            {HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"},
        )  # fmt: skip
        assert status == 200, (pid, data[:300])
        successes, rows = successes + 1, rows + 4
        for bad in (json_request(np.zeros(n, np.float32)), json_request(np.zeros((1, n), np.int32), datatype="INT32")):
            status, _, _ = conn.post_json(f"/v2/models/{name}/infer", bad)
            assert status == 400
            fails += 1
        conn.close()
    after = model_stats(srv.url, name)
    assert after["version"] == "1"
    inference = after["inference_stats"]
    assert set(inference) >= {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output"}
    assert after["batch_stats"] == []
    delta = {k: inference[k]["count"] - before["inference_stats"][k]["count"] for k in ("success", "fail")}
    assert delta == {"success": successes, "fail": fails}, (delta, successes, fails)
    assert after["execution_count"] - before["execution_count"] == successes
    assert after["inference_count"] - before["inference_count"] == rows
    assert inference["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert inference["fail"]["ns"] > before["inference_stats"]["fail"]["ns"]
    for phase in inference.values():
        assert phase["count"] >= 0 and phase["ns"] >= 0
    compute = sum(inference[p]["ns"] for p in ("compute_input", "compute_infer", "compute_output"))
    assert 0 < compute <= inference["success"]["ns"] + inference["fail"]["ns"]
    assert started_ms - 1000 <= after["last_inference"] <= time.time() * 1000 + 1000
    # The same numbers through tritonclient, for the model, its version, and all models.
    by_client = tc.get_inference_statistics(name)["model_stats"]
    assert [s["inference_count"] for s in by_client] == [after["inference_count"]]
    versioned = tc.get_inference_statistics(name, "1")["model_stats"]
    assert [s["inference_stats"]["success"]["count"] for s in versioned] == [inference["success"]["count"]]
    every = tc.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} == set(MODELS)
    for s in every:
        assert set(s) >= {"name", "version", "last_inference", "inference_count", "execution_count",
                          "inference_stats", "batch_stats"}, s  # fmt: skip


def _metric(text: str, name: str) -> list[tuple[dict, float]]:
    return [(labels, value) for sample, labels, value in parse_metrics(text) if sample == name]


def _inflight(url: str) -> float:
    response = requests.get(url + "/metrics", timeout=TIMEOUT)
    assert response.status_code == 200
    samples = _metric(response.text, "heserve_inflight_requests")
    assert samples, "no heserve_inflight_requests in /metrics"
    return sum(value for _, value in samples)


def test_metrics_inflight_gauge_and_process_series(srv):
    idle = _inflight(srv.url)
    assert 0 <= idle <= 1, idle  # the scrape itself, at most
    # A slow request: headers sent, the body stalls (the server is reading it), from another connection.
    parts = urlsplit(srv.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            f"POST /v2/models/{MLP}/infer HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            "Content-Length: 4000\r\n\r\n".encode()
            + b'{"inputs": ['
        )
        during = wait_for(lambda: (v := _inflight(srv.url)) >= idle + 1 and v, 10, 0.1, "an in-flight request")
        assert during >= 1
    wait_for(lambda: _inflight(srv.url) <= idle, 30, 0.2, "the in-flight gauge back to idle")

    text = requests.get(srv.url + "/metrics", timeout=TIMEOUT).text
    master, workers = srv.process.pid, srv.worker_pids()
    for metric in ("heserve_process_cpu_seconds_total", "heserve_process_resident_memory_bytes"):
        series = _metric(text, metric)
        pids = [int(labels["pid"]) for labels, _ in series]
        assert sorted(pids) == sorted({master} | workers), (metric, series, master, workers)
        for labels, value in series:
            assert labels["role"] == ("master" if int(labels["pid"]) == master else "worker"), labels
            assert value > 0, (metric, labels, value)
    memory = {int(labels["pid"]): value for labels, value in _metric(text, "heserve_process_resident_memory_bytes")}
    assert all(value > 1 << 20 for value in memory.values()), memory


def test_every_log_line_is_json(srv):
    for line in log_lines(srv):
        assert isinstance(json.loads(line), dict), line


# === a corrupt artifact beside good ones ====================================================================


@pytest.fixture(scope="module")
def corrupt_srv(tmp_path_factory) -> ServerProcess:
    tmp = tmp_path_factory.mktemp("oip-corrupt")
    models = small_models_dir(tmp / "models", (LOGREG, LINREG, MLP))
    corrupt_weights(models / MLP)
    copy_model(LINREG, models / "broken-manifest", as_name="broken-manifest")
    truncate_manifest(models / "broken-manifest")
    proc = start_server(tmp / "server", workers=2, models_dir=models)
    proc.models_dir = models
    yield proc
    proc.stop()


def test_corrupt_artifacts_do_not_stop_the_others(corrupt_srv):
    srv = corrupt_srv
    tc = triton_client(srv)
    try:
        assert tc.is_server_ready()
        for name in (LOGREG, LINREG):
            assert tc.is_model_ready(name)
            x = sample_rows(name, 3, seed=10)
            result = tc.infer(name, [_triton_input(x, "input", "FP32", True)])
            assert_close(result.as_numpy("output"), expected_outputs(name, x).astype(np.float32))
        entries = {e["name"]: e for e in tc.get_model_repository_index()}
        assert entries[LOGREG]["state"] == entries[LINREG]["state"] == "READY"
        for bad, why in ((MLP, "checksum"), ("broken-manifest", "manifest")):
            assert entries[bad]["state"] == "UNAVAILABLE", entries[bad]
            assert why in entries[bad]["reason"].lower(), entries[bad]
            assert not tc.is_model_ready(bad)
            assert requests.get(f"{srv.url}/v2/models/{bad}/ready", timeout=TIMEOUT).status_code != 200
            refused = post_json(srv.url, f"/v2/models/{bad}/infer", json_request(sample_rows(LINREG, 1)))
            assert refused.status_code in (404, 503), refused.text
            assert_refusal(refused, refused.status_code, None)
        records = json_log_records(srv)  # every line is JSON
        for bad in (MLP, "broken-manifest"):
            assert any(bad in json.dumps(r) for r in records if r.get("event") != "request"), bad
        # Mended on disk, loaded without a restart.
        shutil.copy2(SHIPPED / MLP / "weights.npz", srv.models_dir / MLP / "weights.npz")
        tc.load_model(MLP)
        assert tc.is_model_ready(MLP)
        x = sample_rows(MLP, 2, seed=11)
        for conn in connections_per_worker(srv).values():
            status, headers, data = conn.post_json(f"/v2/models/{MLP}/infer", json_request(x))
            assert status == 200, data[:300]
            assert_close(decode_response(headers, data)[1]["output"], expected_outputs(MLP, x).astype(np.float32))
            conn.close()
        assert {e["name"]: e["state"] for e in tc.get_model_repository_index()}[MLP] == "READY"
        # The start-up line (written before the mend) told the state of each model.
        startup = [r for r in records if r.get("event") == "startup"]
        assert len(startup) == 1
        states = {m["name"]: m.get("state") for m in startup[0]["models"]}
        assert states == {LOGREG: "READY", LINREG: "READY", MLP: "UNAVAILABLE", "broken-manifest": "UNAVAILABLE"}, (
            startup[0]["models"]
        )
    finally:
        tc.close()


# === versions ===============================================================================================

OFFSET = 100.0  # version v answers the shipped model's outputs + (v - 1) * OFFSET


def versioned_models_dir(dest: Path, versions=(1, 2, 3), policy: dict | None = None) -> Path:
    for v in versions:
        copy_model(LINREG, dest / "m" / str(v), as_name="m", version=str(v), bias_offset=(v - 1) * OFFSET,
                   description=f"m version {v}")  # fmt: skip
    if policy is not None:
        (dest / "m" / "config.json").write_text(json.dumps({"version_policy": policy}))
    copy_model(LOGREG, dest / LOGREG)  # flat artifacts beside it: the manifest's version...
    copy_model(LOGREG, dest / "flat5", as_name="flat5", version="5")
    unversioned = copy_model(LOGREG, dest / "flat-default", as_name="flat-default") / "manifest.json"
    manifest = json.loads(unversioned.read_text())
    del manifest["version"]  # ...or "1" when it names none
    unversioned.write_text(json.dumps(manifest))
    return dest


POLICIES = {
    "default": (None, ["3"]),
    "all": ({"all": {}}, ["1", "2", "3"]),
    "latest-2": ({"latest": {"num_versions": 2}}, ["2", "3"]),
    "specific-1-3": ({"specific": {"versions": [1, 3]}}, ["1", "3"]),
}


@pytest.mark.parametrize("policy_id", list(POLICIES))
def test_version_policies(tmp_path, policy_id):
    policy, served = POLICIES[policy_id]
    srv = start_server(tmp_path / "server", workers=2, models_dir=versioned_models_dir(tmp_path / "models",
                                                                                       policy=policy))  # fmt: skip
    tc = triton_client(srv)
    try:
        x = sample_rows(LINREG, 3, seed=12)
        metadata = tc.get_model_metadata("m")
        assert sorted(metadata["versions"], key=int) == served
        latest = served[-1]
        # No version: the latest served one answers, and says so.
        result = tc.infer("m", [_triton_input(x, "input", "FP32", False)],
                          outputs=[triton.InferRequestedOutput("output", binary_data=False)])  # fmt: skip
        assert result.get_response()["model_version"] == latest
        assert_close(result.as_numpy("output"), expected_outputs(LINREG, x, (int(latest) - 1) * OFFSET).astype("f4"))
        for v in ("1", "2", "3"):
            path = f"/v2/models/m/versions/{v}"
            if v in served:
                assert tc.is_model_ready("m", v)
                assert requests.get(srv.url + path, timeout=TIMEOUT).status_code == 200
                response = post_json(srv.url, path + "/infer", json_request(x))
                assert response.status_code == 200, response.text
                header, outs, _ = decode_response(response.headers, response.content)
                assert header["model_name"] == "m" and header["model_version"] == v
                assert_close(outs["output"], expected_outputs(LINREG, x, (int(v) - 1) * OFFSET).astype("f4"))
                result = tc.infer("m", [_triton_input(x, "input", "FP32", True)], model_version=v)
                assert result.get_response()["model_version"] == v
            else:
                assert not tc.is_model_ready("m", v)
                assert_refusal(requests.get(srv.url + path, timeout=TIMEOUT), 404, "model_not_found")
                assert_refusal(post_json(srv.url, path + "/infer", json_request(x)), 404, "model_not_found")
        entries = index_entries(tc.get_model_repository_index(), "m")
        ready = sorted((e["version"] for e in entries if e["state"] == "READY"), key=int)
        assert ready == served, entries
        config = tc.get_model_config("m")
        assert config["version_policy"] == (policy or {"latest": {"num_versions": 1}}), config
        # Flat artifacts: one version, the manifest's ("1" when it names none).
        for flat, version in ((LOGREG, "1"), ("flat5", "5"), ("flat-default", "1")):
            assert tc.get_model_metadata(flat)["versions"] == [version]
            result = tc.infer(flat, [_triton_input(sample_rows(LOGREG, 1), "input", "FP32", True)])
            assert result.get_response()["model_version"] == version
    finally:
        tc.close()
        srv.stop()


# === API keys: the operator role ===========================================================================


def test_repository_control_needs_the_operator_role(tmp_path):
    keys_file = tmp_path / "api-keys"
    keys_file.write_text("ops2 s3cret operator\nbob k3\n")
    srv = start_server(
        tmp_path / "server", workers=2, models_dir=small_models_dir(tmp_path / "models", (LOGREG, LINREG)),
        api_keys="alice:k1,ops:k2:operator", api_keys_file=str(keys_file),
    )  # fmt: skip
    tc = triton_client(srv)

    def bearer(key: str) -> dict:
        return {"Authorization": f"Bearer {key}"}

    try:
        for tenant_key in ("k1", "k3"):
            for call in (tc.unload_model, tc.load_model):
                with pytest.raises(InferenceServerException) as info:
                    call(LINREG, headers=bearer(tenant_key))
                assert info.value.status() == "403", info.value
            for action in ("load", "unload"):
                response = requests.post(f"{srv.url}/v2/repository/models/{LINREG}/{action}", json={},
                                         headers=bearer(tenant_key), timeout=TIMEOUT)  # fmt: skip
                assert_refusal(response, 403, "operator_only")
            # An ordinary tenant still infers.
            result = tc.infer(LINREG, [_triton_input(sample_rows(LINREG, 1), "input", "FP32", True)],
                              headers=bearer(tenant_key))  # fmt: skip
            assert result.as_numpy("output").shape == (1, 1)
        no_key = requests.post(f"{srv.url}/v2/repository/models/{LINREG}/unload", json={}, timeout=TIMEOUT)
        assert_refusal(no_key, 401, None)
        for operator_key in ("k2", "s3cret"):
            tc.unload_model(LINREG, headers=bearer(operator_key))
            entries = index_entries(tc.get_model_repository_index(headers=bearer(operator_key)), LINREG)
            assert entries and all(e["state"] == "UNAVAILABLE" for e in entries), entries
            assert not tc.is_model_ready(LINREG, headers=bearer(operator_key))
            tc.load_model(LINREG, headers=bearer(operator_key))
            assert tc.is_model_ready(LINREG, headers=bearer(operator_key))
    finally:
        tc.close()
        srv.stop()


# === SIGHUP rescans the models directory ======================================================================


def test_sighup_serves_a_new_version(tmp_path):
    models = versioned_models_dir(tmp_path / "models", versions=(1, 2), policy={"all": {}})
    srv = start_server(tmp_path / "server", workers=2, models_dir=models)
    try:
        assert requests.get(f"{srv.url}/v2/models/m", timeout=TIMEOUT).json()["versions"] == ["1", "2"]
        copy_model(LINREG, models / "m" / "3", as_name="m", version="3", bias_offset=2 * OFFSET)
        os.kill(srv.process.pid, signal.SIGHUP)

        def every_worker_sees_three():
            if len(srv.worker_pids()) != 2:
                return False
            seen = []
            try:
                for conn in connections_per_worker(srv).values():
                    status, _, data = conn.request("GET", "/v2/models/m")
                    seen.append(status == 200 and sorted(json.loads(data)["versions"], key=int) == ["1", "2", "3"])
                    conn.close()
            except (AssertionError, OSError, http.client.HTTPException):  # old workers leaving, even mid-request
                return False
            return all(seen)

        wait_for(every_worker_sees_three, 60, 0.5, "version 3 on every worker after SIGHUP")
        x = sample_rows(LINREG, 2, seed=13)
        response = post_json(srv.url, "/v2/models/m/infer", json_request(x))
        header, outs, _ = decode_response(response.headers, response.content)
        assert header["model_version"] == "3"
        assert_close(outs["output"], expected_outputs(LINREG, x, 2 * OFFSET).astype(np.float32))
        assert srv.process.poll() is None
        for line in log_lines(srv):
            assert isinstance(json.loads(line), dict), line
    finally:
        srv.stop()
