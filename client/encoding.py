"""Packing feature rows into CKKS slots for each layout, and reading outputs back."""

from __future__ import annotations

import numpy as np

from heserve.engine.packing import PackedLayout, tile_features
from heserve.engine.spec import SLOT_SUMS, LayoutSpec


def pack_single(row: np.ndarray, layout: LayoutSpec, slot_count: int) -> list[np.ndarray]:
    """The slot vectors of one row's ciphertexts.

    Every model: `period` features per ciphertext, zero-padded and tiled across every slot
    (one ciphertext for linear models, `packing["ciphertexts"]` for networks). The server
    reads the average of the periods, so the tiling is what keeps the row's own values.
    """
    if layout.packing:
        packing = PackedLayout.from_json(layout.packing)
        return packing.pack(np.asarray(row, dtype=np.float64), slot_count)
    return tile_features(np.asarray(row, dtype=np.float64), layout.period, 1, slot_count)


def unpack_single(slots: np.ndarray, n_outputs: int) -> np.ndarray:
    """Outputs sit in slots 0..n_outputs-1 of a single-layout result encoded in "slots"."""
    return slots[:n_outputs]


def unpack_slot_sums(slots: np.ndarray, period: int, n_outputs: int) -> np.ndarray:
    """Output k of a "slot-sums" result: the sum of its slots k, k + period, k + 2 period, ...
    (each slot alone is masked; the masks of one class sum to zero)."""
    if period < n_outputs or slots.size % period:
        raise ValueError(f"a result period of {period} cannot hold {n_outputs} outputs in {slots.size} slots")
    return slots.reshape(-1, period).sum(axis=0)[:n_outputs]


def unpack_single_result(slots: np.ndarray, layout: LayoutSpec, n_outputs: int) -> np.ndarray:
    """The outputs of one slot-encoded single-layout result, as the layout encodes them."""
    if layout.encoding == SLOT_SUMS:
        return unpack_slot_sums(slots, layout.result_period, n_outputs)
    return unpack_single(slots, n_outputs)


def pack_batch(rows: np.ndarray, slot_count: int) -> list[np.ndarray]:
    """Column j of up to slot_count rows: one vector per feature."""
    if rows.shape[0] > slot_count:
        raise ValueError(f"{rows.shape[0]} rows do not fit {slot_count} slots")
    return [np.ascontiguousarray(rows[:, j]) for j in range(rows.shape[1])]


def unpack_batch(slots_per_output: list[np.ndarray], rows: int) -> np.ndarray:
    return np.stack([slots[:rows] for slots in slots_per_output], axis=1)
