"""Checkpoints → features → report: analysis.extract, analysis.report, `geomtools analyze`."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from analysis import extract, heads, pipeline
from analysis.checkpoints import parse_position
from analysis.cli import main
from analysis.collapse import collapse_metrics
from analysis.report import COLUMNS, Report, linear_probe
from analysis.stats import FeatureStats
from analysis.store import ResultsStore
from tests.analysis import tiny_model

SPEC = ["--model", "tests.analysis.tiny_model:model", "--data", "tests.analysis.tiny_model:data"]


def _checkpoints(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for e in range(1, n + 1):
        torch.manual_seed(e)
        m = tiny_model.model()
        p = folder / f"epoch{e}.pt"
        torch.save({"model": m.state_dict(), "epoch": e}, p)
        paths.append(p)
    return paths


def _brute_force(state: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    m = tiny_model.model()
    m.load_state_dict(state)
    m.eval()
    data = tiny_model.data()
    with torch.no_grad():
        feats = {s: m.body(ds.tensors[0]).double() for s, ds in data.items()}
        preds = {s: m(ds.tensors[0]).argmax(1) for s, ds in data.items()}
    labels = {s: ds.tensors[1] for s, ds in data.items()}
    w, b = m.fc.weight.double(), m.fc.bias.double()
    train_means = torch.stack([feats["train"][labels["train"] == c].mean(0) for c in range(3)])
    out = {}
    for s in data:
        st = FeatureStats(3, 8)
        st.update(feats[s], labels[s])
        res = collapse_metrics(st, w, b)
        res["accuracy"] = float((preds[s] == labels[s]).double().mean())
        ncc = torch.cdist(feats[s], train_means).argmin(1)
        res["ncc_mismatch"] = float((ncc != preds[s]).double().mean())
        out[s] = res
    return out


def test_analyze_cli_matches_brute_force_and_resumes(tmp_path, monkeypatch):
    paths = _checkpoints(tmp_path / "run1")
    out = tmp_path / "res"
    assert main(["analyze", str(tmp_path / "run1"), *SPEC, "--out", str(out), "--no-progress"]) == 0
    rep = Report.read(out)
    assert list(dict.fromkeys(r["checkpoint"] for r in rep.rows)) == ["epoch1", "epoch2", "epoch3"]
    assert {r["epoch"] for r in rep.rows} == {1, 2, 3}
    assert {r["run"] for r in rep.rows} == {"run1"}
    for p in paths:
        state = torch.load(p, weights_only=True)["model"]
        expected = _brute_force(state)
        for split, metrics in expected.items():
            for key, value in metrics.items():
                got = rep.value("run1", split, key, checkpoint=p.stem)
                assert got == pytest.approx(value, rel=1e-9, abs=1e-12), (p.stem, split, key)
    with ResultsStore(out) as store:
        assert [c["name"] for c in store.checkpoints("run1")] == ["epoch1", "epoch2", "epoch3"]
        assert all(c["layout"] == "'model' entry" for c in store.checkpoints("run1"))

    # resume: nothing is recomputed
    def boom(*a, **k):
        raise AssertionError("recomputed a stored checkpoint")

    monkeypatch.setattr(pipeline, "analyze_model", boom)
    assert main(["analyze", str(tmp_path / "run1"), *SPEC, "--out", str(out), "--no-progress"]) == 0
    assert Report.read(out).rows == rep.rows
    # touching a file does not recompute it (resume keys on the content hash, not mtime) ...
    os.utime(paths[1], ns=(1, 1))
    assert main(["analyze", str(tmp_path / "run1"), *SPEC, "--out", str(out), "--no-progress"]) == 0
    # ... but new content with the same size, name and mtime does
    monkeypatch.undo()
    st = paths[2].stat()
    torch.manual_seed(99)
    torch.save({"model": tiny_model.model().state_dict(), "epoch": 3}, paths[2])
    assert paths[2].stat().st_size == st.st_size
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert main(["analyze", str(tmp_path / "run1"), *SPEC, "--out", str(out), "--no-progress"]) == 0
    new = Report.read(out)
    state = torch.load(paths[2], weights_only=True)["model"]
    acc = _brute_force(state)["test"]["accuracy"]
    assert new.value("run1", "test", "accuracy", checkpoint="epoch3") == pytest.approx(acc)
    assert new.value("run1", "test", "nc1", checkpoint="epoch3") != rep.value(
        "run1", "test", "nc1", checkpoint="epoch3"
    )


def test_force_flag_recomputes(tmp_path, monkeypatch):
    _checkpoints(tmp_path / "r", n=1)
    out = tmp_path / "res"
    assert main(["analyze", str(tmp_path / "r"), *SPEC, "--out", str(out), "--no-progress"]) == 0
    calls = []
    real = pipeline.analyze_model

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "analyze_model", counting)
    assert main(["analyze", str(tmp_path / "r"), *SPEC, "--out", str(out), "--no-progress"]) == 0
    assert calls == []
    assert (
        main(["analyze", str(tmp_path / "r"), *SPEC, "--out", str(out), "--no-progress", "--force"])
        == 0
    )
    assert calls == [1]


def test_checkpoint_errors_are_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "res"
    d = tmp_path / "bad"
    d.mkdir()
    torch.save(tiny_model.model(), d / "pickled.pt")  # a pickled module
    assert main(["analyze", str(d / "pickled.pt"), *SPEC, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--trust-checkpoint" in err and err.count("\n") == 1 and "\x1b" not in err
    assert not out.exists()
    # the explicit flag accepts it
    assert (
        main(
            [
                "analyze",
                str(d / "pickled.pt"),
                *SPEC,
                "--out",
                str(out),
                "--trust-checkpoint",
                "--no-progress",
            ]
        )
        == 0
    )
    (d / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["analyze", str(d / "corrupt.pt"), *SPEC, "--out", str(tmp_path / "o2")]) == 2
    assert "not a readable torch checkpoint" in capsys.readouterr().err
    assert main(["analyze", str(d / "missing.pt"), *SPEC]) == 2
    assert "not found" in capsys.readouterr().err
    torch.save({"model": {"fc.weight": torch.zeros(3, 8)}}, d / "partial.pt")
    assert main(["analyze", str(d / "partial.pt"), *SPEC, "--out", str(tmp_path / "o3")]) == 2
    assert "missing keys" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nope_module_xyz:model", "cannot import module"),
        ("tests.analysis.tiny_model:absent", "has no attribute"),
        ("no_colon", "package.module:callable"),
    ],
)
def test_bad_module_paths(tmp_path, capsys, spec, match):
    _checkpoints(tmp_path / "r", n=1)
    argv = ["analyze", str(tmp_path / "r"), "--model", spec, "--data", SPEC[3]]
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_layer_option_and_frame_head():
    from geomtools.frames import simplex_etf
    from geomtools.nn import FixedFrameHead, GrassmannHead

    body = nn.Sequential(nn.Linear(5, 4), nn.Tanh())
    model = nn.Sequential(body, FixedFrameHead(simplex_etf(3, 4, seed=0)))
    head = heads.find_head(model)
    assert head.name == "1" and heads.classifier_of(head, 3)[1] is None
    assert heads.classifier_of(head, 3)[0].shape == (3, 4)
    assert heads.find_head(model, "0.0").module is body[0]
    with pytest.raises(ValueError, match="no module 'nope'"):
        heads.find_head(model, "nope")
    gcr = nn.Sequential(nn.Linear(5, 4), GrassmannHead(4, 3, 2))
    w, b, why = heads.classifier_of(heads.find_head(gcr), 3)
    assert (w, b) == (None, None) and "GrassmannHead" in why
    loaders = {"train": [(torch.randn(12, 5), torch.arange(12) % 3)]}
    res = extract.analyze_model(gcr, loaders, 3, progress=False)
    assert res.layer == "1" and res.layers == ["1"]
    assert 0.0 <= res.metrics["1"]["train"]["ncc_mismatch"] <= 1.0
    assert "self_duality" not in res.metrics["1"]["train"]
    assert set(extract.WEIGHT_METRICS) <= set(res.omitted["1"]["train"])
    with pytest.raises(ValueError, match="logits"):
        extract.analyze_model(nn.Linear(5, 4), loaders, 3, progress=False)


def test_parse_position_and_report_roundtrip(tmp_path):
    assert parse_position("net_epoch012.pt") == (12, None)
    assert parse_position("ckpt-step-3000.pth") == (None, 3000)
    assert parse_position("ep5_iter200.pt") == (5, 200)
    assert parse_position("final.pt") == (None, None)
    with ResultsStore(tmp_path) as store:
        store.upsert_run("a", {"model": "m"})
        kw = dict(path="p", sha256="s", key="k", step=None, layout="")
        m = {"fc": {"test": {"nc1": 0.5, "x": 2.0}}}
        store.store_checkpoint("a", "c1", epoch=1, metrics=m, **kw)
        with pytest.raises(ValueError, match="non-finite"):
            bad = {"fc": {"test": {"nc1": math.nan}}}
            store.store_checkpoint("a", "c2", epoch=2, metrics=bad, **kw)
        store.export()
        rows = store.rows()
    assert [r["metric"] for r in rows] == ["nc1", "x"] and rows[0]["epoch"] == 1
    assert Report.read(tmp_path / "report.csv").rows == rows
    assert Report.read(tmp_path / "report.json").rows == rows
    assert Report.read(tmp_path).rows == rows
    assert json.loads((tmp_path / "report.json").read_text())["columns"] == COLUMNS
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a geomtools report"):
        Report.read(tmp_path / "x.json")


def test_linear_probe_separable_and_noise():
    g = np.random.default_rng(0)
    y = np.arange(300) % 3
    x = np.eye(3)[y] * 5 + 0.1 * g.standard_normal((300, 3))
    res = linear_probe((x[:200], y[:200]), (x[200:], y[200:]))
    assert res["linear_probe_accuracy"] == 1.0
    noise = g.standard_normal((300, 3))
    res = linear_probe((noise[:200], y[:200]), (noise[200:], y[200:]))
    assert res["linear_probe_accuracy"] < 0.6


def test_linear_probe_option(tmp_path):
    _checkpoints(tmp_path / "r", n=1)
    out = tmp_path / "res"
    argv = ["analyze", str(tmp_path / "r"), *SPEC, "--out", str(out), "--no-progress"]
    assert main(argv) == 0  # cached without the probe ...
    assert main([*argv, "--linear-probe"]) == 0  # ... so this run must recompute
    rep = Report.read(out)
    acc = rep.value("r", "test", "linear_probe_accuracy")
    assert 0.5 < acc <= 1.0  # three well-separated Gaussian classes
    assert "linear_probe_accuracy" not in {r["metric"] for r in rep.rows if r["split"] == "train"}
    # the probe equals sklearn on the brute-force features
    m = tiny_model.model()
    m.load_state_dict(torch.load(tmp_path / "r" / "epoch1.pt", weights_only=True)["model"])
    data = tiny_model.data()
    with torch.no_grad():
        f = {s: m.body(ds.tensors[0]).float().numpy() for s, ds in data.items()}
    ref = linear_probe(
        (f["train"], data["train"].tensors[1].numpy()), (f["test"], data["test"].tensors[1].numpy())
    )
    assert acc == pytest.approx(ref["linear_probe_accuracy"])


def test_recall_option_matches_retrieval_on_features(tmp_path):
    from analysis.retrieval import recall_at_k

    _checkpoints(tmp_path / "r", n=1)
    out = tmp_path / "res"
    argv = ["analyze", str(tmp_path / "r"), *SPEC, "--out", str(out), "--no-progress"]
    assert main([*argv, "--recall", "1", "4"]) == 0
    rep = Report.read(out)
    m = tiny_model.model()
    m.load_state_dict(torch.load(tmp_path / "r" / "epoch1.pt", weights_only=True)["model"])
    ds = tiny_model.data()["test"]
    with torch.no_grad():
        ref = recall_at_k(m.body(ds.tensors[0]), ds.tensors[1], (1, 4))
    assert rep.value("r", "test", "recall@1") == ref[1]
    assert rep.value("r", "test", "recall@4") == ref[4]
