r"""Helpers for geoopt's Lorentz (hyperboloid) model.

Convention (geoopt's; ``docs/conventions.md``, section "Lorentz"): a point
:math:`x = (x_0, x_s)\in\mathbb R^{d+1}`
satisfies :math:`\langle x, x\rangle_{\mathcal L} = -x_0^2 + \|x_s\|^2 = -k` with
:math:`x_0 > 0`; the curvature is :math:`-1/k` and the origin is
:math:`(\sqrt k, 0, \dots, 0)`. ``k`` is the parameter of :class:`geoopt.Lorentz`
(``manifold.k``), a positive float or 0-d tensor.

References
----------
M. Law, R. Liao, J. Snell, R. Zemel. Lorentzian distance learning for hyperbolic
representations. ICML 2019 (the Lorentzian centroid).
A. Bdeir, K. Schwethelm, N. Landwehr. Fully hyperbolic convolutional neural networks for
computer vision. ICLR 2024.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "add_time",
    "centroid",
    "concat",
    "exp0_space",
    "expmap",
    "expmap0",
    "logmap0",
    "max_distance",
    "minkowski_inner",
    "origin_like",
    "project",
    "rescale_distance",
]


def _as_k(k: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    k_t = torch.as_tensor(k, dtype=like.dtype, device=like.device)
    if k_t.numel() != 1:
        raise ValueError(f"k must be a scalar, got shape {tuple(k_t.shape)}")
    if not bool(k_t > 0):
        raise ValueError(f"k must be positive (curvature -1/k), got {float(k_t)}")
    return k_t.reshape(())


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    if not x.is_floating_point():
        raise TypeError(f"Lorentz points must be a float tensor, got {x.dtype}")
    # half precision cannot hold x_0^2 - |x_s|^2 = k with any accuracy: work in float32
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def minkowski_inner(x: torch.Tensor, y: torch.Tensor, *, keepdim: bool = False) -> torch.Tensor:
    r"""Lorentzian inner product :math:`\langle x, y\rangle_{\mathcal L} = -x_0y_0 + x_s^\top y_s`.

    Parameters
    ----------
    x, y : Tensor
        ``[..., d + 1]``, broadcastable.
    keepdim : bool
        Keep the last dimension (size 1).

    Returns
    -------
    Tensor
        ``[...]`` (or ``[..., 1]``).
    """
    prod = x * y
    out = prod[..., 1:].sum(dim=-1, keepdim=True) - prod[..., :1]
    return out if keepdim else out.squeeze(-1)


def origin_like(x: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    r"""The origin :math:`(\sqrt k, 0, \dots, 0)` with the shape, dtype and device of ``x``."""
    out = torch.zeros_like(x)
    out[..., 0] = torch.sqrt(_as_k(k, x))
    return out


def centroid(
    x: torch.Tensor, k: float | torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Weighted Lorentzian centroid of points, normalised onto the hyperboloid of any ``k``.

    .. math::
        \mu = \sum_i w_i x_i, \qquad
        c = \sqrt{k}\,\frac{\mu}{\sqrt{\lvert\langle\mu,\mu\rangle_{\mathcal L}\rvert}},

    the point minimising the weighted sum of squared Lorentzian distances
    :math:`\sum_i w_i\,\|x_i - c\|_{\mathcal L}^2` (Law et al. 2019). With two points
    the centroid lies on the geodesic between them; with weights :math:`(1-t, t)` of ``x``
    and the origin it moves ``x`` toward the origin (the geometric weight decay of
    :class:`geomtools.optim.RiemannianAdamW`). The overall scale of the weights does not
    matter.

    Parameters
    ----------
    x : Tensor
        ``[..., N, d + 1]`` points on the hyperboloid of parameter ``k``; averaged over
        dim −2.
    k : float or Tensor
        geoopt's Lorentz parameter, ``k > 0``.
    weights : Tensor, optional
        ``[..., N]`` (or ``[N]``), non-negative and not all zero; uniform when omitted.

    Returns
    -------
    Tensor
        ``[..., d + 1]`` on the hyperboloid, in ``x``'s dtype. Half-precision inputs are
        computed in float32.

    Raises
    ------
    ValueError
        Negative or all-zero weights, weights of the wrong shape, non-finite input,
        ``k <= 0``, or a centroid farther from the origin than :func:`max_distance` of the
        working dtype (9.70√k in float64, 4.68√k in float32), where the Minkowski norm of
        the weighted sum cancels.
    """
    if x.dim() < 2:
        raise ValueError(f"x must be [..., N, d + 1], got shape {tuple(x.shape)}")
    wd = _work_dtype(x)
    xw = x.to(wd)
    n_bad = int((~torch.isfinite(xw)).sum())
    if n_bad:
        raise ValueError(f"x contains {n_bad} non-finite values")
    if weights is None:
        mu = xw.mean(dim=-2)
    else:
        w = weights.to(device=x.device, dtype=wd)
        if w.shape[-1:] != x.shape[-2:-1]:
            raise ValueError(
                f"weights must be [..., N] with N = {x.shape[-2]}, got shape {tuple(w.shape)}"
            )
        if bool((w < 0).any()):
            raise ValueError("weights must be non-negative (a Lorentz centroid needs w >= 0)")
        if bool((w.sum(dim=-1) == 0).any()):
            raise ValueError("weights sum to zero for some centroid")
        mu = (w.unsqueeze(-1) * xw).sum(dim=-2)
    k_t = _as_k(k, mu)
    norm2 = -minkowski_inner(mu, mu, keepdim=True)  # > 0 for future-pointing timelike mu
    # cosh²(d(o, c)/√k) = mu_0² / norm2: beyond max_distance (√eps · mu_0² > norm2) the
    # cancelled norm keeps less than half the digits, and at twice it none at all (a clamp
    # would turn it into huge finite garbage); refuse rather than return that
    mu0_sq = mu[..., :1].detach().square()
    bad = ~(norm2.detach() >= math.sqrt(torch.finfo(wd).eps) * mu0_sq)  # NaN/inf included
    if bool(bad.any()):
        wider = "" if wd == torch.float64 else " or work in float64"
        raise ValueError(
            f"centroid lies beyond the {wd} range of the hyperboloid: its distance to the "
            f"origin exceeds max_distance({wd}, k) = {max_distance(wd, float(k_t)):.4g} "
            f"(= {max_distance(wd):.3g}·√k), where ⟨μ, μ⟩_L cancels; rescale the points "
            f"(rescale_distance){wider}"
        )
    out = mu * torch.sqrt(k_t) / torch.sqrt(norm2)
    return out.to(x.dtype)


def project(x: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    r"""Put ``x`` back on the hyperboloid by recomputing the time coordinate.

    :math:`x_0 \leftarrow \sqrt{k + \|x_s\|^2}`, space part unchanged.

    Parameters
    ----------
    x : Tensor
        ``[..., d + 1]``.
    k : float or Tensor
        geoopt's Lorentz parameter, ``k > 0``.
    """
    space = x[..., 1:]
    time = torch.sqrt(_as_k(k, x) + (space * space).sum(dim=-1, keepdim=True))
    return torch.cat([time, space], dim=-1)


def expmap(x: torch.Tensor, u: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    r"""Exponential map of the hyperboloid, exact down to ``u = 0``.

    .. math::
        \exp_x(u) = \cosh\theta\,x + \frac{\sinh\theta}{\theta}\,u, \qquad
        \theta = \frac{\|u\|_{\mathcal L}}{\sqrt k},

    with :math:`\cosh\theta` and :math:`\sinh\theta/\theta` from their Taylor series in
    :math:`\theta^2` for :math:`\theta < 10^{-4}` (so the gradient is finite at ``u = 0``);
    the time coordinate is then recomputed (:func:`project`). geoopt's ``Lorentz.expmap``
    clamps :math:`\|u\|^2_{\mathcal L}` at :math:`10^{-8}`, so its
    :math:`\exp_x(0)` scales the space part by :math:`\cosh(10^{-4}/\sqrt k)`, a relative
    error of :math:`5\cdot10^{-9}/k` on every step shorter than :math:`10^{-4}`; this
    function has none.

    Parameters
    ----------
    x : Tensor
        ``[..., d + 1]`` points.
    u : Tensor
        ``[..., d + 1]`` tangent vectors at ``x`` (:math:`\langle x, u\rangle_{\mathcal L} = 0`).
    k : float or Tensor
        geoopt's Lorentz parameter, ``k > 0``.

    Returns
    -------
    Tensor
        ``[..., d + 1]`` on the hyperboloid.
    """
    k_t = _as_k(k, x)
    t2 = minkowski_inner(u, u, keepdim=True).clamp_min(0.0) / k_t  # θ², no sqrt at 0
    small = t2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))  # finite gradient at u = 0
    cosh = torch.where(small, 1.0 + t2 / 2.0, torch.cosh(theta))
    sinhc = torch.where(small, 1.0 + t2 / 6.0, torch.sinh(theta) / theta)
    return project(cosh * x + sinhc * u, k_t)


def add_time(space: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    r"""Point on the hyperboloid with the given space part: :math:`(\sqrt{k + \|x_s\|^2}, x_s)`.

    Parameters
    ----------
    space : Tensor
        ``[..., d]`` space coordinates.
    k : float or Tensor
        geoopt's Lorentz parameter, ``k > 0``.

    Returns
    -------
    Tensor
        ``[..., d + 1]``.
    """
    time = torch.sqrt(_as_k(k, space) + (space * space).sum(dim=-1, keepdim=True))
    return torch.cat([time, space], dim=-1)


def concat(
    points: list[torch.Tensor] | tuple[torch.Tensor, ...], k: float | torch.Tensor
) -> torch.Tensor:
    r"""Direct concatenation of Lorentz points (HCNN, Bdeir et al. 2024), exact for any ``k``.

    Space parts are concatenated and the time recomputed:
    :math:`y = (\sqrt{k + \sum_i \|x_{s,i}\|^2},\ x_{s,1}, \dots, x_{s,n})`, which equals
    :math:`\sqrt{\sum_i x_{0,i}^2 - (n-1)k}`. The reference code subtracts :math:`(n-1)`
    instead of :math:`(n-1)k`, which leaves the hyperboloid whenever :math:`k \ne 1`.

    Parameters
    ----------
    points : list of Tensor
        ``[..., d_i + 1]`` points with equal leading dims.
    k : float or Tensor

    Returns
    -------
    Tensor
        ``[..., sum_i d_i + 1]``.
    """
    if len(points) == 0:
        raise ValueError("concat needs at least one point tensor")
    lead = points[0].shape[:-1]
    for i, p in enumerate(points):
        if p.shape[:-1] != lead:
            raise ValueError(
                f"concat: point tensor {i} has leading shape {tuple(p.shape[:-1])}, "
                f"expected {tuple(lead)}"
            )
    return add_time(torch.cat([p[..., 1:] for p in points], dim=-1), k)


def max_distance(dtype: torch.dtype, k: float | torch.Tensor = 1.0) -> float:
    r"""Largest distance to the origin at which ``dtype`` still holds a point on the hyperboloid.

    A point at distance :math:`d` has :math:`x_0 \approx \tfrac{\sqrt k}{2} e^{d/\sqrt k}`;
    rounding its coordinates to relative precision :math:`\epsilon` perturbs
    :math:`\langle x, x\rangle_{\mathcal L} = -k` by about :math:`\epsilon x_0^2`. Asking
    that this stays below :math:`\sqrt\epsilon\,k` (the constraint keeps half the digits)
    gives

    .. math:: D = \frac{\sqrt k}{4}\,\ln\frac{16}{\epsilon},

    with :math:`\epsilon` = ``torch.finfo(dtype).eps``: 1.91√k for bfloat16, 2.43√k for
    float16, 4.68√k for float32, 9.70√k for float64. One bound per dtype, used for every
    rescaling (the reference code mixes two different maxima in one class).
    """
    eps = torch.finfo(dtype).eps
    return 0.25 * math.sqrt(float(k)) * math.log(16.0 / eps)


def rescale_distance(
    x: torch.Tensor,
    k: float | torch.Tensor,
    *,
    max_dist: float | None = None,
    tau: float | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Squash the distance to the origin: :math:`d \mapsto D\tanh(\tau d)` along the geodesic.

    With :math:`d = \sqrt k\,\operatorname{arccosh}(x_0/\sqrt k)` and
    :math:`u = x_s/\|x_s\|`, the result is
    :math:`(\sqrt k\cosh(d'/\sqrt k),\ \sqrt k\sinh(d'/\sqrt k)\,u)` with
    :math:`d' = D\tanh(\tau d) < D`: the direction from the origin is kept, and every point
    stays within the distance the working dtype represents (Bdeir et al. 2024, who use it to
    keep float16 training finite). The distance is computed as
    :math:`\sqrt k\,\operatorname{asinh}(\|x_s\|/\sqrt k)`, accurate near the origin.

    Parameters
    ----------
    x : Tensor
        ``[..., d + 1]`` points.
    k : float or Tensor
    max_dist : float, optional
        :math:`D`; default :func:`max_distance` of ``dtype``.
    tau : float, optional
        Slope at the origin divided by :math:`D`; default :math:`1/D`, so that
        :math:`d' = D\tanh(d/D) \approx d` for :math:`d \ll D`.
    dtype : torch.dtype, optional
        The dtype the points must survive in (default: ``x.dtype``; pass ``torch.float16``
        when the network runs under float16 autocast).

    Returns
    -------
    Tensor
        ``[..., d + 1]`` in ``x.dtype`` (computed in at least float32).
    """
    wd = _work_dtype(x)
    xw = x.to(wd)
    k_t = _as_k(k, xw)
    big = max_distance(dtype or x.dtype, float(k_t)) if max_dist is None else float(max_dist)
    if not big > 0:
        raise ValueError(f"max_dist must be positive, got {big}")
    t = 1.0 / big if tau is None else float(tau)
    v = logmap0(xw, k_t)  # |v| = d, the distance to the origin
    d = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    shrink = big * torch.tanh(t * d) / d.clamp_min(torch.finfo(wd).tiny)
    return expmap0(shrink * v, k_t).to(x.dtype)


_SMALL = 1e-4  # below this |v| / sqrt(k) the sinh / asinh ratios use their Taylor series


def exp0_space(v: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    r"""Space part of :math:`\exp_o((0, v))`: :math:`\tfrac{\sinh\theta}{\theta}\,v`.

    :math:`\theta = \|v\|/\sqrt k`; the Taylor branch in :math:`\|v\|^2` keeps the gradient
    finite at ``v = 0``. ``[..., d]`` → ``[..., d]``; :func:`expmap0` adds the time.
    """
    k_t = _as_k(k, v)
    n2 = (v * v).sum(dim=-1, keepdim=True)
    small = n2 < (_SMALL * _SMALL) * k_t
    theta = torch.sqrt(torch.where(small, torch.ones_like(n2), n2) / k_t)
    sinhc = torch.where(small, 1.0 + n2 / (6.0 * k_t), torch.sinh(theta) / theta)
    return sinhc * v


def expmap0(v: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    r"""Exponential map at the origin of the tangent vector :math:`(0, v)`, ``[..., d]`` in.

    .. math:: \exp_o((0, v)) = \Big(\sqrt k\cosh\theta,\ \frac{\sinh\theta}{\theta}\,v\Big),
        \qquad \theta = \|v\|/\sqrt k,

    with the time recomputed from the space part (:func:`add_time`); exact and with a finite
    gradient at ``v = 0``. Returns ``[..., d + 1]``.
    """
    return add_time(exp0_space(v, k), k)


def logmap0(x: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    r"""Space part of :math:`\log_o(x)`: :math:`\tfrac{\operatorname{asinh} z}{z}\,x_s`.

    :math:`z = \|x_s\|/\sqrt k`, so :math:`\|\log_o x\| = d(o, x)`. Reads the space part only
    (accurate near the origin, where :math:`\operatorname{arccosh}(x_0/\sqrt k)` loses half the
    digits); Taylor branch for small :math:`z`, so the gradient is finite at ``x = o``.
    ``[..., d + 1]`` → ``[..., d]``.
    """
    k_t = _as_k(k, x)
    xs = x[..., 1:]
    n2 = (xs * xs).sum(dim=-1, keepdim=True)
    small = n2 < (_SMALL * _SMALL) * k_t
    z = torch.sqrt(torch.where(small, torch.ones_like(n2), n2) / k_t)
    asinhc = torch.where(small, 1.0 - n2 / (6.0 * k_t), torch.asinh(z) / z)
    return asinhc * xs
