"""Lorentz networks under bfloat16 / float16 autocast with distance rescaling stay finite.

`train_under_autocast(dtype, steps)` is also the long run of the issue: 10 000 steps
(`pytest -m slow`); the default suite runs a shortened version.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from geomtools.manifolds.lorentz import max_distance, minkowski_inner, rescale_distance
from geomtools.nn import EuclideanToLorentz, LorentzBatchNorm, LorentzLinear, LorentzMLR
from geomtools.optim import RiemannianAdamW


class _Net(nn.Module):
    """Euclidean encoder (autocast applies) → Lorentz layers (float32), rescaled after each."""

    def __init__(self, dtype: torch.dtype, k: float = 1.0) -> None:
        super().__init__()
        self.k, self.dtype = k, dtype
        self.enc = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
        self.to_l = EuclideanToLorentz(k=k, clip_r=2.0)
        self.l1 = LorentzLinear(16, 16, k=k)
        self.bn = LorentzBatchNorm(16, k=k)
        self.l2 = LorentzLinear(16, 16, k=k)
        self.mlr = LorentzMLR(16, 16, k=k)

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        return rescale_distance(x, self.k, dtype=self.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.squash(self.to_l(self.enc(x)))
        h = self.squash(self.l1(h))
        h = self.squash(self.l2(self.bn(h)))
        return self.mlr(h), h


def train_under_autocast(dtype: torch.dtype, steps: int, seed: int = 0) -> dict[str, Any]:
    """Train on a 16-class synthetic task under CPU autocast; return finiteness diagnostics."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(16, 8, generator=g)
    net = _Net(dtype)
    opt = RiemannianAdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    worst_off, worst_dist, losses = 0.0, 0.0, []
    for step in range(steps):
        y = torch.randint(0, 16, (128,), generator=g)
        x = centres[y] + torch.randn(128, 8, generator=g)
        with torch.autocast("cpu", dtype=dtype):
            logits, h = net(x)
            loss = nn.functional.cross_entropy(logits, y)
        if not bool(torch.isfinite(loss)):
            return {"failed_at": step, "loss": float(loss)}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            hd = h.detach().double()
            worst_off = max(worst_off, float(((minkowski_inner(hd, hd) + 1.0).abs()).max()))
            worst_dist = max(worst_dist, float(torch.asinh(hd[:, 1:].norm(dim=1)).max()))
    finite = all(bool(torch.isfinite(p).all()) for p in net.parameters())
    with torch.no_grad():
        y = torch.arange(512) % 16
        x = centres[y] + torch.randn(512, 8, generator=g)
        net.eval()
        with torch.autocast("cpu", dtype=dtype):
            acc = float((net(x)[0].argmax(1) == y).float().mean())
    return {
        "failed_at": None,
        "params_finite": finite,
        "first_loss": losses[0],
        "last_loss": sum(losses[-20:]) / len(losses[-20:]),
        "accuracy": acc,
        "max_constraint_error": worst_off,
        "max_distance": worst_dist,
        "bound": max_distance(dtype),
        "out_dtype": str(h.dtype),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_short_autocast_training_is_finite(dtype: torch.dtype) -> None:
    res = train_under_autocast(dtype, steps=150)
    assert res["failed_at"] is None, res
    assert res["params_finite"]
    assert res["out_dtype"] == "torch.float32"  # Lorentz layers leave autocast in float32
    assert res["last_loss"] < res["first_loss"]
    assert res["max_distance"] < res["bound"] + 1e-5  # rescaling keeps points inside D
    assert res["max_constraint_error"] < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_long_autocast_training_is_finite(dtype: torch.dtype) -> None:
    res = train_under_autocast(dtype, steps=10_000)
    print(f"\n{dtype}: {res}")
    assert res["failed_at"] is None, res
    assert res["params_finite"]
