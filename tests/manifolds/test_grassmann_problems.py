"""Grassmann on a real problem: the dominant 3-dim eigenspace of a 20×20 PSD matrix.

min_Y f(Y) = -tr(Yᵀ A Y) over Gr(20, 3); the minimiser is the span of the top-3 eigenvectors.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import geoopt
import pytest
import torch

from geomtools.manifolds import Grassmann
from tests.manifolds.cases import DTYPE, generator

N, P = 20, 3


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, top-3 eigenvectors of A, a random start Y0); eigenvalues 20, 19, 18 | 10 ... 1."""
    g = generator(seed)
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=DTYPE))
    eigenvalues = torch.cat(
        [
            torch.tensor([20.0, 19.0, 18.0], dtype=DTYPE),
            torch.linspace(10.0, 1.0, N - P, dtype=DTYPE),
        ]
    )
    a = (q * eigenvalues) @ q.mT
    a = (a + a.mT) / 2
    top = torch.linalg.eigh(a).eigenvectors[:, -P:]
    y0 = Grassmann().projx(torch.randn(N, P, generator=g, dtype=DTYPE))
    return a, top, y0


def loss(y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return -torch.trace(y.mT @ a @ y)


def orthonormality_error(y: torch.Tensor) -> float:
    y = y.detach()
    return float((y.mT @ y - torch.eye(y.shape[-1], dtype=y.dtype)).abs().max())


def minimise(
    optimizer_cls: type[torch.optim.Optimizer], max_steps: int, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor, int]:
    a, top, y0 = problem()
    man = Grassmann()
    y = geoopt.ManifoldParameter(y0.clone(), manifold=man)
    opt = optimizer_cls([y], **kwargs)
    for step in range(1, max_steps + 1):
        opt.zero_grad()
        loss(y, a).backward()
        assert y.grad is not None
        rgrad_norm = float(man.norm(y.detach(), man.egrad2rgrad(y.detach(), y.grad)))
        if rgrad_norm < 1e-11:
            return y.detach(), top, step
        opt.step()
    return y.detach(), top, max_steps + 1


@pytest.mark.parametrize(
    ("optimizer_cls", "kwargs", "max_steps"),
    [
        (geoopt.optim.RiemannianSGD, {"lr": 0.02}, 500),
        (geoopt.optim.RiemannianSGD, {"lr": 0.01, "momentum": 0.5}, 800),
        (geoopt.optim.RiemannianAdam, {"lr": 0.05}, 1500),
    ],
    ids=["sgd", "sgd-momentum", "adam"],
)
def test_optimisers_find_the_dominant_eigenspace(
    optimizer_cls: type[torch.optim.Optimizer], kwargs: dict[str, Any], max_steps: int
) -> None:
    y, top, steps = minimise(optimizer_cls, max_steps, **kwargs)
    assert steps <= max_steps, "did not converge (Riemannian gradient never fell below 1e-11)"
    man = Grassmann()
    assert float(man.dist(y, top)) < 1e-6
    assert orthonormality_error(y) <= 1e-12
    # the start was far from the answer, and the value at the optimum is the sum of the top-3
    _, _, y0 = problem()
    assert float(man.dist(y0, top)) > 0.5
    a, _, _ = problem()
    assert float(-loss(y, a)) == pytest.approx(57.0, abs=1e-9)


def test_long_noisy_sgd_run_stays_orthonormal_with_stabilize() -> None:
    a, top, y0 = problem()
    man = Grassmann()
    y = geoopt.ManifoldParameter(y0.clone(), manifold=man)
    opt = geoopt.optim.RiemannianSGD([y], lr=0.01, momentum=0.9, stabilize=10)
    noise = generator(123)
    worst = 0.0
    for step in range(1, 1001):
        opt.zero_grad()
        kick = 0.5 * torch.randn(N, P, generator=noise, dtype=DTYPE)
        (loss(y, a) + (kick * y).sum()).backward()
        opt.step()
        worst = max(worst, orthonormality_error(y))
        if step % 100 == 0:
            assert orthonormality_error(y) <= 1e-12, f"step {step}"
            buf = opt.state[y]["momentum_buffer"]
            assert float((y.detach().mT @ buf).abs().max()) <= 1e-12  # momentum stays horizontal
    assert worst <= 1e-12
    # noise keeps it near, not at, the eigenspace
    assert 1e-4 < float(man.dist(y.detach(), top)) < 0.2


_ADAM_STEP_BUG = (
    "geoopt 0.5.1 RiemannianAdam subclasses torch.optim.Adam, whose __setstate__ (run by "
    "load_state_dict) turns the int state['step'] into a float32 tensor; geoopt then computes "
    "the bias corrections 1 - beta**step in float32, so a resumed run drifts by ~1e-9 from the "
    "uninterrupted one (not a geomtools bug; restoring an int step fixes it, see the next test)"
)


def adam_run(
    y_start: torch.Tensor,
    steps: int,
    state: dict[str, object] | None = None,
    *,
    int_step: bool = False,
) -> tuple[geoopt.ManifoldParameter, geoopt.optim.RiemannianAdam]:
    a, _, _ = problem()
    y = geoopt.ManifoldParameter(y_start.clone(), manifold=Grassmann())
    opt = geoopt.optim.RiemannianAdam([y], lr=0.02, betas=(0.9, 0.99), stabilize=7)
    if state is not None:
        # load_state_dict keeps same-dtype tensors by reference: copy, so that the optimiser's
        # in-place moment updates do not write back into the checkpoint we reuse
        opt.load_state_dict(copy.deepcopy(state))
        if int_step:
            for param_state in opt.state.values():
                param_state["step"] = int(param_state["step"])
    for _ in range(steps):
        opt.zero_grad()
        loss(y, a).backward()
        opt.step()
    return y, opt


def checkpoint_after_50_steps(tmp_path: Path) -> tuple[torch.Tensor, dict[str, object], float]:
    """Run 50 steps, torch.save point and optimiser state, load them back (weights_only)."""
    _, _, y0 = problem()
    first, opt = adam_run(y0, 50)
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {"y": first.detach().as_subclass(torch.Tensor).clone(), "optimizer": opt.state_dict()},
        path,
    )
    checkpoint = torch.load(path, weights_only=True)
    assert isinstance(checkpoint["y"], torch.Tensor) and checkpoint["y"].dtype == DTYPE
    assert torch.equal(checkpoint["y"], first.detach())
    assert checkpoint["optimizer"]["state"][0]["step"] == 50
    return checkpoint["y"], checkpoint["optimizer"], float(first.detach().abs().sum())


@pytest.mark.xfail(strict=True, reason=_ADAM_STEP_BUG)
def test_riemannian_adam_state_dict_round_trip_resumes_exactly(tmp_path: Path) -> None:
    _, _, y0 = problem()
    straight, _ = adam_run(y0, 100)
    y50, state, _ = checkpoint_after_50_steps(tmp_path)
    resumed, opt = adam_run(y50, 50, state=state)
    assert int(opt.state[resumed]["step"]) == 100
    assert max_abs(resumed.detach() - straight.detach()) <= 1e-12


def test_riemannian_adam_resumes_exactly_once_the_step_count_is_an_int(tmp_path: Path) -> None:
    _, _, y0 = problem()
    straight, _ = adam_run(y0, 100)
    y50, state, _ = checkpoint_after_50_steps(tmp_path)
    resumed, opt = adam_run(y50, 50, state=state, int_step=True)
    assert opt.state[resumed]["step"] == 100
    assert max_abs(resumed.detach() - straight.detach()) <= 1e-12
    # the run moved between steps 50 and 100, so equality is not trivial ...
    assert max_abs(resumed.detach() - y50) > 1e-4
    # ... and the loaded moments matter: a fresh optimiser ends elsewhere
    fresh, _ = adam_run(y50, 50)
    assert max_abs(fresh.detach() - straight.detach()) > 1e-6
    # without the int step the drift is real but small (the xfail above)
    drifted, _ = adam_run(y50, 50, state=state)
    assert 1e-12 < max_abs(drifted.detach() - straight.detach()) < 1e-6


def max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max())
