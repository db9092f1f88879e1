"""geomtools.manifolds.lorentz: centroid, expmap, project, minkowski_inner."""

from __future__ import annotations

import geoopt
import pytest
import torch

from geomtools.manifolds import lorentz

F64 = torch.float64
KS = [0.5, 1.0, 2.0]


def _points(k: float, *shape: int, seed: int = 0, scale: float = 1.5) -> torch.Tensor:
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
    g = torch.Generator().manual_seed(seed)
    o = man.origin(*shape, dtype=F64)
    return man.expmap0(man.proju(o, scale * torch.randn(*shape, generator=g, dtype=F64)))


@pytest.mark.parametrize("k", KS)
def test_centroid_on_hyperboloid_and_of_one_point(k: float) -> None:
    x = _points(k, 4, 6, 5)
    c = lorentz.centroid(x, k)
    torch.testing.assert_close(lorentz.minkowski_inner(c, c), torch.full((4,), -k, dtype=F64))
    assert bool((c[..., 0] > 0).all())
    torch.testing.assert_close(lorentz.centroid(x[:, :1], k), x[:, 0], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("k", KS)
def test_centroid_minimises_squared_lorentzian_distance(k: float) -> None:
    # Law et al. 2019: c minimises sum_i w_i ||x_i - c||_L^2 = sum_i w_i (-2k - 2<x_i, c>_L)
    x = _points(k, 7, 4, seed=1)
    w = torch.rand(7, generator=torch.Generator().manual_seed(2), dtype=F64)
    c = lorentz.centroid(x, k, w)

    def cost(y: torch.Tensor) -> torch.Tensor:
        return (w * (-2 * k - 2 * lorentz.minkowski_inner(x, y))).sum()

    base = cost(c)
    for other in _points(k, 50, 4, seed=3, scale=0.3):
        # perturb c along random geodesics: the cost never drops
        moved = lorentz.centroid(torch.stack([c, other]), k, torch.tensor([0.9, 0.1], dtype=F64))
        assert float(cost(moved)) >= float(base) - 1e-12


@pytest.mark.parametrize("k", KS)
def test_two_point_centroid_lies_on_geodesic(k: float) -> None:
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
    x, y = _points(k, 2, 5, seed=4)
    for t in (0.1, 0.5, 0.9):
        c = lorentz.centroid(torch.stack([x, y]), k, torch.tensor([1 - t, t], dtype=F64))
        torch.testing.assert_close(man.dist(x, c) + man.dist(c, y), man.dist(x, y))
    # equal weights: the midpoint
    c = lorentz.centroid(torch.stack([x, y]), k)
    torch.testing.assert_close(man.dist(x, c), man.dist(c, y))


def test_centroid_errors() -> None:
    x = _points(1.0, 3, 4)
    with pytest.raises(ValueError, match="non-negative"):
        lorentz.centroid(x, 1.0, torch.tensor([1.0, -0.5, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="sum to zero"):
        lorentz.centroid(x, 1.0, torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="N = 3"):
        lorentz.centroid(x, 1.0, torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="positive"):
        lorentz.centroid(x, -1.0)
    bad = x.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        lorentz.centroid(bad, 1.0)
    with pytest.raises(TypeError, match="float"):
        lorentz.centroid(torch.ones(3, 4, dtype=torch.int64), 1.0)


def test_centroid_half_precision_computed_in_float32() -> None:
    x = _points(1.0, 5, 4).to(torch.bfloat16)
    c = lorentz.centroid(x, 1.0)
    assert c.dtype == torch.bfloat16
    ref = lorentz.centroid(x.double(), 1.0)
    torch.testing.assert_close(c.double(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("k", KS)
def test_expmap_exact_at_zero_and_agrees_with_geoopt(k: float) -> None:
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
    x = _points(k, 6, 5, seed=5, scale=0.5)
    assert torch.equal(lorentz.expmap(x, torch.zeros_like(x), k), lorentz.project(x, k))
    torch.testing.assert_close(lorentz.project(x, k), x, rtol=0, atol=1e-13)
    g = torch.Generator().manual_seed(6)
    u = man.proju(x, torch.randn(6, 5, generator=g, dtype=F64))
    for s in (1e-7, 1e-5, 1e-3, 0.5, 2.0):
        y = lorentz.expmap(x, s * u, k)
        if s <= 1e-3:  # arccosh near 1 loses half the digits: distance from the chord,
            # d = 2 sqrt(k) asinh(|y - x|_L / (2 sqrt(k)))
            chord = lorentz.minkowski_inner(y - x, y - x).sqrt()
            dist = 2 * k**0.5 * torch.asinh(chord / (2 * k**0.5))
        else:  # the chord cancels badly far out: arccosh is accurate there
            dist = man.dist(x, y)
        # (the chord of a 1e-7 step carries ~1e-16 |x| of rounding: atol 1e-14)
        torch.testing.assert_close(dist, s * man.norm(u), rtol=1e-9, atol=1e-14)
        if s >= 1e-3:  # geoopt clamps |u|_L^2 at 1e-8 below that
            torch.testing.assert_close(y, man.expmap(x, s * u), rtol=1e-12, atol=1e-12)
    # geoopt's own expmap moves a point under a zero step by cosh(1e-4 / sqrt k) - 1 ~ 5e-9/k
    drift = (man.expmap(x, torch.zeros_like(x)) - x)[..., 1:].abs() / x[..., 1:].abs()
    assert float(drift.max()) == pytest.approx(5e-9 / k, rel=1e-3)


@pytest.mark.parametrize("k", KS)
def test_concat_exact_for_any_k(k: float) -> None:
    a, b, c = _points(k, 4, 3, seed=7), _points(k, 4, 5, seed=8), _points(k, 4, 2, seed=9)
    y = lorentz.concat([a, b, c], k)
    assert y.shape == (4, 1 + 2 + 4 + 1)
    torch.testing.assert_close(lorentz.minkowski_inner(y, y), torch.full((4,), -k, dtype=F64))
    torch.testing.assert_close(y[..., 1:], torch.cat([a[..., 1:], b[..., 1:], c[..., 1:]], -1))
    # the time equals sqrt(sum x0^2 - (n - 1) k) ...
    t = torch.sqrt(a[..., 0] ** 2 + b[..., 0] ** 2 + c[..., 0] ** 2 - 2 * k)
    torch.testing.assert_close(y[..., 0], t)
    # ... and the reference formula (n - 1 instead of (n - 1) k) is off the manifold for k != 1
    wrong = torch.sqrt(a[..., 0] ** 2 + b[..., 0] ** 2 + c[..., 0] ** 2 - 2)
    assert bool(torch.allclose(wrong, t)) == (k == 1.0)
    with pytest.raises(ValueError, match="leading shape"):
        lorentz.concat([a, b[:2]], k)


@pytest.mark.parametrize("k", KS)
def test_add_time_and_centroid_permutation_invariance(k: float) -> None:
    x = _points(k, 6, 4, seed=10)
    torch.testing.assert_close(lorentz.add_time(x[..., 1:], k), x, rtol=1e-12, atol=1e-12)
    w = torch.rand(6, generator=torch.Generator().manual_seed(3), dtype=F64)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(lorentz.centroid(x[perm], k, w[perm]), lorentz.centroid(x, k, w))


@pytest.mark.parametrize("k", KS)
def test_rescale_distance_keeps_direction_and_bounds_distance(k: float) -> None:
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
    x = _points(k, 50, 5, seed=11, scale=4.0)
    o = man.origin(50, 5, dtype=F64)
    big = lorentz.max_distance(torch.float16, k)
    y = lorentz.rescale_distance(x, k, dtype=torch.float16)
    torch.testing.assert_close(lorentz.minkowski_inner(y, y), torch.full((50,), -k, dtype=F64))
    d, d_new = man.dist(o, x), man.dist(o, y)
    torch.testing.assert_close(d_new, big * torch.tanh(d / big), rtol=1e-9, atol=1e-9)
    assert float(d_new.max()) < big
    cos = torch.nn.functional.cosine_similarity(x[..., 1:], y[..., 1:], dim=-1)
    torch.testing.assert_close(cos, torch.ones(50, dtype=F64))
    # near the origin it is the identity to first order
    tiny = _points(k, 5, 5, seed=12, scale=1e-4)
    torch.testing.assert_close(lorentz.rescale_distance(tiny, k), tiny, rtol=1e-7, atol=1e-12)
    # the origin stays put
    assert torch.equal(lorentz.rescale_distance(o, k), o)


def test_rescaled_points_survive_float16() -> None:
    k = 1.0
    x = _points(k, 200, 9, seed=13, scale=6.0)  # distances up to ~30: x0 ~ e^30 overflows fp16
    raw = x.to(torch.float16)
    assert not bool(torch.isfinite(raw).all())
    y = lorentz.rescale_distance(x, k, dtype=torch.float16).to(torch.float16)
    assert bool(torch.isfinite(y).all())
    err = (lorentz.minkowski_inner(y.double(), y.double()) + k).abs() / k
    # D keeps the constraint to ~sqrt(eps_fp16) = 0.031 after rounding to float16
    assert float(err.max()) < 0.05


def test_max_distance_values() -> None:
    assert lorentz.max_distance(torch.float16) == pytest.approx(2.426, abs=1e-3)
    assert lorentz.max_distance(torch.bfloat16) == pytest.approx(1.906, abs=1e-3)
    assert lorentz.max_distance(torch.float32, 4.0) == pytest.approx(2 * 4.679, abs=1e-3)


def test_expmap_gradient_finite_at_zero() -> None:
    x = _points(1.0, 3, 4, seed=14)
    u = torch.zeros(3, 4, dtype=F64, requires_grad=True)
    lorentz.expmap(x, u, 1.0).sum().backward()
    assert u.grad is not None and bool(torch.isfinite(u.grad).all())
    # d/du exp_x(u) at 0 is the identity on tangent vectors: the gradient of sum(y) is 1
    # through the space part (time is recomputed from it)
    assert torch.allclose(u.grad[:, 1:], (1 + x[:, 1:] / x[:, :1]), atol=1e-12)


@pytest.mark.parametrize("k", KS)
def test_centroid_beyond_max_distance_is_refused_not_garbage(k: float) -> None:
    """Past 9.70√k (float64) ⟨μ, μ⟩_L cancels: one point at 20√k gave (1.6e162, ...)."""
    direction = torch.tensor([0.6, 0.0, 0.8], dtype=F64)

    def at(d: float) -> torch.Tensor:
        return lorentz.expmap0(d * direction, k)[None]

    limit = lorentz.max_distance(F64, k)
    for d in (1.05 * limit, 20 * k**0.5, 200 * k**0.5):
        with pytest.raises(ValueError, match=r"max_distance\(torch.float64, k\) = .*9.7·√k"):
            lorentz.centroid(at(d), k)
    # inside the range: exact near the origin, and still half the digits (the documented
    # guarantee: the input itself is only that accurately on the hyperboloid) at the limit
    for d, rtol in ((1.0, 1e-14), (0.5 * limit, 1e-11), (0.99 * limit, 1e-7)):
        x = at(d)
        torch.testing.assert_close(lorentz.centroid(x, k), x[0], rtol=rtol, atol=0.0)
    # far points whose centroid is near the origin are fine (mirror pair → the origin)
    far = torch.cat([at(15.0), lorentz.expmap0(-15.0 * direction, k)[None]])
    torch.testing.assert_close(
        lorentz.centroid(far, k), lorentz.origin_like(far[0], k), rtol=1e-12, atol=1e-12
    )
