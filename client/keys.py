"""The client's CKKS keys. The secret key is created here and never serialized into a request."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import tenseal.sealapi as sealapi

from heserve.client.errors import HEClientError, InputError, KeyFileError
from heserve.engine import seal_io, seal_raw
from heserve.engine.coefficients import CoefficientCodec
from heserve.engine.params import CKKSParams, galois_element
from heserve.protocol import binding, v2

KEY_FILE_MAGIC = b"HESK1\n"


class SecretContext:
    """A secret key with its CKKS parameters: encrypts inputs and decrypts results locally.

    Create one with `SecretContext.generate(params)`, keep it with `save(path)` (the file
    holds the secret key: protect it like a password) and reload it with `load(path)`.
    """

    def __init__(
        self,
        params: CKKSParams,
        secret_key: sealapi.SecretKey,
        context: sealapi.SEALContext,
        binding_key: bytes | None = None,
    ):
        self.params = params
        self.binding_key = binding_key or os.urandom(binding.BINDING_KEY_BYTES)
        self._context = context
        self._secret_key = secret_key
        self._keygen = sealapi.KeyGenerator(context, secret_key)
        self._encoder = sealapi.CKKSEncoder(context)
        self._encryptor = sealapi.Encryptor(context, secret_key)
        self._decryptor = sealapi.Decryptor(context, secret_key)
        self.slot_count = self._encoder.slot_count()
        self._codec: CoefficientCodec | None = None

    @property
    def codec(self) -> CoefficientCodec:
        if self._codec is None:
            self._codec = CoefficientCodec(self._context)
        return self._codec

    @classmethod
    def generate(cls, params: CKKSParams) -> SecretContext:
        context = params.seal_context()
        return cls(params, sealapi.KeyGenerator(context).secret_key(), context)

    # --- persistence (local only) ---------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the secret key to `path` with owner-only permissions."""
        header = json.dumps({**self.params.to_json(), "binding_key": self.binding_key.hex()}).encode()
        key = seal_io.dump(self._secret_key)
        data = KEY_FILE_MAGIC + struct.pack("<I", len(header)) + header + key
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SecretContext:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc}") from None
        if not data.startswith(KEY_FILE_MAGIC) or len(data) < len(KEY_FILE_MAGIC) + 4:
            raise KeyFileError(f"{path} is not a key file written by SecretContext.save")
        offset = len(KEY_FILE_MAGIC)
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        try:
            header = json.loads(data[offset : offset + length])
            params = CKKSParams.from_json(header)
            binding_key = bytes.fromhex(header["binding_key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{path}: bad header: {exc}") from None
        context = params.seal_context()
        try:
            secret_key = seal_io.load(sealapi.SecretKey, context, data[offset + length :], "secret key")
        except seal_io.SealDecodeError as exc:
            raise KeyFileError(f"{path}: {exc}") from None
        return cls(params, secret_key, context, binding_key)

    # --- public evaluation material ---------------------------------------------------------
    def evaluation_key_request(
        self, rotation_steps: list[int] | tuple[int, ...], relin_keys: bool = False
    ) -> tuple[bytes, int]:
        """A V2 binary body registering the public key and seeded Galois keys for exactly these steps.

        The public key is SEAL's: an encryption of zero at the key level, sent seeded. The
        server re-randomizes every result with it."""
        n = self.params.poly_modulus_degree
        if (rotation_steps or relin_keys) and not self.params.uses_key_switching:
            raise HEClientError(
                f"CKKS parameters {self.params.to_json()} have no special prime: they take no Galois "
                "or relinearization keys (a model on them needs none)"
            )
        public = seal_raw.own_uncompressed(
            seal_io.dump(self._encryptor.encrypt_zero_symmetric(self._context.key_parms_id()))
        )
        tensors = [v2.Tensor("public_key", "BYTES", [1], [public])]
        if rotation_steps:
            elements = sorted({galois_element(s, n) for s in rotation_steps})
            galois = seal_io.dump(self._keygen.create_galois_keys(elements))
            tensors.append(v2.Tensor("galois_keys", "BYTES", [1], [galois]))
        if relin_keys:
            tensors.append(v2.Tensor("relin_keys", "BYTES", [1], [seal_io.dump(self._keygen.create_relin_keys())]))
        message = v2.Message(tensors, parameters={"ckks": self.params.to_json(), "binding_key": self.binding_key.hex()})
        body, header_length = v2.encode(message, "inputs", binary=True)
        return body, header_length

    # --- encryption ---------------------------------------------------------------------------
    def encrypt(self, values: np.ndarray, scale: float, seeded: bool = True) -> bytes:
        """Encrypt up to slot_count real values as one ciphertext.

        seeded: SEAL's half-size form (the second polynomial is regenerated from a seed);
        otherwise the full ciphertext, uncompressed, whose coefficients the server reads directly.
        """
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size > self.slot_count:
            raise InputError(f"{values.size} values do not fit {self.slot_count} slots")
        plain = sealapi.Plaintext()
        self._encoder.encode(values.tolist(), scale, plain)
        if seeded:
            # Sent uncompressed: zstd gains nothing on uniformly random coefficients, and the
            # server checks an uncompressed ciphertext without inflating anything.
            return seal_raw.own_uncompressed(seal_io.dump(self._encryptor.encrypt_symmetric(plain)))
        ct = sealapi.Ciphertext()
        self._encryptor.encrypt_symmetric(plain, ct)
        return seal_raw.own_uncompressed(seal_io.dump(ct))

    def encrypt_coefficients(self, values: np.ndarray, scale: float) -> bytes:
        """Encrypt up to N real values in polynomial coefficients (value i in coefficient i), seeded."""
        try:
            plain = self.codec.encode(values, scale)
        except ValueError as exc:
            raise HEClientError(f"cannot encode the row: {exc}") from None
        return seal_raw.own_uncompressed(seal_io.dump(self._encryptor.encrypt_symmetric(plain)))

    def _decrypt_first_level(self, data: bytes) -> sealapi.Plaintext:
        try:
            ct = seal_io.load(sealapi.Ciphertext, self._context, data, "result ciphertext")
        except seal_io.SealDecodeError as exc:
            raise HEClientError(f"the server returned an unreadable ciphertext: {exc}") from None
        if ct.parms_id() != self._context.first_parms_id() or ct.size() != 2:
            raise HEClientError("the server returned a result at another level than a linear model's")
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(ct, plain)
        return plain

    def decrypt_constant(self, data: bytes) -> float:
        """Decrypt a coefficient-encoded result: its constant coefficient, divided by its scale."""
        return self.codec.constant(self._decrypt_first_level(data))

    def decrypt_coefficients(self, data: bytes) -> np.ndarray:
        """Every coefficient of a coefficient-encoded result, centred mod q and divided by its scale
        (to look at what a result carries; `decrypt_constant` is all a prediction needs)."""
        plain = self._decrypt_first_level(data)
        if len(self.codec.moduli) != 1:
            raise HEClientError("reading coefficients needs a single-prime level here")
        return self.codec.centred_coefficients(plain) / plain.scale

    def bind(self, ciphertext: bytes) -> str:
        """The tag that tells the server this ciphertext was made with this context's key."""
        return binding.tag(self.binding_key, ciphertext)

    def ciphertext_bytes(self, seeded: bool = True) -> int:
        """Approximate size of one fresh ciphertext on the wire."""
        full = 2 * self.params.data_prime_count * self.params.poly_modulus_degree * 8
        return full // 2 if seeded else full

    def decrypt(self, data: bytes) -> np.ndarray:
        """Decrypt one ciphertext returned by the server; every slot, as float64."""
        try:
            ct = seal_io.load(sealapi.Ciphertext, self._context, data, "result ciphertext")
        except seal_io.SealDecodeError as exc:
            raise HEClientError(f"the server returned an unreadable ciphertext: {exc}") from None
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(ct, plain)
        return np.asarray(self._encoder.decode_double(plain))
