r"""Recall@K of an embedding for retrieval, exact, chunked and deterministic under ties.

:func:`recall_at_k` is the Recall@K of deep metric learning (Song et al. 2016 [1]_; Musgrave
et al. 2020 [2]_): every query :math:`q` ranks the gallery by its distance to :math:`q`
(itself left out), and

.. math::

    \mathrm{R@}K = \frac{1}{|Q|} \sum_{q \in Q}
    \mathbb{1}\bigl[\exists\, j \in \pi_q(1..K):\ y_j = y_q\bigr],

where :math:`\pi_q(1..K)` are the first :math:`K` gallery items in :math:`q`'s ranking. It is a
hit rate, not the IR recall :math:`|\text{relevant} \cap \text{top-}K| / |\text{relevant}|`.

Metrics (every one ranks by a key that is a strictly increasing function of the distance, so
the ranking equals the ranking by distance; all keys are computed in float64):

* ``"cosine"``: key :math:`-\langle \hat x, \hat g\rangle`, :math:`\hat x = x/\|x\|_2`.
* ``"euclidean"``: key :math:`\|x - g\|_2^2 = \|x\|^2 + \|g\|^2 - 2\langle x, g\rangle`
  (absolute error :math:`\approx D\,\epsilon\,(\|x\|^2 + \|g\|^2)`: centre data that sit far
  from the origin).
* ``"lorentz"``: points :math:`x \in \mathbb{R}^{d+1}` on the hyperboloid
  :math:`-x_0^2 + \|x_{1:}\|^2 = -k`, :math:`x_0 > 0` (geoopt's ``Lorentz(k)``), distance
  :math:`\sqrt{k}\,\operatorname{arcosh}(-\langle x, g\rangle_L / k)`; key
  :math:`-\langle x, g\rangle_L = x_0 g_0 - \langle x_{1:}, g_{1:}\rangle` (arcosh is flat
  at 1, so ranking by its argument keeps digits that the distance loses).
* ``"poincare"``: points of the Poincaré ball of curvature :math:`-c`
  (:math:`c\|x\|^2 < 1`), distance
  :math:`\frac{1}{\sqrt c}\operatorname{arcosh}\bigl(1 + 2c\,\|x-g\|^2 /
  ((1-c\|x\|^2)(1-c\|g\|^2))\bigr)`; key
  :math:`\|x-g\|^2 / ((1-c\|x\|^2)(1-c\|g\|^2))` (clamped at 0 against round-off).

Ties
----
Gallery items with *equal computed keys* are ranked by gallery position: the item that comes
first in ``gallery`` (for the default gallery: the lower row index) ranks first. The result
does not depend on the order in which ``torch.topk`` returns tied entries. It is implemented
exactly, without a full sort: per chunk, ``torch.topk`` gives the :math:`K_{\max}+1` smallest
keys (:math:`K_{\max} = \max` ks) and :math:`T`, the :math:`(K_{\max}+1)`-th smallest. Every
item with key :math:`< T` is among those returned; if the :math:`K_{\max}`-th key is
:math:`< T` these are exactly the first :math:`K_{\max}` ranks and are sorted by
(key, position). A row whose :math:`K_{\max}`-th key equals :math:`T` (a tie group that
crosses the top-:math:`K_{\max}` boundary) adds the :math:`K_{\max}` lowest positions with key
:math:`= T` (an exact ``topk`` over distinct integers) to its items with key :math:`< T` before
the same sort. The cost is one ``topk`` per chunk plus work on the tied rows only, instead of
an :math:`O(N_g \log N_g)` sort per query.

Which keys are equal: keys come from a matrix product, whose rounding BLAS libraries do not
keep fixed across row/column positions or chunk shapes (MKL gives duplicate columns keys that
differ in the last bit). So the gallery is deduplicated (``torch.unique(dim=0)``) before the
product: exact duplicate rows always get bit-identical keys, and their ties are broken by
position whatever ``chunk_size`` is. Distinct rows at exactly equal distance tie exactly when
the products are exact (integer or short dyadic coordinates, e.g. one-hot or quantised
embeddings); otherwise their keys may differ by a few ulp, in a way that can depend on
``chunk_size``.

The query itself is excluded by *identity* (its key is set to :math:`+\infty`), never by a
zero distance: an exact duplicate of the query elsewhere in the gallery still counts.

Memory and precision
--------------------
Queries are processed in chunks of ``chunk_size`` rows, so the largest temporary is a
``[chunk_size, N_gallery]`` float64 key block; the default chunk keeps that block at or
below 64 MiB. Peak temporary memory is a small multiple of it (the ``[chunk, N_distinct]``
product before expansion when the gallery has duplicate rows; boolean masks of tied rows). No
:math:`N \times N` matrix is built. Embeddings are copied once to float64 on their own device.

References
----------
.. [1] H. O. Song, Y. Xiang, S. Jegelka, S. Savarese. Deep metric learning via lifted
   structured feature embedding. CVPR 2016.
.. [2] K. Musgrave, S. Belongie, S.-N. Lim. A metric learning reality check. ECCV 2020.
.. [3] M. Nickel, D. Kiela. Learning continuous hierarchies in the Lorentz model of hyperbolic
   geometry. ICML 2018.
.. [4] M. Nickel, D. Kiela. Poincaré embeddings for learning hierarchical representations.
   NeurIPS 2017.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from analysis._checks import as_tensor, check_features, first_indices

__all__ = ["DEFAULT_CHUNK_BYTES", "METRICS", "Metric", "recall_at_k"]

Metric = Literal["cosine", "euclidean", "lorentz", "poincare"]
METRICS: tuple[str, ...] = ("cosine", "euclidean", "lorentz", "poincare")
DEFAULT_CHUNK_BYTES = 64 * 2**20
"""Upper bound of the float64 ``[chunk, N_gallery]`` key block when ``chunk_size`` is None."""


# ---------------------------------------------------------------------------- validation
def _check_ks(ks: int | Iterable[int]) -> list[int]:
    """Positive integer ``ks``, duplicates dropped, first-seen order kept."""
    items = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    if not items:
        raise ValueError("ks is empty: give at least one K")
    out: list[int] = []
    for k in items:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"every K must be an int, got {k!r} ({type(k).__name__})")
        k = operator.index(k)
        if k < 1:
            raise ValueError(f"every K must be >= 1, got {k}")
        if k not in out:
            out.append(k)
    return out


def _check_labels(labels: Any, n: int, device: torch.device) -> torch.Tensor:
    y = as_tensor(labels, "labels")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"labels must have an integer dtype, got {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"labels must have shape [N], got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"labels have {y.shape[0]} entries but embeddings have {n} rows")
    return y.to(device=device, dtype=torch.int64)


def _check_selection(sel: Any, n: int, name: str, device: torch.device) -> torch.Tensor:
    """Row indices ``[M]`` (int64, unique, in order given) from an index tensor or bool mask."""
    if sel is None:
        return torch.arange(n, device=device)
    if isinstance(sel, (list, tuple, range)):
        sel = torch.as_tensor(list(sel), dtype=torch.bool if _all_bool(sel) else torch.int64)
    t = as_tensor(sel, name)
    if t.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (indices or a boolean mask), got shape {tuple(t.shape)}"
        )
    if t.dtype == torch.bool:
        if t.shape[0] != n:
            raise ValueError(f"{name} mask has {t.shape[0]} entries but embeddings have {n} rows")
        return torch.nonzero(t.to(device)).flatten()
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integer indices or booleans, got {t.dtype}")
    idx = t.to(device=device, dtype=torch.int64)
    if idx.numel():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= n:
            bad = (idx < 0) | (idx >= n)
            raise ValueError(
                f"{name} indices out of range [0, {n}): min {lo}, max {hi}, "
                f"{int(bad.sum())} bad entries (first at positions {first_indices(bad)})"
            )
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError(f"{name} indices must be unique ({name} repeats some rows)")
    return idx


def _all_bool(items: Sequence[Any]) -> bool:
    return len(items) > 0 and all(isinstance(v, (bool, np.bool_)) for v in items)


def _check_curvature(value: float | None, name: str, metric: str, wanted: str) -> float:
    if value is None:
        return 1.0
    if metric != wanted:
        raise ValueError(f"keyword {name} applies to metric={wanted!r} only, not {metric!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return v


def _manifold_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the on-manifold checks: sqrt of the input dtype's epsilon."""
    return math.sqrt(torch.finfo(dtype).eps)


def _check_lorentz(x: torch.Tensor, k: float, tol: float) -> None:
    """Raise unless every row satisfies -x0^2 + |xs|^2 = -k (relative tol) and x0 > 0."""
    if x.shape[1] < 2:
        raise ValueError(f"lorentz points need at least 2 coordinates [N, d+1], got {x.shape[1]}")
    x0sq = x[:, 0] * x[:, 0]
    xssq = (x[:, 1:] * x[:, 1:]).sum(1)
    resid = (xssq - x0sq + k).abs()
    off = resid > tol * (x0sq + xssq + k)
    if bool(off.any()):
        raise ValueError(
            f"{int(off.sum())} points off the hyperboloid (max |<x,x>_L + k| = "
            f"{float(resid.max()):.3g}; <x,x>_L = -x0^2 + |x_s|^2 must equal -k, k={k}, "
            f"to relative tolerance {tol:.2g}; first bad rows: {first_indices(off)})"
        )
    lower = x[:, 0] <= 0
    if bool(lower.any()):
        raise ValueError(
            f"{int(lower.sum())} points on the lower sheet of the hyperboloid (x0 <= 0; "
            f"first bad rows: {first_indices(lower)})"
        )


def _check_poincare(sq: torch.Tensor, c: float) -> None:
    outside = c * sq >= 1
    if bool(outside.any()):
        raise ValueError(
            f"{int(outside.sum())} points outside the ball c|x|^2 < 1, c={c} "
            f"(max c|x|^2 = {float((c * sq).max()):.6g}; first bad rows: {first_indices(outside)})"
        )


def _check_squares(sq: torch.Tensor, metric: str) -> None:
    """The key formulas add squared norms: refuse rows whose squares overflow float64."""
    if not bool(torch.isfinite(4 * sq.max())):
        big = ~torch.isfinite(4 * sq)
        raise ValueError(
            f"{int(big.sum())} rows too large for the {metric} key in float64 "
            f"(squared norm overflows; first bad rows: {first_indices(big)})"
        )


# ---------------------------------------------------------------------------- keys
class _KeyMaker:
    """Float64 ranking keys of a block of queries against the whole gallery.

    The gallery is deduplicated first (``torch.unique(dim=0)``) and keys are computed against
    the distinct rows only, then expanded: exact duplicates in the gallery get bit-identical
    keys whatever the BLAS does with column order or blocking (MKL does not guarantee it).
    """

    def __init__(self, x: torch.Tensor, gal: torch.Tensor, metric: str, k: float, c: float):
        self.metric = metric
        g = x[gal]
        uniq, inverse = torch.unique(g, dim=0, return_inverse=True)
        self.inverse: torch.Tensor | None = None
        if uniq.shape[0] < g.shape[0]:
            g, self.inverse = uniq, inverse
        if metric == "cosine":
            norms = x.norm(dim=1)
            zero = norms == 0
            if bool(zero.any()):
                raise ValueError(
                    f"{int(zero.sum())} all-zero rows: the cosine is undefined "
                    f"(first bad rows: {first_indices(zero)})"
                )
            self.x = x / norms[:, None]
            self.gT = (g / g.norm(dim=1)[:, None]).T.contiguous()
        elif metric == "lorentz":
            _check_squares((x * x).sum(1), metric)
            self.x = x.clone()
            self.x[:, 0].neg_()  # x J with J = diag(-1, 1, ..., 1): x J g^T = <x, g>_L
            self.gT = g.T.contiguous()
        else:  # euclidean, poincare
            self.sq = (x * x).sum(1)
            if metric == "euclidean":
                _check_squares(self.sq, metric)
            self.x = x
            self.gT = g.T.contiguous()
            self.gsq = (g * g).sum(1)
            if metric == "poincare":
                self.inv = 1.0 / (1.0 - c * self.sq)
                self.ginv = 1.0 / (1.0 - c * self.gsq)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        q = self.x[rows]
        if self.metric in ("cosine", "lorentz"):
            block = torch.mm(q, self.gT).neg_()
        else:
            block = torch.addmm(self.gsq.expand(q.shape[0], -1), q, self.gT, alpha=-2.0)
            block.add_(self.sq[rows][:, None])
            if self.metric == "poincare":
                block.clamp_min_(0).mul_(self.ginv[None, :]).mul_(self.inv[rows][:, None])
        if self.inverse is not None:
            block = block[:, self.inverse]
        return block


# ---------------------------------------------------------------------------- ranking
def _first_ranks(keys: torch.Tensor, kmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gallery positions of the first ``kmax`` ranks of every row, ties to the lower position.

    ``keys`` is a ``[B, G]`` float64 block with ``kmax <= G`` finite entries per row (the
    rest ``+inf``). Returns ``(positions [B, kmax] int64, valid [B, kmax] bool)``; ``valid``
    is false only for padding when a row has fewer than ``kmax`` finite keys (never, given the
    caller's check) and is kept for safety.
    """
    b, g = keys.shape
    m = min(kmax + 1, g)
    vals, pos = torch.topk(keys, m, dim=1, largest=False, sorted=True)
    inf = torch.full((b, 1), math.inf, dtype=keys.dtype, device=keys.device)
    if m == kmax:  # gallery has exactly kmax items: nothing beyond the boundary
        vals = torch.cat([vals, inf], dim=1)
        pos = torch.cat([pos, torch.full_like(pos[:, :1], g)], dim=1)
    threshold = vals[:, kmax : kmax + 1]  # the (kmax+1)-th smallest key, T
    below = vals < threshold  # exactly the items with key < T
    cand_v = torch.where(below, vals, inf)
    cand_p = torch.where(below, pos, torch.full_like(pos, g))
    tied = (vals[:, kmax - 1] == threshold[:, 0]).nonzero().flatten()
    extra_v = torch.full((b, kmax), math.inf, dtype=keys.dtype, device=keys.device)
    extra_p = torch.full((b, kmax), g, dtype=torch.int64, device=keys.device)
    if tied.numel():
        t = threshold[tied]
        eq = keys[tied] == t
        arange = torch.arange(g, device=keys.device)
        eq_pos = torch.where(eq, arange, g)
        low = torch.topk(eq_pos, min(kmax, g), dim=1, largest=False, sorted=True).values
        ok = low < g
        extra_p[tied, : low.shape[1]] = low
        extra_v[tied, : low.shape[1]] = torch.where(ok, t.expand_as(low), math.inf)
    cand_v = torch.cat([cand_v, extra_v], dim=1)
    cand_p = torch.cat([cand_p, extra_p], dim=1)
    # lexicographic sort by (key, position): positions first, then a stable sort on keys
    p_sorted, order = torch.sort(cand_p, dim=1, stable=True)
    v_by_p = torch.gather(cand_v, 1, order)
    _, order2 = torch.sort(v_by_p, dim=1, stable=True)
    first = torch.gather(p_sorted, 1, order2)[:, :kmax]
    valid = first < g
    return first.clamp_max(g - 1), valid


# ---------------------------------------------------------------------------- public API
def recall_at_k(
    embeddings: Any,
    labels: Any,
    ks: int | Iterable[int] = (1, 2, 4, 8),
    metric: Metric = "cosine",
    query: Any = None,
    gallery: Any = None,
    *,
    curvature: float | None = None,
    c: float | None = None,
    chunk_size: int | None = None,
) -> dict[int, float]:
    r"""Recall@K of ``embeddings`` for retrieval by ``labels``.

    For every query row :math:`q` the gallery rows are ranked by distance to :math:`q`
    (:math:`q` itself excluded when it is in the gallery), and

    .. math::

        \mathrm{R@}K = \frac{1}{|Q|}\sum_{q\in Q}
        \mathbb{1}\bigl[\exists\, j \in \pi_q(1..K):\ y_j = y_q\bigr]

    (Song et al. 2016; Musgrave et al. 2020). Equal distances are ranked by position in the
    gallery, first position first; see the module docstring for the exact, chunk-independent
    implementation and the ranking key of each metric.

    Parameters
    ----------
    embeddings : torch.Tensor or numpy.ndarray, shape [N, D]
        Any floating dtype, any device; copied once to float64 on that device. For
        ``"lorentz"`` rows are points ``[x_0, x_1..x_d]`` of the hyperboloid, for
        ``"poincare"`` points of the ball.
    labels : torch.Tensor or numpy.ndarray, shape [N]
        Integer class labels (any values).
    ks : int or iterable of int, default (1, 2, 4, 8)
        The :math:`K` values; duplicates are dropped. Every :math:`K` must not exceed the
        number of gallery items a query can retrieve (gallery size, minus one when the query is
        itself in the gallery).
    metric : {"cosine", "euclidean", "lorentz", "poincare"}, default "cosine"
    query, gallery : index tensor/array/sequence or boolean mask of length N, optional
        Rows of ``embeddings`` used as queries and as the gallery (default: all rows). Indices
        must be unique; a query that is also in the gallery excludes only itself (by index).
        The gallery order given is the order used to break ties.
    curvature : float, optional
        Hyperboloid parameter :math:`k` of ``metric="lorentz"``
        (:math:`-x_0^2 + \|x_s\|^2 = -k`, geoopt's ``Lorentz(k)``, sectional curvature
        :math:`-1/k`); default 1.0. (Named ``k`` before; renamed so it is not confused with
        the :math:`K` of ``ks``.)
    c : float, optional
        Ball parameter of ``metric="poincare"`` (curvature :math:`-c`); default 1.0.
    chunk_size : int, optional
        Queries per chunk. Default: the largest chunk whose float64 ``[chunk, N_gallery]`` key
        block is at most 64 MiB (:data:`DEFAULT_CHUNK_BYTES`), at least 1.

    Returns
    -------
    dict[int, float]
        ``{K: recall}`` in the order of ``ks``, values in [0, 1] as Python floats.

    Raises
    ------
    TypeError
        Non-float embeddings, non-integer labels or K, float index selections.
    ValueError
        Shape mismatches, NaN/Inf (with counts and first rows), empty query set, unknown metric,
        K larger than the gallery available to a query, points off the hyperboloid or outside
        the ball, zero rows for ``"cosine"``, invalid ``curvature``/``c``/``chunk_size``.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    >>> recall_at_k(x, torch.tensor([0, 0, 1, 2]), ks=(1, 2), metric="euclidean")
    {1: 0.5, 2: 0.5}
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    kk = _check_curvature(curvature, "curvature", metric, "lorentz")
    cc = _check_curvature(c, "c", metric, "poincare")
    kvals = _check_ks(ks)
    kmax = max(kvals)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
    ):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    x_in = check_features(embeddings, None, "embeddings")
    n = x_in.shape[0]
    device = x_in.device
    y = _check_labels(labels, n, device)
    q_idx = _check_selection(query, n, "query", device)
    g_idx = _check_selection(gallery, n, "gallery", device)
    if q_idx.numel() == 0:
        raise ValueError("empty query set: query selects no rows")
    n_g = g_idx.numel()

    # position of each query in the gallery (-1 when it is not there)
    where_in_g = torch.full((n,), -1, dtype=torch.int64, device=device)
    where_in_g[g_idx] = torch.arange(n_g, device=device)
    self_pos = where_in_g[q_idx]
    any_self = bool((self_pos >= 0).any())
    available = n_g - 1 if any_self else n_g
    if kmax > available:
        detail = f"gallery size {n_g} minus the query itself" if any_self else f"gallery size {n_g}"
        raise ValueError(
            f"K={kmax} exceeds the {available} gallery items available to a query ({detail})"
        )

    x = x_in.to(torch.float64)
    if metric == "lorentz":
        _check_lorentz(x, kk, _manifold_tolerance(x_in.dtype))
    elif metric == "poincare":
        _check_poincare((x * x).sum(1), cc)
    keys_of = _KeyMaker(x, g_idx, metric, kk, cc)

    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_BYTES // (8 * n_g))
    chunk = int(chunk_size)
    y_g = y[g_idx]
    hits = torch.zeros(len(kvals), dtype=torch.int64, device=device)
    kt = torch.tensor(kvals, device=device)
    rank = torch.arange(kmax, device=device)
    for start in range(0, q_idx.numel(), chunk):
        rows = q_idx[start : start + chunk]
        keys = keys_of(rows)
        sp = self_pos[start : start + chunk]
        has_self = (sp >= 0).nonzero().flatten()
        keys[has_self, sp[has_self]] = math.inf
        first, valid = _first_ranks(keys, kmax)
        match = valid & (y_g[first] == y[rows][:, None])
        # first matching rank per row (kmax when none); hit@K iff it is < K
        first_hit = torch.where(match, rank, kmax).amin(dim=1)
        hits += (first_hit[:, None] < kt[None, :]).sum(0)
    n_q = q_idx.numel()
    return {kv: int(h) / n_q for kv, h in zip(kvals, hits.tolist(), strict=True)}
