r"""Fully hyperbolic layers on geoopt's Lorentz (hyperboloid) model.

Convention (geoopt's): a point :math:`x = (x_0, x_s)\in\mathbb R^{d+1}` satisfies
:math:`\langle x, x\rangle_{\mathcal L} = -x_0^2 + \|x_s\|^2 = -k`, :math:`x_0 > 0`; the
curvature is :math:`-1/k` and the origin is :math:`o = (\sqrt k, 0, \dots, 0)`. Feature
sizes (``in_features``, ``out_channels``, ``num_features``…) count **space** dimensions
:math:`d`; tensors carry :math:`d + 1` entries, the time coordinate first (last dim for
vectors, channel 0 of dim 1 for images ``[B, d + 1, H, W]``).

Every layer takes ``k`` as a positive float or a :class:`geoopt.Lorentz` manifold; a
manifold is registered as a sub-module and ``manifold.k`` is read at every forward pass, so
a learnable curvature receives gradients and a manifold shared by several layers is shared
by their parameters.

Precision
---------
The hyperbolic arithmetic always runs in float32 or float64: each forward pass disables
``torch.autocast`` around its body and computes in ``float64`` for float64 inputs,
``float32`` otherwise (float16/bfloat16 inputs are upcast; parameters are cast to that
dtype). Outputs are therefore float32 under autocast, never half precision: half precision
cannot hold :math:`x_0^2 - \|x_s\|^2 = k` (see
:func:`geomtools.manifolds.lorentz.max_distance`). Layers that emit points recompute the
time coordinate from the space part, :math:`x_0 = \sqrt{k + \|x_s\|^2}`, evaluated in
float64 for float32 outputs and rounded once (except on MPS, which has no float64), so the
only departure from the hyperboloid is the rounding of the stored :math:`x_0`:
:math:`|\langle y, y\rangle_{\mathcal L} + k| \le 2^{-23}x_0^2` in float32, i.e. below
:math:`10^{-6}k` for :math:`x_0^2 < 8k` (distance :math:`< 1.7\sqrt k` from the origin),
growing like :math:`e^{2d/\sqrt k}` with the distance :math:`d`. No float32 tensor can do
better at that distance.

References
----------
A. Bdeir, K. Schwethelm, N. Landwehr. Fully hyperbolic convolutional neural networks for
computer vision. ICLR 2024 (HCNN: convolution, batch normalisation, MLR, pooling).
W. Chen, X. Han, Y. Lin, H. Zhao, Z. Liu, P. Li, M. Sun, J. Zhou. Fully hyperbolic neural
networks. ACL 2022 (the Lorentz linear layer).
Y. Guo, X. Wang, Y. Chen, S. X. Yu. Clipped hyperbolic classifiers are super-hyperbolic
classifiers. CVPR 2022 (feature clipping).
"""

from __future__ import annotations

import math
from typing import Any

import geoopt
import torch
import torch.nn.functional as F
from torch import nn

from geomtools.manifolds.lorentz import (
    _work_dtype,
    add_time,
    centroid,
    concat,
    exp0_space,
    minkowski_inner,
)
from geomtools.manifolds.lorentz import logmap0 as _logmap0

__all__ = [
    "EuclideanToLorentz",
    "LorentzBatchNorm",
    "LorentzConv2d",
    "LorentzGlobalAvgPool",
    "LorentzLinear",
    "LorentzMLR",
]


# ----------------------------------------------------------------------------- helpers


def _no_autocast(x: torch.Tensor) -> torch.autocast:
    return torch.autocast(device_type=x.device.type, enabled=False)


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    out = (v, v) if isinstance(v, int) else tuple(v)
    if len(out) != 2 or not all(isinstance(i, int) for i in out):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return (int(out[0]), int(out[1]))


class _Curvature(nn.Module):
    """Holds ``k`` as a float or a :class:`geoopt.Lorentz` (read at forward time)."""

    def __init__(self, k: float | Any) -> None:
        super().__init__()
        self.manifold: Any = None
        self._k_value = 0.0
        if isinstance(k, geoopt.Lorentz):
            self.manifold = k
        elif isinstance(k, geoopt.Manifold):
            raise TypeError(f"k must be a float or a geoopt.Lorentz, got {type(k).__name__}")
        else:
            k_f = float(k)
            if not (math.isfinite(k_f) and k_f > 0):
                raise ValueError(f"k must be positive (curvature -1/k), got {k!r}")
            self._k_value = k_f

    def k(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if self.manifold is None:
            return torch.tensor(self._k_value, dtype=dtype, device=device)
        k_t = self.manifold.k.to(dtype=dtype, device=device)
        if not bool(k_t > 0):
            raise ValueError(f"manifold.k must be positive, got {float(k_t)}")
        return k_t

    def extra_repr(self) -> str:
        """Constructor arguments for ``repr``."""
        return "" if self.manifold is not None else f"k={self._k_value}"


def _time_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 where the device has it (not MPS): the time is then rounded once
    return x.dtype if x.device.type == "mps" else torch.float64


def _add_time(space: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    r"""``add_time`` with the time coordinate computed in float64 and rounded once.

    :math:`(\sqrt{k + \|x_s\|^2}, x_s)` for ``space`` ``[..., d]``. In float32 the sum of
    squares and the square root each round; computing the time from the (exact) float32
    space part in float64 leaves only the final rounding of :math:`x_0`, so
    :math:`|\langle y, y\rangle_{\mathcal L} + k| \le 2^{-23}x_0^2` instead of about
    twice that.
    """
    hd = _time_dtype(space)
    if hd == space.dtype:
        return add_time(space, k)
    time = add_time(space.to(hd), k.to(hd))[..., :1].to(space.dtype)
    return torch.cat([time, space], dim=-1)


def _expmap0(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    r""":func:`geomtools.manifolds.lorentz.expmap0` with the time computed by :func:`_add_time`.

    ``[..., d]`` → ``[..., d + 1]``; finite gradient at ``u = 0``.
    """
    return _add_time(exp0_space(u, k), k)


def _boost(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    r"""The Lorentz boost (transvection) along the geodesic from ``a`` to ``b``, applied to ``x``.

    .. math::
        T_{a\to b}(x) = x + \frac{\langle x, a + b\rangle_{\mathcal L}}{k - \langle a,
        b\rangle_{\mathcal L}}\,(a + b) - \frac{2\langle x, a\rangle_{\mathcal L}}{k}\,b,

    a linear isometry with :math:`T(a) = b` that fixes :math:`\{a, b\}^\perp`; on tangent
    vectors at ``a`` it is the parallel transport to ``b``. The time coordinate is
    recomputed from the space part (``add_time``).
    """
    ab = a + b
    coef = minkowski_inner(x, ab, keepdim=True) / (k - minkowski_inner(a, b, keepdim=True))
    y = x + coef * ab - (2.0 / k) * minkowski_inner(x, a, keepdim=True) * b
    return _add_time(y[..., 1:], k)


def _check_last(x: torch.Tensor, size: int, name: str) -> None:
    if x.dim() < 1 or x.shape[-1] != size:
        raise ValueError(
            f"{name}: expected [..., {size}] (time + {size - 1} space coordinates), "
            f"got shape {tuple(x.shape)}"
        )


def _check_image(x: torch.Tensor, channels: int, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{name}: expected [B, {channels}, H, W] (channel 0 the time coordinate, "
            f"{channels - 1} space channels), got shape {tuple(x.shape)}"
        )


# ----------------------------------------------------------------------------- layers


class LorentzLinear(nn.Module):
    r"""Lorentz linear layer: a linear map of the space part, time recomputed.

    .. math::
        y_s = W x_s + b, \qquad y_0 = \sqrt{k + \|y_s\|^2}, \qquad
        W\in\mathbb R^{n\times m},

    the fully hyperbolic linear layer of Chen et al. (2022) without their time rescaling, in
    the form HCNN (Bdeir et al. 2024) uses: the output is a point of the hyperboloid for
    any :math:`W, b`.

    **Space part only.** HCNN's ``LorentzFullyConnected`` multiplies the whole
    :math:`x = (x_0, x_s)` and keeps the space rows. Here :math:`W` acts on :math:`x_s`
    only: (i) :math:`x_0 = \sqrt{k + \|x_s\|^2}` is a function of :math:`x_s`, so the
    space coordinates already are a global chart and the extra column only adds that fixed
    non-linear feature; (ii) with it, :class:`LorentzConv2d` is *exactly* HCNN's
    unfold → direct concatenation → Lorentz linear convolution while being one
    :func:`torch.nn.functional.conv2d` (the concatenated time
    :math:`\sqrt{k + \sum_i\|x_{s,i}\|^2}` of a patch is not a convolution of the input);
    (iii) the origin maps to :math:`(\sqrt{k + \|b\|^2}, b)` independently of ``W``.

    Parameters
    ----------
    in_features, out_features : int
        Space dimensions :math:`m, n`; input ``[..., m + 1]``, output ``[..., n + 1]``.
    k : float or geoopt.Lorentz
        Curvature parameter (curvature :math:`-1/k`), keyword-only, default 1.
    bias : bool
        Learn :math:`b` (default True).

    Attributes
    ----------
    weight : Parameter
        ``[out_features, in_features]``, initialised like :class:`torch.nn.Linear`.
    bias : Parameter or None
        ``[out_features]``.
    """

    def __init__(
        self, in_features: int, out_features: int, *, k: float | Any = 1.0, bias: bool = True
    ) -> None:
        super().__init__()
        if min(in_features, out_features) < 1:
            raise ValueError(
                f"in_features and out_features must be positive, got {in_features}, {out_features}"
            )
        self.in_features, self.out_features = in_features, out_features
        self.curv = _Curvature(k)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""``torch.nn.Linear``'s initialisation (uniform, bound :math:`1/\sqrt{m}`)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[..., in_features + 1]`` points to ``[..., out_features + 1]`` points."""
        _check_last(x, self.in_features + 1, "LorentzLinear")
        with _no_autocast(x):
            wd = _work_dtype(x)
            x = x.to(wd)
            k = self.curv.k(wd, x.device)
            b = None if self.bias is None else self.bias.to(wd)
            return _add_time(F.linear(x[..., 1:], self.weight.to(wd), b), k)

    def extra_repr(self) -> str:
        """Constructor arguments for ``repr``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class LorentzConv2d(nn.Module):
    r"""Lorentz 2-d convolution (HCNN) as one Euclidean convolution of the space channels.

    Input ``[B, C_in + 1, H, W]``: every pixel is a point of the hyperboloid, channel 0
    its time coordinate. Output ``[B, C_out + 1, H', W']``:

    .. math::
        y_s = \operatorname{conv2d}(x_s;\ W, b), \qquad
        y_0 = \sqrt{k + \textstyle\sum_c y_{s,c}^2}\quad\text{per output pixel}.

    **Equivalence with HCNN.** Bdeir et al. (2024) convolve by unfolding each
    :math:`k_h\times k_w` patch, joining its :math:`P = k_hk_w` points by direct
    concatenation :math:`\big(\sqrt{k + \sum_p\|x_{s,p}\|^2},\ x_{s,1},\dots,x_{s,P}\big)`
    (a point with :math:`PC_{in}` space dimensions) and applying a Lorentz linear layer.
    With :class:`LorentzLinear` (space part only) that is
    :math:`y_s = W_{\text{lin}}[x_{s,1};\dots;x_{s,P}] + b`, which is this convolution
    when :math:`W_{\text{lin}}[o, pC_{in} + c] = W[o, c, i, j]` with :math:`p = ik_w + j`
    (pixel-major, channel-minor order of the concatenation), i.e.
    ``W_lin = weight.permute(0, 2, 3, 1).reshape(C_out, -1)``. The two are the same
    function; :func:`_unfold_lorentz_conv2d` is the literal reference.

    **Padding at the origin.** Padded pixels are the origin :math:`(\sqrt k, 0)`: space
    part 0, so for the space-only convolution this is plain zero padding of the space
    channels (the padded time channel is never read).

    Parameters
    ----------
    in_channels, out_channels : int
        Space channels :math:`C_{in}, C_{out}`.
    kernel_size, stride, padding : int or (int, int)
        As in :class:`torch.nn.Conv2d` (padding at the origin).
    k : float or geoopt.Lorentz
        Curvature parameter, keyword-only, default 1.
    bias : bool
        Default True.

    Attributes
    ----------
    weight : Parameter
        ``[C_out, C_in, k_h, k_w]``, initialised like :class:`torch.nn.Conv2d`.
    bias : Parameter or None
        ``[C_out]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        *,
        k: float | Any = 1.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels) < 1:
            raise ValueError(
                f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"kernel_size and stride must be >= 1 and padding >= 0, got "
                f"{self.kernel_size}, {self.stride}, {self.padding}"
            )
        self.curv = _Curvature(k)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""``torch.nn.Conv2d``'s initialisation (bound :math:`1/\sqrt{C_{in}k_hk_w}`)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))

    def as_lorentz_linear(self) -> LorentzLinear:
        """The :class:`LorentzLinear` of HCNN's unfold form with this layer's weights (a copy)."""
        kh, kw = self.kernel_size
        lin = LorentzLinear(
            kh * kw * self.in_channels,
            self.out_channels,
            k=self.curv.manifold if self.curv.manifold is not None else self.curv._k_value,
            bias=self.bias is not None,
        ).to(dtype=self.weight.dtype, device=self.weight.device)
        with torch.no_grad():
            lin.weight.copy_(self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1))
            if self.bias is not None and lin.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``[B, C_in + 1, H, W]`` into ``[B, C_out + 1, H', W']``."""
        _check_image(x, self.in_channels + 1, "LorentzConv2d")
        with _no_autocast(x):
            wd = _work_dtype(x)
            x = x.to(wd)
            k = self.curv.k(wd, x.device)
            b = None if self.bias is None else self.bias.to(wd)
            ys = F.conv2d(x[:, 1:], self.weight.to(wd), b, self.stride, self.padding)
            # _add_time along dim 1: the time of every output pixel, in float64, rounded once
            hd = _time_dtype(ys)
            sq = torch.linalg.vector_norm(ys, dim=1, keepdim=True, dtype=hd).square()
            time = torch.sqrt(k.to(hd) + sq).to(wd)
            return torch.cat([time, ys], dim=1)

    def extra_repr(self) -> str:
        """Constructor arguments for ``repr``."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )


def _unfold_lorentz_conv2d(
    x: torch.Tensor,
    linear: LorentzLinear,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    r"""HCNN's Lorentz convolution, literally: pad at the origin, unfold, concatenate, linear.

    1. pad ``x`` ``[B, C + 1, H, W]`` with origin points (space 0, time :math:`\sqrt k`);
    2. unfold every :math:`k_h\times k_w` patch into its :math:`P` points ``[B, L, P, C + 1]``;
    3. direct concatenation (:func:`geomtools.manifolds.lorentz.concat`, pixel-major) into
       one point with :math:`PC` space dimensions;
    4. ``linear`` (a :class:`LorentzLinear` with ``in_features = P C``), reshaped to
       ``[B, C_out + 1, H', W']``.

    The reference for :class:`LorentzConv2d` (see its docstring for the weight map,
    :meth:`LorentzConv2d.as_lorentz_linear`); materialises the ``[B, L, PC + 1]`` patches.
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if x.dim() != 4:
        raise ValueError(f"expected [B, C + 1, H, W], got shape {tuple(x.shape)}")
    b, c1, h, w = x.shape
    if linear.in_features != kh * kw * (c1 - 1):
        raise ValueError(
            f"linear.in_features must be k_h k_w C = {kh * kw * (c1 - 1)}, got {linear.in_features}"
        )
    with _no_autocast(x):
        wd = _work_dtype(x)
        x = x.to(wd)
        k = linear.curv.k(wd, x.device)
        sk = torch.sqrt(k)
        if ph or pw:
            pad = (pw, pw, ph, ph)
            time = F.pad(x[:, :1] - sk, pad) + sk  # padded pixels: time sqrt(k)
            x = torch.cat([time, F.pad(x[:, 1:], pad)], dim=1)  # ... and space 0
        ho = (h + 2 * ph - kh) // sh + 1
        wo = (w + 2 * pw - kw) // sw + 1
        patches = F.unfold(x, (kh, kw), stride=(sh, sw))  # [B, (C+1) P, L], channel-major
        points = patches.reshape(b, c1, kh * kw, ho * wo).permute(0, 3, 2, 1)  # [B, L, P, C+1]
        joined = concat(list(points.unbind(dim=2)), k)  # [B, L, P C + 1]
        out = linear(joined)  # [B, L, C_out + 1]
        return out.transpose(1, 2).reshape(b, -1, ho, wo)


class LorentzBatchNorm(nn.Module):
    r"""Lorentz batch normalisation (HCNN, Bdeir et al. 2024).

    For points :math:`x_1,\dots,x_N` (the batch, and every pixel for images):

    1. mean :math:`\mu` = Lorentzian centroid (:func:`~geomtools.manifolds.lorentz.centroid`),
       Fréchet variance :math:`\sigma^2 = \frac1N\sum_i d(x_i, \mu)^2` (biased);
    2. move to the origin with the boost :math:`T_{\mu\to o}` (an isometry; on tangent
       vectors it is the parallel transport from :math:`\mu`) and take
       :math:`u_i = \log_o T_{\mu\to o}(x_i) = \mathrm{PT}_{\mu\to o}\log_\mu x_i`, so
       :math:`\|u_i\| = d(x_i, \mu)`;
    3. rescale :math:`u_i \leftarrow \gamma\,u_i/\sqrt{\sigma^2 + \epsilon}`;
    4. move to the learned mean: :math:`y_i = T_{o\to\beta}(\exp_o u_i) =
       \exp_\beta(\mathrm{PT}_{o\to\beta}u_i)`, :math:`\beta = \exp_o(b)`.

    So :math:`d(y_i, \beta) = \gamma\,d(x_i, \mu)/\sqrt{\sigma^2+\epsilon}` exactly and the
    mean squared distance of the outputs to :math:`\beta` is
    :math:`\gamma^2\sigma^2/(\sigma^2+\epsilon)`. The Lorentzian centroid of the outputs is
    :math:`\beta` exactly when the batch is symmetric about its centroid (pairs
    :math:`\exp_\mu(\pm v)`) and approximately otherwise (the centroid is not the Fréchet
    mean, and rescaling the tangent vectors moves it by :math:`O(\sigma^2)` skewness terms).

    ``gamma`` is one scalar (as in HCNN: the Fréchet variance is a scalar, and a
    per-coordinate scale of the tangent space at the origin is not invariant under its
    rotations).

    Running statistics, as in :class:`torch.nn.BatchNorm2d`: in training mode
    ``running_mean`` ← :math:`\log_o` of the centroid of :math:`(\exp_o(\text{running}),
    \mu)` with weights :math:`(1-m, m)`, ``running_var`` ←
    :math:`(1-m)\,\text{running\_var} + m\sigma^2`; evaluation mode uses them instead of the
    batch statistics. The running mean is stored as a tangent vector at the origin (space
    part, as HCNN does), which stays meaningful when a learnable ``k`` changes.

    Parameters
    ----------
    num_features : int
        Space dimension :math:`d`; input ``[B, d + 1]`` or ``[B, d + 1, H, W]``.
    k : float or geoopt.Lorentz
        Curvature parameter, keyword-only, default 1.
    momentum : float
        :math:`m\in[0, 1]` (default 0.1).
    eps : float
        :math:`\epsilon` added to the variance (default 1e-5).

    Attributes
    ----------
    gamma : Parameter
        ``[]``, initialised to 1.
    beta : Parameter
        ``[d]``: :math:`b`, the learned mean's tangent vector at the origin (space part);
        zeros, i.e. :math:`\beta = o`. :meth:`mean_point` returns :math:`\beta`.
    running_mean : buffer ``[d]``, running_var : buffer ``[]``
        Initialised to 0 (the origin) and 1.
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(
        self, num_features: int, *, k: float | Any = 1.0, momentum: float = 0.1, eps: float = 1e-5
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps!r}")
        self.num_features, self.momentum, self.eps = num_features, float(momentum), float(eps)
        self.curv = _Curvature(k)
        self.gamma = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(()))

    def mean_point(self) -> torch.Tensor:
        r"""The learned mean :math:`\beta = \exp_o(b)`, ``[d + 1]``."""
        k = self.curv.k(self.beta.dtype, self.beta.device)
        return _expmap0(self.beta, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``[B, d + 1]`` or ``[B, d + 1, H, W]`` points (same shape out)."""
        d1 = self.num_features + 1
        if x.dim() not in (2, 4) or x.shape[1] != d1:
            raise ValueError(
                f"LorentzBatchNorm: expected [B, {d1}] or [B, {d1}, H, W] (time first), "
                f"got shape {tuple(x.shape)}"
            )
        with _no_autocast(x):
            wd = _work_dtype(x)
            image = x.dim() == 4
            flat = (x.movedim(1, -1) if image else x).reshape(-1, d1).to(wd)
            k = self.curv.k(wd, x.device)
            if self.training:
                if flat.shape[0] < 2:
                    raise ValueError(
                        "LorentzBatchNorm needs more than one point per batch in training mode"
                    )
                mu = centroid(flat, k)
            else:
                mu = _expmap0(self.running_mean.to(wd), k)
            origin = torch.zeros_like(mu)
            origin[0] = torch.sqrt(k)
            u = _logmap0(_boost(flat, mu, origin, k), k)  # [N, d]
            var = (u * u).sum(dim=-1).mean() if self.training else self.running_var.to(wd)
            u = u * (self.gamma.to(wd) / torch.sqrt(var + self.eps))
            beta = _expmap0(self.beta.to(wd), k)
            y = _boost(_expmap0(u, k), origin, beta, k)
            if self.training:
                self._update_running(mu.detach(), var.detach(), k.detach())
            if image:
                y = y.reshape(x.shape[0], *x.shape[2:], d1).movedim(-1, 1).contiguous()
            return y

    @torch.no_grad()
    def _update_running(self, mu: torch.Tensor, var: torch.Tensor, k: torch.Tensor) -> None:
        m = self.momentum
        running = _expmap0(self.running_mean.to(mu.dtype), k)
        weights = torch.tensor([1.0 - m, m], dtype=mu.dtype, device=mu.device)
        new = centroid(torch.stack([running, mu]), k, weights)
        self.running_mean.copy_(_logmap0(new, k))
        self.running_var.copy_((1.0 - m) * self.running_var + m * var)

    def extra_repr(self) -> str:
        """Constructor arguments for ``repr``."""
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}"


class LorentzMLR(nn.Module):
    r"""Lorentz multinomial logistic regression (Bdeir et al. 2024).

    Class :math:`c` owns the Lorentz hyperplane through
    :math:`p_c = \exp_o(a_c\,\hat z_c)` (distance :math:`a_c` from the origin along
    :math:`\hat z_c = z_c/\|z_c\|`) with normal
    :math:`w_c = \mathrm{PT}_{o\to p_c}(0, z_c) =
    \big(\sinh(a_c/\sqrt k)\,\|z_c\|,\ \cosh(a_c/\sqrt k)\,z_c\big)`, i.e.
    :math:`H_c = \{x : \langle w_c, x\rangle_{\mathcal L} = 0\}`. Its logit is the signed
    distance to :math:`H_c` times :math:`\|w_c\|_{\mathcal L} = \|z_c\|`:

    .. math::
        v_c(x) = \sqrt k\,\|z_c\|\,
        \operatorname{asinh}\!\Big(\frac{\alpha_c}{\sqrt k\,\|z_c\|}\Big),\qquad
        \alpha_c = \langle w_c, x\rangle_{\mathcal L}
        = \cosh\!\big(\tfrac{a_c}{\sqrt k}\big)\langle z_c, x_s\rangle
          - \sinh\!\big(\tfrac{a_c}{\sqrt k}\big)\|z_c\|\,x_0 .

    (The paper writes :math:`\tfrac{1}{\sqrt{-K}}\operatorname{sign}(\alpha)\,\beta\,
    |\operatorname{asinh}(\sqrt{-K}\alpha/\beta)|` with :math:`K = -1/k` and
    :math:`\beta = \sqrt{\|\cosh(\cdot)z\|^2 - (\sinh(\cdot)\|z\|)^2} = \|z\|`.)
    One GEMM :math:`x_s z^\top` per batch.

    Parameters
    ----------
    num_features : int
        Space dimension :math:`d`; input ``[..., d + 1]``.
    num_classes : int
        Output ``[..., num_classes]`` (Euclidean logits).
    k : float or geoopt.Lorentz
        Curvature parameter, keyword-only, default 1.

    Attributes
    ----------
    a : Parameter ``[C]``, z : Parameter ``[C, d]``
        Both uniform in :math:`\pm 1/\sqrt d` (HCNN's initialisation).
    """

    def __init__(self, num_features: int, num_classes: int, *, k: float | Any = 1.0) -> None:
        super().__init__()
        if min(num_features, num_classes) < 1:
            raise ValueError(
                f"num_features and num_classes must be positive, got {num_features}, {num_classes}"
            )
        self.num_features, self.num_classes = num_features, num_classes
        self.curv = _Curvature(k)
        self.a = nn.Parameter(torch.empty(num_classes))
        self.z = nn.Parameter(torch.empty(num_classes, num_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Uniform :math:`\pm 1/\sqrt d` for ``a`` and ``z``."""
        bound = 1.0 / math.sqrt(self.num_features)
        nn.init.uniform_(self.a, -bound, bound)
        nn.init.uniform_(self.z, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., num_classes]`` of points ``[..., num_features + 1]``."""
        _check_last(x, self.num_features + 1, "LorentzMLR")
        with _no_autocast(x):
            wd = _work_dtype(x)
            x = x.to(wd)
            sk = torch.sqrt(self.curv.k(wd, x.device))
            a, z = self.a.to(wd), self.z.to(wd)
            z_norm = torch.linalg.vector_norm(z, dim=-1).clamp_min(torch.finfo(wd).tiny)
            w_time = torch.sinh(a / sk) * z_norm  # [C]: time part of the normal w_c
            alpha = torch.cosh(a / sk) * (x[..., 1:] @ z.T) - w_time * x[..., :1]
            return sk * z_norm * torch.asinh(alpha / (sk * z_norm))

    def extra_repr(self) -> str:
        """Constructor arguments for ``repr``."""
        return f"num_features={self.num_features}, num_classes={self.num_classes}"


class LorentzGlobalAvgPool(nn.Module):
    r"""Global average pooling: the Lorentzian centroid of each sample's pixels.

    ``[B, d + 1, H, W]`` → ``[B, d + 1]``, :math:`y_b =
    \operatorname{centroid}(\{x_{b,ij}\})` (HCNN's global pooling; the centroid is
    :func:`~geomtools.manifolds.lorentz.centroid`).

    Parameters
    ----------
    k : float or geoopt.Lorentz, optional
        Curvature parameter, keyword-only. When omitted (the default) it is estimated as
        the mean of :math:`-\langle x, x\rangle_{\mathcal L}` over the whole input, which
        therefore must lie on one hyperboloid; pass ``k`` to normalise onto it exactly.
    """

    def __init__(self, *, k: float | Any = None) -> None:
        super().__init__()
        self.curv = None if k is None else _Curvature(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``[B, d + 1, H, W]`` into ``[B, d + 1]``."""
        if x.dim() != 4 or x.shape[1] < 2 or x.shape[2] * x.shape[3] == 0:
            raise ValueError(
                "LorentzGlobalAvgPool: expected [B, d + 1, H, W] with d >= 1 and H W > 0, "
                f"got shape {tuple(x.shape)}"
            )
        with _no_autocast(x):
            wd = _work_dtype(x)
            pts = x.to(wd).flatten(2).transpose(1, 2)  # [B, HW, d + 1]
            if self.curv is None:
                k = -minkowski_inner(pts, pts).mean()
            else:
                k = self.curv.k(wd, x.device)
            return centroid(pts, k)


class EuclideanToLorentz(nn.Module):
    r"""Euclidean features onto the hyperboloid: clip the norm, then :math:`\exp_o`.

    .. math::
        u = \min\Big(1, \frac{r}{\|x\|}\Big)\,x, \qquad
        y = \exp_o((0, u)) = \Big(\sqrt k\cosh\frac{\|u\|}{\sqrt k},\
        \sqrt k\sinh\frac{\|u\|}{\sqrt k}\,\frac{u}{\|u\|}\Big),

    ``[..., d]`` → ``[..., d + 1]``. Feature clipping (Guo et al. 2022) bounds the
    distance of every output to the origin by :math:`r`, which keeps hyperbolic networks
    away from the vanishing gradients of points near the boundary. Inputs with
    :math:`\|x\| \le r` are not changed by the clip (scale exactly 1), so their output is
    exactly :math:`\exp_o(x)`; the gradient is finite at :math:`x = 0`.

    Parameters
    ----------
    k : float or geoopt.Lorentz
        Curvature parameter, keyword-only, default 1.
    clip_r : float or None
        Clipping radius :math:`r > 0` (default 1); ``None`` disables clipping.
    """

    def __init__(self, *, k: float | Any = 1.0, clip_r: float | None = 1.0) -> None:
        super().__init__()
        if clip_r is not None and not (math.isfinite(clip_r) and clip_r > 0):
            raise ValueError(f"clip_r must be positive (or None), got {clip_r!r}")
        self.clip_r = None if clip_r is None else float(clip_r)
        self.curv = _Curvature(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[..., d]`` Euclidean features to ``[..., d + 1]`` points."""
        if x.dim() < 1 or x.shape[-1] < 1:
            raise ValueError(f"EuclideanToLorentz: expected [..., d], got shape {tuple(x.shape)}")
        with _no_autocast(x):
            wd = _work_dtype(x)
            x = x.to(wd)
            k = self.curv.k(wd, x.device)
            if self.clip_r is not None:
                norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
                x = x * (self.clip_r / norm.clamp_min(self.clip_r))
            return _expmap0(x, k)

    def extra_repr(self) -> str:
        """Constructor arguments for ``repr``."""
        return f"clip_r={self.clip_r}"
