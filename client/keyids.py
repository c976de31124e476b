"""Which server-side evaluation key belongs to which secret key, kept on disk so later runs reuse it.

A `RemoteModel` remembers its key id only in memory. A program that runs once per call (the `heserve`
command line) would otherwise upload the evaluation keys again on every run and leave the old ones
on the server until they expire; `KeyIdRecords` keeps the ids beside the secret key file instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from heserve.client.errors import KeyIdFileError

if TYPE_CHECKING:  # client.py may come to use these records: no import cycle at run time
    from heserve.client.client import RemoteModel

KEY_IDS_SUFFIX = ".keyids.json"
KEY_REUSE_MARGIN_SECONDS = 120  # a recorded key that expires sooner than this is replaced
KEY_ID = re.compile(r"^[0-9a-f]{32}$")


def secret_fingerprint(model: RemoteModel) -> str:
    """Identifies the secret key a key id was registered for (a hash of its random binding key)."""
    # The salt predates this module: changing it would orphan every record already on disk.
    return hashlib.sha256(b"heserve-cli-key-id\0" + model.secret_context.binding_key).hexdigest()[:16]


def expires_in(status: dict) -> float:
    """Seconds a key has left according to the server's key status (0 when it does not say)."""
    try:
        return float(status.get("expires_in_seconds", 0))
    except (TypeError, ValueError):
        return 0.0


class KeyIdRecords:
    """The evaluation-key ids registered with one secret key file, kept beside it as `<key file>.keyids.json`.

    One record per (server URL, model name): the key id the server gave, its expiry (ISO time as the
    server reported it, or empty) and `secret_fingerprint` of the secret key it was registered with,
    so that a record left behind by a replaced key file is recognised as stale rather than reused.
    A caller that finds a live record for its fingerprint sets `RemoteModel.key_id` to it instead of
    uploading the evaluation keys again, and reads the id here when it wants the key erased.

    The file is rewritten whole (write to a temporary file, then rename), and removed when the last
    record goes. A file that cannot be read or parsed raises `KeyIdFileError`; it holds no secret,
    so deleting it only costs one new registration.
    """

    def __init__(self, key_file: Path):
        self.path = key_file.with_name(key_file.name + KEY_IDS_SUFFIX)

    def _load(self) -> list[dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise KeyIdFileError(f"cannot read {self.path}: {exc}; delete it if it is damaged") from None
        records = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise KeyIdFileError(f"{self.path} is not a key-id file of this command line; delete it if it is damaged")
        return [r for r in records if isinstance(r, dict)]

    def _save(self, records: list[dict]) -> None:
        if not records:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            return
        data = json.dumps({"format": 1, "keys": records}, indent=2) + "\n"
        # A crash mid-write must not leave a half-written file that fails every later run.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-", suffix=KEY_IDS_SUFFIX)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def exists(self) -> bool:
        """Whether the key-id file is on disk."""
        return self.path.exists()

    def find(self, server: str, model: str) -> dict | None:
        """The record of `model` on `server` (keys: server, model, key_id, expires_at, secret), if any."""
        for record in self._load():
            if record.get("server") == server and record.get("model") == model:
                return record
        return None

    def put(self, server: str, model: str, key_id: str, expires_at: str, fingerprint: str) -> None:
        """Record `key_id` for `model` on `server`, replacing any earlier record of that pair."""
        records = [r for r in self._load() if not (r.get("server") == server and r.get("model") == model)]
        records.append(
            {"server": server, "model": model, "key_id": key_id, "expires_at": expires_at, "secret": fingerprint}
        )
        self._save(records)

    def remove(self, server: str, model: str) -> None:
        """Forget the record of `model` on `server` (the server's copy is the caller's to erase)."""
        records = self._load()
        kept = [r for r in records if not (r.get("server") == server and r.get("model") == model)]
        if len(kept) != len(records):
            self._save(kept)
