"""The packed single-sample layout of networks: which input feature each slot holds.

Shared by the server (which compiles its plaintexts against it) and the client (which
packs its inputs the same way); see server.network for how layers use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PackedLayout:
    ciphertexts: int  # m
    block: int  # B = H * s
    hidden: int  # H
    stride: int  # s
    group: int  # u
    blocks: int  # G

    def to_json(self) -> dict:
        return {
            "ciphertexts": self.ciphertexts,
            "block": self.block,
            "hidden": self.hidden,
            "stride": self.stride,
            "group": self.group,
            "blocks": self.blocks,
        }

    def rotation_steps(self, two_layers: bool) -> tuple[int, ...]:
        steps = [1 << i for i in range(int(math.log2(self.group)))]
        steps += [self.block << i for i in range(int(math.log2(self.blocks)))]
        if two_layers:
            steps += [self.stride << i for i in range(int(math.log2(self.hidden)))]
        return tuple(steps)

    def input_index(self, slots: int) -> np.ndarray:
        """(m, slots) array: the feature index each slot of each input ciphertext holds."""
        j = np.arange(slots)
        t, k = j // self.block, (j % self.block) % self.stride
        mu = np.arange(self.ciphertexts).reshape(-1, 1)
        return (mu * self.blocks + t) * self.group + (k % self.group)

    def hidden_index(self, slots: int) -> np.ndarray:
        return (np.arange(slots) % self.block) // self.stride

    def stride_index(self, slots: int) -> np.ndarray:
        return (np.arange(slots) % self.block) % self.stride

    @classmethod
    def from_json(cls, data: dict) -> PackedLayout:
        return cls(*(int(data[key]) for key in ("ciphertexts", "block", "hidden", "stride", "group", "blocks")))
