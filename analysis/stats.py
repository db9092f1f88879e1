r"""One-pass, mergeable, float64 class statistics of a feature set.

:class:`FeatureStats` is the single source of every statistic geomtools reports: class counts
and means, the within-class, between-class and total covariances
:math:`\Sigma_W, \Sigma_B, \Sigma_T`, per-class variances, and the statistics of the
L2-normalised features that intra-class variability needs. It makes one pass over the data,
stores no :math:`N\times D` matrix (memory :math:`O(KD + D^2)`), and two instances built on
disjoint shards merge into the statistics of their union exactly (to float64 round-off), on one
process with :meth:`FeatureStats.merge` or across processes with :meth:`FeatureStats.all_reduce`.

Accuracy: shifted data
----------------------
Raw one-pass moments :math:`E[xx^\top] - \mu\mu^\top` cancel catastrophically near neural
collapse (class offsets of 50, within-class spread of 1e-3 loses ~10 digits). Here every sample
is first shifted by a fixed *reference* :math:`r_c` of its class, a point inside the class: the
mean of the class's rows in the first batch (or shard) that contains it. The state holds, per
class, :math:`n_c`, :math:`r_c` and the shifted sums, and, pooled, the raw scatter of the
shifted data:

.. math::

    z_i = x_i - r_{y_i}, \qquad s_c = \sum_{i\in c} z_i, \qquad
    q_c = \sum_{i\in c} \|z_i\|^2, \qquad P = \sum_i z_i z_i^\top .

A batch adds one GEMM :math:`Z^\top Z` to :math:`P` and per-class sums of :math:`z_i` and
:math:`\|z_i\|^2` to :math:`s_c, q_c`, whatever the number of classes in it (Chan, Golub &
LeVeque's pairwise merge, used before, added a :math:`U\times D^2` mean-shift product for the
:math:`U` classes of every batch). The correction is applied once, when the statistics are read:
with :math:`d_c = s_c/n_c = \mu_c - r_c`,

.. math::

    \mu_c = r_c + d_c, \qquad
    S_W = \sum_i (x_i-\mu_{y_i})(x_i-\mu_{y_i})^\top = P - \sum_c n_c\, d_c d_c^\top, \qquad
    \sum_{i\in c}\|x_i-\mu_c\|^2 = q_c - n_c \|d_c\|^2 ,

(expand :math:`x_i - \mu_c = z_i - d_c`). Both terms are of within-class size (:math:`z_i` is
a deviation from a point of the class, :math:`d_c` that point's distance to the class mean, of
order :math:`\sigma_c/\sqrt{m_c}` for a first batch holding :math:`m_c` rows of the class), so
nothing cancels near collapse: the relative error grows only by the factor
:math:`1 + n_c\|d_c\|^2/\operatorname{tr}S_c`. The normalised features
:math:`\hat x = x/\|x\|` are accumulated in the same form with references :math:`\rho_c` (the
mean of :math:`\hat x` over the same first rows): :math:`t_c = \sum_{i\in c}(\hat x_i-\rho_c)`,
:math:`p_c = \sum_{i\in c}\|\hat x_i-\rho_c\|^2`. Near collapse the cosine distances are
~1e-12, where :math:`1 - \|\hat m_c\|^2` would lose every digit.

Changing references (merge, all-reduce)
---------------------------------------
The same data expressed in other references :math:`r'_c`, with :math:`\delta_c = r_c - r'_c`
(so :math:`z'_i = z_i + \delta_c`), is exactly

.. math::

    s'_c = s_c + n_c\delta_c, \qquad
    q'_c = q_c + 2\,\delta_c^\top g_c, \qquad
    P' = P + \sum_c \big(\delta_c g_c^\top + g_c \delta_c^\top\big), \qquad
    g_c = s_c + \tfrac{n_c}{2}\delta_c ,

a rank-:math:`2U` update, :math:`U` the classes re-expressed. :meth:`FeatureStats.merge`
re-expresses the other state in this state's references for the classes both hold (a class
new to this state keeps the other's reference, :math:`\delta_c = 0`) and adds;
:meth:`FeatureStats.all_reduce` re-expresses every rank in one common reference, the global
class mean (from one SUM all-reduce of counts and class sums), and sums. Since every
reference lies inside its class, :math:`\delta_c` is again of within-class size. Per-class
scatters (``track_class_scatter=True``) follow the same formulas class by class.

Exported state
--------------
:meth:`FeatureStats.state_dict` holds the reference-free statistics (counts, means, the
centred scatter :math:`S_W`, :math:`\sum_{i\in c}\|x_i-\mu_c\|^2`, ...), the format of
state version 1, so states of shards with different references compare and merge directly;
:meth:`FeatureStats.from_state_dict` takes :math:`r_c = \mu_c` (:math:`s_c = 0`,
:math:`P = S_W`, :math:`q_c` the class's sum of squares).

Conventions (``docs/conventions.md``, section "Class statistics")
-----------------------------------------------------------------
``global_mean="samples"`` (default) :math:`\mu_G = \frac1N \sum_i x_i`;
``global_mean="classes"`` :math:`\mu_G = \frac1K \sum_c \mu_c`.
:math:`\Sigma_W = \frac1N \sum_i (x_i-\mu_{y_i})(x_i-\mu_{y_i})^\top` (default) or
``within="balanced"`` :math:`\frac1K\sum_c \frac1{n_c}\sum_{i\in c}(\cdot)(\cdot)^\top`
(needs ``track_class_scatter=True``),
:math:`\Sigma_B = \frac1K \sum_c (\mu_c-\mu_G)(\mu_c-\mu_G)^\top`,
:math:`\Sigma_T = \frac1N\sum_i (x_i-\mu_G)(x_i-\mu_G)^\top`,
:math:`\sigma_c^2 = \frac1{n_c}\sum_{i\in c}\|x_i-\mu_c\|^2` (``ddof=1`` divides by
:math:`n_c-1`; a class with one sample has :math:`\sigma_c^2 = 0` either way).
:math:`K` counts the classes that have samples; a class with none is excluded from every
metric with one :class:`EmptyClassWarning` naming it.

References
----------
T. F. Chan, G. H. Golub, R. J. LeVeque, "Algorithms for computing the sample variance:
analysis and recommendations", The American Statistician 37(3), 1983 (the shifted-data
algorithm, Sec. 3).
V. Papyan, X. Y. Han, D. L. Donoho, "Prevalence of neural collapse during the terminal phase
of deep learning training", PNAS 117(40), 2020.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch

from analysis._checks import check_features, check_finite, check_labels
from analysis._state import read_state, require_distributed

__all__ = ["EmptyClassWarning", "FeatureStats", "GlobalMean", "Within"]

GlobalMean = Literal["samples", "classes"]
Within = Literal["samples", "balanced"]

_STATE_VERSION = 1
_TENSOR_KEYS = ("counts", "means", "scatter", "class_m2", "unit_means", "unit_m2", "zero_norm")
_CHUNK_ELEMENTS = 1 << 18  # rows × D of one chunk of a batch on CPU (2 MiB of float64: L2)
_INDEX_ROWS = 512  # rows per index_add_ call


class EmptyClassWarning(UserWarning):
    """Some classes have no samples; they are excluded from every metric."""


def _int_key(state: Mapping[str, Any], key: str) -> int:
    """A positive int configuration value of a FeatureStats state (one-line error otherwise)."""
    val = state[key]
    if isinstance(val, bool) or not isinstance(val, int) or val < 1:
        raise ValueError(f"FeatureStats state {key!r}: expected a positive int, got {val!r}")
    return val


def _row_norms(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Euclidean norms of the rows of ``x``; rescaled where ``‖x‖²`` overflows.

    Raises (through :func:`check_finite`, naming NaN/Inf counts and rows of ``source``) when
    ``x`` is not finite.
    """
    norms = torch.linalg.vector_norm(x, dim=1)
    if not bool(torch.isfinite(norms).all()):
        if not bool(torch.isfinite(x).all()):
            check_finite(source, "features")  # raises with NaN/Inf counts and rows
        amax = x.abs().amax(dim=1)  # finite but ‖x‖ overflowed: rescale
        norms = amax * torch.linalg.vector_norm(x / amax.clamp(min=1e-300)[:, None], dim=1)
    return norms


def _rereference(
    delta: torch.Tensor, n: torch.Tensor, sums: torch.Tensor, sq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Shifted sums and squares in references moved by ``-delta`` (:math:`z' = z + \delta`).

    Returns :math:`s' = s + n\delta`, :math:`q' = q + 2\delta^\top g` and
    :math:`g = s + \tfrac n2 \delta`, whose rank-2 products :math:`\delta g^\top + g\delta^\top`
    re-express a scatter (module docstring).
    """
    g = sums + delta * (n / 2)[:, None]
    return sums + delta * n[:, None], sq + 2.0 * torch.linalg.vecdot(delta, g), g


def _sym_update(p: torch.Tensor, delta: torch.Tensor, g: torch.Tensor) -> None:
    r"""``p += Σ_c δ_c g_cᵀ + g_c δ_cᵀ`` (rows ``delta``, ``g``), in place."""
    p.addmm_(delta.T, g).addmm_(g.T, delta)


class FeatureStats:
    r"""Streaming float64 class statistics of features ``[N, D]`` with labels in ``[0, K)``.

    Parameters
    ----------
    num_classes : int
        Number of classes :math:`K` (labels must lie in ``[0, K)``).
    dim : int
        Feature dimension :math:`D`.
    device : torch.device or str, optional
        Device of the float64 state (default CPU). Batches on another device are moved here.
    track_class_scatter : bool, default False
        Also keep every class's :math:`D\times D` scatter matrix (memory :math:`O(KD^2)`), which
        ``within="balanced"`` needs. Off by default to keep memory :math:`O(KD + D^2)`.

    Examples
    --------
    >>> import torch
    >>> stats = FeatureStats(num_classes=3, dim=4)
    >>> stats.update(torch.randn(10, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]))
    >>> stats.within_covariance().shape
    torch.Size([4, 4])

    Notes
    -----
    State (all float64 except the int64 counts), in the shifted form of the module docstring:
    ``counts [K]``, the references :math:`r_c, \rho_c` ``[K, 2D]``, the shifted sums and squares
    :math:`s_c, t_c, q_c, p_c` ``[K, 2D + 2]``, the pooled shifted scatter :math:`P` ``[D, D]``
    (and :math:`P_c` ``[K, D, D]`` with ``track_class_scatter``). The reference-free statistics
    (means, :math:`S_W`, ...) are derived from it when first read after a change, and cached.
    Rows of ``means`` for classes without samples are zero; use :attr:`present`.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        device: torch.device | str | None = None,
        track_class_scatter: bool = False,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.num_classes = num_classes
        self.dim = dim
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.track_class_scatter = bool(track_class_scatter)
        dev, f64 = self.device, torch.float64
        self._counts = torch.zeros(num_classes, dtype=torch.int64, device=dev)
        # [r | ρ]: references of the features and of the normalised features
        self._refs = torch.zeros(num_classes, 2 * dim, dtype=f64, device=dev)
        # [s | t | q | p]: shifted sums of x and x̂, shifted sums of squares of both
        self._acc = torch.zeros(num_classes, 2 * dim + 2, dtype=f64, device=dev)
        self._scatter = torch.zeros(dim, dim, dtype=f64, device=dev)  # P (shifted)
        self._zero_norm = torch.zeros((), dtype=torch.int64, device=dev)
        self._class_scatter: torch.Tensor | None = (
            torch.zeros(num_classes, dim, dim, dtype=f64, device=dev)
            if self.track_class_scatter
            else None
        )
        self._warned_empty: tuple[int, ...] | None = None
        self._cache: dict[str, torch.Tensor] = {}
        self._work: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ accumulation
    @torch.no_grad()
    def update(self, features: Any, labels: Any) -> None:
        """Add a batch.

        Parameters
        ----------
        features : Tensor ``[B, D]``
            Any floating dtype (half/bfloat16 are upcast) on any device; numpy arrays accepted.
        labels : Tensor ``[B]``
            Integer class labels in ``[0, K)``.

        Raises
        ------
        TypeError
            Non-floating features, non-integer labels.
        ValueError
            Wrong shape or dimension, empty batch, NaN/Inf in features, labels out of range.
            The state is unchanged after a rejected batch.
        """
        x_in = check_features(features, self.dim, finite=False)
        y = check_labels(labels, x_in.shape[0], self.num_classes)
        y = y.to(device=self.device, dtype=torch.int64)
        src = x_in.to(device=self.device)
        b, dim, f64 = src.shape[0], self.dim, torch.float64
        # Sorting the batch by class makes every class a contiguous run of rows: per-class sums
        # are then segment sums (index_add_ over B rows costs as much as the GEMM on CPU).
        labels_sorted, order = torch.sort(y, stable=True)
        classes, inverse, m = torch.unique_consecutive(
            labels_sorted, return_inverse=True, return_counts=True
        )
        refs = self._refs.index_select(0, classes)  # [U, 2D]: r_c | ρ_c of the batch's classes
        new = self._counts[classes] == 0
        if bool(new.any()):
            # A class seen for the first time takes as references its means in this batch.
            rows = order[new[inverse]]
            xs = src[rows].to(f64)
            norms = _row_norms(xs, x_in)
            xs_hat = xs / torch.where(norms == 0, torch.ones_like(norms), norms)[:, None]
            mn = m[new].to(f64)[:, None]
            refs[new, :dim] = torch.segment_reduce(xs, "sum", lengths=m[new]) / mn
            refs[new, dim:] = torch.segment_reduce(xs_hat, "sum", lengths=m[new]) / mn

        # One row per sample, sorted by class: [x − r | x̂ − ρ | ‖x − r‖² | ‖x̂ − ρ‖²].
        step = b if self.device.type != "cpu" else max(1, min(b, _CHUNK_ELEMENTS // dim))
        work, chunk_x, chunk_ref = self._workspace(b, step)
        sums = torch.zeros(classes.numel(), 2 * dim + 2, dtype=f64, device=self.device)
        zero_rows = torch.zeros((), dtype=torch.int64, device=self.device)
        for start in range(0, b, step):  # chunks that stay in cache
            zero_rows += self._chunk(
                src, x_in, order, inverse, refs, sums, work, chunk_x, chunk_ref, start, step
            )
        sums[:, dim : 2 * dim].neg_()

        z = work[:b, :dim]
        class_scatter = None
        if self._class_scatter is not None:
            parts = torch.split(z, [int(v) for v in m.tolist()])
            class_scatter = torch.stack([p.T @ p for p in parts])
        # Everything is validated and computed; now change the state.
        self._scatter.addmm_(z.T, z)  # symmetric up to round-off; symmetrised when read
        if class_scatter is not None and self._class_scatter is not None:
            self._class_scatter[classes] += class_scatter
        self._refs[classes[new]] = refs[new]
        for start in range(0, classes.numel(), _INDEX_ROWS):
            # index_add_ of many rows at once is slow on CPU (~20 ns/element), of a few fast
            stop = start + _INDEX_ROWS
            self._acc.index_add_(0, classes[start:stop], sums[start:stop])
        self._counts[classes] += m
        self._zero_norm += zero_rows
        self._changed()

    def _chunk(
        self,
        src: torch.Tensor,
        x_in: torch.Tensor,
        order: torch.Tensor,
        inverse: torch.Tensor,
        refs: torch.Tensor,
        sums: torch.Tensor,
        work: torch.Tensor,
        chunk_x: torch.Tensor,
        chunk_ref: torch.Tensor,
        start: int,
        step: int,
    ) -> torch.Tensor:
        """Rows ``start : start + step`` of the sorted batch into ``work`` and ``sums``.

        Returns the number of all-zero rows among them.
        """
        dim, b, f64 = self.dim, work.shape[0], torch.float64
        stop = min(b, start + step)
        xk, rk, wk = chunk_x[: stop - start], chunk_ref[: stop - start], work[start:stop]
        if src.dtype == f64:
            torch.index_select(src, 0, order[start:stop], out=xk)
        else:
            xk.copy_(src.index_select(0, order[start:stop]))
        inv = inverse[start:stop]
        torch.index_select(refs, 0, inv, out=rk)
        norms = _row_norms(xk, x_in)
        zero = norms == 0
        # z = x − r, and ρ − x̂ (sign flipped, undone by the caller: one pass instead of two)
        torch.sub(xk, rk[:, :dim], out=wk[:, :dim])
        torch.addcdiv(
            rk[:, dim:],
            xk,
            torch.where(zero, torch.ones_like(norms), norms)[:, None],
            value=-1.0,
            out=wk[:, dim : 2 * dim],
        )
        wk[:, 2 * dim] = torch.linalg.vector_norm(wk[:, :dim], dim=1).square_()
        wk[:, 2 * dim + 1] = torch.linalg.vector_norm(wk[:, dim : 2 * dim], dim=1).square_()
        sums.index_add_(0, inv, wk)  # sorted rows, in cache: cheap
        return zero.sum()

    def _workspace(self, rows: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Reusable float64 buffers: repeated 16 MB allocations (page faults) cost as much as the
        # arithmetic on CPU. They are scratch space, not state.
        d, f64, dev = self.dim, torch.float64, self.device
        if self._work is None or self._work[0].shape[0] < rows or self._work[1].shape[0] < step:
            self._work = (
                torch.empty(rows, 2 * d + 2, dtype=f64, device=dev),
                torch.empty(step, d, dtype=f64, device=dev),
                torch.empty(step, 2 * d, dtype=f64, device=dev),
            )
        work, chunk_x, chunk_ref = self._work
        return work[:rows], chunk_x, chunk_ref

    def _changed(self) -> None:
        self._cache = {}
        self._warned_empty = None

    @torch.no_grad()
    def merge(self, other: FeatureStats) -> FeatureStats:
        """Merge ``other`` into ``self`` in place; returns ``self``.

        The result equals one pass over the union of both data sets to float64 round-off,
        whatever the split or merge order: ``other``'s shifted statistics are re-expressed in
        this state's references for the classes both hold (module docstring) and added.
        """
        if not isinstance(other, FeatureStats):
            raise TypeError(f"can only merge a FeatureStats, got {type(other).__name__}")
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                f"cannot merge stats with num_classes={other.num_classes}, dim={other.dim} into "
                f"num_classes={self.num_classes}, dim={self.dim}"
            )
        if self.track_class_scatter and not other.track_class_scatter:
            raise ValueError("cannot merge stats without class scatter into stats that track it")
        dev, d = self.device, self.dim
        classes = torch.nonzero(other._counts.to(dev) > 0).flatten()
        if classes.numel() == 0:
            return self
        n = other._counts.to(dev)[classes]
        refs = other._refs.to(dev)[classes]
        acc = other._acc.to(dev)[classes]
        scatter = other._scatter.to(dev)
        cs = None
        if self._class_scatter is not None and other._class_scatter is not None:
            cs = other._class_scatter.to(dev)[classes]
        both = self._counts[classes] > 0
        # classes new to self keep other's references (δ = 0); the others move to self's
        self._refs[classes[~both]] = refs[~both]
        delta = torch.where(both[:, None], refs - self._refs[classes], 0.0)
        nf = n.to(torch.float64)
        acc = acc.clone() if acc.data_ptr() == other._acc.data_ptr() else acc
        s, q, g = _rereference(delta[:, :d], nf, acc[:, :d], acc[:, 2 * d])
        t, p, _ = _rereference(delta[:, d:], nf, acc[:, d : 2 * d], acc[:, 2 * d + 1])
        acc = torch.cat([s, t, q[:, None], p[:, None]], dim=1)
        scatter = scatter.clone()
        _sym_update(scatter, delta[both, :d], g[both])
        if cs is not None:
            e = delta[:, :d]
            cs = cs + e[:, :, None] * g[:, None, :] + g[:, :, None] * e[:, None, :]
            assert self._class_scatter is not None
            self._class_scatter[classes] += cs
        self._scatter += scatter
        self._acc[classes] += acc
        self._counts[classes] += n
        self._zero_norm += other._zero_norm.to(dev)
        self._changed()
        return self

    @torch.no_grad()
    def all_reduce(self, group: Any = None) -> FeatureStats:
        r"""Combine the statistics of every rank of ``torch.distributed``; returns ``self``.

        Every rank ends with the statistics of the union of all ranks' data. Uses two SUM
        all-reduces of size :math:`O(KD + D^2)` (no gather of ``world_size`` copies): first the
        counts and class sums give the global class means :math:`\mu_c^*`; then each rank
        re-expresses its shifted statistics in the common references :math:`r_c = \mu_c^*`
        (rank-:math:`2K` update of the module docstring, exact and well conditioned: every
        :math:`\delta_c` is of within-class size) and the results are summed.

        Parameters
        ----------
        group : ProcessGroup, optional
            Process group (default: the world).
        """
        dist = require_distributed("FeatureStats")
        d, k = self.dim, self.num_classes
        n = self._counts.to(torch.float64)
        counts = self._counts.clone()
        dist.all_reduce(counts, group=group)
        # class sums Σx and Σx̂ = n r + s, n ρ + t
        sums = self._refs * n[:, None] + self._acc[:, : 2 * d]
        dist.all_reduce(sums, group=group)
        refs = sums / counts.clamp(min=1).to(torch.float64)[:, None]  # global class means
        delta = self._refs - refs
        s, q, g = _rereference(delta[:, :d], n, self._acc[:, :d], self._acc[:, 2 * d])
        t, p, _ = _rereference(delta[:, d:], n, self._acc[:, d : 2 * d], self._acc[:, 2 * d + 1])
        scatter = self._scatter.clone()
        _sym_update(scatter, delta[:, :d], g)
        flat = [scatter.flatten(), torch.cat([s, t, q[:, None], p[:, None]], dim=1).flatten()]
        if self._class_scatter is not None:
            e = delta[:, :d]
            cs = self._class_scatter + e[:, :, None] * g[:, None, :] + g[:, :, None] * e[:, None, :]
            flat.append(cs.flatten())
        packed = torch.cat(flat)
        dist.all_reduce(packed, group=group)
        zero = self._zero_norm.clone()
        dist.all_reduce(zero, group=group)
        d2, width = d * d, 2 * d + 2
        self._scatter = packed[:d2].view(d, d).clone()
        self._acc = packed[d2 : d2 + k * width].view(k, width).clone()
        if self._class_scatter is not None:
            self._class_scatter = packed[d2 + k * width :].view(k, d, d).clone()
        self._counts, self._refs, self._zero_norm = counts, refs, zero
        self._changed()
        return self

    def reset(self) -> None:
        """Forget all data (state back to zeros)."""
        self.__init__(  # type: ignore[misc]
            self.num_classes,
            self.dim,
            device=self.device,
            track_class_scatter=self.track_class_scatter,
        )

    # ------------------------------------------------------------------ derived statistics
    def _derived(self) -> dict[str, torch.Tensor]:
        """Reference-free statistics from the shifted state (module docstring), cached."""
        if self._cache:
            return self._cache
        d = self.dim
        n = self._counts.to(torch.float64)
        nn = n.clamp(min=1)[:, None]
        shift = self._acc[:, : 2 * d] / nn  # d_c = s_c / n_c (and t_c / n_c); 0 if absent
        means = self._refs + shift
        sq_shift = shift.square()
        m2 = self._acc[:, 2 * d :] - n[:, None] * torch.stack(
            [sq_shift[:, :d].sum(1), sq_shift[:, d:].sum(1)], dim=1
        )
        # q_c ≥ n_c‖d_c‖² exactly; a class with one sample has none by definition
        m2 = torch.where((n > 1)[:, None], m2.clamp(min=0), 0.0)
        idx = torch.nonzero(n > 0).flatten()
        e = shift[idx, :d]
        scatter = (self._scatter + self._scatter.T) / 2
        scatter = scatter - e.T @ (e * n[idx, None])
        cache = {
            "means": means[:, :d],
            "unit_means": means[:, d:],
            "class_m2": m2[:, 0].contiguous(),
            "unit_m2": m2[:, 1].contiguous(),
            "scatter": (scatter + scatter.T) / 2,
        }
        if self._class_scatter is not None:
            e = shift[:, :d]
            cs = (self._class_scatter + self._class_scatter.transpose(1, 2)) / 2
            cs = cs - e[:, :, None] * (e * n[:, None])[:, None, :]
            cache["class_scatter"] = (cs + cs.transpose(1, 2)) / 2
        self._cache = cache
        return cache

    # ------------------------------------------------------------------ basic views
    @property
    def counts(self) -> torch.Tensor:
        """Samples per class ``[K]`` (int64)."""
        return self._counts.clone()

    @property
    def num_samples(self) -> int:
        """Total number of samples :math:`N`."""
        return int(self._counts.sum())

    @property
    def present(self) -> torch.Tensor:
        """Boolean mask ``[K]`` of the classes that have at least one sample."""
        return self._counts > 0

    @property
    def num_zero_norm(self) -> int:
        """Number of all-zero feature rows seen (their normalised version is undefined)."""
        return int(self._zero_norm)

    @property
    def means(self) -> torch.Tensor:
        r"""Class means :math:`\mu_c` ``[K, D]`` (rows of absent classes are zero)."""
        return self._derived()["means"].clone()

    @property
    def unit_means(self) -> torch.Tensor:
        r"""Class means of the normalised features :math:`\hat m_c` ``[K, D]``."""
        return self._derived()["unit_means"].clone()

    @property
    def unit_sq_dev(self) -> torch.Tensor:
        r"""Per-class :math:`\sum_{i\in c}\|\hat x_i - \hat m_c\|^2` ``[K]``."""
        return self._derived()["unit_m2"].clone()

    @property
    def within_scatter(self) -> torch.Tensor:
        r"""Pooled within-class scatter :math:`\sum_i (x_i-\mu_{y_i})(x_i-\mu_{y_i})^\top`."""
        return self._derived()["scatter"].clone()

    def _require_data(self) -> None:
        if int(self._counts.sum()) == 0:
            raise ValueError("FeatureStats is empty: call update() with data first")

    def present_classes(self, *, warn: bool = True) -> torch.Tensor:
        """Indices of classes with samples; warn once (per state) about the excluded ones."""
        self._require_data()
        present = self.present
        if warn and not bool(present.all()):
            missing = tuple(int(c) for c in torch.nonzero(~present).flatten().tolist())
            if self._warned_empty != missing:
                self._warned_empty = missing
                shown = list(missing[:20]) + (["..."] if len(missing) > 20 else [])
                warnings.warn(
                    f"{len(missing)} of {self.num_classes} classes have no samples and are "
                    f"excluded from every metric: {shown}",
                    EmptyClassWarning,
                    stacklevel=3,
                )
        return torch.nonzero(present).flatten()

    def global_mean_of(self, global_mean: GlobalMean = "samples") -> torch.Tensor:
        r"""Global mean ``[D]``: sample-weighted (default) or the mean of class means.

        ``"samples"``: :math:`\mu_G = \frac1N\sum_i x_i`; ``"classes"``:
        :math:`\frac1K\sum_c \mu_c` over the classes present.
        """
        idx = self.present_classes(warn=False)
        means = self._derived()["means"]
        if global_mean == "samples":
            n = self._counts[idx].to(torch.float64)
            return (n[:, None] * means[idx]).sum(0) / n.sum()
        if global_mean == "classes":
            return means[idx].mean(0)
        raise ValueError(f"global_mean must be 'samples' or 'classes', got {global_mean!r}")

    def centered_means(self, global_mean: GlobalMean = "samples") -> torch.Tensor:
        r"""Centred means :math:`M_c` ``[K', D]``, rows :math:`\mu_c-\mu_G` of present classes."""
        idx = self.present_classes()
        return self._derived()["means"][idx] - self.global_mean_of(global_mean)

    # ------------------------------------------------------------------ covariances
    def within_covariance(self, within: Within = "samples") -> torch.Tensor:
        r"""Within-class covariance :math:`\Sigma_W` ``[D, D]``.

        ``"samples"`` (Papyan et al. 2020): :math:`\frac1N \sum_i (x_i-\mu_{y_i})
        (x_i-\mu_{y_i})^\top`. ``"balanced"``: :math:`\frac1K\sum_c\frac1{n_c}\sum_{i\in c}
        (\cdot)(\cdot)^\top`, the mean of per-class covariances (needs
        ``track_class_scatter=True``).
        """
        idx = self.present_classes()
        if within == "samples":
            return self._derived()["scatter"] / self.num_samples
        if within == "balanced":
            if self._class_scatter is None:
                raise ValueError(
                    "within='balanced' needs per-class scatter matrices: build the "
                    "FeatureStats with track_class_scatter=True"
                )
            n = self._counts[idx].to(torch.float64)
            cov = (self._derived()["class_scatter"][idx] / n[:, None, None]).mean(0)
            return (cov + cov.T) / 2
        raise ValueError(f"within must be 'samples' or 'balanced', got {within!r}")

    def between_covariance(self, global_mean: GlobalMean = "samples") -> torch.Tensor:
        r"""Between-class covariance ``[D, D]``.

        :math:`\Sigma_B=\frac1K\sum_c(\mu_c-\mu_G)(\mu_c-\mu_G)^\top` over present classes.
        """
        mc = self.centered_means(global_mean)
        return mc.T @ mc / mc.shape[0]

    def total_covariance(self, global_mean: GlobalMean = "samples") -> torch.Tensor:
        r"""Total covariance :math:`\Sigma_T=\frac1N\sum_i (x_i-\mu_G)(x_i-\mu_G)^\top` ``[D, D]``.

        Computed exactly from the state as :math:`\frac1N\big(S_W + \sum_c n_c
        (\mu_c-\mu_G)(\mu_c-\mu_G)^\top\big)`; with ``global_mean="classes"`` the
        shift :math:`(\bar x-\mu_G)(\bar x-\mu_G)^\top` is added (:math:`\bar x` the sample mean).
        """
        idx = self.present_classes()
        n = self._counts[idx].to(torch.float64)
        mu = self.global_mean_of("samples")
        d = self._derived()["means"][idx] - mu
        total = (self._derived()["scatter"] + d.T @ (d * n[:, None])) / n.sum()
        if global_mean == "classes":
            s = mu - self.global_mean_of("classes")
            total = total + torch.outer(s, s)
        elif global_mean != "samples":
            raise ValueError(f"global_mean must be 'samples' or 'classes', got {global_mean!r}")
        return total

    def class_variance(self, ddof: int = 0) -> torch.Tensor:
        r"""Per-class variance ``[K]``.

        :math:`\sigma_c^2=\frac1{n_c-\mathrm{ddof}}\sum_{i\in c}\|x_i-\mu_c\|^2`.
        Returns ``[K]``; classes with no samples are NaN-free zeros (check :attr:`present`),
        and a class with :math:`n_c \le` ``ddof`` has :math:`\sigma_c^2 = 0`.
        """
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
        denom = (self._counts - ddof).to(torch.float64)
        m2 = self._derived()["class_m2"]
        return torch.where(denom > 0, m2 / denom.clamp(min=1), 0.0)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """State as tensors and plain values, loadable with ``torch.load(weights_only=True)``.

        Holds the reference-free statistics (format of state version 1: ``counts``, ``means``,
        ``scatter`` :math:`S_W`, ``class_m2``, ``unit_means``, ``unit_m2``, ``zero_norm`` and,
        with ``track_class_scatter``, ``class_scatter``), so the states of shards that chose
        different references compare and merge directly.
        """
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "num_classes": self.num_classes,
            "dim": self.dim,
            "track_class_scatter": self.track_class_scatter,
        }
        derived = self._derived()
        values = {"counts": self._counts, "zero_norm": self._zero_norm, **derived}
        for key in _TENSOR_KEYS:
            state[key] = values[key].detach().cpu().clone()
        if self._class_scatter is not None:
            state["class_scatter"] = derived["class_scatter"].detach().cpu().clone()
        return state

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], *, device: torch.device | str | None = None
    ) -> FeatureStats:
        r"""Rebuild from :meth:`state_dict`, checking keys, shapes and dtypes.

        The references become the class means (:math:`r_c = \mu_c`, :math:`s_c = 0`,
        :math:`P = S_W`): updates then continue exactly in that form.
        """
        read_state("FeatureStats", state, _STATE_VERSION, ["num_classes", "dim"])
        track = bool(state.get("track_class_scatter", False))
        k, d = _int_key(state, "num_classes"), _int_key(state, "dim")
        f64, i64 = torch.float64, torch.int64
        shapes = {
            "counts": ((k,), i64),
            "means": ((k, d), f64),
            "scatter": ((d, d), f64),
            "class_m2": ((k,), f64),
            "unit_means": ((k, d), f64),
            "unit_m2": ((k,), f64),
            "zero_norm": ((), i64),
            "class_scatter": ((k, d, d), f64),
        }
        keys = list(_TENSOR_KEYS) + (["class_scatter"] if track else [])
        read_state(
            "FeatureStats",
            state,
            _STATE_VERSION,
            ["num_classes", "dim", *keys],
            {key: shapes[key][0] for key in keys},
        )
        out = cls(k, d, device=device, track_class_scatter=track)
        vals: dict[str, torch.Tensor] = {}
        for key in keys:
            vals[key] = state[key].to(device=out.device, dtype=shapes[key][1]).clone()
        out._counts = vals["counts"]
        out._zero_norm = vals["zero_norm"]
        out._refs = torch.cat([vals["means"], vals["unit_means"]], dim=1)
        out._acc[:, 2 * d] = vals["class_m2"]
        out._acc[:, 2 * d + 1] = vals["unit_m2"]
        out._scatter = vals["scatter"]
        if track:
            out._class_scatter = vals["class_scatter"]
        return out

    def __repr__(self) -> str:
        return (
            f"FeatureStats(num_classes={self.num_classes}, dim={self.dim}, "
            f"samples={self.num_samples}, present={int(self.present.sum())}, "
            f"device={self.device})"
        )
