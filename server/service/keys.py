"""Registering, looking up and erasing clients' public evaluation keys."""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass

import tenseal.sealapi as sealapi

from heserve.engine import seal_bounds, seal_io
from heserve.engine.params import CKKSParams, ParameterError
from heserve.engine.zero_encryption import ZeroEncryptor
from heserve.protocol import v2
from heserve.server.service.errors import BadRequest, KeyNotFound
from heserve.server.service.keystore import KeyCache, KeyRecord, KeyStore, new_key_id
from heserve.server.service.quotas import Quotas
from heserve.server.service.registry import ModelRegistry

ALLOWED_PARTS = {"galois_keys", "relin_keys", "public_key"}
STORED_PARTS = ("galois_keys", "relin_keys", "public_key")
SECRET_PARTS = {"secret_key", "secretkey", "sk"}


@dataclass
class EvaluationKeys:
    record: KeyRecord
    galois: sealapi.GaloisKeys | None
    relin: sealapi.RelinKeys | None
    public: ZeroEncryptor | None  # the client's public key, to re-randomize results with


def in_memory_bytes(params: CKKSParams, galois_elements: int, relin: bool) -> int:
    """What deserialized keys occupy in a worker, measured: SEAL keeps every key expanded.

    One Galois element (and the relinearization key) is one key-switching key: a 2-polynomial
    ciphertext over all primes per data prime, whatever the size of the upload. The public key
    is one such ciphertext.
    """
    n, primes = params.poly_modulus_degree, len(params.coeff_mod_bit_sizes)
    size = 2 * primes * n * 8
    size += seal_bounds.kswitch_keys_memory_bytes(n, primes, galois_elements) if galois_elements else 0
    if relin:
        size += seal_bounds.kswitch_keys_memory_bytes(n, primes, 1, relin=True)
    return size


def _pack(parts: dict[str, bytes]) -> bytes:
    out = []
    for name in STORED_PARTS:
        data = parts.get(name, b"")
        out += [struct.pack("<Q", len(data)), data]
    return b"".join(out)


def _unpack(material: bytes) -> dict[str, bytes]:
    parts, offset = {}, 0
    for name in STORED_PARTS:
        if offset == len(material):
            break  # stored before public keys were
        (length,) = struct.unpack_from("<Q", material, offset)
        offset += 8
        if length:
            parts[name] = material[offset : offset + length]
        offset += length
    return parts


class KeyObserver:
    """What the key service reports as it works (the HTTP layer counts it in its metrics)."""

    def key_loaded(self, seconds: float) -> None:
        """Keys were read from the store and deserialized (a cache miss)."""

    def key_cache_hit(self) -> None:
        """Keys came from this worker's cache."""


class KeyService:
    def __init__(
        self,
        store: KeyStore,
        cache: KeyCache,
        registry: ModelRegistry,
        quotas: Quotas | None = None,
        observer: KeyObserver | None = None,
    ):
        self.store = store
        self.cache = cache
        self.registry = registry
        self.quotas = quotas
        self.observer = observer or KeyObserver()

    def allowed_elements(self, params: CKKSParams) -> set[int]:
        """The Galois elements some served model with these parameters uses: no others are accepted."""
        wanted: set[int] = set()
        for model in self.registry.served_models():
            if model.spec.ckks == params:
                for layout in model.spec.layouts:
                    wanted.update(model.plan.required_galois_elements(layout))
        return wanted

    def largest_upload(self) -> int:
        """The largest registration body an honest client can send: full (unseeded, uncompressed)
        keys for every element some model needs, and relinearization keys, plus the JSON header.

        Anything larger is refused before it is read: the body limit is set for batch uploads
        (hundreds of MB), far above what keys can take (tens of MB at most)."""
        largest = 0
        for params in {model.spec.ckks for model in self.registry.served_models()}:
            n, primes = params.poly_modulus_degree, len(params.coeff_mod_bit_sizes)
            size = seal_bounds.kswitch_keys_bound(n, primes, len(self.allowed_elements(params)))
            size += seal_bounds.ciphertext_bound(n, primes)  # the public key, unseeded
            if self.relin_allowed(params):
                size += seal_bounds.kswitch_keys_bound(n, primes, 1, relin=True)
            largest = max(largest, size)
        return largest + v2.DEFAULT_MAX_HEADER_BYTES

    def relin_allowed(self, params: CKKSParams) -> bool:
        return any(m.spec.ckks == params and m.spec.relin_keys_needed for m in self.registry.served_models())

    def register(self, body: bytes, header_length: int | None, owner: str = "", tenant: str | None = None) -> KeyRecord:
        """Check, parse and re-serialize public evaluation keys, then store them under a new id.

        `tenant` is whom the quota charges (the owner, or the client's address without API keys).
        """
        if header_length is None:
            raise BadRequest(
                f"key registration is a binary request: JSON header, then the key bytes; set {v2.HEADER_LENGTH}",
                code="bad_framing",
            )
        try:
            message = v2.decode(body, header_length, "inputs", max_elements=8)
        except v2.ProtocolError as exc:
            raise BadRequest(str(exc), code=exc.code) from None
        names = [t.name for t in message.tensors]
        if any(name.lower() in SECRET_PARTS for name in names):
            raise BadRequest(
                "a secret key must never leave the client: registration refused, nothing stored", code="secret_key"
            )
        unknown = sorted(set(names) - ALLOWED_PARTS)
        if unknown:
            raise BadRequest(f"unknown key parts {unknown}; expected some of {sorted(ALLOWED_PARTS)}", code="bad_key")
        if len(set(names)) != len(names):
            raise BadRequest("each key part may be given once", code="bad_key")
        try:
            params = CKKSParams.from_json(message.parameters.get("ckks"))
        except ParameterError as exc:
            raise BadRequest(f"parameters refused: {exc}", code="bad_parameters") from None
        runtime = self.registry.runtime(params)
        if runtime is None:
            raise BadRequest(f"no model served here uses the CKKS parameters {params.to_json()}", code="bad_parameters")
        parts: dict[str, bytes] = {}
        for tensor in message.tensors:
            if tensor.datatype != "BYTES" or len(tensor.data) != 1:
                raise BadRequest(f"key part {tensor.name!r} must be one BYTES element", code="bad_key")
            parts[tensor.name] = tensor.data[0]
        if not parts:
            raise BadRequest("no key material given", code="bad_key")
        if "relin_keys" in parts and not self.relin_allowed(params):
            raise BadRequest(
                f"no model served with CKKS parameters {params.to_json()} multiplies ciphertexts: "
                "relinearization keys refused",
                code="key_not_needed",
            )
        if "galois_keys" in parts and not params.uses_key_switching:
            # A one-prime set has no special prime: SEAL cannot switch keys there at all.
            raise BadRequest(
                f"CKKS parameters {params.to_json()} have no special prime: nothing served with them "
                "rotates, Galois keys refused",
                code="key_not_needed",
            )
        binding_key = message.parameters.get("binding_key", "")
        if not isinstance(binding_key, str) or (binding_key and not re.fullmatch(r"[0-9a-f]{64}", binding_key)):
            raise BadRequest("parameter 'binding_key' must be 64 lowercase hex digits", code="bad_parameter")
        galois, relin, public, elements, version = self._parse_upload(parts, params, runtime.context)
        if public is None:
            raise BadRequest(
                "a registration carries the client's public key ('public_key'): every result is "
                "re-randomized with it before it leaves the server",
                code="public_key_required",
            )
        # What is stored is SEAL's own serialization of the keys it parsed, never the upload's bytes.
        stored = {"public_key": seal_io.dump(public)}
        if galois is not None:
            stored["galois_keys"] = seal_io.dump(galois)
        if relin is not None:
            stored["relin_keys"] = seal_io.dump(relin)
        material = _pack(stored)
        key_id = new_key_id()
        if self.quotas is not None:
            self.quotas.admit_key(
                tenant if tenant is not None else owner, key_id, len(material), time.time() + self.store.ttl_seconds
            )
        try:
            record = self.store.put(
                material,
                params.to_json(),
                elements,
                relin is not None,
                owner,
                binding_key,
                key_id=key_id,
                seal_version=seal_bounds.version_text(version),
            )
        except BaseException:
            if self.quotas is not None:
                self.quotas.release_key(tenant if tenant is not None else owner, key_id)
            raise
        encryptor = ZeroEncryptor(runtime.context, public)
        self.cache.put(
            record.key_id, (galois, relin, encryptor), in_memory_bytes(params, len(elements), relin is not None)
        )
        return record

    def _parse_upload(
        self, parts: dict[str, bytes], params: CKKSParams, context
    ) -> tuple[
        sealapi.GaloisKeys | None, sealapi.RelinKeys | None, sealapi.PublicKey | None, list[int], tuple[int, int]
    ]:
        """Bounded parsing first (counts, sizes, compression, allowed elements, versions), SEAL's checks second.

        Also returns the SEAL serialization version the keys were written in (one of
        seal_bounds.ACCEPTED_VERSIONS): the client's SEAL reads results only in that version.
        """
        galois = relin = public = None
        elements: list[int] = []
        n, primes = params.poly_modulus_degree, len(params.coeff_mod_bit_sizes)
        key_level = list(context.key_parms_id())
        try:
            # One client's SEAL writes all of its keys, and results go back in that one version. Each
            # part's nested headers are held to its outer one, and versions never accepted are refused,
            # when it is parsed below.
            versions = {name: seal_bounds.object_version(data) for name, data in parts.items()}
            if len(set(versions.values())) > 1 and set(versions.values()) <= seal_bounds.ACCEPTED_VERSIONS:
                found = ", ".join(f"{name} {seal_bounds.version_text(v)}" for name, v in sorted(versions.items()))
                raise BadRequest(
                    f"key parts were written by different SEAL serialization versions ({found}); "
                    "register keys made by one SEAL",
                    code="bad_key",
                )
            if "galois_keys" in parts:
                canonical, elements = seal_bounds.canonical_kswitch_keys(
                    parts["galois_keys"],
                    n,
                    primes,
                    "galois_keys",
                    allowed_galois_elements=self.allowed_elements(params),
                    parms_id=key_level,
                )
                galois = seal_io.load(sealapi.GaloisKeys, context, canonical, "galois_keys")
            if "relin_keys" in parts:
                canonical, _ = seal_bounds.canonical_kswitch_keys(
                    parts["relin_keys"], n, primes, "relin_keys", relin=True, parms_id=key_level
                )
                relin = seal_io.load(sealapi.RelinKeys, context, canonical, "relin_keys")
            if "public_key" in parts:
                # A public key is an encryption of zero at the key level; SEAL checks its level and
                # coefficients on load. It must come seeded: its second polynomial is then SEAL's PRNG
                # output, not a client's choice (a zero or structured one would leave the results'
                # re-randomization without effect).
                canonical = seal_bounds.canonical_ciphertext(
                    parts["public_key"], n, primes, "public_key", parms_id=key_level
                )
                if len(canonical) != seal_bounds.ciphertext_bound(n, primes, seeded=True):
                    raise BadRequest(
                        "public_key must be SEAL's seeded form (its second polynomial expanded from a seed): "
                        "serialize Encryptor.encrypt_zero_symmetric(key_parms_id) as SEAL writes it",
                        code="public_key_not_seeded",
                    )
                public = seal_io.load(sealapi.PublicKey, context, canonical, "public_key")
        except seal_io.SealDecodeError as exc:
            raise BadRequest(str(exc), code=getattr(exc, "code", "bad_key")) from None
        return galois, relin, public, sorted(elements), next(iter(versions.values()))

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
            params = CKKSParams.from_json(record.params)
            cached = self._deserialize_stored(_unpack(material), self.registry.runtime(params).context)
            self.cache.put(key_id, cached, in_memory_bytes(params, len(record.galois_elements), record.has_relin_keys))
            self.observer.key_loaded(time.perf_counter() - started)
        else:
            self.observer.key_cache_hit()
        return EvaluationKeys(record, *cached)

    @staticmethod
    def _deserialize_stored(
        parts: dict[str, bytes], context
    ) -> tuple[sealapi.GaloisKeys | None, sealapi.RelinKeys | None, ZeroEncryptor | None]:
        """Keys this server parsed and serialized itself at registration."""
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
        public = (
            ZeroEncryptor(context, seal_io.load(sealapi.PublicKey, context, parts["public_key"], "public_key"))
            if "public_key" in parts
            else None
        )
        return galois, relin, public

    def erase(self, key_id: str, owner: str = "", tenant: str | None = None) -> None:
        self.record(key_id, owner)
        self.cache.discard(key_id)
        if not self.store.delete(key_id):
            raise KeyNotFound(f"key {key_id!r} is unknown, expired or already erased")
        if self.quotas is not None:
            self.quotas.release_key(tenant if tenant is not None else owner, key_id)
