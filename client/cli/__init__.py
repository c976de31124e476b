"""The command line of the client SDK, for people who do not write Python: `heserve --help`.

    heserve models
    heserve predict --model breast-cancer-logreg --input rows.csv --output predictions.csv
    heserve keys delete --model breast-cancer-logreg

Everything the SDK does happens here too: the secret key is created (or loaded) locally,
rows are encrypted before they leave the machine, results are decrypted locally.

Exit codes: 0 success, 1 server or connection failure, 2 usage or input error (bad CSV,
missing file, unknown model, unusable key file); 130 when interrupted. Errors are one
`error: ...` line on stderr.

The modules: arguments (the parser), commands (what each command does), tables (the CSV files),
render (what is printed), exitcodes (exit codes and error messages); the record of registered
key ids is the SDK's own, heserve.client.keyids.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from heserve.client.cli.arguments import ENV_DEBUG, Handler, build_parser, normalize_url
from heserve.client.cli.commands import (
    _predict_rows,
    ensure_registered,
    open_model,
    record_current_key,
    run_keys_delete,
    run_models,
    run_predict,
)
from heserve.client.cli.exitcodes import EXIT_FAILURE, EXIT_INTERRUPTED, CLIError, explain
from heserve.client.cli.render import one_line
from heserve.client.errors import HEClientError
from heserve.client.keyids import KeyIdRecords

HANDLERS: dict[str, Handler] = {"predict": run_predict, "models": run_models, "keys delete": run_keys_delete}

# Besides main, what tests/test_cli.py drives directly.
__all__ = ["KeyIdRecords", "_predict_rows", "ensure_registered", "main", "open_model", "record_current_key"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (it never raises, except with --debug)."""
    parser = build_parser(HANDLERS)
    args = parser.parse_args(argv)
    debug = bool(args.debug if hasattr(args, "debug") else False) or os.environ.get(ENV_DEBUG) == "1"
    handler: Handler = args.handler
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
