"""The study driver: staging folder, atomic replacement, CSV bytes, summary and CLI errors."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
import torch

from analysis.cli import main
from analysis.studies import STUDIES, study_module
from analysis.studies.study import (
    Claim,
    StudyContext,
    StudyResult,
    format_mean_std,
    last_epoch_values,
    run_study,
    summary_table,
)


def _module(run: Any, name: str = "toy") -> types.ModuleType:
    mod = types.ModuleType(f"toy_{name}")
    mod.NAME = name  # type: ignore[attr-defined]
    mod.TITLE = "Toy study"  # type: ignore[attr-defined]
    mod.CLAIM = "numbers exist."  # type: ignore[attr-defined]
    mod.PAPER = "Nobody 2026"  # type: ignore[attr-defined]
    mod.run = run  # type: ignore[attr-defined]
    return mod


def _toy_run(ctx: StudyContext) -> StudyResult:
    rows = []
    for seed in ctx.seeds:
        g = torch.Generator().manual_seed(seed)
        for epoch in (1, 2):
            for variant in ("b", "a"):
                value = float(torch.rand((), generator=g, dtype=torch.float64))
                rows.append(
                    {
                        "seed": seed,
                        "variant": variant,
                        "epoch": epoch,
                        "split": "test",
                        "metric": "accuracy",
                        "value": value,
                    }
                )
    ctx.save_checkpoint(torch.nn.Linear(2, 2), "a", 0, 1)
    assert torch.get_num_threads() == 1
    return StudyResult(
        rows=rows,
        claims=[Claim("a beats nothing.", True, "(a = 1 > 0)"), Claim("b.", False, "(0 < 1)")],
        table=[("accuracy", "test", "test accuracy")],
        setup="two variants",
        notes=["a note"],
    )


def test_outputs_and_bytes(tmp_path: Path) -> None:
    out = run_study(_module(_toy_run), tmp_path, seeds=2, progress=False)
    folder = tmp_path / "toy"
    assert out.folder == folder
    csv = (folder / "toy.csv").read_text()
    lines = csv.splitlines()
    assert lines[0] == "seed,variant,epoch,split,metric,value"
    assert len(lines) == 1 + 2 * 2 * 2
    # sorted by variant, seed, epoch: a first
    assert lines[1].startswith("0,a,1,test,accuracy,")
    # values round-trip exactly
    first = float(lines[1].split(",")[-1])
    g = torch.Generator().manual_seed(0)
    torch.rand((), generator=g, dtype=torch.float64)  # b's draw comes first in the toy
    assert first == float(torch.rand((), generator=g, dtype=torch.float64))
    summary = (folder / "summary.md").read_text()
    assert "**reproduced** — a beats nothing. (a = 1 > 0)" in summary
    assert "**not reproduced at this scale** — b." in summary
    assert "--seeds 2" in summary and "## Set-up" in summary and "a note" in summary
    assert (folder / "checkpoints" / "a-s0" / "epoch001.pt").is_file()
    assert not list(tmp_path.glob(".toy.*"))
    # a second call refuses, with force replaces; identical CSV bytes
    with pytest.raises(FileExistsError, match="--force"):
        run_study(_module(_toy_run), tmp_path, seeds=2, progress=False)
    run_study(_module(_toy_run), tmp_path, seeds=2, progress=False, force=True)
    assert (folder / "toy.csv").read_text() == csv


def test_failure_keeps_previous(tmp_path: Path) -> None:
    run_study(_module(_toy_run), tmp_path, seeds=1, progress=False)
    before = (tmp_path / "toy" / "toy.csv").read_bytes()

    def boom(ctx: StudyContext) -> StudyResult:
        (ctx.folder / "half.txt").write_text("x")
        raise KeyboardInterrupt

    threads = torch.get_num_threads()
    with pytest.raises(KeyboardInterrupt):
        run_study(_module(boom), tmp_path, seeds=1, progress=False, force=True)
    assert torch.get_num_threads() == threads
    assert (tmp_path / "toy" / "toy.csv").read_bytes() == before
    assert not (tmp_path / "toy" / "half.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_failure_while_replacing_restores_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_study(_module(_toy_run), tmp_path, seeds=1, progress=False)
    before = (tmp_path / "toy" / "toy.csv").read_bytes()
    real_rename = Path.rename

    def rename(self: Path, target: Path) -> Path:  # the staging folder cannot be moved in
        if self.name.startswith(".toy.partial-"):
            raise OSError("disk gone")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        run_study(_module(_toy_run), tmp_path, seeds=2, progress=False, force=True)
    monkeypatch.undo()
    assert (tmp_path / "toy" / "toy.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_concurrent_calls_have_their_own_staging(tmp_path: Path) -> None:
    seen: list[Path] = []

    def nested(ctx: StudyContext) -> StudyResult:
        seen.append(ctx.folder)
        if len(seen) == 1:  # a second call of the same study into DIR while the first runs
            run_study(_module(_toy_run), tmp_path, seeds=1, progress=False)
        assert ctx.folder.is_dir()  # not removed by the other call
        return _toy_run(ctx)

    with pytest.raises(FileExistsError, match="created by another run") as err:
        run_study(_module(nested), tmp_path, seeds=2, progress=False)
    # neither result is lost: the other run's in DIR/toy, this one's beside it
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("toy-")]
    assert len(kept) == 1 and str(kept[0]) in str(err.value)
    assert len((kept[0] / "toy.csv").read_text().splitlines()) == 1 + 2 * 2 * 2  # 2 seeds
    assert len((tmp_path / "toy" / "toy.csv").read_text().splitlines()) == 1 + 2 * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["toy", kept[0].name])


def test_settings_reach_the_study(tmp_path: Path) -> None:
    got: list[Any] = []

    def run(ctx: StudyContext, settings: Any = None) -> StudyResult:
        got.append(settings)
        return _toy_run(ctx)

    run_study(_module(run), tmp_path, seeds=1, progress=False)
    run_study(_module(run), tmp_path, seeds=1, progress=False, force=True, settings="tiny")
    assert got == [None, "tiny"]  # None: the study's own preset


def test_bad_rows_refused(tmp_path: Path) -> None:
    def dup(ctx: StudyContext) -> StudyResult:
        row = {"seed": 0, "variant": "a", "epoch": 1, "split": "", "metric": "m", "value": 1.0}
        return StudyResult(rows=[row, dict(row)], claims=[])

    with pytest.raises(ValueError, match="row twice"):
        run_study(_module(dup), tmp_path, progress=False)

    def missing(ctx: StudyContext) -> StudyResult:
        return StudyResult(rows=[{"seed": 0, "variant": "a", "value": 1.0}], claims=[])

    with pytest.raises(ValueError, match="row 0 has keys"):
        run_study(_module(missing), tmp_path, progress=False)
    assert not (tmp_path / "toy").exists()


def test_mean_std_and_table() -> None:
    assert format_mean_std([1.0, 2.0, 3.0]) == "2 ± 1"
    assert format_mean_std([0.5]) == "0.5"
    assert format_mean_std([]) == "—"
    assert format_mean_std([1.0, float("nan")]) == "1 (1 non-finite)"
    rows = [
        {"seed": s, "variant": "v", "epoch": e, "split": "test", "metric": "m", "value": float(v)}
        for s, e, v in [(0, 1, 9), (0, 2, 1), (1, 2, 3), (1, 1, 9)]
    ]
    assert last_epoch_values(rows, "m", "test") == {"v": {0: 1.0, 1: 3.0}}
    table = summary_table(rows, [("m", "test", "M")], ["v"])
    assert table.splitlines()[2] == "| v | 2 ± 1.41 |"
    assert summary_table(rows, [("m", "test", "M")], ["w", "v"]).splitlines()[2] == "| w | — |"


def test_table_variants_limit_the_summary(tmp_path: Path) -> None:
    def run(ctx: StudyContext) -> StudyResult:
        result = _toy_run(ctx)
        result.table_variants = ["b"]
        return result

    run_study(_module(run), tmp_path, seeds=1, progress=False)
    summary = (tmp_path / "toy" / "summary.md").read_text()
    assert "| b |" in summary and "| a |" not in summary


def test_registry_and_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert list(STUDIES) == ["gcr", "haframe", "lorentz", "gcp", "intl"]
    with pytest.raises(ValueError, match="unknown study"):
        study_module("nope")
    (tmp_path / "gcr").mkdir()
    assert main(["reproduce", "gcr", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; pass --force" in err
    assert main(["reproduce", "gcr", "--out", str(tmp_path), "--seeds", "0"]) == 2
    assert "--seeds must be ≥ 1" in capsys.readouterr().err
    file = tmp_path / "f"
    file.write_text("")
    assert main(["reproduce", "gcr", "--out", str(file), "--quick", "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err
