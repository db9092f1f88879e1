r"""Neural-collapse metrics (NC1–NC4, CDNV, distances to a simplex ETF or any frame).

Every function takes a :class:`~analysis.stats.FeatureStats` (plus the classifier
``weight [K, D]`` / ``bias [K]`` where the metric needs it), computes in float64 and returns a
Python float. Defaults follow the paper that defined each quantity; every other published form
is one keyword away (see the table in ``docs/metrics.md``). :math:`K` counts the classes that
have samples: classes with none are dropped (with their classifier rows) and named in one
:class:`~analysis.stats.EmptyClassWarning`.

Notation: :math:`\mu_c` class means, :math:`\mu_G` global mean, :math:`M_c` ``[K, D]`` rows
:math:`\mu_c-\mu_G`, :math:`W` ``[K, D]`` rows :math:`w_c`, and the centred simplex ETF Gram
target :math:`E_K = (I - \tfrac1K 11^\top)/\sqrt{K-1}` (unit Frobenius norm).

References
----------
.. [1] V. Papyan, X. Y. Han, D. L. Donoho. Prevalence of neural collapse during the terminal
   phase of deep learning training. PNAS 117(40), 2020.
.. [2] Z. Zhu, T. Ding, J. Zhou, X. Li, C. You, J. Sulam, Q. Qu. A geometric analysis of neural
   collapse with unconstrained features. NeurIPS 2021.
.. [3] T. Tirer, H. Huang, J. Niles-Weed. Perturbation analysis of neural collapse. ICML 2023.
.. [4] J. Xu, H. Liu. Quantifying the variability collapse of neural networks. ICML 2023.
.. [5] T. Galanti, A. György, M. Hutter. On the role of neural collapse in transfer learning.
   ICLR 2022.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import torch

from analysis._checks import as_tensor, check_features, check_finite, check_labels
from analysis._state import read_state, require_distributed
from analysis.stats import FeatureStats, GlobalMean, Within
from analysis.variability import intra_class_variability

__all__ = [
    "NCCMismatch",
    "cdnv",
    "collapse_metrics",
    "equiangularity",
    "equinorm",
    "etf_distance",
    "etf_error",
    "frame_distance",
    "nc1",
    "ncc_mismatch",
    "self_duality",
]

Of = Literal["means", "weights"]


# ---------------------------------------------------------------------------- helpers
def _check_stats(stats: Any) -> FeatureStats:
    if not isinstance(stats, FeatureStats):
        raise TypeError(f"expected a FeatureStats, got {type(stats).__name__}")
    if int(stats.counts.sum()) > 0:
        _check_moments(stats)
    return stats


def _check_moments(stats: FeatureStats) -> None:
    """One clear error when the float64 sums overflowed (features beyond ~1e150 in scale).

    The scatter's diagonal bounds every entry (Cauchy–Schwarz), so checking it, the class
    means and the class second moments is enough, in O(KD) rather than O(D²).
    """
    scatter = stats._derived()["scatter"]  # not the public copy: D×D per call for a diagonal
    finite = (
        bool(torch.isfinite(scatter.diagonal()).all())
        and bool(torch.isfinite(stats.means).all())
        and bool(torch.isfinite(stats.class_variance(0)).all())
    )
    if not finite:
        raise ValueError(
            "FeatureStats' float64 second moments overflowed (features too large in scale, "
            "beyond ~1e150): rescale the features; the collapse metrics are scale-invariant"
        )


def _pow2_scale(v: torch.Tensor) -> float:
    """A power of two near ``max |v|``: dividing by it is exact and keeps ``v @ v.T`` finite."""
    top = v.abs().amax()
    if not bool(torch.isfinite(top)) or float(top) == 0.0:
        return 1.0
    return math.ldexp(1.0, int(torch.frexp(top).exponent))


def _classifier_rows(
    stats: FeatureStats, tensor: Any, name: str, shape: tuple[int, ...]
) -> torch.Tensor:
    """Validate a classifier tensor of ``shape`` and return its present-class rows in float64."""
    t = as_tensor(tensor, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    check_finite(t.detach(), name)
    idx = stats.present_classes()
    return t.detach().to(device=stats.device, dtype=torch.float64)[idx]


def _weight_rows(stats: FeatureStats, weight: Any) -> torch.Tensor:
    if weight is None:
        raise ValueError("this metric needs the classifier weight [K, D]; pass weight=...")
    return _classifier_rows(stats, weight, "weight", (stats.num_classes, stats.dim))


def _min_classes(k: int, what: str) -> None:
    if k < 2:
        raise ValueError(f"{what} needs at least 2 classes with samples, got {k}")


def _vectors(
    stats: FeatureStats, weight: Any, of: Of, global_mean: GlobalMean, *, scaled: bool = True
) -> torch.Tensor:
    """Rows the NC2 metrics act on: centred class means or classifier weights.

    ``scaled`` (default) divides them by a power of two near their largest entry (exact): the
    metrics are scale-invariant, and products of rows ×1e80 would overflow float64.
    """
    _check_stats(stats)
    if of == "means":
        v = stats.centered_means(global_mean)
    elif of == "weights":
        v = _weight_rows(stats, weight)
    else:
        raise ValueError(f"of must be 'means' or 'weights', got {of!r}")
    _min_classes(v.shape[0], "an NC2 metric")
    if scaled:
        v = v / _pow2_scale(v)
    norms = torch.linalg.vector_norm(v, dim=1)
    if bool((norms == 0).any()):
        bad = torch.nonzero(norms == 0).flatten().tolist()
        raise ValueError(f"{of} rows {bad} (among present classes) have zero norm")
    return v


_BLOCK_ELEMENTS = 1 << 22  # entries of one K×K block held at a time (32 MiB in float64)


def _row_blocks(k: int) -> Iterator[tuple[int, int]]:
    """Row ranges such that a ``[rows, K]`` block stays under ``_BLOCK_ELEMENTS`` entries."""
    step = max(1, _BLOCK_ELEMENTS // max(k, 1))
    for start in range(0, k, step):
        yield start, min(start + step, k)


def _etf_block(start: int, stop: int, col: int, k: int, like: torch.Tensor) -> torch.Tensor:
    r"""Block ``[start:stop, col:]`` of the unit-norm ETF Gram :math:`(I-11^\top/K)/\sqrt{K-1}`."""
    block = torch.full((stop - start, k - col), -1.0 / k, dtype=like.dtype, device=like.device)
    block.diagonal(offset=start - col).add_(1.0)
    return block / math.sqrt(k - 1)


def _symmetric_sum(block: torch.Tensor) -> float:
    """Sum over a symmetric matrix from its upper row block ``[r, K-start]`` (see callers).

    The leading ``[r, r]`` square holds both halves of its part; the rest stands for itself
    and its mirror image below the diagonal.
    """
    r = block.shape[0]
    return float(block[:, :r].sum()) + 2.0 * float(block[:, r:].sum())


def _distance_to_etf_gram(a: torch.Tensor, b: torch.Tensor) -> float:
    r""":math:`\|G/\|G\|_F - (I-11^\top/K)/\sqrt{K-1}\|_F` for :math:`G = AB^\top` ``[K, K]``.

    :math:`\|G\|_F^2 = \langle A^\top A, B^\top B\rangle` is formed in :math:`D\times D`, then
    the difference is summed over row blocks of :math:`G`, so no :math:`K\times K` matrix is held
    (K = 32768 would need 8.6 GB).
    """
    k = a.shape[0]
    norm = math.sqrt(max(float((a.T @ a * (b.T @ b)).sum()), 0.0))
    if norm == 0:
        raise ValueError("the Gram matrix is zero")
    total = 0.0
    symmetric = a is b
    for start, stop in _row_blocks(k):
        col = start if symmetric else 0  # a symmetric G needs only its upper blocks
        g = a[start:stop] @ b[col:].T / norm
        diff = (g - _etf_block(start, stop, col, k, g)).square_()
        total += _symmetric_sum(diff) if symmetric else float(diff.sum())
    return math.sqrt(max(total, 0.0))


#: key order of :func:`collapse_metrics`
_ORDER = (
    "nc1",
    "equinorm_means",
    "equiangularity_means",
    "etf_error_means",
    "etf_distance",
    "cdnv",
    "intra_class_variability",
    "equinorm_weights",
    "equiangularity_weights",
    "etf_error_weights",
    "self_duality",
    "ncc_mismatch",
    "frame_distance",
)


class _GramPass:
    r"""Pairwise sums of one matrix of rows ``v`` ``[K, D]``, from one pass over its Gram matrix.

    :math:`G = VV^\top` is formed once, in upper row blocks (it is symmetric) of at most
    ``_BLOCK_ELEMENTS`` entries, and every requested pairwise metric reads each block:

    * ``cosines``: :math:`\sum_{c\ne c'} |G_{cc'}/(\|v_c\|\|v_{c'}\|) + 1/(K-1)|`
      (equiangularity, ``mean_abs``);
    * ``etf``: :math:`\|G/\|G\|_F - E_K\|_F^2` (ETF error), :math:`\|G\|_F^2 =
      \langle V^\top V, V^\top V\rangle` formed in :math:`D\times D`;
    * ``cdnv``: :math:`\sum_{c<c'} (\sigma_c^2+\sigma_{c'}^2) / (2\|v_c-v_{c'}\|^{2e})`
      with :math:`\|v_c-v_{c'}\|^2 = G_{cc}+G_{c'c'}-2G_{cc'}`, pairs where that cancels
      recomputed from the rows (:func:`_pair_sq_dists`); distances do not depend on how
      ``v`` is centred.

    So :func:`collapse_metrics` costs one :math:`K\times K\times D` product for the class
    means and one for the classifier rows, whatever the number of pairwise metrics.
    """

    def __init__(
        self,
        v: torch.Tensor,
        *,
        cosines: bool = False,
        etf: bool = False,
        cdnv_var: torch.Tensor | None = None,
        exponent: int = 1,
        classes: torch.Tensor | None = None,
    ) -> None:
        k = v.shape[0]
        # every sum is scale-invariant but CDNV's, which scales by scale**(2 - 2·exponent):
        # work on v / scale (exact, a power of two) so that the Gram matrix cannot overflow
        scale = _pow2_scale(v)
        v = v / scale
        if cdnv_var is not None:
            cdnv_var = cdnv_var / scale / scale
        cdnv_rescale = scale ** (2 * exponent - 2)
        sq = v.square().sum(1)
        inv_norm = 1.0 / torch.linalg.vector_norm(v, dim=1) if cosines else None
        gram_norm = 0.0
        if etf:
            gram_norm = math.sqrt(max(float((v.T @ v).square().sum()), 0.0))
            if gram_norm == 0:
                raise ValueError("the Gram matrix is zero")
        self.cosine_sum = 0.0
        self.etf_sq = 0.0
        self.cdnv_sum = 0.0
        self._cdnv_error: str | None = None
        for start, stop in _row_blocks(k):
            g = v[start:stop] @ v[start:].T  # upper row block [r, K − start]
            if cosines and inv_norm is not None:
                c = g * inv_norm[start:stop, None] * inv_norm[None, start:] + 1.0 / (k - 1)
                c.diagonal().zero_()
                self.cosine_sum += _symmetric_sum(c.abs_())
            if etf:
                diff = (g / gram_norm - _etf_block(start, stop, start, k, g)).square_()
                self.etf_sq += _symmetric_sum(diff)
            if cdnv_var is not None and self._cdnv_error is None:
                d2 = _pair_sq_dists(v, sq, start, stop, gram=g)
                try:
                    block = _cdnv_block(d2, cdnv_var, start, stop, exponent, classes)
                except ValueError as err:  # coinciding means: CDNV alone is undefined
                    self._cdnv_error = str(err)
                    continue
                self.cdnv_sum += block / cdnv_rescale

    def cdnv(self) -> float:
        """The CDNV sum; raises the ``ValueError`` of a pair of coinciding class means."""
        if self._cdnv_error is not None:
            raise ValueError(self._cdnv_error)
        return self.cdnv_sum


def _pinv_sym(a: torch.Tensor) -> torch.Tensor:
    r"""Pseudo-inverse of a symmetric PSD matrix by eigh.

    Eigenvalues at or below ``D * eps * λ_max`` are treated as zero (numpy's
    ``matrix_rank`` tolerance); this is what makes the inverse well defined when
    :math:`K-1 < D` (rank-deficient :math:`\Sigma_B`) without any truncated SVD.
    """
    evals, evecs = torch.linalg.eigh(a)
    tol = a.shape[-1] * torch.finfo(a.dtype).eps * evals.abs().max()
    inv = torch.where(evals > tol, 1.0 / evals, torch.zeros_like(evals))
    return (evecs * inv) @ evecs.T


def _pair_sq_dists(
    mu: torch.Tensor,
    sq: torch.Tensor,
    start: int,
    stop: int,
    *,
    gram: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared distances from rows ``start:stop`` of ``mu`` to rows ``start:``, ``[r, K-start]``.

    Uses the Gram form (``gram``: that block of ``mu muᵀ`` if already formed), then recomputes
    by direct differences the pairs where it cancels (distance² below 1e-4 of ‖a‖² + ‖b‖²,
    relative error otherwise ≤ ~1e-12).
    """
    scale = sq[start:stop, None] + sq[None, start:]
    if gram is None:
        gram = mu[start:stop] @ mu[start:].T
    d2 = (scale - 2.0 * gram).clamp(min=0)
    r, c = torch.nonzero(d2 <= 1e-4 * scale, as_tuple=True)
    for i in range(0, r.numel(), 1 << 16):
        rr, cc = r[i : i + (1 << 16)], c[i : i + (1 << 16)]
        d2[rr, cc] = (mu[rr + start] - mu[cc + start]).square().sum(1)
    return d2


def _nuclear_norm(a: torch.Tensor) -> float:
    """Sum of singular values; a wide or tall matrix is first reduced to its QR factor R.

    Same singular values (R = QᵀA), but LAPACK's bidiagonalisation of a D×K matrix is
    slower than a Householder QR followed by the SVD of the square R whenever K > D: ~10×
    at D = 512, K = 10 000, 1.9× at K = 1000, 1.1× at K = 600.
    """
    rows, cols = a.shape
    if cols > rows:
        a = torch.linalg.qr(a.T, mode="r").R
    elif rows > cols:
        a = torch.linalg.qr(a, mode="r").R
    return float(torch.linalg.svdvals(a).sum())


# ---------------------------------------------------------------------------- NC1
def nc1(
    stats: FeatureStats,
    *,
    variant: Literal["papyan", "quotient", "vci"] = "papyan",
    within: Within = "samples",
    global_mean: GlobalMean = "samples",
    divide_by_classes: bool = True,
) -> float:
    r"""NC1: within-class variability relative to between-class separation.

    .. math::

        \mathrm{NC1} = \frac1K \operatorname{Tr}(\Sigma_W \Sigma_B^{+})

    Parameters
    ----------
    stats : FeatureStats
        Class statistics.
    variant : {"papyan", "quotient", "vci"}
        ``"papyan"`` (default, Papyan et al. 2020 [1]_): the formula above, :math:`\Sigma_B^+`
        by an eigh pseudo-inverse (no truncated SVD, so :math:`K-1\ge D` works). The authors'
        Colab notebook inverts :math:`\Sigma_B` with ``scipy.sparse.linalg.svds(k=K-1)``,
        which needs :math:`K-1 < D`; on full-rank cases both agree.
        ``"quotient"`` (Tirer et al. 2023 [3]_): :math:`\operatorname{Tr}\Sigma_W /
        \operatorname{Tr}\Sigma_B`. ``"vci"`` (variability collapse index, Xu & Liu 2023
        [4]_): :math:`1-\operatorname{Tr}((\Sigma_W+\Sigma_B)^{+}\Sigma_B)/\min(D, K-1)`.
    within : {"samples", "balanced"}
        :math:`\Sigma_W` convention (see :meth:`FeatureStats.within_covariance`).
    global_mean : {"samples", "classes"}
        :math:`\mu_G` used in :math:`\Sigma_B`.
    divide_by_classes : bool, default True
        ``False`` drops the :math:`1/K` of ``"papyan"``, reproducing the number printed by the
        Papyan et al. Colab notebook (which computes ``trace(Sw @ inv_Sb)`` without the
        :math:`1/K` of the paper's formula). Ignored by the other variants.

    Returns
    -------
    float
        0 at perfect collapse; ``"vci"`` lies in [0, 1].

    Raises
    ------
    ValueError
        ``"papyan"`` and ``"quotient"`` when all class means coincide (:math:`\Sigma_B = 0`):
        the ratio is 0/0, and the pseudo-inverse would report a dead or unseparated
        representation as perfect collapse (0).
    """
    stats = _check_stats(stats)
    sw = stats.within_covariance(within)
    sb = stats.between_covariance(global_mean)
    k = int(stats.present.sum())
    _min_classes(k, "nc1")
    if variant == "papyan":
        if not bool(sb.any()):
            raise ValueError("nc1: all class means coincide (Σ_B = 0), NC1 is undefined")
        value = float(torch.trace(sw @ _pinv_sym(sb)))
        return value / k if divide_by_classes else value
    if variant == "quotient":
        tb = float(torch.trace(sb))
        if tb == 0:
            raise ValueError("nc1(variant='quotient'): all class means coincide (Tr Σ_B = 0)")
        return float(torch.trace(sw)) / tb
    if variant == "vci":
        return 1.0 - float(torch.trace(_pinv_sym(sw + sb) @ sb)) / min(stats.dim, k - 1)
    raise ValueError(f"variant must be 'papyan', 'quotient' or 'vci', got {variant!r}")


# ---------------------------------------------------------------------------- NC2
def equinorm(
    stats: FeatureStats,
    weight: Any = None,
    *,
    of: Of = "means",
    ddof: int = 1,
    global_mean: GlobalMean = "samples",
) -> float:
    r"""NC2 equinormness: coefficient of variation of the norms.

    .. math:: \operatorname{std}_c \|u_c\| \,/\, \operatorname{mean}_c \|u_c\|

    with :math:`u_c = \mu_c - \mu_G` (``of="means"``) or :math:`u_c = w_c` (``of="weights"``).
    ``ddof=1`` (default) is the unbiased std of Papyan et al. 2020 [1]_; ``ddof=0`` the
    population std.
    """
    v = _vectors(stats, weight, of, global_mean)
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    norms = torch.linalg.vector_norm(v, dim=1)
    return float(norms.std(correction=ddof) / norms.mean())


def equiangularity(
    stats: FeatureStats,
    weight: Any = None,
    *,
    of: Of = "means",
    reduction: Literal["mean_abs", "std"] = "mean_abs",
    global_mean: GlobalMean = "samples",
) -> float:
    r"""NC2 equiangularity: how far the pairwise cosines are from :math:`-1/(K-1)`.

    ``reduction="mean_abs"`` (default, Papyan et al. 2020 [1]_, Fig. 3 "maximal-angle"):

    .. math:: \frac{1}{K(K-1)}\sum_{c\ne c'} \left|\cos(u_c, u_{c'}) + \tfrac{1}{K-1}\right|

    ``reduction="std"`` (Papyan et al. Fig. 3 "equiangularity", the std of the cosines
    as their notebook plots it): the standard deviation (``ddof=1``) of the :math:`K(K-1)`
    off-diagonal cosines. :math:`u_c` as in :func:`equinorm`. Pairs are summed over upper
    row blocks of the cosine matrix, so no :math:`K\times K` matrix is held.
    """
    v = _vectors(stats, weight, of, global_mean)
    if reduction not in ("mean_abs", "std"):
        raise ValueError(f"reduction must be 'mean_abs' or 'std', got {reduction!r}")
    k = v.shape[0]
    u = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
    # Off-diagonal cosines shifted by the ETF value, summed over row blocks (no K×K matrix):
    # the shift keeps the sums small near an ETF, so the std needs no cancelling subtraction.
    n = k * (k - 1)

    def shifted_blocks() -> Iterator[torch.Tensor]:
        # cosines + 1/(K−1), upper row blocks only (the matrix is symmetric), diagonal zeroed
        for start, stop in _row_blocks(k):
            block = u[start:stop] @ u[start:].T + 1.0 / (k - 1)
            block.diagonal().zero_()
            yield block

    if reduction == "mean_abs":
        return _GramPass(v, cosines=True).cosine_sum / n
    if n < 2:
        return 0.0
    # two passes (mean, then squared deviations): a one-pass Σc² − (Σc)²/n cancels when the
    # cosines cluster away from −1/(K−1), e.g. raw classifier rows sharing a component
    mean = sum(_symmetric_sum(b) for b in shifted_blocks()) / n
    sq = 0.0
    for b in shifted_blocks():
        b.sub_(mean)
        b.diagonal().zero_()
        sq += _symmetric_sum(b.square_())
    return math.sqrt(sq / (n - 1))


def etf_error(
    stats: FeatureStats,
    weight: Any = None,
    *,
    of: Of = "means",
    global_mean: GlobalMean = "samples",
) -> float:
    r"""Distance of the normalised Gram matrix to the simplex ETF (Zhu et al. 2021 [2]_).

    .. math::

        \left\| \frac{G}{\|G\|_F} - \frac{I - \tfrac1K 11^\top}{\sqrt{K-1}} \right\|_F,
        \qquad G = M_c M_c^\top \text{ (means) or } W W^\top \text{ (weights)}

    0 exactly when the rows form a simplex ETF up to a common scale.
    """
    v = _vectors(stats, weight, of, global_mean)
    return math.sqrt(max(_GramPass(v, etf=True).etf_sq, 0.0))


# ---------------------------------------------------------------------------- NC3
def self_duality(
    stats: FeatureStats,
    weight: Any,
    *,
    variant: Literal["papyan", "wh", "cosine"] = "papyan",
    squared: bool = True,
    global_mean: GlobalMean = "samples",
) -> float:
    r"""NC3 self-duality: alignment of classifier rows with the centred class means.

    ``variant="papyan"`` (default, Papyan et al. 2020 [1]_):
    :math:`\| W/\|W\|_F - M_c/\|M_c\|_F \|_F^2` (``squared=False`` drops the square).

    ``variant="wh"`` (Zhu et al. 2021 [2]_ ":math:`\mathcal{NC}_3`", the ``compute_W_H_relation``
    metric of their public code):
    :math:`\| WM_c^\top/\|WM_c^\top\|_F - (I - \tfrac1K 11^\top)/\sqrt{K-1} \|_F`.

    ``variant="cosine"``: :math:`\frac1K\sum_c 1 - \cos(w_c, \mu_c - \mu_G)`.
    """
    stats = _check_stats(stats)
    w = _vectors(stats, weight, "weights", global_mean)
    m = _vectors(stats, None, "means", global_mean)
    if variant == "papyan":
        d = torch.linalg.matrix_norm(
            w / torch.linalg.matrix_norm(w) - m / torch.linalg.matrix_norm(m)
        )
        return float(d.square() if squared else d)
    if variant == "wh":
        return _distance_to_etf_gram(w, m)
    if variant == "cosine":
        cos = torch.nn.functional.cosine_similarity(w, m, dim=1, eps=0.0)
        return float((1.0 - cos).mean())
    raise ValueError(f"variant must be 'papyan', 'wh' or 'cosine', got {variant!r}")


# ---------------------------------------------------------------------------- CDNV
def cdnv(stats: FeatureStats, *, exponent: Literal[1, 2] = 1, ddof: int = 0) -> float:
    r"""Class-distance normalised variance (Galanti et al. 2022 [5]_).

    .. math::

        \mathrm{CDNV} = \binom{K}{2}^{-1} \sum_{c<c'}
        \frac{\sigma_c^2 + \sigma_{c'}^2}{2\,\|\mu_c - \mu_{c'}\|^{2\cdot\mathrm{exponent}}}

    ``exponent=1`` (default) is the paper's definition (squared distance);
    ``exponent=2`` divides by :math:`\|\cdot\|^4`, a form found in some public
    reimplementations (it is not scale invariant: it scales as :math:`1/\text{scale}^2`).
    :math:`\sigma_c^2` uses ``ddof``. Pair distances are computed in blocks of rows from the
    centred means, so :math:`K = 32768` needs no :math:`K\times K` matrix.

    Raises
    ------
    ValueError
        If two class means coincide (the ratio would be infinite).
    """
    stats = _check_stats(stats)
    if exponent not in (1, 2):
        raise ValueError(f"exponent must be 1 or 2, got {exponent!r}")
    idx = stats.present_classes()
    k = idx.numel()
    _min_classes(k, "cdnv")
    mu = stats.means[idx]
    mu = mu - mu.mean(0)
    var = stats.class_variance(ddof)[idx]
    total = _GramPass(mu, cdnv_var=var, exponent=exponent, classes=idx).cdnv()
    return total / (k * (k - 1) / 2)


def _cdnv_block(
    d2: torch.Tensor,
    var: torch.Tensor,
    start: int,
    stop: int,
    exponent: int,
    classes: torch.Tensor | None,
) -> float:
    """CDNV sum over the pairs ``c < c′`` of the upper row block ``d2`` ``[r, K-start]``."""
    # columns from `start`; the lower triangle of the leading square is masked
    lower = torch.ones(stop - start, stop - start, dtype=torch.bool, device=d2.device).tril()
    d2[:, : stop - start].masked_fill_(lower, math.inf)
    if bool((d2 == 0).any()):
        r, c = torch.nonzero(d2 == 0, as_tuple=True)
        i, j = int(r[0]) + start, int(c[0]) + start
        pair = (int(classes[i]), int(classes[j])) if classes is not None else (i, j)
        raise ValueError(f"cdnv: the means of classes {pair} coincide")
    num = var[start:stop, None] + var[None, start:]
    return float((num / d2.pow_(exponent)).sum()) / 2.0


# ---------------------------------------------------------------------------- distances to frames
def etf_distance(stats: FeatureStats, *, global_mean: GlobalMean = "samples") -> float:
    r"""Squared distance of the normalised centred means to the nearest rotated simplex ETF.

    .. math::

        \min_{P:\,\text{partial isometry}} \|Y - P E\|_F^2 = 2 - 2\,\|Y E\|_*,
        \qquad Y = M_c^\top/\|M_c\|_F,\; E = (I - \tfrac1K 11^\top)/\sqrt{K-1}

    (both terms have unit norm; the maximum of :math:`\operatorname{tr}(P^\top Y E)` over
    partial isometries is the nuclear norm, von Neumann's trace inequality). One SVD, no
    iterative optimiser; works for any :math:`D` and :math:`K`. Lies in [0, 2]; 0 exactly for a
    simplex ETF of any scale and orientation.
    """
    stats = _check_stats(stats)
    m = _vectors(stats, None, "means", global_mean)
    y = m.T / torch.linalg.matrix_norm(m)
    # Y E = Y (I − 11ᵀ/K)/√(K−1): subtract the row means, no K×K matrix.
    ye = (y - y.mean(dim=1, keepdim=True)) / math.sqrt(m.shape[0] - 1)
    return max(0.0, 2.0 - 2.0 * _nuclear_norm(ye))


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(s)
    tol = s.shape[-1] * torch.finfo(s.dtype).eps * evals.abs().max()
    if bool((evals < -max(float(tol), 1e-10 * float(evals.abs().max()))).any()):
        raise ValueError(
            f"similarity must be positive semi-definite; smallest eigenvalue {float(evals[0]):.3e}"
        )
    # eigenvalues at round-off level are the exact zeros of a singular S (e.g. a HAFrame on
    # its PSD boundary): dropping them avoids √(1e-16) ≈ 1e-8 errors in S^{1/2}
    kept = torch.where(evals > tol, evals, torch.zeros_like(evals))
    return (evecs * kept.sqrt()) @ evecs.T


def frame_distance(
    stats: FeatureStats,
    similarity: Any,
    *,
    centered: bool = False,
    global_mean: GlobalMean = "samples",
) -> float:
    r"""Distance of the normalised class means to the nearest rotation of a target frame.

    Same closed form as :func:`etf_distance` with any target Gram matrix :math:`S` (e.g. the
    HAFrame similarity, Liang & Davis, ICCV 2023):

    .. math::

        2 - 2\,\|Y E\|_*, \qquad E = S^{1/2}/\|S^{1/2}\|_F,\; Y = M^\top/\|M\|_F

    By default :math:`M` holds the raw (uncentred) class means, because HAFrame rows do not sum
    to zero; ``centered=True`` uses :math:`M_c` (with ``global_mean``), which with the ETF Gram
    reproduces :func:`etf_distance`.

    Parameters
    ----------
    similarity : Tensor ``[K, K]``
        Symmetric positive semi-definite target Gram over all ``num_classes`` classes; rows and
        columns of absent classes are dropped.
    """
    stats = _check_stats(stats)
    k_all = stats.num_classes
    s = as_tensor(similarity, "similarity")
    if not s.is_floating_point():
        raise TypeError(f"similarity must have a floating-point dtype, got {s.dtype}")
    if tuple(s.shape) != (k_all, k_all):
        raise ValueError(f"similarity must have shape [{k_all}, {k_all}], got {list(s.shape)}")
    check_finite(s, "similarity")
    tol = 100 * torch.finfo(s.dtype).eps * float(s.detach().abs().max())
    s = s.detach().to(device=stats.device, dtype=torch.float64)
    asym = float((s - s.T).abs().max())
    if asym > tol:
        raise ValueError(f"similarity must be symmetric (max |S - Sᵀ| = {asym:.3e})")
    s = (s + s.T) / 2
    idx = stats.present_classes()
    s = s[idx][:, idx]
    _min_classes(idx.numel(), "frame_distance")
    m = stats.centered_means(global_mean) if centered else stats.means[idx]
    norm = torch.linalg.matrix_norm(m)
    if float(norm) == 0:
        raise ValueError("frame_distance: all class means are zero")
    root = _psd_sqrt(s)
    e = root / torch.linalg.matrix_norm(root)
    return max(0.0, 2.0 - 2.0 * _nuclear_norm((m.T / norm) @ e))


# ---------------------------------------------------------------------------- NC4
_NCC_STATE_VERSION = 1


class NCCMismatch:
    r"""Streaming NC4: disagreement between the classifier and the nearest class centre.

    .. math::

        \frac1N \sum_i \mathbb 1\left[\arg\max_c (w_c^\top x_i + b_c) \ne
        \arg\min_c \|x_i - \mu_c\|\right]

    The class means come from the *training* split by default (Papyan et al. 2020 [1]_): build
    this accumulator from the training ``FeatureStats`` and feed it the features of the split
    being evaluated, batch by batch. Both argmax and argmin run over the classes present in the
    means' statistics (classes without training samples have no centre). Ties resolve to the
    lowest class index. The running state is two counts, sum-reducible: :meth:`merge`,
    :meth:`all_reduce`; :meth:`state_dict` also carries what rebuilds the accumulator (centres,
    present classes, classifier rows and bias, or the ``decisions`` mode).

    Parameters
    ----------
    means : FeatureStats or Tensor ``[K, D]``
        Source of the class centres :math:`\mu_c`.
    weight : Tensor ``[K, D]``, optional
        The classifier. May be ``None`` when every :meth:`update` passes the network's own
        ``decisions`` instead (a head that is not linear, e.g. GCR's subspace logits): the
        decision is then :math:`\arg\max` of the model's logits over all ``K`` classes, and
        the nearest centre is taken over the present classes, in the same class indices.
    bias : Tensor ``[K]``, optional
    """

    def __init__(
        self, means: FeatureStats | torch.Tensor, weight: Any = None, bias: Any = None
    ) -> None:
        if isinstance(means, FeatureStats):
            stats = means
        else:
            mu = check_features(means, None, "means")
            stats = FeatureStats(mu.shape[0], mu.shape[1], device=mu.device)
            stats.update(mu, torch.arange(mu.shape[0], device=mu.device))
        idx = stats.present_classes()
        _min_classes(idx.numel(), "ncc_mismatch")
        self.num_classes = stats.num_classes
        self.dim = stats.dim
        self.device = stats.device
        self._present = idx
        self._centres = stats.means[idx]
        self._sq = self._centres.square().sum(1)
        self._weight = _weight_rows(stats, weight) if weight is not None else None
        self._bias = (
            _classifier_rows(stats, bias, "bias", (stats.num_classes,))
            if bias is not None
            else torch.zeros(idx.numel(), dtype=torch.float64, device=self.device)
        )
        self.reset()

    def reset(self) -> None:
        """Forget all samples (counts back to zero; centres and classifier kept)."""
        self.mismatches = 0
        self.total = 0

    @torch.no_grad()
    def update(self, features: Any, decisions: Any = None) -> None:
        """Add a batch of features ``[B, D]`` (any float dtype/device; moved to the state's).

        ``decisions`` (int ``[B]``, class indices in ``0..K-1``): the network's own decisions,
        used instead of the classifier's argmax.
        """
        x = check_features(features, self.dim).to(device=self.device, dtype=torch.float64)
        # ‖x − μ‖² up to the per-row constant ‖x‖²: argmin of ‖μ‖² − 2 xᵀμ
        ncc = torch.argmin(self._sq[None, :] - 2.0 * x @ self._centres.T, dim=1)
        if decisions is not None:
            pred = torch.as_tensor(decisions, device=self.device).reshape(-1)
            if pred.shape[0] != x.shape[0]:
                raise ValueError(
                    f"decisions has {pred.shape[0]} entries for {x.shape[0]} feature rows"
                )
            ncc = self._present[ncc]  # back to class indices
        elif self._weight is None:
            raise ValueError("NCCMismatch without a classifier weight needs decisions=")
        else:
            pred = torch.argmax(torch.addmm(self._bias, x, self._weight.T), dim=1)
        self.mismatches += int((pred != ncc).sum())
        self.total += x.shape[0]

    def merge(self, other: NCCMismatch) -> NCCMismatch:
        """Add another accumulator's counts (same centres and classifier); returns ``self``."""
        if not isinstance(other, NCCMismatch):
            raise TypeError(f"can only merge an NCCMismatch, got {type(other).__name__}")
        same = (
            other.num_classes == self.num_classes
            and torch.equal(other._present.to(self.device), self._present)
            and torch.equal(other._centres.to(self.device), self._centres)
            and (other._weight is None) == (self._weight is None)
            and (
                self._weight is None
                or other._weight is None
                or torch.equal(other._weight.to(self.device), self._weight)
            )
            and torch.equal(other._bias.to(self.device), self._bias)
        )
        if not same:
            raise ValueError(
                "cannot merge NCCMismatch accumulators with different centres or classifier"
            )
        self.mismatches += other.mismatches
        self.total += other.total
        return self

    @torch.no_grad()
    def all_reduce(self, group: Any = None) -> NCCMismatch:
        """Sum the counts of every rank of ``torch.distributed``; returns ``self``.

        Every rank must hold the same centres and classifier (not checked).

        Parameters
        ----------
        group : ProcessGroup, optional
            Process group (default: the world).
        """
        dist = require_distributed("NCCMismatch")
        counts = torch.tensor([self.mismatches, self.total], dtype=torch.int64, device=self.device)
        dist.all_reduce(counts, group=group)
        self.mismatches, self.total = int(counts[0]), int(counts[1])
        return self

    def state_dict(self) -> dict[str, Any]:
        """State as CPU tensors and plain values, loadable with ``torch.load(weights_only=True)``.

        Keys: ``version``, ``num_classes``, ``dim``, ``mode`` (``"classifier"`` or
        ``"decisions"``), ``present`` int64 ``[P]``, ``centres`` float64 ``[P, D]``, ``bias``
        float64 ``[P]``, ``weight`` float64 ``[P, D]`` (mode ``"classifier"`` only),
        ``mismatches`` and ``total`` (ints).
        """
        state: dict[str, Any] = {
            "version": _NCC_STATE_VERSION,
            "num_classes": self.num_classes,
            "dim": self.dim,
            "mode": "decisions" if self._weight is None else "classifier",
            "present": self._present.detach().cpu().clone(),
            "centres": self._centres.detach().cpu().clone(),
            "bias": self._bias.detach().cpu().clone(),
            "mismatches": self.mismatches,
            "total": self.total,
        }
        if self._weight is not None:
            state["weight"] = self._weight.detach().cpu().clone()
        return state

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], *, device: torch.device | str | None = None
    ) -> NCCMismatch:
        """Rebuild from :meth:`state_dict`, checking version, keys and shapes."""
        name = "NCCMismatch"
        keys = ["num_classes", "dim", "mode", "present", "centres", "bias", "mismatches", "total"]
        read_state(name, state, _NCC_STATE_VERSION, keys)
        mode = state["mode"]
        if mode not in ("classifier", "decisions"):
            raise ValueError(
                f"{name} state 'mode': expected 'classifier' or 'decisions', got {mode!r}"
            )
        k, d = state["num_classes"], state["dim"]
        for key in ("num_classes", "dim", "mismatches", "total"):
            val = state[key]
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                raise ValueError(f"{name} state {key!r}: expected a non-negative int, got {val!r}")
        present = state["present"]
        p = int(present.shape[0]) if isinstance(present, torch.Tensor) and present.ndim == 1 else -1
        shapes = {"present": (p,), "centres": (p, d), "bias": (p,)}
        if mode == "classifier":
            keys.append("weight")
            shapes["weight"] = (p, d)
        read_state(name, state, _NCC_STATE_VERSION, keys, shapes)
        if p < 2 or bool(((present < 0) | (present >= k)).any()):
            raise ValueError(f"{name} state 'present': expected >= 2 class indices in [0, {k})")
        if state["mismatches"] > state["total"]:
            raise ValueError(f"{name} state 'mismatches': more than 'total' = {state['total']}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        f64 = torch.float64
        out = cls.__new__(cls)
        out.num_classes, out.dim, out.device = k, d, dev
        out._present = present.to(device=dev, dtype=torch.int64).clone()
        out._centres = state["centres"].to(device=dev, dtype=f64).clone()
        out._sq = out._centres.square().sum(1)
        out._weight = (
            state["weight"].to(device=dev, dtype=f64).clone() if mode == "classifier" else None
        )
        out._bias = state["bias"].to(device=dev, dtype=f64).clone()
        out.mismatches, out.total = state["mismatches"], state["total"]
        return out

    def compute(self) -> float:
        """Fraction of samples where the classifier and nearest-centre decisions differ."""
        if self.total == 0:
            raise ValueError("NCCMismatch has seen no samples: call update() first")
        return self.mismatches / self.total


def _batches(features: Any) -> Iterable[Any]:
    if isinstance(features, (torch.Tensor,)) or hasattr(features, "__array__"):
        return [features]
    return features


def ncc_mismatch(
    features: Any,
    weight: Any,
    bias: Any = None,
    *,
    train_stats: FeatureStats | None = None,
    labels: Any = None,
    means_from: Literal["train", "same"] = "train",
) -> float:
    r"""NC4 in one call: see :class:`NCCMismatch` for the formula.

    Parameters
    ----------
    features : Tensor ``[N, D]`` or iterable of Tensors ``[B, D]``
        Features of the split being evaluated.
    weight, bias : classifier ``[K, D]`` and ``[K]``.
    train_stats : FeatureStats
        Required for ``means_from="train"`` (default, Papyan et al. 2020): centres from the
        training split.
    labels : Tensor ``[N]``
        Required for ``means_from="same"``: centres are the class means of ``features`` itself
        (a second pass over the same data). ``features`` must then be one tensor.
    """
    if means_from == "train":
        if train_stats is None:
            raise ValueError(
                "means_from='train' needs train_stats (FeatureStats of the train split)"
            )
        acc = NCCMismatch(_check_stats(train_stats), weight, bias)
        for batch in _batches(features):
            acc.update(batch)
        return acc.compute()
    if means_from == "same":
        if labels is None:
            raise ValueError("means_from='same' needs the labels of features")
        x = check_features(features, None)
        y = check_labels(labels, x.shape[0], as_tensor(weight, "weight").shape[0])
        stats = FeatureStats(int(as_tensor(weight, "weight").shape[0]), x.shape[1], device=x.device)
        stats.update(x, y)
        acc = NCCMismatch(stats, weight, bias)
        acc.update(x)
        return acc.compute()
    raise ValueError(f"means_from must be 'train' or 'same', got {means_from!r}")


# ---------------------------------------------------------------------------- all at once
def collapse_metrics(
    stats: FeatureStats,
    weight: Any = None,
    bias: Any = None,
    *,
    features: Any = None,
    similarity: Any = None,
    omitted: dict[str, str] | None = None,
) -> dict[str, float]:
    """Every neural-collapse metric with its default convention, under stable keys.

    Keys (``docs/conventions.md``): ``nc1``, ``equinorm_means``, ``equiangularity_means``,
    ``etf_error_means``, ``etf_distance``, ``cdnv``, ``intra_class_variability``; with
    ``weight``: ``equinorm_weights``, ``equiangularity_weights``, ``etf_error_weights``,
    ``self_duality``; with ``weight`` and ``features`` (an evaluation split, ``stats`` being the
    training split): ``ncc_mismatch``; with ``similarity``: ``frame_distance``.

    ``omitted``: if given, a metric that is undefined for these statistics (CDNV when two
    class means coincide, NC1's quotient form when all do, any metric of all-zero means — the
    regime of a collapsed or dead representation) is left out and ``omitted[key]`` holds the
    reason, instead of raising; the others are still computed (the pipeline's policy:
    omitted and listed). Bad arguments (shapes, a missing classifier) always raise.

    Returns
    -------
    dict[str, float]
        In the order of the keys above.
    """
    stats = _check_stats(stats)
    if features is not None and weight is None:
        raise ValueError("ncc_mismatch needs the classifier: pass weight (and bias)")
    # bad arguments raise whatever ``omitted`` says: only undefined metrics are omitted
    if weight is not None:
        _weight_rows(stats, weight)
    if bias is not None:
        _classifier_rows(stats, bias, "bias", (stats.num_classes,))
    if similarity is not None:
        shape = tuple(as_tensor(similarity, "similarity").shape)
        if shape != (stats.num_classes, stats.num_classes):
            k_all = stats.num_classes
            raise ValueError(f"similarity must have shape [{k_all}, {k_all}], got {list(shape)}")
    idx = stats.present_classes()  # emit the empty-class warning once, here
    k = idx.numel()
    pairs = k * (k - 1)
    out: dict[str, float] = {}

    def put(keys: tuple[str, ...], fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(...)``, stored as ``out[keys[0]]`` when a number (a Gram pass is returned).

        An undefined metric raises, or with ``omitted`` is listed under every key of ``keys``.
        """
        try:
            value = fn(*args, **kwargs)
        except ValueError as err:
            if omitted is None:
                raise
            for key in keys:
                omitted[key] = str(err).splitlines()[0]
            return None
        if isinstance(value, float):
            out[keys[0]] = value
        return value

    put(("nc1",), nc1, stats)
    put(("equinorm_means",), equinorm, stats)
    # The pairwise metrics of the means (equiangularity, ETF error, CDNV) read one pass over
    # the Gram matrix of the centred means; CDNV's distances do not depend on the centring.
    means = put(
        ("equiangularity_means", "etf_error_means", "cdnv"),
        lambda: _GramPass(
            _vectors(stats, None, "means", "samples", scaled=False),  # CDNV: the raw scale
            cosines=True,
            etf=True,
            cdnv_var=stats.class_variance(0)[idx],
            classes=idx,
        ),
    )
    if means is not None:
        out["equiangularity_means"] = means.cosine_sum / pairs
        out["etf_error_means"] = math.sqrt(max(means.etf_sq, 0.0))
        put(("cdnv",), lambda: means.cdnv() / (pairs / 2))
    put(("etf_distance",), etf_distance, stats)
    put(("intra_class_variability",), intra_class_variability, stats)
    if weight is not None:
        rows = put(
            ("equiangularity_weights", "etf_error_weights"),
            lambda: _GramPass(
                _vectors(stats, weight, "weights", "samples"), cosines=True, etf=True
            ),
        )
        put(("equinorm_weights",), equinorm, stats, weight, of="weights")
        if rows is not None:
            out["equiangularity_weights"] = rows.cosine_sum / pairs
            out["etf_error_weights"] = math.sqrt(max(rows.etf_sq, 0.0))
        put(("self_duality",), self_duality, stats, weight)
        if features is not None:  # its argument errors must raise: not through put
            out["ncc_mismatch"] = ncc_mismatch(features, weight, bias, train_stats=stats)
    if similarity is not None:
        put(("frame_distance",), frame_distance, stats, similarity)
    return {key: out[key] for key in _ORDER if key in out}
