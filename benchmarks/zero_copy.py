"""What the zero-copy SEAL paths and the bulk encryption of zero save, measured A/B in one run.

    python -m heserve.benchmarks.zero_copy [--calls 300]

Two measurements, each alternating its two variants call by call so that both see the same
machine load (the machines are shared: compare the ratios, not absolute times across runs):

1. the public-key encryption of zero every result is re-randomized with: SEAL's
   Encryptor.encrypt_zero against engine.zero_encryption, at every level of the linear and
   the shallow networks' parameters (the networks use SEAL's own: the ratio says why);
2. a `breast-cancer-logreg` single-sample request in process — the SDK's encryption, the
   worker's code path, the SDK's decryption — with engine.seal_memory's views on (results
   serialized from SEAL's memory, plaintexts written and read in place, the bulk zero
   encryption) and off (SEAL's compressed serialization through a memory file, SEAL's
   encrypt_zero), each with a key registered under that setting.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tenseal.sealapi as sealapi

from heserve.engine import seal_memory
from heserve.engine.linear import LINEAR_PARAMS, SealRuntime
from heserve.engine.neural import NETWORK_PARAMS
from heserve.engine.zero_encryption import ZeroEncryptor

from .inprocess import InProcess
from .linear import LinearModel


def zero_encryption(calls: int) -> list[str]:
    lines = []
    for params in (LINEAR_PARAMS, NETWORK_PARAMS):
        runtime = SealRuntime(params)
        keygen = sealapi.KeyGenerator(runtime.context)
        public = sealapi.PublicKey()
        keygen.create_public_key(public)
        seal, bulk = sealapi.Encryptor(runtime.context, public), ZeroEncryptor(runtime.context, public)
        data = runtime.context.first_context_data()
        while data is not None:
            parms_id = list(data.parms_id())
            times: list[list[float]] = [[], []]
            for _ in range(calls):
                start = time.perf_counter()
                seal.encrypt_zero(parms_id, sealapi.Ciphertext())
                middle = time.perf_counter()
                bulk.zero(parms_id, 1.0)
                times[0].append(middle - start)
                times[1].append(time.perf_counter() - middle)
            a, b = (float(np.median(t)) * 1e3 for t in times)
            path = "bulk" if bulk._key is not None else "SEAL's (special prime)"
            lines.append(
                f"N={params.poly_modulus_degree}, {len(data.parms().coeff_modulus())} prime(s): "
                f"SEAL encrypt_zero {a:.3f} ms, ZeroEncryptor [{path}] {b:.3f} ms, ratio {b / a:.2f}"
            )
            data = data.next_context_data()
    return lines


def _with_views(on: bool, runtime: SealRuntime, raw_levels: frozenset) -> None:
    seal_memory.available = (lambda: True) if on else (lambda: False)
    runtime._raw_levels = raw_levels if on else frozenset()  # decided at start-up: switched here


def linear_request(calls: int) -> list[str]:
    model = LinearModel("breast-cancer-logreg")
    x = model.x
    checked = seal_memory.available
    if not checked():
        return ["the zero-copy layout is not available in this process: nothing to compare"]
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = InProcess(Path(tmp))
        runtime = engine.services.registry.get("breast-cancer-logreg").plan.runtime
        raw_levels = runtime._raw_levels
        for on in (True, False):
            _with_views(on, runtime, raw_levels)
            sessions[on] = engine.session("breast-cancer-logreg")
        phases = {on: {"encrypt": [], "server": [], "decrypt": []} for on in (True, False)}
        try:
            for i in range(calls + 10):
                row = x[i % len(x) : i % len(x) + 1]
                for on in (True, False):
                    _with_views(on, runtime, raw_levels)
                    session = sessions[on]
                    start = time.perf_counter()
                    request = session.remote.encrypt(row, "single")[0]
                    encrypted = time.perf_counter()
                    server, blobs = session.call(request)
                    answered = time.perf_counter()
                    session.remote.decrypt(request, blobs)
                    if i >= 10:  # warm-up
                        phases[on]["encrypt"].append(encrypted - start)
                        phases[on]["server"].append(server)
                        phases[on]["decrypt"].append(time.perf_counter() - answered)
        finally:
            seal_memory.available = checked
            runtime._raw_levels = raw_levels
    lines = []
    for on in (True, False):
        medians = {k: float(np.median(v)) * 1e3 for k, v in phases[on].items()}
        total = sum(medians.values())
        parts = ", ".join(f"{k} {v:.3f} ms" for k, v in medians.items())
        lines.append(f"views {'on ' if on else 'off'}: {parts}; total {total:.3f} ms")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heserve.benchmarks.zero_copy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="timed calls per variant (default 300)")
    args = parser.parse_args(argv)
    print("Public-key encryption of zero (alternating):")
    for line in zero_encryption(args.calls):
        print("  " + line)
    print("breast-cancer-logreg single sample in process (alternating):")
    for line in linear_request(args.calls):
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
