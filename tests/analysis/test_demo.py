"""`geomtools demo` end to end (2 epochs), `geomtools plot` reproducibility, `geomtools frame`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from analysis import demo
from analysis.cli import main
from analysis.report import Report

RUNS = ["linear", "etf", "haframe", "gcr-k1", "gcr-k2", "gcr-k4"]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    return out


def test_demo_writes_checkpoints_report_and_figures(demo_out: Path) -> None:
    rep = Report.read(demo_out)
    assert list(dict.fromkeys(r["run"] for r in rep.rows)) == RUNS
    for run in RUNS:
        assert sorted(p.name for p in (demo_out / "checkpoints" / run).iterdir()) == [
            "epoch001.pt",
            "epoch002.pt",
        ]
        ckpt = torch.load(demo_out / "checkpoints" / run / "epoch002.pt", weights_only=True)
        assert ckpt["epoch"] == 2
        assert ("head.bases" if run.startswith("gcr") else "head.weight") in ckpt["model"]
        assert rep.value(run, "test", "accuracy") > 0.5  # learned something in 2 epochs
        assert {r["epoch"] for r in rep.rows if r["run"] == run} == {1, 2}
    assert "frame_distance" in {r["metric"] for r in rep.rows if r["run"] == "haframe"}
    assert 0.5 < rep.value("linear", "test", "recall@1") <= rep.value("linear", "test", "recall@8")
    assert "self_duality" not in {r["metric"] for r in rep.rows if r["run"] == "gcr-k2"}
    # three depths, classifier metrics and hierarchy metrics on the head's input only
    layers = list(dict.fromkeys(r["layer"] for r in rep.rows))
    assert layers == ["backbone.0", "backbone.3", "head"]
    by_layer = {la: {r["metric"] for r in rep.rows if r["layer"] == la} for la in layers}
    assert {"accuracy", "mistake_severity", "hdist@5_mean"} <= by_layer["head"]
    assert not {"accuracy", "mistake_severity"} & by_layer["backbone.0"]
    assert (demo_out / "hierarchy.txt").read_text().startswith("# Ward linkage")
    names = {p.name for p in (demo_out / "figures").iterdir()}
    for stem in [
        "nc_trajectories_train",
        "accuracy",
        "spectra_haframe",
        "cosines_gcr-k4",
        "variability_sweep",
        "recall_bars",
        "depth_haframe",
        "severity_tradeoff",
        "hierarchical_distance",
    ]:
        for fmt in ("pdf", "png"):
            assert f"{stem}.{fmt}" in names
            assert (demo_out / "figures" / f"{stem}.{fmt}").stat().st_size > 1000


def test_demo_rerun_reuses_checkpoints_and_cache(demo_out: Path, monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("retrained or reanalysed")

    monkeypatch.setattr(demo, "_train", boom)
    monkeypatch.setattr("analysis.pipeline.analyze_model", boom)
    before = Report.read(demo_out).rows
    demo.run_demo(demo_out, epochs=2, progress=False, figures=False)
    assert Report.read(demo_out).rows == before


def test_plot_is_byte_reproducible(demo_out: Path, tmp_path: Path) -> None:
    # the demo rendered once; `geomtools plot` renders again from the written report
    a, b = demo_out / "figures", tmp_path / "b"
    assert main(["plot", str(demo_out), "--out", str(b)]) == 0
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and len(files) == 50
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_plot_errors(tmp_path: Path, capsys) -> None:
    assert main(["plot", str(tmp_path / "nope.json"), "--out", str(tmp_path / "f")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_frame_command(tmp_path: Path, capsys) -> None:
    isa = tmp_path / "isa.txt"
    isa.write_text("root animal\nroot vehicle\nanimal cat\nanimal dog\nvehicle car\nvehicle bus\n")
    out = tmp_path / "haf.pt"
    assert main(["frame", str(isa), "--gamma", "2", "--dim", "5", "--out", str(out)]) == 0
    blob = torch.load(out, weights_only=True)
    w, s = blob["weight"], blob["similarity"]
    assert w.shape == (4, 5) and blob["classes"] == ["bus", "car", "cat", "dog"]
    torch.testing.assert_close(w @ w.T, s, rtol=0, atol=1e-12)
    assert s[0, 1] > s[0, 2]  # siblings (bus, car) are more similar than cousins (bus, cat)
    assert main(["frame", str(tmp_path / "none.txt"), "--gamma", "2", "--dim", "5"]) == 2
