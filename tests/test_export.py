"""The torch exporter: folded linear layers, any depth, torch.fx chains, refusals, the shipped deep networks.

Everything runs in process on numpy: an exported network is evaluated the way its manifest
describes it (dense: h @ W.T + b, act: h * (h + beta)) and compared with torch's own forward.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional

from heserve.models import artifact
from heserve.models.export import ExportError, normalize_layers, torch_layers, torch_to_artifact
from heserve.models.nets import DIGIT_SCALE, digits_split
from heserve.models.nn import PolyActivation, Square

MODELS = Path(__file__).resolve().parent.parent / "models"
TOLERANCE = 1e-6


def manifest_steps(art: artifact.Artifact, x: np.ndarray) -> list[np.ndarray]:
    """Each layer's output, as the manifest defines the layers."""
    h = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    steps = []
    for layer in art.manifest["layers"]:
        if layer["type"] == "dense":
            h = h @ art.arrays[layer["weights"]].T + art.arrays[layer["bias"]]
        else:
            h = h * (h + layer["beta"])
        steps.append(h)
    return steps


def manifest_forward(art: artifact.Artifact, x: np.ndarray) -> np.ndarray:
    return manifest_steps(art, x)[-1]


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.randn(n, generator=generator))
                    module.bias.copy_(torch.randn(n, generator=generator))
    return model.eval()


def assert_export_matches_torch(model: nn.Module, input_shape: tuple[int, ...], tmp_path: Path,
                                rows: int = 7) -> artifact.Artifact:
    x = torch.randn(rows, *input_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch_to_artifact(model, input_shape, tmp_path / "m", "m", preprocess="none", x_sample=x.reshape(rows, -1).numpy())
    art = artifact.load(tmp_path / "m")
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x).reshape(rows, -1).numpy()
    got = manifest_forward(art, x.numpy())
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= TOLERANCE * max(1.0, float(np.max(np.abs(expected))))
    kinds = [layer["type"] for layer in art.manifest["layers"]]
    assert kinds == ["dense", "act"] * (len(kinds) // 2) + ["dense"]
    return art


def conv_net(*middle: nn.Module, channels: int = 3, input_shape=(1, 8, 8), tail: tuple = ()) -> nn.Sequential:
    """conv -> middle -> flatten -> Linear(?, 5) -> tail, with the Linear sized for what middle leaves."""
    torch.manual_seed(0)
    head = nn.Sequential(nn.Conv2d(input_shape[0], channels, 3, padding=1), *middle, nn.Flatten())
    with torch.no_grad():
        width = head(torch.zeros(1, *input_shape)).shape[1]
    return nn.Sequential(*head, nn.Linear(width, 5), *tail)


# --- folded layers -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pool",
    [
        nn.AvgPool2d(2),
        nn.AvgPool2d(3, stride=1, padding=1),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.AvgPool2d(3, stride=2, ceil_mode=True),
        nn.AvgPool2d((2, 3), stride=(2, 1), padding=(1, 0), divisor_override=5),
    ],
    ids=["2", "3-same", "3-s2-no-pad-count", "ceil", "rect-divisor"],
)
def test_avgpool_folds_like_torch(tmp_path, pool):
    model = conv_net(Square(), pool)
    assert_export_matches_torch(model, (1, 8, 8), tmp_path)


def test_avgpool_on_the_input_and_after_an_activation(tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(32, 6), PolyActivation(0.4, -0.3, 0.7),
                          nn.Unflatten(1, (1, 2, 3)), nn.AvgPool2d((2, 1)), nn.Flatten(), nn.Linear(3, 2))
    art = assert_export_matches_torch(model, (2, 8, 8), tmp_path)
    assert [layer["shape"] for layer in art.manifest["layers"] if layer["type"] == "dense"] == [[6, 128], [2, 6]]


def test_batchnorm1d_folds_before_after_and_first(tmp_path):
    torch.manual_seed(3)
    model = randomize_batchnorm(nn.Sequential(
        nn.BatchNorm1d(10), nn.Linear(10, 8), nn.BatchNorm1d(8), PolyActivation(0.2, 0.9, -0.4),
        nn.BatchNorm1d(8), nn.Linear(8, 4),
    ))
    art = assert_export_matches_torch(model, (10,), tmp_path)
    assert [layer["shape"] for layer in art.manifest["layers"] if layer["type"] == "dense"] == [[8, 10], [4, 8]]


def test_batchnorm1d_without_affine_and_at_the_end(tmp_path):
    torch.manual_seed(4)
    model = randomize_batchnorm(nn.Sequential(nn.Linear(6, 5), Square(), nn.BatchNorm1d(5, affine=False)))
    assert_export_matches_torch(model, (6,), tmp_path)


def test_conv_batchnorm2d_pool_chain(tmp_path):
    model = randomize_batchnorm(conv_net(nn.BatchNorm2d(4), Square(), nn.AvgPool2d(2), channels=4,
                                         tail=(nn.BatchNorm1d(5), PolyActivation(0.3, 0.5, 0.1), nn.Linear(5, 3))))
    art = assert_export_matches_torch(model, (1, 8, 8), tmp_path)
    shapes = [layer["shape"] for layer in art.manifest["layers"] if layer["type"] == "dense"]
    assert shapes == [[256, 64], [5, 256], [3, 5]]  # BN into the conv, pool and BN into the Linear after them


def test_batchnorm2d_after_an_activation_then_pool(tmp_path):
    model = randomize_batchnorm(conv_net(PolyActivation(0.5, -1.0, 2.0), nn.BatchNorm2d(2), nn.AvgPool2d(2),
                                         channels=2, input_shape=(3, 6, 6)))
    assert_export_matches_torch(model, (3, 6, 6), tmp_path)


def test_dropout_identity_and_nested_sequential_are_transparent(tmp_path):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.3)), nn.Identity(),
                          nn.Sequential(Square(), nn.Sequential(nn.Linear(6, 2)))).eval()
    art = assert_export_matches_torch(model, (4,), tmp_path)
    assert [layer["source"] for layer in art.manifest["layers"]] == ["layer 0.0 (Linear)", "layer 2.0 (Square)",
                                                                     "layer 2.1.0 (Linear)"]


def test_normalize_layers_leaves_its_input_alone():
    torch.manual_seed(6)
    layers = torch_layers(nn.Sequential(nn.Linear(3, 3), PolyActivation(2.0, 1.0, 1.0), nn.Linear(3, 1)), (3,))
    before = copy.deepcopy(layers)
    first = normalize_layers(layers)
    second = normalize_layers(layers)
    for a, b in zip(layers, before, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for a, b in zip(first, second, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)


# --- depth -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("activations", [2, 3, 4])
def test_deep_networks_export(tmp_path, activations):
    torch.manual_seed(activations)
    modules: list[nn.Module] = [nn.Linear(8, 6)]
    for i in range(activations):
        width = 6 if i < activations - 1 else 3
        modules += [Square() if i % 2 else PolyActivation(0.3, 0.2, -0.1), nn.Linear(6, width)]
    art = assert_export_matches_torch(nn.Sequential(*modules), (8,), tmp_path)
    assert sum(layer["type"] == "act" for layer in art.manifest["layers"]) == activations
    bounds = [layer["output_bound"] for layer in art.manifest["layers"]]
    assert all(b > 0 for b in bounds) and art.manifest["output_bound"] == bounds[-1]


# --- torch.fx --------------------------------------------------------------------------------------
class TracedCryptoNet(nn.Module):
    """A forward written by hand: shape reads, the four ways to flatten, x * x, x ** 2, torch.square."""

    def __init__(self, flatten: str):
        super().__init__()
        self.flatten = flatten
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16))
        self.act = PolyActivation(0.2, 0.4, 0.3)
        self.hidden = nn.Linear(16, 12)
        self.out = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        x = self.bn(self.conv(x))
        x = x * x
        x = self.pool(x)
        if self.flatten == "view":
            x = x.view(x.size(0), -1)
        elif self.flatten == "torch.flatten":
            x = torch.flatten(x, 1)
        elif self.flatten == "method":
            x = x.flatten(1)
        else:
            x = x.reshape(rows, -1)
        x = self.hidden(self.act(self.fc(x)))
        x = x**2 if self.flatten == "view" else torch.square(x)
        return self.out(x)


@pytest.mark.parametrize("flatten", ["view", "torch.flatten", "method", "reshape"])
def test_traced_module_equals_torch(tmp_path, flatten):
    torch.manual_seed(7)
    model = randomize_batchnorm(TracedCryptoNet(flatten))
    art = assert_export_matches_torch(model, (1, 8, 8), tmp_path)
    sources = [layer["source"] for layer in art.manifest["layers"]]
    assert sources[0] == "node conv (Conv2d) + node bn (BatchNorm2d)"
    assert sum(layer["type"] == "act" for layer in art.manifest["layers"]) == 3


# --- refusals --------------------------------------------------------------------------------------
class WithRelu(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how, self.fc1, self.fc2, self.relu = how, nn.Linear(4, 3), nn.Linear(3, 2), nn.ReLU()

    def forward(self, x):
        x = self.fc1(x)
        if self.how == "F":
            x = functional.relu(x)
        elif self.how == "torch":
            x = torch.relu(x)
        elif self.how == "method":
            x = x.relu()
        else:
            x = self.relu(x)
        return self.fc2(x)


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * h + h)


class Parallel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        return self.a(x) + self.b(x)


class EndsInSquare(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return torch.square(self.fc(x))


class ScaledByParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.fc(x) * self.scale


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class MergesRows(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(x.reshape(-1, 8))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, y):
        return self.fc(x)


@pytest.mark.parametrize(
    "bad, message",
    [
        (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), r"^layer 1 \(ReLU\) cannot be evaluated"),
        (nn.Sequential(nn.Linear(4, 3), nn.Sequential(Square(), nn.Sigmoid())), r"^layer 1\.1 \(Sigmoid\)"),
        (nn.Sequential(nn.Unflatten(1, (1, 2, 2)), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 1)),
         r"^layer 1 \(MaxPool2d\) cannot be evaluated"),
        (nn.Sequential(nn.Linear(4, 3), Square()), r"layer 1 \(Square\): the network must end with a Linear"),
        (nn.Sequential(nn.Linear(4, 4), Square(), nn.Linear(4, 4), Square(), nn.Dropout()), "must end with a Linear"),
        (nn.Sequential(Square(), nn.Linear(4, 3)), r"layer 0 \(Square\): an activation must follow a Linear"),
        (nn.Sequential(nn.Linear(4, 4), Square(), nn.Flatten(), Square(), nn.Linear(4, 2)),
         r"layer 3 \(Square\): an activation must follow"),
        (nn.Sequential(nn.Linear(5, 3)), r"layer 0 \(Linear\): expects 5 inputs, gets 4"),
        (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).train(),
         r"layer 1 \(BatchNorm1d\): in training mode"),
        (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False), nn.Linear(3, 2)).eval(),
         r"layer 1 \(BatchNorm1d\): without running statistics"),
        (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(4), nn.Linear(3, 2)).eval(), r"layer 1 \(BatchNorm1d\): needs"),
        (nn.Sequential(nn.Linear(4, 3), nn.AvgPool2d(2), nn.Linear(3, 2)), r"layer 1 \(AvgPool2d\): needs a \(ch"),
        (nn.Sequential(nn.Flatten(0), nn.Linear(8, 2)), r"layer 0 \(Flatten\): reshapes across rows"),
        (nn.Sequential(nn.Flatten(), nn.Dropout()), r"no Linear, Conv2d"),
        (WithRelu("F"), r"^node relu \(torch\.nn\.functional\.relu\) cannot be evaluated on ciphertexts"),
        (WithRelu("torch"), r"^node relu \(torch\.relu\) cannot be evaluated"),
        (WithRelu("method"), r"^node relu \(Tensor\.relu\) cannot be evaluated"),
        (WithRelu("module"), r"^node relu \(ReLU\) cannot be evaluated"),
        (Skip(), r"^node fc1 \(Linear\): its output is used by 2 nodes \(mul, add\): the graph branches"),
        (Parallel(), r"^node x \(input\): its output is used by 2 nodes \(a, b\)"),
        (EndsInSquare(), r"node square \(torch\.square\): the network must end with a Linear"),
        (ScaledByParameter(), r"^node scale \(attribute self\.scale\): a parameter or buffer used outside a layer"),
        (DataDependent(), r"^DataDependent: torch\.fx cannot trace"),
        (MergesRows(), r"^node reshape \(Tensor\.reshape\): reshapes across rows"),
        (TwoInputs(), r"^TwoInputs: forward takes 2 inputs"),
    ],
)
def test_exporter_refuses_with_the_layer_named(tmp_path, bad, message):
    with pytest.raises(ExportError, match=message):
        torch_to_artifact(bad, (4,), tmp_path / "m", "m", preprocess="none", x_sample=np.zeros((2, 4)))


def test_a_single_layer_is_a_network(tmp_path):
    torch.manual_seed(8)
    assert_export_matches_torch(nn.Linear(4, 3), (4,), tmp_path)
    with pytest.raises(ExportError, match=r"^layer 0 \(ReLU\) cannot be evaluated"):
        torch_layers(nn.ReLU(), (4,))


def test_refuses_what_is_not_a_module():
    with pytest.raises(ExportError, match=r"expected a torch\.nn\.Module"):
        torch_layers(lambda x: x, (4,))


# --- the shipped networks --------------------------------------------------------------------------
@pytest.mark.parametrize("name, activations, floor", [("digits-cryptonets", 2, 0.98), ("digits-mlp3", 3, 0.95)])
def test_shipped_network_reaches_its_recorded_accuracy(name, activations, floor):
    art = artifact.load(MODELS / name)
    manifest = art.manifest
    assert manifest["kind"] == "network" and manifest["name"] == name
    assert sum(layer["type"] == "act" for layer in manifest["layers"]) == activations
    _, x_test, _, y_test = digits_split()
    assert manifest["preprocess"] == {"type": "standardize", "mean": [0.0] * 64, "scale": [DIGIT_SCALE] * 64}
    scores = manifest_forward(art, x_test / DIGIT_SCALE)
    accuracy = float(np.mean(scores.argmax(axis=1) == y_test))
    recorded = manifest["training"]["test_accuracy"]
    assert recorded >= floor
    assert accuracy >= recorded - 1e-4
    # The recorded bounds are what the engine sizes its scales by: they must cover the training rows.
    x_train = digits_split()[0] / DIGIT_SCALE
    for layer, h in zip(manifest["layers"], manifest_steps(art, x_train), strict=True):
        assert 4 * np.max(np.abs(h)) <= layer["output_bound"] * (1 + 1e-9)
