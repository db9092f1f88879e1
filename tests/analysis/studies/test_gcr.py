"""The GCR study: a tiny run end to end through the driver, and the verdict rules on numbers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from analysis.studies import gcr
from analysis.studies.study import run_study

TINY = gcr.GcrSettings(epochs=2, analyze_every=1, ks=(1, 2), num_samples=1000)
SEEDS = 2


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gcr")
    run_study(gcr, out, settings=TINY, seeds=SEEDS, progress=False)
    return out / "gcr"


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "gcr.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_tiny_run_rows_cover_every_run(tiny_run: Path) -> None:
    rows = _rows(tiny_run)
    keys = {(r["seed"], r["variant"], r["epoch"], r["split"], r["metric"]) for r in rows}
    assert TINY.variants == ["linear", "gcr-k1", "gcr-k2", "linear-10cls"]
    for seed in range(SEEDS):
        for variant in TINY.variants:
            for epoch in range(1, TINY.epochs + 1):
                base = (str(seed), variant, str(epoch))
                assert (*base, "train", "loss") in keys
                assert (*base, "train", "accuracy") in keys
                assert (*base, "test", "accuracy") in keys
                measured = variant != "linear-10cls"  # the anchor is only trained
                assert ((*base, "heldout", "transfer_accuracy") in keys) == measured
                for split in ("train", "test"):
                    for metric in gcr.PIPELINE_METRICS:
                        assert ((*base, split, metric) in keys) == measured
    for r in rows:
        v = float(r["value"])
        if r["metric"] in ("accuracy", "transfer_accuracy", "intra_class_variability"):
            assert 0.0 <= v <= 1.0, r
        elif r["metric"] in ("loss", "nc1", "cdnv"):
            assert v >= 0.0, r
    # a 3-class probe of the features beats chance (1/3) even after two tiny epochs
    transfer = [float(r["value"]) for r in rows if r["metric"] == "transfer_accuracy"]
    assert min(transfer) > 0.4


def test_tiny_run_outputs(tiny_run: Path) -> None:
    summary = (tiny_run / "summary.md").read_text(encoding="utf-8")
    verdicts = [line for line in summary.splitlines() if line.startswith("- **")]
    assert len(verdicts) == 3 and all("rule:" in line for line in verdicts)
    assert "Sanity anchor" in summary
    for stem in (
        "gcr_variability",
        "gcr_variability_epochs",
        "gcr_top1",
        "gcr_transfer",
        "gcr_curves",
    ):
        for ext in ("pdf", "png"):
            assert (tiny_run / "figures" / f"{stem}.{ext}").is_file()
    ckpts = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert ckpts == sorted(f"{v}-s{s}" for v in TINY.variants for s in range(SEEDS))
    assert (tiny_run / "checkpoints" / "gcr-k2-s1" / "epoch002.pt").is_file()
    assert (tiny_run / "analysis").is_dir()


def _per_run(values: dict[str, list[float]]) -> dict[str, dict[int, float]]:
    return {v: dict(enumerate(vals)) for v, vals in values.items()}


def test_top1_rule() -> None:
    ks = (1, 2)
    variability = _per_run({"gcr-k1": [0.1, 0.1], "gcr-k2": [0.2, 0.2]})
    ok = _per_run({"linear": [0.95, 0.95], "gcr-k1": [0.941, 0.941], "gcr-k2": [0.97, 0.96]})
    c = gcr.decide_claims(ok, variability, variability, ks)[0]
    assert c.holds and "rule: every k ≥ linear − 0.01" in c.evidence
    assert "linear 0.950" in c.evidence
    bad = _per_run({"linear": [0.95, 0.95], "gcr-k1": [0.93, 0.935], "gcr-k2": [0.97, 0.96]})
    c = gcr.decide_claims(bad, variability, variability, ks)[0]
    assert not c.holds and "lowest k=1" in c.evidence
    missing = _per_run({"gcr-k1": [0.9]})
    assert not gcr.decide_claims(missing, variability, variability, ks)[0].holds


def test_trend_rules() -> None:
    ks = (8, 1, 2, 4)  # order does not matter
    top1 = _per_run({"linear": [0.9], "gcr-k1": [0.9]})
    rising = _per_run(
        {
            "linear": [0.3, 0.3, 0.3],
            "gcr-k1": [0.40, 0.42, 0.41],
            "gcr-k2": [0.43, 0.41, 0.45],
            "gcr-k4": [0.47, 0.46, 0.48],
            "gcr-k8": [0.50, 0.52, 0.49],
        }
    )
    _, var, tr = gcr.decide_claims(top1, rising, rising, ks)
    assert var.holds and tr.holds
    assert "over 12 runs" in var.evidence and "mean at k=8 > mean at k=1" in var.evidence
    assert "linear head 0.300" in var.evidence
    flat = _per_run(
        {
            "gcr-k1": [0.45, 0.40, 0.50],
            "gcr-k2": [0.44, 0.49, 0.41],
            "gcr-k4": [0.50, 0.42, 0.46],
            "gcr-k8": [0.47, 0.43, 0.48],
        }
    )
    _, var, _ = gcr.decide_claims(top1, flat, rising, ks)
    assert not var.holds  # mean rises a little, but the rank correlation is weak
    falling = {v: {s: -x for s, x in d.items()} for v, d in rising.items()}
    _, _, tr = gcr.decide_claims(top1, rising, falling, ks)
    assert not tr.holds and "ρ(k, value) = -" in tr.evidence
    one = _per_run({"gcr-k1": [0.4]})
    assert not gcr.decide_claims(top1, one, one, ks)[1].holds


def test_spearman() -> None:
    assert gcr.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert gcr.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert gcr.spearman([1, 2, 3], [5, 5, 5]) == 0.0
    # ties get average ranks: x ranks 1.5 1.5 3, y ranks 1 2 3 → ρ = 1.5 / √(1.5·2)
    assert gcr.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / (1.5 * 2) ** 0.5)
    with pytest.raises(ValueError, match="two equally long"):
        gcr.spearman([1.0], [1.0])
    with pytest.raises(ValueError, match="two equally long"):
        gcr.spearman([1.0, 2.0], [1.0])


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="epochs"):
        gcr.GcrSettings(epochs=0, analyze_every=1)
    with pytest.raises(ValueError, match="ks"):
        gcr.GcrSettings(epochs=1, analyze_every=1, ks=(1, 64))
    with pytest.raises(ValueError, match="distinct"):
        gcr.GcrSettings(epochs=1, analyze_every=1, ks=(2, 2))
    with pytest.raises(ValueError, match="held-out"):
        gcr.GcrSettings(epochs=1, analyze_every=1, source_classes=9)
    assert gcr.GcrSettings(epochs=25, analyze_every=10).analysed_epochs() == [10, 20, 25]
    assert gcr.FULL.epochs > gcr.QUICK.epochs
    with pytest.raises(ValueError, match="unknown variant"):
        gcr.build_model("softmax", TINY)
