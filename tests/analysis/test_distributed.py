"""Two-process ``torch.distributed`` (gloo) test of :meth:`FeatureStats.all_reduce`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from analysis.stats import FeatureStats
from tests.analysis.spawn import join_gloo, run_workers

WORLD_SIZE = 2
NUM_CLASSES, DIM = 9, 6  # class 8 has no samples on any rank
SEED = 2024
TIMEOUT_S = 60.0


def make_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All data, labels, and the rank owning each row (ranks hold different class subsets)."""
    rng = np.random.default_rng(SEED)
    counts = rng.integers(3, 30, size=NUM_CLASSES)
    counts[-1] = 0
    y = np.repeat(np.arange(NUM_CLASSES), counts)
    centres = 10.0 * rng.standard_normal((NUM_CLASSES, DIM)) + 30.0
    x = centres[y] + rng.uniform(0.1, 2.0) * rng.standard_normal((y.size, DIM))
    perm = rng.permutation(y.size)
    x, y = x[perm], y[perm]
    # Classes 0-2 only on rank 0, classes 5-7 only on rank 1, classes 3-4 split at random.
    owner = np.where(y <= 2, 0, 1)
    shared = (y == 3) | (y == 4)
    owner[shared] = rng.integers(0, WORLD_SIZE, size=int(shared.sum()))
    return x, y.astype(np.int64), owner


def feed(stats: FeatureStats, x: np.ndarray, y: np.ndarray, batch: int) -> None:
    for start in range(0, y.size, batch):
        stats.update(
            torch.from_numpy(x[start : start + batch]), torch.from_numpy(y[start : start + batch])
        )


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    join_gloo(rank, init_file, WORLD_SIZE)
    try:
        x, y, owner = make_data()
        mine = owner == rank
        plain = FeatureStats(NUM_CLASSES, DIM)
        tracked = FeatureStats(NUM_CLASSES, DIM, track_class_scatter=True)
        feed(plain, x[mine], y[mine], batch=17 + 6 * rank)
        feed(tracked, x[mine], y[mine], batch=23)
        assert plain.all_reduce() is plain
        tracked.all_reduce()
        torch.save(
            {"plain": plain.state_dict(), "tracked": tracked.state_dict()},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().max())
    err = float((a.to(torch.float64) - b.to(torch.float64)).abs().max())
    return err / scale if scale else err


def test_all_reduce_two_ranks_equals_single_pass(tmp_path: Path) -> None:
    x, y, owner = make_data()
    assert set(np.unique(y[owner == 0])) != set(np.unique(y[owner == 1]))

    run_workers(_worker, (str(tmp_path / "rendezvous"), str(tmp_path)), WORLD_SIZE, TIMEOUT_S)

    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    for key in ("plain", "tracked"):
        s0, s1 = states[0][key], states[1][key]
        # The ranks agree exactly.
        assert s0.keys() == s1.keys()
        for name, v0 in s0.items():
            if isinstance(v0, torch.Tensor):
                assert torch.equal(v0, s1[name]), (key, name)
            else:
                assert v0 == s1[name], (key, name)

        # ... and equal one single-process pass over all the data.
        single = FeatureStats(NUM_CLASSES, DIM, track_class_scatter=key == "tracked")
        feed(single, x, y, batch=31)
        ref = single.state_dict()
        assert s0.keys() == ref.keys()
        assert torch.equal(s0["counts"], ref["counts"])
        assert int(s0["counts"][-1]) == 0
        assert torch.equal(s0["zero_norm"], ref["zero_norm"])
        for name, v in ref.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                assert s0[name].dtype == torch.float64
                err = _rel_err(s0[name], v)
                assert err <= 1e-12, (key, name, err)

        reduced = FeatureStats.from_state_dict(s0)
        torch.testing.assert_close(reduced.means, single.means, rtol=1e-12, atol=1e-12)
        assert _rel_err(reduced.within_scatter, single.within_scatter) <= 1e-12


def test_all_reduce_without_process_group_raises() -> None:
    assert not dist.is_initialized()
    stats = FeatureStats(2, 2)
    stats.update(torch.randn(3, 2), torch.tensor([0, 1, 1]))
    before = stats.state_dict()
    with pytest.raises(RuntimeError, match="not initialised"):
        stats.all_reduce()
    after = stats.state_dict()
    for name, v in before.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, after[name]), name
