r"""The streaming pass: a model and its data loaders → float64 statistics and every metric.

1. :func:`analysis.heads.find_head` picks the classifier-input layer, and every layer named
   with ``layers`` is added; a forward hook per layer (:class:`analysis.heads.FeatureCapture`)
   captures what each sees **in the same forward pass**;
2. :func:`extract_split_stats` streams every batch of every split through the model once, in
   eval mode under ``torch.inference_mode`` (no autocast): each layer's features (feature
   maps ``[B, C, ...]`` pooled, :func:`pool_features`) go straight into its own float64
   :class:`~analysis.stats.FeatureStats` — no ``N × D`` storage;
3. NC4 (:class:`~analysis.collapse.NCCMismatch`, the one implementation) needs the final
   train class means: the train split is streamed first, the other splits compare their
   nearest train class mean with the network's decision in the same pass, and the train
   split's own classifier-input features and decisions are kept in a temporary file-backed
   :class:`~analysis.spill.Spill` under a byte budget and scored afterwards — one forward per
   sample. Above the budget the train split gets a second pass (said in one log line);
4. :func:`analyze_model` turns the statistics into metrics per layer and split.

Batches are used exactly as the loader yields them: ``(inputs, labels, ...)`` tuples or dicts
with ``input``/``x`` and ``label``/``y``. The network's decision is the ``argmax`` of its
logits; for a linear, ETF or HAFrame head this is :math:`\arg\max_c (w_c^\top x + b_c)`.

What belongs to which layer: accuracy, NC4, the metrics of the classifier rows (NC2/NC3 on
weights) and the hierarchy metrics belong to the classifier-input layer; NC1, NC2 on means,
CDNV, variability, spectra and the ETF distance are computed for every layer.

Undefined metrics
-----------------
A metric that is undefined for a checkpoint is *omitted and listed*, never swallowed: the
result's ``omitted[layer][split][name]`` gives the reason (no classifier rows for a GCR head,
a spectrum measure undefined at exact collapse, NC4 without a train split, ...), the results
database stores it and the command line prints it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from analysis.collapse import NCCMismatch, collapse_metrics
from analysis.heads import FeatureCapture, Head, classifier_of, find_head
from analysis.spectrum import spectrum_metrics
from analysis.spill import Spill
from analysis.stats import FeatureStats

__all__ = [
    "DEFAULT_SPILL_BUDGET",
    "MAX_FLATTEN_DIM",
    "WEIGHT_METRICS",
    "ExtractResult",
    "analyze_model",
    "extract_split_stats",
    "pool_features",
    "split_metrics",
]

Pool = Literal["avg", "max", "flatten"]
DEFAULT_SPILL_BUDGET = 2 * 1024**3  # bytes: 2 GiB
MAX_FLATTEN_DIM = 8192  # --pool flatten above this is refused (D² float64 statistics)

# the keys of collapse_metrics that need classifier rows (omitted, with the reason, without);
# tests/analysis/test_pipeline.py checks this against collapse_metrics itself
WEIGHT_METRICS = ("equinorm_weights", "equiangularity_weights", "etf_error_weights", "self_duality")


@dataclass
class ExtractResult:
    """Statistics, metrics and omitted metrics per layer and split; the classifier.

    ``layer`` is the classifier-input layer (accuracy, NC4, classifier rows, hierarchy
    metrics); ``layers`` every analysed layer in model order. ``stats[layer][split]``,
    ``metrics[layer][split][key]``, ``omitted[layer][split][key] = reason``;
    ``accuracy``/``ncc_mismatch``/``hierarchy`` are per split (classifier layer).
    """

    layer: str = ""
    layers: list[str] = field(default_factory=list)
    stats: dict[str, dict[str, FeatureStats]] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    ncc_mismatch: dict[str, float] = field(default_factory=dict)
    hierarchy: dict[str, dict[str, float]] = field(default_factory=dict)
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    omitted: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    features: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    second_pass: bool = False


def pool_features(x: torch.Tensor, pool: Pool, layer: str) -> torch.Tensor:
    """Features ``[B, D]`` from a layer's input: ``[B, D]`` as is, feature maps pooled.

    ``[B, C, *spatial]``: ``avg`` (global average pooling, default) or ``max`` over the spatial
    positions gives ``D = C``; ``flatten`` gives ``D = C·∏spatial`` and is refused above
    :data:`MAX_FLATTEN_DIM` (the D×D float64 statistics would not fit), in one line.
    """
    if x.ndim == 2:
        return x
    if x.ndim < 2:
        raise ValueError(
            f"layer {layer!r}: input of shape {list(x.shape)} has no batch of features"
        )
    if pool == "avg":
        return x.flatten(2).to(torch.float64).mean(2)
    if pool == "max":
        return x.flatten(2).amax(2)
    if pool == "flatten":
        dim = math.prod(x.shape[1:])
        if dim > MAX_FLATTEN_DIM:
            raise ValueError(
                f"layer {layer!r}: --pool flatten gives {dim} features per sample (input "
                f"{list(x.shape[1:])}), more than {MAX_FLATTEN_DIM}; use --pool avg or max"
            )
        return x.flatten(1)
    raise ValueError(f"pool must be 'avg', 'max' or 'flatten', got {pool!r}")


def _plan_layers(model: nn.Module, names: Sequence[str]) -> tuple[Head, list[Head]]:
    """The classifier-input layer and every analysed layer, in ``named_modules`` order."""
    try:
        classifier: Head | None = find_head(model)
    except ValueError:
        if not names:
            raise
        classifier = None
    heads: dict[str, Head] = {}
    if classifier is not None:
        heads[classifier.name] = classifier
    for name in names:
        h = find_head(model, name)
        heads.setdefault(h.name, h)
    if classifier is None:  # no classifier-like module: the first named layer plays its part
        classifier = heads[names[0]]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return classifier, sorted(heads.values(), key=lambda h: order.get(h.name, len(order)))


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
    layers: Sequence[str] = (),
    pool: Pool = "avg",
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "",
    reduce: Callable[[FeatureStats], Any] | None = None,
    keep_features: bool = False,
    spill_budget: int = DEFAULT_SPILL_BUDGET,
    distances: torch.Tensor | None = None,
    hierarchy_ks: Sequence[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> ExtractResult:
    """Stream every split through ``model`` once; statistics, accuracy, NC4 per split.

    Parameters
    ----------
    model : nn.Module
        Returns logits ``[B, K]``; put in eval mode here.
    loaders : mapping split → iterable of batches
        Used exactly as given. The ``"train"`` split (if any) gives the class means NC4 uses
        for every split.
    num_classes : int
    layers : sequence of str
        Modules whose inputs are analysed besides the classifier input (module docstring).
    pool : {"avg", "max", "flatten"}
        How feature maps ``[B, C, ...]`` become ``[B, D]`` (:func:`pool_features`).
    device : str or device
        Where the model runs; statistics are float64 on the same device.
    progress : bool
        tqdm bar per split (cleared when done).
    reduce : callable, optional
        Called on each :class:`FeatureStats` after its pass (e.g. ``FeatureStats.all_reduce``
        under ``torchrun``); counts for accuracy/NC4 and the hierarchy metrics are reduced with
        ``torch.distributed`` in that case too.
    keep_features : bool
        Also keep every split's classifier-input features (float32, CPU) and labels in
        ``result.features`` — ``N × D`` memory, only for the probe and Recall@K.
    spill_budget : int
        Bytes of temporary disk for the train split's NC4 (:class:`~analysis.spill.Spill`);
        ``0`` always takes the second pass.
    distances : Tensor ``[K, K]``, optional
        Class LCA distances: a :class:`~analysis.hierarchy.HierarchicalMetrics` per split is
        fed the logits in the same pass (``hierarchy_ks`` its ks).
    log : callable, optional
        Receives one-line notes (e.g. that the spill budget was exceeded).
    """
    from analysis.hierarchy import HierarchicalMetrics

    dev = torch.device(device)
    model.eval().to(dev)
    classifier, heads = _plan_layers(model, layers)
    weight, bias, why = classifier_of(classifier, num_classes)
    result = ExtractResult(
        layer=classifier.name, layers=[h.name for h in heads], weight=weight, bias=bias
    )
    order = sorted(loaders, key=lambda s: s != "train")  # train first: its means serve NC4
    captures = [FeatureCapture(h) for h in heads]
    spill = Spill(spill_budget if "train" in loaders else 0)
    try:
        with torch.inference_mode():
            train_stats: FeatureStats | None = None
            for split in order:
                kept: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if keep_features else None
                ncc = NCCMismatch(train_stats) if train_stats is not None else None
                hier = (
                    HierarchicalMetrics(distances, hierarchy_ks, device=dev)
                    if distances is not None
                    else None
                )
                stats, correct, n = _pass(
                    model,
                    captures,
                    classifier.name,
                    pool,
                    loaders[split],
                    num_classes,
                    dev,
                    ncc,
                    spill if split == "train" else None,
                    hier,
                    progress,
                    f"{desc}{split}",
                    kept,
                )
                if kept is not None:
                    result.features[split] = (
                        torch.cat([f for f, _ in kept]),
                        torch.cat([y for _, y in kept]),
                    )
                if reduce is not None:
                    for st in stats.values():
                        reduce(st)
                mism = ncc.mismatches if ncc is not None else 0
                correct, mism, n = _reduce_counts((correct, mism, n), dev, reduce)
                for name, st in stats.items():
                    result.stats.setdefault(name, {})[split] = st
                result.accuracy[split] = correct / n
                if ncc is not None:
                    result.ncc_mismatch[split] = mism / n
                if hier is not None:
                    if reduce is not None:
                        hier.all_reduce()
                    result.hierarchy[split] = hier.compute()
                if split == "train":
                    train_stats = stats[classifier.name]
            if train_stats is not None:
                ncc = NCCMismatch(train_stats)
                if spill.active:
                    for feats, decisions in spill.chunks():
                        ncc.update(feats, decisions)
                    n = spill.rows
                else:
                    if spill.exceeded and log is not None:
                        log(
                            f"{desc}train: classifier features exceed the spill budget of "
                            f"{spill_budget / 1024**3:.3g} GiB; NC4 on train takes a second pass"
                        )
                    result.second_pass = True
                    train_captures = [c for c in captures if c.head.name == classifier.name]
                    _, _, n = _pass(
                        model,
                        train_captures,
                        classifier.name,
                        pool,
                        loaders["train"],
                        num_classes,
                        dev,
                        ncc,
                        None,
                        None,
                        progress,
                        f"{desc}train (NC4)",
                        None,
                        collect=False,
                    )
                _, mism, n = _reduce_counts((0, ncc.mismatches, n), dev, reduce)
                result.ncc_mismatch["train"] = mism / n
    finally:
        spill.close()
        for c in captures:
            c.close()
    for name in result.layers:
        for split in loaders:
            omit = result.omitted.setdefault(name, {}).setdefault(split, {})
            if name == classifier.name:
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
    captures: Sequence[FeatureCapture],
    classifier: str,
    pool: Pool,
    loader: Iterable[Any],
    num_classes: int,
    dev: torch.device,
    ncc: NCCMismatch | None,
    spill: Spill | None,
    hier: Any,
    progress: bool,
    desc: str,
    keep: list[tuple[torch.Tensor, torch.Tensor]] | None,
    *,
    collect: bool = True,
) -> tuple[dict[str, FeatureStats], int, int]:
    stats: dict[str, FeatureStats] = {}
    correct = n = 0
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    bar = tqdm(loader, desc=desc, total=total, disable=not progress, leave=False)
    for i, batch in enumerate(bar):
        where = f"{desc or 'split'}, batch {i}"
        x, y = _batch_xy(batch, where)
        y = y.to(dev)
        logits = model(_to(x, dev))
        feats = {c.head.name: pool_features(c.take(), pool, c.head.name) for c in captures}
        if (
            not isinstance(logits, torch.Tensor)
            or logits.ndim != 2
            or logits.shape[1] != num_classes
        ):
            got = logits.shape if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"{where}: model output must be logits [B, {num_classes}], got {got}")
        if y.ndim != 1 or y.shape[0] != logits.shape[0]:
            raise ValueError(
                f"{where}: labels of shape {list(y.shape)} for {logits.shape[0]} samples"
            )
        pred = logits.argmax(1)
        h = feats[classifier]
        if collect:
            for name, f in feats.items():
                if f.shape[0] != y.shape[0]:
                    raise ValueError(
                        f"{where}: layer {name!r} saw {f.shape[0]} samples, the labels {y.shape[0]}"
                    )
                if name not in stats:
                    stats[name] = FeatureStats(num_classes, int(f.shape[1]), device=dev)
                try:
                    stats[name].update(f, y)
                except (TypeError, ValueError) as err:
                    raise type(err)(f"{where}, layer {name!r}: {err}") from err
            correct += int((pred == y).sum())
            if keep is not None:
                keep.append((h.detach().float().cpu(), y.cpu()))
            if spill is not None:
                spill.add(h, pred)
            if hier is not None:
                hier.update(logits, y)
        if ncc is not None:
            ncc.update(h, pred)
        n += int(y.shape[0])
    if n == 0:
        raise ValueError(f"{desc}: the data loader yielded no samples")
    return stats, correct, n


def split_metrics(
    stats: FeatureStats,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    similarity: torch.Tensor | None,
    omitted: dict[str, str],
) -> dict[str, float]:
    """Collapse and spectrum metrics of one split; undefined ones go to ``omitted``.

    :func:`~analysis.collapse.collapse_metrics` (classifier rows when given, ``frame_distance``
    with ``similarity``) and :func:`~analysis.spectrum.spectrum_metrics`; a metric that is
    undefined (CDNV when two class means coincide, an effective rank of Σ_W = 0 at exact
    collapse) is left out and ``omitted[key]`` says why; the other metrics of the split stay.
    """
    m = collapse_metrics(stats, weight, bias, similarity=similarity, omitted=omitted)
    m.update(spectrum_metrics(stats, omitted=omitted))
    return m


def analyze_model(
    model: nn.Module,
    loaders: Mapping[str, Iterable[Any]],
    num_classes: int,
    *,
    layers: Sequence[str] = (),
    pool: Pool = "avg",
    device: str | torch.device = "cpu",
    progress: bool = True,
    similarity: torch.Tensor | None = None,
    desc: str = "",
    reduce: Callable[[FeatureStats], Any] | None = None,
    linear_probe: bool = False,
    recall_ks: Sequence[int] = (),
    spill_budget: int = DEFAULT_SPILL_BUDGET,
    distances: torch.Tensor | None = None,
    hierarchy_ks: Sequence[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> ExtractResult:
    """Every metric of every layer and split: collapse, spectrum, variability, accuracy, NC4.

    ``result.metrics[layer][split]``: for every layer the keys of
    :func:`~analysis.collapse.collapse_metrics` on its features (``frame_distance`` when
    ``similarity`` — a target frame's Gram matrix — is given) and
    :func:`~analysis.spectrum.spectrum_metrics`; the classifier-input layer also gets the
    metrics of the head's classifier rows when it has them, ``accuracy``, ``ncc_mismatch``
    and, with ``distances``, the keys of :class:`~analysis.hierarchy.HierarchicalMetrics`
    (``top1_error``, ``mistake_severity``, ``hdist@k_mean``, ``hprec@k``, ...). What is
    undefined is in ``result.omitted[layer][split]`` with the reason (module docstring).
    ``layers``, ``pool``, ``spill_budget``, ``log``: as in :func:`extract_split_stats`.

    With ``linear_probe=True`` the classifier-input features are kept (``N × D``) and
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
        layers=layers,
        pool=pool,
        device=device,
        progress=progress,
        desc=desc,
        reduce=reduce,
        keep_features=linear_probe or bool(recall_ks),
        spill_budget=spill_budget,
        distances=distances,
        hierarchy_ks=hierarchy_ks,
        log=log,
    )
    for layer in result.layers:
        is_classifier = layer == result.layer
        weight = result.weight if is_classifier else None
        bias = result.bias if is_classifier else None
        per_split = result.metrics.setdefault(layer, {})
        for split, stats in result.stats[layer].items():
            omitted = result.omitted[layer][split]
            m = split_metrics(stats, weight, bias, similarity, omitted)
            if is_classifier:
                m["accuracy"] = result.accuracy[split]
                if split in result.ncc_mismatch:
                    m["ncc_mismatch"] = result.ncc_mismatch[split]
                if split in result.hierarchy:
                    _hierarchy_rows(result.hierarchy[split], m, omitted)
                if linear_probe and split != "train":
                    from analysis.report import linear_probe as probe

                    (x_tr, y_tr), (x_te, y_te) = result.features["train"], result.features[split]
                    m.update(probe((x_tr.numpy(), y_tr.numpy()), (x_te.numpy(), y_te.numpy())))
                if recall_ks:
                    from analysis.retrieval import recall_at_k

                    feats, labels = result.features[split]
                    for kk, r in recall_at_k(feats, labels, tuple(recall_ks)).items():
                        m[f"recall@{kk}"] = r
            per_split[split] = m
    result.features.clear()  # N x D: not kept beyond the probe
    return result


def _hierarchy_rows(
    values: Mapping[str, float], m: dict[str, float], omitted: dict[str, str]
) -> None:
    m.update({k: float(v) for k, v in values.items() if k != "num_samples"})
    if "mistake_severity" not in values:
        omitted["mistake_severity"] = "no mistakes: the severity of a mistake is undefined"
