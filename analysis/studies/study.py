"""What every study shares: its context, its result, and how the result is written.

A study module (``analysis/studies/<name>.py``) defines ``NAME``, ``TITLE``, ``CLAIM`` (the
paper's claim in one sentence), ``PAPER`` (the reference) and ``run(ctx) -> StudyResult``.
:func:`run_study` gives it a :class:`StudyContext` whose folder is a private staging folder
``DIR/.NAME.partial-XXXXXXXX`` (one per call), and on success writes

``DIR/NAME/``::

    NAME.csv          tidy: seed, variant, epoch, split, metric, value (one row each)
    summary.md        the claim, mean ± std over seeds at the last epoch, a verdict per claim
    figures/*.pdf|png the study's figures
    checkpoints/      what it trained (``{"model", "epoch"}`` state dicts)
    analysis/         the results database and report of ``analyze_runs``, where used

The staging folder replaces ``DIR/NAME`` only when everything is written, so an error or
Ctrl-C leaves the previous ``DIR/NAME`` (or none) untouched; an existing ``DIR/NAME`` is only
replaced with ``force``; if another run created ``DIR/NAME`` meanwhile, this run's result is
kept beside it (``DIR/NAME-XXXXXXXX``) and the error says where. Only a run killed outright
(SIGKILL, power loss) can leave a ``DIR/.NAME.partial-*`` folder: never a result, deletable.
Torch and the BLAS under NumPy, SciPy and scikit-learn run single-threaded inside a study
(tiny models: fastest, and the numbers do not depend on the core count), and the CSV is
byte-identical between two runs with the same arguments.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from analysis.io import _umask

__all__ = [
    "CSV_COLUMNS",
    "Claim",
    "StudyContext",
    "StudyResult",
    "format_mean_std",
    "last_epoch_values",
    "row",
    "run_study",
    "summary_table",
]

#: columns of the tidy CSV, in order
CSV_COLUMNS = ("seed", "variant", "epoch", "split", "metric", "value")
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced at this scale"


@dataclass
class Claim:
    """One claim of the paper and what this run says about it.

    ``holds`` decides the verdict; ``evidence`` gives the numbers that decide it (one or two
    sentences, with the threshold used).
    """

    statement: str
    holds: bool
    evidence: str

    @property
    def verdict(self) -> str:
        """``"reproduced"`` or ``"not reproduced at this scale"``."""
        return REPRODUCED if self.holds else NOT_REPRODUCED


@dataclass
class StudyResult:
    """What a study returns to :func:`run_study`.

    Attributes
    ----------
    rows : list of dict
        Tidy rows with the keys :data:`CSV_COLUMNS` (``split`` may be ``""``; ``epoch`` an
        int, the last epoch for end-of-training numbers).
    claims : list of Claim
    table : list of (metric, split, label)
        The rows of the summary table: mean ± std over seeds at each variant's last epoch.
    setup : str
        Markdown: model, data, variants, epochs (written under "Set-up" in summary.md).
    notes : list of str
        Further lines for summary.md (sanity anchors, what diverged, ...).
    table_variants : list of str, optional
        The variants the summary table lists, in order (default: every variant of ``rows``,
        in order of first appearance); e.g. to leave out the runs of a learning-rate sweep.
    """

    rows: list[dict[str, Any]]
    claims: list[Claim]
    table: list[tuple[str, str, str]] = field(default_factory=list)
    setup: str = ""
    notes: list[str] = field(default_factory=list)
    table_variants: list[str] | None = None


def row(
    seed: int, variant: str, epoch: int, split: str, metric: str, value: float
) -> dict[str, Any]:
    """One tidy row (:data:`CSV_COLUMNS`) with the types the CSV writer expects."""
    return {
        "seed": int(seed),
        "variant": str(variant),
        "epoch": int(epoch),
        "split": str(split),
        "metric": str(metric),
        "value": float(value),
    }


class StudyContext:
    """The folder, seeds and mode a study runs with, and helpers to save what it makes."""

    def __init__(
        self, name: str, folder: Path, seeds: Sequence[int], *, quick: bool, progress: bool
    ) -> None:
        self.name = name
        self.folder = folder
        self.seeds = [int(s) for s in seeds]
        self.quick = quick
        self.progress = progress
        self.figures: list[Path] = []
        (folder / "figures").mkdir(parents=True, exist_ok=True)

    def checkpoint_dir(self, variant: str, seed: int) -> Path:
        """``checkpoints/<variant>-s<seed>/`` (created)."""
        from analysis.runs import validate_run_name

        name = validate_run_name(f"{variant}-s{seed}")
        path = self.folder / "checkpoints" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save_checkpoint(self, model: torch.nn.Module, variant: str, seed: int, epoch: int) -> Path:
        """Save ``{"model": state_dict, "epoch": epoch}`` as ``epochNNN.pt``; return the path."""
        path = self.checkpoint_dir(variant, seed) / f"epoch{epoch:03d}.pt"
        torch.save({"model": model.state_dict(), "epoch": int(epoch)}, path)
        return path

    @property
    def analysis_dir(self) -> Path:
        """Output folder for :func:`analysis.pipeline.analyze_runs` (``analysis/``)."""
        return self.folder / "analysis"

    def analyze(self, runs: Sequence[Any], **options: Any) -> Any:
        """Analyse ``runs`` (RunSpecs) into :attr:`analysis_dir`; the tidy report as a DataFrame.

        ``options`` go to :class:`analysis.pipeline.AnalyzeOptions` (``progress`` follows the
        study's).
        """
        from analysis.pipeline import AnalyzeOptions, analyze_runs
        from analysis.report import load

        options.setdefault("progress", self.progress)
        self.analysis_dir.mkdir(exist_ok=True)
        analyze_runs(runs, self.analysis_dir, AnalyzeOptions(**options))
        return load(self.analysis_dir)

    def save_figure(self, fig: Any, stem: str) -> None:
        """Write ``figures/<stem>.pdf`` and ``.png`` and close the figure."""
        import matplotlib.pyplot as plt

        from analysis.plots import save_figure

        self.figures += save_figure(fig, self.folder / "figures" / stem, ("pdf", "png"))
        plt.close(fig)

    def bar(self, iterable: Iterable[Any], desc: str, total: int | None = None) -> Any:
        """A progress bar over ``iterable`` (removed when done; none without progress)."""
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, disable=not self.progress, leave=False)


# ---------------------------------------------------------------------------- summaries
def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"m ± s"`` over seeds (sample std, ddof 1); ``"m"`` for one value; ``"—"`` for none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(vals) < len(values):
        bad = len(values) - len(vals)
        suffix = f" ({bad} non-finite)"
    else:
        suffix = ""
    if not vals:
        return "—" + suffix
    if len(vals) == 1:
        return f"{vals[0]:.{digits}g}{suffix}"
    return f"{np.mean(vals):.{digits}g} ± {np.std(vals, ddof=1):.{digits}g}{suffix}"


def last_epoch_values(
    rows: Sequence[dict[str, Any]], metric: str, split: str
) -> dict[str, dict[int, float]]:
    """``{variant: {seed: value}}`` of ``metric`` on ``split`` at each run's last epoch."""
    last: dict[tuple[str, int], tuple[int, float]] = {}
    for r in rows:
        if r["metric"] != metric or r["split"] != split:
            continue
        key = (r["variant"], int(r["seed"]))
        if key not in last or int(r["epoch"]) >= last[key][0]:
            last[key] = (int(r["epoch"]), float(r["value"]))
    out: dict[str, dict[int, float]] = {}
    for (variant, seed), (_, value) in last.items():
        out.setdefault(variant, {})[seed] = value
    return out


def summary_table(
    rows: Sequence[dict[str, Any]], table: Sequence[tuple[str, str, str]], variants: Sequence[str]
) -> str:
    """Markdown table: one line per variant, one column per ``(metric, split, label)``."""
    head = "| variant | " + " | ".join(label for _, _, label in table) + " |"
    rule = "|---|" + "---|" * len(table)
    lines = [head, rule]
    cols = [last_epoch_values(rows, m, s) for m, s, _ in table]
    for v in variants:
        cells = [format_mean_std(list(c.get(v, {}).values())) for c in cols]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _variants(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in rows))


def _check_rows(rows: Sequence[dict[str, Any]], name: str) -> None:
    for i, r in enumerate(rows):
        if set(r) != set(CSV_COLUMNS):
            raise ValueError(f"study {name}: row {i} has keys {sorted(r)}, wanted {CSV_COLUMNS}")
        if not isinstance(r["value"], float):  # nan/inf allowed: a diverged run is data
            raise TypeError(f"study {name}: row {i} value {r['value']!r} is not a float")
    keys = [(r["seed"], r["variant"], r["epoch"], r["split"], r["metric"]) for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError(f"study {name}: a (seed, variant, epoch, split, metric) row twice")


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return repr(v)  # shortest round-trip: identical bytes for identical numbers
        return str(v)

    lines = [",".join(CSV_COLUMNS)]
    for r in rows:
        lines.append(",".join(fmt(r[c]) for c in CSV_COLUMNS))
    return "\n".join(lines) + "\n"


def _summary_md(mod: ModuleType, result: StudyResult, ctx: StudyContext, seconds: float) -> str:
    mode = "quick" if ctx.quick else "full"
    seeds = ", ".join(str(s) for s in ctx.seeds)
    command = f"geomtools reproduce {ctx.name} --out DIR --seeds {len(ctx.seeds)}"
    if ctx.quick:
        command += " --quick"
    parts = [
        f"# {mod.TITLE}",
        "",
        f"**Claim** ({mod.PAPER}): {mod.CLAIM}",
        "",
        f"Mode: {mode}; seeds: {seeds}; {seconds:.0f} s on {torch.get_num_threads()} thread(s) "
        f"per process. Command: `{command}`.",
        "",
        "## Verdicts",
        "",
    ]
    for c in result.claims:
        parts.append(f"- **{c.verdict}** — {c.statement} {c.evidence}")
    if result.table:
        parts += [
            "",
            "## Last epoch, mean ± std over seeds",
            "",
            summary_table(
                result.rows,
                result.table,
                _variants(result.rows) if result.table_variants is None else result.table_variants,
            ),
        ]
    if result.setup:
        parts += ["", "## Set-up", "", result.setup.strip()]
    if result.notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    figs = sorted({p.stem for p in ctx.figures})
    if figs:
        parts += ["", "## Figures", ""] + [f"- `figures/{s}.pdf` (and `.png`)" for s in figs]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- driver
@dataclass
class StudyOutput:
    """Where a finished study wrote, its verdicts and its wall time."""

    folder: Path
    claims: list[Claim]
    seconds: float


def run_study(
    module: ModuleType,
    out: str | os.PathLike[str],
    *,
    seeds: int | None = None,
    quick: bool = False,
    progress: bool = True,
    force: bool = False,
    settings: Any = None,
) -> StudyOutput:
    """Run one study module into ``out/NAME`` (see the module docstring).

    Parameters
    ----------
    module : module
        A study module (``NAME``, ``TITLE``, ``CLAIM``, ``PAPER``, ``run``).
    out : path-like
        Parent folder; the study writes ``out/NAME``.
    seeds : int, optional
        Number of seeds (``0..seeds-1``); default 3, or 1 with ``quick``.
    quick : bool
        Fewer epochs and variants' settings the study defines as quick.
    progress : bool
        Progress bars.
    force : bool
        Replace an existing ``out/NAME`` (only once the new one is complete).
    settings : optional
        Passed as ``module.run(ctx, settings=settings)``: the study's own settings instead of
        its quick/full preset (e.g. a tiny configuration in tests); None uses the preset.

    Raises
    ------
    FileExistsError
        ``out/NAME`` exists and ``force`` is not set (before anything runs).
    ValueError
        ``seeds`` < 1, or ``out`` is a file.
    """
    name = module.NAME
    n_seeds = (1 if quick else 3) if seeds is None else int(seeds)
    if n_seeds < 1:
        raise ValueError(f"--seeds must be ≥ 1, got {seeds}")
    parent = Path(out)
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"--out {parent} is a file, not a folder")
    final = parent / name
    if final.exists() and not force:
        raise FileExistsError(
            f"{final} exists; pass --force to replace it (it is kept until the new run is complete)"
        )
    parent.mkdir(parents=True, exist_ok=True)
    # a private staging folder per call: two runs into one DIR never share (or delete) one
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 → what mkdir would give
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    old: Path | None = None
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        torch.set_num_threads(1)
        ctx = StudyContext(name, staging, range(n_seeds), quick=quick, progress=progress)
        # NumPy/SciPy/scikit-learn BLAS too (probes, eigvalsh): one thread, like torch
        with threadpool_limits(1):
            result = module.run(ctx) if settings is None else module.run(ctx, settings=settings)
        _check_rows(result.rows, name)
        rows = sorted(
            result.rows,
            key=lambda r: (r["variant"], int(r["seed"]), int(r["epoch"]), r["split"], r["metric"]),
        )
        result.rows = rows
        (staging / f"{name}.csv").write_text(_csv_text(rows), encoding="utf-8")
        seconds = time.perf_counter() - t0
        (staging / "summary.md").write_text(
            _summary_md(module, result, ctx, seconds), encoding="utf-8"
        )
        if final.exists() and not force:  # made by another run since the check above
            keep = parent / f"{name}-{staging.name.rsplit('-', 1)[-1]}"
            staging.rename(keep)
            raise FileExistsError(
                f"{final} was created by another run while this one worked; this run's "
                f"result is in {keep}"
            )
        if final.exists():
            old = staging.with_name(staging.name.replace(".partial-", ".old-"))
            final.rename(old)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and old.exists() and not final.exists():
            old.rename(final)  # the previous result back in place
        raise
    else:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        torch.set_num_threads(threads)
    return StudyOutput(final, result.claims, seconds)
