"""Manifold conformance laws, each parametrised over :data:`tests.manifolds.cases.CASES`.

Every law draws its points and tangent vectors from a ``torch.Generator`` seeded by a
hypothesis-drawn integer. Laws that do not apply to a case are skipped by name with the
reason stored on the case; known library bugs are strict xfails (see ``cases.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import geoopt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.manifolds.cases import (
    DTYPE,
    ManifoldCase,
    ambient,
    cases_for,
    fractions,
    generator,
    per_item,
    random_point,
    random_tangent,
    tangent_within_radius,
)

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True)


def max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max())


def setup(case: ManifoldCase, seed: int) -> tuple[geoopt.Manifold, torch.Generator, torch.Tensor]:
    manifold = case.make()
    g = generator(seed)
    return manifold, g, random_point(manifold, case.shape, g)


def assert_same_point(
    case: ManifoldCase, manifold: geoopt.Manifold, x: torch.Tensor, y: torch.Tensor, atol: float
) -> None:
    same = case.same_point(manifold, x, y, atol)
    assert same.shape == case.batch_shape
    assert bool(same.all()), f"points differ (atol={atol}): {same}"


def unit_tangent(manifold: geoopt.Manifold, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    u = random_tangent(manifold, x, g)
    return u / per_item(manifold.norm(x, u), manifold.ndim)


# ---------------------------------------------------------------------------- 1. projx
@pytest.mark.parametrize("case", cases_for("projx"))
@PROPERTY
@given(seed=SEEDS)
def test_projx_lands_on_manifold_and_is_idempotent(case: ManifoldCase, seed: int) -> None:
    manifold = case.make()
    x = manifold.projx(ambient(case.shape, generator(seed)))
    assert x.shape == case.shape and x.dtype == DTYPE
    assert manifold.check_point_on_manifold(x, atol=1e-12, rtol=0.0)
    assert max_abs(manifold.projx(x) - x) <= 1e-12


@pytest.mark.parametrize("case", cases_for("projx"))
def test_point_check_rejects_off_manifold_points(case: ManifoldCase) -> None:
    manifold, _, x = setup(case, 0)
    assert manifold.check_point_on_manifold(x, atol=1e-12, rtol=0.0)
    assert not manifold.check_point_on_manifold(1.5 * x)


# ---------------------------------------------------------------------------- 2. proju
@pytest.mark.parametrize("case", cases_for("proju"))
@PROPERTY
@given(seed=SEEDS)
def test_proju_is_idempotent_onto_the_tangent_space(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = setup(case, seed)
    z = ambient(case.shape, g)
    v = manifold.proju(x, z)
    assert manifold.check_vector_on_tangent(x, v, atol=1e-12, rtol=0.0)
    assert max_abs(manifold.proju(x, v) - v) <= 1e-12
    # the projection moved z (a Gaussian is never tangent), and the checker can tell
    assert max_abs(v - z) > 1e-3
    assert not manifold.check_vector_on_tangent(x, v + x)


@pytest.mark.parametrize("case", cases_for("egrad2rgrad"))
@PROPERTY
@given(seed=SEEDS)
def test_egrad2rgrad_is_the_riemannian_gradient(case: ManifoldCase, seed: int) -> None:
    """⟨rgrad, v⟩_x equals the Euclidean directional derivative ⟨egrad, v⟩ for tangent v."""
    manifold, g, x = setup(case, seed)
    egrad = ambient(case.shape, g)
    rgrad = manifold.egrad2rgrad(x, egrad)
    v = random_tangent(manifold, x, g)
    assert manifold.check_vector_on_tangent(x, rgrad, atol=1e-12, rtol=0.0)
    euclidean = (egrad * v).flatten(start_dim=x.dim() - manifold.ndim).sum(-1)
    assert max_abs(manifold.inner(x, rgrad, v) - euclidean) <= 1e-11


@pytest.mark.parametrize("case", cases_for("egrad2rgrad_is_proju"))
def test_egrad2rgrad_equals_proju(case: ManifoldCase) -> None:
    manifold, g, x = setup(case, 1)
    egrad = ambient(case.shape, g)
    assert max_abs(manifold.egrad2rgrad(x, egrad) - manifold.proju(x, egrad)) <= 1e-14


# ---------------------------------------------------------------------------- 3. inner
@pytest.mark.parametrize("case", cases_for("inner"))
@PROPERTY
@given(seed=SEEDS)
def test_inner_is_symmetric_and_bilinear(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = setup(case, seed)
    u, v, w = (random_tangent(manifold, x, g) for _ in range(3))
    a, b = torch.randn(2, generator=g, dtype=DTYPE).unbind()
    assert max_abs(manifold.inner(x, u, v) - manifold.inner(x, v, u)) <= 1e-12
    lhs = manifold.inner(x, a * u + b * w, v)
    rhs = a * manifold.inner(x, u, v) + b * manifold.inner(x, w, v)
    assert max_abs(lhs - rhs) <= 1e-11
    assert max_abs(manifold.inner(x, v, a * u) - a * manifold.inner(x, v, u)) <= 1e-11


@pytest.mark.parametrize("case", cases_for("inner"))
@PROPERTY
@given(seed=SEEDS)
def test_inner_is_positive_definite(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = setup(case, seed)
    vectors = [random_tangent(manifold, x, g) for _ in range(3)]
    gram = torch.stack(
        [torch.stack([manifold.inner(x, a, b) for b in vectors], -1) for a in vectors], -2
    )
    assert max_abs(gram - gram.mT) <= 1e-12
    # three Gaussian tangent vectors are independent: the Gram matrix is positive definite
    assert float(torch.linalg.eigvalsh(gram).min()) > 1e-8
    zero = torch.zeros_like(x)
    assert max_abs(manifold.inner(x, zero, zero)) == 0.0


@pytest.mark.parametrize("case", cases_for("inner"))
@PROPERTY
@given(seed=SEEDS)
def test_norm_squared_is_inner_and_keepdim_shapes(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = setup(case, seed)
    u = random_tangent(manifold, x, g)
    norm = manifold.norm(x, u)
    assert norm.shape == case.batch_shape
    assert max_abs(norm.square() - manifold.inner(x, u, u)) <= 1e-11
    assert max_abs(manifold.inner(x, u) - manifold.inner(x, u, u)) == 0.0
    kept = (*case.batch_shape, *([1] * manifold.ndim))
    assert manifold.inner(x, u, keepdim=True).shape == kept
    assert manifold.norm(x, u, keepdim=True).shape == kept
    assert max_abs(manifold.norm(x, 3.0 * u) - 3.0 * norm) <= 1e-12


# ---------------------------------------------------------------------------- 4. broadcasting
def batch_setup(
    case: ManifoldCase, seed: int
) -> tuple[geoopt.Manifold, torch.Generator, torch.Tensor]:
    """Points with one leading batch dim of 3 items (or the case's batch, flattened)."""
    manifold = case.make()
    g = generator(seed)
    point_shape = case.shape[len(case.batch_shape) :]
    return manifold, g, random_point(manifold, (3, *point_shape), g)


def assert_batched_equals_loop(op: Callable[..., torch.Tensor], *args: torch.Tensor) -> None:
    batched = op(*args)
    looped = torch.stack([op(*(a[i] for a in args)) for i in range(args[0].shape[0])])
    assert batched.shape == looped.shape
    assert max_abs(batched - looped) <= 1e-12


@pytest.mark.parametrize("case", cases_for("broadcasting"))
@PROPERTY
@given(seed=SEEDS)
def test_batched_maps_equal_a_loop_over_items(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = batch_setup(case, seed)
    z = ambient(tuple(x.shape), g)
    u = 0.5 * random_tangent(manifold, x, g)
    v = random_tangent(manifold, x, g)
    y = manifold.expmap(x, u)
    assert_batched_equals_loop(manifold.projx, z)
    assert_batched_equals_loop(manifold.proju, x, z)
    assert_batched_equals_loop(manifold.expmap, x, u)
    assert_batched_equals_loop(manifold.retr, x, u)
    assert_batched_equals_loop(manifold.inner, x, u, v)
    assert_batched_equals_loop(manifold.transp, x, y, v)
    # one point against a batch of vectors broadcasts like the explicit expansion
    x0 = x[0]
    expanded = x0.expand_as(z)
    assert max_abs(manifold.proju(x0, z) - manifold.proju(expanded, z)) <= 1e-12


@pytest.mark.parametrize("case", cases_for("logmap"))
@PROPERTY
@given(seed=SEEDS)
def test_batched_logmap_equals_a_loop_over_items(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = batch_setup(case, seed)
    u = tangent_within_radius(case, manifold, x, g, 0.7)
    assert_batched_equals_loop(manifold.logmap, x, manifold.expmap(x, u))


@pytest.mark.parametrize("case", cases_for("dist"))
@PROPERTY
@given(seed=SEEDS)
def test_batched_dist_equals_a_loop_over_items(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = batch_setup(case, seed)
    y = random_point(manifold, tuple(x.shape), g)
    assert_batched_equals_loop(manifold.dist, x, y)
    assert_batched_equals_loop(manifold.dist2, x, y)


# ---------------------------------------------------------------------------- 5. retr vs exp
@pytest.mark.parametrize("case", cases_for("retr"))
@PROPERTY
@given(seed=SEEDS)
def test_retr_agrees_with_expmap_to_first_order(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = setup(case, seed)
    u = unit_tangent(manifold, x, g)
    errors = []
    for t in (1e-1, 1e-2, 1e-3):
        gap = case.nearby_distance(manifold, manifold.retr(x, t * u), manifold.expmap(x, t * u))
        errors.append(float(gap.max()))
        assert errors[-1] <= 2.0 * t**2, f"t={t}: |retr - exp| = {errors[-1]:.3e} > 2 t²"
    # at least quadratic decay: a tenth of t gives at most ~a hundredth of the gap
    assert errors[2] <= 0.02 * errors[1] + 1e-13
    assert errors[1] <= 0.02 * errors[0] + 1e-13


@pytest.mark.parametrize("case", cases_for("retr"))
@PROPERTY
@given(seed=SEEDS)
def test_retr_and_expmap_start_at_x_with_velocity_u(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = setup(case, seed)
    u = unit_tangent(manifold, x, g)
    zero = torch.zeros_like(u)
    assert_same_point(case, manifold, manifold.retr(x, zero), x, 1e-12)
    assert_same_point(case, manifold, manifold.expmap(x, zero), x, 1e-12)
    h = 1e-6
    for step in (manifold.retr, manifold.expmap):
        y = step(x, h * u)
        assert manifold.check_point_on_manifold(y, atol=1e-12, rtol=0.0)
        # the point moved by h |u| = h, to first order
        moved = case.nearby_distance(manifold, x, y)
        assert max_abs(moved - h) <= 1e-10


# ---------------------------------------------------------------------------- 6. exp / log
@pytest.mark.parametrize("case", cases_for("logmap"))
@PROPERTY
@given(seed=SEEDS)
def test_expmap_of_logmap_returns_the_point(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = setup(case, seed)
    y = manifold.expmap(
        x, tangent_within_radius(case, manifold, x, g, fractions(case, g, 0.02, 0.9))
    )
    log = manifold.logmap(x, y)
    assert manifold.check_vector_on_tangent(x, log, atol=1e-12, rtol=0.0)
    assert_same_point(case, manifold, manifold.expmap(x, log), y, 1e-10)


@pytest.mark.parametrize("case", cases_for("logmap"))
@PROPERTY
@given(seed=SEEDS)
def test_logmap_of_expmap_returns_the_vector(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = setup(case, seed)
    u = tangent_within_radius(case, manifold, x, g, fractions(case, g, 0.02, 0.9))
    assert max_abs(manifold.logmap(x, manifold.expmap(x, u)) - u) <= 1e-9


@pytest.mark.parametrize("case", cases_for("logmap"))
def test_logmap_of_the_point_itself_is_zero(case: ManifoldCase) -> None:
    manifold, _, x = setup(case, 3)
    assert max_abs(manifold.logmap(x, x)) <= 1e-12


# ---------------------------------------------------------------------------- 7. dist
@pytest.mark.parametrize("case", cases_for("dist"))
@PROPERTY
@given(seed=SEEDS)
def test_dist_is_symmetric_and_dist2_is_its_square(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = setup(case, seed)
    y = random_point(manifold, case.shape, g)
    d = manifold.dist(x, y)
    assert d.shape == case.batch_shape
    assert bool((d > 0).all())
    assert max_abs(d - manifold.dist(y, x)) <= 1e-12
    assert max_abs(manifold.dist2(x, y) - d.square()) <= 1e-12
    kept = (*case.batch_shape, *([1] * manifold.ndim))
    assert manifold.dist(x, y, keepdim=True).shape == kept


@pytest.mark.parametrize("case", cases_for("dist"))
@PROPERTY
@given(seed=SEEDS)
def test_dist_from_a_point_to_itself_is_zero(case: ManifoldCase, seed: int) -> None:
    manifold, _, x = setup(case, seed)
    assert max_abs(manifold.dist(x, x)) <= case.dist_self_atol
    assert max_abs(manifold.dist2(x, x)) <= case.dist_self_atol**2


@pytest.mark.parametrize("case", cases_for("dist"))
@PROPERTY
@given(seed=SEEDS)
def test_dist_satisfies_the_triangle_inequality(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = setup(case, seed)
    y, z = (random_point(manifold, case.shape, g) for _ in range(2))
    dxz, dxy, dyz = manifold.dist(x, z), manifold.dist(x, y), manifold.dist(y, z)
    assert bool((dxz <= dxy + dyz + 1e-12).all())


@pytest.mark.parametrize("case", cases_for("logmap"))
@PROPERTY
@given(seed=SEEDS)
def test_dist_is_additive_along_a_geodesic(case: ManifoldCase, seed: int) -> None:
    """The triangle inequality is an equality for a point on the minimising geodesic."""
    manifold, g, x = setup(case, seed)
    u = tangent_within_radius(case, manifold, x, g, fractions(case, g, 0.1, 0.9))
    z = manifold.expmap(x, u)
    t = float(torch.rand((), generator=g, dtype=DTYPE)) * 0.8 + 0.1
    y = manifold.expmap(x, t * manifold.logmap(x, z))
    total = manifold.dist(x, y) + manifold.dist(y, z)
    assert max_abs(total - manifold.dist(x, z)) <= 1e-10


# ---------------------------------------------------------------------------- 8. dist vs |u|
@pytest.mark.parametrize("case", cases_for("dist"))
@PROPERTY
@given(seed=SEEDS)
def test_dist_to_expmap_is_the_vector_norm(case: ManifoldCase, seed: int) -> None:
    if case.injectivity_fraction is None:
        pytest.skip(f"{case.name}: no injectivity rule")
    manifold, g, x = setup(case, seed)
    u = tangent_within_radius(case, manifold, x, g, fractions(case, g, 0.02, 0.98))
    assert max_abs(manifold.dist(x, manifold.expmap(x, u)) - manifold.norm(x, u)) <= 1e-10


# ---------------------------------------------------------------------------- 9. transports
@pytest.mark.parametrize("case", cases_for("transport"))
@PROPERTY
@given(seed=SEEDS)
def test_transports_land_in_the_tangent_space_of_the_new_point(
    case: ManifoldCase, seed: int
) -> None:
    manifold, g, x = setup(case, seed)
    u = 0.8 * unit_tangent(manifold, x, g)
    v = random_tangent(manifold, x, g)
    y_exp, y_retr = manifold.expmap(x, u), manifold.retr(x, u)

    def tangent(at: torch.Tensor, w: torch.Tensor) -> bool:
        return bool(manifold.check_vector_on_tangent(at, w, atol=1e-12, rtol=0.0))

    assert tangent(y_exp, manifold.transp(x, y_exp, v))
    assert tangent(y_exp, manifold.transp_follow_expmap(x, u, v))
    assert tangent(y_retr, manifold.transp_follow_retr(x, u, v))
    y, w = manifold.retr_transp(x, u, v)
    assert max_abs(y - y_retr) <= 1e-14 and tangent(y_retr, w)
    y, w = manifold.expmap_transp(x, u, v)
    assert max_abs(y - y_exp) <= 1e-14 and tangent(y_exp, w)
    assert max_abs(w - manifold.transp_follow_expmap(x, u, v)) <= 1e-14
    # the transported vector is not trivially tangent: v itself is not tangent at y
    assert not tangent(y_exp, v)


@pytest.mark.parametrize("case", cases_for("parallel_transport"))
@PROPERTY
@given(seed=SEEDS)
def test_parallel_transport_preserves_inner_products(case: ManifoldCase, seed: int) -> None:
    manifold, g, x = setup(case, seed)
    u = tangent_within_radius(case, manifold, x, g, fractions(case, g, 0.05, 0.95))
    v, w = random_tangent(manifold, x, g), random_tangent(manifold, x, g)
    y = manifold.expmap(x, u)
    tv, tw = (manifold.transp_follow_expmap(x, u, a) for a in (v, w))
    assert max_abs(manifold.inner(y, tv, tw) - manifold.inner(x, v, w)) <= 1e-10
    assert max_abs(manifold.norm(y, tv) - manifold.norm(x, v)) <= 1e-10


@pytest.mark.parametrize("case", cases_for("parallel_transport"))
@PROPERTY
@given(seed=SEEDS)
def test_parallel_transport_carries_the_geodesic_velocity(case: ManifoldCase, seed: int) -> None:
    """τ_u(u) is the velocity of t ↦ exp(x, t u) at t = 1, i.e. -log_y(x) with y = exp(x, u)."""
    manifold, g, x = setup(case, seed)
    u = tangent_within_radius(case, manifold, x, g, fractions(case, g, 0.05, 0.9))
    y = manifold.expmap(x, u)
    velocity = manifold.transp_follow_expmap(x, u, u)
    assert max_abs(velocity + manifold.logmap(y, x)) <= 1e-9
    # and by a central finite difference of the curve seen through log_y (metric-consistent,
    # also under geoopt.Scaled where tangent vectors are scale × the ambient velocity)
    h = 1e-5
    ahead = manifold.logmap(y, manifold.expmap(x, (1 + h) * u))
    behind = manifold.logmap(y, manifold.expmap(x, (1 - h) * u))
    assert max_abs((ahead - behind) / (2 * h) - velocity) <= 1e-7


@pytest.mark.parametrize("case", cases_for("parallel_transport"))
@PROPERTY
@given(seed=SEEDS)
def test_parallel_transport_back_along_the_reverse_geodesic_is_identity(
    case: ManifoldCase, seed: int
) -> None:
    manifold, g, x = setup(case, seed)
    u = tangent_within_radius(case, manifold, x, g, fractions(case, g, 0.05, 0.9))
    v = random_tangent(manifold, x, g)
    y = manifold.expmap(x, u)
    back_u = -manifold.transp_follow_expmap(x, u, u)
    assert_same_point(case, manifold, manifold.expmap(y, back_u), x, 1e-10)
    returned = manifold.transp_follow_expmap(y, back_u, manifold.transp_follow_expmap(x, u, v))
    # the representative reached from y may differ from x (quotients): compare tangent vectors
    # through the horizontal lift at x of the same subspace
    assert max_abs(manifold.proju(x, returned) - v) <= 1e-9


@pytest.mark.parametrize("case", cases_for("parallel_transp_method"))
@PROPERTY
@given(seed=SEEDS)
def test_parallel_transp_method_is_parallel_transport_along_expmap(
    case: ManifoldCase, seed: int
) -> None:
    manifold, g, x = setup(case, seed)
    u = tangent_within_radius(case, manifold, x, g, fractions(case, g, 0.05, 0.9))
    v, w = random_tangent(manifold, x, g), random_tangent(manifold, x, g)
    y = manifold.expmap(x, u)
    tv, tw = manifold.parallel_transp(x, u, v), manifold.parallel_transp(x, u, w)
    assert manifold.check_vector_on_tangent(y, tv, atol=1e-12, rtol=0.0)
    assert max_abs(manifold.inner(y, tv, tw) - manifold.inner(x, v, w)) <= 1e-10
    assert max_abs(tv - manifold.transp_follow_expmap(x, u, v)) <= 1e-12
    assert max_abs(manifold.parallel_transp(x, u, u) + manifold.logmap(y, x)) <= 1e-9


# ---------------------------------------------------------------------------- 10. sampling
@pytest.mark.parametrize("case", cases_for("sampling"))
def test_random_and_origin_return_points_of_the_requested_shape(case: ManifoldCase) -> None:
    manifold = case.make()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for x in (
            manifold.random(*case.shape, dtype=DTYPE),
            manifold.random(case.shape, dtype=DTYPE),
            manifold.origin(*case.shape, dtype=DTYPE),
            manifold.origin(case.shape, dtype=DTYPE),
        ):
            assert tuple(x.shape) == case.shape and x.dtype == DTYPE
            assert manifold.check_point_on_manifold(x, atol=1e-12, rtol=0.0)
        a = manifold.random(*case.shape, dtype=DTYPE)
        b = manifold.random(*case.shape, dtype=DTYPE)
    assert max_abs(a - b) > 1e-3  # random is random
    # origin is deterministic (and leaves the global generator alone)
    state = torch.random.get_rng_state()
    first = manifold.origin(*case.shape, dtype=DTYPE)
    assert torch.equal(first, manifold.origin(*case.shape, dtype=DTYPE))
    assert torch.equal(state, torch.random.get_rng_state())
    batched = manifold.random(5, *case.shape, dtype=DTYPE)
    assert tuple(batched.shape) == (5, *case.shape)


@pytest.mark.parametrize("case", cases_for("sampling"))
def test_random_and_origin_reject_invalid_shapes(case: ManifoldCase) -> None:
    manifold = case.make()
    assert case.bad_shapes, "a case must list shapes it rejects"
    for shape in case.bad_shapes:
        with pytest.raises(ValueError):
            manifold.random(*shape, dtype=DTYPE)
        with pytest.raises(ValueError):
            manifold.origin(*shape, dtype=DTYPE)


# ---------------------------------------------------------------------------- 11. quotients
@pytest.mark.parametrize("case", cases_for("quotient"))
@PROPERTY
@given(seed=SEEDS)
def test_quotient_dist_and_point_ignore_the_representative(case: ManifoldCase, seed: int) -> None:
    assert case.representative_change is not None
    manifold, g, x = setup(case, seed)
    y = random_point(manifold, case.shape, g)
    xq = case.representative_change(x, g)
    assert max_abs(xq - x) > 1e-3  # a genuinely different representative
    assert_same_point(case, manifold, xq, x, 1e-12)
    assert max_abs(manifold.dist(xq, x)) <= 1e-12
    assert max_abs(manifold.dist(xq, y) - manifold.dist(x, y)) <= 1e-12
    assert max_abs(manifold.logmap(x, xq)) <= 1e-12
    # and the comparer is not vacuous
    assert not bool(case.same_point(manifold, x, y, 1e-6).any())


@pytest.mark.parametrize("case", cases_for("quotient"))
@PROPERTY
@given(seed=SEEDS)
def test_quotient_maps_are_equivariant(case: ManifoldCase, seed: int) -> None:
    """With x' = xQ the horizontal lift of u is uQ; exp, log, proju, transport commute with Q."""
    manifold, g, x = setup(case, seed)
    p = x.shape[-1]
    q, _ = torch.linalg.qr(torch.randn(*case.batch_shape, p, p, generator=g, dtype=DTYPE))
    u = tangent_within_radius(case, manifold, x, g, fractions(case, g, 0.05, 0.9))
    v, z = random_tangent(manifold, x, g), ambient(case.shape, g)
    y = manifold.expmap(x, u)
    assert_same_point(case, manifold, manifold.expmap(x @ q, u @ q), y, 1e-10)
    assert_same_point(case, manifold, manifold.retr(x @ q, u @ q), manifold.retr(x, u), 1e-10)
    assert max_abs(manifold.logmap(x @ q, y) - manifold.logmap(x, y) @ q) <= 1e-10
    assert max_abs(manifold.logmap(x, y @ q) - manifold.logmap(x, y)) <= 1e-10
    assert max_abs(manifold.proju(x @ q, z @ q) - manifold.proju(x, z) @ q) <= 1e-12
    assert max_abs(manifold.inner(x @ q, u @ q, v @ q) - manifold.inner(x, u, v)) <= 1e-12
    moved = manifold.transp_follow_expmap(x @ q, u @ q, v @ q)
    assert max_abs(moved - manifold.transp_follow_expmap(x, u, v) @ q) <= 1e-10
