"""Packing feature rows into CKKS slots for each layout, and reading outputs back."""

from __future__ import annotations

import numpy as np

from protocol.packing import PackedLayout
from protocol.spec import LayoutSpec


def pack_single(row: np.ndarray, layout: LayoutSpec, slot_count: int) -> list[np.ndarray]:
    """The slot vectors of one row's ciphertexts.

    Linear models: the row zero-padded to the layout's period and tiled across every slot.
    Networks: the packed layout, several ciphertexts, each slot holding one feature.
    """
    if layout.packing:
        index = PackedLayout.from_json(layout.packing).input_index(slot_count)
        padded = np.append(row, 0.0)
        return list(padded[np.where(index < row.size, index, row.size)])
    padded = np.zeros(layout.period)
    padded[: row.size] = row
    return [np.tile(padded, slot_count // layout.period)]


def unpack_single(slots: np.ndarray, n_outputs: int) -> np.ndarray:
    """Outputs sit in slots 0..n_outputs-1 in every single-layout result."""
    return slots[:n_outputs]


def pack_batch(rows: np.ndarray, slot_count: int) -> list[np.ndarray]:
    """Column j of up to slot_count rows: one vector per feature."""
    if rows.shape[0] > slot_count:
        raise ValueError(f"{rows.shape[0]} rows do not fit {slot_count} slots")
    return [np.ascontiguousarray(rows[:, j]) for j in range(rows.shape[1])]


def unpack_batch(slots_per_output: list[np.ndarray], rows: int) -> np.ndarray:
    return np.stack([slots[:rows] for slots in slots_per_output], axis=1)
