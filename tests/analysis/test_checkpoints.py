"""analysis.checkpoints (reading checkpoints as people save them) and analysis.heads.find_head.

Every round trip builds a real model, saves it the way a training script would, reads it back
with ``read_checkpoint`` and ``load_into`` into a differently initialised model, and compares
every tensor (parameters and BatchNorm buffers) with ``torch.equal``.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from analysis import checkpoints
from analysis.checkpoints import (
    content_hash,
    list_checkpoints,
    load_into,
    match_state_dict,
    parse_position,
    read_checkpoint,
)
from analysis.cli import main
from analysis.heads import FeatureCapture, classifier_of, find_head, num_classes_of
from analysis.store import ResultsStore
from geomtools.frames import simplex_etf
from geomtools.nn import FixedFrameHead
from tests.analysis import tiny_model

SPEC = ["--model", "tests.analysis.tiny_model:model", "--data", "tests.analysis.tiny_model:data"]


class Net(nn.Module):
    """Small network with BatchNorm, so the state_dict holds buffers as well as parameters."""

    def __init__(self, out: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
        self.fc = nn.Linear(6, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def make_net(seed: int, out: int = 3) -> Net:
    """A Net with seeded weights and non-default BatchNorm statistics."""
    torch.manual_seed(seed)
    net = Net(out)
    net.train()
    with torch.no_grad():
        for _ in range(seed % 3 + 1):
            net(torch.randn(16, 4) * (seed + 1))
    return net


def sd_of(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_same(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype, k
        assert torch.equal(got[k], v), k


def differs(model: nn.Module, expected: dict[str, torch.Tensor]) -> bool:
    got = model.state_dict()
    return any(not torch.equal(got[k], v) for k, v in expected.items() if v.is_floating_point())


def load_fresh(path: Path, *, weights: str = "model", trust: bool = False, out: int = 3):
    """read_checkpoint + load_into a fresh, differently seeded Net."""
    ck = read_checkpoint(path, weights=weights, trust=trust)
    fresh = make_net(1234, out)
    prefix = load_into(fresh, ck.state_dict, weights=weights, source=str(path))
    return ck, prefix, fresh


# --------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------


def test_raw_state_dict_round_trip(tmp_path):
    net = make_net(0)
    ref = sd_of(net)
    assert differs(make_net(1234), ref)  # the fresh model really starts elsewhere
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)
    ck, prefix, fresh = load_fresh(path)
    assert (ck.layout, ck.epoch, ck.step, prefix) == ("raw state_dict", None, None, "")
    assert "body.1.num_batches_tracked" in ck.state_dict
    assert_same(fresh, ref)


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "module"])
def test_dict_entry_layouts_with_position(tmp_path, key):
    net = make_net(1)
    ref = sd_of(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(8, 4)).sum().backward()
    opt.step()  # the saved weights are those after the step
    ref = sd_of(net)
    path = tmp_path / "ckpt.pth"
    torch.save({key: net.state_dict(), "optimizer": opt.state_dict(), "epoch": 4, "step": 50}, path)
    ck, prefix, fresh = load_fresh(path)
    assert (ck.layout, ck.epoch, ck.step, prefix) == (f"{key!r} entry", 4, 50, "")
    assert_same(fresh, ref)


def test_lightning_ckpt(tmp_path):
    net = make_net(2)
    ref = sd_of(net)
    state = {"model." + k: v for k, v in net.state_dict().items()}
    state["loss_fn.weight"] = torch.tensor([1.0, 2.0, 0.5])
    path = tmp_path / "epoch=3-step=120.ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": state,
            "optimizer_states": [],
            "hyper_parameters": {"lr": 0.1},
        },
        path,
    )
    ck, prefix, fresh = load_fresh(path)
    assert (ck.epoch, ck.step, ck.layout, prefix) == (3, 120, "'state_dict' entry", "model.")
    assert "loss_fn.weight" in ck.state_dict  # read, but belongs to the wrapper: not loaded
    assert_same(fresh, ref)
    assert parse_position(path.name) == (3, 120)


def test_position_values_tensor_float_string(tmp_path):
    net = make_net(3)
    path = tmp_path / "c.pt"
    torch.save({"model": net.state_dict(), "epoch": torch.tensor(5), "global_step": 250.0}, path)
    ck = read_checkpoint(path)
    assert (ck.epoch, ck.step) == (5, 250)
    torch.save({"model": net.state_dict(), "epoch": "6", "step": True}, path)
    ck = read_checkpoint(path)
    assert (ck.epoch, ck.step) == (6, None)


# --------------------------------------------------------------------------------------------
# wrapper prefixes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."]
)
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    net = make_net(4)
    ref = sd_of(net)
    path = tmp_path / "wrapped.pt"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    _, removed, fresh = load_fresh(path)
    assert removed == prefix
    assert_same(fresh, ref)


def test_real_dataparallel_state_dict(tmp_path):
    net = make_net(5)
    ref = sd_of(net)
    dp = nn.DataParallel(net)  # on CPU: no replication, but the 'module.' prefix is real
    assert all(k.startswith("module.") for k in dp.state_dict())
    path = tmp_path / "dp.pt"
    torch.save({"model_state_dict": dp.state_dict(), "epoch": 1}, path)
    ck, removed, fresh = load_fresh(path)
    assert (ck.layout, ck.epoch, removed) == ("'model_state_dict' entry", 1, "module.")
    assert_same(fresh, ref)


def test_lightning_compiled_model_prefix(tmp_path):
    net = make_net(6)
    ref = sd_of(net)
    path = tmp_path / "l.ckpt"
    state = {"model._orig_mod." + k: v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 0, "global_step": 10}, path)
    _, removed, fresh = load_fresh(path)
    assert removed == "model._orig_mod."
    assert_same(fresh, ref)


def test_match_state_dict_returns_model_keys_without_loading():
    net, other = make_net(7), make_net(8)
    ref = sd_of(other)
    sd, prefix = match_state_dict(net, {"net." + k: v for k, v in ref.items()})
    assert prefix == "net."
    assert sorted(sd) == sorted(ref)
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    assert differs(net, ref)  # matching does not load


def test_two_exact_prefixes_are_ambiguous(tmp_path):
    a, b = make_net(9), make_net(10)
    state = {"model." + k: v for k, v in a.state_dict().items()}
    state.update({"net." + k: v for k, v in b.state_dict().items()})
    path = tmp_path / "two.ckpt"
    torch.save({"state_dict": state, "epoch": 1, "global_step": 2}, path)
    ck = read_checkpoint(path)
    for weights in ("model", "ema"):  # no prefix holds 'ema': the choice cannot disambiguate
        fresh = make_net(1234)
        before = sd_of(fresh)
        with pytest.raises(ValueError) as info:
            load_into(fresh, ck.state_dict, weights=weights, source=str(path))
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(str(path))
        assert "ambiguous" in msg and "'model.'" in msg and "'net.'" in msg
        assert_same(fresh, before)  # nothing loaded
    # the same tensors, but asking for EMA weights with no EMA anywhere: refused at reading
    with pytest.raises(ValueError, match="no EMA weights"):
        read_checkpoint(path, weights="ema")


def test_shape_mismatch_is_one_line_naming_parameter_and_shapes(tmp_path):
    path = tmp_path / "four_classes.pt"
    torch.save({"model": make_net(11, out=4).state_dict()}, path)
    ck = read_checkpoint(path)
    fresh = make_net(1234, out=3)
    before = sd_of(fresh)
    with pytest.raises(ValueError) as info:
        load_into(fresh, ck.state_dict, source=str(path))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: shape mismatch")
    assert "'fc.weight'" in msg
    assert "[4, 6] in the checkpoint" in msg and "[3, 6] in the model" in msg
    assert "(and 1 more)" in msg  # fc.bias too
    assert_same(fresh, before)


def test_missing_and_unexpected_keys_are_named():
    net = make_net(12)
    state = sd_of(net)
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError) as info:
        match_state_dict(make_net(1234), state, source="ck.pt")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("ck.pt: checkpoint does not match the model")
    assert "missing keys ['fc.bias'] (1)" in msg
    assert "unexpected keys ['extra.weight'] (1)" in msg
    # under a DDP prefix the message says which prefix was removed
    with pytest.raises(ValueError, match=r"after removing prefix 'module\.'.*'fc\.bias'"):
        match_state_dict(make_net(1234), {"module." + k: v for k, v in state.items()})


# --------------------------------------------------------------------------------------------
# EMA / averaged weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ema_key", ["state_dict_ema", "model_ema", "ema"])
def test_ema_entries(tmp_path, ema_key):
    live, ema = make_net(13), make_net(14)
    path = tmp_path / "timm.pth.tar.pt"
    torch.save({"state_dict": live.state_dict(), ema_key: ema.state_dict(), "epoch": 9}, path)
    ck, _, fresh = load_fresh(path, weights="model")
    assert (ck.layout, ck.epoch) == ("'state_dict' entry", 9)
    assert_same(fresh, sd_of(live))
    ck, _, fresh = load_fresh(path, weights="ema")
    assert (ck.layout, ck.epoch) == (f"{ema_key!r} entry", 9)
    assert_same(fresh, sd_of(ema))


def test_ema_entry_saved_under_ddp_prefix(tmp_path):
    live, ema = make_net(15), make_net(16)
    path = tmp_path / "c.pt"
    torch.save(
        {
            "model": live.state_dict(),
            "model_ema": {"module." + k: v for k, v in ema.state_dict().items()},
        },
        path,
    )
    _, removed, fresh = load_fresh(path, weights="ema")
    assert removed == "module."
    assert_same(fresh, sd_of(ema))


def test_lightning_ema_attribute_prefix(tmp_path):
    live, ema = make_net(17), make_net(18)
    state = {"model." + k: v for k, v in live.state_dict().items()}
    state.update({"ema_model." + k: v for k, v in ema.state_dict().items()})
    state["criterion.pos_weight"] = torch.tensor([2.0])
    path = tmp_path / "l.ckpt"
    torch.save({"state_dict": state, "epoch": 2, "global_step": 40}, path)
    ck, removed, fresh = load_fresh(path, weights="ema")
    assert (ck.layout, ck.epoch, ck.step) == ("'state_dict' entry (EMA prefix)", 2, 40)
    assert removed == "ema_model."
    assert_same(fresh, sd_of(ema))
    ck, removed, fresh = load_fresh(path, weights="model")
    assert removed == "model."
    assert_same(fresh, sd_of(live))


def test_raw_state_dict_with_ema_prefix(tmp_path):
    live, ema = make_net(19), make_net(20)
    state = {"net." + k: v for k, v in live.state_dict().items()}
    state.update({"net_ema." + k: v for k, v in ema.state_dict().items()})
    path = tmp_path / "raw.pt"
    torch.save(state, path)
    ck, removed, fresh = load_fresh(path, weights="ema")
    assert (ck.layout, removed) == ("raw state_dict (EMA prefix)", "net_ema.")
    assert_same(fresh, sd_of(ema))
    _, removed, fresh = load_fresh(path, weights="model")
    assert removed == "net."
    assert_same(fresh, sd_of(live))


def _averaged(seed: int) -> tuple[Net, AveragedModel]:
    """A live Net and a real EMA AveragedModel of it that differs from it (two updates)."""
    live = make_net(seed)
    swa = AveragedModel(live, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    swa.update_parameters(live)  # first update copies
    with torch.no_grad():
        for p in live.parameters():
            p.mul_(-2.0).add_(0.25)
    swa.update_parameters(live)
    assert int(swa.n_averaged) == 2
    return live, swa


def test_averaged_model_state_dict(tmp_path):
    live, swa = _averaged(21)
    averaged = sd_of(swa.module)
    assert differs(swa.module, sd_of(live))
    # the AveragedModel's own state_dict, saved as is
    path = tmp_path / "swa.pt"
    torch.save(swa.state_dict(), path)
    assert set(torch.load(path, weights_only=True)) >= {"n_averaged", "module.fc.weight"}
    ck, removed, fresh = load_fresh(path)
    assert removed == "module."
    assert_same(fresh, averaged)
    # beside the live weights, under 'ema': --weights picks one or the other
    path = tmp_path / "both.pt"
    torch.save({"model": live.state_dict(), "ema": swa.state_dict(), "epoch": 5}, path)
    ck, removed, fresh = load_fresh(path, weights="ema")
    assert (ck.layout, removed) == ("'ema' entry", "module.")
    assert "n_averaged" not in ck.state_dict
    assert_same(fresh, averaged)
    _, _, fresh = load_fresh(path, weights="model")
    assert_same(fresh, sd_of(live))


def test_lightning_averaged_model_attribute_ema(tmp_path):
    live, swa = _averaged(22)
    state = {"model." + k: v for k, v in live.state_dict().items()}
    state.update({"ema." + k: v for k, v in swa.state_dict().items()})
    path = tmp_path / "l.ckpt"
    torch.save({"state_dict": state, "epoch": 1, "global_step": 5}, path)
    ck = read_checkpoint(path, weights="ema")
    assert ck.layout == "'state_dict' entry (EMA prefix)"
    assert ck.ema_by_prefix
    fresh = make_net(1234)
    prefix = load_into(fresh, ck.state_dict, weights="ema", ema_by_prefix=True, source=str(path))
    # what was loaded must be the averaged weights, not the live ones
    assert prefix == "ema.module."
    assert_same(fresh, sd_of(swa.module))
    # with only the live weights under a non-EMA prefix, --weights ema refuses
    live_only = {k: v for k, v in state.items() if k.startswith("model.")}
    live_only["ema_unused.x"] = torch.zeros(1)
    with pytest.raises(ValueError, match="no EMA prefix"):
        load_into(make_net(5), live_only, weights="ema", ema_by_prefix=True)


def test_ema_substring_in_attribute_name_is_not_ema(tmp_path):
    class Seg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Linear(4, 6)
            self.semantic_head = nn.Linear(6, 3)

    torch.manual_seed(0)
    path = tmp_path / "seg.pt"
    torch.save(Seg().state_dict(), path)
    with pytest.raises(ValueError, match="no EMA weights"):
        read_checkpoint(path, weights="ema")


@pytest.mark.parametrize("layout", ["raw", "lightning", "entry"])
def test_ema_requested_but_absent_is_a_clear_error(tmp_path, layout):
    net = make_net(23)
    path = tmp_path / f"{layout}.pt"
    if layout == "raw":
        torch.save(net.state_dict(), path)
    elif layout == "lightning":
        state = {"model." + k: v for k, v in net.state_dict().items()}
        torch.save({"state_dict": state, "epoch": 1, "global_step": 3}, path)
    else:
        torch.save({"model": net.state_dict(), "optimizer": {}, "epoch": 1}, path)
    with pytest.raises(ValueError) as info:
        read_checkpoint(path, weights="ema")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    assert "--weights ema, but the file has no EMA weights" in msg
    assert "'state_dict_ema'" in msg
    # the same file reads fine for the model weights
    _, _, fresh = load_fresh(path)
    assert_same(fresh, sd_of(net))


def test_weights_argument_is_checked(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(make_net(24).state_dict(), path)
    with pytest.raises(ValueError, match="weights must be 'model' or 'ema', got 'swa'"):
        read_checkpoint(path, weights="swa")


# --------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------


def test_safetensors_with_metadata(tmp_path):
    net = make_net(25)
    ref = sd_of(net)
    path = tmp_path / "model.safetensors"
    save_file(ref, str(path), metadata={"epoch": "7", "note": "best"})
    ck, removed, fresh = load_fresh(path)
    assert (ck.layout, ck.epoch, ck.step, removed) == ("safetensors", 7, None, "")
    assert_same(fresh, ref)
    # step too, and a DDP prefix inside the safetensors file
    path2 = tmp_path / "ddp.safetensors"
    save_file({"module." + k: v for k, v in ref.items()}, str(path2), metadata={"step": "300"})
    ck, removed, fresh = load_fresh(path2)
    assert (ck.epoch, ck.step, removed) == (None, 300, "module.")
    assert_same(fresh, ref)
    # no metadata at all
    path3 = tmp_path / "plain.safetensors"
    save_file(ref, str(path3))
    ck = read_checkpoint(path3)
    assert (ck.epoch, ck.step) == (None, None)


def test_safetensors_errors(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(sd_of(make_net(26)), str(path))
    with pytest.raises(ValueError, match="holds one set of weights; no EMA weights"):
        read_checkpoint(path, weights="ema")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError) as info:
        read_checkpoint(bad)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: not a readable safetensors file")


# --------------------------------------------------------------------------------------------
# unreadable files and pickles
# --------------------------------------------------------------------------------------------


def _random_bytes(n: int = 4096) -> bytes:
    data = bytes(random.Random(1234).randrange(256) for _ in range(n))
    # 0x80 (pickle PROTO) would make torch warn about the protocol before failing
    assert data[0] != 0x80 and not data.startswith(b"PK")
    return data


@pytest.mark.parametrize("trust", [False, True])
def test_random_bytes(tmp_path, trust):
    path = tmp_path / "noise.pt"
    path.write_bytes(_random_bytes())
    with pytest.raises(ValueError) as info:
        read_checkpoint(path, trust=trust)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: not a readable torch checkpoint (")
    assert "--trust-checkpoint" not in msg


@pytest.mark.parametrize("trust", [False, True])
def test_truncated_checkpoint(tmp_path, trust):
    full = tmp_path / "full.pt"
    torch.save({"model": make_net(27).state_dict(), "epoch": 1}, full)
    data = full.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError) as info:
            read_checkpoint(path, trust=trust)
        msg = str(info.value)
        assert "\n" not in msg
        assert msg.startswith(f"{path}: not a readable torch checkpoint (")
        assert "--trust-checkpoint" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pt")


def test_dict_without_state_dict(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 1, "config": {"lr": 0.1}, "weights": [1, 2, 3]}, path)
    with pytest.raises(ValueError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and "no state_dict found" in msg
    assert "'epoch', 'config', 'weights'] (3)" in msg
    path2 = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path2)
    with pytest.raises(ValueError, match="expected a dict \\(a state_dict\\), got list"):
        read_checkpoint(path2)


def test_pickled_module_needs_trust(tmp_path):
    net = make_net(28)
    ref = sd_of(net)
    path = tmp_path / "whole_model.pt"
    torch.save(net, path)  # pickles the Net class by reference
    with pytest.raises(ValueError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    assert "--trust-checkpoint" in msg and "not a readable" not in msg
    ck, removed, fresh = load_fresh(path, trust=True)
    assert (ck.layout, removed) == ("raw state_dict", "")
    assert_same(fresh, ref)
    # a pickled module under a 'model' key, with trust
    path2 = tmp_path / "dict_with_module.pt"
    torch.save({"model": net, "epoch": 8}, path2)
    with pytest.raises(ValueError, match="--trust-checkpoint"):
        read_checkpoint(path2)
    ck, _, fresh = load_fresh(path2, trust=True)
    assert (ck.layout, ck.epoch) == ("'model' entry", 8)
    assert_same(fresh, ref)


def test_model_whose_own_keys_carry_a_wrapper_prefix(tmp_path):
    wrapped = nn.DataParallel(make_net(29))
    path = tmp_path / "dp_model.pt"
    torch.save(wrapped.state_dict(), path)
    target = nn.DataParallel(make_net(1234))
    prefix = load_into(target, read_checkpoint(path).state_dict)
    assert prefix == ""
    assert_same(target, sd_of(wrapped))


# --------------------------------------------------------------------------------------------
# files: hashing, listing, positions
# --------------------------------------------------------------------------------------------


def test_content_hash_is_sha256_of_bytes(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"model": make_net(30).state_dict(), "epoch": 1}, path)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert content_hash(path) == expected
    assert content_hash(path, chunk=7) == expected  # many chunks, last one partial
    other = tmp_path / "d.pt"
    other.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
    assert content_hash(other) == hashlib.sha256(other.read_bytes()).hexdigest() != expected
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert content_hash(empty) == hashlib.sha256(b"").hexdigest()


def test_list_checkpoints_natural_order_and_suffixes(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    names = [
        "epoch10.pt",
        "epoch2.pth",
        "epoch1.ckpt",
        "model_epoch3.bin",
        "epoch4.safetensors",
        "epoch=5-step=600.ckpt",
        "epoch=5-step=550.ckpt",
    ]
    for n in names:
        (run / n).write_bytes(b"x")
    (run / "notes.txt").write_text("not a checkpoint")
    (run / "config.json").write_text("{}")
    (run / "epoch0.npz").write_bytes(b"x")
    (run / "sub.pt").mkdir()  # a folder with a checkpoint suffix is not a file
    got = [p.name for p in list_checkpoints([run])]
    assert got == [
        "epoch1.ckpt",
        "epoch2.pth",
        "model_epoch3.bin",
        "epoch4.safetensors",
        "epoch=5-step=550.ckpt",
        "epoch=5-step=600.ckpt",
        "epoch10.pt",
    ]
    # files and folders together, duplicates removed
    again = list_checkpoints([run / "epoch2.pth", run, str(run / "epoch10.pt")])
    assert [p.name for p in again] == got


def test_list_checkpoints_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        list_checkpoints([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(FileNotFoundError, match="no checkpoint files"):
        list_checkpoints([empty])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet_epoch012.pt", (12, None)),
        ("ckpt-step-3000.pth", (None, 3000)),
        ("epoch=3-step=120.ckpt", (3, 120)),
        ("model_ep7_iter900.pt", (7, 900)),
        ("resnet50.pt", (None, None)),
        ("sweep3.pt", (None, None)),
    ],
)
def test_parse_position(name, expected):
    assert parse_position(name) == expected


def test_suffixes_constant():
    assert checkpoints.CHECKPOINT_SUFFIXES == (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


# --------------------------------------------------------------------------------------------
# heads: a geomtools frame head is one head
# --------------------------------------------------------------------------------------------


def test_find_head_fixed_frame_head_with_transform():
    torch.manual_seed(0)
    frame = simplex_etf(4, 5, seed=0)
    model = nn.Sequential(
        nn.Linear(6, 10), nn.ReLU(), FixedFrameHead(frame, in_features=10, num_blocks=1)
    ).eval()
    inner_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert inner_linears[-1].startswith("2.transform.")  # the trap: a Linear inside the head
    head = find_head(model)
    assert head.name == "2"
    assert head.module is model[2]
    assert head.output_of is model[2].transform
    assert num_classes_of(model) == 4
    rows, bias, reason = classifier_of(head, 4)
    assert bias is None and reason == ""
    assert torch.equal(rows, frame.float().double())
    x = torch.randn(9, 6)
    with torch.no_grad(), FeatureCapture(head) as cap:
        logits = model(x)
        feats = cap.take()
        expected = model[2].transform(model[1](model[0](x)))
    assert feats.shape == (9, 5)
    assert torch.equal(feats, expected)
    torch.testing.assert_close(logits, feats @ model[2].weight.T)


def test_find_head_fixed_frame_head_without_transform_and_by_name():
    torch.manual_seed(0)
    frame = simplex_etf(3, 4, seed=0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), FixedFrameHead(frame)).eval()
    head = find_head(model)
    assert (head.name, head.module, head.output_of) == ("2", model[2], None)
    x = torch.randn(5, 6)
    with torch.no_grad(), FeatureCapture(head) as cap:
        model(x)
        feats = cap.take()
    assert torch.equal(feats, torch.tanh(model[0](x)))
    # naming a layer: the Linear is then the feature layer
    named = find_head(model, "0")
    assert (named.name, named.module, named.output_of) == ("0", model[0], None)
    with pytest.raises(ValueError, match="model has no module 'nope'"):
        find_head(model, "nope")


# --------------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------------


def _analyze(folder: Path, out: Path) -> int:
    return main(["analyze", str(folder), *SPEC, "--out", str(out), "--no-progress"])


def test_cli_analyze_ddp_prefixed_checkpoint(tmp_path, capsys):
    torch.manual_seed(31)
    m = tiny_model.model()
    folder = tmp_path / "ddp_run"
    folder.mkdir()
    path = folder / "epoch2.pt"
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, path)
    out = tmp_path / "res"
    assert _analyze(folder, out) == 0
    assert capsys.readouterr().err == ""
    with ResultsStore(out) as store:
        (row,) = store.checkpoints("ddp_run")
        assert row["name"] == "epoch2" and row["epoch"] == 2
        assert row["layout"] == "raw state_dict, prefix 'module.' removed"
        assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        stored_w = store.tensors("ddp_run", "epoch2")[("", "fc", "weight")]
    assert torch.equal(stored_w, m.fc.weight.detach().double())


def test_cli_analyze_shape_mismatch_exits_2(tmp_path, capsys):
    bad = nn.Sequential()
    bad.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
    bad.fc = nn.Linear(8, 4)  # four classes, the model has three
    folder = tmp_path / "bad_run"
    folder.mkdir()
    torch.save({"model": bad.double().state_dict(), "epoch": 1}, folder / "epoch1.pt")
    out = tmp_path / "res"
    assert _analyze(folder, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("geomtools: error: ")
    assert "shape mismatch" in err and "'fc.weight'" in err
    assert "[4, 8] in the checkpoint but [3, 8] in the model" in err
