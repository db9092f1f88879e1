"""geomtools.nn.lorentz: Lorentz linear, conv, batch norm, MLR, pooling, Euclidean → Lorentz."""

from __future__ import annotations

import math

import geoopt
import pytest
import torch
import torch.nn.functional as F

from geomtools.manifolds.lorentz import centroid, minkowski_inner
from geomtools.nn.lorentz import (
    EuclideanToLorentz,
    LorentzBatchNorm,
    LorentzConv2d,
    LorentzGlobalAvgPool,
    LorentzLinear,
    LorentzMLR,
    _boost,
    _expmap0,
    _logmap0,
    _unfold_lorentz_conv2d,
)

F64 = torch.float64
KS = [0.5, 1.0, 2.0]
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def _points(
    k: float, *shape: int, scale: float = 0.4, seed: int = 0, dtype: torch.dtype = F64
) -> torch.Tensor:
    """Points ``[*shape[:-1], shape[-1] + 1]`` at distance ~ scale·sqrt(k) from the origin.

    Built with geoopt in float64; in float32 the space part is rounded and the time
    recomputed in float64, so the inputs themselves are on the hyperboloid to rounding.
    """
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
    g = torch.Generator().manual_seed(seed)
    *lead, d = shape
    v = scale * math.sqrt(k) * torch.randn(*lead, d, generator=g, dtype=F64) / math.sqrt(d)
    x = man.expmap0(torch.cat([torch.zeros(*lead, 1, dtype=F64), v], dim=-1))
    space = x[..., 1:].to(dtype)
    time = torch.sqrt(k + (space.double() ** 2).sum(-1, keepdim=True)).to(dtype)
    return torch.cat([time, space], dim=-1)


def _image(
    k: float, b: int, c: int, h: int, w: int, *, seed: int = 0, dtype: torch.dtype = F64
) -> torch.Tensor:
    """``[B, C + 1, H, W]`` image of points (channel 0 the time)."""
    return _points(k, b, h, w, c, seed=seed, dtype=dtype).permute(0, 3, 1, 2).contiguous()


def _off_manifold(y: torch.Tensor, k: float, dim: int = -1) -> float:
    """max |<y, y>_L + k| / k, evaluated in float64 on the stored coordinates."""
    y = y.detach().double().movedim(dim, -1)
    return float((minkowski_inner(y, y) + k).abs().max() / k)


def _dist(x: torch.Tensor, y: torch.Tensor, k: float) -> torch.Tensor:
    return geoopt.Lorentz(k=torch.tensor(k, dtype=x.dtype)).dist(x, y)


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("k", KS)
def test_private_maps_match_geoopt_and_boost_is_an_isometry(k: float) -> None:
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
    kt = torch.tensor(k, dtype=F64)
    u = torch.randn(6, 4, dtype=F64) * torch.tensor([1e-9, 1e-5, 1e-3, 0.3, 1.0, 3.0])[:, None]
    x = _expmap0(u, kt)
    ref = man.expmap0(torch.cat([torch.zeros(6, 1, dtype=F64), u], -1))
    torch.testing.assert_close(x[2:], ref[2:], rtol=1e-13, atol=1e-13)  # geoopt clamps tiny u
    torch.testing.assert_close(_logmap0(x, kt), u, rtol=1e-12, atol=1e-20)
    a, b = _points(k, 2, 4, scale=1.0, seed=1)
    torch.testing.assert_close(_boost(a[None], a, b, kt)[0], b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_dist(_boost(x, a, b, kt), b, k), _dist(x, a, k))


# ----------------------------------------------------------------------------- manifold


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("k", KS)
def test_every_layer_outputs_points_on_the_hyperboloid(k: float, dtype: torch.dtype) -> None:
    tol = TOL[dtype]
    torch.manual_seed(0)
    x = _points(k, 64, 8, dtype=dtype)
    img = _image(k, 4, 5, 6, 6, dtype=dtype)
    assert _off_manifold(LorentzLinear(8, 6, k=k).to(dtype)(x), k) < tol
    conv = LorentzConv2d(5, 7, 3, stride=2, padding=1, k=k).to(dtype)
    assert _off_manifold(conv(img), k, dim=1) < tol
    for bn, inp, dim in ((LorentzBatchNorm(8, k=k), x, -1), (LorentzBatchNorm(5, k=k), img, 1)):
        bn = bn.to(dtype)
        with torch.no_grad():  # outputs within ~1.5 sqrt(k) of the origin (see the module doc)
            bn.gamma.fill_(0.5 * math.sqrt(k))
            bn.beta.normal_(0.0, 0.2 * math.sqrt(k / bn.num_features))
        y = bn(inp)
        assert y.dtype == dtype and _off_manifold(y, k, dim=dim) < tol
    assert _off_manifold(LorentzGlobalAvgPool()(img), k) < tol
    assert _off_manifold(LorentzGlobalAvgPool(k=k)(img), k) < tol
    e = EuclideanToLorentz(k=k)(3.0 * torch.randn(256, 16, dtype=dtype))
    assert e.dtype == dtype and _off_manifold(e, k) < tol


def test_learnable_curvature_is_read_at_forward_time_and_gets_gradients() -> None:
    man = geoopt.Lorentz(k=1.0, learnable=True)
    lin = LorentzLinear(4, 3, k=man)
    assert any(p is man.k for p in lin.parameters())
    x = _points(1.0, 10, 4, dtype=torch.float32)
    lin(x)[..., 0].sum().backward()
    assert man.k.grad is not None and torch.isfinite(man.k.grad) and float(man.k.grad) != 0
    with torch.no_grad():
        man.k.fill_(2.0)
    assert _off_manifold(lin(_points(2.0, 10, 4, dtype=torch.float32)), 2.0) < 1e-6


# ----------------------------------------------------------------------------- linear, conv


def test_linear_acts_on_the_space_part() -> None:
    lin = LorentzLinear(5, 3, k=2.0).double()
    x = _points(2.0, 7, 5)
    y = lin(x)
    torch.testing.assert_close(y[..., 1:], x[..., 1:] @ lin.weight.T + lin.bias)
    torch.testing.assert_close(y[..., 0], torch.sqrt(2.0 + (y[..., 1:] ** 2).sum(-1)))


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"), [(3, 1, 1), ((3, 2), 2, (1, 0)), (1, 1, 0), (2, 3, 2)]
)
@pytest.mark.parametrize("k", KS)
def test_conv_equals_unfold_concatenate_linear_reference(
    k: float, kernel: int | tuple[int, int], stride: int, padding: int | tuple[int, int]
) -> None:
    torch.manual_seed(1)
    conv = LorentzConv2d(3, 4, kernel, stride, padding, k=k).double()
    x = _image(k, 2, 3, 7, 6, seed=2)
    y = conv(x)
    ref = _unfold_lorentz_conv2d(x, conv.as_lorentz_linear(), kernel, stride, padding)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    # float32: same function, different summation order
    conv32, x32 = conv.float(), x.float()
    ref32 = _unfold_lorentz_conv2d(x32, conv32.as_lorentz_linear(), kernel, stride, padding)
    torch.testing.assert_close(conv32(x32), ref32, rtol=1e-5, atol=1e-5)


def test_conv_weight_map_and_padding_at_the_origin() -> None:
    k = 0.5
    conv = LorentzConv2d(2, 3, (2, 3), padding=(1, 2), k=k).double()
    lin = conv.as_lorentz_linear()
    # W_lin[o, p C + c] = W[o, c, i, j], p = i k_w + j
    o, c, i, j = 2, 1, 1, 2
    assert lin.weight[o, (i * 3 + j) * 2 + c] == conv.weight[o, c, i, j]
    x = _image(k, 2, 2, 4, 5, seed=3)
    # padding = explicit origin pixels (time sqrt(k), space 0), then no padding
    padded = F.pad(x, (2, 2, 1, 1))
    padded[:, 0] = torch.where(padded[:, 0] == 0, math.sqrt(k), padded[:, 0])
    unpadded = LorentzConv2d(2, 3, (2, 3), k=k).double()
    unpadded.load_state_dict(conv.state_dict())
    torch.testing.assert_close(conv(x), unpadded(padded), rtol=1e-14, atol=1e-14)


# ----------------------------------------------------------------------------- batch norm


def _bn(k: float, d: int = 6, **kw: float) -> LorentzBatchNorm:
    bn = LorentzBatchNorm(d, k=k, **kw).double()
    with torch.no_grad():
        bn.gamma.fill_(0.7)
        bn.beta.copy_(0.5 * torch.randn(d, generator=torch.Generator().manual_seed(9)))
    return bn


@pytest.mark.parametrize("k", KS)
def test_bn_train_output_has_mean_beta_and_frechet_variance_gamma2(k: float) -> None:
    bn = _bn(k)
    beta = bn.mean_point()
    # symmetric batch exp_mu(+-v): its centroid is mu exactly, and so is the output's
    mu = _points(k, 6, scale=1.5, seed=4)
    v = torch.cat([torch.zeros(20, 1, dtype=F64), 0.6 * torch.randn(20, 6, dtype=F64)], -1)
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
    v = man.transp0(mu, v)
    x = man.expmap(mu.expand(40, -1), torch.cat([v, -v]))
    y = bn(x)
    torch.testing.assert_close(centroid(y, k), beta, rtol=1e-10, atol=1e-10)
    var_in = (_dist(x, mu, k) ** 2).mean()
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var_in)
    scale2 = 0.7**2 / (var_in + bn.eps)
    torch.testing.assert_close(_dist(y, beta, k), _dist(x, mu, k) * math.sqrt(scale2))
    frechet_var = (_dist(y, beta, k) ** 2).mean()
    torch.testing.assert_close(frechet_var, 0.7**2 * var_in / (var_in + bn.eps))
    torch.testing.assert_close(frechet_var, torch.tensor(0.49, dtype=F64), rtol=1e-4, atol=0)
    # generic (skewed) batch: mean squared distance to beta exact, centroid close to beta
    x = _points(k, 64, 6, scale=0.8, seed=5)
    y = bn(x)
    frechet_var = (_dist(y, beta, k) ** 2).mean()
    torch.testing.assert_close(frechet_var, torch.tensor(0.49, dtype=F64), rtol=1e-4, atol=0)
    assert float(_dist(centroid(y.detach(), k), beta.detach(), k)) < 0.02 * math.sqrt(k)


def test_bn_eval_uses_running_stats_and_state_dict_round_trips() -> None:
    k = 2.0
    bn = _bn(k, momentum=1.0)  # running stats := last batch statistics
    x = _points(k, 32, 6, scale=1.0, seed=6)
    y_train = bn(x)
    bn.eval()
    buffers = {n: b.clone() for n, b in bn.named_buffers()}
    torch.testing.assert_close(bn(x), y_train, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(bn(x[:5]), y_train[:5], rtol=1e-10, atol=1e-10)  # no batch stats
    for n, b in bn.named_buffers():
        assert torch.equal(b, buffers[n])  # eval does not update
    # momentum 0.1 from the initial state: centroid of (origin, mu) weighted (0.9, 0.1)
    bn2 = _bn(k)
    bn2(x)
    mu = centroid(x, k)
    expected = centroid(torch.stack([_expmap0(torch.zeros(6, dtype=F64), torch.tensor(k)), mu]),
                        k, torch.tensor([0.9, 0.1], dtype=F64))  # fmt: skip
    torch.testing.assert_close(_expmap0(bn2.running_mean, torch.tensor(k, dtype=F64)), expected)
    bn2(_points(k, 32, 6, scale=0.5, seed=7))
    bn2.eval()
    fresh = LorentzBatchNorm(6, k=k).double().eval()
    fresh.load_state_dict(bn2.state_dict())
    assert set(bn2.state_dict()) == {"gamma", "beta", "running_mean", "running_var"}
    torch.testing.assert_close(fresh(x), bn2(x), rtol=0, atol=0)


def test_bn_image_layout_normalises_over_batch_and_pixels() -> None:
    k = 1.0
    img = _image(k, 3, 4, 5, 2, seed=8)
    bn_a, bn_b = _bn(k, 4), _bn(k, 4)
    y = bn_a(img)
    flat = bn_b(img.permute(0, 2, 3, 1).reshape(-1, 5))
    torch.testing.assert_close(y, flat.reshape(3, 5, 2, 5).permute(0, 3, 1, 2))
    torch.testing.assert_close(bn_a.running_mean, bn_b.running_mean)


# ----------------------------------------------------------------------------- MLR


@pytest.mark.parametrize("k", KS)
def test_mlr_equals_signed_distance_to_explicit_hyperplanes_times_normal_norm(k: float) -> None:
    d, c = 5, 4
    mlr = LorentzMLR(d, c, k=geoopt.Lorentz(k=k)).double()
    with torch.no_grad():
        mlr.a.copy_(torch.tensor([-1.0, -0.2, 0.4, 1.3]))
    x = _points(k, 30, d, scale=1.5, seed=10)
    logits = mlr(x)
    assert logits.shape == (30, c)
    # brute force: hyperplane through p_c = exp_o(a_c z_c/|z_c|) with normal PT_{o->p_c}(0, z_c)
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
    z = mlr.z.detach()
    zt = torch.cat([torch.zeros(c, 1, dtype=F64), z], -1)
    p = man.expmap0(mlr.a.detach()[:, None] * zt / z.norm(dim=-1, keepdim=True))
    w = man.transp0(p, zt)  # [C, d + 1]
    torch.testing.assert_close(minkowski_inner(w, p), torch.zeros(c, dtype=F64), atol=1e-12, rtol=0)
    w_norm = torch.sqrt(minkowski_inner(w, w))
    torch.testing.assert_close(w_norm, z.norm(dim=-1))
    for ci in range(c):
        t = minkowski_inner(x, w[ci]) / w_norm[ci]
        # closest point of the hyperplane: x without its w-component, back on the hyperboloid
        foot = x - t[:, None] * w[ci] / w_norm[ci]
        foot = foot * math.sqrt(k) / torch.sqrt(-minkowski_inner(foot, foot))[:, None]
        torch.testing.assert_close(minkowski_inner(foot, w[ci]), torch.zeros(30, dtype=F64))
        dist = man.dist(x, foot)
        # no point of the hyperplane is closer: move the foot along the hyperplane
        other = man.expmap(foot, man.proju(foot, torch.randn(30, d + 1, dtype=F64)) * 0.3)
        other = other - minkowski_inner(other, w[ci])[:, None] * w[ci] / w_norm[ci] ** 2
        other = other * math.sqrt(k) / torch.sqrt(-minkowski_inner(other, other))[:, None]
        assert bool((man.dist(x, other) >= dist - 1e-12).all())
        brute = torch.sign(t) * dist * w_norm[ci]
        torch.testing.assert_close(logits[:, ci], brute, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- pool, E→L


@pytest.mark.parametrize("k", KS)
def test_pool_of_a_constant_image_is_that_point(k: float) -> None:
    pt = _points(k, 3, 6, scale=1.2, seed=11)  # [3, 7]
    img = pt[:, :, None, None].expand(3, 7, 4, 5)
    for pool in (LorentzGlobalAvgPool(), LorentzGlobalAvgPool(k=k)):
        torch.testing.assert_close(pool(img), pt, rtol=1e-13, atol=1e-13)
    img = _image(k, 2, 3, 4, 4, seed=12)
    expected = centroid(img.flatten(2).transpose(1, 2), k)
    torch.testing.assert_close(LorentzGlobalAvgPool(k=k)(img), expected)


@pytest.mark.parametrize("k", KS)
def test_euclidean_to_lorentz_clips_and_is_exact_below_the_radius(k: float) -> None:
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
    layer = EuclideanToLorentz(k=k, clip_r=1.5)
    x = torch.randn(50, 6, dtype=F64)
    x = x / x.norm(dim=-1, keepdim=True) * torch.linspace(0.01, 5.0, 50, dtype=F64)[:, None]
    y = layer(x)
    o = man.origin(6 + 1, dtype=F64)
    small = x.norm(dim=-1) <= 1.5
    ref = man.expmap0(torch.cat([torch.zeros(50, 1, dtype=F64), x], -1))
    torch.testing.assert_close(y[small], ref[small], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(_logmap0(y[small], torch.tensor(k)), x[small], rtol=1e-12, atol=0)
    dist = man.dist(y, o.expand_as(y))
    torch.testing.assert_close(dist[~small], torch.full_like(dist[~small], 1.5))
    direction = y[:, 1:] / y[:, 1:].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(direction, x / x.norm(dim=-1, keepdim=True))
    unclipped = EuclideanToLorentz(k=k, clip_r=None)(x)
    torch.testing.assert_close(unclipped, ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- gradients, amp


def _all_layers(k: float) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    x = _points(k, 16, 6, dtype=torch.float32, seed=13)
    img = _image(k, 2, 3, 5, 5, dtype=torch.float32, seed=14)
    bn_vec, bn_img = LorentzBatchNorm(6, k=k), LorentzBatchNorm(3, k=k)
    with torch.no_grad():  # outputs within ~1.5 sqrt(k) of the origin (see the module doc)
        bn_vec.gamma.fill_(0.5 * math.sqrt(k))
        bn_img.gamma.fill_(0.5 * math.sqrt(k))
    return [
        (LorentzLinear(6, 4, k=k), x),
        (LorentzConv2d(3, 4, 3, padding=1, k=k), img),
        (bn_vec, x),
        (bn_img, img),
        (LorentzMLR(6, 5, k=k), x),
        (LorentzGlobalAvgPool(k=k), img),
        (EuclideanToLorentz(k=k), torch.cat([torch.zeros(1, 6), 3 * torch.randn(15, 6)])),
    ]


@pytest.mark.parametrize("k", KS)
def test_gradients_are_finite(k: float) -> None:
    for layer, x in _all_layers(k):
        x = x.clone().requires_grad_(True)
        (layer(x) ** 2).sum().backward()
        assert x.grad is not None and bool(torch.isfinite(x.grad).all()), type(layer).__name__
        for name, p in layer.named_parameters():
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


@pytest.mark.parametrize("k", KS)
def test_autocast_bfloat16_keeps_float32_geometry(k: float) -> None:
    for layer, x in _all_layers(k):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for inp in (x, x.bfloat16()):
                y = layer(inp)
                assert y.dtype == torch.float32, type(layer).__name__
                assert bool(torch.isfinite(y).all())
                if not isinstance(layer, LorentzMLR):
                    assert _off_manifold(y, k, dim=1 if y.dim() == 4 else -1) < 1e-6


# ----------------------------------------------------------------------------- errors


def test_wrong_shapes_and_arguments_raise() -> None:
    x = _points(1.0, 4, 6, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\[\.\.\., 5\]"):
        LorentzLinear(4, 3)(x)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        LorentzConv2d(3, 2, 3)(torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        LorentzConv2d(3, 2, 3)(torch.zeros(4, 5, 5))
    with pytest.raises(ValueError, match="LorentzBatchNorm"):
        LorentzBatchNorm(5)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="more than one point"):
        LorentzBatchNorm(6)(x[:1])
    with pytest.raises(ValueError, match="LorentzMLR"):
        LorentzMLR(5, 3)(x)
    with pytest.raises(ValueError, match="LorentzGlobalAvgPool"):
        LorentzGlobalAvgPool()(x)
    with pytest.raises(ValueError, match="k must be positive"):
        LorentzLinear(2, 2, k=-1.0)
    with pytest.raises(TypeError, match=r"geoopt\.Lorentz"):
        LorentzLinear(2, 2, k=geoopt.Sphere())
    with pytest.raises(ValueError, match="clip_r"):
        EuclideanToLorentz(clip_r=0.0)
    with pytest.raises(ValueError, match="momentum"):
        LorentzBatchNorm(3, momentum=1.5)
