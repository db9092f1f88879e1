r"""Matrix square roots, inverse square roots and powers of symmetric PSD batches.

Two families, as compared by Song et al. for global covariance pooling (GCP):

* ``method="newton_schulz"`` — the coupled Newton–Schulz iteration with trace
  pre-normalisation and post-compensation (Higham 2008, eq. 6.35; Li et al. 2018, iSQRT-COV).
  Matrix multiplications only; with few iterations it is *not* an exact root but a soft
  truncation of the small eigenvalues (see the table in ``docs/linalg.md``), which is the
  effect Song et al. credit for its better accuracy in GCP. Backward either by autograd
  through the iterations or by a hand-written reverse pass of the same iterations (identical
  gradients, less memory).
* ``method="eigh"`` — forward by ``torch.linalg.eigh`` (eigenvalues clamped at 0 for the root,
  at ``eps`` for the inverse root), backward by the Daleckii–Krein formula

  .. math::

      \bar A = U\big(K \circ (U^\top \operatorname{sym}(\bar Y) U)\big)U^\top,\qquad
      K_{ij} = \frac{f(\lambda_i)-f(\lambda_j)}{\lambda_i-\lambda_j},\; K_{ii} = f'(\lambda_i),

  where the divided difference is written :math:`(f(\lambda_i)-f(\lambda_j))\,k(\lambda_i-
  \lambda_j)` and the gap kernel :math:`k(\delta)=1/\delta` is the quantity that explodes for
  close eigenvalues. ``backward=`` chooses it:

  - ``"exact"``: the divided difference itself, in closed form for the root
    (:math:`1/(\sqrt{\lambda_i}+\sqrt{\lambda_j})`) and the inverse root, so it is exact *and*
    stable; for a general power a first-order fallback when :math:`|\delta|` is at round-off.
    Eigenvalues below the floor :math:`\varepsilon\lambda_{\max}` (``eps``) enter the
    derivative at the floor, off the diagonal as on it: finite for every PSD input (a
    rank-deficient covariance, e.g. after a ReLU, has many zero eigenvalues), at most
    :math:`1/(2\sqrt{\varepsilon\lambda_{\max}})` for the root.
  - ``"taylor"`` (degree ``n``): :math:`1/(\lambda_i-\lambda_j) = \lambda_{>}^{-1}/(1-x)`,
    :math:`x=\lambda_{<}/\lambda_{>}`, truncated to :math:`\lambda_{>}^{-1}\sum_{k\le n}x^k`;
    bounded by :math:`(n+1)/\lambda_{>}` (Song et al.'s SVD-Taylor).
  - ``"pade"`` (degree ``n``): the rational kernel
    :math:`k(\delta)=\delta^{2n-1}/(\delta^{2n}+\epsilon^{2n})`, relative error
    :math:`\approx(\epsilon/|\delta|)^{2n}` for :math:`|\delta|\gg\epsilon`, and
    :math:`|k(\delta)|\le 1/\epsilon` for every :math:`\delta` (AM–GM:
    :math:`\epsilon\,\delta^{2n-1}\le\delta^{2n}+\epsilon^{2n}`). A Padé approximant of
    :math:`1/(1-x)` about :math:`x=0`, as in the SVD-Padé reference code, is :math:`1/(1-x)`
    itself for any order with a non-trivial denominator and bounds nothing.
  - ``"clip"``: :math:`k(\delta)=\operatorname{sign}(\delta)/\max(|\delta|,\epsilon)`,
    bounded by :math:`1/\epsilon`, exact for gaps above :math:`\epsilon`.

  :math:`\epsilon` = ``gap_eps`` times the largest eigenvalue of each matrix.

Every computation runs in float64; results are returned in the input dtype.

References
----------
N. J. Higham. Functions of Matrices: Theory and Computation. SIAM, 2008 (ch. 6).
P. Li, J. Xie, Q. Wang, Z. Gao. Towards faster training of global covariance pooling
networks by iterative matrix square root normalization. CVPR 2018.
Y. Song, N. Sebe, W. Wang. Why approximate matrix square root outperforms accurate SVD in
global covariance pooling? ICCV 2021.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

__all__ = ["inv_sqrtm", "matrix_power_sym", "spectral_transform", "sqrtm"]

Method = Literal["newton_schulz", "eigh"]
Backward = Literal["exact", "taylor", "pade", "clip"]
NSBackward = Literal["autograd", "manual"]


def _check_spd_batch(a: Any, name: str = "input") -> torch.Tensor:
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    if not a.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {a.dtype}")
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"{name} must be a batch of square matrices [..., d, d], got {list(a.shape)}"
        )
    if a.shape[-1] == 0:
        raise ValueError(f"{name} has size 0 matrices")
    finite = torch.isfinite(a.detach())
    if not bool(finite.all()):
        raise ValueError(
            f"{name} contains {int(torch.isnan(a.detach()).sum())} NaN and "
            f"{int(torch.isinf(a.detach()).sum())} Inf values"
        )
    tol = 100 * torch.finfo(a.dtype).eps * float(a.detach().abs().amax()) if a.numel() else 0.0
    asym = float((a.detach() - a.detach().mT).abs().amax())
    if asym > tol:
        raise ValueError(f"{name} must be symmetric (max |A - Aᵀ| = {asym:.3e})")
    return a


def _sym(x: torch.Tensor) -> torch.Tensor:
    return (x + x.mT) / 2


def _trace(a: torch.Tensor) -> torch.Tensor:
    return a.diagonal(dim1=-2, dim2=-1).sum(-1)


# ---------------------------------------------------------------------------- Newton–Schulz
def _ns_iterate(
    a_n: torch.Tensor, iters: int, keep: bool
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Coupled iteration Y ← Y T, Z ← T Z, T = ½(3I − Z Y) from Y₀ = A_N, Z₀ = I."""
    eye = torch.eye(a_n.shape[-1], dtype=a_n.dtype, device=a_n.device).expand_as(a_n)
    y, z = a_n, eye
    history: list[tuple[torch.Tensor, torch.Tensor]] = []
    for _ in range(iters):
        if keep:
            history.append((y, z))
        t = 1.5 * eye - 0.5 * (z @ y)
        y, z = y @ t, t @ z
    return y, z, history


def _ns_reverse(
    history: list[tuple[torch.Tensor, torch.Tensor]], g_y: torch.Tensor, g_z: torch.Tensor
) -> torch.Tensor:
    """Hand-written reverse pass of :func:`_ns_iterate`: gradient with respect to A_N."""
    eye = torch.eye(g_y.shape[-1], dtype=g_y.dtype, device=g_y.device)
    for y, z in reversed(history):
        t = 1.5 * eye - 0.5 * (z @ y)
        g_t = y.mT @ g_y + g_z @ z.mT
        g_y, g_z = g_y @ t.mT - 0.5 * (z.mT @ g_t), t.mT @ g_z - 0.5 * (g_t @ y.mT)
    return g_y  # Y₀ = A_N, and Z₀ = I does not depend on A


class _NewtonSchulz(torch.autograd.Function):
    """Coupled Newton–Schulz root (``inverse=False``) or inverse root, manual backward.

    The forward keeps the iterates (as autograd would), so the reverse pass costs six
    matrix products per iteration and never re-runs the forward.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, iters: int, inverse: bool) -> torch.Tensor:
        tr = _trace(a)[..., None, None]
        y, z, history = _ns_iterate(a / tr, iters, keep=True)
        flat = [m for pair in history for m in pair]
        ctx.save_for_backward(a, y, z, *flat)
        ctx.inverse = inverse
        return z / tr.sqrt() if inverse else y * tr.sqrt()

    @staticmethod
    def backward(ctx: Any, g_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        a, y, z, *flat = ctx.saved_tensors
        history = list(zip(flat[::2], flat[1::2], strict=True))
        tr = _trace(a)[..., None, None]
        root = tr.sqrt()
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        if ctx.inverse:  # out = Z_N / √t
            g_an = _ns_reverse(history, torch.zeros_like(y), g_out / root)
            g_t = -0.5 * (g_out * z).sum((-2, -1)) / (tr[..., 0, 0] * root[..., 0, 0])
        else:  # out = Y_N √t
            g_an = _ns_reverse(history, g_out * root, torch.zeros_like(z))
            g_t = 0.5 * (g_out * y).sum((-2, -1)) / root[..., 0, 0]
        # A_N = A / t,  t = tr A
        g_t = g_t - (g_an * a).sum((-2, -1)) / tr[..., 0, 0] ** 2
        g_a = g_an / tr + g_t[..., None, None] * eye
        return g_a, None, None


def _newton_schulz(
    a: torch.Tensor, iters: int, inverse: bool, backward: NSBackward
) -> torch.Tensor:
    tr = _trace(a)[..., None, None]
    if bool((tr <= 0).any()):
        raise ValueError("newton_schulz needs matrices with positive trace (PSD and non-zero)")
    if backward == "manual":
        out: torch.Tensor = _NewtonSchulz.apply(a, iters, inverse)
        return out
    if backward != "autograd":
        raise ValueError(f"ns_backward must be 'autograd' or 'manual', got {backward!r}")
    y, z, _ = _ns_iterate(a / tr, iters, keep=False)
    return z / tr.sqrt() if inverse else y * tr.sqrt()


# ---------------------------------------------------------------------------- eigh
def _power(lam: torch.Tensor, p: float, floor: torch.Tensor) -> torch.Tensor:
    """λ^p with λ clamped at ``floor`` (at 0 for p > 0, at eps for p < 0)."""
    return lam.clamp(min=floor) ** p if p < 0 else lam.clamp(min=0) ** p


def _divided_difference(
    lam: torch.Tensor,
    p: float,
    floor: torch.Tensor,
    backward: Backward,
    degree: int,
    gap: torch.Tensor,
) -> torch.Tensor:
    """Kernel K of the Daleckii–Krein formula for f(λ) = λ^p (clamped), ``[..., d, d]``."""
    lam_c = lam.clamp(min=floor)  # derivative evaluated away from 0
    f = _power(lam, p, floor)
    li, lj = lam_c[..., :, None], lam_c[..., None, :]
    fi, fj = f[..., :, None], f[..., None, :]
    deriv = p * lam_c ** (p - 1)
    delta = lam[..., :, None] - lam[..., None, :]
    if backward == "exact":
        if p == 0.5:
            # at the floor below it, as the diagonal f'(λ) is: two zero eigenvalues gave
            # 1/(0 + 0) → 4.5e307 before, an overflowing gradient for any rank-deficient input
            si, sj = li.sqrt(), lj.sqrt()
            k = 1.0 / (si + sj)
        elif p == -0.5:
            si, sj = li.sqrt(), lj.sqrt()
            k = -1.0 / (si * sj * (si + sj))
        else:
            close = delta.abs() <= 1e-10 * torch.maximum(li.abs(), lj.abs())
            safe = torch.where(close, torch.ones_like(delta), delta)
            mean_deriv = p * ((li + lj) / 2) ** (p - 1)
            k = torch.where(close, mean_deriv, (fi - fj) / safe)
    else:
        eps = gap[..., None, None]
        if backward == "taylor":
            hi, lo = torch.maximum(li, lj), torch.minimum(li, lj)
            x = lo / hi
            series = sum(x**j for j in range(degree + 1))
            kern = torch.sign(delta) * series / hi
        elif backward == "pade":
            kern = delta ** (2 * degree - 1) / (delta ** (2 * degree) + eps ** (2 * degree))
        elif backward == "clip":
            kern = torch.sign(delta) / delta.abs().clamp(min=eps)
        else:
            raise ValueError(
                f"backward must be 'exact', 'taylor', 'pade' or 'clip', got {backward!r}"
            )
        k = (fi - fj) * kern
    eye = torch.eye(lam.shape[-1], dtype=torch.bool, device=lam.device)
    return torch.where(eye, deriv[..., :, None].expand_as(k), k)


class _EighPower(torch.autograd.Function):
    """A^p by eigh with a Daleckii–Krein backward and a chosen gap kernel."""

    @staticmethod
    def forward(
        a: torch.Tensor, p: float, eps: float, backward: str, degree: int, gap_eps: float
    ) -> torch.Tensor:
        lam, u = torch.linalg.eigh(a)
        floor = eps * lam.abs().amax(-1, keepdim=True).clamp(min=torch.finfo(a.dtype).tiny)
        f = _power(lam, p, floor)
        return (u * f[..., None, :]) @ u.mT

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        a, p, eps, backward, degree, gap_eps = inputs
        ctx.save_for_backward(a)
        ctx.args = (p, eps, backward, degree, gap_eps)

    @staticmethod
    def backward(ctx: Any, g_out: torch.Tensor) -> tuple[Any, ...]:
        (a,) = ctx.saved_tensors
        p, eps, backward, degree, gap_eps = ctx.args
        lam, u = torch.linalg.eigh(a)
        scale = lam.abs().amax(-1).clamp(min=torch.finfo(a.dtype).tiny)
        floor = eps * scale[..., None]
        k = _divided_difference(lam, p, floor, backward, degree, gap_eps * scale)
        g = u @ (k * (u.mT @ _sym(g_out) @ u)) @ u.mT
        return g, None, None, None, None, None


def matrix_power_sym(
    a: torch.Tensor,
    power: float,
    *,
    eps: float = 1e-12,
    backward: Backward = "exact",
    degree: int = 2,
    gap_eps: float = 1e-3,
) -> torch.Tensor:
    r"""Real power :math:`A^p = U\operatorname{diag}(\lambda^p)U^\top` of symmetric PSD matrices.

    Parameters
    ----------
    a : Tensor ``[..., d, d]``
        Symmetric positive semi-definite (any float dtype; computed in float64).
    power : float
        :math:`p`. For :math:`p<0` eigenvalues are clamped at ``eps``·λ_max, for :math:`p>0`
        at 0.
    eps : float
        Relative eigenvalue floor for negative powers and for derivatives at 0.
    backward, degree, gap_eps
        Gradient kernel, see the module docstring.

    Returns
    -------
    Tensor ``[..., d, d]`` in the input dtype.
    """
    _check_spd_batch(a)
    if backward not in ("exact", "taylor", "pade", "clip"):
        raise ValueError(f"backward must be 'exact', 'taylor', 'pade' or 'clip', got {backward!r}")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be a positive int, got {degree!r}")
    if not (eps > 0 and gap_eps > 0):
        raise ValueError("eps and gap_eps must be positive")
    with torch.autocast(device_type=a.device.type, enabled=False):
        out: torch.Tensor = _EighPower.apply(
            a.to(torch.float64), float(power), float(eps), backward, degree, float(gap_eps)
        )
    return out.to(a.dtype)


def _root(
    a: torch.Tensor,
    inverse: bool,
    method: Method,
    iters: int,
    ns_backward: NSBackward,
    eps: float,
    backward: Backward,
    degree: int,
    gap_eps: float,
) -> torch.Tensor:
    _check_spd_batch(a)
    if method == "eigh":
        return matrix_power_sym(
            a, -0.5 if inverse else 0.5, eps=eps, backward=backward, degree=degree, gap_eps=gap_eps
        )
    if method != "newton_schulz":
        raise ValueError(f"method must be 'newton_schulz' or 'eigh', got {method!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    with torch.autocast(device_type=a.device.type, enabled=False):
        out = _newton_schulz(a.to(torch.float64), iters, inverse, ns_backward)
    return out.to(a.dtype)


def sqrtm(
    a: torch.Tensor,
    *,
    method: Method = "eigh",
    iters: int = 5,
    ns_backward: NSBackward = "autograd",
    eps: float = 1e-12,
    backward: Backward = "exact",
    degree: int = 2,
    gap_eps: float = 1e-3,
) -> torch.Tensor:
    r"""Principal square root :math:`A^{1/2}` of symmetric PSD matrices ``[..., d, d]``.

    Parameters
    ----------
    a : Tensor ``[..., d, d]``
        Symmetric positive semi-definite, any float dtype (float64 inside, input dtype out).
    method : {"eigh", "newton_schulz"}
        ``"eigh"``: exact root, eigenvalues clamped at 0. ``"newton_schulz"``: ``iters`` coupled
        iterations on :math:`A/\operatorname{tr}A`, multiplied back by
        :math:`\sqrt{\operatorname{tr}A}` (an approximation that shrinks small eigenvalues).
    iters : int
        Newton–Schulz iterations.
    ns_backward : {"autograd", "manual"}
        Newton–Schulz gradient: autograd through the iterations, or the hand-written reverse
        pass (same values, stores only the input).
    eps : float
        Relative eigenvalue floor (eigh): derivative of :math:`\sqrt\lambda` evaluated at
        :math:`\max(\lambda, \epsilon\lambda_{max})`.
    backward : {"exact", "taylor", "pade", "clip"}
        eigh gradient kernel (module docstring); ``degree`` and ``gap_eps`` parametrise it.

    Returns
    -------
    Tensor ``[..., d, d]``

    Examples
    --------
    >>> a = torch.tensor([[4.0, 0.0], [0.0, 9.0]])
    >>> sqrtm(a)
    tensor([[2., 0.],
            [0., 3.]])
    """
    return _root(a, False, method, iters, ns_backward, eps, backward, degree, gap_eps)


def inv_sqrtm(
    a: torch.Tensor,
    *,
    method: Method = "eigh",
    iters: int = 5,
    ns_backward: NSBackward = "autograd",
    eps: float = 1e-12,
    backward: Backward = "exact",
    degree: int = 2,
    gap_eps: float = 1e-3,
) -> torch.Tensor:
    r"""Inverse square root :math:`A^{-1/2}` of symmetric positive definite matrices.

    Same parameters as :func:`sqrtm`. ``"eigh"`` clamps eigenvalues at
    :math:`\epsilon\lambda_{max}` (``eps``) before inverting; ``"newton_schulz"`` returns
    :math:`Z_N/\sqrt{\operatorname{tr}A}` from the coupled iteration.
    """
    return _root(a, True, method, iters, ns_backward, eps, backward, degree, gap_eps)


def spectral_transform(
    cov: torch.Tensor,
    power: float,
    *,
    eps: float = 1e-12,
    backward: Backward = "exact",
    degree: int = 2,
    gap_eps: float = 1e-3,
) -> torch.Tensor:
    r"""The :math:`\Sigma^{-p}` family of spectral transformations (Weng et al., INTL).

    :math:`p=1/2` whitens (:math:`\Sigma^{-1/2}`), :math:`p=0` is the identity, and
    :math:`0<p<1/2` flattens the spectrum partially. Eigenvalues are clamped at
    :math:`\epsilon\lambda_{max}` for :math:`p>0`.

    Parameters
    ----------
    cov : Tensor ``[..., d, d]``
        Symmetric PSD covariance.
    power : float
        :math:`p` in :math:`\Sigma^{-p}`.

    References
    ----------
    X. Weng, Y. Ni, T. Song, J. Luo, R. M. Anwer, S. Khan, F. Khan, L. Huang. Modulate your
    spectrum in self-supervised learning. ICLR 2024.
    """
    if not math.isfinite(power):
        raise ValueError(f"power must be finite, got {power!r}")
    if power == 0:
        _check_spd_batch(cov, "cov")
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return eye.expand_as(cov).clone()
    return matrix_power_sym(
        cov, -float(power), eps=eps, backward=backward, degree=degree, gap_eps=gap_eps
    )
