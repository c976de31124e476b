"""The model repository in process: versions and their policy, bad artifacts, load and unload shared
by the workers of one server (two applications on one run directory stand for two workers), strict
request validation, the statistics extension. The same through a real gunicorn and stock clients:
test_oip_clients.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from heserve.server.service.config import SHIPPED_MODELS_DIR, ServerConfig
from heserve.server.service.registry import READY, UNAVAILABLE, VersionPolicy, load_registry
from heserve.server.web.app import create_app

LINEAR = "diabetes-linreg"  # 10 features, one output
OTHER = "breast-cancer-logreg"


def copy_model(source: str, target: Path, description: str | None = None, name: str | None = None) -> Path:
    shutil.copytree(SHIPPED_MODELS_DIR / source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    if description is not None:
        manifest["description"] = description
    if name is not None:
        manifest["name"] = name
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture
def repo(tmp_path) -> Path:
    """m/1, m/2 (the same linear model, told apart by description), a good flat model, a corrupt one."""
    models = tmp_path / "models"
    copy_model(LINEAR, models / "m" / "1", "first", name="m")
    copy_model(LINEAR, models / "m" / "2", "second", name="m")
    copy_model(OTHER, models / OTHER)
    bad = copy_model(LINEAR, models / "bad", name="bad")
    arrays = dict(np.load(bad / "weights.npz"))
    arrays["W"] = arrays["W"] + 1.0  # the manifest's checksum no longer matches
    np.savez(bad / "weights.npz", **arrays)
    return models


def app_for(models: Path, tmp_path: Path, run_dir: Path | None = None, **settings):
    config = ServerConfig.from_env(models_dir=models, keys_dir=tmp_path / "keys", run_dir=run_dir, **settings)
    return create_app(config).test_client()


def plain_request(n: int, rows: int = 1, **extra) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, n], "data": [0.1] * (n * rows)}], **extra}


def test_version_policy_selection():
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy.from_json({"latest": {"num_versions": 2}}).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy.from_json({"all": {}}).select([2, 1]) == [1, 2]
    assert VersionPolicy.from_json({"specific": {"versions": [1, 3]}}).select([1, 2, 3]) == [1, 3]
    for bad in ({"latest": {"num_versions": 0}}, {"newest": {}}, {"specific": {"versions": []}}, [], {"all": 1}):
        with pytest.raises(ValueError):
            VersionPolicy.from_json(bad)


def test_bad_artifact_is_unavailable_and_the_rest_serve(repo, tmp_path):
    registry = load_registry(repo)
    assert registry.names() == [OTHER, "m"]
    rows = {(r["name"], r["version"]): r for r in registry.index()}
    assert rows[("bad", "1")]["state"] == UNAVAILABLE
    assert "checksum" in rows[("bad", "1")]["reason"]
    assert rows[("m", "2")]["state"] == READY and ("m", "1") not in rows  # latest only, by default
    client = app_for(repo, tmp_path)
    ready = client.get("/v2/models/bad/ready")
    assert ready.status_code == 503 and "checksum" in ready.json["reason"]
    infer = client.post("/v2/models/bad/infer", json=plain_request(10))
    assert infer.status_code == 404 and infer.json["code"] == "model_not_found"
    assert "checksum" in infer.json["error"]
    assert client.get("/v2/health/ready").status_code == 200
    assert client.post(f"/v2/models/{OTHER}/infer", json=plain_request(30)).status_code == 200


def test_versions_follow_the_policy(repo, tmp_path):
    client = app_for(repo, tmp_path)
    meta = client.get("/v2/models/m").json
    assert meta["versions"] == ["2"] and meta["parameters"]["description"] == "second"
    assert client.get("/v2/models/m/versions/1").status_code == 404
    (repo / "m" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    client = app_for(repo, tmp_path)
    assert client.get("/v2/models/m").json["versions"] == ["1", "2"]
    assert client.get("/v2/models/m/versions/1").json["parameters"]["description"] == "first"
    for path, version in (("/v2/models/m/infer", "2"), ("/v2/models/m/versions/1/infer", "1")):
        answer = client.post(path, json=plain_request(10, id="r-7"))
        assert answer.status_code == 200
        assert (answer.json["model_name"], answer.json["model_version"], answer.json["id"]) == ("m", version, "r-7")
    config = client.get("/v2/models/m/config").json
    assert config["version_policy"] == {"all": {}}
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [-1, 10]}]


def test_a_broken_policy_or_name_is_reported_not_fatal(repo, tmp_path):
    (repo / "m" / "config.json").write_text("{not json")
    copy_model(LINEAR, repo / "renamed")  # its manifest still names diabetes-linreg
    rows = {r["name"]: r for r in load_registry(repo).index()}
    assert rows["m"]["state"] == UNAVAILABLE and "config.json" in rows["m"]["reason"]
    assert rows["renamed"]["state"] == UNAVAILABLE and "lives in renamed/" in rows["renamed"]["reason"]
    assert rows[OTHER]["state"] == READY


def test_unload_and_load_reach_every_worker(repo, tmp_path):
    """What one worker is told, the other follows at its next request (a shared run directory)."""
    run = tmp_path / "run"
    run.mkdir()
    first, second = app_for(repo, tmp_path, run), app_for(repo, tmp_path, run)
    assert second.post("/v2/models/m/infer", json=plain_request(10)).status_code == 200
    assert first.post("/v2/repository/models/m/unload", data="").status_code == 200
    gone = second.post("/v2/models/m/infer", json=plain_request(10))
    assert gone.status_code == 404 and "unloaded" in gone.json["error"]
    index = {r["name"]: r for r in second.post("/v2/repository/index", data="").json}
    assert index["m"] == {"name": "m", "version": "", "state": UNAVAILABLE, "reason": "unloaded"}
    assert second.post(f"/v2/models/{OTHER}/infer", json=plain_request(30)).status_code == 200
    # A new version on disk and a load through the other worker: both serve it.
    copy_model(LINEAR, repo / "m" / "3", "third", name="m")
    loaded = second.post("/v2/repository/models/m/load", json={})
    assert loaded.status_code == 200 and loaded.json["versions"] == ["3"]
    assert first.get("/v2/models/m").json["parameters"]["description"] == "third"
    # A worker started later (a SIGHUP reload) starts from the shared state.
    assert first.post(f"/v2/repository/models/{OTHER}/unload").status_code == 200
    assert app_for(repo, tmp_path, run).get(f"/v2/models/{OTHER}").status_code == 404


def test_repository_refusals(repo, tmp_path):
    client = app_for(repo, tmp_path)
    assert client.post("/v2/repository/models/nope/load").json["code"] == "model_not_found"
    assert client.post("/v2/repository/models/nope/unload").status_code == 404
    failed = client.post("/v2/repository/models/bad/load")
    assert failed.status_code == 400 and failed.json["code"] == "model_load_failed"
    override = client.post("/v2/repository/models/m/load", json={"parameters": {"config": "{}"}})
    assert override.status_code == 400 and override.json["code"] == "unsupported_parameter"
    assert client.post("/v2/repository/index", data="[", content_type="application/json").status_code == 400
    assert client.post("/v2/repository/index", data="x", content_type="text/plain").status_code == 415
    # An open server takes repository control from loopback only.
    remote = client.post("/v2/repository/models/m/unload", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert remote.status_code == 403 and remote.json["code"] == "operator_only"


def test_operator_role_is_required_with_api_keys(repo, tmp_path):
    client = app_for(repo, tmp_path, api_keys="alice:k-alice,ops:k-ops:operator")
    tenant = client.post("/v2/repository/models/m/unload", headers={"Authorization": "Bearer k-alice"})
    assert tenant.status_code == 403 and tenant.json["code"] == "operator_only"
    assert client.get("/v2/models/m", headers={"Authorization": "Bearer k-alice"}).status_code == 200
    operator = client.post("/v2/repository/models/m/unload", headers={"Authorization": "Bearer k-ops"})
    assert operator.status_code == 200


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        (lambda r: r["inputs"][0].update(name="xyz"), 400, "unknown_input"),
        (lambda r: r["inputs"].append(dict(r["inputs"][0])), 400, "duplicate_input"),
        (lambda r: r["inputs"][0].update(datatype="INT32", data=[1] * 10), 400, "bad_datatype"),
        (lambda r: r["inputs"][0].update(shape=[10]), 400, "bad_shape"),
        (lambda r: r["inputs"][0].update(shape=[1, 1, 10]), 400, "bad_shape"),
        (lambda r: r.update(outputs=[{"name": "proba"}]), 400, "unknown_output"),
        (lambda r: r.update(outputs=[{"name": "output", "parameters": {"binary_data": "yes"}}]), 400, None),
        (lambda r: r.update(parameters={"binary_data_output": 1}), 400, "bad_parameter"),
        (lambda r: r["inputs"][0].update(datatype="FP64", data=[1e300] * 10), 400, "bad_data"),
    ],
)
def test_requests_are_checked_against_the_metadata(repo, tmp_path, change, status, code):
    client = app_for(repo, tmp_path)
    request = plain_request(10)
    change(request)
    answer = client.post("/v2/models/m/infer", json=request)
    assert answer.status_code == status, answer.json
    assert answer.json["code"] == (code or "malformed_request")


def test_fp64_is_converted_and_the_answer_format_is_the_clients_choice(repo, tmp_path):
    client = app_for(repo, tmp_path)
    fp32 = client.post("/v2/models/m/infer", json=plain_request(10)).json
    request = plain_request(10)
    request["inputs"][0]["datatype"] = "FP64"
    assert client.post("/v2/models/m/infer", json=request).json["outputs"] == fp32["outputs"]
    for outputs, parameters, binary in [
        (None, None, False),
        (None, {"binary_data_output": True}, True),
        ([{"name": "output", "parameters": {"binary_data": True}}], None, True),
        ([{"name": "output", "parameters": {"binary_data": False}}], {"binary_data_output": True}, False),
        ([{"name": "output"}], {"binary_data_output": True}, True),
    ]:
        extra = {k: v for k, v in (("outputs", outputs), ("parameters", parameters)) if v is not None}
        answer = client.post("/v2/models/m/infer", json=plain_request(10, **extra))
        assert answer.status_code == 200
        assert ("Inference-Header-Content-Length" in answer.headers) == binary, extra


def test_statistics_count_what_was_sent(repo, tmp_path):
    client = app_for(repo, tmp_path)
    for rows in (1, 3, 5):
        assert client.post("/v2/models/m/infer", json=plain_request(10, rows)).status_code == 200
    bad = plain_request(10)
    bad["inputs"][0]["shape"] = [10]
    assert client.post("/v2/models/m/infer", json=bad).status_code == 400
    (stats,) = client.get("/v2/models/m/stats").json["model_stats"]
    assert (stats["name"], stats["version"]) == ("m", "2")
    assert stats["inference_count"] == 9 and stats["execution_count"] == 3
    phases = stats["inference_stats"]
    assert phases["success"]["count"] == 3 and phases["fail"]["count"] == 1
    assert all(phases[p]["ns"] > 0 for p in ("success", "fail", "compute_input", "compute_infer", "compute_output"))
    spent = sum(phases[p]["ns"] for p in ("queue", "compute_input", "compute_infer", "compute_output"))
    assert spent <= phases["success"]["ns"]
    assert stats["last_inference"] > 0
    every = client.get("/v2/models/stats").json["model_stats"]
    assert {(s["name"], s["version"]) for s in every} == {("m", "2"), (OTHER, "1")}
    assert client.get("/v2/models/bad/stats").status_code == 404


def test_a_request_naming_many_outputs_costs_little(repo, tmp_path):
    """The `outputs` list is the client's: 200,000 entries (a few MB of JSON, under the JSON body limit)
    are refused with a 400 in well under a second, duplicates or not, before any evaluation."""
    import time

    client = app_for(repo, tmp_path)
    for outputs in (
        [{"name": "output"}] * 200_000,
        [{"name": f"o{i}"} for i in range(200_000)],
    ):
        started = time.perf_counter()
        answer = client.post("/v2/models/m/infer", json=plain_request(10, outputs=outputs))
        assert answer.status_code == 400 and answer.json["code"] in ("malformed_request", "unknown_output")
        assert time.perf_counter() - started < 2.0
    (stats,) = client.get("/v2/models/m/stats").json["model_stats"]
    assert stats["execution_count"] == 0 and stats["inference_stats"]["fail"]["count"] == 2
