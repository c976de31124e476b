"""Linear models: plaintext numpy, TenSEAL's naive high-level API, and this service over HTTP.

All in one run on one machine, so the ratios are comparable even when absolute
times drift with the machine's load.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

from client import Client
from models import artifact
from models.recipes import MODELS_DIR, breast_cancer_split, diabetes_split

from .stats import interleaved, latencies, summary

SPLITS = {"breast-cancer-logreg": breast_cancer_split, "diabetes-linreg": diabetes_split}


def standardized(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    art = artifact.load(MODELS_DIR / name)
    _, x_test, _, _ = SPLITS[name]()
    pre = art.manifest["preprocess"]
    z = (x_test - np.asarray(pre["mean"])) / np.asarray(pre["scale"])
    return x_test, z, art.arrays["W"][0], art.arrays["b"]


def tenseal_naive_context() -> ts.Context:
    """What a TenSEAL user writes: N=8192, [60, 40, 40, 60], scale 2^40, default Galois keys."""
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60], n_threads=1)
    context.global_scale = 2**40
    context.generate_galois_keys()
    return context


def bench_model(name: str, url: str, samples: int, batch_rows: int, context: ts.Context) -> list[dict]:
    x_raw, z, w, b = standardized(name)
    rows = len(z)
    rng = np.random.default_rng(0)
    batch_idx = rng.integers(0, rows, size=batch_rows)
    results = []

    def row(workload: str, layout: str, stats: dict, **extra) -> None:
        results.append({"model": name, "workload": workload, "layout": layout, **stats, **extra})

    # Plaintext numpy, standardization included.
    row("plaintext numpy", "single", summary(latencies(lambda i: z[i % rows] @ w + b, samples)))
    zb = z[batch_idx]
    row("plaintext numpy", "batch", summary(latencies(lambda i: zb @ w + b, 20), batch_rows))

    # TenSEAL naive: encrypt, dot, add bias (the call); decrypt measured separately.
    def naive(i: int):
        return ts.ckks_vector(context, z[i % rows]).dot(w) + b

    with Client(url, timeout=120) as client:
        model = client.model(name)
        model.register()

        def service(i: int):
            return model.raw_scores(x_raw[i % rows : i % rows + 1], layout="single")

        # Interleaved, so that both see the same machine load.
        naive_times, single = interleaved(naive, service, samples)
    enc = naive(0)
    decrypt_times = latencies(lambda i: enc.decrypt(), samples)
    public = context.copy()
    public.make_context_public()
    row(
        "tenseal naive (encrypt+dot+bias)",
        "single",
        summary(naive_times),
        upload_bytes=len(ts.ckks_vector(context, z[0]).serialize()),
        eval_key_bytes=len(public.serialize(save_galois_keys=True, save_relin_keys=True)),
        decrypt_ms=float(np.median(decrypt_times) * 1e3),
    )
    errors = [abs(naive(i).decrypt()[0] - (z[i] @ w + b[0])) for i in range(min(rows, 50))]
    results[-1]["max_abs_error"] = float(np.max(errors))

    # This service over HTTP: encrypt + send + evaluate + return + decrypt.
    with Client(url, timeout=120) as client:
        model = client.model(name)
        model.register()
        request = model.encrypt(x_raw[:1], "single")[0]
        expected = z @ w + b[0]
        got = model.raw_scores(x_raw, layout="single")[:, 0]
        body_bytes = len(request.ciphertexts[0])
        key_bytes = client.key_status(model.key_id)["size_bytes"]
        row(
            "service over HTTP (end to end)",
            "single",
            summary(single),
            upload_bytes=body_bytes,
            eval_key_bytes=key_bytes,
            max_abs_error=float(np.max(np.abs(got - expected))),
        )
        xb = x_raw[batch_idx]
        batch = latencies(lambda i: model.raw_scores(xb, layout="batch"), 5, warmup=1)
        got = model.raw_scores(xb, layout="batch")[:, 0]
        requests_ = model.encrypt(xb[:2048], "batch")
        row(
            "service over HTTP (end to end)",
            "batch",
            summary(batch, batch_rows),
            upload_bytes_per_row=sum(r.nbytes for r in requests_) / 2048,
            eval_key_bytes=0,
            max_abs_error=float(np.max(np.abs(got - (z[batch_idx] @ w + b[0])))),
        )
        model.delete_key()
    return results
