"""Exit codes of the command line, and the one-line explanation of every failure.

0 success, 1 the server refused or failed or could not be reached, 2 a usage or input error
(bad arguments, bad CSV, missing file, unknown model, unusable key file), 130 interrupted.
"""

from __future__ import annotations

import argparse
import re

from heserve.client.cli.render import one_line
from heserve.client.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionFailedError,
    ConnectionTimeoutError,
    HEClientError,
    InputError,
    KeyFileError,
    KeyIdFileError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)

EXIT_OK = 0
EXIT_FAILURE = 1  # the server refused or failed, or could not be reached
EXIT_USAGE = 2  # bad arguments, bad input file, unknown model, unusable key file
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A failure explained in one line; `code` is the process exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def explain(exc: HEClientError, args: argparse.Namespace) -> tuple[int, str]:
    """Exit code and one-line message for an SDK exception."""
    # arguments.py raises CLIError from this module: importing it at the top would be circular.
    from heserve.client.cli.arguments import DEFAULT_SERVER, DEFAULT_TIMEOUT, ENV_API_KEY

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
    if isinstance(exc, KeyIdFileError):
        # Its message already says what to do; the --key-file hint below is about the secret key file.
        return EXIT_USAGE, str(exc)
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
