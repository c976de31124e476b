"""The one interface every compiled plan offers (engine.linear.LinearPlan, engine.neural.NetworkPlan,
engine.deep.DeepNetworkPlan).

The service layer uses nothing else of a plan; heserve.contract.check_plan checks any plan
against it, as scikit-learn's check_estimator checks an estimator.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import tenseal.sealapi as sealapi

from heserve.engine.spec import EncryptionSpec

# Threads one batch chunk of a network may use (numpy and BLAS release the GIL): two match the two
# cores a worker is sized for; a server's configuration sets its own.
DEFAULT_BATCH_THREADS = 2


@runtime_checkable
class Plan(Protocol):
    runtime: Any  # engine.linear.SealRuntime: SEAL context, evaluator, slots
    n_features: int
    n_outputs: int
    single_ciphertexts: int  # input ciphertexts per single-layout row
    single_results: int  # result ciphertexts per single-layout row
    single_rows_charged: int  # rows a tenant is charged per single-layout row
    batch_rows_charged: int  # rows a tenant is charged per batch chunk
    batch_reads_coefficients: bool  # batch inputs are read as raw coefficients (parse_batch_input)
    single_steps: tuple[int, ...]  # the single layout's rotation steps (engine.rotations composes missing ones)

    def spec(self) -> EncryptionSpec:
        """What a client must encrypt: parameters, scales, layouts, rotation steps."""

    def required_galois_elements(self, layout: str) -> list[int]:
        """Exactly the Galois elements evaluation of `layout` uses."""

    def plaintext(self, x: np.ndarray) -> np.ndarray:
        """The outputs for preprocessed features x (rows, n_features): what decryption must give."""

    def check_input(self, ct: sealapi.Ciphertext, what: str, layout: str | None = None) -> None: ...

    def evaluate_single(self, cts: list[sealapi.Ciphertext], keys: Any) -> list[sealapi.Ciphertext]: ...

    def evaluate_batch(
        self, cts: list[Any], rows: int, keys: Any, threads: int = DEFAULT_BATCH_THREADS
    ) -> list[sealapi.Ciphertext]:
        """One chunk of the batch layout, on up to `threads` threads where the plan can use them."""
