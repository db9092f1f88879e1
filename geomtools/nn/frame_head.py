r"""Fixed-frame classifier head (simplex ETF or HAFrame weights, frozen).

References
----------
T. Liang, J. Davis. Inducing neural collapse to a fixed hierarchy-aware frame for reducing
mistake severity. ICCV 2023.
Y. Yang, S. Chen, X. Li, L. Xie, Z. Lin, D. Tao. Inducing neural collapse in imbalanced
learning: do we really need a learnable classifier at the end of deep neural network?
NeurIPS 2022.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["FeatureTransform", "FixedFrameHead"]


class FeatureTransform(nn.Module):
    r"""Learnable point-wise feature transformation placed before a fixed frame.

    ``Linear(in_features, dim) → BatchNorm1d`` followed by ``num_blocks`` residual point-wise
    blocks :math:`y \leftarrow y + \mathrm{Linear}(\mathrm{ReLU}(\mathrm{BN}(y)))`, the
    "BN + residual point-wise layers" transformation of Liang & Davis (2023), written for
    feature vectors ``[B, in_features]``.
    """

    def __init__(self, in_features: int, dim: int, *, num_blocks: int = 1) -> None:
        super().__init__()
        if in_features < 1 or dim < 1 or num_blocks < 0:
            raise ValueError("in_features and dim must be positive, num_blocks non-negative")
        self.project = nn.Sequential(nn.Linear(in_features, dim), nn.BatchNorm1d(dim))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.BatchNorm1d(dim), nn.ReLU(), nn.Linear(dim, dim))
            for _ in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in_features]`` to ``[B, dim]``."""
        y: torch.Tensor = self.project(x)
        for block in self.blocks:
            y = y + block(y)
        return y


class FixedFrameHead(nn.Module):
    r"""Classifier with a frozen frame: logits :math:`z = h W^\top` (zero bias).

    Parameters
    ----------
    frame : Tensor ``[K, D]`` or an object with a ``weight`` attribute (``HAFrame``)
        The fixed classifier rows.
    in_features : int, optional
        If given, a learnable :class:`FeatureTransform` maps ``[B, in_features]`` to ``D``
        before the frame; otherwise inputs must already have dimension ``D``.
    num_blocks : int
        Residual blocks of the transformation.

    Notes
    -----
    *Frozen* means: the weight is a registered **buffer**, not a parameter — it receives no
    gradient, :meth:`parameters` (hence every optimizer group built from it) does not contain
    it, and it is saved in and restored from the ``state_dict`` (key ``"weight"``).
    """

    weight: torch.Tensor

    def __init__(self, frame: Any, *, in_features: int | None = None, num_blocks: int = 1) -> None:
        super().__init__()
        w = getattr(frame, "weight", frame)
        if not isinstance(w, torch.Tensor) or w.ndim != 2 or not w.is_floating_point():
            raise ValueError("frame must be a float tensor [K, D] or an object with .weight")
        if not bool(torch.isfinite(w).all()):
            raise ValueError("frame weight contains NaN/Inf values")
        self.register_buffer("weight", w.detach().clone().float())
        self.num_classes, self.dim = int(w.shape[0]), int(w.shape[1])
        self.transform: nn.Module | None = (
            FeatureTransform(in_features, self.dim, num_blocks=num_blocks)
            if in_features is not None
            else None
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The features :math:`h` the frame sees (after the optional transformation)."""
        h = self.transform(x) if self.transform is not None else x
        if h.ndim != 2 or h.shape[1] != self.dim:
            raise ValueError(f"expected features [B, {self.dim}], got shape {list(h.shape)}")
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` = features ``[B, D]`` @ weightᵀ."""
        h = self.features(x)
        return h @ self.weight.to(h.dtype).T

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return f"num_classes={self.num_classes}, dim={self.dim}, frozen=True"
