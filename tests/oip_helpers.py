"""Helpers for tests/test_oip_clients.py: model directories, a numpy reference of the shipped
models, connections pinned to one gunicorn worker, and Prometheus text parsing."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from heserve.models import artifact

from .serverproc import ROOT, ServerProcess

SHIPPED = ROOT / "models"


# --- model directories ---------------------------------------------------------------------------


def copy_model(
    name: str,
    dest: Path,
    *,
    as_name: str | None = None,
    version: str | None = None,
    bias_offset: float = 0.0,
    description: str | None = None,
) -> Path:
    """Copy a shipped artifact to `dest` (a model directory or a numbered version directory).

    `as_name`, `version` and `description` rewrite the manifest (none of them is covered by the
    weights' checksum); `bias_offset` re-exports the weights with every bias shifted, with a
    checksum that matches, so two copies answer differently and a test can tell which served."""
    art = artifact.load(SHIPPED / name)
    manifest = dict(art.manifest)
    if as_name is not None:
        manifest["name"] = as_name
    if version is not None:
        manifest["version"] = version
    if description is not None:
        manifest["description"] = description
    if bias_offset:
        arrays = dict(art.arrays)
        last_bias = "b" if "b" in arrays else sorted(k for k in arrays if k.startswith("b"))[-1]
        arrays[last_bias] = arrays[last_bias] + bias_offset
        artifact.save(dest, manifest, arrays)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SHIPPED / name / artifact.WEIGHTS, dest / artifact.WEIGHTS)
        (dest / artifact.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dest


def corrupt_weights(directory: Path) -> None:
    """Rewrite weights.npz with one value changed: the manifest's checksum no longer matches."""
    with np.load(directory / artifact.WEIGHTS, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    first = sorted(arrays)[0]
    arrays[first] = arrays[first].copy()
    arrays[first].flat[0] += 1.0
    np.savez(directory / artifact.WEIGHTS, **arrays)


def truncate_manifest(directory: Path) -> None:
    text = (directory / artifact.MANIFEST).read_text()
    (directory / artifact.MANIFEST).write_text(text[: len(text) // 2])


# --- the plaintext model, reimplemented ------------------------------------------------------------


def n_features(name: str) -> int:
    return len(artifact.load(SHIPPED / name).manifest["preprocess"]["mean"])


def sample_rows(name: str, rows: int, seed: int = 0) -> np.ndarray:
    """FP32 rows around the training distribution (the manifest's standardisation)."""
    pre = artifact.load(SHIPPED / name).manifest["preprocess"]
    rng = np.random.default_rng(seed)
    x = np.asarray(pre["mean"]) + np.asarray(pre["scale"]) * rng.normal(size=(rows, len(pre["mean"])))
    return x.astype(np.float32)


def expected_outputs(name: str, x: np.ndarray, bias_offset: float = 0.0) -> np.ndarray:
    """The raw outputs (logits or regression values) of a shipped linear model or one-activation
    network for rows x, computed with numpy from weights.npz and the manifest's preprocessing."""
    art = artifact.load(SHIPPED / name)
    pre = art.manifest["preprocess"]
    z = (np.asarray(x, dtype=np.float64) - np.asarray(pre["mean"])) / np.asarray(pre["scale"])
    a = art.arrays
    if art.manifest["kind"] == "linear":
        return z @ a["W"].T + a["b"] + bias_offset
    dense = [layer for layer in art.manifest["layers"] if layer["type"] == "dense"]
    acts = [layer for layer in art.manifest["layers"] if layer["type"] == "act"]
    assert len(dense) == 2 and len(acts) == 1, "only one-activation networks are reimplemented here"
    h = z @ a[dense[0]["weights"]].T + a[dense[0]["bias"]]
    h = h * (h + float(acts[0].get("beta", 0.0)))
    return h @ a[dense[1]["weights"]].T + a[dense[1]["bias"]] + bias_offset


# --- connections pinned to one worker ---------------------------------------------------------------


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        entries = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in entries:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[len("socket:[") : -1]))
    return inodes


def _server_side_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server's end of the TCP connection from `client_port` (this network namespace)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                return inode
    return None


class WorkerConnection:
    """One keep-alive HTTP/1.1 connection that a known gunicorn worker holds.

    http.client silently reconnects a closed connection (possibly to the other worker): every
    request here checks that it went over the same socket."""

    def __init__(self, conn: http.client.HTTPConnection, pid: int):
        self.conn = conn
        self.pid = pid
        self.local_port = conn.sock.getsockname()[1]

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        assert self.conn.sock is not None and self.conn.sock.getsockname()[1] == self.local_port, (
            f"the connection to worker {self.pid} was closed by the server: the request went elsewhere"
        )
        return response.status, dict(response.getheaders()), data

    def post_json(self, path: str, message: dict):
        status, headers, data = self.request(
            "POST", path, json.dumps(message).encode(), {"Content-Type": "application/json"}
        )
        return status, headers, data

    def close(self) -> None:
        self.conn.close()


def connections_per_worker(server: ServerProcess, attempts: int = 60) -> dict[int, WorkerConnection]:
    """One open connection held by each live worker of `server` (pid → connection).

    Opens connections until every worker has accepted one; a worker's own socket table
    (/proc/<pid>/fd) says which worker holds which connection."""
    parts = urlsplit(server.url)
    pids = server.worker_pids()
    assert pids, "the server has no worker"
    found: dict[int, WorkerConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    deadline = time.monotonic() + 30
    for _ in range(attempts):
        if len(found) == len(pids) or time.monotonic() > deadline:
            break
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        conn.request("GET", "/v2/health/live")
        conn.getresponse().read()
        if conn.sock is None:  # answered with Connection: close (a worker shutting down): not one to keep
            conn.close()
            continue
        inode = _server_side_inode(parts.port, conn.sock.getsockname()[1])
        owner = next((pid for pid in pids if inode is not None and inode in _socket_inodes(pid)), None)
        if owner is not None and owner not in found:
            found[owner] = WorkerConnection(conn, owner)
        else:
            spare.append(conn)  # kept open meanwhile: the worker that holds it stays a little busier
    for conn in spare:
        conn.close()
    assert len(found) == len(pids), f"could not reach every worker: {sorted(found)} of {sorted(pids)}"
    return found


# --- Prometheus text -------------------------------------------------------------------------------


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        labels: dict[str, str] = {}
        if "{" in head:
            name, _, rest = head.partition("{")
            for item in _split_labels(rest.rstrip("}")):
                key, _, raw = item.partition("=")
                labels[key.strip()] = raw.strip().strip('"')
        else:
            name = head
        samples.append((name.strip(), labels, float(value)))
    return samples


def _split_labels(text: str) -> list[str]:
    items, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        items.append(current)
    return items


def log_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.log().splitlines() if line.strip()]


def json_log_records(server: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in log_lines(server)]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; its last value otherwise fails the test."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:g} s (last: {value!r})")
