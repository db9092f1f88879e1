"""Command-line interface: ``geomtools``.

``geomtools analyze FILE`` streams a feature file (see :mod:`analysis.io` for the format)
through :class:`~analysis.stats.FeatureStats` and writes every neural-collapse metric, per
split, as a tidy table (``metrics.csv``: source, split, metric, value) and as JSON
(``metrics.json``), both written atomically. ``geomtools analyze --digits`` runs the same on
scikit-learn's bundled handwritten digits (pixel features and a fitted multinomial logistic
regression as classifier), so it works on a fresh machine with no download.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from analysis.collapse import collapse_metrics, ncc_mismatch
from analysis.io import FeatureFile, load_feature_file, write_csv, write_json
from analysis.spectrum import spectrum_metrics
from analysis.stats import FeatureStats

__all__ = ["analyze", "digits_feature_file", "main"]


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


def analyze(
    data: FeatureFile,
    *,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Compute every collapse and spectrum metric for every split of ``data``.

    Keys are those of :func:`~analysis.collapse.collapse_metrics` and
    :func:`~analysis.spectrum.spectrum_metrics`.

    NC4 (``ncc_mismatch``) uses the class means of the ``train`` split when there is one
    (Papyan et al. 2020), else each split's own means.

    Returns
    -------
    list of dict
        Tidy rows ``{"source", "split", "metric", "value"}``.
    """
    dev = torch.device(device)
    stats = {
        name: _accumulate(
            x, y, data.num_classes, batch_size=batch_size, device=dev, desc=name, progress=progress
        )
        for name, (x, y) in data.splits.items()
    }
    rows: list[dict[str, Any]] = []
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
        for metric, value in metrics.items():
            rows.append({"source": data.source, "split": name, "metric": metric, "value": value})
    return rows


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


def _cmd_analyze(args: argparse.Namespace) -> int:
    if args.digits == (args.file is not None):
        raise SystemExit("geomtools analyze: give either a feature FILE or --digits")
    data = digits_feature_file() if args.digits else load_feature_file(args.file)
    rows = analyze(
        data, batch_size=args.batch_size, device=args.device, progress=not args.no_progress
    )
    bad = [r for r in rows if not math.isfinite(r["value"])]
    if bad:
        raise ValueError(f"non-finite metric values: {bad}")
    out = Path(args.out)
    write_csv(out / "metrics.csv", rows, ["source", "split", "metric", "value"])
    summary: dict[str, Any] = {"source": data.source, "num_classes": data.num_classes}
    for r in rows:
        summary.setdefault("metrics", {}).setdefault(r["split"], {})[r["metric"]] = r["value"]
    write_json(out / "metrics.json", summary)
    _print_table(rows)
    print(f"\nwrote {out / 'metrics.csv'} and {out / 'metrics.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``geomtools`` argument parser."""
    from geomtools import __version__

    parser = argparse.ArgumentParser(
        prog="geomtools", description="Measure neural collapse and geometry of representations."
    )
    parser.add_argument("--version", action="version", version=f"geomtools {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "analyze",
        help="neural-collapse metrics of a feature file",
        description="Stream a feature file through FeatureStats and write every metric per "
        "split to OUT/metrics.csv and OUT/metrics.json.",
    )
    p.add_argument("file", nargs="?", help=".pt/.pth (weights_only) or .npz feature file")
    p.add_argument("--digits", action="store_true", help="use the built-in sklearn digits data")
    p.add_argument("--out", default="geomtools-results", help="output folder")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--device", default="cpu", help="device of the float64 statistics")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_analyze)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geomtools`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"geomtools: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
