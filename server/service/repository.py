"""Model repository control (load, unload) shared by every worker of one server.

Each gunicorn worker holds its own compiled models. An operator's load or unload is carried out
by the worker that receives it and written to a small state file in the server's run directory;
every other worker sees the file change (one stat per request) and follows: an unload at once,
a load when the model is next asked for, so a request to another model never waits for it.
The file outlives a SIGHUP reload (new workers start from it) but not the server.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from heserve.server.service.registry import ModelEntry, ModelNotFound, ModelRegistry, ServedModel

STATE_FILE = "repository.json"


class RepositoryState:
    """`{"unloaded": [names], "loads": {name: count}}`: in a file shared by workers, or in memory."""

    def __init__(self, run_dir: Path | None):
        self.path = Path(run_dir) / STATE_FILE if run_dir is not None else None
        self._memory: dict = {"unloaded": [], "loads": {}}
        self._seen: tuple[int, int] | None = None

    def read(self) -> dict:
        if self.path is None:
            return json.loads(json.dumps(self._memory))
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"unloaded": [], "loads": {}}
        except ValueError:
            return {"unloaded": [], "loads": {}}  # never written half: see update()
        return state if isinstance(state, dict) else {"unloaded": [], "loads": {}}

    def changed(self) -> bool:
        """Whether the file changed since the last call: one stat, cheap enough for every request."""
        if self.path is None:
            return False
        try:
            stat = self.path.stat()
            # Every write is a new file (os.replace): its inode tells it apart from the last one even
            # when the clock's tick and the size are the same.
            signature = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
        except FileNotFoundError:
            signature = None
        if signature == self._seen:
            return False
        self._seen = signature
        return True

    @contextmanager
    def update(self) -> Iterator[dict]:
        """Read, change and write the state under an exclusive lock (workers may act at once)."""
        if self.path is None:
            yield self._memory
            return
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read()
            state.setdefault("unloaded", [])
            state.setdefault("loads", {})
            yield state
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(state, sort_keys=True))
            os.replace(temporary, self.path)  # readers see the old file or the new one, never half

    def unloaded(self) -> set[str]:
        return set(self.read().get("unloaded", []))


class Repository:
    """A worker's models, kept in step with the operator's decisions made through any worker."""

    def __init__(self, registry: ModelRegistry, state: RepositoryState):
        self.registry = registry
        self.state = state
        self._applied: dict[str, int] = dict(state.read().get("loads", {}))
        self._stale: set[str] = set()
        self._lock = threading.Lock()
        self._control = threading.Lock()  # one load or unload at a time: registry and state file agree
        state.changed()  # the registry was built from the current state

    def sync(self) -> None:
        if not self.state.changed():
            return
        current = self.state.read()
        unloaded = set(current.get("unloaded", []))
        with self._lock:
            for name, count in current.get("loads", {}).items():
                if self._applied.get(name, 0) < count:
                    self._applied[name] = count
                    if name not in unloaded:
                        self._stale.add(name)
            for name in unloaded:
                self._stale.discard(name)  # a load recorded before this unload must not bring it back
                if not self.registry.is_unloaded(name):
                    self.registry.mark_unloaded(name)

    def _refresh(self, name: str) -> None:
        with self._lock:
            if name not in self._stale:
                return
            self._stale.discard(name)
        try:
            self.registry.load(name)
        except ModelNotFound:
            self.registry.mark_unloaded(name)  # its folder went away since another worker loaded it

    def lookup(self, name: str, version: str | None = None) -> ServedModel:
        self.sync()
        self._refresh(name)
        return self.registry.lookup(name, version)

    def refresh_all(self) -> None:
        """Every model loaded through another worker, loaded here too (before listing all models)."""
        self.sync()
        for name in list(self._stale):
            self._refresh(name)

    def index(self) -> list[dict]:
        self.refresh_all()
        return self.registry.index()

    def load(self, name: str) -> ModelEntry:
        """Load (or reload from disk) one model in this worker, then tell the others."""
        with self._control:
            self.sync()
            entry = self.registry.load(name)  # ModelNotFound for a name with no directory
            with self.state.update() as state:
                state["unloaded"] = [n for n in state["unloaded"] if n != name]
                state["loads"][name] = state["loads"].get(name, 0) + 1
                count = state["loads"][name]
            with self._lock:
                self._applied[name] = count
                self._stale.discard(name)
            return entry

    def unload(self, name: str) -> None:
        with self._control:
            self.sync()
            self.registry.unload(name)  # ModelNotFound for a name the repository does not have
            with self._lock:
                self._stale.discard(name)
            with self.state.update() as state:
                if name not in state["unloaded"]:
                    state["unloaded"].append(name)


__all__ = ["ModelNotFound", "Repository", "RepositoryState"]
