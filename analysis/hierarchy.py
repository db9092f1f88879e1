r"""Hierarchy-aware classification metrics: mistake severity, hierarchical distance@k, hP@k.

The only input about the hierarchy is a :math:`K\times K` matrix ``distances`` with
:math:`d(a, b)` = height of the lowest common ancestor of classes :math:`a` and :math:`b`
(0 when :math:`a = b`), e.g. ``geomtools.frames.Hierarchy.lca_distances()``. Any symmetric,
non-negative matrix with a zero diagonal is accepted.

:class:`HierarchicalMetrics` is a streaming accumulator: feed it ``(logits, labels)`` batch by
batch (or ranked predictions with :meth:`HierarchicalMetrics.update_ranked`); every average runs
over *all* samples fed (no dropped last batch), its state is a handful of float64 sums
(sum-reducible: :meth:`~HierarchicalMetrics.merge`,
:meth:`~HierarchicalMetrics.all_reduce`, ``state_dict``) and
:meth:`~HierarchicalMetrics.compute` returns Python numbers under stable keys.

Notation: :math:`N` samples with labels :math:`y_i`; :math:`\pi_{i1}, \pi_{i2}, \dots` the
classes ranked for sample :math:`i` (highest logit first, or lowest CRM risk first with
``crm=True``); :math:`d_{\max} = \max_{a,b} d(a, b)`; hierarchical similarity
:math:`s(a, b) = 1 - d(a, b)/d_{\max}`; :math:`s^*_1(y) \ge s^*_2(y) \ge \dots \ge
s^*_K(y)` the similarities of all :math:`K` classes to :math:`y`, sorted (:math:`s^*_1 = 1`).

References
----------
.. [1] L. Bertinetto, R. Mueller, K. Tertikas, S. Samangooei, N. A. Lord. Making better
   mistakes: leveraging class hierarchies with deep networks. CVPR 2020.
   Code: github.com/fiveai/making-better-mistakes (``better_mistakes/model/run_xent.py``).
.. [2] S. Karthik, A. Prabhu, P. K. Dokania, V. Gandhi. No cost likelihood manipulation at test
   time for making better mistakes in deep networks. ICLR 2021.
.. [3] T. Liang, J. W. Davis. Inducing neural collapse to a fixed hierarchy-aware frame for
   reducing mistake severity. ICCV 2023. Code: github.com/ltong1130ztr/HAFrame
   (``MBM/better_mistakes/model/run_xent.py``, ``MBM/scripts/crm_eval.py``).
.. [4] J. Deng, A. C. Berg, L. Fei-Fei. Hierarchical semantic indexing for large scale image
   retrieval. CVPR 2011.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from analysis._checks import as_tensor, check_finite, check_labels, first_indices
from analysis._state import read_state, require_distributed

__all__ = ["DEFAULT_KS", "HierarchicalMetrics", "check_distances"]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20)
_STATE_VERSION = 1
_SUM_KEYS = ("num_mistakes", "severity_sum", "hdist_sum", "hdist_min_sum", "hprec_sum")


# ---------------------------------------------------------------------------- validation
def check_distances(distances: Any, name: str = "distances") -> torch.Tensor:
    r"""Validate a class-distance matrix and return it as a float64 tensor (same device).

    Requirements: a real (integer or floating, not bool) tensor or array of shape ``[K, K]``
    with :math:`K \ge 2`; finite; non-negative; exactly zero on the diagonal; exactly
    symmetric; not all zero. Off-diagonal zeros (two classes merged into one leaf) are allowed.

    Raises
    ------
    TypeError
        Not a tensor/array, or a bool/complex dtype.
    ValueError
        Any other requirement fails; the message names the first offending entries.
    """
    d = as_tensor(distances, name)
    if d.dtype == torch.bool or d.is_complex():
        raise TypeError(f"{name} must have a real numeric dtype, got {d.dtype}")
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"{name} must be a square [K, K] matrix, got shape {tuple(d.shape)}")
    k = d.shape[0]
    if k < 2:
        raise ValueError(f"{name} must describe at least 2 classes, got K={k}")
    d = d.detach().to(torch.float64)
    check_finite(d, name)
    neg = d < 0
    if bool(neg.any()):
        r, c = (int(v) for v in torch.nonzero(neg)[0])
        raise ValueError(
            f"{name} must be non-negative: {int(neg.sum())} negative entries, "
            f"e.g. {name}[{r}, {c}] = {float(d[r, c])}"
        )
    diag = d.diagonal() != 0
    if bool(diag.any()):
        i = first_indices(diag)
        raise ValueError(
            f"{name} must have a zero diagonal (d(a, a) = 0): nonzero at classes {i}, "
            f"e.g. {name}[{i[0]}, {i[0]}] = {float(d[i[0], i[0]])}"
        )
    asym = d != d.T
    if bool(asym.any()):
        r, c = (int(v) for v in torch.nonzero(asym)[0])
        raise ValueError(
            f"{name} must be exactly symmetric: {int(asym.sum()) // 2} pairs differ, "
            f"e.g. {name}[{r}, {c}] = {float(d[r, c])} but {name}[{c}, {r}] = {float(d[c, r])}"
            " (symmetrise with (d + d.T) / 2 if this is round-off)"
        )
    if float(d.max()) == 0:
        raise ValueError(f"{name} is all zeros: no class is distinguishable from another")
    return d


def _check_ks(ks: Iterable[int] | None, num_classes: int) -> tuple[int, ...]:
    if ks is None:
        return tuple(k for k in DEFAULT_KS if k <= num_classes)
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable):
        raise TypeError(f"ks must be a sequence of ints, got {type(ks).__name__}")
    out: list[int] = []
    for k in ks:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"ks must contain ints, got {k!r} ({type(k).__name__})")
        k = operator.index(k)
        if not 1 <= k <= num_classes:
            raise ValueError(f"each k in ks must satisfy 1 <= k <= K = {num_classes}, got {k}")
        out.append(k)
    if not out:
        raise ValueError("ks is empty: give at least one k")
    return tuple(sorted(set(out)))


# ---------------------------------------------------------------------------- accumulator
class HierarchicalMetrics:
    r"""Streaming hierarchy-aware metrics of a classifier (exact over all samples).

    For every sample the :math:`K` classes are ranked (see *Ranking* below) and the distances
    :math:`d(\pi_{ij}, y_i)` of the first :math:`k_{\max} = \max(\text{ks})` of them are
    accumulated. :meth:`compute` returns (all averages over every sample fed):

    ``top1_error``
        :math:`\frac1N \sum_i \mathbb 1[\pi_{i1} \ne y_i]`.
    ``num_mistakes``, ``num_samples``
        :math:`M = \sum_i \mathbb 1[\pi_{i1} \ne y_i]` and :math:`N` (ints).
    ``mistake_severity``
        :math:`\frac1M \sum_{i:\,\pi_{i1} \ne y_i} d(\pi_{i1}, y_i)` (``docs/conventions.md``;
        Bertinetto et al. [1]_ "hierarchical distance of a mistake"). **Omitted when**
        :math:`M = 0` (it is undefined, and a NaN would poison averages downstream); check
        ``num_mistakes``. A mistake is :math:`\pi_{i1} \ne y_i`; the reference code [1]_ tests
        :math:`d \ne 0` instead, which is the same for any tree (distinct leaves have an LCA
        of height :math:`\ge 1`).
    ``hdist@k_mean``
        hierarchical distance@k, :math:`\frac1N \sum_i \frac1k \sum_{j\le k} d(\pi_{ij}, y_i)`
        ([1]_ "average hierarchical distance@k", reference key ``_avg/k``).
    ``hdist@k_min``
        :math:`\frac1N \sum_i \min_{j\le k} d(\pi_{ij}, y_i)` ([1]_ reference key ``_top/k``).
    ``hprec@k``
        hierarchical precision@k (Deng et al. [4]_, as intended by the code of [1]_, [3]_),
        averaged over samples:

        .. math::

            \mathrm{hP@}k = \frac1N \sum_i
            \frac{\sum_{j\le k} s(\pi_{ij}, y_i)}{\sum_{j\le k} s^*_j(y_i)},
            \qquad s = 1 - d/d_{\max}.

        The denominator is the best similarity sum any :math:`k` predictions could reach, so
        :math:`\mathrm{hP@}k \in [0, 1]`, and it is 1 exactly when the top :math:`k` are
        :math:`k` classes nearest to :math:`y` — *any* :math:`k` of them when several classes
        tie at the cut-off distance: the definition needs no tie rule for the ideal set. It
        is a graded precision, not a set overlap :math:`|\text{top-}k \cap
        \text{nearest-}k|/k`, which would need an arbitrary choice among tied classes.
    ``hmAP@k`` and ``hmAP``
        mean hierarchical precision, :math:`\mathrm{hmAP@}k = \frac1k \sum_{k'=1}^{k}
        \mathrm{hP@}k'` over *every* :math:`k' \le k` (not only those in ``ks``); the plain mean
        of the reference code (key ``_mAP/k``), not the trapezoidal area of Deng et al.
        ``hmAP`` is :math:`\mathrm{hmAP@}k_{\max}`.

    Keys come in this order: ``num_samples``, ``num_mistakes``, ``top1_error``,
    ``mistake_severity`` (if defined), then per k in ``ks`` ``hdist@k_mean``, ``hdist@k_min``,
    ``hprec@k``, ``hmAP@k``, and last ``hmAP``.

    **Reference-code differences.** The making-better-mistakes code [1]_ (copied by [3]_)
    computes, per batch of size :math:`B`, ``sum(topK_hsimilarity[:, :k]) /
    sum(best_hier_similarities[:, :k])``: the numerator sums over the :math:`B` samples but
    the denominator over all :math:`K` *classes* (``best_hier_similarities`` is ``[K, K]``,
    never indexed by the labels), so its hP@k and hmAP are scaled by about :math:`B/K`
    (exactly :math:`B/K` times the intended value when every class has the same sorted
    distance profile, e.g. 0.64 for :math:`B = 64`, :math:`K = 100`), and hP@1 is not 1 for a
    perfect classifier. Precisely, with a fixed batch size it reports
    :math:`B \cdot \frac1N\sum_i \sum_{j\le k} s(\pi_{ij}, y_i) \,/\,
    \sum_{c=1}^{K}\sum_{j\le k} s^*_j(c)`. We divide each sample by its own label's best sum
    (the definition of [4]_) and average over samples; this equals the corrected batch ratio
    whenever all classes share one sorted distance profile. The reference also averages
    per-batch values with ``drop_last=True`` (the last partial batch is lost); here every
    sample counts once.

    **Ranking.** Default: by logit, highest first; **ties go to the lowest class index** (a
    stable sort, so ``argmax`` and top-k are deterministic; ``torch.topk`` leaves tie order
    unspecified).

    ``crm=True`` (conditional risk minimisation, Karthik et al. [2]_): with
    :math:`p = \operatorname{softmax}(\text{logits})`, classes are ranked by expected
    hierarchical cost :math:`R_c = \sum_j p_j\, d(c, j)`, lowest first. Ties are broken by
    the higher logit (= higher probability, without softmax underflow ties), then by the lower
    index (the reference ``crm_eval.py`` uses index order only). Costs are float64 matrix
    products whose round-off differs between classes with mathematically equal costs, so
    sorted costs closer than :math:`4 K \varepsilon_{64} d_{\max}` (a bound on that
    round-off, chained between neighbours) count as tied. CRM changes only the ranking;
    distances are then scored as above.

    Parameters
    ----------
    distances : Tensor or ndarray ``[K, K]``
        :math:`d(a, b)`, validated by :func:`check_distances`; kept as a float64 copy.
    ks : sequence of int, optional
        The k of the @k metrics, each in :math:`[1, K]` (sorted, duplicates dropped).
        Default :data:`DEFAULT_KS` = (1, 5, 10, 20) restricted to :math:`k \le K`.
    crm : bool, default False
        Rank by CRM risk instead of by logit (needs logits: :meth:`update`).
    device : torch.device or str, optional
        Where the state lives; default the device of ``distances``. Inputs on other devices
        are moved there.
    """

    def __init__(
        self,
        distances: Any,
        ks: Iterable[int] | None = None,
        *,
        crm: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        d = check_distances(distances)
        if not isinstance(crm, bool):
            raise TypeError(f"crm must be a bool, got {type(crm).__name__}")
        self.device = torch.device(device) if device is not None else d.device
        self.num_classes = int(d.shape[0])
        self.ks = _check_ks(ks, self.num_classes)
        self.k_max = self.ks[-1]
        self.crm = crm
        self._dist = d.to(self.device).clone()
        self._max_dist = float(self._dist.max())
        self._k_index = torch.tensor([k - 1 for k in self.ks], device=self.device)
        self._ranks = torch.arange(1, self.k_max + 1, dtype=torch.float64, device=self.device)
        # best similarity sums Σ_{j≤k} s*_j(c) for every class c and k ≤ k_max, [K, k_max];
        # computed with the same formula as the numerator, so a best ranking scores exactly 1
        best = torch.sort(self._dist, dim=1).values[:, : self.k_max]
        self._best_cum = self._ranks - best.cumsum(1) / self._max_dist
        self._crm_tol = 4.0 * self.num_classes * float(np.finfo(np.float64).eps) * self._max_dist
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget all samples (every sum back to zero; configuration kept)."""
        dev, f64 = self.device, torch.float64
        n = len(self.ks)
        self.num_samples = 0
        self._num_mistakes = torch.zeros((), dtype=torch.int64, device=dev)
        self._severity_sum = torch.zeros((), dtype=f64, device=dev)  # Σ_{mistakes} d(π_i1, y_i)
        self._hdist_sum = torch.zeros(n, dtype=f64, device=dev)  # Σ_i Σ_{j≤k} d(π_ij, y_i)
        self._hdist_min_sum = torch.zeros(n, dtype=f64, device=dev)  # Σ_i min_{j≤k} d(π_ij, y_i)
        self._hprec_sum = torch.zeros(self.k_max, dtype=f64, device=dev)  # Σ_i hP_i@k, k ≤ k_max

    def merge(self, other: HierarchicalMetrics) -> HierarchicalMetrics:
        """Add another accumulator's sums (same distances, ks and crm); returns ``self``.

        The result equals one accumulator fed both streams (to float64 round-off in the hP
        sums; the distance sums are exact for integer distances).
        """
        if not isinstance(other, HierarchicalMetrics):
            raise TypeError(f"can only merge a HierarchicalMetrics, got {type(other).__name__}")
        self._check_compatible(other.ks, other.crm, other._dist)
        self.num_samples += other.num_samples
        for key in _SUM_KEYS:
            mine = getattr(self, f"_{key}")
            mine += getattr(other, f"_{key}").to(self.device)
        return self

    @torch.no_grad()
    def all_reduce(self, group: Any = None) -> HierarchicalMetrics:
        """Sum the state of every rank of ``torch.distributed``; returns ``self``.

        Every rank must hold the same distances, ``ks`` and ``crm`` (not checked: that would
        cost a gather of :math:`K^2` values). One SUM all-reduce of the packed float64 sums plus
        one of the int64 counts; afterwards every rank holds the sums of all ranks' samples.

        Parameters
        ----------
        group : ProcessGroup, optional
            Process group (default: the world).
        """
        dist = require_distributed("HierarchicalMetrics")
        floats = [self._severity_sum, self._hdist_sum, self._hdist_min_sum, self._hprec_sum]
        packed = torch.cat([t.reshape(-1) for t in floats])
        dist.all_reduce(packed, group=group)
        ints = torch.stack(
            [self._num_mistakes, torch.tensor(self.num_samples, device=self.device)]
        ).to(torch.int64)
        dist.all_reduce(ints, group=group)
        sizes = [t.numel() for t in floats]
        parts = torch.split(packed, sizes)
        self._severity_sum = parts[0].reshape(()).clone()
        self._hdist_sum, self._hdist_min_sum, self._hprec_sum = (p.clone() for p in parts[1:])
        self._num_mistakes = ints[0].clone()
        self.num_samples = int(ints[1])
        return self

    def _check_compatible(self, ks: tuple[int, ...], crm: bool, dist: torch.Tensor) -> None:
        if tuple(ks) != self.ks or crm != self.crm:
            raise ValueError(
                f"cannot merge accumulators with different settings: ks={tuple(ks)}, crm={crm} "
                f"into ks={self.ks}, crm={self.crm}"
            )
        if dist.shape != self._dist.shape or not torch.equal(dist.to(self.device), self._dist):
            raise ValueError("cannot merge accumulators built on different distance matrices")

    def state_dict(self) -> dict[str, Any]:
        """State as CPU tensors and plain values, loadable with ``torch.load(weights_only=True)``.

        Holds the configuration (``distances`` ``[K, K]`` float64, ``ks``, ``crm``) and the sums.
        """
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "distances": self._dist.detach().cpu().clone(),
            "ks": list(self.ks),
            "crm": self.crm,
            "num_samples": self.num_samples,
        }
        for key in _SUM_KEYS:
            state[key] = getattr(self, f"_{key}").detach().cpu().clone()
        return state

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], *, device: torch.device | str | None = None
    ) -> HierarchicalMetrics:
        """Rebuild from :meth:`state_dict`, checking keys, shapes and values."""
        read_state(
            "HierarchicalMetrics",
            state,
            _STATE_VERSION,
            ["distances", "ks", "crm", "num_samples", *_SUM_KEYS],
        )
        out = cls(state["distances"], state["ks"], crm=bool(state["crm"]), device=device)
        n = state["num_samples"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(
                f"HierarchicalMetrics state 'num_samples': expected a non-negative int, got {n!r}"
            )
        out.num_samples = n
        shapes = {key: tuple(getattr(out, f"_{key}").shape) for key in _SUM_KEYS}
        read_state("HierarchicalMetrics", state, _STATE_VERSION, _SUM_KEYS, shapes)
        for key in _SUM_KEYS:
            ref = getattr(out, f"_{key}")
            setattr(out, f"_{key}", state[key].to(device=out.device, dtype=ref.dtype).clone())
        if int(out._num_mistakes) > n:
            raise ValueError(f"state has {int(out._num_mistakes)} mistakes but {n} samples")
        return out

    # ------------------------------------------------------------------ input checks
    def _check_logits(self, logits: Any) -> torch.Tensor:
        x = as_tensor(logits, "logits")
        if not x.is_floating_point():
            raise TypeError(f"logits must have a floating-point dtype, got {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"logits must have shape [B, K], got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {x.shape[1]} columns but distances describe "
                f"K = {self.num_classes} classes"
            )
        if x.shape[0] == 0:
            raise ValueError(f"empty batch: logits have shape {tuple(x.shape)}")
        x = x.detach().to(device=self.device, dtype=torch.float64)
        check_finite(x, "logits")
        return x

    def _check_labels(self, labels: Any, batch_size: int, what: str) -> torch.Tensor:
        y = as_tensor(labels, "labels")
        if y.ndim == 1 and y.shape[0] != batch_size:
            raise ValueError(f"labels have {y.shape[0]} entries but {what} have {batch_size} rows")
        y = check_labels(y.detach(), batch_size, self.num_classes)
        return y.to(device=self.device, dtype=torch.int64)

    # ------------------------------------------------------------------ ranking
    def rank(self, logits: Any, k: int | None = None) -> torch.Tensor:
        """The first ``k`` (default ``k_max``) ranked classes ``[B, k]`` (int64) of each row.

        By logit (ties: lowest index) or, with ``crm=True``, by CRM risk (ties: higher logit,
        then lowest index); see the class docstring.
        """
        x = self._check_logits(logits)
        if k is None:
            k = self.k_max
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if not 1 <= k <= self.num_classes:
            raise ValueError(f"k must satisfy 1 <= k <= K = {self.num_classes}, got {k}")
        return self._rank(x)[:, : int(k)]

    def _rank(self, x: torch.Tensor) -> torch.Tensor:
        """Full ranking ``[B, K]`` of validated float64 logits."""
        # stable sort: equal logits keep index order (lowest index first)
        by_logit = torch.sort(x, dim=1, descending=True, stable=True).indices
        if not self.crm:
            return by_logit
        risk = torch.softmax(x, dim=1) @ self._dist  # R_c = Σ_j p_j d(j, c), d symmetric
        # group near-equal risks (sorted gaps ≤ tol, chained) into tie groups 0, 1, 2, ...
        sorted_risk, order = torch.sort(risk, dim=1, stable=True)
        new_group = (sorted_risk.diff(dim=1) > self._crm_tol).to(torch.int64)
        group_sorted = torch.nn.functional.pad(new_group.cumsum(1), (1, 0))
        group = torch.empty_like(group_sorted).scatter_(1, order, group_sorted)
        # lexicographic (group ↑, logit ↓, index ↑): stable sort of the logit order by group
        inner = torch.sort(group.gather(1, by_logit), dim=1, stable=True).indices
        return by_logit.gather(1, inner)

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def update(self, logits: Any, labels: Any) -> None:
        """Add a batch: ``logits [B, K]`` (any float dtype/device, finite), ``labels [B]``."""
        x = self._check_logits(logits)
        y = self._check_labels(labels, x.shape[0], "logits")
        self._accumulate(self._rank(x)[:, : self.k_max], y)

    @torch.no_grad()
    def update_ranked(self, topk_predictions: Any, labels: Any) -> None:
        """Add ranked predictions ``[B, k]`` (best first, ``k >= k_max``) and ``labels [B]``.

        Only the first ``k_max`` columns are used; each row must hold distinct class indices in
        ``[0, K)``. Not available with ``crm=True`` (CRM re-ranks from the logits).
        """
        if self.crm:
            raise ValueError(
                "crm=True re-ranks classes from the logits: call update(logits, labels), "
                "or build the accumulator with crm=False to score rankings made elsewhere"
            )
        p = as_tensor(topk_predictions, "topk_predictions")
        if p.dtype == torch.bool or p.is_floating_point() or p.is_complex():
            raise TypeError(f"topk_predictions must have an integer dtype, got {p.dtype}")
        if p.ndim != 2:
            raise ValueError(f"topk_predictions must have shape [B, k], got shape {tuple(p.shape)}")
        if p.shape[1] < self.k_max:
            raise ValueError(
                f"topk_predictions have {p.shape[1]} columns but k_max = max(ks) = "
                f"{self.k_max} ranked predictions per row are needed"
            )
        if p.shape[0] == 0:
            raise ValueError(f"empty batch: topk_predictions have shape {tuple(p.shape)}")
        p = p.detach()[:, : self.k_max].to(device=self.device, dtype=torch.int64)
        bad = ((p < 0) | (p >= self.num_classes)).any(1)
        if bool(bad.any()):
            raise ValueError(
                f"topk_predictions out of range [0, {self.num_classes}): min {int(p.min())}, "
                f"max {int(p.max())} (first bad rows: {first_indices(bad)})"
            )
        s = torch.sort(p, dim=1).values
        dup = (s.diff(dim=1) == 0).any(1)
        if bool(dup.any()):
            raise ValueError(
                f"topk_predictions repeat a class within a row (first {self.k_max} columns; "
                f"first bad rows: {first_indices(dup)})"
            )
        y = self._check_labels(labels, p.shape[0], "topk_predictions")
        self._accumulate(p, y)

    def _accumulate(self, ranked: torch.Tensor, y: torch.Tensor) -> None:
        """Add validated rankings ``[B, k_max]`` (int64) with labels ``[B]`` (int64)."""
        d = self._dist[y[:, None], ranked]  # [B, k_max]: d(π_ij, y_i)
        wrong = ranked[:, 0] != y
        self._num_mistakes += wrong.sum()
        self._severity_sum += torch.where(wrong, d[:, 0], 0.0).sum()
        cum = d.cumsum(1)
        self._hdist_sum += cum[:, self._k_index].sum(0)
        self._hdist_min_sum += d.cummin(1).values[:, self._k_index].sum(0)
        sim_cum = self._ranks - cum / self._max_dist  # Σ_{j≤k} s(π_ij, y_i)
        self._hprec_sum += (sim_cum / self._best_cum[y]).sum(0)
        self.num_samples += int(y.shape[0])

    # ------------------------------------------------------------------ results
    def compute(self) -> dict[str, float]:
        """All metrics under stable keys (see the class docstring); counts are ints.

        Raises
        ------
        ValueError
            If no sample has been fed.
        """
        n = self.num_samples
        if n == 0:
            raise ValueError("HierarchicalMetrics has seen no samples: call update() first")
        mistakes = int(self._num_mistakes)
        out: dict[str, float] = {
            "num_samples": n,
            "num_mistakes": mistakes,
            "top1_error": mistakes / n,
        }
        if mistakes:
            out["mistake_severity"] = float(self._severity_sum) / mistakes
        hdist = self._hdist_sum.cpu().tolist()
        hmin = self._hdist_min_sum.cpu().tolist()
        hprec = (self._hprec_sum / n).cpu()
        hmap = (hprec.cumsum(0) / torch.arange(1, self.k_max + 1, dtype=torch.float64)).tolist()
        for i, k in enumerate(self.ks):
            out[f"hdist@{k}_mean"] = hdist[i] / (n * k)
            out[f"hdist@{k}_min"] = hmin[i] / n
            out[f"hprec@{k}"] = float(hprec[k - 1])
            out[f"hmAP@{k}"] = hmap[k - 1]
        out["hmAP"] = hmap[self.k_max - 1]
        return out

    def __repr__(self) -> str:
        return (
            f"HierarchicalMetrics(num_classes={self.num_classes}, ks={self.ks}, crm={self.crm}, "
            f"samples={self.num_samples}, device={self.device})"
        )
