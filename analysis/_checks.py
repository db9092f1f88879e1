"""Input validation shared by the analysis modules.

Every public entry point of :mod:`analysis` funnels its tensors through these helpers so that
bad input is rejected with a message that says *what* is wrong and *where* (NaN counts,
offending rows, label range, shapes) before any state is touched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["as_tensor", "check_features", "check_finite", "check_labels", "first_indices"]


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` as a tensor, accepting numpy arrays; raise ``TypeError`` otherwise."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def first_indices(mask: torch.Tensor, limit: int = 5) -> list[int]:
    """Indices of the first ``limit`` true entries of a 1-D boolean mask (for messages)."""
    return [int(i) for i in torch.nonzero(mask).flatten()[:limit].tolist()]


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming the NaN/Inf count and the first offending rows of ``x``."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    bad_rows = ~finite.reshape(x.shape[0], -1).all(dim=1) if x.ndim > 1 else ~finite
    raise ValueError(
        f"{name} contain {n_nan} NaN and {n_inf} Inf values "
        f"(first bad rows: {first_indices(bad_rows)})"
    )


def check_features(
    features: Any, dim: int | None, name: str = "features", *, finite: bool = True
) -> torch.Tensor:
    """Validate a ``[B, D]`` floating-point batch (non-empty, ``D == dim``, finite if asked).

    ``finite=False`` leaves the NaN/Inf check to the caller (which may fold it into a pass it
    makes anyway) — it must then call :func:`check_finite` before using the values.
    """
    x = as_tensor(features, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [B, D], got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have dimension {x.shape[1]}, expected dim={dim}")
    if x.shape[0] == 0:
        raise ValueError(f"empty batch: {name} have shape {tuple(x.shape)}")
    if finite:
        check_finite(x, name)
    return x


def check_labels(labels: Any, batch_size: int, num_classes: int) -> torch.Tensor:
    """Validate integer labels ``[B]`` in ``[0, num_classes)`` matching the batch size."""
    y = as_tensor(labels, "labels")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"labels must have an integer dtype, got {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"labels must have shape [B], got shape {tuple(y.shape)}")
    if y.shape[0] != batch_size:
        raise ValueError(f"labels have {y.shape[0]} entries but features have {batch_size} rows")
    if batch_size:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            bad = (y < 0) | (y >= num_classes)
            raise ValueError(
                f"labels out of range [0, {num_classes}): min {lo}, max {hi}, "
                f"{int(bad.sum())} bad entries (first at rows {first_indices(bad)})"
            )
    return y
