"""Matrix square roots: forward+backward time as ratios to eigh, and error vs the exact root.

Run from the repository root::

    python benchmarks/bench_sqrtm.py                      # d in {64, 256}, batch 32
    python benchmarks/bench_sqrtm.py --error-table        # NS error vs iterations table

Inputs are batches of sample covariances of Gaussian features (n = 2d samples, so the
spectrum follows Marchenko–Pastur with condition number ~30), float64. Each method's
forward + backward (gradient of a random linear functional of the root) is timed, best of
``--repeats``, as a ratio to ``sqrtm(method="eigh")`` timed in the same process. The error is
‖Y − A^{1/2}‖_F / ‖A^{1/2}‖_F against the eigh root.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

try:
    from geomtools.linalg import sqrtm
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from geomtools.linalg import sqrtm


def covariances(batch: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 2 * d, d, generator=g, dtype=torch.float64)
    x = x - x.mean(1, keepdim=True)
    return x.mT @ x / (2 * d)


def fwd_bwd(a: torch.Tensor, g: torch.Tensor, **kw: object) -> Callable[[], None]:
    def run() -> None:
        x = a.clone().requires_grad_()
        (sqrtm(x, **kw) * g).sum().backward()  # type: ignore[arg-type]

    return run


def best(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


METHODS: list[tuple[str, dict[str, object]]] = [
    ("eigh (exact)", {"method": "eigh"}),
    ("eigh (pade)", {"method": "eigh", "backward": "pade"}),
    ("NS(5) autograd", {"method": "newton_schulz", "iters": 5}),
    ("NS(5) manual", {"method": "newton_schulz", "iters": 5, "ns_backward": "manual"}),
    ("NS(10) autograd", {"method": "newton_schulz", "iters": 10}),
    ("NS(10) manual", {"method": "newton_schulz", "iters": 10, "ns_backward": "manual"}),
]


def timing_table(dims: list[int], batch: int, repeats: int) -> None:
    print(f"forward+backward, batch {batch}, float64, threads={torch.get_num_threads()}")
    print(f"{'d':>5} {'method':<18} {'time [ms]':>10} {'ratio to eigh':>14} {'rel. error':>11}")
    for d in dims:
        a = covariances(batch, d, seed=d)
        g = torch.randn(batch, d, d, generator=torch.Generator().manual_seed(1), dtype=a.dtype)
        exact = sqrtm(a)
        base = best(fwd_bwd(a, g, method="eigh"), repeats)
        for name, kw in METHODS:
            t = base if name == "eigh (exact)" else best(fwd_bwd(a, g, **kw), repeats)
            with torch.no_grad():
                err = float((sqrtm(a, **kw) - exact).norm() / exact.norm())  # type: ignore[arg-type]
            print(f"{d:>5} {name:<18} {1e3 * t:>10.2f} {t / base:>14.2f} {err:>11.2e}")


def error_table() -> None:
    """NS relative error vs iterations for spectra of given condition numbers."""
    d = 64
    conds = [10.0, 1e2, 1e3, 1e4, 1e6]
    iters = [1, 3, 5, 10, 15, 20, 30]
    print("NS relative error ‖Y_T − A^{1/2}‖_F/‖A^{1/2}‖_F, d = 64, log-uniform spectrum")
    print(f"{'cond':>8} " + " ".join(f"T={t:<8}" for t in iters))
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    for cond in conds:
        lam = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), d, dtype=torch.float64)
        a = (q * lam) @ q.T
        a = (a + a.T) / 2
        exact = sqrtm(a)
        errs = [
            float((sqrtm(a, method="newton_schulz", iters=t) - exact).norm() / exact.norm())
            for t in iters
        ]
        print(f"{cond:>8.0e} " + " ".join(f"{e:<10.2e}" for e in errs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[64, 256])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--error-table", action="store_true", help="also print NS error vs iters")
    args = p.parse_args(argv)
    timing_table(args.dims, args.batch, args.repeats)
    if args.error_table:
        print()
        error_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
