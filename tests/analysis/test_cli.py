import csv
import json

import numpy as np
import pytest
import torch

from analysis.cli import main
from analysis.collapse import collapse_metrics, ncc_mismatch
from analysis.io import atomic_write_text, digits_feature_file, load_feature_file
from analysis.pipeline import feature_file_result
from analysis.report import Report
from analysis.spectrum import spectrum_metrics
from analysis.stats import FeatureStats


def analyze_features(data, **kw):
    return feature_file_result(data, **kw).metrics["features"]


def _data(seed: int = 0, n: int = 200, k: int = 4, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(k, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % k
    x = centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    w = centres + 0.1 * torch.randn(k, d, generator=g, dtype=torch.float64)
    return x, y, w, torch.zeros(k, dtype=torch.float64)


def test_analyze_pt_file_matches_api(tmp_path):
    x, y, w, b = _data()
    path = tmp_path / "feat.pt"
    torch.save(
        {
            "train": {"features": x[:120], "labels": y[:120]},
            "test": {"features": x[120:], "labels": y[120:]},
            "weight": w,
            "bias": b,
        },
        path,
    )
    out = tmp_path / "res"
    assert (
        main(["features", str(path), "--out", str(out), "--no-progress", "--batch-size", "7"]) == 0
    )
    summary = json.loads((out / "report.json").read_text())
    train = FeatureStats(4, 6)
    train.update(x[:120], y[:120])
    test = FeatureStats(4, 6)
    test.update(x[120:], y[120:])
    expected = collapse_metrics(test, w, b)
    expected.update(spectrum_metrics(test))
    expected["ncc_mismatch"] = ncc_mismatch(x[120:], w, b, train_stats=train)
    expected["accuracy"] = float(((x[120:] @ w.T + b).argmax(1) == y[120:]).double().mean())
    got = {r["metric"]: r["value"] for r in summary["rows"] if r["split"] == "test"}
    assert {r["run"] for r in summary["rows"]} == {"feat"}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
    assert Report.read(out / "report.csv").rows == Report.read(out).rows
    with open(out / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["split"] for r in rows} == {"train", "test"}
    assert len(rows) == 2 * len(expected)
    assert not list(out.glob(".*.tmp"))


def test_analyze_npz_flat_layout(tmp_path):
    x, y, _, _ = _data(1)
    path = tmp_path / "feat.npz"
    np.savez(path, features=x.numpy(), labels=y.numpy())
    data = load_feature_file(path)
    metrics = analyze_features(data, progress=False)
    stats = FeatureStats(4, 6)
    stats.update(x, y)
    assert set(metrics) == {"all"}
    assert metrics["all"] == pytest.approx(
        collapse_metrics(stats) | spectrum_metrics(stats), rel=1e-12
    )


def test_digits_builtin_is_real_data():
    data = digits_feature_file()
    x, _ = data.splits["train"]
    assert x.shape[1] == 64 and data.num_classes == 10
    assert data.weight is not None and data.weight.shape == (10, 64)
    assert len(x) + len(data.splits["test"][0]) == 1797
    # the fitted classifier is a real one: NCC and classifier disagree on few samples
    metrics = analyze_features(data, progress=False)
    assert 0 < metrics["test"]["ncc_mismatch"] < 0.3


def test_pickled_object_is_refused(tmp_path):
    from fractions import Fraction

    path = tmp_path / "bad.pt"
    torch.save({"features": torch.zeros(2, 2), "labels": Fraction(1, 3)}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_feature_file(path)


def test_cli_reports_bad_input_with_location(tmp_path, capsys):
    x, y, _, _ = _data(2)
    x[150, 3] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save({"features": x, "labels": y}, path)
    out = tmp_path / "res"
    assert (
        main(["features", str(path), "--out", str(out), "--no-progress", "--batch-size", "64"]) == 2
    )
    err = capsys.readouterr().err
    assert "samples 128:192" in err and "1 NaN" in err
    assert not out.exists()


def test_missing_file_and_bad_layout(tmp_path, capsys):
    assert main(["features", str(tmp_path / "nope.pt"), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
    path = tmp_path / "odd.pt"
    torch.save({"x": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no features found"):
        load_feature_file(path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_safetensors_feature_file_equals_pt(tmp_path):
    from safetensors.torch import save_file

    x, y, w, b = _data(3)
    tensors = {
        "train/features": x[:120].contiguous(),
        "train/labels": y[:120].contiguous(),
        "test/features": x[120:].contiguous(),
        "test/labels": y[120:].contiguous(),
        "weight": w,
        "bias": b,
    }
    st_path = tmp_path / "feat.safetensors"
    save_file(tensors, st_path, metadata={"num_classes": "4", "class_names": '["a","b","c","d"]'})
    data = load_feature_file(st_path)
    assert data.num_classes == 4 and data.class_names == ["a", "b", "c", "d"]
    pt_path = tmp_path / "feat.pt"
    torch.save(
        {
            "train": {"features": x[:120], "labels": y[:120]},
            "test": {"features": x[120:], "labels": y[120:]},
            "weight": w,
            "bias": b,
        },
        pt_path,
    )
    a = analyze_features(data, progress=False)
    ref = analyze_features(load_feature_file(pt_path), progress=False)
    assert a == ref
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="safetensors"):
        load_feature_file(tmp_path / "bad.safetensors")
