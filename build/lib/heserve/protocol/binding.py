"""Binding ciphertexts to the key they were made with.

A client draws a random binding key with its secret key and registers it with its
evaluation keys. Each ciphertext it sends carries a keyed BLAKE2b tag of its first bytes
and length; the server checks the tag, so a ciphertext made with another secret context
(a client mixing up its keys) is refused with 400 instead of silently yielding garbage.
The binding key is not a CKKS key: knowing it reveals nothing about the secret key.
"""

from __future__ import annotations

import hashlib
import hmac

BINDING_KEY_BYTES = 32
TAGGED_PREFIX = 4096


def tag(binding_key: bytes, ciphertext: bytes) -> str:
    data = memoryview(ciphertext)
    digest = hashlib.blake2b(key=binding_key, digest_size=16, person=b"heserve-bind")
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data[:TAGGED_PREFIX])
    return digest.hexdigest()


def verify(binding_key: bytes, ciphertext: bytes, presented: object) -> bool:
    return isinstance(presented, str) and hmac.compare_digest(tag(binding_key, ciphertext), presented)
