"""Pairwise metrics are summed over upper row blocks; block size must not change any value.

``collapse_metrics`` reads all the pairwise metrics of one matrix from a single pass over its
Gram blocks; its values must equal the separate functions' and the brute-force reference's.
"""

import numpy as np
import pytest
import torch

import analysis.collapse as C
from analysis.stats import FeatureStats
from tests.analysis import reference as ref


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


@pytest.mark.parametrize("block", [7, 40 * 40, 1 << 22])
def test_collapse_metrics_one_gram_pass_equals_separate_functions(monkeypatch, block):
    """The shared Gram pass gives the separate functions' values to 1e-12 (several blocks)."""
    s, w = _stats(k=40, d=12, seed=5)
    monkeypatch.setattr(C, "_BLOCK_ELEMENTS", block)
    got = C.collapse_metrics(s, w)
    separate = {
        "equiangularity_means": C.equiangularity(s),
        "etf_error_means": C.etf_error(s),
        "cdnv": C.cdnv(s),
        "equiangularity_weights": C.equiangularity(s, w, of="weights"),
        "etf_error_weights": C.etf_error(s, w, of="weights"),
    }
    for key, value in separate.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_collapse_metrics_pairwise_match_brute_force_reference():
    g = torch.Generator().manual_seed(11)
    k, d = 30, 8
    y = torch.arange(k).repeat(5)[torch.randperm(5 * k, generator=g)]
    x = 3.0 * torch.randn(k, d, generator=g, dtype=torch.float64)[y] + 1.0
    x = x + 0.3 * torch.randn(len(y), d, generator=g, dtype=torch.float64)
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    s = FeatureStats(k, d)
    for part in torch.split(torch.arange(len(y)), 37):
        s.update(x[part], y[part])
    got = C.collapse_metrics(s, w)
    xn, yn, wn = x.numpy(), y.numpy(), w.numpy()
    want = {
        "equiangularity_means": ref.equiangularity(xn, yn),
        "etf_error_means": ref.etf_error(xn, yn),
        "cdnv": ref.cdnv(xn, yn),
        "equiangularity_weights": ref.equiangularity(xn, yn, wn, of="weights"),
        "etf_error_weights": ref.etf_error(xn, yn, wn, of="weights"),
        "etf_distance": ref.etf_distance(xn, yn),
    }
    for key, value in want.items():
        assert np.isfinite(value)
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
