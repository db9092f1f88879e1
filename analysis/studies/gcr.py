r"""GCR study: Grassmann class representation versus a linear softmax head on MNIST-1D.

Paper: H. Wang, Z. Li, W. Zhang. "Get the Best of Both Worlds: Improving Accuracy and
Transferability by Grassmann Class Representation." ICCV 2023. Each class :math:`c` is a
:math:`k`-dimensional subspace :math:`Y_c\in\mathrm{Gr}(n, k)` and the logit is
:math:`\gamma\|Y_c^\top x/\|x\|\|_2` (:class:`geomtools.nn.GrassmannHead`). The paper reports
that (1) subspace classes do not lose top-1 accuracy against vector classes (they gain on
ImageNet), (2) the intra-class variability of the features grows with :math:`k` and
(3) the linear transferability of the frozen features improves with :math:`k`.

Set-up
------
* Data: MNIST-1D (Greydanus 2020), generated locally with its published arguments
  (:func:`analysis.studies.data.mnist1d`: 4000 train / 1000 test signals, data seed 42, the
  same for every seed). The classifiers are trained on the *source* classes 0–6 only; the
  *held-out* classes 7–9 are never seen in training and serve the transfer probe.
* Model: the MNIST-1D CNN (:class:`analysis.studies.models.Conv1dNet`: three stride-2
  convolutions with 32 channels, Linear → 32 features, BatchNorm, ReLU) with one of the heads

  ============ ===========================================================================
  variant      head
  ============ ===========================================================================
  linear       ``nn.Linear(32, 7)`` ("vector classes", softmax cross-entropy)
  gcr-k1..k8   :class:`geomtools.nn.GrassmannHead` with :math:`k` ∈ {1, 2, 4, 8}, γ = 25
  linear-10cls ``nn.Linear(32, 10)`` on all ten classes: only the sanity anchor (the
               published CNN reaches ≈ 94 % test accuracy on MNIST-1D)
  ============ ===========================================================================

* Training: cross-entropy, :class:`geomtools.optim.RiemannianAdamW` over
  :func:`geomtools.nn.grassmann_param_groups` (learning rate 1e-2, weight decay 5e-4 on the
  Euclidean parameters, none on the Grassmann bases, re-orthonormalised every 10 steps),
  cosine learning-rate schedule, batch 64, torch seeded with the run's seed (initialisation and
  batch order). Full mode: 100 epochs (≈ 4400 steps, the order of the published CNN's
  training), analysed every 20; quick mode: 15 epochs, analysed every 5.
* Per-epoch rows (every run, every epoch): ``loss`` (mean training cross-entropy of the epoch,
  split ``train``), ``accuracy`` (top-1 in eval mode, splits ``train`` and ``test``).
* Analysed epochs (every ``analyze_every`` epochs and the last): the checkpoint goes through
  the toolkit's pipeline (:meth:`StudyContext.analyze`, i.e.
  :func:`analysis.pipeline.analyze_runs`) on the source classes, whose report gives
  ``intra_class_variability`` (:func:`analysis.variability.intra_class_variability`: the
  average within-class cosine distance of the head's input features over the average cosine
  distance of all pairs, Kornblith et al. 2021 — the quantity the GCR paper reports; its
  "class separation" is :math:`R^2 = 1 -` this value), ``nc1`` and ``cdnv`` per split; and the
  frozen features (the head's input) of the held-out classes 7–9 are probed by
  :func:`analysis.report.linear_probe` (standardised multinomial logistic regression, C chosen
  on 20 % of the held-out classes' train signals) fitted on their train signals and scored on
  their test signals: ``transfer_accuracy`` (split ``heldout``).

Decision rules (fixed before any run; "mean" is over seeds at the last epoch)
-----------------------------------------------------------------------------
1. Accuracy: the claim holds when every GCR head's mean test top-1 is at least the linear
   head's minus :data:`TOP1_TOLERANCE` (one point: about one standard deviation of a test
   accuracy on 700 signals over seeds).
2. Variability: on the train split (as in Kornblith et al. and the paper), the mean at the
   largest :math:`k` exceeds the mean at the smallest :math:`k`, and Spearman's rank
   correlation between :math:`k` and the per-run value over all seed × k runs is at least
   :data:`MIN_SPEARMAN` (a clear monotone trend, not one lucky pair).
3. Transfer: the same rule on ``transfer_accuracy`` of the held-out classes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from analysis.studies.study import Claim, StudyContext, StudyResult, last_epoch_values, row

__all__ = [
    "CLAIM",
    "FULL",
    "MIN_SPEARMAN",
    "NAME",
    "PAPER",
    "QUICK",
    "TITLE",
    "TOP1_TOLERANCE",
    "GcrSettings",
    "decide_claims",
    "run",
    "settings",
    "spearman",
]

NAME = "gcr"
TITLE = "Grassmann class representation (GCR): accuracy, variability and transfer versus k"
CLAIM = (
    "Representing each class by a k-dimensional subspace keeps the top-1 accuracy of vector "
    "(linear softmax) classes, while the intra-class variability of the features and their "
    "linear transferability grow with k."
)
PAPER = (
    "H. Wang, Z. Li, W. Zhang, 'Get the Best of Both Worlds: Improving Accuracy and "
    "Transferability by Grassmann Class Representation', ICCV 2023"
)

#: claim 1: a GCR head may be at most this far (accuracy, absolute) below the linear head
TOP1_TOLERANCE = 0.01
#: claims 2 and 3: least Spearman rank correlation between k and the per-run value
MIN_SPEARMAN = 0.6
#: the pipeline's metrics kept in the tidy rows (head-input layer, splits train and test)
PIPELINE_METRICS = ("intra_class_variability", "nc1", "cdnv")
LINEAR = "linear"
ANCHOR = "linear-10cls"
#: published test accuracy of the MNIST-1D CNN (Greydanus 2020)
PUBLISHED_CNN_ACCURACY = 0.94


@dataclass(frozen=True)
class GcrSettings:
    """What one mode of the study trains and measures.

    Attributes
    ----------
    epochs : int
        Training epochs per run.
    analyze_every : int
        Checkpoints every this many epochs (and the last) are analysed and probed.
    ks : tuple of int
        Subspace dimensions of the GCR heads.
    source_classes : int
        Classes ``0..source_classes-1`` are trained; the others are held out for transfer.
    num_samples : int
        MNIST-1D size (5000 is the published set).
    feature_dim, channels : int
        Of :class:`analysis.studies.models.Conv1dNet`.
    batch_size : int
    lr, weight_decay : float
        Of :class:`geomtools.optim.RiemannianAdamW` (decay on Euclidean parameters only).
    gamma : float
        GCR logit scale.
    anchor : bool
        Also train the 10-class linear head (sanity anchor against the published CNN).
    """

    epochs: int
    analyze_every: int
    ks: tuple[int, ...] = (1, 2, 4, 8)
    source_classes: int = 7
    num_samples: int = 5000
    feature_dim: int = 32
    channels: int = 32
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 5e-4
    gamma: float = 25.0
    anchor: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.analyze_every < 1:
            raise ValueError("GcrSettings: epochs and analyze_every must be ≥ 1")
        if not self.ks or any(k < 1 or k > self.feature_dim for k in self.ks):
            raise ValueError(f"GcrSettings: ks must lie in 1..feature_dim, got {self.ks}")
        if len(set(self.ks)) != len(self.ks):
            raise ValueError(f"GcrSettings: ks must be distinct, got {self.ks}")
        if not 2 <= self.source_classes <= 8:
            raise ValueError("GcrSettings: source_classes must leave ≥ 2 held-out classes")
        if self.batch_size < 2:
            raise ValueError("GcrSettings: batch_size must be ≥ 2 (BatchNorm)")

    @property
    def variants(self) -> list[str]:
        """Trained variants: ``linear``, ``gcr-k<k>``..., and the anchor when set."""
        out = [LINEAR] + [f"gcr-k{k}" for k in self.ks]
        return [*out, ANCHOR] if self.anchor else out

    def analysed_epochs(self) -> list[int]:
        """Epochs whose checkpoints are analysed: multiples of ``analyze_every`` and the last."""
        eps = set(range(self.analyze_every, self.epochs + 1, self.analyze_every))
        return sorted(eps | {self.epochs})


FULL = GcrSettings(epochs=100, analyze_every=20)
QUICK = GcrSettings(epochs=15, analyze_every=5)


def settings(ctx: StudyContext) -> GcrSettings:
    """:data:`QUICK` in quick mode, else :data:`FULL`."""
    return QUICK if ctx.quick else FULL


_mode_settings = settings  # ``run``'s parameter ``settings`` shadows the function


# ---------------------------------------------------------------------------- data and model
Split = tuple[torch.Tensor, torch.Tensor]


@dataclass
class _Data:
    source: dict[str, Split]  # classes 0..S-1, labels unchanged
    heldout: dict[str, Split]  # classes S..9, labels shifted to 0..
    full: dict[str, Split]  # all ten classes (anchor)


@functools.lru_cache(maxsize=4)
def _data(num_samples: int, source_classes: int) -> _Data:
    from analysis.studies.data import mnist1d

    full = mnist1d(num_samples=num_samples)
    source: dict[str, Split] = {}
    heldout: dict[str, Split] = {}
    for split, (x, y) in full.items():
        keep = y < source_classes
        source[split] = (x[keep], y[keep])
        heldout[split] = (x[~keep], y[~keep] - source_classes)
    return _Data(source=source, heldout=heldout, full=full)


def _num_classes(variant: str, s: GcrSettings) -> int:
    return 10 if variant == ANCHOR else s.source_classes


def _k_of(variant: str) -> int | None:
    return int(variant.removeprefix("gcr-k")) if variant.startswith("gcr-k") else None


def build_model(variant: str, s: GcrSettings) -> nn.Module:
    """The CNN with ``variant``'s head (weights as initialised from torch's global seed).

    Parameters
    ----------
    variant : str
        ``linear``, ``linear-10cls`` or ``gcr-k<k>``.
    s : GcrSettings
    """
    from analysis.studies.models import Conv1dNet
    from geomtools.nn import GrassmannHead

    classes = _num_classes(variant, s)
    k = _k_of(variant)
    head: nn.Module
    if k is None:
        if variant not in (LINEAR, ANCHOR):
            raise ValueError(f"gcr: unknown variant {variant!r}")
        head = nn.Linear(s.feature_dim, classes)
    else:
        head = GrassmannHead(s.feature_dim, classes, k, gamma=s.gamma)
    return Conv1dNet(head, feature_dim=s.feature_dim, channels=s.channels)


def _loaders(splits: Mapping[str, Split]) -> dict[str, DataLoader[Any]]:
    return {
        name: DataLoader(TensorDataset(*xy), batch_size=512, shuffle=False)
        for name, xy in splits.items()
    }


def _source_loaders(s: GcrSettings) -> dict[str, DataLoader[Any]]:
    return _loaders(_data(s.num_samples, s.source_classes).source)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) in eval mode."""
    model.eval()
    logits = model(x)
    acc = float((logits.argmax(1) == y).double().mean())
    loss = float(nn.functional.cross_entropy(logits.double(), y))
    return acc, loss


@torch.no_grad()
def _transfer(model: nn.Module, heldout: Mapping[str, Split]) -> dict[str, float]:
    """Linear probe of the frozen head-input features on the held-out classes."""
    from analysis.report import linear_probe

    model.eval()
    feats = {
        split: (model.features(x).double().numpy(), y.numpy())  # type: ignore[operator]
        for split, (x, y) in heldout.items()
    }
    return linear_probe(feats["train"], feats["test"])  # BLAS single-threaded: run_study


def _train(
    ctx: StudyContext, variant: str, seed: int, s: GcrSettings, data: _Data
) -> list[dict[str, Any]]:
    """Train one run; per-epoch rows, checkpoints and transfer rows at the analysed epochs."""
    from geomtools.nn import grassmann_param_groups
    from geomtools.optim import RiemannianAdamW

    splits = data.full if variant == ANCHOR else data.source
    x, y = splits["train"]
    x_te, y_te = splits["test"]
    torch.manual_seed(seed)
    model = build_model(variant, s)
    opt = RiemannianAdamW(
        grassmann_param_groups(model, lr=s.lr, weight_decay=s.weight_decay), lr=s.lr
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.epochs)
    g = torch.Generator().manual_seed(seed)
    analysed = set(s.analysed_epochs())
    rows: list[dict[str, Any]] = []
    for epoch in ctx.bar(range(1, s.epochs + 1), f"{variant} s{seed}", total=s.epochs):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        total, count = 0.0, 0
        for i in range(0, len(y), s.batch_size):
            idx = perm[i : i + s.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        sched.step()
        rows.append(row(seed, variant, epoch, "train", "loss", total / count))
        for split, (xs, ys) in (("train", (x, y)), ("test", (x_te, y_te))):
            acc, _ = _evaluate(model, xs, ys)
            rows.append(row(seed, variant, epoch, split, "accuracy", acc))
        if epoch in analysed and variant != ANCHOR:
            ctx.save_checkpoint(model, variant, seed, epoch)
            probe = _transfer(model, data.heldout)
            rows.append(
                row(
                    seed,
                    variant,
                    epoch,
                    "heldout",
                    "transfer_accuracy",
                    probe["linear_probe_accuracy"],
                )
            )
    if variant == ANCHOR:
        ctx.save_checkpoint(model, variant, seed, s.epochs)
    return rows


def _pipeline_rows(ctx: StudyContext, s: GcrSettings) -> list[dict[str, Any]]:
    """Analyse every saved source-class checkpoint with the toolkit's pipeline; tidy rows."""
    from analysis.runs import RunSpec

    epochs = s.analysed_epochs()
    specs: list[RunSpec] = []
    owner: dict[str, tuple[str, int]] = {}
    for variant in s.variants:
        if variant == ANCHOR:
            continue
        for seed in ctx.seeds:
            folder = ctx.checkpoint_dir(variant, seed)
            name = folder.name
            owner[name] = (variant, seed)
            specs.append(
                RunSpec(
                    name=name,
                    checkpoints=[folder / f"epoch{e:03d}.pt" for e in epochs],
                    model=functools.partial(build_model, variant, s),
                    data=functools.partial(_source_loaders, s),
                    model_label=f"analysis.studies.gcr:build_model[{variant}, {s}]",
                    data_label=(
                        f"analysis.studies.data:mnist1d[num_samples={s.num_samples}, "
                        f"classes 0-{s.source_classes - 1}]"
                    ),
                    num_classes=s.source_classes,
                    attributes={"sweep": _k_of(variant) or 0},
                )
            )
    report = ctx.analyze(specs)
    keep = report[report["metric"].isin(PIPELINE_METRICS) & (report["layer"] == "head")]
    rows = []
    for r in keep.itertuples(index=False):
        variant, seed = owner[str(r.run)]
        rows.append(row(seed, variant, int(r.epoch), str(r.split), str(r.metric), float(r.value)))
    return rows


# ---------------------------------------------------------------------------- verdicts
def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    r"""Spearman's rank correlation :math:`\rho` (average ranks for ties), in float64.

    :math:`\rho` is Pearson's correlation of the ranks; 0 when either side is constant (no
    monotone trend can be read from it).

    Raises
    ------
    ValueError
        Different lengths or fewer than two points.
    """
    from scipy.stats import rankdata

    if len(x) != len(y) or len(x) < 2:
        raise ValueError(
            f"spearman: need two equally long sequences of ≥ 2, got {len(x)}, {len(y)}"
        )
    rx = rankdata(np.asarray(x, dtype=np.float64)) - (len(x) + 1) / 2
    ry = rankdata(np.asarray(y, dtype=np.float64)) - (len(y) + 1) / 2
    den = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else 0.0


PerRun = Mapping[str, Mapping[int, float]]  # {variant: {seed: value}}


def _mean(values: Mapping[int, float]) -> float:
    return float(np.mean(np.asarray(list(values.values()), dtype=np.float64)))


def _trend_claim(statement: str, what: str, values: PerRun, ks: Sequence[int]) -> Claim:
    """Grows with k: mean(k_max) > mean(k_min) and Spearman ρ(k, value) ≥ MIN_SPEARMAN."""
    present = [k for k in ks if values.get(f"gcr-k{k}")]
    if len(present) < 2:
        return Claim(statement, False, f"(fewer than two k measured for {what})")
    xs: list[float] = []
    ys: list[float] = []
    for k in present:
        for v in values[f"gcr-k{k}"].values():
            xs.append(float(k))
            ys.append(float(v))
    rho = spearman(xs, ys)
    lo, hi = min(present), max(present)
    m_lo, m_hi = _mean(values[f"gcr-k{lo}"]), _mean(values[f"gcr-k{hi}"])
    means = ", ".join(f"k={k} {_mean(values[f'gcr-k{k}']):.3f}" for k in present)
    ref = f"; linear head {_mean(values[LINEAR]):.3f}" if values.get(LINEAR) else ""
    holds = m_hi > m_lo and rho >= MIN_SPEARMAN
    return Claim(
        statement,
        holds,
        f"(mean {what}: {means}{ref}; Spearman ρ(k, value) = {rho:.2f} over {len(xs)} runs; "
        f"rule: mean at k={hi} > mean at k={lo} and ρ ≥ {MIN_SPEARMAN})",
    )


def decide_claims(
    top1: PerRun, variability: PerRun, transfer: PerRun, ks: Sequence[int]
) -> list[Claim]:
    """The three claims from last-epoch values ``{variant: {seed: value}}``.

    Parameters
    ----------
    top1 : mapping
        Test top-1 accuracy per variant (``linear`` and ``gcr-k<k>``) and seed.
    variability : mapping
        Train-split intra-class variability (within / total cosine distance).
    transfer : mapping
        Linear-probe accuracy on the held-out classes.
    ks : sequence of int
        The subspace dimensions, in any order.

    Returns
    -------
    list of Claim
        Accuracy (every k ≥ linear − :data:`TOP1_TOLERANCE`), variability and transfer
        (mean at the largest k above the smallest and Spearman ρ ≥ :data:`MIN_SPEARMAN`).
    """
    ks = sorted(int(k) for k in ks)
    s1 = "Subspace classes do not lose top-1 against vector classes."
    present = [k for k in ks if top1.get(f"gcr-k{k}")]
    if not top1.get(LINEAR) or not present:
        c1 = Claim(s1, False, "(the linear head or every GCR head is missing)")
    else:
        base = _mean(top1[LINEAR])
        means = {k: _mean(top1[f"gcr-k{k}"]) for k in present}
        worst = min(means, key=lambda k: means[k])
        text = ", ".join(f"k={k} {m:.3f}" for k, m in means.items())
        c1 = Claim(
            s1,
            all(m >= base - TOP1_TOLERANCE for m in means.values()),
            f"(mean test top-1: linear {base:.3f}; {text}; lowest k={worst} is "
            f"{means[worst] - base:+.3f} from linear; rule: every k ≥ linear − "
            f"{TOP1_TOLERANCE:.2f})",
        )
    c2 = _trend_claim(
        "Intra-class variability of the features grows with the subspace dimension k.",
        "train intra-class variability",
        variability,
        ks,
    )
    c3 = _trend_claim(
        "Linear transfer of the frozen features (held-out classes) improves with k.",
        "held-out linear-probe accuracy",
        transfer,
        ks,
    )
    return [c1, c2, c3]


# ---------------------------------------------------------------------------- figures
def _figures(ctx: StudyContext, rows: list[dict[str, Any]], s: GcrSettings) -> None:
    import pandas as pd
    import seaborn as sns
    from matplotlib.figure import Figure

    from analysis.plots import style

    df = pd.DataFrame(rows)
    last = df[df["epoch"] == s.epochs].copy()
    last["k"] = last["variant"].map(lambda v: _k_of(v) or 0)
    n = len(ctx.seeds)
    seeds = f"{n} seed{'s' if n > 1 else ''}"
    ticks = sorted(s.ks)

    def sweep(metric: str, splits: Sequence[str], ylabel: str, title: str, stem: str) -> None:
        with style():
            fig = Figure(figsize=(7.2, 3.6), layout="constrained")
            ax = fig.subplots()
            data = last[(last["metric"] == metric) & last["split"].isin(splits)]
            gcr = data[data["k"] > 0].assign(head=lambda d: "GCR head (" + d["split"] + ")")
            gcr = gcr.replace({"head": {"GCR head (heldout)": "GCR head (held-out)"}})
            colors = sns.color_palette("colorblind", len(splits))
            palette = {
                f"GCR head ({_split_label(sp)})": c for sp, c in zip(splits, colors, strict=True)
            }
            sns.lineplot(
                data=gcr,
                x="k",
                y="value",
                hue="head",
                hue_order=list(palette),
                palette=palette,
                marker="o",
                errorbar="sd",
                err_style="bars",
                ax=ax,
            )
            lin = data[data["variant"] == LINEAR]
            for split, color in zip(splits, colors, strict=True):
                vals = lin[lin["split"] == split]["value"].to_numpy(dtype=np.float64)
                if len(vals):
                    mean = float(vals.mean())
                    sd = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
                    ax.axhline(
                        mean,
                        color=color,
                        linestyle="--",
                        linewidth=1,
                        label=f"linear head ({_split_label(split)}), mean ± sd",
                    )
                    if sd > 0:
                        ax.axhspan(mean - sd, mean + sd, color=color, alpha=0.12, linewidth=0)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(k) for k in ticks])
            ax.minorticks_off()
            ax.set_xlabel("subspace dimension k (log2 scale)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}\nMNIST-1D CNN, epoch {s.epochs}, mean ± sd over {seeds}")
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
            ctx.save_figure(fig, stem)

    src = f"classes 0–{s.source_classes - 1}"
    sweep(
        "intra_class_variability",
        ("train", "test"),
        "intra-class variability (within / total cos. dist.)",
        f"GCR: intra-class variability vs k ({src}, train & test)",
        "gcr_variability",
    )
    sweep(
        "accuracy",
        ("test",),
        "test top-1 accuracy (fraction)",
        f"GCR: test top-1 vs k ({src})",
        "gcr_top1",
    )
    sweep(
        "transfer_accuracy",
        ("heldout",),
        "linear-probe accuracy (fraction)",
        f"GCR: transfer to held-out classes {s.source_classes}–9 vs k",
        "gcr_transfer",
    )
    labels = {v: v for v in s.variants} | {ANCHOR: f"{ANCHOR} (all 10 classes)"}
    curves = df[(df["metric"] == "accuracy") & (df["split"] == "test")].assign(
        head=lambda d: d["variant"].map(labels)
    )
    with style():
        fig = Figure(figsize=(9.0, 3.6), layout="constrained")
        axes = fig.subplots(1, 2)
        late = curves[curves["epoch"] > s.epochs // 2]
        for ax, part, what in ((axes[0], curves, "all epochs"), (axes[1], late, "second half")):
            sns.lineplot(
                data=part,
                x="epoch",
                y="value",
                hue="head",
                hue_order=[labels[v] for v in s.variants],
                errorbar="sd",
                ax=ax,
                legend=ax is axes[1],
            )
            if s.anchor:
                ax.axhline(
                    PUBLISHED_CNN_ACCURACY,
                    color="0.4",
                    linestyle=":",
                    linewidth=1,
                    label="published CNN, 10 classes (0.94)",
                )
            ax.set_xlabel("epoch")
            ax.set_ylabel("test top-1 accuracy (fraction)")
            ax.set_title(what)
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
        fig.suptitle(
            f"GCR study: test accuracy per epoch (MNIST-1D classes 0–{s.source_classes - 1} "
            f"unless noted; mean ± sd over {seeds})"
        )
        ctx.save_figure(fig, "gcr_curves")

    var = df[(df["metric"] == "intra_class_variability") & (df["split"] == "train")]
    with style():
        fig = Figure(figsize=(7.2, 3.6), layout="constrained")
        ax = fig.subplots()
        sns.lineplot(
            data=var,
            x="epoch",
            y="value",
            hue="variant",
            hue_order=[v for v in s.variants if v != ANCHOR],
            marker="o",
            errorbar="sd",
            err_style="bars",
            ax=ax,
        )
        ax.set_xticks(s.analysed_epochs())
        ax.set_xlabel("epoch (analysed checkpoints)")
        ax.set_ylabel("intra-class variability (within / total cos. dist.)")
        ax.set_title(
            f"GCR study: train intra-class variability per epoch\n(MNIST-1D {src}, "
            f"mean ± sd over {seeds})"
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
        ctx.save_figure(fig, "gcr_variability_epochs")


def _split_label(split: str) -> str:
    return "held-out" if split == "heldout" else split


# ---------------------------------------------------------------------------- the study
def run(ctx: StudyContext, settings: GcrSettings | None = None) -> StudyResult:
    """Train, measure and decide the GCR claims (module docstring).

    Parameters
    ----------
    ctx : StudyContext
    settings : GcrSettings, optional
        Overrides :func:`settings` (tests use a tiny configuration).
    """
    s = settings if settings is not None else _mode_settings(ctx)
    if not isinstance(s, GcrSettings):
        raise ValueError(f"gcr: settings must be a GcrSettings, got {type(s).__name__}")
    data = _data(s.num_samples, s.source_classes)
    rows: list[dict[str, Any]] = []
    for variant in s.variants:
        for seed in ctx.seeds:
            rows += _train(ctx, variant, seed, s, data)
    rows += _pipeline_rows(ctx, s)

    claims = decide_claims(
        last_epoch_values(rows, "accuracy", "test"),
        last_epoch_values(rows, "intra_class_variability", "train"),
        last_epoch_values(rows, "transfer_accuracy", "heldout"),
        s.ks,
    )
    _figures(ctx, rows, s)
    notes = _notes(rows, s)
    n_tr = len(data.source["train"][1])
    n_te = len(data.source["test"][1])
    h_tr = len(data.heldout["train"][1])
    h_te = len(data.heldout["test"][1])
    setup = (
        f"MNIST-1D ({s.num_samples} signals, data seed 42). Source classes 0–"
        f"{s.source_classes - 1}: {n_tr} train / {n_te} test signals; held-out classes "
        f"{s.source_classes}–9: {h_tr} probe-train / {h_te} probe-test signals. "
        f"Model: MNIST-1D CNN (Conv1dNet, {s.channels} channels, {s.feature_dim} features, "
        f"BatchNorm + ReLU) with a linear head or a GrassmannHead (γ = {s.gamma:g}) with "
        f"k ∈ {{{', '.join(str(k) for k in s.ks)}}}. {s.epochs} epochs of RiemannianAdamW "
        f"(lr {s.lr:g}, weight decay {s.weight_decay:g}, none on the Grassmann bases), cosine "
        f"schedule, batch {s.batch_size}. Variability: the pipeline's intra_class_variability "
        "(Kornblith et al. 2021: mean within-class / mean total cosine distance of the head's "
        "input) on the source classes; transfer: analysis.report.linear_probe of the frozen "
        "head-input features fitted on the held-out classes' train signals, scored on their "
        f"test signals. Analysed epochs: {', '.join(map(str, s.analysed_epochs()))}. "
        f"Rules: top-1 within {TOP1_TOLERANCE:.2f} of linear for every k; variability and "
        f"transfer: mean at the largest k above the smallest and Spearman ρ ≥ {MIN_SPEARMAN}."
    )
    table = [
        ("accuracy", "test", "test top-1"),
        ("accuracy", "train", "train top-1"),
        ("intra_class_variability", "train", "variability (train)"),
        ("intra_class_variability", "test", "variability (test)"),
        ("transfer_accuracy", "heldout", "transfer (held-out)"),
        ("nc1", "train", "NC1 (train)"),
    ]
    return StudyResult(rows=rows, claims=claims, table=table, setup=setup, notes=notes)


def _notes(rows: list[dict[str, Any]], s: GcrSettings) -> list[str]:
    notes = []
    top1 = last_epoch_values(rows, "accuracy", "test")
    anchor = top1.get(ANCHOR)
    if anchor:
        m = _mean(anchor)
        reach = m >= PUBLISHED_CNN_ACCURACY - TOP1_TOLERANCE
        notes.append(
            f"Sanity anchor: the CNN with a linear head on all ten MNIST-1D classes reaches "
            f"{m:.3f} mean test top-1 after {s.epochs} epochs; the published CNN baseline is "
            f"≈ {PUBLISHED_CNN_ACCURACY:.2f} (Greydanus 2020), so it "
            f"{'reaches' if reach else 'does not reach'} it (rule: ≥ "
            f"{PUBLISHED_CNN_ACCURACY - TOP1_TOLERANCE:.2f})."
        )
    train = last_epoch_values(rows, "accuracy", "train")
    if train:
        low = min(_mean(v) for v in train.values())
        notes.append(f"Lowest mean train top-1 at the last epoch over the variants: {low:.3f}.")
    var = last_epoch_values(rows, "intra_class_variability", "train")
    transfer = last_epoch_values(rows, "transfer_accuracy", "heldout")
    gcr = [f"gcr-k{k}" for k in sorted(s.ks) if var.get(f"gcr-k{k}")]
    if var.get(LINEAR) and gcr:
        lin = _mean(var[LINEAR])
        above = sum(_mean(var[v]) > lin for v in gcr)
        notes.append(
            f"Descriptive, not a claim rule: {above} of {len(gcr)} GCR heads have a higher mean "
            f"train intra-class variability than the linear head ({lin:.3f})."
        )
    if transfer.get(LINEAR) and gcr:
        lin = _mean(transfer[LINEAR])
        best = max(gcr, key=lambda v: _mean(transfer[v]) if transfer.get(v) else -1.0)
        if transfer.get(best):
            notes.append(
                f"Descriptive: held-out probe accuracy of the linear head {lin:.3f}, best GCR "
                f"head {best} {_mean(transfer[best]):.3f}; one held-out test signal is "
                f"{1 / max(1, _heldout_test_size(s)):.4f} of accuracy."
            )
    return notes


def _heldout_test_size(s: GcrSettings) -> int:
    return len(_data(s.num_samples, s.source_classes).heldout["test"][1])
