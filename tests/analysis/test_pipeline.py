"""The road from a user's files to the database: factories, loaders, heads, run names, manifest."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from analysis import extract, heads
from analysis.cli import main
from analysis.collapse import collapse_metrics
from analysis.pipeline import make_loaders
from analysis.report import Report, load
from analysis.runs import load_manifest, runs_from_paths, validate_run_name
from analysis.stats import FeatureStats
from analysis.store import ResultsStore
from tests.analysis import tiny_model

SPEC = ["--model", "tests.analysis.tiny_model:model", "--data", "tests.analysis.tiny_model:data"]


def _save(folder: Path, n: int = 2, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for e in range(1, n + 1):
        torch.manual_seed(seed + e)
        p = folder / f"epoch{e}.pt"
        torch.save({"model": tiny_model.model().state_dict(), "epoch": e}, p)
        out.append(p)
    return out


# ---------------------------------------------------------------- loaders are used as returned
def _shift(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([b[0] for b in batch])
    y = torch.stack([b[1] for b in batch])
    return x, (y + 1) % 3  # a collate_fn that changes the labels


def shifted_loaders() -> dict[str, DataLoader]:
    data = tiny_model.data()
    sub = torch.utils.data.SequentialSampler(range(20))  # only the first 20 test samples
    return {
        "train": DataLoader(data["train"], batch_size=7, collate_fn=_shift),
        "test": DataLoader(data["test"], batch_size=4, sampler=sub, collate_fn=_shift),
    }


def test_dataloader_is_used_exactly_as_returned(tmp_path: Path) -> None:
    (ck,) = _save(tmp_path / "r", n=1)
    out = tmp_path / "res"
    argv = ["analyze", str(tmp_path / "r"), "--model", SPEC[1], "--out", str(out)]
    assert main([*argv, "--data", "tests.analysis.test_pipeline:shifted_loaders"]) == 0
    model = tiny_model.model()
    model.load_state_dict(torch.load(ck, weights_only=True)["model"])
    model.eval()
    rep = Report.read(out)
    with torch.no_grad():
        for split, loader in shifted_loaders().items():
            correct = n = 0
            for x, y in loader:  # a hand loop over the same loader
                correct += int((model(x).argmax(1) == y).sum())
                n += len(y)
            assert rep.value("r", split, "accuracy") == correct / n
    with ResultsStore(out) as store:
        stats = store.tensors("r", "epoch1")[("test", "fc", "feature_stats")]
    assert int(FeatureStats.from_state_dict(stats).counts.sum()) == 20  # the sampler's subset


def test_torchrun_loaders_need_a_distributed_sampler() -> None:
    data = tiny_model.data()
    with pytest.raises(ValueError, match="DistributedSampler"):
        make_loaders({"train": DataLoader(data["train"])}, 8, world=2, rank=0)
    loaders = make_loaders({"train": data["train"]}, 8, world=2, rank=1)
    assert loaders["train"].sampler.rank == 1 and len(loaders["train"].sampler) == 30
    with pytest.raises(ValueError, match="do not shard evenly"):
        make_loaders({"train": TensorDataset(torch.zeros(5, 5))}, 8, world=2, rank=0)
    with pytest.raises(ValueError, match="Dataset or DataLoader"):
        make_loaders({"train": [1, 2]}, 8)


# ---------------------------------------------------------------- the documented frame head
class FrameNet(nn.Module):
    """The docs/frames.md head: FixedFrameHead(frame, in_features=...) on a backbone."""

    def __init__(self) -> None:
        from geomtools.frames import simplex_etf
        from geomtools.nn import FixedFrameHead

        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
        self.head = FixedFrameHead(simplex_etf(3, 4, seed=0), in_features=6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def frame_net() -> nn.Module:
    return FrameNet().double()


def test_documented_frame_head_without_flags(tmp_path: Path) -> None:
    folder = tmp_path / "etf"
    folder.mkdir()
    torch.manual_seed(0)
    model = frame_net()
    torch.save(model.state_dict(), folder / "epoch1.pt")
    out = tmp_path / "res"
    spec = ["--model", "tests.analysis.test_pipeline:frame_net", "--data", SPEC[3]]
    assert main(["analyze", str(folder), *spec, "--out", str(out), "--no-progress"]) == 0
    assert heads.find_head(model).name == "head"  # not head.transform.project.0
    assert heads.num_classes_of(model) == 3
    rows = Report.read(out).rows
    assert {r["layer"] for r in rows} == {"head"}
    model.eval()
    data = tiny_model.data()
    with torch.no_grad():
        h = model.head.features(model.backbone(data["test"].tensors[0]))  # after the transform
    st = FeatureStats(3, 4)
    st.update(h, data["test"].tensors[1])
    want = collapse_metrics(st, model.head.weight.double())
    got = {r["metric"]: r["value"] for r in rows if r["split"] == "test"}
    for key in ("nc1", "self_duality", "etf_error_weights"):
        assert got[key] == pytest.approx(want[key], rel=1e-9), key


def test_layer_adds_a_layer_in_the_same_pass(tmp_path: Path) -> None:
    (ck,) = _save(tmp_path / "r", n=1)
    out = tmp_path / "res"
    argv = ["analyze", str(tmp_path / "r"), *SPEC, "--out", str(out), "--no-progress"]
    assert main([*argv, "--layer", "body.1"]) == 0  # the Tanh's input: features [B, 8]
    with ResultsStore(out) as store:
        omitted = {(o["layer"], o["split"], o["metric"]) for o in store.omitted()}
        rows = store.rows()
    by_layer: dict[str, set[str]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], set()).add(r["metric"])
    assert set(by_layer) == {"body.1", "fc"}
    # classifier metrics belong to the classifier-input layer only, and are not "omitted"
    assert {"self_duality", "accuracy", "ncc_mismatch"} <= by_layer["fc"]
    assert not {"self_duality", "accuracy", "ncc_mismatch"} & by_layer["body.1"]
    assert not any(layer == "body.1" for layer, _, _ in omitted)
    # each layer's NC1 equals a brute-force computation on features captured by hand
    model = tiny_model.model()
    model.load_state_dict(torch.load(ck, weights_only=True)["model"])
    x, y = tiny_model.data()["test"].tensors
    with torch.no_grad():
        pre = model.body[0](x)
        feats = {"body.1": pre, "fc": torch.tanh(pre)}
    for layer, f in feats.items():
        st = FeatureStats(3, 8)
        st.update(f, y)
        got = [
            r["value"]
            for r in rows
            if (r["layer"], r["split"], r["metric"]) == (layer, "test", "nc1")
        ]
        assert got == [pytest.approx(collapse_metrics(st)["nc1"], rel=1e-9)]
    assert main([*argv, "--layer", "nope"]) == 2


def test_weight_metrics_constant_matches_collapse_metrics() -> None:
    st = FeatureStats(3, 4)
    st.update(torch.randn(30, 4, dtype=torch.float64), torch.arange(30) % 3)
    with_w = collapse_metrics(st, torch.randn(3, 4, dtype=torch.float64))
    assert set(with_w) - set(collapse_metrics(st)) == set(extract.WEIGHT_METRICS)


# ---------------------------------------------------------------- runs: names, folders, manifest
@pytest.mark.parametrize("bad", ["..", ".", "../x", "a/b", "with space", "", "ü"])
def test_run_names_are_data(bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid run name"):
        validate_run_name(bad)
    assert validate_run_name("resnet-18_v2.1") == "resnet-18_v2.1"


def test_runs_from_paths(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "x")
    _save(tmp_path / "b" / "x")
    _save(tmp_path / "y")
    runs = runs_from_paths([tmp_path / "a" / "x", tmp_path / "y"], model="m:f", data="d:f")
    assert [r.name for r in runs] == ["x", "y"]
    one_file = runs_from_paths([tmp_path / "y" / "epoch2.pt"], model="m:f", data="d:f")
    assert one_file[0].name == "y" and [p.name for p in one_file[0].checkpoints] == ["epoch2.pt"]
    with pytest.raises(ValueError, match="both give run name 'x'"):
        runs_from_paths([tmp_path / "a" / "x", tmp_path / "b" / "x"], model="m:f", data="d:f")
    with pytest.raises(ValueError, match="--run names one run"):
        runs_from_paths([tmp_path / "a" / "x", tmp_path / "y"], model="m:f", data="d:f", run="z")
    (tmp_path / "my run").mkdir()
    _save(tmp_path / "my run")
    with pytest.raises(ValueError, match="not a valid run name"):
        runs_from_paths([tmp_path / "my run"], model="m:f", data="d:f")


def test_manifest_runs_with_different_heads_in_one_report(tmp_path: Path) -> None:
    _save(tmp_path / "ck" / "linear")
    etf = tmp_path / "ck" / "etf"
    etf.mkdir(parents=True)
    for e in (1, 2):
        torch.manual_seed(e)
        torch.save({"state_dict": frame_net().state_dict(), "epoch": e}, etf / f"epoch{e}.pt")
    manifest = tmp_path / "runs.toml"
    manifest.write_text(
        textwrap.dedent(
            """
            [[run]]
            checkpoints = ["ck/linear/*.pt"]
            model = "tests.analysis.tiny_model:model"
            data = "tests.analysis.tiny_model:data"

            [[run]]
            name = "fixed-etf"
            checkpoints = "ck/etf"
            model = "tests.analysis.test_pipeline:frame_net"
            data = "tests.analysis.tiny_model:data"
            """
        )
    )
    runs = load_manifest(manifest)
    assert [r.name for r in runs] == ["linear", "fixed-etf"]
    out = tmp_path / "res"
    assert main(["analyze", "--config", str(manifest), "--out", str(out), "--no-progress"]) == 0
    frame = load(out)
    assert list(frame["run"].unique()) == ["linear", "fixed-etf"]
    assert set(frame.groupby("run")["layer"].unique().map(tuple)) == {("fc",), ("head",)}
    assert frame["epoch"].dtype.name == "Int64" and len(frame) == len(Report.read(out).rows)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[run]]\ncheckpoints = "ck/linear"\nmodel = "a:b"\ndata = "c:d"\nlayr = "x"\n')
    with pytest.raises(ValueError, match="unknown keys \\['layr'\\]"):
        load_manifest(bad)
    bad.write_text('[[run]]\ncheckpoints = "ck/none/*.pt"\nmodel = "a:b"\ndata = "c:d"\n')
    with pytest.raises(FileNotFoundError, match="no checkpoint matches"):
        load_manifest(bad)


# ---------------------------------------------------------------- factories
def test_factories_import_from_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user_models_cwd.py").write_text(
        "from tests.analysis.tiny_model import Tiny\n"
        "def build(scale=1.0):\n"
        "    m = Tiny().double()\n"
        "    m.fc.weight.data *= scale\n"
        "    return m\n"
    )
    _save(tmp_path / "r", n=1)
    argv = ["analyze", "r", "--model", "user_models_cwd:build", "--data", SPEC[3], "--no-progress"]
    assert main([*argv, "--model-kwargs", '{"scale": 2.0}', "--out", "res"]) == 0
    spec = json.loads((tmp_path / "res" / "report.json").read_text())["runs"]["r"]["spec"]
    assert spec["model"] == "user_models_cwd:build" and spec["model_kwargs"] == {"scale": 2.0}
    assert main([*argv, "--model-kwargs", "{scale: 2}", "--out", "res2"]) == 2
    assert main([*argv, "--model-kwargs", '{"nope": 1}', "--out", "res3"]) == 2
    assert not (tmp_path / "res2").exists() and not (tmp_path / "res3").exists()


def test_features_labels_longer_than_features(tmp_path: Path, capsys) -> None:
    path = tmp_path / "f.pt"
    torch.save({"features": torch.randn(10, 3), "labels": torch.arange(12) % 2}, path)
    assert main(["features", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "10 feature rows but labels of shape [12]" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_streaming_commands_keep_large_buffers(monkeypatch, tmp_path: Path) -> None:
    import ctypes

    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    assert main(["plot", str(tmp_path / "none"), "--out", str(tmp_path / "f")]) == 2
    assert calls == []  # not for plot: only the streaming commands
    _save(tmp_path / "r", n=1)
    argv = ["analyze", str(tmp_path / "r"), *SPEC, "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 0
    assert calls == [(-3, 256 * 1024**2), (-1, 1024**3)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
