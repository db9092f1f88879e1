import io

import numpy as np
import pytest
import scipy.linalg
import torch

from geomtools.linalg import inv_sqrtm, matrix_power_sym, spectral_transform, sqrtm
from geomtools.nn.covpool import CovariancePooling


def spd(d: int, cond: float, seed: int, batch: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(*batch, d, d, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -np.log10(cond), d, dtype=torch.float64)
    a = (q * lam[..., None, :]) @ q.mT
    return (a + a.mT) / 2


def with_spectrum(lam: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=g, dtype=torch.float64))
    a = (q * torch.tensor(lam, dtype=torch.float64)) @ q.T
    return (a + a.T) / 2


# ---------------------------------------------------------------------------- forward values
@pytest.mark.parametrize("d", [1, 3, 8])
def test_eigh_root_matches_scipy(d):
    a = spd(d, 50.0, seed=d)
    ref = scipy.linalg.sqrtm(a.numpy()).real
    assert np.abs(sqrtm(a).numpy() - ref).max() <= 1e-10 * np.abs(ref).max()
    inv_ref = np.linalg.inv(ref)
    got = inv_sqrtm(a).numpy()
    assert np.abs(got - inv_ref).max() <= 1e-10 * np.abs(inv_ref).max()


def test_newton_schulz_converges_and_truncates_small_eigenvalues():
    a = spd(6, 10.0, seed=1)
    ref = torch.from_numpy(scipy.linalg.sqrtm(a.numpy()).real)
    errs = [
        float((sqrtm(a, method="newton_schulz", iters=k) - ref).norm() / ref.norm())
        for k in (1, 3, 5, 10, 30)
    ]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-12 and errs[4] < 1e-12  # converged: round-off from 10 iterations on
    inv = inv_sqrtm(a, method="newton_schulz", iters=30)
    assert torch.allclose(inv, torch.linalg.inv(ref), rtol=0, atol=1e-10)
    # ill-conditioned: few iterations shrink the small eigenvalues (a soft truncation)
    b = with_spectrum([1.0, 1e-2, 1e-4])
    lam = torch.linalg.eigvalsh(sqrtm(b, method="newton_schulz", iters=5))
    assert lam[0] < 0.5 * 1e-2  # √1e-4 = 1e-2 is strongly shrunk
    assert abs(float(lam[-1]) - 1.0) < 0.05


def test_batched_and_dtype_preserved():
    a = spd(5, 10.0, seed=2, batch=(3, 2))
    for method in ("eigh", "newton_schulz"):
        out = sqrtm(a.float(), method=method, iters=20)
        assert out.dtype == torch.float32 and out.shape == (3, 2, 5, 5)
        assert torch.allclose(out.double() @ out.double(), a, atol=1e-5)


def test_spectral_transform_family():
    a = spd(4, 20.0, seed=3)
    assert torch.allclose(spectral_transform(a, 0.5), inv_sqrtm(a), atol=1e-12)
    assert torch.allclose(spectral_transform(a, 1.0), torch.linalg.inv(a), atol=1e-10)
    assert torch.allclose(spectral_transform(a, 0.0), torch.eye(4, dtype=torch.float64))
    lam = torch.linalg.eigvalsh(a)
    got = torch.linalg.eigvalsh(spectral_transform(a, 0.25))
    assert torch.allclose(got.sort().values, (lam**-0.25).sort().values, rtol=1e-12)
    assert torch.allclose(matrix_power_sym(a, 3.0), a @ a @ a, rtol=1e-10, atol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="square"):
        sqrtm(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="1 NaN"):
        sqrtm(torch.tensor([[1.0, 0.0], [0.0, float("nan")]]))
    with pytest.raises(ValueError, match="symmetric"):
        sqrtm(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="floating"):
        sqrtm(torch.eye(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="method"):
        sqrtm(torch.eye(2), method="svd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backward"):
        sqrtm(torch.eye(2), backward="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive trace"):
        sqrtm(torch.zeros(2, 2), method="newton_schulz")


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("fn", [sqrtm, inv_sqrtm])
def test_gradcheck_exact_eigh(fn):
    a = spd(4, 5.0, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda m: fn(_symmetrize(m)), (a,), eps=1e-6, atol=1e-8)


def test_gradcheck_general_power_and_ns_manual():
    a = spd(3, 4.0, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda m: matrix_power_sym(_symmetrize(m), 0.3), (a,), eps=1e-6, atol=1e-8
    )
    for inv in (False, True):
        fn = inv_sqrtm if inv else sqrtm
        assert torch.autograd.gradcheck(
            lambda m, fn=fn: fn(
                _symmetrize(m), method="newton_schulz", iters=4, ns_backward="manual"
            ),
            (a,),
            eps=1e-6,
            atol=1e-8,
        )


def _symmetrize(m):
    return (m + m.mT) / 2


@pytest.mark.parametrize("inverse", [False, True])
def test_ns_manual_backward_equals_autograd(inverse):
    a = spd(7, 30.0, seed=6, batch=(2,))
    g = torch.randn(2, 7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fn = inv_sqrtm if inverse else sqrtm
    grads = []
    for mode in ("autograd", "manual"):
        x = a.clone().requires_grad_()
        (fn(x, method="newton_schulz", iters=6, ns_backward=mode) * g).sum().backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-11, atol=1e-12)


def test_exact_gradient_solves_the_sylvester_equation():
    # Y = A^{1/2}: the adjoint Ā of Ȳ satisfies Y Ā + Ā Y = sym(Ȳ)
    a = spd(5, 20.0, seed=7)
    gy = torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = a.clone().requires_grad_()
    (sqrtm(x) * gy).sum().backward()
    y = scipy.linalg.sqrtm(a.numpy()).real
    ref = scipy.linalg.solve_sylvester(y, y, _symmetrize(gy).numpy())
    assert np.abs(x.grad.numpy() - ref).max() <= 1e-10 * np.abs(ref).max()


KINDS = ["exact", "taylor", "pade", "clip"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fn", [sqrtm, inv_sqrtm])
def test_repeated_eigenvalues_give_finite_gradients(kind, fn):
    a = with_spectrum([2.0, 2.0, 2.0, 0.5, 0.5, 1e-9])
    x = a.clone().requires_grad_()
    gy = torch.randn(6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (fn(x, backward=kind) * gy).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_zero_eigenvalues_give_bounded_gradients(kind):
    # a rank-2 covariance of 5 channels (a ReLU leaves channels at zero): exactly-zero
    # eigenvalues once gave 1/(0 + 0) → 4.5e307 off the diagonal and an overflowing gradient
    rng = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=rng, dtype=torch.float64))
    x = torch.zeros(5, 5, dtype=torch.float64)
    x[:2, :2] = torch.tensor([[2.0, 0.3], [0.3, 1.0]])
    a = q @ x @ q.T
    a = (a + a.T) / 2
    gy = torch.randn(5, 5, generator=rng, dtype=torch.float64)
    leaf = a.clone().requires_grad_()
    (sqrtm(leaf, backward=kind) * gy).sum().backward()
    lam_max = float(torch.linalg.eigvalsh(a)[-1])
    bound = 1.0 / (2.0 * (1e-12 * lam_max) ** 0.5)  # the kernel at the eps floor
    assert torch.isfinite(leaf.grad).all()
    assert float(leaf.grad.abs().max()) <= bound * float(gy.abs().sum())
    if kind == "exact":  # on the range of A (eigenvalues far above the floor) it stays exact
        lam, u = torch.linalg.eigh(a)
        top = u[:, 3:]  # eigenvectors of 2 positive eigenvalues
        g_sym = (gy + gy.T) / 2
        s = torch.sqrt(lam[3:])
        k = 1.0 / (s[:, None] + s[None, :])
        want = k * (top.T @ g_sym @ top)
        np.testing.assert_allclose(top.T @ leaf.grad @ top, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("kind", "degree", "tol"), [("taylor", 60, 1e-6), ("pade", 2, 1e-6), ("clip", 1, 1e-14)]
)
def test_smoothed_kernels_converge_to_exact_on_separated_spectra(kind, degree, tol):
    a = with_spectrum([4.0, 2.0, 1.0, 0.5])  # gaps ≥ 0.5 ≫ gap_eps·λ_max = 4e-3
    gy = torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = {}
    for k in ("exact", kind):
        x = a.clone().requires_grad_()
        (sqrtm(x, backward=k, degree=degree) * gy).sum().backward()
        grads[k] = x.grad
    rel = (grads[kind] - grads["exact"]).norm() / grads["exact"].norm()
    assert rel < tol


def test_smoothed_kernels_bound_close_gaps():
    # near-equal eigenvalues with an inverse root: the smoothed kernels stay bounded
    a = with_spectrum([1.0, 1.0 + 1e-9, 0.3])
    gy = torch.randn(3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for kind in ("taylor", "pade", "clip"):
        x = a.clone().requires_grad_()
        (matrix_power_sym(x, -2.0, backward=kind) * gy).sum().backward()
        assert float(x.grad.abs().max()) < 1e3


# ---------------------------------------------------------------------------- pooling layer
def test_covariance_pooling_values_and_switch():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 3, 5, generator=g)
    layer = CovariancePooling(4, method="newton_schulz", iters=5, switch_epoch=2)
    out = layer(x)
    assert out.shape == (2, 10) and out.dtype == torch.float32 and layer.out_features == 10
    f = x.reshape(2, 4, 15).double()
    f = f - f.mean(2, keepdim=True)
    cov = f @ f.mT / 15
    ns = sqrtm(cov, method="newton_schulz", iters=5)
    rows, cols = torch.triu_indices(4, 4)
    assert torch.allclose(out.double(), ns[:, rows, cols], atol=1e-6)
    layer.set_epoch(2)
    assert layer.active_method == "eigh"
    assert torch.allclose(layer(x).double(), sqrtm(cov)[:, rows, cols], atol=1e-6)
    none = CovariancePooling(4, method=None)
    assert torch.allclose(none(x).double(), cov[:, rows, cols], atol=1e-6)
    # a hybrid layer rebuilt from its state_dict past the switch uses eigh, not NS
    fresh = CovariancePooling(4, method="newton_schulz", iters=5, switch_epoch=2)
    fresh.load_state_dict(torch.load(_saved(layer), weights_only=True))
    assert fresh.active_method == "eigh" and torch.equal(fresh(x), layer(x))
    assert "epoch" not in CovariancePooling(4, method="eigh").state_dict()  # plain: unchanged


def _saved(module: torch.nn.Module) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    return buf


def test_covariance_pooling_backward_and_reduction():
    layer = CovariancePooling(6, reduce_dim=3, method="eigh", backward="pade")
    x = torch.randn(4, 6, 4, 4, requires_grad=True)
    out = layer(x)
    assert out.shape == (4, 6)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="positions"):
        layer(torch.randn(1, 6, 1, 1))
    with pytest.raises(ValueError, match=r"\[B, 6, H, W\]"):
        layer(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match="switch_epoch"):
        CovariancePooling(3, method="eigh", switch_epoch=1)
