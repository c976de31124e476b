"""The most one request can cost a worker, per route: resident memory and wall time.

    python -m heserve.benchmarks.limits [--out benchmarks/results]

Starts one real gunicorn server with one worker and the default limits, and sends the
largest request each route accepts — the evaluation keys of every served element (and
relinearization keys) for each parameter set; for every model, as many single-layout rows
and as many batch chunks as the body limit and the row and chunk limits allow — then the
hostile requests of tests/test_adversarial.py's kind that the limits must stop early. For
each it records the worker's peak resident memory above what it held before (the kernel's
high-water mark, reset before each request) and the request's wall time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from heserve.client.keys import SecretContext
from heserve.engine import rotations
from heserve.engine.spec import EncryptionSpec
from heserve.protocol import v2
from heserve.server.launch import start_server
from heserve.server.service.config import ServerConfig


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def measure(pid: int, send) -> dict:
    _reset_peak(pid)
    before = _status(pid, "VmRSS")
    started = time.perf_counter()
    response = send()
    seconds = time.perf_counter() - started
    return {
        "status": response.status_code,
        "code": response.json().get("code") if response.status_code >= 400 else None,
        "seconds": round(seconds, 3),
        "peak_rss_growth_mib": round((_status(pid, "VmHWM") - before) / 2**20, 1),
        "request_mib": round(len(getattr(response.request, "body", b"") or b"") / 2**20, 2),
    }


def post(url: str, body: bytes, length: int | None) -> requests.Response:
    headers = {"Content-Type": v2.BINARY_CONTENT_TYPE}
    if length is not None:
        headers[v2.HEADER_LENGTH] = str(length)
    return requests.post(url, data=body, headers=headers, timeout=300)


def run(out: Path) -> list[dict]:
    config = ServerConfig()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), workers=1)
        try:
            (pid,) = server.worker_pids()
            models = [m["name"] for m in requests.get(server.url + "/v2/models", timeout=10).json()["models"]]
            for name in models:
                metadata = requests.get(f"{server.url}/v2/models/{name}", timeout=10).json()
                spec = EncryptionSpec.from_json(metadata["parameters"]["encryption"])
                secret = SecretContext.generate(spec.ckks)
                body, length = secret.evaluation_key_request(spec.rotation_steps, spec.relin_keys_needed)
                result = measure(pid, lambda b=body, n=length: post(server.url + "/v2/keys", b, n))
                rows.append({"route": "POST /v2/keys", "case": f"{name}: its keys", **result})
                key_id = requests.post(
                    server.url + "/v2/keys",
                    data=body,
                    headers={v2.HEADER_LENGTH: str(length), "Content-Type": v2.BINARY_CONTENT_TYPE},
                    timeout=60,
                ).json()["key_id"]
                for layout in spec.layouts:
                    message, what = _largest(spec, secret, layout, key_id, config)
                    body_i, length_i = v2.encode(message, "inputs", binary=True)
                    result = measure(
                        pid, lambda b=body_i, n=length_i, m=name: post(f"{server.url}/v2/models/{m}/infer", b, n)
                    )
                    rows.append({"route": "POST /v2/models/{m}/infer", "case": f"{name}, {layout}: {what}", **result})
                requests.delete(f"{server.url}/v2/keys/{key_id}", timeout=10)
                if spec.layouts.get("single") and spec.layouts["single"].rotation_steps:
                    # The same rows with the Galois keys whose composition costs the server most.
                    steps = costliest_steps(spec)
                    body, length = secret.evaluation_key_request(steps, spec.relin_keys_needed)
                    key_id = post(server.url + "/v2/keys", body, length).json()["key_id"]
                    message, what = _largest(spec, secret, "single", key_id, config)
                    body_i, length_i = v2.encode(message, "inputs", binary=True)
                    result = measure(
                        pid, lambda b=body_i, n=length_i, m=name: post(f"{server.url}/v2/models/{m}/infer", b, n)
                    )
                    case = f"{name}, single: {what}, keys for steps {list(steps)} (the costliest composition)"
                    rows.append({"route": "POST /v2/models/{m}/infer", "case": case, **result})
                    requests.delete(f"{server.url}/v2/keys/{key_id}", timeout=10)
        finally:
            server.stop()
    out.mkdir(parents=True, exist_ok=True)
    (out / "limits.json").write_text(json.dumps(rows, indent=2))
    (out / "limits.md").write_text(markdown(rows))
    return rows


def costliest_steps(spec: EncryptionSpec) -> tuple[int, ...]:
    """The registrable Galois steps (3 to 6 of the model's) that make one single-layout row cost the
    most key switches: what a client after the server's time would register."""
    layout = spec.layouts["single"]
    steps, slots = layout.rotation_steps, spec.ckks.slot_count
    uses = dict(zip(layout.rotation_steps, layout.rotation_uses, strict=False))
    worst, chosen = -1, tuple(steps)
    for count in range(3, min(6, len(steps)) + 1):
        for subset in itertools.combinations(steps, count):
            try:
                paths = rotations.routes(steps, subset, slots)
            except rotations.RotationError:
                continue
            cost = sum(uses.get(s, 1) * len(p) for s, p in paths.items())
            if cost > worst:
                worst, chosen = cost, subset
    return chosen


def _largest(spec: EncryptionSpec, secret: SecretContext, layout: str, key_id: str, config: ServerConfig):
    """The largest request of this layout the default limits accept."""
    lay = spec.layouts[layout]
    if layout == "single":
        per_row = lay.ciphertexts_per_row
        scale = 2.0 ** lay.input_scale_bits(spec.input_scale_bits)
        blob = secret.encrypt(np.zeros(8), scale)
        rows = min(config.max_single_rows, (config.max_body_bytes - 4096) // ((len(blob) + 4) * per_row))
        rows = min(rows, config.max_request_ciphertexts // per_row)
        blobs = [secret.encrypt(np.zeros(8), scale) for _ in range(per_row)] * rows
        shape = [rows, per_row] if per_row > 1 else [rows]
        parameters = {"key_id": key_id, "layout": "single", "rows": rows}
        what = f"{rows} rows"
    else:
        blob = secret.encrypt(np.zeros(8), 2.0**spec.input_scale_bits, seeded=lay.seeded)
        per_chunk = (len(blob) + 4) * spec.n_features
        chunks = max(1, min(config.max_batch_chunks, (config.max_body_bytes - 4096) // per_chunk))
        blobs = [blob] * (chunks * spec.n_features)
        shape = [chunks, spec.n_features]
        rows = chunks * spec.ckks.slot_count
        parameters = {"key_id": key_id, "layout": "batch", "rows": rows}
        what = f"{chunks} chunks, {rows:,} rows"
    return v2.Message([v2.Tensor("ciphertext", "BYTES", shape, blobs)], parameters=parameters), what


def markdown(rows: list[dict]) -> str:
    lines = [
        "| route | largest request | body MiB | status | worker time (s) | peak worker RSS growth (MiB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        status = f"{row['status']}" + (f" {row['code']}" if row["code"] else "")
        lines.append(
            f"| {row['route']} | {row['case']} | {row['request_mib']:.1f} | {status} | "
            f"{row['seconds']:.2f} | {row['peak_rss_growth_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows = run(args.out)
    print(markdown(rows))
    worst = max(rows, key=lambda r: r["peak_rss_growth_mib"])
    longest = max(rows, key=lambda r: r["seconds"])
    print(f"largest growth: {worst['case']} ({worst['peak_rss_growth_mib']:.0f} MiB); longest: {longest['case']}")


if __name__ == "__main__":
    main()
