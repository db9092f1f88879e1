"""A tiny model and data factory, importable as ``tests.analysis.tiny_model:model``."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def model() -> nn.Module:
    """Float64, so batch composition (sharding) changes results only at round-off."""
    return Tiny().double()


def data() -> dict[str, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    out = {}
    for split, n in (("train", 60), ("test", 30)):
        y = torch.arange(n) % 3
        x = centres[y] + torch.randn(n, 5, generator=g, dtype=torch.float64)
        out[split] = TensorDataset(x, y)
    return out
