"""Guards against silently wrong models: explicit preprocessing, training ranges, column names, and the SDK's
out-of-range warning.

In process, on real objects: torch and scikit-learn models exported to a temporary directory, the SDK's
range check on the shipped manifests, and one SDK session against a server's Flask app (WSGITransport).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from heserve.client import InputRangeWarning
from heserve.client.client import RemoteModel
from heserve.client.postprocess import preprocess as client_preprocess
from heserve.client.ranges import InputRanges
from heserve.models import artifact
from heserve.models.export import ExportError, sklearn_to_artifact, torch_to_artifact
from heserve.models.nets import DIGIT_SCALE, digits_split
from heserve.models.nn import Square
from heserve.models.recipes import breast_cancer_split, diabetes_split

from .helpers import in_process_client

MODELS = Path(__file__).resolve().parent.parent / "models"
N_IN = 5


def small_net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(N_IN, 4), Square(), nn.Linear(4, 3)).double().eval()


def raw_rows(rows: int = 40, seed: int = 0) -> np.ndarray:
    """Features far from standardized: means 10..50, spreads 1..20."""
    rng = np.random.default_rng(seed)
    return rng.normal(loc=[10, 20, 30, 40, 50], scale=[1, 5, 10, 20, 2], size=(rows, N_IN))


def manifest_forward(art: artifact.Artifact, x_raw: np.ndarray) -> np.ndarray:
    """What the service computes for raw rows: the client's preprocessing, then the manifest's layers."""
    h = client_preprocess(np.asarray(x_raw, dtype=np.float64), art.manifest["preprocess"])
    for layer in art.manifest["layers"]:
        if layer["type"] == "dense":
            h = h @ art.arrays[layer["weights"]].T + art.arrays[layer["bias"]]
        else:
            h = h * (h + layer["beta"])
    return h


def torch_forward(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return copy.deepcopy(net)(torch.tensor(x, dtype=torch.float64)).numpy()


# --- torch: preprocess has no default ------------------------------------------------------------
def test_torch_exporter_refuses_a_missing_preprocess_and_says_what_to_pass(tmp_path):
    with pytest.raises(TypeError, match=r"pass preprocess=.*StandardScaler.*'mean'.*'scale'.*'none'"):
        torch_to_artifact(small_net(), (N_IN,), tmp_path / "m", "m", x_sample=raw_rows())
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "preprocess, error, message",
    [
        (None, TypeError, r"preprocess=None .*is not understood: pass preprocess="),
        ("standardize", ValueError, r"preprocess='standardize' is not understood"),
        ("identity", ValueError, r"not understood: pass preprocess=.*'none'"),
        (3.0, TypeError, r"\(float\) is not understood"),
        (StandardScaler(), ValueError, r"never fitted"),
        ({"type": "identity"}, ValueError, r"exactly 'mean' and 'scale' \(for no preprocessing pass .*'none'\)"),
        ({"mean": [0.0] * N_IN}, ValueError, r"exactly 'mean' and 'scale'"),
        ({"mean": [0.0] * N_IN, "scale": [1.0] * N_IN, "clip": 3}, ValueError, r"exactly 'mean' and 'scale'"),
        ({"type": "minmax", "mean": [0.0] * N_IN, "scale": [1.0] * N_IN}, ValueError, r"exactly 'mean' and 'scale'"),
        ({"mean": [0.0] * 4, "scale": [1.0] * N_IN}, ValueError, r"mean has shape \(4,\), the network takes 5"),
        ({"mean": 0.0, "scale": [1.0] * N_IN}, ValueError, r"mean has shape \(\), the network takes 5"),
        ({"mean": [0.0] * N_IN, "scale": [1.0, 1.0, 0.0, 1.0, 1.0]}, ValueError, r"every scale must be > 0 .*\[2\]"),
        ({"mean": [0.0] * N_IN, "scale": [1.0, -2.0, 1.0, 1.0, 1.0]}, ValueError, r"every scale must be > 0"),
        ({"mean": [0.0] * N_IN, "scale": [1.0, 1.0, np.inf, 1.0, 1.0]}, ValueError, r"scale contains NaN or inf"),
        ({"mean": [np.nan] + [0.0] * 4, "scale": [1.0] * N_IN}, ValueError, r"mean contains NaN or inf"),
        ({"mean": ["a"] * N_IN, "scale": [1.0] * N_IN}, ValueError, r"lists of numbers"),
    ],
    ids=["None", "unknown-name", "identity-name", "float", "unfitted-scaler", "identity-mapping", "no-scale",
         "extra-key", "other-type", "short-mean", "scalar-mean", "zero-scale", "negative-scale", "infinite-scale",
         "nan-mean", "text-mean"],
)
def test_torch_exporter_refuses_a_bad_preprocess(tmp_path, preprocess, error, message):
    with pytest.raises(error, match=message):
        torch_to_artifact(small_net(), (N_IN,), tmp_path / "m", "m", preprocess=preprocess, x_sample=raw_rows())
    assert not (tmp_path / "m").exists()


def test_torch_exporter_refuses_a_scaler_of_another_width(tmp_path):
    scaler = StandardScaler().fit(np.random.default_rng(0).normal(size=(10, N_IN + 1)))
    with pytest.raises(ValueError, match=r"fitted on 6 features, the network takes 5"):
        torch_to_artifact(small_net(), (N_IN,), tmp_path / "m", "m", preprocess=scaler, x_sample=raw_rows())


def test_preprocess_must_be_given_by_keyword(tmp_path):
    with pytest.raises(TypeError, match="positional"):
        torch_to_artifact(small_net(), (N_IN,), tmp_path / "m", "m", "none")  # type: ignore[misc]


@pytest.mark.parametrize("with_mean, with_std", [(True, True), (False, True), (True, False), (False, False)])
def test_a_fitted_scaler_is_recorded_and_the_artifact_matches_torch_on_raw_rows(tmp_path, with_mean, with_std):
    x_train, x_new = raw_rows(60, seed=0), raw_rows(9, seed=1)
    scaler = StandardScaler(with_mean=with_mean, with_std=with_std).fit(x_train)
    net = small_net()
    manifest = torch_to_artifact(net, (N_IN,), tmp_path / "m", "m", preprocess=scaler, x_train=x_train)
    pre = manifest["preprocess"]
    if with_mean or with_std:
        assert pre["type"] == "standardize"
        assert np.allclose(pre["mean"], scaler.mean_ if with_mean else 0.0)
        assert np.allclose(pre["scale"], scaler.scale_ if with_std else 1.0)
    else:
        assert pre == {"type": "identity"}
    art = artifact.load(tmp_path / "m")
    expected = torch_forward(net, scaler.transform(x_new))
    assert np.max(np.abs(manifest_forward(art, x_new) - expected)) <= 1e-9 * max(1.0, np.max(np.abs(expected)))
    # Raw rows fed to the network as they are give other answers: the preprocessing is not decoration.
    if with_mean or with_std:
        assert np.max(np.abs(torch_forward(net, x_new) - expected)) > 1e-3


def test_x_sample_defaults_to_x_train_preprocessed_and_ranges_are_recorded(tmp_path):
    x_train = raw_rows(60)
    scaler = StandardScaler().fit(x_train)
    derived = torch_to_artifact(small_net(), (N_IN,), tmp_path / "a", "a", preprocess=scaler, x_train=x_train)
    explicit = torch_to_artifact(small_net(), (N_IN,), tmp_path / "b", "b", preprocess=scaler,
                                 x_sample=scaler.transform(x_train))
    assert [layer["output_bound"] for layer in derived["layers"]] == pytest.approx(
        [layer["output_bound"] for layer in explicit["layers"]], rel=1e-12)
    assert derived["input_ranges"] == {"min": x_train.min(axis=0).tolist(), "max": x_train.max(axis=0).tolist()}
    assert "input_ranges" not in explicit  # no x_train, no ranges: the SDK then checks nothing
    on_disk = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert on_disk["input_ranges"] == derived["input_ranges"]


def test_raw_rows_given_as_x_sample_are_refused(tmp_path):
    x_train = raw_rows(60)
    with pytest.raises(ExportError, match=r"x_sample holds the raw x_train rows"):
        torch_to_artifact(small_net(), (N_IN,), tmp_path / "m", "m", preprocess=StandardScaler().fit(x_train),
                          x_sample=x_train, x_train=x_train)
    with pytest.raises(ExportError, match=r"give x_sample .* or x_train"):
        torch_to_artifact(small_net(), (N_IN,), tmp_path / "m", "m", preprocess="none")
    with pytest.raises(ExportError, match=r"x_train has 4 features per row, the model takes 5"):
        torch_to_artifact(small_net(), (N_IN,), tmp_path / "m", "m", preprocess="none", x_train=x_train[:, :4])


def test_an_explicit_mean_and_scale_and_none_are_recorded(tmp_path):
    x_train, x_new = raw_rows(60), raw_rows(9, seed=2)
    mean, scale = [10.0, 20.0, 30.0, 40.0, 50.0], [1.0, 5.0, 10.0, 20.0, 2.0]
    net = small_net()
    manifest = torch_to_artifact(net, (N_IN,), tmp_path / "m", "m", preprocess={"mean": mean, "scale": scale},
                                 x_train=x_train, input_names=list("abcde"))
    assert manifest["preprocess"] == {"type": "standardize", "mean": mean, "scale": scale}
    assert manifest["input_names"] == list("abcde")
    expected = torch_forward(net, (x_new - mean) / np.asarray(scale))
    assert np.allclose(manifest_forward(artifact.load(tmp_path / "m"), x_new), expected, rtol=1e-9, atol=1e-9)

    manifest = torch_to_artifact(net, (N_IN,), tmp_path / "n", "n", preprocess="none", x_train=x_train)
    assert manifest["preprocess"] == {"type": "identity"}
    assert np.allclose(manifest_forward(artifact.load(tmp_path / "n"), x_new), torch_forward(net, x_new), rtol=1e-9)
    with pytest.raises(ValueError, match=r"input_names has 2 names, the model takes 5"):
        torch_to_artifact(net, (N_IN,), tmp_path / "o", "o", preprocess="none", x_train=x_train, input_names=["a", "b"])


# --- scikit-learn: column names and ranges --------------------------------------------------------
def diabetes_frame() -> tuple[pd.DataFrame, np.ndarray]:
    x_train, _, y_train, _ = diabetes_split()
    from sklearn.datasets import load_diabetes

    return pd.DataFrame(x_train, columns=load_diabetes().feature_names), y_train


def test_sklearn_exporter_names_inputs_after_the_dataframe_columns(tmp_path):
    frame, y = diabetes_frame()
    pipeline = make_pipeline(StandardScaler(), LinearRegression()).fit(frame, y)
    manifest = sklearn_to_artifact(pipeline, tmp_path / "p", "p", x_train=frame)
    assert manifest["input_names"] == list(frame.columns) == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4",
                                                               "s5", "s6"]
    assert manifest["input_ranges"] == {"min": frame.min().tolist(), "max": frame.max().tolist()}
    assert manifest["output_bound"] == pytest.approx(4 * np.max(np.abs(pipeline.predict(frame))))
    bare = LinearRegression().fit(frame[["bmi", "bp"]], y)
    assert sklearn_to_artifact(bare, tmp_path / "b", "b", x_train=frame[["bmi", "bp"]])["input_names"] == ["bmi", "bp"]
    # Explicit names win when they fit; a list of the wrong length is refused rather than cut or padded.
    renamed = sklearn_to_artifact(bare, tmp_path / "r", "r", input_names=["BMI", "BP"], output_bound=1e3)
    assert renamed["input_names"] == ["BMI", "BP"] and "input_ranges" not in renamed
    with pytest.raises(ValueError, match=r"input_names has 3 names, the model takes 2 features"):
        sklearn_to_artifact(bare, tmp_path / "w", "w", input_names=["a", "b", "c"], output_bound=1e3)
    # Fitted on an array: nothing to name the inputs after.
    array_fit = LinearRegression().fit(frame.to_numpy()[:, :2], y)
    assert sklearn_to_artifact(array_fit, tmp_path / "x", "x", output_bound=1e3)["input_names"] == ["x0", "x1"]


def test_sklearn_scaler_without_centering_is_exported_as_it_transforms(tmp_path):
    x_train, _, y_train, _ = breast_cancer_split()
    pipeline = make_pipeline(StandardScaler(with_mean=False), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    manifest = sklearn_to_artifact(pipeline, tmp_path / "m", "m", x_train=x_train)
    art = artifact.load(tmp_path / "m")
    scores = client_preprocess(x_train[:20], manifest["preprocess"]) @ art.arrays["W"].T + art.arrays["b"]
    assert np.allclose(scores[:, 0], pipeline.decision_function(x_train[:20]), atol=1e-9)


# --- the shipped manifests carry their training ranges ------------------------------------------
def test_shipped_manifests_record_input_ranges():
    names = sorted(p.parent.name for p in MODELS.glob("*/manifest.json"))
    assert len(names) == 8
    for name in names:
        manifest = artifact.load(MODELS / name).manifest  # the weights' checksum still holds
        ranges = manifest["input_ranges"]
        assert len(ranges["min"]) == len(ranges["max"]) == len(manifest["input_names"]), name
        assert all(low <= high for low, high in zip(ranges["min"], ranges["max"], strict=True)), name
        text = (MODELS / name / "manifest.json").read_text()
        assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n", name


def test_shipped_ranges_are_those_of_the_training_rows():
    x_train = digits_split()[0]
    ranges = artifact.load(MODELS / "digits-mlp").manifest["input_ranges"]
    assert ranges == {"min": x_train.min(axis=0).tolist(), "max": x_train.max(axis=0).tolist()}
    x_train = breast_cancer_split()[0]
    ranges = artifact.load(MODELS / "breast-cancer-logreg").manifest["input_ranges"]
    assert ranges == {"min": x_train.min(axis=0).tolist(), "max": x_train.max(axis=0).tolist()}


# --- the SDK's range check ---------------------------------------------------------------------
def shipped_check(name: str):
    manifest = json.loads((MODELS / name / "manifest.json").read_text())
    ranges = InputRanges.from_metadata(manifest["input_ranges"], len(manifest["input_names"]))
    assert ranges is not None
    return ranges, manifest["preprocess"]


@pytest.mark.parametrize(
    "name, split",
    [("breast-cancer-logreg", breast_cancer_split), ("diabetes-linreg", diabetes_split),
     ("digits-mlp", digits_split)],
)
def test_held_out_rows_pass_and_rows_standardized_by_the_caller_are_caught(name, split):
    ranges, pre = shipped_check(name)
    _, x_test, _, _ = split()
    assert ranges.check(x_test, pre) is None
    assert all(ranges.check(row[None], pre) is None for row in x_test)  # no held-out row warns on its own
    standardized = (x_test - np.asarray(pre["mean"])) / np.asarray(pre["scale"])
    finding = ranges.check(standardized, pre)
    assert finding is not None and finding.standardized
    caught = sum(ranges.check(row[None], pre) is not None for row in standardized)
    assert caught >= 0.95 * len(x_test)


def test_far_values_are_counted_by_feature():
    ranges, pre = shipped_check("diabetes-linreg")
    x = diabetes_split()[1][:4].copy()
    low, high, width = ranges.low, ranges.high, ranges.widths()
    x[:, 2] = high[2] + 0.45 * width[2]  # outside, but within half the range: not far
    assert ranges.check(x, pre) is None
    x[:2, 2] = high[2] + 0.55 * width[2]
    x[0, 7] = low[7] - 0.6 * width[7]
    finding = ranges.check(x, pre)
    assert finding is not None and not finding.standardized
    assert (finding.far, finding.total, finding.features) == (3, 40, (2, 7))
    message = finding.message("diabetes-linreg", ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4"], "standardize")
    assert "model 'diabetes-linreg': 3 of 40 input values (2 features: bmi, s4) lie far outside" in message
    assert "Did you pass preprocessed features" in message


def test_pixels_divided_by_the_models_own_scale_look_standardized():
    ranges, pre = shipped_check("digits-mlp")
    x_test = digits_split()[1]
    finding = ranges.check(x_test[:1] / DIGIT_SCALE, pre)
    assert finding is not None and finding.standardized and finding.crowded
    assert "crowd into a small corner" in finding.message("digits-mlp", [], "standardize")
    assert ranges.check(np.zeros((1, 64)), pre) is None  # a blank image is a valid (if odd) input either way


def test_unusable_ranges_mean_no_check():
    assert InputRanges.from_metadata(None, 3) is None
    assert InputRanges.from_metadata({"min": [0, 0], "max": [1, 1]}, 3) is None
    assert InputRanges.from_metadata({"min": [0, 0, 2], "max": [1, 1, 1]}, 3) is None
    assert InputRanges.from_metadata({"min": ["a"] * 3, "max": [1] * 3}, 3) is None
    assert InputRanges.from_metadata({"min": [0, 0, 0]}, 3) is None
    assert InputRanges.from_metadata({"min": [0, 5, 0], "max": [1, 5, 1]}, 3) is not None


# --- through the SDK's predict path -----------------------------------------------------------
class Recording:
    """A transport that remembers each request's method and path before passing it on."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def request(self, method, url, body, headers, timeout):
        self.calls.append((method, url.split("in-process", 1)[1]))
        return self.inner.request(method, url, body, headers, timeout)

    def close(self):
        self.inner.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A linear model exported with x_train, served by the app in this process."""
    models_dir = tmp_path_factory.mktemp("models")
    frame, y = diabetes_frame()
    pipeline = make_pipeline(StandardScaler(), LinearRegression()).fit(frame, y)
    manifest = sklearn_to_artifact(pipeline, models_dir / "dia", "dia", x_train=frame)
    return models_dir, manifest, frame.to_numpy(), pipeline


def remote_model(sdk, manifest: dict) -> RemoteModel:
    metadata = sdk.model_metadata("dia")
    # The server publishes the manifest's input_ranges in the metadata; set here too so this test does not
    # depend on which server version publishes them.
    metadata["parameters"]["input_ranges"] = metadata["parameters"].get("input_ranges") or manifest["input_ranges"]
    return RemoteModel(sdk, "dia", metadata)


def test_the_sdk_warns_once_per_model_and_client_and_sends_nothing_more(served, tmp_path):
    models_dir, manifest, x_train, pipeline = served
    sdk = in_process_client(models_dir, tmp_path / "keys")
    sdk._transport = recording = Recording(sdk._transport)
    model = remote_model(sdk, manifest)
    recording.calls.clear()
    pre = manifest["preprocess"]
    standardized = (x_train[:3] - np.asarray(pre["mean"])) / np.asarray(pre["scale"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        in_range = model.predict(x_train[:3])
        assert caught == []
        assert recording.calls == [("POST", "/v2/keys"), ("POST", "/v2/models/dia/infer")]
        recording.calls.clear()
        warned = model.predict(standardized)
        # The check is local: the warned call sent exactly what any prediction sends, nothing about the warning.
        assert recording.calls == [("POST", "/v2/models/dia/infer")]
        model.predict(standardized * 3)
        remote_model(sdk, manifest).predict(standardized)  # another handle on the same model, same client
    assert [w.category for w in caught] == [InputRangeWarning]
    message = str(caught[0].message)
    assert "model 'dia'" in message and "look already standardized" in message and "age, sex, bmi" in message
    assert "Pass the raw features" in message
    assert caught[0].filename == __file__  # points at the application's predict call, not into the SDK
    # A warning, not a refusal: the predictions come back (for what was sent).
    columns = pipeline.feature_names_in_
    assert np.allclose(in_range, pipeline.predict(pd.DataFrame(x_train[:3], columns=columns)), atol=1e-2)
    assert np.allclose(warned, pipeline.predict(pd.DataFrame(standardized, columns=columns)), atol=1e-2)
    # A new client session warns again, once.
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        other = in_process_client(models_dir, tmp_path / "keys")
        remote_model(other, manifest).predict(standardized)
        remote_model(other, manifest).predict(standardized)
    assert [w.category for w in again] == [InputRangeWarning]


def test_a_model_without_ranges_is_not_checked(served, tmp_path):
    models_dir, _, x_train, _ = served
    sdk = in_process_client(models_dir, tmp_path / "keys")
    metadata = sdk.model_metadata("dia")
    metadata["parameters"].pop("input_ranges", None)
    model = RemoteModel(sdk, "dia", metadata)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.validate(x_train[:2] * 1000)
