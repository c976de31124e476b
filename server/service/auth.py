"""API keys: `Authorization: Bearer <key>`, stored as SHA-256 hashes, compared in constant time.

Keys come from a file (one `tenant key [role]` or `tenant sha256:<hex> [role]` per line, #
comments) and/or the HESERVE_API_KEYS environment variable (comma-separated `tenant:key[:role]`).
The one role is `operator`: it may also load and unload models (the repository extension); an
ordinary tenant never can. With no key configured the server is open (a single anonymous
tenant, and repository control from loopback only); with keys, every route but the health
probes (configurable) answers 401 without a valid one.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from heserve.server.service.errors import Unauthorized

__all__ = ["OPERATOR", "ROLES", "APIKeys", "Unauthorized"]

OPERATOR = "operator"
TENANT = "tenant"
ROLES = (TENANT, OPERATOR)


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class APIKeys:
    def __init__(self, entries: dict[bytes, str], roles: dict[bytes, str] | None = None):
        self._entries = list(entries.items())  # (sha256 digest, tenant)
        self._roles = roles or {}  # sha256 digest → role, for keys that have one other than tenant

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    @classmethod
    def load(cls, path: Path | None, inline: str = "") -> APIKeys:
        entries: dict[bytes, str] = {}
        roles: dict[bytes, str] = {}
        lines = []
        if path is not None:
            lines += [line.split("#", 1)[0].split() for line in Path(path).read_text().splitlines()]
        lines += [_inline_fields(item) for item in inline.split(",") if item.strip()]
        for number, parts in enumerate(lines, 1):
            parts = [p.strip() for p in parts if p.strip()]
            if not parts:
                continue
            if len(parts) not in (2, 3):
                raise ValueError(f"API key entry {number}: expected 'tenant key [role]', got {len(parts)} fields")
            tenant, secret = parts[:2]
            role = parts[2] if len(parts) == 3 else TENANT
            if role not in ROLES:
                raise ValueError(f"API key entry {number}: role must be one of {', '.join(ROLES)}, got {role!r}")
            if secret.startswith("sha256:"):
                digest = bytes.fromhex(secret[len("sha256:") :])
                if len(digest) != 32:
                    raise ValueError(f"API key entry {number}: a sha256 digest has 64 hex digits")
            else:
                digest = _hash(secret)
            entries[digest] = tenant
            if role != TENANT:
                roles[digest] = role
        return cls(entries, roles)

    def tenant(self, authorization: str | None) -> str:
        """The tenant a request's Authorization header names; Unauthorized otherwise."""
        return self.identify(authorization)[0]

    def identify(self, authorization: str | None) -> tuple[str, str]:
        """(tenant, role) of a request's Authorization header; Unauthorized otherwise."""
        if not self.enabled:
            return "", TENANT
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        presented = _hash(authorization[len("Bearer ") :].strip())
        found, role = "", TENANT
        for digest, tenant in self._entries:  # every entry is compared: no early exit to time
            if hmac.compare_digest(presented, digest):
                found, role = tenant, self._roles.get(digest, TENANT)
        if not found:
            raise Unauthorized("invalid API key")
        return found, role

    def describe(self) -> dict:
        """For the start-up line: the mode and how many keys of each role, never a key or digest."""
        operators = sum(1 for digest, _ in self._entries if self._roles.get(digest) == OPERATOR)
        return {
            "mode": "api_keys" if self.enabled else "open",
            "tenants": len({tenant for _, tenant in self._entries}),
            "keys": len(self._entries),
            "operator_keys": operators,
        }


def _inline_fields(item: str) -> list[str]:
    """`tenant:key` or `tenant:key:role` (a key may itself hold colons)."""
    parts = item.split(":")
    if len(parts) >= 3 and parts[-1].strip() in ROLES:
        return [parts[0], ":".join(parts[1:-1]), parts[-1]]
    return item.split(":", 1)
