"""`geomtools analyze` on 2 gloo processes writes the same report as one process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from analysis.cli import main
from analysis.report import Report
from tests.analysis import tiny_model
from tests.analysis.spawn import join_gloo

SPEC = ["--model", "tests.analysis.tiny_model:model", "--data", "tests.analysis.tiny_model:data"]


def _worker(rank: int, init_file: str, ckpts: str, out: str, extra: list[str]) -> None:
    os.environ["WORLD_SIZE"], os.environ["RANK"] = "2", str(rank)
    join_gloo(rank, init_file, 2)
    try:
        argv = ["analyze", ckpts, *SPEC, *extra, "--out", out, "--no-progress"]
        rc = main([*argv, "--batch-size", "7"])
        if rc != 0:
            raise SystemExit(rc)
    finally:
        dist.destroy_process_group()


def test_two_process_report_equals_single_process(tmp_path: Path) -> None:
    ckpts = tmp_path / "run"
    ckpts.mkdir()
    for e in (1, 2):
        torch.manual_seed(e)
        torch.save({"model": tiny_model.model().state_dict(), "epoch": e}, ckpts / f"ep{e}.pt")
    tree = tmp_path / "tree.txt"
    tree.write_text("root a\nroot 2\na 0\na 1\n")
    # a second layer and the hierarchy metrics: all of it reduced across ranks
    extra = ["--layer", "body.1", "--hierarchy", str(tree)]
    single = tmp_path / "single"
    argv = ["analyze", str(ckpts), *SPEC, *extra, "--out", str(single), "--no-progress"]
    assert main(argv) == 0
    multi = tmp_path / "multi"
    init = str(tmp_path / "init")
    mp.spawn(_worker, args=(init, str(ckpts), str(multi), extra), nprocs=2, join=True)
    a, b = Report.read(single).rows, Report.read(multi).rows
    assert {r["layer"] for r in a} == {"body.1", "fc"}
    assert "mistake_severity" in {r["metric"] for r in a}
    assert [(r["checkpoint"], r["split"], r["layer"], r["metric"]) for r in a] == [
        (r["checkpoint"], r["split"], r["layer"], r["metric"]) for r in b
    ]
    for ra, rb in zip(a, b, strict=True):
        assert rb["value"] == pytest.approx(ra["value"], rel=1e-9, abs=1e-12), ra
