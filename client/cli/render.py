"""What the command line prints: prediction columns, the model listing, and short quoted text for messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from heserve.client import postprocess
from heserve.client.client import RemoteModel

MAX_LISTED = 8  # names and bad cells quoted in one error message
CLASSIFIER_POSTPROCESS = ("sigmoid", "softmax", "argmax")


def one_line(text: str, limit: int = 400) -> str:
    """`text` with its whitespace collapsed, cut to `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    """The first `limit` names, quoted and comma-separated, with a count of the rest."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --- predictions -----------------------------------------------------------------------------
def task_of(metadata: dict) -> str:
    """The model's task as its metadata states it, else as its postprocessing implies."""
    parameters = metadata.get("parameters", {})
    task = parameters.get("task")
    if task:
        return str(task)
    kind = parameters.get("postprocess", {}).get("type", "identity")
    if kind == "sigmoid":
        return "binary-classification"
    if kind in ("softmax", "argmax"):
        return "classification"
    return "regression"


def is_classifier(model: RemoteModel) -> bool:
    return model.metadata.get("parameters", {}).get("postprocess", {}).get("type") in CLASSIFIER_POSTPROCESS


def output_names(model: RemoteModel) -> list[str]:
    """Column names of a regression's outputs: the manifest's names, else prediction / output_<k>."""
    names = model.metadata.get("parameters", {}).get("postprocess", {}).get("output_names")
    if isinstance(names, list) and len(names) == model.n_outputs and all(isinstance(n, str) and n for n in names):
        return list(names)
    return ["prediction"] if model.n_outputs == 1 else [f"output_{k}" for k in range(model.n_outputs)]


def fmt(value: Any) -> str:
    """A CSV cell: integers as such, floats to 8 significant digits."""
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (np.floating, float)):
        return f"{float(value):.8g}"
    return str(value)


def prediction_table(model: RemoteModel, scores: np.ndarray, proba: bool) -> tuple[list[str], list[list[str]]]:
    """The output columns and rows for raw scores (rows, outputs)."""
    spec = model.metadata.get("parameters", {}).get("postprocess", {"type": "identity"})
    if not is_classifier(model):
        values = scores.reshape(len(scores), -1)
        return output_names(model), [[fmt(v) for v in row] for row in values]
    labels = postprocess.labels(scores, spec)
    classes = list(spec.get("classes", range(max(2, scores.shape[1]))))
    class_names = spec.get("class_names")
    named = isinstance(class_names, list) and len(class_names) == len(classes)
    columns = ["prediction"] + (["prediction_name"] if named else [])
    probabilities = postprocess.probabilities(scores, spec) if proba else None
    if probabilities is not None:
        columns += [f"proba_{fmt(c)}" for c in classes]
    rows = []
    for r, label in enumerate(labels):
        row = [fmt(label)]
        if named:
            row.append(str(class_names[classes.index(label)]) if label in classes else "")
        if probabilities is not None:
            row += [fmt(p) for p in probabilities[r]]
        rows.append(row)
    return columns, rows


# --- models ------------------------------------------------------------------------------------
def describe_model(metadata: dict) -> dict:
    """One entry of `heserve models --json`, from the server's metadata of a model."""
    parameters = metadata.get("parameters", {})
    post = parameters.get("postprocess", {})
    encryption = parameters.get("encryption", {}) if isinstance(parameters.get("encryption"), dict) else {}
    names = list(parameters.get("input_names", []))
    entry: dict[str, Any] = {
        "name": metadata.get("name"),
        "version": (metadata.get("versions") or [None])[0],
        "platform": metadata.get("platform"),
        "task": task_of(metadata),
        "description": parameters.get("description", ""),
        "n_inputs": encryption.get("n_features", len(names)),
        "input_names": names,
        "n_outputs": encryption.get("n_outputs"),
        "layouts": sorted(encryption.get("layouts", {})),
    }
    if post.get("type") in CLASSIFIER_POSTPROCESS:
        entry["classes"] = post.get("classes")
        if post.get("class_names"):
            entry["class_names"] = post["class_names"]
    elif post.get("output_names"):
        entry["output_names"] = post["output_names"]
    return entry


def abbreviate(names: list[str], width: int = 60) -> str:
    """The input names within `width` characters; the last one is always kept."""
    if not names:
        return "(not published)"
    text = ", ".join(names)
    if len(text) <= width:
        return text
    shown: list[str] = []
    for name in names[:-1]:
        if len(", ".join([*shown, name, "...", names[-1]])) > width:
            break
        shown.append(name)
    return ", ".join([*shown, "...", names[-1]])


def outputs_text(entry: dict) -> str:
    """The OUTPUTS cell of the model listing."""
    if "classes" in entry:
        classes = entry.get("classes") or []
        names = entry.get("class_names")
        if names and len(names) == len(classes):
            return ", ".join(f"{c}={n}" for c, n in zip(classes, names, strict=True))
        return f"{len(classes)} classes" if len(classes) > 4 else ", ".join(str(c) for c in classes)
    if entry.get("output_names"):
        return ", ".join(entry["output_names"])
    return "1 value" if entry.get("n_outputs") == 1 else f"{entry.get('n_outputs')} values"


def render_models(entries: list[dict]) -> str:
    """The model listing as an aligned text table."""
    header = ["MODEL", "TASK", "INPUTS", "OUTPUTS", "INPUT NAMES (in order)"]
    rows = [
        [str(e["name"]), e["task"], str(e["n_inputs"]), outputs_text(e), abbreviate(e["input_names"])] for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return "\n".join(lines)
