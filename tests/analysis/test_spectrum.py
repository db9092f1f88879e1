"""analysis.spectrum against numpy/scipy and brute-force formulas.

Spectra are compared with ``np.linalg.eigvalsh`` of two-pass covariances (``reference.py``),
entropies with an explicit Python loop, RankMe with the SVD of the raw data matrix, α-ReQ with
synthetic power laws and ``scipy.stats.linregress``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import spectrum as sp
from analysis.stats import EmptyClassWarning, FeatureStats
from tests.analysis import reference as ref

EPS64 = np.finfo(np.float64).eps


# ---------------------------------------------------------------------------- helpers
def random_spd(d: int, seed: int, *, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, rank or d)) * rng.uniform(0.1, 3.0, size=rank or d)
    return a @ a.T / d


def brute_erank(values: np.ndarray) -> float:
    """exp(−Σ p log p) with an explicit loop; values ≤ 0 contribute nothing."""
    v = [max(float(x), 0.0) for x in values]
    s = sum(v)
    h = 0.0
    for x in v:
        if x > 0:
            p = x / s
            h -= p * math.log(p)
    return math.exp(h)


def desc_eigvalsh(a: np.ndarray) -> np.ndarray:
    return np.linalg.eigvalsh(a)[::-1]


def make_data(
    seed: int, sizes: list[int], dim: int, *, offset: float = 2.0, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.standard_normal((len(sizes), dim)) + offset
    xs, ys = [], []
    for c, n in enumerate(sizes):
        scale = spread * (0.5 + rng.random()) * rng.uniform(0.2, 2.0, size=dim)
        xs.append(centres[c] + scale * rng.standard_normal((n, dim)))
        ys.append(np.full(n, c))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(x.shape[0])
    return x[order], y[order]


def build_stats(x: np.ndarray, y: np.ndarray, k: int, *, batches: int = 3) -> FeatureStats:
    stats = FeatureStats(k, x.shape[1], track_class_scatter=True)
    for idx in np.array_split(np.arange(x.shape[0]), batches):
        stats.update(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
    return stats


CASES: dict[str, tuple[int, list[int], int]] = {
    "balanced_K4_D6": (1, [50] * 4, 6),
    "K9_gt_D5": (2, [20] * 9, 5),
    "imbalanced_K5_D8": (3, [1, 4, 30, 80, 45], 8),
}


# ---------------------------------------------------------------------------- covariance_spectrum
@pytest.mark.parametrize("seed", range(4))
def test_covariance_spectrum_matches_numpy(seed: int) -> None:
    a = random_spd(7, seed)
    got = sp.covariance_spectrum(torch.from_numpy(a))
    assert got.dtype == torch.float64 and got.device == torch.device("cpu")
    assert bool((got[:-1] >= got[1:]).all())  # descending
    want = desc_eigvalsh(a)
    atol = 1e-13 * want[0]  # eigenvalue errors are absolute, ~eps·λ_max
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=atol)
    # numpy input, and an indefinite symmetric matrix (no PSD requirement here)
    np.testing.assert_allclose(sp.covariance_spectrum(a).numpy(), want, rtol=0, atol=atol)
    b = a - 2.0 * np.eye(7)
    np.testing.assert_allclose(sp.covariance_spectrum(b).numpy(), desc_eigvalsh(b), atol=1e-13)


def test_covariance_spectrum_keeps_round_off_negatives() -> None:
    a = random_spd(8, 5, rank=3)
    got = sp.covariance_spectrum(a).numpy()
    want = desc_eigvalsh(a)
    np.testing.assert_allclose(got, want, atol=1e-13)
    tail = got[3:]
    assert np.all(np.abs(tail) <= 8 * EPS64 * got[0] * 10)  # exact zeros come out as round-off


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_covariance_spectrum_accepts_low_precision(dtype: torch.dtype) -> None:
    a = torch.from_numpy(random_spd(6, 7)).to(dtype)
    got = sp.covariance_spectrum(a)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), desc_eigvalsh(a.double().numpy()), atol=1e-12)


def test_covariance_spectrum_symmetry_tolerance_is_dtype_relative() -> None:
    a = random_spd(5, 3)
    nudged = a.copy()
    nudged[0, 1] += 1e-3 * np.abs(a).max()  # 1e-3 relative asymmetry
    with pytest.raises(ValueError, match="symmetric"):
        sp.covariance_spectrum(nudged)  # float64: far above 100·eps
    with pytest.raises(ValueError, match="symmetric"):
        sp.covariance_spectrum(nudged.astype(np.float32))  # float32: 100·eps ≈ 1.2e-5
    half = torch.from_numpy(a).half()
    half[0, 1] += 1e-3 * float(half.abs().max())  # below 100·eps(float16) ≈ 0.1
    assert sp.covariance_spectrum(half).shape == (5,)
    tiny = a.copy()
    tiny[0, 1] += 10 * EPS64 * np.abs(a).max()  # round-off level: accepted
    assert sp.covariance_spectrum(tiny).shape == (5,)


@pytest.mark.parametrize(
    ("bad", "exc", "match"),
    [
        (np.zeros((3, 4)), ValueError, "square"),
        (np.zeros(3), ValueError, "square"),
        (np.zeros((2, 3, 3)), ValueError, "square"),
        (np.zeros((0, 0)), ValueError, "empty"),
        (np.eye(3, dtype=np.int64), TypeError, "floating-point"),
        ([[1.0, 0.0], [0.0, 1.0]], TypeError, "torch.Tensor or numpy.ndarray"),
    ],
)
def test_covariance_spectrum_bad_shapes_and_types(bad: Any, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        sp.covariance_spectrum(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_covariance_spectrum_rejects_nonfinite(value: float) -> None:
    a = np.eye(3)
    a[1, 1] = value
    with pytest.raises(ValueError, match=r"\d+ NaN and \d+ Inf"):
        sp.covariance_spectrum(a)


# ---------------------------------------------------------------------------- eigenvalues(stats)
@pytest.mark.parametrize("name", list(CASES))
def test_eigenvalues_match_two_pass_covariances(name: str) -> None:
    seed, sizes, dim = CASES[name]
    x, y = make_data(seed, sizes, dim)
    stats = build_stats(x, y, len(sizes))
    refs: list[tuple[str, dict[str, Any], np.ndarray]] = [
        ("within", {}, ref.within_cov(x, y, "samples")),
        ("within", {"within": "balanced"}, ref.within_cov(x, y, "balanced")),
        ("between", {}, ref.between_cov(x, y, "samples")),
        ("between", {"global_mean": "classes"}, ref.between_cov(x, y, "classes")),
        ("total", {}, ref.total_cov(x, y, "samples")),
        ("total", {"global_mean": "classes"}, ref.total_cov(x, y, "classes")),
    ]
    for which, kwargs, cov in refs:
        got = sp.eigenvalues(stats, which, **kwargs)  # type: ignore[arg-type]
        assert got.dtype == torch.float64 and got.shape == (dim,)
        want = desc_eigvalsh(cov)
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-11 * want[0])
    # the default switches are the ones of FeatureStats' properties
    np.testing.assert_allclose(
        sp.eigenvalues(stats, "total").numpy(), desc_eigvalsh(stats.total_covariance().numpy())
    )


def test_eigenvalues_near_collapse_are_accurate() -> None:
    # class offset 50, within-class σ = 1e-3: exact in float64 near collapse (docs/conventions.md)
    rng = np.random.default_rng(11)
    k, d, n = 4, 5, 200
    y = np.repeat(np.arange(k), n // k)
    centres = 50.0 + rng.standard_normal((k, d))
    x = centres[y] + 1e-3 * rng.standard_normal((n, d)) * np.linspace(0.5, 2.0, d)
    stats = build_stats(x, y, k, batches=5)
    got = sp.eigenvalues(stats, "within").numpy()
    want = desc_eigvalsh(ref.within_cov(x, y, "samples"))
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_eigenvalues_bad_which_and_stats() -> None:
    x, y = make_data(0, [5, 5], 3)
    stats = build_stats(x, y, 2)
    with pytest.raises(ValueError, match="which must be"):
        sp.eigenvalues(stats, "inside")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FeatureStats"):
        sp.eigenvalues(np.eye(3), "total")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="within must be"):
        sp.eigenvalues(stats, "within", within="pooled")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- effective rank
@pytest.mark.parametrize("seed", range(5))
def test_effective_rank_matches_brute_force(seed: int) -> None:
    lam = desc_eigvalsh(random_spd(9, seed))  # a reversed view (negative stride) is accepted
    got = sp.effective_rank(lam)
    assert sp.effective_rank(torch.from_numpy(lam.copy())) == got
    assert isinstance(got, float)
    assert got == pytest.approx(brute_erank(lam), rel=1e-13)
    # scipy's entropy, order and scale invariance
    assert got == pytest.approx(math.exp(scipy.stats.entropy(lam)), rel=1e-13)
    assert sp.effective_rank(lam[::-1].copy() * 1e6) == pytest.approx(got, rel=1e-13)


@pytest.mark.parametrize("r", [1, 2, 3, 7, 64])
def test_effective_rank_of_flat_spectrum_is_the_rank(r: int) -> None:
    lam = np.concatenate([np.full(r, 2.5), np.zeros(5)])
    assert abs(sp.effective_rank(lam) - r) <= 1e-12 * r
    # round-off negatives are clamped, not counted
    lam[-2:] = [-1e-17, -3e-16]
    assert abs(sp.effective_rank(lam) - r) <= 1e-12 * r


def test_effective_rank_eps_matches_paper_formula() -> None:
    lam = np.array([4.0, 2.0, 1.0, 0.0])
    p = lam / lam.sum() + 1e-7
    want = math.exp(-float(np.sum(p * np.log(p))))
    assert sp.effective_rank(lam, eps=1e-7) == pytest.approx(want, rel=1e-14)
    assert sp.effective_rank(lam, eps=1e-7) != sp.effective_rank(lam)


# ---------------------------------------------------------------------------- stable rank, PR
@pytest.mark.parametrize("seed", range(4))
def test_stable_rank_and_participation_ratio_closed_forms(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 6)) * rng.uniform(0.1, 3.0, size=6)
    cov = x.T @ x / 40
    lam = sp.covariance_spectrum(cov)
    fro2 = np.linalg.norm(x, "fro") ** 2
    spec2 = np.linalg.norm(x, 2) ** 2
    assert sp.stable_rank(lam) == pytest.approx(fro2 / spec2, rel=1e-12)
    assert sp.participation_ratio(lam) == pytest.approx(
        np.trace(cov) ** 2 / np.trace(cov @ cov), rel=1e-12
    )
    lam_np = lam.numpy()
    assert sp.stable_rank(lam_np) == pytest.approx(lam_np.sum() / lam_np.max(), rel=1e-14)
    assert sp.participation_ratio(lam_np) == pytest.approx(
        lam_np.sum() ** 2 / np.sum(lam_np**2), rel=1e-14
    )


@pytest.mark.parametrize("r", [1, 3, 10])
def test_flat_spectrum_rank_for_every_measure(r: int) -> None:
    lam = np.concatenate([np.full(r, 0.7), np.zeros(4)])
    assert sp.stable_rank(lam) == pytest.approx(r, rel=1e-14)
    assert sp.participation_ratio(lam) == pytest.approx(r, rel=1e-14)


def test_two_level_closed_forms() -> None:
    # λ = (a, b, b): SR = (a + 2b)/a, PR = (a + 2b)²/(a² + 2b²)
    a, b = 5.0, 1.5
    lam = np.array([a, b, b])
    assert sp.stable_rank(lam) == pytest.approx((a + 2 * b) / a, rel=1e-15)
    assert sp.participation_ratio(lam) == pytest.approx(
        (a + 2 * b) ** 2 / (a * a + 2 * b * b), rel=1e-15
    )


def test_participation_ratio_does_not_overflow() -> None:
    lam = np.array([1e300, 1e300, 5e299])
    assert sp.participation_ratio(lam) == pytest.approx(2.5**2 / 2.25, rel=1e-14)
    assert sp.effective_rank(lam) == pytest.approx(brute_erank(lam / 1e300), rel=1e-14)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.just(0.0), st.floats(1e-6, 1e6, allow_nan=False)), min_size=1, max_size=20
    ).filter(lambda v: any(x > 0 for x in v))
)
def test_rank_measures_are_ordered(values: list[float]) -> None:
    # Rényi entropies decrease with order: exp H_∞ ≤ exp H_2 ≤ exp H_1 ≤ rank
    lam = np.array(values)
    sr, pr, er = sp.stable_rank(lam), sp.participation_ratio(lam), sp.effective_rank(lam)
    r = int(np.sum(lam > 0))
    tol = 1e-12
    assert 1 - tol <= sr <= pr * (1 + tol)
    assert pr <= er * (1 + tol)
    assert er <= r * (1 + tol)
    # squaring the spectrum (eigenvalues instead of singular values) never raises the entropy
    assert sp.effective_rank(lam**2) <= er * (1 + tol)


@pytest.mark.parametrize(
    "fn", [sp.effective_rank, sp.stable_rank, sp.participation_ratio], ids=lambda f: f.__name__
)
def test_rank_measures_reject_all_zero_and_bad_input(fn: Any) -> None:
    for zero in (np.zeros(4), np.array([0.0, -1e-18])):
        with pytest.raises(ValueError, match="all-zero spectrum"):
            fn(zero)
    with pytest.raises(ValueError, match="NaN"):
        fn(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="1-D"):
        fn(np.eye(2))
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros(0))
    with pytest.raises(TypeError, match="floating-point"):
        fn(torch.tensor([1, 2]))
    with pytest.raises(TypeError):
        fn([1.0, 2.0])


def test_effective_rank_rejects_bad_eps() -> None:
    with pytest.raises(ValueError, match="eps"):
        sp.effective_rank(np.ones(3), eps=-1e-7)
    with pytest.raises(ValueError, match="eps"):
        sp.effective_rank(np.ones(3), eps=math.nan)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rank_measures_accept_low_precision(dtype: torch.dtype) -> None:
    lam64 = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    lam = lam64.to(dtype)  # exactly representable in every dtype
    assert sp.effective_rank(lam) == pytest.approx(sp.effective_rank(lam64), rel=1e-14)
    assert sp.stable_rank(lam) == pytest.approx(6.5 / 3.0, rel=1e-14)
    assert sp.participation_ratio(lam) == pytest.approx(6.5**2 / 14.25, rel=1e-14)
    alpha, r2 = sp.alpha_req(lam)
    alpha64, r2_64 = sp.alpha_req(lam64)
    assert alpha == pytest.approx(alpha64, rel=1e-14) and r2 == pytest.approx(r2_64, rel=1e-14)


# ---------------------------------------------------------------------------- RankMe
def rankme_svd(x: np.ndarray, *, eps: float = 0.0, square: bool = False) -> float:
    """The paper's formula on the singular values of the data matrix itself."""
    s = np.linalg.svd(x, compute_uv=False)  # min(N, D) values
    if square:
        s = s**2
    p = s / s.sum() + eps
    return math.exp(-float(np.sum([pi * math.log(pi) for pi in p if pi > 0])))


@pytest.mark.parametrize("name", list(CASES))
def test_rankme_matches_svd_of_the_data(name: str) -> None:
    seed, sizes, dim = CASES[name]
    x, y = make_data(seed, sizes, dim)
    stats = build_stats(x, y, len(sizes))
    got = sp.rankme(stats)
    assert isinstance(got, float)
    assert got == pytest.approx(rankme_svd(x), rel=1e-11)
    assert got == pytest.approx(brute_erank(np.linalg.svd(x, compute_uv=False)), rel=1e-11)
    xc = x - x.mean(axis=0)
    assert sp.rankme(stats, centered=True) == pytest.approx(rankme_svd(xc), rel=1e-11)
    # eigenvalue-fed variant = effective rank of σ² (of the covariance eigenvalues)
    assert sp.rankme(stats, input="eigenvalues") == pytest.approx(
        rankme_svd(x, square=True), rel=1e-11
    )
    assert sp.rankme(stats, centered=True, input="eigenvalues") == pytest.approx(
        sp.effective_rank(sp.eigenvalues(stats, "total")), rel=1e-11
    )
    # the paper's ε
    assert sp.rankme(stats, eps=1e-7) == pytest.approx(rankme_svd(x, eps=1e-7), rel=1e-11)


@pytest.mark.parametrize(("n", "d", "rank"), [(5, 12, 5), (40, 10, 3)])
def test_rankme_rank_deficient_and_fewer_samples_than_dims(n: int, d: int, rank: int) -> None:
    rng = np.random.default_rng(n + d)
    x = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d))
    y = np.arange(n) % 2
    stats = build_stats(x, y, 2, batches=2)
    # the SVD sees min(N, D) values, exact zeros at ~1e-16 σ_max; √ of eigen round-off would not
    assert sp.rankme(stats) == pytest.approx(rankme_svd(x), rel=1e-11)
    assert sp.rankme(stats, eps=1e-7) == pytest.approx(rankme_svd(x, eps=1e-7), rel=1e-9)
    assert sp.rankme(stats) <= rank + 1e-9


def test_rankme_singular_values_differ_from_eigenvalues() -> None:
    x, y = make_data(4, [30, 30], 6)
    stats = build_stats(x, y, 2)
    assert sp.rankme(stats) > sp.rankme(stats, input="eigenvalues")


def test_rankme_bad_arguments() -> None:
    x, y = make_data(0, [5, 5], 3)
    stats = build_stats(x, y, 2)
    with pytest.raises(ValueError, match="input must be"):
        sp.rankme(stats, input="svd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        sp.rankme(stats, eps=-1.0)
    with pytest.raises(TypeError, match="FeatureStats"):
        sp.rankme(x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        sp.rankme(FeatureStats(2, 3))
    zero = FeatureStats(1, 3)
    zero.update(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="all-zero spectrum"):
        sp.rankme(zero)


def test_rankme_accepts_low_precision_features() -> None:
    x, y = make_data(8, [25, 25], 4)
    for dtype in (torch.float32, torch.float16):
        xt = torch.from_numpy(x).to(dtype)
        stats = FeatureStats(2, 4)
        stats.update(xt, torch.from_numpy(y))
        assert sp.rankme(stats) == pytest.approx(rankme_svd(xt.double().numpy()), rel=1e-10)


# ---------------------------------------------------------------------------- α-ReQ
def test_alpha_req_recovers_power_law() -> None:
    i = np.arange(1, 201)
    lam = 3.0 * i**-1.37
    alpha, r2 = sp.alpha_req(torch.from_numpy(lam))
    assert isinstance(alpha, float) and isinstance(r2, float)
    assert abs(alpha - 1.37) < 1e-3
    assert abs(alpha - 1.37) < 1e-10  # in fact exact to round-off
    assert r2 == pytest.approx(1.0, abs=1e-12)
    # any input order: the spectrum is sorted descending first
    shuffled = np.random.default_rng(0).permutation(lam)
    assert sp.alpha_req(shuffled)[0] == pytest.approx(alpha, rel=1e-13)
    # a sub-range (1-based, inclusive)
    a_sub, r2_sub = sp.alpha_req(lam, index_range=(10, 50))
    assert a_sub == pytest.approx(1.37, abs=1e-10) and r2_sub == pytest.approx(1.0, abs=1e-12)


def test_alpha_req_matches_linregress_on_noisy_power_law() -> None:
    rng = np.random.default_rng(3)
    i = np.arange(1, 301)
    lam = np.sort(2.0 * i**-0.9 * np.exp(0.3 * rng.standard_normal(i.size)))[::-1].copy()
    alpha, r2 = sp.alpha_req(lam, index_range=(5, 250))
    fit = scipy.stats.linregress(np.log(np.arange(5, 251)), np.log(lam[4:250]))
    assert alpha == pytest.approx(-fit.slope, rel=1e-12)
    assert r2 == pytest.approx(fit.rvalue**2, rel=1e-12)
    assert r2 < 0.999
    assert alpha == pytest.approx(0.9, abs=0.1)


def test_alpha_req_default_range_is_the_numerical_rank() -> None:
    # a rank-5 covariance: 3 round-off eigenvalues at ~1e-16 λ_max are excluded by default
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    lam_true = 3.0 * np.arange(1, 6) ** -1.37
    cov = (q[:, :5] * lam_true) @ q[:, :5].T
    lam = sp.covariance_spectrum(cov)
    alpha, r2 = sp.alpha_req(lam)
    assert alpha == pytest.approx(1.37, abs=1e-10) and r2 == pytest.approx(1.0, abs=1e-12)
    assert sp.alpha_req(lam, index_range=(1, 5))[0] == pytest.approx(alpha, rel=1e-14)
    # exact zeros are excluded too
    padded = np.concatenate([lam_true, np.zeros(3)])
    assert sp.alpha_req(padded)[0] == pytest.approx(1.37, abs=1e-12)


def test_alpha_req_flat_spectrum() -> None:
    alpha, r2 = sp.alpha_req(np.full(6, 2.0))
    assert alpha == 0.0 and r2 == 1.0


@pytest.mark.parametrize(
    ("index_range", "exc", "match"),
    [
        ((3, 3), ValueError, "holds 1 point"),
        ((0, 4), ValueError, "1 <= lo <= hi"),
        ((5, 2), ValueError, "1 <= lo <= hi"),
        ((2, 9), ValueError, "n = 6"),
        ((2, 6), ValueError, "non-positive eigenvalue"),
        ((1, 2.5), TypeError, "pair of ints"),
        ((1, 2, 3), TypeError, "pair of ints"),
        ((True, 3), TypeError, "pair of ints"),
    ],
)
def test_alpha_req_bad_index_range(index_range: Any, exc: type, match: str) -> None:
    lam = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.0])
    with pytest.raises(exc, match=match):
        sp.alpha_req(lam, index_range=index_range)


def test_alpha_req_needs_two_positive_eigenvalues() -> None:
    for lam in (np.array([1.0, 0.0, 0.0]), np.zeros(3), np.array([2.0]), np.array([1.0, 1e-20])):
        with pytest.raises(ValueError, match="at least 2 positive eigenvalues"):
            sp.alpha_req(lam)
    with pytest.raises(ValueError, match="Inf"):
        sp.alpha_req(np.array([np.inf, 1.0]))


# ---------------------------------------------------------------------------- spectrum_metrics
KEYS = {
    "effective_rank_within",
    "effective_rank_between",
    "effective_rank_total",
    "rankme",
    "stable_rank_total",
    "participation_ratio_total",
    "alpha_req_total",
    "alpha_req_total_r2",
}


@pytest.mark.parametrize("name", list(CASES))
def test_spectrum_metrics_keys_and_values(name: str) -> None:
    seed, sizes, dim = CASES[name]
    x, y = make_data(seed, sizes, dim)
    stats = build_stats(x, y, len(sizes))
    out = sp.spectrum_metrics(stats)
    assert set(out) == KEYS
    assert all(isinstance(v, float) for v in out.values())
    tot = desc_eigvalsh(ref.total_cov(x, y))
    assert out["effective_rank_within"] == pytest.approx(
        brute_erank(desc_eigvalsh(ref.within_cov(x, y))), rel=1e-11
    )
    assert out["effective_rank_between"] == pytest.approx(
        brute_erank(desc_eigvalsh(ref.between_cov(x, y))), rel=1e-10
    )
    assert out["effective_rank_total"] == pytest.approx(brute_erank(tot), rel=1e-11)
    assert out["rankme"] == pytest.approx(rankme_svd(x), rel=1e-11)
    assert out["stable_rank_total"] == pytest.approx(tot.sum() / tot[0], rel=1e-11)
    assert out["participation_ratio_total"] == pytest.approx(
        tot.sum() ** 2 / np.sum(tot**2), rel=1e-11
    )
    fit = scipy.stats.linregress(np.log(np.arange(1, dim + 1)), np.log(tot))
    assert out["alpha_req_total"] == pytest.approx(-fit.slope, rel=1e-9)
    assert out["alpha_req_total_r2"] == pytest.approx(fit.rvalue**2, rel=1e-9)
    ranged = sp.spectrum_metrics(stats, index_range=(2, dim))
    assert ranged["alpha_req_total"] == pytest.approx(
        sp.alpha_req(sp.eigenvalues(stats, "total"), index_range=(2, dim))[0], rel=1e-14
    )


def test_spectrum_metrics_warns_once_about_absent_classes() -> None:
    x, y = make_data(5, [20, 20, 20], 4)
    stats = build_stats(x, y, 4)  # class 3 has no samples
    with pytest.warns(EmptyClassWarning) as record:
        out = sp.spectrum_metrics(stats)
    assert len(record) == 1 and "[3]" in str(record[0].message)
    assert set(out) == KEYS


def test_spectrum_metrics_error_names_the_key() -> None:
    x, _ = make_data(6, [30], 4)
    stats = build_stats(x, np.zeros(30, dtype=np.int64), 1)  # one class: Σ_B = 0
    with pytest.raises(ValueError, match=r"spectrum_metrics\['effective_rank_between'\]"):
        sp.spectrum_metrics(stats)
    with pytest.raises(TypeError, match="FeatureStats"):
        sp.spectrum_metrics({})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_stay_on_device() -> None:
    a = torch.from_numpy(random_spd(6, 1)).float().cuda()
    lam = sp.covariance_spectrum(a)
    assert lam.device.type == "cuda" and lam.dtype == torch.float64
    np.testing.assert_allclose(lam.cpu().numpy(), desc_eigvalsh(a.double().cpu().numpy()))
    assert sp.effective_rank(lam) == pytest.approx(brute_erank(lam.cpu().numpy()), rel=1e-12)
    x, y = make_data(2, [20, 20], 5)
    stats = FeatureStats(2, 5, device="cuda")
    stats.update(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda())
    assert sp.eigenvalues(stats, "total").device.type == "cuda"
    assert sp.rankme(stats) == pytest.approx(rankme_svd(x), rel=1e-10)
    assert set(sp.spectrum_metrics(stats)) == KEYS
