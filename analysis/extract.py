r"""The streaming pass: a model and its data loaders → float64 statistics and every metric.

1. :func:`analysis.heads.find_head` picks the feature layer and a forward hook
   (:class:`analysis.heads.FeatureCapture`) captures what it sees;
2. :func:`extract_split_stats` streams every batch of every split through the model in eval
   mode under ``torch.inference_mode`` (no autocast) and feeds the features straight into
   float64 :class:`~analysis.stats.FeatureStats` — no ``N × D`` storage;
3. NC4 (:class:`~analysis.collapse.NCCMismatch`, the one implementation) needs the train
   class means first: the train split is streamed first, the other splits compare their
   nearest train class mean with the network's decision in the same pass, and the train split
   gets a second pass for its own NC4;
4. :func:`analyze_model` turns the statistics into metrics.

Batches are used exactly as the loader yields them: ``(inputs, labels, ...)`` tuples or dicts
with ``input``/``x`` and ``label``/``y``. The network's decision is the ``argmax`` of its
logits; for a linear, ETF or HAFrame head this is :math:`\arg\max_c (w_c^\top x + b_c)`.

Undefined metrics
-----------------
A metric that is undefined for a checkpoint is *omitted and listed*, never swallowed: the
result's ``omitted[split][name]`` gives the reason (no classifier rows for a GCR head, a
spectrum measure undefined at exact collapse, NC4 without a train split, ...), the results
database stores it and the command line prints it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from analysis.collapse import NCCMismatch, collapse_metrics
from analysis.heads import FeatureCapture, classifier_of, find_head
from analysis.spectrum import spectrum_metrics
from analysis.stats import FeatureStats

__all__ = ["ExtractResult", "analyze_model", "extract_split_stats", "split_metrics"]

# the keys of collapse_metrics that need classifier rows (omitted, with the reason, without);
# tests/analysis/test_pipeline.py checks this against collapse_metrics itself
WEIGHT_METRICS = ("equinorm_weights", "equiangularity_weights", "etf_error_weights", "self_duality")


@dataclass
class ExtractResult:
    """Per split: statistics, accuracy, NC4, metrics and omitted metrics; the classifier."""

    layer: str = ""
    stats: dict[str, FeatureStats] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    ncc_mismatch: dict[str, float] = field(default_factory=dict)
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    omitted: dict[str, dict[str, str]] = field(default_factory=dict)
    features: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _batch_xy(batch: Any, where: str) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, Mapping):
        x = batch.get("input", batch.get("x"))
        y = batch.get("label", batch.get("y"))
        if x is None or y is None:
            raise ValueError(
                f"{where}: a dict batch needs 'input' (or 'x') and 'label' (or 'y'); got keys "
                f"{sorted(map(str, batch))}"
            )
        return x, torch.as_tensor(y)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise ValueError(
        f"{where}: each batch must be (inputs, labels) or a dict with 'input' and 'label', got "
        f"{type(batch).__name__}"
    )


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def extract_split_stats(
    model: nn.Module,
    loaders: Mapping[str, Iterable[Any]],
    num_classes: int,
    *,
    layer: str | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "",
    reduce: Callable[[FeatureStats], Any] | None = None,
    keep_features: bool = False,
) -> ExtractResult:
    """Stream every split through ``model``; statistics, accuracy and NC4 per split.

    Parameters
    ----------
    model : nn.Module
        Returns logits ``[B, K]``; put in eval mode here.
    loaders : mapping split → iterable of batches
        Used exactly as given. The ``"train"`` split (if any) gives the class means NC4 uses
        for every split.
    num_classes : int
    layer : str, optional
        Module whose input are the features (default: :func:`analysis.heads.find_head`).
    device : str or device
        Where the model runs; statistics are float64 on the same device.
    progress : bool
        tqdm bar per split (cleared when done).
    reduce : callable, optional
        Called on each split's :class:`FeatureStats` after its pass (e.g.
        ``FeatureStats.all_reduce`` under ``torchrun``); counts for accuracy/NC4 are reduced
        with ``torch.distributed`` in that case too.
    keep_features : bool
        Also keep every split's features (float32, CPU) and labels in ``result.features`` —
        ``N × D`` memory, only for what needs the samples themselves (probe, Recall@K).
    """
    dev = torch.device(device)
    model.eval().to(dev)
    head = find_head(model, layer)
    weight, bias, why = classifier_of(head, num_classes)
    result = ExtractResult(layer=head.name, weight=weight, bias=bias)
    order = sorted(loaders, key=lambda s: s != "train")  # train first: its means serve NC4
    with FeatureCapture(head) as capture, torch.inference_mode():
        train_stats: FeatureStats | None = None
        for split in order:
            kept: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if keep_features else None
            ncc = NCCMismatch(train_stats) if train_stats is not None else None
            stats, correct, n = _pass(
                model, capture, loaders[split], num_classes, dev, ncc, progress, desc, split, kept
            )
            if kept is not None:
                result.features[split] = (
                    torch.cat([f for f, _ in kept]),
                    torch.cat([y for _, y in kept]),
                )
            assert stats is not None
            if reduce is not None:
                reduce(stats)
            mism = ncc.mismatches if ncc is not None else 0
            correct, mism, n = _reduce_counts((correct, mism, n), dev, reduce)
            result.stats[split] = stats
            result.accuracy[split] = correct / n
            if ncc is not None:
                result.ncc_mismatch[split] = mism / n
            if split == "train":
                train_stats = stats
        if train_stats is not None:
            ncc = NCCMismatch(train_stats)
            _, _, n = _pass(
                model,
                capture,
                loaders["train"],
                num_classes,
                dev,
                ncc,
                progress,
                desc,
                "train (NC4)",
                None,
                collect=False,
            )
            _, mism, n = _reduce_counts((0, ncc.mismatches, n), dev, reduce)
            result.ncc_mismatch["train"] = mism / n
    for split in loaders:
        omit = result.omitted.setdefault(split, {})
        if weight is None:
            omit.update(dict.fromkeys(WEIGHT_METRICS, why))
        if split not in result.ncc_mismatch:
            omit["ncc_mismatch"] = "no 'train' split to take the class means from"
    return result


def _reduce_counts(
    counts: tuple[int, int, int], dev: torch.device, reduce: Callable[..., Any] | None
) -> tuple[int, int, int]:
    if reduce is None:
        return counts
    import torch.distributed as dist

    t = torch.tensor(counts, dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return int(t[0]), int(t[1]), int(t[2])


def _pass(
    model: nn.Module,
    capture: FeatureCapture,
    loader: Iterable[Any],
    num_classes: int,
    dev: torch.device,
    ncc: NCCMismatch | None,
    progress: bool,
    desc: str,
    split: str,
    keep: list[tuple[torch.Tensor, torch.Tensor]] | None,
    *,
    collect: bool = True,
) -> tuple[FeatureStats | None, int, int]:
    stats: FeatureStats | None = None
    correct = n = 0
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    bar = tqdm(loader, desc=f"{desc}{split}", total=total, disable=not progress, leave=False)
    for i, batch in enumerate(bar):
        where = f"split {split!r}, batch {i}"
        x, y = _batch_xy(batch, where)
        y = y.to(dev)
        logits = model(_to(x, dev))
        feats = capture.take()
        if (
            not isinstance(logits, torch.Tensor)
            or logits.ndim != 2
            or logits.shape[1] != num_classes
        ):
            got = logits.shape if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"{where}: model output must be logits [B, {num_classes}], got {got}")
        if y.ndim != 1 or y.shape[0] != feats.shape[0]:
            raise ValueError(
                f"{where}: labels of shape {list(y.shape)} for {feats.shape[0]} samples"
            )
        pred = logits.argmax(1)
        if collect:
            if stats is None:
                stats = FeatureStats(num_classes, int(feats.shape[1]), device=dev)
            try:
                stats.update(feats, y)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{where}: {err}") from err
            correct += int((pred == y).sum())
            if keep is not None:
                keep.append((feats.detach().float().cpu(), y.cpu()))
        if ncc is not None:
            ncc.update(feats, pred)
        n += int(y.shape[0])
    if n == 0:
        raise ValueError(f"split {split!r}: the data loader yielded no samples")
    return stats, correct, n


def split_metrics(
    stats: FeatureStats,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    similarity: torch.Tensor | None,
    omitted: dict[str, str],
) -> dict[str, float]:
    """Collapse and spectrum metrics of one split; undefined spectrum measures go to ``omitted``.

    :func:`~analysis.collapse.collapse_metrics` (classifier rows when given, ``frame_distance``
    with ``similarity``) and :func:`~analysis.spectrum.spectrum_metrics`; a spectrum measure
    that is undefined (e.g. an effective rank of Σ_W = 0 at exact collapse) is left out and
    ``omitted[key]`` says why.
    """
    m = collapse_metrics(stats, weight, bias, similarity=similarity)
    m.update(spectrum_metrics(stats, omitted=omitted))
    return m


def analyze_model(
    model: nn.Module,
    loaders: Mapping[str, Iterable[Any]],
    num_classes: int,
    *,
    layer: str | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    similarity: torch.Tensor | None = None,
    desc: str = "",
    reduce: Callable[[FeatureStats], Any] | None = None,
    linear_probe: bool = False,
    recall_ks: Sequence[int] = (),
) -> ExtractResult:
    """Every metric of every split: collapse, spectrum, variability, accuracy, NC4.

    Keys per split (``result.metrics[split]``): those of
    :func:`~analysis.collapse.collapse_metrics` (with the head's classifier rows when it has
    them, and ``frame_distance`` when ``similarity`` — a target frame's Gram matrix — is
    given), :func:`~analysis.spectrum.spectrum_metrics`, ``accuracy`` and ``ncc_mismatch``.
    What is undefined is in ``result.omitted[split]`` with the reason (module docstring).

    With ``linear_probe=True`` the features are kept (``N × D``) and
    :func:`analysis.report.linear_probe` (C chosen on a held-out part of ``train``) adds
    ``linear_probe_accuracy`` and ``linear_probe_c`` to every non-train split; it needs a
    ``train`` split and a single process.

    With ``recall_ks`` (e.g. ``(1, 2, 4, 8)``) the features are kept as well and every
    split gets ``recall@K`` = :func:`analysis.retrieval.recall_at_k` (cosine, each sample a
    query against the rest of its split). Single process only.
    """
    if linear_probe and ("train" not in loaders or len(loaders) < 2):
        raise ValueError("linear_probe needs a 'train' split and at least one other split")
    if (linear_probe or recall_ks) and reduce is not None:
        raise ValueError("linear_probe / recall run in a single process (they need every sample)")
    result = extract_split_stats(
        model,
        loaders,
        num_classes,
        layer=layer,
        device=device,
        progress=progress,
        desc=desc,
        reduce=reduce,
        keep_features=linear_probe or bool(recall_ks),
    )
    for split, stats in result.stats.items():
        m = split_metrics(stats, result.weight, result.bias, similarity, result.omitted[split])
        m["accuracy"] = result.accuracy[split]
        if split in result.ncc_mismatch:
            m["ncc_mismatch"] = result.ncc_mismatch[split]
        if linear_probe and split != "train":
            from analysis.report import linear_probe as probe

            (x_tr, y_tr), (x_te, y_te) = result.features["train"], result.features[split]
            m.update(probe((x_tr.numpy(), y_tr.numpy()), (x_te.numpy(), y_te.numpy())))
        if recall_ks:
            from analysis.retrieval import recall_at_k

            feats, labels = result.features[split]
            for kk, r in recall_at_k(feats, labels, tuple(recall_ks)).items():
                m[f"recall@{kk}"] = r
        result.metrics[split] = m
    result.features.clear()  # N x D: not kept beyond the probe
    return result
