"""The command line (`heserve ...`), driven as a user would: subprocesses against the real server."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests

from heserve.models import artifact
from heserve.models.nets import digits_split
from heserve.models.recipes import breast_cancer_split, diabetes_split, linnerud_split

from .serverproc import ROOT, free_port, start_server

CLIENT_ENV_VARIABLES = ("HESERVE_API_KEY", "HESERVE_URL", "HESERVE_CLIENT_KEYS_DIR", "HESERVE_DEBUG")


# --- helpers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """The environment of every command: default key files in a private directory, no client settings inherited."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_VARIABLES}
    env["HESERVE_CLIENT_KEYS_DIR"] = str(tmp_path_factory.mktemp("client-keys"))
    return env
HESERVE = str(Path(sys.executable).with_name("heserve"))  # the console script the project installs


def run_cli(env: dict[str, str], *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [HESERVE, *args],
        cwd=ROOT,
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def assert_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The command failed with `code` and exactly one `error: ...` line on stderr holding every fragment."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: Path | str) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def column(header: list[str], rows: list[list[str]], name: str, kind=float) -> np.ndarray:
    index = header.index(name)
    return np.asarray([kind(row[index]) for row in rows])


def manifest(name: str) -> dict:
    return artifact.load(ROOT / "models" / name).manifest


def plaintext_scores(name: str, x: np.ndarray) -> np.ndarray:
    """The shipped model's raw outputs in plaintext, from its artifact (linear models and dense networks)."""
    art = artifact.load(ROOT / "models" / name)
    pre = art.manifest.get("preprocess", {})
    z = np.asarray(x, dtype=np.float64)
    if pre.get("type") == "standardize":
        z = (z - np.asarray(pre["mean"])) / np.asarray(pre["scale"])
    if art.manifest["kind"] == "linear":
        return z @ np.atleast_2d(art.arrays["W"]).T + art.arrays["b"]
    for layer in art.manifest["layers"]:
        if layer["type"] == "dense":
            z = z @ art.arrays[layer["weights"]].T + art.arrays[layer["bias"]]
        else:
            assert layer["type"] == "act"
            z = z * (z + float(layer["beta"]))
    return z


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# --- help ------------------------------------------------------------------------------------------
def test_help_documents_the_commands_and_the_output(cli_env):
    top = run_cli(cli_env, "--help")
    assert top.returncode == 0
    for command in ("predict", "models", "keys"):
        assert command in top.stdout
    predict = run_cli(cli_env, "predict", "--help")
    assert predict.returncode == 0
    for text in ("--id-column", "same order", "proba_<class>", "HESERVE_API_KEY", "exit codes"):
        assert text in predict.stdout
    assert "keyids.json" in run_cli(cli_env, "keys", "delete", "--help").stdout
    assert_error(run_cli(cli_env, "predict", "--model", "x"), 2, "--input", "--help")


# --- predictions -----------------------------------------------------------------------------------
def test_predict_breast_cancer_matches_the_plaintext_model(server, cli_env, tmp_path):
    _, x_test, _, _ = breast_cancer_split()
    x = x_test[:40]  # enough rows for the batch layout
    names = manifest("breast-cancer-logreg")["input_names"]
    key_file = tmp_path / "bc.key"
    result = run_cli(
        cli_env, "predict", "--server", server.url, "--model", "breast-cancer-logreg",
        "--input", str(write_csv(tmp_path / "rows.csv", names, x.tolist())),
        "--output", str(tmp_path / "predictions.csv"), "--key-file", str(key_file),
    )
    assert result.returncode == 0, result.stderr
    header, rows = read_csv(tmp_path / "predictions.csv")
    assert header == ["prediction", "prediction_name"]
    expected = (plaintext_scores("breast-cancer-logreg", x)[:, 0] >= 0).astype(int)
    assert np.array_equal(column(header, rows, "prediction", int), expected)
    assert {row[1] for row in rows} <= {"malignant", "benign"}
    assert all((row[0] == "1") == (row[1] == "benign") for row in rows)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "%|" not in result.stderr  # no progress bar when stderr is not a terminal
    assert "40 predictions" in result.stderr


def test_predict_proba_with_reordered_columns_and_an_id_column(server, cli_env, tmp_path):
    _, x_test, _, _ = breast_cancer_split()
    x = x_test[40:46]  # a few rows: the single layout
    names = manifest("breast-cancer-logreg")["input_names"]
    order = np.random.default_rng(0).permutation(len(names))
    header = ["patient", *(names[i] for i in order)]
    rows = [[f"p{r}", *x[r, order].tolist()] for r in range(len(x))]
    result = run_cli(
        cli_env, "predict", "--server", server.url, "--model", "breast-cancer-logreg",
        "--input", str(write_csv(tmp_path / "shuffled.csv", header, rows)),
        "--output", str(tmp_path / "proba.csv"), "--proba", "--id-column", "patient",
        "--key-file", str(tmp_path / "bc.key"), "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet
    out_header, out = read_csv(tmp_path / "proba.csv")
    assert out_header == ["patient", "prediction", "prediction_name", "proba_0", "proba_1"]
    assert [row[0] for row in out] == [f"p{r}" for r in range(len(x))]
    scores = plaintext_scores("breast-cancer-logreg", x)[:, 0]
    proba_1 = column(out_header, out, "proba_1")
    assert np.allclose(proba_1, sigmoid(scores), atol=1e-4)
    assert np.allclose(column(out_header, out, "proba_0") + proba_1, 1.0, atol=1e-6)
    assert np.array_equal(column(out_header, out, "prediction", int), (scores >= 0).astype(int))


def test_predict_regressions(server, cli_env, tmp_path):
    _, x_dia, _, _ = diabetes_split()
    x = x_dia[:25]
    result = run_cli(
        cli_env, "predict", "--server", server.url, "--model", "diabetes-linreg",
        "--input", str(write_csv(tmp_path / "dia.csv", manifest("diabetes-linreg")["input_names"], x.tolist())),
        "--output", str(tmp_path / "dia-out.csv"),  # default key file, in HESERVE_CLIENT_KEYS_DIR
    )
    assert result.returncode == 0, result.stderr
    header, rows = read_csv(tmp_path / "dia-out.csv")
    assert header == ["prediction"]
    assert np.allclose(column(header, rows, "prediction"), plaintext_scores("diabetes-linreg", x)[:, 0], atol=1e-2)
    assert (Path(cli_env["HESERVE_CLIENT_KEYS_DIR"]) / "diabetes-linreg.key").exists()

    _, x_lin, _, _ = linnerud_split()
    names = manifest("linnerud-linreg")["input_names"]
    result = run_cli(
        cli_env, "predict", "--server", server.url, "--model", "linnerud-linreg",
        "--input", str(write_csv(tmp_path / "lin.csv", names[::-1], x_lin[:, ::-1].tolist())),
        "--output", str(tmp_path / "lin-out.csv"),
    )
    assert result.returncode == 0, result.stderr
    header, rows = read_csv(tmp_path / "lin-out.csv")
    assert header == ["Weight", "Waist", "Pulse"]  # the manifest's output names
    got = np.asarray([[float(v) for v in row] for row in rows])
    assert np.allclose(got, plaintext_scores("linnerud-linreg", x_lin), atol=1e-2)


def test_predict_with_a_network_over_images(server, cli_env, tmp_path):
    _, x_test, _, _ = digits_split()
    x = x_test[:4]
    names = manifest("digits-mlp")["input_names"]
    assert len(names) == 64
    result = run_cli(
        cli_env, "predict", "--server", server.url, "--model", "digits-mlp",
        "--input", str(write_csv(tmp_path / "digits.csv", names, x.tolist())),
        "--output", "-", "--proba", "--key-file", str(tmp_path / "digits.key"),
    )
    assert result.returncode == 0, result.stderr
    lines = list(csv.reader(result.stdout.splitlines()))
    header, rows = lines[0], lines[1:]
    assert header == ["prediction", *(f"proba_{k}" for k in range(10))]
    expected = plaintext_scores("digits-mlp", x)
    assert np.array_equal(column(header, rows, "prediction", int), expected.argmax(axis=1))
    proba = np.asarray([[float(v) for v in row[1:]] for row in rows])
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-6)


def test_predict_with_compact_rotation_keys(server, cli_env, tmp_path):
    """--rotation-keys 4: the single layout with Galois keys for 4 steps gives the model's labels;
    3 cannot compose digits-mlp's steps and is refused before anything is sent."""
    _, x_test, _, _ = digits_split()
    x = x_test[:3]
    names = manifest("digits-mlp")["input_names"]
    source = str(write_csv(tmp_path / "digits.csv", names, x.tolist()))
    common = ["--server", server.url, "--model", "digits-mlp", "--input", source, "--output", "-", "--layout", "single"]
    key = ["--key-file", str(tmp_path / "c.key")]
    result = run_cli(cli_env, "predict", *common, "--rotation-keys", "4", *key)
    assert result.returncode == 0, result.stderr
    lines = list(csv.reader(result.stdout.splitlines()))
    expected = plaintext_scores("digits-mlp", x).argmax(axis=1)
    assert np.array_equal(column(lines[0], lines[1:], "prediction", int), expected)
    assert "registering evaluation keys" in result.stderr
    # The same steps again: the registered keys are reused; every step (no flag): registered anew.
    again = run_cli(cli_env, "predict", *common, "--rotation-keys", "4", *key)
    assert again.returncode == 0 and "registering evaluation keys" not in again.stderr, again.stderr
    full = run_cli(cli_env, "predict", *common, *key)
    assert full.returncode == 0 and "registering evaluation keys" in full.stderr, full.stderr
    fewest = run_cli(cli_env, "predict", *common, "--rotation-keys", "fewest", *key)  # back to 4: anew
    assert fewest.returncode == 0 and "registering evaluation keys" in fewest.stderr, fewest.stderr
    refused = run_cli(cli_env, "predict", *common, "--rotation-keys", "3", "--key-file", str(tmp_path / "d.key"))
    assert refused.returncode != 0 and "rotation_keys=3" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_progress_bar_on_a_terminal(server, cli_env, tmp_path):
    """stderr on a terminal (a pseudo-terminal here): tqdm draws its bar there; stdout stays clean."""
    _, x_dia, _, _ = diabetes_split()
    rows = write_csv(tmp_path / "dia.csv", manifest("diabetes-linreg")["input_names"], x_dia[:30].tolist())
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    received: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last writer closed it
                return
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        result = subprocess.run(
            [HESERVE, "predict", "--server", server.url, "--model", "diabetes-linreg",
             "--input", str(rows), "--output", "-", "--batch-size", "10", "--key-file", str(tmp_path / "k.key")],
            cwd=ROOT, env=cli_env, stdout=subprocess.PIPE, stderr=slave, timeout=120,
        )
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    terminal = b"".join(received).decode(errors="replace")
    assert result.returncode == 0, terminal
    assert "30/30" in terminal and "encrypted inference" in terminal
    assert result.stdout.decode().splitlines()[0] == "prediction" and len(result.stdout.splitlines()) == 31


# --- models ----------------------------------------------------------------------------------------
def test_models_lists_tasks_and_input_names(server, cli_env):
    table = run_cli(cli_env, "models", "--server", server.url)
    assert table.returncode == 0, table.stderr
    served = [m["name"] for m in requests.get(server.url + "/v2/models", timeout=10).json()["models"]]
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "TASK", "INPUTS"]
    for name in served:
        assert any(line.startswith(name + " ") for line in lines), name
    diabetes = next(line for line in lines if line.startswith("diabetes-linreg "))
    assert "regression" in diabetes and "age, sex, bmi" in diabetes
    assert "mean radius" in table.stdout

    listing = run_cli(cli_env, "models", "--server", server.url, "--json")
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    models = {m["name"]: m for m in data["models"]}
    assert sorted(models) == sorted(served)
    assert models["diabetes-linreg"]["input_names"] == manifest("diabetes-linreg")["input_names"]
    assert models["breast-cancer-logreg"]["task"] == "binary-classification"
    assert models["digits-mlp"]["n_inputs"] == 64 and models["digits-mlp"]["classes"] == list(range(10))


# --- keys ------------------------------------------------------------------------------------------
def test_keys_delete_erases_the_registered_key(server, cli_env, tmp_path):
    _, x_dia, _, _ = diabetes_split()
    rows = write_csv(tmp_path / "dia.csv", manifest("diabetes-linreg")["input_names"], x_dia[:2].tolist())
    key_file = tmp_path / "mine.key"
    common = ["--server", server.url, "--model", "diabetes-linreg", "--key-file", str(key_file)]
    predict = ["predict", *common, "--input", str(rows), "--output", str(tmp_path / "out.csv")]
    first = run_cli(cli_env, *predict)
    assert first.returncode == 0, first.stderr
    assert "registering evaluation keys" in first.stderr
    state = json.loads(Path(str(key_file) + ".keyids.json").read_text())
    (record,) = state["keys"]
    key_id = record["key_id"]
    assert record["server"] == server.url and record["model"] == "diabetes-linreg"
    assert requests.get(f"{server.url}/v2/keys/{key_id}", timeout=10).status_code == 200

    again = run_cli(cli_env, *predict)  # a live key is reused, not uploaded again
    assert again.returncode == 0, again.stderr
    assert "registering" not in again.stderr
    assert json.loads(Path(str(key_file) + ".keyids.json").read_text())["keys"][0]["key_id"] == key_id

    erased = run_cli(cli_env, "keys", "delete", *common)
    assert erased.returncode == 0, erased.stderr
    assert key_id in erased.stdout
    assert requests.get(f"{server.url}/v2/keys/{key_id}", timeout=10).status_code == 404
    assert not Path(str(key_file) + ".keyids.json").exists()
    assert key_file.exists()  # the local secret key is kept

    nothing = run_cli(cli_env, "keys", "delete", *common)
    assert nothing.returncode == 0 and "nothing to erase" in nothing.stderr

    fresh = run_cli(cli_env, *predict, "--erase-key")  # registers anew, then erases when done
    assert fresh.returncode == 0, fresh.stderr
    assert "registering" in fresh.stderr and "erased evaluation key" in fresh.stderr
    assert not Path(str(key_file) + ".keyids.json").exists()


# --- errors ----------------------------------------------------------------------------------------
DIABETES_NAMES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
GOOD_ROW = ["0.01", "-0.04", "0.06", "0.02", "-0.04", "-0.03", "-0.04", "0.03", "0.02", "-0.01"]


def _with(row: list[str], index: int, value: str) -> list[str]:
    return [value if i == index else v for i, v in enumerate(row)]


BAD_CSVS = {
    "missing column": (
        ",".join(DIABETES_NAMES[:2] + DIABETES_NAMES[3:]) + "\n" + ",".join(GOOD_ROW[:2] + GOOD_ROW[3:]) + "\n",
        ["missing column", "'bmi'"],
    ),
    "extra column": (
        ",".join([*DIABETES_NAMES, "weight"]) + "\n" + ",".join([*GOOD_ROW, "80"]) + "\n",
        ["extra column", "'weight'"],
    ),
    "misspelt column": (
        ",".join(_with(DIABETES_NAMES, 2, "BMI")) + "\n" + ",".join(GOOD_ROW) + "\n",
        ["missing column: 'bmi'", "extra column: 'BMI' (did you mean 'bmi'?)"],
    ),
    "non-numeric value": (
        ",".join(DIABETES_NAMES) + "\n" + ",".join(GOOD_ROW) + "\n" + ",".join(_with(GOOD_ROW, 2, "abc")) + "\n",
        ["data row 2", "line 3", "column 'bmi'", "'abc' is not a number", "counted from 1"],
    ),
    "empty value": (
        ",".join(DIABETES_NAMES) + "\n" + ",".join(_with(GOOD_ROW, 9, "")) + "\n",
        ["data row 1", "column 's6'", "empty"],
    ),
    "infinite value": (
        ",".join(DIABETES_NAMES) + "\n" + ",".join(_with(GOOD_ROW, 0, "inf")) + "\n",
        ["data row 1", "column 'age'", "not a finite number"],
    ),
    "short row": (
        ",".join(DIABETES_NAMES) + "\n" + ",".join(GOOD_ROW) + "\n" + ",".join(GOOD_ROW[:9]) + "\n",
        ["data row 2", "9 values", "10 columns"],
    ),
    "empty file": ("", ["is empty", "header row"]),
    "header only": (",".join(DIABETES_NAMES) + "\n", ["no data rows"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_csv_is_a_usage_error_and_nothing_is_sent(server, cli_env, tmp_path, case):
    content, fragments = BAD_CSVS[case]
    path = tmp_path / "bad.csv"
    path.write_text(content)
    key_file = tmp_path / "never.key"
    result = run_cli(
        cli_env, "predict", "--server", server.url, "--model", "diabetes-linreg", "--input", str(path),
        "--output", str(tmp_path / "out.csv"), "--key-file", str(key_file),
    )
    assert_error(result, 2, *fragments)
    assert not (tmp_path / "out.csv").exists()
    assert not key_file.exists()  # no key was created, so none was registered


def test_missing_input_file(server, cli_env, tmp_path):
    result = run_cli(
        cli_env, "predict", "--server", server.url, "--model", "diabetes-linreg",
        "--input", str(tmp_path / "nowhere.csv"), "--output", str(tmp_path / "out.csv"),
    )
    assert_error(result, 2, "input file not found", "nowhere.csv")


def test_unknown_model_lists_the_served_ones(server, cli_env, tmp_path):
    rows = write_csv(tmp_path / "rows.csv", DIABETES_NAMES, [GOOD_ROW])
    result = run_cli(
        cli_env, "predict", "--server", server.url, "--model", "no-such-model",
        "--input", str(rows), "--output", str(tmp_path / "out.csv"),
    )
    assert_error(result, 2, "unknown model 'no-such-model'", "diabetes-linreg")
    erase = run_cli(cli_env, "keys", "delete", "--server", server.url, "--model", "../etc")
    assert_error(erase, 2, "not a valid model name")


def test_proba_of_a_regression_is_a_usage_error(server, cli_env, tmp_path):
    rows = write_csv(tmp_path / "rows.csv", DIABETES_NAMES, [GOOD_ROW])
    result = run_cli(
        cli_env, "predict", "--server", server.url, "--model", "diabetes-linreg", "--proba",
        "--input", str(rows), "--output", str(tmp_path / "out.csv"),
    )
    assert_error(result, 2, "regression", "--proba")


def test_unreachable_server_is_exit_1_with_a_clear_message(cli_env, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    rows = write_csv(tmp_path / "rows.csv", DIABETES_NAMES, [GOOD_ROW])
    result = run_cli(
        cli_env, "predict", "--server", url, "--model", "diabetes-linreg",
        "--input", str(rows), "--output", str(tmp_path / "out.csv"), "--timeout", "5",
    )
    assert_error(result, 1, f"cannot reach the server at {url}", "Connection refused")
    assert_error(run_cli(cli_env, "models", extra_env={"HESERVE_URL": url}), 1, "cannot reach")


# --- API keys --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    proc = start_server(tmp_path_factory.mktemp("auth-server"), workers=1, api_keys="alice:cli-test-key")
    yield proc
    proc.stop()


def test_api_key_from_the_environment(auth_server, cli_env):
    refused = run_cli(cli_env, "models", "--server", auth_server.url)
    assert_error(refused, 1, "401", "HESERVE_API_KEY")
    listed = run_cli(cli_env, "models", "--server", auth_server.url, extra_env={"HESERVE_API_KEY": "cli-test-key"})
    assert listed.returncode == 0, listed.stderr
    assert "breast-cancer-logreg" in listed.stdout
    wrong = run_cli(cli_env, "models", "--server", auth_server.url, "--api-key", "wrong")
    assert_error(wrong, 1, "401")


def test_the_key_record_follows_a_key_the_sdk_registered_again_mid_run(server, tmp_path):
    from heserve.client import Client
    from heserve.client.cli import KeyIdRecords, _predict_rows, ensure_registered, open_model, record_current_key

    args = SimpleNamespace(quiet=True, batch_size=None, proba=False)
    with Client(server.url) as client:
        model = open_model(client, "diabetes-linreg", tmp_path / "d.key")
        records = KeyIdRecords(tmp_path / "d.key")
        first = ensure_registered(client, model, records, args)
        client.delete_key(first)  # as if it expired during the run
        _predict_rows(model, diabetes_split()[1][:3], None, args)
        assert model.key_id not in (None, first)  # the SDK registered again by itself
        record_current_key(client, model, records)
        assert records.find(client.url, "diabetes-linreg")["key_id"] == model.key_id
        model.delete_key()
