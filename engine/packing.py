"""Single-sample layouts: how a row's features fill the CKKS slots, and how a network uses them.

Shared by the server (which compiles its plaintexts against it) and the client (which
packs its inputs the same way).

Every single-layout input is *periodic*: ciphertext mu holds features [mu*Q, (mu+1)*Q),
zero-padded to the period Q and tiled across all S slots. The server never relies on
that tiling. Its first step sums each input over the subgroup of rotations by multiples
of Q (a rotate-and-sum with steps Q, 2Q, ..., S/2), which makes the vector periodic
whatever the client sent: every slot then holds the sum of all slots in its residue
class mod Q. Weights scaled by Q/S turn that sum into the average of the S/Q periods, so
the model reads one input vector per ciphertext (the periods' average; the row itself
for an honest client) and nothing lets different parts of the result read different
inputs. A linear model with one output uses the same rule (one ciphertext, Q = its
period); with several outputs, every output reads the first period (server.engine).

Networks (PackedLayout below, server.network): hidden unit c owns the R = S/H
consecutive slots [c*R, (c+1)*R), the outermost slot coordinate. After the periodic sum,
the m = Q/P groups of P features are brought under every slot by rotations by multiples
of the window P (baby steps on the input, giant steps on the products), multiplied by
W1, and summed over a window of P consecutive slots: slot c*R + r with r <= R - P then
reads every one of the Q periodic inputs exactly once, with hidden unit c's weights. The
last P - 1 slots of each copy mix two hidden units; layer 2 gives them zero weight.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np


def tile_features(row: np.ndarray, period: int, ciphertexts: int, slots: int) -> list[np.ndarray]:
    """The slot vectors of one row: `period` features per ciphertext, zero-padded and tiled."""
    if period < 1 or slots % period:
        raise ValueError(f"period {period} does not divide {slots} slots")
    if row.size > period * ciphertexts:
        raise ValueError(f"{row.size} features do not fit {ciphertexts} ciphertexts of period {period}")
    padded = np.zeros(period * ciphertexts)
    padded[: row.size] = row
    return [np.tile(padded[mu * period : (mu + 1) * period], slots // period) for mu in range(ciphertexts)]


def slot_sum_lattice(poly_degree: int, period: int) -> np.ndarray:
    """The coefficients a "slot-sums" result leaves readable (engine.neural masks every other one).

    The sum of the slots j = k (mod period) over SEAL's rotations by multiples of the period is the
    trace onto the polynomials in X^g, g = (N/2)/period: g times the coefficients at multiples of g.
    For period 1 the rotations (Galois elements 3^k) do not form that group, but the real part of
    the sum of all slots is N/2 times the constant coefficient (the slots and their conjugates are
    all the primitive 2N-th roots, whose i-th powers sum to zero for 0 < i < N): only it is kept.
    """
    index = np.arange(poly_degree)
    if period == 1:
        return index == 0
    return index % (poly_degree // 2 // period) == 0


def doubling_steps(start: int, stop: int) -> list[int]:
    """start, 2*start, 4*start, ... below stop: the steps of a rotate-and-sum."""
    steps = []
    step = start
    while step < stop:
        steps.append(step)
        step *= 2
    return steps


def lowest_bit(n: int) -> int:
    return n & -n


@dataclass(frozen=True)
class PackedLayout:
    """The single-sample layout of a network (see the module docstring for the slot map)."""

    ciphertexts: int  # M: ciphertexts per row
    period: int  # Q: features per ciphertext, tiled by the client, summed over periods by the server
    window: int  # P: consecutive slots summed into one hidden pre-activation (a power of two)
    hidden: int  # H: hidden-unit copies of S/H slots each (a power of two)
    baby: int  # b: rotations of the input by j*P, j < b; the rest are rotations of products by b*P
    out_period: int  # s: output k is the sum of the result's slots j = k (mod s) (k >= n_outputs: empty)

    @property
    def groups(self) -> int:
        return self.period // self.window

    @property
    def giant(self) -> int:
        return self.groups // self.baby

    def copy_slots(self, slots: int) -> int:
        return slots // self.hidden

    def periodic_steps(self, slots: int) -> list[int]:
        return doubling_steps(self.period, slots)

    def baby_steps(self) -> list[int]:
        # Baby copy j is made from copy j - lowbit(j), so only power-of-two multiples of P need keys.
        return sorted({lowest_bit(j) * self.window for j in range(1, self.baby)})

    def giant_step(self) -> int | None:
        return self.baby * self.window if self.giant > 1 else None

    def window_steps(self) -> list[int]:
        return doubling_steps(1, self.window)

    def rotation_steps(self, slots: int) -> tuple[int, ...]:
        """The steps the server rotates by (the output sum is the client's: see engine.neural)."""
        steps = set(self.periodic_steps(slots)) | set(self.baby_steps()) | set(self.window_steps())
        giant = self.giant_step()
        if giant:
            steps.add(giant)
        return tuple(sorted(steps))

    def pack(self, row: np.ndarray, slots: int) -> list[np.ndarray]:
        return tile_features(row, self.period, self.ciphertexts, slots)

    def validate(self, slots: int) -> None:
        powers = (self.period, self.window, self.hidden, self.baby, self.out_period)
        if any(v < 1 or v & (v - 1) for v in powers):
            raise ValueError(f"packing fields must be powers of two: {self.to_json()}")
        if self.period > slots or self.window > self.period or self.baby > self.groups:
            raise ValueError(f"inconsistent packing: {self.to_json()}")
        if self.out_period > self.copy_slots(slots) or self.window > self.copy_slots(slots):
            raise ValueError(f"packing does not fit {slots} slots: {self.to_json()}")

    def rotation_uses(self, slots: int) -> Counter[int]:
        """How many times one sample rotates by each step (engine.neural's single layout)."""
        uses: Counter[int] = Counter()
        for _ in range(self.ciphertexts):
            uses.update(self.periodic_steps(slots))
            uses.update(lowest_bit(j) * self.window for j in range(1, self.baby))
        giant = self.giant_step()
        if giant:
            uses[giant] += self.giant - 1
        uses.update(self.window_steps())
        return uses

    def rotations(self, slots: int) -> dict[str, int]:
        """How many rotations one sample costs, by stage (for plans and cost estimates)."""
        return {
            "periodic": self.ciphertexts * len(self.periodic_steps(slots)),
            "baby": self.ciphertexts * (self.baby - 1),
            "giant": self.giant - 1,
            "window": int(math.log2(self.window)),
        }

    def to_json(self) -> dict:
        return {
            "ciphertexts": self.ciphertexts,
            "period": self.period,
            "window": self.window,
            "hidden": self.hidden,
            "baby": self.baby,
            "out_period": self.out_period,
        }

    @classmethod
    def from_json(cls, data: dict) -> PackedLayout:
        return cls(*(int(data[key]) for key in ("ciphertexts", "period", "window", "hidden", "baby", "out_period")))
