"""Cost of a Riemannian step on a GCR head against a Euclidean step on a Linear head.

Run from the repository root::

    python benchmarks/bench_gcr_step.py                 # C = 1000, n = 512, k = 8, batch 256

Both heads have the same number of parameters (C·n·k = 512 · 8000): a ``GrassmannHead`` with
``geomtools.optim.RiemannianAdamW`` (bases re-orthonormalised every ``--stabilize`` steps)
and a plain ``nn.Linear(512, 8000)`` with ``torch.optim.AdamW``. Timed as the mean over
``--repeats`` calls in the same process (a multiple of the stabilize period, so its cost is
counted): ``optimizer.step()`` alone, and forward + backward + step; printed as ratios
GCR / Linear.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

try:
    from geomtools.nn import GrassmannHead, grassmann_param_groups
    from geomtools.optim import RiemannianAdamW
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from geomtools.nn import GrassmannHead, grassmann_param_groups
    from geomtools.optim import RiemannianAdamW


def mean_time(fn: Callable[[], None], repeats: int) -> float:
    """Mean over ``repeats`` calls (a multiple of the stabilize period counts its cost fairly)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--stabilize", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.dim)
    y = torch.randint(0, args.classes, (args.batch,))

    gcr = GrassmannHead(args.dim, args.classes, args.k)
    gcr_opt = RiemannianAdamW(
        grassmann_param_groups(gcr, lr=1e-3, stabilize=args.stabilize), lr=1e-3
    )
    lin = nn.Linear(args.dim, args.classes * args.k, bias=False)
    lin_opt = torch.optim.AdamW(lin.parameters(), lr=1e-3, weight_decay=0.0)
    lin_y = y * args.k  # any labels in range: the cost does not depend on them

    def grads(model: nn.Module, target: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad()
            nn.functional.cross_entropy(model(x), target).backward()

        return run

    grads(gcr, y)()
    grads(lin, lin_y)()
    step_gcr = mean_time(gcr_opt.step, args.repeats)
    step_lin = mean_time(lin_opt.step, args.repeats)

    def full(model: nn.Module, opt: torch.optim.Optimizer, target: torch.Tensor) -> None:
        grads(model, target)()
        opt.step()

    full_gcr = mean_time(lambda: full(gcr, gcr_opt, y), args.repeats)
    full_lin = mean_time(lambda: full(lin, lin_opt, lin_y), args.repeats)
    print(
        f"C={args.classes} n={args.dim} k={args.k} batch={args.batch} "
        f"threads={torch.get_num_threads()} stabilize every {args.stabilize} steps"
    )
    print(f"{'':<28} {'GCR + RiemannianAdamW':>22} {'Linear + AdamW':>15} {'ratio':>7}")
    print(
        f"{'optimizer.step()':<28} {1e3 * step_gcr:>19.2f} ms {1e3 * step_lin:>12.2f} ms "
        f"{step_gcr / step_lin:>7.2f}"
    )
    print(
        f"{'forward + backward + step':<28} {1e3 * full_gcr:>19.2f} ms {1e3 * full_lin:>12.2f} ms "
        f"{full_gcr / full_lin:>7.2f}"
    )
    print(f"ratio_step={step_gcr / step_lin:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
