"""The commands of `heserve`: predict, models and keys delete, with what they share (the client,
the secret key file, the record of registered evaluation keys, status lines on stderr)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from heserve.client.cli.arguments import ENV_API_KEY, ENV_KEYS_DIR, check_model_name
from heserve.client.cli.exitcodes import EXIT_FAILURE, EXIT_OK, CLIError, explain
from heserve.client.cli.render import describe_model, is_classifier, prediction_table, render_models, task_of
from heserve.client.cli.tables import match_columns, parse_values, read_table, write_table
from heserve.client.client import SINGLE_CIPHERTEXTS_PER_REQUEST, Client, RemoteModel
from heserve.client.errors import HEClientError, NotFoundError
from heserve.client.keyids import KEY_ID, KEY_REUSE_MARGIN_SECONDS, KeyIdRecords, expires_in, secret_fingerprint
from heserve.engine.params import galois_element
from heserve.engine.spec import BATCH, SINGLE


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


def note(args: argparse.Namespace, message: str) -> None:
    """A progress or status line on stderr (silenced by --quiet)."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def open_client(args: argparse.Namespace) -> Client:
    """A client of --server; the API key from --api-key, else from the environment."""
    api_key = args.api_key if args.api_key is not None else os.environ.get(ENV_API_KEY)
    return Client(args.server, api_key=api_key or None, timeout=args.timeout)


# --- the key ids this command registered ------------------------------------------------------
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
            if (
                status.get("status") == "active"
                and expires_in(status) >= KEY_REUSE_MARGIN_SECONDS
                and set(status.get("galois_elements", [])) == wanted_galois_elements(model)
            ):
                model.key_id = record["key_id"]
                return model.key_id
        # About to expire, registered for a secret key that has since been replaced, or for other rotation
        # steps than this run asks for (--rotation-keys): erase it now.
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


def wanted_galois_elements(model: RemoteModel) -> set[int]:
    n = model.spec.ckks.poly_modulus_degree
    return {galois_element(step, n) for step in model.rotation_steps}


def record_current_key(client: Client, model: RemoteModel, records: KeyIdRecords) -> None:
    """The SDK registers again by itself when a key expires mid-run: keep the record on the live id."""
    record = records.find(client.url, model.name)
    if model.key_id and (record is None or record.get("key_id") != model.key_id):
        records.put(client.url, model.name, model.key_id, "", secret_fingerprint(model))


def erase_recorded(client: Client, model: str, records: KeyIdRecords, args: argparse.Namespace) -> str | None:
    """Erase the recorded key of `model` from the server and the record; the erased id, or None if none was."""
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


# --- predict -----------------------------------------------------------------------------------
def open_model(client: Client, name: str, key_file: Path, rotation_keys: int | str | None = None) -> RemoteModel:
    """The served model `name`; an unknown name is a CLIError listing the served models."""
    try:
        return client.model(name, key_file=key_file, rotation_keys=rotation_keys)
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
    """A tqdm bar of rows on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total, unit="row", desc="encrypted inference", file=sys.stderr, disable=quiet or not sys.stderr.isatty()
    )


def run_predict(args: argparse.Namespace) -> int:
    """`heserve predict`: encrypt the rows of --input, have the server evaluate them, write --output."""
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
        model = open_model(client, name, key_file, args.rotation_keys)
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


# --- models ------------------------------------------------------------------------------------
def run_models(args: argparse.Namespace) -> int:
    """`heserve models`: list the served models as a table, or as JSON with --json."""
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
    """`heserve keys delete`: erase the recorded (or the given --key-id) evaluation key from the server."""
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
