"""One driver for ``analyze``, ``features`` and ``demo``: runs → checkpoints → passes → store.

:func:`analyze_runs` takes :class:`~analysis.runs.RunSpec` s (from the command line, a TOML
manifest or the demo) and, for each run, builds the model and the data once, hashes every
checkpoint (SHA-256 of its bytes, streamed), skips those already stored with the same hash and
options (resume), loads the others (:mod:`analysis.checkpoints`), streams the data through the
model (:mod:`analysis.extract`) and stores each checkpoint's rows in one transaction
(:mod:`analysis.store`). Afterwards the run holds exactly the checkpoints of this call (rows of
checkpoints no longer given are removed: analysing a run again replaces that run's rows only)
and ``report.csv``/``report.json`` are regenerated — also after an error or Ctrl-C, from what
was stored.

Data
----
The data factory returns ``{split: Dataset or DataLoader}`` or a ``(train, test)`` pair. A
``DataLoader`` is used exactly as returned (its ``collate_fn``, sampler, workers and batch
size); a ``Dataset`` gets ``DataLoader(dataset, batch_size, shuffle=False)``. Under
``torchrun`` (``WORLD_SIZE`` > 1) a ``Dataset`` gets a ``DistributedSampler`` without
shuffling; a ``DataLoader`` must already have one, and every split's size must divide by the
number of processes (otherwise the sampler repeats or drops samples and biases the statistics).
Only rank 0 touches the database; it decides what to (re)compute and tells the other ranks.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from analysis.checkpoints import content_hash, load_into, parse_position, read_checkpoint
from analysis.collapse import NCCMismatch
from analysis.extract import (
    DEFAULT_SPILL_BUDGET,
    WEIGHT_METRICS,
    ExtractResult,
    analyze_model,
    split_metrics,
)
from analysis.heads import find_head, num_classes_of
from analysis.io import FeatureFile
from analysis.runs import RunSpec
from analysis.stats import FeatureStats
from analysis.store import DB_NAME, ResultsStore, prepare_out

__all__ = [
    "AnalyzeOptions",
    "Interrupted",
    "analyze_feature_file",
    "analyze_runs",
    "check_device",
    "class_distances",
    "feature_file_result",
    "make_loaders",
    "omitted_summary",
]


class Interrupted(Exception):
    """Ctrl-C during an analysis: ``stored`` of ``total`` checkpoints are in the database."""

    def __init__(self, stored: int, total: int) -> None:
        super().__init__(f"interrupted: {stored} of {total} checkpoints stored; rerun resumes")
        self.stored, self.total = stored, total


@dataclass
class AnalyzeOptions:
    """Options of :func:`analyze_runs` that are the same for every run.

    ``linear_probe`` and ``recall_ks`` change the metrics and are part of the resume key;
    ``device``, ``batch_size`` (for ``Dataset`` s), ``progress`` and ``spill_budget`` (bytes
    of temporary disk for the train split's NC4, :class:`~analysis.spill.Spill`; ``0`` = a
    second pass instead) change them only at round-off or not at all, and are not.
    """

    device: str = "cpu"
    batch_size: int = 256
    force: bool = False
    trust: bool = False
    linear_probe: bool = False
    recall_ks: tuple[int, ...] = ()
    progress: bool = True
    spill_budget: int = DEFAULT_SPILL_BUDGET

    def __post_init__(self) -> None:
        if not isinstance(self.spill_budget, int) or self.spill_budget < 0:
            raise ValueError(f"--spill-budget must be ≥ 0 bytes, got {self.spill_budget}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if any(int(k) < 1 for k in self.recall_ks):
            raise ValueError(f"--recall values must be positive, got {list(self.recall_ks)}")
        self.recall_ks = tuple(int(k) for k in self.recall_ks)
        check_device(self.device)


def check_device(device: str | torch.device) -> torch.device:
    """Parse ``device`` and check that this machine has it (one-line ``ValueError``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"--device {device!r} is not a device name (cpu, cuda, cuda:1, mps)"
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: CUDA is not available in this torch build/machine"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: unsupported device type {dev.type!r}")
    return dev


@contextmanager
def distributed(device: str) -> Iterator[tuple[int, int]]:
    """``(world_size, rank)`` from torchrun's environment; joins its process group if needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world <= 1:
        yield 1, 0
        return
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:  # torchrun's env:// rendezvous
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield world, rank
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def make_loaders(data: Any, batch_size: int, world: int = 1, rank: int = 0) -> dict[str, Any]:
    """Loaders per split from what a data factory returned (module docstring).

    Raises
    ------
    ValueError
        Not a mapping or pair, a split that is neither ``Dataset`` nor ``DataLoader``, or under
        ``torchrun`` a ``DataLoader`` without a ``DistributedSampler`` or an uneven split.
    """
    from torch.utils.data import DataLoader, Dataset
    from torch.utils.data.distributed import DistributedSampler

    if isinstance(data, (tuple, list)) and len(data) == 2:
        data = {"train": data[0], "test": data[1]}
    if not isinstance(data, Mapping) or not data:
        raise ValueError(
            "the --data callable must return a dict split -> Dataset/DataLoader, or a "
            f"(train, test) pair; got {type(data).__name__}"
        )
    out: dict[str, Any] = {}
    for split, d in data.items():
        where = f"--data split {split!r}"
        if isinstance(d, DataLoader):
            if world > 1:
                sampler = d.sampler
                if not isinstance(sampler, DistributedSampler):
                    raise ValueError(
                        f"{where}: under torchrun a DataLoader must shard with a "
                        "DistributedSampler (or return the Dataset and geomtools adds one); "
                        "it is never rebuilt"
                    )
                if sampler.num_replicas != world or sampler.rank != rank:
                    raise ValueError(
                        f"{where}: its DistributedSampler is for {sampler.num_replicas} ranks "
                        f"(rank {sampler.rank}), but this is rank {rank} of {world}"
                    )
                _check_even(d.dataset, world, where)
            out[str(split)] = d
        elif isinstance(d, Dataset):
            sampler = None
            if world > 1:
                _check_even(d, world, where)
                sampler = DistributedSampler(
                    d, num_replicas=world, rank=rank, shuffle=False, drop_last=False
                )
            out[str(split)] = DataLoader(d, batch_size=batch_size, shuffle=False, sampler=sampler)
        else:
            raise ValueError(f"{where}: expected a Dataset or DataLoader, got {type(d).__name__}")
    return out


def _check_even(dataset: Any, world: int, where: str) -> None:
    n = len(dataset)
    if n % world:
        raise ValueError(
            f"{where}: {n} samples do not shard evenly over {world} ranks "
            "(DistributedSampler would repeat or drop samples and bias the statistics)"
        )


def _log(text: str) -> None:
    print(f"geomtools: {text}", file=sys.stderr)


def class_distances(
    hierarchy: str | os.PathLike[str] | None,
    classes: str | os.PathLike[str] | None,
    num_classes: int,
) -> torch.Tensor | None:
    """LCA distances ``[K, K]`` in label order from an is-a file (``None`` without one).

    The leaves of ``hierarchy`` ('parent child' per line, as ``geomtools frame`` reads) are the
    class indices written as integers ``0 … K−1``, or the names of ``classes`` (one name per
    line, in label order). Leaves that are no class are dropped with their branches
    (:meth:`geomtools.frames.Hierarchy.restrict`); a class that is no leaf is an error.

    Raises
    ------
    ValueError
        A class missing from the tree, a class file of the wrong length.
    """
    if hierarchy is None:
        return None
    from geomtools.frames import Hierarchy

    if classes is not None:
        names = [line.strip() for line in Path(classes).read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        if len(names) != num_classes:
            raise ValueError(
                f"{classes}: {len(names)} class names for a model with {num_classes} classes"
            )
    else:
        names = [str(c) for c in range(num_classes)]
    tree = Hierarchy.from_isa_file(hierarchy)
    try:
        tree = tree.restrict(names)
    except ValueError as err:
        hint = "" if classes is not None else " (leaves are class indices 0..K-1, or use --classes)"
        raise ValueError(f"{hierarchy}: {err}{hint}") from err
    return tree.lca_distances()


def _checkpoint_names(run: RunSpec) -> list[str]:
    names: dict[str, Path] = {}
    for f in run.checkpoints:
        if f.stem in names:
            raise ValueError(
                f"run {run.name!r}: {names[f.stem]} and {f} have the same checkpoint name "
                f"{f.stem!r}; rename one or put them in separate runs"
            )
        names[f.stem] = f
    return list(names)


def _tensor_key(t: Any) -> str | None:
    if t is None:
        return None
    import hashlib

    arr = torch.as_tensor(t).detach().double().cpu().contiguous()
    return hashlib.sha256(arr.numpy().tobytes()).hexdigest()[:16] + str(list(arr.shape))


@dataclass
class RunOutcome:
    """What :func:`analyze_runs` did for one run."""

    name: str
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    removed: int = 0


def analyze_runs(
    runs: Sequence[RunSpec],
    out: str | os.PathLike[str],
    options: AnalyzeOptions | None = None,
) -> list[RunOutcome]:
    """Analyse every checkpoint of every run into ``out/results.sqlite`` (module docstring).

    Parameters
    ----------
    runs : sequence of RunSpec
        Distinct run names.
    out : path-like
        Output folder (database and exports).
    options : AnalyzeOptions

    Returns
    -------
    list of RunOutcome
        Per run: checkpoints computed and reused, stale checkpoints removed.

    Raises
    ------
    Interrupted
        On Ctrl-C (the exports are regenerated first).
    ValueError, FileNotFoundError, TypeError
        One-line errors naming the run, checkpoint and split.
    """
    opts = options or AnalyzeOptions()
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"run names given twice: {dup}")
    per_run = {r.name: _checkpoint_names(r) for r in runs}
    total = sum(len(v) for v in per_run.values())
    prepare_out(out, create=False)
    with distributed(opts.device) as (world, rank):
        store = _LazyStore(out) if rank == 0 else None
        outcomes: list[RunOutcome] = []
        try:
            for run in runs:
                outcomes.append(RunOutcome(run.name))
                _analyze_run(run, per_run[run.name], store, opts, world, rank, outcomes[-1])
        except KeyboardInterrupt:
            stored = sum(len(o.computed) + len(o.reused) for o in outcomes)
            raise Interrupted(stored, total) from None
        except (ValueError, TypeError, FileNotFoundError) as err:
            stored = sum(len(o.computed) + len(o.reused) for o in outcomes)
            if stored == 0:
                raise
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise type(err)(
                f"{first} ({stored} of {total} checkpoints stored; rerun resumes)"
            ) from err
        finally:
            if store is not None:
                store.close()
    return outcomes


class _LazyStore:
    """The results database, created only when the first checkpoint is stored.

    A call that fails before storing anything leaves a new ``OUT`` uncreated. On close the
    exports are regenerated if the database exists.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = out
        self.store = ResultsStore(out) if (Path(out) / DB_NAME).exists() else None

    def get(self) -> ResultsStore:
        if self.store is None:
            self.store = ResultsStore(self.out)
        return self.store

    def close(self) -> None:
        if self.store is not None:
            try:
                self.store.export()
            finally:
                self.store.close()


def _analyze_run(
    run: RunSpec,
    names: list[str],
    lazy: _LazyStore | None,
    opts: AnalyzeOptions,
    world: int,
    rank: int,
    outcome: RunOutcome,
) -> None:
    model = run.build_model()
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"run {run.name!r}: the model factory returned {type(model).__name__}, not an nn.Module"
        )
    num_classes = run.num_classes or num_classes_of(model)
    for layer in run.layers:
        find_head(model, layer)  # an unknown --layer fails before any work
    distances = class_distances(run.hierarchy, run.classes, num_classes)
    loaders = make_loaders(run.build_data(), opts.batch_size, world, rank)
    options = {
        "linear_probe": opts.linear_probe,
        "recall_ks": list(opts.recall_ks),
        "splits": list(loaders),
        "similarity": _tensor_key(run.similarity),
        "num_classes": num_classes,
    }
    spec = {**run.describe(), "options": options}
    key = json.dumps(spec, sort_keys=True)
    plan: list[tuple[str, Path, str]] = []
    if lazy is not None:
        for name, f in zip(names, run.checkpoints, strict=True):
            sha = content_hash(f)
            stored = lazy.store.stored_key(run.name, name) if lazy.store is not None else None
            if not opts.force and stored == (sha, key):
                outcome.reused.append(name)
            else:
                plan.append((name, f, sha))
        if lazy.store is not None:
            lazy.store.upsert_run(run.name, spec, run.attributes)
    if world > 1:
        import torch.distributed as dist

        box: list[Any] = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    bar = tqdm(plan, desc=f"{run.name}: checkpoints", disable=not opts.progress or not plan)
    for name, f, sha in _closing(bar):
        ck = read_checkpoint(f, weights=run.weights, trust=opts.trust)
        epoch, step = parse_position(f.name)
        epoch = ck.epoch if ck.epoch is not None else epoch
        step = ck.step if ck.step is not None else step
        prefix = load_into(
            model,
            ck.state_dict,
            weights=run.weights,
            ema_by_prefix=ck.ema_by_prefix,
            source=str(f),
        )
        result = analyze_model(
            model,
            loaders,
            num_classes,
            layers=run.layers,
            pool=run.pool,
            device=opts.device,
            progress=opts.progress,
            similarity=run.similarity,
            desc=f"{run.name}/{name} ",
            reduce=(lambda st: st.all_reduce()) if world > 1 else None,
            linear_probe=opts.linear_probe,
            recall_ks=opts.recall_ks,
            spill_budget=opts.spill_budget,
            distances=distances,
            log=_log if rank == 0 else None,
        )
        if lazy is not None:
            store = lazy.get()
            if not outcome.computed:
                store.upsert_run(run.name, spec, run.attributes)
            layout = ck.layout + (f", prefix {prefix!r} removed" if prefix else "")
            _store(store, run.name, name, f, sha, key, epoch, step, layout, result, run.similarity)
        outcome.computed.append(name)
    if lazy is not None and lazy.store is not None:
        outcome.removed = lazy.store.prune_run(run.name, names)


def _closing(bar: Any) -> Iterator[Any]:
    """Iterate a tqdm bar and close it however the loop ends (no stale bar above an error)."""
    try:
        yield from bar
    finally:
        bar.close()


def _store(
    store: ResultsStore,
    run: str,
    name: str,
    path: Path | str,
    sha: str,
    key: str,
    epoch: int | None,
    step: int | None,
    layout: str,
    result: ExtractResult,
    similarity: Any,
) -> None:
    tensors: dict[tuple[str, str, str], Any] = {
        (split, layer, "feature_stats"): st.state_dict()
        for layer, per_split in result.stats.items()
        for split, st in per_split.items()
    }
    if result.weight is not None:
        tensors[("", result.layer, "weight")] = result.weight
    if similarity is not None:
        sim = torch.as_tensor(similarity).detach().double().cpu()
        tensors[("", result.layer, "similarity")] = sim
    store.store_checkpoint(
        run,
        name,
        path=str(Path(path).resolve()) if isinstance(path, Path) else path,
        sha256=sha,
        key=key,
        epoch=epoch,
        step=step,
        layout=layout,
        metrics=result.metrics,
        omitted=result.omitted,
        tensors=tensors,
    )


# ---------------------------------------------------------------------------- feature files
def _accumulate(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    batch_size: int,
    device: torch.device,
    desc: str,
    progress: bool,
) -> FeatureStats:
    stats = FeatureStats(num_classes, int(features.shape[1]), device=device)
    n = int(features.shape[0])
    if n == 0:
        raise ValueError(f"{desc}: split has no samples")
    bar = tqdm(total=n, desc=desc, unit="sample", disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        try:
            stats.update(features[start:stop], labels[start:stop])
        except (TypeError, ValueError) as err:
            raise type(err)(f"{desc}, samples {start}:{stop}: {err}") from err
        bar.update(stop - start)
    bar.close()
    return stats


def feature_file_result(
    data: FeatureFile,
    *,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ExtractResult:
    """Every collapse and spectrum metric of every split of a feature file.

    With a classifier (``weight``, ``bias``), ``accuracy`` is that of ``argmax_c w_cᵀx + b_c``
    and NC4 (``ncc_mismatch``) compares it with the nearest class mean of the ``train`` split
    when there is one (Papyan et al. 2020), else of the split itself; without a classifier
    both are omitted (listed in ``result.omitted``).
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size}")
    dev = check_device(device)
    layer = "features"
    result = ExtractResult(layer=layer, layers=[layer], weight=data.weight, bias=data.bias)
    result.stats[layer] = {
        name: _accumulate(
            x, y, data.num_classes, batch_size=batch_size, device=dev, desc=name, progress=progress
        )
        for name, (x, y) in data.splits.items()
    }
    per_split = result.metrics.setdefault(layer, {})
    for name, stats in result.stats[layer].items():
        omitted = result.omitted.setdefault(layer, {}).setdefault(name, {})
        metrics = split_metrics(stats, data.weight, data.bias, None, omitted)
        if data.weight is None:
            omitted.update(
                dict.fromkeys(WEIGHT_METRICS, "the feature file has no classifier weight")
            )
        if data.weight is not None:
            ncc = NCCMismatch(result.stats[layer].get("train", stats), data.weight, data.bias)
            x, y = data.splits[name]
            w = torch.as_tensor(data.weight, dtype=torch.float64)
            b = torch.zeros(w.shape[0], dtype=torch.float64)
            if data.bias is not None:
                b = torch.as_tensor(data.bias, dtype=torch.float64)
            correct = 0
            for i in range(0, int(x.shape[0]), batch_size):
                xb = x[i : i + batch_size].to(torch.float64)
                ncc.update(xb)
                correct += int((torch.addmm(b, xb, w.T).argmax(1) == y[i : i + batch_size]).sum())
            metrics["accuracy"] = correct / int(x.shape[0])
            metrics["ncc_mismatch"] = ncc.compute()
        else:
            reason = "the feature file has no classifier weight"
            omitted.update({"accuracy": reason, "ncc_mismatch": reason})
        per_split[name] = metrics
    return result


def analyze_feature_file(
    data: FeatureFile,
    out: str | os.PathLike[str],
    *,
    run: str,
    checkpoint: str,
    sha256: str,
    path: str,
    batch_size: int = 4096,
    device: str = "cpu",
    progress: bool = True,
) -> ExtractResult:
    """:func:`feature_file_result` stored as one checkpoint of ``run`` in ``out``'s database.

    The run's rows are replaced by this file's (exports regenerated), as for ``analyze``.
    """
    from analysis.runs import validate_run_name

    validate_run_name(run)
    result = feature_file_result(data, batch_size=batch_size, device=device, progress=progress)
    spec = {"source": "feature file", "num_classes": data.num_classes}
    with ResultsStore(out) as store:
        try:
            store.upsert_run(run, spec)
            _store(
                store,
                run,
                checkpoint,
                path,
                sha256,
                json.dumps(spec, sort_keys=True),
                None,
                None,
                data.source or "feature file",
                result,
                None,
            )
            store.prune_run(run, [checkpoint])
        finally:
            store.export()
    return result


def omitted_summary(
    out: str | os.PathLike[str], runs: Sequence[str] | None = None
) -> list[tuple[str, str, str, int]]:
    """``(run, metric, reason, number of checkpoints)`` for every omitted metric in ``out``.

    ``runs`` restricts the summary to those runs.
    """
    from analysis.store import open_existing

    groups: dict[tuple[str, str, str], set[str]] = {}
    with open_existing(out) as store:
        for o in store.omitted():
            if runs is not None and o["run"] not in runs:
                continue
            groups.setdefault((o["run"], o["metric"], o["reason"]), set()).add(o["checkpoint"])
    return [(run, metric, reason, len(c)) for (run, metric, reason), c in groups.items()]
