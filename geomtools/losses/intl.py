r"""INTL's trace loss and the two-view INTL objective (Weng et al., ICLR 2024).

INTL ("IterNorm with trace loss") passes the embeddings of two augmented views through an
IterNorm layer with few iterations (:class:`geomtools.nn.iternorm.IterNorm`) — a spectral
transformation that whitens only approximately — and adds a penalty that pushes each
feature's variance to 1:

.. math::

    \mathcal L_{\text{trace}}(Z) = \sum_{j=1}^{D}\big(\operatorname{Var}_b(Z_{bj}) - 1\big)^2,
    \qquad
    \mathcal L_{\text{INTL}} = \frac1B\sum_{b=1}^{B}\Big(2 - 2\,
    \frac{\langle z^1_b, z^2_b\rangle}{\lVert z^1_b\rVert\,\lVert z^2_b\rVert}\Big)
    + \beta\big(\mathcal L_{\text{trace}}(Z^1) + \mathcal L_{\text{trace}}(Z^2)\big).

The alignment term is the squared distance between the L2-normalised views,
:math:`\lVert \hat z^1_b - \hat z^2_b\rVert^2 = 2 - 2\cos(z^1_b, z^2_b)`, averaged over the
batch. The default trade-off is :math:`\beta = 0.01(\log_2 B - 3)` (0.05 at :math:`B = 256`).

References
----------
X. Weng, Y. Ni, T. Song, J. Luo, R. M. Anwer, S. Khan, F. S. Khan, L. Huang. Modulate your
spectrum in self-supervised learning. ICLR 2024. Reference code: github.com/winci-ai/INTL.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["INTLLoss", "default_beta", "trace_loss"]

Axis = Literal["features", "samples"]


def _check_embeddings(z: object, name: str) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {z.dtype}")
    if z.ndim != 2:
        raise ValueError(f"{name} must have shape [B, D], got shape {list(z.shape)}")
    if z.shape[0] < 2:
        raise ValueError(f"{name} needs a batch of at least 2 samples, got shape {list(z.shape)}")
    if z.shape[1] < 1:
        raise ValueError(f"{name} has no features: shape {list(z.shape)}")
    finite = torch.isfinite(z)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite.all(dim=1)).flatten()[:5].tolist()
        raise ValueError(
            f"{name} contains {int((~finite).sum())} NaN/Inf values (first bad rows: {bad})"
        )
    return z


def trace_loss(z: torch.Tensor, *, unbiased: bool = False) -> torch.Tensor:
    r"""INTL's trace loss :math:`\sum_j (\operatorname{Var}_b Z_{bj} - 1)^2` of ``z [B, D]``.

    Parameters
    ----------
    z : Tensor ``[B, D]``
        A batch of :math:`B \ge 2` embeddings (rows are samples); finite, floating point.
    unbiased : bool
        Variance convention. Default False: the population variance
        :math:`\tfrac1B\sum_b (Z_{bj} - \bar Z_j)^2`, the same :math:`1/m` normalisation as
        :class:`~geomtools.nn.iternorm.IterNorm`, so a fully whitened IterNorm output
        (``eps=0``, many iterations) has trace loss 0. True: :math:`\tfrac1{B-1}`, as in the
        INTL reference code (``TL`` in ``methods/intl.py``), whose whitening also normalises
        by :math:`1/(m-1)`.

    Returns
    -------
    Tensor
        0-dim, in the dtype of ``z`` (computed in float64, outside autocast); differentiable.

    Notes
    -----
    The sum runs over the :math:`D` columns. The INTL reference code, in its default mode
    that whitens the :math:`B\times B` Gram matrix, applies the loss to the transpose: each
    sample's variance over its features — ``trace_loss(z.T)`` (needs :math:`D \ge 2`).
    """
    z = _check_embeddings(z, "z")
    with torch.autocast(device_type=z.device.type, enabled=False):
        loss = _trace_loss64(z.to(torch.float64), unbiased)
    return loss.to(z.dtype)


def _trace_loss64(z: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Unchecked trace loss of a float64 ``[B, D]`` tensor."""
    var = z.var(dim=0, correction=1 if unbiased else 0)
    return (var - 1.0).square().sum()


def default_beta(batch_size: int) -> float:
    r"""INTL's default trade-off :math:`\beta = 0.01(\log_2 B - 3)` (0.05 for :math:`B = 256`).

    Raises ``ValueError`` for :math:`B < 8`, where the formula is negative (it is 0 at
    :math:`B = 8`); pass ``beta`` explicitly to :class:`INTLLoss` for such batches.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 8:
        raise ValueError(
            f"the default beta = 0.01 * (log2(B) - 3) is negative for B = {batch_size} < 8; "
            "pass beta explicitly"
        )
    return 0.01 * (math.log2(batch_size) - 3.0)


class INTLLoss(nn.Module):
    r"""Two-view INTL loss: normalised-MSE alignment plus :math:`\beta` × trace losses.

    .. math::

        \mathcal L = \frac1B\sum_b \big(2 - 2\cos(z^1_b, z^2_b)\big)
        + \beta\big(\mathcal L_{\text{trace}}(Z^1) + \mathcal L_{\text{trace}}(Z^2)\big)

    Parameters
    ----------
    beta : float, optional
        Weight of the trace terms, :math:`\ge 0`. Default ``None``: :math:`0.01(\log_2 B - 3)`
        from the batch size :math:`B` of each call (:func:`default_beta`; needs
        :math:`B \ge 8`), the INTL trade-off. The reference code uses that formula in its
        default Gram (``"samples"``) mode and :math:`0.01(\log_2 D - 3)` in its feature mode;
        pass ``beta`` explicitly to mirror the latter.
    axis : {"features", "samples"}
        Which variances the trace loss constrains; match the ``axis`` of the IterNorm that
        produced the embeddings. ``"features"`` (default): each feature's variance over the
        batch, :func:`trace_loss` of ``z``. ``"samples"``: each sample's variance over its
        features, :func:`trace_loss` of ``z.T`` (the reference code's default).
    unbiased : bool
        Variance convention of :func:`trace_loss` (default False: :math:`1/B`).

    Notes
    -----
    ``forward(z1, z2)`` takes the two views ``[B, D]`` already passed through the spectral
    transformation (IterNorm), checks that shapes match, :math:`B \ge 2` and all values are
    finite, and returns a 0-dim tensor in the promoted dtype of ``z1`` and ``z2``, computed in
    float64 outside autocast. A zero row has cosine 0 with everything (``F.normalize``).
    """

    def __init__(
        self, *, beta: float | None = None, axis: Axis = "features", unbiased: bool = False
    ) -> None:
        super().__init__()
        if beta is not None and not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0 or None, got {beta!r}")
        if axis not in ("features", "samples"):
            raise ValueError(f"axis must be 'features' or 'samples', got {axis!r}")
        self.beta = None if beta is None else float(beta)
        self.axis: Axis = axis
        self.unbiased = unbiased

    def beta_for(self, batch_size: int) -> float:
        r"""The :math:`\beta` used for a batch of ``batch_size`` samples."""
        return default_beta(batch_size) if self.beta is None else self.beta

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Loss of the two views ``z1, z2 [B, D]`` (a 0-dim tensor)."""
        z1 = _check_embeddings(z1, "z1")
        z2 = _check_embeddings(z2, "z2")
        if z1.shape != z2.shape:
            raise ValueError(
                f"z1 and z2 must have the same shape, got {list(z1.shape)} and {list(z2.shape)}"
            )
        if self.axis == "samples" and z1.shape[1] < 2:
            raise ValueError("axis='samples' needs at least 2 features per sample")
        beta = self.beta_for(z1.shape[0])
        out_dtype = torch.promote_types(z1.dtype, z2.dtype)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            a = z1.to(torch.float64)
            b = z2.to(torch.float64)
            cos = (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(dim=1)
            align = (2.0 - 2.0 * cos).mean()
            if self.axis == "samples":
                a, b = a.T, b.T
            reg = _trace_loss64(a, self.unbiased) + _trace_loss64(b, self.unbiased)
            loss = align + beta * reg
        return loss.to(out_dtype)

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        beta = "0.01*(log2(B)-3)" if self.beta is None else repr(self.beta)
        return f"beta={beta}, axis={self.axis!r}, unbiased={self.unbiased}"
