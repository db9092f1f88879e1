r"""Loss for training features towards a fixed frame (HAFrame, Liang & Davis 2023)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrameCosineLoss"]


class FrameCosineLoss(nn.Module):
    r"""Cross-entropy on the frame logits plus a cosine-similarity regression to the target.

    .. math::

        \mathcal L = (1-\alpha)\,\mathrm{CE}(hW^\top, y)
        + \alpha\,\frac1B\sum_b \sum_c \big(\cos(h_b, w_c) - S_{y_b, c}\big)^2

    The regression uses the whole target row :math:`S_{y_b,\cdot}` of the frame's Gram matrix
    (not only the true class), so every cosine is pulled to its hierarchy-aware value.

    Parameters
    ----------
    frame : Tensor ``[K, D]`` or a frame with ``.weight`` (and ``.similarity``)
        The fixed frame.
    similarity : Tensor ``[K, K]``, optional
        Target cosines; default ``frame.similarity`` if present, else
        :math:`\hat W\hat W^\top` (rows normalised).
    alpha : float in [0, 1]
        Weight of the cosine term.

    References
    ----------
    T. Liang, J. Davis. Inducing neural collapse to a fixed hierarchy-aware frame for reducing
    mistake severity. ICCV 2023.
    """

    weight: torch.Tensor
    similarity: torch.Tensor

    def __init__(self, frame: Any, similarity: Any = None, *, alpha: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
        w = getattr(frame, "weight", frame)
        if not isinstance(w, torch.Tensor) or w.ndim != 2:
            raise ValueError("frame must be a tensor [K, D] or an object with .weight")
        if similarity is None:
            similarity = getattr(frame, "similarity", None)
        if similarity is None:
            wn = F.normalize(w.detach().double(), dim=1)
            similarity = wn @ wn.T
        s = torch.as_tensor(similarity)
        if tuple(s.shape) != (w.shape[0], w.shape[0]):
            raise ValueError(
                f"similarity must be [{w.shape[0]}, {w.shape[0]}], got {list(s.shape)}"
            )
        self.alpha = float(alpha)
        self.register_buffer("weight", w.detach().clone().float())
        self.register_buffer("similarity", s.detach().clone().float())

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss for features ``[B, D]`` and integer labels ``[B]`` (mean over the batch)."""
        d = self.weight.shape[1]
        if features.ndim != 2 or features.shape[1] != d:
            raise ValueError(f"features must be [B, {d}], got {list(features.shape)}")
        if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError("labels must be [B] matching features")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integers, got {labels.dtype}")
        w = self.weight.to(features.dtype)
        logits = features @ w.T
        ce = F.cross_entropy(logits, labels)
        cos = F.normalize(features, dim=1) @ F.normalize(w, dim=1).T
        target = self.similarity.to(features.dtype)[labels]
        reg = (cos - target).square().sum(dim=1).mean()
        return (1.0 - self.alpha) * ce + self.alpha * reg
