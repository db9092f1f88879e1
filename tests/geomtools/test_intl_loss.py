import math

import numpy as np
import pytest
import torch

from geomtools.losses.intl import INTLLoss, default_beta, trace_loss
from geomtools.nn.iternorm import IterNorm

F64 = torch.float64


def views(b: int, d: int, seed: int, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=F64) * 1.3 + 0.2
    z2 = z1 + 0.5 * torch.randn(b, d, generator=g, dtype=F64)
    return z1.to(dtype), z2.to(dtype)


def np_trace_loss(z: np.ndarray, ddof: int) -> float:
    b, d = z.shape
    total = 0.0
    for j in range(d):
        col = z[:, j]
        mu = sum(col) / b
        var = sum((v - mu) ** 2 for v in col) / (b - ddof)
        total += (var - 1.0) ** 2
    return total


def np_alignment(z1: np.ndarray, z2: np.ndarray) -> float:
    terms = []
    for a, c in zip(z1, z2, strict=True):
        cos = float(a @ c) / (np.linalg.norm(a) * np.linalg.norm(c))
        terms.append(2.0 - 2.0 * cos)
    return float(np.mean(terms))


# ---------------------------------------------------------------------------- trace loss
@pytest.mark.parametrize("unbiased", [False, True])
def test_trace_loss_matches_numpy_loop(unbiased):
    z, _ = views(10, 7, seed=0)
    got = trace_loss(z, unbiased=unbiased)
    assert got.ndim == 0 and got.dtype == F64
    assert math.isclose(float(got), np_trace_loss(z.numpy(), int(unbiased)), rel_tol=1e-12)


def test_trace_loss_dtype_and_gradient():
    z, _ = views(16, 5, seed=1, dtype=torch.float32)
    z.requires_grad_(True)
    loss = trace_loss(z)
    assert loss.dtype == torch.float32
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    expected = np_trace_loss(z.detach().double().numpy(), 0)
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-6)


def test_trace_loss_vanishes_on_whitened_output():
    z, _ = views(64, 6, seed=2)
    w = IterNorm(6, iters=30, eps=0.0)(z)
    assert float(trace_loss(w)) < 1e-20  # population variance, like IterNorm's 1/m
    assert math.isclose(float(trace_loss(w, unbiased=True)), 6 * (64 / 63 - 1) ** 2, rel_tol=1e-9)


def test_trace_loss_bad_input():
    with pytest.raises(ValueError, match=r"shape \[B, D\]"):
        trace_loss(torch.randn(5))
    with pytest.raises(ValueError, match="at least 2 samples"):
        trace_loss(torch.randn(1, 3))
    with pytest.raises(TypeError, match="floating-point"):
        trace_loss(torch.ones(4, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        trace_loss(np.ones((4, 3)))  # type: ignore[arg-type]
    bad = torch.randn(4, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"1 NaN/Inf values \(first bad rows: \[2\]\)"):
        trace_loss(bad)


# ---------------------------------------------------------------------------- INTL loss
def test_default_beta():
    assert math.isclose(default_beta(256), 0.05, rel_tol=1e-15)
    assert math.isclose(INTLLoss().beta_for(256), 0.05, rel_tol=1e-15)
    assert default_beta(8) == 0.0
    assert math.isclose(default_beta(1024), 0.07, rel_tol=1e-14)
    with pytest.raises(ValueError, match="negative for B = 4"):
        default_beta(4)
    assert INTLLoss(beta=0.3).beta_for(4) == 0.3


@pytest.mark.parametrize("unbiased", [False, True])
def test_intl_loss_matches_manual_computation(unbiased):
    z1, z2 = views(16, 5, seed=3)
    got = INTLLoss(unbiased=unbiased)(z1, z2)
    a, c = z1.numpy(), z2.numpy()
    beta = 0.01 * (math.log2(16) - 3)
    expected = np_alignment(a, c) + beta * (
        np_trace_loss(a, int(unbiased)) + np_trace_loss(c, int(unbiased))
    )
    assert got.ndim == 0 and got.dtype == F64
    assert math.isclose(float(got), expected, rel_tol=1e-12)
    # the alignment term is the MSE between L2-normalised rows
    n1 = torch.nn.functional.normalize(z1, dim=1)
    n2 = torch.nn.functional.normalize(z2, dim=1)
    assert math.isclose(np_alignment(a, c), float((n1 - n2).square().sum(1).mean()), rel_tol=1e-12)


def test_intl_loss_explicit_beta_and_samples_axis():
    z1, z2 = views(6, 9, seed=4)
    a, c = z1.numpy(), z2.numpy()
    got = INTLLoss(beta=0.2)(z1, z2)
    expected = np_alignment(a, c) + 0.2 * (np_trace_loss(a, 0) + np_trace_loss(c, 0))
    assert math.isclose(float(got), expected, rel_tol=1e-12)
    # reference-code default mode: trace loss per sample over its features, ddof 1
    got_s = INTLLoss(beta=0.2, axis="samples", unbiased=True)(z1, z2)
    expected_s = np_alignment(a, c) + 0.2 * (np_trace_loss(a.T, 1) + np_trace_loss(c.T, 1))
    assert math.isclose(float(got_s), expected_s, rel_tol=1e-12)
    assert abs(float(INTLLoss(beta=0.0)(z1, z1))) < 1e-15


def test_intl_loss_dtype_gradient_and_autocast():
    z1, z2 = views(32, 8, seed=5, dtype=torch.float32)
    z1.requires_grad_(True)
    loss_fn = INTLLoss()
    loss = loss_fn(z1, z2)
    assert loss.dtype == torch.float32
    loss.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss_ac = loss_fn(z1, z2)
    assert loss_ac.dtype == torch.float32 and torch.equal(loss_ac, loss)


def test_intl_end_to_end_with_iternorm():
    z1, z2 = views(64, 16, seed=6, dtype=torch.float32)
    w = torch.nn.Parameter(torch.eye(16))
    layer = IterNorm(16, iters=4)
    loss = INTLLoss()(layer(z1 @ w), layer(z2 @ w))
    loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_intl_loss_bad_input():
    loss = INTLLoss()
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.randn(16, 4), torch.randn(16, 5))
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.randn(16, 4), torch.randn(15, 4))
    with pytest.raises(ValueError, match=r"z2 must have shape \[B, D\]"):
        loss(torch.randn(16, 4), torch.randn(16, 4, 1))
    with pytest.raises(ValueError, match="at least 2 samples"):
        INTLLoss(beta=0.1)(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="negative for B = 4"):
        loss(torch.randn(4, 3), torch.randn(4, 3))
    z = torch.randn(16, 4)
    z[3, 0] = float("inf")
    with pytest.raises(ValueError, match="z1 contains 1 NaN/Inf"):
        loss(z, torch.randn(16, 4))
    with pytest.raises(ValueError, match="2 features"):
        INTLLoss(axis="samples")(torch.randn(16, 1), torch.randn(16, 1))
    with pytest.raises(ValueError, match="beta must be"):
        INTLLoss(beta=-0.1)
    with pytest.raises(ValueError, match="axis must be"):
        INTLLoss(axis="batch")  # type: ignore[arg-type]


def test_repr():
    assert "log2(B)" in repr(INTLLoss())
    assert "beta=0.5" in repr(INTLLoss(beta=0.5))
