"""The first-run demo: serve the shipped models, predict on encrypted breast-cancer rows, compare.

Starts `heserve-server` (gunicorn, embedded on-disk key store) on 127.0.0.1, waits
until it is ready, encrypts a few rows with the client SDK, gets encrypted
predictions, decrypts them locally and prints them beside the plaintext model's,
with the time each step took. Then stops the server.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from heserve.client import Client
from heserve.models import artifact
from heserve.models.nets import digits_split
from heserve.models.recipes import RECIPES, breast_cancer_split

ROOT = Path(__file__).resolve().parent.parent
HESERVE = str(Path(sys.executable).with_name("heserve"))  # the command line, installed with the project


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port")


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            with Client(url, timeout=2) as c:
                c._json("GET", "/v2/health/ready")
                return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


def ensure_models() -> None:
    for name, recipe in RECIPES.items():
        directory = ROOT / "models" / name
        if not (directory / artifact.MANIFEST).exists():
            print(f"training {name} ...")
            recipe(directory)


def command_line_demo(url: str, rows: np.ndarray) -> None:
    """The same prediction for people who do not write Python: CSV in, predictions out."""
    names = artifact.load(ROOT / "models" / "breast-cancer-logreg").manifest["input_names"]
    with tempfile.TemporaryDirectory(prefix="heserve-demo-cli-") as tmp:
        csv_in, csv_out = Path(tmp) / "rows.csv", Path(tmp) / "predictions.csv"
        with csv_in.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(names)
            writer.writerows([f"{v:g}" for v in row] for row in rows)
        command = [
            HESERVE, "predict", "--server", url, "--model", "breast-cancer-logreg",
            "--input", str(csv_in), "--output", str(csv_out), "--proba", "--quiet", "--erase-key",
            "--key-file", str(Path(tmp) / "bc.key"),
        ]  # fmt: skip
        subprocess.run(command, cwd=ROOT, check=True)
        print(
            f"\ncommand line: heserve predict --model breast-cancer-logreg --input rows.csv "
            f"--output predictions.csv --proba  ({len(rows)} rows, {len(names)} columns)"
        )
        print("\n".join(csv_out.read_text().splitlines()[:4]) + "\n...")


def main() -> int:
    ensure_models()
    port = free_port(int(os.environ.get("HESERVE_PORT", "8000")))
    url = f"http://127.0.0.1:{port}"
    keys_dir = tempfile.mkdtemp(prefix="heserve-demo-keys-")
    server = subprocess.Popen(
        [sys.executable, "-m", "heserve.server", "--port", str(port), "--keys-dir", keys_dir],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.perf_counter()
        wait_ready(url, server)
        print(f"server ready at {url} (gunicorn, key store {keys_dir}) in {time.perf_counter() - t0:.1f} s\n")
        _, x_test, _, y_test = breast_cancer_split()
        rows = x_test[:5]
        with Client(url) as client:
            model = client.model("breast-cancer-logreg")
            secret = model.secret_context
            t = time.perf_counter()
            key_id = model.register()
            t_register = time.perf_counter() - t
            t = time.perf_counter()
            request = model.encrypt(rows, "single")[0]
            t_encrypt = time.perf_counter() - t
            t = time.perf_counter()
            results = model.send(request)
            t_send = time.perf_counter() - t
            t = time.perf_counter()
            scores = model.decrypt(request, results)[:, 0]
            t_decrypt = time.perf_counter() - t
            plain = client.infer_plaintext("breast-cancer-logreg", rows)[:, 0]
            names = model._postprocess["class_names"]
            print(
                f"CKKS N={secret.params.poly_modulus_degree}, key id {key_id[:8]}..., "
                f"{request.nbytes // len(request.ciphertexts)} bytes per encrypted row\n"
            )
            print(
                f"{'row':>3}  {'encrypted logit':>16}  {'plaintext logit':>16}  {'|diff|':>8}  "
                f"{'encrypted':>9}  {'plaintext':>9}  {'truth':>9}"
            )
            labels_enc = (scores >= 0).astype(int)
            labels_plain = (plain >= 0).astype(int)
            for i in range(len(rows)):
                print(
                    f"{i:>3}  {scores[i]:>16.6f}  {plain[i]:>16.6f}  {abs(scores[i] - plain[i]):>8.1e}  "
                    f"{names[labels_enc[i]]:>9}  {names[labels_plain[i]]:>9}  {names[y_test[i]]:>9}"
                )
            print(
                f"\nregister keys {t_register * 1e3:.1f} ms (once) | encrypt {t_encrypt * 1e3:.1f} ms | "
                f"send + evaluate + return {t_send * 1e3:.1f} ms | decrypt {t_decrypt * 1e3:.1f} ms "
                f"for {len(rows)} rows"
            )
            t = time.perf_counter()
            batch = model.predict(x_test, layout="batch")
            t_batch = time.perf_counter() - t
            agree = float(np.mean(batch == (client.infer_plaintext("breast-cancer-logreg", x_test)[:, 0] >= 0)))
            print(
                f"batch layout: {len(x_test)} test rows in {t_batch * 1e3:.0f} ms, "
                f"labels agree with plaintext on {agree:.0%}, accuracy {np.mean(batch == y_test):.1%}"
            )
            model.delete_key()
            print("server-side evaluation keys erased.\n")
            _, digits, _, digit_labels = digits_split()
            network = client.model("digits-mlp")
            t = time.perf_counter()
            predicted = network.predict(digits[:8], layout="single")
            t_net = time.perf_counter() - t
            print(
                f"digits-mlp (64-32-x^2-10, N=8192), 8 images one by one, encrypted: {predicted.tolist()} "
                f"(truth {digit_labels[:8].tolist()}) in {t_net * 1e3:.0f} ms with key registration"
            )
            network.delete_key()
            deep = client.model("digits-cryptonets")
            t = time.perf_counter()
            deep.register()
            t_keys = time.perf_counter() - t
            t = time.perf_counter()
            predicted = deep.predict(digits[:4], layout="single")
            t_deep = time.perf_counter() - t
            print(
                f"digits-cryptonets (conv-x^2-pool-dense-x^2-dense, depth 5, "
                f"N={deep.spec.ckks.poly_modulus_degree}), 4 images: "
                f"{predicted.tolist()} (truth {digit_labels[:4].tolist()}) in {t_deep * 1e3:.0f} ms "
                f"after a {t_keys:.1f} s key registration"
            )
            deep.delete_key()
        command_line_demo(url, x_test[:6])
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(keys_dir, ignore_errors=True)
        print("server stopped.")


if __name__ == "__main__":
    sys.exit(main())
