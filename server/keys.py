"""Registering, looking up and erasing clients' public evaluation keys."""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass

import tenseal.sealapi as sealapi

from protocol import seal_io, v2
from protocol.params import CKKSParams, ParameterError

from . import metrics
from .errors import BadRequest, KeyNotFound
from .keystore import KeyCache, KeyRecord, KeyStore
from .models import ModelRegistry

ALLOWED_PARTS = {"galois_keys", "relin_keys"}
SECRET_PARTS = {"secret_key", "secretkey", "sk"}


@dataclass
class EvaluationKeys:
    record: KeyRecord
    galois: sealapi.GaloisKeys | None
    relin: sealapi.RelinKeys | None


def in_memory_bytes(material: bytes) -> int:
    """What deserialized keys occupy: seeded keys double when SEAL expands them (measured 1.8-2.1x)."""
    return int(2.1 * len(material))


def _pack(parts: dict[str, bytes]) -> bytes:
    out = []
    for name in ("galois_keys", "relin_keys"):
        data = parts.get(name, b"")
        out += [struct.pack("<Q", len(data)), data]
    return b"".join(out)


def _unpack(material: bytes) -> dict[str, bytes]:
    parts, offset = {}, 0
    for name in ("galois_keys", "relin_keys"):
        (length,) = struct.unpack_from("<Q", material, offset)
        offset += 8
        if length:
            parts[name] = material[offset : offset + length]
        offset += length
    return parts


class KeyService:
    def __init__(self, store: KeyStore, cache: KeyCache, registry: ModelRegistry):
        self.store = store
        self.cache = cache
        self.registry = registry

    def register(self, body: bytes, header_length: int | None, owner: str = "") -> KeyRecord:
        if header_length is None:
            raise BadRequest(
                f"key registration is a binary request: JSON header, then the key bytes; set {v2.HEADER_LENGTH}"
            )
        try:
            message = v2.decode(body, header_length, "inputs")
        except v2.ProtocolError as exc:
            raise BadRequest(str(exc)) from None
        names = [t.name for t in message.tensors]
        if any(name.lower() in SECRET_PARTS for name in names):
            raise BadRequest("a secret key must never leave the client: registration refused, nothing stored")
        unknown = sorted(set(names) - ALLOWED_PARTS)
        if unknown:
            raise BadRequest(f"unknown key parts {unknown}; expected some of {sorted(ALLOWED_PARTS)}")
        if len(set(names)) != len(names):
            raise BadRequest("each key part may be given once")
        try:
            params = CKKSParams.from_json(message.parameters.get("ckks"))
        except ParameterError as exc:
            raise BadRequest(f"parameters refused: {exc}") from None
        runtime = self.registry.runtime(params)
        if runtime is None:
            raise BadRequest(f"no model served here uses the CKKS parameters {params.to_json()}")
        parts: dict[str, bytes] = {}
        for tensor in message.tensors:
            if tensor.datatype != "BYTES" or len(tensor.data) != 1:
                raise BadRequest(f"key part {tensor.name!r} must be one BYTES element")
            parts[tensor.name] = tensor.data[0]
        if not parts:
            raise BadRequest("no key material given")
        binding_key = message.parameters.get("binding_key", "")
        if not isinstance(binding_key, str) or (binding_key and not re.fullmatch(r"[0-9a-f]{64}", binding_key)):
            raise BadRequest("parameter 'binding_key' must be 64 lowercase hex digits")
        galois, relin = self._deserialize(parts, runtime.context)
        elements = self._known_elements(galois, params)
        material = _pack(parts)
        record = self.store.put(material, params.to_json(), elements, relin is not None, owner, binding_key)
        self.cache.put(record.key_id, (galois, relin), in_memory_bytes(material))
        self.store.sweep()
        return record

    @staticmethod
    def _deserialize(parts: dict[str, bytes], context) -> tuple[sealapi.GaloisKeys | None, sealapi.RelinKeys | None]:
        try:
            galois = (
                seal_io.load(sealapi.GaloisKeys, context, parts["galois_keys"], "galois_keys")
                if "galois_keys" in parts
                else None
            )
            relin = (
                seal_io.load(sealapi.RelinKeys, context, parts["relin_keys"], "relin_keys")
                if "relin_keys" in parts
                else None
            )
        except seal_io.SealDecodeError as exc:
            raise BadRequest(str(exc)) from None
        return galois, relin

    def _known_elements(self, galois: sealapi.GaloisKeys | None, params: CKKSParams) -> list[int]:
        if galois is None:
            return []
        wanted = set()
        for model in self.registry.models.values():
            if model.spec.ckks == params:
                for layout in model.spec.layouts:
                    wanted.update(model.plan.required_galois_elements(layout))
        return sorted(e for e in wanted if galois.has_key(e))

    def record(self, key_id: str, owner: str = "") -> KeyRecord:
        """The caller's live key; another tenant's key is answered exactly like an unknown one."""
        record = self.store.get(key_id)
        if record is None or record.owner != owner:
            self.cache.discard(key_id)
            raise KeyNotFound(f"key {key_id!r} is unknown, expired or erased; register your keys again")
        return record

    def evaluation_keys(self, key_id: str, owner: str = "") -> EvaluationKeys:
        # The record is read on every use: an erasure elsewhere is seen at once.
        return self.load(self.record(key_id, owner))

    def load(self, record: KeyRecord) -> EvaluationKeys:
        """The deserialized keys of a live record, from this worker's cache or the store."""
        key_id = record.key_id
        cached = self.cache.get(key_id)
        if cached is None:
            started = time.perf_counter()
            material = self.store.material(key_id)
            if material is None:
                raise KeyNotFound(f"key {key_id!r} is unknown, expired or erased; register your keys again")
            runtime = self.registry.runtime(CKKSParams.from_json(record.params))
            galois, relin = self._deserialize(_unpack(material), runtime.context)
            cached = (galois, relin)
            self.cache.put(key_id, cached, in_memory_bytes(material))
            metrics.KEY_LOADS.observe(time.perf_counter() - started)
        else:
            metrics.KEY_CACHE_HITS.inc()
        return EvaluationKeys(record, cached[0], cached[1])

    def erase(self, key_id: str, owner: str = "") -> None:
        self.record(key_id, owner)
        self.cache.discard(key_id)
        if not self.store.delete(key_id):
            raise KeyNotFound(f"key {key_id!r} is unknown, expired or already erased")
