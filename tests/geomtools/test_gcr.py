import geoopt
import pytest
import torch

from geomtools.manifolds import Grassmann
from geomtools.nn import GrassmannHead, grassmann_param_groups


def _head(seed: int = 0, **kw) -> GrassmannHead:
    g = torch.Generator().manual_seed(seed)
    return GrassmannHead(6, 4, 2, dtype=torch.float64, generator=g, **kw)


@torch.no_grad()
def test_logits_formula_and_range():
    head = _head()
    x = torch.randn(5, 6, dtype=torch.float64)
    out = head(x)
    assert out.shape == (5, 4)
    xn = x / x.norm(dim=1, keepdim=True)
    expected = torch.stack([25.0 * (head.bases[c].T @ xn.T).norm(dim=0) for c in range(4)], dim=1)
    assert torch.allclose(out, expected, atol=1e-12)
    assert bool((out >= 0).all()) and bool((out <= 25.0 + 1e-12).all())
    # a feature inside class 1's subspace scores γ for class 1
    inside = head.bases[1] @ torch.tensor([0.6, -0.8], dtype=torch.float64)
    assert float(head(3.0 * inside[None])[0, 1]) == pytest.approx(25.0, abs=1e-12)
    assert torch.allclose(head(2.5 * x), out, atol=1e-12)  # scale invariant in x


@torch.no_grad()
def test_logits_invariant_to_basis_rotation():
    head = _head()
    x = torch.randn(7, 6, dtype=torch.float64)
    before = head(x)
    q, _ = torch.linalg.qr(torch.randn(4, 2, 2, dtype=torch.float64))
    head.bases.copy_(head.bases @ q)
    assert torch.allclose(head(x), before, atol=1e-12)


def test_bases_are_grassmann_points_and_init_reproducible():
    head = _head(seed=3)
    assert isinstance(head.bases, geoopt.ManifoldParameter)
    assert isinstance(head.bases.manifold, Grassmann)
    head.bases.manifold.assert_check_point_on_manifold(head.bases, atol=1e-12, rtol=0)
    assert torch.equal(head.bases, _head(seed=3).bases)
    with pytest.raises(ValueError, match="subspace_dim"):
        GrassmannHead(3, 2, 4)
    with pytest.raises(ValueError, match=r"\[B, 6\]"):
        head(torch.randn(2, 5, dtype=torch.float64))


def test_riemannian_gradient_equals_euclidean_stiefel_gradient():
    head = _head(seed=1)
    x = torch.randn(16, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (16,))
    loss = torch.nn.functional.cross_entropy(head(x), y)
    (egrad,) = torch.autograd.grad(loss, head.bases)
    ours = Grassmann().egrad2rgrad(head.bases.detach(), egrad)
    stiefel = geoopt.EuclideanStiefel().egrad2rgrad(head.bases.detach(), egrad)
    assert float((ours - stiefel).abs().max()) <= 1e-12
    # rotation invariance makes Yᵀ∇f symmetric, which is why the two agree
    ytg = head.bases.detach().mT @ egrad
    assert float((ytg - ytg.mT).abs().max()) <= 1e-12


def test_param_groups_and_training():
    torch.manual_seed(0)
    backbone = torch.nn.Linear(5, 6).double()
    head = _head(seed=2)
    model = torch.nn.Sequential(backbone, head)
    groups = grassmann_param_groups(
        model, lr=0.1, weight_decay=1e-4, grassmann_lr_factor=0.5, stabilize=5
    )
    assert [len(g["params"]) for g in groups] == [1, 2]
    assert groups[0]["params"][0] is head.bases
    assert groups[0]["weight_decay"] == 0.0 and groups[0]["lr"] == pytest.approx(0.05)
    assert groups[0]["stabilize"] == 5 and groups[1]["weight_decay"] == 1e-4
    opt = geoopt.optim.RiemannianAdam(groups)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    x = torch.randn(64, 5, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    first = None
    loss = torch.zeros(())
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
        sched.step()
    assert loss.item() < 0.5 * first
    # the scheduler scaled both groups, keeping their ratio
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**6)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * 0.5**6)
    head.bases.manifold.assert_check_point_on_manifold(head.bases, atol=1e-12, rtol=0)
