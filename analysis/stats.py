r"""One-pass, mergeable, float64 class statistics of a feature set.

:class:`FeatureStats` is the single source of every statistic geomtools reports: class counts
and means, the within-class, between-class and total covariances
:math:`\Sigma_W, \Sigma_B, \Sigma_T`, per-class variances, and the statistics of the
L2-normalised features that intra-class variability needs. It makes one pass over the data,
stores no :math:`N\times D` matrix (memory :math:`O(KD + D^2)`), and two instances built on
disjoint shards merge into the statistics of their union exactly (to float64 round-off), on one
process with :meth:`FeatureStats.merge` or across processes with :meth:`FeatureStats.all_reduce`.

Accuracy
--------
Raw one-pass moments :math:`E[xx^\top] - \mu\mu^\top` cancel catastrophically near neural
collapse (class offsets of 50, within-class spread of 1e-3 loses ~10 digits). Here every batch
is first centred on its own per-class means (an exact two-pass computation inside the batch)
and then combined with the running state by the pairwise update of Chan, Golub & LeVeque
(1979), applied per class and summed over classes:

.. math::

    S_W \leftarrow S_W + S_W^{(b)} + \sum_c \frac{n_c m_c}{n_c + m_c}\,
    \delta_c \delta_c^\top, \qquad \delta_c = \mu_c^{(b)} - \mu_c ,

where :math:`n_c`/:math:`m_c` are the class counts before/in the batch. Only the classes that
occur in the batch are touched (``torch.unique`` + ``index_add_``), so :math:`K = 32768` costs
no more than :math:`K = 10`.

Conventions (see ``CONVENTIONS.md`` and ``docs/conventions.md``)
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
T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise algorithm for
computing sample variances", Stanford CS tech. report STAN-CS-79-773, 1979.
V. Papyan, X. Y. Han, D. L. Donoho, "Prevalence of neural collapse during the terminal phase
of deep learning training", PNAS 117(40), 2020.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch

from analysis._checks import check_features, check_finite, check_labels

__all__ = ["EmptyClassWarning", "FeatureStats", "GlobalMean", "Within"]

GlobalMean = Literal["samples", "classes"]
Within = Literal["samples", "balanced"]

_STATE_VERSION = 1
_TENSOR_KEYS = ("counts", "means", "scatter", "class_m2", "unit_means", "unit_m2", "zero_norm")


class EmptyClassWarning(UserWarning):
    """Some classes have no samples; they are excluded from every metric."""


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
    >>> stats.within_cov.shape
    torch.Size([4, 4])

    Notes
    -----
    State (all float64 except the int64 counts): ``counts [K]``, class ``means [K, D]``, the
    pooled within-class scatter :math:`S_W=\sum_i (x_i-\mu_{y_i})(x_i-\mu_{y_i})^\top` ``[D, D]``,
    per-class scatter traces ``[K]``, and for the normalised features :math:`\hat x = x/\|x\|`
    their class means ``[K, D]`` and summed squared deviations ``[K]``. Rows of ``means`` for
    classes without samples are zero; use :attr:`present`.
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
        self._means = torch.zeros(num_classes, dim, dtype=f64, device=dev)
        self._scatter = torch.zeros(dim, dim, dtype=f64, device=dev)
        self._class_m2 = torch.zeros(num_classes, dtype=f64, device=dev)
        self._unit_means = torch.zeros(num_classes, dim, dtype=f64, device=dev)
        self._unit_m2 = torch.zeros(num_classes, dtype=f64, device=dev)
        self._zero_norm = torch.zeros((), dtype=torch.int64, device=dev)
        self._class_scatter: torch.Tensor | None = (
            torch.zeros(num_classes, dim, dim, dtype=f64, device=dev)
            if self.track_class_scatter
            else None
        )
        self._warned_empty: tuple[int, ...] | None = None
        self._work: torch.Tensor | None = None

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
        b = x_in.shape[0]
        # Reusable [B, D] float64 work buffers: repeated 16 MB allocations (page faults) cost
        # as much as the arithmetic on CPU. They are scratch space, not state.
        x, g, h = self._workspace(b)
        x.copy_(x_in)
        norms = torch.linalg.vector_norm(x, dim=1)
        if not bool(torch.isfinite(norms).all()):
            check_finite(x_in, "features")  # raises with NaN/Inf counts and rows
            amax = x.abs().amax(dim=1)  # finite but ‖x‖ overflowed: rescale
            norms = amax * torch.linalg.vector_norm(x / amax.clamp(min=1e-300)[:, None], dim=1)

        classes, inverse = torch.unique(y, return_inverse=True)
        u = classes.numel()
        m = torch.bincount(inverse, minlength=u).to(torch.float64)
        batch_means = torch.zeros(u, self.dim, dtype=torch.float64, device=x.device)
        batch_means.index_add_(0, inverse, x).div_(m[:, None])
        # Chan's merge adds Σ_c w_c δ_c δ_cᵀ, a U×D² product: cheap for few classes per batch,
        # as dear as the main GEMM when U ~ B (many classes). Then use the equivalent Welford
        # form S += Σ_i (x_i − μ_old)(x_i − μ_new)ᵀ, one B×D² GEMM and one more pass.
        welford = u * self.dim > 32 * b
        if welford:
            n = self._counts[classes].to(torch.float64)
            old = torch.where((n > 0)[:, None], self._means[classes], batch_means)
            new = old + (batch_means - old) * (m / (n + m))[:, None]
            torch.index_select(old, 0, inverse, out=h)
            h.sub_(x)  # μ_old[y] − x
            torch.index_select(new, 0, inverse, out=g)
            g.sub_(x)  # μ_new[y] − x
            batch_m2 = torch.zeros_like(m).index_add_(0, inverse, torch.linalg.vecdot(h, g))
            scatter_b = h.T @ g  # symmetric up to round-off; symmetrised when read
        else:
            torch.index_select(batch_means, 0, inverse, out=g)
            g.sub_(x)  # μ_b[y] − x: the batch centred on its own class means
            h = g
            batch_m2 = torch.zeros_like(m).index_add_(
                0, inverse, torch.linalg.vector_norm(g, dim=1).square()
            )
            scatter_b = g.T @ g
        class_scatter = None
        if self._class_scatter is not None:
            order = torch.argsort(inverse, stable=True)
            sizes = [int(v) for v in m.tolist()]
            pairs = zip(torch.split(h[order], sizes), torch.split(g[order], sizes), strict=True)
            class_scatter = torch.stack([a.T @ c for a, c in pairs])

        zero = norms == 0
        x.div_(torch.where(zero, torch.ones_like(norms), norms)[:, None])  # x is now x̂
        unit_means = torch.zeros_like(batch_means).index_add_(0, inverse, x).div_(m[:, None])
        torch.index_select(unit_means, 0, inverse, out=g)
        g.sub_(x)
        unit_m2 = torch.zeros_like(m).index_add_(
            0, inverse, torch.linalg.vector_norm(g, dim=1).square()
        )

        # Everything above is validated and computed; now merge into the state (Chan et al.).
        self._merge_classes(
            classes,
            m,
            batch_means,
            scatter_b,
            batch_m2,
            unit_means,
            unit_m2,
            class_scatter,
            delta_included=welford,
        )
        self._zero_norm += zero.sum()
        self._warned_empty = None

    def _workspace(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        buf = self._work
        if buf is None or buf.shape[1] < rows:
            buf = torch.empty(3, rows, self.dim, dtype=torch.float64, device=self.device)
            self._work = buf
        return buf[0, :rows], buf[1, :rows], buf[2, :rows]

    def _merge_classes(
        self,
        classes: torch.Tensor,
        m: torch.Tensor,
        means_b: torch.Tensor,
        scatter_b: torch.Tensor,
        m2_b: torch.Tensor,
        unit_means_b: torch.Tensor,
        unit_m2_b: torch.Tensor,
        class_scatter_b: torch.Tensor | None,
        *,
        delta_included: bool = False,
    ) -> None:
        """Chan-merge per-class statistics of a second sample (counts ``m``) into the state.

        ``delta_included``: ``scatter_b``, ``m2_b`` and ``class_scatter_b`` already hold the
        full increments (Welford form), so the mean-shift terms are not added again.
        """
        n = self._counts[classes].to(torch.float64)
        total = n + m
        w = n * m / total  # 0 for classes seen for the first time
        delta = means_b - self._means[classes]
        udelta = unit_means_b - self._unit_means[classes]
        self._scatter += scatter_b
        self._unit_m2[classes] += unit_m2_b + w * udelta.square().sum(dim=1)
        if delta_included:
            self._class_m2[classes] += m2_b
            if self._class_scatter is not None and class_scatter_b is not None:
                self._class_scatter[classes] += class_scatter_b
        else:
            self._scatter.addmm_(delta.T, delta * w[:, None])
            self._class_m2[classes] += m2_b + w * delta.square().sum(dim=1)
            if self._class_scatter is not None and class_scatter_b is not None:
                outer = delta[:, :, None] * (delta * w[:, None])[:, None, :]
                self._class_scatter[classes] += class_scatter_b + outer
        ratio = (m / total)[:, None]
        self._means[classes] += delta * ratio
        self._unit_means[classes] += udelta * ratio
        self._counts[classes] += m.to(torch.int64)

    @torch.no_grad()
    def merge(self, other: FeatureStats) -> FeatureStats:
        """Merge ``other`` into ``self`` in place; returns ``self``.

        The result equals one pass over the union of both data sets to float64 round-off
        (pairwise update of Chan, Golub & LeVeque 1979), whatever the split or merge order.
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
        classes = torch.nonzero(other._counts > 0).flatten().to(self.device)
        if classes.numel() == 0:
            return self
        src = other._counts.to(self.device)
        cs = None
        if self._class_scatter is not None and other._class_scatter is not None:
            cs = other._class_scatter.to(self.device)[classes]
        self._merge_classes(
            classes,
            src[classes].to(torch.float64),
            other._means.to(self.device)[classes],
            other._scatter.to(self.device),
            other._class_m2.to(self.device)[classes],
            other._unit_means.to(self.device)[classes],
            other._unit_m2.to(self.device)[classes],
            cs,
        )
        self._zero_norm += other._zero_norm.to(self.device)
        self._warned_empty = None
        return self

    @torch.no_grad()
    def all_reduce(self, group: Any = None) -> FeatureStats:
        r"""Combine the statistics of every rank of ``torch.distributed``; returns ``self``.

        Every rank ends with the statistics of the union of all ranks' data. Uses two SUM
        all-reduces of size :math:`O(KD + D^2)` (no gather of ``world_size`` copies): first the
        counts and class sums give the global class means :math:`\mu_c^*`; then each rank
        re-centres its scatter on them (parallel-axis theorem,
        :math:`S_r + \sum_c n_{c,r}(\mu_{c,r}-\mu_c^*)(\mu_{c,r}-\mu_c^*)^\top`, exact and
        well conditioned because it only adds small corrections) and the results are summed.

        Parameters
        ----------
        group : ProcessGroup, optional
            Process group (default: the world).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialised; call init_process_group")
        n = self._counts.to(torch.float64)
        counts = self._counts.clone()
        dist.all_reduce(counts, group=group)
        sums = torch.cat([self._means * n[:, None], self._unit_means * n[:, None]], dim=1)
        dist.all_reduce(sums, group=group)
        denom = counts.clamp(min=1).to(torch.float64)[:, None]
        means, unit_means = (sums / denom).split(self.dim, dim=1)
        d = self._means - means
        ud = self._unit_means - unit_means
        scatter = self._scatter + d.T @ (d * n[:, None])
        class_m2 = self._class_m2 + n * d.square().sum(dim=1)
        unit_m2 = self._unit_m2 + n * ud.square().sum(dim=1)
        flat = [scatter.flatten(), class_m2, unit_m2]
        if self._class_scatter is not None:
            outer = d[:, :, None] * (d * n[:, None])[:, None, :]
            flat.append((self._class_scatter + outer).flatten())
        packed = torch.cat(flat)
        dist.all_reduce(packed, group=group)
        zero = self._zero_norm.clone()
        dist.all_reduce(zero, group=group)
        d2, k = self.dim * self.dim, self.num_classes
        self._scatter = packed[:d2].view(self.dim, self.dim).clone()
        self._class_m2 = packed[d2 : d2 + k].clone()
        self._unit_m2 = packed[d2 + k : d2 + 2 * k].clone()
        if self._class_scatter is not None:
            self._class_scatter = packed[d2 + 2 * k :].view(k, self.dim, self.dim).clone()
        self._counts, self._means, self._unit_means = counts, means.clone(), unit_means.clone()
        self._zero_norm = zero
        self._warned_empty = None
        return self

    def reset(self) -> None:
        """Forget all data (state back to zeros)."""
        self.__init__(  # type: ignore[misc]
            self.num_classes,
            self.dim,
            device=self.device,
            track_class_scatter=self.track_class_scatter,
        )

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
        return self._means.clone()

    @property
    def unit_means(self) -> torch.Tensor:
        r"""Class means of the normalised features :math:`\hat m_c` ``[K, D]``."""
        return self._unit_means.clone()

    @property
    def unit_sq_dev(self) -> torch.Tensor:
        r"""Per-class :math:`\sum_{i\in c}\|\hat x_i - \hat m_c\|^2` ``[K]``."""
        return self._unit_m2.clone()

    @property
    def within_scatter(self) -> torch.Tensor:
        r"""Pooled within-class scatter :math:`\sum_i (x_i-\mu_{y_i})(x_i-\mu_{y_i})^\top`."""
        return self._symmetric_scatter()

    def _symmetric_scatter(self) -> torch.Tensor:
        # The Welford-form update adds (x−μ_old)ᵀ(x−μ_new), symmetric only up to round-off;
        # symmetrising once when read is cheaper than once per batch (a strided D×D pass).
        return (self._scatter + self._scatter.T) / 2

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
        if global_mean == "samples":
            n = self._counts[idx].to(torch.float64)
            return (n[:, None] * self._means[idx]).sum(0) / n.sum()
        if global_mean == "classes":
            return self._means[idx].mean(0)
        raise ValueError(f"global_mean must be 'samples' or 'classes', got {global_mean!r}")

    @property
    def global_mean(self) -> torch.Tensor:
        r"""Sample-weighted global mean :math:`\mu_G = \frac1N\sum_i x_i` ``[D]``."""
        return self.global_mean_of("samples")

    def centered_means(self, global_mean: GlobalMean = "samples") -> torch.Tensor:
        r"""Centred means :math:`M_c` ``[K', D]``, rows :math:`\mu_c-\mu_G` of present classes."""
        idx = self.present_classes()
        return self._means[idx] - self.global_mean_of(global_mean)

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
            return self._symmetric_scatter() / self.num_samples
        if within == "balanced":
            if self._class_scatter is None:
                raise ValueError(
                    "within='balanced' needs per-class scatter matrices: build the "
                    "FeatureStats with track_class_scatter=True"
                )
            n = self._counts[idx].to(torch.float64)
            cov = (self._class_scatter[idx] / n[:, None, None]).mean(0)
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
        d = self._means[idx] - mu
        total = (self._symmetric_scatter() + d.T @ (d * n[:, None])) / n.sum()
        if global_mean == "classes":
            s = mu - self.global_mean_of("classes")
            total = total + torch.outer(s, s)
        elif global_mean != "samples":
            raise ValueError(f"global_mean must be 'samples' or 'classes', got {global_mean!r}")
        return total

    @property
    def within_cov(self) -> torch.Tensor:
        r""":math:`\Sigma_W` with the default convention (sample-weighted)."""
        return self.within_covariance()

    @property
    def between_cov(self) -> torch.Tensor:
        r""":math:`\Sigma_B` with the default convention (sample-weighted global mean)."""
        return self.between_covariance()

    @property
    def total_cov(self) -> torch.Tensor:
        r""":math:`\Sigma_T` with the default convention (sample-weighted global mean)."""
        return self.total_covariance()

    def class_variance(self, ddof: int = 0) -> torch.Tensor:
        r"""Per-class variance ``[K]``.

        :math:`\sigma_c^2=\frac1{n_c-\mathrm{ddof}}\sum_{i\in c}\|x_i-\mu_c\|^2`.
        Returns ``[K]``; classes with no samples are NaN-free zeros (check :attr:`present`),
        and a class with :math:`n_c \le` ``ddof`` has :math:`\sigma_c^2 = 0`.
        """
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
        denom = (self._counts - ddof).to(torch.float64)
        return torch.where(denom > 0, self._class_m2 / denom.clamp(min=1), 0.0)

    @property
    def class_variances(self) -> torch.Tensor:
        r""":math:`\sigma_c^2` ``[K]`` with ``ddof=0``."""
        return self.class_variance(0)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """State as tensors and plain values, loadable with ``torch.load(weights_only=True)``."""
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "num_classes": self.num_classes,
            "dim": self.dim,
            "track_class_scatter": self.track_class_scatter,
        }
        for key in _TENSOR_KEYS:
            state[key] = getattr(self, f"_{key}").detach().cpu().clone()
        if self._class_scatter is not None:
            state["class_scatter"] = self._class_scatter.detach().cpu().clone()
        return state

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], *, device: torch.device | str | None = None
    ) -> FeatureStats:
        """Rebuild from :meth:`state_dict`, checking keys, shapes and dtypes."""
        missing = [k for k in ("num_classes", "dim", *_TENSOR_KEYS) if k not in state]
        if missing:
            raise ValueError(f"FeatureStats state_dict is missing keys {missing}")
        if state.get("version", _STATE_VERSION) != _STATE_VERSION:
            raise ValueError(f"unsupported FeatureStats state version {state.get('version')}")
        track = bool(state.get("track_class_scatter", False))
        out = cls(
            int(state["num_classes"]), int(state["dim"]), device=device, track_class_scatter=track
        )
        keys = list(_TENSOR_KEYS) + (["class_scatter"] if track else [])
        for key in keys:
            if key not in state:
                raise ValueError(f"FeatureStats state_dict is missing key {key!r}")
            ref = getattr(out, f"_{key}")
            val = state[key]
            if not isinstance(val, torch.Tensor) or val.shape != ref.shape:
                shape = tuple(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__
                raise ValueError(f"state {key!r}: expected shape {tuple(ref.shape)}, got {shape}")
            setattr(out, f"_{key}", val.to(device=out.device, dtype=ref.dtype).clone())
        return out

    def __repr__(self) -> str:
        return (
            f"FeatureStats(num_classes={self.num_classes}, dim={self.dim}, "
            f"samples={self.num_samples}, present={int(self.present.sum())}, "
            f"device={self.device})"
        )
