"""Curvature-aware stepping of learnable Lorentz curvature."""

from __future__ import annotations

from typing import Any

import geoopt
import pytest
import torch

from geomtools.manifolds.lorentz import minkowski_inner
from geomtools.optim import CurvatureAwareStep, RiemannianAdamW, remap_curvature

F64 = torch.float64


def _points(k: float, n: int, d: int, seed: int) -> tuple[geoopt.Lorentz, torch.Tensor]:
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=F64))
    g = torch.Generator().manual_seed(seed)
    o = man.origin(n, d + 1, dtype=F64)
    return man, man.expmap0(man.proju(o, 1.5 * torch.randn(n, d + 1, generator=g, dtype=F64)))


@pytest.mark.parametrize(("k_old", "k_new"), [(1.0, 2.0), (0.5, 1.0), (2.0, 0.7)])
def test_remap_keeps_direction_distance_and_momentum_norm(k_old: float, k_new: float) -> None:
    man, x = _points(k_old, 8, 4, seed=0)
    new = geoopt.Lorentz(k=torch.tensor(k_new, dtype=F64))
    g = torch.Generator().manual_seed(1)
    v = man.proju(x, torch.randn(8, 5, generator=g, dtype=F64))
    y, (w,) = remap_curvature(x, k_old, k_new, [v])
    torch.testing.assert_close(minkowski_inner(y, y), torch.full((8,), -k_new, dtype=F64))
    torch.testing.assert_close(new.dist0(y), man.dist0(x))  # distance to the origin kept
    cos = torch.nn.functional.cosine_similarity(x[:, 1:], y[:, 1:], dim=-1)
    torch.testing.assert_close(cos, torch.ones(8, dtype=F64))
    torch.testing.assert_close(
        minkowski_inner(y, w) / y[:, 0], torch.zeros(8, dtype=F64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(new.norm(w), man.norm(v))  # isometry (Lorentz.norm(u))
    back, (v2,) = remap_curvature(y, k_new, k_old, [w])
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(v2, v)
    with pytest.raises(ValueError, match="positive"):
        remap_curvature(x, k_old, -1.0)


def _task(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 superclasses x 4 subclasses of nested Gaussian clusters in R^8; fine labels."""
    g = torch.Generator().manual_seed(seed)
    sup = 4.0 * torch.randn(4, 8, generator=g)
    sub = sup.repeat_interleave(4, 0) + 1.5 * torch.randn(16, 8, generator=g)
    y = torch.arange(640) % 16
    x = sub[y] + 0.5 * torch.randn(640, 8, generator=g)
    return x, y, sup


class _Model(torch.nn.Module):
    def __init__(self, man: geoopt.Lorentz) -> None:
        super().__init__()
        self.man = man
        self.enc = torch.nn.Linear(8, 4)
        g = torch.Generator().manual_seed(3)
        o = man.origin(16, 5)
        self.protos = geoopt.ManifoldParameter(
            man.expmap0(man.proju(o, 0.1 * torch.randn(16, 5, generator=g))), manifold=man
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        space = self.enc(x)
        u = torch.cat([torch.zeros_like(space[:, :1]), space], dim=1)
        z = self.man.expmap0(u)
        # logits: -squared Lorentzian distance = 2k + 2<z, p>_L
        inner = -z[:, :1] * self.protos[:, 0] + z[:, 1:] @ self.protos[:, 1:].T
        return 2 * inner + 2 * self.man.k


def _train(aware: bool, steps: int = 300) -> dict[str, Any]:
    torch.manual_seed(0)
    man = geoopt.Lorentz(k=1.0, learnable=True)
    model = _Model(man)
    groups = [{"params": [model.protos, man.k]}, {"params": model.enc.parameters()}]
    if aware:
        opt: torch.optim.Optimizer = RiemannianAdamW(groups, lr=3e-2, weight_decay=0.0)
        stepper: object = CurvatureAwareStep(opt, [man], k_range=(0.1, 10.0))
    else:  # naive: geoopt's RiemannianAdam steps k and the points together
        opt = geoopt.optim.RiemannianAdam(groups, lr=3e-2)
        stepper = opt
    x, y, _ = _task()
    ks: list[float] = []
    failure = ""
    for i in range(steps):
        opt.zero_grad()
        try:
            torch.nn.functional.cross_entropy(model(x), y).backward()
            stepper.step()  # type: ignore[attr-defined]
        except (ValueError, RuntimeError) as err:
            failure = f"step {i}: {err}"
            break
        ks.append(float(man.k.detach()))
        if not all(bool(torch.isfinite(q).all()) for q in model.parameters()):
            failure = f"step {i}: non-finite parameters"
            break
    if failure:
        return {"failure": failure, "k_trajectory": ks[:: max(1, len(ks) // 10)]}
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
        p = model.protos.detach()
        k = man.k.detach()
        off = float(((minkowski_inner(p, p) + k) / k).abs().max())
    return {
        "acc": acc,
        "k": ks[-1],
        "k_min": min(ks),
        "off": off,
        "k_trajectory": ks[:: steps // 10],
    }


def test_curvature_aware_training_is_finite_on_manifold_and_learns() -> None:
    ours = _train(True)
    naive = _train(False)
    print(f"\ncurvature-aware: {ours}\nnaive:           {naive}")
    assert "failure" not in ours, ours
    assert ours["off"] < 1e-5  # prototypes on the hyperboloid of the current k (float32)
    assert 0.1 <= ours["k_min"] and ours["k"] <= 10.0
    assert ours["acc"] > 0.9
    assert ours["k"] != 1.0  # the curvature was learned


def test_wrapper_input_checks() -> None:
    man = geoopt.Lorentz(k=1.0, learnable=True)
    p = geoopt.ManifoldParameter(man.origin(3, 4), manifold=man)
    opt = RiemannianAdamW([p], weight_decay=0.0)
    with pytest.raises(ValueError, match="not among the optimizer"):
        CurvatureAwareStep(opt, [man])
    with pytest.raises(TypeError, match="Lorentz"):
        CurvatureAwareStep(opt, [geoopt.Sphere()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="k_range"):
        CurvatureAwareStep(RiemannianAdamW([p, man.k], weight_decay=0.0), [man], k_range=(0.0, 1.0))
