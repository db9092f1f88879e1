"""Benchmark :class:`analysis.stats.FeatureStats` against plain float64 GEMM baselines.

Run from the repository root::

    python benchmarks/bench_feature_stats.py               # defaults below
    python benchmarks/bench_feature_stats.py --profile     # + update / collapse_metrics split

Timed (best of ``--repeats``, ``time.perf_counter``, default torch thread count), on float32
batches generated once and kept in memory:

(a) ``gemm``: one float64 XᵀX over all batches (each batch cast to float64, then
    ``acc.addmm_(xb.T, xb)``) -- the floor for anything that forms a D×D scatter.
(b) ``FeatureStats.update`` over all batches, then ``analysis.collapse.collapse_metrics``
    (update only if that module cannot be imported; the output says so).
(c) ``two-pass``: pass 1 class sums and counts, pass 2 the centred within-class scatter
    Σ_i (x_i − μ_{y_i})(x_i − μ_{y_i})ᵀ in float64 -- the textbook exact method.
(d) reference for many classes: (a) plus two K×K×D float64 Gram products (``M @ M.T`` of a
    [K, D] matrix, timed), those of the class means and of the classifier rows that the
    pairwise metrics of ``collapse_metrics`` (equiangularity, ETF error, CDNV) need.

``--weight`` also passes a random classifier [K, D] to ``collapse_metrics`` (its metrics of
the weights: one more Gram pass). The last lines are machine-readable: ``ratio_vs_gemm=...``
((b)/(a)), ``ratio_vs_two_pass=...`` ((b)/(c)) and ``ratio_vs_gemm_gram=...`` ((b)/(d)).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

try:
    from analysis.stats import FeatureStats
except ImportError:  # run as a script from anywhere: put the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from analysis.stats import FeatureStats

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="number of samples")
    p.add_argument("--dim", type=int, default=512, help="feature dimension D")
    p.add_argument("--classes", type=int, default=100, help="number of classes K")
    p.add_argument("--batch", type=int, default=4096, help="batch size")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument(
        "--weight",
        action="store_true",
        help="also pass a random classifier weight [K, D] to collapse_metrics",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print the time split between update and collapse_metrics, and the top "
        "torch operators of update",
    )
    args = p.parse_args(argv)
    for name in ("n", "dim", "classes", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be positive")
    return args


def make_batches(n: int, dim: int, classes: int, batch: int, seed: int) -> Batches:
    """Float32 features (class centres + noise) and int64 labels, split into batches."""
    gen = torch.Generator().manual_seed(seed)
    centres = 5.0 * torch.randn(classes, dim, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    labels[: min(n, classes)] = torch.arange(min(n, classes))  # every class present if n >= K
    out: Batches = []
    for start in range(0, n, batch):
        y = labels[start : start + batch]
        x = (centres[y] + torch.randn(y.numel(), dim, generator=gen)).to(torch.float32)
        out.append((x.contiguous(), y.contiguous()))
    return out


def load_collapse_metrics() -> tuple[Callable[..., Any] | None, str]:
    """``analysis.collapse.collapse_metrics`` imported lazily, or ``None`` and the reason."""
    try:
        from analysis.collapse import collapse_metrics
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return collapse_metrics, ""


# ---------------------------------------------------------------------------- the methods
def run_gemm(batches: Batches, dim: int) -> torch.Tensor:
    acc = torch.zeros(dim, dim, dtype=torch.float64)
    for x, _ in batches:
        xb = x.to(torch.float64)
        acc.addmm_(xb.T, xb)
    return acc


def run_feature_stats(
    batches: Batches,
    dim: int,
    classes: int,
    metrics: Callable[..., Any] | None,
    weight: torch.Tensor | None = None,
) -> tuple[FeatureStats, float, float]:
    """Update over all batches, then the metrics; returns the stats and both times."""
    t0 = time.perf_counter()
    stats = FeatureStats(classes, dim)
    for x, y in batches:
        stats.update(x, y)
    t1 = time.perf_counter()
    if metrics is not None:
        metrics(stats, weight)
    t2 = time.perf_counter()
    return stats, t1 - t0, t2 - t1


def run_two_pass(batches: Batches, dim: int, classes: int) -> torch.Tensor:
    sums = torch.zeros(classes, dim, dtype=torch.float64)
    counts = torch.zeros(classes, dtype=torch.float64)
    for x, y in batches:  # pass 1: class means
        sums.index_add_(0, y, x.to(torch.float64))
        counts += torch.bincount(y, minlength=classes).to(torch.float64)
    means = sums / counts.clamp(min=1.0)[:, None]
    scatter = torch.zeros(dim, dim, dtype=torch.float64)
    for x, y in batches:  # pass 2: centred scatter
        xc = x.to(torch.float64) - means[y]
        scatter.addmm_(xc.T, xc)
    return scatter


def run_gram(rows: torch.Tensor) -> torch.Tensor:
    return rows @ rows.T


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    metrics, why_not = load_collapse_metrics()
    print(
        f"config: n={args.n} dim={args.dim} classes={args.classes} batch={args.batch} "
        f"repeats={args.repeats} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"cpu={platform.processor() or platform.machine()}"
    )
    t0 = time.perf_counter()
    batches = make_batches(args.n, args.dim, args.classes, args.batch, args.seed)
    print(f"generated {len(batches)} float32 batches in {time.perf_counter() - t0:.2f} s")

    t_gemm, gram = best_of(args.repeats, lambda: run_gemm(batches, args.dim))
    gen = torch.Generator().manual_seed(args.seed + 1)
    rows = torch.randn(args.classes, args.dim, generator=gen, dtype=torch.float64)
    t_gram, _ = best_of(args.repeats, lambda: run_gram(rows))
    weight = rows.to(torch.float32) if args.weight else None
    split: list[tuple[float, float]] = []

    def feature_stats() -> FeatureStats:
        stats, t_update, t_metrics = run_feature_stats(
            batches, args.dim, args.classes, metrics, weight
        )
        split.append((t_update, t_metrics))
        return stats

    t_fs, stats = best_of(args.repeats, feature_stats)
    t_two, scatter = best_of(args.repeats, lambda: run_two_pass(batches, args.dim, args.classes))

    t_ref = t_gemm + 2 * t_gram
    label_b = "FeatureStats.update + collapse_metrics" + (" (+W)" if args.weight else "")
    if metrics is None:
        label_b = "FeatureStats.update only"
        print(f"note: analysis.collapse not importable ({why_not}); (b) times update only")
    print(f"(a) gemm baseline, float64 X^T X         : {t_gemm:8.3f} s")
    print(f"(b) {label_b:<38}: {t_fs:8.3f} s")
    print(f"(c) two-pass class scatter, float64      : {t_two:8.3f} s")
    print(f"(d) (a) + 2 K×K×D Gram products          : {t_ref:8.3f} s (one Gram {t_gram:.3f} s)")
    print(f"(b)/(a) = {t_fs / t_gemm:.3f}")
    print(f"(b)/(c) = {t_fs / t_two:.3f}")
    print(f"(b)/(d) = {t_fs / t_ref:.3f}")

    # Sanity: FeatureStats' within-class scatter equals the two-pass one.
    err = float((stats.within_scatter - scatter).abs().max() / scatter.abs().max())
    print(f"check: max|S_W(b) - S_W(c)| / max|S_W(c)| = {err:.2e} (gram norm {gram.norm():.3e})")

    if args.profile:
        t_update, t_metrics = min(split, key=lambda s: s[0] + s[1])
        total = t_update + t_metrics
        print("profile (best repeat of (b)):")
        print(f"  {'update':<22}: {t_update:8.3f} s ({100 * t_update / total:5.1f} %)")
        name = "collapse_metrics" if metrics is not None else "collapse_metrics (n/a)"
        print(f"  {name:<22}: {t_metrics:8.3f} s ({100 * t_metrics / total:5.1f} %)")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run_feature_stats(batches, args.dim, args.classes, None)
        print("  top operators of update (one pass):")
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        print("\n".join("    " + line for line in table.splitlines()))

    print(f"ratio_vs_gemm={t_fs / t_gemm:.4f}")
    print(f"ratio_vs_two_pass={t_fs / t_two:.4f}")
    print(f"ratio_vs_gemm_gram={t_fs / t_ref:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
