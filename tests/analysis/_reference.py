"""Brute-force float64 references for the metrics, written from CONVENTIONS.md alone.

Plain numpy with explicit loops over samples, classes and pairs: slow, obvious, and
independent of the streaming implementation in ``analysis``.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.linalg


def class_means(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes present, means [K, D], counts [K])."""
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    counts = np.array([np.sum(y == c) for c in classes])
    return classes, means, counts


def covariances(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Σ_W (sample-weighted), Σ_B (global mean sample-weighted), centred means M_c."""
    classes, means, _ = class_means(x, y)
    mu_g = x.mean(axis=0)
    d = x.shape[1]
    sw = np.zeros((d, d))
    for i in range(len(x)):
        r = x[i] - means[np.searchsorted(classes, y[i])]
        sw += np.outer(r, r)
    sw /= len(x)
    mc = means - mu_g
    sb = sum(np.outer(m, m) for m in mc) / len(classes)
    return sw, sb, mc


def nc1(x: np.ndarray, y: np.ndarray, variant: str = "papyan", divide: bool = True) -> float:
    sw, sb, mc = covariances(x, y)
    k, d = mc.shape
    if variant == "papyan":
        v = np.trace(sw @ np.linalg.pinv(sb, hermitian=True))
        return v / k if divide else v
    if variant == "quotient":
        return np.trace(sw) / np.trace(sb)
    if variant == "vci":
        return 1 - np.trace(np.linalg.pinv(sw + sb, hermitian=True) @ sb) / min(d, k - 1)
    raise ValueError(variant)


def equinorm(v: np.ndarray, ddof: int = 1) -> float:
    norms = np.array([np.sqrt(sum(t * t for t in row)) for row in v])
    return norms.std(ddof=ddof) / norms.mean()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def equiangularity(v: np.ndarray, reduction: str = "mean_abs") -> float:
    k = len(v)
    cos = [_cos(v[i], v[j]) for i, j in itertools.permutations(range(k), 2)]
    if reduction == "mean_abs":
        return float(np.mean([abs(c + 1 / (k - 1)) for c in cos]))
    return float(np.std(cos, ddof=1))


def etf_target(k: int) -> np.ndarray:
    return (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1)


def etf_error(v: np.ndarray) -> float:
    g = v @ v.T
    return float(np.linalg.norm(g / np.linalg.norm(g) - etf_target(len(v))))


def self_duality(w: np.ndarray, mc: np.ndarray, variant: str = "papyan", squared: bool = True):
    if variant == "papyan":
        d = np.linalg.norm(w / np.linalg.norm(w) - mc / np.linalg.norm(mc))
        return d**2 if squared else d
    if variant == "wh":
        wh = w @ mc.T
        return float(np.linalg.norm(wh / np.linalg.norm(wh) - etf_target(len(w))))
    return float(np.mean([1 - _cos(w[c], mc[c]) for c in range(len(w))]))


def cdnv(x: np.ndarray, y: np.ndarray, exponent: int = 1, ddof: int = 0) -> float:
    classes, means, counts = class_means(x, y)
    var = []
    for c, mu, n in zip(classes, means, counts, strict=True):
        ss = sum(float(np.sum((row - mu) ** 2)) for row in x[y == c])
        var.append(0.0 if n - ddof <= 0 else ss / (n - ddof))
    vals = []
    for a, b in itertools.combinations(range(len(classes)), 2):
        dist2 = float(np.sum((means[a] - means[b]) ** 2))
        vals.append((var[a] + var[b]) / (2 * dist2**exponent))
    return float(np.mean(vals))


def frame_distance_closed(m: np.ndarray, target_root: np.ndarray) -> float:
    """2 − 2‖Y E‖_*, Y = mᵀ/‖m‖_F, E = target_root/‖target_root‖_F."""
    y = m.T / np.linalg.norm(m)
    e = target_root / np.linalg.norm(target_root)
    return float(2 - 2 * np.linalg.svd(y @ e, compute_uv=False).sum())


def frame_distance_procrustes(m: np.ndarray, target_root: np.ndarray) -> float:
    """min over P with orthonormal columns (D ≥ K) of ‖Y − P E‖², by orthogonal Procrustes."""
    y = m.T / np.linalg.norm(m)
    e = target_root / np.linalg.norm(target_root)
    d, k = y.shape
    # embed E in R^D (zero rows), solve min_R ‖R Ẽ − Y‖ over orthogonal R (D × D)
    e_full = np.vstack([e, np.zeros((d - k, k))])
    r, _ = scipy.linalg.orthogonal_procrustes(e_full.T, y.T)
    return float(np.linalg.norm(y - r.T @ e_full) ** 2)


def etf_distance(mc: np.ndarray) -> float:
    return frame_distance_closed(mc, etf_target(len(mc)))


def frame_distance(m: np.ndarray, s: np.ndarray) -> float:
    root = np.real(scipy.linalg.sqrtm(s))
    return frame_distance_closed(m, root)


def ncc_mismatch(x: np.ndarray, w: np.ndarray, b: np.ndarray, means: np.ndarray) -> float:
    bad = 0
    for row in x:
        pred = int(np.argmax(w @ row + b))
        near = int(np.argmin([np.sum((row - mu) ** 2) for mu in means]))
        bad += pred != near
    return bad / len(x)


def intra_class_variability(x: np.ndarray, y: np.ndarray) -> float:
    """Literal pair averages of 1 − cos (pairs include i = j), Kornblith et al. 2021."""
    classes = np.unique(y)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    within = []
    for c in classes:
        uc = u[y == c]
        within.append(np.mean([1 - uc[i] @ uc[j] for i in range(len(uc)) for j in range(len(uc))]))
    total = 0.0
    for a in classes:
        for b in classes:
            ua, ub = u[y == a], u[y == b]
            total += np.mean(1 - ua @ ub.T)
    return float(np.mean(within) / (total / len(classes) ** 2))
