import itertools

import numpy as np
import pytest
import scipy.optimize
import torch

from geomtools.frames import haframe, haframe_shape, simplex_etf
from geomtools.losses import FrameCosineLoss
from geomtools.nn.frame_head import FixedFrameHead


def tree_333() -> torch.Tensor:
    """LCA heights of a balanced 3×3×3 tree (27 leaves): 1 siblings, 2 cousins, 3 otherwise."""
    leaves = list(itertools.product(range(3), range(3), range(3)))
    h = torch.zeros(27, 27, dtype=torch.float64)
    for i, a in enumerate(leaves):
        for j, b in enumerate(leaves):
            if i != j:
                h[i, j] = 3 if a[0] != b[0] else (2 if a[1] != b[1] else 1)
    return h


# ---------------------------------------------------------------------------- simplex ETF
@pytest.mark.parametrize(("k", "d"), [(2, 1), (5, 4), (6, 10)])
def test_simplex_etf(k, d):
    w = simplex_etf(k, d, seed=3)
    assert w.shape == (k, d) and w.dtype == torch.float64
    gram = w @ w.T
    expected = torch.full((k, k), -1.0 / (k - 1), dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    assert torch.allclose(gram, expected, atol=1e-14)
    assert torch.equal(w, simplex_etf(k, d, seed=3))
    if d > 1:
        assert not torch.allclose(w, simplex_etf(k, d, seed=4))


def test_simplex_etf_errors():
    with pytest.raises(ValueError, match="dim >= 4"):
        simplex_etf(5, 3)
    with pytest.raises(ValueError, match="num_classes"):
        simplex_etf(1, 3)


# ---------------------------------------------------------------------------- HAFrame
def _independent_shape(e: np.ndarray) -> float:
    """Root of λ_min((1−s)E + s11ᵀ) by Brent's method on numpy's eigvalsh."""

    def lam_min(s: float) -> float:
        return float(np.linalg.eigvalsh((1 - s) * e + s)[0])

    return float(scipy.optimize.brentq(lam_min, -1.0, 0.0, xtol=1e-14))


@pytest.mark.parametrize("gamma", [1.0, 2.0, 5.0])
def test_haframe_on_333_tree(gamma):
    h = tree_333()
    frame = haframe(h, 32, gamma=gamma, seed=0)
    e = np.exp(-gamma * h.numpy() / 3.0)
    s_ref = _independent_shape(e)
    assert frame.method == "closed_form"
    assert frame.s == pytest.approx(s_ref, abs=1e-10)
    s_expected = (1 - frame.s) * e + frame.s
    assert np.allclose(frame.similarity.numpy(), s_expected, atol=1e-14)
    w = frame.weight
    assert torch.allclose(torch.linalg.vector_norm(w, dim=1), torch.ones(27, dtype=w.dtype))
    assert torch.allclose(w @ w.T, frame.similarity, atol=1e-12)
    # cosines follow the hierarchy: siblings > cousins > strangers
    cos = (w @ w.T).numpy()
    assert cos[0, 1] > cos[0, 3] > cos[0, 9]
    assert torch.equal(w, haframe(h, 32, gamma=gamma, seed=0).weight)


def test_closed_form_and_bisection_agree_and_s_is_minimal():
    h = tree_333()
    e = torch.exp(-2.0 * h / 3.0)
    s_closed, m1 = haframe_shape(e, method="closed_form")
    s_bis, m2 = haframe_shape(e, method="bisection")
    assert (m1, m2) == ("closed_form", "bisection")
    assert s_bis == pytest.approx(s_closed, abs=1e-9)
    lam = torch.linalg.eigvalsh((1 - s_closed) * e + s_closed)[0]
    assert abs(float(lam)) < 1e-12
    worse = torch.linalg.eigvalsh((1 - (s_closed - 1e-6)) * e + (s_closed - 1e-6))[0]
    assert float(worse) < 0
    # the reference 100-point grid lands short of the optimum
    grid = np.linspace(-1, 0, 100)
    feasible = [s for s in grid if np.linalg.eigvalsh((1 - s) * e.numpy() + s)[0] >= 0]
    assert min(feasible) > s_closed + 1e-4


def test_works_for_dim_below_num_classes_and_ill_conditioned_falls_back():
    h = tree_333()
    frame = haframe(h, 26, gamma=2.0, seed=1)  # rank of S(s*) is 26 < K = 27
    assert torch.allclose(frame.weight @ frame.weight.T, frame.similarity, atol=1e-12)
    with pytest.raises(ValueError, match="dim >= 26"):
        haframe(h, 25, gamma=2.0)
    tiny = haframe(h, 27, gamma=1e-9)  # E ≈ 11ᵀ: ill-conditioned → bisection
    assert tiny.method == "bisection"
    e = torch.exp(-1e-9 * h / 3.0)
    assert float(torch.linalg.eigvalsh((1 - tiny.s) * e + tiny.s)[0]) > -1e-12
    with pytest.raises(ValueError, match="ill-conditioned"):
        haframe(h, 27, gamma=1e-9, method="closed_form")


def test_linear_mapping_and_bad_distances():
    h = tree_333()
    frame = haframe(h, 30, mapping="linear", seed=2)
    e = 1 - h.numpy() / 3.0
    assert frame.gamma is None
    assert frame.s == pytest.approx(_independent_shape(e), abs=1e-9)
    with pytest.raises(ValueError, match="gamma"):
        haframe(h, 30)
    with pytest.raises(ValueError, match="symmetric"):
        haframe(torch.tensor([[0.0, 1.0], [2.0, 0.0]]), 2, gamma=1.0)
    with pytest.raises(ValueError, match="diagonal"):
        haframe(torch.tensor([[1.0, 1.0], [1.0, 0.0]]), 2, gamma=1.0)


# ---------------------------------------------------------------------------- head and loss
def test_fixed_frame_head_is_frozen_but_saved():
    w = simplex_etf(4, 6, seed=0)
    head = FixedFrameHead(w, in_features=5)
    names = [n for n, _ in head.named_parameters()]
    assert "weight" not in names and all(
        not n.endswith("weight") or "transform" in n for n in names
    )
    assert "weight" in head.state_dict()
    x = torch.randn(8, 5)
    out = head(x)
    assert out.shape == (8, 4)
    out.sum().backward()
    assert head.weight.grad is None
    assert torch.allclose(out, head.features(x) @ w.float().T)
    clone = FixedFrameHead(simplex_etf(4, 6, seed=9), in_features=5)
    clone.load_state_dict(head.state_dict())
    assert torch.equal(clone.weight, head.weight)
    plain = FixedFrameHead(w)
    with pytest.raises(ValueError, match=r"\[B, 6\]"):
        plain(torch.randn(2, 5))


def test_frame_cosine_loss_value_and_gradient():
    w = simplex_etf(5, 7, seed=1)
    s = w @ w.T
    loss = FrameCosineLoss(w, alpha=0.3)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 7, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    logits = h @ w.T
    ce = torch.nn.functional.cross_entropy(logits, y)
    cos = (h / h.norm(dim=1, keepdim=True)) @ w.T
    reg = ((cos - s[y]) ** 2).sum(1).mean()
    assert float(loss(h, y)) == pytest.approx(float(0.7 * ce + 0.3 * reg), rel=1e-6)
    loss64 = FrameCosineLoss(w, alpha=0.3).double()
    hh = h.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: loss64(t, y), (hh,), eps=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="alpha"):
        FrameCosineLoss(w, alpha=1.5)
    with pytest.raises(TypeError, match="integers"):
        loss(h, y.float())


def test_haframe_closed_form_factor_is_exact_at_a_larger_k():
    """One eigh of E gives s and W (no eigh of S): W Wᵀ = S to 1e-12, s as haframe_shape's."""
    h = torch.tensor(
        [
            [0.0 if i == j else (1.0 if i // 12 == j // 12 else 2.0) for j in range(120)]
            for i in range(120)
        ],
        dtype=torch.float64,
    )
    frame = haframe(h, 130, gamma=2.0, seed=3)
    assert frame.method == "closed_form"
    s_ref, _ = haframe_shape(torch.exp(-2.0 * h / 2.0), method="closed_form")
    assert frame.s == pytest.approx(s_ref, rel=1e-12)
    w = frame.weight
    assert w.shape == (120, 130)
    assert float((w @ w.T - frame.similarity).abs().max()) <= 1e-12
    assert torch.equal(w, haframe(h, 130, gamma=2.0, seed=3).weight)
    assert haframe(h, 119, gamma=2.0, seed=3).weight.shape == (120, 119)  # rank K − 1
