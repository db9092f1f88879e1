r"""Global covariance pooling (GCP) with matrix square-root normalisation.

For a feature map :math:`X\in\mathbb R^{C\times M}` (:math:`M = H W` positions) the layer
forms the sample covariance

.. math:: \Sigma = \frac1M X \bar I X^\top, \qquad \bar I = I - \tfrac1M 11^\top,

normalises it by a matrix square root (:func:`geomtools.linalg.sqrtm`, Newton–Schulz or eigh)
and returns the upper triangle (diagonal included) as a vector of length :math:`C(C+1)/2`.

References
----------
P. Li, J. Xie, Q. Wang, Z. Gao. Towards faster training of global covariance pooling networks
by iterative matrix square root normalization. CVPR 2018.
Y. Song, N. Sebe, W. Wang. Why approximate matrix square root outperforms accurate SVD in
global covariance pooling? ICCV 2021.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from geomtools.linalg.sqrtm import Backward, sqrtm

__all__ = ["CovariancePooling"]


class CovariancePooling(nn.Module):
    r"""GCP head: ``[B, C, H, W]`` → ``[B, C'(C'+1)/2]`` square-root-normalised covariance.

    Parameters
    ----------
    in_channels : int
        :math:`C` of the input.
    reduce_dim : int, optional
        If given, a 1×1 convolution + BatchNorm + ReLU first maps :math:`C` to ``reduce_dim``
        channels (the iSQRT-COV/GCP practice of reducing 2048 to 256 before pooling).
    method : {"newton_schulz", "eigh", None}
        Normalisation of :math:`\Sigma`: ``None`` leaves it unnormalised.
    iters : int
        Newton–Schulz iterations (5 in iSQRT-COV).
    backward, gap_eps, degree
        eigh gradient kernel (see :mod:`geomtools.linalg.sqrtm`).
    switch_epoch : int, optional
        The hybrid protocol of Song et al.: train with Newton–Schulz until
        ``set_epoch(e)`` is called with ``e >= switch_epoch``, then use eigh. Requires
        ``method="newton_schulz"``. The epoch is a buffer in the layer's ``state_dict`` (only
        for a hybrid layer), so loading a checkpoint restores the method it was saved with.

    Notes
    -----
    The covariance and its root are computed in float64 (outside autocast); the output is in
    the input dtype. The input must have :math:`M \ge 2` positions.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        reduce_dim: int | None = None,
        method: Literal["newton_schulz", "eigh"] | None = "newton_schulz",
        iters: int = 5,
        backward: Backward = "exact",
        degree: int = 2,
        gap_eps: float = 1e-3,
        switch_epoch: int | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if method not in ("newton_schulz", "eigh", None):
            raise ValueError(f"method must be 'newton_schulz', 'eigh' or None, got {method!r}")
        if switch_epoch is not None and method != "newton_schulz":
            raise ValueError("switch_epoch needs method='newton_schulz' (it switches NS → eigh)")
        self.in_channels = in_channels
        self.reduce: nn.Module | None = None
        channels = in_channels
        if reduce_dim is not None:
            if reduce_dim < 1:
                raise ValueError(f"reduce_dim must be positive, got {reduce_dim}")
            self.reduce = nn.Sequential(
                nn.Conv2d(in_channels, reduce_dim, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduce_dim),
                nn.ReLU(inplace=True),
            )
            channels = reduce_dim
        self.channels = channels
        self.method = method
        self.iters = iters
        self.backward_kind: Backward = backward
        self.degree = degree
        self.gap_eps = gap_eps
        self.switch_epoch = switch_epoch
        # the epoch is state of a hybrid layer: saved with it, so a model rebuilt from a
        # checkpoint past the switch computes the eigh root it was trained with (it silently
        # fell back to Newton–Schulz before); plain layers keep their state_dict unchanged
        self.epoch: torch.Tensor
        self.register_buffer(
            "epoch", torch.zeros((), dtype=torch.long), persistent=switch_epoch is not None
        )

    @property
    def out_features(self) -> int:
        """Length :math:`C'(C'+1)/2` of the output vector."""
        return self.channels * (self.channels + 1) // 2

    def set_epoch(self, epoch: int) -> None:
        """Tell the layer the current epoch (drives ``switch_epoch``; saved in its state)."""
        self.epoch.fill_(int(epoch))

    @property
    def active_method(self) -> str | None:
        """The normalisation used now (``"eigh"`` once ``switch_epoch`` is reached)."""
        if self.switch_epoch is not None and int(self.epoch) >= self.switch_epoch:
            return "eigh"
        return self.method

    def covariance(self, x: torch.Tensor) -> torch.Tensor:
        r"""Per-sample covariance :math:`\frac1M X\bar IX^\top` in float64, ``[B, C, C]``."""
        if x.ndim != 4:
            raise ValueError(f"expected input [B, C, H, W], got shape {list(x.shape)}")
        b, c, h, w = x.shape
        if h * w < 2:
            raise ValueError(f"covariance pooling needs at least 2 positions, got {h}x{w}")
        feats = x.reshape(b, c, h * w).to(torch.float64)
        feats = feats - feats.mean(dim=2, keepdim=True)
        return feats @ feats.mT / (h * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x [B, C, H, W]`` to ``[B, C'(C'+1)/2]`` (input dtype)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input [B, {self.in_channels}, H, W], got shape {list(x.shape)}"
            )
        if x.shape[2] * x.shape[3] < 2:
            raise ValueError(
                f"covariance pooling needs at least 2 positions, got {x.shape[2]}x{x.shape[3]}"
            )
        if self.reduce is not None:
            x = self.reduce(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            cov = self.covariance(x)
            method = self.active_method
            if method is not None:
                cov = sqrtm(
                    cov,
                    method=method,  # type: ignore[arg-type]
                    iters=self.iters,
                    backward=self.backward_kind,
                    degree=self.degree,
                    gap_eps=self.gap_eps,
                )
            rows, cols = torch.triu_indices(self.channels, self.channels, device=cov.device)
            out = cov[:, rows, cols]
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return (
            f"in_channels={self.in_channels}, channels={self.channels}, method={self.method}, "
            f"iters={self.iters}, switch_epoch={self.switch_epoch}"
        )
