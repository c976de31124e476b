"""PNG plots of a benchmark report (matplotlib, no display needed).

The figures are built on `matplotlib.figure.Figure` directly, not through pyplot, so they render
with the Agg canvas anywhere and display inline in a notebook as they are.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .linear import BASELINE, HTTP, INPROCESS, PLAINTEXT
from .report import PLOTS

STYLE = {
    PLAINTEXT: ("plaintext", "#7f7f7f"),
    BASELINE: ("TenSEAL naive", "#d62728"),
    INPROCESS: ("service, server side", "#1f77b4"),
    HTTP: ("service over HTTP (end to end)", "#2ca02c"),
}
LAYOUT_MARKER = {"single": ("o", "--"), "batch": ("s", "-")}
DPI = 110


def human_bytes(n: float) -> str:
    unit = "B"
    for larger in ("KB", "MB", "GB"):
        if n < 1000:
            break
        n, unit = n / 1000, larger
    return f"{n:.0f} {unit}" if n >= 10 or unit == "B" else f"{n:.1f} {unit}"


def human_ms(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    if ms >= 1:
        return f"{ms:.3g} ms"
    return f"{ms * 1000:.3g} µs"


def _grid(n: int, ncols: int = 3, width: float = 5.0, height: float = 4.0) -> tuple[Figure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows + 0.9), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def latency_figure(rows: list[dict]) -> Figure:
    """Median ms per call, per model, layout and workload; whiskers up to p95."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = _grid(len(models), ncols=2 if len(models) <= 4 else 3)
    width = 0.2
    for ax, model in zip(axes, models, strict=True):
        mine = [r for r in rows if r["model"] == model]
        ticks, missing = [], []
        for x, layout in enumerate(("single", "batch")):
            present = [r for r in mine if r["layout"] == layout]
            if not present:
                continue
            n = present[0]["rows_per_call"]
            ticks.append((x, f"{layout}\n{n:,} row{'s' if n > 1 else ''} per call"))
            for k, role in enumerate(STYLE):
                r = next((r for r in present if r["role"] == role), None)
                pos = x + (k - 1.5) * width
                if r is None:
                    if role == BASELINE:
                        missing.append(pos)
                    continue
                ax.bar(pos, r["median_ms"], width, color=STYLE[role][1], label=STYLE[role][0])
                ax.errorbar(
                    pos,
                    r["median_ms"],
                    yerr=[[0], [max(0.0, r["p95_ms"] - r["median_ms"])]],
                    color="black",
                    capsize=3,
                    linewidth=1,
                )
                ax.annotate(
                    human_ms(r["median_ms"]),
                    (pos, max(r["p95_ms"], r["median_ms"])),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                )
        ax.set_yscale("log")
        for pos in missing:
            ax.text(
                pos,
                0.03,
                "TenSEAL not measured",
                transform=ax.get_xaxis_transform(),
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=7,
                color=STYLE[BASELINE][1],
            )
        ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks])
        ax.set_title(model)
        ax.set_ylabel("ms per call")
        ax.grid(axis="y", which="major", alpha=0.3)
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 30)  # room for the labels
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles))
    fig.suptitle("Latency per call: median, whisker to p95 (log scale)")
    return fig


def throughput_figure(points: list[dict]) -> Figure:
    """Rows/s against rows per call, one panel per swept model."""
    models = list(dict.fromkeys(p["model"] for p in points)) or ["(no sweep)"]
    fig, axes = _grid(len(models), ncols=2, width=6.0, height=4.5)
    for ax, model in zip(axes, models, strict=True):
        mine = [p for p in points if p["model"] == model]
        series = dict.fromkeys((p["role"], p["layout"]) for p in mine)
        for role, layout in series:
            line = sorted(
                (p for p in mine if p["role"] == role and p["layout"] == layout), key=lambda p: p["rows_per_call"]
            )
            marker, style = LAYOUT_MARKER[layout]
            ax.plot(
                [p["rows_per_call"] for p in line],
                [p["rows_per_s"] for p in line],
                marker=marker,
                linestyle=style,
                color=STYLE[role][1],
                label=f"{STYLE[role][0]}, {layout}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlabel("rows per call")
        ax.set_ylabel("rows/s (median)")
        ax.set_title(model)
        ax.grid(which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Throughput against batch size")
    return fig


def sizes_figure(rows: list[dict]) -> Figure:
    """Ciphertext bytes uploaded per row, and evaluation keys uploaded once, per model and layout."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(max(9.0, 1.7 * len(models) + 2), 9.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 1)
    series = [(BASELINE, "single"), (HTTP, "single"), (BASELINE, "batch"), (HTTP, "batch")]
    colors = {
        (BASELINE, "single"): "#d62728",
        (HTTP, "single"): "#2ca02c",
        (BASELINE, "batch"): "#ff9896",
        (HTTP, "batch"): "#98df8a",
    }
    panels = (
        ("upload_bytes_per_row", "Ciphertext upload per row (a batch ciphertext is shared by its rows)"),
        (
            "eval_key_bytes",
            "Evaluation keys the layout needs, uploaded once per client (details: eval_keys in the JSON)",
        ),
    )
    width = 0.2
    for ax, (field, title) in zip(axes, panels, strict=True):
        for k, (role, layout) in enumerate(series):
            for x, model in enumerate(models):
                r = next((r for r in rows if r["model"] == model and r["role"] == role and r["layout"] == layout), None)
                if r is None or r.get(field) is None:
                    continue
                pos, value = x + (k - 1.5) * width, r[field]
                label = f"{'TenSEAL naive' if role == BASELINE else 'service'}, {layout}"
                if value == 0:
                    ax.text(
                        pos,
                        0.02,
                        "none",
                        transform=ax.get_xaxis_transform(),
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
                    continue
                ax.bar(pos, value, width, color=colors[(role, layout)], label=label)
                ax.annotate(
                    human_bytes(value),
                    (pos, value),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                )
        ax.set_yscale("log")
        ax.set_xticks(range(len(models)), models)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 20)
        handles = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
        ax.legend(handles.values(), handles.keys(), fontsize=8, loc="upper left", ncols=4)
    return fig


def figures(report: dict) -> dict[str, Figure]:
    rows = report["results"] + report["networks"]
    return {
        "latency.png": latency_figure(rows),
        "throughput.png": throughput_figure(report["sweeps"]),
        "sizes.png": sizes_figure(rows),
    }


def save(report: dict, out: Path) -> list[Path]:
    paths = []
    for name, fig in figures(report).items():
        assert name in PLOTS
        path = out / name
        fig.savefig(path, dpi=DPI)
        paths.append(path)
    return paths
