r"""Iterative Normalization (IterNorm): whitening by Newton's iterations.

For a centred data matrix :math:`X_c \in \mathbb R^{d\times m}` (columns are the :math:`m`
samples, rows the :math:`d` whitened coordinates) the layer forms

.. math::

    \Sigma = \tfrac1m X_c X_c^\top + \epsilon I, \qquad
    \Sigma_N = \Sigma / \operatorname{tr}\Sigma, \qquad
    P_0 = I, \quad P_k = \tfrac12\big(3P_{k-1} - P_{k-1}^3\Sigma_N\big),

and returns :math:`\hat X = W X_c` with the whitening matrix
:math:`W = P_T / \sqrt{\operatorname{tr}\Sigma}`. As :math:`T\to\infty`,
:math:`P_T \to \Sigma_N^{-1/2}`, so :math:`W \to \Sigma^{-1/2}` (ZCA whitening); the trace
normalisation puts every eigenvalue of :math:`\Sigma_N` in :math:`(0, 1]`, where the iteration
converges.

**Finite T.** :math:`P_T` is a polynomial in :math:`\Sigma_N`, so it acts on each eigenvalue
:math:`\lambda` of :math:`\Sigma_N` by the scalar recursion :math:`p_0 = 1`,
:math:`p_k = \tfrac12(3p_{k-1} - p_{k-1}^3\lambda)`. The output covariance
:math:`\tfrac1m\hat X\hat X^\top` has the eigenvectors of :math:`\Sigma` and eigenvalues

.. math:: \big(\lambda - \epsilon/\operatorname{tr}\Sigma\big)\,p_T(\lambda)^2
          \quad (= \lambda\,p_T(\lambda)^2 \text{ for } \epsilon = 0),

which tends to 1 from below: large eigenvalues are whitened first, small ones are shrunk
(a table is in ``docs/intl.md``).

References
----------
L. Huang, Y. Zhou, F. Zhu, L. Liu, L. Shao. Iterative normalization: beyond standardization
towards efficient whitening. CVPR 2019 (arXiv:1904.03441).
L. Huang, D. Yang, B. Lang, J. Deng. Decorrelated batch normalization. CVPR 2018 (ZCA batch
whitening with feature groups, which IterNorm approximates).
X. Weng, Y. Ni, T. Song, J. Luo, R. M. Anwer, S. Khan, F. S. Khan, L. Huang. Modulate your
spectrum in self-supervised learning. ICLR 2024 (INTL).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from geomtools.linalg.sqrtm import _newton_schulz

__all__ = ["IterNorm"]

Axis = Literal["features", "samples"]


def _inverse_sqrt_newton(sigma: torch.Tensor, iters: int) -> torch.Tensor:
    r"""Whitening matrices :math:`P_T/\sqrt{\operatorname{tr}\Sigma}` of a batch ``[G, d, d]``.

    The coupled Newton–Schulz form of :func:`geomtools.linalg.inv_sqrtm`:
    :math:`Z_0 = I,\ Y_0 = \Sigma_N,\ M = \tfrac12(3I - Z Y),\ Z \leftarrow M Z,\
    Y \leftarrow Y M`. All iterates are polynomials in :math:`\Sigma_N`, so :math:`Z_k = P_k`
    and :math:`Y_k = P_k\Sigma_N` exactly; unlike the one-matrix recursion it is numerically
    stable (rounding that breaks commutativity is not amplified).
    """
    return _newton_schulz(sigma, iters, True, "autograd")


class IterNorm(nn.Module):
    r"""Iterative Normalization: mean-centring plus approximate ZCA whitening.

    Parameters
    ----------
    num_features : int
        :math:`D`, the size of dimension 1 of the input.
    iters : int
        Newton iterations :math:`T` (default 5, as in Huang et al. 2019).
    eps : float
        Ridge added to the covariance, :math:`\Sigma = \tfrac1m X_cX_c^\top + \epsilon I`, before
        the trace normalisation (default 1e-5). It is really used: with :math:`T\to\infty` the
        output covariance is :math:`S(S+\epsilon I)^{-1}` (:math:`S` the unregularised
        covariance), not :math:`I`. The original IterNorm code adds it the same way; the INTL
        reference code has no effective eps (early versions exposed ``eps=0`` by default, the
        current one dropped it). ``eps=0`` is allowed; a batch with zero variance then gives
        NaN.
    axis : {"features", "samples"}
        What is whitened.

        ``"features"`` (default; batch whitening, the IterNorm paper): each feature is centred
        by its mean over the batch, :math:`\Sigma` is the :math:`D\times D` feature covariance
        over the :math:`m` samples, and for the output :math:`Y` ``[B, D]``,
        :math:`\tfrac1m Y^\top Y \approx I_D` — features decorrelated, unit variance over the
        batch. Input ``[B, D, *spatial]`` is accepted: every spatial position counts as a
        sample (:math:`m = B\cdot\prod\text{spatial}`), as in BatchNorm.

        ``"samples"``: the transpose. Each sample is centred by its mean over its features,
        :math:`\Sigma` is the :math:`B\times B` Gram matrix :math:`\tfrac1D X_cX_c^\top`
        (here :math:`X_c` is ``[B, D]``) and :math:`\tfrac1D YY^\top \approx I_B` — the
        sample vectors become orthogonal, each of squared norm :math:`D`. Input must be
        ``[B, D]`` and needs :math:`D/G \ge 2` features per group. This is the INTL
        reference code's default ``axis=0`` (labelled "channel whitening" there, because the
        statistics run over channels; its ``axis=1``, "batch whitening", is ``"features"``).
        Running statistics make no sense for a :math:`B\times B` matrix: none are kept and
        eval mode uses the batch statistics too.
    num_groups : int
        :math:`G`: the :math:`D` features are split into :math:`G` contiguous groups of
        :math:`D/G` that are whitened independently (block-diagonal :math:`W` for
        ``"features"``; one :math:`B\times B` Gram per group for ``"samples"``). Must
        divide ``num_features``.
    momentum : float
        Running-statistics update ``running = (1 - momentum) * running + momentum * batch``.
    affine : bool
        If True, learnable per-feature ``weight`` (ones) and ``bias`` (zeros), ``[D]``, are
        applied after whitening.
    track_running_stats : bool
        ``"features"`` only. If True, ``running_mean`` ``[D]`` and ``running_whitening``
        ``[G, D/G, D/G]`` (float64 buffers) are updated in train mode and used in eval mode,
        like BatchNorm; as in the original IterNorm, the running whitening matrix is the
        moving average of the batch matrices :math:`W`, not the whitening matrix of an
        averaged covariance. If False, batch statistics are used in both modes.

    Notes
    -----
    The statistics and the whitening are computed in float64 (outside autocast) whatever the
    input dtype; the output has the input dtype. :math:`P_T` is computed by the coupled
    Newton–Schulz form (:math:`Z_k = P_k`, :math:`Y_k = P_k\Sigma_N`, the same iterates in exact
    arithmetic, as in :func:`geomtools.linalg.inv_sqrtm`): the one-matrix recursion of the
    paper is numerically unstable once the iteration has converged on an ill-conditioned
    :math:`\Sigma` (in float64 it diverges within 15 iterations at condition number ~700).
    Gradients are plain autograd through the iterations. Inputs are not checked for NaN/Inf.
    With ``"features"`` a batch needs :math:`m \ge 2` samples whenever batch statistics are
    used. The normalisation uses :math:`1/m` (the INTL reference code uses :math:`1/(m-1)`, so
    its outputs are :math:`\sqrt{(m-1)/m}` times these at convergence).

    Examples
    --------
    >>> layer = IterNorm(64, iters=5)
    >>> y = layer(torch.randn(256, 64))  # y.T @ y / 256 ≈ I (closer as iters grows)
    """

    running_mean: torch.Tensor | None
    running_whitening: torch.Tensor | None

    def __init__(
        self,
        num_features: int,
        *,
        iters: int = 5,
        eps: float = 1e-5,
        axis: Axis = "features",
        num_groups: int = 1,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int):
            raise TypeError(f"num_features must be an int, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters must be a positive int, got {iters!r}")
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        if axis not in ("features", "samples"):
            raise ValueError(f"axis must be 'features' or 'samples', got {axis!r}")
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if num_features % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide num_features={num_features}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum!r}")
        self.num_features = num_features
        self.iters = iters
        self.eps = float(eps)
        self.axis: Axis = axis
        self.num_groups = num_groups
        self.momentum = float(momentum)
        self.affine = affine
        self.track_running_stats = track_running_stats and axis == "features"
        self.weight: nn.Parameter | None
        self.bias: nn.Parameter | None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            d = num_features // num_groups
            eye = torch.eye(d, dtype=torch.float64).repeat(num_groups, 1, 1)
            self.register_buffer("running_mean", torch.zeros(num_features, dtype=torch.float64))
            self.register_buffer("running_whitening", eye)
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_whitening", None)

    @property
    def group_size(self) -> int:
        """Features per group, ``num_features // num_groups``."""
        return self.num_features // self.num_groups

    def reset_running_stats(self) -> None:
        """Running mean to 0 and running whitening matrices to the identity."""
        if self.running_mean is not None and self.running_whitening is not None:
            self.running_mean.zero_()
            eye = torch.eye(self.group_size, dtype=self.running_whitening.dtype)
            self.running_whitening.copy_(eye.expand_as(self.running_whitening))

    def reset_parameters(self) -> None:
        """Running statistics reset; affine weight to 1 and bias to 0."""
        self.reset_running_stats()
        if self.weight is not None and self.bias is not None:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    # ------------------------------------------------------------------------ core
    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"input must have a floating-point dtype, got {x.dtype}")
        if self.axis == "samples":
            if x.ndim != 2 or x.shape[1] != self.num_features:
                raise ValueError(
                    f"axis='samples' expects input [B, {self.num_features}], "
                    f"got shape {list(x.shape)}"
                )
            if self.group_size < 2:
                raise ValueError(
                    "axis='samples' centres each sample over its features and needs at least "
                    f"2 features per group, got {self.group_size}"
                )
            if x.shape[0] < 1:
                raise ValueError(f"empty batch: input has shape {list(x.shape)}")
        elif x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected input [B, {self.num_features}] or [B, {self.num_features}, *spatial],"
                f" got shape {list(x.shape)}"
            )

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten the D features of ``x [B, D, *spatial]`` (float64 in, float64 out)."""
        b, d = x.shape[0], x.shape[1]
        g, dg = self.num_groups, self.group_size
        cols = x.transpose(0, 1).reshape(d, -1)  # [D, m]
        m = cols.shape[1]
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            if m < 2:
                raise ValueError(
                    f"axis='features' needs at least 2 samples to estimate statistics, got {m}"
                )
            mean = cols.mean(dim=1)
            xc = (cols - mean[:, None]).reshape(g, dg, m)
            sigma = xc @ xc.mT / m
            sigma = sigma + self.eps * torch.eye(dg, dtype=sigma.dtype, device=sigma.device)
            wm = _inverse_sqrt_newton(sigma, self.iters)
            if self.training and self.running_mean is not None:
                assert self.running_whitening is not None
                with torch.no_grad():
                    self.running_mean.lerp_(mean.detach().to(self.running_mean), self.momentum)
                    self.running_whitening.lerp_(
                        wm.detach().to(self.running_whitening), self.momentum
                    )
        else:
            assert self.running_mean is not None and self.running_whitening is not None
            mean = self.running_mean.to(device=x.device, dtype=torch.float64)
            wm = self.running_whitening.to(device=x.device, dtype=torch.float64)
            xc = (cols - mean[:, None]).reshape(g, dg, m)
        out = (wm @ xc).reshape(d, b, *x.shape[2:])
        return out.transpose(0, 1)

    def _samples(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten the B×B Gram matrix of each feature group of ``x [B, D]`` (float64)."""
        b = x.shape[0]
        g, dg = self.num_groups, self.group_size
        rows = x.reshape(b, g, dg).transpose(0, 1)  # [G, B, D/G]
        xc = rows - rows.mean(dim=2, keepdim=True)
        sigma = xc @ xc.mT / dg
        sigma = sigma + self.eps * torch.eye(b, dtype=sigma.dtype, device=sigma.device)
        wm = _inverse_sqrt_newton(sigma, self.iters)
        return (wm @ xc).transpose(0, 1).reshape(b, self.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten ``x`` (``[B, D]``, or ``[B, D, *spatial]`` for ``"features"``)."""
        self._check_input(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x64 = x.to(torch.float64)
            out = self._features(x64) if self.axis == "features" else self._samples(x64)
            if self.weight is not None and self.bias is not None:
                shape = (1, self.num_features) + (1,) * (x.ndim - 2)
                out = out * self.weight.to(torch.float64).reshape(shape)
                out = out + self.bias.to(torch.float64).reshape(shape)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return (
            f"{self.num_features}, iters={self.iters}, eps={self.eps}, axis={self.axis!r}, "
            f"num_groups={self.num_groups}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )
