r"""Spectra of the class covariances and the rank measures built on them.

Everything here works from a :class:`~analysis.stats.FeatureStats` (or from a covariance
matrix, or from its eigenvalues); no :math:`N\times D` feature matrix is ever stored. All
computation is in float64; inputs may have any floating dtype and live on any device.

* :func:`covariance_spectrum` — descending eigenvalues of a symmetric ``[D, D]`` matrix.
* :func:`eigenvalues` — descending eigenvalues of :math:`\Sigma_W`, :math:`\Sigma_B` or
  :math:`\Sigma_T` of a ``FeatureStats``, with its convention switches.
* :func:`effective_rank` — :math:`\exp H(p)`, :math:`p = \lambda/\sum\lambda`
  (Roy & Vetterli 2007 [1]_).
* :func:`rankme` — RankMe (Garrido et al. 2023 [2]_): the effective rank of the *singular
  values* of the (uncentred) embedding matrix.
* :func:`stable_rank` — :math:`\sum\lambda / \lambda_{\max}` (Rudelson & Vershynin 2007 [4]_).
* :func:`participation_ratio` — :math:`(\sum\lambda)^2 / \sum\lambda^2` (Gao et al. 2017 [5]_).
* :func:`alpha_req` — α-ReQ (Agrawal et al. 2022 [3]_): power-law decay exponent of the
  spectrum by least squares in log–log coordinates, with :math:`R^2`.
* :func:`spectrum_metrics` — all of the above under stable keys.

Conventions (``docs/conventions.md``, section "Spectra")
--------------------------------------------------------
Eigenvalues are returned in descending order as float64 tensors on the input's device.
They are returned *as computed*: the eigenvalues of a positive semi-definite matrix that are
exactly zero come out as round-off of either sign (about :math:`D\,\varepsilon\,\lambda_{\max}`).
The rank functions clamp negative values at 0; they do not test positive semi-definiteness.

References
----------
.. [1] O. Roy, M. Vetterli. The effective rank: a measure of effective dimensionality.
   EUSIPCO 2007.
.. [2] Q. Garrido, R. Balestriero, L. Najman, Y. LeCun. RankMe: assessing the downstream
   performance of pretrained self-supervised representations by their rank. ICML 2023.
.. [3] K. K. Agrawal, A. K. Mondal, A. Ghosh, B. A. Richards. α-ReQ: assessing representation
   quality in self-supervised learning by measuring eigenspectrum decay. NeurIPS 2022.
.. [4] M. Rudelson, R. Vershynin. Sampling from large matrices: an approach through geometric
   functional analysis. Journal of the ACM 54(4), 2007.
.. [5] P. Gao, E. Trautmann, B. Yu, G. Santhanam, S. Ryu, K. Shenoy, S. Ganguli. A theory of
   multineuronal dimensionality, dynamics and measurement. bioRxiv 214262, 2017.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from analysis._checks import as_tensor, check_finite
from analysis.stats import FeatureStats, GlobalMean, Within

__all__ = [
    "alpha_req",
    "covariance_spectrum",
    "effective_rank",
    "eigenvalues",
    "participation_ratio",
    "rankme",
    "spectrum_metrics",
    "stable_rank",
]

Which = Literal["within", "between", "total"]
RankMeInput = Literal["singular_values", "eigenvalues"]

_SYMMETRY_FACTOR = 100  # asymmetry tolerance: 100 · eps(dtype) · max|A|


# ---------------------------------------------------------------------------- helpers
def _check_stats(stats: Any) -> FeatureStats:
    if not isinstance(stats, FeatureStats):
        raise TypeError(f"expected a FeatureStats, got {type(stats).__name__}")
    return stats


def _spectrum(values: Any, name: str = "eigenvalues") -> torch.Tensor:
    """Validate a 1-D, non-empty, finite floating vector; return it as float64 (same device)."""
    t = as_tensor(values, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    t = t.detach()
    check_finite(t, name)
    return t.to(torch.float64)


def _nonnegative(lam: torch.Tensor, what: str) -> torch.Tensor:
    """Clamp round-off negatives at 0; raise if nothing positive is left."""
    lam = lam.clamp(min=0.0)
    if not bool((lam > 0).any()):
        raise ValueError(f"{what} is undefined for an all-zero spectrum (no positive eigenvalue)")
    return lam


def _check_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return float(eps)


def _entropy_rank(lam: torch.Tensor, eps: float) -> float:
    r""":math:`\exp(-\sum_k p_k \log p_k)`, :math:`p_k = \lambda_k/\sum\lambda + \varepsilon`."""
    p = lam / lam.sum()
    if eps:
        p = p + eps
    return math.exp(-float(torch.xlogy(p, p).sum()))  # xlogy(0, 0) = 0


# ---------------------------------------------------------------------------- spectra
@torch.no_grad()
def covariance_spectrum(cov: Any) -> torch.Tensor:
    r"""Eigenvalues of a symmetric matrix, in descending order.

    .. math:: \lambda_1 \ge \lambda_2 \ge \dots \ge \lambda_D, \qquad A v_i = \lambda_i v_i

    Parameters
    ----------
    cov : Tensor or ndarray ``[D, D]``
        Symmetric matrix (typically a covariance), any floating dtype (float16/bfloat16 are
        upcast), any device.

    Returns
    -------
    Tensor ``[D]``
        float64, on ``cov``'s device, descending. Computed by ``torch.linalg.eigvalsh`` of
        :math:`(A + A^\top)/2` in float64. Eigenvalues are returned as computed: the zero
        eigenvalues of a singular positive semi-definite matrix appear as round-off of either
        sign (magnitude about :math:`D\,\varepsilon_{64}\,\lambda_{\max}`, or the round-off of
        ``cov``'s own dtype if it was formed in lower precision). The rank functions of this
        module clamp them at 0.

    Raises
    ------
    TypeError
        Not a tensor/array, or not a floating-point dtype.
    ValueError
        Not a square 2-D matrix, empty, NaN/Inf entries, or asymmetric: :math:`\max|A - A^\top|`
        above :math:`100\,\varepsilon_{\mathrm{dtype}} \max|A|` (``eps`` of ``cov``'s dtype).
    """
    a = as_tensor(cov, "cov")
    if not a.is_floating_point():
        raise TypeError(f"cov must have a floating-point dtype, got {a.dtype}")
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"cov must be a square [D, D] matrix, got shape {tuple(a.shape)}")
    if a.shape[0] == 0:
        raise ValueError("cov is empty (shape (0, 0))")
    a = a.detach()
    check_finite(a, "cov")
    tol = _SYMMETRY_FACTOR * torch.finfo(a.dtype).eps
    a = a.to(torch.float64)
    scale = float(a.abs().max())
    asym = float((a - a.T).abs().max())
    if asym > tol * scale:
        raise ValueError(
            f"cov must be symmetric: max |A - Aᵀ| = {asym:.3e} exceeds "
            f"{_SYMMETRY_FACTOR}·eps·max|A| = {tol * scale:.3e}"
        )
    return torch.linalg.eigvalsh((a + a.T) / 2).flip(0)


def eigenvalues(
    stats: FeatureStats,
    which: Which,
    *,
    within: Within = "samples",
    global_mean: GlobalMean = "samples",
) -> torch.Tensor:
    r"""Descending eigenvalues of :math:`\Sigma_W`, :math:`\Sigma_B` or :math:`\Sigma_T`.

    .. math::

        \Sigma_W = \tfrac1N \sum_i (x_i-\mu_{y_i})(x_i-\mu_{y_i})^\top,\quad
        \Sigma_B = \tfrac1K \sum_c (\mu_c-\mu_G)(\mu_c-\mu_G)^\top,\quad
        \Sigma_T = \tfrac1N \sum_i (x_i-\mu_G)(x_i-\mu_G)^\top

    Parameters
    ----------
    stats : FeatureStats
        Class statistics (float64 state).
    which : {"within", "between", "total"}
        Which covariance.
    within : {"samples", "balanced"}
        :math:`\Sigma_W` convention (see :meth:`FeatureStats.within_covariance`); used by
        ``which="within"`` only.
    global_mean : {"samples", "classes"}
        :math:`\mu_G` convention; used by ``which="between"`` and ``"total"`` only.

    Returns
    -------
    Tensor ``[D]``
        float64 on ``stats.device``, descending, as computed by :func:`covariance_spectrum`
        (:math:`\Sigma_B` has rank at most :math:`K-1`; its other eigenvalues are round-off).
    """
    stats = _check_stats(stats)
    if which == "within":
        cov = stats.within_covariance(within)
    elif which == "between":
        cov = stats.between_covariance(global_mean)
    elif which == "total":
        cov = stats.total_covariance(global_mean)
    else:
        raise ValueError(f"which must be 'within', 'between' or 'total', got {which!r}")
    return covariance_spectrum(cov)


# ---------------------------------------------------------------------------- rank measures
def effective_rank(eigenvalues: Any, *, eps: float = 0.0) -> float:
    r"""Effective rank (Roy & Vetterli 2007 [1]_): exponential of the spectral entropy.

    .. math::

        \operatorname{erank}(\lambda) = \exp\Big(-\sum_k p_k \log p_k\Big), \qquad
        p_k = \frac{\max(\lambda_k, 0)}{\sum_j \max(\lambda_j, 0)}, \quad 0 \log 0 = 0

    Lies in :math:`[1, r]`, :math:`r` the number of positive entries, with :math:`r` exactly
    for a flat spectrum of rank :math:`r`; invariant to scale and order.

    Parameters
    ----------
    eigenvalues : Tensor or ndarray ``[n]``
        Non-negative spectrum (eigenvalues or singular values), any floating dtype and device.
        Negative round-off is clamped at 0 (not checked: an indefinite input is clamped, not
        rejected).
    eps : float, default 0
        Added to every :math:`p_k` before the entropy, as in the RankMe paper
        (:math:`\varepsilon = 10^{-7}` there). The default is the exact definition.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        All entries :math:`\le 0`; empty, non-1-D, NaN/Inf input; negative ``eps``.
    """
    eps = _check_eps(eps)
    lam = _nonnegative(_spectrum(eigenvalues), "effective_rank")
    return _entropy_rank(lam, eps)


@torch.no_grad()
def rankme(
    stats: FeatureStats,
    *,
    centered: bool = False,
    input: RankMeInput = "singular_values",
    eps: float = 0.0,
) -> float:
    r"""RankMe (Garrido et al. 2023 [2]_): effective rank of the embedding matrix's singular values.

    .. math::

        \operatorname{RankMe}(X) = \exp\Big(-\sum_{k=1}^{\min(N, D)} p_k \log p_k\Big),
        \qquad p_k = \frac{\sigma_k(X)}{\sum_j \sigma_j(X)}

    with :math:`X` ``[N, D]`` the embeddings *as given* (uncentred). :math:`X` is not stored:
    :math:`\sigma_k(X) = \sqrt{N \lambda_k}` with :math:`\lambda_k` the eigenvalues of the
    second-moment matrix

    .. math:: \tfrac1N X^\top X = \tfrac1N \sum_i x_i x_i^\top = \Sigma_T + \mu_G \mu_G^\top ,

    and the factor :math:`\sqrt N` cancels in :math:`p`. ``centered=True`` uses
    :math:`\Sigma_T` instead, i.e. the singular values of :math:`X - 1\mu_G^\top`.

    **Singular values, not eigenvalues.** RankMe feeds the singular values :math:`\sigma_k`
    into the entropy, so :math:`p_k \propto \sqrt{\lambda_k}`. Some implementations feed the
    covariance eigenvalues :math:`\lambda_k = \sigma_k^2/N` instead, i.e.
    :func:`effective_rank` of the covariance spectrum; ``input="eigenvalues"`` reproduces that
    form. It is never larger (the entropy of :math:`p^\beta/\sum p^\beta` decreases in
    :math:`\beta`) and equal only for a flat spectrum, so the two are not interchangeable.

    **No ε by default.** The paper writes :math:`p_k = \sigma_k/\|\sigma\|_1 + \varepsilon` with
    :math:`\varepsilon = 10^{-7}`; geomtools computes the exact value (``eps=0``).
    ``eps=1e-7`` reproduces the paper's formula, summed over the top :math:`\min(N, D)` values
    as there.

    Parameters
    ----------
    stats : FeatureStats
        Statistics of the embeddings (labels play no role here).
    centered : bool, default False
        Use :math:`\Sigma_T` (centred embeddings) instead of the raw second moment.
    input : {"singular_values", "eigenvalues"}
        What the entropy is taken of (see above).
    eps : float, default 0
        The paper's :math:`\varepsilon` added to each :math:`p_k`.

    Returns
    -------
    float
        In :math:`[1, \min(N, D)]` for ``eps=0``.

    Notes
    -----
    Eigenvalues at or below :math:`D\,\varepsilon_{64}\,\lambda_{\max}` are round-off of exact
    zeros (rank-deficient :math:`X`, or :math:`N < D`) and are set to 0 before the square root:
    :math:`\sqrt{\cdot}` would turn a :math:`10^{-16}` round-off into a :math:`10^{-8}`
    singular value, whereas an SVD of :math:`X` puts it at :math:`10^{-16}\sigma_{\max}`.
    Small singular values obtained through :math:`X^\top X` carry an absolute error of about
    :math:`\varepsilon_{64}\sigma_{\max}^2/\sigma_k`, negligible in the entropy.
    """
    stats = _check_stats(stats)
    if input not in ("singular_values", "eigenvalues"):
        raise ValueError(f"input must be 'singular_values' or 'eigenvalues', got {input!r}")
    eps = _check_eps(eps)
    moment = stats.total_covariance("samples")
    if not centered:
        mu = stats.global_mean_of("samples")
        moment = moment + torch.outer(mu, mu)
    lam = covariance_spectrum(moment)[: min(stats.num_samples, stats.dim)]
    tol = stats.dim * torch.finfo(torch.float64).eps * float(lam[0].clamp(min=0))
    lam = torch.where(lam > tol, lam, torch.zeros_like(lam))
    lam = _nonnegative(lam, "rankme")
    values = lam.sqrt() if input == "singular_values" else lam
    return _entropy_rank(values, eps)


def stable_rank(eigenvalues: Any) -> float:
    r"""Stable (numerical) rank (Rudelson & Vershynin 2007 [4]_).

    .. math:: \operatorname{srank}(\lambda) = \frac{\sum_k \lambda_k}{\max_k \lambda_k}

    For the eigenvalues of a covariance :math:`\tfrac1N X^\top X` this is
    :math:`\|X\|_F^2 / \|X\|_2^2`. Lies in :math:`[1, r]`; it is the exponential of the
    order-∞ Rényi entropy of :math:`p = \lambda/\sum\lambda`, so
    ``stable_rank <= participation_ratio <= effective_rank``.

    Parameters
    ----------
    eigenvalues : Tensor or ndarray ``[n]``
        Non-negative spectrum; negative round-off is clamped at 0.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        All entries :math:`\le 0`; empty, non-1-D, NaN/Inf input.
    """
    lam = _nonnegative(_spectrum(eigenvalues), "stable_rank")
    return float((lam / lam.max()).sum())


def participation_ratio(eigenvalues: Any) -> float:
    r"""Participation ratio (e.g. Gao et al. 2017 [5]_).

    .. math:: \operatorname{PR}(\lambda) = \frac{\big(\sum_k \lambda_k\big)^2}{\sum_k \lambda_k^2}

    For a covariance, :math:`(\operatorname{Tr}\Sigma)^2/\operatorname{Tr}\Sigma^2`. Lies in
    :math:`[1, r]`; the exponential of the order-2 Rényi entropy of :math:`p`. Evaluated on
    :math:`\lambda/\lambda_{\max}` so that it cannot overflow.

    Parameters
    ----------
    eigenvalues : Tensor or ndarray ``[n]``
        Non-negative spectrum; negative round-off is clamped at 0.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        All entries :math:`\le 0`; empty, non-1-D, NaN/Inf input.
    """
    lam = _nonnegative(_spectrum(eigenvalues), "participation_ratio")
    u = lam / lam.max()
    return float(u.sum().square() / u.square().sum())


def alpha_req(
    eigenvalues: Any, *, index_range: tuple[int, int] | None = None
) -> tuple[float, float]:
    r"""α-ReQ (Agrawal et al. 2022 [3]_): power-law decay exponent of a spectrum, with :math:`R^2`.

    Fits :math:`\lambda_i \approx e^{c}\, i^{-\alpha}` by ordinary least squares in log–log
    coordinates,

    .. math::

        \log \lambda_i = c - \alpha \log i, \qquad i = \mathrm{lo}, \dots, \mathrm{hi},

    where :math:`i` is the 1-based rank of :math:`\lambda_i` in the *descending* order (the
    input is sorted first). With :math:`u_i = \log i`, :math:`v_i = \log\lambda_i`:
    :math:`\alpha = -\sum (u_i-\bar u)(v_i-\bar v) / \sum (u_i-\bar u)^2` and
    :math:`R^2 = 1 - \sum (v_i - \hat v_i)^2 / \sum (v_i - \bar v)^2` (taken as 1 when
    :math:`\sum (v_i-\bar v)^2 = 0`, a flat spectrum fitted exactly).

    Parameters
    ----------
    eigenvalues : Tensor or ndarray ``[n]``
        Spectrum, any order (sorted descending here), any floating dtype and device.
    index_range : (int, int), optional
        Inclusive 1-based range ``(lo, hi)`` of the fit, :math:`1 \le lo < hi \le n`; every
        eigenvalue in it must be positive. Default: ``(1, r)`` with :math:`r` the numerical
        rank, the number of eigenvalues :math:`> n\,\varepsilon\,\lambda_{\max}` (``eps`` of
        the input's dtype; numpy's ``matrix_rank`` tolerance), i.e. every eigenvalue that is
        not round-off of an exact zero.

    Returns
    -------
    (float, float)
        :math:`(\alpha, R^2)`.

    Raises
    ------
    ValueError
        Fewer than 2 points in the range, a range outside :math:`[1, n]` or with
        :math:`lo > hi`, a non-positive eigenvalue in an explicit range, fewer than 2
        eigenvalues above the round-off level for the default range; empty, non-1-D,
        NaN/Inf input.
    TypeError
        ``index_range`` not a pair of ints.
    """
    raw = as_tensor(eigenvalues, "eigenvalues")
    lam = _spectrum(raw).sort(descending=True).values
    n = lam.numel()
    if index_range is None:
        lam_max = float(lam[0])
        tol = n * torch.finfo(raw.dtype).eps * lam_max
        r = int((lam > tol).sum()) if lam_max > 0 else 0
        if r < 2:
            raise ValueError(
                f"alpha_req needs at least 2 positive eigenvalues above the round-off level "
                f"n·eps·λ_max = {tol:.3e}, got {r}"
            )
        lo, hi = 1, r
    else:
        if (
            not isinstance(index_range, (tuple, list))
            or len(index_range) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in index_range)
        ):
            raise TypeError(f"index_range must be a pair of ints (lo, hi), got {index_range!r}")
        lo, hi = int(index_range[0]), int(index_range[1])
        if not 1 <= lo <= hi <= n:
            raise ValueError(
                f"index_range {(lo, hi)} must satisfy 1 <= lo <= hi <= n = {n} (1-based, inclusive)"
            )
        if hi - lo + 1 < 2:
            raise ValueError(f"index_range {(lo, hi)} holds {hi - lo + 1} point; the fit needs 2")
        bad = torch.nonzero(lam[lo - 1 : hi] <= 0).flatten()
        if bad.numel():
            first = int(bad[0]) + lo
            raise ValueError(
                f"index_range {(lo, hi)} includes {bad.numel()} non-positive eigenvalue(s) "
                f"(first at i = {first}: {float(lam[first - 1]):.3e}); log λ is undefined"
            )
    v = lam[lo - 1 : hi].log()
    u = torch.arange(lo, hi + 1, dtype=torch.float64, device=lam.device).log()
    du, dv = u - u.mean(), v - v.mean()
    slope = float((du * dv).sum() / du.square().sum())
    ss_tot = float(dv.square().sum())
    ss_res = float((dv - slope * du).square().sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return -slope, r2


# ---------------------------------------------------------------------------- all at once
def spectrum_metrics(
    stats: FeatureStats,
    *,
    index_range: tuple[int, int] | None = None,
    omitted: dict[str, str] | None = None,
) -> dict[str, float]:
    r"""Every spectral measure with its default convention, under stable keys.

    Keys:

    * ``effective_rank_within``, ``effective_rank_between``, ``effective_rank_total`` —
      :func:`effective_rank` of the eigenvalues of :math:`\Sigma_W`, :math:`\Sigma_B`,
      :math:`\Sigma_T`;
    * ``rankme`` — :func:`rankme` (uncentred, singular values, no ε);
    * ``stable_rank_total``, ``participation_ratio_total`` — of :math:`\Sigma_T`;
    * ``alpha_req_total``, ``alpha_req_total_r2`` — :func:`alpha_req` of :math:`\Sigma_T`
      over ``index_range`` (default: its numerical rank).

    Parameters
    ----------
    stats : FeatureStats
    index_range : (int, int), optional
        Passed to :func:`alpha_req`.
    omitted : dict, optional
        If given, an undefined measure is left out of the result and ``omitted[key]`` holds
        the reason, instead of raising (the pipeline's policy: omitted and listed).

    Returns
    -------
    dict[str, float]

    Raises
    ------
    ValueError
        If a measure is undefined (e.g. :math:`\Sigma_W = 0` at exact collapse, a single class
        so :math:`\Sigma_B = 0`, or :math:`\Sigma_T` of rank < 2 for α-ReQ) and ``omitted`` is
        not given; the message names the key.
    """
    stats = _check_stats(stats)
    stats.present_classes()  # emit the empty-class warning once, here
    out: dict[str, float] = {}

    def put(keys: tuple[str, ...], fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            value = fn(*args, **kwargs)
        except ValueError as err:
            if omitted is None:
                raise ValueError(f"spectrum_metrics[{keys[0]!r}]: {err}") from err
            for key in keys:
                omitted[key] = str(err).splitlines()[0]
            return
        values = value if len(keys) > 1 else (value,)
        out.update(zip(keys, (float(v) for v in values), strict=True))

    total = eigenvalues(stats, "total")
    put(("effective_rank_within",), effective_rank, eigenvalues(stats, "within"))
    put(("effective_rank_between",), effective_rank, eigenvalues(stats, "between"))
    put(("effective_rank_total",), effective_rank, total)
    put(("rankme",), rankme, stats)
    put(("stable_rank_total",), stable_rank, total)
    put(("participation_ratio_total",), participation_ratio, total)
    put(("alpha_req_total", "alpha_req_total_r2"), alpha_req, total, index_range=index_range)
    return out
