"""Figures derived from the measured rows, and the markdown report."""

from __future__ import annotations

import math

from .linear import BASELINE, COMPACT, END_TO_END, HTTP, INPROCESS, PLAINTEXT
from .link import LINK_BITS_PER_S, LINK_LABEL, RTT_S, link_seconds

ROLES = (PLAINTEXT, BASELINE, INPROCESS, HTTP)
LAYOUTS = ("single", "batch")
PLOTS = {
    "latency.png": "median latency per call for each model, layout and workload (whiskers to p95; log scale)",
    "throughput.png": "rows/s against rows per call (log-log)",
    "sizes.png": "ciphertext upload per row and evaluation keys uploaded once, TenSEAL against the service",
}


def find(rows: list[dict], model: str, role: str, layout: str) -> dict | None:
    for r in rows:
        if r["model"] == model and r["role"] == role and r["layout"] == layout:
            return r
    return None


def derive(rows: list[dict]) -> None:
    """Add to each encrypted row its slowdown against plaintext (rows/s of plaintext over its own, same
    layout) and, for the service, its speedup against TenSEAL naive (its rows/s over TenSEAL's, same
    layout when TenSEAL was measured in it, else TenSEAL's single-sample rows/s: one row at a time);
    to the rows that go end to end (the service over HTTP, TenSEAL naive) their time over a real link."""
    for r in rows:
        if r["role"] == PLAINTEXT:
            continue
        link(r)
        plain = find(rows, r["model"], PLAINTEXT, r["layout"])
        if plain:
            r["slowdown_vs_plaintext"] = plain["rows_per_s"] / r["rows_per_s"]
        if r["role"] in (INPROCESS, COMPACT, HTTP):
            base = find(rows, r["model"], BASELINE, r["layout"]) or find(rows, r["model"], BASELINE, "single")
            if base:
                r["speedup_vs_baseline"] = r["rows_per_s"] / base["rows_per_s"]
                r["baseline_layout"] = base["layout"]


def link(r: dict) -> None:
    """e2e_link_ms: the row's loopback time plus its bytes at LINK_BITS_PER_S plus one RTT_S per request
    (link.link_seconds). The service over HTTP: the request and response bodies measured on the wire;
    TenSEAL naive: its serialized input and result ciphertexts, one request per call, its in-process time
    (encryption and evaluation, no transport, no decryption) in place of a loopback time."""
    if r["role"] not in (HTTP, BASELINE) or r.get("download_bytes_per_row") is None:
        return
    rows = r["rows_per_call"]
    up = r.get("wire_upload_bytes_per_row", r["upload_bytes_per_row"]) * rows
    down = r["download_bytes_per_row"] * rows
    seconds = link_seconds(r["median_ms"] / 1e3, up, down, r.get("requests_per_call", 1))
    r["e2e_link_ms"] = seconds * 1e3
    r["e2e_link_rows_per_s"] = rows / seconds


def add_floors(rows: list[dict], floors: dict) -> None:
    """Server-side rows of networks: the op-count floor of the call (one single-layout row; a batch call:
    its chunks of `batch_chunk_rows` rows) and the measured time over it."""
    for r in rows:
        floor = floors.get(r["model"])
        if r["role"] != INPROCESS or not floor:
            continue
        if r["layout"] == "single":
            r["floor_ms"] = floor["single_ms"] * r["rows_per_call"]
        else:
            r["floor_ms"] = floor["batch_ms"] * math.ceil(r["rows_per_call"] / floor["batch_chunk_rows"])
        r["floor_ratio"] = r["median_ms"] / r["floor_ms"]


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}" if value >= 0.01 or value == 0 else f"{value:.1e}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2g}x" if value < 10 else f"{value:.1f}x"


LINK_COLUMN = f"e2e at {LINK_LABEL} (ms)"
FLOOR_TARGET = 1.5  # server time within this many times the op-count floor
KEYS_TARGET = 4_000_000  # evaluation keys a network's client uploads, in bytes


def table(rows: list[dict], floor: bool = False) -> str:
    """One line per workload; with `floor`, a column of server time over the plan's op-count floor."""
    head = (
        "| model | workload | layout | rows/call | calls | median ms | p95 ms | rows/s | slowdown vs plaintext "
        f"| speedup vs TenSEAL | bytes up/row | bytes down/row | {LINK_COLUMN} | eval keys B "
        + ("| server / floor " if floor else "")
        + "| agreement | max abs err |"
    )
    lines = [head, "|" + "---|" * (16 + floor)]
    for r in rows:
        upload, download = r.get("upload_bytes_per_row"), r.get("download_bytes_per_row")
        speedup = ratio(r.get("speedup_vs_baseline"))
        if speedup and r.get("baseline_layout") != r["layout"]:
            speedup += " (vs single)"
        agree = ""
        if "agreement" in r:
            agree = f"{100 * r['agreement']:.1f}% of {r['agreement_rows']:,}"
        cells = [
            r["model"],
            r["workload"],
            r["layout"],
            fmt(r["rows_per_call"]),
            fmt(r["calls"]),
            fmt(r["median_ms"]),
            fmt(r["p95_ms"]),
            fmt(r["rows_per_s"]),
            ratio(r.get("slowdown_vs_plaintext")),
            speedup,
            fmt(None if upload is None else round(upload)),
            fmt(None if download is None else round(download)),
            fmt(r.get("e2e_link_ms")),
            fmt(r.get("eval_key_bytes")),
            *([f"{r['floor_ratio']:.2f}x" if "floor_ratio" in r else ""] if floor else []),
            agree,
            fmt(r.get("max_abs_error")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rows: list[dict]) -> list[str]:
    """The rows' notes (what was left out, and why), once per model and layout."""
    unique = dict.fromkeys((r["model"], r["layout"], r["note"]) for r in rows if r.get("note"))
    return [f"{model}, {layout}: {note}" for model, layout, note in unique]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def linear_ratios(rows: list[dict]) -> list[str]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        naive = find(rows, model, BASELINE, "single")
        service = find(rows, model, HTTP, "single")
        batch = find(rows, model, HTTP, "batch")
        naive_batch = find(rows, model, BASELINE, "batch")
        if naive and service:
            share = service["median_ms"] / naive["median_ms"]
            out.append(
                f"{model}: single-sample end to end over HTTP takes {share:.2f}x "
                f"the TenSEAL naive in-process call (target <= 0.5: {verdict(share <= 0.5)}); evaluation keys "
                f"{service['eval_key_bytes'] / naive['eval_key_bytes']:.3f}x TenSEAL's public context"
            )
        if batch:
            line = (
                f"{model}: batch end to end over HTTP {batch['rows_per_s']:,.0f} rows/s "
                f"(target >= 20,000: {verdict(batch['rows_per_s'] >= 20000)})"
            )
            if naive_batch:
                line += (
                    f", {batch['rows_per_s'] / naive_batch['rows_per_s']:.1f}x TenSEAL's column-wise batch "
                    f"in process ({naive_batch['rows_per_s']:,.0f} rows/s)"
                )
            out.append(line)
    return out


def network_ratios(rows: list[dict], floors: dict) -> list[str]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        naive = find(rows, model, BASELINE, "single")
        single = find(rows, model, INPROCESS, "single")
        batch = find(rows, model, INPROCESS, "batch")
        e2e = find(rows, model, HTTP, "batch")
        naive_batch = find(rows, model, BASELINE, "batch")
        parts = []
        if naive:
            parts.append(
                f"single-sample server evaluation {naive['median_ms'] / single['median_ms']:.1f}x faster than "
                "TenSEAL naive"
            )
        else:
            parts.append("TenSEAL naive not measured in this run")
        parts.append(f"batch {batch['rows_per_s']:,.0f} rows/s server side, {e2e['rows_per_s']:,.0f} rows/s end to end")
        if naive_batch:
            parts.append(
                f"{batch['rows_per_s'] / naive_batch['rows_per_s']:.1f}x TenSEAL's column-wise batch "
                f"({naive_batch['rows_per_s']:,.0f} rows/s, {naive_batch['scalar_products']:,} scalar products)"
            )
        if naive:
            keys = single["eval_key_bytes"] / naive["eval_key_bytes"]
            parts.append(f"evaluation keys {keys:.2f}x TenSEAL's default Galois keys")
        compact = find(rows, model, COMPACT, "single")
        if single and single.get("key_upload_bytes"):
            keys_line = f"evaluation keys uploaded {single['key_upload_bytes'] / 1e6:.2f} MB with every rotation key"
            if compact:
                small = compact["key_upload_bytes"]
                keys_line += (
                    f", {small / 1e6:.2f} MB with {compact['rotation_keys']} (target <= {KEYS_TARGET / 1e6:.0f} MB: "
                    f"{verdict(small <= KEYS_TARGET)}) for {compact['median_ms'] / single['median_ms']:.2f}x the "
                    "single-sample server time"
                )
            parts.append(keys_line)
        if model in floors:
            shares = [
                f"{r['layout']} {r['floor_ratio']:.2f}x ({r['floor_ms']:,.1f} ms)"
                for r in (single, batch)
                if "floor_ratio" in r
            ]
            worst = max(r.get("floor_ratio", 0.0) for r in (single, batch))
            parts.append(
                "server time over the plan's op-count floor: "
                + ", ".join(shares)
                + f" (target <= {FLOOR_TARGET}: {verdict(worst <= FLOOR_TARGET)})"
            )
        http_single = find(rows, model, HTTP, "single")
        linked = [
            f"{label} {r['e2e_link_ms']:,.0f} ms per {'row' if r['layout'] == 'single' else 'call'}"
            for label, r in (
                ("single", http_single),
                ("TenSEAL naive single", naive),
                (f"batch of {e2e['rows_per_call']:,}", e2e),
            )
            if r and "e2e_link_ms" in r
        ]
        if linked:
            parts.append(f"end to end at {LINK_LABEL}: " + ", ".join(linked))
        out.append(f"{model}: " + "; ".join(parts))
    return out


def agreement_lines(rows: list[dict]) -> list[str]:
    """The worst agreement of each kind of workload: what a reader checks first."""
    out = []
    for role, label in (
        (INPROCESS, "service, server side"),
        (COMPACT, "service, server side with compact rotation keys"),
        (HTTP, END_TO_END),
        (BASELINE, "TenSEAL naive"),
    ):
        measured = [r for r in rows if r["role"] == role and "agreement" in r]
        if not measured:
            continue
        worst = min(measured, key=lambda r: r["agreement"])
        err = max(measured, key=lambda r: r["max_abs_error"])
        total = sum(r["agreement_rows"] for r in measured)
        if worst["agreement"] == 1.0:
            agree = (
                f"predictions agree with plaintext on every row compared ({total:,} rows, {len(measured)} workloads)"
            )
        else:
            agree = (
                f"predictions agree with plaintext on {100 * worst['agreement']:.1f}% of rows at worst "
                f"({worst['model']}, {worst['layout']}, {worst['agreement_rows']:,} rows)"
            )
        out.append(f"{label}: {agree}; largest abs error {err['max_abs_error']:.1e} ({err['model']}, {err['layout']})")
    return out


def sweep_table(points: list[dict]) -> str:
    lines = ["| model | workload | layout | rows/call | calls | median ms | rows/s |", "|" + "---|" * 7]
    for p in points:
        cells = [
            p["model"],
            p["workload"],
            p["layout"],
            fmt(p["rows_per_call"]),
            fmt(p["calls"]),
            fmt(p["median_ms"]),
            fmt(p["rows_per_s"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


COLUMNS = (
    "Columns: *rows/call* and *calls* are the rows in each timed call and the number of timed calls (with few "
    "calls, p95 is close to the maximum); *slowdown vs plaintext* is plaintext rows/s over this workload's, same "
    "model and layout; *speedup vs TenSEAL* is this workload's rows/s over TenSEAL naive's in the same layout "
    "(*vs single*: TenSEAL one row at a time); *bytes up/row* is ciphertext bytes sent per row; *bytes down/row* "
    "the result bytes sent back per row (the service: its serialized responses, measured; TenSEAL: its serialized "
    "result vectors; a batch's bytes divided by its rows); "
    f"*{LINK_COLUMN}* is the time of one call for a client on a link of {LINK_BITS_PER_S / 1e6:.0f} Mbit/s "
    f"with a {RTT_S * 1e3:.0f} ms round trip, from the measured numbers: e2e_link = measured loopback end-to-end "
    f"time + (bytes up + bytes down) x 8 / {LINK_BITS_PER_S / 1e6:.0f} Mbit/s + {RTT_S * 1e3:.0f} ms per request "
    "(the service over HTTP: its request and response bodies as measured on the wire, and the SDK's requests; "
    "TenSEAL naive: its in-process time, without transport or decryption, in place of the loopback time, "
    "one request per call; evaluation keys, sent once, are not counted); "
    "*eval keys B* the public evaluation keys for this layout, sent once (0: it needs none): the service's "
    "as its key store holds them (parsed and re-serialized, seeds expanded: about twice the upload), "
    "TenSEAL's serialized public context; "
    "*server / floor* the server-side time over the plan's op-count floor (its operations priced at "
    "micro-benchmarked rates, for a batch per chunk of rows; target <= "
    f"{FLOOR_TARGET}x); *agreement* is the share of rows whose "
    "prediction is the plaintext one (same label for a classifier, every output within 1e-3 relative for a "
    "regression), out of that many rows; *max abs err* the largest difference of a raw output (logit or value) "
    "from plaintext."
)


def markdown(report: dict) -> str:
    header = report["header"]
    text = "\n".join(f"- {k}: {v}" for k, v in header.items() if k not in ("cpu", "cores"))
    text += "\n- settings: " + report["settings"]["description"]
    if report["results"]:  # (a run of some models only may have no linear model, or no network)
        text += "\n\nLinear models:\n\n" + table(report["results"]) + "\n\n"
        text += "\n".join(f"- {line}" for line in report["ratios"] + notes(report["results"]))
    if report["networks"]:
        text += "\n\nNetworks:\n\n" + table(report["networks"], floor=True) + "\n\n"
        text += "\n".join(f"- {line}" for line in report["network_ratios"] + notes(report["networks"]))
    text += "\n\n" + COLUMNS
    text += "\n\nAgreement with plaintext:\n\n" + "\n".join(f"- {line}" for line in report["agreement"])
    if report["sweeps"]:
        text += "\n\nRows/s against rows per call:\n\n" + sweep_table(report["sweeps"])
    text += "\n\nPlots:\n\n" + "\n".join(f"- `{name}`: {what}" for name, what in PLOTS.items())
    text += "\n\n" + " ".join(f"![{name}]({name})" for name in PLOTS)
    return text + "\n"


def summary_table(rows: list[dict]) -> str:
    """One line per model and layout: plaintext against encrypted, latency and throughput."""
    head = (
        "| model | layout | rows/call | plaintext ms | TenSEAL naive ms | server side ms | over HTTP ms "
        "| HTTP slowdown vs plaintext | plaintext rows/s | HTTP rows/s | agreement (HTTP) |"
    )
    lines = [head, "|" + "---|" * 11]
    for model in dict.fromkeys(r["model"] for r in rows):
        for layout in LAYOUTS:
            by = {role: find(rows, model, role, layout) for role in ROLES}
            http, plain = by[HTTP], by[PLAINTEXT]
            if http is None or plain is None:
                continue
            cells = [
                model,
                layout,
                fmt(http["rows_per_call"]),
                fmt(plain["median_ms"]),
                fmt(by[BASELINE]["median_ms"]) if by[BASELINE] else "not measured",
                fmt(by[INPROCESS]["median_ms"]) if by[INPROCESS] else "",
                fmt(http["median_ms"]),
                ratio(http.get("slowdown_vs_plaintext")),
                fmt(plain["rows_per_s"]),
                fmt(http["rows_per_s"]),
                f"{100 * http['agreement']:.1f}%",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
