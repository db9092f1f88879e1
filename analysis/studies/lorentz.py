r"""Lorentz hyperbolic metric learning: learnable curvature, half precision, unseen-class retrieval.

Three claims of the Lorentz toolkit's papers, tested on one CPU-sized metric-learning task.

Papers
------
* A. Bdeir, K. Schwethelm, N. Landwehr. Fully hyperbolic convolutional neural networks for
  computer vision. ICLR 2024 (HCNN): Lorentz layers, learning the curvature by stepping the
  points first and then the curvature with the points mapped to the new hyperboloid
  (:class:`geomtools.optim.CurvatureAwareStep`), and the tanh max-distance rescaling
  :math:`d \mapsto D\tanh(d/D)` that keeps half-precision training finite
  (:func:`geomtools.manifolds.lorentz.rescale_distance`, :math:`D = \frac{\sqrt k}{4}\ln
  \frac{16}{\epsilon}`: 2.43 in float16, 1.91 in bfloat16).
* S. Kim, B. Jeong, S. Kwak. HIER: Metric learning beyond class labels via hierarchical
  regularization. CVPR 2023 (:class:`geomtools.losses.HIERLoss`), whose premise is that
  hyperbolic geometry suits hierarchical retrieval.
* M. Law, R. Liao, J. Snell, R. Zemel. Lorentzian distance learning for hyperbolic
  representations. ICML 2019 (the squared Lorentzian distance used as the proxy loss).

Data and split
--------------
:func:`analysis.studies.data.hierarchical_mnist1d` with its defaults except ``per_class``
(branching 3 · 2 · 3 = 18 leaf classes, depth 3, amplitudes (1, 0.55, 0.35), 25 % of each
class in the generator's test split, data seed 7; the same data for every seed). Leaves are
numbered in path order, so leaf :math:`c` is child :math:`c \bmod 3` of its parent. **Training
classes**: the first two leaves of each of the six bottom subtrees (12 classes), trained on
the generator's train split. **Unseen classes** (split ``test``): the third leaf of every
bottom subtree (6 classes, disjoint from training), all their samples (both generator
splits); every sample is a query against all the others (Recall@K of Song et al. 2016,
:func:`analysis.retrieval.recall_at_k`, K ∈ {1, 2, 4, 8}). Split ``seen``: the generator's
test split of the 12 training classes, same protocol (a sanity anchor).

Model and loss
--------------
Encoder: :func:`analysis.studies.models.conv1d_backbone` (32 channels), flatten, Linear → 16.
Euclidean: the 16-d feature clipped to norm ≤ r = 2.3 (the feature clipping of Guo et al.
2022, as HIER); Lorentz: :class:`geomtools.nn.EuclideanToLorentz` with the same r, a point of
the hyperboloid of ``geoopt.Lorentz(k)`` in R^17. One learnable proxy per training class
(a ``geoopt.ManifoldParameter`` on the same manifold for Lorentz); loss: cross-entropy of
:math:`-d^2(z, p_c)` over the 12 proxies, with :math:`d^2 = \|z - p\|^2` (Euclidean) or the
squared Lorentzian distance :math:`-2k - 2\langle z, p\rangle_{\mathcal L}` (Law et al.
2019); plus HIER (weight 1, 32 proxies, the paper's c = 0.1, r = 2.3, margin 0.1, τ = 0.1) on
the feature (Euclidean) or :math:`\log_o z` (Lorentz) in the ``*-hier`` variants. Optimiser:
:class:`geomtools.optim.RiemannianAdamW`, lr 1e-2 with cosine decay over the epochs, weight
decay 1e-4 on the encoder only, batch 128 (last incomplete batch dropped).

Experiments and decision rules (fixed before any run)
-----------------------------------------------------
1. **Curvature.** Learnable ``k`` (start 1) with Lorentz proxies, proxy loss only, constant
   lr ∈ {1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1} for every parameter, × method × seeds. Methods:
   ``aware`` (:class:`~geomtools.optim.CurvatureAwareStep`, k clamped to [0.1, 10]),
   ``naive`` (one ``RiemannianAdamW.step()`` moves points and k together, nothing remapped
   or clamped) and the ablation ``naive-clamp`` (naive, then k clamped to [0.1, 10]). A run
   *diverges* (metric ``diverged`` = 1 from that epoch on) when the loss, ``k`` or any
   parameter becomes non-finite, or a layer refuses ``k ≤ 0``. **Rule**: reproduced iff
   ``naive`` diverges in at least one run, and ``aware`` diverges in no more runs than
   ``naive`` at every learning rate and in fewer runs in total.
2. **Half precision.** CPU autocast in float16 and in bfloat16 (torch 2.x CPU runs both: the
   convolutions, the linear layers and the proxy-distance matrix product
   :math:`\langle z, p\rangle_{\mathcal L}` run in the half dtype; the Lorentz layers run
   in float32 by design). A fully hyperbolic head — ``EuclideanToLorentz`` without clipping,
   then :class:`geomtools.nn.LorentzLinear` 16 → 16 — with k = 1, lr 1e-2, proxy loss only;
   ``rescaled``: :func:`~geomtools.manifolds.lorentz.rescale_distance` with the autocast
   dtype's D after each Lorentz layer and on the proxies; ``raw``: none. **Rule**:
   reproduced iff every rescaled run (both dtypes, all seeds) stays finite for all epochs
   **and** at least one raw run diverges (otherwise the experiment did not reach the failure
   the rescaling is meant to prevent, and cannot show it).
3. **Retrieval.** ``euclidean``, ``lorentz`` (k = 1) and ``lorentz-learnk`` (learnable k,
   curvature-aware step) with the proxy loss alone, and ``euclidean-hier``, ``lorentz-hier``
   (k = 1) with HIER added. **Rule**: reproduced iff for every K ∈ {1, 2, 4, 8} the mean over
   seeds of the ``lorentz`` (k = 1) test Recall@K at the last epoch is at least the
   ``euclidean`` one minus 0.01 (one point: seed noise). That pair differs only in the
   geometry of the embedding (HIER itself adds hyperbolic proxies to both); the other three
   variants are reported beside it but do not decide.

NC/spectrum metrics (``ctx.analyze``) are not used: the models have no classifier over the
test classes, and the pipeline's retrieval is cosine on Euclidean features, which is not the
geometry of the Lorentz embeddings; retrieval is measured with
:func:`analysis.retrieval.recall_at_k` (``metric="lorentz"`` with the run's ``k``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import geoopt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis.studies.study import Claim, StudyContext, StudyResult, row

__all__ = [
    "CLAIM",
    "FULL",
    "NAME",
    "PAPER",
    "QUICK",
    "TITLE",
    "Embedder",
    "Settings",
    "curvature_claim",
    "precision_claim",
    "retrieval_claim",
    "run",
    "settings",
]

NAME = "lorentz"
TITLE = "Lorentz hyperbolic metric learning: learnable curvature, half precision, retrieval"
CLAIM = (
    "Learning the curvature with the curvature-aware step stays finite where stepping it "
    "together with the points diverges; tanh max-distance rescaling keeps float16/bfloat16 "
    "training finite; and hyperbolic (Lorentz) embeddings reach at least Euclidean Recall@K "
    "on retrieval of unseen classes of a hierarchy."
)
PAPER = (
    "Bdeir, Schwethelm & Landwehr, ICLR 2024 (HCNN); Kim, Jeong & Kwak, CVPR 2023 (HIER); "
    "Law et al., ICML 2019"
)

KS = (1, 2, 4, 8)
K_RANGE = (0.1, 10.0)
METHODS = ("naive", "naive-clamp", "aware")
RETRIEVAL_VARIANTS = ("euclidean", "lorentz", "lorentz-learnk", "euclidean-hier", "lorentz-hier")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
RECALL_TOLERANCE = 0.01


@dataclass(frozen=True)
class Settings:
    """Sizes of one run of the study (:data:`QUICK`, :data:`FULL`, or a test's tiny one).

    Attributes
    ----------
    epochs : int
        Epochs of each retrieval run (:data:`RETRIEVAL_VARIANTS`).
    sweep_epochs : int
        Epochs of each curvature-sweep run.
    sweep_lrs : tuple of float
        Learning rates of the curvature sweep.
    precision_epochs : int
        Epochs of each half-precision run.
    per_class : int
        Samples per leaf class of :func:`~analysis.studies.data.hierarchical_mnist1d`.
    batch_size, embed_dim, channels : int
        Batch size, embedding (space) dimension, convolution channels.
    lr, precision_lr : float
        Learning rate of the retrieval runs (cosine decay) and of the precision runs
        (constant).
    hier_proxies : int
        Proxies of :class:`geomtools.losses.HIERLoss` (≥ 2) in the ``*-hier`` variants.
    hier_weight, clip_r, weight_decay : float
        HIER weight, feature-clipping radius, encoder weight decay.
    """

    epochs: int
    sweep_epochs: int
    sweep_lrs: tuple[float, ...]
    precision_epochs: int
    per_class: int = 300
    batch_size: int = 128
    embed_dim: int = 16
    channels: int = 32
    lr: float = 1e-2
    precision_lr: float = 1e-2
    hier_proxies: int = 32
    hier_weight: float = 1.0
    clip_r: float = 2.3
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if min(self.epochs, self.sweep_epochs, self.precision_epochs) < 1:
            raise ValueError("Settings: every number of epochs must be ≥ 1")
        if not self.sweep_lrs or any(not lr > 0 for lr in self.sweep_lrs):
            raise ValueError(f"Settings: sweep_lrs must be positive, got {self.sweep_lrs}")
        if self.per_class < 8 or self.batch_size < 4 or self.hier_proxies < 2:
            raise ValueError("Settings: per_class ≥ 8, batch_size ≥ 4 and hier_proxies ≥ 2")


SWEEP_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
QUICK = Settings(epochs=8, sweep_epochs=3, sweep_lrs=SWEEP_LRS, precision_epochs=3)
FULL = Settings(epochs=20, sweep_epochs=10, sweep_lrs=SWEEP_LRS, precision_epochs=12)


def settings(ctx: StudyContext) -> Settings:
    """:data:`QUICK` in quick mode, :data:`FULL` otherwise."""
    return QUICK if ctx.quick else FULL


_default_settings = settings


# ---------------------------------------------------------------------------- data
@dataclass
class _Data:
    x_train: torch.Tensor
    y_train: torch.Tensor  # 0..num_train_classes-1
    x_unseen: torch.Tensor
    y_unseen: torch.Tensor
    x_seen: torch.Tensor
    y_seen: torch.Tensor
    train_classes: list[int]
    unseen_classes: list[int]


def _data(per_class: int) -> _Data:
    """The hierarchical MNIST-1D split into training classes and unseen test classes."""
    from analysis.studies.data import hierarchical_mnist1d

    d = hierarchical_mnist1d(per_class=per_class)
    last = d.branching[-1]
    unseen = [c for c in range(d.num_classes) if c % last == last - 1]
    train = [c for c in range(d.num_classes) if c % last != last - 1]
    remap = torch.full((d.num_classes,), -1, dtype=torch.long)
    remap[torch.tensor(train)] = torch.arange(len(train))
    x_tr, y_tr = d.splits["train"]
    x_te, y_te = d.splits["test"]
    in_train = remap[y_tr] >= 0
    x_all = torch.cat([x_tr, x_te])
    y_all = torch.cat([y_tr, y_te])
    is_unseen = remap[y_all] < 0
    seen_test = remap[y_te] >= 0
    return _Data(
        x_train=x_tr[in_train],
        y_train=remap[y_tr[in_train]],
        x_unseen=x_all[is_unseen],
        y_unseen=y_all[is_unseen],
        x_seen=x_te[seen_test],
        y_seen=y_te[seen_test],
        train_classes=train,
        unseen_classes=unseen,
    )


# ---------------------------------------------------------------------------- model
class Embedder(nn.Module):
    r"""Conv1d encoder → Euclidean or Lorentz embedding, with one learnable proxy per class.

    Parameters
    ----------
    num_classes : int
        Training classes (one proxy each).
    dim : int
        Embedding (space) dimension.
    channels : int
        Channels of :func:`analysis.studies.models.conv1d_backbone`.
    manifold : geoopt.Lorentz, optional
        Lorentz embedding on this manifold (its ``k`` may be learnable); Euclidean if None.
    clip_r : float or None
        Feature clipping radius (Guo et al. 2022); None: no clipping.
    lorentz_linear : bool
        Add a :class:`geomtools.nn.LorentzLinear` ``dim → dim`` after the exponential map.
    rescale : torch.dtype, optional
        Apply :func:`geomtools.manifolds.lorentz.rescale_distance` for this dtype after each
        Lorentz layer and to the proxies (HCNN's float16 rescaling).

    Notes
    -----
    ``logits(z)`` are :math:`-d^2(z, p_c)`: the squared Euclidean distance, or the squared
    Lorentzian distance :math:`-2k - 2\langle z, p_c\rangle_{\mathcal L}` (Law et al. 2019),
    whose matrix product runs in the autocast dtype when autocast is on.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        dim: int,
        channels: int,
        manifold: geoopt.Lorentz | None,
        clip_r: float | None,
        lorentz_linear: bool = False,
        rescale: torch.dtype | None = None,
    ) -> None:
        from analysis.studies.models import conv1d_backbone
        from geomtools.manifolds.lorentz import expmap0
        from geomtools.nn import EuclideanToLorentz, LorentzLinear

        super().__init__()
        if num_classes < 2 or dim < 1:
            raise ValueError(f"Embedder: num_classes ≥ 2 and dim ≥ 1, got {num_classes}, {dim}")
        if manifold is None and (lorentz_linear or rescale is not None):
            raise ValueError("Embedder: lorentz_linear and rescale need a Lorentz manifold")
        conv = conv1d_backbone(channels)
        with torch.no_grad():
            flat = conv(torch.zeros(1, 40)).numel()
        self.encoder = nn.Sequential(conv, nn.Flatten(), nn.Linear(flat, dim))
        self.manifold = manifold
        self.clip_r = clip_r
        self.rescale = rescale
        init = 0.1 * torch.randn(num_classes, dim)
        self.proxies: nn.Parameter
        if manifold is None:
            self.proxies = nn.Parameter(init)
            self.to_lorentz: nn.Module | None = None
            self.hyperbolic: nn.Module | None = None
        else:
            self.to_lorentz = EuclideanToLorentz(k=manifold, clip_r=clip_r)
            self.hyperbolic = LorentzLinear(dim, dim, k=manifold) if lorentz_linear else None
            with torch.no_grad():
                points = expmap0(init, manifold.k.detach())
            self.proxies = geoopt.ManifoldParameter(points, manifold=manifold)

    @property
    def k(self) -> torch.Tensor:
        """The curvature parameter ``k`` (curvature −1/k); 0-d, with its gradient."""
        if self.manifold is None:
            raise ValueError("a Euclidean Embedder has no curvature")
        return self.manifold.k

    def _squash(self, x: torch.Tensor) -> torch.Tensor:
        from geomtools.manifolds.lorentz import rescale_distance

        if self.rescale is None:
            return x
        return rescale_distance(x, self.k, dtype=self.rescale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings: ``[B, dim]`` (Euclidean) or points ``[B, dim + 1]`` (Lorentz)."""
        h = self.encoder(x)
        if self.to_lorentz is None:
            if self.clip_r is None:
                return h
            norm = torch.linalg.vector_norm(h, dim=-1, keepdim=True)
            return h * (self.clip_r / norm.clamp_min(self.clip_r))
        z = self._squash(self.to_lorentz(h))
        if self.hyperbolic is not None:
            z = self._squash(self.hyperbolic(z))
        return z

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`-d^2(z, p_c)` for every proxy: ``[B, num_classes]``."""
        if self.manifold is None:
            p = self.proxies
            sq = z.square().sum(-1, keepdim=True) + p.square().sum(-1) - 2.0 * (z @ p.T)
            return -sq
        q = self._squash(self.proxies)
        inner = z[:, 1:] @ q[:, 1:].T - z[:, :1] @ q[:, :1].T
        return 2.0 * inner + 2.0 * self.k

    def tangent(self, z: torch.Tensor) -> torch.Tensor:
        r"""Euclidean vectors for HIER: ``z`` itself, or :math:`\log_o z` (Lorentz)."""
        from geomtools.manifolds.lorentz import logmap0

        return z if self.manifold is None else logmap0(z.float(), self.k)


# ---------------------------------------------------------------------------- training
class _Diverged(Exception):
    """A non-finite loss, parameter or curvature."""


@dataclass(frozen=True)
class _Divergence:
    """Where and why a run diverged (for the notes)."""

    variant: str
    seed: int
    epoch: int
    step: int
    why: str


def _non_finite(model: nn.Module) -> list[str]:
    """Names of the parameters with a non-finite entry."""
    return [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


@dataclass
class _Run:
    variant: str
    seed: int
    model: Embedder
    hier: nn.Module | None
    method: str  # "fixed", "naive", "naive-clamp", "aware"
    lr: float
    epochs: int
    cosine: bool
    autocast: torch.dtype | None = None


def _param_groups(run: _Run, weight_decay: float) -> list[dict[str, Any]]:
    model = run.model
    special = {id(model.proxies)}
    curvature: list[torch.Tensor] = []
    if model.manifold is not None and model.k.requires_grad:
        curvature = [model.k]
        special.add(id(model.k))
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    points = [model.proxies] + ([] if run.hier is None else list(run.hier.parameters()))
    groups: list[dict[str, Any]] = [
        {"params": rest, "weight_decay": weight_decay},
        {"params": points, "weight_decay": 0.0},
    ]
    if curvature:
        groups.append({"params": curvature, "weight_decay": 0.0})
    return groups


def _autocast(dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def _proxy_constraint(model: Embedder) -> float:
    r""":math:`\max_c |\langle p_c, p_c\rangle_{\mathcal L} + k| / k` of the proxies (float64)."""
    from geomtools.manifolds.lorentz import minkowski_inner

    with torch.no_grad():
        p = model.proxies.detach().double()
        k = model.k.detach().double()
        return float(((minkowski_inner(p, p) + k).abs() / k).max())


def _train(
    run: _Run,
    data: _Data,
    cfg: Settings,
    evaluate: _Eval | None,
    reasons: list[_Divergence],
) -> list[dict[tuple[str, str], float]]:
    """Train one run; one record ``{(metric, split): value}`` per epoch (NaN after divergence).

    ``reasons`` receives one entry per diverged run (where and why).
    """
    from geomtools.optim import CurvatureAwareStep, RiemannianAdamW

    model = run.model
    opt = RiemannianAdamW(_param_groups(run, cfg.weight_decay), lr=run.lr)
    stepper: Any = opt
    if run.method == "aware":
        assert model.manifold is not None
        stepper = CurvatureAwareStep(opt, [model.manifold], k_range=K_RANGE)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=run.epochs) if run.cosine else None
    )
    g = torch.Generator().manual_seed(run.seed)
    x, y = data.x_train, data.y_train
    n, bs = len(y), cfg.batch_size
    records: list[dict[tuple[str, str], float]] = []
    diverged = False
    for epoch in range(1, run.epochs + 1):
        losses: list[float] = []
        if not diverged:
            model.train()
            if run.hier is not None:
                run.hier.train()
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - bs + 1, bs):
                idx = perm[i : i + bs]
                try:
                    with _autocast(run.autocast):
                        z = model(x[idx])
                        loss = F.cross_entropy(model.logits(z).float(), y[idx])
                        if run.hier is not None:
                            loss = loss + cfg.hier_weight * run.hier(model.tangent(z), y[idx])
                    if not bool(torch.isfinite(loss)):
                        raise _Diverged("non-finite loss")
                    opt.zero_grad()
                    loss.backward()
                    stepper.step()
                    if run.method == "naive-clamp":
                        with torch.no_grad():
                            model.k.clamp_(*K_RANGE)
                    bad = _non_finite(model)
                    if bad:
                        raise _Diverged("non-finite " + ", ".join(bad) + " after the step")
                    if model.manifold is not None and not bool(model.k > 0):
                        raise _Diverged(f"k = {float(model.k):.3g} ≤ 0 after the step")
                except (_Diverged, ValueError, RuntimeError) as err:
                    diverged = True
                    msg = str(err).splitlines()[0][:90]
                    if not isinstance(err, _Diverged):
                        msg = f"{type(err).__name__}: {msg}"
                    step = (epoch - 1) * (n // bs) + i // bs + 1
                    reasons.append(_Divergence(run.variant, run.seed, epoch, step, msg))
                    break
                losses.append(float(loss.detach()))
            if sched is not None:
                sched.step()
        rec: dict[tuple[str, str], float] = {
            ("diverged", ""): float(diverged),
            ("loss", "train"): math.nan if diverged else float(np.mean(losses)),
        }
        if model.manifold is not None:
            rec[("k", "")] = math.nan if diverged else float(model.k.detach())
            if run.method != "fixed" or run.autocast is not None:
                rec[("constraint_error", "")] = math.nan if diverged else _proxy_constraint(model)
        if evaluate is not None:
            if diverged:
                rec.update(dict.fromkeys(evaluate.keys, math.nan))
            else:
                values = evaluate.fn(model)
                if list(values) != evaluate.keys:
                    raise RuntimeError(f"evaluation returned {list(values)}, not {evaluate.keys}")
                rec.update(values)
        records.append(rec)
    return records


# ---------------------------------------------------------------------------- evaluation
@dataclass
class _Eval:
    """An evaluation: ``fn(model) -> {(metric, split): value}`` with exactly ``keys``."""

    fn: Callable[[Embedder], dict[tuple[str, str], float]]
    keys: list[tuple[str, str]]


def _embed(model: Embedder, x: torch.Tensor, autocast: torch.dtype | None) -> torch.Tensor:
    model.eval()
    with torch.no_grad(), _autocast(autocast):
        return torch.cat([model(x[i : i + 1024]).float() for i in range(0, len(x), 1024)])


def _recall(model: Embedder, z: torch.Tensor, y: torch.Tensor) -> dict[int, float]:
    """Recall@K over all queries against all other items, in the model's geometry."""
    from analysis.retrieval import recall_at_k
    from geomtools.manifolds.lorentz import project

    if not bool(torch.isfinite(z).all()):
        return dict.fromkeys(KS, math.nan)
    if model.manifold is None:
        return recall_at_k(z.double(), y, ks=KS, metric="euclidean")
    k = float(model.k.detach())
    # the time is a function of the space part: recompute it in float64 (exact on the sheet)
    return recall_at_k(project(z.double(), k), y, ks=KS, metric="lorentz", curvature=k)


def _max_distance(model: Embedder, z: torch.Tensor) -> float:
    r"""Largest distance to the origin, :math:`\sqrt k\,\operatorname{asinh}(\|z_s\|/\sqrt k)`."""
    sk = math.sqrt(float(model.k.detach()))
    return float((sk * torch.asinh(z[:, 1:].double().norm(dim=1) / sk)).max())


def _retrieval_eval(data: _Data) -> _Eval:
    def evaluate(model: Embedder) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for split, x, y in (
            ("test", data.x_unseen, data.y_unseen),
            ("seen", data.x_seen, data.y_seen),
        ):
            rec = _recall(model, _embed(model, x, None), y)
            out.update({(f"recall@{k}", split): float(v) for k, v in rec.items()})
        return out

    return _Eval(evaluate, [(f"recall@{k}", s) for s in ("test", "seen") for k in KS])


def _precision_eval(data: _Data, dtype: torch.dtype) -> _Eval:
    def evaluate(model: Embedder) -> dict[tuple[str, str], float]:
        z = _embed(model, data.x_unseen, dtype)
        finite = bool(torch.isfinite(z).all())
        return {
            ("max_distance", "test"): _max_distance(model, z) if finite else math.nan,
            ("recall@1", "test"): float(_recall(model, z, data.y_unseen)[1]),
        }

    return _Eval(evaluate, [("max_distance", "test"), ("recall@1", "test")])


# ---------------------------------------------------------------------------- claims
def _fmt_lrs(lrs: Sequence[float]) -> str:
    return "{" + ", ".join(f"{lr:g}" for lr in lrs) + "}" if lrs else "none"


def curvature_claim(diverged: Mapping[str, Mapping[float, Sequence[float]]]) -> Claim:
    """Claim 1 from ``{method: {lr: [diverged 0/1 per seed]}}`` (module docstring, rule 1).

    Needs the methods ``"naive"`` and ``"aware"`` over the same learning rates;
    ``"naive-clamp"`` (optional) is reported.
    """
    for m in ("naive", "aware"):
        if m not in diverged:
            raise ValueError(f"curvature_claim: no runs of method {m!r}")
    lrs = sorted(diverged["naive"])
    if sorted(diverged["aware"]) != lrs:
        raise ValueError("curvature_claim: naive and aware need the same learning rates")

    def count(m: str, lr: float) -> int:
        return int(sum(float(v) > 0 for v in diverged[m][lr]))

    n_runs = sum(len(diverged["naive"][lr]) for lr in lrs)
    naive = {lr: count("naive", lr) for lr in lrs}
    aware = {lr: count("aware", lr) for lr in lrs}
    worse = [lr for lr in lrs if aware[lr] > naive[lr]]
    total_n, total_a = sum(naive.values()), sum(aware.values())
    holds = total_n > 0 and total_a < total_n and not worse
    parts = [
        f"naive joint step diverged in {total_n}/{n_runs} runs "
        f"(at lr {_fmt_lrs([lr for lr in lrs if naive[lr]])})",
        f"curvature-aware step in {total_a}/{n_runs} "
        f"(at lr {_fmt_lrs([lr for lr in lrs if aware[lr]])})",
    ]
    if "naive-clamp" in diverged:
        clamp = {lr: count("naive-clamp", lr) for lr in diverged["naive-clamp"]}
        parts.append(
            f"ablation naive + clamp of k to [0.1, 10] in {sum(clamp.values())}/{n_runs} "
            f"(at lr {_fmt_lrs([lr for lr in sorted(clamp) if clamp[lr]])})"
        )
    if worse:
        parts.append(f"curvature-aware diverged more often than naive at lr {_fmt_lrs(worse)}")
    evidence = (
        "(" + "; ".join(parts) + "; rule: naive diverges at least once, and curvature-aware "
        "diverges in no more runs than naive at every learning rate and in fewer in total)"
    )
    return Claim(
        "Learning the curvature with the curvature-aware step stays finite where the naive "
        "joint step diverges.",
        holds,
        evidence,
    )


def precision_claim(diverged: Mapping[str, Sequence[float]]) -> Claim:
    """Claim 2 from ``{"fp16-rescaled": [0/1 per seed], "fp16-raw": ..., "bf16-...": ...}``.

    Rule 2 of the module docstring: every ``*-rescaled`` run finite and at least one ``*-raw``
    run diverged.
    """
    rescaled = {v: d for v, d in diverged.items() if v.endswith("-rescaled")}
    raw = {v: d for v, d in diverged.items() if v.endswith("-raw")}
    if not rescaled or not raw:
        raise ValueError("precision_claim: needs '*-rescaled' and '*-raw' variants")

    def text(group: Mapping[str, Sequence[float]]) -> str:
        return ", ".join(
            f"{v} {int(sum(float(x) > 0 for x in d))}/{len(d)}" for v, d in sorted(group.items())
        )

    all_finite = all(float(x) == 0 for d in rescaled.values() for x in d)
    raw_fails = any(float(x) > 0 for d in raw.values() for x in d)
    holds = all_finite and raw_fails
    evidence = (
        f"(diverged runs: {text(rescaled)}; without rescaling: {text(raw)}; rule: every "
        "rescaled run finite for all epochs and at least one run without rescaling diverges, "
        "so that the rescaling is what keeps training finite)"
    )
    return Claim(
        "tanh max-distance rescaling keeps float16/bfloat16 training finite.", holds, evidence
    )


def retrieval_claim(
    recall: Mapping[str, Mapping[int, Sequence[float]]], tolerance: float = RECALL_TOLERANCE
) -> Claim:
    """Claim 3 from ``{variant: {K: [test Recall@K per seed at the last epoch]}}`` (rule 3).

    Needs ``"euclidean"`` and ``"lorentz"``; every other variant given is reported.
    Non-finite values (a diverged run) make the mean NaN and the claim fail.
    """
    for v in ("euclidean", "lorentz"):
        if v not in recall:
            raise ValueError(f"retrieval_claim: no Recall@K of variant {v!r}")
    ks = sorted(recall["euclidean"])
    if sorted(recall["lorentz"]) != ks or not ks:
        raise ValueError("retrieval_claim: euclidean and lorentz need the same Ks")

    def mean(v: str, k: int) -> float:
        return float(np.mean(np.asarray(recall[v][k], dtype=np.float64)))

    holds = all(mean("lorentz", k) >= mean("euclidean", k) - tolerance for k in ks)
    pairs = ", ".join(f"R@{k} {mean('lorentz', k):.3f} vs {mean('euclidean', k):.3f}" for k in ks)
    others = [v for v in recall if v not in ("euclidean", "lorentz")]
    extra = "".join(
        f"; {v}: " + ", ".join(f"R@{k} {mean(v, k):.3f}" for k in ks if k in recall[v])
        for v in others
    )
    if others:
        extra += " (not deciding)"
    evidence = (
        f"(mean test Recall@K on the unseen classes, Lorentz k = 1 vs Euclidean: {pairs}"
        f"{extra}; rule: Lorentz ≥ Euclidean − {tolerance:g} at every K)"
    )
    return Claim(
        "Hyperbolic (Lorentz) embeddings reach at least Euclidean Recall@K on retrieval of "
        "unseen classes.",
        holds,
        evidence,
    )


# ---------------------------------------------------------------------------- rows
def _rows(
    variant: str, seed: int, records: Sequence[Mapping[tuple[str, str], float]]
) -> list[dict[str, Any]]:
    return [
        row(seed, variant, epoch, split, metric, value)
        for epoch, rec in enumerate(records, start=1)
        for (metric, split), value in rec.items()
    ]


def _sweep_variant(method: str, lr: float) -> str:
    return f"sweep-{method}-lr{lr:g}"


# ---------------------------------------------------------------------------- figures
def _legend_outside(fig: Any, ax: Any, title: str | None = None) -> None:
    """Move ``ax``'s legend to the right of the figure (constrained layout keeps it inside)."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    fig.legend(handles, labels, title=title, loc="outside right upper", frameon=False)


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _figures(ctx: StudyContext, rows: list[dict[str, Any]], cfg: Settings) -> None:
    """The study's five figures, drawn with seaborn from the tidy rows."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from analysis.plots import style
    from geomtools.manifolds.lorentz import max_distance

    df = pd.DataFrame(rows)
    n = len(ctx.seeds)
    seeds = f"{n} seed{'s' if n > 1 else ''}"
    spread = f"mean ± sd over {seeds}" if n > 1 else seeds
    variants = list(RETRIEVAL_VARIANTS)
    with style():
        # Recall@K bars at the last epoch, unseen classes
        last = df[
            df["variant"].isin(variants)
            & (df["epoch"] == cfg.epochs)
            & (df["split"] == "test")
            & df["metric"].str.startswith("recall@")
        ].copy()
        last["K"] = last["metric"].str.slice(7).astype(int)
        fig, ax = plt.subplots(figsize=(7.5, 3.6), layout="constrained")
        sns.barplot(
            data=last,
            x="K",
            y="value",
            hue="variant",
            hue_order=variants,
            errorbar="sd",
            capsize=0.1,
            ax=ax,
        )
        ax.set_xlabel("K (retrieved neighbours)")
        ax.set_ylabel("Recall@K (fraction of queries)")
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"lorentz: Recall@K, 6 unseen classes (test), epoch {cfg.epochs}, {spread}")
        _legend_outside(fig, ax, "embedding")
        ctx.save_figure(fig, "lorentz_recall")

        # Recall@1 over epochs
        curve = df[
            df["variant"].isin(variants)
            & (df["metric"] == "recall@1")
            & df["split"].isin(["test", "seen"])
        ]
        fig, ax = plt.subplots(figsize=(7.5, 3.6), layout="constrained")
        sns.lineplot(
            data=curve,
            x="epoch",
            y="value",
            hue="variant",
            hue_order=variants,
            style="split",
            style_order=["test", "seen"],
            errorbar="sd",
            marker="o",
            ax=ax,
        )
        _integer_epochs(ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel("Recall@1 (fraction of queries)")
        ax.set_title(f"lorentz: Recall@1 per epoch, unseen (test) and seen classes, {spread}")
        _legend_outside(fig, ax)
        ctx.save_figure(fig, "lorentz_recall_epochs")

        # divergence vs learning rate
        sweep = df[df["variant"].str.startswith("sweep-")].copy()
        parts = sweep["variant"].str.extract(r"^sweep-(.+)-lr(.+)$")
        sweep["method"], sweep["lr"] = parts[0], parts[1].astype(float)
        div = sweep[(sweep["metric"] == "diverged") & (sweep["epoch"] == cfg.sweep_epochs)]
        frac = div.groupby(["method", "lr"], as_index=False)["value"].mean()
        fig, ax = plt.subplots(figsize=(7.0, 3.6), layout="constrained")
        sns.lineplot(
            data=frac,
            x="lr",
            y="value",
            hue="method",
            hue_order=list(METHODS),
            style="method",
            style_order=list(METHODS),
            markers={"naive": "o", "naive-clamp": "X", "aware": "s"},
            dashes={"naive": "", "naive-clamp": (4, 2), "aware": ""},
            markersize=8,
            ax=ax,
        )
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("learning rate (points and k, constant)")
        ax.set_ylabel("fraction of runs diverged")
        ax.set_title(
            f"lorentz: learnable curvature, runs diverged by epoch {cfg.sweep_epochs} "
            f"({seeds} per point)"
        )
        _legend_outside(fig, ax, "curvature step")
        ctx.save_figure(fig, "lorentz_divergence")

        # curvature trajectories
        fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8), layout="constrained")
        ks = sweep[(sweep["metric"] == "k") & (sweep["method"] == "aware")].copy()
        ks["lr"] = ks["lr"].map(lambda v: f"{v:g}")
        sns.lineplot(
            data=ks,
            x="epoch",
            y="value",
            hue="lr",
            hue_order=[f"{v:g}" for v in cfg.sweep_lrs],
            errorbar="sd",
            marker="o",
            ax=axes[0],
        )
        _integer_epochs(axes[0])
        axes[0].set_xlabel("epoch")
        axes[0].set_ylabel("k (curvature −1/k)")
        axes[0].set_title(f"sweep, curvature-aware step, {spread}")
        axes[0].legend(title="lr", loc="upper left", fontsize=7, ncols=2)
        learn = df[(df["variant"] == "lorentz-learnk") & (df["metric"] == "k")]
        sns.lineplot(data=learn, x="epoch", y="value", errorbar="sd", marker="o", ax=axes[1])
        _integer_epochs(axes[1])
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("k (curvature −1/k)")
        axes[1].set_title(f"retrieval run lorentz-learnk, {spread}")
        fig.suptitle(
            f"lorentz: learned curvature at the end of each epoch ({seeds}; naive runs diverge, "
            "see lorentz_divergence)"
        )
        ctx.save_figure(fig, "lorentz_curvature")

        # half precision
        prec = df[df["variant"].str.contains(r"^(?:fp16|bf16)-")]
        order = [f"{d}-{r}" for d in DTYPES for r in ("rescaled", "raw")]
        fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8), layout="constrained")
        sns.lineplot(
            data=prec[prec["metric"] == "max_distance"],
            x="epoch",
            y="value",
            hue="variant",
            hue_order=order,
            errorbar="sd",
            marker="o",
            ax=axes[0],
        )
        for (d, dt), va in zip(DTYPES.items(), ("bottom", "top"), strict=True):
            axes[0].axhline(max_distance(dt), color="0.5", lw=0.8, ls=":")
            axes[0].annotate(
                f"D({d}) = {max_distance(dt):.2f}",
                (1.0, max_distance(dt)),
                xycoords=("axes fraction", "data"),
                ha="right",
                va=va,
                fontsize=7,
                color="0.35",
            )
        _integer_epochs(axes[0])
        axes[0].set_ylim(bottom=0.0)
        axes[0].set_xlabel("epoch")
        axes[0].set_ylabel("max distance to the origin (test embeddings)")
        axes[0].set_title(f"largest distance to the origin, {spread}")
        axes[0].legend(loc="upper left", fontsize=7)
        at_end = prec[prec["epoch"] == cfg.precision_epochs]
        sns.barplot(
            data=at_end[(at_end["metric"] == "recall@1") & (at_end["split"] == "test")],
            x="variant",
            y="value",
            order=order,
            hue="variant",
            hue_order=order,
            errorbar="sd",
            capsize=0.1,
            ax=axes[1],
        )
        div = at_end[at_end["metric"] == "diverged"].groupby("variant")["value"]
        counts = div.agg(["sum", "count"])
        for i, v in enumerate(order):
            if v in counts.index:
                s, c = counts.loc[v]
                axes[1].annotate(
                    f"{int(s)}/{int(c)} diverged",
                    (i, 0.02),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    bbox={"boxstyle": "round", "fc": "white", "alpha": 0.85, "lw": 0},
                )
        axes[1].set_ylim(0.0, 1.0)
        axes[1].set_xlabel("autocast dtype − rescaling")
        axes[1].set_ylabel("Recall@1, unseen classes (fraction)")
        axes[1].set_title(f"test Recall@1 at epoch {cfg.precision_epochs} and diverged runs")
        fig.suptitle(f"lorentz: CPU autocast float16 / bfloat16 training ({seeds})")
        ctx.save_figure(fig, "lorentz_precision")


# ---------------------------------------------------------------------------- study
def _hier(cfg: Settings, seed: int) -> nn.Module:
    from geomtools.losses import HIERLoss

    return HIERLoss(cfg.hier_proxies, cfg.embed_dim, seed=seed)


def run(ctx: StudyContext, settings: Settings | None = None) -> StudyResult:
    """Run the three experiments; rows, claims, table, set-up and notes (module docstring).

    Parameters
    ----------
    ctx : StudyContext
        Folder, seeds and mode.
    settings : Settings, optional
        Overrides :func:`settings` (for tests).
    """
    cfg = settings if settings is not None else _default_settings(ctx)
    data = _data(cfg.per_class)
    n_train = len(data.train_classes)
    rows: list[dict[str, Any]] = []
    reasons: list[_Divergence] = []

    def embedder(manifold: geoopt.Lorentz | None, **kw: Any) -> Embedder:
        return Embedder(n_train, dim=cfg.embed_dim, channels=cfg.channels, manifold=manifold, **kw)

    # 3. retrieval
    jobs = [(v, s) for v in RETRIEVAL_VARIANTS for s in ctx.seeds]
    final_recall: dict[str, dict[int, list[float]]] = {}
    for variant, seed in ctx.bar(jobs, "lorentz retrieval"):
        torch.manual_seed(seed)
        man = None
        if variant.startswith("lorentz"):
            man = geoopt.Lorentz(k=1.0, learnable=variant == "lorentz-learnk")
        model = embedder(man, clip_r=cfg.clip_r)
        method = "aware" if variant == "lorentz-learnk" else "fixed"
        hier = _hier(cfg, seed) if variant.endswith("-hier") else None
        r = _Run(variant, seed, model, hier, method, cfg.lr, cfg.epochs, True)
        records = _train(r, data, cfg, _retrieval_eval(data), reasons)
        ctx.save_checkpoint(model, variant, seed, cfg.epochs)
        rows += _rows(variant, seed, records)
        for k in KS:
            final_recall.setdefault(variant, {}).setdefault(k, []).append(
                records[-1].get((f"recall@{k}", "test"), math.nan)
            )

    # 1. curvature sweep
    sweep_div: dict[str, dict[float, list[float]]] = {m: {} for m in METHODS}
    jobs_s = [(m, lr, s) for lr in cfg.sweep_lrs for m in METHODS for s in ctx.seeds]
    for method, lr, seed in ctx.bar(jobs_s, "lorentz curvature sweep"):
        torch.manual_seed(seed)
        model = embedder(geoopt.Lorentz(k=1.0, learnable=True), clip_r=cfg.clip_r)
        variant = _sweep_variant(method, lr)
        r = _Run(variant, seed, model, None, method, lr, cfg.sweep_epochs, False)
        records = _train(r, data, cfg, None, reasons)
        rows += _rows(variant, seed, records)
        sweep_div[method].setdefault(lr, []).append(records[-1][("diverged", "")])

    # 2. half precision
    prec_div: dict[str, list[float]] = {}
    jobs_p = [(d, r, s) for d in DTYPES for r in ("rescaled", "raw") for s in ctx.seeds]
    for dname, mode, seed in ctx.bar(jobs_p, "lorentz precision"):
        dtype = DTYPES[dname]
        torch.manual_seed(seed)
        model = embedder(
            geoopt.Lorentz(k=1.0),
            clip_r=None,
            lorentz_linear=True,
            rescale=dtype if mode == "rescaled" else None,
        )
        variant = f"{dname}-{mode}"
        r = _Run(
            variant,
            seed,
            model,
            None,
            "fixed",
            cfg.precision_lr,
            cfg.precision_epochs,
            False,
            autocast=dtype,
        )
        records = _train(r, data, cfg, _precision_eval(data, dtype), reasons)
        ctx.save_checkpoint(model, variant, seed, cfg.precision_epochs)
        rows += _rows(variant, seed, records)
        prec_div.setdefault(variant, []).append(records[-1][("diverged", "")])

    _figures(ctx, rows, cfg)
    claims = [curvature_claim(sweep_div), precision_claim(prec_div), retrieval_claim(final_recall)]
    table = [
        ("recall@1", "test", "R@1 unseen"),
        ("recall@2", "test", "R@2 unseen"),
        ("recall@4", "test", "R@4 unseen"),
        ("recall@8", "test", "R@8 unseen"),
        ("recall@1", "seen", "R@1 seen"),
        ("k", "", "k"),
        ("diverged", "", "diverged"),
        ("max_distance", "test", "max dist."),
        ("constraint_error", "", "proxy constraint error"),
    ]
    setup = _setup_text(cfg, data, len(ctx.seeds))
    notes = _notes(reasons)
    shown = sorted({r["variant"] for r in rows if not r["variant"].startswith("sweep-")})
    return StudyResult(
        rows=rows, claims=claims, table=table, setup=setup, notes=notes, table_variants=shown
    )


def _setup_text(cfg: Settings, data: _Data, n_seeds: int) -> str:
    lrs = ", ".join(f"{lr:g}" for lr in cfg.sweep_lrs)
    table = "\n".join(
        [
            "| experiment | variants | epochs | lr |",
            "|---|---|---|---|",
            "| retrieval (claim 3) | euclidean, lorentz (k = 1), lorentz-learnk (aware step); "
            f"euclidean-hier, lorentz-hier (+ HIER) | {cfg.epochs} | {cfg.lr:g}, cosine |",
            f"| curvature sweep (claim 1) | sweep-{{naive, naive-clamp, aware}}-lr{{{lrs}}}, "
            f"learnable k, no HIER | {cfg.sweep_epochs} | the run's lr, constant |",
            "| half precision (claim 2) | {fp16, bf16}-{rescaled, raw}: CPU autocast, unclipped "
            f"exp map + LorentzLinear, k = 1, no HIER | {cfg.precision_epochs} | "
            f"{cfg.precision_lr:g}, constant |",
        ]
    )
    return f"""\
Data: `hierarchical_mnist1d(per_class={cfg.per_class})` (18 leaves, branching 3·2·3, data seed
7, identical for every seed). Training classes: leaves {data.train_classes} (the first two of
every bottom subtree; {len(data.y_train)} signals, the generator's train split). Unseen test
classes (split `test`): leaves {data.unseen_classes} (the third of every bottom subtree; all
{len(data.y_unseen)} signals, each a query against all others). Split `seen`: the
generator's test split of the training classes ({len(data.y_seen)} signals).

Encoder `conv1d_backbone({cfg.channels})` → Linear → {cfg.embed_dim}; Euclidean: clip to
norm {cfg.clip_r:g}; Lorentz: `EuclideanToLorentz(clip_r={cfg.clip_r:g})`. One proxy per
training class; loss: cross-entropy over −d² to the proxies (squared Lorentzian distance for
Lorentz), + {cfg.hier_weight:g}·HIER ({cfg.hier_proxies} proxies) in the `*-hier` runs.
`RiemannianAdamW`, batch {cfg.batch_size}, weight decay {cfg.weight_decay:g} on the encoder.

{table}

Seeds 0..{n_seeds - 1} set the initialisation, batch order and HIER sampling. Rows: `loss`
(train, mean over the epoch), `recall@K` (test = unseen, seen), `k`, `diverged` (0/1, 1 from
the epoch a run diverged; every other metric NaN from that epoch on), `constraint_error`
(max |⟨p,p⟩_L + k|/k of the proxies), `max_distance` (largest distance to the origin of
the test embeddings under autocast). The decision rules are in the module docstring of
`analysis/studies/lorentz.py` and in each verdict."""


def _notes(reasons: Sequence[_Divergence]) -> list[str]:
    """One line per variant with diverged runs: seeds, optimizer steps and why."""
    if not reasons:
        return ["No run diverged."]
    by_variant: dict[str, list[_Divergence]] = {}
    for r in reasons:
        by_variant.setdefault(r.variant, []).append(r)
    out = []
    for variant, rs in by_variant.items():
        whys = "; ".join(dict.fromkeys(r.why for r in rs))
        where = ", ".join(f"seed {r.seed} at step {r.step} (epoch {r.epoch})" for r in rs)
        out.append(f"`{variant}` diverged: {where} — {whys}.")
    return out
