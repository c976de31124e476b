"""The service's own code path, in this process: request bytes in, response bytes out.

What a gunicorn worker does for an inference request once its body has arrived (parse,
check, evaluate, serialize), without HTTP, the SDK's encryption or decryption. The keys
are registered through the same key service a worker uses, in a key store of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heserve.client import Client
from heserve.client.client import EncryptedRequest, RemoteModel
from heserve.client.keys import SecretContext
from heserve.protocol import v2
from heserve.server.service.config import ServerConfig
from heserve.server.service.inference import InferenceLimits, infer
from heserve.server.service.registry import ServedModel
from heserve.server.service.services import Services


@dataclass
class Session:
    """One model with registered evaluation keys: encrypt with `remote`, evaluate with `call`."""

    services: Services
    served: ServedModel
    remote: RemoteModel
    key_id: str
    eval_key_bytes: int  # as stored by the server
    key_upload_bytes: int = 0  # the registration body the client sent
    response_bytes: int = 0  # bytes of the serialized response(s) of the last call() or evaluate()

    def call(self, request: EncryptedRequest) -> tuple[float, list[bytes]]:
        """Seconds the worker's code path takes for one request, and the result ciphertexts.
        (The serialized response's size, what would go back over the wire, lands in response_bytes.)"""
        parameters = {"key_id": self.key_id, "layout": request.layout, "rows": request.rows}
        if request.bindings is not None:
            parameters["bindings"] = request.bindings
        message = v2.Message(
            [v2.Tensor("ciphertext", "BYTES", request.shape, request.ciphertexts)], parameters=parameters
        )
        payload, header = v2.encode(message, "inputs", binary=True)
        config = self.services.config
        start = time.perf_counter()
        out, out_length = infer(
            self.served, self.services.keys, payload, header, InferenceLimits.from_config(config)
        )
        elapsed = time.perf_counter() - start
        self.response_bytes = len(out)
        return elapsed, v2.decode(out, out_length, "outputs").tensors[0].data

    def evaluate(self, requests: list[EncryptedRequest]) -> tuple[float, np.ndarray]:
        """Total server seconds for these requests, and their decrypted raw outputs."""
        total, outputs, response_bytes = 0.0, [], 0
        for request in requests:
            elapsed, blobs = self.call(request)
            total += elapsed
            response_bytes += self.response_bytes
            outputs.append(self.remote.decrypt(request, blobs))
        self.response_bytes = response_bytes
        return total, np.concatenate(outputs, axis=0)

    def repeat(self, requests: list[EncryptedRequest], calls: int) -> tuple[np.ndarray, np.ndarray]:
        """Server seconds for all `requests`, per call after one warm-up call, and the last call's outputs."""
        self.evaluate(requests)
        times, outputs = [], None
        for _ in range(calls):
            total, outputs = self.evaluate(requests)
            times.append(total)
        return np.array(times), outputs

    def close(self) -> None:
        self.services.keys.erase(self.key_id)


class InProcess:
    """Everything a worker builds at start (models, compiled plans, key service), built once here."""

    def __init__(self, keys_dir: Path):
        self.services = Services.build(ServerConfig.from_env(keys_dir=keys_dir, key_store="disk"))

    def session(self, name: str, rotation_keys: int | str | None = None) -> Session:
        """`rotation_keys`: as Client.model's, Galois keys for at most that many rotation steps."""
        served = self.services.registry.get(name)
        if served is None:
            raise KeyError(f"no model {name!r} in {self.services.config.models_dir}")
        secret = SecretContext.generate(served.spec.ckks)
        remote = RemoteModel(
            Client("http://in-process"), name, served.metadata(), secret_context=secret, rotation_keys=rotation_keys
        )
        body, length = secret.evaluation_key_request(remote.rotation_steps, relin_keys=served.spec.relin_keys_needed)
        record = self.services.keys.register(body, length)
        remote.key_id = record.key_id
        return Session(self.services, served, remote, record.key_id, record.size_bytes, len(body))
