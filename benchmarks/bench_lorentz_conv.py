"""LorentzConv2d (one Euclidean conv of the space channels) against HCNN's unfold convolution.

Run from the repository root::

    python benchmarks/bench_lorentz_conv.py                  # 3x3, batch 32, 64 -> 64, 32x32
    python benchmarks/bench_lorentz_conv.py --repeats 20 --device cuda

Both compute the same function (``tests/geomtools/test_lorentz_layers.py`` checks it):

* **efficient**: ``geomtools.nn.lorentz.LorentzConv2d``, i.e. ``conv2d`` of the space
  channels (zero padding = padding at the origin), then the time coordinate of each output
  pixel;
* **unfold**: ``geomtools.nn.lorentz._unfold_lorentz_conv2d`` with the same weights
  (``LorentzConv2d.as_lorentz_linear``): pad with origin points, unfold every patch, direct
  concatenation of its points, ``LorentzLinear`` — the form of Bdeir et al. (ICLR 2024);
* **im2col** (for reference): ``F.unfold`` of the space channels times the conv weight as a
  matrix, then the time — the efficient formula evaluated by hand, without the
  pixel-major concatenation copy (roughly what a CPU ``conv2d`` does internally).

Input: random points (space ~ N(0, 0.5²/C)) on the hyperboloid, float32. Timed as the mean
over ``--repeats`` calls after ``--warmup`` calls, in the same process: the forward pass
under ``torch.no_grad()``, and forward + backward (gradients of the input and the weights).
Printed as times and ratios unfold / efficient (the issue's target is >= 3x).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    from geomtools.nn.lorentz import LorentzConv2d, _unfold_lorentz_conv2d
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from geomtools.nn.lorentz import LorentzConv2d, _unfold_lorentz_conv2d


def mean_time(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Mean wall time of ``fn`` over ``repeats`` calls, after ``warmup`` untimed calls."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=64, help="space channels in")
    p.add_argument("--out-channels", type=int, default=64, help="space channels out")
    p.add_argument("--size", type=int, default=32, help="height = width")
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--padding", type=int, default=1)
    p.add_argument("--k", type=float, default=1.0, help="geoopt's Lorentz parameter")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    conv = LorentzConv2d(
        args.in_channels, args.out_channels, args.kernel, padding=args.padding, k=args.k
    ).to(device)
    lin = conv.as_lorentz_linear()
    c = args.in_channels
    space = 0.5 / c**0.5 * torch.randn(args.batch, c, args.size, args.size, device=device)
    x = torch.cat([torch.sqrt(args.k + (space * space).sum(1, keepdim=True)), space], dim=1)

    def efficient() -> torch.Tensor:
        return conv(x)

    def unfold() -> torch.Tensor:
        return _unfold_lorentz_conv2d(x, lin, args.kernel, 1, args.padding)

    def im2col(z: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(z[:, 1:], args.kernel, padding=args.padding)  # [B, C P, L]
        ys = conv.weight.reshape(args.out_channels, -1) @ cols
        if conv.bias is not None:
            ys = ys + conv.bias[:, None]
        time = torch.sqrt(args.k + (ys * ys).sum(1, keepdim=True))
        return torch.cat([time, ys], 1).reshape(args.batch, -1, *efficient().shape[2:])

    with torch.no_grad():
        err = float((efficient() - unfold()).abs().max())
        err_col = float((efficient() - im2col(x)).abs().max())
        scale = float(efficient().abs().max())

    def fwd(fn: Callable[[], torch.Tensor]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return fn()

        return run

    x_grad = x.clone().requires_grad_(True)
    grad_out = torch.randn_like(efficient())

    def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        def run() -> object:
            x_grad.grad = None
            conv.zero_grad()
            lin.zero_grad()
            fn(x_grad).backward(grad_out)
            return None

        return run

    t_fwd_eff = mean_time(fwd(efficient), args.repeats, args.warmup, device)
    t_fwd_unf = mean_time(fwd(unfold), args.repeats, args.warmup, device)
    t_fwd_col = mean_time(fwd(lambda: im2col(x)), args.repeats, args.warmup, device)
    t_bwd_col = mean_time(fwd_bwd(im2col), args.repeats, args.warmup, device)
    t_bwd_eff = mean_time(fwd_bwd(conv), args.repeats, args.warmup, device)
    t_bwd_unf = mean_time(
        fwd_bwd(lambda z: _unfold_lorentz_conv2d(z, lin, args.kernel, 1, args.padding)),
        args.repeats,
        args.warmup,
        device,
    )

    print(
        f"batch={args.batch} {args.in_channels}->{args.out_channels} space channels "
        f"{args.size}x{args.size} kernel={args.kernel} padding={args.padding} k={args.k} "
        f"float32 device={device} threads={torch.get_num_threads()} repeats={args.repeats}"
    )
    print(
        f"max |efficient - unfold| = {err:.2e}, max |efficient - im2col| = {err_col:.2e} "
        f"(max |y| = {scale:.2f})"
    )
    print(f"{'':<20} {'efficient':>12} {'unfold':>12} {'ratio':>7} {'im2col':>12} {'ratio':>7}")
    for name, eff, unf, col in (
        ("forward", t_fwd_eff, t_fwd_unf, t_fwd_col),
        ("forward + backward", t_bwd_eff, t_bwd_unf, t_bwd_col),
    ):
        print(
            f"{name:<20} {1e3 * eff:>9.2f} ms {1e3 * unf:>9.2f} ms {unf / eff:>7.2f} "
            f"{1e3 * col:>9.2f} ms {col / eff:>7.2f}"
        )
    print(f"ratio_forward={t_fwd_unf / t_fwd_eff:.3f}")
    print(f"ratio_forward_backward={t_bwd_unf / t_bwd_eff:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
