"""The HAFrame study: a tiny end-to-end run through the driver, and its decision rules."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest

from analysis.studies import haframe
from analysis.studies.haframe import (
    FRAME_DISTANCE_MAX,
    METRICS,
    TOP1_TOLERANCE,
    VARIANTS,
    Settings,
    claims_from_rows,
    collapse_claim,
    severity_claim,
)
from analysis.studies.study import NOT_REPRODUCED, REPRODUCED, run_study

#: a few seconds: 18 classes × 8 signals, 2 epochs, both analysed
TINY = Settings(epochs=2, eval_every=1, per_class=8, channels=4, feature_dim=18, batch_size=32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("haframe")
    result = run_study(haframe, out, settings=TINY, seeds=2, quick=True, progress=False)
    with (result.folder / "haframe.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return result.folder, rows


def test_tiny_run_has_every_row(tiny_run: tuple[Path, list[dict[str, Any]]]) -> None:
    _, rows = tiny_run
    keys = {(r["seed"], r["variant"], r["epoch"], r["split"], r["metric"]) for r in rows}
    want = {
        (str(seed), variant, str(epoch), split, metric)
        for seed in (0, 1)
        for variant in VARIANTS
        for epoch in (1, 2)
        for split in ("train", "test")
        for metric in METRICS
    }
    assert keys == want
    assert len(rows) == len(want)


def test_tiny_run_values_in_range(tiny_run: tuple[Path, list[dict[str, Any]]]) -> None:
    _, rows = tiny_run
    val = {
        (r["seed"], r["variant"], r["epoch"], r["split"], r["metric"]): float(r["value"])
        for r in rows
    }
    for (seed, variant, epoch, split, metric), v in val.items():
        if metric == "mistake_severity":  # undefined (NaN) only without mistakes
            assert math.isnan(v) or 1.0 <= v <= 3.0
            continue
        assert math.isfinite(v), (seed, variant, epoch, split, metric)
        if metric in ("accuracy", "top1_error"):
            assert 0.0 <= v <= 1.0
        elif metric.startswith("hdist@"):
            assert 0.0 <= v <= 3.0
        elif metric in ("frame_distance", "etf_distance"):
            assert 0.0 <= v <= 2.0
        elif metric == "nc1":
            assert v >= 0.0
        if metric == "accuracy":  # the pipeline's two error measures agree
            top1 = val[(seed, variant, epoch, split, "top1_error")]
            assert v + top1 == pytest.approx(1.0, abs=1e-12)


def test_tiny_run_writes_figures_checkpoints_and_verdicts(
    tiny_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    folder, _ = tiny_run
    for stem in (
        "haframe_severity_vs_top1",
        "haframe_hdist_at_k",
        "haframe_collapse",
        "haframe_test_curves",
    ):
        for ext in ("pdf", "png"):
            assert (folder / "figures" / f"{stem}.{ext}").stat().st_size > 0
    for variant in VARIANTS:
        for seed in (0, 1):
            ck = folder / "checkpoints" / f"{variant}-s{seed}"
            assert sorted(p.name for p in ck.iterdir()) == ["epoch001.pt", "epoch002.pt"]
    assert (folder / "hierarchy.txt").read_text(encoding="utf-8").count("\n") == 3 + 6 + 18
    summary = (folder / "summary.md").read_text(encoding="utf-8")
    assert summary.count("**reproduced**") + summary.count(f"**{NOT_REPRODUCED}**") == 2
    assert "rule:" in summary


def test_claims_from_rows_reads_last_epoch_and_first_epoch() -> None:
    rows: list[dict[str, Any]] = []

    def add(seed: int, variant: str, epoch: int, split: str, metric: str, value: float) -> None:
        rows.append(
            {"seed": seed, "variant": variant, "epoch": epoch, "split": split, "metric": metric}
            | {"value": value}
        )

    for seed in (0, 1, 2):
        for variant, sev, err in (
            ("linear", 1.6, 0.20),
            ("etf", 1.55, 0.21),
            ("haframe", 1.3, 0.2),
        ):
            add(seed, variant, 5, "test", "mistake_severity", 9.0)  # an early epoch: ignored
            add(seed, variant, 10, "test", "mistake_severity", sev)
            add(seed, variant, 10, "test", "top1_error", err)
        add(seed, "haframe", 1, "train", "frame_distance", 1.2)
        add(seed, "haframe", 10, "train", "frame_distance", 0.02)
    sev_claim, collapse = claims_from_rows(rows)
    assert sev_claim.holds and collapse.holds
    assert "1.300 vs linear 1.600" in sev_claim.evidence
    assert "0.0200 at epoch 10 vs 1.2000 at epoch 1" in collapse.evidence


# ---------------------------------------------------------------------------- decision rules
def _by_seed(**means: list[float]) -> dict[str, dict[int, float]]:
    return {v: dict(enumerate(vals)) for v, vals in means.items()}


def test_severity_claim_passes_when_lower_at_equal_top1() -> None:
    sev = _by_seed(linear=[1.6, 1.5, 1.55], etf=[1.5, 1.6, 1.5], haframe=[1.3, 1.4, 1.35])
    err = _by_seed(linear=[0.20, 0.21, 0.20], etf=[0.2, 0.2, 0.2], haframe=[0.21, 0.21, 0.21])
    claim = severity_claim(sev, err)
    assert claim.holds and claim.verdict == REPRODUCED
    assert "lower in 3/3 seeds" in claim.evidence and "rule:" in claim.evidence


def test_severity_claim_fails_on_higher_severity() -> None:
    sev = _by_seed(linear=[1.6, 1.5, 1.55], etf=[1.3, 1.3, 1.3], haframe=[1.35, 1.4, 1.35])
    err = _by_seed(linear=[0.2] * 3, etf=[0.2] * 3, haframe=[0.2] * 3)
    claim = severity_claim(sev, err)
    assert not claim.holds and claim.verdict == NOT_REPRODUCED
    assert "severity not met" in claim.evidence


def test_severity_claim_needs_a_majority_of_seeds() -> None:
    # lower in the mean (one large win) but higher in two of three seeds
    sev = _by_seed(linear=[2.0, 1.5, 1.5], etf=[2.0, 1.5, 1.5], haframe=[1.0, 1.55, 1.55])
    err = _by_seed(linear=[0.2] * 3, etf=[0.2] * 3, haframe=[0.2] * 3)
    claim = severity_claim(sev, err)
    assert not claim.holds
    assert "lower in 1/3 seeds" in claim.evidence


def test_severity_claim_top1_tolerance() -> None:
    sev = _by_seed(linear=[1.6] * 3, etf=[1.6] * 3, haframe=[1.3] * 3)
    best = 0.20
    at = _by_seed(linear=[best] * 3, etf=[0.25] * 3, haframe=[best + TOP1_TOLERANCE - 1e-9] * 3)
    over = _by_seed(linear=[best] * 3, etf=[0.25] * 3, haframe=[best + TOP1_TOLERANCE + 1e-3] * 3)
    assert severity_claim(sev, at).holds
    claim = severity_claim(sev, over)
    assert not claim.holds and "top-1 not met" in claim.evidence
    better = _by_seed(linear=[best] * 3, etf=[0.25] * 3, haframe=[0.1] * 3)
    assert severity_claim(sev, better).holds  # a better top-1 is "at least equal"


def test_severity_claim_rejects_missing_variants() -> None:
    sev = _by_seed(linear=[1.6], etf=[1.6])
    err = _by_seed(linear=[0.2], etf=[0.2], haframe=[0.2])
    with pytest.raises(ValueError, match="haframe"):
        severity_claim(sev, err)


def test_collapse_claim_rule() -> None:
    first = {0: 1.2, 1: 1.0}
    ok = collapse_claim(first, {0: 0.01, 1: 0.03}, first_epoch=1, last_epoch=100)
    assert ok.holds and "rule:" in ok.evidence
    too_far = collapse_claim(first, {0: 0.3, 1: 0.3}, first_epoch=1, last_epoch=100)
    assert not too_far.holds
    # small, but not a quarter of where it started: no collapse *towards* the frame
    flat = collapse_claim({0: 0.06}, {0: FRAME_DISTANCE_MAX - 0.01}, first_epoch=1, last_epoch=100)
    assert not flat.holds
    with pytest.raises(ValueError):
        collapse_claim({}, {0: 0.0}, first_epoch=1, last_epoch=2)


def test_settings_validation_and_eval_epochs() -> None:
    assert Settings(epochs=10, eval_every=4).eval_epochs() == [1, 4, 8, 10]
    assert Settings(epochs=1, eval_every=5).eval_epochs() == [1]
    with pytest.raises(ValueError, match="epochs"):
        Settings(epochs=0, eval_every=1)
    with pytest.raises(ValueError, match="batch_size"):
        Settings(epochs=1, eval_every=1, batch_size=1)
    with pytest.raises(ValueError, match="gamma"):
        Settings(epochs=1, eval_every=1, gamma=0.0)
    assert haframe.FULL.epochs > haframe.QUICK.epochs
