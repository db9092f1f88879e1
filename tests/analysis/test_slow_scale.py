"""Full-size checks, run in the separate slow job (``python -m pytest -m slow``)."""

import warnings

import numpy as np
import pytest
import torch

from analysis.collapse import collapse_metrics
from analysis.stats import EmptyClassWarning, FeatureStats

pytestmark = pytest.mark.slow


def test_many_classes_full_size_matches_two_pass() -> None:
    """K = 32768, D = 1024, B = 512 (the issue's many-class case), 40 batches."""
    k, d, b, batches = 32768, 1024, 512, 40
    g = torch.Generator().manual_seed(0)
    stats = FeatureStats(k, d)
    xs, ys = [], []
    for _ in range(batches):
        y = torch.randint(0, 64, (b,), generator=g) * 512 + torch.randint(0, 3, (b,), generator=g)
        x = torch.randn(b, d, generator=g) + y[:, None].float() * 1e-3
        stats.update(x, y)
        xs.append(x.double().numpy())
        ys.append(y.numpy())
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    within = centred.T @ centred / len(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = stats.within_covariance().numpy()
        metrics = collapse_metrics(stats)
    assert [w.category for w in caught] == [EmptyClassWarning]  # once per state
    assert all(np.isfinite(v) for v in metrics.values())
    assert np.abs(got - within).max() <= 1e-12 * np.abs(within).max()
    assert np.allclose(stats.means.numpy()[classes], means, rtol=0, atol=1e-13)
    assert int(stats.counts.sum()) == batches * b
    present = stats.present.numpy()
    assert present.sum() == len(classes)
