"""Pairwise metrics are summed over upper row blocks; block size must not change any value."""

import pytest
import torch

import analysis.collapse as C
from analysis.stats import FeatureStats


def _stats(k: int = 23, d: int = 9, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat(4)
    x = torch.randn(k, d, generator=g, dtype=torch.float64)[y]
    x = x + 0.2 * torch.randn(len(y), d, generator=g, dtype=torch.float64)
    s = FeatureStats(k, d)
    s.update(x, y)
    return s, torch.randn(k, d, generator=g, dtype=torch.float64)


def _all(s, w):
    out = C.collapse_metrics(s, w)
    out["equiangularity_std"] = C.equiangularity(s, reduction="std")
    out["wh"] = C.self_duality(s, w, variant="wh")
    out["cdnv2"] = C.cdnv(s, exponent=2)
    return out


@pytest.mark.parametrize("block", [1, 5, 23 * 7, 23 * 23 + 1])
def test_block_size_does_not_change_values(monkeypatch, block):
    s, w = _stats()
    expected = _all(s, w)
    monkeypatch.setattr(C, "_BLOCK_ELEMENTS", block)
    got = _all(s, w)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_cdnv_coinciding_means_named(monkeypatch):
    monkeypatch.setattr(C, "_BLOCK_ELEMENTS", 8)
    s = FeatureStats(5, 3)
    x = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0], [2, 2, 2.0]], dtype=torch.float64)
    s.update(x, torch.arange(5))
    with pytest.raises(ValueError, match=r"classes \(1, 3\) coincide"):
        C.cdnv(s)
