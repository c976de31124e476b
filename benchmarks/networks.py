"""Networks: plaintext torch, TenSEAL's naive high-level evaluation, and this service.

Server-side figures time the worker's own code path in process (parse, evaluate,
serialize); end-to-end figures go through the SDK and gunicorn over loopback HTTP.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi
import torch

from client import Client
from client.client import RemoteModel
from client.keys import SecretContext
from models.nets import digits_split, mnist_size_split
from protocol import seal_io, v2
from server.config import ServerConfig
from server.inference import infer
from server.services import Services

from .stats import latencies, summary

SPLITS = {"digits-mlp": digits_split, "digits-cnn": digits_split, "mnist-size-mlp": mnist_size_split}


def torch_model(plan) -> torch.nn.Module:
    """The served network as plain torch layers (conv already folded into its dense matrix)."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = torch.nn.Linear(plan.n_features, plan.n_hidden).double()
            self.l2 = torch.nn.Linear(plan.n_hidden, plan.n_outputs).double()
            with torch.no_grad():
                self.l1.weight.copy_(torch.tensor(plan.W1))
                self.l1.bias.copy_(torch.tensor(plan.b1))
                self.l2.weight.copy_(torch.tensor(plan.W2))
                self.l2.bias.copy_(torch.tensor(plan.b2))

        def forward(self, x):
            h = self.l1(x)
            return self.l2(h * (h + plan.beta))

    return Net().eval()


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


def bench_network(name: str, url: str, samples: int, naive_samples: int, context: ts.Context) -> list[dict]:
    _, x_test, _, _ = SPLITS[name]()
    rows = len(x_test)
    with tempfile.TemporaryDirectory() as tmp:
        services = Services.build(ServerConfig.from_env(keys_dir=Path(tmp)))
        served = services.registry.get(name)
        plan = served.plan
        z = x_test / 16.0
        results = []

        def row(workload: str, layout: str, stats: dict, **extra) -> None:
            results.append({"model": name, "workload": workload, "layout": layout, **stats, **extra})

        net = torch_model(plan)
        zt = torch.tensor(z)
        with torch.no_grad():
            row("plaintext torch", "single", summary(latencies(lambda i: net(zt[i % rows : i % rows + 1]), samples)))
            big = zt[np.arange(4096) % rows]
            row("plaintext torch", "batch", summary(latencies(lambda i: net(big), 10), 4096))

        # TenSEAL naive: mm, square, mm on one sample (encryption included, as a TenSEAL user writes it).
        W1, W2 = plan.W1.T.tolist(), plan.W2.T.tolist()

        def naive(i: int):
            h = ts.ckks_vector(context, z[i % rows]).mm(W1) + plan.b1.tolist()
            h = h * (h + plan.beta)
            return h.mm(W2) + plan.b2.tolist()

        # This service, server side in process: the worker's code path from request bytes to response bytes.
        secret = SecretContext.generate(served.spec.ckks)
        body, length = secret.evaluation_key_request(served.spec.rotation_steps, relin_keys=True)
        record = services.keys.register(body, length)
        remote = RemoteModel(Client("http://in-process"), name, served.metadata(), secret_context=secret)
        remote.key_id = record.key_id

        def server_side(request) -> tuple[float, list[bytes]]:
            message = v2.Message(
                [v2.Tensor("ciphertext", "BYTES", request.shape, request.ciphertexts)],
                parameters={"key_id": record.key_id, "layout": request.layout, "rows": request.rows},
            )
            payload, header = v2.encode(message, "inputs", binary=True)
            start = time.perf_counter()
            out, out_length = infer(served, services.keys, payload, header, True, 256)
            elapsed = time.perf_counter() - start
            return elapsed, v2.decode(out, out_length, "outputs").tensors[0].data

        single_requests = [remote.encrypt(x_test[i : i + 1], "single")[0] for i in range(min(samples, 20))]
        # TenSEAL naive and the server-side path alternate, so that both see the same machine load.
        warm = naive(0)
        server_side(single_requests[0])
        naive_times, single_server = [], []
        per_round = max(1, len(single_requests) // naive_samples)
        for i in range(naive_samples):
            start = time.perf_counter()
            naive(i)
            naive_times.append(time.perf_counter() - start)
            for request in single_requests[i * per_round : (i + 1) * per_round]:
                single_server.append(server_side(request)[0])
        naive_times, single_server = np.array(naive_times), np.array(single_server)
        naive_err = float(np.max(np.abs(np.array(warm.decrypt()) - served.plaintext_predict(x_test[:1])[0])))
        row(
            "tenseal naive (mm, square, mm)",
            "single",
            summary(naive_times),
            eval_key_bytes=tenseal_galois_bytes(context),
            max_abs_error=naive_err,
        )

        elapsed, blobs = server_side(single_requests[0])
        got = remote.decrypt(single_requests[0], blobs)
        row(
            "service, server side",
            "single",
            summary(single_server),
            eval_key_bytes=record.size_bytes,
            upload_bytes=single_requests[0].nbytes,
            max_abs_error=float(np.max(np.abs(got - served.plaintext_predict(x_test[:1])))),
        )
        batch_x = x_test[np.arange(4096) % rows]
        start = time.perf_counter()
        batch_requests = remote.encrypt(batch_x, "batch")
        client_encrypt = time.perf_counter() - start
        server_side(batch_requests[0])  # warm-up: first touch of the large buffers
        batch_server = []
        for _ in range(3):
            total = 0.0
            for request in batch_requests:
                elapsed, blobs = server_side(request)
                total += elapsed
            batch_server.append(total)
        got = remote.decrypt(batch_requests[-1], blobs)
        row(
            "service, server side",
            "batch",
            summary(np.array(batch_server), 4096),
            upload_bytes_per_row=sum(r.nbytes for r in batch_requests) / 4096,
            client_encrypt_s=client_encrypt,
            max_abs_error=float(np.max(np.abs(got - served.plaintext_predict(batch_x[-len(got) :])))),
        )

        # End to end over HTTP through gunicorn.
        with Client(url, timeout=600) as client:
            model = client.model(name)
            model.register()
            e2e = latencies(
                lambda i: model.raw_scores(x_test[i % rows : i % rows + 1], layout="single"), min(samples, 20), warmup=1
            )
            row("service over HTTP (end to end)", "single", summary(e2e))
            e2e_batch = latencies(lambda i: model.raw_scores(batch_x, layout="batch"), 1, warmup=0)
            row("service over HTTP (end to end)", "batch", summary(e2e_batch, 4096))
            model.delete_key()
        return results


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
