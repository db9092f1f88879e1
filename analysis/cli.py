"""Command-line interface: ``geomtools`` (argument parsing only; the work is in the pipeline).

Subcommands (each has ``--help``):

* ``geomtools demo [--out DIR]`` — train small models with several heads on the bundled
  digits data, analyse every checkpoint, write the results database, report and figures
  (:mod:`analysis.demo`);
* ``geomtools analyze FOLDER... --model module:fn --data module:fn`` (or ``--config
  runs.toml``) — every checkpoint of every run into ``OUT/results.sqlite``
  (:mod:`analysis.pipeline`); runs under ``torchrun`` with the data sharded by rank;
* ``geomtools features FILE`` (or ``--digits``) — precomputed features and labels
  (``.pt``/``.npz``/``.safetensors``, see :mod:`analysis.io`) into the same database;
* ``geomtools merge OUT1 OUT2 ... --out OUT`` and ``geomtools forget RUN --out OUT``;
* ``geomtools plot OUT [--out DIR]`` — render the figures of an output folder;
* ``geomtools frame HIERARCHY --gamma G --dim D`` — write a HAFrame for an is-a hierarchy;
* ``geomtools reproduce NAME|all --out DIR [--seeds N] [--quick]`` — train, analyse and judge
  a paper's claims on locally generated data (:mod:`analysis.studies`).

Errors (missing or unreadable files, bad module paths, checkpoints that do not match the
model, unusable output folders, unknown devices) are one line on stderr and exit status 2;
Ctrl-C prints one line and exits 130. Nothing is half-written: the database commits one
checkpoint at a time and every other file goes through a temporary file and a rename.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
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


def _print_omitted(out: str, runs: list[str]) -> None:
    from analysis.pipeline import omitted_summary

    for run, metric, reason, n in omitted_summary(out, runs):
        print(f"omitted {metric} for run {run} ({n} checkpoint{'s' * (n != 1)}): {reason}")


def _print_written(out: str) -> None:
    from analysis.store import DB_NAME

    root = Path(out)
    print(f"\nresults: {root / DB_NAME}\nreport:  {root / 'report.csv'}, {root / 'report.json'}")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20})
_UNITS.update({"g": 2**30, "t": 2**40})


def _bytes(text: str) -> int:
    """``"2GiB"`` → 2147483648; ``"500MB"`` → 500000000; a plain number is bytes."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if m is None or m.group(2).lower() not in _UNITS:
        raise ValueError(f"--spill-budget {text!r}: expected a size such as 2GiB, 500MB or 0")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _cmd_features(args: argparse.Namespace) -> int:
    from analysis.checkpoints import content_hash
    from analysis.io import digits_feature_file, load_feature_file
    from analysis.pipeline import analyze_feature_file

    if args.digits == (args.file is not None):
        raise ValueError("geomtools features: give either a feature FILE or --digits")
    if args.digits:
        data, name, sha, path = digits_feature_file(), "digits", "sklearn-digits", "sklearn-digits"
    else:
        data, name = load_feature_file(args.file), Path(args.file).stem
        sha, path = content_hash(args.file), str(Path(args.file).resolve())
    result = analyze_feature_file(
        data,
        args.out,
        run=args.run or name,
        checkpoint=name,
        sha256=sha,
        path=path,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
    )
    _print_table(
        [
            {"split": s, "metric": k, "value": v}
            for s, metrics in result.metrics[result.layer].items()
            for k, v in metrics.items()
        ]
    )
    _print_omitted(args.out, [args.run or name])
    _print_written(args.out)
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
    print(f"results: {summary['database']}")
    print(f"report:  {summary['report'][0]}\n         {summary['report'][1]}")
    if summary["figures"]:
        print(f"figures: {len(summary['figures'])} files in {Path(summary['figures'][0]).parent}")
    print(f"done in {summary['seconds']:.1f} s; everything is under {summary['out']}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from analysis.pipeline import AnalyzeOptions, analyze_runs
    from analysis.runs import load_manifest, parse_kwargs, runs_from_paths
    from analysis.store import open_existing

    options = AnalyzeOptions(
        device=args.device,
        batch_size=args.batch_size,
        force=args.force,
        trust=args.trust_checkpoint,
        linear_probe=args.linear_probe,
        recall_ks=tuple(args.recall),
        progress=not args.no_progress,
        spill_budget=_bytes(args.spill_budget),
    )
    shared = {
        "model_kwargs": parse_kwargs(args.model_kwargs, "--model-kwargs"),
        "data_kwargs": parse_kwargs(args.data_kwargs, "--data-kwargs"),
        "layers": args.layer,
        "pool": args.pool,
        "weights": args.weights,
        "hierarchy": args.hierarchy,
        "classes": args.classes,
        "num_classes": args.num_classes,
    }
    if args.config is not None:
        if args.checkpoints or args.run:
            raise ValueError("--config lists the runs: give no checkpoint paths or --run with it")
        runs = load_manifest(
            args.config,
            model=args.model,
            data=args.data,
            **{k: v for k, v in shared.items() if v not in (None, {}, [])},
        )
    else:
        if not args.checkpoints:
            raise ValueError("give checkpoint folders/files, or a --config manifest")
        if args.model is None or args.data is None:
            raise ValueError("--model and --data are required (or a --config manifest)")
        shared["layers"] = shared["layers"] or []
        shared["pool"] = shared["pool"] or "avg"
        runs = runs_from_paths(
            args.checkpoints, model=args.model, data=args.data, run=args.run, **shared
        )
    outcomes = analyze_runs(runs, args.out, options)
    import os

    if os.environ.get("RANK", "0") != "0":
        return 0
    for o in outcomes:
        removed = f", {o.removed} no longer given removed" if o.removed else ""
        print(
            f"{o.name}: {len(o.computed)} checkpoint(s) analysed, {len(o.reused)} reused{removed}"
        )
    with open_existing(args.out) as store:
        last = outcomes[-1].name
        rows = [r for r in store.rows() if r["run"] == last]
    if rows:
        print(f"\n{last} / {rows[-1]['checkpoint']}:")
        _print_table([r for r in rows if r["checkpoint"] == rows[-1]["checkpoint"]])
    _print_omitted(args.out, [o.name for o in outcomes])
    _print_written(args.out)
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from analysis.store import ResultsStore, open_existing

    for src in args.sources:  # every source readable before OUT is created or touched
        open_existing(src).close()
    with ResultsStore(args.out) as store:
        try:
            for src in args.sources:
                n = store.merge_from(src, replace=args.replace)
                print(f"{src}: {n} checkpoint(s) merged")
        finally:
            store.export()
    _print_written(args.out)
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    from analysis.runs import validate_run_name
    from analysis.store import open_existing

    validate_run_name(args.run)
    with open_existing(args.out) as store:
        n = store.forget(args.run)
        store.export()
    print(f"removed run {args.run} ({n} checkpoint(s)) from {args.out}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from analysis.plots import render_report

    paths = render_report(args.report, args.out)
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from analysis.studies import STUDIES, study_module
    from analysis.studies.study import run_study

    names = list(STUDIES) if args.name == "all" else [args.name]
    modules = [study_module(n) for n in names]
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be ≥ 1, got {args.seeds}")
    if not args.force:  # refuse before hours of training, not after
        for n in names:
            if (Path(args.out) / n).exists():
                raise FileExistsError(
                    f"{Path(args.out) / n} exists; pass --force to replace it "
                    "(it is kept until the new run is complete)"
                )
    import signal

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the staging folder is removed, as on Ctrl-C

    signal.signal(signal.SIGTERM, terminated)
    for module in modules:
        result = run_study(
            module,
            args.out,
            seeds=args.seeds,
            quick=args.quick,
            progress=not args.no_progress,
            force=args.force,
        )
        print(f"{module.NAME}: {result.folder} ({result.seconds:.0f} s)")
        for claim in result.claims:
            print(f"  {claim.verdict:<30} {claim.statement}")
    return 0


def _cmd_frame(args: argparse.Namespace) -> int:
    from analysis.io import atomic_torch_save
    from geomtools.frames import Hierarchy, haframe

    hier = Hierarchy.from_isa_file(args.hierarchy)
    frame = haframe(hier.lca_distances(), args.dim, gamma=args.gamma, seed=args.seed)
    out = Path(args.out)
    atomic_torch_save(
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
        bars = p.add_mutually_exclusive_group()
        bars.add_argument(
            "--no-progress",
            action="store_true",
            help="hide progress bars (hidden by default when stderr is not a terminal)",
        )
        bars.add_argument(
            "--progress",
            action="store_true",
            help="show progress bars even when stderr is not a terminal (a log file)",
        )

    p = sub.add_parser(
        "demo",
        help="train on the bundled digits data, analyse every checkpoint, write report + figures",
        description="The main job end to end on scikit-learn's digits (no download): linear, "
        "simplex-ETF, HAFrame and GCR (k = 1, 2, 4) heads, a checkpoint per epoch, the results "
        "database, the tidy report and every figure.",
    )
    common(p, "geomtools-demo")
    p.add_argument("--epochs", type=int, default=30, help="epochs per run (default: 30)")
    p.add_argument("--no-figures", action="store_true", help="skip rendering the figures")
    p.add_argument("--force", action="store_true", help="retrain and reanalyse everything")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "reproduce",
        help="reproduce a paper's claims: train, analyse, figures and a verdict per claim",
        description="Train small models on data generated on this machine (MNIST-1D, digits; "
        "nothing is downloaded), analyse them with the toolkit and write OUT/NAME/: figures, "
        "a tidy CSV (one row per seed, variant, epoch and metric) and summary.md with a "
        "verdict per claim. See docs/studies/.",
    )
    from analysis.studies import STUDIES

    p.add_argument(
        "name",
        choices=[*STUDIES, "all"],
        help="the study (all: each in turn)",
    )
    common(p, "geomtools-studies")
    p.add_argument(
        "--seeds", type=int, default=None, help="number of seeds (default: 3, or 1 with --quick)"
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer epochs and one seed: minutes, for CI"
    )
    p.add_argument("--force", action="store_true", help="replace an existing OUT/NAME")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "analyze",
        help="metrics of every checkpoint of one or more runs",
        description="Each FOLDER is a run named after it (a file: the run of its folder). Load "
        "each checkpoint (torch.load weights_only=True; DDP, torch.compile, Lightning and "
        "safetensors layouts) into the model built by --model, stream the splits returned by "
        "--data through it, capture the features (input of the classifier, or --layer) and "
        "store every metric in OUT/results.sqlite; OUT/report.csv and OUT/report.json are "
        "regenerated with every run analysed into OUT. Checkpoints already stored with the "
        "same content hash and options are skipped (unless --force). Modules are imported "
        "from the current directory first. Under torchrun the data is sharded by rank.",
    )
    p.add_argument("checkpoints", nargs="*", help="checkpoint folders (one run each) or files")
    p.add_argument("--config", help="TOML manifest with [[run]] tables (instead of paths)")
    p.add_argument("--model", help="'package.module:callable' returning the nn.Module")
    p.add_argument(
        "--data",
        help="'package.module:callable' returning {split: Dataset or DataLoader} or (train, test)",
    )
    p.add_argument("--model-kwargs", help="JSON object of keyword arguments for --model")
    p.add_argument("--data-kwargs", help="JSON object of keyword arguments for --data")
    p.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="NAME",
        help="also analyse the input of this module, in the same pass (repeatable); the "
        "classifier's input is always analysed",
    )
    p.add_argument(
        "--pool",
        choices=("avg", "max", "flatten"),
        help="how feature maps [B, C, ...] become [B, D] (default: avg)",
    )
    p.add_argument(
        "--hierarchy",
        help="is-a file ('parent child' per line) whose leaves are the classes: adds mistake "
        "severity, hierarchical distance@k, hP@k, ... to the report",
    )
    p.add_argument(
        "--classes", help="class names, one per line in label order (leaves of --hierarchy)"
    )
    p.add_argument(
        "--spill-budget",
        default="2GiB",
        help="temporary disk for the train split's NC4 in one pass, e.g. 2GiB, 500MB, 0 = "
        "always a second pass (default: 2GiB)",
    )
    p.add_argument("--num-classes", type=int, help="default: read from the classifier")
    p.add_argument("--run", help="run name (default: the checkpoints' folder name); one path only")
    p.add_argument(
        "--weights",
        choices=("model", "ema"),
        default="model",
        help="which weights of a checkpoint holding both (default: model)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="for Datasets (default: 256)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="recompute stored checkpoints")
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
        description="Stream a feature file (.pt/.pth weights_only, .npz or .safetensors: "
        "features, labels, optional weight/bias, or one mapping per split) through "
        "FeatureStats and store every metric in OUT/results.sqlite (report regenerated).",
    )
    p.add_argument("file", nargs="?", help=".pt/.pth, .npz or .safetensors feature file")
    p.add_argument("--digits", action="store_true", help="use the built-in sklearn digits pixels")
    p.add_argument("--run", help="run name in the report (default: the file name)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--device", default="cpu", help="device of the float64 statistics")
    common(p, "geomtools-results")
    p.set_defaults(func=_cmd_features)

    p = sub.add_parser(
        "merge",
        help="combine the results databases of several output folders",
        description="Copy every run of each SOURCE folder's results.sqlite into --out (created "
        "if missing) and regenerate its report. A checkpoint stored in both with other "
        "contents is an error unless --replace (the source's is kept). All or nothing per "
        "source.",
    )
    p.add_argument("sources", nargs="+", help="output folders to merge")
    p.add_argument("--out", required=True, help="output folder receiving the runs")
    p.add_argument("--replace", action="store_true", help="sources win on conflicts")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser(
        "forget",
        help="remove a run from an output folder",
        description="Delete every row of RUN from OUT/results.sqlite and regenerate the report.",
    )
    p.add_argument("run", help="run name")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_forget)

    p = sub.add_parser(
        "plot",
        help="render the figures of an output folder",
        description="Read OUT's results database (OUT, or its report.json) and write every "
        "figure as PDF and PNG.",
    )
    p.add_argument("report", help="output folder (or its report.json)")
    p.add_argument("--out", default="figures", help="figure folder (default: figures)")
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
    """Entry point of the ``geomtools`` console script.

    Known errors become one line on stderr and exit status 2; Ctrl-C (also while torch is
    still loading) becomes one line and 130.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("geomtools: interrupted", file=sys.stderr)
        return 130


def _keep_large_buffers() -> None:
    """Let glibc reuse freed batch-sized buffers instead of unmapping them (Linux only).

    A streaming pass allocates the same large activations every batch (32 MiB for a conv
    layer of a 256-image batch). glibc serves blocks above its mmap threshold (at most
    32 MiB) with fresh ``mmap`` s that are unmapped on free, so every batch faults its pages
    in again: 1.16 M minor page faults in one pass of ``benchmarks/bench_analyze.py``. Raising
    the threshold to 256 MiB and the trim threshold to 1 GiB keeps those buffers in the heap.
    Set in the command-line process only (``analyze``, ``features``, ``demo``), never by the
    library; a no-op where ``mallopt`` is not glibc's.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
        libc.mallopt(m_mmap_threshold, 256 * 1024**2)
        libc.mallopt(m_trim_threshold, 1024**3)
    except (OSError, AttributeError):
        return


def _main(argv: Sequence[str] | None) -> int:
    from analysis.pipeline import Interrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("analyze", "features", "demo", "reproduce"):
        _keep_large_buffers()
    if hasattr(args, "no_progress") and not sys.stderr.isatty() and not args.progress:
        args.no_progress = True  # no progress bars in log files, unless asked
    try:
        return int(args.func(args))
    except Interrupted as err:
        print(f"geomtools: {err}", file=sys.stderr)
        return 130
    except (ValueError, TypeError, KeyError, OSError, sqlite3.Error) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        if isinstance(err, OSError) and err.filename and str(err.filename) not in str(text):
            text = f"{err.filename}: {err.strerror or text}"
        msg = str(text).splitlines()[0] if str(text) else type(err).__name__
        print(f"geomtools: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
