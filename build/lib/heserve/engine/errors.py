"""The engine's one base error: whatever it refuses (parameters, SEAL bytes, specs, ciphertexts
it cannot evaluate) is an EngineError, a ValueError of the caller's making."""

from __future__ import annotations


class EngineError(ValueError):
    """Input the engine refuses; `code` is a machine-readable kind where one applies."""

    code = "engine_error"
