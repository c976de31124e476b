"""The SDK's exceptions: one base class, a few meaningful kinds."""

from __future__ import annotations


class HEClientError(Exception):
    """Base class of every error the SDK raises."""


class InputError(HEClientError, ValueError):
    """The data given to the SDK has the wrong shape, type or values."""


class KeyFileError(HEClientError):
    """A key file that cannot be read, or that does not match the model's parameters."""


class KeyIdFileError(KeyFileError):
    """The key-id file beside a secret key file is unreadable or damaged; deleting it is safe."""


class ServerError(HEClientError):
    """The server answered with an error; `status` and the server's `message` are kept."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(f"server answered {status}: {message}")
        self.status = status
        self.message = message
        self.code = code  # the server's machine-readable kind, e.g. "key_not_found"


class BadRequestError(ServerError):
    """400 and other 4xx: the server refused the request."""


class AuthenticationError(ServerError):
    """401/403: missing or wrong API key, or a switched-off feature."""


class NotFoundError(ServerError):
    """404: unknown model, or a key id that is unknown, expired or erased."""


class ServiceUnavailableError(ServerError):
    """5xx: the server could not answer; retry later."""


class ConnectionFailedError(HEClientError):
    """The server could not be reached, or did not answer within the timeout."""


class ConnectionTimeoutError(ConnectionFailedError):
    """The server was reached but did not answer within the client's timeout."""


def error_for_status(status: int, message: str, code: str | None = None) -> ServerError:
    if status in (401, 403):
        return AuthenticationError(status, message, code)
    if status == 404:
        return NotFoundError(status, message, code)
    if status >= 500:
        return ServiceUnavailableError(status, message, code)
    return BadRequestError(status, message, code)
