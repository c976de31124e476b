"""API keys: `Authorization: Bearer <key>`, stored as SHA-256 hashes, compared in constant time.

Keys come from a file (one `tenant key` or `tenant sha256:<hex>` per line, # comments) and/or
the HESERVE_API_KEYS environment variable (comma-separated `tenant:key`). With no key
configured the server is open (a single anonymous tenant); with keys, every route but the
health probes (configurable) answers 401 without a valid one.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from heserve.server.service.errors import Unauthorized

__all__ = ["APIKeys", "Unauthorized"]


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class APIKeys:
    def __init__(self, entries: dict[bytes, str]):
        self._entries = list(entries.items())  # (sha256 digest, tenant)

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    @classmethod
    def load(cls, path: Path | None, inline: str = "") -> APIKeys:
        entries: dict[bytes, str] = {}
        lines = []
        if path is not None:
            lines += [line.split("#", 1)[0].split() for line in Path(path).read_text().splitlines()]
        lines += [item.split(":", 1) for item in inline.split(",") if item.strip()]
        for number, parts in enumerate(lines, 1):
            parts = [p.strip() for p in parts if p.strip()]
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"API key entry {number}: expected 'tenant key', got {len(parts)} fields")
            tenant, secret = parts
            if secret.startswith("sha256:"):
                digest = bytes.fromhex(secret[len("sha256:") :])
                if len(digest) != 32:
                    raise ValueError(f"API key entry {number}: a sha256 digest has 64 hex digits")
            else:
                digest = _hash(secret)
            entries[digest] = tenant
        return cls(entries)

    def tenant(self, authorization: str | None) -> str:
        """The tenant a request's Authorization header names; Unauthorized otherwise."""
        if not self.enabled:
            return ""
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        presented = _hash(authorization[len("Bearer ") :].strip())
        found = ""
        for digest, tenant in self._entries:  # every entry is compared: no early exit to time
            if hmac.compare_digest(presented, digest):
                found = tenant
        if not found:
            raise Unauthorized("invalid API key")
        return found
