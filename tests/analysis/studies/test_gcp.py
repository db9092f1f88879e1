"""The gcp study: a tiny run through the driver, the measurements and the verdict logic."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from analysis.studies import gcp
from analysis.studies.study import run_study

TINY = gcp.Settings(
    epochs=2,
    switch_epoch=2,
    num_samples=400,
    batch_size=64,
    variants=("ns5", "eigh-autograd", "hybrid"),
)
PER_EPOCH = {
    ("test", "accuracy"),
    ("train", "loss"),
    ("train", "grad_norm_median"),
    ("train", "grad_norm_max"),
    ("train", "spikes"),
    ("train", "nonfinite"),
    ("train", "min_gap"),
    ("train", "min_eig"),
    ("train", "close_share"),
}


def test_tiny_run_writes_every_row_figure_and_verdict(tmp_path: Path) -> None:
    out = run_study(gcp, tmp_path, settings=TINY, seeds=2, quick=True, progress=False)
    folder = out.folder
    with (folder / "gcp.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    values = {_key(r): float(r["value"]) for r in rows}
    keys = set(values)
    for seed in (0, 1):
        for variant in TINY.variants:
            for epoch in (1, 2):
                for split, metric in PER_EPOCH:
                    assert (seed, variant, epoch, split, metric) in keys
            for split in ("train", "test"):
                for metric in ("nc1", "effective_rank_total", "pipeline_accuracy"):
                    assert (seed, variant, 2, split, metric) in keys
    for (_, _, _, _, metric), v in values.items():
        if metric in ("accuracy", "pipeline_accuracy"):
            assert 0.0 <= v <= 1.0
        if metric in ("spikes", "nonfinite"):
            assert v >= 0 and v == int(v)
        if metric == "min_gap":
            assert v >= -1e-12
        if metric == "close_share":
            assert 0.0 <= v <= 1.0
    # the pipeline measures the same model the loop trained (the hybrid at its eigh epoch)
    for seed in (0, 1):
        for variant in TINY.variants:
            mine = values[(seed, variant, 2, "test", "accuracy")]
            assert values[(seed, variant, 2, "test", "pipeline_accuracy")] == pytest.approx(mine)
    assert len(out.claims) == 3
    summary = (folder / "summary.md").read_text(encoding="utf-8")
    assert "rule:" in summary and "not trained" in summary  # TINY has no eigh-exact
    for stem in ("gcp_accuracy", "gcp_grad_norm", "gcp_acc_vs_spikes"):
        assert (folder / "figures" / f"{stem}.png").is_file()
        assert (folder / "figures" / f"{stem}.pdf").is_file()
    ckpt = folder / "checkpoints" / "hybrid-s1" / "epoch002.pt"
    state = torch.load(ckpt, weights_only=True)["model"]
    assert int(state["pool.epoch"]) == 2  # the checkpoint carries the switch state
    rebuilt = gcp.build_model("hybrid", TINY)
    rebuilt.load_state_dict(state)
    assert rebuilt.covpool.active_method == "eigh"


def _key(r: dict[str, str]) -> tuple[int, str, int, str, str]:
    return (int(r["seed"]), r["variant"], int(r["epoch"]), r["split"], r["metric"])


@pytest.mark.parametrize("variant", gcp.VARIANTS)
def test_every_variant_trains_a_step(variant: str) -> None:
    torch.manual_seed(0)
    model = gcp.build_model(variant, gcp.QUICK)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 40)), torch.arange(8))
    loss.backward()
    assert model.head.weight.grad is not None
    assert model.head.in_features == 16 * 17 // 2


def test_hybrid_switches_with_the_epoch() -> None:
    s = gcp.Settings(epochs=4, switch_epoch=3)
    model = gcp.build_model("hybrid", s)
    assert model.covpool.active_method == "newton_schulz"
    model.set_epoch(2)
    assert model.covpool.active_method == "newton_schulz"
    model.set_epoch(3)
    assert model.covpool.active_method == "eigh"
    assert gcp.build_model("hybrid-pade", s).covpool.backward_kind == "pade"


def test_rebuilt_hybrid_past_the_switch_runs_eigh() -> None:
    # the analysis factory builds a fresh model (epoch 0, Newton–Schulz); the checkpoint's
    # state dict carries the epoch, so the loaded model computes the eigh root it trained with
    s = gcp.Settings(epochs=4, switch_epoch=3)
    torch.manual_seed(0)
    trained = gcp.build_model("hybrid", s).eval()
    trained.set_epoch(4)
    rebuilt = gcp.build_model("hybrid", s).eval()
    assert rebuilt.covpool.active_method == "newton_schulz"
    rebuilt.load_state_dict(trained.state_dict())
    assert rebuilt.covpool.active_method == "eigh"
    x = torch.randn(6, 40)
    with torch.no_grad():
        out = rebuilt(x)
        torch.testing.assert_close(out, trained(x))
        rebuilt.set_epoch(1)  # the same weights through Newton–Schulz give other logits
        assert not torch.allclose(out, rebuilt(x), atol=1e-6)


def test_autograd_variant_matches_the_toolkit_root_forward() -> None:
    torch.manual_seed(0)
    a = gcp.build_model("eigh-autograd", gcp.QUICK).eval()
    b = gcp.build_model("eigh-exact", gcp.QUICK).eval()
    b.load_state_dict({k.replace("pool.pool.", "pool."): v for k, v in a.state_dict().items()})
    x = torch.randn(6, 40)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_eigen_gap_on_known_spectra() -> None:
    cov = torch.stack(
        [torch.diag(torch.tensor([1.0, 2.0, 4.0])), torch.diag(torch.tensor([0.0, 0.0, 2.0]))]
    )
    gap, low, share = gcp.eigen_gap(cov)
    assert gap == pytest.approx(0.0, abs=1e-15)  # two zero eigenvalues in the second
    assert low == pytest.approx(0.0, abs=1e-15)
    assert share == 0.5
    gap, low, share = gcp.eigen_gap(cov[:1])
    assert gap == pytest.approx(0.25) and low == pytest.approx(0.25) and share == 0.0
    with pytest.raises(ValueError, match="C ≥ 2"):
        gcp.eigen_gap(torch.ones(2, 1, 1))


def test_spike_counter() -> None:
    sc = gcp.SpikeCounter(factor=10, window=5, history=3)
    assert [sc.update(v) for v in (1.0, 1.0, 50.0)] == [False, False, False]  # no history yet
    assert sc.update(1.0) is False
    assert sc.update(11.0) is True  # > 10 × median(1, 1, 50, 1) = 10
    assert sc.update(math.inf) is True and sc.update(math.nan) is True
    with pytest.raises(ValueError):
        gcp.SpikeCounter(factor=1.0)


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="switch_epoch"):
        gcp.Settings(epochs=3, switch_epoch=4)
    with pytest.raises(ValueError, match="unknown variants"):
        gcp.Settings(epochs=3, switch_epoch=2, variants=("svd",))
    with pytest.raises(ValueError, match="unknown variant"):
        gcp.GCPNet("svd")
    assert gcp.QUICK.epochs < gcp.FULL.epochs


ALL = ("ns5", "eigh-exact", "eigh-autograd", "eigh-taylor", "eigh-pade", "hybrid", "hybrid-pade")


def _acc(**over: float) -> dict[str, float]:
    acc = dict.fromkeys(ALL, 0.95)
    acc.update({k.replace("_", "-"): v for k, v in over.items()})
    return acc


def test_claims_pass_on_the_papers_pattern() -> None:
    acc = _acc(eigh_exact=0.80, eigh_autograd=0.90)
    spikes = dict.fromkeys(ALL, 0) | {"eigh-exact": 300, "eigh-autograd": 20}
    close = dict.fromkeys(ALL, math.nan) | {"eigh-exact": 1.0, "eigh-autograd": 0.95}
    c1, c2, c3 = gcp.claims(acc, spikes, close)
    assert c1.holds and c2.holds and c3.holds
    assert "rule:" in c1.evidence and "0.800" in c1.evidence
    assert c1.verdict == "reproduced"


def test_claims_fail_where_the_numbers_say_so() -> None:
    # NS worse than the exact root by 2 points: claim 1 fails, and there is no gap to close
    acc = _acc(ns5=0.93)
    spikes = dict.fromkeys(ALL, 0)
    close = dict.fromkeys(ALL, math.nan)
    c1, c2, c3 = gcp.claims(acc, spikes, close)
    assert not c1.holds and not c2.holds and not c3.holds
    assert "no gap to close" in c3.evidence
    assert c1.verdict == "not reproduced at this scale"
    # spikes, but not at close eigenvalues; and remedies that do not recover NS's accuracy
    acc = _acc(eigh_exact=0.80, eigh_taylor=0.90, eigh_pade=0.90, hybrid=0.90, hybrid_pade=0.90)
    spikes = dict.fromkeys(ALL, 0) | {"eigh-exact": 50}
    close = dict.fromkeys(ALL, math.nan) | {"eigh-exact": 0.5}
    c1, c2, c3 = gcp.claims(acc, spikes, close)
    assert c1.holds and not c2.holds and not c3.holds
    # spikes: a remedy with as many spikes as the exact gradient does not close the gap
    acc = _acc(eigh_exact=0.80)
    spikes = dict.fromkeys(ALL, 40) | {"eigh-exact": 50}
    close = dict.fromkeys(ALL, 1.0)
    c1, c2, c3 = gcp.claims(acc, spikes, close)
    assert not c2.holds  # not more than twice ns5's spikes
    assert not c3.holds


def test_claims_without_the_needed_variants() -> None:
    out = gcp.claims({"ns5": 0.9}, {"ns5": 0}, {"ns5": math.nan})
    assert [c.holds for c in out] == [False, False, False]
    assert "not trained" in out[0].evidence
