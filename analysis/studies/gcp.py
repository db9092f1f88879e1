r"""Global covariance pooling: Newton–Schulz against the exact eigendecomposition root.

Papers
------
P. Li, J. Xie, Q. Wang, Z. Gao. Towards faster training of global covariance pooling networks
by iterative matrix square root normalization (iSQRT-COV). CVPR 2018.
Y. Song, N. Sebe, W. Wang. Why approximate matrix square root outperforms accurate SVD in
global covariance pooling? ICCV 2021.

Set-up
------
MNIST-1D (:func:`analysis.studies.data.mnist1d`, 4000 train / 1000 test signals of length 40,
data seed 42 for every training seed). The network (:class:`GCPNet`) is a 1-D CNN,
Conv1d(1→32, 5, pad 2) · ReLU · Conv1d(32→32, 3, stride 2, pad 1) · ReLU ·
Conv1d(32→32, 3, pad 1) · ReLU, whose last feature map ``[B, 32, 20]`` (20 positions, one
stride of the MNIST-1D CNN instead of three so that the 16×16 covariance can have full rank)
goes through :class:`geomtools.nn.CovariancePooling` with its 1×1 reduction to 16 channels
(Conv · BatchNorm · ReLU), a matrix square root, the upper triangle (136 numbers) and a linear
classifier. Trained with :class:`geomtools.optim.RiemannianAdamW` (lr ``lr``, weight decay
``weight_decay``, cosine schedule), batch 128, cross-entropy; seed ``s`` seeds the weights and
the batch order.

Variants (the square root and its gradient)

============== ==================================================================================
ns5            ``method="newton_schulz"``, 5 iterations (iSQRT-COV), autograd through them
eigh-exact     ``method="eigh"``, ``backward="exact"``: the toolkit's closed-form
               Daleckii–Krein kernel :math:`1/(\sqrt{\lambda_i}+\sqrt{\lambda_j})`
eigh-autograd  reference, *not a toolkit option*: :math:`U\operatorname{diag}(\sqrt\lambda)U^\top`
               with autograd through ``torch.linalg.eigh``, i.e. the
               :math:`1/(\lambda_i-\lambda_j)` kernel of SVD back-propagation that Song et al.
               call the exact (SVD) gradient; eigenvalues floored at
               :math:`10^{-12}\lambda_{max}` like the toolkit's derivative
eigh-taylor    ``backward="taylor"``, degree 2 (Song et al.'s SVD-Taylor)
eigh-pade      ``backward="pade"``, degree 2, ``gap_eps`` 1e-3 (SVD-Padé)
eigh-clip      ``backward="clip"``, ``gap_eps`` 1e-3 (the gap kernel clipped at 1/ε)
hybrid         ``switch_epoch``: ns5 for the first half of the epochs, then eigh-exact
hybrid-pade    ns5 for the first half of the epochs, then eigh-pade (Song et al.'s
               hybrid protocol with their Padé meta-layer)
============== ==================================================================================

Per step (measured, never fed back into training except for the non-finite rule below)

* **gradient norm** :math:`g_t = \lVert\partial L/\partial X\rVert_F` of the batch's mean
  cross-entropy with respect to the covariance input :math:`X` ``[B, 16, 20, 1]`` (the
  output of the pooling layer's own 1×1 reduction, i.e. what the square root's backward
  reaches first), read by a tensor hook;
* **minimum relative eigen-gap** of the batch: with :math:`\lambda_1\le\dots\le\lambda_C`
  the float64 ``torch.linalg.eigvalsh`` eigenvalues of sample :math:`b`'s covariance
  :math:`\Sigma_b` (before the root),
  :math:`\operatorname{gap}_t=\min_b\min_i(\lambda_{i+1}-\lambda_i)/\lambda_C` (0 when two
  eigenvalues coincide, e.g. two channels that are zero at every position);
* **minimum relative eigenvalue** :math:`\min_b \lambda_1/\lambda_C`;
* **close share**: the fraction of the batch's samples whose own smallest relative gap is
  below 1e-6.
* A **spike**: :math:`g_t` non-finite, or :math:`g_t > 10\times` the median of the same run's
  previous (at most 50) finite gradient norms, once there are at least 10 of them. Fixed
  before the full run.
* A step whose gradient has a non-finite entry is **skipped** (no optimiser step, as a loss
  scaler does), counted in ``nonfinite``; it is always a spike.

Per-epoch rows (``seed, variant, epoch, split, metric, value``): ``test``/``accuracy``,
``train``/``loss`` (mean over the epoch's batches, finite ones), ``train``/``grad_norm_median``
and ``grad_norm_max`` (over the epoch's finite :math:`g_t`; NaN when none is finite),
``train``/``spikes``, ``nonfinite``, ``min_gap``, ``min_eig`` (minima over the epoch's steps)
and ``close_share`` (mean over its steps). At the last epoch the last
checkpoint of every run goes through :meth:`~analysis.studies.study.StudyContext.analyze`
(the toolkit's pipeline) at the classifier's input (the 136 pooled numbers); its ``nc1``,
``effective_rank_total`` and ``accuracy`` (as ``pipeline_accuracy``, a check of the training
loop's own test accuracy) rows on both splits are copied into the CSV.

Decision rules (fixed before the full run; mean over seeds of the last epoch's test accuracy)

1. *Newton–Schulz trains at least as well as the exact root with its exact gradient*:
   ``acc(ns5) ≥ acc(E) − 0.01`` for both exact-gradient variants
   E ∈ {eigh-exact, eigh-autograd}.
2. *The exact gradient is ill-behaved when eigenvalues come close*: for at least one E of
   those two, its spikes summed over seeds and epochs are ≥ 3 and more than twice those of
   ns5, and at ≥ 90 % of its spike steps the batch's minimum relative eigen-gap is below
   1e-6 (eigenvalues close).
3. *A smoothed backward (Taylor or Padé) or the hybrid protocol closes the gap*: there is a
   gap — the worse of the two exact-gradient variants trails ns5 by more than 1 point — and
   at least one V ∈ {eigh-taylor, eigh-pade, hybrid, hybrid-pade} has
   ``acc(V) ≥ acc(ns5) − 0.01`` and at most half the spikes of that exact variant. With no gap
   the claim has nothing to close and is *not reproduced at this scale*.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from analysis.studies.study import Claim, StudyContext, StudyResult, last_epoch_values, row

if TYPE_CHECKING:
    from geomtools.nn import CovariancePooling

__all__ = [
    "CLAIM",
    "FULL",
    "NAME",
    "PAPER",
    "QUICK",
    "TITLE",
    "VARIANTS",
    "AutogradEighPooling",
    "GCPNet",
    "Settings",
    "SpikeCounter",
    "claims",
    "eigen_gap",
    "run",
    "settings",
]

NAME = "gcp"
TITLE = "Global covariance pooling: Newton–Schulz vs the exact matrix square root"
CLAIM = (
    "A Newton–Schulz matrix square root with a few iterations trains global covariance pooling "
    "at least as well as the exact eigendecomposition root, whose exact gradient is "
    "ill-behaved when eigenvalues come close; a smoothed backward (Taylor, Padé) or a hybrid "
    "NS-then-exact protocol closes the gap."
)
PAPER = (
    "Li, Xie, Wang, Gao, iSQRT-COV, CVPR 2018; Song, Sebe, Wang, 'Why approximate matrix "
    "square root outperforms accurate SVD in global covariance pooling?', ICCV 2021"
)

#: every variant, in the order of tables and legends
VARIANTS: tuple[str, ...] = (
    "ns5",
    "eigh-exact",
    "eigh-autograd",
    "eigh-taylor",
    "eigh-pade",
    "eigh-clip",
    "hybrid",
    "hybrid-pade",
)
EXACT = ("eigh-exact", "eigh-autograd")
REMEDIES = ("eigh-taylor", "eigh-pade", "hybrid", "hybrid-pade")
TOLERANCE = 0.01  # one accuracy point
CLOSE_GAP = 1e-6  # relative eigen-gap below which eigenvalues count as close
CLOSE_FRACTION = 0.9
NUM_CLASSES = 10
LENGTH = 40
#: metrics of the toolkit's analysis copied into the CSV (``accuracy`` as ``pipeline_accuracy``)
ANALYSIS_METRICS = {
    "nc1": "nc1",
    "effective_rank_total": "effective_rank_total",
    "accuracy": "pipeline_accuracy",
}


@dataclass(frozen=True)
class Settings:
    """Everything a run of the study depends on besides the seeds.

    Attributes
    ----------
    epochs : int
        Training epochs per run.
    switch_epoch : int
        First epoch (1-based) of the eigh phase of the hybrid variants.
    num_samples : int
        MNIST-1D signals in total (80 % train).
    batch_size, lr, weight_decay : int, float, float
        Optimisation (RiemannianAdamW, cosine schedule over ``epochs``).
    channels, reduce_dim : int
        Backbone channels and the pooling layer's 1×1 reduction (covariance size).
    spike_factor, spike_window, spike_history : float, int, int
        A spike is :math:`g_t >` ``spike_factor`` × the median of the previous
        ``spike_window`` finite norms of the run, once ``spike_history`` exist.
    variants : tuple of str
        Subset of :data:`VARIANTS` to train.
    analyze : bool
        Run the toolkit's analysis on the last checkpoints.
    """

    epochs: int
    switch_epoch: int
    num_samples: int = 5000
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    channels: int = 32
    reduce_dim: int = 16
    spike_factor: float = 10.0
    spike_window: int = 50
    spike_history: int = 10
    variants: tuple[str, ...] = VARIANTS
    analyze: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"gcp: epochs must be ≥ 1, got {self.epochs}")
        if not 1 <= self.switch_epoch <= self.epochs:
            raise ValueError(
                f"gcp: switch_epoch must be in 1..epochs={self.epochs}, got {self.switch_epoch}"
            )
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"gcp: unknown variants {unknown}; choose from {VARIANTS}")
        if self.batch_size < 2 or self.channels < 1 or self.reduce_dim < 2:
            raise ValueError("gcp: batch_size ≥ 2, channels ≥ 1 and reduce_dim ≥ 2 needed")
        if not (self.spike_factor > 1 and self.spike_window >= 1 and self.spike_history >= 1):
            raise ValueError("gcp: spike_factor > 1, spike_window ≥ 1, spike_history ≥ 1 needed")


#: quick mode: one seed by default, 12 epochs (~5 s per run)
QUICK = Settings(epochs=12, switch_epoch=7)
#: full mode: 40 epochs, eigh from epoch 21 in the hybrids
FULL = Settings(epochs=40, switch_epoch=21)


def settings(ctx: StudyContext) -> Settings:
    """:data:`QUICK` or :data:`FULL`, after the context's mode."""
    return QUICK if ctx.quick else FULL


# ---------------------------------------------------------------------------- model
class AutogradEighPooling(nn.Module):
    r"""Covariance pooling whose root is differentiated by autograd through ``eigh``.

    Wraps a :class:`geomtools.nn.CovariancePooling` (its reduction and covariance) and replaces
    the toolkit's root by :math:`U\operatorname{diag}(\sqrt{\max(\lambda,\epsilon\lambda_{max})})
    U^\top` from ``torch.linalg.eigh`` in float64, so the backward is PyTorch's eigh gradient
    with its :math:`1/(\lambda_i-\lambda_j)` factor — the SVD back-propagation that Song et al.
    (ICCV 2021) compare Newton–Schulz against. A reference for the study, not a toolkit
    option.

    Parameters
    ----------
    pool : geomtools.nn.CovariancePooling
        Provides ``reduce``, ``covariance`` and ``channels``.
    eps : float
        Relative eigenvalue floor (the toolkit's default for its derivative).
    """

    def __init__(self, pool: CovariancePooling, eps: float = 1e-12) -> None:
        super().__init__()
        self.pool = pool
        self.eps = float(eps)

    def covariance(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample float64 covariance ``[B, C, C]`` (the wrapped layer's)."""
        return self.pool.covariance(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` → ``[B, C(C+1)/2]``: reduce, covariance, eigh root, triangle."""
        if self.pool.reduce is not None:
            x = self.pool.reduce(x)
        cov = self.covariance(x)
        lam, u = torch.linalg.eigh(cov)
        floor = self.eps * lam.amax(-1, keepdim=True).clamp(min=torch.finfo(lam.dtype).tiny)
        root = (u * lam.clamp(min=floor).sqrt()[..., None, :]) @ u.mT
        c = self.pool.channels
        rows, cols = torch.triu_indices(c, c, device=root.device)
        return root[:, rows, cols].to(x.dtype)


class GCPNet(nn.Module):
    """1-D CNN → covariance pooling → linear classifier (module docstring).

    Parameters
    ----------
    variant : str
        One of :data:`VARIANTS`.
    channels, reduce_dim : int
        Backbone channels and covariance size.
    switch_epoch : int
        First eigh epoch of the hybrid variants (ignored by the others).
    """

    def __init__(
        self, variant: str, *, channels: int = 32, reduce_dim: int = 16, switch_epoch: int = 1
    ) -> None:
        super().__init__()
        from geomtools.nn import CovariancePooling

        if variant not in VARIANTS:
            raise ValueError(f"gcp: unknown variant {variant!r}; choose from {VARIANTS}")
        self.variant = variant
        self.backbone = nn.Sequential(
            nn.Unflatten(1, (1, LENGTH)),
            nn.Conv1d(1, channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Unflatten(2, (LENGTH // 2, 1)),  # [B, C, 20, 1]: CovariancePooling wants 4-D
        )
        kind = variant.removeprefix("eigh-")
        pool: nn.Module
        if variant == "ns5":
            pool = CovariancePooling(channels, reduce_dim=reduce_dim, method="newton_schulz")
        elif variant in ("hybrid", "hybrid-pade"):
            pool = CovariancePooling(
                channels,
                reduce_dim=reduce_dim,
                method="newton_schulz",
                backward="pade" if variant == "hybrid-pade" else "exact",
                switch_epoch=switch_epoch,
            )
        elif variant == "eigh-autograd":
            pool = AutogradEighPooling(CovariancePooling(channels, reduce_dim=reduce_dim))
        else:
            pool = CovariancePooling(
                channels,
                reduce_dim=reduce_dim,
                method="eigh",
                backward=kind,  # type: ignore[arg-type]
            )
        self.pool = pool
        self.head = nn.Linear(reduce_dim * (reduce_dim + 1) // 2, NUM_CLASSES)

    @property
    def covpool(self) -> CovariancePooling:
        """The toolkit's pooling layer (inside :class:`AutogradEighPooling` for that variant)."""
        from geomtools.nn import CovariancePooling

        pool = self.pool.pool if isinstance(self.pool, AutogradEighPooling) else self.pool
        assert isinstance(pool, CovariancePooling)
        return pool

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the pooling layer (drives the hybrid switch)."""
        self.covpool.set_epoch(epoch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 10]`` of signals ``[B, 40]``."""
        return self.head(self.pool(self.backbone(x)))


def build_model(variant: str, s: Settings) -> GCPNet:
    """A fresh :class:`GCPNet` for ``variant`` with the settings' sizes (epoch 0).

    A hybrid's epoch is a buffer in :class:`geomtools.nn.CovariancePooling`'s state dict, so
    loading a checkpoint saved past the switch restores the eigh root it was trained with.
    """
    return GCPNet(
        variant, channels=s.channels, reduce_dim=s.reduce_dim, switch_epoch=s.switch_epoch
    )


# ---------------------------------------------------------------------------- measurement
def eigen_gap(cov: torch.Tensor, close: float = 1e-6) -> tuple[float, float, float]:
    r"""Minimum relative eigen-gap, minimum relative eigenvalue, share of near-degenerate samples.

    With :math:`\lambda_1\le\dots\le\lambda_C` the float64 eigenvalues of each
    :math:`\Sigma_b`,

    .. math:: \operatorname{gap} = \min_b \min_{1\le i<C}
              \frac{\lambda_{i+1}-\lambda_i}{\lambda_C},\qquad
              \operatorname{low} = \min_b \frac{\lambda_1}{\lambda_C}

    (:math:`\lambda_C` floored at the smallest positive float64), and the share of the batch's
    samples whose own smallest relative gap is below ``close``.

    Parameters
    ----------
    cov : Tensor ``[B, C, C]``
        Symmetric matrices, ``C ≥ 2``.
    close : float
        Relative gap below which two eigenvalues count as close.

    Returns
    -------
    (float, float, float)
        ``gap``, ``low``, ``share``.
    """
    if cov.ndim != 3 or cov.shape[-1] != cov.shape[-2] or cov.shape[-1] < 2:
        raise ValueError(f"eigen_gap: expected [B, C, C] with C ≥ 2, got {list(cov.shape)}")
    lam = torch.linalg.eigvalsh(cov.detach().to(torch.float64))
    top = lam[:, -1:].clamp(min=torch.finfo(torch.float64).tiny)
    per_sample = ((lam[:, 1:] - lam[:, :-1]) / top).amin(-1)
    low = (lam[:, :1] / top).amin()
    share = (per_sample < close).double().mean()
    return float(per_sample.amin()), float(low), float(share)


class SpikeCounter:
    """Running spike detector of one run (module docstring).

    ``update(g)`` returns whether ``g`` is a spike: non-finite, or greater than ``factor``
    times the median of the previous ``window`` finite values once ``history`` exist.
    """

    def __init__(self, factor: float = 10.0, window: int = 50, history: int = 10) -> None:
        if not (factor > 1 and window >= 1 and history >= 1):
            raise ValueError("SpikeCounter: factor > 1, window ≥ 1 and history ≥ 1 needed")
        self.factor = float(factor)
        self.window = int(window)
        self.history = int(history)
        self._past: list[float] = []

    def update(self, g: float) -> bool:
        """Classify ``g`` and, when finite, add it to the history."""
        if not math.isfinite(g):
            return True
        past = self._past[-self.window :]
        spike = len(past) >= self.history and g > self.factor * float(np.median(past))
        self._past.append(float(g))
        return spike


@dataclass
class _Step:
    loss: float
    grad: float
    gap: float
    low: float
    share: float
    spike: bool
    finite: bool


def _train_run(
    variant: str,
    seed: int,
    s: Settings,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ctx: StudyContext,
) -> tuple[list[dict[str, Any]], list[_Step]]:
    """Train one (variant, seed); per-epoch rows and every step's measurements."""
    from geomtools.optim import RiemannianAdamW

    torch.manual_seed(seed)
    model = build_model(variant, s)
    opt = RiemannianAdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.epochs)
    gen = torch.Generator().manual_seed(seed)
    x, y = splits["train"]
    x_te, y_te = splits["test"]
    pool = model.covpool
    assert pool.reduce is not None
    reduce = pool.reduce
    grads: list[float] = []
    gaps: list[tuple[float, float, float]] = []

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        if not out.requires_grad:
            return
        gaps.append(eigen_gap(pool.covariance(out.detach()), CLOSE_GAP))
        out.register_hook(lambda g: grads.append(float(g.detach().double().norm())))

    handle = reduce.register_forward_hook(hook)
    spikes = SpikeCounter(s.spike_factor, s.spike_window, s.spike_history)
    rows: list[dict[str, Any]] = []
    steps: list[_Step] = []

    def add(epoch: int, split: str, metric: str, value: float) -> None:
        rows.append(row(seed, variant, epoch, split, metric, value))

    try:
        for epoch in ctx.bar(range(1, s.epochs + 1), f"gcp {variant} s{seed}", total=s.epochs):
            model.set_epoch(epoch)
            model.train()
            perm = torch.randperm(len(y), generator=gen)
            epoch_steps: list[_Step] = []
            for i in range(0, len(y), s.batch_size):
                idx = perm[i : i + s.batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                finite = all(
                    bool(torch.isfinite(p.grad).all())
                    for p in model.parameters()
                    if p.grad is not None
                )
                if finite:
                    opt.step()
                g = grads.pop() if grads else math.nan
                gap, low, share = gaps.pop()
                epoch_steps.append(
                    _Step(float(loss.detach()), g, gap, low, share, spikes.update(g), finite)
                )
                grads.clear()
                gaps.clear()
            sched.step()
            model.eval()
            with torch.no_grad():
                acc = float((model(x_te).argmax(1) == y_te).double().mean())
            finite_g = [st.grad for st in epoch_steps if math.isfinite(st.grad)]
            losses = [st.loss for st in epoch_steps if math.isfinite(st.loss)]
            add(epoch, "test", "accuracy", acc)
            add(epoch, "train", "loss", float(np.mean(losses)) if losses else math.nan)
            add(epoch, "train", "grad_norm_median", _median(finite_g))
            add(epoch, "train", "grad_norm_max", max(finite_g) if finite_g else math.nan)
            add(epoch, "train", "spikes", float(sum(st.spike for st in epoch_steps)))
            add(epoch, "train", "nonfinite", float(sum(not st.finite for st in epoch_steps)))
            add(epoch, "train", "min_gap", min(st.gap for st in epoch_steps))
            add(epoch, "train", "min_eig", min(st.low for st in epoch_steps))
            add(epoch, "train", "close_share", float(np.mean([st.share for st in epoch_steps])))
            steps += epoch_steps
    finally:
        handle.remove()
    ctx.save_checkpoint(model, variant, seed, s.epochs)
    return rows, steps


def _share(steps: Sequence[_Step], spike: bool) -> str:
    vals = [st.share for st in steps if st.spike == spike]
    return f"{np.mean(vals):.2f}" if vals else "—"


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64))) if values else math.nan


# ---------------------------------------------------------------------------- claims
def _mean(values: dict[int, float]) -> float:
    vals = np.asarray(list(values.values()), dtype=np.float64)
    return float(vals.mean()) if vals.size else math.nan


def claims(
    accuracy: dict[str, float],
    spikes: dict[str, int],
    close_fraction: dict[str, float],
) -> list[Claim]:
    """The three verdicts from the numbers the decision rules read (module docstring).

    Parameters
    ----------
    accuracy : dict
        Variant → mean over seeds of the last epoch's test accuracy (in [0, 1]).
    spikes : dict
        Variant → spikes summed over seeds and epochs.
    close_fraction : dict
        Variant → fraction of its spike steps whose minimum relative eigen-gap is below
        :data:`CLOSE_GAP` (NaN without spikes).

    Returns
    -------
    list of Claim
        Claims 1–3; a claim whose variants were not trained is not reproduced (says so).
    """
    need = {"ns5", *EXACT}
    missing = sorted(need - set(accuracy))
    if missing:
        why = (
            f"(variants {', '.join(missing)} not trained; rule: every claim compares ns5 with "
            "eigh-exact and eigh-autograd)"
        )
        return [
            Claim("Newton–Schulz trains at least as well as the exact root.", False, why),
            Claim("The exact gradient is ill-behaved when eigenvalues come close.", False, why),
            Claim("A smoothed backward or the hybrid protocol closes the gap.", False, why),
        ]
    ns = accuracy["ns5"]
    # 1
    ok1 = all(ns >= accuracy[e] - TOLERANCE for e in EXACT)
    ev1 = (
        f"(mean test top-1: ns5 {ns:.3f} vs eigh-exact {accuracy['eigh-exact']:.3f}, "
        f"eigh-autograd {accuracy['eigh-autograd']:.3f}; rule: ns5 ≥ each − 0.01)"
    )
    # 2
    parts = []
    ok2 = False
    for e in EXACT:
        frac = close_fraction.get(e, math.nan)
        many = spikes[e] >= 3 and spikes[e] > 2 * spikes["ns5"]
        close = math.isfinite(frac) and frac >= CLOSE_FRACTION
        ok2 = ok2 or (many and close)
        frac_txt = f"{frac:.0%}" if math.isfinite(frac) else "—"
        parts.append(f"{e} {spikes[e]} spikes ({frac_txt} at a gap < {CLOSE_GAP:g})")
    ev2 = (
        f"({'; '.join(parts)}; ns5 {spikes['ns5']} spikes; rule: for one exact variant ≥ 3 "
        f"spikes, > 2× ns5's, and ≥ {CLOSE_FRACTION:.0%} of them at a relative eigen-gap "
        f"< {CLOSE_GAP:g})"
    )
    # 3
    worst = min(EXACT, key=lambda e: (accuracy[e], e))
    gap = ns - accuracy[worst]
    remedies = [v for v in REMEDIES if v in accuracy]
    closing = [
        v
        for v in remedies
        if accuracy[v] >= ns - TOLERANCE and spikes.get(v, 0) <= spikes[worst] / 2
    ]
    ok3 = gap > TOLERANCE and bool(closing)
    rem = ", ".join(f"{v} {accuracy[v]:.3f} ({spikes.get(v, 0)} spikes)" for v in remedies)
    if gap <= TOLERANCE:
        head = f"no gap to close: worst exact variant {worst} trails ns5 by {gap:+.3f}; "
    else:
        head = f"gap {gap:.3f} ({worst} {accuracy[worst]:.3f}, {spikes[worst]} spikes); "
    ev3 = (
        f"({head}{rem}; closing: {', '.join(closing) or 'none'}; rule: gap > 0.01 and some "
        "remedy ≥ ns5 − 0.01 with ≤ half the exact variant's spikes)"
    )
    return [
        Claim(
            "Newton–Schulz (5 iterations) trains at least as well as the exact eigh root with "
            "its exact gradient.",
            ok1,
            ev1,
        ),
        Claim("The exact gradient is ill-behaved when eigenvalues come close.", ok2, ev2),
        Claim(
            "A smoothed backward (Taylor or Padé) or the hybrid NS-then-exact protocol closes "
            "the gap.",
            ok3,
            ev3,
        ),
    ]


# ---------------------------------------------------------------------------- analysis
def _loaders(
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, Any]:
    from torch.utils.data import DataLoader, TensorDataset

    return {
        k: DataLoader(TensorDataset(*xy), batch_size=500, shuffle=False) for k, xy in splits.items()
    }


def _analyze(
    ctx: StudyContext,
    s: Settings,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> list[dict[str, Any]]:
    """The toolkit's analysis of every run's last checkpoint; NC1 and effective-rank rows."""
    from analysis.runs import RunSpec

    specs = []
    for variant in s.variants:
        for seed in ctx.seeds:
            path = ctx.checkpoint_dir(variant, seed) / f"epoch{s.epochs:03d}.pt"
            specs.append(
                RunSpec(
                    name=f"{variant}-s{seed}",
                    checkpoints=[path],
                    model=functools.partial(build_model, variant, s),
                    data=functools.partial(_loaders, splits),
                    model_label=f"analysis.studies.gcp:GCPNet[{variant}]",
                    data_label=f"analysis.studies.data:mnist1d[num_samples={s.num_samples}]",
                    num_classes=NUM_CLASSES,
                )
            )
    frame = ctx.analyze(specs)
    rows = []
    for rec in frame.to_dict("records"):
        if rec["metric"] not in ANALYSIS_METRICS:
            continue
        variant, _, seed_text = str(rec["run"]).rpartition("-s")
        rows.append(
            row(
                int(seed_text),
                variant,
                s.epochs,
                str(rec["split"]),
                ANALYSIS_METRICS[str(rec["metric"])],
                float(rec["value"]),
            )
        )
    return rows


# ---------------------------------------------------------------------------- figures
def _figures(ctx: StudyContext, rows: list[dict[str, Any]], s: Settings) -> None:
    """``gcp_accuracy``, ``gcp_grad_norm`` and ``gcp_acc_vs_spikes`` (seaborn, tidy rows)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from analysis.plots import style

    df = pd.DataFrame(rows)
    order = [v for v in VARIANTS if v in s.variants]
    n = len(ctx.seeds)
    seeds = f"{n} seed{'s' if n > 1 else ''}"
    palette = dict(zip(order, sns.color_palette("colorblind", len(order)), strict=True))
    lines = {"hue": "variant", "hue_order": order, "style": "variant", "style_order": order}
    with style():
        # accuracy over epochs: all, and zoomed on the top
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
        acc = df[(df.metric == "accuracy") & (df.split == "test")]
        for ax, zoom in zip(axes, (False, True), strict=True):
            sns.lineplot(
                data=acc, x="epoch", y="value", palette=palette, errorbar="sd", ax=ax,
                legend=zoom, **lines,
            )  # fmt: skip
            ax.set_xlabel("epoch")
            ax.set_ylabel("test top-1 accuracy (fraction)")
            if zoom:
                ax.set_ylim(0.9, 1.0)
                ax.set_title("zoom: accuracy ≥ 0.9")
                ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
            else:
                ax.set_title("all variants")
        fig.suptitle(f"GCP on MNIST-1D: test accuracy per epoch (mean ± sd over {seeds})")
        ctx.save_figure(fig, "gcp_accuracy")

        # gradient norms and spikes
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
        for ax, metric, label in (
            (axes[0], "grad_norm_median", "median ‖∂L/∂X‖_F per epoch"),
            (axes[1], "grad_norm_max", "max ‖∂L/∂X‖_F per epoch"),
            (axes[2], "spikes", "spike steps per epoch (count)"),
        ):
            sub = df[(df.metric == metric) & np.isfinite(df.value)]
            sns.lineplot(
                data=sub, x="epoch", y="value", palette=palette, errorbar="sd", ax=ax,
                legend=ax is axes[2], **lines,
            )  # fmt: skip
            ax.set_xlabel("epoch")
            if metric == "spikes":
                ax.set_yscale("symlog", linthresh=1)
                ax.set_ylim(bottom=-0.2)
                ax.set_ylabel(label)
            else:
                ax.set_yscale("log")
                ax.set_ylabel(f"{label}\n(finite steps; per-sample mean loss)")
        axes[2].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.suptitle(
            "GCP on MNIST-1D: gradient reaching the covariance input X, train split "
            f"(mean ± sd over {seeds}; spike: non-finite or > {s.spike_factor:g}× running "
            "median)"
        )
        ctx.save_figure(fig, "gcp_grad_norm")

        # accuracy against spikes: all runs, plus a zoom on the top when some run is below it
        last = df[(df.metric == "accuracy") & (df.epoch == s.epochs)][["seed", "variant", "value"]]
        tot = df[df.metric == "spikes"].groupby(["seed", "variant"], as_index=False)["value"].sum()
        pts = last.merge(tot, on=["seed", "variant"], suffixes=("_acc", "_spikes"))
        zooms = (False, True) if float(pts["value_acc"].min()) < 0.9 else (False,)
        fig, axes = plt.subplots(
            1, len(zooms), figsize=(5 * len(zooms) + 1.5, 3.8), layout="constrained", squeeze=False
        )
        top = max(1.0, float(pts["value_spikes"].max()))
        for ax, zoom in zip(axes[0], zooms, strict=True):
            sns.scatterplot(
                data=pts, x="value_spikes", y="value_acc", palette=palette, s=50, alpha=0.8,
                ax=ax, legend=zoom == zooms[-1], **lines,
            )  # fmt: skip
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(-0.3, top * 2)
            ax.set_xlabel("gradient spikes over training (steps, symlog)")
            ax.set_ylabel(f"test top-1 accuracy at epoch {s.epochs}")
            if zoom:
                ax.set_ylim(0.9, 1.0)
                ax.set_title("zoom: accuracy ≥ 0.9")
            else:
                ax.set_title("all runs")
        axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.suptitle(
            f"GCP on MNIST-1D: final test accuracy vs spikes\n(one point per seed × variant, "
            f"{seeds})"
        )
        ctx.save_figure(fig, "gcp_acc_vs_spikes")


# ---------------------------------------------------------------------------- run
def run(ctx: StudyContext, settings: Settings | None = None) -> StudyResult:
    """Train every variant for every seed, measure, analyse, plot and decide the claims.

    ``settings`` overrides the mode's preset (:data:`QUICK`/:data:`FULL`), e.g. for tests.
    """
    from analysis.studies.data import mnist1d

    s = (QUICK if ctx.quick else FULL) if settings is None else settings
    splits = mnist1d(num_samples=s.num_samples)
    rows: list[dict[str, Any]] = []
    steps: dict[str, list[_Step]] = {}
    for variant in s.variants:
        for seed in ctx.seeds:
            r, st = _train_run(variant, seed, s, splits, ctx)
            rows += r
            steps.setdefault(variant, []).extend(st)
    if s.analyze:
        rows += _analyze(ctx, s, splits)
    _figures(ctx, rows, s)

    acc = {v: _mean(d) for v, d in last_epoch_values(rows, "accuracy", "test").items()}
    spikes = {v: sum(st.spike for st in steps[v]) for v in s.variants}
    close = {}
    for v in s.variants:
        at = [st.gap < CLOSE_GAP for st in steps[v] if st.spike]
        close[v] = float(np.mean(at)) if at else math.nan
    total = {v: len(steps[v]) for v in s.variants}
    nonfinite = {v: sum(not st.finite for st in steps[v]) for v in s.variants}
    notes = [
        "Steps (all seeds) / spikes / non-finite gradients (skipped updates) per variant: "
        + "; ".join(f"{v} {total[v]}/{spikes[v]}/{nonfinite[v]}" for v in s.variants)
        + ".",
        "Fraction of steps whose batch has a relative eigen-gap < 1e-6: "
        + "; ".join(
            f"{v} {np.mean([st.gap < CLOSE_GAP for st in steps[v]]):.0%}" for v in s.variants
        )
        + " (a zero eigen-gap is two channels of the reduced map that are zero at every "
        "position of a sample).",
        "Mean share of a batch's samples with a relative eigen-gap < 1e-6, at spike steps vs "
        "other steps: "
        + "; ".join(
            f"{v} {_share(steps[v], True)} vs {_share(steps[v], False)}" for v in s.variants
        )
        + ".",
    ]
    setup = (
        f"MNIST-1D ({s.num_samples} signals, 80/20 split, data seed 42), 1-D CNN (3 conv, "
        f"{s.channels} channels, 20 positions) → CovariancePooling (1×1 reduction to "
        f"{s.reduce_dim} channels, square root, upper triangle) → Linear; RiemannianAdamW lr "
        f"{s.lr:g}, weight decay {s.weight_decay:g}, cosine, batch {s.batch_size}, "
        f"{s.epochs} epochs; hybrids switch to eigh at epoch {s.switch_epoch}. Variants: "
        f"{', '.join(s.variants)} (module docstring of analysis/studies/gcp.py). Spike: "
        f"non-finite or > {s.spike_factor:g}× the median of the run's previous "
        f"{s.spike_window} finite gradient norms; non-finite steps are skipped."
    )
    table = [
        ("accuracy", "test", "test top-1"),
        ("loss", "train", "train loss"),
        ("grad_norm_median", "train", "median ‖∂L/∂X‖"),
        ("grad_norm_max", "train", "max ‖∂L/∂X‖"),
        ("spikes", "train", "spikes (last epoch)"),
        ("min_gap", "train", "min rel. eigen-gap"),
    ]
    if s.analyze:
        table += [
            ("nc1", "train", "NC1 (train)"),
            ("effective_rank_total", "train", "eff. rank (train)"),
        ]
    return StudyResult(
        rows=rows,
        claims=claims(acc, spikes, close),
        table=table,
        setup=setup,
        notes=notes,
    )
