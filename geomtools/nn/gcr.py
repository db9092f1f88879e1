r"""Grassmann class representation (GCR): each class is a k-dimensional subspace.

Class :math:`c` owns a point :math:`Y_c\in\mathrm{Gr}(n, k)` (an orthonormal
:math:`n\times k` basis) and scores a feature :math:`x` by the norm of its projection:

.. math:: z_c = \gamma\,\big\|Y_c^\top \hat x\big\|_2, \qquad \hat x = x/\|x\|_2,

so :math:`z_c/\gamma\in[0,1]` is the cosine between :math:`x` and the subspace. The logit is
invariant to :math:`Y_c\to Y_cQ` for orthogonal :math:`Q`: it depends on the subspace only,
which is why the bases live on the Grassmann manifold and are trained with a Riemannian
optimiser.

References
----------
H. Wang, Z. Li, W. Zhang. Get the best of both worlds: improving accuracy and
transferability by Grassmann class representation. ICCV 2023.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import geoopt
import torch
from torch import nn

from geomtools.manifolds.grassmann import Grassmann

__all__ = ["GrassmannHead", "grassmann_param_groups"]


class GrassmannHead(nn.Module):
    r"""GCR classifier head: logits :math:`\gamma\|Y_c^\top\hat x\|` ``[B, C]`` of ``[B, n]``.

    Parameters
    ----------
    in_features : int
        Feature dimension :math:`n`.
    num_classes : int
        Number of classes :math:`C`.
    subspace_dim : int
        :math:`k \le n`, the dimension of each class subspace.
    gamma : float
        Logit scale :math:`\gamma` (default 25). No bias.
    dtype, device
        Of the bases (float32 by default; float64 recommended for analysis).
    generator : torch.Generator, optional
        For a reproducible initialisation.

    Notes
    -----
    ``bases`` is a :class:`geoopt.ManifoldParameter` ``[C, n, k]`` on :class:`Grassmann`,
    initialised by the QR factor of a Gaussian (uniform on the Grassmannian). The forward
    pass is one GEMM: :math:`\hat x` ``[B, n]`` times the bases laid out as ``[n, C k]``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        subspace_dim: int,
        *,
        gamma: float = 25.0,
        dtype: torch.dtype | None = None,
        device: Any = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if min(in_features, num_classes, subspace_dim) < 1:
            raise ValueError("in_features, num_classes and subspace_dim must be positive")
        if subspace_dim > in_features:
            raise ValueError(
                f"subspace_dim ({subspace_dim}) cannot exceed in_features ({in_features})"
            )
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        self.in_features, self.num_classes, self.subspace_dim = (
            in_features,
            num_classes,
            subspace_dim,
        )
        self.gamma = float(gamma)
        manifold = Grassmann()
        g = torch.randn(
            num_classes, in_features, subspace_dim, dtype=dtype, device=device, generator=generator
        )
        self.bases = geoopt.ManifoldParameter(manifold.projx(g), manifold=manifold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` for features ``[B, n]``."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected features [B, {self.in_features}], got {list(x.shape)}")
        xn = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
        c, n, k = self.bases.shape
        flat = self.bases.permute(1, 0, 2).reshape(n, c * k).to(xn.dtype)
        proj = (xn @ flat).view(-1, c, k)
        # √(Σ p²) with a floor: the norm's gradient is undefined at an exactly zero projection
        return self.gamma * proj.square().sum(-1).clamp_min(1e-30).sqrt()

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"subspace_dim={self.subspace_dim}, gamma={self.gamma}"
        )


def grassmann_param_groups(
    model: nn.Module | Iterable[nn.Parameter],
    *,
    lr: float,
    weight_decay: float = 0.0,
    grassmann_lr_factor: float = 1.0,
    stabilize: int | None = 10,
    **options: Any,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: Grassmann bases apart from everything else.

    Returns two groups (either may be empty, then it is left out):

    * Grassmann parameters: ``lr = lr * grassmann_lr_factor``, ``weight_decay = 0`` (decay is
      meaningless on a Grassmannian), ``stabilize`` (re-orthonormalise by ``projx`` every
      ``stabilize`` steps — geoopt's per-group option);
    * every other parameter: ``lr``, ``weight_decay`` and ``options`` as given.

    Both groups live in one optimizer, so a learning-rate scheduler scales them together
    (each keeps its ratio). Works with geoopt's ``RiemannianSGD``/``RiemannianAdam`` and
    :class:`geomtools.optim.RiemannianAdamW`.

    Parameters
    ----------
    model : nn.Module or iterable of parameters
    lr : float
        Base learning rate.
    weight_decay : float
        For the non-Grassmann parameters.
    grassmann_lr_factor : float
        Learning-rate multiplier of the Grassmann bases.
    stabilize : int or None
        Re-orthonormalisation period (optimizer steps) of the Grassmann bases.
    **options
        Further per-group settings for the non-Grassmann group (e.g. ``betas``).
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    grass: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for p in params:
        if not p.requires_grad:
            continue
        manifold = getattr(p, "manifold", None)
        base = getattr(manifold, "base", manifold)  # geoopt.Scaled wraps its manifold
        (grass if isinstance(base, Grassmann) else other).append(p)
    groups: list[dict[str, Any]] = []
    if grass:
        groups.append(
            {
                "params": grass,
                "lr": lr * grassmann_lr_factor,
                "weight_decay": 0.0,
                "stabilize": stabilize,
            }
        )
    if other:
        groups.append({"params": other, "lr": lr, "weight_decay": weight_decay, **options})
    if not groups:
        raise ValueError("no trainable parameters")
    return groups
