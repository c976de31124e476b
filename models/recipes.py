"""Deterministic recipes for the shipped models, trained on scikit-learn's bundled data sets.

`python -m heserve.models` rebuilds every artifact under models/; the same split functions
give the tests the exact held-out rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_linnerud
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from heserve.models import artifact
from heserve.models.export import input_ranges

MODELS_DIR = Path(__file__).resolve().parent
RANDOM_STATE = 0
TEST_SIZE = 0.25


def breast_cancer_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = load_breast_cancer()
    return train_test_split(
        data.data, data.target, test_size=TEST_SIZE, random_state=RANDOM_STATE, stratify=data.target
    )


def diabetes_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = load_diabetes()
    return train_test_split(data.data, data.target, test_size=TEST_SIZE, random_state=RANDOM_STATE)


def linear_manifest(
    name: str,
    description: str,
    input_names: list[str],
    scaler: StandardScaler,
    task: str,
    postprocess: dict,
    output_bound: float,
    training: dict,
    x_train: np.ndarray,
) -> dict:
    """x_train: the raw training rows, whose ranges the SDK's out-of-range warning compares inputs with."""
    return {
        "name": name,
        "version": "1",
        "kind": "linear",
        "task": task,
        "description": description,
        "input_names": input_names,
        "input_ranges": input_ranges(x_train, len(input_names)),
        "preprocess": {
            "type": "standardize",
            "mean": scaler.mean_.tolist(),
            "scale": scaler.scale_.tolist(),
        },
        "postprocess": postprocess,
        "output_bound": output_bound,
        "training": training,
    }


def build_breast_cancer_logreg(directory: Path) -> dict:
    x_train, x_test, y_train, y_test = breast_cancer_split()
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(x_train), y_train)
    logits = model.decision_function(scaler.transform(x_train))
    accuracy = float(model.score(scaler.transform(x_test), y_test))
    names = list(load_breast_cancer().feature_names)
    manifest = linear_manifest(
        "breast-cancer-logreg",
        "Logistic regression on the Wisconsin breast cancer data set (30 features).",
        names,
        scaler,
        "binary-classification",
        {"type": "sigmoid", "threshold": 0.5, "classes": [0, 1], "class_names": ["malignant", "benign"]},
        output_bound=float(4 * np.max(np.abs(logits))),
        training={
            "dataset": "sklearn.datasets.load_breast_cancer",
            "test_size": TEST_SIZE,
            "random_state": RANDOM_STATE,
            "test_accuracy": round(accuracy, 4),
        },
        x_train=x_train,
    )
    artifact.save(directory, manifest, {"W": model.coef_.astype(np.float64), "b": model.intercept_.astype(np.float64)})
    return {"name": manifest["name"], "test_accuracy": accuracy}


def build_diabetes_linreg(directory: Path) -> dict:
    x_train, x_test, y_train, y_test = diabetes_split()
    scaler = StandardScaler().fit(x_train)
    model = LinearRegression().fit(scaler.transform(x_train), y_train)
    r2 = float(model.score(scaler.transform(x_test), y_test))
    predictions = model.predict(scaler.transform(x_train))
    names = list(load_diabetes().feature_names)
    manifest = linear_manifest(
        "diabetes-linreg",
        "Linear regression of disease progression one year after baseline (diabetes data set, 10 features).",
        names,
        scaler,
        "regression",
        {"type": "identity"},
        output_bound=float(4 * np.max(np.abs(predictions))),
        training={
            "dataset": "sklearn.datasets.load_diabetes",
            "test_size": TEST_SIZE,
            "random_state": RANDOM_STATE,
            "test_r2": round(r2, 4),
        },
        x_train=x_train,
    )
    artifact.save(
        directory,
        manifest,
        {"W": model.coef_.reshape(1, -1).astype(np.float64), "b": np.atleast_1d(model.intercept_).astype(np.float64)},
    )
    return {"name": manifest["name"], "test_r2": r2}


def linnerud_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = load_linnerud()
    return train_test_split(data.data, data.target, test_size=TEST_SIZE, random_state=RANDOM_STATE)


def build_linnerud_linreg(directory: Path) -> dict:
    """A multi-output regression (3 exercises -> 3 physiological measures): the several-outputs path."""
    x_train, _, y_train, _ = linnerud_split()
    scaler = StandardScaler().fit(x_train)
    model = LinearRegression().fit(scaler.transform(x_train), y_train)
    predictions = model.predict(scaler.transform(x_train))
    data = load_linnerud()
    manifest = linear_manifest(
        "linnerud-linreg",
        "Multi-output linear regression: weight, waist and pulse from chins, situps and jumps (Linnerud).",
        list(data.feature_names),
        scaler,
        "regression",
        {"type": "identity", "output_names": list(data.target_names)},
        output_bound=float(4 * np.max(np.abs(predictions))),
        training={"dataset": "sklearn.datasets.load_linnerud", "test_size": TEST_SIZE, "random_state": RANDOM_STATE},
        x_train=x_train,
    )
    artifact.save(directory, manifest, {"W": model.coef_.astype(np.float64), "b": model.intercept_.astype(np.float64)})
    return {"name": manifest["name"], "outputs": int(model.coef_.shape[0])}


RECIPES = {
    "breast-cancer-logreg": build_breast_cancer_logreg,
    "diabetes-linreg": build_diabetes_linreg,
    "linnerud-linreg": build_linnerud_linreg,
}


def all_recipes() -> dict:
    """Linear recipes, plus the networks (which need torch to train)."""
    from heserve.models.nets import NETWORK_RECIPES

    return {**RECIPES, **NETWORK_RECIPES}


def build_all(models_dir: Path = MODELS_DIR) -> list[dict]:
    return [recipe(models_dir / name) for name, recipe in all_recipes().items()]
