"""Timing helpers (repeat a call, summarize latencies) and agreement with plaintext."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from threadpoolctl import threadpool_limits

from heserve.client.postprocess import labels

# A regression output agrees with plaintext when it is within this relative tolerance
# (absolute near zero): three significant digits, what a report would print.
REGRESSION_TOLERANCE = 1e-3


@contextmanager
def one_thread() -> Iterator[None]:
    """Plaintext baselines on one BLAS thread. On a shared 2-core machine a multi-threaded product
    spin-waits for a core that the server (or anything else) holds, and its time swings by 10-100x
    from one call to the next; on one thread it is steady. On an idle machine this makes plaintext
    a little slower, so the slowdown of encryption against it is, if anything, understated."""
    with threadpool_limits(limits=1):
        yield


def latencies(fn: Callable[[int], object], count: int, warmup: int = 3, outputs: list | None = None) -> np.ndarray:
    """Seconds per call of fn(i) for i in range(count), after a few warm-up calls.

    With `outputs`, the timed calls' return values are appended to it (warm-up calls are not).
    """
    for i in range(warmup):
        fn(i)
    out = np.empty(count)
    for i in range(count):
        start = time.perf_counter()
        value = fn(i)
        out[i] = time.perf_counter() - start
        if outputs is not None:
            outputs.append(value)
    return out


def alternating(
    fns: Sequence[Callable[[int], object]], count: int, warmup: int = 3, outputs: Sequence[list] | None = None
) -> list[np.ndarray]:
    """Latencies of several calls measured in turn, so slow phases of a shared machine hit them all."""
    for i in range(warmup):
        for fn in fns:
            fn(i)
    out = [np.empty(count) for _ in fns]
    for i in range(count):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            value = fn(i)
            out[k][i] = time.perf_counter() - start
            if outputs is not None:
                outputs[k].append(value)
    return out


def summary(seconds: np.ndarray, rows_per_call: int = 1) -> dict:
    seconds = np.asarray(seconds, dtype=np.float64)
    return {
        "median_ms": float(np.median(seconds) * 1e3),
        "p95_ms": float(np.percentile(seconds, 95) * 1e3),
        "rows_per_s": float(rows_per_call / np.median(seconds)),
        "calls": int(seconds.size),
        "rows_per_call": int(rows_per_call),
    }


def agreement(got: np.ndarray, expected: np.ndarray, postprocess: dict) -> dict:
    """How far encrypted outputs are from plaintext ones, for rows of raw outputs (rows, outputs).

    `agreement` is the fraction of rows whose prediction is the plaintext one: the same label for
    a classifier (sigmoid threshold or argmax, as the SDK decides it), every output within
    REGRESSION_TOLERANCE (relative, absolute below 1) for a regression.
    """
    got = np.asarray(got, dtype=np.float64).reshape(len(got), -1)
    expected = np.asarray(expected, dtype=np.float64).reshape(len(expected), -1)
    if got.shape != expected.shape:
        raise ValueError(f"outputs of shape {got.shape} against plaintext {expected.shape}")
    if postprocess.get("type", "identity") == "identity":
        same = np.all(np.abs(got - expected) <= REGRESSION_TOLERANCE * np.maximum(1.0, np.abs(expected)), axis=1)
    else:
        same = labels(got, postprocess) == labels(expected, postprocess)
    return {
        "agreement": float(np.mean(same)),
        "agreement_rows": len(same),
        "max_abs_error": float(np.max(np.abs(got - expected))),
    }
