"""docs/cli.md's worked example runs exactly as written: its files, its commands, its manifest."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.report import Report

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
_BLOCK = re.compile(r"```(\w+)(?: title=\"([^\"]+)\")?\n(.*?)```", re.S)


def _blocks(section: str) -> list[tuple[str, str | None, str]]:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(section)
    end = text.find("\n## ", start)
    return _BLOCK.findall(text[start : end if end != -1 else None])


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield tmp_path
    for name in ("mymodels", "mydata"):
        sys.modules.pop(name, None)


def test_worked_example_runs_as_documented(user_dir: Path, capsys) -> None:
    blocks = _blocks("### Worked example")
    files = {title: body for lang, title, body in blocks if title}
    assert set(files) == {"mymodels.py", "mydata.py", "train.py", "digits_tree.txt"}
    for name, body in files.items():
        (user_dir / name).write_text(body)
    (commands,) = [body for lang, title, body in blocks if lang == "bash"]
    lines = [ln for ln in commands.splitlines() if ln.strip()]
    setup, *geomtools = lines
    subprocess.run(
        setup.replace("python ", f"{sys.executable} "), shell=True, check=True, timeout=300
    )
    assert sorted(p.name for p in (user_dir / "ck" / "etf").iterdir()) == [
        "epoch1.pt",
        "epoch2.pt",
        "epoch3.pt",
    ]
    runs_seen = []
    for line in geomtools:
        argv = shlex.split(line)
        assert argv[0] == "geomtools"
        assert main(argv[1:]) == 0, line
        if (user_dir / "results" / "results.sqlite").exists():
            runs_seen.append(list(dict.fromkeys(r["run"] for r in Report.read("results").rows)))
    # after the second analyze both runs are in one report; forget leaves only `linear`
    assert runs_seen[1] == ["linear", "etf"]
    assert runs_seen[-1] == ["linear"]
    deep = Report.read(user_dir / "deep")
    assert list(dict.fromkeys(r["layer"] for r in deep.rows)) == ["backbone.1", "head"]
    assert 0 < deep.value("linear", "test", "mistake_severity") <= 2  # the tree's height is 2
    figures = {p.name for p in (user_dir / "deep" / "figures").iterdir()}
    assert {"depth_linear.png", "severity_tradeoff.png", "hierarchical_distance.png"} <= figures
    out = capsys.readouterr().out
    assert "part1: 0 checkpoint(s) merged" in out
    rep = Report.read(user_dir / "results" / "report.csv")
    assert rep.value("linear", "test", "accuracy") > 0.8  # digits, 3 epochs
    assert (user_dir / "results" / "figures" / "accuracy.png").stat().st_size > 1000

    # the manifest section names the same folders: it analyses both runs in one call
    (manifest,) = [body for lang, title, body in _blocks("### A manifest") if lang == "toml"]
    (user_dir / "runs.toml").write_text(manifest)
    assert main(["analyze", "--config", "runs.toml", "--out", "viaconfig", "--no-progress"]) == 0
    both = Report.read("viaconfig")
    assert list(dict.fromkeys(r["run"] for r in both.rows)) == ["linear", "etf"]
    assert both.value("linear", "test", "nc1") == pytest.approx(
        rep.value("linear", "test", "nc1"), rel=1e-9
    )
    assert {r["layer"] for r in both.rows if r["run"] == "etf"} == {"head"}
