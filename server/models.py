"""The model registry: artifacts loaded from the models directory and compiled once at start."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import artifact
from protocol.params import CKKSParams
from protocol.spec import EncryptionSpec

from .engine import LINEAR_PARAMS, LinearPlan, SealRuntime

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    name: str
    version: str
    manifest: dict
    plan: LinearPlan
    spec: EncryptionSpec

    def plaintext_predict(self, x: np.ndarray) -> np.ndarray:
        """Raw model outputs (logits or regression values) for standardized-by-us rows."""
        pre = self.manifest.get("preprocess", {})
        if pre.get("type") == "standardize":
            x = (x - np.asarray(pre["mean"])) / np.asarray(pre["scale"])
        return x @ self.plan.weights.T + self.plan.bias

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "ckks-linear",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, self.plan.n_features]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, self.plan.n_outputs]}],
            "parameters": {
                "description": self.manifest.get("description", ""),
                "task": self.manifest.get("task"),
                "input_names": self.manifest.get("input_names", []),
                "preprocess": self.manifest.get("preprocess", {"type": "identity"}),
                "postprocess": self.manifest.get("postprocess", {"type": "identity"}),
                "encryption": self.spec.to_json(),
            },
        }


class ModelRegistry:
    def __init__(self, models: dict[str, ServedModel], runtimes: dict[CKKSParams, SealRuntime]):
        self.models = models
        self.runtimes = runtimes

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    def names(self) -> list[str]:
        return sorted(self.models)

    def runtime(self, params: CKKSParams) -> SealRuntime | None:
        return self.runtimes.get(params)


def load_registry(models_dir: Path) -> ModelRegistry:
    runtimes = {LINEAR_PARAMS: SealRuntime(LINEAR_PARAMS)}
    models: dict[str, ServedModel] = {}
    for manifest_path in sorted(models_dir.glob(f"*/{artifact.MANIFEST}")):
        art = artifact.load(manifest_path.parent)
        if art.manifest.get("kind") != "linear":
            log.warning("skipping model %s of unsupported kind %r", art.name, art.manifest.get("kind"))
            continue
        plan = LinearPlan(
            np.atleast_2d(art.arrays["W"]),
            np.atleast_1d(art.arrays["b"]),
            float(art.manifest.get("output_bound", 1.0)),
            runtimes[LINEAR_PARAMS],
        )
        models[art.name] = ServedModel(art.name, str(art.manifest.get("version", "1")), art.manifest, plan, plan.spec())
    if not models:
        raise artifact.ArtifactError(f"no model artifacts found in {models_dir}")
    return ModelRegistry(models, runtimes)
