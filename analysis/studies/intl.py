r"""INTL: IterNorm with a trace loss keeps a joint-embedding model from collapsing.

Paper: X. Weng, Y. Ni, T. Song, J. Luo, R. M. Anwer, S. Khan, F. S. Khan, L. Huang,
"Modulate your spectrum in self-supervised learning", ICLR 2024 (INTL); the spectral
transformation is IterNorm (L. Huang, Y. Zhou, F. Zhu, L. Liu, L. Shao, "Iterative
normalization: beyond standardization towards efficient whitening", CVPR 2019).

Set-up
------
Self-supervised joint-embedding training on MNIST-1D (:func:`analysis.studies.data.mnist1d`,
4000 train / 1000 test signals of length 40; labels are used only by the probes and the class
statistics). Two views of every signal are drawn by :func:`augment` (random circular shift,
random amplitude scale, additive Gaussian noise; a seeded ``torch.Generator``). The network
(:class:`SSLNet`) is an encoder (:func:`analysis.studies.models.conv1d_backbone`, flatten,
Linear → 64, BatchNorm, ReLU), a projector (Linear 64 → 128, BatchNorm, ReLU, Linear 128 → 64)
producing the *embedding* :math:`z`, and a spectral transformation:

========== =============================================================================
variant    transformation and loss (:class:`geomtools.losses.INTLLoss` in every case)
========== =============================================================================
plain      none; :math:`\mathcal L = \tfrac1B\sum_b (2 - 2\cos(z^1_b, z^2_b))`
           (no negatives, no predictor, no stop-gradient: expected to collapse)
iternorm   :class:`geomtools.nn.IterNorm` (feature whitening, :math:`T = 4`) of each view,
           then the same similarity loss (β = 0): hard whitening without the trace loss
intl       IterNorm (:math:`T = 4`) + similarity + :math:`\beta` × trace losses,
           :math:`\beta = 0.01(\log_2 B - 3)` (:func:`geomtools.losses.intl.default_beta`;
           0.05 at B = 256)
========== =============================================================================

:math:`T = 4` is the INTL paper's iteration number; IterNorm keeps its default
:math:`\epsilon = 10^{-5}`. All variants of one seed share the initialisation, the batch order
and the augmentations (paired comparison). Optimiser: :class:`geomtools.optim.RiemannianAdamW`
(plain AdamW on these Euclidean parameters), cosine learning-rate schedule. An online linear
readout on the *detached* encoder features is trained alongside (it sends no gradient into
the network; it gives the pipeline the classifier it needs). A checkpoint is saved before
training (epoch 0) and after every epoch.

Measurement
-----------
Every checkpoint goes through the toolkit's pipeline (``ctx.analyze``, i.e.
:func:`analysis.pipeline.analyze_runs`) on the test split at three layers: the encoder
features (input of ``readout``), the embedding :math:`z` (input of ``whiten``) and the
transformed output (input of ``out``). From its report the study takes
``effective_rank_total`` (Roy & Vetterli 2007: :math:`\exp H(p)`,
:math:`p = \lambda/\sum\lambda`, :math:`\lambda` the eigenvalues of the total covariance),
``rankme`` (Garrido et al. 2023) and the readout's ``accuracy``; a measure that is undefined
for a checkpoint (e.g. the CDNV of a collapsed encoder whose class means coincide) is omitted
by the pipeline with its reason and becomes NaN here. The *flatness* of a spectrum is its
normalised entropy
:math:`H(p)/\log D = \log(\text{erank})/\log D \in [0, 1]` (1 = all eigenvalues equal). Before
training and at the last epoch the encoder features of the train split fit a linear probe
(:func:`analysis.report.linear_probe`: standardised multinomial logistic regression, C chosen
on a held-out fifth of train) scored on the test split; the spectra of the figure are
:func:`analysis.spectrum.covariance_spectrum` of the test features.

Decision rules (fixed before any run; means and sample standard deviations over seeds, test
split, last epoch; :math:`D = 64` is the embedding dimension)
--------------------------------------------------------------------------------------------
1. *Collapse vs full rank*: reproduced iff the plain variant's mean effective rank of the
   embedding is below 20 % of :math:`D` (collapsed) **and** INTL's is at least 50 % of
   :math:`D` (full).
2. *Towards equal eigenvalues*: reproduced iff INTL's mean flatness of the embedding spectrum
   exceeds both other variants' mean flatness by more than one standard deviation (the larger
   of the two compared variants' standard deviations; with one seed simply larger) **and**
   INTL's flatness at the last epoch is larger than at epoch 0 (initialisation).
3. *Linear probe*: reproduced iff INTL's mean probe accuracy exceeds both the plain and the
   IterNorm-only mean by more than one standard deviation (same convention).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from analysis.studies.study import Claim, StudyContext, StudyResult, row

__all__ = [
    "CLAIM",
    "FULL",
    "NAME",
    "PAPER",
    "QUICK",
    "TITLE",
    "VARIANTS",
    "IntlSettings",
    "SSLNet",
    "augment",
    "build_model",
    "decide",
    "flatness",
    "run",
    "settings",
    "spectrum_of",
]

NAME = "intl"
TITLE = "INTL: IterNorm with a trace loss against dimensional collapse (MNIST-1D)"
CLAIM = (
    "In joint-embedding self-supervised learning a plain similarity loss collapses the "
    "embedding, while IterNorm whitening with the trace loss (INTL) keeps its spectrum full "
    "and close to equal eigenvalues and gives better linear-probe accuracy than the collapsed "
    "baseline and than whitening without the trace loss."
)
PAPER = (
    "Weng, Ni, Song, Luo, Anwer, Khan, Khan, Huang, 'Modulate your spectrum in self-supervised "
    "learning', ICLR 2024; IterNorm: Huang, Zhou, Zhu, Liu, Shao, CVPR 2019"
)

#: the variants, in the order of tables and figures
VARIANTS = ("plain", "iternorm", "intl")
#: analysed layers (the input of each module): name in the pipeline → name in the CSV
LAYERS = {"readout": "encoder", "whiten": "embedding", "out": "whitened"}
#: pipeline metrics copied into the tidy rows (per layer)
PIPELINE_METRICS = ("effective_rank_total", "rankme")

NUM_CLASSES = 10
COLLAPSED_FRACTION = 0.2  # rule 1: collapsed below 20 % of D
FULL_FRACTION = 0.5  # rule 1: full at 50 % of D or more
SPECTRUM_FLOOR = 1e-12  # spectrum figure: normalised eigenvalues below are float64 round-off


@dataclass(frozen=True)
class IntlSettings:
    """Everything a run of the study depends on besides the seeds.

    Attributes
    ----------
    epochs : int
        Training epochs (a checkpoint before training and after each).
    batch_size : int
        :math:`B`; incomplete last batches are dropped (β depends on :math:`B`).
    lr, weight_decay : float
        AdamW learning rate (cosine schedule to 0 over the epochs) and weight decay.
    channels, feature_dim, hidden_dim, embed_dim : int
        Convolution channels, encoder output, projector hidden and embedding dimensions.
    iters : int
        IterNorm's Newton iterations :math:`T` (4, as in the INTL paper).
    max_shift : int
        Largest circular shift of an augmentation, in samples.
    scale : float
        Amplitude scale drawn uniformly from ``[1 - scale, 1 + scale]``.
    noise : float
        Standard deviation of the additive Gaussian noise (the signals have unit variance).
    num_samples : int
        MNIST-1D signals generated (80 % train); 5000 is the published data set.
    eval_batch : int
        Batch size of the analysis passes.
    """

    epochs: int
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-5
    channels: int = 32
    feature_dim: int = 64
    hidden_dim: int = 128
    embed_dim: int = 64
    iters: int = 4
    max_shift: int = 6
    scale: float = 0.25
    noise: float = 0.15
    num_samples: int = 5000
    eval_batch: int = 500

    def __post_init__(self) -> None:
        ints = ("epochs", "batch_size", "channels", "feature_dim", "hidden_dim", "embed_dim")
        for name in (*ints, "iters", "num_samples", "eval_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"IntlSettings.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.batch_size < 8:
            raise ValueError(f"IntlSettings.batch_size must be ≥ 8 (β ≥ 0), got {self.batch_size}")
        if self.embed_dim < 2:
            raise ValueError(f"IntlSettings.embed_dim must be ≥ 2, got {self.embed_dim}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ValueError("IntlSettings: lr must be > 0 and weight_decay ≥ 0")
        if self.max_shift < 0 or not 0 <= self.scale < 1 or self.noise < 0:
            raise ValueError("IntlSettings: max_shift ≥ 0, 0 ≤ scale < 1 and noise ≥ 0")


QUICK = IntlSettings(epochs=8)
FULL = IntlSettings(epochs=40)


def settings(ctx: StudyContext) -> IntlSettings:
    """``QUICK`` with ``--quick``, else ``FULL``."""
    return QUICK if ctx.quick else FULL


# ---------------------------------------------------------------------------- model
class SSLNet(nn.Module):
    """Encoder → projector → spectral transformation (IterNorm or identity), plus a readout.

    ``encode(x)`` gives the encoder features ``[B, feature_dim]``, ``transform(h)`` the
    transformed embedding of encoder features (what the loss sees). ``readout`` is an online
    linear classifier trained with cross-entropy on the *detached* encoder features (standard
    online evaluation in self-supervised learning): it never sends a gradient into the network,
    so the self-supervised training is the same with or without it. ``out`` is an identity
    whose input is the transformed embedding, so the pipeline can name it as a layer.

    ``forward(x)`` is the analysis view: it runs encoder, projector, ``whiten`` and ``out`` (the
    pipeline's hooks capture their inputs) and returns the readout's logits ``[B, 10]``, which
    the pipeline needs; the last ``nn.Linear`` (``readout``) is its classifier, whose input are
    the encoder features.
    """

    def __init__(self, whiten: bool, s: IntlSettings) -> None:
        from analysis.studies.models import conv1d_backbone
        from geomtools.nn import IterNorm

        super().__init__()
        conv = conv1d_backbone(s.channels, 40)
        with torch.no_grad():
            flat = conv(torch.zeros(1, 40)).numel()
        self.encoder = nn.Sequential(
            conv,
            nn.Flatten(),
            nn.Linear(flat, s.feature_dim),
            nn.BatchNorm1d(s.feature_dim),
            nn.ReLU(),
        )
        self.projector = nn.Sequential(
            nn.Linear(s.feature_dim, s.hidden_dim),
            nn.BatchNorm1d(s.hidden_dim),
            nn.ReLU(),
            nn.Linear(s.hidden_dim, s.embed_dim),
        )
        self.whiten: nn.Module = IterNorm(s.embed_dim, iters=s.iters) if whiten else nn.Identity()
        self.out = nn.Identity()
        self.readout = nn.Linear(s.feature_dim, NUM_CLASSES)  # built last: same init above

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features ``[B, feature_dim]`` (what the probes see)."""
        return self.encoder(x)

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        """The transformed embedding ``whiten(projector(h))`` of encoder features ``h``."""
        return self.out(self.whiten(self.projector(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The analysis view: every layer runs; the readout's logits ``[B, 10]``."""
        h = self.encode(x)
        self.transform(h)
        return self.readout(h)


def build_model(variant: str, s: IntlSettings) -> SSLNet:
    """The network of ``variant`` (one of :data:`VARIANTS`): IterNorm for all but ``plain``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown intl variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return SSLNet(variant != "plain", s)


def _loss(variant: str) -> nn.Module:
    """The loss of ``variant``: INTLLoss with β = 0 (similarity only) or the default β."""
    from geomtools.losses import INTLLoss

    return INTLLoss() if variant == "intl" else INTLLoss(beta=0.0)


# ---------------------------------------------------------------------------- data
def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    max_shift: int,
    scale: float,
    noise: float,
) -> torch.Tensor:
    r"""A random view of each signal: circular shift, amplitude scale, additive noise.

    .. math:: v_b[t] = a_b\, x_b[(t - s_b) \bmod L] + \sigma\,\varepsilon_{bt},
       \quad s_b \sim \mathcal U\{-S, \dots, S\},\ a_b \sim \mathcal U[1 - c, 1 + c],\
       \varepsilon_{bt} \sim \mathcal N(0, 1)

    Parameters
    ----------
    x : Tensor ``[B, L]``
        Signals (float).
    generator : torch.Generator
        Source of every draw (seeded by the caller: the views are reproducible).
    max_shift : int
        :math:`S \ge 0`.
    scale : float
        :math:`c \in [0, 1)`.
    noise : float
        :math:`\sigma \ge 0`.

    Returns
    -------
    Tensor ``[B, L]``
        Same dtype as ``x``.
    """
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"augment expects float signals [B, L], got {x.dtype} {list(x.shape)}")
    if max_shift < 0 or not 0 <= scale < 1 or noise < 0:
        raise ValueError("augment: max_shift ≥ 0, 0 ≤ scale < 1 and noise ≥ 0")
    b, length = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 1), generator=generator)
    index = (torch.arange(length)[None, :] - shifts) % length
    view = x.gather(1, index)
    amp = 1.0 + scale * (2.0 * torch.rand(b, 1, generator=generator, dtype=x.dtype) - 1.0)
    eps = torch.randn(b, length, generator=generator, dtype=x.dtype)
    return view * amp + noise * eps


@functools.lru_cache(maxsize=2)
def _data(num_samples: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from analysis.studies.data import mnist1d

    return mnist1d(num_samples=num_samples)


def _test_loaders(num_samples: int, batch: int) -> dict[str, Any]:
    """The pipeline's data factory: the test split only (the spectra are test-split numbers)."""
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _data(num_samples)["test"]
    return {"test": DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)}


# ---------------------------------------------------------------------------- training
def _train(
    ctx: StudyContext, variant: str, seed: int, s: IntlSettings
) -> tuple[SSLNet, list[dict[str, Any]]]:
    """Train one run, saving ``epoch000.pt`` … ; per-epoch rows of the mean training losses.

    ``train_loss`` is the self-supervised loss; ``readout_loss`` the online readout's
    cross-entropy on the detached encoder features of both views (it changes nothing else).
    """
    from geomtools.optim import RiemannianAdamW

    x_train, y_train = _data(s.num_samples)["train"]
    n = x_train.shape[0]
    if n < s.batch_size:
        raise ValueError(f"intl: {n} training signals, fewer than one batch of {s.batch_size}")
    torch.manual_seed(seed)
    model = build_model(variant, s)
    loss_fn = _loss(variant)
    ce = nn.CrossEntropyLoss()
    opt = RiemannianAdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps = s.epochs * (n // s.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(10_000 + seed)  # batch order and views; same per variant
    aug = functools.partial(augment, max_shift=s.max_shift, scale=s.scale, noise=s.noise)
    ctx.save_checkpoint(model, variant, seed, 0)
    rows = []
    for epoch in ctx.bar(range(1, s.epochs + 1), f"intl {variant} s{seed}", total=s.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        total = readout_total = 0.0
        count = 0
        for i in range(0, n - s.batch_size + 1, s.batch_size):
            idx = perm[i : i + s.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            h1, h2 = model.encode(aug(xb, g)), model.encode(aug(xb, g))
            loss = loss_fn(model.transform(h1), model.transform(h2))
            readout = 0.5 * (
                ce(model.readout(h1.detach()), yb) + ce(model.readout(h2.detach()), yb)
            )
            opt.zero_grad()
            (loss + readout).backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
            readout_total += float(readout.detach())
            count += 1
        ctx.save_checkpoint(model, variant, seed, epoch)
        rows.append(row(seed, variant, epoch, "train", "train_loss", total / count))
        rows.append(row(seed, variant, epoch, "train", "readout_loss", readout_total / count))
    return model, rows


@torch.no_grad()
def _features(model: SSLNet, x: torch.Tensor, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoder features and embeddings of ``x`` in eval mode, float64 arrays."""
    model.eval()
    enc, emb = [], []
    for i in range(0, x.shape[0], batch):
        h = model.encode(x[i : i + batch])
        enc.append(h.double())
        emb.append(model.projector(h).double())
    return torch.cat(enc).numpy(), torch.cat(emb).numpy()


def spectrum_of(z: np.ndarray) -> np.ndarray:
    r"""Descending eigenvalues of the total covariance of ``z``.

    .. math:: \Sigma_T = \tfrac1N \sum_i (z_i - \bar z)(z_i - \bar z)^\top

    Parameters
    ----------
    z : ndarray ``[N, D]``
        Samples as rows (float64 is used).

    Returns
    -------
    ndarray ``[D]``
        float64, descending (:func:`analysis.spectrum.covariance_spectrum`).
    """
    from analysis.spectrum import covariance_spectrum

    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"spectrum_of expects [N ≥ 2, D] samples, got shape {z.shape}")
    zc = z - z.mean(axis=0)
    return covariance_spectrum(torch.from_numpy(zc.T @ zc / z.shape[0])).numpy()


def flatness(erank: float, dim: int) -> float:
    r"""Normalised spectral entropy :math:`H(p)/\log D = \log(\operatorname{erank})/\log D`.

    1 for :math:`D` equal eigenvalues, 0 for rank one (Roy & Vetterli 2007's effective rank
    :math:`\exp H(p)` on a log scale relative to its maximum :math:`D`).

    Raises
    ------
    ValueError
        ``dim`` < 2, or ``erank`` outside ``[1, dim]`` (beyond round-off).
    """
    if dim < 2:
        raise ValueError(f"flatness needs dim ≥ 2, got {dim}")
    if not (1.0 - 1e-9 <= erank <= dim * (1 + 1e-9)):
        raise ValueError(f"effective rank {erank} outside [1, {dim}]")
    return math.log(max(erank, 1.0)) / math.log(dim)


# ---------------------------------------------------------------------------- verdicts
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to summarise")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _beats(a: Sequence[float], b: Sequence[float]) -> tuple[bool, float, float, float, float]:
    """Whether mean(a) > mean(b) + max(std(a), std(b)); the four numbers."""
    ma, sa = _mean_std(a)
    mb, sb = _mean_std(b)
    return ma > mb + max(sa, sb), ma, sa, mb, sb


def decide(
    last: Mapping[str, Mapping[str, Sequence[float]]],
    initial_flatness_intl: Sequence[float],
    embed_dim: int,
) -> list[Claim]:
    """The three claims from the last-epoch numbers (decision rules: module docstring).

    Parameters
    ----------
    last : mapping
        ``last[metric][variant]`` = values over seeds at the last epoch, for the metrics
        ``effective_rank_embedding``, ``flatness_embedding`` and ``linear_probe_accuracy``
        and the variants ``plain``, ``iternorm``, ``intl``.
    initial_flatness_intl : sequence of float
        INTL's embedding flatness at epoch 0, over seeds.
    embed_dim : int
        :math:`D`.

    Returns
    -------
    list of Claim
    """
    for metric in ("effective_rank_embedding", "flatness_embedding", "linear_probe_accuracy"):
        for v in VARIANTS:
            if not list(last.get(metric, {}).get(v, [])):
                raise ValueError(f"decide: no {metric} values for variant {v!r}")
    if embed_dim < 2:
        raise ValueError(f"decide: embed_dim must be ≥ 2, got {embed_dim}")
    claims = []

    er = last["effective_rank_embedding"]
    m_plain, s_plain = _mean_std(er["plain"])
    m_intl, s_intl = _mean_std(er["intl"])
    lo, hi = COLLAPSED_FRACTION * embed_dim, FULL_FRACTION * embed_dim
    holds = m_plain < lo and m_intl >= hi
    claims.append(
        Claim(
            "A plain similarity loss collapses the embedding; INTL keeps it full rank.",
            holds,
            f"(effective rank of the test embedding, D = {embed_dim}: plain {m_plain:.2f} ± "
            f"{s_plain:.2f}, INTL {m_intl:.2f} ± {s_intl:.2f}, IterNorm only "
            f"{_mean_std(er['iternorm'])[0]:.2f}; rule: plain < {lo:.1f} (20 % of D) and "
            f"INTL ≥ {hi:.1f} (50 % of D))",
        )
    )

    fl = last["flatness_embedding"]
    ok_p, mi, si, mp, sp = _beats(fl["intl"], fl["plain"])
    ok_w, _, _, mw, sw = _beats(fl["intl"], fl["iternorm"])
    m0, _ = _mean_std(initial_flatness_intl)
    rising = mi > m0
    claims.append(
        Claim(
            "INTL drives the embedding spectrum towards equal eigenvalues.",
            ok_p and ok_w and rising,
            f"(flatness log(erank)/log D of the test embedding: INTL {mi:.3f} ± {si:.3f} "
            f"(epoch 0: {m0:.3f}), IterNorm only {mw:.3f} ± {sw:.3f}, plain {mp:.3f} ± "
            f"{sp:.3f}; rule: INTL above each other variant by more than one std and above "
            "its epoch-0 value)",
        )
    )

    pr = last["linear_probe_accuracy"]
    ok_p, mi, si, mp, sp = _beats(pr["intl"], pr["plain"])
    ok_w, _, _, mw, sw = _beats(pr["intl"], pr["iternorm"])
    claims.append(
        Claim(
            "INTL's linear-probe accuracy beats the collapsed baseline and whitening without "
            "the trace loss.",
            ok_p and ok_w,
            f"(linear-probe top-1 on the test split, frozen encoder features: INTL "
            f"{mi:.3f} ± {si:.3f}, IterNorm only {mw:.3f} ± {sw:.3f}, plain {mp:.3f} ± "
            f"{sp:.3f}; rule: INTL above each by more than one std)",
        )
    )
    return claims


# ---------------------------------------------------------------------------- study
def _probe(model: SSLNet, s: IntlSettings) -> float:
    """Linear-probe test accuracy on the frozen encoder features (train → test)."""
    from analysis.report import linear_probe

    data = _data(s.num_samples)
    enc_tr, _ = _features(model, data["train"][0], s.eval_batch)
    enc_te, _ = _features(model, data["test"][0], s.eval_batch)
    train = (enc_tr, data["train"][1].numpy())
    test = (enc_te, data["test"][1].numpy())
    return float(linear_probe(train, test)["linear_probe_accuracy"])


def _analyze(ctx: StudyContext, specs: Sequence[Any]) -> dict[tuple[str, int, str, str], float]:
    """Every run through the pipeline; ``{(run, epoch, layer, metric): value}`` of the test split.

    For the layers :data:`LAYERS` and the metrics :data:`PIPELINE_METRICS` and ``accuracy``.
    """
    report = ctx.analyze(specs)
    sub = report[
        (report["split"] == "test")
        & report["layer"].isin(list(LAYERS))
        & report["metric"].isin([*PIPELINE_METRICS, "accuracy"])
    ]
    return {
        (str(r.run), int(r.epoch), str(r.layer), str(r.metric)): float(r.value)
        for r in sub.itertuples(index=False)
    }


def _pipeline_rows(
    found: Mapping[tuple[str, int, str, str], float],
    runs: Mapping[str, tuple[str, int]],
    s: IntlSettings,
) -> list[dict[str, Any]]:
    """Tidy rows of the measured values (test split): spectra, flatness, readout accuracy.

    Every (run, epoch, layer, metric) gets a row; a value that is missing (a measure that was
    undefined, e.g. for an all-zero spectrum) is NaN, and so is its flatness.
    """
    dims = {"encoder": s.feature_dim, "embedding": s.embed_dim, "whitened": s.embed_dim}
    rows = []
    for run_name, (variant, seed) in runs.items():
        for epoch in range(s.epochs + 1):
            acc = found.get((run_name, epoch, "readout", "accuracy"), math.nan)
            rows.append(row(seed, variant, epoch, "test", "readout_accuracy", acc))
            for layer, short in LAYERS.items():
                for metric in PIPELINE_METRICS:
                    key = "effective_rank" if metric == "effective_rank_total" else metric
                    value = found.get((run_name, epoch, layer, metric), math.nan)
                    rows.append(row(seed, variant, epoch, "test", f"{key}_{short}", value))
                erank = found.get((run_name, epoch, layer, "effective_rank_total"), math.nan)
                flat = flatness(erank, dims[short]) if math.isfinite(erank) else math.nan
                rows.append(row(seed, variant, epoch, "test", f"flatness_{short}", flat))
    return rows


def _values(rows: Sequence[Mapping[str, Any]], metric: str, epoch: int) -> dict[str, list[float]]:
    """``{variant: [value per seed]}`` of a test-split metric at ``epoch`` (seed order)."""
    out: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in sorted(rows, key=lambda r: (r["variant"], r["seed"])):
        if r["metric"] == metric and r["split"] == "test" and r["epoch"] == epoch:
            out[r["variant"]].append(float(r["value"]))
    return out


def run(ctx: StudyContext, settings: IntlSettings | None = None) -> StudyResult:
    """Train the three variants per seed, analyse every checkpoint, draw, decide.

    Parameters
    ----------
    ctx : StudyContext
        Folder, seeds and mode.
    settings : IntlSettings, optional
        Overrides the mode's preset (``QUICK``/``FULL``), e.g. a tiny one in tests.
    """
    from analysis.report import linear_probe
    from analysis.runs import RunSpec

    s = settings if settings is not None else _preset(ctx)
    data = _data(s.num_samples)
    rows: list[dict[str, Any]] = []
    specs = []
    runs: dict[str, tuple[str, int]] = {}
    spectra: list[dict[str, Any]] = []
    raw = linear_probe(
        (data["train"][0].double().numpy(), data["train"][1].numpy()),
        (data["test"][0].double().numpy(), data["test"][1].numpy()),
    )["linear_probe_accuracy"]
    for seed in ctx.seeds:
        for variant in VARIANTS:
            torch.manual_seed(seed)
            init_probe = _probe(build_model(variant, s), s)
            rows.append(row(seed, variant, 0, "test", "linear_probe_accuracy", init_probe))
            model, loss_rows = _train(ctx, variant, seed, s)
            rows += loss_rows
            rows.append(
                row(seed, variant, s.epochs, "test", "linear_probe_accuracy", _probe(model, s))
            )
            enc, emb = _features(model, data["test"][0], s.eval_batch)
            for layer, z in (("encoder", enc), ("embedding", emb)):
                lam = np.clip(spectrum_of(z), 0.0, None)
                for k, p in enumerate(lam / lam.sum(), start=1):
                    spectra.append(
                        {"seed": seed, "variant": variant, "layer": layer, "k": k, "p": p}
                    )
            name = f"{variant}-s{seed}"
            runs[name] = (variant, seed)
            folder = ctx.checkpoint_dir(variant, seed)
            specs.append(
                RunSpec(
                    name=name,
                    checkpoints=[folder / f"epoch{e:03d}.pt" for e in range(s.epochs + 1)],
                    model=functools.partial(build_model, variant, s),
                    data=functools.partial(_test_loaders, s.num_samples, s.eval_batch),
                    model_label=f"analysis.studies.intl:build_model[{variant}, {s}]",
                    data_label=f"analysis.studies.intl:mnist1d[test, n={s.num_samples}]",
                    layers=list(LAYERS),
                    num_classes=NUM_CLASSES,
                    attributes={"variant": variant, "seed": seed},
                )
            )
    rows += _pipeline_rows(_analyze(ctx, specs), runs, s)

    last = {
        m: _values(rows, m, s.epochs)
        for m in ("effective_rank_embedding", "flatness_embedding", "linear_probe_accuracy")
    }
    claims = decide(last, _values(rows, "flatness_embedding", 0)["intl"], s.embed_dim)
    _figures(ctx, rows, spectra, s, raw)
    init = _values(rows, "linear_probe_accuracy", 0)["intl"]
    notes = [
        f"Sanity anchors (linear probe, test top-1): raw signals {raw:.3f} (published logistic "
        f"regression on MNIST-1D ≈ 0.32); randomly initialised encoder "
        f"{np.mean(init):.3f} (mean over seeds).",
        "Effective rank, RankMe and the online readout's accuracy come from the toolkit's "
        "pipeline report (`DIR/intl/analysis/report.csv`): layer `readout` = encoder features, "
        "`whiten` = embedding z, `out` = IterNorm output (identical to z for `plain`).",
        "`readout_accuracy` is an online linear classifier trained on the detached encoder "
        "features during training (no gradient reaches the network); the decision uses the "
        "offline probe (`linear_probe_accuracy`, refitted on the frozen features).",
    ]
    return StudyResult(
        rows=rows,
        claims=claims,
        table=[
            ("linear_probe_accuracy", "test", "probe top-1 (test)"),
            ("effective_rank_embedding", "test", f"erank z (D={s.embed_dim})"),
            ("flatness_embedding", "test", "flatness z"),
            ("rankme_embedding", "test", "RankMe z"),
            ("effective_rank_encoder", "test", f"erank encoder (D={s.feature_dim})"),
            ("effective_rank_whitened", "test", "erank IterNorm output"),
            ("readout_accuracy", "test", "online readout (test)"),
            ("train_loss", "train", "train loss"),
        ],
        setup=_setup_text(s, len(ctx.seeds)),
        notes=notes,
        table_variants=list(VARIANTS),
    )


_preset = settings  # the module-level chooser; ``run``'s argument shadows the name


def _setup_text(s: IntlSettings, seeds: int) -> str:
    from geomtools.losses.intl import default_beta

    return (
        f"- Data: MNIST-1D generated locally ({s.num_samples} signals, 80 % train / 20 % test); "
        "labels are used only by the probes (offline probe, online readout).\n"
        f"- Views: random circular shift of up to ±{s.max_shift} samples, amplitude scale in "
        f"[{1 - s.scale:g}, {1 + s.scale:g}], additive Gaussian noise σ = {s.noise:g} "
        "(seeded torch generator; the same views for every variant of a seed).\n"
        f"- Network: conv1d_backbone({s.channels}) · flatten · Linear → {s.feature_dim} · BN · "
        f"ReLU (encoder) → Linear {s.feature_dim} → {s.hidden_dim} · BN · ReLU · Linear → "
        f"{s.embed_dim} (projector; its output is the embedding z).\n"
        "- Variants: `plain` = 2 − 2cos(z¹, z²) (no negatives, no predictor); `iternorm` = "
        f"IterNorm (T = {s.iters}, feature whitening) of each view, same loss; `intl` = "
        f"IterNorm + the same loss + β·trace losses, β = 0.01(log₂B − 3) = "
        f"{default_beta(s.batch_size):g} at B = {s.batch_size} (geomtools.losses.INTLLoss).\n"
        f"- Training: {s.epochs} epochs, batch {s.batch_size}, RiemannianAdamW (lr {s.lr:g}, "
        f"weight decay {s.weight_decay:g}, cosine schedule), {seeds} seed(s); checkpoints at "
        "epoch 0 (initialisation) and after every epoch, all analysed by the pipeline.\n"
        "- Decision rules (fixed before running): (1) plain mean effective rank of z < 20 % of "
        "D and INTL's ≥ 50 % of D; (2) INTL's mean flatness log(erank)/log D of z above both "
        "other variants' by more than one std and above its epoch-0 value; (3) INTL's mean "
        "probe accuracy above both others' by more than one std."
    )


def _geometric_mean(values: Any) -> float:
    r""":math:`10^{\overline{\log_{10} v}}` (the spectrum figure's estimator)."""
    return float(10.0 ** np.mean(np.log10(np.asarray(values, dtype=np.float64))))


def _log_sd_band(values: Any) -> tuple[float, float]:
    r""":math:`10^{m \pm s}`, :math:`m, s` mean and std of :math:`\log_{10} v` (ddof 0)."""
    logs = np.log10(np.asarray(values, dtype=np.float64))
    m, sd = float(logs.mean()), float(logs.std())
    return 10.0 ** (m - sd), 10.0 ** (m + sd)


def _figures(
    ctx: StudyContext,
    rows: Sequence[Mapping[str, Any]],
    spectra: Sequence[Mapping[str, Any]],
    s: IntlSettings,
    raw_probe: float,
) -> None:
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from analysis.plots import style

    n = len(ctx.seeds)
    seeds = f"{n} seed{'s' if n > 1 else ''}"
    frame = pd.DataFrame(list(rows))
    order = list(VARIANTS)
    with style():
        # 1. spectra at the last epoch
        # geometric mean and ± sd of log10 over seeds (an arithmetic band crosses 0 on a log
        # axis); eigenvalues that are round-off of 0 are shown at the floor
        spec = pd.DataFrame(list(spectra))
        spec["p"] = spec["p"].clip(lower=SPECTRUM_FLOOR)
        fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.4), constrained_layout=True)
        for ax, layer, dim in zip(
            axes, ("embedding", "encoder"), (s.embed_dim, s.feature_dim), strict=True
        ):
            sns.lineplot(
                data=spec[spec["layer"] == layer],
                x="k",
                y="p",
                hue="variant",
                hue_order=order,
                estimator=_geometric_mean,
                errorbar=_log_sd_band,
                ax=ax,
                legend=layer == "encoder",
            )
            if layer == "encoder":  # its upper right is empty
                sns.move_legend(ax, "upper right", frameon=False)
            ax.axhline(1.0 / dim, color="0.4", ls=":", lw=1)
            ax.set_yscale("log")
            ax.set_xlabel("eigenvalue index k (descending)")
            ax.set_ylabel(r"normalised eigenvalue $\lambda_k\,/\,\mathrm{tr}\,\Sigma$")
            what = "embedding z (projector output)" if layer == "embedding" else "encoder features"
            ax.set_title(f"{what}, D = {dim}")
        fig.suptitle(
            f"INTL study: covariance spectra of the test split at epoch {s.epochs}\n"
            f"(geometric mean, band ± 1 sd of log10, over {seeds}; dotted line: equal "
            f"eigenvalues 1/D; floor {SPECTRUM_FLOOR:g})"
        )
        ctx.save_figure(fig, "intl_spectra")

        # 2. effective rank over epochs
        fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.4), constrained_layout=True)
        for ax, layer, dim in zip(
            axes,
            ("embedding", "whitened", "encoder"),
            (s.embed_dim, s.embed_dim, s.feature_dim),
            strict=True,
        ):
            sub = frame[frame["metric"] == f"effective_rank_{layer}"]
            sns.lineplot(
                data=sub,
                x="epoch",
                y="value",
                hue="variant",
                hue_order=order,
                errorbar="sd",
                ax=ax,
                legend=layer == "encoder",
            )
            if layer == "encoder":  # low ranks: its upper right is empty
                sns.move_legend(ax, "upper right", frameon=False)
            if layer == "embedding":
                ax.axhline(COLLAPSED_FRACTION * dim, color="0.4", ls=":", lw=1)
                ax.axhline(FULL_FRACTION * dim, color="0.4", ls="--", lw=1)
            ax.set_ylim(0, dim * 1.05)
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"effective rank (of D = {dim})")
            ax.set_title(
                {
                    "embedding": "embedding z",
                    "whitened": "IterNorm output",
                    "encoder": "encoder features",
                }[layer]
            )
        fig.suptitle(
            f"INTL study: effective rank of the test split over epochs (mean ± sd over {seeds})\n"
            "decision rule on z: dotted 20 % of D (collapsed), dashed 50 % of D (full)"
        )
        ctx.save_figure(fig, "intl_effective_rank")

        # 3. linear probe
        probe = frame[(frame["metric"] == "linear_probe_accuracy") & (frame["epoch"] == s.epochs)]
        init = frame[(frame["metric"] == "linear_probe_accuracy") & (frame["epoch"] == 0)]
        fig, ax = plt.subplots(figsize=(4.6, 3.4), constrained_layout=True)
        sns.barplot(
            data=probe,
            x="variant",
            y="value",
            order=order,
            errorbar="sd",
            ax=ax,
            hue="variant",
            hue_order=order,
            legend=False,
        )
        ax.axhline(raw_probe, color="0.3", ls=":", lw=1, label=f"raw signals {raw_probe:.2f}")
        ax.axhline(
            float(init["value"].mean()),
            color="0.3",
            ls="--",
            lw=1,
            label=f"random encoder {float(init['value'].mean()):.2f}",
        )
        ax.set_ylim(0, 1)
        ax.set_xlabel("variant")
        ax.set_ylabel("linear-probe top-1 accuracy (test)")
        ax.legend(loc="upper left", frameon=False)
        ax.set_title(
            f"INTL study: linear probe, test split, epoch {s.epochs}\n(mean ± sd over {seeds})"
        )
        ctx.save_figure(fig, "intl_probe")
