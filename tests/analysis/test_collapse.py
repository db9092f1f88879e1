"""analysis.collapse against the independent brute-force reference in ``reference.py``.

The reference is derived from docs/conventions.md and the documented API only. Every public
function and variant of the spec is compared on small random data (balanced, K > D, imbalanced
with a singleton class), on exact simplex-ETF features (metrics vanish), under rotations and
label permutations (metrics unchanged), against sklearn's Calinski–Harabasz score, with an
absent class, and on bad input.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import calinski_harabasz_score

from analysis import collapse
from analysis.stats import EmptyClassWarning, FeatureStats
from tests.analysis import reference as ref

REL, ABS = 1e-10, 1e-12


# ---------------------------------------------------------------------------- data
def make_data(
    seed: int, sizes: list[int], dim: int, *, spread: float = 1.0, offset: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes around random centres, shuffled; labels 0..len(sizes)-1."""
    rng = np.random.default_rng(seed)
    k = len(sizes)
    centres = 3.0 * rng.standard_normal((k, dim)) + offset
    xs, ys = [], []
    for c, n in enumerate(sizes):
        scale = spread * (0.5 + rng.random())  # classes of different spread
        xs.append(centres[c] + scale * rng.standard_normal((n, dim)))
        ys.append(np.full(n, c))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(x.shape[0])
    return x[order], y[order]


def build_stats(
    x: np.ndarray, y: np.ndarray, num_classes: int, *, batches: int = 4, seed: int = 0
) -> FeatureStats:
    """FeatureStats fed in ``batches`` uneven batches (tracks class scatter for 'balanced')."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    cuts = np.sort(rng.choice(np.arange(1, n), size=batches - 1, replace=False))
    stats = FeatureStats(num_classes, x.shape[1], track_class_scatter=True)
    for idx in np.split(np.arange(n), cuts):
        stats.update(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
    return stats


def random_psd(k: int, rng: np.random.Generator, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((k, rank or k))
    s = a @ a.T / (rank or k)
    d = np.sqrt(np.diag(s))
    return s / np.outer(d, d)  # unit diagonal, like a target Gram of unit vectors


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


CASES: dict[str, tuple[int, list[int], int]] = {
    # name: (seed, class sizes, D)
    "balanced_K5_D7": (1, [60] * 5, 7),
    "K12_gt_D5": (2, [30] * 12, 5),
    "imbalanced_K6_D8": (3, [1, 3, 20, 70, 150, 56], 8),
}


@functools.cache
def case(name: str) -> dict[str, Any]:
    seed, sizes, dim = CASES[name]
    x, y = make_data(seed, sizes, dim)
    k = len(sizes)
    rng = np.random.default_rng(seed + 100)
    w = rng.standard_normal((k, dim))
    b = rng.standard_normal(k)
    s = random_psd(k, rng)
    x_test, _ = make_data(seed + 200, [40] * k, dim)
    return {
        "x": x,
        "y": y,
        "w": w,
        "b": b,
        "s": s,
        "x_test": x_test,
        "stats": build_stats(x, y, k, seed=seed),
    }


CASE_NAMES = list(CASES)
GMS = ["samples", "classes"]


def close(a: float, b: float, rel: float = REL, abs_: float = ABS) -> bool:
    return a == pytest.approx(b, rel=rel, abs=abs_)


# ---------------------------------------------------------------------------- reference sanity
def test_reference_two_pass_statistics_match_featurestats() -> None:
    c = case("imbalanced_K6_D8")
    x, y, st = c["x"], c["y"], c["stats"]
    np.testing.assert_allclose(st.means.numpy(), ref.class_means(x, y), rtol=1e-12, atol=1e-12)
    for within in ("samples", "balanced"):
        np.testing.assert_allclose(
            st.within_covariance(within).numpy(), ref.within_cov(x, y, within), atol=1e-12
        )
    for gm in GMS:
        np.testing.assert_allclose(
            st.between_covariance(gm).numpy(), ref.between_cov(x, y, gm), atol=1e-12
        )
        np.testing.assert_allclose(
            st.total_covariance(gm).numpy(), ref.total_cov(x, y, gm), atol=1e-12
        )
    # per-class covariances average to the balanced Σ_W
    np.testing.assert_allclose(
        ref.class_covariances(x, y).mean(0), ref.within_cov(x, y, "balanced"), atol=1e-14
    )


# ---------------------------------------------------------------------------- every variant
NC1_KWARGS = [
    {"variant": v, "within": w, "global_mean": g}
    for v, w, g in itertools.product(["papyan", "quotient", "vci"], ["samples", "balanced"], GMS)
] + [
    {"variant": "papyan", "divide_by_classes": False},
    {
        "variant": "papyan",
        "within": "balanced",
        "global_mean": "classes",
        "divide_by_classes": False,
    },
]


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("kwargs", NC1_KWARGS, ids=str)
def test_nc1_matches_reference(name: str, kwargs: dict[str, Any]) -> None:
    c = case(name)
    got = collapse.nc1(c["stats"], **kwargs)
    assert isinstance(got, float)
    want = ref.nc1(c["x"], c["y"], **kwargs)
    assert close(got, want), (got, want)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_nc1_defaults_and_divide_flag(name: str) -> None:
    c = case(name)
    k = len(CASES[name][1])
    default = collapse.nc1(c["stats"])
    assert close(default, ref.nc1(c["x"], c["y"], variant="papyan"))
    assert close(collapse.nc1(c["stats"], divide_by_classes=False), k * default)


EQUINORM_KWARGS = [
    {"of": "means", "ddof": d, "global_mean": g} for d, g in itertools.product([0, 1], GMS)
] + [{"of": "weights", "ddof": d} for d in (0, 1)]


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("kwargs", EQUINORM_KWARGS, ids=str)
def test_equinorm_matches_reference(name: str, kwargs: dict[str, Any]) -> None:
    c = case(name)
    weight = t(c["w"]) if kwargs["of"] == "weights" else None
    got = collapse.equinorm(c["stats"], weight, **kwargs)
    want = ref.equinorm(c["x"], c["y"], c["w"], **kwargs)
    assert isinstance(got, float)
    assert close(got, want), (got, want)


EQUIANG_KWARGS = [
    {"of": "means", "reduction": r, "global_mean": g}
    for r, g in itertools.product(["mean_abs", "std"], GMS)
] + [{"of": "weights", "reduction": r} for r in ("mean_abs", "std")]


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("kwargs", EQUIANG_KWARGS, ids=str)
def test_equiangularity_matches_reference(name: str, kwargs: dict[str, Any]) -> None:
    c = case(name)
    weight = t(c["w"]) if kwargs["of"] == "weights" else None
    got = collapse.equiangularity(c["stats"], weight, **kwargs)
    want = ref.equiangularity(c["x"], c["y"], c["w"], **kwargs)
    assert isinstance(got, float)
    assert close(got, want), (got, want)


ETF_ERR_KWARGS = [{"of": "means", "global_mean": g} for g in GMS] + [{"of": "weights"}]


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("kwargs", ETF_ERR_KWARGS, ids=str)
def test_etf_error_matches_reference(name: str, kwargs: dict[str, Any]) -> None:
    c = case(name)
    weight = t(c["w"]) if kwargs["of"] == "weights" else None
    got = collapse.etf_error(c["stats"], weight, **kwargs)
    want = ref.etf_error(c["x"], c["y"], c["w"], **kwargs)
    assert isinstance(got, float)
    assert close(got, want), (got, want)


SELF_DUALITY_KWARGS = [
    {"variant": "papyan", "squared": sq, "global_mean": g}
    for sq, g in itertools.product([True, False], GMS)
] + [{"variant": v, "global_mean": g} for v, g in itertools.product(["wh", "cosine"], GMS)]


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("kwargs", SELF_DUALITY_KWARGS, ids=str)
def test_self_duality_matches_reference(name: str, kwargs: dict[str, Any]) -> None:
    c = case(name)
    got = collapse.self_duality(c["stats"], t(c["w"]), **kwargs)
    want = ref.self_duality(c["x"], c["y"], c["w"], **kwargs)
    assert isinstance(got, float)
    assert close(got, want), (got, want)


@pytest.mark.parametrize("noise", [1e-5, 1e-7])
def test_equiangularity_std_accurate_for_nearly_equal_cosines(noise: float) -> None:
    # Classifier rows sharing a common component (a cone over a simplex): every cosine is
    # ≈ 0.84, far from −1/(K−1), and they differ by ~noise. A one-pass Σc² − (Σc)²/n variance
    # cancels catastrophically here; the two-pass std of the reference does not.
    k, dim = 6, 9
    rng = np.random.default_rng(12)
    etf = simplex_etf(k, dim, rng)
    normal = np.linalg.svd(etf)[2][-1]  # unit vector orthogonal to the simplex span
    w = etf + 3.0 * normal + noise * rng.standard_normal((k, dim))
    x, y = make_data(13, [20] * k, dim)
    stats = build_stats(x, y, k)
    want = ref.equiangularity(x, y, w, of="weights", reduction="std")
    assert 0.1 * noise < want < 10 * noise
    got = collapse.equiangularity(stats, t(w), of="weights", reduction="std")
    assert got == pytest.approx(want, rel=1e-6)


def test_self_duality_squared_is_square_of_unsquared() -> None:
    c = case("balanced_K5_D7")
    sq = collapse.self_duality(c["stats"], t(c["w"]))
    unsq = collapse.self_duality(c["stats"], t(c["w"]), squared=False)
    assert sq == pytest.approx(unsq**2, rel=1e-12)
    assert 0.0 < sq < 4.0


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("exponent", [1, 2])
@pytest.mark.parametrize("ddof", [0, 1])
def test_cdnv_matches_reference(name: str, exponent: int, ddof: int) -> None:
    c = case(name)
    got = collapse.cdnv(c["stats"], exponent=exponent, ddof=ddof)
    want = ref.cdnv(c["x"], c["y"], exponent=exponent, ddof=ddof)
    assert isinstance(got, float)
    assert close(got, want), (got, want)


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("gm", GMS)
def test_etf_distance_matches_reference(name: str, gm: str) -> None:
    c = case(name)
    got = collapse.etf_distance(c["stats"], global_mean=gm)
    want = ref.etf_distance(c["x"], c["y"], global_mean=gm)
    assert isinstance(got, float)
    assert close(got, want), (got, want)
    assert 0.0 <= got <= 4.0


@pytest.mark.parametrize("name", ["balanced_K5_D7", "imbalanced_K6_D8"])
def test_etf_distance_equals_procrustes_brute_force(name: str) -> None:
    c = case(name)
    got = collapse.etf_distance(c["stats"])
    brute, p = ref.etf_distance_procrustes(c["x"], c["y"])
    np.testing.assert_allclose(p.T @ p, np.eye(p.shape[1]), atol=1e-12)  # orthonormal columns
    assert got == pytest.approx(brute, rel=1e-10, abs=1e-12)
    assert got == pytest.approx(ref.etf_distance(c["x"], c["y"]), rel=1e-10, abs=1e-12)
    # no random isometry does better than the optimum
    rng = np.random.default_rng(7)
    mc = ref.centered_means(c["x"], c["y"])
    yy = mc.T / np.linalg.norm(mc)
    e = ref.simplex_target(mc.shape[0])
    for _ in range(200):
        q, _ = np.linalg.qr(rng.standard_normal((mc.shape[1], mc.shape[0])))
        assert np.sum((yy - q @ e) ** 2) >= brute - 1e-12


FRAME_KWARGS = [{"centered": False}] + [{"centered": True, "global_mean": g} for g in GMS]


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("kwargs", FRAME_KWARGS, ids=str)
def test_frame_distance_matches_reference(name: str, kwargs: dict[str, Any]) -> None:
    c = case(name)
    k = len(CASES[name][1])
    s = random_psd(k, np.random.default_rng(11))
    got = collapse.frame_distance(c["stats"], t(s), **kwargs)
    want = ref.frame_distance(c["x"], c["y"], s, **kwargs)
    assert isinstance(got, float)
    assert close(got, want), (got, want)


def hierarchy_similarity(groups: list[int], gamma: float = 2.0) -> np.ndarray:
    """HAFrame-style S(s) = (1 − s)E + s11ᵀ at the exact PSD boundary (singular, rank K − 1).

    Two-level tree: h = 0 on the diagonal, 1 within a group, 2 across groups;
    E = exp(−γ h / max h) and s = −1/(1ᵀE⁻¹1 − 1) (docs/conventions.md, Frames).
    """
    lab = np.repeat(np.arange(len(groups)), groups)
    h = np.where(lab[:, None] == lab[None, :], 1.0, 2.0)
    np.fill_diagonal(h, 0.0)
    e = np.exp(-gamma * h / h.max())
    one = np.ones(len(lab))
    s_min = -1.0 / (one @ np.linalg.solve(e, one) - 1.0)
    return (1.0 - s_min) * e + s_min * np.outer(one, one)


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("kwargs", FRAME_KWARGS, ids=str)
@pytest.mark.parametrize("target", ["low_rank", "haframe"])
def test_frame_distance_singular_similarity(name: str, kwargs: dict[str, Any], target: str) -> None:
    # Singular PSD targets (HAFrame's S sits exactly on the PSD boundary). Their zero
    # eigenvalues come out of eigh as ±1e-16 round-off; keeping a positive one adds its square
    # root (~1e-8) to S^{1/2}. The exact root of a low-rank S = BBᵀ is U Σ Uᵀ from the SVD of
    # the factor B, which pins down the value independently of any eigenvalue threshold.
    c = case(name)
    k = len(CASES[name][1])
    if target == "low_rank":
        rng = np.random.default_rng(11)
        factor = rng.standard_normal((k, 2))
        factor /= np.linalg.norm(factor, axis=1, keepdims=True)
        s = factor @ factor.T
        u, sig, _ = np.linalg.svd(factor, full_matrices=False)
        np.testing.assert_allclose(ref.psd_sqrt(s), (u * sig) @ u.T, atol=1e-14)
    else:
        groups = [k // 2, k - k // 2]
        s = hierarchy_similarity(groups)
        lam = np.linalg.eigvalsh(s)
        assert abs(lam[0]) < 1e-14 * lam[-1] and lam[1] > 1e-3  # rank K − 1, on the boundary
    got = collapse.frame_distance(c["stats"], t(s), **kwargs)
    want = ref.frame_distance(c["x"], c["y"], s, **kwargs)
    assert close(got, want), (got, want)


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("gm", GMS)
def test_frame_distance_with_simplex_gram_is_etf_distance(name: str, gm: str) -> None:
    # S = I − 11ᵀ/K is PSD with one zero eigenvalue; S^{1/2} = S, so E is the ETF target.
    c = case(name)
    k = len(CASES[name][1])
    s = np.eye(k) - np.ones((k, k)) / k
    got = collapse.frame_distance(c["stats"], t(s), centered=True, global_mean=gm)
    assert close(got, collapse.etf_distance(c["stats"], global_mean=gm))
    assert close(got, ref.etf_distance(c["x"], c["y"], global_mean=gm))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_collapse_metrics_matches_reference(name: str) -> None:
    c = case(name)
    got = collapse.collapse_metrics(
        c["stats"], t(c["w"]), t(c["b"]), features=t(c["x_test"]), similarity=t(c["s"])
    )
    want = ref.collapse_metrics(
        c["x"], c["y"], c["w"], c["b"], features=c["x_test"], similarity=c["s"]
    )
    assert set(got) == set(want)
    for key in want:
        assert isinstance(got[key], float), key
        assert close(got[key], want[key]), (key, got[key], want[key])
    assert 0.0 < got["ncc_mismatch"] < 1.0  # a random classifier disagrees with NCC sometimes


def test_collapse_metrics_keys_depend_on_arguments() -> None:
    c = case("balanced_K5_D7")
    base = {
        "nc1",
        "equinorm_means",
        "equiangularity_means",
        "etf_error_means",
        "cdnv",
        "etf_distance",
        "intra_class_variability",
    }
    weights = {"equinorm_weights", "equiangularity_weights", "etf_error_weights", "self_duality"}
    assert set(collapse.collapse_metrics(c["stats"])) == base
    assert set(collapse.collapse_metrics(c["stats"], t(c["w"]))) == base | weights
    got = collapse.collapse_metrics(c["stats"], t(c["w"]), features=t(c["x_test"]))
    assert set(got) == base | weights | {"ncc_mismatch"}
    assert set(collapse.collapse_metrics(c["stats"], similarity=t(c["s"]))) == base | {
        "frame_distance"
    }
    # bias=None means zero bias
    want = ref.ncc_mismatch(c["x_test"], c["w"], None, c["x"], c["y"])
    assert got["ncc_mismatch"] == pytest.approx(want, abs=1e-15)


# ---------------------------------------------------------------------------- sklearn identity
@pytest.mark.parametrize(("seed", "k", "dim", "per_class"), [(4, 5, 7, 60), (5, 12, 5, 20)])
def test_nc1_quotient_matches_calinski_harabasz(
    seed: int, k: int, dim: int, per_class: int
) -> None:
    x, y = make_data(seed, [per_class] * k, dim)
    stats = build_stats(x, y, k, seed=seed)
    n = x.shape[0]
    ch = calinski_harabasz_score(x, y)
    got = collapse.nc1(stats, variant="quotient")
    assert got == pytest.approx((n - k) / ((k - 1) * ch), rel=1e-10)


# ---------------------------------------------------------------------------- exact ETF
def simplex_etf(k: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Rows √(K/(K−1)) (e_c − 1/K) rotated into R^D by a random orthonormal map, ``[K, D]``."""
    base = np.sqrt(k / (k - 1)) * (np.eye(k) - np.ones((k, k)) / k)
    q, _ = np.linalg.qr(rng.standard_normal((dim, k)))  # [D, K], orthonormal columns
    return base @ q.T


@pytest.mark.parametrize(("k", "dim"), [(5, 7), (4, 4), (10, 12)])
@pytest.mark.parametrize("noisy", [False, True])
def test_exact_simplex_etf_metrics_vanish(k: int, dim: int, noisy: bool) -> None:
    rng = np.random.default_rng(k * 100 + dim)
    etf = simplex_etf(k, dim, rng)
    cos = etf @ etf.T
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-14)
    np.testing.assert_allclose(cos[~np.eye(k, dtype=bool)], -1.0 / (k - 1), atol=1e-14)
    scale, offset = 2.5, (rng.standard_normal(dim) if noisy else np.zeros(dim))
    xs, ys = [], []
    for c in range(k):
        if noisy:  # ±v pairs: the class mean stays exactly μ_c
            v = 0.1 * rng.standard_normal((8, dim))
            xs.append(scale * etf[c] + offset + np.concatenate([v, -v]))
        else:
            xs.append(np.tile(scale * etf[c] + offset, (16, 1)))
        ys.append(np.full(16, c))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(x.shape[0])
    x, y = x[order], y[order]
    stats = build_stats(x, y, k)
    w = t(3.0 * etf)  # W = M up to scale (ETF rows sum to zero)
    zeros = {
        "equinorm_means": collapse.equinorm(stats),
        "equinorm_weights": collapse.equinorm(stats, w, of="weights"),
        "equinorm_weights_ddof0": collapse.equinorm(stats, w, of="weights", ddof=0),
        "equiangularity_means": collapse.equiangularity(stats),
        "equiangularity_means_std": collapse.equiangularity(stats, reduction="std"),
        "equiangularity_weights": collapse.equiangularity(stats, w, of="weights"),
        "equiangularity_weights_std": collapse.equiangularity(
            stats, w, of="weights", reduction="std"
        ),
        "etf_error_means": collapse.etf_error(stats),
        "etf_error_weights": collapse.etf_error(stats, w, of="weights"),
        "self_duality": collapse.self_duality(stats, w),
        "self_duality_unsquared": collapse.self_duality(stats, w, squared=False),
        "self_duality_wh": collapse.self_duality(stats, w, variant="wh"),
        "self_duality_cosine": collapse.self_duality(stats, w, variant="cosine"),
        "etf_distance": collapse.etf_distance(stats),
        "etf_distance_classes": collapse.etf_distance(stats, global_mean="classes"),
        "frame_distance_simplex": collapse.frame_distance(
            stats, t(np.eye(k) - np.ones((k, k)) / k), centered=True
        ),
    }
    if not noisy:  # Σ_W = 0 as well: NC1 and CDNV vanish
        zeros["nc1"] = collapse.nc1(stats)
        zeros["nc1_quotient"] = collapse.nc1(stats, variant="quotient")
        zeros["cdnv"] = collapse.cdnv(stats)
    for key, val in zeros.items():
        assert isinstance(val, float), key
        assert abs(val) <= 1e-12, (key, val)
    brute, _ = ref.etf_distance_procrustes(x, y)
    assert abs(brute) <= 1e-12
    if noisy:
        assert collapse.nc1(stats) > 1e-4  # genuinely not collapsed within classes
    else:
        # vci: Σ_W = 0, so Tr((Σ_B)⁺ Σ_B) = rank = K − 1 = min(D, K − 1) → 0
        assert abs(collapse.nc1(stats, variant="vci")) <= 1e-12


# ---------------------------------------------------------------------------- invariances
def random_orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def all_metrics(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, s: np.ndarray, x_test: np.ndarray
) -> dict[str, float]:
    k = w.shape[0]
    stats = build_stats(x, y, k, seed=5)
    wt = t(w)
    out = collapse.collapse_metrics(stats, wt, t(b), features=t(x_test), similarity=t(s))
    for kw in NC1_KWARGS:
        out[f"nc1 {kw}"] = collapse.nc1(stats, **kw)
    for kw in EQUIANG_KWARGS:
        out[f"equiangularity {kw}"] = collapse.equiangularity(
            stats, wt if kw["of"] == "weights" else None, **kw
        )
    for kw in SELF_DUALITY_KWARGS:
        out[f"self_duality {kw}"] = collapse.self_duality(stats, wt, **kw)
    for kw in FRAME_KWARGS:
        out[f"frame_distance {kw}"] = collapse.frame_distance(stats, t(s), **kw)
    out["cdnv2"] = collapse.cdnv(stats, exponent=2, ddof=1)
    return out


def assert_same_metrics(a: dict[str, float], b: dict[str, float]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), (key, a[key], b[key])


@pytest.mark.parametrize("name", CASE_NAMES)
def test_rotation_invariance(name: str) -> None:
    c = case(name)
    rng = np.random.default_rng(21)
    q = random_orthogonal(c["x"].shape[1], rng)
    before = all_metrics(c["x"], c["y"], c["w"], c["b"], c["s"], c["x_test"])
    after = all_metrics(c["x"] @ q.T, c["y"], c["w"] @ q.T, c["b"], c["s"], c["x_test"] @ q.T)
    assert_same_metrics(before, after)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_label_permutation_invariance(name: str) -> None:
    c = case(name)
    k = c["w"].shape[0]
    rng = np.random.default_rng(22)
    perm = rng.permutation(k)  # class c becomes perm[c]
    inv = np.argsort(perm)
    while np.all(perm == np.arange(k)):
        perm = rng.permutation(k)
        inv = np.argsort(perm)
    before = all_metrics(c["x"], c["y"], c["w"], c["b"], c["s"], c["x_test"])
    after = all_metrics(
        c["x"], perm[c["y"]], c["w"][inv], c["b"][inv], c["s"][np.ix_(inv, inv)], c["x_test"]
    )
    assert_same_metrics(before, after)


# ---------------------------------------------------------------------------- absent class
def absent_class_case() -> dict[str, Any]:
    rng = np.random.default_rng(31)
    x, y = make_data(31, [40, 25, 60, 33, 50], 7)
    y = np.where(y >= 3, y + 1, y)  # labels {0, 1, 2, 4, 5}: class 3 never used
    w = rng.standard_normal((6, 7))
    b = rng.standard_normal(6)
    w[3] = 100.0 * rng.standard_normal(7)  # would dominate every logit if it were not dropped
    b[3] = 1e3
    s = random_psd(6, rng)
    x_test, _ = make_data(32, [30] * 5, 7)
    return {"x": x, "y": y, "w": w, "b": b, "s": s, "x_test": x_test}


def test_absent_class_excluded_with_one_warning() -> None:
    c = absent_class_case()
    stats = build_stats(c["x"], c["y"], 6)
    args = (stats, t(c["w"]), t(c["b"]))
    kwargs = {"features": t(c["x_test"]), "similarity": t(c["s"])}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = collapse.collapse_metrics(*args, **kwargs)
    empty = [r for r in rec if issubclass(r.category, EmptyClassWarning)]
    assert len(empty) == 1, [str(r.message) for r in rec]
    assert len(rec) == 1, [str(r.message) for r in rec]
    assert "3" in str(empty[0].message)
    want = ref.collapse_metrics(
        c["x"], c["y"], c["w"], c["b"], features=c["x_test"], similarity=c["s"]
    )
    assert set(got) == set(want)
    for key in want:
        assert close(got[key], want[key]), (key, got[key], want[key])
    # the reference really drops the class: its present label set has 5 classes
    assert ref.present_classes(c["y"]).tolist() == [0, 1, 2, 4, 5]
    # one warning per stats state: asking again does not warn again
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        again = collapse.collapse_metrics(*args, **kwargs)
    assert [r for r in rec if issubclass(r.category, EmptyClassWarning)] == []
    assert again == got


def test_absent_class_individual_metrics_match_reference() -> None:
    c = absent_class_case()
    stats = build_stats(c["x"], c["y"], 6)
    x, y, w, s = c["x"], c["y"], c["w"], c["s"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyClassWarning)
        pairs = [
            (collapse.nc1(stats, variant="vci"), ref.nc1(x, y, variant="vci")),
            (collapse.nc1(stats, within="balanced"), ref.nc1(x, y, within="balanced")),
            (
                collapse.equinorm(stats, t(w), of="weights"),
                ref.equinorm(x, y, w, of="weights"),
            ),
            (
                collapse.equiangularity(stats, t(w), of="weights", reduction="std"),
                ref.equiangularity(x, y, w, of="weights", reduction="std"),
            ),
            (collapse.etf_error(stats, t(w), of="weights"), ref.etf_error(x, y, w, of="weights")),
            (
                collapse.self_duality(stats, t(w), variant="cosine"),
                ref.self_duality(x, y, w, variant="cosine"),
            ),
            (
                collapse.self_duality(stats, t(w), variant="wh", global_mean="classes"),
                ref.self_duality(x, y, w, variant="wh", global_mean="classes"),
            ),
            (collapse.cdnv(stats, ddof=1), ref.cdnv(x, y, ddof=1)),
            (
                collapse.frame_distance(stats, t(s), centered=True),
                ref.frame_distance(x, y, s, centered=True),
            ),
        ]
    for i, (got, want) in enumerate(pairs):
        assert close(got, want), (i, got, want)


# ---------------------------------------------------------------------------- NC4 streaming
def ncc_case() -> dict[str, Any]:
    k, dim = 5, 7
    x_tr, y_tr = make_data(41, [50] * k, dim, spread=2.0)
    x_te, y_te = make_data(42, [37] * k, dim, spread=2.0)
    rng = np.random.default_rng(43)
    centres = ref.class_means(x_tr, y_tr)
    w = centres + 1.5 * rng.standard_normal((k, dim))  # partly aligned: mismatch well inside (0,1)
    b = rng.standard_normal(k)
    return {"x_tr": x_tr, "y_tr": y_tr, "x_te": x_te, "y_te": y_te, "w": w, "b": b, "k": k}


@pytest.mark.parametrize("with_bias", [True, False])
def test_ncc_mismatch_streaming_train_means(with_bias: bool) -> None:
    c = ncc_case()
    train = build_stats(c["x_tr"], c["y_tr"], c["k"])
    b = c["b"] if with_bias else None
    bt = t(b) if b is not None else None
    want = ref.ncc_mismatch(c["x_te"], c["w"], b, c["x_tr"], c["y_tr"])
    assert 0.05 < want < 0.95
    batches = [t(part) for part in np.array_split(c["x_te"], 6)]

    meter = collapse.NCCMismatch(train, t(c["w"]), bt)
    for batch in batches:
        meter.update(batch)
    assert meter.compute() == pytest.approx(want, abs=1e-15)

    meter = collapse.NCCMismatch(train.means, t(c["w"]), bt)  # means as a tensor [K, D]
    for batch in batches:
        meter.update(batch)
    assert meter.compute() == pytest.approx(want, abs=1e-15)

    got = collapse.ncc_mismatch(iter(batches), t(c["w"]), bt, train_stats=train)
    assert got == pytest.approx(want, abs=1e-15)
    got = collapse.ncc_mismatch(t(c["x_te"]), t(c["w"]), bt, train_stats=train, means_from="train")
    assert isinstance(got, float)
    assert got == pytest.approx(want, abs=1e-15)


def test_ncc_mismatch_same_split_means() -> None:
    c = ncc_case()
    want = ref.ncc_mismatch(c["x_te"], c["w"], c["b"], c["x_te"], c["y_te"])
    other = ref.ncc_mismatch(c["x_te"], c["w"], c["b"], c["x_tr"], c["y_tr"])
    assert want != other  # the choice of split matters on this data
    got = collapse.ncc_mismatch(
        t(c["x_te"]), t(c["w"]), t(c["b"]), labels=torch.from_numpy(c["y_te"]), means_from="same"
    )
    assert got == pytest.approx(want, abs=1e-15)


# ---------------------------------------------------------------------------- bad input
def small_stats(k: int = 5, dim: int = 7) -> FeatureStats:
    x, y = make_data(51, [20] * k, dim)
    return build_stats(x, y, k)


WEIGHT_USERS = [
    lambda st, w: collapse.equinorm(st, w, of="weights"),
    lambda st, w: collapse.equiangularity(st, w, of="weights"),
    lambda st, w: collapse.etf_error(st, w, of="weights"),
    lambda st, w: collapse.self_duality(st, w),
    lambda st, w: collapse.self_duality(st, w, variant="cosine"),
    lambda st, w: collapse.collapse_metrics(st, w),
]


@pytest.mark.parametrize("use", WEIGHT_USERS)
def test_bad_weight_raises(use: Any) -> None:
    st = small_stats()
    good = torch.randn(5, 7, dtype=torch.float64)
    use(st, good)  # sanity: the good weight is accepted
    for bad in (torch.randn(5, 8), torch.randn(4, 7), torch.randn(6, 7), torch.randn(35)):
        with pytest.raises(ValueError):
            use(st, bad.double())
    nan = good.clone()
    nan[2, 3] = float("nan")
    with pytest.raises(ValueError):
        use(st, nan)
    inf = good.clone()
    inf[0, 0] = float("inf")
    with pytest.raises(ValueError):
        use(st, inf)


def test_bad_weight_in_ncc_raises() -> None:
    st = small_stats()
    x = torch.randn(10, 7, dtype=torch.float64)
    with pytest.raises(ValueError):
        collapse.ncc_mismatch(x, torch.randn(5, 6, dtype=torch.float64), train_stats=st)
    nan = torch.randn(5, 7, dtype=torch.float64)
    nan[1, 1] = float("nan")
    with pytest.raises(ValueError):
        collapse.ncc_mismatch(x, nan, train_stats=st)


@pytest.mark.parametrize(
    "use",
    [
        lambda st, s: collapse.frame_distance(st, s),
        lambda st, s: collapse.frame_distance(st, s, centered=True),
        lambda st, s: collapse.collapse_metrics(st, similarity=s),
    ],
)
def test_bad_similarity_raises(use: Any) -> None:
    st = small_stats()
    rng = np.random.default_rng(61)
    good = random_psd(5, rng)
    use(st, t(good))  # sanity
    not_psd = np.eye(5) - 2.0 * np.ones((5, 5)) / 5  # eigenvalue −1 along 1
    assert np.linalg.eigvalsh(not_psd).min() < -0.5
    for bad in (random_psd(4, rng), random_psd(6, rng), good[:, :4], good.ravel(), not_psd):
        with pytest.raises(ValueError):
            use(st, t(bad))
    nan = good.copy()
    nan[0, 1] = nan[1, 0] = np.nan
    with pytest.raises(ValueError):
        use(st, t(nan))


ONE_CLASS_USERS = [
    lambda st: collapse.nc1(st),
    lambda st: collapse.nc1(st, variant="quotient"),
    lambda st: collapse.nc1(st, variant="vci"),
    lambda st: collapse.equinorm(st),
    lambda st: collapse.equiangularity(st),
    lambda st: collapse.etf_error(st),
    lambda st: collapse.cdnv(st),
    lambda st: collapse.etf_distance(st),
    lambda st: collapse.collapse_metrics(st),
]


@pytest.mark.parametrize("use", ONE_CLASS_USERS)
@pytest.mark.parametrize("num_classes", [1, 4])
def test_fewer_than_two_present_classes_raises(use: Any, num_classes: int) -> None:
    x = np.random.default_rng(71).standard_normal((30, 6))
    y = np.zeros(30, dtype=np.int64)  # only class 0 present
    st = build_stats(x, y, num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyClassWarning)
        with pytest.raises(ValueError):
            use(st)


# ---------------------------------------------------------------------------- extreme scales
def _scaled_metrics(feature_scale: float, weight_scale: float) -> dict[str, float]:
    x, y = make_data(3, [30, 25, 40, 20], 6)
    w = np.random.default_rng(4).standard_normal((4, 6))
    stats = FeatureStats(4, 6)
    stats.update(torch.from_numpy(x * feature_scale), torch.from_numpy(y))
    w_t = torch.from_numpy(w * weight_scale)
    out = collapse.collapse_metrics(stats, w_t)
    for variant in ("papyan", "wh", "cosine"):
        out[f"self_duality_{variant}"] = collapse.self_duality(stats, w_t, variant=variant)
    for of in ("means", "weights"):
        out[f"equiangularity_std_{of}"] = collapse.equiangularity(
            stats, w_t, of=of, reduction="std"
        )
        out[f"etf_error_{of}_alone"] = collapse.etf_error(stats, w_t, of=of)
    out["frame_distance"] = collapse.frame_distance(stats, torch.eye(4, dtype=torch.float64))
    return out


@pytest.mark.parametrize(
    ("feature_scale", "weight_scale"), [(1e80, 1.0), (1.0, 1e80), (1.0, 1e200), (1e-80, 1e-80)]
)
def test_metrics_are_scale_free_at_extreme_scales(
    feature_scale: float, weight_scale: float
) -> None:
    """×1e80 made the Gram norm overflow (ETF error 1.0); ×1e154 weights gave NaN."""
    base = _scaled_metrics(1.0, 1.0)
    got = _scaled_metrics(feature_scale, weight_scale)
    assert got.keys() == base.keys()
    for key, value in base.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("feature_scale", [1e154, 1e200])
def test_overflowed_feature_sums_are_one_clear_error(feature_scale: float) -> None:
    """Squares of features ×1e154 overflow FeatureStats' float64 sums: a ValueError, not eigh's."""
    with pytest.raises(ValueError, match="second moments overflowed"):
        _scaled_metrics(feature_scale, 1.0)
    x, y = make_data(3, [30, 25, 40, 20], 6)
    stats = FeatureStats(4, 6)
    stats.update(torch.from_numpy(x * feature_scale), torch.from_numpy(y))
    for metric in (collapse.nc1, collapse.cdnv, collapse.etf_distance, collapse.etf_error):
        with pytest.raises(ValueError, match="second moments overflowed"):
            metric(stats)


def test_collapse_metrics_omits_only_the_undefined_metric() -> None:
    # classes 0 and 1 share their mean exactly (a collapsed or dead representation): CDNV's
    # ratio is infinite, every other metric is defined and must still be reported
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = torch.arange(60) % 3
    x[y == 1] = x[y == 0]  # class 1's samples are class 0's: identical means, bit for bit
    x[y == 2] += 3.0
    stats = FeatureStats(3, 5)
    stats.update(x, y)
    weight = torch.randn(3, 5, generator=g, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"cdnv: the means of classes \(0, 1\) coincide"):
        collapse.collapse_metrics(stats, weight)
    omitted: dict[str, str] = {}
    out = collapse.collapse_metrics(stats, weight, omitted=omitted)
    assert omitted == {"cdnv": "cdnv: the means of classes (0, 1) coincide"}
    assert list(out) == [
        "nc1",
        "equinorm_means",
        "equiangularity_means",
        "etf_error_means",
        "etf_distance",
        "intra_class_variability",
        "equinorm_weights",
        "equiangularity_weights",
        "etf_error_weights",
        "self_duality",
    ]
    assert out["nc1"] == pytest.approx(collapse.nc1(stats), rel=1e-12)
    assert out["etf_distance"] == pytest.approx(collapse.etf_distance(stats), rel=1e-12)
    assert out["equiangularity_means"] == pytest.approx(collapse.equiangularity(stats), rel=1e-12)
    assert out["self_duality"] == pytest.approx(collapse.self_duality(stats, weight), rel=1e-12)
    # a bad argument is not "undefined": it raises even with omitted
    with pytest.raises(ValueError, match="ncc_mismatch needs the classifier"):
        collapse.collapse_metrics(stats, features=(x, y), omitted={})
    with pytest.raises(ValueError, match=r"weight must have shape \[3, 5\]"):
        collapse.collapse_metrics(stats, weight[:, :4], omitted={})
    with pytest.raises(ValueError, match=r"bias must have shape \[3\]"):
        collapse.collapse_metrics(stats, weight, torch.zeros(4), omitted={})
    with pytest.raises(ValueError, match=r"similarity must have shape \[3, 3\]"):
        collapse.collapse_metrics(stats, similarity=torch.eye(2), omitted={})


def test_nc1_refuses_coinciding_means_instead_of_reporting_collapse() -> None:
    # every class has the same mean (a dead or unseparated representation) but spread:
    # Tr(Σ_W Σ_B⁺) with Σ_B⁺ = 0 would read as perfect collapse
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.arange(30) % 3
    x[y == 1] = x[y == 0]
    x[y == 2] = x[y == 0]
    stats = FeatureStats(3, 4)
    stats.update(x, y)
    for variant in ("papyan", "quotient"):
        with pytest.raises(ValueError, match="all class means coincide"):
            collapse.nc1(stats, variant=variant)  # type: ignore[arg-type]
    omitted: dict[str, str] = {}
    out = collapse.collapse_metrics(stats, omitted=omitted)
    assert "nc1" not in out and "all class means coincide" in omitted["nc1"]
