"""Checkpoints → penultimate features → streaming statistics and metrics.

The path a trained model takes through the analysis:

1. :func:`load_checkpoint` reads a checkpoint safely (``torch.load(weights_only=True)``);
2. :func:`find_head` picks the module whose input are the features (the last ``nn.Linear``
   or geomtools head, or a named module) and :func:`classifier_of` reads its weight/bias;
3. :func:`extract_split_stats` / :func:`analyze_model` stream every batch of every split
   through the model in eval mode under ``torch.inference_mode`` (no autocast), a forward
   hook captures the features, and they go straight into float64
   :class:`~analysis.stats.FeatureStats` — no ``N × D`` storage;
4. NC4 needs the train-split class means first: the train split is streamed first, other
   splits compute NCC predictions in the same pass, and the train split gets a second pass.

NC4 decision for heads that are not linear (GCR's subspace logits): the network's decision is
``argmax`` of the model's logits, compared with the nearest train class mean; for a linear,
ETF or HAFrame head this is exactly CONVENTIONS.md's ``argmax_c (w_cᵀx + b_c)``.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from analysis.collapse import collapse_metrics
from analysis.spectrum import spectrum_metrics
from analysis.stats import FeatureStats

__all__ = [
    "ExtractResult",
    "analyze_checkpoints",
    "analyze_model",
    "classifier_of",
    "extract_split_stats",
    "find_head",
    "list_checkpoints",
    "load_checkpoint",
    "load_into",
    "resolve",
]


def resolve(spec: str | Callable[..., Any]) -> Callable[..., Any]:
    """Turn ``"package.module:callable"`` into the callable (callables pass through).

    Raises
    ------
    ValueError
        Malformed spec, module not importable, or attribute missing / not callable — one line
        naming what was looked for.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"expected 'package.module:callable', got {spec!r}")
    mod_name, attr = spec.split(":")
    if not mod_name or not attr:
        raise ValueError(f"expected 'package.module:callable', got {spec!r}")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {mod_name!r} (from {spec!r}): {err}") from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable (got {type(obj).__name__})")
    return obj


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    return None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    map_location: str | torch.device = "cpu",
    trust: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's state_dict and metadata safely.

    Accepted layouts: a raw state_dict, or a dict holding it under ``"model"``,
    ``"state_dict"`` or ``"model_state_dict"`` (``"epoch"``/``"step"`` beside it are read as
    metadata).

    Parameters
    ----------
    path : path-like
    map_location : str or device
    trust : bool
        Allow full unpickling (``weights_only=False``) — only for files you trust; a pickled
        ``nn.Module`` is then reduced to its ``state_dict()``.

    Returns
    -------
    (state_dict, meta)
        ``meta`` has ``epoch`` and ``step`` (int or None).

    Raises
    ------
    FileNotFoundError
        Missing file.
    ValueError
        Corrupt file, a pickle that needs arbitrary code (without ``trust``), or no
        state_dict inside.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{p}: holds pickled Python objects (e.g. a whole nn.Module), which "
            "torch.load(weights_only=True) refuses to run. Save model.state_dict(), or pass "
            "--trust-checkpoint if you trust this file."
        ) from err
    except Exception as err:  # truncated zip, not a torch file, ...
        raise ValueError(
            f"{p}: not a readable torch checkpoint ({type(err).__name__}: {err})"
        ) from err
    meta: dict[str, Any] = {"epoch": None, "step": None}
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        meta["epoch"] = _int_or_none(obj.get("epoch"))
        meta["step"] = _int_or_none(obj.get("step"))
        for key in ("model", "state_dict", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping):
                obj = inner
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise ValueError(
            f"{p}: no state_dict found (expected a dict of tensors, or one under 'model' / "
            "'state_dict')"
        )
    return dict(obj), meta


def load_into(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = ""
) -> None:
    """``model.load_state_dict(state_dict)``, with missing/unexpected keys in one clear error."""
    result = model.load_state_dict(state_dict, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys {_short(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {_short(result.unexpected_keys)}")
    if problems:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}checkpoint does not match the model: {'; '.join(problems)}")


def _short(keys: list[str], n: int = 6) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)})"


def _is_head(module: nn.Module) -> bool:
    from geomtools.nn import FixedFrameHead, GrassmannHead

    return isinstance(module, (nn.Linear, FixedFrameHead, GrassmannHead))


def find_head(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """The module whose input are the analysed features.

    Default: the last ``nn.Linear`` / :class:`~geomtools.nn.FixedFrameHead` /
    :class:`~geomtools.nn.GrassmannHead` in ``model.named_modules()`` order (the classifier);
    with ``layer``, that named module.

    Raises
    ------
    ValueError
        No such module / no classifier-like module.
    """
    if layer is not None:
        try:
            return layer, model.get_submodule(layer)
        except AttributeError as err:
            names = [n for n, _ in model.named_modules() if n][:20]
            raise ValueError(f"model has no module {layer!r}; modules: {', '.join(names)}") from err
    found = None
    for name, module in model.named_modules():
        if _is_head(module):
            found = (name, module)
    if found is None:
        raise ValueError(
            "no nn.Linear or geomtools head in the model: name the feature layer with --layer"
        )
    return found


def classifier_of(head: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Classifier rows ``[K, D]`` and bias ``[K]`` of a head, as float64 CPU tensors.

    ``nn.Linear``: weight and bias; ``FixedFrameHead``: the frozen frame, no bias;
    ``GrassmannHead`` and anything else: ``(None, None)`` (NC2 on weights, self-duality and
    the weight-based NC4 are then skipped).
    """
    from geomtools.nn import FixedFrameHead

    if isinstance(head, nn.Linear):
        bias = head.bias.detach().double().cpu() if head.bias is not None else None
        return head.weight.detach().double().cpu(), bias
    if isinstance(head, FixedFrameHead):
        return head.weight.detach().double().cpu(), None
    return None, None


class _Capture:
    """Forward hook storing the features a head sees (its input, or a frame head's ``h``)."""

    def __init__(self, head: nn.Module) -> None:
        from geomtools.nn import FixedFrameHead

        self.value: torch.Tensor | None = None
        if isinstance(head, FixedFrameHead) and head.transform is not None:
            self.handle = head.transform.register_forward_hook(self._output)
        else:
            self.handle = head.register_forward_pre_hook(self._input)

    def _input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.value = args[0]

    def _output(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        self.value = out

    def take(self) -> torch.Tensor:
        if self.value is None:
            raise ValueError("the feature layer was not called during the forward pass")
        v, self.value = self.value, None
        return v.flatten(1)


def _batch_xy(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch.get("input", batch.get("x")), batch.get("label", batch.get("y"))
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("each batch must be (inputs, labels) or a dict with 'input' and 'label'")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def _ncc_predict(
    features: torch.Tensor, means: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    x = features.double()
    d2 = (x * x).sum(1, keepdim=True) - 2 * x @ means.T + (means * means).sum(1)
    d2[:, ~present] = float("inf")
    return d2.argmin(1)


@dataclass
class ExtractResult:
    """Per split: statistics, accuracy, NC4 counts; the classifier read from the head."""

    stats: dict[str, FeatureStats] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    ncc_mismatch: dict[str, float] = field(default_factory=dict)
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    features: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


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
    """Stream every split through ``model``; return statistics, accuracy and NC4 per split.

    Parameters
    ----------
    model : nn.Module
        Returns logits ``[B, K]``; put in eval mode here.
    loaders : mapping split → iterable of ``(inputs, labels)`` batches
        The ``"train"`` split (if any) gives the class means NC4 uses for every split.
    num_classes : int
    layer : str, optional
        Module whose input are the features (default: :func:`find_head`).
    device : str or device
        Where the model runs; statistics are float64 on the same device.
    progress : bool
        tqdm bar per split.
    reduce : callable, optional
        Called on each split's :class:`FeatureStats` after its pass (e.g.
        ``FeatureStats.all_reduce`` under ``torchrun``); counts for accuracy/NC4 are reduced
        with ``torch.distributed`` in that case too.
    keep_features : bool
        Also keep every split's features (float32, CPU) and labels in ``result.features`` —
        ``N × D`` memory, only for what needs the samples themselves (the linear probe).
    """
    dev = torch.device(device)
    model.eval().to(dev)
    _, head = find_head(model, layer)
    weight, bias = classifier_of(head)
    capture = _Capture(head)
    result = ExtractResult(weight=weight, bias=bias)
    order = sorted(loaders, key=lambda s: s != "train")  # train first: its means serve NC4
    need_second = "train" in loaders
    try:
        with torch.inference_mode():
            means: tuple[torch.Tensor, torch.Tensor] | None = None
            for split in order:
                kept: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if keep_features else None
                stats, correct, mism, n = _pass(
                    model,
                    capture,
                    loaders[split],
                    num_classes,
                    dev,
                    means,
                    progress,
                    f"{desc}{split}",
                    keep=kept,
                )
                if kept is not None:
                    result.features[split] = (
                        torch.cat([f for f, _ in kept]),
                        torch.cat([y for _, y in kept]),
                    )
                if reduce is not None:
                    reduce(stats)
                    correct, mism, n = _reduce_counts(correct, mism, n, dev)
                result.stats[split] = stats
                result.accuracy[split] = correct / n
                if means is not None:
                    result.ncc_mismatch[split] = mism / n
                if split == "train":
                    means = (stats.means.clone(), stats.counts > 0)
            if need_second and means is not None:
                _, _, mism, n = _pass(
                    model,
                    capture,
                    loaders["train"],
                    num_classes,
                    dev,
                    means,
                    progress,
                    f"{desc}train (NC4)",
                    collect=False,
                )
                if reduce is not None:
                    _, mism, n = _reduce_counts(0, mism, n, dev)
                result.ncc_mismatch["train"] = mism / n
    finally:
        capture.handle.remove()
    return result


def _reduce_counts(correct: int, mism: int, n: int, dev: torch.device) -> tuple[int, int, int]:
    import torch.distributed as dist

    t = torch.tensor([correct, mism, n], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return int(t[0]), int(t[1]), int(t[2])


def _pass(
    model: nn.Module,
    capture: _Capture,
    loader: Iterable[Any],
    num_classes: int,
    dev: torch.device,
    means: tuple[torch.Tensor, torch.Tensor] | None,
    progress: bool,
    desc: str,
    collect: bool = True,
    keep: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[FeatureStats, int, int, int]:
    stats: FeatureStats | None = None
    correct = mism = n = 0
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    for batch in tqdm(loader, desc=desc, total=total, disable=not progress, leave=False):
        x, y = _batch_xy(batch)
        y = torch.as_tensor(y).to(dev)
        logits = model(_to(x, dev))
        feats = capture.take()
        if (
            not isinstance(logits, torch.Tensor)
            or logits.ndim != 2
            or logits.shape[1] != num_classes
        ):
            raise ValueError(
                f"model output must be logits [B, {num_classes}], got "
                f"{getattr(logits, 'shape', type(logits).__name__)}"
            )
        pred = logits.argmax(1)
        if collect:
            if stats is None:
                stats = FeatureStats(num_classes, int(feats.shape[1]), device=dev)
            stats.update(feats, y)
            correct += int((pred == y).sum())
            if keep is not None:
                keep.append((feats.detach().float().cpu(), y.cpu()))
        if means is not None:
            mism += int((_ncc_predict(feats, *means) != pred).sum())
        n += int(y.shape[0])
    if n == 0:
        raise ValueError(f"{desc}: the data loader yielded no samples")
    if stats is None:
        stats = FeatureStats(num_classes, 1, device=dev)
    return stats, correct, mism, n


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
) -> tuple[dict[str, dict[str, float]], ExtractResult]:
    """Every metric of every split: collapse, spectrum, variability, accuracy, NC4.

    Keys per split: those of :func:`~analysis.collapse.collapse_metrics` (with the head's
    weight when it has one, and ``frame_distance`` when ``similarity`` — a target frame's
    Gram matrix — is given), :func:`~analysis.spectrum.spectrum_metrics`, ``accuracy`` and
    ``ncc_mismatch``. A spectrum measure that is undefined for these features (e.g. exact
    collapse) is left out rather than failing the whole checkpoint.

    With ``linear_probe=True`` the features are kept (``N × D``) and
    :func:`analysis.report.linear_probe` (C chosen on a held-out part of ``train``) adds
    ``linear_probe_accuracy`` and ``linear_probe_c`` to every non-train split; it needs a
    ``train`` split and a single process (the probe needs every sample in one place).

    With ``recall_ks`` (e.g. ``(1, 2, 4, 8)``) the features are kept as well and every
    split gets ``recall@K`` = :func:`analysis.retrieval.recall_at_k` (cosine, each sample a
    query against the rest of its split). Single process only.

    Returns
    -------
    (metrics, result)
        ``metrics[split][key] = float``; ``result`` holds the statistics.
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
    metrics: dict[str, dict[str, float]] = {}
    for split, stats in result.stats.items():
        m = collapse_metrics(stats, result.weight, result.bias, similarity=similarity)
        try:
            m.update(spectrum_metrics(stats))
        except ValueError:
            pass
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
        metrics[split] = m
    result.features.clear()  # N x D: not kept beyond the probe
    return metrics, result


_CKPT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def list_checkpoints(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Checkpoint files from files and folders (a folder: its ``*.pt/*.pth/*.ckpt/*.bin``).

    Ordered by parsed epoch/step, then name ("natural" order: ``epoch2`` before ``epoch10``).

    Raises
    ------
    FileNotFoundError
        A path that does not exist, or a folder without checkpoints.
    """
    from analysis.report import parse_position

    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in _CKPT_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no checkpoint files ({', '.join(_CKPT_SUFFIXES)}) in {p}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"checkpoint not found: {p}")

    def key(f: Path) -> tuple[int, int, str]:
        epoch, step = parse_position(f.name)
        return (epoch if epoch is not None else -1, step if step is not None else -1, f.name)

    return sorted(dict.fromkeys(files), key=key)


def _fingerprint(p: Path) -> list[int]:
    st = p.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def analyze_checkpoints(
    checkpoints: Iterable[str | os.PathLike[str]],
    model_factory: Callable[[], nn.Module],
    loaders: Mapping[str, Iterable[Any]],
    num_classes: int,
    *,
    out_dir: str | os.PathLike[str],
    run: str = "model",
    layer: str | None = None,
    device: str | torch.device = "cpu",
    force: bool = False,
    trust: bool = False,
    similarity: torch.Tensor | None = None,
    progress: bool = True,
    report: Any = None,
    reduce: Callable[[FeatureStats], Any] | None = None,
    write_cache: bool = True,
    linear_probe: bool = False,
    recall_ks: Sequence[int] = (),
) -> Any:
    """Analyse every checkpoint; cache each one's results and skip cached ones on a rerun.

    For each checkpoint: build ``model_factory()``, load the state_dict
    (:func:`load_checkpoint`, :func:`load_into`), run :func:`analyze_model`, add the rows to
    the :class:`~analysis.report.Report` and save
    ``out_dir/cache/<run>/<checkpoint stem>.pt`` (metrics, metadata and every split's
    ``FeatureStats.state_dict()``, loadable with ``weights_only=True``). A rerun reuses a cache
    entry whose recorded checkpoint size and modification time (and analysis options: layer,
    linear probe, split names) still match, unless ``force``.
    ``linear_probe`` and ``recall_ks`` are passed to :func:`analyze_model`.

    Returns
    -------
    analysis.report.Report
        ``report.artifacts["cache"][run][checkpoint]`` is the cache path relative to
        ``out_dir``.
    """
    from analysis.report import Report, parse_position

    rep = report if report is not None else Report()
    out = Path(out_dir)
    files = list_checkpoints(checkpoints)
    # what changes the numbers besides the checkpoint itself: a cache entry must match it
    options = {
        "layer": layer or "",
        "linear_probe": linear_probe,
        "recall_ks": [int(q) for q in recall_ks],
        "splits": sorted(loaders),
    }
    bar = tqdm(files, desc=f"{run}: checkpoints", disable=not progress)
    for f in bar:
        cache = out / "cache" / run / f"{f.stem}.pt"
        entry = None
        if cache.is_file() and not force:
            try:
                entry = torch.load(cache, map_location="cpu", weights_only=True)
            except Exception:  # an unreadable cache entry is recomputed, not trusted
                entry = None
            if entry is not None and (
                entry.get("fingerprint") != _fingerprint(f) or entry.get("options") != options
            ):
                entry = None
        if entry is None:
            state, meta = load_checkpoint(f, trust=trust)
            epoch, step = parse_position(f.name)
            meta["epoch"] = meta["epoch"] if meta["epoch"] is not None else epoch
            meta["step"] = meta["step"] if meta["step"] is not None else step
            model = model_factory()
            load_into(model, state, source=str(f))
            metrics, result = analyze_model(
                model,
                loaders,
                num_classes,
                layer=layer,
                device=device,
                progress=progress,
                similarity=similarity,
                desc=f"{f.stem} ",
                reduce=reduce,
                linear_probe=linear_probe,
                recall_ks=recall_ks,
            )
            entry = {
                "fingerprint": _fingerprint(f),
                "options": options,
                "metrics": metrics,
                "meta": meta,
                "stats": {s: st.state_dict() for s, st in result.stats.items()},
                "weight": result.weight,
                "similarity": None if similarity is None else similarity.detach().double().cpu(),
            }
            if write_cache:
                _atomic_torch_save(entry, cache)
        for split, m in entry["metrics"].items():
            rep.add(
                run=run,
                checkpoint=f.stem,
                split=split,
                metrics=m,
                epoch=entry["meta"]["epoch"],
                step=entry["meta"]["step"],
            )
        rep.artifacts.setdefault("cache", {}).setdefault(run, {})[f.stem] = str(
            cache.relative_to(out)
        )
    return rep
