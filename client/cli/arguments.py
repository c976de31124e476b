"""The command line's arguments: the parser of `heserve`, its defaults and environment variables,
and the checks of the server URL and model name."""

from __future__ import annotations

import argparse
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import NoReturn

from heserve.client.cli.exitcodes import EXIT_USAGE, CLIError
from heserve.client.keyids import KEY_IDS_SUFFIX
from heserve.engine.spec import BATCH, SINGLE

PROG = "heserve"
DEFAULT_SERVER = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
ENV_SERVER = "HESERVE_URL"
ENV_API_KEY = "HESERVE_API_KEY"
ENV_KEYS_DIR = "HESERVE_CLIENT_KEYS_DIR"
ENV_DEBUG = "HESERVE_DEBUG"

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Handler = Callable[[argparse.Namespace], int]


def normalize_url(raw: str) -> str:
    """The --server value as a URL without a trailing slash; a bare host:port means http."""
    url = raw.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CLIError(f"--server {raw!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def check_model_name(name: str) -> str:
    """`name` if it can be a model name; the name also becomes a key file name, so no path separators."""
    if not MODEL_NAME.match(name):
        raise CLIError(f"{name!r} is not a valid model name (run '{PROG} models' to list the served models)")
    return name


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


def _rotation_keys(text: str) -> int | str:
    if text.lower() == "fewest":
        return "fewest"
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a whole number of at least 1 nor 'fewest'") from None


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


def build_parser(handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """The parser of `heserve`; each command's handler, from `handlers` ("predict", "models",
    "keys delete"), lands in `args.handler`.

    The handlers are passed in because they live in commands.py, which itself needs this module.
    """
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
        "--rotation-keys",
        metavar="N",
        type=_rotation_keys,
        default=None,
        help="networks: register Galois keys for only N of the model's rotation steps, the server composing "
        "the others (digits-mlp with 4: 3.7 MB of keys instead of 9.3 MB, ~1.8x the server time of a single "
        "row); 'fewest': as few as compose every step; default: all",
    )
    predict.add_argument(
        "--erase-key", action="store_true", help="erase the server's copy of the evaluation keys when done"
    )
    predict.set_defaults(handler=handlers["predict"])

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
    models.set_defaults(handler=handlers["models"])

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
    delete.set_defaults(handler=handlers["keys delete"])
    return parser
