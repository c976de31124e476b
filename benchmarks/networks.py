"""Networks: plaintext torch, TenSEAL's naive high-level evaluation, and this service.

Server-side figures time the worker's own code path in process (parse, evaluate,
serialize); end-to-end figures go through the SDK and gunicorn over loopback HTTP.
Every timed call starts from raw pixels: the manifest's preprocessing is part of each workload
(plaintext folds it into the first layer).
"""

from __future__ import annotations

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
from heserve.engine import seal_io
from heserve.models.nets import digits_split, mnist_size_split

from .inprocess import InProcess
from .linear import (
    BASELINE,
    END_TO_END,
    HTTP,
    INPROCESS,
    PLAINTEXT,
    SERVER_SIDE,
    TENSEAL_SLOTS,
    naive_batch_outputs,
    weighted_sum,
)
from .stats import agreement, latencies, summary
from .stats import one_thread as blas_one_thread

SPLITS = {"digits-mlp": digits_split, "digits-cnn": digits_split, "mnist-size-mlp": mnist_size_split}


def torch_model(plan, pre: dict | None = None) -> torch.nn.Module:
    """The served network as plain torch layers (conv already folded into its dense matrix); with a
    standardizing `pre`, the standardization is folded into the first layer, so it takes raw pixels."""
    W1, b1 = np.asarray(plan.W1, dtype=np.float64), np.asarray(plan.b1, dtype=np.float64)
    if pre and pre.get("type") == "standardize":
        scale, mean = np.asarray(pre["scale"], dtype=np.float64), np.asarray(pre["mean"], dtype=np.float64)
        W1, b1 = W1 / scale, b1 - (W1 / scale) @ mean

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = torch.nn.Linear(plan.n_features, plan.n_hidden).double()
            self.l2 = torch.nn.Linear(plan.n_hidden, plan.n_outputs).double()
            with torch.no_grad():
                self.l1.weight.copy_(torch.tensor(W1))
                self.l1.bias.copy_(torch.tensor(b1))
                self.l2.weight.copy_(torch.tensor(plan.W2))
                self.l2.bias.copy_(torch.tensor(plan.b2))

        def forward(self, x):
            h = self.l1(x)
            return self.l2(h * (h + plan.beta))

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


def tenseal_context() -> ts.Context:
    """Depth 3 at N=8192 within 128-bit security, default Galois keys: a TenSEAL user's setup."""
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[50, 35, 35, 35, 60], n_threads=1)
    context.global_scale = 2**35
    context.generate_galois_keys()
    context.generate_relin_keys()
    return context


def tenseal_galois_bytes(context: ts.Context) -> int:
    with_keys = context.copy()
    with_keys.make_context_public()
    without = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[50, 35, 35, 35, 60], n_threads=1)
    without.generate_relin_keys()
    without.make_context_public()
    return len(with_keys.serialize(save_galois_keys=True)) - len(without.serialize(save_galois_keys=False))


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
    """One row with TenSEAL's high-level API: encrypt, mm, x*(x+beta), mm (biases added)."""
    plan = net.plan
    W1, W2 = plan.W1.T.tolist(), plan.W2.T.tolist()
    b1, b2 = plan.b1.tolist(), plan.b2.tolist()

    def run(row: np.ndarray) -> ts.CKKSVector:
        h = ts.ckks_vector(context, net.standardize(row)[0]).mm(W1) + b1
        h = h * (h + plan.beta)
        return h.mm(W2) + b2

    return run


def naive_batch(net: Network, context: ts.Context, x: np.ndarray) -> list[list[ts.CKKSVector]]:
    """Many rows with TenSEAL's high-level API: one vector per input feature (4,096 rows each),
    each hidden unit a weighted sum of them, squared, each output a weighted sum of those."""
    plan = net.plan
    out = []
    for start in range(0, len(x), TENSEAL_SLOTS):
        z = net.standardize(x[start : start + TENSEAL_SLOTS])
        columns = [ts.ckks_vector(context, z[:, j]) for j in range(z.shape[1])]
        hidden = [weighted_sum(columns, plan.W1[k], float(plan.b1[k])) for k in range(plan.n_hidden)]
        hidden = [h * (h + plan.beta) for h in hidden]
        out.append([weighted_sum(hidden, plan.W2[m], float(plan.b2[m])) for m in range(plan.n_outputs)])
    return out


def naive_batch_ops(net: Network) -> int:
    """Scalar products the column-wise TenSEAL evaluation needs per chunk of 4,096 rows."""
    return int(np.count_nonzero(net.plan.W1) + np.count_nonzero(net.plan.W2))


def bench_network(
    name: str,
    url: str,
    samples: int,
    naive_samples: int,
    context: ts.Context,
    *,
    engine: InProcess,
    batch_rows: int = 4096,
    plain_calls: int = 10,
    batch_calls: int = 3,
    http_batch_calls: int = 1,
    naive_batch_calls: int = 0,
    tick: Callable[[str], None] = lambda label: None,
) -> list[dict]:
    """naive_samples = 0 skips the TenSEAL single-sample baseline, naive_batch_calls = 0 its batch one."""
    net = Network(name, engine)
    x_test, rows, plan, pp = net.x, len(net.x), net.plan, net.postprocess
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
    naive = naive_single(net, context)
    session.call(single_requests[0])
    naive_times, naive_got, single_server, server_got = [], [], [], []
    rounds = max(1, naive_samples)
    per_round = max(1, len(single_requests) // rounds)
    if naive_samples:
        naive(x_test[0])  # warm-up
    for i in range(rounds):
        if naive_samples:
            start = time.perf_counter()
            out = naive(x_test[i % rows])
            naive_times.append(time.perf_counter() - start)
            naive_got.append(out.decrypt()[: plan.n_outputs])
        chunk = single_requests[i * per_round : (i + 1) * per_round if i + 1 < rounds else None]
        for request in chunk:
            elapsed, blobs = session.call(request)
            single_server.append(elapsed)
            server_got.append(remote.decrypt(request, blobs))
    if naive_samples:
        row(
            "tenseal naive (mm, square, mm)",
            BASELINE,
            "single",
            summary(np.array(naive_times)),
            upload_bytes_per_row=len(ts.ckks_vector(context, net.standardize(x_test[0])[0]).serialize()),
            eval_key_bytes=galois_bytes,
            eval_keys="TenSEAL's default Galois keys (relinearization keys and public key not counted)",
            **agreement(np.array(naive_got), net.predict(x_test[np.arange(rounds) % rows]), pp),
        )
    row(
        SERVER_SIDE,
        INPROCESS,
        "single",
        summary(np.array(single_server)),
        eval_key_bytes=session.eval_key_bytes,
        eval_keys="seeded Galois keys for the plan's rotation steps and relinearization keys",
        upload_bytes_per_row=single_requests[0].nbytes,
        **agreement(np.concatenate(server_got), net.predict(net.tiled(len(server_got))), pp),
    )
    del single_requests

    tick(f"{name}: tenseal batch")
    if naive_batch_calls:
        outs: list = []
        times = latencies(lambda i: naive_batch(net, context, batch_x), naive_batch_calls, warmup=0, outputs=outs)
        column = len(ts.ckks_vector(context, np.zeros(min(batch_rows, TENSEAL_SLOTS))).serialize())
        row(
            "tenseal naive (columns: weighted sums, square)",
            BASELINE,
            "batch",
            summary(times, batch_rows),
            upload_bytes_per_row=column * plan.n_features * -(-batch_rows // TENSEAL_SLOTS) / batch_rows,
            eval_key_bytes=tenseal_relin_bytes(context),
            eval_keys="TenSEAL's relinearization keys (no rotation: no Galois keys)",
            scalar_products=naive_batch_ops(net),
            **agreement(naive_batch_outputs(outs[-1], batch_rows), expected_b, pp),
        )
        del outs

    tick(f"{name}: server-side batch")
    start = time.perf_counter()
    batch_requests = remote.encrypt(batch_x, "batch")
    client_encrypt = time.perf_counter() - start
    batch_upload = sum(r.nbytes for r in batch_requests) / batch_rows
    times, got = session.repeat(batch_requests, batch_calls)
    del batch_requests
    # The batch layout rotates nothing: a client using only it registers relinearization keys alone.
    batch_keys = len(remote.secret_context.evaluation_key_request((), relin_keys=True)[0])
    row(
        SERVER_SIDE,
        INPROCESS,
        "batch",
        summary(times, batch_rows),
        upload_bytes_per_row=batch_upload,
        eval_key_bytes=batch_keys,
        eval_keys="seeded relinearization keys (the batch layout rotates nothing)",
        client_encrypt_s=client_encrypt,
        **agreement(got, expected_b, pp),
    )
    session.close()

    # End to end over HTTP through gunicorn: encrypt, send, evaluate, return, decrypt.
    tick(f"{name}: HTTP")
    with Client(url, timeout=600) as client:
        http = client.model(name)
        http.register()
        outs = []
        e2e = latencies(
            lambda i: http.raw_scores(x_test[i % rows : i % rows + 1], layout="single"), samples, warmup=1, outputs=outs
        )
        row(
            END_TO_END,
            HTTP,
            "single",
            summary(e2e),
            upload_bytes_per_row=http.encrypt(x_test[:1], "single")[0].nbytes,
            eval_key_bytes=client.key_status(http.key_id)["size_bytes"],
            eval_keys="seeded Galois keys for the plan's rotation steps and relinearization keys (as stored)",
            **agreement(np.concatenate(outs), net.predict(net.tiled(samples)), pp),
        )
        outs = []
        e2e_batch = latencies(
            lambda i: http.raw_scores(batch_x, layout="batch"), http_batch_calls, warmup=0, outputs=outs
        )
        row(
            END_TO_END,
            HTTP,
            "batch",
            summary(e2e_batch, batch_rows),
            upload_bytes_per_row=batch_upload,
            eval_key_bytes=batch_keys,
            eval_keys="seeded relinearization keys (the batch layout rotates nothing)",
            **agreement(outs[-1], expected_b, pp),
        )
        http.delete_key()
    return results


def sweep(
    name: str,
    url: str,
    engine: InProcess,
    context: ts.Context,
    batch_sizes: list[int],
    single_sizes: list[int],
    calls: int,
    naive_batch_calls: int = 0,
    tick: Callable[[str], None] = lambda label: None,
) -> list[dict]:
    """Rows/s against the number of rows per call: plaintext torch, the service over HTTP in both
    layouts, and (with naive_batch_calls) TenSEAL's column-wise evaluation."""
    net = Network(name, engine)
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
                    "tenseal naive (columns: weighted sums, square)",
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
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def op_costs(services, name: str) -> dict:
    """Micro-benchmark of each SEAL operation the plan uses, per level, in milliseconds."""
    plan = services.registry.get(name).plan
    runtime = plan.runtime
    secret = SecretContext.generate(runtime.params)
    galois = sealapi.GaloisKeys()
    secret._keygen.create_galois_keys([3], galois)
    relin = sealapi.RelinKeys()
    secret._keygen.create_relin_keys(relin)
    ev = runtime.evaluator
    ct = seal_io.load(sealapi.Ciphertext, runtime.context, secret.encrypt(np.zeros(4), 2.0**30), "c")
    # (the scale does not change what an operation costs)
    seeded = secret.encrypt(np.zeros(4), plan.single_input_scale)
    costs = {"load_seeded_ciphertext@0": _ms(lambda: seal_io.load(sealapi.Ciphertext, runtime.context, seeded, "c"))}
    for level in range(len(plan.levels)):
        plain = plan._encode(np.full(runtime.slots, 0.5), 2.0**8, level)  # cost does not depend on scale
        out = sealapi.Ciphertext()
        costs[f"multiply_plain@{level}"] = _ms(lambda c=ct, p=plain, o=out: ev.multiply_plain(c, p, o))
        costs[f"add@{level}"] = _ms(lambda c=ct, o=out: ev.add(c, c, o))
        costs[f"rotate@{level}"] = _ms(lambda c=ct, o=out: ev.rotate_vector(c, 1, galois, o))
        if level + 1 < len(plan.levels):
            costs[f"rescale@{level}"] = _ms(lambda c=ct, o=out: ev.rescale_to_next(c, o))
            costs[f"multiply_relinearize@{level}"] = _ms(
                lambda c=ct, o=out: (ev.multiply(c, c, o), ev.relinearize_inplace(o, relin))
            )
            nxt = sealapi.Ciphertext()
            ev.mod_switch_to_next(ct, nxt)
            ct = nxt
    return costs


def op_floor(plan_ops: list[dict], costs: dict) -> float:
    """Milliseconds the plan's SEAL operations cost at the micro-benchmarked rates."""
    return sum(costs.get(f"{op['op']}@{op['level']}", 0.0) * op.get("count", 1) for op in plan_ops)
