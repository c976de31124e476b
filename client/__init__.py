"""Client SDK of the encrypted inference service.

Needs numpy, tenseal and urllib3 only. The secret key is generated and kept here.
"""

from heserve.client.client import Client, EncryptedRequest, RemoteModel
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
from heserve.client.keyids import KeyIdRecords
from heserve.client.keys import SecretContext
from heserve.client.ranges import InputRangeWarning

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConnectionFailedError",
    "ConnectionTimeoutError",
    "EncryptedRequest",
    "HEClientError",
    "InputError",
    "InputRangeWarning",
    "KeyFileError",
    "KeyIdRecords",
    "NotFoundError",
    "RemoteModel",
    "SecretContext",
    "ServerError",
    "ServiceUnavailableError",
]
