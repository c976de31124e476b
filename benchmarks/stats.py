"""Timing helpers: repeat a call, summarize latencies."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def latencies(fn: Callable[[int], object], count: int, warmup: int = 3) -> np.ndarray:
    """Seconds per call of fn(i) for i in range(count), after a few warm-up calls."""
    for i in range(warmup):
        fn(i)
    out = np.empty(count)
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        out[i] = time.perf_counter() - start
    return out


def interleaved(a: Callable[[int], object], b: Callable[[int], object], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Latencies of a and b measured alternately, so slow phases of a shared machine hit both."""
    for i in range(3):
        a(i)
        b(i)
    out_a, out_b = np.empty(count), np.empty(count)
    for i in range(count):
        start = time.perf_counter()
        a(i)
        mid = time.perf_counter()
        b(i)
        out_a[i], out_b[i] = mid - start, time.perf_counter() - mid
    return out_a, out_b


def summary(seconds: np.ndarray, rows_per_call: int = 1) -> dict:
    return {
        "median_ms": float(np.median(seconds) * 1e3),
        "p95_ms": float(np.percentile(seconds, 95) * 1e3),
        "rows_per_s": float(rows_per_call / np.median(seconds)),
        "calls": int(seconds.size),
    }
