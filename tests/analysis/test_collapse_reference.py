"""Every metric against the brute-force references, closed-form cases and invariances."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import calinski_harabasz_score

import analysis.collapse as C
from analysis.stats import EmptyClassWarning, FeatureStats
from analysis.variability import intra_class_variability, variability_terms
from tests.analysis import _reference as R


def make_data(k: int, d: int, n: int, seed: int, imbalanced: bool = False):
    rng = np.random.default_rng(seed)
    if imbalanced:
        p = rng.dirichlet(np.ones(k) * 0.7)
        y = rng.choice(k, size=n, p=p)
        y[:k] = np.arange(k)
    else:
        y = np.arange(n) % k
    centres = 2.0 * rng.standard_normal((k, d))
    x = centres[y] + rng.standard_normal((n, d))
    w = centres + 0.5 * rng.standard_normal((k, d))
    b = 0.1 * rng.standard_normal(k)
    return x, y.astype(np.int64), w, b


def stats_of(x: np.ndarray, y: np.ndarray, k: int, batch: int = 37) -> FeatureStats:
    s = FeatureStats(k, x.shape[1])
    for i in range(0, len(x), batch):
        s.update(torch.from_numpy(x[i : i + batch]), torch.from_numpy(y[i : i + batch]))
    return s


CASES = [(5, 7, 300, False), (12, 5, 240, True), (4, 30, 120, True), (3, 2, 90, False)]


@pytest.mark.parametrize(("k", "d", "n", "imb"), CASES)
def test_every_metric_matches_brute_force(k, d, n, imb):
    x, y, w, b = make_data(k, d, n, seed=k * d, imbalanced=imb)
    s = stats_of(x, y, k)
    wt = torch.from_numpy(w)
    mc = R.covariances(x, y)[2]
    close = {"rel": 1e-9, "abs": 1e-12}
    for variant in ("papyan", "quotient", "vci"):
        assert C.nc1(s, variant=variant) == pytest.approx(R.nc1(x, y, variant), **close)
    assert C.nc1(s, divide_by_classes=False) == pytest.approx(R.nc1(x, y, divide=False), **close)
    for ddof in (0, 1):
        assert C.equinorm(s, ddof=ddof) == pytest.approx(R.equinorm(mc, ddof), **close)
        assert C.equinorm(s, wt, of="weights", ddof=ddof) == pytest.approx(
            R.equinorm(w, ddof), **close
        )
        for exponent in (1, 2):
            assert C.cdnv(s, exponent=exponent, ddof=ddof) == pytest.approx(
                R.cdnv(x, y, exponent, ddof), **close
            )
    for red in ("mean_abs", "std"):
        assert C.equiangularity(s, reduction=red) == pytest.approx(
            R.equiangularity(mc, red), **close
        )
        assert C.equiangularity(s, wt, of="weights", reduction=red) == pytest.approx(
            R.equiangularity(w, red), **close
        )
    assert C.etf_error(s) == pytest.approx(R.etf_error(mc), **close)
    assert C.etf_error(s, wt, of="weights") == pytest.approx(R.etf_error(w), **close)
    for variant in ("papyan", "wh", "cosine"):
        assert C.self_duality(s, wt, variant=variant) == pytest.approx(
            R.self_duality(w, mc, variant), **close
        )
    assert C.self_duality(s, wt, squared=False) == pytest.approx(
        R.self_duality(w, mc, squared=False), **close
    )
    assert C.etf_distance(s) == pytest.approx(R.etf_distance(mc), **close)
    _, means, _ = R.class_means(x, y)
    sim = np.corrcoef(np.random.default_rng(0).standard_normal((k, 3 * k)))
    assert C.frame_distance(s, torch.from_numpy(sim)) == pytest.approx(
        R.frame_distance(means, sim), **close
    )
    assert C.frame_distance(s, torch.from_numpy(sim), centered=True) == pytest.approx(
        R.frame_distance(mc, sim), **close
    )
    assert intra_class_variability(s) == pytest.approx(R.intra_class_variability(x, y), **close)
    ncc = C.ncc_mismatch(torch.from_numpy(x), wt, torch.from_numpy(b), train_stats=s)
    assert ncc == pytest.approx(R.ncc_mismatch(x, w, b, means), abs=1e-15)


def test_etf_distance_closed_form_equals_procrustes_minimum():
    x, y, _, _ = make_data(5, 9, 100, seed=3)
    s = stats_of(x, y, 5)
    mc = R.covariances(x, y)[2]
    target = R.etf_target(5)
    brute = R.frame_distance_procrustes(mc, target)
    assert C.etf_distance(s) == pytest.approx(brute, rel=1e-10)
    assert 0 < brute < 2


def simplex_etf(k: int, d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    base = np.sqrt(k / (k - 1)) * (np.eye(k) - 1 / k)
    return np.hstack([base, np.zeros((k, d - k))]) @ q.T


@pytest.mark.parametrize(("k", "d"), [(4, 4), (6, 10), (10, 10)])
def test_exact_etf_gives_zero(k, d):
    m = 3.0 * simplex_etf(k, d, seed=k)
    y = np.repeat(np.arange(k), 5)
    noise = np.random.default_rng(1).standard_normal((5, d)) * 0.1
    noise -= noise.mean(0)  # symmetric noise keeps the class means exact
    x = m[y] + np.tile(noise, (k, 1))
    s = stats_of(x, y, k)
    wt = torch.from_numpy(m)
    zero = 1e-12
    assert C.equinorm(s) <= zero and C.equinorm(s, wt, of="weights") <= zero
    for red in ("mean_abs", "std"):
        assert C.equiangularity(s, reduction=red) <= zero
        assert C.equiangularity(s, wt, of="weights", reduction=red) <= zero
    assert C.etf_error(s) <= zero and C.etf_error(s, wt, of="weights") <= zero
    for variant in ("papyan", "wh", "cosine"):
        assert C.self_duality(s, wt, variant=variant) <= zero
    assert C.etf_distance(s) <= zero
    etf_gram = torch.from_numpy(m @ m.T)
    assert C.frame_distance(s, etf_gram, centered=True) <= zero
    # features sitting exactly on the class means: every NC1 form is 0
    s0 = stats_of(m[y], y, k)
    assert abs(C.nc1(s0)) <= zero and abs(C.nc1(s0, variant="quotient")) <= zero
    assert C.ncc_mismatch(torch.from_numpy(x), wt, train_stats=s) == 0.0


def _all_metrics(s, w, b, x):
    out = C.collapse_metrics(s, w, b, features=x)
    for variant in ("quotient", "vci"):
        out[f"nc1_{variant}"] = C.nc1(s, variant=variant)
    out["equiangularity_std"] = C.equiangularity(s, reduction="std")
    out["wh"] = C.self_duality(s, w, variant="wh")
    out["cos"] = C.self_duality(s, w, variant="cosine")
    return out


def test_rotation_of_feature_space_leaves_metrics_unchanged():
    k, d = 6, 8
    x, y, w, b = make_data(k, d, 180, seed=11, imbalanced=True)
    q, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((d, d)))
    a = _all_metrics(
        stats_of(x, y, k), torch.from_numpy(w), torch.from_numpy(b), torch.from_numpy(x)
    )
    xr, wr = x @ q.T, w @ q.T
    r = _all_metrics(
        stats_of(xr, y, k), torch.from_numpy(wr), torch.from_numpy(b), torch.from_numpy(xr)
    )
    assert set(a) == set(r)
    for key in a:
        assert r[key] == pytest.approx(a[key], rel=1e-9, abs=1e-13), key


def test_label_permutation_leaves_metrics_unchanged():
    k, d = 7, 5
    x, y, w, b = make_data(k, d, 210, seed=4, imbalanced=True)
    perm = np.random.default_rng(2).permutation(k)  # class c becomes perm[c]
    yp = perm[y]
    wp, bp = np.empty_like(w), np.empty_like(b)
    wp[perm], bp[perm] = w, b
    a = _all_metrics(
        stats_of(x, y, k), torch.from_numpy(w), torch.from_numpy(b), torch.from_numpy(x)
    )
    p = _all_metrics(
        stats_of(x, yp, k), torch.from_numpy(wp), torch.from_numpy(bp), torch.from_numpy(x)
    )
    for key in a:
        assert p[key] == pytest.approx(a[key], rel=1e-10, abs=1e-14), key


def test_sklearn_calinski_harabasz_identity():
    k, n = 6, 300
    x, y, _, _ = make_data(k, 9, n, seed=8)  # balanced
    s = stats_of(x, y, k)
    ch = calinski_harabasz_score(x, y)
    assert C.nc1(s, variant="quotient") == pytest.approx((n - k) / ((k - 1) * ch), rel=1e-10)


def test_absent_class_excluded_with_one_warning():
    x, y, w, b = make_data(5, 6, 150, seed=9)
    y = np.where(y == 3, 4, y)  # class 3 never occurs among 0..5
    s = stats_of(x, y, 6)
    w6 = np.vstack([w, np.ones((1, 6))])
    b6 = np.append(b, 0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = C.collapse_metrics(
            s, torch.from_numpy(w6), torch.from_numpy(b6), features=torch.from_numpy(x)
        )
    assert [c.category for c in caught] == [EmptyClassWarning]
    assert "[3, 5]" in str(caught[0].message)
    keep = [0, 1, 2, 4]
    mc = R.covariances(x, y)[2]
    assert got["nc1"] == pytest.approx(R.nc1(x, y), rel=1e-9)
    assert got["equiangularity_weights"] == pytest.approx(R.equiangularity(w6[keep]), rel=1e-9)
    assert got["self_duality"] == pytest.approx(R.self_duality(w6[keep], mc), rel=1e-9)
    _, means, _ = R.class_means(x, y)
    ref = R.ncc_mismatch(x, w6[keep], b6[keep], means)
    assert got["ncc_mismatch"] == pytest.approx(ref, abs=1e-15)


def test_ncc_train_means_versus_same_split():
    k, d = 4, 6
    x, y, w, b = make_data(k, d, 200, seed=21)
    xt, yt = x[:120], y[:120]
    xe, ye = (
        x[120:] + 2.5 * np.linspace(-1, 1, d),
        y[120:],
    )  # shifted evaluation split: the two conventions differ
    train = stats_of(xt, yt, k)
    acc = C.NCCMismatch(train, torch.from_numpy(w), torch.from_numpy(b))
    for i in range(0, len(xe), 13):
        acc.update(torch.from_numpy(xe[i : i + 13]))
    means_train = R.class_means(xt, yt)[1]
    means_same = R.class_means(xe, ye)[1]
    assert acc.compute() == pytest.approx(R.ncc_mismatch(xe, w, b, means_train), abs=1e-15)
    same = C.ncc_mismatch(
        torch.from_numpy(xe),
        torch.from_numpy(w),
        torch.from_numpy(b),
        labels=torch.from_numpy(ye),
        means_from="same",
    )
    assert same == pytest.approx(R.ncc_mismatch(xe, w, b, means_same), abs=1e-15)
    assert acc.compute() != same


def test_intra_class_variability_near_collapse():
    rng = np.random.default_rng(0)
    k, d, n_per = 4, 6, 50
    dirs = rng.standard_normal((k, d))
    y = np.repeat(np.arange(k), n_per)
    x = 10.0 * dirs[y] + 1e-7 * rng.standard_normal((k * n_per, d))
    s = stats_of(x, y, k)
    # stable two-pass reference: mean ‖x̂ − m̂‖² per class
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    within = np.mean([np.mean(np.sum((u[y == c] - u[y == c].mean(0)) ** 2, 1)) for c in range(k)])
    m = np.stack([u[y == c].mean(0) for c in range(k)])
    total = within + np.mean(np.sum((m - m.mean(0)) ** 2, 1))
    got_within, got_total = variability_terms(s)
    assert within > 0 and got_within == pytest.approx(within, rel=1e-6)
    assert got_total == pytest.approx(total, rel=1e-12)
    assert intra_class_variability(s) == pytest.approx(within / total, rel=1e-6)
    # the naive 1 − ‖m̂_c‖² form has lost most digits at this scale
    naive = np.mean([1 - np.sum(m[c] ** 2) for c in range(k)])
    assert abs(naive - within) > 1e-3 * within


def test_bad_metric_inputs():
    x, y, w, _ = make_data(4, 5, 80, seed=1)
    s = stats_of(x, y, 4)
    with pytest.raises(ValueError, match="shape"):
        C.self_duality(s, torch.zeros(3, 5, dtype=torch.float64))
    w_nan = torch.from_numpy(w).clone()
    w_nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        C.equinorm(s, w_nan, of="weights")
    with pytest.raises(TypeError, match="floating"):
        C.etf_error(s, torch.zeros(4, 5, dtype=torch.int64), of="weights")
    with pytest.raises(ValueError, match="positive semi-definite"):
        C.frame_distance(s, torch.diag(torch.tensor([1.0, 1.0, 1.0, -0.5], dtype=torch.float64)))
    with pytest.raises(ValueError, match="shape"):
        C.frame_distance(s, torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="symmetric"):
        C.frame_distance(s, torch.eye(4, dtype=torch.float64) + torch.triu(torch.ones(4, 4), 1))
    with pytest.raises(ValueError, match="of must be"):
        C.equinorm(s, of="classes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight"):
        C.self_duality(s, None)
    one = FeatureStats(4, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyClassWarning)
        one.update(torch.from_numpy(x[y == 0]), torch.zeros(int(np.sum(y == 0)), dtype=torch.long))
        with pytest.raises(ValueError, match="at least 2 classes"):
            C.nc1(one)
    with pytest.raises(ValueError, match="empty"):
        C.nc1(FeatureStats(3, 2))
    with pytest.raises(ValueError, match="no samples"):
        C.NCCMismatch(s, torch.from_numpy(w)).compute()
