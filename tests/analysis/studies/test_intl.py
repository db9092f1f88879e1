"""The INTL study: a tiny end-to-end run through the driver, the verdict rules, the pieces."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from analysis.spectrum import effective_rank
from analysis.studies import intl
from analysis.studies.study import run_study

TINY = intl.IntlSettings(
    epochs=2,
    batch_size=32,
    channels=4,
    feature_dim=8,
    hidden_dim=16,
    embed_dim=8,
    num_samples=300,
    eval_batch=100,
)
SEEDS = 2
PER_EPOCH_TEST = [
    f"{m}_{layer}"
    for m in ("effective_rank", "rankme", "flatness")
    for layer in ("encoder", "embedding", "whitened")
] + ["readout_accuracy"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("intl")
    result = run_study(intl, out, settings=TINY, seeds=SEEDS, progress=False)
    assert len(result.claims) == 3
    return result.folder


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "intl.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_rows_cover_every_seed_variant_epoch(tiny_run: Path) -> None:
    rows = _rows(tiny_run)
    keys = {(int(r["seed"]), r["variant"], int(r["epoch"]), r["split"], r["metric"]) for r in rows}
    assert len(keys) == len(rows)
    expected = set()
    for seed in range(SEEDS):
        for v in intl.VARIANTS:
            for e in range(1, TINY.epochs + 1):
                expected |= {
                    (seed, v, e, "train", "train_loss"),
                    (seed, v, e, "train", "readout_loss"),
                }
            for e in range(TINY.epochs + 1):
                expected |= {(seed, v, e, "test", m) for m in PER_EPOCH_TEST}
            for e in (0, TINY.epochs):
                expected.add((seed, v, e, "test", "linear_probe_accuracy"))
    assert keys == expected


def test_values_in_range(tiny_run: Path) -> None:
    for r in _rows(tiny_run):
        value, metric = float(r["value"]), r["metric"]
        assert math.isfinite(value), r
        layer = metric.rsplit("_", 1)[-1]
        dim = TINY.feature_dim if layer == "encoder" else TINY.embed_dim
        if metric.startswith(("effective_rank", "rankme")):
            assert 1.0 - 1e-9 <= value <= dim + 1e-9, r
        elif metric.startswith("flatness") or metric.endswith("accuracy"):
            assert 0.0 <= value <= 1.0, r
        else:
            assert value >= 0.0, r


def test_shared_initialisation_and_plain_identity(tiny_run: Path) -> None:
    rows = _rows(tiny_run)

    def value(seed: int, variant: str, epoch: int, metric: str) -> float:
        (v,) = [
            float(r["value"])
            for r in rows
            if (int(r["seed"]), r["variant"], int(r["epoch"]), r["metric"])
            == (seed, variant, epoch, metric)
        ]
        return v

    for seed in range(SEEDS):
        # one initialisation per seed: the epoch-0 encoder is the same for every variant
        probes = {value(seed, v, 0, "linear_probe_accuracy") for v in intl.VARIANTS}
        assert len(probes) == 1
        ranks = {value(seed, v, 0, "effective_rank_encoder") for v in intl.VARIANTS}
        assert max(ranks) - min(ranks) < 1e-9
        # plain has no transformation: its "whitened" layer is the embedding
        for e in range(TINY.epochs + 1):
            a = value(seed, "plain", e, "effective_rank_embedding")
            assert value(seed, "plain", e, "effective_rank_whitened") == pytest.approx(a)


def test_pipeline_rank_matches_own_spectrum(tiny_run: Path) -> None:
    """The pipeline's effective rank of z equals erank of the study's own test embedding."""
    rows = _rows(tiny_run)
    data = intl._data(TINY.num_samples)
    for variant in intl.VARIANTS:
        model = intl.build_model(variant, TINY)
        ck = torch.load(
            tiny_run / "checkpoints" / f"{variant}-s1" / f"epoch{TINY.epochs:03d}.pt",
            weights_only=True,
        )
        assert ck["epoch"] == TINY.epochs
        model.load_state_dict(ck["model"])
        _, emb = intl._features(model, data["test"][0], TINY.eval_batch)
        mine = effective_rank(torch.from_numpy(intl.spectrum_of(emb)))
        (theirs,) = [
            float(r["value"])
            for r in rows
            if (r["seed"], r["variant"], int(r["epoch"]), r["metric"])
            == ("1", variant, TINY.epochs, "effective_rank_embedding")
        ]
        assert theirs == pytest.approx(mine, rel=1e-6)


def test_outputs(tiny_run: Path) -> None:
    stems = {p.name for p in (tiny_run / "figures").iterdir()}
    for stem in ("intl_spectra", "intl_effective_rank", "intl_probe"):
        assert {f"{stem}.pdf", f"{stem}.png"} <= stems
    assert (tiny_run / "analysis" / "report.csv").is_file()
    summary = (tiny_run / "summary.md").read_text()
    assert summary.count("rule:") == 3
    table = [line.split(" | ")[0] for line in summary.splitlines() if line.startswith("| ")]
    assert table == ["| variant"] + [f"| {v}" for v in intl.VARIANTS]


def _last(
    erank: dict[str, list[float]],
    flat: dict[str, list[float]],
    probe: dict[str, list[float]],
) -> dict[str, dict[str, list[float]]]:
    return {
        "effective_rank_embedding": erank,
        "flatness_embedding": flat,
        "linear_probe_accuracy": probe,
    }


GOOD = _last(
    {"plain": [1.1, 1.3, 1.2], "iternorm": [2.0, 3.0, 2.5], "intl": [40.0, 45.0, 50.0]},
    {"plain": [0.02, 0.03, 0.04], "iternorm": [0.2, 0.25, 0.3], "intl": [0.9, 0.92, 0.95]},
    {"plain": [0.40, 0.41, 0.42], "iternorm": [0.50, 0.52, 0.51], "intl": [0.60, 0.61, 0.62]},
)


def test_decide_passes_on_clear_numbers() -> None:
    claims = intl.decide(GOOD, [0.6, 0.6, 0.61], embed_dim=64)
    assert [c.holds for c in claims] == [True, True, True]
    assert all("rule:" in c.evidence for c in claims)
    assert "plain 1.20" in claims[0].evidence


@pytest.mark.parametrize(
    ("metric", "variant", "values", "failing"),
    [
        # plain not collapsed: 13 ≥ 12.8 = 20 % of 64
        ("effective_rank_embedding", "plain", [13.0, 13.0, 13.0], 0),
        # INTL below half of D
        ("effective_rank_embedding", "intl", [31.0, 31.5, 31.9], 0),
        # INTL flatter than IterNorm-only in the mean, but within one std
        ("flatness_embedding", "iternorm", [0.85, 0.95, 0.90], 1),
        # probe: INTL above plain, but not by more than one std (std 0.1)
        ("linear_probe_accuracy", "plain", [0.45, 0.55, 0.65], 2),
        # probe: IterNorm-only ahead
        ("linear_probe_accuracy", "iternorm", [0.70, 0.70, 0.70], 2),
    ],
)
def test_decide_fails(metric: str, variant: str, values: list[float], failing: int) -> None:
    last = {m: dict(v) for m, v in GOOD.items()}
    last[metric][variant] = values
    claims = intl.decide(last, [0.6, 0.6, 0.61], embed_dim=64)
    assert [c.holds for c in claims] == [i != failing for i in range(3)]


def test_decide_needs_rising_flatness_and_values() -> None:
    claims = intl.decide(GOOD, [0.95, 0.95, 0.96], embed_dim=64)  # flatter at initialisation
    assert [c.holds for c in claims] == [True, False, True]
    one_seed = {m: {v: vals[:1] for v, vals in d.items()} for m, d in GOOD.items()}
    assert all(c.holds for c in intl.decide(one_seed, [0.6], embed_dim=64))
    missing = {m: dict(v) for m, v in GOOD.items()}
    missing["linear_probe_accuracy"]["iternorm"] = []
    with pytest.raises(ValueError, match="linear_probe_accuracy"):
        intl.decide(missing, [0.6], embed_dim=64)


def test_flatness() -> None:
    assert intl.flatness(64.0, 64) == pytest.approx(1.0)
    assert intl.flatness(1.0, 64) == 0.0
    assert intl.flatness(8.0, 64) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        intl.flatness(65.0, 64)
    with pytest.raises(ValueError):
        intl.flatness(1.0, 1)


def test_augment() -> None:
    x = torch.randn(5, 40)
    a = intl.augment(x, torch.Generator().manual_seed(3), max_shift=4, scale=0.2, noise=0.1)
    b = intl.augment(x, torch.Generator().manual_seed(3), max_shift=4, scale=0.2, noise=0.1)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    # no scale and no noise: each view is a circular shift of its signal by at most 4
    v = intl.augment(x, torch.Generator().manual_seed(0), max_shift=4, scale=0.0, noise=0.0)
    for row, out in zip(x, v, strict=True):
        assert any(torch.equal(torch.roll(row, s), out) for s in range(-4, 5))
    with pytest.raises(ValueError):
        intl.augment(x[0], torch.Generator(), max_shift=1, scale=0.0, noise=0.0)
    with pytest.raises(ValueError):
        intl.augment(x, torch.Generator(), max_shift=1, scale=1.5, noise=0.0)


def test_model_and_settings() -> None:
    model = intl.build_model("intl", TINY)
    x = torch.randn(16, 40)
    assert model(x).shape == (16, intl.NUM_CLASSES)
    assert model.transform(model.encode(x)).shape == (16, TINY.embed_dim)
    assert isinstance(intl.build_model("plain", TINY).whiten, torch.nn.Identity)
    with pytest.raises(ValueError, match="unknown intl variant"):
        intl.build_model("simsiam", TINY)
    with pytest.raises(ValueError, match="batch_size"):
        intl.IntlSettings(epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="epochs"):
        intl.IntlSettings(epochs=0)
    assert intl.QUICK.epochs < intl.FULL.epochs
