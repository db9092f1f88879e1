"""Benchmark ``geomtools analyze`` against one plain inference pass over the same data.

Run from the repository root::

    python benchmarks/bench_analyze.py                 # defaults below
    python benchmarks/bench_analyze.py --repeats 5 --keep

Set-up (written once into a temporary folder, which is the working directory of every timed
command): a small 2-D CNN (Conv2d 3→32, ReLU, Conv2d 32→64 stride 2, ReLU, global average
pooling, flatten, Linear 64→10), ``--train`` + ``--test`` float32 images 3×32×32 of 10 classes
(class-dependent means + unit noise, seeded; saved as ``benchdata.pt``), a module
``benchnet.py`` with ``build()`` and ``splits()`` (``{"train": DataLoader, "test": DataLoader}``
over ``TensorDataset`` s, batch size ``--batch``, no shuffling) and one checkpoint
``ck/epoch1.pt`` (``{"model": state_dict, "epoch": 1}``) after one short SGD epoch.

Timed with ``time.perf_counter``, best of ``--repeats`` (all of them interleaved in each repeat,
so a change of load on a shared machine hits them alike), torch's default thread count:

(a) ``python -m analysis.cli analyze ck --model benchnet:build --data benchnet:splits
    --out OUT --no-progress`` as a subprocess, a fresh ``OUT`` each time (nothing resumed);
    once with the default spill budget (one forward per sample) and once with
    ``--spill-budget 0`` (the train split forwarded a second time for NC4: the old path);
(b) ``python -m analysis.cli --help`` as a subprocess: interpreter + import start-up;
(a4) the same over a folder of four checkpoints: ``((a4) − (a)) / 3`` is the cost of each
    further checkpoint, once the process is warm;
(c) in this process: ``build()``, the checkpoint loaded, ``model.eval()``, then under
    ``torch.inference_mode()`` every batch of the train and then the test loader of
    ``splits()`` through the model (the forward pass only).

``ratio = ((a) − (b)) / (c)``: what ``analyze`` costs beyond start-up, in units of one plain
inference pass over the same data. The last line is machine-readable: ``ratio=...``.

Also printed, to read the ratio on a busy machine: the CPU seconds (user + system, all
threads) of each, and (c1), the same inference pass timed inside a fresh process right after
its set-up (``coldpass.py`` in the folder): a process's first pass is slower than the warm
passes (c) is the best of, and ``analyze`` only ever makes first passes.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

try:
    import analysis
except ImportError:  # run as a script from anywhere: put the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import analysis

# the subprocesses import the same ``analysis`` package as this script
PACKAGE_ROOT = str(Path(analysis.__file__).resolve().parents[1])
CLASSES = 10

BENCHNET = textwrap.dedent(
    '''\
    """Model and data factories of bench_analyze.py (written by the benchmark)."""

    from pathlib import Path

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    HERE = Path(__file__).resolve().parent
    BATCH = {batch}


    def build() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, {classes}),
        )


    def splits() -> dict:
        data = torch.load(HERE / "benchdata.pt", weights_only=True)
        return {{
            name: DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
            for name, (x, y) in data.items()
        }}
    '''
)


COLDPASS = textwrap.dedent(
    """\
    import sys, time

    import torch

    import benchnet

    model = benchnet.build()
    model.load_state_dict(torch.load(sys.argv[1], weights_only=True)["model"])
    model.eval()
    loaders = benchnet.splits()
    t0, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for split in ("train", "test"):
            for x, _y in loaders[split]:
                model(x)
    print(time.perf_counter() - t0, time.process_time() - cpu)
    """
)


def provenance() -> str:
    """Which ``analysis`` is measured: its folder, the git commit, uncommitted changes."""
    where = f"analysis from {PACKAGE_ROOT}"
    try:
        git = ["git", "-C", PACKAGE_ROOT]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "analysis"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return f"{where} (not a git checkout)"
    return f"{where} at {head}" + (" + uncommitted changes in analysis/" if dirty else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=6000, help="train images")
    p.add_argument("--test", type=int, default=2000, help="test images")
    p.add_argument("--batch", type=int, default=256, help="batch size of both loaders")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
    p.add_argument("--seed", type=int, default=0, help="data and weight seed")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    args = p.parse_args(argv)
    for name in ("train", "test", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be positive")
    return args


# ---------------------------------------------------------------------------- set-up
def make_split(n: int, centres: torch.Tensor, gen: torch.Generator) -> tuple[Any, Any]:
    """Float32 images ``centres[y] + noise`` and int64 labels, every class present if n ≥ K."""
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    y[: min(n, CLASSES)] = torch.arange(min(n, CLASSES))
    x = centres[y] + torch.randn(n, *centres.shape[1:], generator=gen)
    return x.to(torch.float32).contiguous(), y


def write_setup(root: Path, args: argparse.Namespace) -> Path:
    """Data file, ``benchnet.py`` and the checkpoint under ``root``; returns the checkpoint."""
    gen = torch.Generator().manual_seed(args.seed)
    centres = 0.5 * torch.randn(CLASSES, 3, 1, 1, generator=gen) + 0.2 * torch.randn(
        CLASSES, 3, 32, 32, generator=gen
    )
    data = {
        "train": make_split(args.train, centres, gen),
        "test": make_split(args.test, centres, gen),
    }
    torch.save(data, root / "benchdata.pt")
    (root / "benchnet.py").write_text(
        BENCHNET.format(batch=args.batch, classes=CLASSES), encoding="utf-8"
    )
    (root / "coldpass.py").write_text(COLDPASS, encoding="utf-8")
    benchnet = import_benchnet(root)
    torch.manual_seed(args.seed)
    model = benchnet.build()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    x, y = data["train"]
    order = torch.randperm(x.shape[0], generator=gen)
    for start in range(0, x.shape[0], args.batch):  # one short epoch: non-trivial decisions
        idx = order[start : start + args.batch]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    (root / "ck").mkdir()
    ck = root / "ck" / "epoch1.pt"
    torch.save({"model": model.state_dict(), "epoch": 1}, ck)
    (root / "ck4").mkdir()  # four checkpoints: the marginal cost of one more checkpoint
    for e in range(1, 5):
        torch.save({"model": model.state_dict(), "epoch": e}, root / "ck4" / f"epoch{e}.pt")
    return ck


def import_benchnet(root: Path) -> Any:
    import importlib

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("benchnet")


# ---------------------------------------------------------------------------- the timings
def child(root: Path, *argv: str) -> tuple[str, float]:
    """Run ``python ARGV`` in ``root``; its stdout and CPU seconds (user + system)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"python {' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.stdout, cpu


def analyze(root: Path, out: str, *extra: str, folder: str = "ck") -> float:
    """One ``analyze`` of ``folder`` into a fresh ``OUT``; its CPU seconds."""
    shutil.rmtree(root / out, ignore_errors=True)
    return child(root, "-m", "analysis.cli", "analyze", folder, "--model", "benchnet:build",
                 "--data", "benchnet:splits", "--out", out, "--no-progress", *extra)[1]  # fmt: skip


def inference(root: Path, ck: Path) -> tuple[Callable[[int], float], float]:
    """The in-process inference pass (train then test) and the time of its set-up."""
    benchnet = import_benchnet(root)
    t0 = time.perf_counter()
    model = benchnet.build()
    model.load_state_dict(torch.load(ck, weights_only=True)["model"])
    model.eval()
    loaders = benchnet.splits()
    t_setup = time.perf_counter() - t0

    def infer(_: int) -> float:
        cpu = time.process_time()
        with torch.inference_mode():
            for split in ("train", "test"):
                for x, _y in loaders[split]:
                    model(x)
        return time.process_time() - cpu

    return infer, t_setup


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"config: train={args.train} test={args.test} batch={args.batch} "
        f"repeats={args.repeats} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"cpu={platform.processor() or platform.machine()} python={platform.python_version()}"
    )
    print(provenance())
    root = Path(tempfile.mkdtemp(prefix="bench-analyze-"))
    try:
        t0 = time.perf_counter()
        ck = write_setup(root, args)
        t_set = time.perf_counter() - t0
        print(f"set-up (data, benchnet.py, 1 SGD epoch, checkpoint) in {t_set:.2f} s")

        infer, t_setup = inference(root, ck)
        cold: list[float] = []

        def cold_pass(_: int) -> float:
            wall_s, cpu_s = child(root, "coldpass.py", str(ck))[0].split()[-2:]
            cold.append(float(wall_s))
            return float(cpu_s)  # the pass only, like (c)

        methods: dict[str, Callable[[int], float]] = {
            "a": lambda i: analyze(root, f"out-one-pass-{i}"),
            "a0": lambda i: analyze(root, f"out-two-pass-{i}", "--spill-budget", "0"),
            "a4": lambda i: analyze(root, f"out-four-{i}", folder="ck4"),
            "b": lambda _: child(root, "-m", "analysis.cli", "--help")[1],
            "c": infer,
            "c1": cold_pass,
        }
        wall = dict.fromkeys(methods, float("inf"))
        cpu = dict.fromkeys(methods, float("inf"))
        for i in range(args.repeats):  # interleaved: a change of load hits all of them alike
            for key, fn in methods.items():
                start = time.perf_counter()
                cpu_s = fn(i)
                wall[key] = min(wall[key], time.perf_counter() - start)
                cpu[key] = min(cpu[key], cpu_s)
        wall["c1"] = min(cold)  # the pass only, timed inside the fresh process

        labels = {
            "a": "(a)  analyze, default spill budget (one pass)",
            "a0": "(a0) analyze, --spill-budget 0 (two passes)",
            "a4": "(a4) analyze, 4 checkpoints (one pass each)",
            "b": "(b)  python -m analysis.cli --help",
            "c": "(c)  inference pass, train + test, in process",
            "c1": "(c1) the same, first pass of a fresh process",
        }
        print(f"{'best of ' + str(args.repeats):<47}   wall s    CPU s")
        for key, label in labels.items():
            print(f"{label:<47} {wall[key]:8.3f} {cpu[key]:8.3f}")
        print(f"in-process build + load + splits() (not in (c))  {t_setup:8.3f}")
        ratio = (wall["a"] - wall["b"]) / wall["c"]
        ratio0 = (wall["a0"] - wall["b"]) / wall["c"]
        cpu_ratio = (cpu["a"] - cpu["b"]) / cpu["c"]
        print(f"((a)  - (b)) / (c)  = {ratio:.3f}   wall (goal <= 1.15)")
        print(f"((a0) - (b)) / (c)  = {ratio0:.3f}   wall, old two-pass path")
        print(f"((a)  - (b)) / (c)  = {cpu_ratio:.3f}   CPU seconds")
        print(f"((a)  - (b)) / (c1) = {(wall['a'] - wall['b']) / wall['c1']:.3f}   wall, cold pass")
        marginal = (wall["a4"] - wall["a"]) / 3 / wall["c"]
        print(f"((a4) - (a)) / 3 / (c) = {marginal:.3f}   wall, each further checkpoint")
        print(f"ratio_marginal={marginal:.4f}")
        if args.keep:
            print(f"kept: {root}")
        print(f"ratio_two_pass={ratio0:.4f}")
        print(f"ratio_cpu={cpu_ratio:.4f}")
        print(f"ratio={ratio:.4f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
