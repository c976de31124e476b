"""Bytes in and out of SEAL objects.

tenseal.sealapi only serializes through file paths. An anonymous in-memory file
(memfd) gives SEAL a path without anything ever touching a file system, so
ciphertexts and keys are never written to disk.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import tenseal.sealapi as sealapi

from heserve.engine.errors import EngineError

T = TypeVar("T")


class SealDecodeError(EngineError):
    """Bytes that SEAL cannot load as the expected object for the given parameters.

    `code` is a machine-readable kind for the server's error response (see
    protocol.seal_bounds for the codes its bounded parsing raises).
    """

    def __init__(self, message: str, code: str = "malformed_seal_object"):
        super().__init__(message)
        self.code = code


def _memfd() -> tuple[int, str]:
    fd = os.memfd_create("seal", os.MFD_CLOEXEC)
    return fd, f"/proc/self/fd/{fd}"


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def dump(obj: Any) -> bytes:
    """Serialize a SEAL object (or a seeded `Serializable`) to bytes."""
    fd, path = _memfd()
    try:
        obj.save(path)
        return _read_all(fd)
    finally:
        os.close(fd)


def load(cls: type[T], context: sealapi.SEALContext, data: bytes, what: str) -> T:
    """Load `data` as an instance of `cls`, valid for `context`; SealDecodeError otherwise."""
    if not data:
        raise SealDecodeError(f"{what} is empty")
    fd, path = _memfd()
    try:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
        obj = cls()
        try:
            obj.load(context, path)
        except Exception as exc:  # SEAL raises several C++ exception types through pybind
            raise SealDecodeError(f"{what} is not valid for these parameters: {exc}") from None
        return obj
    finally:
        os.close(fd)
