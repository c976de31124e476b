"""`python -m heserve.benchmarks --quick` runs every workload in one go and writes coherent results.

One subprocess run (about a minute on a busy 2-core machine) shared by the checks below.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from heserve.benchmarks import linear, networks, readme, suite
from heserve.benchmarks.inprocess import InProcess

ROOT = Path(__file__).resolve().parent.parent
LINEAR_ROLES = {
    (role, layout) for role in ("plaintext", "baseline", "in-process", "http") for layout in ("single", "batch")
}
SERVICE = ("in-process", "http")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "heserve.benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    return {
        "out": out,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "elapsed": elapsed,
        "json": json.loads((out / "results.json").read_text()),
        "md": (out / "results.md").read_text(),
    }


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and the CRC of every chunk up to IEND."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    offset, chunks = 8, []
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path.name}: bad CRC in chunk {kind!r}"
        chunks.append(kind)
        offset += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    ihdr = data[16:24]
    return struct.unpack(">II", ihdr)


def test_full_settings_cover_every_shipped_model():
    shipped = {p.parent.name for p in (ROOT / "models").glob("*/manifest.json")}
    assert shipped == set(suite.FULL.linear_models + suite.FULL.network_models)
    assert suite.FULL.describe() == "full run"


def test_plaintext_workloads_compute_the_served_models(tmp_path):
    """The plaintext baselines fold standardization into the weights: same outputs as the served models."""
    for name in suite.LINEAR:
        model = linear.LinearModel(name)
        assert np.allclose(model.plaintext(model.x), model.predict(model.x), rtol=1e-12, atol=1e-9), name
    engine = InProcess(tmp_path / "keys")
    for name in suite.NETWORKS:
        net = networks.Network(name, engine)
        with torch.no_grad():
            got = networks.torch_model(net.plan, net.pre)(torch.from_numpy(net.x[:50])).numpy()
        assert np.allclose(got, net.predict(net.x[:50]), rtol=1e-12, atol=1e-9), name


def test_quick_run_writes_every_output(quick):
    names = {p.name for p in quick["out"].iterdir()}
    assert {"results.json", "results.md", "latency.png", "throughput.png", "sizes.png"} <= names
    for name in ("latency.png", "throughput.png", "sizes.png"):
        width, height = png_size(quick["out"] / name)
        assert width >= 600 and height >= 300, (name, width, height)
    assert quick["json"]["plots"] == ["latency.png", "throughput.png", "sizes.png"]
    assert "100%" in quick["stderr"] and "benchmarks:" in quick["stderr"]  # the tqdm progress bar
    assert quick["stdout"].strip() == quick["md"].strip()
    assert quick["elapsed"] < 300, "--quick is meant for CI: about a minute"


def test_quick_run_measures_every_workload(quick):
    report, settings = quick["json"], suite.QUICK
    linear = {(r["model"], r["role"], r["layout"]) for r in report["results"]}
    for model in settings.linear_models:
        assert {(model, role, layout) for role, layout in LINEAR_ROLES} <= linear, model
    networks = {(r["model"], r["role"], r["layout"]) for r in report["networks"]}
    for model in settings.network_models:
        expected = {(role, layout) for role in ("plaintext", *SERVICE) for layout in ("single", "batch")}
        if settings.naive_samples.get(model):
            expected.add(("baseline", "single"))
        if settings.naive_batch_calls.get(model):
            expected.add(("baseline", "batch"))
        assert {(model, role, layout) for role, layout in expected} <= networks, model
    for r in report["results"] + report["networks"]:
        assert r["median_ms"] > 0 and r["p95_ms"] >= r["median_ms"] and r["rows_per_s"] > 0, r
        assert r["calls"] >= 1 and r["rows_per_call"] >= 1, r
        if r["role"] != "plaintext":
            assert r["upload_bytes_per_row"] > 0 and r["eval_key_bytes"] >= 0 and r["eval_keys"], r
            assert r["slowdown_vs_plaintext"] > 1, r  # encryption never beats plaintext
        if r["role"] in SERVICE:
            assert r["speedup_vs_baseline"] > 0, r
    # A few batch sizes, for a linear model and a network.
    swept = {p["model"]: set() for p in report["sweeps"]}
    for p in report["sweeps"]:
        swept[p["model"]].add(p["rows_per_call"])
        assert p["median_ms"] > 0 and p["rows_per_s"] > 0, p
    assert any(m in settings.linear_models and len(s) >= 3 for m, s in swept.items())
    assert any(m in settings.network_models and len(s) >= 3 for m, s in swept.items())
    assert set(report["op_floor"]) == set(settings.network_models)


def test_quick_run_agrees_with_plaintext(quick):
    report = quick["json"]
    for r in report["results"] + report["networks"]:
        if r["role"] == "plaintext":
            continue
        assert 0.0 <= r["agreement"] <= 1.0 and r["agreement_rows"] >= 1, r
        if r["role"] in SERVICE:
            # CKKS errors of ~1e-4 against decision margins and a 1e-3 regression tolerance.
            assert r["agreement"] >= 0.99, r
            assert r["max_abs_error"] < 1e-2, r
        elif r["family"] == "linear":
            assert r["agreement"] >= 0.99, r  # TenSEAL at scale 2^40
        else:
            assert r["max_abs_error"] < 5.0, r  # TenSEAL at scale 2^35: logits off by ~0.1-0.6


def test_quick_run_header_names_machine_and_versions(quick):
    header, md = quick["json"]["header"], quick["md"]
    for key in ("date", "command", "machine", "python", "numpy", "tenseal", "torch", "server revision", "server"):
        assert header[key], key
        assert f"- {key}: {header[key]}" in md, key
    assert header["cores"] >= 1 and f"{header['cores']} cores" in header["machine"]
    assert header["command"].startswith("python -m heserve.benchmarks --quick")
    assert header["tenseal"][0].isdigit() and header["numpy"][0].isdigit() and header["torch"][0].isdigit()
    settings = quick["json"]["settings"]["description"]
    assert settings.startswith("quick run") and "models left out: digits-cnn, mnist-size-mlp" in settings
    assert f"- settings: {settings}" in md
    for model in suite.QUICK.linear_models + suite.QUICK.network_models:
        assert f"| {model} | service over HTTP (end to end) | batch |" in md
    for line in quick["json"]["ratios"] + quick["json"]["network_ratios"] + quick["json"]["agreement"]:
        assert f"- {line}" in md
    assert "![latency.png](latency.png)" in md


def test_readme_splice_points_the_plots_into_the_results_folder(quick, tmp_path):
    copy = tmp_path / "README.md"
    copy.write_text(f"# title\n\nprose\n\n{readme.START}\nold numbers\n{readme.END}\n\nafter\n")
    assert readme.main(["--results", str(quick["out"]), "--readme", str(copy)]) == 0
    text = copy.read_text()
    assert text.startswith(f"# title\n\nprose\n\n{readme.START}\n") and text.endswith(f"{readme.END}\n\nafter\n")
    prefix = Path(os.path.relpath(quick["out"], tmp_path)).as_posix() + "/"
    expected = quick["md"].strip()
    for name in ("latency.png", "throughput.png", "sizes.png"):
        expected = expected.replace(f"]({name})", f"]({prefix}{name})")
    assert text.split(readme.START)[1].split(readme.END)[0].strip() == expected


def test_the_zero_copy_comparison_runs_both_variants_and_leaves_the_views_on():
    from heserve.benchmarks import zero_copy
    from heserve.engine import seal_memory

    lines = zero_copy.zero_encryption(2)
    assert len(lines) == 4 and all("ratio" in line for line in lines)
    assert "[bulk]" in lines[0] and all("special prime" in line for line in lines[1:])
    on, off = zero_copy.linear_request(2)
    assert on.startswith("views on") and off.startswith("views off") and "total" in on
    assert seal_memory.available()
