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
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ArtifactError(f"{directory}: cannot read {MANIFEST}: {detail}") from None
    except RecursionError:
        raise ArtifactError(f"{directory}: {MANIFEST} nests too deeply") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("name"), str):
        raise ArtifactError(f"{directory}: manifest has no name")
    weights = manifest.get("weights", {})
    if not isinstance(weights, dict):
        raise ArtifactError(f"{directory}: the manifest's 'weights' must be an object")
    weights_file = weights.get("file", WEIGHTS)
    # A plain file name in the artifact's own folder: a manifest must not reach other files.
    if not isinstance(weights_file, str) or Path(weights_file).name != weights_file or weights_file in ("", ".", ".."):
        raise ArtifactError(f"{directory}: the weights file must be a file name in the artifact's folder")
    try:
        with np.load(directory / weights_file, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ArtifactError(f"{directory}: cannot read weights ({weights_file}): {detail}") from None
    if weights.get("sha256") != weights_digest(arrays):
        raise ArtifactError(f"{directory}: weights do not match the manifest's checksum")
    return Artifact(manifest, arrays)
