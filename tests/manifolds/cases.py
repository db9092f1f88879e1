"""Manifold cases for the conformance suite in ``test_conformance.py``.

A :class:`ManifoldCase` says how to build a manifold, which point shape to test it on, how to
compare two points (representatives of one point may differ, e.g. on Grassmann), how far a
tangent vector may reach before leaving the injectivity radius, and which laws do not apply
(``skips``) or are known to fail (``xfails``). Adding a manifold to the suite is one entry in
:data:`CASES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import geoopt
import pytest
import torch

from geomtools.manifolds import Grassmann

DTYPE = torch.float64

PointComparer = Callable[[geoopt.Manifold, torch.Tensor, torch.Tensor, float], torch.Tensor]
InjectivityFraction = Callable[[geoopt.Manifold, torch.Tensor], torch.Tensor]
RepresentativeChange = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
NearDistance = Callable[[geoopt.Manifold, torch.Tensor, torch.Tensor], torch.Tensor]


def entrywise_same_point(
    manifold: geoopt.Manifold, x: torch.Tensor, y: torch.Tensor, atol: float
) -> torch.Tensor:
    """Entrywise comparison of representatives, reduced over the manifold's point dims."""
    close = (x - y).abs() <= atol
    return close.flatten(start_dim=close.dim() - manifold.ndim).all(dim=-1)


def subspace_same_point(
    manifold: geoopt.Manifold, x: torch.Tensor, y: torch.Tensor, atol: float
) -> torch.Tensor:
    """Grassmann comparison by projectors (``Scaled`` forwards ``same_point`` to its base)."""
    return manifold.same_point(x, y, atol=atol)


def spectral_fraction(scale: float) -> InjectivityFraction:
    """Grassmann: ``σ_max(u) / scale`` must stay below π/2 (all principal angles < π/2)."""

    def fraction(manifold: geoopt.Manifold, u: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_norm(u, ord=2) / scale / (math.pi / 2)

    return fraction


def sphere_fraction(manifold: geoopt.Manifold, u: torch.Tensor) -> torch.Tensor:
    """Unit sphere: injectivity radius π."""
    return u.norm(dim=-1) / math.pi


def geodesic_dist(manifold: geoopt.Manifold, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The manifold's own distance (for quotients, where representatives may differ)."""
    return manifold.dist(x, y)


def right_orthogonal(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Another representative ``x Q`` of the same Grassmann point, Q random orthogonal.

    Q is Haar with its first column flipped where needed to make det Q = -1, so that Q ≠ I
    even for p = 1 (where Q = -1).
    """
    p = x.shape[-1]
    q, r = torch.linalg.qr(torch.randn(*x.shape[:-2], p, p, generator=g, dtype=x.dtype))
    q = q * torch.diagonal(r, dim1=-2, dim2=-1).sign()[..., None, :]
    flip = torch.ones_like(q[..., :1, :])
    flip[..., 0, 0] = -torch.linalg.det(q).sign()
    return x @ (q * flip)


@dataclass(frozen=True)
class ManifoldCase:
    """One manifold on one point shape, with the facts the laws need."""

    name: str
    make: Callable[[], geoopt.Manifold]
    shape: tuple[int, ...]
    same_point: PointComparer
    #: ratio "size of u / injectivity radius" per batch item (< 1 inside the radius); None when
    #: the case has no logarithm to test against
    injectivity_fraction: InjectivityFraction | None
    #: other representatives of the same point (quotient manifolds), None when unique
    representative_change: RepresentativeChange | None = None
    #: distance used to compare nearby points (retraction vs exponential map); the ambient
    #: (Frobenius) distance by default, which is locally equivalent to the geodesic one on an
    #: embedded submanifold and, unlike geoopt's clamped ``acos`` distances, accurate near 0
    near_dist: NearDistance | None = None
    #: accuracy of ``dist(x, x)``
    dist_self_atol: float = 1e-12
    #: whether ``transp_follow_expmap`` is exact (isometric) parallel transport
    exact_parallel_transport: bool = False
    #: law name -> reason the law does not apply to this case
    skips: Mapping[str, str] = field(default_factory=dict)
    #: law name -> reason the law is known to fail (a library bug); run as strict xfail
    xfails: Mapping[str, str] = field(default_factory=dict)
    #: shapes ``random``/``origin`` must reject with ``ValueError``
    bad_shapes: tuple[tuple[int, ...], ...] = ()

    def nearby_distance(
        self, manifold: geoopt.Manifold, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        if self.near_dist is not None:
            return self.near_dist(manifold, x, y)
        diff = (x - y).flatten(start_dim=x.dim() - manifold.ndim)
        return torch.linalg.vector_norm(diff, dim=-1)

    @property
    def point_ndim(self) -> int:
        return self.make().ndim

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.shape[: len(self.shape) - self.point_ndim]


_NO_QUOTIENT = "points have a unique representative (not a quotient manifold)"
_NO_PARALLEL_TRANSP_METHOD = "no parallel_transp method (geomtools API, not geoopt's)"
_STIEFEL_SKIPS = {
    "logmap": "geoopt's EuclideanStiefel has no logmap",
    "dist": "geoopt's EuclideanStiefel has no dist",
    "parallel_transport": "EuclideanStiefel transports by projection, not isometrically",
    "parallel_transp_method": _NO_PARALLEL_TRANSP_METHOD,
    "quotient": _NO_QUOTIENT,
}
_SPHERE_SKIPS = {
    "parallel_transport": "geoopt's Sphere transports by projection, not isometrically",
    "parallel_transp_method": _NO_PARALLEL_TRANSP_METHOD,
    "quotient": _NO_QUOTIENT,
}
CASES: tuple[ManifoldCase, ...] = (
    ManifoldCase(
        name="grassmann-7x3",
        make=Grassmann,
        shape=(7, 3),
        same_point=subspace_same_point,
        injectivity_fraction=spectral_fraction(1.0),
        representative_change=right_orthogonal,
        near_dist=geodesic_dist,
        exact_parallel_transport=True,
        bad_shapes=((3, 7), (7, 0), (7,)),
    ),
    ManifoldCase(
        name="grassmann-6x1",
        make=Grassmann,
        shape=(6, 1),
        same_point=subspace_same_point,
        injectivity_fraction=spectral_fraction(1.0),
        representative_change=right_orthogonal,
        near_dist=geodesic_dist,
        exact_parallel_transport=True,
        bad_shapes=((1, 6),),
    ),
    ManifoldCase(
        name="grassmann-4x8x2",
        make=Grassmann,
        shape=(4, 8, 2),
        same_point=subspace_same_point,
        injectivity_fraction=spectral_fraction(1.0),
        representative_change=right_orthogonal,
        near_dist=geodesic_dist,
        exact_parallel_transport=True,
        bad_shapes=((4, 2, 8),),
    ),
    ManifoldCase(
        name="scaled2-grassmann-7x3",
        make=lambda: geoopt.Scaled(Grassmann(), 2.0),
        shape=(7, 3),
        same_point=subspace_same_point,
        injectivity_fraction=spectral_fraction(2.0),
        representative_change=right_orthogonal,
        near_dist=geodesic_dist,
        exact_parallel_transport=True,
        bad_shapes=((3, 7),),
    ),
    ManifoldCase(
        name="sphere-6",
        make=geoopt.Sphere,
        shape=(6,),
        same_point=entrywise_same_point,
        injectivity_fraction=sphere_fraction,
        # geoopt clamps the cosine to 1 - 1e-7 before acos: dist(x, x) = acos(1 - 1e-7) ≈ 4.5e-4
        dist_self_atol=5e-4,
        skips=_SPHERE_SKIPS,
        bad_shapes=((1,),),
    ),
    ManifoldCase(
        name="sphere-3x5",
        make=geoopt.Sphere,
        shape=(3, 5),
        same_point=entrywise_same_point,
        injectivity_fraction=sphere_fraction,
        dist_self_atol=5e-4,
        skips=_SPHERE_SKIPS,
        bad_shapes=((3, 1),),
    ),
    ManifoldCase(
        name="euclidean-stiefel-7x3",
        make=geoopt.EuclideanStiefel,
        shape=(7, 3),
        same_point=entrywise_same_point,
        injectivity_fraction=None,
        skips=_STIEFEL_SKIPS,
        bad_shapes=((3, 7),),
    ),
)


def cases_for(law: str, *, cases: tuple[ManifoldCase, ...] = CASES) -> list[Any]:
    """``pytest.param`` per case, with the case's explicit skip / strict-xfail for ``law``."""
    params = []
    for case in cases:
        marks: list[Any] = []
        if law in case.skips:
            marks.append(pytest.mark.skip(reason=f"{case.name}: {case.skips[law]}"))
        if law in case.xfails:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfails[law]))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


# ---------------------------------------------------------------------------- sampling
def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ambient(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=DTYPE)


def random_point(
    manifold: geoopt.Manifold, shape: tuple[int, ...], g: torch.Generator
) -> torch.Tensor:
    """A point from ``projx`` of a Gaussian (Haar for Grassmann/Sphere), seeded by ``g``."""
    return manifold.projx(ambient(shape, g))


def random_tangent(manifold: geoopt.Manifold, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return manifold.proju(x, ambient(tuple(x.shape), g))


def per_item(value: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-batch-item tensor ``[*batch]`` to broadcast over ``[*batch, *point]``."""
    return value.reshape(*value.shape, *([1] * ndim))


def tangent_within_radius(
    case: ManifoldCase,
    manifold: geoopt.Manifold,
    x: torch.Tensor,
    g: torch.Generator,
    fraction: torch.Tensor | float,
) -> torch.Tensor:
    """A random tangent vector at ``x`` whose size is ``fraction`` of the injectivity radius."""
    assert case.injectivity_fraction is not None, f"{case.name} has no injectivity rule"
    u = random_tangent(manifold, x, g)
    now = case.injectivity_fraction(manifold, u)
    target = torch.as_tensor(fraction, dtype=DTYPE).expand_as(now)
    return u * per_item(target / now, manifold.ndim)


def fractions(case: ManifoldCase, g: torch.Generator, low: float, high: float) -> torch.Tensor:
    """Per-batch-item fractions drawn uniformly from ``[low, high]``."""
    return low + (high - low) * torch.rand(case.batch_shape, generator=g, dtype=DTYPE)
