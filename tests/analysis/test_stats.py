"""Tests of :class:`analysis.stats.FeatureStats` against a dense two-pass float64 reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.stats import EmptyClassWarning, FeatureStats

STATE_KEYS = ("counts", "means", "scatter", "class_m2", "unit_means", "unit_m2", "zero_norm")


# ---------------------------------------------------------------------------- reference
def reference_stats(x: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, object]:
    """Dense two-pass float64 statistics with explicit per-class loops (docs/conventions.md)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    n_total, dim = x.shape
    present = [c for c in range(num_classes) if np.any(y == c)]
    k = len(present)

    counts = np.zeros(num_classes, dtype=np.int64)
    means = np.zeros((num_classes, dim))
    class_scatter = np.zeros((num_classes, dim, dim))
    class_m2 = np.zeros(num_classes)
    for c in present:
        xc = x[y == c]
        counts[c] = xc.shape[0]
        means[c] = xc.sum(axis=0) / xc.shape[0]  # pass 1
        d = xc - means[c]  # pass 2
        class_scatter[c] = d.T @ d
        class_m2[c] = np.sum(d * d)

    mu_samples = x.sum(axis=0) / n_total
    mu_classes = sum(means[c] for c in present) / k

    within = sum(class_scatter[c] for c in present) / n_total
    within_balanced = sum(class_scatter[c] / counts[c] for c in present) / k

    def between(mu: np.ndarray) -> np.ndarray:
        out = np.zeros((dim, dim))
        for c in present:
            v = means[c] - mu
            out += np.outer(v, v)
        return out / k

    def total(mu: np.ndarray) -> np.ndarray:
        d = x - mu
        return d.T @ d / n_total

    var0 = np.zeros(num_classes)
    var1 = np.zeros(num_classes)
    for c in present:
        var0[c] = class_m2[c] / counts[c]
        var1[c] = class_m2[c] / (counts[c] - 1) if counts[c] > 1 else 0.0

    with np.errstate(over="ignore"):
        norms = np.linalg.norm(x, axis=1)
    huge = ~np.isfinite(norms)  # finite rows whose norm overflows: rescale first
    amax = np.max(np.abs(x[huge]), axis=1)
    norms[huge] = amax * np.linalg.norm(x[huge] / amax[:, None], axis=1)
    xu = np.zeros_like(x)
    nz = norms > 0
    xu[nz] = x[nz] / norms[nz, None]
    unit_means = np.zeros((num_classes, dim))
    unit_sq_dev = np.zeros(num_classes)
    for c in present:
        uc = xu[y == c]
        unit_means[c] = uc.sum(axis=0) / uc.shape[0]
        du = uc - unit_means[c]
        unit_sq_dev[c] = np.sum(du * du)

    return {
        "counts": counts,
        "means": means,
        "mu_samples": mu_samples,
        "mu_classes": mu_classes,
        "within": within,
        "within_balanced": within_balanced,
        "between_samples": between(mu_samples),
        "between_classes": between(mu_classes),
        "total_samples": total(mu_samples),
        "total_classes": total(mu_classes),
        "var0": var0,
        "var1": var1,
        "unit_means": unit_means,
        "unit_sq_dev": unit_sq_dev,
        "within_scatter": sum(class_scatter[c] for c in present),
        "num_zero_norm": int(np.sum(~nz)),
    }


def rel_err(actual: torch.Tensor | np.ndarray, expected: np.ndarray) -> float:
    """Max-abs error relative to the max-abs of the reference (0 if both are zero)."""
    a = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else actual
    a = np.asarray(a, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    err = float(np.max(np.abs(a - e))) if e.size else 0.0
    if scale == 0.0:
        return err
    return err / scale


def assert_close(actual: torch.Tensor | np.ndarray, expected: np.ndarray, tol: float) -> None:
    err = rel_err(actual, expected)
    assert err <= tol, f"relative error {err:.3e} > {tol:.1e}"


def uneven_batches(n: int, rng: np.random.Generator, max_batches: int = 6) -> list[np.ndarray]:
    """Split ``range(n)`` into 1..max_batches contiguous chunks of random, unequal sizes."""
    nb = int(rng.integers(1, max_batches + 1))
    nb = min(nb, n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=nb - 1, replace=False)) if nb > 1 else []
    return [np.asarray(c) for c in np.split(np.arange(n), cuts)]


def feed(stats: FeatureStats, x: np.ndarray, y: np.ndarray, batches: list[np.ndarray]) -> None:
    for idx in batches:
        stats.update(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))


def imbalanced_data(
    num_classes: int, dim: int, seed: int, min_count: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled data with very unequal class sizes and distinct class centres."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(min_count, 12, size=num_classes)
    counts[int(rng.integers(num_classes))] += 40  # one dominant class
    y = np.repeat(np.arange(num_classes), counts)
    centres = 3.0 * rng.standard_normal((num_classes, dim)) + 1.0
    scales = rng.uniform(0.2, 2.0, size=num_classes)
    x = centres[y] + scales[y, None] * rng.standard_normal((y.size, dim))
    perm = rng.permutation(y.size)
    return x[perm], y[perm].astype(np.int64)


def state_tensors(stats: FeatureStats) -> dict[str, torch.Tensor]:
    return {k: v for k, v in stats.state_dict().items() if isinstance(v, torch.Tensor)}


def assert_states_identical(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, torch.Tensor):
            assert isinstance(vb, torch.Tensor), key
            assert va.dtype == vb.dtype, key
            assert torch.equal(va, vb), key
        else:
            assert va == vb, key


# ---------------------------------------------------------------------------- exact values
@pytest.mark.parametrize(
    ("num_classes", "dim", "seed"),
    [(7, 3, 0), (3, 9, 1), (5, 5, 2), (12, 4, 3)],
    ids=["K>D", "D>K", "K=D", "K>>D"],
)
def test_every_statistic_matches_two_pass_reference(num_classes: int, dim: int, seed: int) -> None:
    x, y = imbalanced_data(num_classes, dim, seed)
    rng = np.random.default_rng(100 + seed)
    batches = uneven_batches(y.size, rng, max_batches=7)
    assert len({b.size for b in batches}) > 1 or len(batches) == 1
    ref = reference_stats(x, y, num_classes)

    stats = FeatureStats(num_classes, dim, track_class_scatter=True)
    feed(stats, x, y, batches)
    tol = 1e-12

    assert stats.num_samples == y.size
    assert stats.counts.dtype == torch.int64
    assert torch.equal(stats.counts, torch.from_numpy(ref["counts"]))
    assert bool(stats.present.all())
    assert_close(stats.means, ref["means"], tol)
    assert_close(stats.global_mean_of(), ref["mu_samples"], tol)
    assert_close(stats.global_mean_of("samples"), ref["mu_samples"], tol)
    assert_close(stats.global_mean_of("classes"), ref["mu_classes"], tol)
    assert_close(stats.within_scatter, ref["within_scatter"], tol)
    assert_close(stats.within_covariance(), ref["within"], tol)
    assert_close(stats.within_covariance(within="samples"), ref["within"], tol)
    assert_close(stats.within_covariance(within="balanced"), ref["within_balanced"], tol)
    assert_close(stats.between_covariance(), ref["between_samples"], tol)
    assert_close(stats.between_covariance(global_mean="samples"), ref["between_samples"], tol)
    assert_close(stats.between_covariance(global_mean="classes"), ref["between_classes"], tol)
    assert_close(stats.total_covariance(), ref["total_samples"], tol)
    assert_close(stats.total_covariance(global_mean="samples"), ref["total_samples"], tol)
    assert_close(stats.total_covariance(global_mean="classes"), ref["total_classes"], tol)
    assert_close(stats.class_variance(), ref["var0"], tol)
    assert_close(stats.class_variance(ddof=0), ref["var0"], tol)
    assert_close(stats.class_variance(ddof=1), ref["var1"], tol)
    assert_close(stats.unit_means, ref["unit_means"], tol)
    assert_close(stats.unit_sq_dev, ref["unit_sq_dev"], tol)
    assert stats.num_zero_norm == 0

    # Everything is float64, of the documented shape.
    for t in (
        stats.means,
        stats.within_covariance(),
        stats.between_covariance(),
        stats.total_covariance(),
    ):
        assert t.dtype == torch.float64
    assert stats.within_covariance().shape == (dim, dim)
    assert stats.class_variance().shape == (num_classes,)
    # Sanity of the reference itself: the decomposition Σ_T = Σ_W + Σ_B(sample-weighted).
    n = ref["counts"].astype(np.float64)
    mc = ref["means"] - ref["mu_samples"]
    between_weighted = (mc * n[:, None]).T @ mc / n.sum()
    np.testing.assert_allclose(
        ref["total_samples"], ref["within"] + between_weighted, rtol=0, atol=1e-12
    )


def test_default_within_does_not_need_class_scatter() -> None:
    x, y = imbalanced_data(4, 3, seed=5)
    stats = FeatureStats(4, 3)
    feed(stats, x, y, [np.arange(y.size)])
    assert_close(stats.within_covariance(), reference_stats(x, y, 4)["within"], 1e-12)
    with pytest.raises(ValueError, match="track_class_scatter"):
        stats.within_covariance(within="balanced")


# ---------------------------------------------------------------------------- merge / split
def _assert_stats_close(a: FeatureStats, b: FeatureStats, tol: float) -> None:
    assert torch.equal(a.counts, b.counts)
    assert a.num_zero_norm == b.num_zero_norm
    for name in ("means", "unit_means", "unit_sq_dev", "within_scatter"):
        assert_close(getattr(a, name), getattr(b, name).numpy(), tol)
    assert_close(a.class_variance(0), b.class_variance(0).numpy(), tol)
    if a.track_class_scatter and b.track_class_scatter:
        assert_close(a.within_covariance("balanced"), b.within_covariance("balanced").numpy(), tol)
    for fn in ("between_covariance", "total_covariance"):
        for gm in ("samples", "classes"):
            assert_close(getattr(a, fn)(gm), getattr(b, fn)(gm).numpy(), tol)


@settings(max_examples=20, deadline=None, database=None)
@given(
    num_shards=st.integers(min_value=2, max_value=6),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    tree=st.booleans(),
)
def test_merge_of_shards_equals_one_pass(num_shards: int, seed: int, tree: bool) -> None:
    rng = np.random.default_rng(seed)
    num_classes, dim = 6, 5
    x, y = imbalanced_data(num_classes, dim, seed=seed % 1000)
    x = x + 20.0  # a large common offset makes a sloppy merge visible

    # Each class goes to a random non-empty subset of shards, so some shards lack some classes.
    shard = np.empty(y.size, dtype=np.int64)
    for c in range(num_classes):
        rows = np.flatnonzero(y == c)
        n_owners = 1 if c == 0 else int(rng.integers(1, num_shards + 1))
        owners = rng.choice(num_shards, size=n_owners, replace=False)
        shard[rows] = owners[rng.integers(0, owners.size, size=rows.size)]

    one_pass = FeatureStats(num_classes, dim, track_class_scatter=True)
    feed(one_pass, x, y, uneven_batches(y.size, rng))

    parts = []
    for s in range(num_shards):
        part = FeatureStats(num_classes, dim, track_class_scatter=True)
        rows = np.flatnonzero(shard == s)
        if rows.size:  # an empty shard merges as a no-op
            xs, ys = x[rows], y[rows]
            feed(part, xs, ys, uneven_batches(rows.size, rng, max_batches=3))
        parts.append(part)
    assert any(not bool(p.present.all()) for p in parts)  # some shard misses a class

    order = [int(i) for i in rng.permutation(num_shards)]
    if tree:  # pairwise (tree) merge in random order
        pool = [parts[i] for i in order]
        while len(pool) > 1:
            a = pool.pop(int(rng.integers(len(pool))))
            b = pool.pop(int(rng.integers(len(pool))))
            pool.append(a.merge(b))
        merged = pool[0]
    else:  # sequential merge into a fresh accumulator
        merged = FeatureStats(num_classes, dim, track_class_scatter=True)
        for i in order:
            assert merged.merge(parts[i]) is merged

    _assert_stats_close(merged, one_pass, 1e-12)
    ref = reference_stats(x, y, num_classes)
    assert_close(merged.within_covariance(), ref["within"], 1e-12)
    assert_close(merged.within_covariance("balanced"), ref["within_balanced"], 1e-12)
    assert_close(merged.unit_sq_dev, ref["unit_sq_dev"], 1e-12)


def test_merge_rejects_mismatched_stats() -> None:
    a = FeatureStats(3, 4)
    with pytest.raises(TypeError):
        a.merge("not stats")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes"):
        a.merge(FeatureStats(4, 4))
    with pytest.raises(ValueError, match="class scatter"):
        FeatureStats(3, 4, track_class_scatter=True).merge(a)


# ---------------------------------------------------------------------------- near collapse
def test_near_collapse_accuracy_beats_raw_moments() -> None:
    rng = np.random.default_rng(1234)
    num_classes, dim, n, sigma, batch = 10, 16, 20000, 1e-3, 512
    centres = rng.standard_normal((num_classes, dim))
    centres *= 50.0 / np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    x = centres[y] + sigma * rng.standard_normal((n, dim))
    ref = reference_stats(x, y, num_classes)
    true_trace = float(np.trace(ref["within"]))
    assert true_trace == pytest.approx(dim * sigma**2, rel=0.05)

    stats = FeatureStats(num_classes, dim)
    raw_sum = np.zeros((num_classes, dim))  # plain one-pass raw moments, per class
    raw_sq = np.zeros((num_classes, dim, dim))
    raw_unit_sum = np.zeros((num_classes, dim))
    raw_unit_sq = np.zeros(num_classes)
    for start in range(0, n, batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        stats.update(torch.from_numpy(xb), torch.from_numpy(yb))
        ub = xb / np.linalg.norm(xb, axis=1, keepdims=True)
        for c in range(num_classes):
            m = yb == c
            raw_sum[c] += xb[m].sum(axis=0)
            raw_sq[c] += xb[m].T @ xb[m]
            raw_unit_sum[c] += ub[m].sum(axis=0)
            raw_unit_sq[c] += np.sum(ub[m] * ub[m])

    # FeatureStats: ≤ 1e-9 relative to the two-pass reference.
    trace_err = abs(float(torch.trace(stats.within_covariance())) - true_trace) / true_trace
    assert trace_err <= 1e-9, trace_err
    assert_close(stats.within_covariance(), ref["within"], 1e-9)
    assert_close(stats.class_variance(), ref["var0"], 1e-9)
    assert_close(stats.unit_sq_dev, ref["unit_sq_dev"], 1e-9)

    # Raw moments E[xxᵀ] − μμᵀ (per class) miss that bar: the requirement is not trivial.
    counts = ref["counts"].astype(np.float64)
    raw_within = np.zeros((dim, dim))
    raw_unit_sq_dev = np.zeros(num_classes)
    for c in range(num_classes):
        mu = raw_sum[c] / counts[c]
        raw_within += raw_sq[c] - counts[c] * np.outer(mu, mu)
        mu_u = raw_unit_sum[c] / counts[c]
        raw_unit_sq_dev[c] = raw_unit_sq[c] - counts[c] * float(mu_u @ mu_u)
    raw_within /= n
    raw_trace_err = abs(float(np.trace(raw_within)) - true_trace) / true_trace
    assert raw_trace_err > 1e-9, raw_trace_err  # ~1e-8 here; FeatureStats: ~1e-14
    assert rel_err(raw_within, ref["within"]) > 1e-8
    raw_var = np.array([np.trace(raw_sq[c]) for c in range(num_classes)]) / counts
    raw_var -= np.sum((raw_sum / counts[:, None]) ** 2, axis=1)
    assert rel_err(raw_var, ref["var0"]) > 1e-8
    assert rel_err(raw_unit_sq_dev, ref["unit_sq_dev"]) > 1e-9


@pytest.mark.parametrize(("num_classes", "batch"), [(10, 512), (3000, 512)])
def test_near_collapse_both_update_paths(num_classes: int, batch: int) -> None:
    """Few classes per batch take Chan's mean-shift form, many take the Welford form."""
    rng = np.random.default_rng(7)
    dim, n, sigma = 16, 6000, 1e-3
    centres = rng.standard_normal((num_classes, dim))
    centres *= 50.0 / np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    x = centres[y] + sigma * rng.standard_normal((n, dim))
    ref = reference_stats(x, y, num_classes)
    stats = FeatureStats(num_classes, dim, track_class_scatter=True)
    for start in range(0, n, batch):
        stats.update(torch.from_numpy(x[start : start + batch]), y[start : start + batch])
    present = ref["counts"] > 0
    assert_close(stats.within_scatter / n, ref["within"], 1e-9)
    assert_close(stats.class_variance()[present], ref["var0"][present], 1e-9)
    assert_close(stats.unit_sq_dev[present], ref["unit_sq_dev"][present], 1e-9)
    assert_close(stats.means[present], ref["means"][present], 1e-14)
    # balanced Σ_W (per-class scatter) through the same path
    cov = [
        (x[y == c] - x[y == c].mean(0)).T @ (x[y == c] - x[y == c].mean(0)) / np.sum(y == c)
        for c in range(num_classes)
        if np.any(y == c)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyClassWarning)
        balanced = stats.within_covariance("balanced")
    assert_close(balanced, np.mean(cov, axis=0), 1e-9)


# ---------------------------------------------------------------------------- dtypes / inputs
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_equals_upcast(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(64, 6, generator=gen) * 3 + 1).to(dtype)
    y = torch.randint(0, 4, (64,), generator=gen)
    low, high = FeatureStats(4, 6), FeatureStats(4, 6)
    for sl in (slice(0, 10), slice(10, 41), slice(41, 64)):
        low.update(x[sl], y[sl])
        high.update(x[sl].to(torch.float64), y[sl])
    assert_states_identical(low.state_dict(), high.state_dict())
    assert low.means.dtype == torch.float64
    ref = reference_stats(x.to(torch.float64).numpy(), y.numpy(), 4)
    assert_close(low.within_covariance(), ref["within"], 1e-12)


def test_numpy_input_accepted() -> None:
    x, y = imbalanced_data(4, 3, seed=11)
    x32 = x.astype(np.float32)
    from_numpy, from_torch = FeatureStats(4, 3), FeatureStats(4, 3)
    from_numpy.update(x32, y)
    from_numpy.update(x32[:5], y[:5].astype(np.int32))
    from_torch.update(torch.from_numpy(x32), torch.from_numpy(y))
    from_torch.update(torch.from_numpy(x32[:5]), torch.from_numpy(y[:5]))
    assert_states_identical(from_numpy.state_dict(), from_torch.state_dict())
    xx = np.concatenate([x32, x32[:5]])
    yy = np.concatenate([y, y[:5]])
    assert_close(from_numpy.within_covariance(), reference_stats(xx, yy, 4)["within"], 1e-12)


def test_class_with_one_sample_has_zero_variance() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 4)) + 5.0
    y = np.array([0, 1] * 9 + [0, 0], dtype=np.int64)
    stats = FeatureStats(3, 4)
    feed(stats, x, y, [np.arange(7), np.arange(7, 20)])
    stats.update(torch.tensor([[1.0, -2.0, 3.0, 4.0]], dtype=torch.float64), torch.tensor([2]))
    assert int(stats.counts[2]) == 1
    for ddof in (0, 1):
        var = stats.class_variance(ddof=ddof)
        assert float(var[2]) == 0.0
        assert bool(torch.isfinite(var).all())
        assert float(var[0]) > 0.0 and float(var[1]) > 0.0
    assert float(stats.unit_sq_dev[2]) == 0.0
    assert torch.equal(stats.means[2], torch.tensor([1.0, -2.0, 3.0, 4.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="ddof"):
        stats.class_variance(ddof=2)


def test_zero_feature_row_counted() -> None:
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    x[2] = 0.0
    x[7] = 0.0
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    stats = FeatureStats(2, 3)
    stats.update(x[:5], y[:5])
    stats.update(x[5:], y[5:])
    assert stats.num_zero_norm == 2
    assert bool(torch.isfinite(stats.unit_means).all())
    assert bool(torch.isfinite(stats.unit_sq_dev).all())
    stats.update(torch.zeros(1, 3), torch.tensor([1]))
    assert stats.num_zero_norm == 3


def test_huge_finite_features_whose_norm_overflows() -> None:
    # ‖x‖² overflows float64 but x and the within-class scatter do not.
    rng = np.random.default_rng(8)
    y = np.array([0, 1, 0, 1, 0, 1, 1], dtype=np.int64)
    centres = np.array([[1.0, -2.0, 0.5, 3.0], [-1.0, 1.0, 2.0, -0.5]])
    x = 1e155 * centres[y] + 1e150 * rng.standard_normal((y.size, 4))
    with np.errstate(over="ignore"):  # Σ_B and Σ_T do overflow; they are not checked here
        ref = reference_stats(x, y, 2)
    stats = FeatureStats(2, 4)
    feed(stats, x, y, [np.arange(3), np.arange(3, 7)])
    assert stats.num_zero_norm == 0
    for t in (stats.within_scatter, stats.unit_means, stats.unit_sq_dev, stats.means):
        assert bool(torch.isfinite(t).all())
    assert_close(stats.means, ref["means"], 1e-12)
    assert_close(stats.within_covariance(), ref["within"], 1e-9)
    assert_close(stats.unit_means, ref["unit_means"], 1e-12)
    assert_close(stats.unit_sq_dev, ref["unit_sq_dev"], 1e-9)


# ---------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("track", [False, True])
def test_state_dict_round_trip(tmp_path, track: bool) -> None:
    x, y = imbalanced_data(5, 4, seed=21)
    half = y.size // 2
    stats = FeatureStats(5, 4, track_class_scatter=track)
    feed(stats, x, y, [np.arange(0, 9), np.arange(9, half)])

    path = tmp_path / "stats.pt"
    torch.save(stats.state_dict(), path)
    loaded_state = torch.load(path, weights_only=True)
    assert_states_identical(loaded_state, stats.state_dict())
    reloaded = FeatureStats.from_state_dict(loaded_state)
    assert (reloaded.num_classes, reloaded.dim, reloaded.track_class_scatter) == (5, 4, track)
    assert_states_identical(reloaded.state_dict(), stats.state_dict())

    # Updating after the reload continues like the original object, to round-off: the state
    # holds reference-free statistics, so the reload shifts by the class means where the
    # original shifts by its first batch's means (both exact in exact arithmetic).
    rest = [np.arange(half, half + 13), np.arange(half + 13, y.size)]
    feed(stats, x, y, rest)
    feed(reloaded, x, y, rest)
    continued, original = reloaded.state_dict(), stats.state_dict()
    assert continued.keys() == original.keys()
    for key, value in original.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert_close(continued[key], value.numpy(), 1e-13)
        elif isinstance(value, torch.Tensor):
            assert torch.equal(continued[key], value), key
        else:
            assert continued[key] == value, key
    ref = reference_stats(x, y, 5)
    assert_close(reloaded.within_covariance(), ref["within"], 1e-12)
    assert_close(reloaded.unit_sq_dev, ref["unit_sq_dev"], 1e-12)
    if track:
        assert_close(reloaded.within_covariance("balanced"), ref["within_balanced"], 1e-12)


def test_from_state_dict_rejects_bad_state() -> None:
    state = FeatureStats(3, 2).state_dict()
    missing = dict(state)
    del missing["means"]
    with pytest.raises(ValueError, match="missing"):
        FeatureStats.from_state_dict(missing)
    bad_shape = dict(state, means=torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="means"):
        FeatureStats.from_state_dict(bad_shape)


# ---------------------------------------------------------------------------- bad input
def _nan_batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(6, 3)
    x[1, 2] = float("nan")
    x[4, 0] = float("nan")
    x[4, 1] = float("nan")
    return x, torch.tensor([0, 1, 2, 0, 1, 2])


def _inf_batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(6, 3)
    x[3, 1] = float("-inf")
    return x, torch.tensor([0, 1, 2, 0, 1, 2])


BAD_INPUTS = {
    "nan": (_nan_batch, ValueError, "3 NaN"),
    "inf": (_inf_batch, ValueError, "Inf"),
    "negative_label": (
        lambda: (torch.randn(4, 3), torch.tensor([0, -1, 2, 1])),
        ValueError,
        "out of range",
    ),
    "label_too_large": (
        lambda: (torch.randn(4, 3), torch.tensor([0, 3, 2, 1])),
        ValueError,
        "out of range",
    ),
    "float_labels": (
        lambda: (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0])),
        TypeError,
        "integer",
    ),
    "bool_labels": (
        lambda: (torch.randn(4, 3), torch.tensor([True, False, True, False])),
        TypeError,
        "integer",
    ),
    "features_1d": (lambda: (torch.randn(3), torch.tensor([0])), ValueError, "shape"),
    "features_3d": (lambda: (torch.randn(2, 2, 3), torch.tensor([0, 1])), ValueError, "shape"),
    "wrong_dim": (lambda: (torch.randn(4, 5), torch.tensor([0, 1, 2, 1])), ValueError, "dim"),
    "label_length": (
        lambda: (torch.randn(4, 3), torch.tensor([0, 1, 2])),
        ValueError,
        "entries",
    ),
    "labels_2d": (
        lambda: (torch.randn(4, 3), torch.tensor([[0, 1, 2, 1]])),
        ValueError,
        "shape",
    ),
    "empty": (
        lambda: (torch.empty(0, 3), torch.empty(0, dtype=torch.int64)),
        ValueError,
        "empty",
    ),
    "list_features": (
        lambda: ([[0.0, 1.0, 2.0]], torch.tensor([0])),
        TypeError,
        "Tensor",
    ),
    "list_labels": (lambda: (torch.randn(2, 3), [0, 1]), TypeError, "Tensor"),
    "integer_features": (
        lambda: (torch.ones(2, 3, dtype=torch.int64), torch.tensor([0, 1])),
        TypeError,
        "floating",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_rejected_and_state_unchanged(case: str) -> None:
    make, exc, match = BAD_INPUTS[case]
    torch.manual_seed(0)
    good = [
        (torch.randn(9, 3) + 2.0, torch.tensor([0, 1, 2] * 3)),
        (torch.randn(6, 3) - 1.0, torch.tensor([1, 2, 2, 0, 1, 1])),
    ]
    stats = FeatureStats(3, 3, track_class_scatter=True)
    stats.update(*good[0])
    before = stats.state_dict()
    features, labels = make()
    with pytest.raises(exc, match=match):
        stats.update(features, labels)
    assert_states_identical(stats.state_dict(), before)
    # ... and the next batch is accumulated exactly as if the bad one had never been offered.
    stats.update(*good[1])
    clean = FeatureStats(3, 3, track_class_scatter=True)
    for x, y in good:
        clean.update(x, y)
    assert_states_identical(stats.state_dict(), clean.state_dict())


def test_nan_message_counts_nans() -> None:
    x, y = _nan_batch()
    with pytest.raises(ValueError, match=r"3 NaN and 0 Inf"):
        FeatureStats(3, 3).update(x, y)


# ---------------------------------------------------------------------------- many classes
def test_many_classes_touch_only_present() -> None:
    num_classes, dim, batch = 32768, 256, 512
    gen = torch.Generator().manual_seed(0)
    stats = FeatureStats(num_classes, dim)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    y[:8] = 5  # a repeated class
    x = torch.randn(batch, dim, generator=gen)
    stats.update(x, y)

    counts = stats.counts
    assert int(counts.sum()) == batch
    labels = torch.unique(y)
    assert torch.equal(torch.nonzero(counts).flatten(), labels)
    assert int(stats.present.sum()) == labels.numel()
    expected = torch.bincount(y, minlength=num_classes)
    assert torch.equal(counts, expected)
    absent = ~stats.present
    means = stats.means
    assert not bool(means[absent].any())
    assert not bool(stats.unit_means[absent].any())
    assert not bool(stats.unit_sq_dev[absent].any())
    # Present rows hold the right means.
    x64 = x.to(torch.float64)
    for c in (5, int(y[100]), int(y[-1])):
        torch.testing.assert_close(means[c], x64[y == c].mean(0), rtol=1e-12, atol=1e-12)
    # Σ_W equals the pooled within-class scatter of the batch.
    centred = x64 - means[y]
    torch.testing.assert_close(stats.within_scatter, centred.T @ centred, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- shifted form
def _collapsed(num_classes: int, dim: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Near collapse: class centres at distance 50, within-class σ = 1e-3."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim))
    centres *= 50.0 / np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    return centres[y] + 1e-3 * rng.standard_normal((n, dim)), y


def test_shifted_form_near_collapse_many_classes_per_batch() -> None:
    """Hundreds of classes per batch, most first seen with one or two rows, near collapse."""
    num_classes, dim, n, batch = 2000, 24, 12000, 700
    x, y = _collapsed(num_classes, dim, n, seed=31)
    ref = reference_stats(x, y, num_classes)
    stats = FeatureStats(num_classes, dim)
    for start in range(0, n, batch):
        stats.update(torch.from_numpy(x[start : start + batch]), y[start : start + batch])
    present = ref["counts"] > 0
    true_trace = float(np.trace(ref["within"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyClassWarning)
        trace = float(torch.trace(stats.within_covariance()))
    assert abs(trace - true_trace) / true_trace <= 1e-9
    assert_close(stats.within_scatter / n, ref["within"], 1e-9)
    assert_close(stats.class_variance()[present], ref["var0"][present], 1e-9)
    assert_close(stats.unit_sq_dev[present], ref["unit_sq_dev"][present], 1e-9)
    assert_close(stats.means[present], ref["means"][present], 1e-14)
    assert_close(stats.unit_means[present], ref["unit_means"][present], 1e-14)


def test_merge_of_states_with_different_references_near_collapse() -> None:
    """Shards see each class first in different batches, so their references differ."""
    num_classes, dim, n = 12, 10, 6000
    x, y = _collapsed(num_classes, dim, n, seed=32)
    x = x + 1000.0  # a large common offset on top: references must be re-expressed exactly
    ref = reference_stats(x, y, num_classes)
    halves = [np.arange(0, n // 2), np.arange(n // 2, n)]
    shards = []
    for rows, batch in zip(halves, (97, 1000), strict=True):
        part = FeatureStats(num_classes, dim, track_class_scatter=True)
        for start in range(0, rows.size, batch):
            idx = rows[start : start + batch]
            part.update(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
        shards.append(part)
    assert not torch.equal(shards[0]._refs, shards[1]._refs)  # the point of the test
    merged = shards[0].merge(shards[1])
    true_trace = float(np.trace(ref["within"]))
    assert abs(float(torch.trace(merged.within_covariance())) - true_trace) / true_trace <= 1e-9
    assert_close(merged.within_covariance(), ref["within"], 1e-9)
    assert_close(merged.within_covariance("balanced"), ref["within_balanced"], 1e-9)
    assert_close(merged.class_variance(), ref["var0"], 1e-9)
    assert_close(merged.unit_sq_dev, ref["unit_sq_dev"], 1e-9)
    assert_close(merged.means, ref["means"], 1e-14)
    # merging into a state loaded from a state_dict (references = class means) agrees too
    reloaded = FeatureStats.from_state_dict(shards[1].state_dict())
    first = FeatureStats(num_classes, dim, track_class_scatter=True)
    feed(first, x, y, [halves[0][:1500], halves[0][1500:]])
    reloaded.merge(first)
    _assert_stats_close(reloaded, merged, 1e-9)


def test_load_version_1_state() -> None:
    """A version-1 state (reference-free statistics, e.g. from a results database) loads,
    gives back the same statistics and keeps accumulating exactly."""
    num_classes, dim = 5, 4
    x, y = imbalanced_data(num_classes, dim, seed=33)
    x = x + 30.0
    half = y.size // 2
    first = reference_stats(x[:half], y[:half], num_classes)
    present = first["counts"] > 0
    scatter = first["within_scatter"]
    v1 = {
        "version": 1,
        "num_classes": num_classes,
        "dim": dim,
        "track_class_scatter": False,
        "counts": torch.from_numpy(first["counts"]),
        "means": torch.from_numpy(first["means"]),
        "scatter": torch.from_numpy(scatter + 1e-15 * np.triu(scatter, 1)),  # v1 stored P raw
        "class_m2": torch.from_numpy(first["var0"] * first["counts"]),
        "unit_means": torch.from_numpy(first["unit_means"]),
        "unit_m2": torch.from_numpy(first["unit_sq_dev"]),
        "zero_norm": torch.tensor(0),
    }
    stats = FeatureStats.from_state_dict(v1)
    assert_close(stats.means[present], first["means"][present], 0.0)
    assert_close(stats.within_scatter, scatter, 1e-15)
    assert_close(stats.unit_means, first["unit_means"], 0.0)
    assert_close(stats.unit_sq_dev, first["unit_sq_dev"], 0.0)
    feed(stats, x, y, [np.arange(half, y.size)])
    full = reference_stats(x, y, num_classes)
    assert_close(stats.within_covariance(), full["within"], 1e-12)
    assert_close(stats.class_variance(), full["var0"], 1e-12)
    assert_close(stats.unit_sq_dev, full["unit_sq_dev"], 1e-12)
    assert_close(stats.means, full["means"], 1e-13)
    with pytest.raises(ValueError, match="version"):
        FeatureStats.from_state_dict(dict(v1, version=2))
