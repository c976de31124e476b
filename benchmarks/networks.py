"""Networks: plaintext torch, TenSEAL's naive high-level evaluation, and this service.

Server-side figures time the worker's own code path in process (parse, evaluate,
serialize); end-to-end figures go through the SDK and gunicorn over loopback HTTP.
Every timed call starts from raw pixels: the manifest's preprocessing is part of each workload
(plaintext folds it into the first layer).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi
import torch

from heserve.client import Client
from heserve.client.keys import SecretContext
from heserve.client.postprocess import preprocess
from heserve.engine import rotations, seal_io
from heserve.engine.modmath import ModularDense, mulmod_vector
from heserve.engine.zero_encryption import ZeroEncryptor
from heserve.models.nets import digits_split, mnist_size_split

from .inprocess import InProcess, Session
from .linear import (
    BASELINE,
    COMPACT,
    END_TO_END,
    HTTP,
    INPROCESS,
    PLAINTEXT,
    SERVER_SIDE,
    naive_batch_outputs,
    weighted_sum,
)
from .link import CountingTransport
from .stats import agreement, latencies, summary
from .stats import one_thread as blas_one_thread

SPLITS = {
    "digits-mlp": digits_split,
    "digits-cnn": digits_split,
    "mnist-size-mlp": mnist_size_split,
    "digits-cryptonets": digits_split,
    "digits-mlp3": digits_split,
}

Dense = tuple[np.ndarray, np.ndarray]  # (weights (n_out, n_in), bias (n_out,))


def layers(plan) -> list[Dense | float]:
    """The served network as [(W, b), beta, (W, b), ...]: dense layers (conv, pooling and batch norm
    already folded in), each activation u -> u*(u + beta) between two of them. Works for the one-activation
    NetworkPlan (W1, b1, beta, W2, b2) and the leveled DeepNetworkPlan (dense, betas) alike."""
    if hasattr(plan, "dense"):
        out: list[Dense | float] = []
        for number, dense in enumerate(plan.dense):
            out.append((np.asarray(dense.weights, dtype=np.float64), np.asarray(dense.bias, dtype=np.float64)))
            if number < len(plan.betas):
                out.append(float(plan.betas[number]))
        return out
    first = (np.asarray(plan.W1, dtype=np.float64), np.asarray(plan.b1, dtype=np.float64))
    if not plan.two_layers:
        return [first]
    return [first, float(plan.beta), (np.asarray(plan.W2, dtype=np.float64), np.asarray(plan.b2, dtype=np.float64))]


def dense_layers(plan) -> list[Dense]:
    return [layer for layer in layers(plan) if isinstance(layer, tuple)]


def activations(plan) -> int:
    return sum(1 for layer in layers(plan) if not isinstance(layer, tuple))


def naive_depth(plan) -> int:
    """Levels TenSEAL's naive evaluation consumes: one per mm (a plaintext product, rescaled) and one
    per activation (a ciphertext product, rescaled)."""
    return len(layers(plan))


def torch_model(plan, pre: dict | None = None) -> torch.nn.Module:
    """The served network as plain torch layers (conv already folded into its dense matrix); with a
    standardizing `pre`, the standardization is folded into the first layer, so it takes raw pixels."""
    stages = layers(plan)
    W1, b1 = stages[0]
    if pre and pre.get("type") == "standardize":
        scale, mean = np.asarray(pre["scale"], dtype=np.float64), np.asarray(pre["mean"], dtype=np.float64)
        W1, b1 = W1 / scale, b1 - (W1 / scale) @ mean
    stages[0] = (W1, b1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = torch.nn.ModuleList()
            self.betas: list[float] = []
            for stage in stages:
                if isinstance(stage, tuple):
                    W, b = stage
                    linear = torch.nn.Linear(W.shape[1], W.shape[0]).double()
                    with torch.no_grad():
                        linear.weight.copy_(torch.tensor(W))
                        linear.bias.copy_(torch.tensor(b))
                    self.dense.append(linear)
                else:
                    self.betas.append(stage)

        def forward(self, x):
            h = self.dense[0](x)
            for beta, dense in zip(self.betas, self.dense[1:], strict=True):
                h = dense(h * (h + beta))
            return h

    return Net().eval()


@contextmanager
def one_thread() -> Iterator[None]:
    """Plaintext torch on one thread (and one BLAS thread): see stats.one_thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with blas_one_thread():
            yield
    finally:
        torch.set_num_threads(threads)


SHALLOW_DEPTH = 3  # dense, x*(x+beta), dense


def tenseal_parameters(depth: int = SHALLOW_DEPTH) -> tuple[int, list[int], int]:
    """(N, coeff_mod_bit_sizes, log2 scale) of the TenSEAL baseline for a network of `depth` levels:
    the published N=8192 [50, 35, 35, 35, 60], 2^35 up to depth 3; deeper, [60] + [40]*depth + [60] at
    2^40 in the smallest ring that holds it at 128-bit security (N=16384: up to 438 bits)."""
    if depth <= SHALLOW_DEPTH:
        return 8192, [50, 35, 35, 35, 60], 35
    sizes = [60] + [40] * depth + [60]
    for n, limit in ((16384, 438), (32768, 881)):
        if sum(sizes) <= limit:
            return n, sizes, 40
    raise ValueError(f"a depth-{depth} network does not fit TenSEAL at 128-bit security")


def tenseal_context(depth: int = SHALLOW_DEPTH) -> ts.Context:
    """A TenSEAL user's setup whose depth fits the network (tenseal_parameters), default Galois keys,
    relinearization keys; one per parameter set for the whole run (key generation takes seconds)."""
    n, sizes, scale_bits = tenseal_parameters(depth)
    return _tenseal_context(n, tuple(sizes), scale_bits)


@functools.cache
def _tenseal_context(n: int, sizes: tuple[int, ...], scale_bits: int) -> ts.Context:
    context = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=list(sizes), n_threads=1)
    context.global_scale = 2.0**scale_bits
    context.generate_galois_keys()
    context.generate_relin_keys()
    return context


def tenseal_slots(context: ts.Context) -> int:
    return context.seal_context().data.first_context_data().parms().poly_modulus_degree() // 2


def tenseal_galois_bytes(context: ts.Context) -> int:
    """TenSEAL's default Galois keys, as serialized in its public context."""
    public = context.copy()
    public.make_context_public()
    return len(public.serialize(save_galois_keys=True)) - len(public.serialize(save_galois_keys=False))


def tenseal_relin_bytes(context: ts.Context) -> int:
    """The relinearization keys in TenSEAL's public context: all the column-wise batch evaluation needs."""
    public = context.copy()
    public.make_context_public()
    return len(public.serialize(save_galois_keys=False, save_relin_keys=True)) - len(
        public.serialize(save_galois_keys=False, save_relin_keys=False)
    )


STEPS = 5  # progress steps of bench_network: plaintext, single sample, TenSEAL batch, server-side batch, HTTP


class Network:
    """A shipped network: its compiled plan, preprocessing and test rows."""

    def __init__(self, name: str, engine: InProcess):
        _, self.x, _, _ = SPLITS[name]()
        self.name = name
        self.served = engine.services.registry.get(name)
        self.plan = self.served.plan
        self.pre = self.served.manifest.get("preprocess", {"type": "identity"})
        self.postprocess = self.served.manifest.get("postprocess", {"type": "identity"})

    def standardize(self, x: np.ndarray) -> np.ndarray:
        return preprocess(np.atleast_2d(x), self.pre)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Plaintext raw outputs (rows, outputs): what the encrypted outputs are compared with."""
        return self.served.plaintext_predict(np.atleast_2d(x))

    def tiled(self, rows: int) -> np.ndarray:
        return self.x[np.arange(rows) % len(self.x)]


def naive_single(net: Network, context: ts.Context) -> Callable[[np.ndarray], ts.CKKSVector]:
    """One row with TenSEAL's high-level API: encrypt, then per layer mm (bias added) or x*(x+beta)."""
    stages = [
        (stage[0].T.tolist(), stage[1].tolist()) if isinstance(stage, tuple) else stage for stage in layers(net.plan)
    ]

    def run(row: np.ndarray) -> ts.CKKSVector:
        h = ts.ckks_vector(context, net.standardize(row)[0])
        for stage in stages:
            if isinstance(stage, tuple):
                h = h.mm(stage[0]) + stage[1]
            else:
                h = h * (h + stage)
        return h

    return run


def naive_batch(net: Network, context: ts.Context, x: np.ndarray) -> list[list[ts.CKKSVector]]:
    """Many rows with TenSEAL's high-level API: one vector per input feature (a chunk of rows in its
    slots), each unit of a dense layer a weighted sum of the previous layer's vectors, each
    activation x*(x+beta) of one vector, up to one vector per output."""
    slots = tenseal_slots(context)
    stages = layers(net.plan)
    out = []
    for start in range(0, len(x), slots):
        z = net.standardize(x[start : start + slots])
        h = [ts.ckks_vector(context, z[:, j]) for j in range(z.shape[1])]
        for stage in stages:
            if isinstance(stage, tuple):
                W, b = stage
                h = [weighted_sum(h, W[k], float(b[k])) for k in range(W.shape[0])]
            else:
                h = [u * (u + stage) for u in h]
        out.append(h)
    return out


def naive_batch_ops(net: Network) -> int:
    """Scalar products the column-wise TenSEAL evaluation needs per chunk of rows (one chunk: the slots)."""
    return int(sum(np.count_nonzero(W) for W, _ in dense_layers(net.plan)))


def naive_batch_estimate_s(net: Network, context: ts.Context, trials: int = 6) -> float:
    """Seconds one column-wise chunk would take, from a few scalar products and sums at the first
    level (an upper bound: later layers work at lower levels), the activations' products and the
    encryption of the columns."""
    column = ts.ckks_vector(context, np.zeros(tenseal_slots(context)))
    start = time.perf_counter()
    for _ in range(trials):
        term = column * 0.5
        term + term
    per_product = (time.perf_counter() - start) / trials
    start = time.perf_counter()
    column * (column + 0.5)
    per_activation = time.perf_counter() - start
    start = time.perf_counter()
    ts.ckks_vector(context, np.zeros(tenseal_slots(context)))
    per_column = time.perf_counter() - start
    units = sum(W.shape[0] for W, _ in dense_layers(net.plan)[:-1])
    return naive_batch_ops(net) * per_product + units * per_activation + net.plan.n_features * per_column


def naive_label(plan) -> str:
    """tenseal naive (mm, square, mm): its operations in order (square: x*(x+beta))."""
    return "tenseal naive (" + ", ".join("mm" if isinstance(s, tuple) else "square" for s in layers(plan)) + ")"


NAIVE_BATCH_LABEL = "tenseal naive (columns: weighted sums, square)"
NAIVE_BATCH_LIMIT_S = 60.0  # TenSEAL's column-wise batch is skipped when one call is estimated to take longer


def bench_network(
    name: str,
    url: str,
    samples: int,
    naive_samples: int,
    context: ts.Context | None = None,
    *,
    engine: InProcess,
    batch_rows: int = 4096,
    plain_calls: int = 10,
    batch_calls: int = 3,
    http_batch_calls: int = 1,
    naive_batch_calls: int = 0,
    naive_batch_limit_s: float = NAIVE_BATCH_LIMIT_S,
    tick: Callable[[str], None] = lambda label: None,
) -> list[dict]:
    """naive_samples = 0 skips the TenSEAL single-sample baseline, naive_batch_calls = 0 its batch one (and so
    does an estimate above naive_batch_limit_s seconds per call). context: TenSEAL's, by default the one
    whose depth fits the network (tenseal_context)."""
    net = Network(name, engine)
    # A batch call fills one chunk of the model's ring (8,192 rows at N=16384): a full chunk costs the
    # same as a partial one, so fewer rows would understate what the layout does.
    batch_rows = max(batch_rows, net.plan.runtime.slots)
    x_test, rows, plan, pp = net.x, len(net.x), net.plan, net.postprocess
    if context is None and (naive_samples or naive_batch_calls):
        context = tenseal_context(naive_depth(plan))
    galois_bytes = tenseal_galois_bytes(context) if naive_samples else None
    results = []

    def row(workload: str, role: str, layout: str, stats: dict, **extra) -> None:
        results.append(
            {"model": name, "family": "network", "workload": workload, "role": role, "layout": layout, **stats, **extra}
        )

    tick(f"{name}: plaintext")
    model = torch_model(plan, net.pre)  # from raw pixels: standardization folded into the first layer
    batch_x = net.tiled(batch_rows)
    expected_b = net.predict(batch_x)
    with torch.no_grad(), one_thread():
        row(
            "plaintext torch",
            PLAINTEXT,
            "single",
            summary(latencies(lambda i: model(torch.from_numpy(x_test[i % rows : i % rows + 1])), samples)),
        )
        row(
            "plaintext torch",
            PLAINTEXT,
            "batch",
            summary(latencies(lambda i: model(torch.from_numpy(batch_x)), plain_calls), batch_rows),
        )

    # TenSEAL naive (encryption included, as a TenSEAL user writes it) and the server-side path
    # alternate, so that both see the same machine load.
    tick(f"{name}: single sample")
    session = engine.session(name)
    remote = session.remote
    single_requests = [remote.encrypt(x_test[i % rows : i % rows + 1], "single")[0] for i in range(samples)]
    session.call(single_requests[0])
    single_download = session.response_bytes
    # The same rows with Galois keys for only a few steps (the server composes the others).
    compact = _compact_session(engine, name, plan)
    compact_requests = (
        [compact.remote.encrypt(x_test[i % rows : i % rows + 1], "single")[0] for i in range(samples)]
        if compact
        else []
    )
    if compact:
        compact.call(compact_requests[0])
    compact_server, compact_got = [], []
    naive_times, naive_got, naive_download, single_server, server_got = [], [], 0, [], []
    rounds = max(1, naive_samples)
    per_round = max(1, len(single_requests) // rounds)
    if naive_samples:
        naive = naive_single(net, context)
        naive(x_test[0])  # warm-up
    for i in range(rounds):
        if naive_samples:
            start = time.perf_counter()
            out = naive(x_test[i % rows])
            naive_times.append(time.perf_counter() - start)
            naive_got.append(out.decrypt()[: plan.n_outputs])
            naive_download = len(out.serialize())
        chunk = single_requests[i * per_round : (i + 1) * per_round if i + 1 < rounds else None]
        for request in chunk:
            elapsed, blobs = session.call(request)
            single_server.append(elapsed)
            server_got.append(remote.decrypt(request, blobs))
        for request in compact_requests[i * per_round : (i + 1) * per_round if i + 1 < rounds else None]:
            elapsed, blobs = compact.call(request)
            compact_server.append(elapsed)
            compact_got.append(compact.remote.decrypt(request, blobs))
    if naive_samples:
        row(
            naive_label(plan),
            BASELINE,
            "single",
            summary(np.array(naive_times)),
            upload_bytes_per_row=len(ts.ckks_vector(context, net.standardize(x_test[0])[0]).serialize()),
            download_bytes_per_row=naive_download,
            requests_per_call=1,
            eval_key_bytes=galois_bytes,
            eval_keys="TenSEAL's default Galois keys (relinearization keys and public key not counted)",
            tenseal_parameters=_parameters_label(context),
            **agreement(np.array(naive_got), net.predict(x_test[np.arange(rounds) % rows]), pp),
        )
    row(
        SERVER_SIDE,
        INPROCESS,
        "single",
        summary(np.array(single_server)),
        eval_key_bytes=session.eval_key_bytes,
        eval_keys="Galois keys for the plan's rotation steps and relinearization keys, as stored",
        key_upload_bytes=session.key_upload_bytes,
        upload_bytes_per_row=single_requests[0].nbytes,
        download_bytes_per_row=single_download,
        **agreement(np.concatenate(server_got), net.predict(net.tiled(len(server_got))), pp),
    )
    if compact:
        count = len(compact.remote.rotation_steps)
        row(
            f"{SERVER_SIDE}, {count} rotation keys",
            COMPACT,
            "single",
            summary(np.array(compact_server)),
            eval_key_bytes=compact.eval_key_bytes,
            eval_keys=f"Galois keys for steps {list(compact.remote.rotation_steps)} and relinearization keys, "
            "as stored (the server composes the other steps)",
            key_upload_bytes=compact.key_upload_bytes,
            rotation_keys=count,
            upload_bytes_per_row=compact_requests[0].nbytes,
            download_bytes_per_row=single_download,
            **agreement(np.concatenate(compact_got), net.predict(net.tiled(len(compact_got))), pp),
        )
        compact.close()
    del single_requests, compact_requests

    tick(f"{name}: tenseal batch")
    batch_note = None
    if naive_batch_calls:
        estimate = naive_batch_estimate_s(net, context) * -(-batch_rows // tenseal_slots(context))
        if estimate > naive_batch_limit_s:
            naive_batch_calls = 0
            batch_note = (
                f"TenSEAL's column-wise batch not measured: {naive_batch_ops(net):,} scalar products per chunk, "
                f"estimated {estimate:.0f} s per call (over {naive_batch_limit_s:.0f} s); "
                "speedup against TenSEAL one row at a time"
            )
    if naive_batch_calls:
        outs: list = []
        times = latencies(lambda i: naive_batch(net, context, batch_x), naive_batch_calls, warmup=0, outputs=outs)
        slots = tenseal_slots(context)
        column = len(ts.ckks_vector(context, np.zeros(min(batch_rows, slots))).serialize())
        row(
            NAIVE_BATCH_LABEL,
            BASELINE,
            "batch",
            summary(times, batch_rows),
            upload_bytes_per_row=column * plan.n_features * -(-batch_rows // slots) / batch_rows,
            download_bytes_per_row=sum(len(v.serialize()) for chunk in outs[-1] for v in chunk) / batch_rows,
            requests_per_call=1,
            eval_key_bytes=tenseal_relin_bytes(context),
            eval_keys="TenSEAL's relinearization keys (no rotation: no Galois keys)",
            scalar_products=naive_batch_ops(net),
            tenseal_parameters=_parameters_label(context),
            **agreement(naive_batch_outputs(outs[-1], batch_rows), expected_b, pp),
        )
        del outs
    note = {"note": batch_note} if batch_note else {}

    tick(f"{name}: server-side batch")
    start = time.perf_counter()
    batch_requests = remote.encrypt(batch_x, "batch")
    client_encrypt = time.perf_counter() - start
    batch_upload = sum(r.nbytes for r in batch_requests) / batch_rows
    times, got = session.repeat(batch_requests, batch_calls)
    batch_download = session.response_bytes / batch_rows
    del batch_requests
    # The batch layout rotates nothing: a client using only it registers relinearization keys alone.
    batch_keys = len(remote.secret_context.evaluation_key_request((), relin_keys=True)[0])
    row(
        SERVER_SIDE,
        INPROCESS,
        "batch",
        summary(times, batch_rows),
        upload_bytes_per_row=batch_upload,
        download_bytes_per_row=batch_download,
        eval_key_bytes=batch_keys,
        eval_keys="seeded relinearization keys (the batch layout rotates nothing)",
        client_encrypt_s=client_encrypt,
        **agreement(got, expected_b, pp),
        **note,
    )
    session.close()

    # End to end over HTTP through gunicorn: encrypt, send, evaluate, return, decrypt.
    tick(f"{name}: HTTP")
    wire = CountingTransport()
    with Client(url, timeout=600, transport=wire) as client:
        http = client.model(name)
        http.register()
        outs = []
        mark = wire.mark()
        e2e = latencies(
            lambda i: http.raw_scores(x_test[i % rows : i % rows + 1], layout="single"), samples, warmup=1, outputs=outs
        )
        row(
            END_TO_END,
            HTTP,
            "single",
            summary(e2e),
            upload_bytes_per_row=http.encrypt(x_test[:1], "single")[0].nbytes,
            **wire.since(mark).per_call(samples + 1, 1),
            eval_key_bytes=client.key_status(http.key_id)["size_bytes"],
            eval_keys="seeded Galois keys for the plan's rotation steps and relinearization keys (as stored)",
            **agreement(np.concatenate(outs), net.predict(net.tiled(samples)), pp),
        )
        outs = []
        mark = wire.mark()
        e2e_batch = latencies(
            lambda i: http.raw_scores(batch_x, layout="batch"), http_batch_calls, warmup=0, outputs=outs
        )
        row(
            END_TO_END,
            HTTP,
            "batch",
            summary(e2e_batch, batch_rows),
            upload_bytes_per_row=batch_upload,
            **wire.since(mark).per_call(http_batch_calls, batch_rows),
            eval_key_bytes=batch_keys,
            eval_keys="seeded relinearization keys (the batch layout rotates nothing)",
            **agreement(outs[-1], expected_b, pp),
            **note,
        )
        http.delete_key()
    return results


def _compact_session(engine: InProcess, name: str, plan) -> Session | None:
    """A session registering Galois keys for as few steps as compose every step of the plan (what
    rotation_keys="fewest" picks); None when that is all of them."""
    if len(rotations.compact_steps(plan.single_steps, plan.runtime.slots, rotations.FEWEST)) == len(plan.single_steps):
        return None
    return engine.session(name, rotation_keys=rotations.FEWEST)


def _parameters_label(context: ts.Context) -> str:
    parms = context.seal_context().data.first_context_data().parms()
    n = parms.poly_modulus_degree()
    bits = [m.bit_count() for m in context.seal_context().data.key_context_data().parms().coeff_modulus()]
    return f"N={n}, {bits}, scale 2^{math.log2(context.global_scale):.0f}"


def sweep(
    name: str,
    url: str,
    engine: InProcess,
    context: ts.Context | None,
    batch_sizes: list[int],
    single_sizes: list[int],
    calls: int,
    naive_batch_calls: int = 0,
    tick: Callable[[str], None] = lambda label: None,
) -> list[dict]:
    """Rows/s against the number of rows per call: plaintext torch, the service over HTTP in both
    layouts, and (with naive_batch_calls) TenSEAL's column-wise evaluation (context None: the one
    whose depth fits the network)."""
    net = Network(name, engine)
    if context is None and naive_batch_calls:
        context = tenseal_context(naive_depth(net.plan))
    model = torch_model(net.plan, net.pre)
    points = []
    warmup = 1 if calls > 1 else 0  # the server is warm already: one call per point is a rough figure

    def point(workload: str, role: str, layout: str, seconds: np.ndarray, rows: int) -> None:
        points.append({"model": name, "workload": workload, "role": role, "layout": layout, **summary(seconds, rows)})

    with Client(url, timeout=600) as client, torch.no_grad():
        remote = client.model(name)
        remote.register()
        for size in batch_sizes:
            tick(f"{name}: {size} rows")
            x = net.tiled(size)
            with one_thread():
                plain = latencies(lambda i, x=x: model(torch.from_numpy(x)), calls * 4)
            point("plaintext torch", PLAINTEXT, "batch", plain, size)
            if naive_batch_calls:
                point(
                    NAIVE_BATCH_LABEL,
                    BASELINE,
                    "batch",
                    latencies(lambda i, x=x: naive_batch(net, context, x), naive_batch_calls, warmup=0),
                    size,
                )
            point(
                END_TO_END,
                HTTP,
                "batch",
                latencies(lambda i, x=x: remote.raw_scores(x, layout="batch"), calls, warmup=warmup),
                size,
            )
        for size in single_sizes:
            tick(f"{name}: {size} rows, single")
            x = net.tiled(size)
            point(
                END_TO_END,
                HTTP,
                "single",
                latencies(lambda i, x=x: remote.raw_scores(x, layout="single"), calls, warmup=warmup),
                size,
            )
        remote.delete_key()
    return points


def _ms(fn, n: int = 10) -> float:
    """Median milliseconds of n calls after a warm-up: the median, as for the server times it is
    compared with, so that one call slowed by another process on a shared machine does not move it."""
    start = time.perf_counter()
    fn()  # warm-up
    if n > 1 and time.perf_counter() - start > 0.5:
        n = 3  # a slow operation (a large modular matrix product): three calls are a good enough figure
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def _batch_matmuls(plan) -> list[tuple[tuple[int, int], ModularDense, int, int]]:
    """(shape, the plan's modular matrix product, components of its input ciphertexts, level) of the
    batch layout. NetworkPlan: layer 1 on fresh ciphertexts, layer 2 on the unrelinearized products
    (three components), all at level 0. DeepNetworkPlan: at its schedule's batch level, on three
    components after a fused activation, on two after SEAL's."""
    if hasattr(plan, "dense"):
        sched = plan.schedule
        return [(d.weights.shape, d.batch, 3 if sched.batch_takes_fused(i) else 2, sched.batch_level(i))
                for i, d in enumerate(plan.dense)]
    out = [(plan.W1.shape, plan._dense1, 2, 0)]
    if plan.two_layers:
        out.append((plan.W2.shape, plan._dense2, 3, 0))
    return out


def _matmul_key(shape, level: int) -> str:
    return f"modular_matmul[{shape[0]}x{shape[1]}]@{level}"


def _op_key(op: dict) -> str:
    if op["op"] == "modular_matmul":
        return _matmul_key(op["shape"], op["level"])
    return f"{op['op']}@{op['level']}"


def op_costs(services, name: str) -> dict:
    """Micro-benchmark of each operation the plan uses, per level, in milliseconds: SEAL's (single layout
    and the batch layout's rescales and products) and the batch layout's modular matrix products (with
    the plan's own integer weights, every prime of the level) and coefficient-wise products."""
    plan = services.registry.get(name).plan
    runtime = plan.runtime
    n = runtime.params.poly_modulus_degree
    secret = SecretContext.generate(runtime.params)
    galois = sealapi.GaloisKeys()
    secret._keygen.create_galois_keys([3], galois)
    relin = sealapi.RelinKeys()
    secret._keygen.create_relin_keys(relin)
    public = sealapi.PublicKey()
    secret._keygen.create_public_key(public)
    encryptor = ZeroEncryptor(runtime.context, public)
    ev = runtime.evaluator
    # The scale does not change what an operation costs; 2^20 keeps a product (2^40) within the
    # second-to-last level of every plan (a 36-bit last prime at N=8192 and 26-27-bit primes).
    ct = seal_io.load(sealapi.Ciphertext, runtime.context, secret.encrypt(np.zeros(4), 2.0**20), "c")
    seeded = secret.encrypt(np.zeros(4), getattr(plan, "single_input_scale", plan.input_scale))
    costs = {"load_seeded_ciphertext@0": _ms(lambda: seal_io.load(sealapi.Ciphertext, runtime.context, seeded, "c"))}
    for level in range(len(plan.levels)):
        plain = plan._encode(np.full(runtime.slots, 0.5), 2.0**4, level)
        out = sealapi.Ciphertext()
        costs[f"multiply_plain@{level}"] = _ms(lambda c=ct, p=plain, o=out: ev.multiply_plain(c, p, o))
        costs[f"add@{level}"] = _ms(lambda c=ct, o=out: ev.add(c, c, o))
        costs[f"rotate@{level}"] = _ms(lambda c=ct, o=out: ev.rotate_vector(c, 1, galois, o))
        result = sealapi.Ciphertext()
        ev.add(ct, ct, result)  # re-randomized in place, as the server does each result
        costs[f"rerandomize@{level}"] = _ms(lambda r=result: runtime.rerandomize(r, encryptor))
        if level + 1 < len(plan.levels):
            costs[f"rescale@{level}"] = _ms(lambda c=ct, o=out: ev.rescale_to_next(c, o))
            costs[f"multiply_relinearize@{level}"] = _ms(
                lambda c=ct, o=out: (ev.multiply(c, c, o), ev.relinearize_inplace(o, relin))
            )
            product = sealapi.Ciphertext()
            ev.multiply(ct, ct, product)
            costs[f"relinearize@{level}"] = _ms(lambda c=product, o=out: ev.relinearize(c, relin, o))
            costs[f"rescale_3@{level}"] = _ms(lambda c=product, o=out: ev.rescale_to_next(c, o))
            nxt = sealapi.Ciphertext()
            ev.mod_switch_to_next(ct, nxt)
            ct = nxt
    # The slot sums' mask, at the result level, where it stands for the output sum's rotations.
    costs[f"mask@{len(plan.levels) - 1}"] = _ms(lambda: plan._output_mask(2.0**20))
    rng = np.random.default_rng(0)
    for shape, dense, components, level in _batch_matmuls(plan):
        inputs = [
            [rng.integers(0, q, size=(components, n), dtype=np.uint64) for _ in range(shape[1])]
            for q in plan.moduli[level]
        ]

        def matmul(dense=dense, inputs=inputs) -> None:
            for prime, rows in enumerate(inputs):
                dense.apply(prime, dense.gather(prime, rows))

        costs[_matmul_key(shape, level)] = _ms(matmul, n=3)
        del inputs
    product_levels = {op["level"] for op in plan.plan()["batch"]["ops"] if op["op"] == "coefficientwise_product"}
    units = 16
    for level in sorted(product_levels):
        if hasattr(plan, "_activation_batch"):  # DeepNetworkPlan: its own activation, one unit at a time
            beta = np.zeros(len(plan.moduli[level]), dtype=np.uint64)
            data = [np.stack([rng.integers(0, q, size=(2, n), dtype=np.uint64) for q in plan.moduli[level]], axis=1)
                    for _ in range(units)]

            def products(data=data, beta=beta, level=level) -> None:
                for unit in data:
                    plan._activation_batch(unit, beta, level)
        else:
            pairs = [
                (
                    rng.integers(0, q, size=(units, n), dtype=np.uint64),
                    rng.integers(0, q, size=(units, n), dtype=np.uint64),
                    q,
                )
                for q in plan.moduli[level]
            ]

            def products(pairs=pairs) -> None:  # (h0, h1) x (h0 + beta, h1): four products and a sum, every prime
                for a, b, q in pairs:
                    mulmod_vector(a, b, q)
                    mulmod_vector(a, a, q) + mulmod_vector(b, a, q)
                    mulmod_vector(b, b, q)

        costs[f"coefficientwise_product@{level}"] = _ms(products, n=3) / units
    return costs


def op_floor(plan_ops: list[dict], costs: dict) -> float:
    """Milliseconds the plan's operations cost at the micro-benchmarked rates (operations without a
    measured cost count 0)."""
    return sum(costs.get(_op_key(op), 0.0) * op.get("count", 1) for op in plan_ops)


def floors(services, name: str) -> dict:
    """The op-count floors of a network: one single-layout row, one batch chunk (its slots), the costs."""
    plan = services.registry.get(name).plan
    costs = op_costs(services, name)
    ops = plan.plan()
    seal_only = [op for op in ops["batch"]["ops"] if op["op"] not in ("modular_matmul", "coefficientwise_product")]
    return {
        "single_ms": op_floor(ops["single"]["ops"], costs),
        "batch_ms": op_floor(ops["batch"]["ops"], costs),
        "batch_seal_ms": op_floor(seal_only, costs),
        "batch_chunk_rows": int(plan.runtime.slots),
        "op_ms": costs,
    }
