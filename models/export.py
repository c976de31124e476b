"""Export trained models into served artifacts: torch networks and scikit-learn linear models.

The artifact is a JSON manifest plus weights in a pickle-free .npz. A network becomes
a list of layers the server compiles: `dense` (W, b) and `poly` (a, b, c). Conv2d is
linear, so it is folded into a dense matrix for the known input shape: the client
sends the raw pixels, not im2col patches (im2col would multiply what the client
encrypts and uploads by the kernel size, for the same products on the server).
torch is needed here, never by the server at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from heserve.models import artifact

MAX_DENSE_LAYERS = 2  # one hidden polynomial activation: the depth the engine packs without masking


class ExportError(ValueError):
    """A model that cannot be served encrypted; the message names the layer and the reason."""


# --- scikit-learn ---------------------------------------------------------------------------
def sklearn_to_artifact(estimator: Any, directory: Path, name: str, input_names: list[str] | None = None,
                        description: str = "", class_names: list[str] | None = None,
                        output_bound: float | None = None, x_sample: np.ndarray | None = None) -> dict:
    """LogisticRegression (binary or multinomial), LinearRegression, Ridge, optionally after a StandardScaler
    in a Pipeline, as a linear artifact."""
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    preprocess: dict = {"type": "identity"}
    model = estimator
    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps]
        if len(steps) != 2 or not isinstance(steps[0], StandardScaler):
            raise ExportError("a Pipeline must be StandardScaler followed by the linear model")
        scaler, model = steps
        preprocess = {"type": "standardize", "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()}
    if isinstance(model, LogisticRegression):
        W, b = np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_)
        classes = model.classes_.tolist()
        if W.shape[0] == 1:
            task, post = "binary-classification", {"type": "sigmoid", "threshold": 0.5, "classes": classes}
        else:
            task, post = "classification", {"type": "softmax", "classes": classes}
        if class_names:
            post["class_names"] = class_names
    elif isinstance(model, (LinearRegression, Ridge)):
        W = np.atleast_2d(model.coef_)
        b = np.broadcast_to(np.atleast_1d(model.intercept_), (W.shape[0],)).copy()
        task, post = "regression", {"type": "identity"}
    else:
        raise ExportError(f"{type(model).__name__} is not supported: export LogisticRegression, "
                          "LinearRegression or Ridge")
    n_features = W.shape[1]
    if output_bound is None:
        if x_sample is None:
            raise ExportError("give output_bound or x_sample (rows to bound the outputs on)")
        scores = np.atleast_2d(estimator.decision_function(x_sample) if hasattr(estimator, "decision_function")
                               else estimator.predict(x_sample))
        output_bound = float(4 * np.max(np.abs(scores)))
    manifest = {
        "name": name, "version": "1", "kind": "linear", "task": task, "description": description,
        "input_names": input_names or [f"x{i}" for i in range(n_features)],
        "preprocess": preprocess, "postprocess": post, "output_bound": output_bound,
    }
    artifact.save(directory, manifest, {"W": W.astype(np.float64), "b": b.astype(np.float64)})
    return manifest


# --- torch ------------------------------------------------------------------------------------
def _fold_conv(conv, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    import torch

    size = int(np.prod(shape))
    with torch.no_grad():
        basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
        weight = conv.weight.double()
        out = torch.nn.functional.conv2d(basis, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        out_shape = tuple(out.shape[1:])
        W = out.reshape(size, -1).T.numpy()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros(out_shape[0], dtype=torch.float64)
        b = bias.repeat_interleave(out_shape[1] * out_shape[2]).numpy()
    return W, b, out_shape


def torch_layers(model: Any, input_shape: tuple[int, ...]) -> list[dict]:
    """Walk an nn.Sequential into dense/poly layers, folding Conv2d for the given input shape."""
    import torch
    from torch import nn

    from heserve.models.nn import PolyActivation, Square

    if not isinstance(model, nn.Sequential):
        raise ExportError(f"expected torch.nn.Sequential, got {type(model).__name__}")
    layers: list[dict] = []
    shape = tuple(input_shape)
    for index, module in enumerate(model):
        where = f"layer {index} ({type(module).__name__})"
        if isinstance(module, nn.Linear):
            if int(np.prod(shape)) != module.in_features:
                raise ExportError(f"{where}: expects {module.in_features} inputs, gets {int(np.prod(shape))}")
            with torch.no_grad():
                W = module.weight.double().numpy().copy()
                b = (module.bias.double().numpy().copy() if module.bias is not None
                     else np.zeros(module.out_features))
            layers.append({"type": "dense", "W": W, "b": b, "source": where})
            shape = (module.out_features,)
        elif isinstance(module, nn.Conv2d):
            if len(shape) != 3:
                raise ExportError(f"{where}: needs a (channels, height, width) input, gets shape {shape}")
            if module.padding_mode != "zeros":
                raise ExportError(f"{where}: only zero padding can be folded into a dense layer")
            W, b, shape = _fold_conv(module, shape)
            layers.append({"type": "dense", "W": W, "b": b, "source": where})
        elif isinstance(module, nn.Flatten):
            shape = (int(np.prod(shape)),)
        elif isinstance(module, Square):
            layers.append({"type": "poly", "a": 1.0, "b": 0.0, "c": 0.0, "source": where})
        elif isinstance(module, PolyActivation):
            with torch.no_grad():
                layers.append({"type": "poly", "a": float(module.a), "b": float(module.b), "c": float(module.c),
                               "source": where})
        elif isinstance(module, nn.Identity | nn.Dropout):
            continue
        else:
            raise ExportError(
                f"{where} cannot be evaluated on ciphertexts: only Linear, Conv2d, Flatten, Square and "
                "PolyActivation are supported (other non-linearities are not polynomials)"
            )
    return layers


def normalize_layers(layers: list[dict]) -> list[dict]:
    """Fold adjacent dense layers and the scalars of each activation into dense weights.

    z = a*x^2 + b*x + c is computed as (1/a) * u*(u + b) + c with u = a*x: the previous dense
    layer is scaled by a, 1/a and c go into the next one, and the engine evaluates u*(u + beta)
    with a single ciphertext multiplication.
    """
    out: list[dict] = []
    for layer in layers:
        if layer["type"] == "dense":
            if out and out[-1]["type"] == "dense":
                prev = out.pop()
                layer = {"type": "dense", "W": layer["W"] @ prev["W"], "b": layer["W"] @ prev["b"] + layer["b"],
                         "source": f"{prev['source']} + {layer['source']}"}
            if out and out[-1]["type"] == "pending":
                act = out.pop()
                layer = {"type": "dense", "W": layer["W"] / act["a"],
                         "b": layer["b"] + layer["W"] @ np.full(layer["W"].shape[1], act["c"]),
                         "source": layer["source"]}
            out.append(layer)
            continue
        if not out or out[-1]["type"] != "dense":
            raise ExportError(f"{layer['source']}: an activation must follow a Linear or Conv2d layer")
        a, b, c = layer["a"], layer["b"], layer["c"]
        if a == 0.0:  # linear: fold b*x + c into the previous layer
            prev = out[-1]
            prev["W"], prev["b"] = prev["W"] * b, prev["b"] * b + c
            continue
        prev = out[-1]
        prev["W"], prev["b"] = prev["W"] * a, prev["b"] * a
        out.append({"type": "act", "beta": float(b), "source": layer["source"]})
        out.append({"type": "pending", "a": a, "c": c, "source": layer["source"]})
    if out and out[-1]["type"] == "pending":
        raise ExportError(f"{out[-1]['source']}: the network must end with a Linear layer, not an activation")
    return [layer for layer in out if layer["type"] != "pending"]


def torch_to_artifact(model: Any, input_shape: tuple[int, ...], directory: Path, name: str, *,
                      x_sample: np.ndarray, description: str = "", preprocess: dict | None = None,
                      postprocess: dict | None = None, input_names: list[str] | None = None,
                      training: dict | None = None) -> dict:
    """Export a torch nn.Sequential; x_sample (already preprocessed rows) bounds the activations."""
    layers = normalize_layers(torch_layers(model, input_shape))
    dense = [layer for layer in layers if layer["type"] == "dense"]
    if len(dense) > MAX_DENSE_LAYERS:
        raise ExportError(
            f"{len(dense)} Linear/Conv2d layers after folding: at most {MAX_DENSE_LAYERS} (one hidden "
            "polynomial activation, multiplicative depth 3) are supported at 128-bit security here"
        )
    kinds = [layer["type"] for layer in layers]
    if kinds not in (["dense"], ["dense", "act", "dense"]):
        raise ExportError(f"unsupported layer structure {kinds}")
    bounds = _activation_bounds(layers, x_sample)
    arrays: dict[str, np.ndarray] = {}
    spec = []
    for i, layer in enumerate(layers):
        if layer["type"] == "dense":
            arrays[f"W{i}"], arrays[f"b{i}"] = layer["W"].astype(np.float64), layer["b"].astype(np.float64)
            spec.append({"type": "dense", "weights": f"W{i}", "bias": f"b{i}", "shape": list(layer["W"].shape),
                         "source": layer["source"], "output_bound": bounds[i]})
        else:
            spec.append({"type": "act", "beta": layer["beta"], "source": layer["source"],
                         "output_bound": bounds[i]})
    n_in = dense[0]["W"].shape[1]
    manifest = {
        "name": name, "version": "1", "kind": "network", "description": description,
        "input_shape": list(input_shape), "input_names": input_names or [f"x{i}" for i in range(n_in)],
        "layers": spec, "preprocess": preprocess or {"type": "identity"},
        "postprocess": postprocess or {"type": "identity"},
        "output_bound": bounds[-1], "training": training or {},
    }
    artifact.save(directory, manifest, arrays)
    return manifest


def _activation_bounds(layers: list[dict], x: np.ndarray) -> list[float]:
    bounds = []
    h = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    for layer in layers:
        h = h @ layer["W"].T + layer["b"] if layer["type"] == "dense" else h * (h + layer["beta"])
        bounds.append(float(4 * np.max(np.abs(h)) + 1e-9))
    return bounds
