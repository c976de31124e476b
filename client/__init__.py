"""Client SDK of the encrypted inference service.

Needs numpy, tenseal and urllib3 only. The secret key is generated and kept here.
"""

from .client import Client, EncryptedRequest, RemoteModel
from .errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionFailedError,
    HEClientError,
    InputError,
    KeyFileError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)
from .keys import SecretContext

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConnectionFailedError",
    "EncryptedRequest",
    "HEClientError",
    "InputError",
    "KeyFileError",
    "NotFoundError",
    "RemoteModel",
    "SecretContext",
    "ServerError",
    "ServiceUnavailableError",
]
