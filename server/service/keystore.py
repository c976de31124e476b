"""Registered evaluation keys: public key material with a time to live, erasable on request.

Two backends implement `KeyStore`: `DiskKeyStore` here (the embedded default, one machine)
and `RedisKeyStore` in redis_keystore.py (several instances sharing one registry). A key id
is 128 random bits and never reused, so it doubles as the version of a key: a worker's cache
entry for an id is valid exactly as long as the store still holds that id, which every use
checks.

The embedded backend keeps one directory per server. A key is two files written
atomically (temporary file, fsync, rename): `<id>.keys` holds the serialized public
evaluation keys, `<id>.json` its metadata. The metadata file is written last and
removed first, so its presence is what makes a key exist; every gunicorn worker sees
an erasure at its next request because each use checks the metadata file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
# Records stored before they said which SEAL serialization version the client's keys came in were
# all registered in 4.3: the only version this server accepted then. Such records load with it.
LEGACY_SEAL_VERSION = "4.3"


@dataclass
class KeyRecord:
    key_id: str
    params: dict
    created_at: float
    expires_at: float
    galois_elements: list[int]
    has_relin_keys: bool
    size_bytes: int
    owner: str = ""
    binding_key: str = ""  # hex; ciphertexts sent with tags are checked against it
    # The SEAL serialization version ("major.minor") the client's keys were written in: results are
    # written in it too, since SEAL reads only its own version (engine.seal_bounds.with_version).
    seal_version: str = LEGACY_SEAL_VERSION

    def public_view(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "status": "active",
            "ckks": self.params,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "expires_in_seconds": max(0, round(self.expires_at - time.time())),
            "galois_elements": self.galois_elements,
            "relin_keys": self.has_relin_keys,
            "size_bytes": self.size_bytes,
            "seal_version": self.seal_version,
        }


class KeyStoreUnavailable(Exception):
    """The key registry cannot be reached; the request may succeed if retried later (503)."""


class KeyStore(Protocol):
    ttl_seconds: float

    def put(
        self,
        material: bytes,
        params: dict,
        galois_elements: list[int],
        has_relin_keys: bool,
        owner: str = "",
        binding_key: str = "",
        key_id: str | None = None,
        seal_version: str = LEGACY_SEAL_VERSION,
    ) -> KeyRecord: ...

    def get(self, key_id: str) -> KeyRecord | None: ...

    def material(self, key_id: str) -> bytes | None: ...

    def delete(self, key_id: str) -> bool: ...

    def sweep(self) -> int: ...

    def count(self) -> int: ...

    def ping(self) -> None:
        """Raise KeyStoreUnavailable if the store cannot serve requests now."""

    def describe(self) -> str:
        """Where keys are kept, in words for the privacy report."""


def new_record(
    material: bytes,
    params: dict,
    galois_elements: list[int],
    has_relin_keys: bool,
    owner: str,
    binding_key: str,
    now: float,
    ttl_seconds: float,
    key_id: str | None = None,
    seal_version: str = LEGACY_SEAL_VERSION,
) -> KeyRecord:
    return KeyRecord(
        key_id or new_key_id(),
        params,
        now,
        now + ttl_seconds,
        sorted(galois_elements),
        has_relin_keys,
        len(material),
        owner,
        binding_key,
        seal_version,
    )


def new_key_id() -> str:
    """128 random bits, never reused: the id doubles as the version of a key in every cache."""
    return secrets.token_hex(16)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class DiskKeyStore:
    """Key material on the local disk, shared by the workers of one server."""

    def __init__(self, directory: Path, ttl_seconds: float, clock: Callable[[], float] = time.time):
        self.directory = directory
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)

    def _paths(self, key_id: str) -> tuple[Path, Path]:
        return self.directory / f"{key_id}.json", self.directory / f"{key_id}.keys"

    def put(
        self,
        material: bytes,
        params: dict,
        galois_elements: list[int],
        has_relin_keys: bool,
        owner: str = "",
        binding_key: str = "",
        key_id: str | None = None,
        seal_version: str = LEGACY_SEAL_VERSION,
    ) -> KeyRecord:
        record = new_record(
            material,
            params,
            galois_elements,
            has_relin_keys,
            owner,
            binding_key,
            self.clock(),
            self.ttl_seconds,
            key_id,
            seal_version,
        )
        meta_path, data_path = self._paths(record.key_id)
        _atomic_write(data_path, material)
        _atomic_write(meta_path, json.dumps(asdict(record)).encode())
        return record

    def get(self, key_id: str) -> KeyRecord | None:
        """The live record, or None if unknown, erased or expired (expired keys are erased here)."""
        if not KEY_ID_PATTERN.match(key_id):
            return None
        meta_path, _ = self._paths(key_id)
        try:
            record = KeyRecord(**json.loads(meta_path.read_bytes()))
        except (FileNotFoundError, ValueError, TypeError):
            return None
        if record.expires_at <= self.clock():
            self.delete(key_id)
            return None
        return record

    def material(self, key_id: str) -> bytes | None:
        _, data_path = self._paths(key_id)
        try:
            return data_path.read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key_id: str) -> bool:
        if not KEY_ID_PATTERN.match(key_id):
            return False
        meta_path, data_path = self._paths(key_id)
        existed = True
        try:
            meta_path.unlink()
        except FileNotFoundError:
            existed = False
        try:
            data_path.unlink()
        except FileNotFoundError:
            pass
        return existed

    def sweep(self) -> int:
        """Erase every expired key and any orphaned or half-written file; returns keys erased."""
        erased = 0
        now = self.clock()
        for meta_path in self.directory.glob("*.json"):
            key_id = meta_path.stem
            try:
                expires_at = json.loads(meta_path.read_bytes())["expires_at"]
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                continue
            if expires_at <= now and self.delete(key_id):
                erased += 1
        for data_path in self.directory.glob("*.keys"):
            if not (self.directory / f"{data_path.stem}.json").exists():
                # A data file without metadata older than a minute is a crashed write or erasure.
                try:
                    if data_path.stat().st_mtime < now - 60:
                        data_path.unlink()
                except FileNotFoundError:
                    pass
        for tmp in self.directory.glob(".tmp-*"):
            try:
                if tmp.stat().st_mtime < now - 60:
                    tmp.unlink()
            except FileNotFoundError:
                pass
        return erased

    def count(self) -> int:
        """Live keys only: an expired key the sweeper has not reached yet is not counted."""
        now = self.clock()
        live = 0
        for meta_path in self.directory.glob("*.json"):
            try:
                if json.loads(meta_path.read_bytes())["expires_at"] > now:
                    live += 1
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                continue
        return live

    def ping(self) -> None:
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise KeyStoreUnavailable("the key directory is not writable")

    def describe(self) -> str:
        return "the key store on this server's disk (directory mode 0700)"


class Sweeper:
    """Erases expired keys every `interval` seconds from a daemon thread of each worker.

    Without it an expired key's bytes would stay on disk until its id is touched again;
    with it they are gone within `interval` seconds of expiry. Several workers sweeping the
    same directory is harmless: erasing is idempotent.
    """

    def __init__(self, store: KeyStore, interval: float):
        self.store = store
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.sweep()
            except Exception:  # a full disk or an unreachable store must not end the thread
                continue


class KeyCache:
    """A worker's LRU cache of deserialized keys, bounded in bytes at their deserialized size.

    gthread workers serve several requests at once, so every operation holds a lock: the
    entries and the byte counter change together or not at all.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key_id: str) -> Any | None:
        with self._lock:
            entry = self._entries.get(key_id)
            if entry is None:
                return None
            self._entries.move_to_end(key_id)
            return entry[0]

    def put(self, key_id: str, value: Any, size: int) -> None:
        with self._lock:
            self._discard(key_id)
            if size > self.max_bytes:
                return
            self._entries[key_id] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    def discard(self, key_id: str) -> None:
        with self._lock:
            self._discard(key_id)

    def _discard(self, key_id: str) -> None:
        entry = self._entries.pop(key_id, None)
        if entry is not None:
            self._bytes -= entry[1]

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
