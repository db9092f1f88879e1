import numpy as np
import pytest
import torch

from geomtools.linalg import inv_sqrtm
from geomtools.nn.iternorm import IterNorm

F64 = torch.float64


def data(m: int, d: int, cond: float, seed: int, mean: float = 0.0) -> torch.Tensor:
    """m samples [m, d] with a random rotation of a log-uniform spectrum of condition `cond`."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    scale = torch.logspace(0, -0.5 * np.log10(cond), d, dtype=F64)
    return (torch.randn(m, d, generator=g, dtype=F64) * scale) @ q.T + mean


def pop_cov(y: torch.Tensor) -> torch.Tensor:
    yc = y - y.mean(dim=0)
    return yc.T @ yc / y.shape[0]


def p_T(lam: np.ndarray, iters: int) -> np.ndarray:
    """Scalar IterNorm recursion p_k = (3 p_{k-1} - p_{k-1}^3 λ) / 2 from p_0 = 1."""
    p = np.ones_like(lam)
    for _ in range(iters):
        p = 0.5 * (3.0 * p - p**3 * lam)
    return p


def eye(d: int) -> torch.Tensor:
    return torch.eye(d, dtype=F64)


# ---------------------------------------------------------------------------- forward values
def test_large_T_whitens():
    x = data(500, 8, cond=100.0, seed=0, mean=3.0)
    y = IterNorm(8, iters=30, eps=0.0)(x)
    assert y.dtype == F64 and y.shape == x.shape
    assert torch.allclose(y.mean(dim=0), torch.zeros(8, dtype=F64), atol=1e-12)
    assert (pop_cov(y) - eye(8)).abs().max() < 1e-6


def test_stable_on_ill_conditioned_covariance():
    # the one-matrix recursion P <- (3P - P^3 Σ_N)/2 overflows here; the coupled form does not
    x = data(400, 8, cond=1e3, seed=1)
    y = IterNorm(8, iters=40, eps=0.0)(x)
    assert torch.isfinite(y).all()
    assert (pop_cov(y) - eye(8)).abs().max() < 1e-8


@pytest.mark.parametrize("iters", [1, 2, 3, 5])
@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_finite_T_shrinkage_matches_scalar_recursion(iters, eps):
    x = data(300, 6, cond=200.0, seed=2)
    y = IterNorm(6, iters=iters, eps=eps)(x)
    s = pop_cov(x).numpy()
    sigma = s + eps * np.eye(6)
    tau = np.trace(sigma)
    lam, q = np.linalg.eigh(sigma / tau)
    out_eig = (lam - eps / tau) * p_T(lam, iters) ** 2  # = λ p_T(λ)^2 for eps = 0
    expected = (q * out_eig) @ q.T
    assert np.abs(pop_cov(y).numpy() - expected).max() < 1e-10
    got = np.sort(np.linalg.eigvalsh(pop_cov(y).numpy()))
    assert np.allclose(got, np.sort(out_eig), atol=1e-10)
    assert (out_eig <= 1 + 1e-12).all()  # shrinkage: never above 1


def test_matches_literal_recursion_for_few_iterations():
    x = data(200, 5, cond=10.0, seed=3, mean=-1.0)
    y = IterNorm(5, iters=5, eps=1e-3)(x)
    xc = (x - x.mean(dim=0)).numpy()
    sigma = xc.T @ xc / 200 + 1e-3 * np.eye(5)
    tr = np.trace(sigma)
    sigma_n = sigma / tr
    p = np.eye(5)
    for _ in range(5):
        p = 0.5 * (3 * p - np.linalg.matrix_power(p, 3) @ sigma_n)
    expected = xc @ (p / np.sqrt(tr)).T
    assert np.abs(y.numpy() - expected).max() < 1e-11


def test_whitening_matrix_matches_linalg_newton_schulz():
    x = data(100, 4, cond=30.0, seed=4)
    layer = IterNorm(4, iters=3, eps=1e-4, momentum=1.0)  # running = last batch exactly
    layer(x)
    assert layer.running_whitening is not None
    sigma = pop_cov(x) + 1e-4 * eye(4)
    w = inv_sqrtm(sigma, method="newton_schulz", iters=3)
    assert torch.allclose(layer.running_whitening[0], w, rtol=0, atol=1e-13)
    assert torch.allclose(layer.running_mean, x.mean(dim=0), rtol=0, atol=1e-14)


def test_eps_is_really_added():
    x = data(300, 6, cond=10.0, seed=5)
    y0 = IterNorm(6, iters=30, eps=0.0)(x)
    y1 = IterNorm(6, iters=30, eps=0.1)(x)
    assert (y0 - y1).abs().max() > 1e-3
    s = pop_cov(x)
    expected = s @ torch.linalg.inv(s + 0.1 * eye(6))  # converged: S (S + εI)^{-1}
    assert torch.allclose(pop_cov(y1), expected, rtol=0, atol=1e-10)
    # the default eps = 1e-5 is visible too
    y_def = IterNorm(6, iters=30)(x)
    assert (y_def - y0).abs().max() > 1e-7


def test_groups_whiten_independently():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(400, 6, generator=g, dtype=F64) @ torch.randn(6, 6, generator=g, dtype=F64)
    layer = IterNorm(6, iters=40, eps=0.0, num_groups=3)
    y = layer(x)
    for k in range(3):
        sl = slice(2 * k, 2 * k + 2)
        alone = IterNorm(2, iters=40, eps=0.0)(x[:, sl])
        assert torch.allclose(y[:, sl], alone, rtol=0, atol=1e-12)
    c = pop_cov(y)
    mask = torch.block_diag(*[torch.ones(2, 2, dtype=F64)] * 3).bool()
    assert (c[mask] - eye(6)[mask]).abs().max() < 1e-8  # diagonal blocks whitened
    assert c[~mask].abs().max() > 1e-2  # across groups: left correlated
    assert layer.running_whitening is not None
    assert layer.running_whitening.shape == (3, 2, 2)


def test_spatial_input_counts_positions_as_samples():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 5, 2, generator=g, dtype=F64) + 2.0
    a = IterNorm(3, iters=6, affine=True)
    b = IterNorm(3, iters=6, affine=True)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([1.0, 2.0, -1.0]))  # type: ignore[union-attr]
        a.bias.copy_(torch.tensor([0.5, 0.0, 1.0]))  # type: ignore[union-attr]
    b.load_state_dict(a.state_dict())
    y = a(x)
    flat = x.permute(0, 2, 3, 1).reshape(-1, 3)
    y_flat = b(flat).reshape(4, 5, 2, 3).permute(0, 3, 1, 2)
    assert y.shape == x.shape
    assert torch.allclose(y, y_flat, rtol=0, atol=1e-12)
    assert torch.allclose(a.running_whitening, b.running_whitening, rtol=0, atol=1e-14)  # type: ignore[arg-type]


def test_affine_scale_and_bias_per_feature():
    x = data(50, 3, cond=5.0, seed=8)
    plain = IterNorm(3, iters=4, track_running_stats=False)(x)
    layer = IterNorm(3, iters=4, affine=True, track_running_stats=False)
    assert layer.weight is not None and layer.bias is not None
    assert torch.equal(layer.weight.detach(), torch.ones(3))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
        layer.bias.copy_(torch.tensor([1.0, 0.0, -3.0]))
    y = layer(x)
    expected = plain * torch.tensor([2.0, -1.0, 0.5], dtype=F64) + torch.tensor(
        [1.0, 0.0, -3.0], dtype=F64
    )
    assert torch.allclose(y, expected, rtol=0, atol=1e-12)
    y.sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None


# ---------------------------------------------------------------------------- running stats
def test_eval_uses_running_statistics():
    x = data(128, 5, cond=20.0, seed=9, mean=1.5)
    layer = IterNorm(5, iters=5, num_groups=1)
    for _ in range(300):  # stationary: the same batch; 0.9**300 ≈ 2e-14
        y_train = layer(x)
    layer.eval()
    assert torch.allclose(layer(x), y_train, rtol=0, atol=1e-10)
    # a new batch is whitened with the stored statistics, not its own
    x_new = data(64, 5, cond=3.0, seed=10)
    assert layer.running_mean is not None and layer.running_whitening is not None
    before = (layer.running_mean.clone(), layer.running_whitening.clone())
    expected = (x_new - layer.running_mean) @ layer.running_whitening[0].T
    assert torch.allclose(layer(x_new), expected, rtol=0, atol=1e-13)
    assert torch.equal(layer.running_mean, before[0])  # eval does not update
    assert torch.equal(layer.running_whitening, before[1])
    # a single sample is fine in eval mode
    assert layer(x_new[:1]).shape == (1, 5)


def test_running_statistics_on_a_stationary_distribution():
    g = torch.Generator().manual_seed(11)
    a = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.5, 0.5]], dtype=F64)
    layer = IterNorm(3, iters=10, eps=0.0, num_groups=1)
    for _ in range(150):
        layer(torch.randn(256, 3, generator=g, dtype=F64) @ a.T + 1.0)
    layer.eval()
    big = torch.randn(20000, 3, generator=g, dtype=F64) @ a.T + 1.0
    y = layer(big)
    assert (y.mean(dim=0)).abs().max() < 0.05
    assert (pop_cov(y) - eye(3)).abs().max() < 0.1


def test_no_running_stats_uses_batch_statistics_in_eval():
    x = data(64, 4, cond=10.0, seed=12)
    layer = IterNorm(4, track_running_stats=False)
    assert layer.running_mean is None and layer.running_whitening is None
    y = layer(x)
    layer.eval()
    assert torch.equal(layer(x), y)
    assert "running_mean" not in layer.state_dict()


def test_reset_running_stats():
    layer = IterNorm(4, num_groups=2)
    layer(data(32, 4, cond=10.0, seed=13, mean=2.0))
    layer.reset_parameters()
    assert layer.running_mean is not None and layer.running_whitening is not None
    assert torch.equal(layer.running_mean, torch.zeros(4, dtype=F64))
    assert torch.equal(layer.running_whitening, torch.eye(2, dtype=F64).repeat(2, 1, 1))


def test_state_dict_round_trip():
    layer = IterNorm(6, iters=4, num_groups=2, affine=True)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)  # type: ignore[union-attr]
        layer.bias.uniform_(-1.0, 1.0)  # type: ignore[union-attr]
    for seed in range(5):
        layer(data(64, 6, cond=10.0, seed=seed, mean=0.3).float())
    state = layer.state_dict()
    assert set(state) == {"weight", "bias", "running_mean", "running_whitening"}
    assert state["running_whitening"].dtype == F64
    other = IterNorm(6, iters=4, num_groups=2, affine=True)
    other.load_state_dict(state)
    layer.eval()
    other.eval()
    x = data(10, 6, cond=10.0, seed=99).float()
    assert torch.equal(layer(x), other(x))


# ---------------------------------------------------------------------------- dtypes, grads
def test_float32_in_float32_out_computed_in_float64():
    x64 = data(100, 4, cond=10.0, seed=14)
    x32 = x64.float()
    layer = IterNorm(4, iters=30, eps=0.0, track_running_stats=False)
    y32 = layer(x32)
    assert y32.dtype == torch.float32
    # float64 internally: the result equals the float64 pass on the same (rounded) input
    ref = layer(x32.double())
    assert torch.equal(y32, ref.float())
    assert layer(x32.bfloat16()).dtype == torch.bfloat16
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        y_ac = layer(x32)
    assert y_ac.dtype == torch.float32 and torch.equal(y_ac, y32)


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"num_features": 3}, (7, 3)),
        ({"num_features": 4, "num_groups": 2, "affine": True}, (6, 4)),
        ({"num_features": 2}, (3, 2, 2)),
        ({"num_features": 5, "axis": "samples"}, (4, 5)),
    ],
)
def test_gradcheck(kwargs, shape):
    g = torch.Generator().manual_seed(15)
    x = torch.randn(*shape, generator=g, dtype=F64, requires_grad=True)
    layer = IterNorm(**kwargs, iters=3, eps=1e-3, track_running_stats=False).double()
    assert torch.autograd.gradcheck(layer, (x,))
    if layer.weight is not None:
        w = layer.weight

        def f(weight: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(layer, {"weight": weight}, (x.detach(),))

        assert torch.autograd.gradcheck(f, (w.detach().clone().requires_grad_(),))


# ---------------------------------------------------------------------------- axis="samples"
def test_samples_axis_whitens_the_gram_matrix():
    g = torch.Generator().manual_seed(16)
    x = torch.randn(6, 20, generator=g, dtype=F64) * torch.linspace(0.2, 3.0, 20, dtype=F64)
    layer = IterNorm(20, iters=30, eps=0.0, axis="samples")
    y = layer(x)
    assert torch.allclose(y.mean(dim=1), torch.zeros(6, dtype=F64), atol=1e-12)
    assert (y @ y.T / 20 - eye(6)).abs().max() < 1e-10  # B×B Gram whitened
    # it is "features" whitening of the transpose
    feats = IterNorm(6, iters=30, eps=0.0, track_running_stats=False)(x.T).T
    assert torch.allclose(y, feats, rtol=0, atol=1e-12)
    # no running statistics: eval uses the batch too
    assert layer.running_mean is None and layer.running_whitening is None
    layer.eval()
    assert torch.equal(layer(x), y)


def test_samples_axis_groups():
    x = data(5, 8, cond=4.0, seed=17)
    y = IterNorm(8, iters=20, eps=1e-6, axis="samples", num_groups=2)(x)
    for k in range(2):
        sl = slice(4 * k, 4 * k + 4)
        alone = IterNorm(4, iters=20, eps=1e-6, axis="samples")(x[:, sl])
        assert torch.allclose(y[:, sl], alone, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- errors
def test_bad_input_raises():
    layer = IterNorm(4)
    with pytest.raises(ValueError, match=r"expected input \[B, 4\]"):
        layer(torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"expected input \[B, 4\]"):
        layer(torch.randn(8))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(8, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        layer(np.ones((8, 4)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 samples"):
        layer(torch.randn(1, 4))
    samples = IterNorm(4, axis="samples")
    with pytest.raises(ValueError, match="axis='samples' expects input"):
        samples(torch.randn(8, 4, 3))
    with pytest.raises(ValueError, match="at least 2 features per group"):
        IterNorm(4, axis="samples", num_groups=4)(torch.randn(3, 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_features": 0}, "num_features must be positive"),
        ({"num_features": 6, "num_groups": 4}, "must divide"),
        ({"num_features": 4, "iters": 0}, "iters must be a positive int"),
        ({"num_features": 4, "eps": -1.0}, "eps must be"),
        ({"num_features": 4, "eps": float("nan")}, "eps must be"),
        ({"num_features": 4, "axis": "batch"}, "axis must be"),
        ({"num_features": 4, "momentum": 1.5}, "momentum must lie"),
        ({"num_features": 4, "num_groups": 0}, "num_groups must be"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IterNorm(**kwargs)
    with pytest.raises(TypeError, match="num_features must be an int"):
        IterNorm(4.0)  # type: ignore[arg-type]


def test_repr():
    text = repr(IterNorm(8, iters=3, axis="samples", num_groups=2))
    assert "iters=3" in text and "axis='samples'" in text and "num_groups=2" in text
    assert "track_running_stats=False" in text
