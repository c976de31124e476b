"""Plaintext pre- and post-processing the client applies around encrypted evaluation."""

from __future__ import annotations

import numpy as np

from heserve.client.errors import InputError


def preprocess(x: np.ndarray, spec: dict) -> np.ndarray:
    kind = spec.get("type", "identity")
    if kind == "identity":
        return x
    if kind == "standardize":
        return (x - np.asarray(spec["mean"], dtype=np.float64)) / np.asarray(spec["scale"], dtype=np.float64)
    raise InputError(f"this SDK does not know the preprocessing {kind!r}; upgrade the client")


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # tanh form: no overflow for large |z|


def softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def probabilities(scores: np.ndarray, spec: dict) -> np.ndarray:
    """Class probabilities (rows, classes) from raw scores (rows, outputs)."""
    kind = spec.get("type", "identity")
    if kind == "sigmoid":
        p = sigmoid(scores[:, 0])
        return np.column_stack([1.0 - p, p])
    if kind in ("softmax", "argmax"):
        return softmax(scores)
    raise InputError("this model is a regression: it has no class probabilities")


def labels(scores: np.ndarray, spec: dict) -> np.ndarray:
    kind = spec.get("type", "identity")
    if kind == "identity":
        return scores[:, 0] if scores.shape[1] == 1 else scores
    classes = np.asarray(spec.get("classes", list(range(max(2, scores.shape[1])))))
    if kind == "sigmoid":
        return classes[(sigmoid(scores[:, 0]) >= spec.get("threshold", 0.5)).astype(int)]
    return classes[np.argmax(scores, axis=1)]
