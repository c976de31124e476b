"""The model repository: artifacts found under the models directory, compiled once, served by version.

Layout: `<models_dir>/<name>/<version>/` (numbered subdirectories, each an artifact) or
`<models_dir>/<name>/` holding an artifact directly (one version, the manifest's "version").
Which versions are served follows the model's version policy (`<name>/config.json`, Triton's
`version_policy` shape; latest by default). An artifact that fails to load or compile makes
that one model UNAVAILABLE with the reason; every other model is served.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heserve.engine import seal_bounds
from heserve.engine.deep import DeepNetworkPlan
from heserve.engine.linear import LINEAR_PARAMS, LinearPlan, SealRuntime
from heserve.engine.neural import NETWORK_PARAMS, NetworkPlan
from heserve.engine.params import CKKSParams
from heserve.engine.plan import Plan
from heserve.engine.spec import EncryptionSpec
from heserve.models import artifact

log = logging.getLogger(__name__)

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
UNLOADED = "unloaded"  # the reason given for a model an operator unloaded
MODEL_CONFIG = "config.json"
_VERSION_DIR = re.compile(r"^[1-9][0-9]{0,8}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ModelNotFound(LookupError):
    """No model of that name (or version) is served; `reason` says why when the repository knows."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


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

    @property
    def platform(self) -> str:
        return f"ckks-{self.manifest.get('kind', 'linear')}"

    def metadata(self, versions: list[str] | None = None) -> dict:
        return {
            "name": self.name,
            "versions": versions or [self.version],
            "platform": self.platform,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, self.plan.n_features]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, self.plan.n_outputs]}],
            "parameters": {
                "description": self.manifest.get("description", ""),
                "task": self.manifest.get("task"),
                "input_names": self.manifest.get("input_names", []),
                "input_ranges": self.manifest.get("input_ranges"),
                "preprocess": self.manifest.get("preprocess", {"type": "identity"}),
                "postprocess": self.manifest.get("postprocess", {"type": "identity"}),
                "encryption": self.spec.to_json(),
                # The SEAL serialization this server writes, and what it reads (answers follow the keys').
                "seal": seal_bounds.serialization_metadata(),
            },
        }


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions are served (Triton's version_policy): the latest `count`, all, or some."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def from_json(cls, value: object) -> VersionPolicy:
        if value is None:
            return cls()
        if not isinstance(value, dict) or len(value) != 1:
            raise artifact.ArtifactError("version_policy must be one of {latest}, {all} or {specific}")
        ((kind, body),) = value.items()
        body = body if isinstance(body, dict) else None
        if body is None:
            raise artifact.ArtifactError(f"version_policy.{kind} must be an object")
        if kind == "all":
            return cls("all")
        if kind == "latest":
            count = body.get("num_versions", 1)
            if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1_000_000:
                raise artifact.ArtifactError("version_policy.latest.num_versions must be a positive integer")
            return cls("latest", count)
        if kind == "specific":
            versions = body.get("versions")
            if (
                not isinstance(versions, list)
                or not versions
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in versions)
            ):
                raise artifact.ArtifactError("version_policy.specific.versions must list positive integers")
            return cls("specific", versions=tuple(sorted(set(versions))))
        raise artifact.ArtifactError(f"unknown version_policy {kind!r}; use latest, all or specific")

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.count :]

    def to_json(self) -> dict:
        if self.kind == "all":
            return {"all": {}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"latest": {"num_versions": self.count}}


@dataclass
class ModelEntry:
    """Everything the repository knows of one model name: served versions, or why there are none."""

    name: str
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    served: dict[str, ServedModel] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # version → reason it failed to load
    reason: str = ""  # why nothing is served (unloaded, no artifact, a bad config.json)

    @property
    def versions(self) -> list[str]:
        return sorted(self.served, key=int)

    @property
    def state(self) -> str:
        return READY if self.served else UNAVAILABLE

    def latest(self) -> ServedModel | None:
        return self.served[self.versions[-1]] if self.served else None


def network_plan(manifest: dict, arrays: dict[str, np.ndarray], runtime_for) -> Plan:
    """One activation: the packed two-layer plan (engine.neural, the fastest for that shape);
    more: the leveled plan for any depth (engine.deep), with the parameters its compiler chooses."""
    layers = manifest["layers"]
    if sum(layer.get("type") == "act" for layer in layers) <= 1:
        return NetworkPlan(layers, arrays, runtime_for(NETWORK_PARAMS))
    return DeepNetworkPlan(layers, arrays, float(manifest.get("output_bound", 1.0)), runtime_for)


def compile_artifact(name: str, version: str, directory: Path, runtime_for) -> ServedModel:
    """Load one artifact and compile its plan; any failure is an ArtifactError naming the reason."""
    art = artifact.load(directory)
    kind = art.manifest.get("kind")
    try:
        if kind == "linear":
            plan: Plan = LinearPlan(
                np.atleast_2d(art.arrays["W"]),
                np.atleast_1d(art.arrays["b"]),
                float(art.manifest.get("output_bound", 1.0)),
                runtime_for(LINEAR_PARAMS),
            )
        elif kind == "network":
            plan = network_plan(art.manifest, art.arrays, runtime_for)
        else:
            raise artifact.ArtifactError(f"unsupported model kind {kind!r}")
    except artifact.ArtifactError:
        raise
    except Exception as exc:  # a compile error, a missing array, a malformed layer: this model only
        raise artifact.ArtifactError(f"cannot compile: {type(exc).__name__}: {exc}") from None
    return ServedModel(name, version, art.manifest, plan, plan.spec())


def artifact_versions(directory: Path) -> dict[str, Path]:
    """Version → artifact directory: numbered subdirectories, or the directory itself (one version)."""
    numbered = {
        child.name: child
        for child in directory.iterdir()
        if _VERSION_DIR.fullmatch(child.name) and child.is_dir() and (child / artifact.MANIFEST).is_file()
    }
    if numbered:
        return numbered
    manifest_path = directory / artifact.MANIFEST
    if not manifest_path.is_file():
        return {}
    try:
        declared = str(json.loads(manifest_path.read_text()).get("version", "1"))
    except (OSError, ValueError, AttributeError, RecursionError):
        declared = "1"  # the load reports what is wrong with the manifest
    return {declared if _VERSION_DIR.fullmatch(declared) else "1": directory}


class ModelRegistry:
    """The models one worker serves, keyed by name and version; thread-safe to change while serving."""

    def __init__(self, models_dir: Path | None = None, runtimes: dict[CKKSParams, SealRuntime] | None = None):
        self.models_dir = models_dir
        self.runtimes = runtimes if runtimes is not None else {}
        self.entries: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()

    # --- lookups ------------------------------------------------------------------------------

    @property
    def models(self) -> dict[str, ServedModel]:
        """The latest served version of every READY model, by name."""
        return {name: e.latest() for name, e in sorted(self.entries.items()) if e.served}

    def served_models(self) -> list[ServedModel]:
        """Every served version of every model."""
        return [m for e in self.entries.values() for m in e.served.values()]

    def names(self) -> list[str]:
        return sorted(name for name, e in self.entries.items() if e.served)

    def get(self, name: str, version: str | None = None) -> ServedModel | None:
        try:
            return self.lookup(name, version)
        except ModelNotFound:
            return None

    def lookup(self, name: str, version: str | None = None) -> ServedModel:
        """The model to answer a request: the named version, or the latest served one."""
        entry = self.entries.get(name)
        if entry is None:
            raise ModelNotFound(f"model {name!r} is not served here")
        if not entry.served:
            raise ModelNotFound(f"model {name!r} is unavailable: {entry_reason(entry)}", entry_reason(entry))
        if version is None:
            return entry.latest()
        if version in entry.served:
            return entry.served[version]
        reason = entry.failed.get(version)
        if reason is not None:
            raise ModelNotFound(f"model {name!r} version {version!r} is unavailable: {reason}", reason)
        raise ModelNotFound(
            f"model {name!r} has no version {version!r} served here (served: {', '.join(entry.versions)})"
        )

    def entry(self, name: str) -> ModelEntry | None:
        return self.entries.get(name)

    def runtime(self, params: CKKSParams) -> SealRuntime | None:
        return self.runtimes.get(params)

    def runtime_for(self, params: CKKSParams) -> SealRuntime:
        with self._lock:
            if params not in self.runtimes:
                self.runtimes[params] = SealRuntime(params)
            return self.runtimes[params]

    def index(self) -> list[dict]:
        """The repository index: every model on disk or known here, each version with its state."""
        rows = []
        on_disk = set(self.disk_names())
        for name in sorted(on_disk | set(self.entries)):
            entry = self.entries.get(name)
            if entry is None:
                rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": "not loaded"})
                continue
            for version in entry.versions:
                rows.append({"name": name, "version": version, "state": READY, "reason": ""})
            for version, reason in sorted(entry.failed.items()):
                rows.append({"name": name, "version": version, "state": UNAVAILABLE, "reason": reason})
            if not entry.served and not entry.failed:
                rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": entry_reason(entry)})
        return rows

    def disk_names(self) -> list[str]:
        if self.models_dir is None or not self.models_dir.is_dir():
            return []
        return sorted(
            child.name
            for child in self.models_dir.iterdir()
            if _MODEL_NAME.fullmatch(child.name) and child.is_dir() and _has_artifact(child)
        )

    # --- changes ------------------------------------------------------------------------------

    def load(self, name: str) -> ModelEntry:
        """(Re)load one model from disk: its policy's versions, each compiled; the result replaces the
        old entry only once built, so requests in flight keep the versions they resolved."""
        if self.models_dir is None or not _MODEL_NAME.fullmatch(name):
            raise ModelNotFound(f"model {name!r} is not in the model repository")
        directory = self.models_dir / name
        if not directory.is_dir():
            raise ModelNotFound(f"model {name!r} is not in the model repository")
        entry = ModelEntry(name)
        try:
            entry.policy = read_policy(directory)
            versions = artifact_versions(directory)
            if not versions:
                entry.reason = f"no artifact ({artifact.MANIFEST}) in {name}/ or its numbered version directories"
            for version in [str(v) for v in entry.policy.select([int(v) for v in versions])]:
                try:
                    entry.served[version] = compile_artifact(name, version, versions[version], self.runtime_for)
                    manifest_name = entry.served[version].manifest.get("name")
                    if manifest_name != name:
                        del entry.served[version]
                        raise artifact.ArtifactError(
                            f"its manifest names the model {manifest_name!r}, but it lives in {name}/"
                        )
                except Exception as exc:  # whatever one artifact does wrong, it is that version's failure
                    entry.failed[version] = self._reason(exc, versions[version])
            if versions and not entry.served and not entry.failed:
                entry.reason = f"the version policy {entry.policy.to_json()} selects none of {sorted(versions)}"
        except Exception as exc:  # a bad config.json, an unreadable folder: this model only
            entry.reason = self._reason(exc, directory)
        with self._lock:
            self.entries[name] = entry
        for version, reason in entry.failed.items():
            log.error("model %s version %s is unavailable: %s", name, version, reason)
        if entry.reason:
            log.error("model %s is unavailable: %s", name, entry.reason)
        return entry

    def _reason(self, exc: Exception, directory: Path) -> str:
        """Why a model failed, without the server's paths (clients read it in the index and in 404s)."""
        if isinstance(exc, RecursionError):
            return "a JSON file nests too deeply"
        reason = str(exc) if isinstance(exc, (artifact.ArtifactError, OSError)) else f"{type(exc).__name__}: {exc}"
        for prefix in (str(directory) + ": ", str(directory) + "/", str(self.models_dir) + "/"):
            reason = reason.replace(prefix, "")
        return reason

    def unload(self, name: str) -> None:
        with self._lock:
            if name not in self.entries and name not in self.disk_names():
                raise ModelNotFound(f"model {name!r} is not in the model repository")
            self.entries[name] = ModelEntry(name, reason=UNLOADED)

    def mark_unloaded(self, name: str) -> None:
        """Another worker unloaded `name`: follow, even if this worker never knew the model."""
        if not _MODEL_NAME.fullmatch(name):
            return
        with self._lock:
            self.entries[name] = ModelEntry(name, reason=UNLOADED)

    def is_unloaded(self, name: str) -> bool:
        entry = self.entries.get(name)
        return entry is not None and entry.reason == UNLOADED and not entry.served


def _has_artifact(directory: Path) -> bool:
    try:
        return bool(artifact_versions(directory))
    except OSError:  # a folder that cannot be listed is not a model
        return False


def entry_reason(entry: ModelEntry) -> str:
    if entry.reason:
        return entry.reason
    if entry.failed:
        return "; ".join(f"version {v}: {r}" for v, r in sorted(entry.failed.items()))
    return "no version served"


def read_policy(directory: Path) -> VersionPolicy:
    path = directory / MODEL_CONFIG
    if not path.is_file():
        return VersionPolicy()
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise artifact.ArtifactError(f"cannot read {MODEL_CONFIG}: {exc}") from None
    except RecursionError:
        raise artifact.ArtifactError(f"{MODEL_CONFIG} nests too deeply") from None
    if not isinstance(config, dict):
        raise artifact.ArtifactError(f"{MODEL_CONFIG} must be a JSON object")
    return VersionPolicy.from_json(config.get("version_policy"))


def load_registry(models_dir: Path, skip: frozenset[str] | set[str] = frozenset()) -> ModelRegistry:
    """Every model under `models_dir` (but those in `skip`, which are listed as unloaded).

    A model that fails to load is kept as UNAVAILABLE with its reason: one bad artifact never
    stops the others from being served."""
    runtimes = {LINEAR_PARAMS: SealRuntime(LINEAR_PARAMS), NETWORK_PARAMS: SealRuntime(NETWORK_PARAMS)}
    registry = ModelRegistry(Path(models_dir), runtimes)
    if not registry.models_dir.is_dir():
        raise artifact.ArtifactError(f"the models directory {models_dir} does not exist")
    for name in registry.disk_names():
        if name in skip:
            registry.unload(name)
        else:
            registry.load(name)
    return registry
