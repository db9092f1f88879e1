r"""Curvature-aware optimisation for Lorentz models with a learnable curvature.

When the curvature parameter :math:`k` of a :class:`geoopt.Lorentz` manifold is learned, a
plain optimizer step moves :math:`k` and the points at the same time: the points were updated
for the old hyperboloid and now sit on a different one, and their momentum lives in tangent
spaces of the old one. Bdeir, Schwethelm & Landwehr (ICLR 2024) order the update instead;
:class:`CurvatureAwareStep` does that, with every piece of optimizer state mapped:

1. step every parameter except the curvatures (the Lorentz points move on the hyperboloid of
   the old :math:`k`);
2. step the curvatures alone, then clamp each to ``k_range``;
3. map every Lorentz point from :math:`k` to :math:`k'` through the origin,
   :math:`x' = \exp_0^{k'}(\log_0^{k}(x))`: the direction from the origin **and the distance to
   it** are kept,

   .. math::
       d = \sqrt k\,\operatorname{asinh}(\|x_s\|/\sqrt k),\qquad
       x' = \bigl(\sqrt{k'}\cosh(d/\sqrt{k'}),\ \sqrt{k'}\sinh(d/\sqrt{k'})\,x_s/\|x_s\|\bigr);

4. map the first moment (``exp_avg``, and ``momentum_buffer`` of SGD) by parallel transport
   to the origin at :math:`k`, then from the origin to :math:`x'` at :math:`k'`; the tangent
   space at the origin, :math:`\{v : v_0 = 0\}`, and its metric are the same for every
   :math:`k`, so this is an isometry;
5. the second moment (``exp_avg_sq``, ``max_exp_avg_sq``) holds squared Riemannian norms per
   point (``component_inner``); the map in 4 preserves norms, so it is left unchanged — the
   consistent choice (remapping it by a curvature ratio, or not remapping the first moment,
   as the reference code does, would mismatch the two moments).

References
----------
A. Bdeir, K. Schwethelm, N. Landwehr. Fully hyperbolic convolutional neural networks for
computer vision. ICLR 2024.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import geoopt
import torch
from geoopt.manifolds.lorentz import math as lorentz_math

from geomtools.manifolds.lorentz import expmap0, logmap0

__all__ = ["CurvatureAwareStep", "remap_curvature"]

_FIRST_MOMENTS = ("exp_avg", "momentum_buffer")


def _to_origin(x: torch.Tensor, v: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Parallel transport from ``x`` to the origin (geoopt's), time component set exactly to 0."""
    out = lorentz_math.parallel_transport0back(x, v, k=k)
    out[..., 0] = 0.0
    return out


@torch.no_grad()
def remap_curvature(
    x: torch.Tensor,
    k_old: float | torch.Tensor,
    k_new: float | torch.Tensor,
    momenta: Sequence[torch.Tensor] = (),
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Map points (and tangent vectors at them) from the hyperboloid of ``k_old`` to ``k_new``.

    See the module docstring, steps 3–4. Points keep their direction and distance to the
    origin; tangent vectors are transported to the origin at ``k_old`` and out to the new
    point at ``k_new`` (norms preserved).

    Parameters
    ----------
    x : Tensor
        ``[..., d + 1]`` points for ``k_old``.
    k_old, k_new : float or Tensor
        Positive curvature parameters (geoopt's ``k``).
    momenta : sequence of Tensor
        ``[..., d + 1]`` tangent vectors at ``x``.

    Returns
    -------
    (Tensor, list of Tensor)
        The new points and the transported vectors, in ``x``'s dtype.
    """
    ko = torch.as_tensor(k_old, dtype=x.dtype, device=x.device)
    kn = torch.as_tensor(k_new, dtype=x.dtype, device=x.device)
    if not (bool(ko > 0) and bool(kn > 0)):
        raise ValueError(f"curvature parameters must be positive, got {float(ko)}, {float(kn)}")
    x_new = expmap0(logmap0(x, ko), kn)  # same tangent vector at the origin, new k
    moved = [lorentz_math.parallel_transport0(x_new, _to_origin(x, m, ko), k=kn) for m in momenta]
    return x_new, moved


def _lorentz_base(man: Any) -> geoopt.Lorentz | None:
    while isinstance(man, geoopt.Scaled):
        man = man.base
    return man if isinstance(man, geoopt.Lorentz) else None


class CurvatureAwareStep:
    """Wrap an optimizer so learnable Lorentz curvatures are stepped last and safely.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Holds every parameter, the curvatures (``manifold.k``) included — e.g.
        :class:`geomtools.optim.RiemannianAdamW` or geoopt's optimizers. Put the curvatures
        in a group without weight decay.
    manifolds : sequence of geoopt.Lorentz
        The manifolds whose ``k`` is learned (``Lorentz(k, learnable=True)``).
    k_range : (float, float)
        Each ``k`` is clamped to this closed interval after its step (default (0.1, 10):
        curvature −1/k between −10 and −0.1).

    Notes
    -----
    ``step()`` calls ``optimizer.step()`` twice: first with the curvature gradients held back,
    then with only them (parameters whose ``.grad`` is ``None`` are skipped by PyTorch and
    geoopt optimizers, so nothing is stepped or decayed twice). Then every
    :class:`geoopt.ManifoldParameter` on one of ``manifolds`` is remapped with
    :func:`remap_curvature`, together with its first-moment state.

    Examples
    --------
    >>> man = geoopt.Lorentz(k=1.0, learnable=True)
    >>> x = geoopt.ManifoldParameter(man.origin(5, 3), manifold=man)
    >>> from geomtools.optim import RiemannianAdamW
    >>> opt = RiemannianAdamW(
    ...     [{"params": [x], "weight_decay": 0.0}, {"params": [man.k], "weight_decay": 0.0}]
    ... )
    >>> step = CurvatureAwareStep(opt, [man])
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        manifolds: Sequence[geoopt.Lorentz],
        *,
        k_range: tuple[float, float] = (0.1, 10.0),
    ) -> None:
        if not manifolds:
            raise ValueError("give at least one geoopt.Lorentz manifold with a learnable k")
        for m in manifolds:
            if not isinstance(m, geoopt.Lorentz):
                raise TypeError(f"manifolds must be geoopt.Lorentz, got {type(m).__name__}")
        lo, hi = float(k_range[0]), float(k_range[1])
        if not 0.0 < lo <= hi:
            raise ValueError(f"k_range must satisfy 0 < low <= high, got {k_range}")
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for m in manifolds:
            if id(m.k) not in in_opt:
                raise ValueError("a manifold's k is not among the optimizer's parameters")
        self.optimizer = optimizer
        self.manifolds = list(manifolds)
        self.k_range = (lo, hi)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``optimizer.zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _points(self) -> list[tuple[torch.Tensor, int]]:
        out = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                base = _lorentz_base(getattr(p, "manifold", None))
                if base is None:
                    continue
                for i, m in enumerate(self.manifolds):
                    if base is m:
                        out.append((p, i))
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Points first, then curvatures (clamped), then points and momenta remapped."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ks = [m.k for m in self.manifolds]
        k_old = [k.detach().clone() for k in ks]
        held = [k.grad for k in ks]
        for k in ks:
            k.grad = None
        self.optimizer.step()  # everything but the curvatures, on the old hyperboloids
        others: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if all(p is not k for k in ks):
                    others.append((p, p.grad))
                    p.grad = None
        for k, g in zip(ks, held, strict=True):
            k.grad = g
        try:
            self.optimizer.step()  # only the curvatures have gradients now
        finally:
            for p, g in others:
                p.grad = g
        lo, hi = self.k_range
        for k in ks:
            k.clamp_(lo, hi)
        for p, i in self._points():
            if torch.equal(k_old[i], ks[i].detach()):
                continue
            state = self.optimizer.state.get(p, {})
            names = [n for n in _FIRST_MOMENTS if isinstance(state.get(n), torch.Tensor)]
            new_p, moved = remap_curvature(
                p.detach(), k_old[i], ks[i].detach(), [state[n] for n in names]
            )
            p.copy_(new_p)
            for n, m in zip(names, moved, strict=True):
                state[n].copy_(m)
        return loss
