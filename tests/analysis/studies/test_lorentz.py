"""The lorentz study: a tiny end-to-end run through the driver, and its decision rules."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import geoopt
import pytest
import torch

from analysis.studies import lorentz
from analysis.studies.study import run_study
from geomtools.manifolds.lorentz import minkowski_inner

TINY = lorentz.Settings(
    epochs=2,
    sweep_epochs=2,
    sweep_lrs=(1e-2, 1.0),
    precision_epochs=1,
    per_class=12,
    batch_size=16,
    embed_dim=4,
    channels=4,
    hier_proxies=4,
)


def test_tiny_run_rows_figures_verdicts(tmp_path: Path) -> None:
    out = run_study(lorentz, tmp_path, settings=TINY, seeds=2, progress=False)
    folder = tmp_path / "lorentz"
    assert out.folder == folder and len(out.claims) == 3
    with (folder / "lorentz.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    keys = {(r["seed"], r["variant"], r["epoch"], r["split"], r["metric"]) for r in rows}
    assert len(keys) == len(rows)

    def expect(variants: list[str], epochs: int, metrics: list[tuple[str, str]]) -> None:
        for seed in ("0", "1"):
            for v in variants:
                for e in range(1, epochs + 1):
                    for m, s in metrics:
                        assert (seed, v, str(e), s, m) in keys, (seed, v, e, s, m)

    recall = [(f"recall@{k}", s) for k in (1, 2, 4, 8) for s in ("test", "seen")]
    base = [("loss", "train"), ("diverged", "")]
    expect(["euclidean", "euclidean-hier"], TINY.epochs, base + recall)
    expect(["lorentz", "lorentz-hier", "lorentz-learnk"], TINY.epochs, base + recall + [("k", "")])
    sweep = [f"sweep-{m}-lr{lr:g}" for m in lorentz.METHODS for lr in TINY.sweep_lrs]
    expect(sweep, TINY.sweep_epochs, [*base, ("k", ""), ("constraint_error", "")])
    prec = [f"{d}-{r}" for d in ("fp16", "bf16") for r in ("rescaled", "raw")]
    expect(prec, TINY.precision_epochs, [*base, ("max_distance", "test"), ("recall@1", "test")])
    n_variants = len({r["variant"] for r in rows})
    assert n_variants == 5 + len(sweep) + len(prec)

    diverged = {
        (r["seed"], r["variant"], int(r["epoch"])): float(r["value"])
        for r in rows
        if r["metric"] == "diverged"
    }
    assert set(diverged.values()) <= {0.0, 1.0}
    for r in rows:
        value = float(r["value"])
        if r["metric"] == "diverged":
            continue
        if diverged[(r["seed"], r["variant"], int(r["epoch"]))]:
            assert math.isnan(value), r  # a diverged run has no further numbers
            continue
        assert math.isfinite(value), r
        if r["metric"].startswith("recall@"):
            assert 0.0 <= value <= 1.0
        if r["metric"] == "k":
            assert lorentz.K_RANGE[0] <= value <= lorentz.K_RANGE[1] or "naive" in r["variant"]
        if r["metric"] == "max_distance" and r["variant"].endswith("-rescaled"):
            from geomtools.manifolds.lorentz import max_distance

            dtype = lorentz.DTYPES[r["variant"][:4]]
            assert value <= max_distance(dtype) + 1e-6
    # retrieval runs at k = 1 and every curvature-aware sweep run stay finite
    for (_, variant, _), d in diverged.items():
        if variant in lorentz.RETRIEVAL_VARIANTS or variant.startswith("sweep-aware"):
            assert d == 0.0, variant
    summary = (folder / "summary.md").read_text()
    assert summary.count("**reproduced**") + summary.count("**not reproduced at this scale**") == 3
    assert "rule:" in summary and "| lorentz |" in summary
    assert "| sweep-aware-lr0.01 |" not in summary  # sweep runs stay out of the table
    stems = {p.stem for p in (folder / "figures").glob("*.png")}
    assert stems == {
        "lorentz_recall",
        "lorentz_recall_epochs",
        "lorentz_divergence",
        "lorentz_curvature",
        "lorentz_precision",
    }
    assert len(list((folder / "figures").glob("*.pdf"))) == 5
    ckpt = torch.load(
        folder / "checkpoints" / "lorentz-learnk-s1" / f"epoch{TINY.epochs:03d}.pt",
        weights_only=True,
    )
    assert ckpt["epoch"] == TINY.epochs and "proxies" in ckpt["model"]


def test_curvature_rule() -> None:
    lrs = {1e-3: [0.0, 0.0], 1e-2: [1.0, 1.0]}
    ok = lorentz.curvature_claim(
        {"naive": lrs, "aware": {1e-3: [0.0, 0.0], 1e-2: [0.0, 1.0]}, "naive-clamp": lrs}
    )
    assert ok.holds and "2/4" in ok.evidence and "1/4" in ok.evidence and "rule:" in ok.evidence
    # never diverging naive: nothing to show
    calm = {1e-3: [0.0, 0.0], 1e-2: [0.0, 0.0]}
    assert not lorentz.curvature_claim({"naive": calm, "aware": calm}).holds
    # aware worse at one lr, although fewer in total
    worse = {1e-3: [1.0, 0.0], 1e-2: [0.0, 0.0]}
    both = {1e-3: [0.0, 0.0], 1e-2: [1.0, 1.0]}
    claim = lorentz.curvature_claim({"naive": both, "aware": worse})
    assert not claim.holds and "more often" in claim.evidence
    # equal counts are not "stays finite where naive diverges"
    assert not lorentz.curvature_claim({"naive": both, "aware": both}).holds
    with pytest.raises(ValueError, match="aware"):
        lorentz.curvature_claim({"naive": both})
    with pytest.raises(ValueError, match="same learning rates"):
        lorentz.curvature_claim({"naive": both, "aware": {1e-3: [0.0]}})


def test_precision_rule() -> None:
    good = {"fp16-rescaled": [0.0, 0.0], "bf16-rescaled": [0.0, 0.0]}
    claim = lorentz.precision_claim({**good, "fp16-raw": [1.0, 0.0], "bf16-raw": [0.0, 0.0]})
    assert claim.holds and "fp16-raw 1/2" in claim.evidence
    # no raw run failed: the rescaling is not shown to be what keeps training finite
    assert not lorentz.precision_claim({**good, "fp16-raw": [0.0], "bf16-raw": [0.0]}).holds
    # a rescaled run failed
    bad = {"fp16-rescaled": [0.0, 1.0], "fp16-raw": [1.0, 1.0]}
    assert not lorentz.precision_claim(bad).holds
    with pytest.raises(ValueError, match="raw"):
        lorentz.precision_claim(good)


def test_retrieval_rule() -> None:
    ks = (1, 2, 4, 8)
    euc = {k: [0.70, 0.72] for k in ks}
    assert lorentz.retrieval_claim({"euclidean": euc, "lorentz": euc}).holds
    # within one point at every K
    close = {k: [0.70, 0.705] for k in ks}
    assert lorentz.retrieval_claim({"euclidean": euc, "lorentz": close}).holds
    # two points short at K = 1 only
    short = {**euc, 1: [0.69, 0.69]}
    claim = lorentz.retrieval_claim(
        {"euclidean": euc, "lorentz": short, "lorentz-learnk": {k: [0.9] for k in ks}}
    )
    assert not claim.holds
    assert "R@1 0.690 vs 0.710" in claim.evidence and "lorentz-learnk: R@1 0.900" in claim.evidence
    # a diverged run (NaN) fails
    nan = {**euc, 8: [math.nan, 0.99]}
    assert not lorentz.retrieval_claim({"euclidean": euc, "lorentz": nan}).holds
    with pytest.raises(ValueError, match="lorentz"):
        lorentz.retrieval_claim({"euclidean": euc})


def test_embedder_geometry() -> None:
    torch.manual_seed(0)
    man = geoopt.Lorentz(k=0.7)
    model = lorentz.Embedder(5, dim=3, channels=2, manifold=man, clip_r=2.3)
    x = torch.randn(6, 40)
    with torch.no_grad():
        z = model(x)
    assert z.shape == (6, 4)
    zd = z.double()
    assert float((minkowski_inner(zd, zd) + 0.7).abs().max()) < 1e-5
    # logits are minus the squared Lorentzian distance to the proxies (Law et al. 2019)
    p = model.proxies.detach().double()
    want = -(-2 * 0.7 - 2 * minkowski_inner(zd[:, None, :], p[None, :, :]))
    torch.testing.assert_close(model.logits(z).double(), want, rtol=1e-5, atol=1e-5)
    # distances to the origin are clipped to r
    far = lorentz.Embedder(5, dim=3, channels=2, manifold=man, clip_r=0.5)
    with torch.no_grad():
        zf = far(100 * x).double()
    assert (
        float(torch.asinh(zf[:, 1:].norm(dim=1) / math.sqrt(0.7)).max()) * math.sqrt(0.7)
        <= 0.5 + 1e-5
    )
    euc = lorentz.Embedder(5, dim=3, channels=2, manifold=None, clip_r=1.0)
    with torch.no_grad():
        ze = euc(100 * x)
    assert float(ze.norm(dim=1).max()) <= 1.0 + 1e-5
    with torch.no_grad():
        want_e = -torch.cdist(ze, euc.proxies).square()
        torch.testing.assert_close(euc.logits(ze), want_e, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="need a Lorentz manifold"):
        lorentz.Embedder(5, dim=3, channels=2, manifold=None, clip_r=1.0, lorentz_linear=True)
    with pytest.raises(ValueError, match="no curvature"):
        _ = euc.k


def test_settings_validated() -> None:
    with pytest.raises(ValueError, match="epochs"):
        lorentz.Settings(epochs=0, sweep_epochs=1, sweep_lrs=(1e-2,), precision_epochs=1)
    with pytest.raises(ValueError, match="sweep_lrs"):
        lorentz.Settings(epochs=1, sweep_epochs=1, sweep_lrs=(), precision_epochs=1)
    assert lorentz.FULL.sweep_lrs == lorentz.QUICK.sweep_lrs
    assert len(lorentz.FULL.sweep_lrs) >= 4
