"""What a request can do wrong, as the service layer says it: one class per kind, no HTTP.

Each carries a human-readable message and a machine-readable `code`; heserve.server.web.errors
maps each class to its HTTP status, in that one place. Anything else raised while serving a
request is a server fault (500), never a client error.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses because of what the client sent or asked."""

    code: str | None = None  # machine-readable kind, for clients that act on it

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(ServiceError):
    code = "bad_request"


class NotFound(ServiceError):
    code = "not_found"


class KeyNotFound(NotFound):
    """An evaluation key that is unknown, expired or erased: the client registers its keys again."""

    code = "key_not_found"


class Forbidden(ServiceError):
    code = "forbidden"


class Unauthorized(ServiceError):
    code = "unauthorized"


class UnsupportedMediaType(ServiceError):
    """A body in a format the route does not take (its Content-Type)."""

    code = "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    """More than a request may carry or cost: bytes, or worker time (`deadline_exceeded`)."""

    code = "body_too_large"


class RequestTimeout(ServiceError):
    """The request body did not arrive in time."""

    code = "request_timeout"
