"""The command line of the client SDK, for people who do not write Python: `heserve --help`.

    heserve models
    heserve predict --model breast-cancer-logreg --input rows.csv --output predictions.csv
    heserve keys delete --model breast-cancer-logreg

Everything the SDK does happens here too: the secret key is created (or loaded) locally,
rows are encrypted before they leave the machine, results are decrypted locally.

Exit codes: 0 success, 1 server or connection failure, 2 usage or input error (bad CSV,
missing file, unknown model, unusable key file); 130 when interrupted. Errors are one
`error: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np

from heserve.client import postprocess
from heserve.client.client import SINGLE_CIPHERTEXTS_PER_REQUEST, Client, RemoteModel
from heserve.client.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionFailedError,
    ConnectionTimeoutError,
    HEClientError,
    InputError,
    KeyFileError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)
from heserve.engine.spec import BATCH, SINGLE

PROG = "heserve"
DEFAULT_SERVER = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
ENV_SERVER = "HESERVE_URL"
ENV_API_KEY = "HESERVE_API_KEY"
ENV_KEYS_DIR = "HESERVE_CLIENT_KEYS_DIR"
ENV_DEBUG = "HESERVE_DEBUG"

EXIT_OK = 0
EXIT_FAILURE = 1  # the server refused or failed, or could not be reached
EXIT_USAGE = 2  # bad arguments, bad input file, unknown model, unusable key file
EXIT_INTERRUPTED = 130

KEY_IDS_SUFFIX = ".keyids.json"
KEY_REUSE_MARGIN_SECONDS = 120  # a recorded key that expires sooner than this is replaced
MAX_LISTED = 8  # names and bad cells quoted in one error message
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
KEY_ID = re.compile(r"^[0-9a-f]{32}$")
CLASSIFIER_POSTPROCESS = ("sigmoid", "softmax", "argmax")


class CLIError(Exception):
    """A failure explained in one line; `code` is the process exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


# --- settings --------------------------------------------------------------------------------
def default_keys_dir() -> Path:
    """Where secret key files live when --key-file is not given (one file per model)."""
    explicit = os.environ.get(ENV_KEYS_DIR)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "heserve" / "client"


def key_path_for(model: str, key_file: str | None) -> tuple[Path, bool]:
    """The secret key file to use for `model`, and whether it is the default one."""
    if key_file:
        return Path(key_file).expanduser(), False
    return default_keys_dir() / f"{model}.key", True


def normalize_url(raw: str) -> str:
    url = raw.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CLIError(f"--server {raw!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def check_model_name(name: str) -> str:
    if not MODEL_NAME.match(name):
        raise CLIError(f"{name!r} is not a valid model name (run '{PROG} models' to list the served models)")
    return name


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def note(args: argparse.Namespace, message: str) -> None:
    """A progress or status line on stderr (silenced by --quiet)."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def open_client(args: argparse.Namespace) -> Client:
    api_key = args.api_key if args.api_key is not None else os.environ.get(ENV_API_KEY)
    return Client(args.server, api_key=api_key or None, timeout=args.timeout)


# --- reading the CSV ---------------------------------------------------------------------------
@dataclass
class Table:
    """A CSV file: stripped header names, then the data rows as strings with their line numbers."""

    source: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]  # line of the file (the header is line 1) where each data row ends


def read_table(path: str, delimiter: str = ",") -> Table:
    """Read a CSV with a header row. '-' reads standard input. Raises CLIError (exit 2) on any problem."""
    source = "standard input" if path == "-" else path
    try:
        if path == "-":
            return _parse_table(sys.stdin, source, delimiter)
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return _parse_table(handle, source, delimiter)
    except FileNotFoundError:
        raise CLIError(f"input file not found: {path}") from None
    except IsADirectoryError:
        raise CLIError(f"{path} is a directory, not a CSV file") from None
    except PermissionError:
        raise CLIError(f"cannot read {path}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as CSV UTF-8") from None
    except OSError as exc:
        raise CLIError(f"cannot read {source}: {exc.strerror or exc}") from None


def _parse_table(handle: TextIO, source: str, delimiter: str) -> Table:
    reader = csv.reader(handle, delimiter=delimiter)
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)  # blank lines before the header
        if header is None:
            raise CLIError(f"{source} is empty: expected a header row naming the columns, then one row per sample")
        header = [cell.strip() for cell in header]
        header[0] = header[0].lstrip("\ufeff").strip()  # a byte-order mark that reached us through stdin
        rows: list[list[str]] = []
        lines: list[int] = []
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise CLIError(f"{source}: malformed CSV at line {reader.line_num}: {exc}") from None
    # Blank lines at the end (spreadsheets like to leave some) are not samples.
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
        lines.pop()
    for position, name in enumerate(header, start=1):
        if not name:
            raise CLIError(f"{source}: column {position} of the header has no name")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise CLIError(f"{source}: column {name!r} appears more than once in the header")
        seen.add(name)
    if not rows:
        raise CLIError(f"{source} has a header but no data rows")
    for number, (row, line) in enumerate(zip(rows, lines, strict=True), start=1):
        if len(row) != len(header):
            where = f"{source}: data row {number} (line {line} of the file, the header being line 1)"
            if not any(cell.strip() for cell in row):
                raise CLIError(f"{where} is empty")
            raise CLIError(f"{where} has {len(row)} values, the header has {len(header)} columns")
    return Table(source, header, rows, lines)


def match_columns(table: Table, model: RemoteModel, id_column: str | None) -> list[int]:
    """Indices into the CSV header of the model's inputs, in the model's order."""
    header = table.header
    if id_column is not None and id_column not in header:
        raise CLIError(f"{table.source}: --id-column {id_column!r} is not in the header")
    names = model.input_names
    features = [name for name in header if name != id_column or name in names]
    if not names:  # a model without published names: the columns are taken in the file's order
        if len(features) != model.n_features_in_:
            raise CLIError(
                f"{table.source} has {len(features)} feature columns, model {model.name!r} expects "
                f"{model.n_features_in_} (it publishes no input names, so they are taken in the file's order)"
            )
        return [header.index(name) for name in features]
    expected = set(names)
    missing = [name for name in names if name not in header]
    extra = [name for name in features if name not in expected]
    if missing or extra:
        parts = [f"{table.source} does not have the columns model {model.name!r} expects"]
        if missing:
            parts.append(f"missing column{'s' if len(missing) > 1 else ''}: {quoted(missing)}")
        if extra:
            hints = []
            for name in extra[:MAX_LISTED]:
                close = difflib.get_close_matches(name, missing, n=1, cutoff=0.6)
                if not close:
                    close = [m for m in missing if m.casefold() == name.casefold()]
                hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
            more = f" and {len(extra) - MAX_LISTED} more" if len(extra) > MAX_LISTED else ""
            parts.append(f"extra column{'s' if len(extra) > 1 else ''}: {', '.join(hints)}{more}")
        parts.append(
            f"the model takes {len(names)} columns in any order (see '{PROG} models'); "
            "pass --id-column NAME to carry an identifier column through"
        )
        raise CLIError("; ".join(parts))
    return [header.index(name) for name in names]


def parse_values(table: Table, columns: list[int]) -> np.ndarray:
    """The selected columns as floats (rows, features). Non-numeric, empty, NaN and infinite cells are errors."""
    x = np.empty((len(table.rows), len(columns)), dtype=np.float64)
    bad: list[str] = []
    count = 0
    for r, row in enumerate(table.rows):
        for c, index in enumerate(columns):
            cell = row[index].strip()
            problem = None
            if not cell:
                problem = "empty"
            else:
                try:
                    value = float(cell)
                except ValueError:
                    problem = f"{one_line(cell, 40)!r} is not a number"
                else:
                    if not math.isfinite(value):
                        problem = f"{cell!r} is not a finite number"
                    else:
                        x[r, c] = value
            if problem:
                count += 1
                if len(bad) < MAX_LISTED:
                    bad.append(f"data row {r + 1} (line {table.lines[r]}), column {table.header[index]!r}: {problem}")
    if count:
        more = f"; and {count - len(bad)} more" if count > len(bad) else ""
        raise CLIError(
            f"{table.source}: {count} bad value{'s' if count > 1 else ''} (data rows are counted from 1 below the "
            f"header; 'line' counts the header as line 1): {'; '.join(bad)}{more}"
        )
    return x


# --- the key ids this command registered ------------------------------------------------------
def secret_fingerprint(model: RemoteModel) -> str:
    """Identifies the secret key a key id was registered for (a hash of its random binding key)."""
    return hashlib.sha256(b"heserve-cli-key-id\0" + model.secret_context.binding_key).hexdigest()[:16]


class KeyIdRecords:
    """The evaluation-key ids registered with one secret key file, kept beside it as `<key file>.keyids.json`.

    The SDK remembers a key id only in memory; the command line runs once per call, so it keeps
    one record per (server URL, model): the key id, its expiry and a fingerprint of the secret
    key. `predict` reuses a live recorded key instead of uploading the evaluation keys again;
    `keys delete` finds the id to erase here.
    """

    def __init__(self, key_file: Path):
        self.path = key_file.with_name(key_file.name + KEY_IDS_SUFFIX)

    def _load(self) -> list[dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise CLIError(f"cannot read {self.path}: {exc}; delete it if it is damaged") from None
        records = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise CLIError(f"{self.path} is not a key-id file of this command line; delete it if it is damaged")
        return [r for r in records if isinstance(r, dict)]

    def _save(self, records: list[dict]) -> None:
        if not records:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            return
        data = json.dumps({"format": 1, "keys": records}, indent=2) + "\n"
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
        return self.path.exists()

    def find(self, server: str, model: str) -> dict | None:
        for record in self._load():
            if record.get("server") == server and record.get("model") == model:
                return record
        return None

    def put(self, server: str, model: str, key_id: str, expires_at: str, fingerprint: str) -> None:
        records = [r for r in self._load() if not (r.get("server") == server and r.get("model") == model)]
        records.append(
            {"server": server, "model": model, "key_id": key_id, "expires_at": expires_at, "secret": fingerprint}
        )
        self._save(records)

    def remove(self, server: str, model: str) -> None:
        records = self._load()
        kept = [r for r in records if not (r.get("server") == server and r.get("model") == model)]
        if len(kept) != len(records):
            self._save(kept)


def _expires_in(status: dict) -> float:
    try:
        return float(status.get("expires_in_seconds", 0))
    except (TypeError, ValueError):
        return 0.0


def ensure_registered(client: Client, model: RemoteModel, records: KeyIdRecords, args: argparse.Namespace) -> str:
    """Reuse the recorded evaluation key of this secret key if the server still has it, else register anew."""
    fingerprint = secret_fingerprint(model)
    record = records.find(client.url, model.name)
    if record and KEY_ID.match(str(record.get("key_id", ""))):
        if record.get("secret") == fingerprint:
            try:
                status = client.key_status(record["key_id"])
            except NotFoundError:
                status = {}
            if status.get("status") == "active" and _expires_in(status) >= KEY_REUSE_MARGIN_SECONDS:
                model.key_id = record["key_id"]
                return model.key_id
        # About to expire, or registered for a secret key that has since been replaced: erase it now.
        try:
            client.delete_key(record["key_id"])
        except NotFoundError:
            pass
    note(args, f"registering evaluation keys for {model.name!r} with {client.url} (public keys only)")
    model.key_id = None
    key_id = model.register()
    try:
        expires_at = str(client.key_status(key_id).get("expires_at", ""))
    except NotFoundError:
        expires_at = ""
    records.put(client.url, model.name, key_id, expires_at, fingerprint)
    return key_id


def record_current_key(client: Client, model: RemoteModel, records: KeyIdRecords) -> None:
    """The SDK registers again by itself when a key expires mid-run: keep the record on the live id."""
    record = records.find(client.url, model.name)
    if model.key_id and (record is None or record.get("key_id") != model.key_id):
        records.put(client.url, model.name, model.key_id, "", secret_fingerprint(model))


# --- predictions -----------------------------------------------------------------------------
def task_of(metadata: dict) -> str:
    parameters = metadata.get("parameters", {})
    task = parameters.get("task")
    if task:
        return str(task)
    kind = parameters.get("postprocess", {}).get("type", "identity")
    if kind == "sigmoid":
        return "binary-classification"
    if kind in ("softmax", "argmax"):
        return "classification"
    return "regression"


def is_classifier(model: RemoteModel) -> bool:
    return model.metadata.get("parameters", {}).get("postprocess", {}).get("type") in CLASSIFIER_POSTPROCESS


def output_names(model: RemoteModel) -> list[str]:
    """Column names of a regression's outputs: the manifest's names, else prediction / output_<k>."""
    names = model.metadata.get("parameters", {}).get("postprocess", {}).get("output_names")
    if isinstance(names, list) and len(names) == model.n_outputs and all(isinstance(n, str) and n for n in names):
        return list(names)
    return ["prediction"] if model.n_outputs == 1 else [f"output_{k}" for k in range(model.n_outputs)]


def fmt(value: Any) -> str:
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (np.floating, float)):
        return f"{float(value):.8g}"
    return str(value)


def prediction_table(model: RemoteModel, scores: np.ndarray, proba: bool) -> tuple[list[str], list[list[str]]]:
    """The output columns and rows for raw scores (rows, outputs)."""
    spec = model.metadata.get("parameters", {}).get("postprocess", {"type": "identity"})
    if not is_classifier(model):
        values = scores.reshape(len(scores), -1)
        return output_names(model), [[fmt(v) for v in row] for row in values]
    labels = postprocess.labels(scores, spec)
    classes = list(spec.get("classes", range(max(2, scores.shape[1]))))
    class_names = spec.get("class_names")
    named = isinstance(class_names, list) and len(class_names) == len(classes)
    columns = ["prediction"] + (["prediction_name"] if named else [])
    probabilities = postprocess.probabilities(scores, spec) if proba else None
    if probabilities is not None:
        columns += [f"proba_{fmt(c)}" for c in classes]
    rows = []
    for r, label in enumerate(labels):
        row = [fmt(label)]
        if named:
            row.append(str(class_names[classes.index(label)]) if label in classes else "")
        if probabilities is not None:
            row += [fmt(p) for p in probabilities[r]]
        rows.append(row)
    return columns, rows


def write_table(path: str, header: list[str], rows: list[list[str]]) -> None:
    """Write a CSV ('-': standard output); a file is written whole or not at all."""
    if path == "-":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        sys.stdout.flush()
        return
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=".tmp-", suffix=".csv")
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_model(client: Client, name: str, key_file: Path) -> RemoteModel:
    try:
        return client.model(name, key_file=key_file)
    except NotFoundError:
        try:
            served = [m.get("name", "?") for m in client.models()]
        except HEClientError:
            served = []
        listing = f"; served models: {', '.join(served)}" if served else ""
        raise CLIError(f"unknown model {name!r} on {client.url}{listing}") from None


def load_secret(model: RemoteModel, key_file: Path, is_default: bool) -> None:
    """Load the secret key from `key_file`, or create it there (mode 0600) on first use."""
    if is_default:
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        model.secret_context  # noqa: B018 - loads or creates the key file
    except OSError as exc:
        raise CLIError(f"cannot create the key file {key_file}: {exc.strerror or exc}") from None


def default_batch_size(model: RemoteModel, layout: str | None) -> int:
    """One SIMD ciphertext's worth of rows for the batch layout; one request's worth for the single one."""
    layouts = model.spec.layouts
    if layout != SINGLE and BATCH in layouts:
        return max(1, min(layouts[BATCH].capacity, model.spec.ckks.poly_modulus_degree // 2))
    single = layouts.get(SINGLE)
    return max(1, SINGLE_CIPHERTEXTS_PER_REQUEST // (single.ciphertexts_per_row if single else 1))


def progress_bar(total: int, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, unit="row", desc="encrypted inference", file=sys.stderr, disable=quiet or not sys.stderr.isatty()
    )


def run_predict(args: argparse.Namespace) -> int:
    name = check_model_name(args.model)
    if args.output != "-" and args.input != "-" and Path(args.output).resolve() == Path(args.input).resolve():
        raise CLIError("--output must not be the input file")
    if args.output != "-":
        target = Path(args.output)
        if target.is_dir():
            raise CLIError(f"--output {args.output} is a directory; give a file name")
        if not target.parent.is_dir():
            raise CLIError(f"cannot write {args.output}: the directory {target.parent} does not exist")
    table = read_table(args.input, args.delimiter)  # local checks first: nothing is sent for a bad file
    key_file, is_default = key_path_for(name, args.key_file)
    with open_client(args) as client:
        model = open_model(client, name, key_file)
        if args.proba and not is_classifier(model):
            task = task_of(model.metadata)
            raise CLIError(f"model {name!r} is a {task}: it has no class probabilities (drop --proba)")
        layout = None if args.layout == "auto" else args.layout
        if layout is not None and layout not in model.spec.layouts:
            offered = ", ".join(sorted(model.spec.layouts))
            raise CLIError(f"model {name!r} accepts the layouts {offered}, not {layout!r}")
        x = parse_values(table, match_columns(table, model, args.id_column))
        model.validate(x)
        load_secret(model, key_file, is_default)
        records = KeyIdRecords(key_file)
        try:
            ensure_registered(client, model, records, args)
            columns, rows = _predict_rows(model, x, layout, args)
        finally:
            record_current_key(client, model, records)
            if args.erase_key:  # also when the run failed half-way
                try:
                    erase_recorded(client, model.name, records, args)
                except HEClientError as exc:
                    note(args, f"could not erase the evaluation key: {explain(exc, args)[1]}")
        if args.id_column is not None:
            index = table.header.index(args.id_column)
            columns = [args.id_column, *columns]
            rows = [[source[index], *row] for source, row in zip(table.rows, rows, strict=True)]
        write_table(args.output, columns, rows)
        where = "standard output" if args.output == "-" else args.output
        note(args, f"{len(rows)} predictions of {name!r} written to {where}")
    return EXIT_OK


def _predict_rows(
    model: RemoteModel,
    x: np.ndarray,
    layout: str | None,
    args: argparse.Namespace,
) -> tuple[list[str], list[list[str]]]:
    """Encrypt, evaluate and decrypt `x` in batches under a progress bar; the output columns and rows."""
    batch_size = args.batch_size or default_batch_size(model, layout)
    started = time.monotonic()
    scores = []
    with progress_bar(len(x), args.quiet) as bar:
        for start in range(0, len(x), batch_size):
            part = x[start : start + batch_size]
            part_layout = layout or model.choose_layout(len(part))
            scores.append(model.raw_scores(part, part_layout))
            bar.update(len(part))
    note(args, f"{len(x)} rows encrypted, evaluated and decrypted in {time.monotonic() - started:.1f} s")
    return prediction_table(model, np.concatenate(scores, axis=0), args.proba)


def erase_recorded(client: Client, model: str, records: KeyIdRecords, args: argparse.Namespace) -> str | None:
    record = records.find(client.url, model)
    if record is None:
        return None
    key_id = str(record.get("key_id", ""))
    try:
        client.delete_key(key_id)
        note(args, f"erased evaluation key {key_id} of {model!r} on {client.url}")
    except NotFoundError:
        note(args, f"evaluation key {key_id} of {model!r} was already gone from {client.url} (expired or erased)")
    records.remove(client.url, model)
    return key_id


# --- models ------------------------------------------------------------------------------------
def describe_model(metadata: dict) -> dict:
    parameters = metadata.get("parameters", {})
    post = parameters.get("postprocess", {})
    encryption = parameters.get("encryption", {}) if isinstance(parameters.get("encryption"), dict) else {}
    names = list(parameters.get("input_names", []))
    entry: dict[str, Any] = {
        "name": metadata.get("name"),
        "version": (metadata.get("versions") or [None])[0],
        "platform": metadata.get("platform"),
        "task": task_of(metadata),
        "description": parameters.get("description", ""),
        "n_inputs": encryption.get("n_features", len(names)),
        "input_names": names,
        "n_outputs": encryption.get("n_outputs"),
        "layouts": sorted(encryption.get("layouts", {})),
    }
    if post.get("type") in CLASSIFIER_POSTPROCESS:
        entry["classes"] = post.get("classes")
        if post.get("class_names"):
            entry["class_names"] = post["class_names"]
    elif post.get("output_names"):
        entry["output_names"] = post["output_names"]
    return entry


def abbreviate(names: list[str], width: int = 60) -> str:
    if not names:
        return "(not published)"
    text = ", ".join(names)
    if len(text) <= width:
        return text
    shown: list[str] = []
    for name in names[:-1]:
        if len(", ".join([*shown, name, "...", names[-1]])) > width:
            break
        shown.append(name)
    return ", ".join([*shown, "...", names[-1]])


def outputs_text(entry: dict) -> str:
    if "classes" in entry:
        classes = entry.get("classes") or []
        names = entry.get("class_names")
        if names and len(names) == len(classes):
            return ", ".join(f"{c}={n}" for c, n in zip(classes, names, strict=True))
        return f"{len(classes)} classes" if len(classes) > 4 else ", ".join(str(c) for c in classes)
    if entry.get("output_names"):
        return ", ".join(entry["output_names"])
    return "1 value" if entry.get("n_outputs") == 1 else f"{entry.get('n_outputs')} values"


def render_models(entries: list[dict]) -> str:
    header = ["MODEL", "TASK", "INPUTS", "OUTPUTS", "INPUT NAMES (in order)"]
    rows = [
        [str(e["name"]), e["task"], str(e["n_inputs"]), outputs_text(e), abbreviate(e["input_names"])] for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return "\n".join(lines)


def run_models(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        entries = [describe_model(client.model_metadata(m["name"])) for m in client.models()]
    if args.json:
        print(json.dumps({"server": args.server, "models": entries}, indent=2))
    elif entries:
        print(render_models(entries))
    else:
        note(args, f"{args.server} serves no models")
    return EXIT_OK


# --- keys --------------------------------------------------------------------------------------
def run_keys_delete(args: argparse.Namespace) -> int:
    name = check_model_name(args.model)
    key_file, is_default = key_path_for(name, args.key_file)
    records = KeyIdRecords(key_file)
    with open_client(args) as client:
        if args.key_id is not None:
            if not KEY_ID.match(args.key_id):
                raise CLIError(f"--key-id {args.key_id!r} is not a key id (32 lowercase hex digits)")
            try:
                client.delete_key(args.key_id)
            except NotFoundError:
                raise CLIError(
                    f"the server has no key {args.key_id} for you (unknown, expired or already erased)",
                    EXIT_FAILURE,
                ) from None
            record = records.find(client.url, name) if records.exists() else None
            if record and record.get("key_id") == args.key_id:
                records.remove(client.url, name)
            print(f"erased evaluation key {args.key_id} on {client.url}")
            return EXIT_OK
        if not is_default and not key_file.exists() and not records.exists():
            raise CLIError(f"key file not found: {key_file}")
        key_id = erase_recorded(client, name, records, argparse.Namespace(quiet=True))
    if key_id is None:
        note(
            args,
            f"no evaluation key of {name!r} on {args.server} is recorded for the key file {key_file} "
            "(never registered, or already erased): nothing to erase",
        )
    else:
        print(f"erased evaluation key {key_id} of {name!r} on {args.server}")
    return EXIT_OK


# --- argument parsing ----------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with errors as one line: `error: ... (see '... --help')`, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _delimiter(text: str) -> str:
    text = {"tab": "\t", "\\t": "\t"}.get(text, text)
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"must be one character (or 'tab'), got {text!r}")
    return text


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("server")
    group.add_argument(
        "--server",
        metavar="URL",
        default=os.environ.get(ENV_SERVER) or DEFAULT_SERVER,
        help=f"the server's address (default: ${ENV_SERVER} or {DEFAULT_SERVER}, what 'heserve-server' starts)",
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help=f"API key, if the server requires one; prefer setting ${ENV_API_KEY}, which other users "
        "cannot read from the process list",
    )
    group.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no status lines on stderr")
    group.add_argument("--debug", action="store_true", help="show the Python traceback of an unexpected failure")
    return common


def _key_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-file",
        metavar="PATH",
        default=None,
        help="your secret key file: created on first use (mode 0600), reused afterwards; it never leaves this "
        f"machine. Default: one file per model in ${ENV_KEYS_DIR} or $XDG_STATE_HOME/heserve/client "
        "(~/.local/state/heserve/client). The ids of the evaluation keys registered with it are kept beside it "
        f"in PATH{KEY_IDS_SUFFIX}",
    )


PREDICT_DESCRIPTION = """\
Encrypt the rows of a CSV file locally, have the server evaluate the model on the ciphertexts,
decrypt the results locally and write them as a CSV file. The server never sees your values or
the predictions.

Input: a CSV file with a header row. The column names must be the model's input names (see
'heserve models'), in any order; they are put in the model's order before encryption.
Every value must be a finite number. A missing or extra column, an empty cell or a value that is
not a number stops the command before anything is sent, naming the data row (counted from 1 below
the header) with its line in the file (the header being line 1) and the column.

Output: one row per input row, in the same order, so the n-th prediction belongs to the n-th data
row. There is no index column by default (the order is the link); with --id-column NAME that input
column (e.g. a patient or image id) is copied as the first output column and is not a model input.
Columns:
  classifiers   prediction (the class label), prediction_name (when the model names its classes),
                with --proba one proba_<class> column per class
  regressions   one column per output, named as in the model's manifest (e.g. Weight, Waist, Pulse),
                else 'prediction' (one output) or output_0, output_1, ...

Keys: the secret key is created on first use and kept in --key-file. The public evaluation keys
registered with the server are reused by later runs while they live (15 minutes by default);
erase them with 'heserve keys delete' or with --erase-key.
"""

EPILOG = """\
exit codes: 0 success, 1 server or connection error, 2 usage or input error
(bad CSV, missing file, unknown model, unusable key file), 130 interrupted.

environment: HESERVE_URL (server), HESERVE_API_KEY (API key), HESERVE_CLIENT_KEYS_DIR
(default directory of key files)."""


def build_parser() -> argparse.ArgumentParser:
    common = _connection_options()
    parser = _Parser(
        prog=PROG,
        description="Encrypted inference from the command line: your rows are encrypted on this machine, "
        "the server computes on ciphertexts, the results are decrypted here.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    predict = commands.add_parser(
        "predict",
        parents=[common],
        help="encrypted predictions for the rows of a CSV file",
        description=PREDICT_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("--model", required=True, metavar="NAME", help="the model's name (see 'models')")
    predict.add_argument("--input", required=True, metavar="CSV", help="input CSV with a header row ('-': stdin)")
    predict.add_argument("--output", required=True, metavar="CSV", help="predictions CSV to write ('-': stdout)")
    predict.add_argument("--proba", action="store_true", help="classifiers: add the class probabilities")
    predict.add_argument(
        "--id-column", metavar="NAME", help="copy this input column (not a model input) as the first output column"
    )
    _key_file_option(predict)
    predict.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive_int,
        default=None,
        help="rows per encrypted request (default: what one ciphertext holds in the batch layout, "
        "2,048 rows for linear models and 4,096 for networks)",
    )
    predict.add_argument(
        "--layout",
        choices=["auto", SINGLE, BATCH],
        default="auto",
        help="'single': one sample per ciphertext (low latency for a few rows); 'batch': many rows per "
        "ciphertext (throughput); default 'auto' picks per request from the number of rows",
    )
    predict.add_argument(
        "--delimiter", metavar="C", type=_delimiter, default=",", help="field separator of the input (default ',')"
    )
    predict.add_argument(
        "--erase-key", action="store_true", help="erase the server's copy of the evaluation keys when done"
    )
    predict.set_defaults(handler=run_predict)

    models = commands.add_parser(
        "models",
        parents=[common],
        help="list the served models with their task and input names",
        description="List the models the server serves: name, task, number and names of the inputs\n"
        "(the CSV header 'predict' expects), outputs. The table abbreviates long lists of input\n"
        "names; --json gives every name.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.add_argument("--json", action="store_true", help="machine-readable output with every input name")
    models.set_defaults(handler=run_models)

    keys = commands.add_parser(
        "keys",
        help="manage the evaluation keys registered with the server",
        description="Manage the public evaluation keys the server holds for you.",
    )
    key_commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True, parser_class=_Parser)
    delete = key_commands.add_parser(
        "delete",
        parents=[common],
        help="erase your evaluation keys of a model from the server",
        description="Erase from the server (from disk and every worker, at once) the evaluation keys that\n"
        "'predict' registered for this model with this key file. The key id is read from the key\n"
        f"file's companion PATH{KEY_IDS_SUFFIX}; a key the server no longer has (expired) counts as\n"
        "erased. Your local secret key file is kept.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    delete.add_argument("--model", required=True, metavar="NAME", help="the model whose keys to erase")
    _key_file_option(delete)
    delete.add_argument("--key-id", metavar="ID", help="erase this key id instead of the recorded one")
    delete.set_defaults(handler=run_keys_delete)
    return parser


# --- errors and entry point ----------------------------------------------------------------------
def explain(exc: HEClientError, args: argparse.Namespace) -> tuple[int, str]:
    """Exit code and one-line message for an SDK exception."""
    server = getattr(args, "server", DEFAULT_SERVER)
    if isinstance(exc, ConnectionFailedError):
        text = str(exc)
        if isinstance(exc, ConnectionTimeoutError):
            return EXIT_FAILURE, (
                f"the server at {server} did not answer within {getattr(args, 'timeout', DEFAULT_TIMEOUT):g} s "
                "(try a larger --timeout or a smaller --batch-size)"
            )
        reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
        return EXIT_FAILURE, (
            f"cannot reach the server at {server}"
            + (f": {reason.group(1).strip()}" if reason else "")
            + " (is it running? start one with 'heserve-server', or pass --server URL)"
        )
    if isinstance(exc, KeyFileError):
        hint = "give --key-file a new path: a key file is made for one kind of model"
        return EXIT_USAGE, f"{one_line(str(exc))} ({hint})"
    if isinstance(exc, InputError):
        return EXIT_USAGE, one_line(str(exc))
    if isinstance(exc, ServerError):
        message = one_line(exc.message) or "(no message)"
        if isinstance(exc, AuthenticationError):
            return EXIT_FAILURE, (
                f"the server refused the request ({exc.status}): {message}; pass your API key with "
                f"${ENV_API_KEY} or --api-key"
            )
        if isinstance(exc, NotFoundError):
            return EXIT_FAILURE, f"the server answered 404: {message}"
        if isinstance(exc, ServiceUnavailableError):
            return EXIT_FAILURE, f"the server failed ({exc.status}): {message}; try again later"
        if isinstance(exc, BadRequestError):
            return EXIT_FAILURE, f"the server refused the request ({exc.status}): {message}"
    return EXIT_FAILURE, one_line(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (it never raises, except with --debug)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(args.debug if hasattr(args, "debug") else False) or os.environ.get(ENV_DEBUG) == "1"
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        if hasattr(args, "server"):
            args.server = normalize_url(args.server)
        return handler(args)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except HEClientError as exc:
        code, message = explain(exc, args)
        print(f"error: {message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:  # the reader of standard output went away (e.g. '| head'): stop quietly
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_FAILURE
    except Exception as exc:
        if debug:
            raise
        print(
            f"error: unexpected failure: {type(exc).__name__}: {one_line(str(exc))} "
            "(run again with --debug to see the details)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
