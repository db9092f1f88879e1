"""Independent brute-force float64 reference for the neural-collapse metrics.

Written from the documented conventions and API only (now ``docs/conventions.md`` and
``docs/metrics.md``; the API specification it was first written from is no longer in the
repository), without looking at
``analysis/collapse.py`` or ``analysis/variability.py``: the point is to have a second,
independent implementation to test against. Everything here works on raw numpy arrays
``X [N, D]``, ``y [N]``, ``W [K_total, D]``, ``b [K_total]`` in float64 with explicit loops
(per class, per pair, per sample) and two-pass statistics. Clarity beats speed.

Absent classes: the reference uses the label set present in ``y`` (``np.unique(y)``); a
weight/bias/similarity indexed by the full class range ``[0, K_total)`` is restricted to
those rows (and columns).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

EPS = np.finfo(np.float64).eps


# ---------------------------------------------------------------------------- helpers
def _f64(a: object) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def present_classes(y: np.ndarray) -> np.ndarray:
    """Sorted class ids that occur in ``y``."""
    return np.unique(np.asarray(y))


def simplex_target(k: int) -> np.ndarray:
    """``(I − 11ᵀ/K)/√(K−1)``: the normalised simplex-ETF Gram matrix (unit Frobenius norm)."""
    return (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1)


def psd_pinv(a: np.ndarray, d: int, k: int) -> np.ndarray:
    """Pseudo-inverse of a symmetric PSD matrix by eigendecomposition.

    Eigenvalues ``<= max(D, K) * eps * λ_max`` are dropped (spec of ``nc1``).
    """
    a = (a + a.T) / 2
    lam, v = np.linalg.eigh(a)
    tol = max(d, k) * EPS * lam.max()
    out = np.zeros_like(a)
    for i in range(lam.shape[0]):
        if lam[i] > tol:
            out += np.outer(v[:, i], v[:, i]) / lam[i]
    return out


def psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix.

    Eigenvalues ``<= K * eps * λ_max`` are round-off of exact zeros and set to 0: keeping them
    would add their square roots (~1e-8 λ_max^{1/2}) to S^{1/2}, since √· is not Lipschitz at 0.
    """
    s = (s + s.T) / 2
    lam, v = np.linalg.eigh(s)
    tol = s.shape[0] * EPS * lam.max()
    lam = np.where(lam > tol, lam, 0.0)
    return (v * np.sqrt(lam)) @ v.T


def nuclear_norm(a: np.ndarray) -> float:
    return float(np.linalg.svd(a, compute_uv=False).sum())


# ---------------------------------------------------------------------------- class statistics
def class_means(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Means ``[K, D]`` of the present classes (order of :func:`present_classes`)."""
    x = _f64(x)
    classes = present_classes(y)
    out = np.zeros((classes.size, x.shape[1]))
    for k, c in enumerate(classes):
        xc = x[y == c]
        out[k] = xc.sum(axis=0) / xc.shape[0]
    return out


def class_counts(y: np.ndarray) -> np.ndarray:
    classes = present_classes(y)
    return np.array([np.sum(y == c) for c in classes], dtype=np.int64)


def class_scatters(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-pass per-class scatter ``Σ_{i∈c} (x_i − μ_c)(x_i − μ_c)ᵀ`` ``[K, D, D]``."""
    x = _f64(x)
    mu = class_means(x, y)
    classes = present_classes(y)
    out = np.zeros((classes.size, x.shape[1], x.shape[1]))
    for k, c in enumerate(classes):
        for xi in x[y == c]:
            d = xi - mu[k]
            out[k] += np.outer(d, d)
    return out


def class_covariances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-class covariances (1/n_c) scatter ``[K, D, D]``."""
    return class_scatters(x, y) / class_counts(y)[:, None, None]


def class_variances(x: np.ndarray, y: np.ndarray, ddof: int = 0) -> np.ndarray:
    """σ_c² = 1/(n_c − ddof) Σ_{i∈c} ‖x_i − μ_c‖² (0 when n_c <= ddof)."""
    x = _f64(x)
    mu = class_means(x, y)
    out = []
    for k, c in enumerate(present_classes(y)):
        xc = x[y == c]
        ss = 0.0
        for xi in xc:
            ss += float(np.sum((xi - mu[k]) ** 2))
        n = xc.shape[0]
        out.append(ss / (n - ddof) if n > ddof else 0.0)
    return np.array(out)


def global_mean(x: np.ndarray, y: np.ndarray, kind: str = "samples") -> np.ndarray:
    x = _f64(x)
    if kind == "samples":
        return x.sum(axis=0) / x.shape[0]
    if kind == "classes":
        return class_means(x, y).mean(axis=0)
    raise ValueError(kind)


def centered_means(x: np.ndarray, y: np.ndarray, kind: str = "samples") -> np.ndarray:
    return class_means(x, y) - global_mean(x, y, kind)


def within_cov(x: np.ndarray, y: np.ndarray, within: str = "samples") -> np.ndarray:
    sc = class_scatters(x, y)
    if within == "samples":
        return sc.sum(axis=0) / _f64(x).shape[0]
    if within == "balanced":
        return (sc / class_counts(y)[:, None, None]).mean(axis=0)
    raise ValueError(within)


def between_cov(x: np.ndarray, y: np.ndarray, kind: str = "samples") -> np.ndarray:
    mc = centered_means(x, y, kind)
    out = np.zeros((mc.shape[1], mc.shape[1]))
    for row in mc:
        out += np.outer(row, row)
    return out / mc.shape[0]


def total_cov(x: np.ndarray, y: np.ndarray, kind: str = "samples") -> np.ndarray:
    x = _f64(x)
    mu = global_mean(x, y, kind)
    out = np.zeros((x.shape[1], x.shape[1]))
    for xi in x:
        out += np.outer(xi - mu, xi - mu)
    return out / x.shape[0]


def present_weight(w: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows of ``W`` (indexed by class id) for the present classes."""
    return _f64(w)[present_classes(y)]


# ---------------------------------------------------------------------------- NC1
def nc1(
    x: np.ndarray,
    y: np.ndarray,
    *,
    variant: str = "papyan",
    within: str = "samples",
    global_mean: str = "samples",
    divide_by_classes: bool = True,
) -> float:
    x = _f64(x)
    d = x.shape[1]
    k = present_classes(y).size
    sw = within_cov(x, y, within)
    sb = between_cov(x, y, global_mean)
    if variant == "papyan":
        val = float(np.trace(sw @ psd_pinv(sb, d, k)))
        return val / k if divide_by_classes else val
    if variant == "quotient":
        return float(np.trace(sw) / np.trace(sb))
    if variant == "vci":
        return 1.0 - float(np.trace(psd_pinv(sw + sb, d, k) @ sb)) / min(d, k - 1)
    raise ValueError(variant)


# ---------------------------------------------------------------------------- NC2
def _vectors(x, y, w, of, gm):
    if of == "means":
        return centered_means(x, y, gm)
    if of == "weights":
        return present_weight(w, y)
    raise ValueError(of)


def equinorm(x, y, w=None, *, of="means", ddof=1, global_mean="samples") -> float:
    u = _vectors(x, y, w, of, global_mean)
    norms = np.array([np.sqrt(np.sum(row**2)) for row in u])
    m = norms.sum() / norms.size
    var = np.sum((norms - m) ** 2) / (norms.size - ddof)
    return float(np.sqrt(var) / m)


def cosine_matrix(u: np.ndarray) -> np.ndarray:
    k = u.shape[0]
    out = np.zeros((k, k))
    for a in range(k):
        for c in range(k):
            out[a, c] = u[a] @ u[c] / (np.linalg.norm(u[a]) * np.linalg.norm(u[c]))
    return out


def equiangularity(
    x, y, w=None, *, of="means", reduction="mean_abs", global_mean="samples"
) -> float:
    u = _vectors(x, y, w, of, global_mean)
    k = u.shape[0]
    cos = cosine_matrix(u)
    off = [cos[a, c] for a in range(k) for c in range(k) if a != c]  # ordered pairs
    off = np.array(off)
    if reduction == "mean_abs":
        return float(np.mean(np.abs(off + 1.0 / (k - 1))))
    if reduction == "std":
        return float(np.std(off, ddof=1))
    raise ValueError(reduction)


def etf_error(x, y, w=None, *, of="means", global_mean="samples") -> float:
    u = _vectors(x, y, w, of, global_mean)
    g = u @ u.T
    return float(np.linalg.norm(g / np.linalg.norm(g) - simplex_target(g.shape[0])))


# ---------------------------------------------------------------------------- NC3
def self_duality(x, y, w, *, variant="papyan", squared=True, global_mean="samples") -> float:
    mc = centered_means(x, y, global_mean)
    wp = present_weight(w, y)
    if variant == "papyan":
        val = float(np.linalg.norm(wp / np.linalg.norm(wp) - mc / np.linalg.norm(mc)))
        return val**2 if squared else val
    if variant == "wh":
        g = wp @ mc.T
        return float(np.linalg.norm(g / np.linalg.norm(g) - simplex_target(g.shape[0])))
    if variant == "cosine":
        vals = []
        for a in range(wp.shape[0]):
            c = wp[a] @ mc[a] / (np.linalg.norm(wp[a]) * np.linalg.norm(mc[a]))
            vals.append(1.0 - c)
        return float(np.mean(vals))
    raise ValueError(variant)


# ---------------------------------------------------------------------------- CDNV
def cdnv(x, y, *, exponent=1, ddof=0) -> float:
    mu = class_means(x, y)
    var = class_variances(x, y, ddof)
    k = mu.shape[0]
    vals = []
    for a in range(k):
        for c in range(a + 1, k):
            dist2 = float(np.sum((mu[a] - mu[c]) ** 2))
            vals.append((var[a] + var[c]) / (2.0 * dist2**exponent))
    return float(np.mean(vals))


# ---------------------------------------------------------------------------- ETF / frame distance
def etf_distance(x, y, *, global_mean="samples") -> float:
    """Closed form 2 − 2‖Y E‖_*, Y = M_cᵀ/‖M_c‖_F, E = (I − 11ᵀ/K)/√(K−1)."""
    mc = centered_means(x, y, global_mean)
    yy = mc.T / np.linalg.norm(mc)
    return 2.0 - 2.0 * nuclear_norm(yy @ simplex_target(mc.shape[0]))


def etf_distance_procrustes(x, y, *, global_mean="samples") -> tuple[float, np.ndarray]:
    """Brute-force ``min_P ‖Y − P E‖_F²`` over P ``[D, K]`` with orthonormal columns (D >= K).

    Pad E with zero rows to ``Ẽ [D, K]``; then ``P E = Q Ẽ`` for an orthogonal ``Q [D, D]``
    whose first K columns are P, and ``min_Q ‖Q Ẽ − Y‖ = min_R ‖Ẽᵀ R − Yᵀ‖`` (R = Qᵀ) is an
    orthogonal Procrustes problem. Returns the distance and the optimal P.
    """
    mc = centered_means(x, y, global_mean)
    k, d = mc.shape
    if d < k:
        raise ValueError("procrustes reference needs D >= K")
    yy = mc.T / np.linalg.norm(mc)
    e = simplex_target(k)
    e_pad = np.zeros((d, k))
    e_pad[:k] = e
    r, _ = scipy.linalg.orthogonal_procrustes(e_pad.T, yy.T)
    q = r.T
    p = q[:, :k]
    return float(np.sum((yy - p @ e) ** 2)), p


def frame_distance(x, y, similarity, *, centered=False, global_mean="samples") -> float:
    """2 − 2‖Y E‖_*, E = S^{1/2}/‖S^{1/2}‖_F restricted to present classes."""
    classes = present_classes(y)
    s = _f64(similarity)[np.ix_(classes, classes)]
    root = psd_sqrt(s)
    e = root / np.linalg.norm(root)
    m = centered_means(x, y, global_mean) if centered else class_means(x, y)
    yy = m.T / np.linalg.norm(m)
    return 2.0 - 2.0 * nuclear_norm(yy @ e)


# ---------------------------------------------------------------------------- NC4
def ncc_mismatch(x, w, b, means_x, means_y) -> float:
    """Loop over samples: argmax_c (w_cᵀx + b_c) ≠ argmin_c ‖x − μ_c‖ over present classes.

    ``means_x``, ``means_y``: the split whose class means define the nearest class centre
    (the training split, or the evaluated split itself for ``means_from="same"``).
    """
    x = _f64(x)
    classes = present_classes(means_y)
    mu = class_means(means_x, means_y)
    wp = _f64(w)[classes]
    bp = np.zeros(classes.size) if b is None else _f64(b)[classes]
    wrong = 0
    for xi in x:
        logits = np.array([wp[a] @ xi + bp[a] for a in range(classes.size)])
        dists = np.array([np.sqrt(np.sum((xi - mu[a]) ** 2)) for a in range(classes.size)])
        if classes[int(np.argmax(logits))] != classes[int(np.argmin(dists))]:
            wrong += 1
    return wrong / x.shape[0]


# ---------------------------------------------------------------------------- variability
def _unit(x: np.ndarray) -> np.ndarray:
    x = _f64(x)
    out = np.zeros_like(x)
    for i, xi in enumerate(x):
        out[i] = xi / np.sqrt(np.sum(xi * xi))
    return out


def unit_class_means(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return class_means(_unit(x), y)


def intra_class_variability_literal(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Literal Kornblith et al. definition: ``(d̄_within, d̄_total)`` from all pairs.

    d̄_within: per class, mean of 1 − cos over all ordered pairs (i, j) including i = j, then
    the mean over classes. d̄_total: for every pair of classes (c, c′), including c = c′, the
    mean of 1 − cos over all pairs of their samples, then the mean over the K² class pairs.
    """
    xh = _unit(x)
    classes = present_classes(y)
    groups = [xh[y == c] for c in classes]
    within = []
    for g in groups:
        total = 0.0
        for i in range(g.shape[0]):
            for j in range(g.shape[0]):
                total += 1.0 - float(g[i] @ g[j])
        within.append(total / g.shape[0] ** 2)
    tot = []
    for ga in groups:
        for gc in groups:
            tot.append(float(np.mean(1.0 - ga @ gc.T)))
    return float(np.mean(within)), float(np.mean(tot))


def intra_class_variability_parts(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Stable form: d̄_within = mean_c (1/n_c) Σ ‖x̂_i − m̂_c‖² (two-pass), d̄_total closed form."""
    xh = _unit(x)
    classes = present_classes(y)
    mh = class_means(xh, y)
    within = []
    for k, c in enumerate(classes):
        g = xh[y == c]
        ss = 0.0
        for xi in g:
            ss += float(np.sum((xi - mh[k]) ** 2))
        within.append(ss / g.shape[0])
    centre = mh.mean(axis=0)
    d_total = 1.0 - float(centre @ centre)
    return float(np.mean(within)), d_total


def intra_class_variability(x: np.ndarray, y: np.ndarray) -> float:
    d_within, d_total = intra_class_variability_parts(x, y)
    return d_within / d_total


def intra_class_variability_naive(x: np.ndarray, y: np.ndarray) -> float:
    """Cancellation-prone form d̄_within = mean_c 1 − ‖Σ_{i∈c} x̂_i‖²/n_c² (for contrast)."""
    xh = _unit(x)
    classes = present_classes(y)
    within = []
    for c in classes:
        s = xh[y == c].sum(axis=0)
        within.append(1.0 - float(s @ s) / np.sum(y == c) ** 2)
    _, d_total = intra_class_variability_parts(x, y)
    return float(np.mean(within)) / d_total


# ---------------------------------------------------------------------------- all metrics
def collapse_metrics(x, y, w=None, b=None, *, features=None, similarity=None) -> dict[str, float]:
    """Reference for ``collapse_metrics`` with every default."""
    out = {
        "nc1": nc1(x, y),
        "equinorm_means": equinorm(x, y),
        "equiangularity_means": equiangularity(x, y),
        "etf_error_means": etf_error(x, y),
        "cdnv": cdnv(x, y),
        "etf_distance": etf_distance(x, y),
        "intra_class_variability": intra_class_variability(x, y),
    }
    if w is not None:
        out["equinorm_weights"] = equinorm(x, y, w, of="weights")
        out["equiangularity_weights"] = equiangularity(x, y, w, of="weights")
        out["etf_error_weights"] = etf_error(x, y, w, of="weights")
        out["self_duality"] = self_duality(x, y, w)
        if features is not None:
            out["ncc_mismatch"] = ncc_mismatch(features, w, b, x, y)
    if similarity is not None:
        out["frame_distance"] = frame_distance(x, y, similarity)
    return out
