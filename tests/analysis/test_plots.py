"""Tests of analysis.plots: figure contents read back from the artists, and the files written."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pytest
from matplotlib.figure import Figure

from analysis import plots
from analysis.plots import (
    DEFAULT_METRICS,
    accuracy_curves,
    cosine_heatmap,
    nc_trajectories,
    recall_bars,
    render_all,
    render_report,
    save_figure,
    spectra,
    style,
    variability_sweep,
)

RUNS = ("linear", "etf", "haframe")
EPOCHS = (0, 10, 20, 50, 100)


def make_rows(
    runs: tuple[str, ...] = RUNS,
    splits: tuple[str, ...] = ("train", "test"),
    metrics: tuple[str, ...] = (*DEFAULT_METRICS, "accuracy"),
) -> list[dict[str, Any]]:
    rows = []
    for r, run in enumerate(runs):
        for e, epoch in enumerate(EPOCHS):
            for split in splits:
                for m, metric in enumerate(metrics):
                    value = 0.9 if metric == "accuracy" else (r + 1) * 10.0 ** (-e) * (m + 1)
                    rows.append(
                        {
                            "run": run,
                            "checkpoint": f"ckpt_{epoch:03d}.pt",
                            "epoch": epoch,
                            "step": 100 * epoch,
                            "split": split,
                            "metric": metric,
                            "value": value,
                        }
                    )
    return rows


def raw_rc() -> dict[str, Any]:
    """rcParams, read without resolving the lazy "backend" entry (``==`` would import pyplot)."""
    return {k: dict.__getitem__(mpl.rcParams, k) for k in dict.keys(mpl.rcParams)}


def line_xy(line: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = line.get_data()
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def image_data(ax: Any) -> np.ndarray:
    """The matrix a seaborn heatmap drew (its mesh's values, row-major)."""
    values = np.asarray(ax.collections[0].get_array(), dtype=float)
    k = round(np.sqrt(values.size))
    return values.reshape(k, k)


def panel_texts(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.texts]


# ---------------------------------------------------------------------------- style
def test_style_does_not_mutate_rcparams(tmp_path: Path) -> None:
    before = raw_rc()
    with style():
        assert mpl.rcParams["pdf.fonttype"] == 42
        assert mpl.rcParams["ps.fonttype"] == 42
        assert mpl.rcParams["axes.prop_cycle"].by_key()["color"][0] == plots.OKABE_ITO[0]
    assert raw_rc() == before
    fig, _ = spectra({"Σ_W": [2.0, 1.0]})
    save_figure(fig, tmp_path / "f", formats=("pdf", "png"))
    assert raw_rc() == before


def test_module_does_not_import_pyplot() -> None:
    tree = ast.parse(Path(plots.__file__).read_text(encoding="utf-8"))
    imported = [
        alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert imported and not [name for name in imported if "pyplot" in name]


# ---------------------------------------------------------------------------- trajectories
def test_nc_trajectories_panels_log_lines_colours_legend() -> None:
    fig, axes = nc_trajectories(make_rows())
    assert isinstance(fig, Figure)
    assert len(axes) == len(DEFAULT_METRICS)
    colours = None
    for ax in axes:
        assert ax.get_yscale() == "log"
        assert len(ax.lines) == len(RUNS)
        assert [ln.get_label() for ln in ax.lines] == list(RUNS)
        these = [ln.get_color() for ln in ax.lines]
        assert len(set(these)) == len(RUNS)
        colours = colours or these
        assert these == colours  # one colour per run, the same in every panel
        assert ax.get_xlabel() == "epoch"
    # one legend for the figure, outside the panels, never on the curves
    assert all(ax.get_legend() is None for ax in axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(RUNS)
    # x = epoch, y = the values of the rows, for the "etf" run's nc1 (metric index 0)
    x, y = line_xy(axes[0].lines[1])
    np.testing.assert_array_equal(x, EPOCHS)
    np.testing.assert_allclose(y, [2 * 10.0 ** (-e) for e in range(len(EPOCHS))])


def test_nc_trajectories_split_and_order_of_rows_irrelevant() -> None:
    rows = make_rows()
    rows_rev = rows[::-1]
    for r in rows_rev:
        if r["split"] == "test" and r["metric"] == "nc1":
            r["value"] *= 7
    _, axes = nc_trajectories(rows_rev, split="test", metrics=("nc1",))
    x, y = line_xy(axes[0].lines[-1])  # runs in order of first appearance: reversed
    assert axes[0].lines[-1].get_label() == "linear"
    np.testing.assert_array_equal(x, EPOCHS)  # sorted by epoch
    np.testing.assert_allclose(y, [7 * 10.0 ** (-e) for e in range(len(EPOCHS))])


def test_nc_trajectories_skips_non_positive_without_warnings(tmp_path: Path) -> None:
    rows = make_rows(metrics=("nc1", "ncc_mismatch"))
    for r in rows:
        if r["run"] == "etf" and r["metric"] == "ncc_mismatch" and r["split"] == "train":
            r["value"] = 0.0 if r["epoch"] >= 50 else r["value"]
        if r["run"] == "linear" and r["metric"] == "ncc_mismatch":
            r["value"] = -1.0  # every value of this run is non-positive
    fig, axes = nc_trajectories(rows, metrics=("nc1", "ncc_mismatch"))
    ax = axes[1]
    assert [ln.get_label() for ln in ax.lines] == ["etf", "haframe"]
    # the two zeros of etf are visible: the line reaches a floor a decade below the smallest
    # positive value, where ▼ marks them
    smallest = min(
        r["value"]
        for r in rows
        if r["metric"] == "ncc_mismatch" and r["split"] == "train" and r["value"] > 0
    )
    x, y = line_xy(ax.lines[0])
    np.testing.assert_array_equal(x, [0, 10, 20, 50, 100])
    assert (y[:3] > 0).all()
    np.testing.assert_allclose(y[3:], smallest / 10, rtol=1e-14)  # via log10 and back
    (zeros,) = ax.collections
    np.testing.assert_allclose(zeros.get_offsets(), [[50, smallest / 10], [100, smallest / 10]])
    assert any("2 zero(s) drawn as ▼" in t and "5 negative" in t for t in panel_texts(ax))
    save_figure(fig, tmp_path / "nonpos", formats=("png",))  # drawing must not warn either


def test_nc_trajectories_missing_metric_says_no_data(tmp_path: Path) -> None:
    fig, axes = nc_trajectories(make_rows(metrics=("nc1",)), metrics=("nc1", "self_duality"))
    assert len(axes[0].lines) == len(RUNS)
    assert not axes[1].lines
    assert "no data" in panel_texts(axes[1])
    assert axes[1].get_yscale() == "log"
    save_figure(fig, tmp_path / "nodata", formats=("png",))


def test_nc_trajectories_x_fallbacks() -> None:
    rows = make_rows(runs=("a",), splits=("train",), metrics=("nc1",))
    for r in rows:
        r["epoch"] = None
    _, axes = nc_trajectories(rows, metrics=("nc1",))
    assert axes[0].get_xlabel() == "step"
    np.testing.assert_array_equal(line_xy(axes[0].lines[0])[0], [100 * e for e in EPOCHS])
    for r in rows:
        r["step"] = None
    _, axes = nc_trajectories(rows[::-1], metrics=("nc1",))
    assert axes[0].get_xlabel() == "checkpoint (index)"
    x, y = line_xy(axes[0].lines[0])
    np.testing.assert_array_equal(x, range(len(EPOCHS)))
    expected = [10.0 ** (-e) for e in reversed(range(len(EPOCHS)))]
    np.testing.assert_allclose(np.asarray(y, dtype=float), expected)


def test_nc_trajectories_into_given_axes() -> None:
    fig = Figure()
    given = fig.subplots(1, 2)
    out_fig, axes = nc_trajectories(
        make_rows(), metrics=("nc1", "equinorm_means"), axes=list(given)
    )
    assert out_fig is fig
    assert axes == list(given)
    with pytest.raises(ValueError, match="got 2 axes for 3 metrics"):
        nc_trajectories(make_rows(), metrics=("nc1", "equinorm_means", "nc1"), axes=list(given))


def test_nc_trajectories_errors() -> None:
    with pytest.raises(ValueError, match="rows is empty"):
        nc_trajectories([])
    rows = make_rows()
    bad = [dict(r) for r in rows]
    bad[3]["value"] = float("nan")
    bad[5]["value"] = float("nan")
    with pytest.raises(ValueError, match="2 NaN and 0 Inf"):
        nc_trajectories(bad, metrics=(*DEFAULT_METRICS, "accuracy"))
    with pytest.raises(ValueError, match="duplicate rows for run='linear', checkpoint='ckpt_000"):
        nc_trajectories([*rows, rows[0]])
    with pytest.raises(ValueError, match=r"row 1 lacks keys \['metric'\]"):
        nc_trajectories([rows[0], {k: v for k, v in rows[1].items() if k != "metric"}])
    with pytest.raises(ValueError, match="not a number"):
        nc_trajectories([{**rows[0], "value": "abc"}])
    with pytest.raises(ValueError, match="x must be"):
        nc_trajectories(rows, x="time")  # type: ignore[arg-type]


def test_nc_trajectories_mean_and_band_over_seeds() -> None:
    import pandas as pd

    rows = make_rows(runs=("a-s0", "a-s1", "b-s0"), splits=("train",), metrics=("nc1",))
    for r in rows:
        r["variant"] = r["run"].split("-")[0]
        if r["run"] == "a-s1":
            r["value"] *= 3
    frame = pd.DataFrame(rows).astype({"epoch": "Int64"})  # a report.load()-like frame
    fig, axes = nc_trajectories(frame, metrics=("nc1",), hue="variant")
    ax = axes[0]
    assert [ln.get_label() for ln in ax.lines] == ["a", "b"]
    _x, y = line_xy(ax.lines[0])
    s0, s1 = (np.array([r["value"] for r in rows if r["run"] == run]) for run in ("a-s0", "a-s1"))
    # on the log axis: the geometric mean of the two seeds, and a band of ± one sd of log10
    logs = np.log10([s0, s1])
    mean, sd = logs.mean(0), logs.std(0, ddof=1)
    np.testing.assert_allclose(y, 10**mean, rtol=1e-12)
    (band,) = ax.collections  # the two seeds of a have a band; b has one run, none
    edges = band.get_paths()[0].vertices[:, 1]
    want = np.concatenate([10 ** (mean - sd), 10 ** (mean + sd)])
    np.testing.assert_allclose(np.unique(edges.round(12)), np.unique(want.round(12)))
    (legend,) = fig.legends
    title = legend.get_title().get_text()
    assert "geometric mean, band ± sd of log\nover 1–2 runs per variant" in title
    bad = [dict(r) for r in rows]
    bad[0]["variant"] = "c"
    with pytest.raises(ValueError, match="two values of 'variant'"):
        nc_trajectories(bad, metrics=("nc1",), hue="variant")
    with pytest.raises(ValueError, match="has no 'seed'"):
        nc_trajectories(rows, metrics=("nc1",), hue="seed")


def test_accuracy_curves() -> None:
    _, ax = accuracy_curves(make_rows())
    assert len(ax.lines) == 2 * len(RUNS)
    assert ax.get_yscale() == "linear"
    assert ax.lines[0].get_linestyle() == "-" and ax.lines[1].get_linestyle() == "--"
    assert ax.lines[0].get_color() == ax.lines[1].get_color()


# ---------------------------------------------------------------------------- spectra
def test_spectra_sorted_clipped_log() -> None:
    lam_w = np.array([1e-3, 5.0, -1e-12, 0.0, 0.2])
    lam_b = np.array([3.0, 1.0, 2.0])
    _, ax = spectra({"Σ_W": lam_w, "Sigma_B": lam_b})
    assert ax.get_yscale() == "log"
    assert [ln.get_label() for ln in ax.lines] == [r"$\Sigma_{W}$", r"$\Sigma_{B}$"]
    x, y = line_xy(ax.lines[0])
    np.testing.assert_array_equal(x, [1, 2, 3])
    np.testing.assert_array_equal(y, [5.0, 0.2, 1e-3])
    assert any("2 non-positive" in t for t in panel_texts(ax))
    _, ax = spectra({"Σ_B": lam_b}, normalise=True)
    np.testing.assert_allclose(line_xy(ax.lines[0])[1], [0.5, 1 / 3, 1 / 6])


def test_spectra_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        spectra({})
    with pytest.raises(ValueError, match="1-D"):
        spectra({"a": np.ones((2, 2))})
    with pytest.raises(ValueError, match="1 NaN"):
        spectra({"a": [1.0, float("nan")]})


# ---------------------------------------------------------------------------- cosine heatmap
def hand_cosines(v: np.ndarray) -> np.ndarray:
    k = v.shape[0]
    out = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            out[i, j] = v[i] @ v[j] / (np.linalg.norm(v[i]) * np.linalg.norm(v[j]))
    return out


def test_cosine_heatmap_matches_hand_computation() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 8))
    _, axes = cosine_heatmap(v)
    assert len(axes) == 1
    np.testing.assert_allclose(image_data(axes[0]), hand_cosines(v), atol=1e-12)
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["0", "1", "2", "3", "4"]


def test_cosine_heatmap_order_target_labels() -> None:
    rng = np.random.default_rng(1)
    k = 4
    v = rng.normal(size=(k, 6))
    etf = (k * np.eye(k) - np.ones((k, k))) / (k - 1)
    order = [2, 0, 3, 1]
    labels = ["a", "b", "c", "d"]
    _, axes = cosine_heatmap(v, target=etf, order=order, labels=labels)
    assert len(axes) == 2
    cos = hand_cosines(v)
    np.testing.assert_allclose(image_data(axes[0]), cos[np.ix_(order, order)], atol=1e-12)
    np.testing.assert_allclose(image_data(axes[1]), (cos - etf)[np.ix_(order, order)], atol=1e-12)
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["c", "a", "d", "b"]
    vmin, vmax = axes[1].collections[0].get_clim()
    assert vmin == -vmax  # diverging colormap centred at 0
    # an exact simplex ETF has zero deviation
    simplex = np.eye(k) - 1 / k
    _, axes = cosine_heatmap(simplex, target=etf)
    np.testing.assert_allclose(image_data(axes[1]), 0, atol=1e-12)


def test_cosine_heatmap_errors() -> None:
    v = np.ones((3, 2)) + np.eye(3, 2)
    with pytest.raises(ValueError, match=r"shape \[K, D\]"):
        cosine_heatmap(np.ones(3))
    with pytest.raises(ValueError, match=r"target must have shape \[K, K\] = \(3, 3\)"):
        cosine_heatmap(v, target=np.eye(2))
    for order in ([0, 1, 1], [0, 1], [1, 2, 3], [0.0, 1.0, 2.0]):
        with pytest.raises(ValueError, match=r"permutation of range\(3\)"):
            cosine_heatmap(v, order=order)  # type: ignore[arg-type]
    bad = v.copy()
    bad[0, 0] = bad[1, 1] = np.nan
    bad[2, 0] = np.inf
    with pytest.raises(ValueError, match="2 NaN and 1 Inf"):
        cosine_heatmap(bad)
    target = np.eye(3)
    target[0, 1] = np.nan
    with pytest.raises(ValueError, match="target contain 1 NaN"):
        cosine_heatmap(v, target=target)
    with pytest.raises(ValueError, match="zero vectors"):
        cosine_heatmap(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="2 labels for K=3"):
        cosine_heatmap(v, labels=["a", "b"])


# ---------------------------------------------------------------------------- sweep and bars
def test_variability_sweep() -> None:
    x = [1, 2, 4, 8]
    values = {"linear": [0.5, 0.4, 0.3, 0.2], "etf": [0.3, 0.2, 0.1, 0.05]}
    _, ax = variability_sweep(x, values)
    assert len(ax.lines) == 2
    np.testing.assert_array_equal(line_xy(ax.lines[1])[0], x)
    np.testing.assert_array_equal(line_xy(ax.lines[1])[1], values["etf"])
    assert ax.get_xlabel() == "subspace dim k"
    with pytest.raises(ValueError, match=r"values\['etf'\] has shape \(3,\), x has shape \(4,\)"):
        variability_sweep(x, {"etf": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="values is empty"):
        variability_sweep(x, {})
    with pytest.raises(ValueError, match="1 NaN"):
        variability_sweep(x, {"etf": [1.0, 2.0, float("nan"), 3.0]})


def test_recall_bars() -> None:
    recalls = {"linear": {1: 0.6, 5: 0.8, 10: 0.9}, "etf": {1: 0.7, 10: 0.95}}
    _, ax = recall_bars(recalls)
    assert len(ax.containers) == 2
    heights = [[p.get_height() for p in c] for c in ax.containers]
    assert heights == [[0.6, 0.8, 0.9], [0.7, 0.95]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["R@1", "R@5", "R@10"]
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        recall_bars({"a": {1: 1.5}})
    with pytest.raises(ValueError, match="recalls is empty"):
        recall_bars({})


# ---------------------------------------------------------------------------- saving
def mixed_figure() -> Figure:
    """Lines on a log axis, mathtext, text, an image with a colorbar: each kind of artist."""
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    cosine_heatmap(np.eye(4) - 0.25, axes=ax0)
    spectra({"Σ_W": [3.0, 1.0, 0.1, 0.0], "Σ_B": [2.0, 1.0]}, ax=ax1)
    return fig


def render_twice(tmp_path: Path, fmt: str) -> tuple[bytes, bytes]:
    out = []
    for i in range(2):
        fig = mixed_figure()
        (path,) = save_figure(fig, tmp_path / f"render{i}", formats=(fmt,))
        out.append(path.read_bytes())
    return out[0], out[1]


@pytest.mark.parametrize("fmt", ["pdf", "png"])
def test_save_figure_byte_reproducible(tmp_path: Path, fmt: str) -> None:
    a, b = render_twice(tmp_path, fmt)
    assert len(a) > 1000
    assert a == b


def test_save_figure_svg_reproducible(tmp_path: Path) -> None:
    out = [
        save_figure(spectra({"Σ_W": [2.0, 1.0]})[0], tmp_path / f"s{i}", formats=("svg",))[0]
        for i in range(2)
    ]
    assert out[0].read_bytes() == out[1].read_bytes()


def test_save_figure_pdf_truetype_no_date(tmp_path: Path) -> None:
    fig, _ = spectra({"Σ_W": [3.0, 1.0]})
    (pdf,) = save_figure(fig, tmp_path / "spec", formats=("pdf",))
    data = pdf.read_bytes()
    assert b"/FontFile2" in data  # embedded TrueType (fonttype 42)
    assert b"/Type3" not in data
    assert b"CreationDate" not in data


def test_save_figure_paths_and_errors(tmp_path: Path) -> None:
    fig, _ = spectra({"a": [1.0]})
    paths = save_figure(fig, tmp_path / "fig.v2", formats=("pdf", "png", "pdf"))
    assert paths == [tmp_path / "fig.v2.pdf", tmp_path / "fig.v2.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    with pytest.raises(ValueError, match="unsupported formats"):
        save_figure(fig, tmp_path / "x", formats=("jpg",))
    with pytest.raises(ValueError, match="formats is empty"):
        save_figure(fig, tmp_path / "x", formats=())
    with pytest.raises(FileNotFoundError):
        save_figure(fig, tmp_path / "missing" / "x")


def test_save_figure_atomic_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fig, _ = spectra({"a": [1.0]})
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")

    def broken(fh: Any, **kwargs: Any) -> None:
        fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, tmp_path / "fig", formats=("png",))
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["fig.png"]  # no temporary file left behind


# ---------------------------------------------------------------------------- render_all
def test_render_all_writes_documented_files(tmp_path: Path) -> None:
    k = 4
    etf = (k * np.eye(k) - np.ones((k, k))) / (k - 1)
    rng = np.random.default_rng(2)
    rows = make_rows(runs=("etf",), metrics=("nc1", "accuracy"))
    paths = render_all(
        rows,
        out_dir=tmp_path / "figs",
        spectra_by_run={"etf": {"Σ_W": [1.0, 0.1], "Σ_B": [3.0, 2.0, 1.0]}},
        means_by_run={"etf": rng.normal(size=(k, 5)), "gcr/k2": rng.normal(size=(k, 5))},
        targets_by_run={"etf": etf},
        sweep={"x": [1, 2], "values": {"etf": [0.2, 0.1]}},
        recalls={"etf": {1: 0.5, 5: 0.9}},
        formats=("png",),  # pdf output is covered by the save_figure tests
    )
    names = [p.name for p in paths]
    stems = [
        "nc_trajectories_train",
        "nc_trajectories_test",
        "accuracy",
        "spectra_etf",
        "cosines_etf",
        "cosines_gcr_k2",
        "variability_sweep",
        "recall_bars",
    ]
    assert names == [f"{s}.png" for s in stems]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert sorted(os.listdir(tmp_path / "figs")) == sorted(names)


def test_render_all_only_what_is_there(tmp_path: Path) -> None:
    rows = make_rows(splits=("train",), metrics=("nc1",))
    paths = render_all(rows, out_dir=tmp_path, formats=("pdf",))
    assert [p.name for p in paths] == ["nc_trajectories_train.pdf"]
    assert paths[0].read_bytes().startswith(b"%PDF")
    with pytest.raises(ValueError, match="rows is empty"):
        render_all([], out_dir=tmp_path)
    with pytest.raises(ValueError, match="without means_by_run"):
        render_all(rows, out_dir=tmp_path, targets_by_run={"x": np.eye(2)})


def test_render_report_reads_the_results_database(tmp_path: Path) -> None:
    from analysis.store import ResultsStore

    rows = make_rows(runs=("etf",), splits=("train",), metrics=("nc1",))
    with ResultsStore(tmp_path) as store:
        store.upsert_run("etf", {})
        for r in rows:
            store.store_checkpoint(
                "etf",
                r["checkpoint"],
                path="p",
                sha256="s",
                key="k",
                epoch=r["epoch"],
                step=r["step"],
                layout="",
                metrics={"fc": {r["split"]: {r["metric"]: r["value"]}}},
            )
        store.export()
    paths = render_report(tmp_path / "report.json", tmp_path / "figs", formats=("png",))
    assert paths == [tmp_path / "figs" / "nc_trajectories_train.png"]
    assert paths[0].stat().st_size > 0


def test_nc_trajectories_two_checkpoints_at_one_epoch() -> None:
    rows = make_rows(runs=("a",), splits=("train",), metrics=("nc1",))
    rows.append({**rows[-1], "checkpoint": "final.pt", "value": 5e-5})
    _, axes = nc_trajectories(rows, metrics=("nc1",))
    x, y = line_xy(axes[0].lines[0])
    np.testing.assert_array_equal(x, [*EPOCHS, EPOCHS[-1]])
    assert y[-1] == pytest.approx(5e-5, rel=1e-14)  # seaborn's log10 round trip


# ---------------------------------------------------------------- depth and hierarchy figures
def layered_rows() -> list[dict[str, Any]]:
    rows = []
    for e in (1, 2, 3):
        for depth, layer in enumerate(("conv", "mid", "fc")):
            for metric in ("nc1", "cdnv"):
                rows.append(
                    {
                        "run": "a",
                        "checkpoint": f"ep{e}",
                        "epoch": e,
                        "step": None,
                        "split": "test",
                        "layer": layer,
                        "metric": metric,
                        "value": 10.0 ** (-depth) / e,
                    }
                )
        rows.append({**rows[-1], "metric": "accuracy", "value": 0.5 + 0.1 * e})
    return rows


def test_depth_profile_lines_per_checkpoint_in_layer_order() -> None:
    fig, axes = plots.depth_profile(layered_rows(), run="a", split="test")
    assert [ax.get_title() for ax in axes][1] == "cdnv"
    lines = [ln for ln in axes[0].lines if len(ln.get_xdata()) == 3]
    assert len(lines) == 3  # one per checkpoint
    ys = sorted(tuple(line_xy(ln)[1]) for ln in lines)
    assert ys[0] == pytest.approx((1 / 3, 1 / 30, 1 / 300))  # conv, mid, fc at x = 0, 1, 2
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["conv", "mid", "fc"]
    assert "a: collapse across layers, test split" in fig.get_suptitle()
    with pytest.raises(ValueError, match="2\\+ layers"):
        plots.depth_profile([r for r in layered_rows() if r["layer"] == "fc"], run="a")


def test_hierarchy_figures_show_each_run_at_its_last_checkpoint() -> None:
    rows = []
    for run, (err, sev) in {"x": (0.1, 2.0), "y": (0.2, 1.0)}.items():
        for e in (1, 2):
            for metric, value in (
                ("top1_error", err * e),
                ("mistake_severity", sev * e),
                ("hdist@1_mean", 0.5 * e),
                ("hdist@5_mean", 1.5 * e),
            ):
                rows.append(
                    {
                        "run": run,
                        "checkpoint": f"e{e}",
                        "epoch": e,
                        "step": None,
                        "split": "test",
                        "layer": "fc",
                        "metric": metric,
                        "value": value,
                    }
                )
    _fig, ax = plots.severity_tradeoff(rows)
    pts = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(map(tuple, pts.tolist())) == [(0.2, 4.0), (0.4, 2.0)]  # epoch 2 only
    assert ax.get_title() == "severity vs error (test, epoch 2)"
    _fig, ax = plots.hierarchical_distance_curves(rows)
    data = [line_xy(ln) for ln in ax.lines if len(ln.get_xdata()) == 2]
    assert sorted(tuple(y) for _, y in data) == [(1.0, 3.0), (1.0, 3.0)]
    with pytest.raises(ValueError, match="mistake_severity"):
        plots.severity_tradeoff([r for r in rows if r["metric"] != "mistake_severity"])


def test_render_all_uses_the_classifier_layer_for_trajectories(tmp_path: Path) -> None:
    paths = render_all(layered_rows(), out_dir=tmp_path, formats=("png",))
    assert sorted(p.name for p in paths) == [
        "accuracy.png",
        "depth_a.png",
        "nc_trajectories_test.png",
    ]
    rows = plots._classifier_rows(layered_rows())
    _fig, axes = nc_trajectories(rows, metrics=("nc1",), split="test")
    (ln,) = [ln for ln in axes[0].lines if len(ln.get_xdata()) == 3]
    np.testing.assert_allclose(line_xy(ln)[1], [1e-2, 1e-2 / 2, 1e-2 / 3])  # the fc layer only


def test_spectra_drop_round_off_and_say_so() -> None:
    lam = np.array([2.0, 1.0, 1e-10, 3e-15, 1e-40])  # D = 5: threshold 5·eps·2 ≈ 2.2e-15
    _, ax = spectra({"Σ_W": lam}, title="run, epoch 3, train split")
    np.testing.assert_array_equal(line_xy(ax.lines[0])[1], [2.0, 1.0, 1e-10, 3e-15])
    lam[3] = 1e-16
    _, ax = spectra({"Σ_W": lam})
    np.testing.assert_array_equal(line_xy(ax.lines[0])[1], [2.0, 1.0, 1e-10])
    assert any("2 below D·ε·λmax" in t for t in panel_texts(ax))


def test_variability_sweep_integer_ticks() -> None:
    _, ax = variability_sweep([1, 2, 4, 8], {"train": [0.1, 0.2, 0.3, 0.4]})
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8"]
    _, ax = variability_sweep([1, 2, 3], {"train": [0.1, 0.2, 0.3]})
    assert list(ax.get_xticks()) == [1, 2, 3]
