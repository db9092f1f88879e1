"""One forward per sample: the spill for train NC4, several layers, pooling, hierarchy metrics."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from analysis import extract
from analysis.cli import main
from analysis.collapse import collapse_metrics
from analysis.report import Report
from analysis.spill import Spill
from analysis.stats import FeatureStats
from tests.analysis import tiny_model

SPEC = ["--model", "tests.analysis.tiny_model:model", "--data", "tests.analysis.tiny_model:data"]


class Counting(nn.Module):
    """tiny_model with a count of the samples forwarded."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = tiny_model.model()
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.net(x)


def _loaders(batch: int = 7) -> dict[str, DataLoader]:
    return {s: DataLoader(ds, batch_size=batch) for s, ds in tiny_model.data().items()}


@pytest.fixture
def spill_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "spill"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_spill_equals_two_passes_and_forwards_once(spill_dir: Path) -> None:
    model = Counting()
    one = extract.extract_split_stats(model, _loaders(), 3, progress=False)
    assert model.seen == 60 + 30 and not one.second_pass  # one forward per sample
    model.seen = 0
    notes: list[str] = []
    two = extract.extract_split_stats(model, _loaders(), 3, progress=False, spill_budget=0)
    assert model.seen == 60 + 30 + 60 and two.second_pass
    assert one.ncc_mismatch == two.ncc_mismatch  # exactly: same float64 means, same decisions
    assert one.ncc_mismatch["train"] > 0
    # above the budget: the second pass, said in one line
    three = extract.extract_split_stats(
        model, _loaders(), 3, progress=False, spill_budget=500, log=notes.append
    )
    assert three.second_pass and three.ncc_mismatch == one.ncc_mismatch
    assert len(notes) == 1 and "spill budget" in notes[0] and "second pass" in notes[0]
    assert list(spill_dir.iterdir()) == []


def test_spill_matches_a_brute_force_nc4(spill_dir: Path) -> None:
    model = Counting()
    res = extract.extract_split_stats(model, _loaders(), 3, progress=False)
    x, y = tiny_model.data()["train"].tensors
    with torch.no_grad():
        h = model.net.body(x)
        pred = model.net.fc(h).argmax(1)
    means = torch.stack([h[y == c].mean(0) for c in range(3)])
    ncc = torch.cdist(h, means).argmin(1)
    assert res.ncc_mismatch["train"] == pytest.approx(float((ncc != pred).double().mean()))


@pytest.mark.parametrize("stop", ["error", "interrupt"])
def test_spill_files_are_removed_on_error_and_ctrl_c(spill_dir: Path, stop: str) -> None:
    class Failing(Counting):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.seen >= 70:  # in the test split, after the train spill was written
                raise KeyboardInterrupt if stop == "interrupt" else RuntimeError("boom")
            return super().forward(x)

    with pytest.raises(KeyboardInterrupt if stop == "interrupt" else RuntimeError):
        extract.extract_split_stats(Failing(), _loaders(), 3, progress=False)
    assert list(spill_dir.iterdir()) == []


def test_spill_round_trips_any_dtype(tmp_path: Path) -> None:
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.randn(37, 5).to(dtype)
        d = torch.randint(0, 9, (37,))
        with Spill(1 << 20, tmp_path) as sp:
            sp.add(x[:20], d[:20])
            sp.add(x[20:], d[20:])
            got = list(sp.chunks(rows=16))
            paths = list(tmp_path.iterdir())
            assert len(paths) == 2
        assert torch.equal(torch.cat([f for f, _ in got]), x)
        assert torch.equal(torch.cat([p for _, p in got]), d)
        assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- several layers, pooling
class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(1, 6, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.Linear(6, 5), nn.Tanh())
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.unsqueeze(1))  # [B, 6, 5]
        return self.fc(self.mid(h.mean(2)))


def conv_model() -> nn.Module:
    torch.manual_seed(0)
    return ConvNet().double()


def test_three_layers_each_equal_to_features_captured_by_hand(tmp_path: Path) -> None:
    folder = tmp_path / "conv"
    folder.mkdir()
    model = conv_model()
    torch.save(model.state_dict(), folder / "epoch1.pt")
    out = tmp_path / "res"
    spec = ["--model", "tests.analysis.test_one_pass:conv_model", "--data", SPEC[3]]
    layers = ["--layer", "conv.1", "--layer", "mid.0", "--layer", "mid.1"]
    assert main(["analyze", str(folder), *spec, *layers, "--out", str(out), "--no-progress"]) == 0
    rows = Report.read(out).rows
    assert list(dict.fromkeys(r["layer"] for r in rows)) == ["conv.1", "mid.0", "mid.1", "fc"]
    x, y = tiny_model.data()["test"].tensors
    model.eval()
    with torch.no_grad():
        conv = model.conv[0](x.unsqueeze(1))  # input of conv.1 (the ReLU): [B, 6, 5]
        mid0 = torch.relu(conv).mean(2)
        mid1 = model.mid[0](mid0)
        fc = torch.tanh(mid1)
    by_hand = {"conv.1": conv.mean(2), "mid.0": mid0, "mid.1": mid1, "fc": fc}
    for layer, f in by_hand.items():
        st = FeatureStats(3, f.shape[1])
        st.update(f, y)
        (got,) = [
            r["value"]
            for r in rows
            if (r["layer"], r["split"], r["metric"]) == (layer, "test", "nc1")
        ]
        assert got == pytest.approx(collapse_metrics(st)["nc1"], rel=1e-9), layer
    # max pooling and flatten on the feature map
    for pool, f in (("max", conv.amax(2)), ("flatten", conv.flatten(1))):
        out2 = tmp_path / pool
        argv = ["analyze", str(folder), *spec, "--layer", "conv.1", "--pool", pool]
        assert main([*argv, "--out", str(out2), "--no-progress"]) == 0
        st = FeatureStats(3, f.shape[1])
        st.update(f, y)
        got = Report.read(out2).rows
        (v,) = [
            r["value"]
            for r in got
            if (r["layer"], r["split"], r["metric"]) == ("conv.1", "test", "nc1")
        ]
        assert v == pytest.approx(collapse_metrics(st)["nc1"], rel=1e-9), pool


def test_flatten_above_the_limit_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="more than 8192; use --pool avg or max"):
        extract.pool_features(torch.zeros(2, 64, 16, 16), "flatten", "layer3")
    assert extract.pool_features(torch.ones(2, 3, 4, 4), "avg", "x").shape == (2, 3)


# ---------------------------------------------------------------- hierarchy metrics
def test_hierarchy_metrics_equal_a_hand_count(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    torch.manual_seed(5)
    model = tiny_model.model()
    torch.save(model.state_dict(), folder / "epoch1.pt")
    tree = tmp_path / "tree.txt"
    tree.write_text("root a\nroot 2\na 0\na 1\n")  # 0 and 1 are siblings; 2 hangs off the root
    out = tmp_path / "res"
    argv = ["analyze", str(folder), *SPEC, "--hierarchy", str(tree), "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    rep = Report.read(out)
    x, y = tiny_model.data()["test"].tensors
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    height = {frozenset({0, 1}): 1.0, frozenset({0, 2}): 2.0, frozenset({1, 2}): 2.0}
    mistakes = [(int(p), int(t)) for p, t in zip(pred, y, strict=True) if p != t]
    assert mistakes, "the test needs some mistakes"
    severity = sum(height[frozenset(m)] for m in mistakes) / len(mistakes)
    assert rep.value("r", "test", "num_mistakes") == len(mistakes)
    assert rep.value("r", "test", "mistake_severity") == pytest.approx(severity, rel=1e-12)
    assert rep.value("r", "test", "top1_error") == pytest.approx(
        1 - rep.value("r", "test", "accuracy")
    )
    # the same tree with names and a class file gives the same numbers
    named = tmp_path / "named.txt"
    named.write_text("root animal\nroot car\nanimal cat\nanimal dog\n")
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\ncar\n")
    out2 = tmp_path / "res2"
    argv2 = ["analyze", str(folder), *SPEC, "--hierarchy", str(named), "--classes", str(names)]
    assert main([*argv2, "--out", str(out2), "--no-progress"]) == 0
    assert Report.read(out2).value("r", "test", "mistake_severity") == pytest.approx(severity)
    # a class that is not a leaf of the tree is one line
    names.write_text("cat\ndog\nbus\n")
    assert main([*argv2, "--out", str(tmp_path / "res3"), "--no-progress"]) == 2
    assert not (tmp_path / "res3").exists()
