"""Model artifacts on disk: a JSON manifest plus weights in a pickle-free .npz."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """A model directory that is missing, malformed or fails its checksum."""


def weights_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the arrays' names, dtypes, shapes and bytes (independent of zip metadata)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class Artifact:
    manifest: dict
    arrays: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.manifest["name"]


def save(directory: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["weights"] = {"file": WEIGHTS, "sha256": weights_digest(arrays)}
    np.savez(directory / WEIGHTS, **arrays)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load(directory: Path) -> Artifact:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{directory}: cannot read {MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("name"), str):
        raise ArtifactError(f"{directory}: manifest has no name")
    weights = manifest.get("weights", {})
    try:
        with np.load(directory / weights.get("file", WEIGHTS), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{directory}: cannot read weights: {exc}") from None
    if weights.get("sha256") != weights_digest(arrays):
        raise ArtifactError(f"{directory}: weights do not match the manifest's checksum")
    return Artifact(manifest, arrays)
