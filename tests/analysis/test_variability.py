"""analysis.variability.intra_class_variability against the independent reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from analysis import collapse, variability
from analysis.stats import EmptyClassWarning, FeatureStats
from tests.analysis import reference as ref


def make_data(seed: int, sizes: list[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((len(sizes), dim)) + 1.0
    x = np.concatenate([centres[c] + rng.standard_normal((n, dim)) for c, n in enumerate(sizes)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    order = rng.permutation(x.shape[0])
    return x[order], y[order]


def build_stats(x: np.ndarray, y: np.ndarray, num_classes: int, batches: int = 5) -> FeatureStats:
    stats = FeatureStats(num_classes, x.shape[1])
    for idx in np.array_split(np.arange(x.shape[0]), batches):
        stats.update(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
    return stats


CASES = {
    "balanced_K5_D7": (1, [60] * 5, 7),
    "K12_gt_D5": (2, [30] * 12, 5),
    "imbalanced_K6_D8": (3, [1, 3, 20, 70, 150, 56], 8),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name: str) -> None:
    seed, sizes, dim = CASES[name]
    x, y = make_data(seed, sizes, dim)
    got = variability.intra_class_variability(build_stats(x, y, len(sizes)))
    want = ref.intra_class_variability(x, y)
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert 0.0 < got < 1.5


@pytest.mark.parametrize("name", list(CASES))
def test_reference_pair_average_equals_stable_form(name: str) -> None:
    # Literal definition (all pairs incl. i = j, averaged per class, then over classes; d̄_total
    # averaged over all K² class pairs) equals the ‖x̂ − m̂‖² form and 1 − ‖(1/K)Σ m̂_c‖².
    seed, sizes, dim = CASES[name]
    x, y = make_data(seed, sizes, dim)
    lit_within, lit_total = ref.intra_class_variability_literal(x, y)
    st_within, st_total = ref.intra_class_variability_parts(x, y)
    assert lit_within == pytest.approx(st_within, rel=1e-12)
    assert lit_total == pytest.approx(st_total, rel=1e-12)
    mh = ref.unit_class_means(x, y)
    assert st_within == pytest.approx(float(np.mean(1.0 - np.sum(mh**2, axis=1))), rel=1e-10)
    got = variability.intra_class_variability(build_stats(x, y, len(sizes)))
    assert got == pytest.approx(lit_within / lit_total, rel=1e-10)


def test_in_collapse_metrics() -> None:
    x, y = make_data(4, [40] * 4, 6)
    stats = build_stats(x, y, 4)
    got = collapse.collapse_metrics(stats)["intra_class_variability"]
    assert got == variability.intra_class_variability(stats)
    assert got == pytest.approx(ref.intra_class_variability(x, y), rel=1e-10)


def test_invariant_to_per_sample_scale_and_rotation() -> None:
    x, y = make_data(5, [30, 45, 25], 5)
    rng = np.random.default_rng(6)
    base = variability.intra_class_variability(build_stats(x, y, 3))
    scaled = x * rng.uniform(0.01, 100.0, size=(x.shape[0], 1))
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    assert variability.intra_class_variability(build_stats(scaled, y, 3)) == pytest.approx(
        base, rel=1e-10
    )
    assert variability.intra_class_variability(build_stats(x @ q.T, y, 3)) == pytest.approx(
        base, rel=1e-10
    )


def test_near_collapse_is_accurate() -> None:
    # Unit direction per class + 1e-7 noise (and a random positive scale per sample, which
    # normalisation removes): d̄_within ~ 1e-14, far below the round-off of 1 − ‖m̂_c‖².
    k, dim, per_class = 4, 6, 50
    rng = np.random.default_rng(8)
    dirs = rng.standard_normal((k, dim))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    x = np.concatenate(
        [dirs[c] + 1e-7 * rng.standard_normal((per_class, dim)) for c in range(k)]
    ) * rng.uniform(0.5, 2.0, size=(k * per_class, 1))
    y = np.repeat(np.arange(k), per_class)
    order = rng.permutation(x.shape[0])
    x, y = x[order], y[order]

    stable = ref.intra_class_variability(x, y)  # two-pass ‖x̂ − m̂‖² form
    d_within, _ = ref.intra_class_variability_parts(x, y)
    assert 1e-16 < d_within < 1e-12
    got = variability.intra_class_variability(build_stats(x, y, k, batches=7))
    assert got > 0.0
    assert got == pytest.approx(stable, rel=1e-6)
    # the literal pair average agrees with the stable form only to ~1e-16 absolute
    lit_within, lit_total = ref.intra_class_variability_literal(x, y)
    assert abs(lit_within / lit_total - stable) < 1e-14
    # the cancellation-prone form 1 − ‖Σx̂‖²/n² is off by far more than our tolerance
    naive = ref.intra_class_variability_naive(x, y)
    assert abs(naive - stable) > 1e-4 * stable


def test_absent_class_excluded() -> None:
    x, y = make_data(9, [20, 30, 25], 4)
    y = np.where(y == 2, 4, y)  # labels {0, 1, 4} of 5
    stats = build_stats(x, y, 5)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = variability.intra_class_variability(stats)
    assert len([r for r in rec if issubclass(r.category, EmptyClassWarning)]) <= 1
    assert got == pytest.approx(ref.intra_class_variability(x, y), rel=1e-10)
