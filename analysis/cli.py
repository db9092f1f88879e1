"""Command-line interface: ``geomtools``.

Subcommands (each has ``--help``):

* ``geomtools demo [--out DIR]`` — train small models with several heads on the bundled
  digits data, analyse every checkpoint, write the report and every figure
  (:mod:`analysis.demo`);
* ``geomtools analyze CHECKPOINT_OR_DIR... --model module:fn --data module:fn`` — the same
  analysis for your checkpoints (:mod:`analysis.extract`); runs under ``torchrun`` with the
  data sharded by rank;
* ``geomtools features FILE`` (or ``--digits``) — precomputed features and labels
  (``.pt``/``.npz``, see :mod:`analysis.io`) → the same report;
* ``geomtools plot REPORT [--out DIR]`` — render the figures of a report;
* ``geomtools frame HIERARCHY --gamma G --dim D`` — write a HAFrame for an is-a hierarchy.

Errors (missing files, bad module paths, wrong shapes) are one line on stderr, exit code 2,
and nothing half-written: every output goes through a temporary file and a rename.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from analysis.collapse import collapse_metrics, ncc_mismatch
from analysis.io import FeatureFile, load_feature_file
from analysis.report import Report
from analysis.spectrum import spectrum_metrics
from analysis.stats import FeatureStats

__all__ = ["analyze_features", "digits_feature_file", "main"]


def digits_feature_file(*, test_size: float = 0.3, seed: int = 0) -> FeatureFile:
    """Built-in real data: scikit-learn's 8×8 digits (1797 images, 10 classes, 64 features).

    Features are the pixel intensities scaled to [0, 1]; the classifier is a multinomial
    logistic regression fitted on the stratified train split (``test_size``, ``seed``).
    """
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    clf = LogisticRegression(C=1.0, max_iter=5000, random_state=seed).fit(x_tr, y_tr)
    return FeatureFile(
        splits={
            "train": (torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
            "test": (torch.from_numpy(x_te), torch.from_numpy(y_te)),
        },
        num_classes=10,
        weight=torch.from_numpy(clf.coef_.copy()),
        bias=torch.from_numpy(clf.intercept_.copy()),
        class_names=[str(c) for c in range(10)],
        source="sklearn-digits",
    )


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
    if features.ndim != 2:
        raise ValueError(f"{desc}: features must be [N, D], got {tuple(features.shape)}")
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


def analyze_features(
    data: FeatureFile,
    *,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Compute every collapse and spectrum metric for every split of ``data``.

    Keys are those of :func:`~analysis.collapse.collapse_metrics` and
    :func:`~analysis.spectrum.spectrum_metrics`.

    NC4 (``ncc_mismatch``) uses the class means of the ``train`` split when there is one
    (Papyan et al. 2020), else each split's own means.

    Returns
    -------
    dict
        ``metrics[split][key] = float``.
    """
    dev = torch.device(device)
    stats = {
        name: _accumulate(
            x, y, data.num_classes, batch_size=batch_size, device=dev, desc=name, progress=progress
        )
        for name, (x, y) in data.splits.items()
    }
    out: dict[str, dict[str, float]] = {}
    for name, split_stats in stats.items():
        metrics = collapse_metrics(split_stats, data.weight, data.bias)
        metrics.update(spectrum_metrics(split_stats))
        if data.weight is not None:
            means = stats.get("train", split_stats)
            x = data.splits[name][0]
            batches = (x[i : i + batch_size] for i in range(0, int(x.shape[0]), batch_size))
            metrics["ncc_mismatch"] = ncc_mismatch(
                batches, data.weight, data.bias, train_stats=means
            )
        out[name] = metrics
    return out


def _print_table(rows: list[dict[str, Any]]) -> None:
    splits = list(dict.fromkeys(r["split"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    table = {(r["split"], r["metric"]): r["value"] for r in rows}
    width = max(len(m) for m in metrics) + 2
    print("metric".ljust(width) + "".join(s.rjust(14) for s in splits))
    for m in metrics:
        cells = []
        for s in splits:
            v = table.get((s, m))
            cells.append(("" if v is None else f"{v:.4e}").rjust(14))
        print(m.ljust(width) + "".join(cells))


def _cmd_features(args: argparse.Namespace) -> int:
    if args.digits == (args.file is not None):
        raise ValueError("geomtools features: give either a feature FILE or --digits")
    data = digits_feature_file() if args.digits else load_feature_file(args.file)
    metrics = analyze_features(
        data, batch_size=args.batch_size, device=args.device, progress=not args.no_progress
    )
    name = "digits" if args.digits else Path(args.file).stem
    report = Report()
    for split, m in metrics.items():
        report.add(run=args.run or name, checkpoint=name, split=split, metrics=m)
    csv_path, json_path = report.write(args.out)
    _print_table(report.rows)
    print(f"\nwrote {csv_path} and {json_path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from analysis.demo import run_demo

    summary = run_demo(
        args.out,
        epochs=args.epochs,
        progress=not args.no_progress,
        figures=not args.no_figures,
        force=args.force,
    )
    print("test accuracy of the last checkpoint:")
    for run, acc in summary["test_accuracy"].items():
        print(f"  {run:<10} {acc:.4f}")
    print(f"report:  {summary['report'][0]}\n         {summary['report'][1]}")
    if summary["figures"]:
        print(f"figures: {len(summary['figures'])} files in {Path(summary['figures'][0]).parent}")
    print(f"done in {summary['seconds']:.1f} s; everything is under {summary['out']}")
    return 0


def _num_classes_of(model: torch.nn.Module, layer: str | None) -> int:
    from analysis.extract import find_head

    _, head = find_head(model, None)
    for attr in ("out_features", "num_classes"):
        if isinstance(getattr(head, attr, None), int):
            return int(getattr(head, attr))
    raise ValueError("cannot infer the number of classes from the model: pass --num-classes")


def _loaders(data: Any, batch_size: int, world: int, rank: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader, Dataset
    from torch.utils.data.distributed import DistributedSampler

    if isinstance(data, (tuple, list)) and len(data) == 2:
        data = {"train": data[0], "test": data[1]}
    if not isinstance(data, dict) or not data:
        raise ValueError(
            "the --data callable must return a dict split -> Dataset/DataLoader, or a "
            f"(train, test) pair; got {type(data).__name__}"
        )
    out: dict[str, Any] = {}
    for split, d in data.items():
        ds = d.dataset if isinstance(d, DataLoader) else d
        bs = (d.batch_size or batch_size) if isinstance(d, DataLoader) else batch_size
        if not isinstance(ds, Dataset):
            raise ValueError(
                f"split {split!r}: expected a Dataset or DataLoader, got {type(d).__name__}"
            )
        sampler: DistributedSampler[Any] | None = (
            DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False, drop_last=False)
            if world > 1
            else None
        )
        if world > 1 and len(ds) % world:  # type: ignore[arg-type]
            raise ValueError(
                f"split {split!r}: {len(ds)} samples do not shard evenly over {world} ranks "  # type: ignore[arg-type]
                "(DistributedSampler would repeat samples and bias the statistics)"
            )
        out[str(split)] = DataLoader(ds, batch_size=bs, shuffle=False, sampler=sampler)
    return out


def _cmd_analyze(args: argparse.Namespace) -> int:
    import os

    import torch.distributed as dist

    from analysis.extract import analyze_checkpoints, list_checkpoints, resolve

    files = list_checkpoints(args.checkpoints)  # fail early on missing paths
    make_model = resolve(args.model)
    make_data = resolve(args.data)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    created = world > 1 and not dist.is_initialized()
    if created:  # torchrun's env:// rendezvous
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    try:
        probe = make_model()
        if not isinstance(probe, torch.nn.Module):
            raise ValueError(
                f"--model {args.model} returned {type(probe).__name__}, not an nn.Module"
            )
        num_classes = args.num_classes or _num_classes_of(probe, args.layer)
        loaders = _loaders(make_data(), args.batch_size, world, rank)
        report = analyze_checkpoints(
            files,
            make_model,
            loaders,
            num_classes,
            out_dir=args.out,
            run=args.run or Path(files[0]).parent.name or "model",
            layer=args.layer,
            device=args.device,
            force=args.force,
            trust=args.trust_checkpoint,
            progress=not args.no_progress and rank == 0,
            reduce=(lambda st: st.all_reduce()) if world > 1 else None,
            write_cache=rank == 0,
            linear_probe=args.linear_probe,
            recall_ks=args.recall,
        )
        if rank == 0:
            csv_path, json_path = report.write(args.out)
            _print_table(
                [r for r in report.rows if r["checkpoint"] == report.rows[-1]["checkpoint"]]
            )
            print(f"\nwrote {csv_path} and {json_path}")
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from analysis.plots import render_report

    paths = render_report(args.report, args.out)
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _cmd_frame(args: argparse.Namespace) -> int:
    from analysis.extract import _atomic_torch_save
    from geomtools.frames import Hierarchy, haframe

    hier = Hierarchy.from_isa_file(args.hierarchy)
    frame = haframe(hier.lca_distances(), args.dim, gamma=args.gamma, seed=args.seed)
    out = Path(args.out)
    _atomic_torch_save(
        {
            "weight": frame.weight,
            "similarity": frame.similarity,
            "s": float(frame.s),
            "classes": [str(c) for c in hier.classes],
            "gamma": args.gamma,
        },
        out,
    )
    print(
        f"HAFrame for {frame.weight.shape[0]} classes in R^{args.dim} "
        f"(s = {float(frame.s):.6f}) -> {out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``geomtools`` argument parser."""
    from geomtools import __version__

    parser = argparse.ArgumentParser(
        prog="geomtools",
        description="Measure neural collapse and the geometry of representations.",
    )
    parser.add_argument("--version", action="version", version=f"geomtools {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--out", default=out, help=f"output folder (default: {out})")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    p = sub.add_parser(
        "demo",
        help="train on the bundled digits data, analyse every checkpoint, write report + figures",
        description="The main job end to end on scikit-learn's digits (no download): linear, "
        "simplex-ETF, HAFrame and GCR (k = 1, 2, 4) heads, a checkpoint per epoch, the tidy "
        "report and every figure.",
    )
    common(p, "geomtools-demo")
    p.add_argument("--epochs", type=int, default=30, help="epochs per run (default: 30)")
    p.add_argument("--no-figures", action="store_true", help="skip rendering the figures")
    p.add_argument("--force", action="store_true", help="retrain and reanalyse everything")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "analyze",
        help="metrics of every checkpoint of a model",
        description="Load each checkpoint (torch.load weights_only=True) into the model built "
        "by --model, stream the splits returned by --data through it, capture the penultimate "
        "features (input of the last Linear / geomtools head, or --layer) and write every "
        "metric to OUT/report.csv and OUT/report.json. Finished checkpoints are cached in "
        "OUT/cache and skipped on a rerun (unless --force). Under torchrun the data is sharded "
        "by rank and rank 0 writes the report.",
    )
    p.add_argument("checkpoints", nargs="+", help="checkpoint files or folders of them")
    p.add_argument(
        "--model", required=True, help="'package.module:callable' returning the nn.Module"
    )
    p.add_argument(
        "--data",
        required=True,
        help="'package.module:callable' returning {split: Dataset or DataLoader} or (train, test)",
    )
    p.add_argument("--layer", help="module whose input are the features (default: the classifier)")
    p.add_argument("--num-classes", type=int, help="default: read from the classifier")
    p.add_argument("--run", help="run name in the report (default: the checkpoints' folder name)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="ignore cached results")
    p.add_argument(
        "--linear-probe",
        action="store_true",
        help="also fit a logistic-regression probe on train features (keeps N x D features)",
    )
    p.add_argument(
        "--recall",
        type=int,
        nargs="+",
        default=[],
        metavar="K",
        help="also Recall@K of the features per split, e.g. --recall 1 4 (keeps N x D features)",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow checkpoints that need full unpickling (only for files you trust)",
    )
    common(p, "geomtools-results")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser(
        "features",
        help="metrics of a precomputed feature file",
        description="Stream a feature file (.pt/.pth weights_only or .npz: features, labels, "
        "optional weight/bias, or one mapping per split) through FeatureStats and write every "
        "metric to OUT/report.csv and OUT/report.json.",
    )
    p.add_argument("file", nargs="?", help=".pt/.pth or .npz feature file")
    p.add_argument("--digits", action="store_true", help="use the built-in sklearn digits pixels")
    p.add_argument("--run", help="run name in the report (default: the file name)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--device", default="cpu", help="device of the float64 statistics")
    common(p, "geomtools-results")
    p.set_defaults(func=_cmd_features)

    p = sub.add_parser(
        "plot",
        help="render the figures of a report",
        description="Read REPORT (report.json, or the folder holding it) and its cached "
        "statistics and write every figure as PDF and PNG.",
    )
    p.add_argument("report", help="report.json or its folder")
    p.add_argument("--out", default="figures", help="output folder (default: figures)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser(
        "frame",
        help="write a HAFrame for a class hierarchy",
        description="Read an is-a hierarchy ('parent child' per line), compute the "
        "hierarchy-aware frame with the exact shape parameter and save weight, similarity, s "
        "and the class order with torch.save.",
    )
    p.add_argument("hierarchy", help="is-a text file, one 'parent child' pair per line")
    p.add_argument("--gamma", type=float, required=True, help="rate of the exponential map")
    p.add_argument("--dim", type=int, required=True, help="feature dimension D")
    p.add_argument("--seed", type=int, default=0, help="seed of the rotation (default: 0)")
    p.add_argument("--out", default="haframe.pt", help="output file (default: haframe.pt)")
    p.set_defaults(func=_cmd_frame)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geomtools`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError, TypeError, KeyError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"geomtools: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
