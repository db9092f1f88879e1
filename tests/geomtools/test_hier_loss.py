"""HIER loss: Poincaré distances, mining, the triplet loss against a loop, training."""

from __future__ import annotations

import geoopt
import mpmath
import pytest
import torch

from geomtools.losses.hier import HIERLoss, poincare_distance_matrix, to_poincare

F64 = torch.float64


@pytest.mark.parametrize("c", [0.1, 1.0])
def test_poincare_distance_matches_geoopt(c: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = to_poincare(torch.randn(6, 5, generator=g, dtype=F64), c, 2.3)
    y = to_poincare(torch.randn(4, 5, generator=g, dtype=F64), c, 2.3)
    mpmath.mp.dps = 50

    def exact(a: torch.Tensor, b: torch.Tensor) -> float:
        pa = [mpmath.mpf(float(v)) for v in a]
        pb = [mpmath.mpf(float(v)) for v in b]
        sq = sum((p - q) ** 2 for p, q in zip(pa, pb, strict=True))
        den = (1 - c * sum(p * p for p in pa)) * (1 - c * sum(q * q for q in pb))
        return float(mpmath.acosh(1 + 2 * c * sq / den) / mpmath.sqrt(c))

    ref = torch.tensor([[exact(a, b) for b in y] for a in x], dtype=F64)
    mine = poincare_distance_matrix(x, y, c)
    torch.testing.assert_close(mine, ref, rtol=1e-14, atol=0)
    # geoopt's PoincareBall.dist (Möbius addition + artanh) is only good to ~1e-7 here
    ball = geoopt.PoincareBall(c=c)
    torch.testing.assert_close(ball.dist(x[:, None, :], y[None, :, :]), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(to_poincare(x.new_zeros(2, 5), c), x.new_zeros(2, 5))
    # clipping bounds the distance to the origin by clip_r
    far = to_poincare(100 * torch.randn(10, 5, generator=g, dtype=F64), c, 2.3)
    d0 = poincare_distance_matrix(far, far.new_zeros(1, 5), c)
    assert float(d0.max()) <= 2 * 2.3 + 1e-9  # d(0, exp0(v)) = 2|v| in this convention


def _loop_reference(d: torch.Tensor, triplets: torch.Tensor, margin: float) -> float:
    total = 0.0
    for i, j, k in triplets.tolist():
        pij = min(range(d.shape[1]), key=lambda p: (max(d[i, p], d[j, p]), p))
        pijk = min(range(d.shape[1]), key=lambda p: (max(d[i, p], d[j, p], d[k, p]), p))
        if pij == pijk:
            continue
        total += max(0.0, float(d[i, pij] - d[i, pijk] + margin))
        total += max(0.0, float(d[j, pij] - d[j, pijk] + margin))
        total += max(0.0, float(d[k, pijk] - d[k, pij] + margin))
    return total / len(triplets)


def test_triplet_loss_equals_loop_without_noise() -> None:
    g = torch.Generator().manual_seed(1)
    loss = HIERLoss(7, 4, margin=0.3, seed=0)
    d = torch.rand(12, 7, generator=g, dtype=F64) * 3
    trip = torch.randint(0, 12, (40, 3), generator=g)
    got = float(loss.triplet_loss(d, trip, gumbel=False))
    assert got == pytest.approx(_loop_reference(d, trip, 0.3), rel=1e-12)
    assert got > 0


def test_mining_returns_mutual_neighbours_and_never_self() -> None:
    g = torch.Generator().manual_seed(2)
    y = torch.arange(24) % 3
    x = 3 * torch.eye(4, dtype=F64)[y] + 0.1 * torch.randn(24, 4, generator=g, dtype=F64)
    loss = HIERLoss(5, 4, topk=5, triplets_per_anchor=4, seed=0)
    z = to_poincare(x, 0.1, 2.3)
    trip = loss.mine(poincare_distance_matrix(z, z, 0.1), y)
    assert trip.shape[1] == 3 and len(trip) > 0
    a, p, n = trip.unbind(1)
    assert bool((a != p).all()) and bool((a != n).all())
    assert float((y[a] == y[p]).double().mean()) == 1.0  # label bonus: neighbours share labels


def test_gradients_reach_embeddings_and_proxies_and_training_lowers_loss() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    sup = 2.0 * torch.randn(3, 8, generator=g)
    sub = sup.repeat_interleave(3, 0) + 0.7 * torch.randn(9, 8, generator=g)
    y = torch.arange(90) % 9
    x = sub[y] + 0.2 * torch.randn(90, 8, generator=g)
    enc = torch.nn.Linear(8, 8)
    hier = HIERLoss(12, 8, topk=8, triplets_per_anchor=8, seed=0)
    opt = torch.optim.Adam([*enc.parameters(), *hier.parameters()], lr=1e-2)
    hier.eval()
    start = float(hier(enc(x), y).detach())
    hier.train()
    for _ in range(60):
        opt.zero_grad()
        loss = hier(enc(x), y)
        loss.backward()
        assert hier.proxies.grad is not None and bool(torch.isfinite(hier.proxies.grad).all())
        opt.step()
    hier.eval()
    end = float(hier(enc(x), y).detach())
    assert end < start


def test_input_errors() -> None:
    loss = HIERLoss(4, 3)
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        loss(torch.zeros(5, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="non-finite"):
        loss(torch.full((5, 3), float("nan")), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="num_proxies"):
        HIERLoss(1, 3)
