r"""Fixed classifier frames: the simplex ETF and the hierarchy-aware frame (HAFrame).

A *frame* here is a matrix :math:`W\in\mathbb R^{K\times D}` of unit rows with a prescribed
Gram matrix :math:`S = WW^\top`. The simplex ETF has :math:`S = \frac{K}{K-1}(I - \frac1K
11^\top)` (cosines :math:`-1/(K-1)`, Papyan et al. 2020); HAFrame (Liang & Davis 2023) makes
the cosines follow the class hierarchy.

HAFrame similarity
------------------
With LCA heights :math:`h_{ij}` (0 on the diagonal) and a map :math:`E` with unit diagonal,
``mapping="exp"``: :math:`E = \exp(-\gamma h/\max h)` (elementwise) or
``mapping="linear"``: :math:`E = 1 - h/\max h`,

.. math:: S(s) = (1-s)\,E + s\,11^\top, \qquad S_{ii} = 1 .

:math:`s` is the most negative value for which :math:`S(s)\succeq 0` (the frame spreads the
classes as far apart as the hierarchy allows). When :math:`E\succ 0`, writing
:math:`q = 1^\top E^{-1}1` (:math:`q>1`),

.. math:: S(s)\succeq 0 \iff s \ge -\frac{1}{q-1}

(:math:`S(s) = (1-s)(E + t\,11^\top)` with :math:`t = s/(1-s)`, and by the matrix determinant
lemma :math:`E + t11^\top \succeq 0 \iff 1 + t q \ge 0`). One Cholesky solve gives it. When
:math:`E` is singular or the solve is ill-conditioned, :math:`s` is found by bisection on
:math:`\lambda_{\min}(S(s))` (concave in :math:`s`, so the feasible set is an interval), one
eigh per step, to 1e-10. The reference implementation scans a 100-point grid and lands up to
0.006 short of the optimum (CIFAR-100, :math:`\gamma=2`: −0.300 on the grid, −0.306 exact).

Frame from the Gram matrix
--------------------------
:math:`W_0 = V_r\Lambda_r^{1/2}` from the eigendecomposition of :math:`S` (rank :math:`r`,
eigenvalues below :math:`K\epsilon\lambda_{max}` dropped), then rotated into
:math:`\mathbb R^D` by a random orthonormal :math:`r\times D` matrix drawn from ``seed`` (the
identity embedding when ``seed`` is None), so any :math:`D\ge r` works — not only
:math:`D\ge K`. Rows are unit norm and :math:`WW^\top = S` to round-off.

References
----------
V. Papyan, X. Y. Han, D. L. Donoho. Prevalence of neural collapse during the terminal phase of
deep learning training. PNAS 2020.
T. Liang, J. Davis. Inducing neural collapse to a fixed hierarchy-aware frame for reducing
mistake severity. ICCV 2023.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["HAFrame", "haframe", "haframe_shape", "simplex_etf"]


def _embed(w0: torch.Tensor, dim: int, seed: int | None) -> torch.Tensor:
    """Rotate rows ``[K, r]`` into ``R^dim`` by an orthonormal ``[r, dim]`` map (seeded)."""
    k, r = w0.shape
    # w0 padded with zero columns to [K, dim] (the map [I_r, 0]: no product needed)
    padded = torch.zeros(dim, k, dtype=w0.dtype)  # transposed: ormqr applies Q from the left
    padded[:r] = w0.T
    if seed is None:
        return padded.T
    gen = torch.Generator().manual_seed(int(seed))
    g = torch.randn(dim, r, generator=gen, dtype=w0.dtype)
    # Q diag(sign diag R) of g's QR (unique, Haar), applied as w0 (Q D)ᵀ = (Q D w0ᵀ)ᵀ straight
    # from the Householder factors: no explicit Q, no separate [K, r] × [r, dim] product
    a, tau = torch.geqrf(g)
    sign = torch.sign(torch.diagonal(a))
    padded[:r] *= torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]
    return torch.ormqr(a, tau, padded).T


def _check_dim(dim: Any, need: int, what: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if dim < need:
        raise ValueError(f"{what} needs dim >= {need}, got dim={dim}")
    return dim


def simplex_etf(
    num_classes: int, dim: int, *, seed: int | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    r"""Simplex equiangular tight frame: ``[K, D]`` unit rows with cosines :math:`-1/(K-1)`.

    Rows are :math:`\sqrt{K/(K-1)}\,(e_c - \tfrac1K 1)` written in an orthonormal basis of
    :math:`1^\perp` (dimension :math:`K-1`) and rotated into :math:`\mathbb R^D` by a random
    orthonormal map drawn from ``seed`` (no rotation when ``seed`` is None).

    Parameters
    ----------
    num_classes : int
        :math:`K \ge 2`.
    dim : int
        :math:`D \ge K-1`.
    seed : int, optional
        Seed of the rotation (reproducible).

    Returns
    -------
    Tensor ``[K, D]`` (``dtype``, default float64)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    k = num_classes
    _check_dim(dim, k - 1, f"a simplex ETF of {k} classes")
    centred = torch.eye(k, dtype=torch.float64) - 1.0 / k
    # orthonormal basis of 1⊥: eigenvectors of the centring projector with eigenvalue 1
    evals, evecs = torch.linalg.eigh(centred)
    basis = evecs[:, evals > 0.5]  # [K, K-1]
    w0 = math.sqrt(k / (k - 1)) * basis
    w = _embed(w0, dim, seed)
    return (w / torch.linalg.vector_norm(w, dim=1, keepdim=True)).to(dtype)


def _check_distances(distances: Any) -> torch.Tensor:
    if not isinstance(distances, torch.Tensor):
        try:
            distances = torch.as_tensor(distances)
        except Exception as err:
            raise TypeError(f"distances must be a tensor or array, got {type(distances)}") from err
    h = distances.detach().to(device="cpu", dtype=torch.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] < 2:
        raise ValueError(f"distances must be a [K, K] matrix with K >= 2, got {list(h.shape)}")
    if not bool(torch.isfinite(h).all()):
        raise ValueError(f"distances contain {int((~torch.isfinite(h)).sum())} NaN/Inf values")
    if bool((h < 0).any()):
        raise ValueError("distances must be non-negative")
    if not torch.equal(h, h.T):
        raise ValueError("distances must be symmetric")
    if bool((torch.diagonal(h) != 0).any()):
        raise ValueError("distances must be 0 on the diagonal")
    if float(h.max()) == 0:
        raise ValueError("all distances are 0: the hierarchy does not separate any classes")
    return h


def _similarity_base(h: torch.Tensor, mapping: str, gamma: float | None) -> torch.Tensor:
    scaled = h / h.max()
    if mapping == "exp":
        if gamma is None or not math.isfinite(gamma) or gamma <= 0:
            raise ValueError(f"mapping='exp' needs a positive finite gamma, got {gamma!r}")
        return torch.exp(-gamma * scaled)
    if mapping == "linear":
        return 1.0 - scaled
    raise ValueError(f"mapping must be 'exp' or 'linear', got {mapping!r}")


def _lambda_min(e: torch.Tensor, s: float) -> float:
    return float(torch.linalg.eigvalsh((1 - s) * e + s)[0])


def _shape_bisection(e: torch.Tensor, tol: float = 1e-10) -> float:
    """Most negative s with λ_min((1−s)E + s11ᵀ) ≥ −K·eps, by bisection.

    Tolerance ``tol`` absolute for |s| ≤ 1, relative beyond.
    """
    k = e.shape[0]
    floor = -k * torch.finfo(e.dtype).eps

    def feasible(s: float) -> bool:
        return _lambda_min(e, s) >= floor

    hi = 0.0
    while not feasible(hi):  # E itself indefinite: move towards 11ᵀ (feasible at s = 1)
        hi = (hi + 1.0) / 2 if hi < 1 - 1e-12 else 1.0
        if hi == 1.0:
            break
    lo = -1.0
    while feasible(lo):  # S(s) → −s(11ᵀ − E) is indefinite for s → −∞
        lo *= 2.0
        if lo < -1e12:
            raise ValueError("no lower bound for s: the similarity is PSD for all s")
    # absolute tolerance, relative once |s| > 1 (E ≈ 11ᵀ puts s* near −1/(q−1) ≈ −1e9)
    while hi - lo > tol * max(1.0, abs(hi)):
        mid = (lo + hi) / 2
        if mid in (lo, hi):  # no float left between them
            break
        if feasible(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _closed_form_frame(e: torch.Tensor) -> tuple[float, torch.Tensor] | None:
    r"""``(s, W0)`` from one eigendecomposition of :math:`E`, or None when it is ill-posed.

    :math:`E = U\Lambda U^\top`, :math:`c = U^\top 1`: :math:`q = \sum_i c_i^2/\lambda_i` gives
    :math:`s = -1/(q-1)` (the closed form of :func:`haframe_shape`, with its conditioning test
    on the same eigenvalues). With :math:`L = U((1-s)\Lambda)^{1/2}` and
    :math:`z = L^{-1}1`, :math:`S(s) = L(I - \hat z\hat z^\top)L^\top` (:math:`|z|^2 = q - 1
    = -1/s`), so :math:`W_0 = LB` with :math:`B` ``[K, K-1]`` an orthonormal basis of
    :math:`\hat z^\perp` (the columns of one Householder reflection but the one along
    :math:`\hat z`) has :math:`W_0W_0^\top = S` exactly: no eigendecomposition of :math:`S`.
    """
    evals, evecs = torch.linalg.eigh(e)
    if not float(evals[0]) > 1e-10 * float(evals[-1]):  # also catches E not PD
        return None
    c = evecs.sum(dim=0)  # Uᵀ1
    q = float((c.square() / evals).sum())
    s = -1.0 / (q - 1.0)
    root = ((1.0 - s) * evals).sqrt()
    low = evecs * root  # L, [K, K]
    z = c / root
    z_norm = float(torch.linalg.vector_norm(z))
    zhat = z / z_norm
    j = int(zhat.abs().argmax())
    sigma = 1.0 if float(zhat[j]) >= 0 else -1.0
    v = zhat.clone()
    v[j] += sigma  # H = I − 2vvᵀ/vᵀv maps e_j to −σ ẑ; its other columns span ẑ⊥
    # L v = L ẑ + σ L e_j, with L ẑ = 1/|z| exactly (L z = 1)
    lv = torch.full_like(z, 1.0 / z_norm) + sigma * low[:, j]
    w0 = low - (2.0 / float(v @ v)) * lv[:, None] * v[None, :]
    keep = torch.arange(e.shape[0]) != j
    return s, w0[:, keep]


def haframe_shape(
    e: torch.Tensor, *, method: Literal["auto", "closed_form", "bisection"] = "auto"
) -> tuple[float, str]:
    r"""Most negative :math:`s` with :math:`(1-s)E + s11^\top \succeq 0`, and the method used.

    ``"closed_form"``: :math:`s = -1/(1^\top E^{-1}1 - 1)` by one Cholesky solve (needs
    :math:`E\succ 0`); ``"bisection"``: on :math:`\lambda_{\min}` to 1e-10; ``"auto"``:
    closed form unless Cholesky fails or :math:`\kappa(E) > 10^{10}`, then bisection.
    """
    if method not in ("auto", "closed_form", "bisection"):
        raise ValueError(f"method must be 'auto', 'closed_form' or 'bisection', got {method!r}")
    if method != "bisection":
        chol, info = torch.linalg.cholesky_ex(e)
        evals = torch.linalg.eigvalsh(e)
        well_posed = int(info) == 0 and float(evals[0]) > 1e-10 * float(evals[-1])
        if well_posed:
            ones = torch.ones(e.shape[0], 1, dtype=e.dtype)
            q = float(ones.T @ torch.cholesky_solve(ones, chol))
            return -1.0 / (q - 1.0), "closed_form"
        if method == "closed_form":
            raise ValueError(
                "closed-form s needs a positive definite E (Cholesky failed or E is "
                "ill-conditioned); use method='bisection' or 'auto'"
            )
    return _shape_bisection(e), "bisection"


@dataclass(frozen=True)
class HAFrame:
    """A hierarchy-aware frame: unit rows ``weight`` with ``weight @ weight.T == similarity``.

    Attributes
    ----------
    weight : Tensor ``[K, D]``
    similarity : Tensor ``[K, K]`` — the target :math:`S(s)`.
    s : float — the shape parameter (most negative PSD value).
    gamma : float or None — the exponential map's rate (None for ``mapping="linear"``).
    mapping : str — ``"exp"`` or ``"linear"``.
    method : str — how ``s`` was found: ``"closed_form"`` or ``"bisection"``.
    """

    weight: torch.Tensor
    similarity: torch.Tensor
    s: float
    gamma: float | None
    mapping: str
    method: str


def haframe(
    distances: Any,
    dim: int,
    *,
    gamma: float | None = None,
    mapping: Literal["exp", "linear"] = "exp",
    seed: int | None = None,
    method: Literal["auto", "closed_form", "bisection"] = "auto",
    dtype: torch.dtype = torch.float64,
) -> HAFrame:
    r"""Hierarchy-aware frame (HAFrame, Liang & Davis 2023) from LCA distances.

    Parameters
    ----------
    distances : Tensor ``[K, K]``
        LCA heights (``Hierarchy.lca_distances()``): symmetric, non-negative, zero diagonal.
    dim : int
        Feature dimension :math:`D \ge \operatorname{rank} S`.
    gamma : float
        Rate of the exponential map (``mapping="exp"``, required).
    mapping : {"exp", "linear"}
        :math:`E = \exp(-\gamma h/\max h)` or :math:`E = 1 - h/\max h` (see module docstring).
    seed : int, optional
        Seed of the rotation into :math:`\mathbb R^D` (reproducible; None: no rotation).
    method : {"auto", "closed_form", "bisection"}
        How the shape parameter :math:`s` is found (:func:`haframe_shape`).

    Returns
    -------
    HAFrame
        ``weight [K, D]`` with unit rows and ``weight @ weight.T = similarity`` to ~1e-12.
    """
    h = _check_distances(distances)
    k = h.shape[0]
    e = _similarity_base(h, mapping, gamma)
    if method not in ("auto", "closed_form", "bisection"):
        raise ValueError(f"method must be 'auto', 'closed_form' or 'bisection', got {method!r}")
    # closed form: one eigh of E gives s and the factor, no eigvalsh / Cholesky / eigh of S
    closed = None if method == "bisection" else _closed_form_frame(e)
    if closed is not None:
        s, w0 = closed
        used = "closed_form"
        sim = (1 - s) * e + s
        sim.fill_diagonal_(1.0)
    else:
        s, used = haframe_shape(e, method=method)  # raises for an ill-posed "closed_form"
        sim = (1 - s) * e + s
        sim.fill_diagonal_(1.0)
        evals, evecs = torch.linalg.eigh(sim)
        keep = evals > k * torch.finfo(sim.dtype).eps * evals[-1]
        w0 = evecs[:, keep] * evals[keep].sqrt()
    rank = w0.shape[1]
    _check_dim(dim, rank, f"an HAFrame whose similarity has rank {rank}")
    w = _embed(w0, dim, seed)
    w = w / torch.linalg.vector_norm(w, dim=1, keepdim=True)
    return HAFrame(
        weight=w.to(dtype),
        similarity=sim.to(dtype),
        s=s,
        gamma=None if mapping == "linear" else float(gamma),  # type: ignore[arg-type]
        mapping=mapping,
        method=used,
    )
