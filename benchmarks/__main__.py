"""Run the benchmarks: `python -m benchmarks [--quick] [--out results/]`.

Starts the server (gunicorn, two workers) on a free loopback port, measures every
workload in one run, prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tenseal

from tests.serverproc import start_server

from . import linear, networks


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}" if value >= 0.01 else f"{value:.1e}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: list[dict]) -> str:
    head = "| model | workload | layout | median ms | p95 ms | rows/s | upload B/row | eval keys B | max abs err |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        upload = r.get("upload_bytes", r.get("upload_bytes_per_row"))
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    r["workload"],
                    r["layout"],
                    fmt(r["median_ms"]),
                    fmt(r["p95_ms"]),
                    fmt(r["rows_per_s"]),
                    fmt(upload if upload is None else int(upload)),
                    fmt(r.get("eval_key_bytes")),
                    fmt(r.get("max_abs_error")),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    out = []
    for model in sorted({r["model"] for r in rows}):
        by = {(r["workload"], r["layout"]): r for r in rows if r["model"] == model}
        naive = by.get(("tenseal naive (encrypt+dot+bias)", "single"))
        service = by.get(("service over HTTP (end to end)", "single"))
        batch = by.get(("service over HTTP (end to end)", "batch"))
        if naive and service:
            out.append(
                f"{model}: single-sample end to end over HTTP takes {service['median_ms'] / naive['median_ms']:.2f}x "
                f"the TenSEAL naive in-process call (target <= 0.5); evaluation keys "
                f"{service['eval_key_bytes'] / naive['eval_key_bytes']:.3f}x TenSEAL's public context"
            )
        if batch:
            out.append(f"{model}: batch end to end over HTTP {batch['rows_per_s']:,.0f} rows/s (target >= 20,000)")
    return out


def network_ratios(rows: list[dict], floors: dict) -> list[str]:
    out = []
    for model in sorted({r["model"] for r in rows}):
        by = {(r["workload"], r["layout"]): r for r in rows if r["model"] == model}
        naive = by[("tenseal naive (mm, square, mm)", "single")]
        single = by[("service, server side", "single")]
        batch = by[("service, server side", "batch")]
        e2e = by[("service over HTTP (end to end)", "batch")]
        out.append(
            f"{model}: single-sample server evaluation {naive['median_ms'] / single['median_ms']:.1f}x faster than "
            f"TenSEAL naive; batch {batch['rows_per_s']:,.0f} rows/s server side, {e2e['rows_per_s']:,.0f} rows/s "
            f"end to end; evaluation keys {single['eval_key_bytes'] / naive['eval_key_bytes']:.2f}x TenSEAL's "
            f"default Galois keys; single-sample server time {single['median_ms'] / floors[model]['single_ms']:.2f}x "
            f"the plan's op-count floor ({floors[model]['single_ms']:.1f} ms)"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, for CI")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    samples, batch_rows = (30, 4096) if args.quick else (200, 16384)
    args.out.mkdir(parents=True, exist_ok=True)
    header = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "tenseal": tenseal.__version__ if hasattr(tenseal, "__version__") else "0.3.x",
        "numpy": np.__version__,
        "server": "gunicorn, 2 sync workers, loopback HTTP",
    }
    context = linear.tenseal_naive_context()
    net_context = networks.tenseal_context()
    names = ["digits-mlp"] if args.quick else list(networks.SPLITS)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), workers=2)
        try:
            rows = []
            for name in linear.SPLITS:
                print(f"benchmarking {name} ...", file=sys.stderr)
                rows += linear.bench_model(name, server.url, samples, batch_rows, context)
            net_rows = []
            for name in names:
                print(f"benchmarking {name} ...", file=sys.stderr)
                naive_samples = 1 if name == "mnist-size-mlp" else 5
                net_rows += networks.bench_network(name, server.url, 20, naive_samples, net_context)
        finally:
            server.stop()
        services = networks.Services.build(networks.ServerConfig.from_env(keys_dir=Path(tmp) / "floor"))
        floors = {}
        for name in names:
            costs = networks.op_costs(services, name)
            plan = services.registry.get(name).plan.plan()
            floors[name] = {
                "single_ms": networks.op_floor(plan["single"]["ops"], costs),
                "batch_seal_ms": networks.op_floor(plan["batch"]["ops"], costs),
                "op_ms": costs,
            }
    report = {
        "header": header,
        "results": rows,
        "ratios": ratios(rows),
        "networks": net_rows,
        "network_ratios": network_ratios(net_rows, floors),
        "op_floor": floors,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    text = "\n".join(f"- {k}: {v}" for k, v in header.items())
    text += "\n\nLinear models:\n\n" + table(rows) + "\n\n" + "\n".join(f"- {line}" for line in report["ratios"])
    text += "\n\nNetworks:\n\n" + table(net_rows) + "\n\n"
    text += "\n".join(f"- {line}" for line in report["network_ratios"])
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
