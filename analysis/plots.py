r"""Figures from plain data: neural-collapse trajectories, spectra, cosine heatmaps, sweeps.

Every function here goes from plain data (the tidy rows of :mod:`analysis.report`, numpy
arrays, mappings of floats) to a :class:`matplotlib.figure.Figure`; nothing is computed from
checkpoints. Single-panel functions take ``ax=None`` and return ``(fig, ax)``; multi-panel ones
take ``axes=None`` and return ``(fig, axes)``. Passing axes draws into the caller's figure;
otherwise a new figure is made with :class:`matplotlib.figure.Figure` directly, so the module
never touches pyplot or its global state and works under any backend (saving goes through
Agg / the pdf and svg backends).

* :func:`nc_trajectories` — neural-collapse metrics versus epoch, log-y, one panel per metric
  (Papyan, Han & Donoho 2020 [1]_, Figs. 2–6).
* :func:`accuracy_curves` — accuracy versus epoch, train solid and test dashed.
* :func:`spectra` — descending eigenvalue spectra of :math:`\Sigma_W, \Sigma_B, \Sigma_T`.
* :func:`cosine_heatmap` — class-mean cosine matrix and its deviation from a target Gram
  (simplex ETF [1]_ or HAFrame [3]_).
* :func:`variability_sweep` — a metric versus a swept parameter (e.g. intra-class variability
  versus subspace dimension, Kornblith et al. 2021 [2]_).
* :func:`recall_bars` — grouped bars of Recall@K per run.
* :func:`style` — the publication style, as a context manager that restores ``rcParams``.
* :func:`save_figure` — atomic, byte-reproducible PDF / PNG / SVG output.
* :func:`render_all` — every figure above for one tidy table, under stable file names.
* :func:`render_report` — :func:`render_all` on the rows of a written ``report.json``.

Tidy rows
---------
Rows are mappings with keys ``run`` (str), ``checkpoint`` (str), ``epoch`` (int or None),
``step`` (int or None), ``split`` (``"train"``/``"test"``), ``metric`` (str) and ``value``
(float). Within one figure a run keeps one colour in every panel; runs are coloured in the
order they first appear, with the Okabe–Ito palette [4]_ (8 colours, then the line style
changes).

References
----------
.. [1] V. Papyan, X. Y. Han, D. L. Donoho. Prevalence of neural collapse during the terminal
   phase of deep learning training. PNAS 117(40), 2020.
.. [2] S. Kornblith, T. Chen, H. Lee, M. Norouzi. Why do better loss functions lead to less
   transferable features? NeurIPS 2021.
.. [3] T. Liang, J. Davis. Inducing neural collapse to a fixed hierarchy-aware frame for
   reducing mistake severity. ICCV 2023.
.. [4] M. Okabe, K. Ito. Color universal design (CUD): how to make figures and presentations
   that are friendly to colorblind people. 2002/2008.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import matplotlib as mpl
import numpy as np
import numpy.typing as npt
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "DEFAULT_METRICS",
    "OKABE_ITO",
    "accuracy_curves",
    "cosine_heatmap",
    "depth_profile",
    "hierarchical_distance_curves",
    "nc_trajectories",
    "recall_bars",
    "render_all",
    "render_report",
    "save_figure",
    "severity_tradeoff",
    "spectra",
    "style",
    "variability_sweep",
]

FloatArray = npt.NDArray[np.float64]

#: Okabe–Ito colourblind-safe palette (black moved last: it reads as "axis", not "data").
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
_LINESTYLES: tuple[str, ...] = ("-", "--", ":", "-.")

#: Metrics drawn by :func:`nc_trajectories` by default.
DEFAULT_METRICS: tuple[str, ...] = (
    "nc1",
    "equinorm_means",
    "equiangularity_means",
    "self_duality",
    "ncc_mismatch",
)

_RENDER_METRICS: tuple[str, ...] = (*DEFAULT_METRICS, "intra_class_variability")

_METRIC_LABELS: dict[str, str] = {
    "nc1": r"NC1: $\mathrm{tr}(\Sigma_W \Sigma_B^{+})/K$",
    "equinorm_means": "equinorm (CV of class-mean norms)",
    "equiangularity_means": "equiangularity\nmean |cos + 1/(K−1)|",
    "self_duality": "self-duality",
    "ncc_mismatch": "NCC mismatch",
    "intra_class_variability": "intra-class variability",
    "accuracy": "accuracy",
}

_STYLE: dict[Any, Any] = {  # Any keys: matplotlib types rc keys as a Literal
    "axes.prop_cycle": cycler(color=list(OKABE_ITO)),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "grid.color": "#d9d9d9",
    "grid.linewidth": 0.5,
    "grid.alpha": 1.0,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9,
    "mathtext.fontset": "dejavusans",
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "image.cmap": "viridis",
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "path",
    "svg.hashsalt": "geomtools",
}

_SAVE_FORMATS = ("pdf", "png", "svg")
_PANEL_SIZE = (3.2, 2.6)


# ---------------------------------------------------------------------------- style and saving
@contextlib.contextmanager
def style() -> Iterator[None]:
    """Context manager applying the publication style; ``rcParams`` are restored on exit.

    Clean axes (no top/right spines, light grid), 9 pt DejaVu Sans (mathtext in the same
    font), the Okabe–Ito colourblind-safe colour cycle and TrueType (Type 42) fonts in PDF
    and PostScript output, so text stays editable and no Type 3 fonts are embedded. Built on
    :func:`matplotlib.rc_context`: global ``matplotlib.rcParams`` are never modified beyond
    the ``with`` block. Every plotting function of this module applies it internally.

    Examples
    --------
    >>> with style():
    ...     fig, ax = spectra({"Σ_W": [3.0, 1.0]})
    """
    with mpl.rc_context(_STYLE):
        yield


def save_figure(
    fig: Figure,
    path_stem: str | os.PathLike[str],
    formats: Sequence[str] = ("pdf", "png"),
    dpi: float = 150,
) -> list[Path]:
    """Write ``fig`` as ``<path_stem>.<fmt>`` for each format, atomically and reproducibly.

    Output is byte-reproducible: rendering the same data twice gives identical files. PDFs
    embed TrueType fonts (``pdf.fonttype`` 42) and carry no ``CreationDate``; PNGs carry a fixed
    ``Software`` text chunk; SVGs carry no date and a fixed id salt. Each file is written to a
    temporary file in the target directory and moved into place with :func:`os.replace`, so
    a failure never leaves a half-written file at the target path.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path_stem : str or os.PathLike
        Target path without extension; ``.<fmt>`` is appended (existing dots are kept, so
        ``"fig.v2"`` gives ``fig.v2.pdf``). The parent directory must exist.
    formats : sequence of str
        Any of ``"pdf"``, ``"png"``, ``"svg"``; duplicates are written once.
    dpi : float
        Resolution of raster output (and of images embedded in vector output).

    Returns
    -------
    list of pathlib.Path
        The files written, in the order of ``formats``.

    Raises
    ------
    ValueError
        For an empty or unsupported format list, or a non-positive ``dpi``.
    FileNotFoundError
        If the parent directory of ``path_stem`` does not exist.
    """
    if isinstance(formats, str):
        formats = (formats,)
    fmts = list(dict.fromkeys(f.lower().lstrip(".") for f in formats))
    if not fmts:
        raise ValueError("save_figure: formats is empty")
    bad = [f for f in fmts if f not in _SAVE_FORMATS]
    if bad:
        raise ValueError(f"save_figure: unsupported formats {bad}; supported: {_SAVE_FORMATS}")
    if not (math.isfinite(dpi) and dpi > 0):
        raise ValueError(f"save_figure: dpi must be positive, got {dpi}")
    stem = Path(path_stem)
    if not stem.parent.is_dir():
        raise FileNotFoundError(f"save_figure: directory {stem.parent} does not exist")
    written = []
    for fmt in fmts:
        target = stem.parent / f"{stem.name}.{fmt}"
        _atomic_savefig(fig, target, fmt, dpi)
        written.append(target)
    return written


def _metadata(fmt: str) -> dict[str, Any]:
    producer = f"geomtools analysis.plots (Matplotlib {mpl.__version__})"
    if fmt == "pdf":
        return {"CreationDate": None, "ModDate": None, "Creator": producer}
    if fmt == "png":
        return {"Software": producer}
    return {"Date": None, "Creator": producer}  # svg


def _atomic_savefig(fig: Figure, target: Path, fmt: str, dpi: float) -> None:
    from analysis.io import atomic_path

    with atomic_path(target) as tmp, open(tmp, "wb") as fh, style():
        fig.savefig(fh, format=fmt, dpi=dpi, metadata=_metadata(fmt))
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------------------- helpers
def _new_figure(
    n_panels: int, *, ncols: int | None = None, extra_width: float = 0.0
) -> tuple[Figure, list[Axes]]:
    """A constrained-layout figure of ``n_panels`` axes in a row-major grid (call in style()).

    ``extra_width`` (inches) makes room for a legend outside the axes.
    """
    ncols = min(n_panels, 3) if ncols is None else ncols
    nrows = math.ceil(n_panels / ncols)
    size = (_PANEL_SIZE[0] * ncols + extra_width, _PANEL_SIZE[1] * nrows)
    fig = Figure(figsize=size, layout="constrained")
    grid = fig.add_gridspec(nrows, ncols)
    axes = [fig.add_subplot(grid[i // ncols, i % ncols]) for i in range(n_panels)]
    return fig, axes


def _figure_of(ax: Axes) -> Figure:
    parent = ax.figure
    # SubFigure.figure is the root Figure (matplotlib 3.7 to 3.11); Figure.figure is itself.
    fig = parent.figure if parent is not None else None
    if not isinstance(fig, Figure):
        raise ValueError("the axes passed in are not attached to a figure")
    return fig


def _run_styles(runs: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``(colour, line style)`` of each run, in the order given; the style changes past 8 runs."""
    n = len(OKABE_ITO)
    return {
        run: (OKABE_ITO[i % n], _LINESTYLES[(i // n) % len(_LINESTYLES)])
        for i, run in enumerate(runs)
    }


def _as_float_array(x: Any, name: str) -> FloatArray:
    """``x`` (array-like or tensor) as float64 numpy, with a clear error for non-numbers."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    return arr


def _check_finite(arr: FloatArray, name: str) -> None:
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(np.isinf(arr).sum())
    if n_nan or n_inf:
        raise ValueError(f"{name} contain {n_nan} NaN and {n_inf} Inf values")


def _mathtext(name: str) -> str:
    r"""``"Σ_W"``/``"Sigma_W"``/``"sigma_w"`` → ``$\Sigma_{W}$``; other names unchanged."""
    m = re.fullmatch(r"(?:Σ|[Ss]igma)_?\{?([A-Za-z0-9]+)\}?", name)
    return rf"$\Sigma_{{{m.group(1).upper()}}}$" if m else name


def _corner_note(ax: Axes, text: str) -> None:
    """Small grey note in the top-right corner of ``ax`` (e.g. how many values were skipped)."""
    ax.text(0.98, 0.98, text, transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.4")


def _no_data(ax: Axes, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


# ---------------------------------------------------------------------------- tidy rows
_REQUIRED_KEYS = ("run", "checkpoint", "split", "metric", "value")


def _check_rows(rows: Iterable[Mapping[str, Any]], fn: str) -> list[Mapping[str, Any]]:
    rows = list(rows)
    if not rows:
        raise ValueError(f"{fn}: rows is empty")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{fn}: row {i} is a {type(row).__name__}, expected a mapping")
        missing = [k for k in _REQUIRED_KEYS if k not in row]
        if missing:
            raise ValueError(f"{fn}: row {i} lacks keys {missing}")
    return rows


def _x_key(rows: Sequence[Mapping[str, Any]], x: str) -> str:
    """``x`` if every row has it, else the fallback: epoch → step → checkpoint order."""
    chain = {"epoch": ("epoch", "step"), "step": ("step",), "checkpoint": ()}
    if x not in chain:
        raise ValueError(f"x must be 'epoch', 'step' or 'checkpoint', got {x!r}")
    for key in chain[x]:
        if all(r.get(key) is not None for r in rows):
            return key
    return "checkpoint"


def _series(
    rows: Sequence[Mapping[str, Any]], x_key: str, fn: str
) -> dict[tuple[str, str, str], tuple[FloatArray, FloatArray]]:
    """``(run, split, metric) → (x, y)`` sorted by x; checkpoint order = first appearance."""
    values = np.array([_row_value(r, fn) for r in rows], dtype=np.float64)
    n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    if n_nan or n_inf:
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)][:5]
        raise ValueError(
            f"{fn}: rows contain {n_nan} NaN and {n_inf} Inf values (first at {bad}); "
            "drop them before plotting"
        )
    ckpt_index: dict[str, dict[str, int]] = {}
    points: dict[tuple[str, str, str], dict[str, tuple[float, float]]] = {}
    for r, v in zip(rows, values, strict=True):
        run, ckpt = str(r["run"]), str(r["checkpoint"])
        order = ckpt_index.setdefault(run, {})
        idx = order.setdefault(ckpt, len(order))
        xv = float(idx) if x_key == "checkpoint" else float(r[x_key])
        key = (run, str(r["split"]), str(r["metric"]))
        pts = points.setdefault(key, {})
        if ckpt in pts:
            raise ValueError(
                f"{fn}: duplicate rows for run={run!r}, checkpoint={ckpt!r}, "
                f"split={key[1]!r}, metric={key[2]!r}"
            )
        pts[ckpt] = (xv, float(v))
    out = {}
    for key, pts in points.items():
        xy = sorted(pts.values(), key=lambda p: p[0])  # stable: ties keep row order
        out[key] = (
            np.array([p[0] for p in xy], dtype=np.float64),
            np.array([p[1] for p in xy], dtype=np.float64),
        )
    return out


def _row_value(row: Mapping[str, Any], fn: str) -> float:
    try:
        return float(row["value"])
    except (TypeError, ValueError):
        raise ValueError(
            f"{fn}: value {row['value']!r} of run={row['run']!r}, metric={row['metric']!r} "
            "is not a number"
        ) from None


def _runs_in_order(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(str(r["run"]) for r in rows))


_X_LABELS = {"epoch": "epoch", "step": "step", "checkpoint": "checkpoint (index)"}


def _records(rows: Any) -> Any:
    """Rows as an iterable of mappings; a ``pandas.DataFrame`` becomes records (NA → None)."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        frame = rows.astype(object).where(rows.notna(), None)
        return frame.to_dict("records")
    return rows


def _long_frame(
    rows: Sequence[Mapping[str, Any]], x_key: str, fn: str, hue: str
) -> tuple[Any, list[str], dict[str, int]]:
    """Validated rows as a long DataFrame ``group, run, split, metric, x, value``.

    ``group`` is each row's ``hue`` value (a run must have one); returns the frame, the
    groups in order of first appearance, and the number of runs in each group.
    """
    import pandas as pd

    series = _series(rows, x_key, fn)
    group_of: dict[str, str] = {}
    for r in rows:
        if hue not in r or r[hue] is None:
            raise ValueError(f"{fn}: hue={hue!r} but a row of run {r['run']!r} has no {hue!r}")
        g = str(r[hue])
        if group_of.setdefault(str(r["run"]), g) != g:
            raise ValueError(f"{fn}: run {r['run']!r} has two values of {hue!r}")
    records = [
        {"group": group_of[run], "run": run, "split": s, "metric": m, "x": xv, "value": yv}
        for (run, s, m), (xs, ys) in series.items()
        for xv, yv in zip(xs.tolist(), ys.tolist(), strict=True)
    ]
    frame = pd.DataFrame(records, columns=["group", "run", "split", "metric", "x", "value"])
    groups = list(dict.fromkeys(group_of[str(r["run"])] for r in rows))
    sizes = {g: sum(1 for v in group_of.values() if v == g) for g in groups}
    return frame, groups, sizes


def _aggregation(runs: int) -> dict[str, Any]:
    """seaborn.lineplot arguments: a lone run drawn point by point, several as mean ± sd."""
    if runs > 1:
        return {"estimator": "mean", "errorbar": "sd"}
    return {"estimator": None, "errorbar": None, "sort": False}  # ties keep the row order


def _hue_note(hue: str, sizes: Mapping[str, int], *, log: bool) -> str | None:
    """Legend title part saying what the bands are, when a group holds several runs."""
    if all(n == 1 for n in sizes.values()):
        return None
    counts = sorted(set(sizes.values()))
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    what = "geometric mean, band ± sd of log" if log else "mean ± sd"
    return f"{what}\nover {n} runs per {hue}"


# ---------------------------------------------------------------------------- figures
def nc_trajectories(
    rows: Iterable[Mapping[str, Any]] | Any,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    split: str = "train",
    x: Literal["epoch", "step", "checkpoint"] = "epoch",
    hue: str = "run",
    axes: Sequence[Axes] | None = None,
) -> tuple[Figure, list[Axes]]:
    r"""Neural-collapse metrics versus training time, one log-y panel per metric.

    The layout of Papyan, Han & Donoho 2020 [1]_, Figs. 2–6: each panel shows one metric
    (NC1 = tr(Σ_W Σ_B⁺)/K, equinorm, equiangularity, self-duality, NCC mismatch) against the
    epoch on a logarithmic y axis, one line per value of ``hue`` (by default one per run),
    drawn with :func:`seaborn.lineplot`. Runs that share a ``hue`` value (the seeds of one
    variant, given a ``variant`` column) become one line: their mean, with a band of ± one
    standard deviation (``errorbar="sd"``; deterministic, no bootstrap). On the log axis
    seaborn aggregates the log values: the line is the geometric mean and the band spans a
    factor of :math:`10^{\pm \mathrm{sd}(\log_{10} v)}` — the right average for quantities
    that span decades. A line keeps its
    colour in every panel; one legend for the figure stands beside the panels (never on the
    curves) and says what the bands are.

    Zeros cannot sit on a log axis, but an NCC mismatch of 0 is the key result: exact zeros
    are drawn on a floor one decade below the panel's smallest positive value, marked ▼, and
    the panel says so (means and bands are taken with zeros at the floor). Negative values
    (impossible for these metrics but for round-off) are skipped and counted in the note. A
    metric with no rows for ``split`` gives a panel that says "no data".

    Parameters
    ----------
    rows : iterable of mapping, or pandas.DataFrame
        Tidy rows (see the module docstring; :func:`analysis.report.load` gives a frame);
        rows of other splits/metrics are ignored, and with rows of several layers each run's
        classifier-input layer (the layer of its ``accuracy`` rows) is drawn.
    metrics : sequence of str
        Metric names, one panel each, in this order.
    split : str
        Which split's rows to draw.
    x : {"epoch", "step", "checkpoint"}
        Quantity on the x axis. If any selected row lacks it, falls back to ``step``, then to
        checkpoint order (the order in which each run's checkpoints first appear in ``rows``).
    hue : str
        The row key whose values are the lines (``"run"``; e.g. ``"variant"`` to aggregate
        seeds). Each run must have one value of it.
    axes : sequence of Axes, optional
        One axes per metric to draw into; by default a new figure is made.

    Returns
    -------
    fig : Figure
    axes : list of Axes
        One per metric; every one has ``get_yscale() == "log"``; ``ax.lines`` holds one line
        per ``hue`` value with data, labelled with it.

    Raises
    ------
    ValueError
        If ``rows`` or ``metrics`` is empty, a row lacks a key, a selected value is NaN/Inf
        or not a number, two rows share (run, checkpoint, split, metric), a run has no or two
        ``hue`` values, or ``axes`` has the wrong length.
    """
    import seaborn as sns

    fn = "nc_trajectories"
    all_rows = _classifier_rows(_check_rows(_records(rows), fn))
    metrics = list(metrics)
    if not metrics:
        raise ValueError(f"{fn}: metrics is empty")
    if axes is not None and len(axes) != len(metrics):
        raise ValueError(f"{fn}: got {len(axes)} axes for {len(metrics)} metrics")
    wanted = set(metrics)
    sel = [r for r in all_rows if r["split"] == split and r["metric"] in wanted]
    x_key = _x_key(sel, x)
    frame, groups, sizes = _long_frame(sel, x_key, fn, hue)
    group_style = _run_styles(groups)
    with style():
        if axes is None:
            fig, axs = _new_figure(len(metrics))
        else:
            axs = list(axes)
            fig = _figure_of(axs[0])
        handles: dict[str, Any] = {}
        for ax, metric in zip(axs, metrics, strict=True):
            ax.set_yscale("log")
            ax.set_title(_METRIC_LABELS.get(metric, metric))
            ax.set_xlabel(_X_LABELS[x_key])
            panel = frame[frame["metric"] == metric]
            positive = panel["value"] > 0
            n_negative = int((panel["value"] < 0).sum())
            # an exact 0 (NCC mismatch reaching zero is the key result) sits on a floor one
            # decade below the smallest positive value, marked, never dropped
            floor = float(panel.loc[positive, "value"].min()) / 10.0 if positive.any() else None
            shown = panel[positive | (panel["value"] == 0)].copy() if floor else panel[positive]
            zero = shown["value"] == 0
            n_zero = int(zero.sum())
            shown.loc[zero, "value"] = floor
            for group in groups:
                sub = shown[shown["group"] == group]
                if sub.empty:
                    continue
                color, ls = group_style[group]
                sns.lineplot(
                    data=sub,
                    x="x",
                    y="value",
                    ax=ax,
                    color=color,
                    linestyle=ls,
                    marker="o",
                    **_aggregation(sizes[group]),
                    label=group,
                    legend=False,
                )
                handles.setdefault(group, ax.lines[-1])
                at_floor = sub[zero.loc[sub.index]]
                if not at_floor.empty:
                    ax.scatter(at_floor["x"], at_floor["value"], marker="v", color=color, zorder=3)
            if shown.empty:
                _no_data(ax, "no positive values" if n_negative else "no data")
                ax.set_ylim(0.1, 10.0)
            notes = []
            if n_zero:
                notes.append(f"{n_zero} zero(s) drawn as ▼ at {floor:.1e}")
            if n_negative:
                notes.append(f"{n_negative} negative value(s) not shown")
            if notes:
                _corner_note(ax, "\n".join(notes))
            ax.set_ylabel("")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no 2.5
        if handles:  # one legend for the figure, beside the panels: never on the curves
            note = _hue_note(hue, sizes, log=True)
            fig.legend(
                list(handles.values()),
                list(handles),
                loc="outside right upper",
                title=hue if note is None else f"{hue}\n({note})",
            )
        if axes is None:
            fig.suptitle(f"{split} split")
    return fig, axs


def accuracy_curves(
    rows: Iterable[Mapping[str, Any]] | Any,
    *,
    metric: str = "accuracy",
    x: Literal["epoch", "step", "checkpoint"] = "epoch",
    hue: str = "run",
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Accuracy versus training time: one colour per ``hue`` value, train solid, test dashed.

    The companion of the trajectories in Papyan, Han & Donoho 2020 [1]_ (their Fig. 1 shows
    the training error reaching zero before the terminal phase). Linear y axis; drawn with
    :func:`seaborn.lineplot`, runs sharing a ``hue`` value aggregated as in
    :func:`nc_trajectories` (mean, ± one standard deviation band).

    Parameters
    ----------
    rows : iterable of mapping, or pandas.DataFrame
        Tidy rows; only those with ``metric`` are used, all splits.
    metric : str
        The metric to draw.
    x : {"epoch", "step", "checkpoint"}
        As in :func:`nc_trajectories`, including the fallbacks.
    hue : str
        As in :func:`nc_trajectories`.
    ax : Axes, optional

    Returns
    -------
    fig : Figure
    ax : Axes
        One line per (``hue`` value, split) present, labelled ``"<hue value> (<split>)"``.

    Raises
    ------
    ValueError
        As :func:`nc_trajectories`; a figure without any ``metric`` row says "no data".
    """
    import seaborn as sns

    fn = "accuracy_curves"
    sel = [r for r in _classifier_rows(_check_rows(_records(rows), fn)) if r["metric"] == metric]
    x_key = _x_key(sel, x)
    frame, groups, sizes = _long_frame(sel, x_key, fn, hue)
    group_style = _run_styles(groups)
    splits = sorted({str(r["split"]) for r in sel}, key=_split_key)
    dashes = {s: _LINESTYLES[i % len(_LINESTYLES)] for i, s in enumerate(splits)}
    with style():
        if ax is None:
            fig, (ax,) = _new_figure(1, extra_width=1.6)
        else:
            fig = _figure_of(ax)
        for group in groups:
            for s in splits:
                sub = frame[(frame["group"] == group) & (frame["split"] == s)]
                if sub.empty:
                    continue
                sns.lineplot(
                    data=sub,
                    x="x",
                    y="value",
                    ax=ax,
                    color=group_style[group][0],
                    linestyle=dashes[s],
                    marker="o",
                    **_aggregation(sizes[group]),
                    label=f"{group} ({s})",
                    legend=False,
                )
        ax.set_xlabel(_X_LABELS[x_key])
        ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if sel:  # groups × splits entries, beside the axes
            note = _hue_note(hue, sizes, log=False)
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title=note)
        else:
            _no_data(ax)
    return fig, ax


def _split_key(split: str) -> tuple[int, str]:
    return ({"train": 0, "test": 1}.get(split, 2), split)


def spectra(
    eigenvalues: Mapping[str, Any],
    *,
    ax: Axes | None = None,
    normalise: bool = False,
    title: str | None = None,
) -> tuple[Figure, Axes]:
    r"""Eigenvalue spectra, descending, against their index on a log-y axis.

    For the class covariances :math:`\Sigma_W, \Sigma_B, \Sigma_T` (e.g. from
    :func:`analysis.spectrum.eigenvalues`): neural collapse shows as :math:`\Sigma_B` keeping
    ``K − 1`` eigenvalues while :math:`\Sigma_W` shrinks (Papyan, Han & Donoho 2020 [1]_);
    the decay of :math:`\Sigma_T` is what α-ReQ and RankMe summarise. Keys such as ``"Σ_W"``,
    ``"Sigma_B"`` are shown as :math:`\Sigma_W`, :math:`\Sigma_B` in the legend.

    Values are sorted in descending order and the index starts at 1. Zero and negative
    eigenvalues (round-off of exact zeros of a PSD matrix) cannot go on a log axis and are
    clipped out; since they sort last, the remaining points keep their index.

    Parameters
    ----------
    eigenvalues : mapping of str to array-like
        Name → 1-D eigenvalues (numpy array, sequence or CPU/GPU tensor).
    ax : Axes, optional
    normalise : bool
        Divide each spectrum by the sum of its positive eigenvalues (fraction of variance).

    Returns
    -------
    fig : Figure
    ax : Axes
        One line per spectrum with at least one positive eigenvalue.

    Raises
    ------
    ValueError
        If the mapping is empty, a spectrum is not 1-D or empty, or contains NaN/Inf.
    """
    if not eigenvalues:
        raise ValueError("spectra: eigenvalues is empty")
    arrays: dict[str, FloatArray] = {}
    for name, ev in eigenvalues.items():
        arr = _as_float_array(ev, f"spectra: eigenvalues[{name!r}]")
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(
                f"spectra: eigenvalues[{name!r}] must be a non-empty 1-D array, "
                f"got shape {arr.shape}"
            )
        _check_finite(arr, f"spectra: eigenvalues[{name!r}]")
        arrays[str(name)] = np.sort(arr)[::-1]
    with style():
        if ax is None:
            fig, (ax,) = _new_figure(1)
        else:
            fig = _figure_of(ax)
        ax.set_yscale("log")
        n_skipped = n_roundoff = 0
        for name, lam in arrays.items():
            pos = lam[lam > 0]
            n_skipped += lam.size - pos.size
            if pos.size == 0:
                continue
            # below D·eps·λ_max an eigenvalue is round-off (numpy's matrix_rank tolerance)
            real = pos[pos > lam.size * np.finfo(np.float64).eps * pos[0]]
            n_roundoff += pos.size - real.size
            pos = real
            if normalise:
                pos = pos / pos.sum()
            ax.plot(np.arange(1, pos.size + 1), pos, marker=".", label=_mathtext(name))
        if ax.lines:
            ax.legend(loc="best")
        else:
            _no_data(ax, "no positive eigenvalues")
            ax.set_ylim(0.1, 10.0)
        ax.set_xlabel("index (descending)")
        ax.set_ylabel("eigenvalue / sum" if normalise else "eigenvalue")
        notes = []
        if n_skipped:
            notes.append(f"{n_skipped} non-positive eigenvalue(s) not shown")
        if n_roundoff:
            notes.append(f"{n_roundoff} below D·ε·λmax (round-off) not shown")
        if notes:
            _corner_note(ax, "\n".join(notes))
        if title is not None:
            ax.set_title(title)
    return fig, ax


def _cosines(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(
            f"cosine_heatmap: {zero.size} zero vectors (rows {zero[:5].tolist()}); "
            "their cosine is undefined"
        )
    unit = vectors / norms[:, None]
    cos: FloatArray = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)
    return cos


def cosine_heatmap(
    vectors: Any,
    *,
    target: Any | None = None,
    order: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    axes: Axes | Sequence[Axes] | None = None,
    vectors_are: str = "class vectors",
    title: str | None = None,
) -> tuple[Figure, list[Axes]]:
    r"""Heatmap of pairwise cosines of class vectors, and its deviation from a target Gram.

    Shows :math:`\cos(v_c, v_{c'})` for the ``K`` rows of ``vectors`` (class means or
    classifier rows; centring by the global mean is the caller's business). At neural
    collapse the centred means form a simplex ETF, whose off-diagonal cosines are all
    :math:`-1/(K-1)` (Papyan, Han & Donoho 2020 [1]_); a hierarchy-aware frame (HAFrame,
    Liang & Davis 2023 [3]_) prescribes a similarity matrix ``S`` instead. With ``target``, a
    second panel shows ``cos − target`` on a diverging colormap centred at 0.

    Parameters
    ----------
    vectors : array-like, shape [K, D]
    target : array-like, shape [K, K], optional
        Target cosines in the original class order (e.g. ``(K·I − 11ᵀ)/(K − 1)``).
    order : sequence of int, optional
        A permutation of ``range(K)``: row/column ``i`` of the plot is class ``order[i]``
        (e.g. leaves in hierarchy order). Applied to ``vectors``, ``target`` and ``labels``.
    labels : sequence of str, optional
        Class names, in the original class order; by default class ids are used as tick
        labels when ``K <= 40``.
    axes : Axes or sequence of Axes, optional
        One axes (two with ``target``) to draw into; by default a new figure is made.

    Returns
    -------
    fig : Figure
    axes : list of Axes
        ``[cosines]`` or ``[cosines, deviation]``, drawn with :func:`seaborn.heatmap`; each
        holds the plotted, permuted matrix as the mesh ``collections[0]``
        (``collections[0].get_array()``, row-major).

    Raises
    ------
    ValueError
        If ``vectors`` is not 2-D or has zero rows, ``target`` is not K×K, ``order`` is not a
        permutation of ``range(K)``, ``labels`` has the wrong length, any input contains
        NaN/Inf, or the number of axes is wrong.
    """
    import seaborn as sns

    fn = "cosine_heatmap"
    v = _as_float_array(vectors, f"{fn}: vectors")
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"{fn}: vectors must have shape [K, D] with K >= 1, got {v.shape}")
    _check_finite(v, f"{fn}: vectors")
    k = v.shape[0]
    tgt: FloatArray | None = None
    if target is not None:
        tgt = _as_float_array(target, f"{fn}: target")
        if tgt.shape != (k, k):
            raise ValueError(f"{fn}: target must have shape [K, K] = {(k, k)}, got {tgt.shape}")
        _check_finite(tgt, f"{fn}: target")
    if order is None:
        perm = np.arange(k)
    else:
        perm = np.asarray(list(order))
        if (
            perm.shape != (k,)
            or not np.issubdtype(perm.dtype, np.integer)
            or not np.array_equal(np.sort(perm), np.arange(k))
        ):
            raise ValueError(f"{fn}: order must be a permutation of range({k}), got {list(order)}")
    if labels is not None and len(labels) != k:
        raise ValueError(f"{fn}: got {len(labels)} labels for K={k} classes")
    n_panels = 1 if tgt is None else 2
    if axes is None:
        axs: list[Axes] | None = None
    else:
        axs = [axes] if isinstance(axes, Axes) else list(axes)
        if len(axs) != n_panels:
            raise ValueError(f"{fn}: got {len(axs)} axes, need {n_panels}")

    cos = _cosines(v)[np.ix_(perm, perm)]
    tick_labels = (
        [str(labels[int(i)]) for i in perm] if labels is not None else [str(int(i)) for i in perm]
    )
    show_ticks = labels is not None or k <= 40
    ticks: Any = tick_labels if show_ticks else False
    with style():
        if axs is None:
            fig, axs = _new_figure(n_panels)
        else:
            fig = _figure_of(axs[0])
        panels = [(cos, 1.0, f"cosine of {vectors_are}")]
        if tgt is not None:
            dev = cos - tgt[np.ix_(perm, perm)]
            panels.append((dev, float(np.abs(dev).max()) or 1.0, "cos − target"))
        for ax, (matrix, lim, panel_title) in zip(axs, panels, strict=True):
            sns.heatmap(
                matrix,
                ax=ax,
                cmap="RdBu_r",
                vmin=-lim,
                vmax=lim,  # symmetric: 0 is the centre (seaborn's center= would recolour)
                square=True,
                xticklabels=ticks,
                yticklabels=ticks,
                cbar_kws={"shrink": 0.85},
            )
            ax.set_title(panel_title)
            if show_ticks:
                size = 6 if k > 12 else 8
                ax.tick_params(axis="x", labelrotation=90, labelsize=size)
                ax.tick_params(axis="y", labelrotation=0, labelsize=size)
            ax.set_xlabel("class")
            ax.set_ylabel("class")
        if title is not None:
            fig.suptitle(title)
    return fig, axs


def variability_sweep(
    x: Sequence[float],
    values: Mapping[str, Sequence[float]],
    *,
    xlabel: str = "subspace dim k",
    ylabel: str = "intra-class variability",
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Curves of a metric versus a swept parameter, one per run.

    E.g. the intra-class variability of Kornblith et al. 2021 [2]_ (within-class over total
    cosine distance) of features projected to the top-``k`` subspace, as ``k`` grows.
    Linear axes.

    Parameters
    ----------
    x : sequence of float
        The swept parameter values, shared by all runs.
    values : mapping of str to sequence of float
        Run → metric at each ``x`` (same length as ``x``).
    xlabel, ylabel : str
    ax : Axes, optional

    Returns
    -------
    fig : Figure
    ax : Axes
        One line per run.

    Raises
    ------
    ValueError
        If ``x`` or ``values`` is empty, a length differs from ``len(x)``, or an input
        contains NaN/Inf.
    """
    fn = "variability_sweep"
    xs = _as_float_array(x, f"{fn}: x")
    if xs.ndim != 1 or xs.size == 0:
        raise ValueError(f"{fn}: x must be a non-empty 1-D sequence, got shape {xs.shape}")
    _check_finite(xs, f"{fn}: x")
    if not values:
        raise ValueError(f"{fn}: values is empty")
    ys: dict[str, FloatArray] = {}
    for run, val in values.items():
        arr = _as_float_array(val, f"{fn}: values[{run!r}]")
        if arr.shape != xs.shape:
            raise ValueError(f"{fn}: values[{run!r}] has shape {arr.shape}, x has shape {xs.shape}")
        _check_finite(arr, f"{fn}: values[{run!r}]")
        ys[str(run)] = arr
    run_style = _run_styles(list(ys))
    with style():
        if ax is None:
            fig, (ax,) = _new_figure(1)
        else:
            fig = _figure_of(ax)
        for run, arr in ys.items():
            color, ls = run_style[run]
            ax.plot(xs, arr, marker="o", label=run, color=color, linestyle=ls)
        if np.all(xs == np.round(xs)):  # an integer sweep (k = 1, 2, 4): no 1.5 or 2.5 ticks
            if np.all(xs > 0) and np.all(np.log2(xs) == np.round(np.log2(xs))) and xs.size > 2:
                ax.set_xscale("log", base=2)
                ax.minorticks_off()
            ax.set_xticks(xs, [str(int(v)) for v in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(loc="best")
    return fig, ax


def recall_bars(
    recalls: Mapping[str, Mapping[int, float]],
    *,
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Grouped bars of Recall@K: one group per K, one bar (colour) per run.

    Retrieval quality of the embeddings at several K, as reported in metric-learning
    comparisons (e.g. Kornblith et al. 2021 [2]_ relate it to class separation). A run
    without a value for some K simply has no bar there.

    Parameters
    ----------
    recalls : mapping of str to mapping of int to float
        Run → {K: Recall@K}, recalls in [0, 1].
    ax : Axes, optional

    Returns
    -------
    fig : Figure
    ax : Axes
        One bar container per run (``ax.containers``).

    Raises
    ------
    ValueError
        If ``recalls`` or a run's mapping is empty, or a recall is NaN/Inf or outside [0, 1].
    """
    fn = "recall_bars"
    if not recalls:
        raise ValueError(f"{fn}: recalls is empty")
    table: dict[str, dict[int, float]] = {}
    for run, per_k in recalls.items():
        if not per_k:
            raise ValueError(f"{fn}: recalls[{run!r}] is empty")
        vals = _as_float_array(list(per_k.values()), f"{fn}: recalls[{run!r}]")
        _check_finite(vals, f"{fn}: recalls[{run!r}]")
        if ((vals < 0) | (vals > 1)).any():
            raise ValueError(f"{fn}: recalls[{run!r}] has values outside [0, 1]: {vals.tolist()}")
        table[str(run)] = {int(kk): float(v) for kk, v in zip(per_k, vals, strict=True)}
    ks = sorted({kk for per_k in table.values() for kk in per_k})
    pos = {kk: i for i, kk in enumerate(ks)}
    n_runs = len(table)
    width = 0.8 / n_runs
    run_style = _run_styles(list(table))
    with style():
        if ax is None:
            fig, (ax,) = _new_figure(1)
        else:
            fig = _figure_of(ax)
        for j, (run, per_k) in enumerate(table.items()):
            kk = sorted(per_k)
            centres = [pos[q] - 0.4 + width * (j + 0.5) for q in kk]
            ax.bar(
                centres,
                [per_k[q] for q in kk],
                width=width,
                label=run,
                color=run_style[run][0],
            )
        ax.set_xticks(range(len(ks)), [f"R@{q}" for q in ks])
        ax.set_ylim(0.0, 1.0)
        ax.set_ylabel("Recall@K")
        ax.grid(False, axis="x")
        # above the axes: bars reach any height in [0, 1], so no corner inside is safe
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(n_runs, 4))
    return fig, ax


# ---------------------------------------------------------------------------- depth, hierarchy
def _frame(rows: Iterable[Mapping[str, Any]], fn: str) -> Any:
    import pandas as pd

    frame = pd.DataFrame(list(_check_rows(rows, fn)))
    if "layer" not in frame:
        raise ValueError(f"{fn}: rows need a 'layer' key")
    return frame


def depth_profile(
    rows: Iterable[Mapping[str, Any]],
    *,
    run: str,
    split: str = "test",
    metrics: Sequence[str] = ("nc1", "cdnv"),
    layers: Sequence[str] | None = None,
) -> tuple[Figure, list[Axes]]:
    """NC1 and CDNV against depth: one line per checkpoint, coloured by epoch.

    Progressive collapse across layers (He & Su 2023 [3]_; Rangamani et al. 2023 [4]_): the
    metrics of every analysed layer of one run on one split, layers on the x axis in model
    order (``layers``, default: their order in ``rows``), a log y axis, one line per
    checkpoint with a colour bar of the epoch (or step, or checkpoint index).

    Raises
    ------
    ValueError
        No rows of ``run``/``split`` with two or more layers for a metric.

    References
    ----------
    .. [3] H. He, W. J. Su. A law of data separation in deep learning. PNAS 2023.
    .. [4] A. Rangamani, M. Lindegaard, T. Galanti, T. Poggio. Feature learning in deep
       classifiers through intermediate neural collapse. ICML 2023.
    """
    import seaborn as sns

    fn = "depth_profile"
    frame = _frame(rows, fn)
    sel = frame[(frame["run"] == run) & (frame["split"] == split)]
    order = list(layers) if layers is not None else list(dict.fromkeys(sel["layer"]))
    sel = sel[sel["metric"].isin(metrics) & sel["layer"].isin(order)]
    if sel.empty or sel["layer"].nunique() < 2:
        raise ValueError(f"{fn}: run {run!r}, split {split!r} has no metric over 2+ layers")
    x_key = _x_key(sel.to_dict("records"), "epoch")
    if x_key == "checkpoint":
        codes = {c: i for i, c in enumerate(dict.fromkeys(sel["checkpoint"]))}
        sel = sel.assign(position=sel["checkpoint"].map(codes))
        x_key = "position"
    sel = sel.assign(depth=sel["layer"].map({name: i for i, name in enumerate(order)}))
    present = [m for m in metrics if m in set(sel["metric"])]
    lo, hi = float(sel[x_key].min()), float(sel[x_key].max())
    norm = mpl.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
    with style():
        fig, axes = _new_figure(len(present), extra_width=0.9)
        for ax, metric in zip(axes, present, strict=True):
            part = sel[sel["metric"] == metric].sort_values([x_key, "depth"])
            sns.lineplot(
                data=part,
                x="depth",
                y="value",
                hue=x_key,
                hue_norm=norm,
                palette="viridis",
                units="checkpoint",
                estimator=None,
                marker="o",
                legend=False,
                ax=ax,
            )
            ax.set_yscale("log")
            ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
            ax.set_xlabel("layer (input of)")
            ax.set_ylabel("")
            ax.set_title(_METRIC_LABELS.get(metric, metric))
        bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes)
        bar.set_label("epoch" if x_key == "epoch" else x_key)
        fig.suptitle(f"{run}: collapse across layers, {split} split")
    return fig, axes


def severity_tradeoff(
    rows: Iterable[Mapping[str, Any]], *, split: str = "test"
) -> tuple[Figure, Axes]:
    """Mistake severity against top-1 error: one marker per run at its last checkpoint.

    The trade-off plot of Liang & Davis (2023) for hierarchy-aware classifiers: lower and to
    the left is better; each run is labelled with its name and the epoch shown.

    Raises
    ------
    ValueError
        No run with both ``top1_error`` and ``mistake_severity`` on ``split``.
    """
    import pandas as pd
    import seaborn as sns

    fn = "severity_tradeoff"
    frame = _frame(rows, fn)
    sel = frame[
        (frame["split"] == split) & frame["metric"].isin(["top1_error", "mistake_severity"])
    ]
    points = []
    for run, part in sel.groupby("run", sort=False):
        last = part["checkpoint"].iloc[-1]
        at = part[part["checkpoint"] == last].set_index("metric")
        if {"top1_error", "mistake_severity"} <= set(at.index):
            epoch = at["epoch"].iloc[0]
            shown = f"epoch {int(epoch)}" if pd.notna(epoch) else str(last)
            points.append(
                {
                    "run": run,
                    "top1_error": float(at.loc["top1_error", "value"]),
                    "mistake_severity": float(at.loc["mistake_severity", "value"]),
                    "label": f"{run} ({shown})",
                }
            )
    if not points:
        raise ValueError(f"{fn}: no run has top1_error and mistake_severity on split {split!r}")
    data = pd.DataFrame(points)
    epochs = {p["label"].rsplit(" (", 1)[1] for p in points}
    common = len(epochs) == 1  # one epoch for all: say it once, in the title
    with style():
        fig, (ax,) = _new_figure(1, extra_width=1.4)
        sns.scatterplot(
            data=data,
            x="top1_error",
            y="mistake_severity",
            hue="run",
            style="run",
            s=50,
            legend=False,
            palette=list(OKABE_ITO)[: len(data)],
            ax=ax,
        )
        for p in points:
            text = p["run"] if common else p["label"]
            ax.annotate(
                text,
                (p["top1_error"], p["mistake_severity"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        ax.set_xlabel("top-1 error")
        ax.set_ylabel("mistake severity\n(mean LCA height of mistakes)")
        at = f"{next(iter(epochs))[:-1]}" if common else "last checkpoints"
        ax.set_title(f"severity vs error ({split}, {at})")
        ax.margins(x=0.15, y=0.1)
    return fig, ax


def hierarchical_distance_curves(
    rows: Iterable[Mapping[str, Any]], *, split: str = "test"
) -> tuple[Figure, Axes]:
    """Average hierarchical distance of the top-k predictions against k, one line per run.

    ``hdist@k_mean`` (Bertinetto et al. 2020) at each run's last checkpoint.

    Raises
    ------
    ValueError
        No ``hdist@k_mean`` rows on ``split``.
    """
    import seaborn as sns

    fn = "hierarchical_distance_curves"
    frame = _frame(rows, fn)
    sel = frame[(frame["split"] == split) & frame["metric"].str.fullmatch(r"hdist@\d+_mean")]
    if sel.empty:
        raise ValueError(f"{fn}: no hdist@k_mean rows on split {split!r}")
    last = sel.groupby("run", sort=False)["checkpoint"].transform("last")
    sel = sel[sel["checkpoint"] == last]
    sel = sel.assign(k=sel["metric"].str.extract(r"@(\d+)_", expand=False).astype(int))
    with style():
        fig, (ax,) = _new_figure(1, extra_width=1.0)
        sns.lineplot(
            data=sel,
            x="k",
            y="value",
            hue="run",
            marker="o",
            palette=list(OKABE_ITO)[: sel["run"].nunique()],
            ax=ax,
        )
        ks = sorted(sel["k"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("k (top-k predictions)")
        ax.set_ylabel("mean LCA height to the label")
        ax.set_title(f"hierarchical distance@k ({split}, last checkpoint)")
    return fig, ax


# ---------------------------------------------------------------------------- everything
def render_all(
    rows: Iterable[Mapping[str, Any]],
    *,
    out_dir: str | os.PathLike[str],
    spectra_by_run: Mapping[str, Mapping[str, Any]] | None = None,
    means_by_run: Mapping[str, Any] | None = None,
    targets_by_run: Mapping[str, Any] | None = None,
    sweep: Mapping[str, Any] | None = None,
    recalls: Mapping[str, Mapping[int, float]] | None = None,
    formats: Sequence[str] = ("pdf", "png"),
    orders_by_run: Mapping[str, Sequence[int]] | None = None,
    titles_by_run: Mapping[str, str] | None = None,
) -> list[Path]:
    """Render every figure for one tidy table into ``out_dir``; return the paths written.

    File names (``<fmt>`` for each of ``formats``; ``<run>`` with characters outside
    ``[A-Za-z0-9._-]`` replaced by ``_``):

    * ``nc_trajectories_<split>.<fmt>`` — :func:`nc_trajectories` for each split present
      (``train``, ``test``, then others alphabetically), with one panel for each of
      :data:`DEFAULT_METRICS` and ``intra_class_variability`` that the split has rows for
      (no file for a split without any);
    * ``accuracy.<fmt>`` — :func:`accuracy_curves`, if any ``accuracy`` row exists;
    * ``spectra_<run>.<fmt>`` — :func:`spectra` of ``spectra_by_run[run]``;
    * ``cosines_<run>.<fmt>`` — :func:`cosine_heatmap` of ``means_by_run[run]``, with
      ``targets_by_run[run]`` as target when given;
    * ``variability_sweep.<fmt>`` — :func:`variability_sweep` called with ``**sweep``;
    * ``recall_bars.<fmt>`` — :func:`recall_bars` of ``recalls``;
    * ``depth_<run>.<fmt>`` — :func:`depth_profile` for each run with rows of two or more
      layers (test split, else the first);
    * ``severity_tradeoff.<fmt>`` and ``hierarchical_distance.<fmt>`` —
      :func:`severity_tradeoff` and :func:`hierarchical_distance_curves` when the rows hold
      hierarchy metrics (test split, else the first).

    With rows of several layers, the trajectory, accuracy and sweep figures use each run's
    classifier-input layer (the layer of its ``accuracy`` rows).

    Parameters
    ----------
    rows : iterable of mapping
        Tidy rows (see the module docstring).
    out_dir : str or os.PathLike
        Created if missing.
    spectra_by_run : mapping, optional
        Run → {name: eigenvalues} (e.g. ``{"Σ_W": ..., "Σ_B": ..., "Σ_T": ...}``).
    means_by_run : mapping, optional
        Run → class vectors ``[K, D]``.
    targets_by_run : mapping, optional
        Run → target cosine matrix ``[K, K]``; every key must be in ``means_by_run``.
    orders_by_run : mapping, optional
        Run → class order of its heatmap (e.g. the leaves of a hierarchy, so that sibling
        classes sit together).
    titles_by_run : mapping, optional
        Run → title of its spectra and cosine figures (which run, checkpoint and split).
    sweep : mapping, optional
        Keyword arguments of :func:`variability_sweep`: ``x``, ``values`` and optionally
        ``xlabel``, ``ylabel``.
    recalls : mapping, optional
        Run → {K: Recall@K}.
    formats : sequence of str
        As in :func:`save_figure`.

    Returns
    -------
    list of pathlib.Path
        Every file written, in the order listed above.

    Raises
    ------
    ValueError
        If ``rows`` is empty, ``targets_by_run`` names a run without means, two run names
        map to the same file name, or any figure function rejects its input.
    """
    fn = "render_all"
    all_rows = _check_rows(rows, fn)
    targets = dict(targets_by_run or {})
    means = dict(means_by_run or {})
    orders = dict(orders_by_run or {})
    extra = sorted(set(targets) - set(means))
    if extra:
        raise ValueError(f"{fn}: targets_by_run has runs without means_by_run: {extra}")
    for what, mapping in (("spectra_by_run", spectra_by_run or {}), ("means_by_run", means)):
        safe = [_safe_name(str(r)) for r in mapping]
        if len(set(safe)) != len(safe):
            raise ValueError(f"{fn}: run names of {what} collide as file names: {list(mapping)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def emit(fig: Figure, name: str) -> None:
        written.extend(save_figure(fig, out / name, formats))

    layered = all_rows
    all_rows = _classifier_rows(all_rows)
    splits = sorted({str(r["split"]) for r in all_rows}, key=_split_key)
    for split in splits:
        present = {r["metric"] for r in all_rows if r["split"] == split}
        metrics = [m for m in _RENDER_METRICS if m in present]
        if metrics:
            fig, _ = nc_trajectories(all_rows, metrics=metrics, split=split)
            emit(fig, f"nc_trajectories_{_safe_name(split)}")
    if any(r["metric"] == "accuracy" for r in all_rows):
        fig, _ = accuracy_curves(all_rows)
        emit(fig, "accuracy")
    titles = dict(titles_by_run or {})
    for run, eig in (spectra_by_run or {}).items():
        fig, _ = spectra(eig, title=titles.get(run))
        emit(fig, f"spectra_{_safe_name(str(run))}")
    for run, vec in means.items():
        fig, _ = cosine_heatmap(
            vec,
            target=targets.get(run),
            order=orders.get(run),
            vectors_are="centred class means",
            title=titles.get(run),
        )
        emit(fig, f"cosines_{_safe_name(str(run))}")
    if sweep is not None:
        fig, _ = variability_sweep(**sweep)
        emit(fig, "variability_sweep")
    if recalls is not None:
        fig, _ = recall_bars(recalls)
        emit(fig, "recall_bars")
    for run in dict.fromkeys(str(r["run"]) for r in layered):
        layers = {r.get("layer") for r in layered if r["run"] == run}
        if len(layers) > 1:
            split = "test" if any(r["split"] == "test" for r in layered) else splits[0]
            fig, _ = depth_profile(layered, run=run, split=split)
            emit(fig, f"depth_{_safe_name(run)}")
    hier_split = "test" if "test" in splits else (splits[0] if splits else "")
    if any(r["metric"] == "mistake_severity" and r["split"] == hier_split for r in all_rows):
        fig, _ = severity_tradeoff(all_rows, split=hier_split)
        emit(fig, "severity_tradeoff")
    if any(str(r["metric"]).startswith("hdist@") and r["split"] == hier_split for r in all_rows):
        fig, _ = hierarchical_distance_curves(all_rows, split=hier_split)
        emit(fig, "hierarchical_distance")
    return written


_Row = TypeVar("_Row", bound=Mapping[str, Any])


def _classifier_rows(rows: Sequence[_Row]) -> list[_Row]:
    """Each run's rows of its classifier-input layer (the layer of its ``accuracy`` rows).

    Rows without a ``layer`` key, and runs with one layer, are kept whole.
    """
    keep: dict[str, Any] = {}
    for r in rows:
        if r["metric"] == "accuracy" and "layer" in r:
            keep.setdefault(str(r["run"]), r["layer"])
    return [
        r
        for r in rows
        if "layer" not in r or str(r["run"]) not in keep or r["layer"] == keep[str(r["run"])]
    ]


def render_report(
    report: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("pdf", "png"),
) -> list[Path]:
    """Render every figure of an output folder (its ``results.sqlite``).

    ``report`` is the output folder, or its ``report.json``/``report.csv`` (whose folder's
    database is read). The tidy rows give the trajectories per split and the accuracy curves.
    The statistics stored with each run's **last** checkpoint (train split, else the first
    split) give:

    * ``spectra_<run>`` — descending eigenvalues of Σ_W, Σ_B, Σ_T
      (:func:`analysis.spectrum.eigenvalues`);
    * ``cosines_<run>`` — cosines of the globally centred class means, with the deviation
      from the run's target frame similarity when one was analysed (HAFrame), else from the
      simplex ETF (off-diagonal −1/(K−1)); classes in the order of the run attribute
      ``class_order`` when present (hierarchy leaves);

    and the run attribute ``sweep`` (a swept value per run, e.g. GCR subspace dim k) gives
    ``variability_sweep``: the intra-class variability of the last checkpoint per split.
    ``recall@K`` rows (``geomtools analyze --recall``) give ``recall_bars`` for each run's last
    checkpoint on the ``test`` split.

    Returns
    -------
    list of pathlib.Path
        Every file written (see :func:`render_all` for the names).

    Raises
    ------
    FileNotFoundError
        No results database at ``report``.
    ValueError
        The database holds no rows.
    """
    from analysis.report import Report
    from analysis.spectrum import eigenvalues
    from analysis.stats import FeatureStats
    from analysis.store import open_existing

    spectra_by_run: dict[str, dict[str, Any]] = {}
    means_by_run: dict[str, Any] = {}
    targets_by_run: dict[str, Any] = {}
    orders_by_run: dict[str, list[int]] = {}
    titles: dict[str, str] = {}
    swept: dict[str, float] = {}
    with open_existing(report) as store:
        all_rows = store.rows()
        rep = Report(rows=_classifier_rows(all_rows), runs=store.runs())
        if not rep.rows:
            raise ValueError(f"{store.path}: no results to plot")
        for run, info in rep.runs.items():
            checkpoints = store.checkpoints(run)
            if not checkpoints:
                continue
            tensors = store.tensors(run, checkpoints[-1]["name"])
            # the classifier-input layer: the layer of the run's accuracy rows
            layer = next(
                (r["layer"] for r in rep.rows if r["run"] == run and r["metric"] == "accuracy"),
                None,
            )
            states = {
                s: t
                for (s, la, n), t in tensors.items()
                if n == "feature_stats" and (layer is None or la == layer)
            }
            if not states:
                continue
            st = FeatureStats.from_state_dict(states.get("train", next(iter(states.values()))))
            ck = checkpoints[-1]
            at = f"epoch {ck['epoch']}" if ck["epoch"] is not None else ck["name"]
            split_shown = "train" if "train" in states else next(iter(states))
            titles[run] = f"{run}, {at}, {split_shown} split"
            spectra_by_run[run] = {
                r"$\Sigma_W$": eigenvalues(st, "within").numpy(),
                r"$\Sigma_B$": eigenvalues(st, "between").numpy(),
                r"$\Sigma_T$": eigenvalues(st, "total").numpy(),
            }
            present = st.counts > 0
            means_by_run[run] = (st.means[present] - st.global_mean_of()).numpy()
            k = int(present.sum())
            sim = next((t for (_, _, n), t in tensors.items() if n == "similarity"), None)
            if sim is not None:
                targets_by_run[run] = sim[present][:, present].numpy()
            elif k > 1:
                etf = np.full((k, k), -1.0 / (k - 1))
                np.fill_diagonal(etf, 1.0)
                targets_by_run[run] = etf
            attrs = info["attributes"]
            order = attrs.get("class_order")
            if order is not None and len(order) == k:
                orders_by_run[run] = [int(i) for i in order]
            if "sweep" in attrs:
                swept[run] = float(attrs["sweep"])
    sweep = None
    if swept:
        runs = sorted(swept, key=lambda r: swept[r])
        splits = sorted({str(r["split"]) for r in rep.rows}, key=_split_key)
        values: dict[str, list[float]] = {}
        for split in splits:
            try:
                values[split] = [rep.value(r, split, "intra_class_variability") for r in runs]
            except KeyError:
                continue
        if values:
            sweep = {"x": [swept[r] for r in runs], "values": values}
    # Recall@K of each run's last checkpoint on the test split (else the last split listed)
    recalls: dict[str, dict[int, float]] = {}
    for run in dict.fromkeys(str(r["run"]) for r in rep.rows):
        rows = [r for r in rep.rows if r["run"] == run and str(r["metric"]).startswith("recall@")]
        if not rows:
            continue
        split = "test" if any(r["split"] == "test" for r in rows) else str(rows[-1]["split"])
        last = [r for r in rows if r["split"] == split][-1]["checkpoint"]
        recalls[run] = {
            int(str(r["metric"]).split("@", 1)[1]): float(r["value"])
            for r in rows
            if r["split"] == split and r["checkpoint"] == last
        }
    return render_all(
        all_rows,
        out_dir=out_dir,
        recalls=recalls or None,
        spectra_by_run=spectra_by_run or None,
        means_by_run=means_by_run or None,
        targets_by_run=targets_by_run or None,
        sweep=sweep,
        formats=formats,
        orders_by_run=orders_by_run or None,
        titles_by_run=titles or None,
    )
