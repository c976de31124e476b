"""The model registry: artifacts loaded from the models directory and compiled once at start."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heserve.engine.deep import DeepNetworkPlan
from heserve.engine.linear import LINEAR_PARAMS, LinearPlan, SealRuntime
from heserve.engine.neural import NETWORK_PARAMS, NetworkPlan
from heserve.engine.params import CKKSParams
from heserve.engine.plan import Plan
from heserve.engine.spec import EncryptionSpec
from heserve.models import artifact

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    name: str
    version: str
    manifest: dict
    plan: Plan
    spec: EncryptionSpec

    def plaintext_predict(self, x: np.ndarray) -> np.ndarray:
        """Raw model outputs (logits or regression values) for raw rows (preprocessing applied here)."""
        pre = self.manifest.get("preprocess", {})
        if pre.get("type") == "standardize":
            x = (x - np.asarray(pre["mean"])) / np.asarray(pre["scale"])
        return self.plan.plaintext(x)

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": f"ckks-{self.manifest.get('kind', 'linear')}",
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


def network_plan(manifest: dict, arrays: dict[str, np.ndarray], runtime_for) -> Plan:
    """One activation: the packed two-layer plan (engine.neural, the fastest for that shape);
    more: the leveled plan for any depth (engine.deep), with the parameters its compiler chooses."""
    layers = manifest["layers"]
    if sum(layer.get("type") == "act" for layer in layers) <= 1:
        return NetworkPlan(layers, arrays, runtime_for(NETWORK_PARAMS))
    return DeepNetworkPlan(layers, arrays, float(manifest.get("output_bound", 1.0)), runtime_for)


def load_registry(models_dir: Path) -> ModelRegistry:
    runtimes = {LINEAR_PARAMS: SealRuntime(LINEAR_PARAMS), NETWORK_PARAMS: SealRuntime(NETWORK_PARAMS)}

    def runtime_for(params: CKKSParams) -> SealRuntime:
        if params not in runtimes:
            runtimes[params] = SealRuntime(params)
        return runtimes[params]

    models: dict[str, ServedModel] = {}
    for manifest_path in sorted(models_dir.glob(f"*/{artifact.MANIFEST}")):
        art = artifact.load(manifest_path.parent)
        kind = art.manifest.get("kind")
        if kind == "linear":
            plan = LinearPlan(
                np.atleast_2d(art.arrays["W"]),
                np.atleast_1d(art.arrays["b"]),
                float(art.manifest.get("output_bound", 1.0)),
                runtimes[LINEAR_PARAMS],
            )
        elif kind == "network":
            plan = network_plan(art.manifest, art.arrays, runtime_for)
        else:
            log.warning("skipping model %s of unsupported kind %r", art.name, kind)
            continue
        models[art.name] = ServedModel(art.name, str(art.manifest.get("version", "1")), art.manifest, plan, plan.spec())
    if not models:
        raise artifact.ArtifactError(f"no model artifacts found in {models_dir}")
    return ModelRegistry(models, runtimes)
