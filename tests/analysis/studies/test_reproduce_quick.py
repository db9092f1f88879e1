"""Every study end to end in quick mode, twice: outputs complete, CSVs byte-identical (slow job)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.studies import STUDIES
from analysis.studies.study import CSV_COLUMNS, NOT_REPRODUCED, REPRODUCED


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STUDIES))
def test_quick_twice_identical(name: str, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["reproduce", name, "--quick", "--out", str(first), "--no-progress"]) == 0
    assert main(["reproduce", name, "--quick", "--out", str(second), "--no-progress"]) == 0
    folder = first / name
    table = (folder / f"{name}.csv").read_bytes()
    assert table == (second / name / f"{name}.csv").read_bytes()
    with open(folder / f"{name}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == list(CSV_COLUMNS)
    assert {r["seed"] for r in rows} == {"0"}  # quick mode: one seed
    finite = [math.isfinite(float(r["value"])) for r in rows]
    assert sum(finite) > 0.5 * len(rows)
    summary = (folder / "summary.md").read_text()
    verdicts = [line for line in summary.splitlines() if line.startswith("- **")]
    assert verdicts and all(
        line.startswith((f"- **{REPRODUCED}**", f"- **{NOT_REPRODUCED}**")) for line in verdicts
    )
    pdfs = sorted(p.stem for p in (folder / "figures").glob("*.pdf"))
    pngs = sorted(p.stem for p in (folder / "figures").glob("*.png"))
    assert pdfs and pdfs == pngs
    assert not list(first.glob(".*"))  # no staging folder left
