"""The accumulator protocol, one test per property over every accumulator.

:class:`FeatureStats`, :class:`HierarchicalMetrics` and :class:`NCCMismatch` (with a classifier
and in the ``decisions`` mode) share ``update``, ``merge``, ``reset``, ``all_reduce``,
``state_dict`` and ``from_state_dict``: shards merged equal one pass (counts exactly, floats to
1e-12), states round-trip through ``torch.save`` + ``torch.load(weights_only=True)``, and two
gloo processes reduced equal one process.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from analysis.collapse import NCCMismatch
from analysis.hierarchy import HierarchicalMetrics
from analysis.stats import EmptyClassWarning, FeatureStats
from tests.analysis.spawn import join_gloo, run_workers

K, D, N = 6, 5, 157
SEED = 31
WORLD_SIZE = 2
TIMEOUT_S = 60.0
CASES = ("feature_stats", "hierarchical_metrics", "ncc_mismatch", "ncc_mismatch_decisions")
OWNER = {
    "feature_stats": "FeatureStats",
    "hierarchical_metrics": "HierarchicalMetrics",
    "ncc_mismatch": "NCCMismatch",
    "ncc_mismatch_decisions": "NCCMismatch",
}
TENSOR_KEY = {  # a tensor key of each state, for the error tests
    "feature_stats": "means",
    "hierarchical_metrics": "hprec_sum",
    "ncc_mismatch": "centres",
    "ncc_mismatch_decisions": "centres",
}


def data() -> dict[str, torch.Tensor]:
    """Features near collapse (offset 40, spread 0.5), labels, logits and decisions."""
    g = torch.Generator().manual_seed(SEED)
    y = torch.randint(0, K, (N,), generator=g)
    centres = 40.0 + 10.0 * torch.randn(K, D, generator=g, dtype=torch.float64)
    x = centres[y] + 0.5 * torch.randn(N, D, generator=g, dtype=torch.float64)
    logits = torch.randn(N, K, generator=g, dtype=torch.float64)
    logits[torch.arange(N), y] += 1.0
    decisions = torch.randint(0, K, (N,), generator=g)
    # NC4's centres and classifier: training stats without class K-1, a random linear head
    train = FeatureStats(K, D)
    keep = y < K - 1
    train.update(x[keep][:40], y[keep][:40])
    weight = torch.randn(K, D, generator=g, dtype=torch.float64)
    bias = torch.randn(K, generator=g, dtype=torch.float64)
    return {
        "x": x,
        "y": y,
        "logits": logits,
        "decisions": decisions,
        "train_means": train.state_dict()["means"][: K - 1],
        "weight": weight,
        "bias": bias,
    }


def distances() -> torch.Tensor:
    """Two subtrees of three leaves: d = 1 within a subtree, 2 across."""
    group = torch.arange(K) // 3
    d = torch.where(group[:, None] == group[None, :], 1.0, 2.0)
    return d.fill_diagonal_(0.0)


def make(case: str, values: dict[str, torch.Tensor]) -> Any:
    if case == "feature_stats":
        return FeatureStats(K, D, track_class_scatter=True)
    if case == "hierarchical_metrics":
        return HierarchicalMetrics(distances(), ks=(1, 2, 4))
    stats = FeatureStats(K, D)
    stats.update(values["train_means"], torch.arange(K - 1))  # class K-1 has no centre
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyClassWarning)
        if case == "ncc_mismatch":
            return NCCMismatch(stats, values["weight"], values["bias"])
        return NCCMismatch(stats)


def feed(case: str, acc: Any, values: dict[str, torch.Tensor], rows: Any, batch: int) -> None:
    rows = torch.as_tensor(rows, dtype=torch.int64)
    for start in range(0, rows.numel(), batch):
        r = rows[start : start + batch]
        if case == "feature_stats":
            acc.update(values["x"][r], values["y"][r])
        elif case == "hierarchical_metrics":
            acc.update(values["logits"][r], values["y"][r])
        elif case == "ncc_mismatch":
            acc.update(values["x"][r])
        else:
            acc.update(values["x"][r], decisions=values["decisions"][r])


def assert_states_equal(got: dict[str, Any], ref: dict[str, Any], rtol: float = 1e-12) -> None:
    """Ints and int tensors exactly; float tensors to ``rtol`` of the reference's largest entry."""
    assert got.keys() == ref.keys()
    for key, want in ref.items():
        have = got[key]
        if isinstance(want, torch.Tensor):
            assert isinstance(have, torch.Tensor), key
            assert have.shape == want.shape and have.dtype == want.dtype, key
            if want.is_floating_point():
                scale = float(want.abs().max()) if want.numel() else 0.0
                err = float((have - want).abs().max()) if want.numel() else 0.0
                assert err <= rtol * max(scale, 1.0), (key, err, scale)
            else:
                assert torch.equal(have, want), key
        else:
            assert have == want, key


@pytest.mark.parametrize("case", CASES)
def test_shards_merged_equal_one_pass(case: str) -> None:
    values = data()
    one = make(case, values)
    feed(case, one, values, torch.arange(N), batch=N)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(7))
    shards = [make(case, values) for _ in range(3)]
    for shard, rows, batch in zip(
        shards, torch.tensor_split(perm, [20, 90]), (7, 13, 64), strict=True
    ):
        feed(case, shard, values, rows, batch)
    merged = shards[0]
    assert merged.merge(shards[1]) is merged
    merged.merge(shards[2])
    assert_states_equal(merged.state_dict(), one.state_dict())


@pytest.mark.parametrize("case", CASES)
def test_state_round_trips_through_torch_save(case: str, tmp_path: Path) -> None:
    values = data()
    acc = make(case, values)
    feed(case, acc, values, torch.arange(100), batch=33)
    path = tmp_path / "state.pt"
    torch.save(acc.state_dict(), path)
    loaded = type(acc).from_state_dict(torch.load(path, weights_only=True))
    assert_states_equal(loaded.state_dict(), acc.state_dict(), rtol=0.0)
    assert loaded.state_dict()["version"] == 1
    # updates continue from the loaded state as from the original
    feed(case, acc, values, torch.arange(100, N), batch=19)
    feed(case, loaded, values, torch.arange(100, N), batch=19)
    assert_states_equal(loaded.state_dict(), acc.state_dict())


@pytest.mark.parametrize("case", CASES)
def test_reset_forgets_every_sample(case: str) -> None:
    values = data()
    acc = make(case, values)
    feed(case, acc, values, torch.arange(N), batch=50)
    acc.reset()
    assert_states_equal(acc.state_dict(), make(case, values).state_dict(), rtol=0.0)


@pytest.mark.parametrize("case", CASES)
def test_bad_state_errors_name_accumulator_and_key(case: str) -> None:
    values = data()
    acc = make(case, values)
    feed(case, acc, values, torch.arange(N), batch=N)
    state, owner, key = acc.state_dict(), OWNER[case], TENSOR_KEY[case]
    cls = type(acc)
    with pytest.raises(ValueError, match=f"^{owner} state 'version': expected 1, got 99$"):
        cls.from_state_dict(dict(state, version=99))
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(ValueError, match=f"^{owner} state is missing keys \\['{key}'\\]$"):
        cls.from_state_dict(missing)
    with pytest.raises(ValueError, match=f"^{owner} state '{key}': expected shape"):
        cls.from_state_dict(dict(state, **{key: torch.zeros(7, 7, 7)}))
    with pytest.raises(TypeError, match=f"^{owner} state must be a mapping"):
        cls.from_state_dict([state])


@pytest.mark.parametrize("case", CASES)
def test_all_reduce_without_process_group_raises(case: str) -> None:
    assert not dist.is_initialized()
    values = data()
    acc = make(case, values)
    feed(case, acc, values, torch.arange(10), batch=10)
    before = acc.state_dict()
    with pytest.raises(RuntimeError, match=f"{OWNER[case]}.all_reduce: .*not initialised"):
        acc.all_reduce()
    assert_states_equal(acc.state_dict(), before, rtol=0.0)


def test_ncc_merge_rejects_another_classifier() -> None:
    values = data()
    with pytest.raises(ValueError, match="different centres or classifier"):
        make("ncc_mismatch", values).merge(make("ncc_mismatch_decisions", values))


def _owner_of_rows() -> torch.Tensor:
    """Rank of each row: uneven shards, classes 0-1 only on rank 0."""
    values = data()
    g = torch.Generator().manual_seed(11)
    owner = (torch.rand(N, generator=g) < 0.35).to(torch.int64)
    owner[values["y"] <= 1] = 0
    return owner


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    join_gloo(rank, init_file, WORLD_SIZE)
    try:
        values = data()
        rows = torch.nonzero(_owner_of_rows() == rank).flatten()
        states = {}
        for case in CASES:
            acc = make(case, values)
            feed(case, acc, values, rows, batch=11 + 8 * rank)
            assert acc.all_reduce() is acc
            states[case] = acc.state_dict()
        torch.save(states, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def reduced_states(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The all-reduced states of every case on both ranks (one spawn for all cases)."""
    tmp = tmp_path_factory.mktemp("accumulators_dist")
    run_workers(_worker, (str(tmp / "rendezvous"), str(tmp)), WORLD_SIZE, TIMEOUT_S)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("case", CASES)
def test_two_gloo_processes_equal_one(case: str, reduced_states: list[dict[str, Any]]) -> None:
    owner = _owner_of_rows()
    assert 0 < int(owner.sum()) < N
    s0, s1 = reduced_states[0][case], reduced_states[1][case]
    assert_states_equal(s1, s0, rtol=0.0)  # the ranks agree exactly
    values = data()
    one = make(case, values)
    feed(case, one, values, torch.arange(N), batch=N)
    assert_states_equal(s0, one.state_dict())
