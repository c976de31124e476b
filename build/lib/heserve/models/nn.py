"""Polynomial activations for networks that run on CKKS ciphertexts (torch modules).

Only low-degree polynomials can be evaluated on ciphertexts; a network trained with
these computes exactly what the encrypted model computes.
"""

from __future__ import annotations

import torch
from torch import nn


class Square(nn.Module):
    """x -> x^2, the CryptoNets activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class PolyActivation(nn.Module):
    """x -> a*x^2 + b*x + c with trainable scalars a, b, c (one multiplicative level)."""

    def __init__(self, a: float = 0.1, b: float = 0.5, c: float = 0.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.b = nn.Parameter(torch.tensor(float(b)))
        self.c = nn.Parameter(torch.tensor(float(c)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x * x + self.b * x + self.c
