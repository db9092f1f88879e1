"""RiemannianAdamW: PyTorch parity, geoopt parity, geometric decay, refusals, resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import geoopt
import pytest
import torch

from geomtools.manifolds import Grassmann
from geomtools.manifolds.lorentz import centroid
from geomtools.nn import GrassmannHead, grassmann_param_groups
from geomtools.optim import RiemannianAdamW

F64 = torch.float64


def _euclid_run(
    opt_factory: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
    steps: int = 100,
    groups: tuple[dict[str, Any], dict[str, Any]] = ({}, {}),
    sign: float = 1.0,
    manifold_param: bool = False,
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, 4, generator=g, dtype=F64)
    b0 = torch.randn(4, generator=g, dtype=F64)
    if manifold_param:
        w: torch.nn.Parameter = geoopt.ManifoldParameter(w0, manifold=geoopt.Euclidean(ndim=2))
    else:
        w = torch.nn.Parameter(w0)
    b = torch.nn.Parameter(b0)
    opt = opt_factory([{"params": [w], **groups[0]}, {"params": [b], **groups[1]}])
    for _ in range(steps):
        x = torch.randn(8, 5, generator=g, dtype=F64)
        opt.zero_grad()
        (sign * ((x @ w + b).sin() ** 2).sum()).backward()
        opt.step()
    return [w.detach().clone(), b.detach().clone()]


FLAG_CASES = [
    {"lr": 1e-2},
    {"lr": 3e-2, "weight_decay": 0.1},
    {"lr": 1e-2, "weight_decay": 0.05, "amsgrad": True},
    {"lr": 1e-2, "weight_decay": 0.05, "maximize": True},
    {"lr": 2e-2, "betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.0},
]


@pytest.mark.parametrize("kwargs", FLAG_CASES)
@pytest.mark.parametrize("manifold_param", [False, True])
def test_matches_torch_adamw_on_euclidean(kwargs: dict[str, Any], manifold_param: bool) -> None:
    ref = _euclid_run(lambda gr: torch.optim.AdamW(gr, foreach=False, **kwargs))
    ours = _euclid_run(lambda gr: RiemannianAdamW(gr, **kwargs), manifold_param=manifold_param)
    start = _euclid_run(lambda gr: RiemannianAdamW(gr, **kwargs), steps=0)
    for r, o, s in zip(ref, ours, start, strict=True):
        assert (r - s).abs().max() > 1e-2  # the runs really moved
        torch.testing.assert_close(o, r, rtol=0, atol=1e-12)


def test_matches_torch_adamw_with_per_group_settings() -> None:
    groups = ({"lr": 5e-2, "weight_decay": 0.2}, {"amsgrad": True, "betas": (0.8, 0.99)})
    ref = _euclid_run(lambda gr: torch.optim.AdamW(gr, lr=1e-2), groups=groups)
    ours = _euclid_run(lambda gr: RiemannianAdamW(gr, lr=1e-2), groups=groups)
    for r, o in zip(ref, ours, strict=True):
        torch.testing.assert_close(o, r, rtol=0, atol=1e-12)


def test_maximize_is_minimising_the_negative() -> None:
    up = _euclid_run(lambda gr: RiemannianAdamW(gr, lr=1e-2, maximize=True), sign=1.0)
    down = _euclid_run(lambda gr: RiemannianAdamW(gr, lr=1e-2), sign=-1.0)
    plain = _euclid_run(lambda gr: RiemannianAdamW(gr, lr=1e-2), sign=1.0)
    for a, b, c in zip(up, down, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
        assert (a - c).abs().max() > 1e-2


# ---------------------------------------------------------------- manifold parameters
def _manifold_point(name: str, g: torch.Generator) -> tuple[geoopt.Manifold, torch.Tensor]:
    if name == "grassmann":
        man: geoopt.Manifold = Grassmann()
        x = man.projx(torch.randn(2, 7, 3, generator=g, dtype=F64))
    elif name == "sphere":
        man = geoopt.Sphere()
        x = man.projx(torch.randn(3, 5, generator=g, dtype=F64))
    elif name == "stiefel":
        man = geoopt.EuclideanStiefel()
        x = man.projx(torch.randn(6, 2, generator=g, dtype=F64))
    elif name.startswith("lorentz"):
        k = float(name.split("-")[1])
        man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
        x = man.expmap0(
            man.proju(man.origin(4, 5, dtype=F64), torch.randn(4, 5, generator=g, dtype=F64))
        )
    else:  # pragma: no cover - test table typo
        raise KeyError(name)
    return man, x


def _loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((x - target) ** 2).sum() + (x**3).sum() * 0.1


def _manifold_run(
    opt_factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    name: str,
    steps: int,
) -> tuple[geoopt.Manifold, geoopt.ManifoldParameter, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    man, x0 = _manifold_point(name, g)
    target = torch.randn(x0.shape, generator=g, dtype=F64)
    p = geoopt.ManifoldParameter(x0.clone(), manifold=man)
    opt = opt_factory([p])
    trail = []
    for _ in range(steps):
        opt.zero_grad()
        _loss(p, target).backward()
        opt.step()
        trail.append(p.detach().clone())
    return man, p, trail


MANIFOLDS = ["grassmann", "sphere", "stiefel", "lorentz-0.5", "lorentz-1", "lorentz-2"]


@pytest.mark.parametrize("name", MANIFOLDS)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_without_decay_equals_geoopt_riemannian_adam(name: str, amsgrad: bool) -> None:
    kw = {"lr": 1e-2, "amsgrad": amsgrad}
    _, p_ref, _ = _manifold_run(lambda ps: geoopt.optim.RiemannianAdam(ps, **kw), name, 100)
    _, p_ours, _ = _manifold_run(lambda ps: RiemannianAdamW(ps, weight_decay=0.0, **kw), name, 100)
    _, p0, _ = _manifold_run(lambda ps: RiemannianAdamW(ps, weight_decay=0.0), name, 0)
    assert (p_ref - p0).abs().max() > 1e-2
    torch.testing.assert_close(p_ours.detach(), p_ref.detach(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", MANIFOLDS)
def test_points_stay_on_manifold(name: str) -> None:
    wd = 0.1 if name.startswith("lorentz") else 0.0
    man, _, trail = _manifold_run(
        lambda ps: RiemannianAdamW(ps, lr=5e-2, weight_decay=wd, stabilize=50), name, 200
    )
    for x in [*trail[::20], trail[-1]]:
        ok, reason = man.check_point_on_manifold(x, atol=1e-10, rtol=1e-10, explain=True)
        assert ok, reason


def test_grassmann_orthonormal_over_1000_steps_with_stabilize() -> None:
    g = torch.Generator().manual_seed(5)
    a = torch.randn(20, 20, generator=g, dtype=F64)
    a = a @ a.T
    man = Grassmann()
    y = geoopt.ManifoldParameter(man.random(20, 3, dtype=F64, generator=g), manifold=man)
    opt = RiemannianAdamW([y], lr=0.05, weight_decay=0.0, stabilize=10)
    eye = torch.eye(3, dtype=F64)
    for i in range(1000):
        opt.zero_grad()
        noise = 0.1 * torch.randn(20, 3, generator=g, dtype=F64)
        (-(y * (a @ y)).sum() + (noise * y).sum()).backward()
        opt.step()
        if i % 100 == 99:
            yd = y.detach()
            assert float((yd.T @ yd - eye).abs().max()) < 1e-12


def test_recovers_top_eigenspace_on_grassmann() -> None:
    g = torch.Generator().manual_seed(11)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=F64))
    evals = torch.cat(
        [torch.tensor([20.0, 19.0, 18.0], dtype=F64), torch.linspace(10, 1, 17, dtype=F64)]
    )
    a = (q * evals) @ q.T
    man = Grassmann()
    y = geoopt.ManifoldParameter(man.random(20, 3, dtype=F64, generator=g), manifold=man)
    opt = RiemannianAdamW([y], lr=0.05, weight_decay=0.0, stabilize=25)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)
    for _ in range(800):
        opt.zero_grad()
        (-(y * (a @ y)).sum()).backward()
        opt.step()
        sched.step()
    top = torch.linalg.eigh(a).eigenvectors[:, -3:]
    assert float(man.dist(y.detach(), top)) < 1e-6


# ---------------------------------------------------------------- weight decay geometry
@pytest.mark.parametrize("k", [0.5, 1.0, 2.0])
def test_lorentz_decay_moves_along_geodesic_to_origin(k: float) -> None:
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
    g = torch.Generator().manual_seed(1)
    u = man.proju(man.origin(3, 4, dtype=F64), 2.0 * torch.randn(3, 4, generator=g, dtype=F64))
    x0 = man.expmap0(u)
    p = geoopt.ManifoldParameter(x0.clone(), manifold=man)
    opt = RiemannianAdamW([p], lr=0.1, weight_decay=0.5)  # t = lr * wd = 0.05
    origin = man.origin(3, 4, dtype=F64)
    d_prev = man.dist(origin, x0)
    for _ in range(30):
        p.grad = torch.zeros_like(p)  # pure decay: the Adam update is zero
        opt.step()
        x = p.detach()
        ok, reason = man.check_point_on_manifold(x, atol=1e-12, rtol=1e-12, explain=True)
        assert ok, reason
        d = man.dist(origin, x)
        assert bool((d < d_prev).all())
        # on the geodesic from the origin through x0: d(o, x) + d(x, x0) = d(o, x0)
        torch.testing.assert_close(d + man.dist(x, x0), man.dist(origin, x0), rtol=0, atol=1e-10)
        d_prev = d
    # one step is exactly the (1 - t, t) centroid with the origin
    q = geoopt.ManifoldParameter(x0.clone(), manifold=man)
    opt = RiemannianAdamW([q], lr=0.1, weight_decay=0.5)
    q.grad = torch.zeros_like(q)
    opt.step()
    expected = centroid(torch.stack([x0, origin], dim=-2), k, torch.tensor([0.95, 0.05], dtype=F64))
    torch.testing.assert_close(q.detach(), expected, rtol=0, atol=1e-13)


def test_lorentz_decay_transports_momentum() -> None:
    man = geoopt.Lorentz()
    g = torch.Generator().manual_seed(2)
    x0 = man.expmap0(
        man.proju(man.origin(2, 3, dtype=F64), torch.randn(2, 3, generator=g, dtype=F64))
    )
    p = geoopt.ManifoldParameter(x0, manifold=man)
    opt = RiemannianAdamW([p], lr=0.05, weight_decay=0.3)
    for _ in range(10):
        p.grad = torch.randn(2, 3, generator=g, dtype=F64)
        opt.step()
        m = opt.state[p]["exp_avg"]
        inner = man.inner(p.detach(), p.detach(), m)  # tangent: <x, m>_L = 0
        assert float(inner.abs().max()) < 1e-12


@pytest.mark.parametrize("name", ["grassmann", "sphere", "stiefel"])
def test_decay_refused_where_meaningless(name: str) -> None:
    man, x = _manifold_point(name, torch.Generator().manual_seed(0))
    p = geoopt.ManifoldParameter(x, manifold=man)
    with pytest.raises(ValueError, match="no geometric meaning"):
        RiemannianAdamW([p])  # default weight_decay = 0.01, as torch.optim.AdamW
    with pytest.raises(ValueError, match="param group 1"):
        RiemannianAdamW([{"params": [torch.nn.Parameter(torch.ones(2))]}, {"params": [p]}])
    opt = RiemannianAdamW([p], weight_decay=0.0)
    opt.param_groups[0]["weight_decay"] = 0.1  # edited after construction
    p.grad = torch.zeros_like(p)
    before = p.detach().clone()
    with pytest.raises(ValueError, match="no geometric meaning"):
        opt.step()
    assert torch.equal(p.detach(), before)  # nothing was half-stepped


def test_decay_refused_under_scaled_and_allowed_for_scaled_lorentz() -> None:
    x = Grassmann().projx(torch.randn(5, 2, dtype=F64))
    p = geoopt.ManifoldParameter(x, manifold=geoopt.Scaled(Grassmann(), 2.0))
    with pytest.raises(ValueError, match="Grassmann"):
        RiemannianAdamW([p], weight_decay=0.1)
    lor = geoopt.Lorentz()
    o = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)
    q = geoopt.ManifoldParameter(o, manifold=geoopt.Scaled(lor, 2.0))
    RiemannianAdamW([q], weight_decay=0.1)


def test_grassmann_param_groups_work_with_default_decay() -> None:
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(6, 5), GrassmannHead(5, 4, 2)).double()
    opt = RiemannianAdamW(grassmann_param_groups(head, lr=1e-2, weight_decay=0.1), lr=1e-2)
    x, y = torch.randn(16, 6, dtype=F64), torch.randint(0, 4, (16,))
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
    for group in opt.param_groups:
        for p in group["params"]:
            if isinstance(p, geoopt.ManifoldParameter):
                eye = torch.eye(p.shape[-1], dtype=F64)
                assert float((p.detach().mT @ p.detach() - eye).abs().max()) < 1e-12


# ---------------------------------------------------------------- flags and input checks
@pytest.mark.parametrize(
    ("flag", "value"),
    [("foreach", True), ("fused", True), ("capturable", True), ("differentiable", True)],
)
def test_unsupported_flags_are_refused(flag: str, value: bool) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=flag):
        RiemannianAdamW([p], **{flag: value})
    with pytest.raises(ValueError, match=flag):
        RiemannianAdamW([{"params": [p], flag: value}])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, "learning rate"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"betas": (1.0, 0.9)}, "betas"),
        ({"betas": (0.9,)}, "pair"),
        ({"stabilize": 0}, "stabilize"),
        ({"lr": float("nan")}, "learning rate"),
    ],
)
def test_invalid_options(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RiemannianAdamW([torch.nn.Parameter(torch.ones(3))], **kwargs)


def test_amsgrad_must_be_bool_and_sparse_and_complex_refused() -> None:
    with pytest.raises(TypeError, match="amsgrad"):
        RiemannianAdamW([torch.nn.Parameter(torch.ones(3))], amsgrad=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="complex"):
        RiemannianAdamW([torch.nn.Parameter(torch.ones(3, dtype=torch.complex128))])
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = RiemannianAdamW(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_closure_and_tensor_lr() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=F64))
    opt = RiemannianAdamW([w], lr=torch.tensor(0.1), weight_decay=0.0)

    def closure() -> float:
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss.detach().item()

    assert opt.step(closure) == pytest.approx(5.0)
    # first Adam step moves every coordinate by lr against the gradient sign (eps aside)
    torch.testing.assert_close(w.detach(), torch.tensor([0.9, -1.9], dtype=F64), rtol=0, atol=1e-7)


class _CountingGrassmann(Grassmann):
    def __init__(self) -> None:
        super().__init__()
        self.projx_calls = 0

    def projx(self, x: torch.Tensor) -> torch.Tensor:
        self.projx_calls += 1
        return super().projx(x)


@pytest.mark.parametrize(("stabilize", "calls"), [(None, 0), (3, 3), (1, 9)])
def test_stabilize_period(stabilize: int | None, calls: int) -> None:
    man = _CountingGrassmann()
    p = geoopt.ManifoldParameter(Grassmann().projx(torch.randn(6, 2, dtype=F64)), manifold=man)
    opt = RiemannianAdamW([p], lr=1e-2, weight_decay=0.0, stabilize=stabilize)
    man.projx_calls = 0
    for _ in range(9):
        p.grad = torch.randn(6, 2, dtype=F64)
        opt.step()
    assert man.projx_calls == calls  # retr (polar) never calls projx


def test_optimizer_leaves_grad_untouched() -> None:
    man = geoopt.Lorentz()
    p = geoopt.ManifoldParameter(man.origin(4, dtype=F64), manifold=man)
    opt = RiemannianAdamW([p], lr=1e-2, weight_decay=0.1)
    grad = torch.tensor([0.5, 1.0, -2.0, 0.25], dtype=F64)
    p.grad = grad.clone()
    opt.step()
    assert torch.equal(p.grad, grad)  # geoopt's Lorentz egrad2rgrad flips x_0 in place


# ---------------------------------------------------------------- state_dict and resume
def _mixed_model(seed: int) -> tuple[list[torch.nn.Parameter], Callable[[], torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    gr, lor = Grassmann(), geoopt.Lorentz(k=torch.tensor(2.0, dtype=F64))
    y = geoopt.ManifoldParameter(gr.random(7, 2, dtype=F64, generator=g), manifold=gr)
    h = geoopt.ManifoldParameter(
        lor.expmap0(
            lor.proju(lor.origin(3, 4, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64))
        ),
        manifold=lor,
    )
    w = torch.nn.Parameter(torch.randn(7, 3, generator=g, dtype=F64))
    a = torch.randn(7, 7, generator=g, dtype=F64)

    def loss() -> torch.Tensor:
        return -(y * (a @ y)).sum() + ((w - 1) ** 2).sum() + (h[..., 1:] ** 2).sum() * 0.3

    return [y, h, w], loss


def _make_opt(params: list[torch.nn.Parameter]) -> RiemannianAdamW:
    y, h, w = params
    return RiemannianAdamW(
        [
            {"params": [y], "weight_decay": 0.0, "stabilize": 7},
            {"params": [h], "weight_decay": 0.2, "amsgrad": True},
            {"params": [w]},
        ],
        lr=2e-2,
        weight_decay=0.05,
    )


def _train(
    params: list[torch.nn.Parameter], loss: Callable[[], torch.Tensor], opt: Any, n: int
) -> None:
    for _ in range(n):
        opt.zero_grad()
        loss().backward()
        opt.step()


def test_state_dict_round_trip_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    params, loss = _mixed_model(0)
    opt = _make_opt(params)
    _train(params, loss, opt, 100)
    straight = [p.detach().clone() for p in params]

    params, loss = _mixed_model(0)
    opt = _make_opt(params)
    _train(params, loss, opt, 50)
    path = tmp_path / "ckpt.pt"
    torch.save({"params": [p.detach() for p in params], "optim": opt.state_dict()}, path)
    blob = torch.load(path, weights_only=True)

    params2, loss2 = _mixed_model(0)
    with torch.no_grad():
        for p, saved in zip(params2, blob["params"], strict=True):
            p.copy_(saved)
    opt2 = _make_opt(params2)
    opt2.load_state_dict(blob["optim"])
    sd1, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd1["param_groups"] == sd2["param_groups"]
    for i, st in sd1["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                assert torch.equal(val, sd2["state"][i][key])
            else:
                assert val == sd2["state"][i][key]
    _train(params2, loss2, opt2, 50)
    start, _ = _mixed_model(0)
    for a, b, s in zip(straight, params2, start, strict=True):
        assert float((a - s.detach()).abs().max()) > 1e-2  # training really moved
        torch.testing.assert_close(b.detach(), a, rtol=0, atol=1e-12)
