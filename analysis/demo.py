"""``geomtools demo``: train small models on the bundled digits data, then analyse them.

The whole main job on a fresh machine with no download: scikit-learn's 8×8 handwritten
digits (1797 images, 10 classes; stratified 70/30 split, seed 0), an MLP backbone
64 → 128 → 32 (BatchNorm, ReLU) and five heads trained with
:class:`geomtools.optim.RiemannianAdamW` (learning rate 1e-2, weight decay 5e-4 on Euclidean
parameters, none on Grassmann bases), one checkpoint per epoch:

========== ================================================================================
run        head
========== ================================================================================
linear     ``nn.Linear(32, 10)``, cross-entropy
etf        fixed simplex ETF (:func:`geomtools.frames.simplex_etf`), cross-entropy
haframe    fixed HAFrame (γ = 2) from the hierarchy of a Ward linkage of the training class
           means, :class:`geomtools.losses.FrameCosineLoss` (α = 0.5)
gcr-k1/2/4 :class:`geomtools.nn.GrassmannHead` with subspace dimension k = 1, 2, 4 (GCR)
========== ================================================================================

Every checkpoint is analysed at three depths (the pixels, the hidden layer and the head's
input, :data:`DEPTH_LAYERS`) with the hierarchy metrics of the HAFrame run's tree, by the
same driver as ``geomtools analyze``
(:func:`analysis.pipeline.analyze_runs`) into the results database, the tidy report is
exported (``report.csv``/``report.json``) and the figures are rendered
(:func:`analysis.plots.render_report`). Output layout under ``--out``::

    checkpoints/<run>/epoch001.pt ...   state_dicts ({"model", "epoch"})
    hierarchy.txt                       the class tree ('parent child'), for hierarchy metrics
    results.sqlite                      every metric, per-checkpoint statistics (resume)
    report.csv, report.json             exports of the database
    figures/*.pdf, figures/*.png
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

__all__ = ["DigitsNet", "digits_data", "run_demo"]

FEATURE_DIM = 32
NUM_CLASSES = 10
#: analysed besides the head's input: the pixels (input of the first Linear) and the hidden
#: layer (input of the second), for the collapse-across-depth figure
DEPTH_LAYERS = ("backbone.0", "backbone.3")


def digits_data(*, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The digits data as float32 inputs in [0, 1] ``[N, 64]`` and labels, per split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return {
        "train": (torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        "test": (torch.from_numpy(x_te), torch.from_numpy(y_te)),
    }


class DigitsNet(nn.Module):
    """MLP backbone 64 → 128 → ``FEATURE_DIM`` (BatchNorm, ReLU) followed by ``head``."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(64, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Linear(128, FEATURE_DIM),
            nn.BatchNorm1d(FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 10]``."""
        return self.head(self.backbone(x))


def _build(head: Callable[[], nn.Module]) -> DigitsNet:
    return DigitsNet(head())


def _class_hierarchy(x: torch.Tensor, y: torch.Tensor) -> tuple[Any, list[int]]:
    from scipy.cluster.hierarchy import leaves_list, linkage

    from geomtools.frames import Hierarchy

    means = np.stack([x[y == c].double().mean(0).numpy() for c in range(NUM_CLASSES)])
    z = linkage(means, method="ward")
    # (hierarchy, dendrogram leaf order: siblings adjacent, for the cosine heatmaps)
    return Hierarchy.from_linkage(z, list(range(NUM_CLASSES))), [int(i) for i in leaves_list(z)]


def _runs(data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, dict[str, Any]]:
    from geomtools.frames import haframe, simplex_etf
    from geomtools.losses import FrameCosineLoss
    from geomtools.nn import FixedFrameHead, GrassmannHead

    etf = simplex_etf(NUM_CLASSES, FEATURE_DIM, seed=0)
    hier, leaves = _class_hierarchy(*data["train"])
    haf = haframe(hier.lca_distances(), FEATURE_DIM, gamma=2.0, seed=0)
    ce = nn.CrossEntropyLoss()
    runs: dict[str, dict[str, Any]] = {
        "linear": {"head": lambda: nn.Linear(FEATURE_DIM, NUM_CLASSES), "loss": ce},
        "etf": {"head": lambda: FixedFrameHead(etf), "loss": ce},
        "haframe": {
            "head": lambda: FixedFrameHead(haf),
            "loss": FrameCosineLoss(haf, alpha=0.5),
            "similarity": haf.similarity,
            "class_order": leaves,
        },
    }
    for k in (1, 2, 4):
        runs[f"gcr-k{k}"] = {
            "head": (lambda k=k: GrassmannHead(FEATURE_DIM, NUM_CLASSES, k)),
            "loss": ce,
            "k": k,
        }
    return runs


def _train(
    name: str,
    make_model: Callable[[], nn.Module],
    loss_fn: nn.Module,
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ckpt_dir: Path,
    *,
    epochs: int,
    seed: int,
    progress: bool,
) -> None:
    from geomtools.losses import FrameCosineLoss
    from geomtools.nn import grassmann_param_groups
    from geomtools.optim import RiemannianAdamW

    torch.manual_seed(seed)
    model = make_model()
    opt = RiemannianAdamW(grassmann_param_groups(model, lr=1e-2, weight_decay=5e-4), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    x, y = data["train"]
    g = torch.Generator().manual_seed(seed)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for epoch in tqdm(range(1, epochs + 1), desc=f"train {name}", disable=not progress):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            opt.zero_grad()
            if isinstance(loss_fn, FrameCosineLoss):  # takes the features the frame sees
                loss = loss_fn(model.backbone(x[idx]), y[idx])  # type: ignore[operator]
            else:
                loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        sched.step()
        torch.save({"model": model.state_dict(), "epoch": epoch}, ckpt_dir / f"epoch{epoch:03d}.pt")


def run_demo(
    out: str | Path = "geomtools-demo",
    *,
    epochs: int = 30,
    seed: int = 0,
    progress: bool = True,
    figures: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Train, analyse and plot; return a summary (paths, final test accuracies, timing).

    Parameters
    ----------
    out : path
        Output folder (created).
    epochs : int
        Training epochs per run (one checkpoint each).
    seed : int
        Seed of data split, initialisation and batch order.
    progress : bool
        Progress bars.
    figures : bool
        Render the figures.
    force : bool
        Retrain and reanalyse even if checkpoints / cache entries exist.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and never oversubscribes
    try:
        return _run_demo(
            Path(out), epochs=epochs, seed=seed, progress=progress, figures=figures, force=force
        )
    finally:
        torch.set_num_threads(threads)


def _digits_loaders(seed: int) -> dict[str, DataLoader[Any]]:
    return {
        s: DataLoader(TensorDataset(*xy), batch_size=512, shuffle=False)
        for s, xy in digits_data(seed=seed).items()
    }


def _run_demo(
    out: Path, *, epochs: int, seed: int, progress: bool, figures: bool, force: bool
) -> dict[str, Any]:
    from analysis.pipeline import AnalyzeOptions, analyze_runs
    from analysis.report import Report
    from analysis.runs import RunSpec
    from analysis.store import DB_NAME, prepare_out

    t0 = time.perf_counter()
    from analysis.io import atomic_write_text

    prepare_out(out)
    data = digits_data(seed=seed)
    runs = _runs(data)
    # the class hierarchy of the HAFrame run, for every run's hierarchy metrics
    tree, _ = _class_hierarchy(*data["train"])
    hierarchy = out / "hierarchy.txt"
    atomic_write_text(
        hierarchy,
        "# Ward linkage of the digits' training class means; leaves are class indices\n"
        + "".join(f"{p} {c}\n" for p, c in tree.to_edges()),
    )
    specs = []
    for name, spec in runs.items():
        ckpt_dir = out / "checkpoints" / name
        make_model = functools.partial(_build, spec["head"])
        if force or not (ckpt_dir / f"epoch{epochs:03d}.pt").is_file():
            _train(
                name,
                make_model,
                spec["loss"],
                data,
                ckpt_dir,
                epochs=epochs,
                seed=seed,
                progress=progress,
            )
        attributes: dict[str, Any] = {}
        if "k" in spec:
            attributes["sweep"] = spec["k"]
        if "class_order" in spec:
            attributes["class_order"] = spec["class_order"]
        specs.append(
            RunSpec(
                name=name,
                checkpoints=[ckpt_dir / f"epoch{e:03d}.pt" for e in range(1, epochs + 1)],
                model=make_model,
                data=functools.partial(_digits_loaders, seed),
                model_label=f"analysis.demo:DigitsNet[{name}]",
                data_label=f"analysis.demo:digits_data[seed={seed}]",
                similarity=spec.get("similarity"),
                attributes=attributes,
                num_classes=NUM_CLASSES,
                layers=list(DEPTH_LAYERS),
                hierarchy=hierarchy,
            )
        )
    options = AnalyzeOptions(progress=progress, force=force, recall_ks=(1, 2, 4, 8))
    analyze_runs(specs, out, options)
    paths: list[Path] = []
    if figures:
        from analysis.plots import render_report

        paths = render_report(out, out / "figures")
    report = Report.read(out)
    summary = {
        "out": str(out),
        "database": str(out / DB_NAME),
        "report": [str(out / "report.csv"), str(out / "report.json")],
        "figures": [str(p) for p in paths],
        "test_accuracy": {n: report.value(n, "test", "accuracy") for n in runs},
        "seconds": time.perf_counter() - t0,
    }
    return summary
