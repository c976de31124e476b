"""The SDK's local check that inputs resemble what a model was trained on. Nothing of it reaches the server.

A model whose metadata publishes `input_ranges` (each raw feature's min and max over the training
rows) lets the SDK notice the mistakes that otherwise come back as confident, wrong predictions:
features standardized by the caller although the SDK standardizes them again, features in other
units, columns in another order. The check only warns (InputRangeWarning), once per model and client.

What counts as wrong, with w the width max - min of a feature's training range (at least the median
width over the model's features, so that a feature that barely varied in training, such as an
image's edge pixel, does not warn on every new value):

* far outside: a value more than w/2 below the feature's min or above its max;
* looks already standardized (models that standardize): read as standardized values, i.e. mapped
  back through x * scale + mean, the inputs fit the training ranges (none far outside, at most a
  tenth outside), and read as raw values they fit clearly worse: at least half lie outside their
  ranges, or they crowd into a quarter or less of the spread they have read as standardized values
  (pixels divided by 16 for a model that divides by 16 itself).

A call's inputs draw the warning when any value is far outside or when they look already standardized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FAR = 0.5  # a value further than FAR * width beyond min or max is far outside
MOSTLY_OUTSIDE = 0.5  # read as raw, at least this share outside the ranges ...
FITS = 0.1  # ... while read as standardized, at most this share outside
CROWDED = 0.25  # or read as raw, they spread over at most this share of their spread as standardized values
NAMED_FEATURES = 5


class InputRangeWarning(UserWarning):
    """Inputs far outside the ranges the model was trained on: its predictions there are extrapolations."""


@dataclass(frozen=True)
class RangeFinding:
    """What the check found in one call's inputs."""

    total: int  # values checked
    far: int  # values far outside their feature's range
    outside: int  # values outside their feature's range, by any distance
    features: tuple[int, ...]  # features with a value far outside (looking standardized: outside; crowded: none)
    standardized: bool  # the inputs look already standardized
    crowded: bool = False  # ... because they crowd into a corner of the ranges (rather than lie outside them)

    def message(self, model: str, input_names: Sequence[str], preprocess_type: str) -> str:
        names = [input_names[j] if j < len(input_names) else f"x{j}" for j in self.features[:NAMED_FEATURES]]
        listed = ", ".join(names) + (", ..." if len(self.features) > NAMED_FEATURES else "")
        where = f"{len(self.features)} feature{'s' if len(self.features) != 1 else ''}: {listed}"
        if self.standardized:
            if not self.crowded:
                found = (f"{self.outside} of {self.total} values lie outside the ranges the model was trained on "
                         f"({where}), where standardized values fit them")
            else:
                found = ("they crowd into a small corner of the ranges the model was trained on, where standardized "
                         "values lie")
            return (
                f"model {model!r}: the inputs look already standardized: {found}. Did you pass preprocessed "
                "features? Pass the raw features: the SDK applies the model's standardization itself before "
                "encrypting, so it would be applied twice."
            )
        hint = (
            "Did you pass preprocessed features, or features in other units or another column order? Pass the raw "
            "features, in the order of model.input_names: the SDK applies the model's standardization itself."
            if preprocess_type == "standardize"
            else "This model applies no preprocessing of its own: send the features exactly as they were at "
            "training (same units, same scaling, the order of model.input_names)."
        )
        return (
            f"model {model!r}: {self.far} of {self.total} input values ({where}) lie far outside the ranges the "
            "model was trained on (more than half the range beyond its min or max); its predictions for them are "
            f"extrapolations. {hint}"
        )


@dataclass(frozen=True)
class InputRanges:
    """Each raw feature's training min and max, as a model's metadata publishes them."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def from_metadata(cls, value: object, n_features: int) -> InputRanges | None:
        """None when the model publishes no usable ranges: older servers and artifacts have none, and a
        warning-only check must never stop a prediction."""
        if not isinstance(value, dict):
            return None
        try:
            low = np.asarray(value.get("min"), dtype=np.float64)
            high = np.asarray(value.get("max"), dtype=np.float64)
        except (TypeError, ValueError):
            return None
        if low.shape != (n_features,) or high.shape != (n_features,) or n_features == 0:
            return None
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low <= high)):
            return None
        return cls(low, high)

    def widths(self) -> np.ndarray:
        width = self.high - self.low
        varied = width[width > 0]
        floor = float(np.median(varied)) if varied.size else 1.0
        return np.maximum(width, floor)

    def check(self, x: np.ndarray, preprocess: dict) -> RangeFinding | None:
        """What is wrong with raw rows x (rows, features), or None when they look like training rows."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, len(self.low))
        width = self.widths()
        raw = _Reading(x, self.low, self.high, width)
        standardized = None
        if preprocess.get("type") == "standardize":
            try:
                mean = np.asarray(preprocess["mean"], dtype=np.float64)
                scale = np.asarray(preprocess["scale"], dtype=np.float64)
            except (KeyError, TypeError, ValueError):
                mean = scale = None
            if mean is not None and mean.shape == scale.shape == self.low.shape:
                standardized = _Reading(x * scale + mean, self.low, self.high, width)
        how = _looks_standardized(raw, standardized) if standardized is not None else None
        if how is not None:
            features = () if how == "crowded" else tuple(np.flatnonzero(raw.outside.any(axis=0)).tolist())
            return RangeFinding(x.size, int(raw.far.sum()), int(raw.outside.sum()), features, True, how == "crowded")
        if raw.far.any():
            return RangeFinding(x.size, int(raw.far.sum()), int(raw.outside.sum()),
                                tuple(np.flatnonzero(raw.far.any(axis=0)).tolist()), False)
        return None


class _Reading:
    """Raw values against the training ranges: which are outside, which far outside, and how they spread."""

    def __init__(self, x: np.ndarray, low: np.ndarray, high: np.ndarray, width: np.ndarray):
        self.outside = (x < low) | (x > high)
        self.far = (x < low - FAR * width) | (x > high + FAR * width)
        position = (x - low) / width  # 0 at the training min, 1 at the max (for a feature of the usual width)
        self.spread = float(position.max() - position.min())


def _looks_standardized(raw: _Reading, standardized: _Reading) -> str | None:
    """"outside" or "crowded" when the inputs fit the ranges clearly better read as standardized values."""
    if standardized.far.any() or standardized.outside.mean() > FITS:
        return None
    if raw.outside.mean() >= MOSTLY_OUTSIDE:
        return "outside"
    if standardized.spread >= CROWDED and raw.spread <= CROWDED * standardized.spread:
        return "crowded"
    return None
