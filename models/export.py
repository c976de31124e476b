"""Export trained models into served artifacts: torch networks and scikit-learn linear models.

The artifact is a JSON manifest plus weights in a pickle-free .npz. A network becomes a list
of layers the server compiles: `dense` (W, b), then any number of (`act`, `dense`) pairs, the
activation computing u*(u + beta); whether that depth fits the encryption parameters is the
engine's decision, not the exporter's. Every linear torch layer (Conv2d, AvgPool2d, BatchNorm in
eval mode) is folded into a dense matrix for the known input shape: the client sends the raw
pixels, not im2col patches (im2col would multiply what the client encrypts and uploads by the
kernel size, for the same products on the server), and adjacent linear maps collapse into one
matrix, one encrypted matrix product.
torch is needed here, never by the server at run time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from heserve.models import artifact


class ExportError(ValueError):
    """A model that cannot be served encrypted; the message names the layer and the reason."""


# --- inputs: names, training ranges, preprocessing -----------------------------------------------
def input_ranges(x_train: Any, n_features: int) -> dict:
    """Each raw feature's min and max over the training rows, as the manifest records them.

    The SDK compares what an application sends with these ranges and warns when the inputs are far
    outside them (standardized twice, other units, another column order): predictions there are
    extrapolations the model gives as confidently as any other.
    """
    x = np.asarray(x_train, dtype=np.float64)
    if x.ndim == 0 or len(x) == 0:
        raise ExportError("x_train has no rows")
    x = x.reshape(len(x), -1)
    if x.shape[1] != n_features:
        raise ExportError(f"x_train has {x.shape[1]} features per row, the model takes {n_features}")
    if not np.all(np.isfinite(x)):
        raise ExportError("x_train contains NaN or infinite values")
    return {"min": x.min(axis=0).tolist(), "max": x.max(axis=0).tolist()}


def _input_names(explicit: Sequence[str] | None, fitted: Sequence[str] | None, n_features: int) -> list[str]:
    if explicit is not None:
        if len(explicit) != n_features:
            raise ExportError(f"input_names has {len(explicit)} names, the model takes {n_features} features")
        return [str(n) for n in explicit]
    if fitted is not None and len(fitted) == n_features:
        return [str(n) for n in fitted]
    return [f"x{i}" for i in range(n_features)]


class _Required:
    """The default of an argument that must be given: leaving it out gets an explanation, not just its name."""

    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Any = _Required()
PREPROCESS_HELP = (
    "pass preprocess= one of: the fitted sklearn StandardScaler the network was trained behind; "
    "a mapping {'mean': [...], 'scale': [...]} with one entry per input (the client sends (x - mean) / scale); "
    "or the string 'none' when the network was trained on the raw features"
)


def _standard_scaler_class() -> type | None:
    try:
        from sklearn.preprocessing import StandardScaler
    except ImportError:  # without scikit-learn nothing can be a StandardScaler
        return None
    return StandardScaler


def _check_preprocess_kind(preprocess: Any) -> None:
    """Refuse a missing or unrecognized preprocess before any work: it decides what every caller must send."""
    if preprocess is _REQUIRED:
        raise TypeError(f"torch_to_artifact() needs to know the preprocessing the network was trained behind: "
                        f"{PREPROCESS_HELP}")
    if isinstance(preprocess, str):
        if preprocess != "none":
            raise ValueError(f"preprocess={preprocess!r} is not understood: {PREPROCESS_HELP}")
        return
    scaler_class = _standard_scaler_class()
    if isinstance(preprocess, Mapping) or (scaler_class is not None and isinstance(preprocess, scaler_class)):
        return
    raise TypeError(f"preprocess={preprocess!r} ({type(preprocess).__name__}) is not understood: {PREPROCESS_HELP}")


def _preprocess_manifest(preprocess: Any, n_features: int) -> dict:
    """The manifest's preprocess entry for one of the accepted forms, checked against the input width."""
    _check_preprocess_kind(preprocess)
    if isinstance(preprocess, str):
        return {"type": "identity"}
    if isinstance(preprocess, Mapping):
        keys = set(preprocess) - {"type"}
        if keys != {"mean", "scale"} or preprocess.get("type", "standardize") != "standardize":
            raise ValueError(f"preprocess mapping has the keys {sorted(preprocess)}; it must have exactly 'mean' "
                             f"and 'scale' (for no preprocessing pass the string 'none'): {PREPROCESS_HELP}")
        where = "preprocess"
        mean, scale = preprocess["mean"], preprocess["scale"]
    else:
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(preprocess)
        except NotFittedError:
            raise ValueError("preprocess is a StandardScaler that was never fitted: pass the scaler fitted on the "
                             "training rows (scaler.fit(X_train))") from None
        if preprocess.n_features_in_ != n_features:
            raise ValueError(f"preprocess is a StandardScaler fitted on {preprocess.n_features_in_} features, "
                             f"the network takes {n_features}")
        if not preprocess.with_mean and not preprocess.with_std:
            return {"type": "identity"}
        where = "preprocess StandardScaler"
        # with_mean/with_std False: the scaler still stores mean_ but does not subtract it (or scale_ is None).
        mean = preprocess.mean_ if preprocess.with_mean else np.zeros(n_features)
        scale = preprocess.scale_ if preprocess.with_std else np.ones(n_features)
    try:
        mean = np.asarray(mean, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: mean and scale must be lists of numbers, one per input") from None
    for label, values in (("mean", mean), ("scale", scale)):
        if values.shape != (n_features,):
            raise ValueError(f"{where}: {label} has shape {values.shape}, the network takes {n_features} inputs "
                             f"(one {label} per input)")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{where}: {label} contains NaN or infinite values")
    if np.any(scale <= 0):
        raise ValueError(f"{where}: every scale must be > 0 (inputs {np.flatnonzero(scale <= 0)[:5].tolist()} are not)")
    return {"type": "standardize", "mean": mean.tolist(), "scale": scale.tolist()}


# --- scikit-learn ---------------------------------------------------------------------------
def sklearn_to_artifact(estimator: Any, directory: Path, name: str, input_names: list[str] | None = None,
                        description: str = "", class_names: list[str] | None = None,
                        output_bound: float | None = None, x_sample: np.ndarray | None = None,
                        x_train: Any = None) -> dict:
    """LogisticRegression (binary or multinomial), LinearRegression, Ridge, optionally after a StandardScaler
    in a Pipeline, as a linear artifact.

    x_train: the raw training rows (what the estimator was fitted on); their per-feature min and max go
    into the manifest as `input_ranges`, for the SDK's out-of-range warning, and they bound the outputs
    when neither output_bound nor x_sample is given. The inputs are named after input_names, else after
    the estimator's feature_names_in_ (fitted on a DataFrame), else x0, x1, ...
    """
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    preprocess: dict = {"type": "identity"}
    model = estimator
    scaler = None
    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps]
        if len(steps) != 2 or not isinstance(steps[0], StandardScaler):
            raise ExportError("a Pipeline must be StandardScaler followed by the linear model")
        scaler, model = steps
        preprocess = _preprocess_manifest(scaler, scaler.n_features_in_)
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
    # A Pipeline answers feature_names_in_ from its first step; asking the steps too costs nothing and does not
    # depend on that delegation.
    fitted_names = next((getattr(candidate, "feature_names_in_", None) for candidate in (estimator, scaler, model)
                         if getattr(candidate, "feature_names_in_", None) is not None), None)
    names = _input_names(input_names, None if fitted_names is None else list(fitted_names), n_features)
    ranges = input_ranges(x_train, n_features) if x_train is not None else None
    if output_bound is None:
        if x_sample is None:
            x_sample = x_train
        if x_sample is None:
            raise ExportError("give output_bound, x_sample or x_train (rows to bound the outputs on)")
        scores = np.atleast_2d(estimator.decision_function(x_sample) if hasattr(estimator, "decision_function")
                               else estimator.predict(x_sample))
        output_bound = float(4 * np.max(np.abs(scores)))
    manifest = {
        "name": name, "version": "1", "kind": "linear", "task": task, "description": description,
        "input_names": names, "preprocess": preprocess, "postprocess": post, "output_bound": output_bound,
    }
    if ranges is not None:
        manifest["input_ranges"] = ranges
    artifact.save(directory, manifest, {"W": W.astype(np.float64), "b": b.astype(np.float64)})
    return manifest


# --- torch ------------------------------------------------------------------------------------
SUPPORTED_LAYERS = (
    "Linear, Conv2d, AvgPool2d, BatchNorm1d/BatchNorm2d (eval mode), Flatten, Unflatten, Dropout, Identity, "
    "Square and PolyActivation"
)
# Functions and methods a traced forward may call between layers (the rest is refused, named).
_RESHAPE_METHODS = frozenset({"view", "reshape", "flatten", "contiguous"})
_SHAPE_METHODS = frozenset({"size", "dim"})


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


def _fold_linear_map(where: str, fn, shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The matrix of a linear map without bias on one row of `shape`: its images of the basis vectors."""
    import torch

    size = int(np.prod(shape))
    with torch.no_grad():
        try:
            out = fn(torch.eye(size, dtype=torch.float64).reshape(size, *shape))
        except RuntimeError as exc:
            raise ExportError(f"{where}: cannot be applied to an input of shape {shape}: {exc}") from None
    return out.reshape(size, -1).T.numpy(), tuple(out.shape[1:])


def _fold_batchnorm(where: str, bn, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as the diagonal dense layer it is (normalize_layers merges it with a neighbour)."""
    import torch
    from torch import nn

    if bn.training:
        raise ExportError(f"{where}: in training mode it normalizes with each batch's statistics; "
                          "call model.eval() before exporting")
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError(f"{where}: without running statistics (track_running_stats=False) it normalizes with each "
                          "batch's statistics, which no fixed affine map reproduces")
    ranks = (1, 2) if isinstance(bn, nn.BatchNorm1d) else (3,)
    if len(shape) not in ranks or shape[0] != bn.num_features:
        expected = " or ".join(f"{r}-dimensional" for r in ranks)
        raise ExportError(f"{where}: needs a {expected} input with {bn.num_features} channels first, "
                          f"gets shape {shape}")
    with torch.no_grad():
        scale = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
    per_channel = int(np.prod(shape[1:]))
    return np.diag(np.repeat(scale.numpy(), per_channel)), np.repeat(shift.numpy(), per_channel)


def _reshaped(where: str, shape: tuple[int, ...], fn) -> tuple[int, ...]:
    """Shape after a view/reshape/flatten: rows keep their values in order, only the per-row shape changes."""
    import torch

    rows = 2  # more than one, so that merging the batch into the features shows
    try:
        out = fn(torch.zeros(rows, *shape))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ExportError(f"{where}: cannot reshape an input of shape {shape}: {exc}") from None
    if out.dim() == 0 or out.shape[0] != rows or out.numel() != rows * int(np.prod(shape)):
        raise ExportError(f"{where}: reshapes across rows (the first dimension must stay the batch)")
    return tuple(out.shape[1:])


def _fold_module(layers: list[dict], where: str, module: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Append the dense/poly layers of one torch module to `layers`; returns the shape of its output."""
    import torch
    from torch import nn

    from heserve.models.nn import PolyActivation, Square

    if isinstance(module, nn.Linear):
        if int(np.prod(shape)) != module.in_features:
            raise ExportError(f"{where}: expects {module.in_features} inputs, gets {int(np.prod(shape))}")
        with torch.no_grad():
            W = module.weight.double().numpy().copy()
            b = module.bias.double().numpy().copy() if module.bias is not None else np.zeros(module.out_features)
        layers.append({"type": "dense", "W": W, "b": b, "source": where})
        return (module.out_features,)
    if isinstance(module, nn.Conv2d):
        if len(shape) != 3:
            raise ExportError(f"{where}: needs a (channels, height, width) input, gets shape {shape}")
        if module.padding_mode != "zeros":
            raise ExportError(f"{where}: only zero padding can be folded into a dense layer")
        if shape[0] != module.in_channels:
            raise ExportError(f"{where}: expects {module.in_channels} input channels, gets shape {shape}")
        W, b, shape = _fold_conv(module, shape)
        layers.append({"type": "dense", "W": W, "b": b, "source": where})
        return shape
    if isinstance(module, nn.AvgPool2d):
        if len(shape) != 3:
            raise ExportError(f"{where}: needs a (channels, height, width) input, gets shape {shape}")
        W, shape = _fold_linear_map(where, module, shape)
        layers.append({"type": "dense", "W": W, "b": np.zeros(W.shape[0]), "source": where})
        return shape
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        W, b = _fold_batchnorm(where, module, shape)
        layers.append({"type": "dense", "W": W, "b": b, "source": where})
        return shape
    if isinstance(module, nn.Flatten | nn.Unflatten):
        return _reshaped(where, shape, module)
    if isinstance(module, Square):
        layers.append({"type": "poly", "a": 1.0, "b": 0.0, "c": 0.0, "source": where})
        return shape
    if isinstance(module, PolyActivation):
        with torch.no_grad():
            layers.append({"type": "poly", "a": float(module.a), "b": float(module.b), "c": float(module.c),
                           "source": where})
        return shape
    if isinstance(module, nn.Identity | nn.Dropout):
        return shape
    raise ExportError(f"{where} cannot be evaluated on ciphertexts: only {SUPPORTED_LAYERS} are supported "
                      "(other non-linearities are not polynomials)")


def _sequential_modules(model: Any, prefix: str = ""):
    from torch import nn

    for index, module in enumerate(model):
        if isinstance(module, nn.Sequential):
            yield from _sequential_modules(module, f"{prefix}{index}.")
        else:
            yield f"layer {prefix}{index} ({type(module).__name__})", module


def torch_layers(model: Any, input_shape: tuple[int, ...]) -> list[dict]:
    """Walk a torch network into dense/poly layers, folding every linear layer for the given input shape.

    An nn.Sequential (nested ones included) is walked module by module; any other nn.Module is
    traced with torch.fx and must compute a straight chain (see _traced_layers).
    """
    from torch import nn

    from heserve.models.nn import PolyActivation, Square

    if not isinstance(model, nn.Module):
        raise ExportError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(model, nn.Sequential) and (
        type(model).__module__.startswith("torch.nn.") or isinstance(model, Square | PolyActivation)
    ):
        # A single layer: tracing it would expose its functional internals (F.linear on its own weights).
        model = nn.Sequential(model)
    if not isinstance(model, nn.Sequential):
        return _traced_layers(model, tuple(input_shape))
    layers: list[dict] = []
    shape = tuple(input_shape)
    for where, module in _sequential_modules(model):
        shape = _fold_module(layers, where, module, shape)
    return layers


# --- torch.fx: a plain nn.Module whose forward is a chain -----------------------------------------
def _is_shape_query(node) -> bool:
    """x.size(0), x.shape[0], x.dim(): read the shape, not the values, so they do not make a branch."""
    import operator

    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in ("shape", "ndim")
    if node.op == "call_function" and node.target is operator.getitem:
        source = node.args[0]
        return hasattr(source, "op") and _is_shape_query(source)
    return False


def _is_square(node, current) -> bool:
    """x * x, x ** 2, torch.square(x) and their method and torch.* spellings."""
    import operator

    import torch

    method = node.op == "call_method"
    function = node.op == "call_function"
    if node.kwargs:
        return False
    if (function and node.target in (operator.mul, torch.mul)) or (method and node.target == "mul"):
        return len(node.args) == 2 and node.args[0] is current and node.args[1] is current
    if (function and node.target in (operator.pow, torch.pow)) or (method and node.target == "pow"):
        return len(node.args) == 2 and node.args[0] is current and node.args[1] in (2, 2.0)
    if (function and node.target is torch.square) or (method and node.target == "square"):
        return tuple(node.args) == (current,)
    return False


def _is_reshape(node) -> bool:
    import torch

    if node.op == "call_method":
        return node.target in _RESHAPE_METHODS
    return node.op == "call_function" and node.target in (torch.flatten, torch.reshape)


def _describe(node, model: Any) -> str:
    if node.op == "call_module":
        return type(model.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_function":
        module = getattr(node.target, "__module__", None) or ""
        module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(module, module)
        name = getattr(node.target, "__name__", repr(node.target))
        return f"{module}.{name}" if module and module != "builtins" else name
    if node.op == "get_attr":
        return f"attribute self.{node.target}"
    return node.op


def _evaluate(node, values: dict):
    """Run one traced node on stand-in tensors (zeros of the right shapes): only shapes are wanted."""
    import torch.fx

    def value(arg):
        if arg in values:
            return values[arg]
        if _is_shape_query(arg):
            return _evaluate(arg, values)
        raise ExportError(f"node {node.name}: depends on node {arg.name}, which is not part of the chain")

    args = torch.fx.node.map_arg(node.args, value)
    kwargs = torch.fx.node.map_arg(node.kwargs, value)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _traced_layers(model: Any, input_shape: tuple[int, ...]) -> list[dict]:
    """Trace a module's forward with torch.fx and fold its nodes in order.

    The graph must be a chain: one input, every node consumes the previous node's output and only
    it (x * x reads it twice, through one node), and no node's output feeds two later ones (no skip
    connection, no parallel branch). Shape reads such as x.size(0) are not part of the chain.
    """
    import torch
    import torch.fx

    from heserve.models.nn import PolyActivation, Square

    class Tracer(torch.fx.Tracer):
        # The polynomial activations are layers of the artifact, not graphs of products to take apart.
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return isinstance(m, Square | PolyActivation) or super().is_leaf_module(m, qualname)

    name = type(model).__name__
    try:
        graph = Tracer().trace(model)
    except Exception as exc:  # tracing runs arbitrary user code: any failure means "not a traceable chain"
        raise ExportError(f"{name}: torch.fx cannot trace its forward ({type(exc).__name__}: {exc}); export an "
                          "nn.Sequential or a forward without data-dependent control flow") from None
    nodes = list(graph.nodes)
    inputs = [node for node in nodes if node.op == "placeholder"]
    if len(inputs) != 1:
        raise ExportError(f"{name}: forward takes {len(inputs)} inputs; exactly one tensor is supported")
    current, current_where = inputs[0], f"node {inputs[0].name} (input)"
    shapes = {current: tuple(input_shape)}
    layers: list[dict] = []
    for node in nodes:
        if node.op == "placeholder" or _is_shape_query(node):
            continue
        where = f"node {node.name} ({_describe(node, model)})"
        consumers = [user for user in current.users if not _is_shape_query(user)]
        if len(consumers) > 1:
            raise ExportError(
                f"{current_where}: its output is used by {len(consumers)} nodes "
                f"({', '.join(user.name for user in consumers)}): the graph branches (a skip connection or "
                "parallel paths); only a straight chain of layers can be exported"
            )
        if node.op == "output":
            if node.args[0] is not current:
                raise ExportError(f"{name}: forward must return the last node's tensor ({current.name}), it returns "
                                  f"{node.args[0]!r}")
            break
        if node.op == "get_attr":
            raise ExportError(f"{where}: a parameter or buffer used outside a layer; weights can only come from "
                              f"the layers ({SUPPORTED_LAYERS})")
        data_inputs = [arg for arg in node.all_input_nodes if not _is_shape_query(arg)]
        if data_inputs != [current]:
            got = ", ".join(arg.name for arg in data_inputs) or "nothing"
            raise ExportError(f"{where}: takes {got} instead of the previous node's output ({current.name}) alone; "
                              "only a straight chain of layers can be exported")
        shape = shapes[current]
        if node.op == "call_module":
            shapes[node] = _fold_module(layers, where, model.get_submodule(node.target), shape)
        elif _is_square(node, current):
            shapes[node] = _fold_module(layers, where, Square(), shape)
        elif _is_reshape(node):
            stand_ins = {data: torch.zeros(2, *data_shape) for data, data_shape in shapes.items()}

            def run(x, node=node, stand_ins=stand_ins, current=current):
                return _evaluate(node, {**stand_ins, current: x})

            shapes[node] = _reshaped(where, shape, run)
        else:
            raise ExportError(f"{where} cannot be evaluated on ciphertexts: between layers ({SUPPORTED_LAYERS}) "
                              "only flatten/view/reshape and x * x, x ** 2, torch.square are supported")
        current, current_where = node, where
    return layers


def normalize_layers(layers: list[dict]) -> list[dict]:
    """Fold adjacent dense layers and the scalars of each activation into dense weights.

    z = a*x^2 + b*x + c is computed as (1/a) * u*(u + b) + c with u = a*x: the previous dense
    layer is scaled by a, 1/a and c go into the next one, and the engine evaluates u*(u + beta)
    with a single ciphertext multiplication. A linear layer right after an activation (BatchNorm,
    AvgPool2d) takes the activation's 1/a and c first, then merges into the dense layers after it.
    The input dicts are not modified.
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
            out.append(dict(layer))
            continue
        if not out or out[-1]["type"] != "dense":
            raise ExportError(f"{layer['source']}: an activation must follow a Linear or Conv2d layer "
                              "(or AvgPool2d, BatchNorm): x^4 and other chained activations are not supported")
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
                      preprocess: Any | Mapping[str, Sequence[float]] | Literal["none"] = _REQUIRED,
                      x_sample: np.ndarray | None = None, x_train: Any = None, description: str = "",
                      postprocess: dict | None = None, input_names: list[str] | None = None,
                      training: dict | None = None) -> dict:
    """Export a torch network (nn.Sequential, or an nn.Module whose forward is a chain) of any depth.

    preprocess (required): what turns a raw row into the network's input, applied by the client before
    it encrypts, so that callers send raw features. Exactly one of a fitted sklearn StandardScaler, a
    mapping {"mean": [...], "scale": [...]} (x -> (x - mean) / scale, one entry per input), or the string
    "none" (the network takes the raw features). There is no default: a network trained on scaled
    inputs and served without its scaling answers every raw row confidently and wrongly.
    x_train: raw training rows (before preprocessing); their per-feature min and max go into the manifest
    as `input_ranges`, for the SDK's out-of-range warning.
    x_sample: already preprocessed rows that bound the activations; by default x_train preprocessed.
    The layers come out as dense (act dense)*; whether that depth fits the encryption parameters is
    left to the engine.
    """
    _check_preprocess_kind(preprocess)
    layers = normalize_layers(torch_layers(model, input_shape))
    if not layers:
        raise ExportError(f"{type(model).__name__}: no Linear, Conv2d, AvgPool2d or BatchNorm layer, nothing to serve")
    kinds = [layer["type"] for layer in layers]
    # normalize_layers already guarantees it; a regression there must not produce an unservable artifact.
    if kinds[0::2] != ["dense"] * len(kinds[0::2]) or kinds[1::2] != ["act"] * len(kinds[1::2]) or len(kinds) % 2 == 0:
        raise ExportError(f"unsupported layer structure {kinds}")
    dense = [layer for layer in layers if layer["type"] == "dense"]
    n_in = dense[0]["W"].shape[1]
    pre = _preprocess_manifest(preprocess, n_in)
    names = _input_names(input_names, None, n_in)
    ranges = input_ranges(x_train, n_in) if x_train is not None else None
    if x_sample is None:
        if x_train is None:
            raise ExportError("give x_sample (preprocessed rows) or x_train (raw rows) to bound the activations on")
        x_sample = _apply_preprocess(np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1), pre)
    elif x_train is not None and pre["type"] != "identity":
        sample = np.asarray(x_sample, dtype=np.float64).reshape(len(x_sample), -1)
        raw = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
        raw_given = sample.shape == raw.shape and np.allclose(sample, raw)
        if raw_given and not np.allclose(sample, _apply_preprocess(raw, pre)):
            # Raw rows would size every scale for values the served network never sees.
            raise ExportError("x_sample holds the raw x_train rows, but x_sample must be preprocessed; "
                              "leave x_sample out: it defaults to x_train preprocessed")
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
    manifest = {
        "name": name, "version": "1", "kind": "network", "description": description,
        "input_shape": list(input_shape), "input_names": names,
        "layers": spec, "preprocess": pre,
        "postprocess": postprocess or {"type": "identity"},
        "output_bound": bounds[-1], "training": training or {},
    }
    if ranges is not None:
        manifest["input_ranges"] = ranges
    artifact.save(directory, manifest, arrays)
    return manifest


def _apply_preprocess(x: np.ndarray, pre: dict) -> np.ndarray:
    if pre["type"] == "identity":
        return x
    return (x - np.asarray(pre["mean"])) / np.asarray(pre["scale"])


def _activation_bounds(layers: list[dict], x: np.ndarray) -> list[float]:
    bounds = []
    h = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    for layer in layers:
        h = h @ layer["W"].T + layer["b"] if layer["type"] == "dense" else h * (h + layer["beta"])
        bounds.append(float(4 * np.max(np.abs(h)) + 1e-9))
    return bounds
