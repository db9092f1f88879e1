"""Grassmann-specific laws: closed forms, subspace semantics, and property versions of the
conformance laws over random sizes Gr(n, p), 2 ≤ n ≤ 9, 1 ≤ p < n."""

from __future__ import annotations

import math

import geoopt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomtools.manifolds import Grassmann
from tests.manifolds.cases import DTYPE, generator

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
PROPERTY = settings(max_examples=30, deadline=None, derandomize=True)
MAN = Grassmann()


@st.composite
def sizes(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(min_value=2, max_value=9))
    return n, draw(st.integers(min_value=1, max_value=n - 1))


def max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max())


def projector(x: torch.Tensor) -> torch.Tensor:
    return x @ x.mT


def point(n: int, p: int, g: torch.Generator) -> torch.Tensor:
    return MAN.projx(torch.randn(n, p, generator=g, dtype=DTYPE))


def horizontal(x: torch.Tensor, g: torch.Generator, spectral: float | None = None) -> torch.Tensor:
    """Random horizontal vector at x, rescaled to the given spectral norm if asked."""
    u = MAN.proju(x, torch.randn(*x.shape, generator=g, dtype=DTYPE))
    if spectral is not None:
        u = u * (spectral / torch.linalg.matrix_norm(u, ord=2))[..., None, None]
    return u


def with_angles(n: int, angles: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Points x, y of Gr(n, p) (2p ≤ n) with prescribed principal angles, in random coordinates."""
    p = angles.shape[0]
    x = torch.zeros(n, p, dtype=DTYPE)
    y = torch.zeros(n, p, dtype=DTYPE)
    x[:p] = torch.eye(p, dtype=DTYPE)
    y[:p] = torch.diag(torch.cos(angles))
    y[p : 2 * p] = torch.diag(torch.sin(angles))
    rot, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    mix, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=DTYPE))
    return rot @ x @ mix, rot @ y


# ---------------------------------------------------------------------------- projx
@PROPERTY
@given(size=sizes(), seed=SEEDS)
def test_projx_is_orthonormal_and_spans_the_input(size: tuple[int, int], seed: int) -> None:
    n, p = size
    a = torch.randn(n, p, generator=generator(seed), dtype=DTYPE)
    x = MAN.projx(a)
    assert max_abs(x.mT @ x - torch.eye(p, dtype=DTYPE)) <= 1e-12
    # same column space: the orthogonal projector onto span(a) is a (aᵀa)⁻¹ aᵀ
    span = a @ torch.linalg.solve(a.mT @ a, a.mT)
    assert max_abs(projector(x) - span) <= 1e-10
    # positive diag(R) normalisation: xᵀa is upper triangular with positive diagonal
    r = x.mT @ a
    assert max_abs(torch.tril(r, diagonal=-1)) <= 1e-10
    assert bool((torch.diagonal(r) > 0).all())


def test_projx_of_a_rotated_representative_keeps_the_subspace() -> None:
    g = generator(11)
    x = point(7, 3, g)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=DTYPE))
    assert bool(MAN.same_point(MAN.projx(x @ q), x))
    assert max_abs(MAN.projx(x) - x) <= 1e-14


# ---------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("n", [4, 7])
def test_principal_angles_and_dist_match_a_constructed_pair(n: int) -> None:
    angles = torch.tensor([1.2, 0.1, 0.7], dtype=DTYPE)[: n // 2]
    x, y = with_angles(n, angles, generator(n))
    expected = angles.sort().values
    assert max_abs(MAN.principal_angles(x, y) - expected) <= 1e-13
    assert max_abs(MAN.principal_angles(y, x) - expected) <= 1e-13
    assert float(MAN.dist(x, y)) == pytest.approx(float(angles.norm()), abs=1e-13)
    assert float(MAN.dist2(x, y)) == pytest.approx(float(angles.square().sum()), abs=1e-13)


def test_small_principal_angles_keep_full_relative_accuracy() -> None:
    """The atan2 form resolves angles ~1e-9 where arccos of the cosines returns 0 or ~1e-8."""
    angles = torch.tensor([3e-9, 1e-9], dtype=DTYPE)
    x, y = with_angles(8, angles, generator(5))
    got = MAN.principal_angles(x, y)
    assert max_abs(got / angles.sort().values - 1) <= 1e-6
    assert float(MAN.dist(x, y)) == pytest.approx(float(angles.norm()), rel=1e-6)


def test_orthogonal_subspaces_are_at_distance_sqrt_p_pi_over_2() -> None:
    eye = torch.eye(6, dtype=DTYPE)
    x, y = eye[:, :2], eye[:, 2:4]
    assert max_abs(MAN.principal_angles(x, y) - math.pi / 2) <= 1e-15
    assert float(MAN.dist(x, y)) == pytest.approx(math.sqrt(2) * math.pi / 2, abs=1e-14)


@PROPERTY
@given(n=st.integers(min_value=2, max_value=9), seed=SEEDS)
def test_lines_match_the_sphere_up_to_antipodes(n: int, seed: int) -> None:
    """Gr(n, 1) is projective space: exp is the sphere's, dist is min(θ, π - θ)."""
    g = generator(seed)
    sphere = geoopt.Sphere()
    x = point(n, 1, g)
    u = horizontal(x, g) * float(torch.rand((), generator=g, dtype=DTYPE)) * 3.0
    y = MAN.expmap(x, u)
    assert max_abs(y[:, 0] - sphere.expmap(x[:, 0], u[:, 0])) <= 1e-12
    z = point(n, 1, g)
    theta = torch.arccos((x[:, 0] @ z[:, 0]).clamp(-1, 1))
    assert float(MAN.dist(x, z)) == pytest.approx(float(min(theta, math.pi - theta)), abs=1e-7)


def test_square_case_is_a_single_point() -> None:
    """Gr(n, n) has one point; everything collapses but stays well defined."""
    g = generator(2)
    x, y = point(5, 5, g), point(5, 5, g)
    assert bool(MAN.same_point(x, y))
    assert max_abs(MAN.dist(x, y)) <= 1e-7
    assert max_abs(MAN.proju(x, torch.randn(5, 5, generator=g, dtype=DTYPE))) <= 1e-12
    assert max_abs(MAN.logmap(x, y)) <= 1e-7
    assert tuple(MAN.random(5, 5, dtype=DTYPE).shape) == (5, 5)


def test_origin_is_the_first_coordinate_axes() -> None:
    x = MAN.origin(2, 6, 3, dtype=DTYPE)
    expected = torch.zeros(6, 3, dtype=DTYPE)
    expected[:3] = torch.eye(3, dtype=DTYPE)
    assert isinstance(x, geoopt.ManifoldTensor) and x.manifold is MAN
    assert torch.equal(x.as_subclass(torch.Tensor), expected.expand(2, 6, 3))


def test_random_is_a_manifold_tensor_on_this_manifold_and_haar_invariant_in_mean() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        xs = MAN.random(4000, 5, 2, dtype=DTYPE)
    assert isinstance(xs, geoopt.ManifoldTensor) and xs.manifold is MAN
    # E[XXᵀ] = (p / n) I for the uniform measure on Gr(n, p)
    mean = projector(xs.as_subclass(torch.Tensor)).mean(0)
    assert max_abs(mean - 0.4 * torch.eye(5, dtype=DTYPE)) <= 0.03


def test_invalid_shapes_have_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"0 < p <= n, got n=3, p=7"):
        MAN.random(3, 7)
    with pytest.raises(ValueError, match=r"0 < p <= n, got n=4, p=0"):
        MAN.origin(4, 0)
    with pytest.raises(ValueError, match="requires more than 2 dim"):
        MAN.random(5)
    assert not MAN.check_point(torch.zeros(3, 7, dtype=DTYPE))


def test_same_point_reduces_over_the_batch() -> None:
    g = generator(4)
    x = MAN.projx(torch.randn(3, 6, 2, generator=g, dtype=DTYPE))
    y = x.clone()
    y[1] = point(6, 2, g)
    same = MAN.same_point(x, y)
    assert same.dtype == torch.bool and same.tolist() == [True, False, True]
    tiny = MAN.expmap(x, 1e-8 * horizontal(x, g, spectral=1.0))
    assert not bool(MAN.same_point(x, tiny, atol=1e-10).any())
    assert bool(MAN.same_point(x, tiny, atol=1e-7).all())


# ---------------------------------------------------------------------------- properties
@PROPERTY
@given(size=sizes(), seed=SEEDS, frac=st.floats(min_value=0.01, max_value=0.95))
def test_log_inverts_exp_inside_the_injectivity_radius(
    size: tuple[int, int], seed: int, frac: float
) -> None:
    n, p = size
    g = generator(seed)
    x = point(n, p, g)
    u = horizontal(x, g, spectral=frac * math.pi / 2)
    y = MAN.expmap(x, u)
    assert max_abs(y.mT @ y - torch.eye(p, dtype=DTYPE)) <= 1e-12
    assert max_abs(MAN.logmap(x, y) - u) <= 1e-9
    assert float(MAN.dist(x, y)) == pytest.approx(float(MAN.norm(x, u)), abs=1e-10)
    # the largest principal angle is the spectral norm of u
    assert float(MAN.principal_angles(x, y)[-1]) == pytest.approx(frac * math.pi / 2, abs=1e-10)
    # exp∘log on an independent representative of y
    yq = y @ torch.linalg.qr(torch.randn(p, p, generator=g, dtype=DTYPE))[0]
    assert bool(MAN.same_point(MAN.expmap(x, MAN.logmap(x, yq)), y))


@PROPERTY
@given(size=sizes(), seed=SEEDS)
def test_triangle_inequality_and_symmetry_on_random_sizes(size: tuple[int, int], seed: int) -> None:
    n, p = size
    g = generator(seed)
    x, y, z = point(n, p, g), point(n, p, g), point(n, p, g)
    assert float(MAN.dist(x, z)) <= float(MAN.dist(x, y) + MAN.dist(y, z)) + 1e-12
    assert float(MAN.dist(x, y)) == pytest.approx(float(MAN.dist(y, x)), abs=1e-12)
    assert float(MAN.dist(x, x)) <= 1e-13
    # bounded by the diameter √min(p, n-p) · π/2
    assert float(MAN.dist(x, y)) <= math.sqrt(min(p, n - p)) * math.pi / 2 + 1e-12


@PROPERTY
@given(size=sizes(), seed=SEEDS, frac=st.floats(min_value=0.01, max_value=3.0))
def test_parallel_transp_is_an_isometry_onto_the_new_horizontal_space(
    size: tuple[int, int], seed: int, frac: float
) -> None:
    """Parallel transport is defined for any u, also past the cut locus."""
    n, p = size
    g = generator(seed)
    x = point(n, p, g)
    u = horizontal(x, g, spectral=frac)
    v, w = horizontal(x, g), horizontal(x, g)
    y = MAN.expmap(x, u)
    tv, tw = MAN.parallel_transp(x, u, v), MAN.parallel_transp(x, u, w)
    assert max_abs(y.mT @ tv) <= 1e-12
    assert float(MAN.inner(y, tv, tw)) == pytest.approx(float(MAN.inner(x, v, w)), abs=1e-10)
    # closed form of the velocity d/dt exp(x, t u) at t = 1: (-x V sinΣ + W cosΣ) Σ Vᵀ
    wl, s, vh = torch.linalg.svd(u, full_matrices=False)
    velocity = (-(x @ vh.mT) * torch.sin(s) + wl * torch.cos(s)) * s @ vh
    assert max_abs(MAN.parallel_transp(x, u, u) - velocity) <= 1e-12


@PROPERTY
@given(size=sizes(), seed=SEEDS)
def test_dist_and_log_are_invariant_to_both_representatives(
    size: tuple[int, int], seed: int
) -> None:
    n, p = size
    g = generator(seed)
    x = point(n, p, g)
    y = MAN.expmap(x, horizontal(x, g, spectral=1.2))
    q1, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=DTYPE))
    q2, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=DTYPE))
    assert float(MAN.dist(x @ q1, y @ q2)) == pytest.approx(float(MAN.dist(x, y)), abs=1e-12)
    assert max_abs(MAN.logmap(x @ q1, y @ q2) - MAN.logmap(x, y) @ q1) <= 1e-10
    u = horizontal(x, g, spectral=1.0)
    assert bool(MAN.same_point(MAN.expmap(x @ q1, u @ q1), MAN.expmap(x, u)))


def test_scaled_grassmann_rescales_distances_and_vectors() -> None:
    """geoopt.Scaled(·, s): dist and log scale by s, exp/retr take u / s, inner is unchanged."""
    s = 2.0
    scaled = geoopt.Scaled(Grassmann(), s)
    g = generator(8)
    x = point(7, 3, g)
    u = horizontal(x, g, spectral=1.0)
    y = MAN.expmap(x, u)
    assert float(scaled.dist(x, y)) == pytest.approx(s * float(MAN.dist(x, y)), abs=1e-13)
    assert float(scaled.dist2(x, y)) == pytest.approx(s**2 * float(MAN.dist2(x, y)), abs=1e-12)
    assert max_abs(scaled.logmap(x, y) - s * u) <= 1e-12
    assert max_abs(scaled.expmap(x, s * u) - y) <= 1e-14
    assert max_abs(scaled.retr(x, s * u) - MAN.retr(x, u)) <= 1e-14
    assert float(scaled.inner(x, u, u)) == pytest.approx(float(MAN.inner(x, u, u)), abs=1e-14)
    assert max_abs(scaled.transp_follow_expmap(x, s * u, u) - MAN.parallel_transp(x, u, u)) <= 1e-14
    # parallel_transp is a geomtools method beyond geoopt's API: it must be rescaled too
    v = horizontal(x, g)
    assert max_abs(scaled.parallel_transp(x, s * u, v) - MAN.parallel_transp(x, u, v)) <= 1e-14


@pytest.mark.parametrize("n", [4, 9])
def test_logmap_near_pi_over_2_matches_the_closed_form(n: int) -> None:
    """atan2(sin, cos) keeps θ = π/2 − 1e-9 to ~1e-16, where arcsin of the sine returns π/2."""
    # well-separated angles: two angles both within δ of π/2 pair up only to ~eps/δ (the log
    # itself is that ill-conditioned there), whatever the formula
    angles = torch.tensor([math.pi / 2 - 1e-9, 0.3, 1e-9, 1.0], dtype=DTYPE)
    angles = angles[: n // 2]
    p = angles.shape[0]
    g = generator(n + 11)
    rot, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    x = torch.zeros(n, p, dtype=DTYPE)
    y = torch.zeros(n, p, dtype=DTYPE)
    u = torch.zeros(n, p, dtype=DTYPE)
    x[:p] = torch.eye(p, dtype=DTYPE)
    y[:p] = torch.diag(torch.cos(angles))
    y[p : 2 * p] = torch.diag(torch.sin(angles))
    u[p : 2 * p] = torch.diag(angles)  # log_X(Y) = θ_i e_{p+i} in these coordinates
    got = MAN.logmap(rot @ x, rot @ y)
    assert max_abs(got - rot @ u) <= 1e-14
    assert max_abs(torch.linalg.svdvals(got) - angles.sort(descending=True).values) <= 1e-14
