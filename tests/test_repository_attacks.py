"""The model repository, its control routes and the strict V2 validation, reviewed as an attacker would.

Threat model: a client holding an ordinary (tenant) API key, or any remote client of an open server,
sending any bytes. Two applications on one run directory stand for two gunicorn workers (as in
test_repository.py).

Tests marked "PROBLEM" fail on the code as reviewed: each says what is wrong and what the fix
should be. The others pin properties that hold and must keep holding.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from heserve.models import artifact
from heserve.server.service.config import ServerConfig
from heserve.server.service.registry import READY, UNAVAILABLE, load_registry
from heserve.server.web.app import create_app
from heserve.server.web.extensions import MAX_CONTROL_BODY

from .test_repository import LINEAR, OTHER, copy_model, plain_request

NO_QUOTAS = {"quota_requests_per_second": 0.0, "quota_request_burst": 0, "quota_rows_per_hour": 0}
TENANT = {"Authorization": "Bearer k-alice"}
OPERATOR = {"Authorization": "Bearer k-ops"}
KEYS = "alice:k-alice,bob:k-bob,ops:k-ops:operator"
REMOTE = {"REMOTE_ADDR": "203.0.113.9"}


@pytest.fixture
def repo(tmp_path) -> Path:
    """m/1 (the linear model, 10 features) and a flat OTHER (30 features)."""
    models = tmp_path / "models"
    copy_model(LINEAR, models / "m" / "1", "first", name="m")
    copy_model(OTHER, models / OTHER)
    return models


@pytest.fixture
def run(tmp_path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


def make_app(models: Path, tmp_path: Path, run_dir: Path | None = None, **settings):
    config = ServerConfig.from_env(
        models_dir=models, keys_dir=tmp_path / "keys", run_dir=run_dir, **{**NO_QUOTAS, **settings}
    )
    return create_app(config).test_client()


def state_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "repository.json").read_text())


def serves(client, name: str, features: int = 10) -> bool:
    answer = client.post(f"/v2/models/{name}/infer", json=plain_request(features))
    assert answer.status_code in (200, 404), answer.json
    return answer.status_code == 200


def deep_json(levels: int = 100_000) -> str:
    return "[" * levels + "]" * levels


# ------------------------------------------------------------------------------------------------
# 1. Privilege
# ------------------------------------------------------------------------------------------------

ODD_NAMES = [
    "m",
    OTHER,
    "..",
    "%2e%2e",
    "...",
    "a%2Fb",
    "..%2F..%2Fetc",
    "m%00",
    "m%0A",
    "%00",
    "x" * 300,
    "-m",
    ".hidden",
]


@pytest.mark.parametrize("action", ["load", "unload"])
@pytest.mark.parametrize("name", ODD_NAMES)
def test_a_tenant_cannot_control_the_repository_whatever_the_name(repo, tmp_path, run, action, name):
    """HOLDS: 403 (or a routing 404 for a name with a slash) for a tenant key and for a remote client of an
    open server, before the body is read; no state file, no registry entry, nothing unloaded."""
    for client, headers, environ in (
        (make_app(repo, tmp_path, run, api_keys=KEYS), TENANT, {}),
        (make_app(repo, tmp_path, run), {}, REMOTE),
    ):
        entries = dict(client.application.extensions["heserve"].registry.entries)
        answer = client.post(f"/v2/repository/models/{name}/{action}", data="{", headers=headers, environ_base=environ)
        assert answer.status_code in (403, 404), (answer.status_code, answer.json)
        if answer.status_code == 404:
            assert answer.json["code"] == "not_found" and "/" in name.replace("%2F", "/")
        else:
            assert answer.json["code"] == "operator_only"
        assert not (run / "repository.json").exists()
        assert client.application.extensions["heserve"].registry.entries == entries
    assert serves(make_app(repo, tmp_path, run), "m")


def test_an_operator_load_never_leaves_the_models_directory(repo, tmp_path, run, monkeypatch):
    """HOLDS: names that point outside the models directory (traversal, encoded slashes, NUL, a trailing
    newline, over-long names) are 404 without a single artifact read outside it; a valid model placed
    next to the models directory is never reached."""
    copy_model(LINEAR, tmp_path / "outside" / "evil", name="evil")
    copy_model(LINEAR, tmp_path / "evil", name="evil")
    read: list[Path] = []
    real_load = artifact.load

    def recording_load(directory: Path):
        read.append(Path(directory))
        return real_load(directory)

    monkeypatch.setattr(artifact, "load", recording_load)
    client = make_app(repo, tmp_path, run)
    before = set(client.application.extensions["heserve"].registry.entries)
    names = [
        "..",
        "...",
        "%2e%2e",
        "..%2Foutside%2Fevil",
        "..%2Fevil",
        "%2e%2e%2Fevil",
        "evil",
        "m%00",
        "m%0A",
        "m%20",
        "x" * 129,
        "x" * 5000,
    ]
    for name in names:
        answer = client.post(f"/v2/repository/models/{name}/load", data="")
        assert answer.status_code == 404, (name, answer.json)
    assert client.get("/v2/models/evil").status_code == 404
    assert set(client.application.extensions["heserve"].registry.entries) == before
    assert not (run / "repository.json").exists()
    models = repo.resolve()
    assert all(models in p.resolve().parents for p in read), read


# ------------------------------------------------------------------------------------------------
# PROBLEM (high): behind the shipped reverse proxy every client of an open server is "loopback"
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "proxy_header",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
    ],
)
def test_a_proxied_remote_client_of_an_open_server_is_not_an_operator(repo, tmp_path, run, proxy_header):
    """Found in review (high), fixed. deploy/nginx/heserve.conf proxies every path, /v2/repository/ included, to
    127.0.0.1:800x and sets X-Forwarded-For. On a server with no API keys, require_operator
    (server/web/extensions.py) sees REMOTE_ADDR 127.0.0.1 and lets any remote client unload (or
    reload) every model: a one-request denial of service for all tenants. The README says an open
    server takes repository control "from loopback clients only".
    Fix: in require_operator, on an open server refuse (403 operator_only) a request that carries any
    proxy header (X-Forwarded-For, Forwarded, X-Real-IP) — it came through a proxy, not from this
    machine — and have deploy/nginx/heserve.conf answer 403 for `location /v2/repository/`."""
    client = make_app(repo, tmp_path, run)
    loopback = {"REMOTE_ADDR": "127.0.0.1"}
    answer = client.post("/v2/repository/models/m/unload", headers=proxy_header, environ_base=loopback)
    assert answer.status_code == 403, answer.json
    assert serves(client, "m")
    # A client on this machine itself still controls the repository.
    assert client.post("/v2/repository/models/m/unload", environ_base=loopback).status_code == 200


# ------------------------------------------------------------------------------------------------
# 2. Resource exhaustion
# ------------------------------------------------------------------------------------------------


def metric_labels(client, label: str) -> set[str]:
    registry = client.application.extensions["heserve.metrics"].registry
    return {s.labels[label] for family in registry.collect() for s in family.samples if label in s.labels}


def test_unknown_names_and_versions_grow_nothing(repo, tmp_path, run):
    """HOLDS: 100 distinct unknown model names and odd versions on every per-model route leave the
    Prometheus model/version labels to the served models, create no registry entry and no state file,
    and are each a 404/503, never a 500."""
    client = make_app(repo, tmp_path, run, api_keys=KEYS)
    client.post("/v2/models/m/infer", json=plain_request(10), headers=TENANT)
    registry = client.application.extensions["heserve"].registry
    entries = set(registry.entries)
    paths = []
    for i in range(100):
        name = f"ghost-{i}"
        paths += [f"/v2/models/{name}", f"/v2/models/{name}/ready", f"/v2/models/{name}/config"]
        paths += [f"/v2/models/{name}/stats", f"/v2/models/{name}/versions/{i}/stats"]
    for version in ("0", "-1", "01", "99999999999999999999", "1.0", "%20", "2", "latest"):
        paths += [f"/v2/models/m/versions/{version}/{what}" for what in ("stats", "config", "ready")]
        paths.append(f"/v2/models/m/versions/{version}")
    for path in paths:
        answer = client.get(path, headers=TENANT)
        # statistics are for operators: a tenant is refused before the name is looked at
        assert answer.status_code in ((403,) if path.endswith("/stats") else (404, 503)), (path, answer.status_code)
        if path.endswith("/stats"):
            assert client.get(path, headers=OPERATOR).status_code in (404, 503), path
    for i in range(30):
        answer = client.post(f"/v2/models/ghost-{i}/infer", json=plain_request(10), headers=TENANT)
        assert answer.status_code == 404
        answer = client.post(f"/v2/models/m/versions/{i + 7}/infer", json=plain_request(10), headers=TENANT)
        assert answer.status_code == 404
    # Encrypted-looking requests with odd layouts to a served model: refused, and no layout label.
    for layout in ("x" * 50, "batch2", 7):
        body = plain_request(10, parameters={"key_id": "k" * 32, "layout": layout})
        assert client.post("/v2/models/m/infer", json=body, headers=TENANT).status_code in (400, 404)
    assert metric_labels(client, "model") <= {"m"}
    assert metric_labels(client, "version") <= {"2", "1"}
    assert metric_labels(client, "layout") <= {"plain", "single", "batch"}
    assert set(registry.entries) == entries
    assert not (run / "repository.json").exists()
    assert client.get("/v2/repository/index", headers=OPERATOR).status_code == 200


def test_http_methods_are_not_an_unbounded_metrics_label(repo, tmp_path):
    """Found in review (medium; older than this change: Metrics.observe, commit 5d06421), fixed. The `method` label of
    heserve_requests_total is the request's method as sent. gunicorn 27 accepts any upper-case token
    of 3..20 characters as a method, and the audit hook counts the request (405, or 401 before the
    key is even checked), so any client — no API key needed — creates one new time series per
    method: unbounded memory in every worker, one more row per scrape and per statistics request
    (model_statistics walks every sample), a growing multiprocess .db file. The README says "No
    label carries anything client-specific".
    Fix: server/web/metrics.py Metrics.observe: label the method from a fixed set
    (GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH) and "other" for anything else."""
    client = make_app(repo, tmp_path, api_keys=KEYS)
    for i in range(40):
        method = "X" + "".join("ABCDEFGHIJ"[int(d)] for d in f"{i:03d}")
        assert client.open("/v2/models", method=method).status_code in (401, 405)
        assert client.open("/v2/health/live", method=method).status_code == 405
    assert len(metric_labels(client, "method")) <= 8, sorted(metric_labels(client, "method"))


class CountingStream(io.BytesIO):
    """A request body that counts the bytes the server pulls from it."""

    pulled = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.pulled += len(out)
        return out

    def readinto(self, buffer) -> int:
        count = super().readinto(buffer)
        self.pulled += count
        return count

    def readline(self, size: int | None = -1) -> bytes:
        out = super().readline(size)
        self.pulled += len(out)
        return out


def test_a_chunked_repository_body_is_not_read_past_its_limit(repo, tmp_path):
    """Was a problem (low-medium). POST /v2/repository/index (then open to every tenant): control_body
    (server/web/extensions.py) checks Content-Length, but a chunked body declares none (gunicorn
    passes it with wsgi.input_terminated): read_body then buffers the whole body — up to
    HESERVE_MAX_BODY_BYTES, 512 MiB — before the 64 KiB limit is checked. Here 8 MiB are read to
    answer 413. (The same read-then-check pattern exists in the infer and key routes.)
    Fix: set `request.max_content_length = MAX_CONTROL_BODY` (Flask >= 3.1) before read_body(), or read
    at most MAX_CONTROL_BODY + 1 bytes from request.stream, so the read stops at the limit."""
    client = make_app(repo, tmp_path)
    stream = CountingStream(b" " * (8 << 20) + b"{}")
    answer = client.post(
        "/v2/repository/index",
        input_stream=stream,
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert answer.status_code == 413
    assert stream.pulled <= 1 << 20, f"{stream.pulled} bytes read to refuse a {MAX_CONTROL_BODY}-byte limit"


# ------------------------------------------------------------------------------------------------
# 3. No 500s
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status"),
    [
        ("/v2/repository/index", {"ready": "x"}, None, 400),
        ("/v2/repository/index", {"ready": None}, None, 400),
        ("/v2/repository/index", {"ready": 1}, None, 400),
        ("/v2/repository/index", [1, 2], None, 400),
        ("/v2/repository/index", "null", "application/json", 400),
        ("/v2/repository/index", deep_json(30_000), "application/json", 400),
        ("/v2/repository/index", b"\xff\xfe{", "application/json", 400),
        ("/v2/repository/index", "{" + '"a":1,' * 20_000 + '"b":2}', "application/json", 413),
        ("/v2/repository/index", "x", "text/plain", 415),
        ("/v2/repository/index", "a=b", "application/x-www-form-urlencoded", 415),
        ("/v2/repository/models/m/load", {"parameters": [1]}, None, 400),
        ("/v2/repository/models/m/load", {"parameters": "config"}, None, 400),
        ("/v2/repository/models/m/load", {"parameters": None}, None, 400),
        ("/v2/repository/models/m/load", {"parameters": {"file:1/model": "x"}}, None, 400),
        ("/v2/repository/models/m/load", deep_json(30_000), "application/json", 400),
        ("/v2/repository/models/m/unload", {"parameters": 7}, None, 400),
        ("/v2/repository/models/m/unload", {"parameters": {"unload_dependents": True}}, None, 200),
    ],
)
def test_repository_bodies_are_refused_not_crashed(repo, tmp_path, path, body, content_type, status):
    """HOLDS: every odd repository body is a 4xx (or a success), never a 500."""
    client = make_app(repo, tmp_path)
    if content_type is None:
        answer = client.post(path, json=body)
    else:
        answer = client.post(path, data=body, content_type=content_type)
    assert answer.status_code == status, answer.json


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(outputs=1),
        lambda r: r.update(outputs="output"),
        lambda r: r.update(outputs={"name": "output"}),
        lambda r: r.update(outputs=[1]),
        lambda r: r.update(outputs=[None]),
        lambda r: r.update(outputs=[[]]),
        lambda r: r.update(outputs=[{"name": 1}]),
        lambda r: r.update(outputs=[{"name": ""}]),
        lambda r: r.update(outputs=[{"name": "output"}, {"name": "output"}]),
        lambda r: r.update(outputs=[{"name": "output", "parameters": []}]),
        lambda r: r.update(outputs=[{"name": "output", "parameters": {"binary_data": None}}]),
        lambda r: r.update(outputs=[{"name": "output", "parameters": {"binary_data": 1}}]),
        lambda r: r.update(parameters={"binary_data_output": None}),
        lambda r: r.update(parameters={"binary_data_output": "true"}),
        lambda r: r.update(parameters={"binary_data_output": []}),
        lambda r: r.update(parameters=[]),
        lambda r: r.update(parameters="x"),
        lambda r: r.update(parameters={"key_id": 1}),
        lambda r: r.update(parameters={"key_id": None}),
        lambda r: r.update(parameters={"key_id": "x" * 300, "layout": ["single"]}),
        lambda r: r.update(parameters={"key_id": "k" * 32, "layout": {}}),
        lambda r: r.update(id=1),
        lambda r: r.update(id={"a": 1}),
        lambda r: r.update(id=["x"]),
        lambda r: r.update(id=True),
        lambda r: r["inputs"][0].update(datatype="FP16"),
        lambda r: r["inputs"][0].update(datatype="fp32"),
        lambda r: r["inputs"][0].update(datatype="BYTES", data=["a"] * 10),
        lambda r: r["inputs"][0].update(shape=[1, 10.0]),
        lambda r: r["inputs"][0].update(shape=[-1, 10]),
        lambda r: r["inputs"][0].update(shape=[0, 10], data=[]),
        lambda r: r["inputs"][0].update(data=[[0.1] * 5, [0.1] * 5, [0.1]]),
        lambda r: r["inputs"][0].update(data=["0.1"] * 10),
        lambda r: r["inputs"][0].update(data=[None] * 10),
        lambda r: r["inputs"][0].update(parameters=[]),
        lambda r: r["inputs"][0].update(parameters={"binary_data_size": 40}),
        lambda r: r["inputs"].append({"name": "input", "datatype": "FP32", "shape": [1, 10], "data": [0] * 10}),
        lambda r: r.update(inputs=[]),
        lambda r: r.update(inputs={}),
    ],
)
def test_odd_inference_fields_are_a_400(repo, tmp_path, change):
    """HOLDS: each odd field of an inference request is a 400 with a code, never a 500."""
    client = make_app(repo, tmp_path)
    body = plain_request(10)
    change(body)
    answer = client.post("/v2/models/m/infer", json=body)
    assert answer.status_code == 400, answer.json
    assert answer.json["code"] != "internal"


def test_json_booleans_are_not_fp32_values(repo, tmp_path):
    """Found in review (low), fixed. A plaintext FP32 (or FP64) input whose JSON data are true/false is accepted and
    evaluated as 1.0/0.0: v2._tensor_from_json_data takes {int, float, bool} for every numeric
    datatype. Triton refuses a JSON boolean for a floating-point tensor, and the README says a value
    is "never guessed at". Fix: in protocol/v2.py _tensor_from_json_data accept bool only for the BOOL
    datatype (and only bools there); numbers otherwise -> 400 bad_data."""
    client = make_app(repo, tmp_path)
    for datatype in ("FP32", "FP64"):
        body = plain_request(10)
        body["inputs"][0].update(datatype=datatype, data=[True, False] * 5)
        answer = client.post("/v2/models/m/infer", json=body)
        assert answer.status_code == 400, (datatype, answer.json)


def binary_request(datatype: str, values: np.ndarray, size: int | None = None) -> tuple[bytes, int]:
    raw = values.astype({"FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}[datatype]).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": datatype,
                    "shape": [1, 10],
                    "parameters": {"binary_data_size": len(raw) if size is None else size},
                }
            ]
        }
    ).encode()
    return header + raw, len(header)


def test_binary_fp64_and_fp16_inputs_are_checked(repo, tmp_path):
    """HOLDS: FP64 in binary with the right size answers as FP32 does; the wrong size is refused
    (bad_binary_framing); FP16 is refused (bad_datatype)."""
    client = make_app(repo, tmp_path)
    values = np.full(10, 0.1)
    expected = client.post("/v2/models/m/infer", json=plain_request(10)).json["outputs"]

    def post(body: bytes, length: int):
        headers = {"Inference-Header-Content-Length": str(length)}
        return client.post("/v2/models/m/infer", data=body, headers=headers, content_type="application/octet-stream")

    ok = post(*binary_request("FP64", values))
    assert ok.status_code == 200 and ok.json["outputs"] == expected
    body, length = binary_request("FP64", values)
    for truncated in (body[:-8], body + b"\0" * 8, body[:-1]):
        answer = post(truncated, length)
        assert answer.status_code == 400 and answer.json["code"] == "bad_binary_framing"
    fp16 = post(*binary_request("FP16", values))
    assert fp16.status_code == 400 and fp16.json["code"] == "bad_datatype"


def test_odd_entries_in_the_models_directory_do_not_stop_the_rest(repo, tmp_path):
    """HOLDS: a plain file, a dangling symlink, a symlink loop, a version folder that is a symlink loop,
    an empty folder and a folder of non-numbered versions are not served and break nothing."""
    (repo / "a-file").write_text("x")
    os.symlink("nowhere", repo / "dangling")
    os.symlink("selfloop", repo / "selfloop")
    (repo / "loop").mkdir()
    os.symlink("1", repo / "loop" / "1")
    (repo / "empty").mkdir()
    copy_model(LINEAR, repo / "named" / "v1", name="named")
    copy_model(LINEAR, repo / "named" / "0", name="named")
    copy_model(LINEAR, repo / "m" / "0", name="m")
    copy_model(LINEAR, repo / "m" / "1000000000", name="m")  # ten digits: not a version folder
    registry = load_registry(repo)
    assert registry.names() == [OTHER, "m"]
    assert registry.models["m"].version == "1"
    client = make_app(repo, tmp_path)
    for name in ("a-file", "dangling", "selfloop", "loop", "empty", "named"):
        assert client.get(f"/v2/models/{name}/ready").status_code == 404
        assert client.post(f"/v2/repository/models/{name}/load").status_code in (400, 404)
    assert client.get("/v2/repository/index").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("where", ["config.json", "manifest.json (flat)", "manifest.json (version folder)"])
def test_a_deeply_nested_json_file_is_one_unavailable_model(repo, tmp_path, where):
    """Found in review (medium), fixed. registry.read_policy and registry.artifact_versions catch (OSError, ValueError)
    and artifact.load catches (OSError, JSONDecodeError), but json.loads of a deeply nested document
    raises RecursionError, which none of them catch. So one model whose config.json or manifest.json
    nests deeply (an artifact from a third party, a corrupted file) makes load_registry raise: the
    server does not start at all (heserve-server's start-up record fails), a SIGHUP-reloaded worker
    dies, and an operator's load answers 500 — against the README's "Every other model serves".
    Fix: catch RecursionError next to ValueError in read_policy, artifact_versions and
    artifact.load (turning it into ArtifactError), and in ModelRegistry.load treat any exception from
    one model as that model's failure."""
    if where == "config.json":
        copy_model(LINEAR, repo / "deep" / "1", name="deep")
        (repo / "deep" / "config.json").write_text(deep_json())
    elif where.endswith("(flat)"):
        copy_model(LINEAR, repo / "deep", name="deep")
        (repo / "deep" / "manifest.json").write_text(deep_json())
    else:
        copy_model(LINEAR, repo / "deep" / "1", name="deep")
        (repo / "deep" / "1" / "manifest.json").write_text(deep_json())
    registry = load_registry(repo)
    rows = {r["name"]: r for r in registry.index()}
    assert rows["deep"]["state"] == UNAVAILABLE
    assert rows["m"]["state"] == READY and rows[OTHER]["state"] == READY


@pytest.mark.parametrize("how", ["manifest version", "version folder"])
def test_a_version_with_a_trailing_newline_is_not_a_crash(repo, tmp_path, how):
    """Found in review (medium), fixed. _VERSION_DIR (registry.py) is matched with `$`, which also matches before a
    trailing newline: a manifest declaring "version": "1\\n" (or a folder named "2\\n") passes as a
    version. load() then selects int("1\\n") == 1, looks up versions["1"] and raises KeyError, which
    is not an ArtifactError: load_registry raises and the whole server fails to start (and a lazy
    refresh answers a tenant's request with 500).
    Fix: use _VERSION_DIR.fullmatch (and _MODEL_NAME.fullmatch, which has the same flaw: "m\\n" passes
    the name check today), or anchor with \\Z."""
    if how == "manifest version":
        target = copy_model(LINEAR, repo / "nl", name="nl")
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["version"] = "1\n"
        (target / "manifest.json").write_text(json.dumps(manifest))
    else:
        copy_model(LINEAR, repo / "nl" / "2\n", name="nl")
    registry = load_registry(repo)
    assert registry.models["m"].version == "1"
    assert {r["name"] for r in registry.index()} >= {"m", OTHER}


def test_a_worker_survives_a_loaded_model_whose_folder_disappeared(repo, tmp_path, run):
    """Found in review (low), fixed. A model loaded through worker A, then removed from disk before worker B refreshed
    it: B's next repository index (also GET /v2/models/stats and POST /v2/keys, which call
    refresh_all) answers 500, because Repository._refresh lets the ModelNotFound of registry.load
    escape. Fix: in Repository._refresh catch ModelNotFound (keep or mark the entry unavailable with
    the reason) so a listing never fails for one model."""
    first, second = make_app(repo, tmp_path, run), make_app(repo, tmp_path, run)
    copy_model(LINEAR, repo / "late", name="late")
    assert first.post("/v2/repository/models/late/load").status_code == 200
    assert serves(second, OTHER, 30)  # B has seen the load, and refreshes lazily
    shutil.rmtree(repo / "late")
    assert second.get("/v2/repository/index").status_code == 200
    assert second.get("/v2/models/stats").status_code == 200


# ------------------------------------------------------------------------------------------------
# 4. Information leaks
# ------------------------------------------------------------------------------------------------


def test_unavailable_reasons_do_not_reveal_server_paths(repo, tmp_path):
    """Found in review (low), fixed. A model version whose weights file is missing is UNAVAILABLE with the reason
    "cannot read weights: [Errno 2] No such file or directory: '/abs/path/models/x/1/weights.npz'":
    ModelRegistry.load strips only the "<directory>: " prefix of artifact errors, not the path inside
    the OSError text. Any tenant reads it from the repository index, the model's readiness and the
    404 of an inference: the server's file-system layout (user name, mount points) leaks.
    Fix: in ModelRegistry.load (or artifact.load) replace str(models_dir) with "" / a relative path in
    every reason, or build OSError reasons from exc.strerror and the file's name only."""
    target = copy_model(LINEAR, repo / "nw" / "1", name="nw")
    (target / "weights.npz").unlink()
    client = make_app(repo, tmp_path, api_keys=KEYS)
    texts = [
        client.get("/v2/repository/index", headers=TENANT).get_data(as_text=True),
        client.get("/v2/models/nw/ready", headers=TENANT).get_data(as_text=True),
        client.post("/v2/models/nw/infer", json=plain_request(10), headers=TENANT).get_data(as_text=True),
    ]
    assert "weights" in texts[1]
    for text in texts:
        assert str(tmp_path) not in text and str(repo) not in text, text


@pytest.mark.parametrize("style", ["absolute", "relative"])
def test_an_artifacts_weights_file_stays_inside_its_folder(repo, tmp_path, style):
    """Found in review (low; artifact.load predates this change but every version folder goes through it), fixed.
    The manifest's weights.file is joined to the artifact folder as given: an absolute path or ".."
    makes the server read a .npz anywhere on the machine — an artifact can serve another model's
    private weights under its own name (given their checksum), or probe which files exist (a missing
    file and a checksum mismatch give different reasons).
    Fix: in artifact.load accept only a plain file name (no "/", no "..", not absolute), or resolve
    the path and require it to lie inside the artifact folder; otherwise ArtifactError."""
    elsewhere = copy_model(LINEAR, tmp_path / "private" / "weights-home", name="x")
    target = copy_model(LINEAR, repo / "thief", name="thief")
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "weights.npz").unlink()
    source = elsewhere / "weights.npz"
    manifest["weights"]["file"] = str(source) if style == "absolute" else os.path.relpath(source, target)
    (target / "manifest.json").write_text(json.dumps(manifest))
    rows = {r["name"]: r for r in load_registry(repo).index()}
    assert rows["thief"]["state"] == UNAVAILABLE, rows["thief"]


def test_the_startup_record_holds_no_secret(repo, tmp_path, monkeypatch):
    """HOLDS: the start-up line names the mode and counts keys; no key, no digest, no tenant name."""
    from heserve.server.__main__ import _startup_record
    from heserve.server.service.auth import _hash

    config = ServerConfig.from_env(models_dir=repo, keys_dir=tmp_path / "keys", api_keys=KEYS)
    text = json.dumps(_startup_record(config))
    for secret in ("k-alice", "k-bob", "k-ops"):
        assert secret not in text and _hash(secret).hex() not in text
    for tenant in ("alice", "bob", "ops"):
        assert f'"{tenant}"' not in text
    assert json.loads(text)["authentication"] == {"mode": "api_keys", "tenants": 3, "keys": 3, "operator_keys": 1}


def test_operator_errors_on_bad_names_echo_no_path(repo, tmp_path):
    """HOLDS: a refused load or unload names the model, never the models directory."""
    client = make_app(repo, tmp_path, api_keys=KEYS)
    for name in ("nope", "..", "m%00", "x" * 200):
        for action in ("load", "unload"):
            answer = client.post(f"/v2/repository/models/{name}/{action}", headers=OPERATOR)
            assert answer.status_code == 404
            assert str(tmp_path) not in answer.get_data(as_text=True)


# ------------------------------------------------------------------------------------------------
# 5. Workers sharing the state file
# ------------------------------------------------------------------------------------------------


def test_an_unload_after_a_load_reaches_a_worker_that_had_not_refreshed_yet(repo, tmp_path, run):
    """Found in review (high), fixed. Worker A loads m; worker B sees it at its next request (to any model) and marks
    m stale, to reload lazily. A then unloads m. At B's next request for m, sync() unloads m — but
    _refresh() still finds m in _stale and loads it again: B serves the unloaded model while A
    refuses it, and keeps serving it until the state file changes again (possibly never). The same
    happens when B itself receives the unload while m is stale (Repository.unload leaves _stale).
    Fix: server/service/repository.py — in sync(), discard from _stale (and set _applied to the
    current count for) every name in "unloaded"; in unload(), discard the name from _stale; and in
    _refresh() never load a name the state lists as unloaded."""
    first, second = make_app(repo, tmp_path, run), make_app(repo, tmp_path, run)
    assert first.post("/v2/repository/models/m/load").status_code == 200
    assert serves(second, OTHER, 30)
    assert first.post("/v2/repository/models/m/unload").status_code == 200
    assert "m" in state_of(run)["unloaded"]
    assert not serves(first, "m")
    assert not serves(second, "m"), "worker B serves a model the operator unloaded"


def test_an_unload_received_by_a_worker_with_a_stale_model_holds(repo, tmp_path, run):
    """Found in review (high), fixed, the second path of the test above: B receives the unload itself while m is
    stale in B; B's next request for m loads it again."""
    first, second = make_app(repo, tmp_path, run), make_app(repo, tmp_path, run)
    assert first.post("/v2/repository/models/m/load").status_code == 200
    assert serves(second, OTHER, 30)
    assert second.post("/v2/repository/models/m/unload").status_code == 200
    assert not serves(second, "m"), "worker B serves the model it was just told to unload"


@pytest.mark.parametrize("how", ["folder removed", "never had an artifact"])
def test_a_stale_name_in_the_unloaded_list_does_not_break_other_workers(repo, tmp_path, run, how):
    """Found in review (high), fixed. Repository.sync() calls registry.unload(name) for every name the state lists as
    unloaded; registry.unload raises ModelNotFound for a name with no entry and no artifact on disk.
    That is the case in any worker started (SIGHUP, max_requests recycling, a crash) after the
    operator unloaded a model and removed its folder — or after an unload of a folder that never
    held an artifact. sync() then raises at that name on every state change: GET /v2/health/ready
    answers 500 (a load balancer takes the instance out), the request's model is 404, and every
    later name of the list — and every load — is never applied: the new worker keeps serving a
    model the operator unloaded after it, indefinitely.
    Fix: in Repository.sync, apply each name independently: a name that is not known is simply
    recorded as unloaded (ModelEntry(name, reason=UNLOADED), or skipped) — never an exception — and
    the loop always reaches the loads."""
    copy_model(LINEAR, repo / "y", name="y")
    if how == "folder removed":
        copy_model(LINEAR, repo / "x", name="x")
    else:
        (repo / "x").mkdir()  # an operator's load came before the artifact was copied in
    first = make_app(repo, tmp_path, run)
    if how == "never had an artifact":
        assert first.post("/v2/repository/models/x/load").json["code"] == "model_load_failed"
    assert first.post("/v2/repository/models/x/unload").status_code == 200
    if how == "folder removed":
        shutil.rmtree(repo / "x")
    recycled = make_app(repo, tmp_path, run)  # a worker started after that
    assert serves(recycled, "y")
    assert first.post("/v2/repository/models/y/unload").status_code == 200
    assert recycled.get("/v2/health/ready").status_code == 200
    assert not serves(recycled, "y"), "the recycled worker still serves y after its unload"


def test_a_state_change_within_one_timestamp_tick_is_seen(repo, tmp_path, run):
    """Found in review (low), fixed. RepositoryState.changed() compares (st_mtime_ns, st_size) only. Two loads of one
    model write files of equal size ({"m": 3} then {"m": 4}); on a file system with coarse timestamps
    (1 s on ext3, NFSv3 or HFS+; one kernel tick, 1-10 ms, on most Linux kernels before 6.13) both
    writes can carry the same mtime, and a worker that synced between them never sees the second:
    it serves the old version until the next change. Simulated here by giving the new file the old
    mtime. Fix: put st_ino (and st_ctime_ns) in the signature — every write is a new file through
    os.replace — or re-read the file while its mtime is within a second or two of now (racy-git)."""
    first, second = make_app(repo, tmp_path, run), make_app(repo, tmp_path, run)
    copy_model(LINEAR, repo / "m" / "2", "second", name="m")
    assert first.post("/v2/repository/models/m/load").status_code == 200
    assert second.get("/v2/models/m").json["parameters"]["description"] == "second"
    before = (run / "repository.json").stat()
    copy_model(LINEAR, repo / "m" / "3", "third", name="m")
    assert first.post("/v2/repository/models/m/load").status_code == 200
    after = (run / "repository.json").stat()
    assert after.st_size == before.st_size
    os.utime(run / "repository.json", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert first.get("/v2/models/m").json["parameters"]["description"] == "third"
    assert second.get("/v2/models/m").json["parameters"]["description"] == "third"


def test_a_load_and_an_unload_racing_in_one_worker_agree_with_the_state_file(repo, tmp_path, run, monkeypatch):
    """Found in review (low-medium), fixed. gunicorn runs 4 threads per worker. Repository.load compiles (registry.load)
    and only then writes the state; an unload handled by another thread of the same worker in between
    unloads the registry and writes "unloaded"; the load's write then removes the name from
    "unloaded" and sets this worker's _applied to the new count. The file (and every other worker)
    says loaded, this worker says unloaded — and never re-reads it, since its _applied is current.
    Forced here by running the unload from inside the load's compile. Fix: in Repository, hold one
    lock across the registry change and the state update of load() and unload() (they are rare), or
    after writing the state reconcile this worker's registry with what was written."""
    client = make_app(repo, tmp_path, run)
    app = client.application
    registry = app.extensions["heserve"].registry
    real_load = registry.load
    raced = []

    def load_then_race(name: str):
        entry = real_load(name)
        if not raced:
            raced.append(threading.Thread(target=lambda: app.test_client().post("/v2/repository/models/m/unload")))
            raced[0].start()
            raced[0].join(timeout=2)  # a fix that serializes the two would block the unload here
        return entry

    monkeypatch.setattr(registry, "load", load_then_race)
    assert client.post("/v2/repository/models/m/load").status_code == 200
    raced[0].join()
    listed_unloaded = "m" in state_of(run)["unloaded"]
    other_worker = make_app(repo, tmp_path, run)
    assert serves(other_worker, "m") == (not listed_unloaded)
    assert serves(client, "m") == (not listed_unloaded), "this worker disagrees with the state file"


def test_concurrent_control_through_two_workers_loses_no_update(repo, tmp_path, run):
    """HOLDS: two workers loading and unloading (one model each) in threads, a third thread reading the
    state file all along: every read is valid JSON (os.replace), no load is lost (flock), the file
    ends as the last operations left it and both workers agree with it."""
    first, second = make_app(repo, tmp_path, run), make_app(repo, tmp_path, run)
    rounds = 8
    errors: list[str] = []
    done = threading.Event()

    def toggle(client, name: str):
        for _ in range(rounds):
            for action in ("unload", "load"):
                status = client.post(f"/v2/repository/models/{name}/{action}").status_code
                if status != 200:
                    errors.append(f"{action} {name}: {status}")

    def reader():
        while not done.is_set():
            try:
                json.loads((run / "repository.json").read_text())
            except FileNotFoundError:
                pass
            except ValueError as exc:
                errors.append(f"half-written state: {exc}")

    threads = [
        threading.Thread(target=toggle, args=(first, "m")),
        threading.Thread(target=toggle, args=(second, OTHER)),
    ]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    assert errors == []
    state = state_of(run)
    assert state["loads"] == {"m": rounds, OTHER: rounds} and state["unloaded"] == []
    for client in (first, second):
        assert serves(client, "m") and serves(client, OTHER, 30)
    assert not list(run.glob("*.tmp"))


def test_statistics_are_for_operators(repo, tmp_path):
    """The statistics extension gives the request counts, rows and last_inference (ms) of every model,
    i.e. when and how much other tenants use each model: operator-facing, as in Triton."""
    client = make_app(repo, tmp_path, api_keys=KEYS)
    for _ in range(3):
        assert client.post("/v2/models/m/infer", json=plain_request(10), headers=TENANT).status_code == 200
    for path in ("/v2/models/m/stats", "/v2/models/stats", "/v2/repository/index"):
        refused = client.get(path, headers={"Authorization": "Bearer k-bob"})
        assert refused.status_code == 403 and refused.json["code"] == "operator_only"
    stats = client.get("/v2/models/m/stats", headers=OPERATOR)
    assert stats.status_code == 200
    assert stats.json["model_stats"][0]["execution_count"] == 3
