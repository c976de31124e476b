"""Linear models: plaintext numpy, TenSEAL's naive high-level API, and this service.

All in one run on one machine, so the ratios are comparable even when absolute
times drift with the machine's load. Every timed call starts from raw feature rows:
standardization is part of each workload, as it is part of the SDK's work (plaintext folds
it into the weights).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tenseal as ts

from heserve.client import Client
from heserve.models import artifact
from heserve.models.recipes import MODELS_DIR, breast_cancer_split, diabetes_split, linnerud_split

from .inprocess import InProcess
from .link import CountingTransport
from .stats import agreement, alternating, latencies, one_thread, summary

SPLITS = {
    "breast-cancer-logreg": breast_cancer_split,
    "diabetes-linreg": diabetes_split,
    "linnerud-linreg": linnerud_split,
}
TENSEAL_SLOTS = 4096  # N=8192
PLAINTEXT, BASELINE, INPROCESS, HTTP = "plaintext", "baseline", "in-process", "http"
COMPACT = "in-process, compact keys"  # the server side with Galois keys for a few rotation steps
SERVER_SIDE, END_TO_END = "service, server side", "service over HTTP (end to end)"
# Progress steps of bench_model: plaintext, single-sample (interleaved), TenSEAL batch, server-side batch, HTTP batch.
STEPS = 5


class LinearModel:
    """A shipped linear model's weights, preprocessing and test rows."""

    def __init__(self, name: str):
        art = artifact.load(MODELS_DIR / name)
        _, self.x, _, _ = SPLITS[name]()
        pre = art.manifest["preprocess"]
        self.name = name
        self.mean, self.scale = np.asarray(pre["mean"]), np.asarray(pre["scale"])
        self.W = np.atleast_2d(art.arrays["W"])  # (outputs, features)
        self.b = np.atleast_1d(art.arrays["b"])
        self.postprocess = art.manifest.get("postprocess", {"type": "identity"})
        # The plaintext workload: standardization folded into the weights, one matrix product (the
        # cheapest way to evaluate the same model; standardizing first costs more than the product).
        self.W_plain = self.W / self.scale
        self.b_plain = self.b - self.W_plain @ self.mean

    def standardize(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale

    def plaintext(self, x: np.ndarray) -> np.ndarray:
        return x @ self.W_plain.T + self.b_plain

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Plaintext raw outputs (rows, outputs): what the encrypted outputs are compared with."""
        return self.standardize(np.atleast_2d(x)) @ self.W.T + self.b


def tenseal_naive_context() -> ts.Context:
    """What a TenSEAL user writes: N=8192, [60, 40, 40, 60], scale 2^40, default Galois keys."""
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60], n_threads=1)
    context.global_scale = 2**40
    context.generate_galois_keys()
    return context


def tenseal_public_bytes(context: ts.Context, galois: bool = True) -> int:
    """TenSEAL's public context with its relinearization keys and (for the single-sample dot product,
    which rotates) its default Galois keys: what a TenSEAL server needs."""
    public = context.copy()
    public.make_context_public()
    return len(public.serialize(save_galois_keys=galois, save_relin_keys=True))


def naive_single(model: LinearModel, context: ts.Context) -> Callable[[np.ndarray], ts.CKKSVector]:
    """One row with TenSEAL's high-level API: standardize, encrypt, dot (mm for several outputs), add the bias."""
    if model.W.shape[0] == 1:
        w, b = model.W[0].tolist(), model.b.tolist()
        return lambda row: ts.ckks_vector(context, model.standardize(row)).dot(w) + b
    wt, b = model.W.T.tolist(), model.b.tolist()
    return lambda row: ts.ckks_vector(context, model.standardize(row)).mm(wt) + b


def weighted_sum(vectors: list, weights: np.ndarray, bias: float):
    """sum_j weights[j] * vectors[j] + bias with TenSEAL vectors."""
    acc = None
    for vector, weight in zip(vectors, weights, strict=True):
        if weight != 0.0:  # SEAL refuses a product with an all-zero plaintext (and a folded conv has many)
            term = vector * float(weight)
            acc = term if acc is None else acc + term
    return acc + bias


def naive_batch(model: LinearModel, context: ts.Context, x: np.ndarray) -> list[list[ts.CKKSVector]]:
    """Many rows with TenSEAL's high-level API: one vector per feature column (4,096 rows each),
    multiplied by the weights and summed; the same SIMD layout as the service's batch layout."""
    out = []
    for start in range(0, len(x), TENSEAL_SLOTS):
        z = model.standardize(x[start : start + TENSEAL_SLOTS])
        columns = [ts.ckks_vector(context, z[:, j]) for j in range(z.shape[1])]
        out.append([weighted_sum(columns, model.W[k], float(model.b[k])) for k in range(model.W.shape[0])])
    return out


def naive_batch_outputs(chunks: list[list[ts.CKKSVector]], rows: int) -> np.ndarray:
    blocks = [np.column_stack([np.array(v.decrypt()) for v in chunk]) for chunk in chunks]
    return np.concatenate(blocks, axis=0)[:rows]


def naive_batch_upload(model: LinearModel, context: ts.Context, rows: int) -> float:
    """Bytes per row TenSEAL uploads for a batch: one serialized vector per feature and chunk of 4,096 rows."""
    chunk = min(rows, TENSEAL_SLOTS)
    vector = len(ts.ckks_vector(context, np.zeros(chunk)).serialize())
    return vector * model.W.shape[1] * -(-rows // TENSEAL_SLOTS) / rows


def naive_label(model: LinearModel) -> str:
    return f"tenseal naive (encrypt+{'mm' if model.W.shape[0] > 1 else 'dot'}+bias)"


def bench_model(
    name: str,
    url: str,
    samples: int,
    batch_rows: int,
    context: ts.Context,
    *,
    engine: InProcess,
    plain_calls: int = 20,
    batch_calls: int = 5,
    tick: Callable[[str], None] = lambda label: None,
) -> list[dict]:
    model = LinearModel(name)
    x_raw = model.x
    rows = len(x_raw)
    rng = np.random.default_rng(0)
    batch_idx = rng.integers(0, rows, size=batch_rows)
    xb = x_raw[batch_idx]
    expected_b = model.predict(xb)
    results = []
    pp = model.postprocess

    def row(workload: str, role: str, layout: str, stats: dict, **extra) -> None:
        results.append(
            {"model": name, "family": "linear", "workload": workload, "role": role, "layout": layout, **stats, **extra}
        )

    # Plaintext numpy from raw rows (standardization folded into the weights).
    tick(f"{name}: plaintext")
    with one_thread():
        single = latencies(lambda i: model.plaintext(x_raw[i % rows : i % rows + 1]), samples)
        batch = latencies(lambda i: model.plaintext(xb), plain_calls)
    row("plaintext numpy", PLAINTEXT, "single", summary(single))
    row("plaintext numpy", PLAINTEXT, "batch", summary(batch, batch_rows))

    # Single sample: TenSEAL naive (encrypt, dot, add the bias: decryption measured separately), the
    # server's code path in process, and the SDK over HTTP (encrypt, send, evaluate, return, decrypt),
    # measured in turn so that all three see the same machine load.
    tick(f"{name}: single sample")
    naive = naive_single(model, context)
    session = engine.session(name)
    requests_1 = [session.remote.encrypt(x_raw[j : j + 1], "single")[0] for j in range(min(rows, samples))]
    wire = CountingTransport()
    with Client(url, timeout=120, transport=wire) as client:
        remote = client.model(name)
        remote.register()
        outs: list[list] = [[], [], []]
        mark = wire.mark()
        naive_times, _, http_times = alternating(
            [
                lambda i: naive(x_raw[i % rows]),
                lambda i: session.call(requests_1[i % len(requests_1)]),
                lambda i: remote.raw_scores(x_raw[i % rows : i % rows + 1], layout="single"),
            ],
            samples,
            warmup=3,
            outputs=outs,
        )
        single_wire = wire.since(mark).per_call(samples + 3, 1)
        single_download = session.response_bytes  # the last call's response (every one has the same size)
        server_times = np.array([elapsed for elapsed, _ in outs[1]])
        index = np.arange(samples) % rows
        k = model.W.shape[0]
        naive_got = np.array([v.decrypt()[:k] for v in outs[0]])
        server_got = np.concatenate(
            [session.remote.decrypt(requests_1[i % len(requests_1)], blobs) for i, (_, blobs) in enumerate(outs[1])]
        )
        server_index = np.arange(samples) % len(requests_1)
        http_got = np.concatenate(outs[2])
        enc = naive(x_raw[0])
        decrypt_times = latencies(lambda i: enc.decrypt(), samples)
        row(
            naive_label(model),
            BASELINE,
            "single",
            summary(naive_times),
            upload_bytes_per_row=len(ts.ckks_vector(context, model.standardize(x_raw[0])).serialize()),
            download_bytes_per_row=len(enc.serialize()),
            requests_per_call=1,
            eval_key_bytes=tenseal_public_bytes(context),
            eval_keys="TenSEAL public context: default Galois keys, relinearization keys, public key",
            decrypt_ms=float(np.median(decrypt_times) * 1e3),
            **agreement(naive_got, model.predict(x_raw[index]), pp),
        )
        row(
            SERVER_SIDE,
            INPROCESS,
            "single",
            summary(server_times),
            upload_bytes_per_row=requests_1[0].nbytes,
            download_bytes_per_row=single_download,
            eval_key_bytes=session.eval_key_bytes,
            eval_keys="seeded public key only (no Galois keys: the coefficient layout does not rotate)",
            **agreement(server_got, model.predict(x_raw[server_index]), pp),
        )
        single_upload = remote.encrypt(x_raw[:1], "single")[0].nbytes
        key_bytes = client.key_status(remote.key_id)["size_bytes"]
        row(
            END_TO_END,
            HTTP,
            "single",
            summary(http_times),
            upload_bytes_per_row=single_upload,
            **single_wire,
            eval_key_bytes=key_bytes,
            eval_keys="public key only, as stored by the server (no Galois keys)",
            **agreement(http_got, model.predict(x_raw[index]), pp),
        )

        # Batch: TenSEAL naive with one vector per feature column, in process.
        tick(f"{name}: tenseal batch")
        outs_b: list = []
        naive_b = latencies(lambda i: naive_batch(model, context, xb), batch_calls, warmup=1, outputs=outs_b)
        row(
            "tenseal naive (encrypt columns+scale+sum)",
            BASELINE,
            "batch",
            summary(naive_b, batch_rows),
            upload_bytes_per_row=naive_batch_upload(model, context, batch_rows),
            download_bytes_per_row=sum(len(v.serialize()) for chunk in outs_b[-1] for v in chunk) / batch_rows,
            requests_per_call=1,
            eval_key_bytes=tenseal_public_bytes(context, galois=False),
            eval_keys="TenSEAL public context without Galois keys (no rotation): relinearization keys, public key",
            **agreement(naive_batch_outputs(outs_b[-1], batch_rows), expected_b, pp),
        )
        del outs_b

        # Batch: the server's code path in process.
        tick(f"{name}: server-side batch")
        requests_b = session.remote.encrypt(xb, "batch")
        times, got = session.repeat(requests_b, batch_calls)
        row(
            SERVER_SIDE,
            INPROCESS,
            "batch",
            summary(times, batch_rows),
            upload_bytes_per_row=sum(r.nbytes for r in requests_b) / batch_rows,
            download_bytes_per_row=session.response_bytes / batch_rows,
            eval_key_bytes=0,
            eval_keys="public key only (scalar products; results re-randomized with it)",
            **agreement(got, expected_b, pp),
        )
        session.close()

        # Batch over HTTP: encrypt + send + evaluate + return + decrypt.
        tick(f"{name}: HTTP batch")
        outs_h: list = []
        mark = wire.mark()
        batch = latencies(lambda i: remote.raw_scores(xb, layout="batch"), batch_calls, warmup=1, outputs=outs_h)
        batch_wire = wire.since(mark).per_call(batch_calls + 1, batch_rows)
        requests_ = remote.encrypt(xb[:2048], "batch")
        row(
            END_TO_END,
            HTTP,
            "batch",
            summary(batch, batch_rows),
            upload_bytes_per_row=sum(r.nbytes for r in requests_) / 2048,
            **batch_wire,
            eval_key_bytes=0,
            eval_keys="public key only (scalar products; results re-randomized with it)",
            **agreement(outs_h[-1], expected_b, pp),
        )
        remote.delete_key()
    return results


def sweep(
    name: str,
    url: str,
    context: ts.Context,
    batch_sizes: list[int],
    single_sizes: list[int],
    calls: int,
    tick: Callable[[str], None] = lambda label: None,
) -> list[dict]:
    """Rows/s against the number of rows per call: plaintext, TenSEAL naive and the service over HTTP."""
    model = LinearModel(name)
    points = []
    warmup = 1 if calls > 1 else 0  # the server is warm already: one call per point is a rough figure

    def point(workload: str, role: str, layout: str, seconds: np.ndarray, rows: int) -> None:
        points.append({"model": name, "workload": workload, "role": role, "layout": layout, **summary(seconds, rows)})

    with Client(url, timeout=300) as client:
        remote = client.model(name)
        remote.register()
        for size in batch_sizes:
            tick(f"{name}: {size} rows")
            x = model.x[np.arange(size) % len(model.x)]
            with one_thread():
                plain = latencies(lambda i, x=x: model.plaintext(x), calls * 4)
            point("plaintext numpy", PLAINTEXT, "batch", plain, size)
            point(
                "tenseal naive (encrypt columns+scale+sum)",
                BASELINE,
                "batch",
                latencies(lambda i, x=x: naive_batch(model, context, x), calls, warmup=warmup),
                size,
            )
            point(
                END_TO_END,
                HTTP,
                "batch",
                latencies(lambda i, x=x: remote.raw_scores(x, layout="batch"), calls, warmup=warmup),
                size,
            )
        naive = naive_single(model, context)
        for size in single_sizes:
            tick(f"{name}: {size} rows, single")
            x = model.x[np.arange(size) % len(model.x)]
            point(
                naive_label(model),
                BASELINE,
                "single",
                latencies(lambda i, x=x: [naive(r) for r in x], calls, warmup=warmup),
                size,
            )
            point(
                END_TO_END,
                HTTP,
                "single",
                latencies(lambda i, x=x: remote.raw_scores(x, layout="single"), calls, warmup=warmup),
                size,
            )
        remote.delete_key()
    return points
