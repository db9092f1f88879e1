"""analysis.hierarchy.HierarchicalMetrics against brute-force loops over samples.

The brute force below is written from the documented definitions only (docs/conventions.md,
"Hierarchy metrics", and the class docstring): random trees, LCA heights by walking ancestors,
rankings by Python ``sorted`` with explicit keys, CRM risks in exact rational arithmetic.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch

from analysis.hierarchy import DEFAULT_KS, HierarchicalMetrics, check_distances

REL = 1e-12

# K = 4, two-level tree: root -> A{0, 1}, B{2, 3}; LCA heights 1 (siblings) and 2 (root)
D4 = [[0, 1, 2, 2], [1, 0, 2, 2], [2, 2, 0, 1], [2, 2, 1, 0]]


# ---------------------------------------------------------------------------- brute force
def random_tree_distances(seed: int, k: int) -> list[list[int]]:
    """LCA heights of a random (unbalanced, with single-child chains) tree with k leaves."""
    rng = np.random.default_rng(seed)
    parent: dict[int, int] = {}
    frontier = list(range(k))
    nxt = k
    while len(frontier) > 1:
        m = int(rng.integers(2, min(4, len(frontier)) + 1))
        pick = sorted(rng.choice(len(frontier), size=m, replace=False).tolist(), reverse=True)
        children = [frontier.pop(i) for i in pick]
        node = nxt
        nxt += 1
        for c in children:
            parent[c] = node
        if rng.random() < 0.3:  # a single-child chain above the new node
            parent[node] = nxt
            node = nxt
            nxt += 1
        frontier.append(node)
    kids: dict[int, list[int]] = {}
    for c, p in parent.items():
        kids.setdefault(p, []).append(c)

    def height(v: int) -> int:
        return 0 if v not in kids else 1 + max(height(c) for c in kids[v])

    def ancestors(v: int) -> list[int]:
        out = [v]
        while out[-1] in parent:
            out.append(parent[out[-1]])
        return out

    dist = [[0] * k for _ in range(k)]
    for a in range(k):
        anc_a = ancestors(a)
        for b in range(k):
            anc_b = set(ancestors(b))
            lca = next(v for v in anc_a if v in anc_b)
            dist[a][b] = height(lca)
    return dist


def softmax(x: list[float]) -> list[float]:
    m = max(x)
    e = [math.exp(v - m) for v in x]
    s = math.fsum(e)
    return [v / s for v in e]


def brute_rank(x: list[float], dist: list[list[int]], crm: bool) -> list[int]:
    k = len(x)
    if not crm:
        return sorted(range(k), key=lambda c: (-x[c], c))
    p = [Fraction(v) for v in softmax(x)]
    risk = [sum(p[j] * dist[c][j] for j in range(k)) for c in range(k)]
    return sorted(range(k), key=lambda c: (risk[c], -x[c], c))


def brute_metrics(
    rankings: list[list[int]], labels: list[int], dist: list[list[int]], ks: tuple[int, ...]
) -> dict[str, float]:
    n = len(labels)
    k_all = len(dist)
    dmax = max(max(row) for row in dist)
    top1 = [r[0] for r in rankings]
    mistakes = [i for i in range(n) if top1[i] != labels[i]]
    out: dict[str, float] = {
        "num_samples": n,
        "num_mistakes": len(mistakes),
        "top1_error": len(mistakes) / n,
    }
    if mistakes:
        out["mistake_severity"] = sum(dist[top1[i]][labels[i]] for i in mistakes) / len(mistakes)
    k_max = max(ks)
    hp = [0.0] * (k_max + 1)  # hp[k] = mean over samples of hP_i@k
    pairs = list(zip(rankings, labels, strict=True))
    for k in range(1, k_max + 1):
        total = 0.0
        for r, y in pairs:
            got = sum(1 - dist[r[j]][y] / dmax for j in range(k))
            best_sims = sorted((1 - dist[c][y] / dmax for c in range(k_all)), reverse=True)
            total += got / sum(best_sims[:k])
        hp[k] = total / n
    for k in ks:
        out[f"hdist@{k}_mean"] = sum(sum(dist[r[j]][y] for j in range(k)) / k for r, y in pairs) / n
        out[f"hdist@{k}_min"] = sum(min(dist[r[j]][y] for j in range(k)) for r, y in pairs) / n
        out[f"hprec@{k}"] = hp[k]
        out[f"hmAP@{k}"] = sum(hp[1 : k + 1]) / k
    out["hmAP"] = sum(hp[1 : k_max + 1]) / k_max
    return out


def assert_metrics_equal(got: dict[str, float], want: dict[str, float], rel: float = REL) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=rel, abs=rel), key


def logits_for(rankings: list[list[int]]) -> torch.Tensor:
    """Logits whose descending order is each given full ranking."""
    r = torch.tensor(rankings)
    k = r.shape[1]
    values = torch.arange(k, 0, -1, dtype=torch.float32).expand_as(r).contiguous()
    return torch.zeros(r.shape).scatter_(1, r, values)


# ---------------------------------------------------------------------------- hand example
HAND_RANKINGS = [[0, 1, 2, 3], [1, 0, 3, 2], [0, 2, 3, 1], [2, 0, 1, 3]]
HAND_LABELS = [0, 0, 2, 3]
HAND_EXPECTED: dict[str, float] = {
    "num_samples": 4,
    "num_mistakes": 3,
    "top1_error": 3 / 4,
    "mistake_severity": (1 + 2 + 1) / 3,
    # per-sample distances of the ranked classes: [0,1,2], [1,0,2], [2,0,1], [1,2,2]
    "hdist@1_mean": (0 + 1 + 2 + 1) / 4,
    "hdist@1_min": (0 + 1 + 2 + 1) / 4,
    "hprec@1": (1 + 1 / 2 + 0 + 1 / 2) / 4,  # s = 1 - d/2; best sum at k=1 is 1
    "hmAP@1": 1 / 2,
    "hdist@2_mean": (1 / 2 + 1 / 2 + 1 + 3 / 2) / 4,
    "hdist@2_min": (0 + 0 + 0 + 1) / 4,
    "hprec@2": (1 + 1 + 2 / 3 + 1 / 3) / 4,  # best sum at k=2 is 1 + 1/2
    "hmAP@2": (1 / 2 + 3 / 4) / 2,
    "hdist@3_mean": (1 + 1 + 1 + 5 / 3) / 4,
    "hdist@3_min": (0 + 0 + 0 + 1) / 4,
    "hprec@3": (1 + 1 + 1 + 1 / 3) / 4,  # best sum at k=3 is 1 + 1/2 + 0
    "hmAP@3": (1 / 2 + 3 / 4 + 5 / 6) / 3,
    "hmAP": (1 / 2 + 3 / 4 + 5 / 6) / 3,
}


def test_hand_example_every_key() -> None:
    acc = HierarchicalMetrics(torch.tensor(D4), ks=(1, 2, 3))
    acc.update(logits_for(HAND_RANKINGS), torch.tensor(HAND_LABELS))
    assert_metrics_equal(acc.compute(), HAND_EXPECTED)
    # the same from the rankings, and from the brute force
    ranked = HierarchicalMetrics(np.array(D4), ks=[3, 2, 1, 2])  # sorted, deduplicated
    ranked.update_ranked(torch.tensor(HAND_RANKINGS)[:, :3], np.array(HAND_LABELS))
    assert_metrics_equal(ranked.compute(), HAND_EXPECTED)
    assert_metrics_equal(brute_metrics(HAND_RANKINGS, HAND_LABELS, D4, (1, 2, 3)), HAND_EXPECTED)


# ---------------------------------------------------------------------------- brute force
@pytest.mark.parametrize("crm", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_matches_brute_force(seed: int, crm: bool) -> None:
    k, n = 23, 103
    dist = random_tree_distances(seed, k)
    rng = np.random.default_rng(100 + seed)
    logits = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32) * 2)
    labels = torch.from_numpy(rng.integers(0, k, n))
    ks = (1, 3, 5, 10, 20)
    acc = HierarchicalMetrics(torch.tensor(dist, dtype=torch.float32), ks, crm=crm)
    for start in range(0, n, 10):  # last batch has 3 samples
        acc.update(logits[start : start + 10], labels[start : start + 10])
    rankings = [brute_rank(row, dist, crm) for row in logits.double().tolist()]
    want = brute_metrics(rankings, labels.tolist(), dist, ks)
    assert want["num_mistakes"] > 0
    assert_metrics_equal(acc.compute(), want)


def test_merge_equals_one_accumulator() -> None:
    k, n = 17, 103
    dist = random_tree_distances(3, k)
    rng = np.random.default_rng(7)
    logits = torch.from_numpy(rng.standard_normal((n, k)))
    labels = torch.from_numpy(rng.integers(0, k, n))
    one = HierarchicalMetrics(dist_t := torch.tensor(dist), (1, 5, 10))
    a = HierarchicalMetrics(dist_t, (1, 5, 10))
    b = HierarchicalMetrics(dist_t.clone(), (1, 5, 10))
    for start in range(0, n, 10):
        one.update(logits[start : start + 10], labels[start : start + 10])
        (a if start < 40 else b).update(logits[start : start + 10], labels[start : start + 10])
    assert a.merge(b) is a
    got, want = a.compute(), one.compute()
    assert_metrics_equal(got, want, rel=1e-14)
    for key in ("num_samples", "num_mistakes", "top1_error", "mistake_severity"):
        assert got[key] == want[key]
    # merging something incompatible
    with pytest.raises(ValueError, match="different settings"):
        a.merge(HierarchicalMetrics(dist_t, (1, 5)))
    with pytest.raises(ValueError, match="different settings"):
        a.merge(HierarchicalMetrics(dist_t, (1, 5, 10), crm=True))
    other = dist_t.clone()
    other[0, 1] = other[1, 0] = other[0, 1] + 1
    with pytest.raises(ValueError, match="different distance matrices"):
        a.merge(HierarchicalMetrics(other, (1, 5, 10)))
    with pytest.raises(TypeError, match="HierarchicalMetrics"):
        a.merge(object())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- rankings
def test_crm_ranking_matches_brute_force() -> None:
    k = 29
    dist = random_tree_distances(5, k)
    rng = np.random.default_rng(11)
    logits = torch.from_numpy(rng.standard_normal((40, k)) * 3)
    got = HierarchicalMetrics(torch.tensor(dist), (1, 5), crm=True).rank(logits, k)
    want = [brute_rank(row, dist, True) for row in logits.tolist()]
    assert got.tolist() == want
    # CRM really re-ranks on this data
    plain = HierarchicalMetrics(torch.tensor(dist), (1, 5)).rank(logits, k)
    assert not torch.equal(got, plain)


def test_crm_ties_and_logit_tiebreak() -> None:
    acc = HierarchicalMetrics(torch.tensor(D4), (1,), crm=True)
    # p = (.36, .18, .02, .44): R_0 = .18 + 2(.02 + .44) = 1.10 = R_3 = .02 + 2(.36 + .18);
    # the tie goes to the higher probability (class 3), although 0 has the lower index;
    # then R_1 = .36 + 2(.46) = 1.28 < R_2 = .44 + 2(.54) = 1.52
    p = torch.tensor([[0.36, 0.18, 0.02, 0.44]], dtype=torch.float64)
    assert acc.rank(p.log(), 4).tolist() == [[3, 0, 1, 2]]
    # mirror image: the tie goes to class 0
    assert acc.rank(p.flip(1).log(), 4).tolist() == [[0, 3, 2, 1]]
    # all probabilities equal: all risks equal, order by index
    assert acc.rank(torch.zeros(2, 4), 4).tolist() == [[0, 1, 2, 3]] * 2
    # equal probabilities on a subtree: risks of 2 and 3 tie, then index order
    x = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert acc.rank(x, 4).tolist() == [[2, 3, 0, 1]]
    # brute force (exact rational risks) agrees on tie-heavy random logits
    dist = random_tree_distances(2, 12)
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.integers(0, 3, (60, 12)).astype(np.float64))
    got = HierarchicalMetrics(torch.tensor(dist), (1,), crm=True).rank(x, 12).tolist()
    assert got == [brute_rank(row, dist, True) for row in x.tolist()]


def test_logit_ties_go_to_lowest_index() -> None:
    acc = HierarchicalMetrics(torch.tensor(D4), (1, 2, 4))
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 2.0], [-0.0, 0.0, 5.0, 0.0]])
    assert acc.rank(x, 4).tolist() == [[0, 1, 2, 3], [1, 3, 0, 2], [2, 0, 1, 3]]
    dist = random_tree_distances(4, 15)
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.integers(0, 4, (50, 15)).astype(np.float16))
    got = HierarchicalMetrics(torch.tensor(dist), (1,)).rank(x, 15).tolist()
    assert got == [brute_rank(row, dist, False) for row in x.double().tolist()]
    # constant logits: predicts class 0 for everyone
    acc = HierarchicalMetrics(torch.tensor(D4), (1,))
    acc.update(torch.zeros(4, 4), torch.tensor([0, 1, 2, 3]))
    out = acc.compute()
    assert out["num_mistakes"] == 3
    assert out["mistake_severity"] == pytest.approx((1 + 2 + 2) / 3)


def test_update_ranked_matches_update() -> None:
    k, n = 19, 50
    dist = torch.tensor(random_tree_distances(8, k))
    rng = np.random.default_rng(8)
    logits = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, k, n).astype(np.int32))
    a = HierarchicalMetrics(dist, (1, 5, 10))
    a.update(logits, labels)
    b = HierarchicalMetrics(dist, (1, 5, 10))
    ranked = torch.argsort(logits, dim=1, descending=True, stable=True)[:, :12]
    b.update_ranked(ranked.to(torch.int32), labels)  # extra columns ignored
    assert a.compute() == b.compute()


# ---------------------------------------------------------------------------- special cases
def test_perfect_predictions() -> None:
    k = 21
    dist = torch.tensor(random_tree_distances(9, k), dtype=torch.float64)
    labels = torch.arange(k).repeat(3)
    # rank every class by its distance to the label: correct class first, nearest next
    logits = -dist[labels] + 1e-3 * torch.rand(labels.numel(), k, dtype=torch.float64)
    acc = HierarchicalMetrics(dist, (1, 5, 10, 20))
    acc.update(logits, labels)
    out = acc.compute()
    assert out["top1_error"] == 0.0
    assert out["num_mistakes"] == 0
    assert "mistake_severity" not in out  # undefined without mistakes: omitted, never NaN
    assert out["hdist@1_mean"] == 0.0
    assert out["hdist@1_min"] == 0.0
    assert out["hdist@20_min"] == 0.0
    for key in ("hprec@1", "hprec@5", "hprec@10", "hprec@20", "hmAP@20", "hmAP"):
        assert out[key] == 1.0, key
    assert not any(math.isnan(v) for v in out.values())


def test_reference_code_normalisation_differs_by_b_over_k() -> None:
    """The making-better-mistakes per-batch hP divides by a sum over all K classes."""
    k, b, batches = 4, 6, 5
    rng = np.random.default_rng(12)
    dist = np.array(D4, dtype=np.float64)  # every class has the profile (0, 1, 2, 2)
    logits = rng.standard_normal((b * batches, k))
    labels = rng.integers(0, k, b * batches)
    acc = HierarchicalMetrics(dist, (1, 2, 3))
    best_all = 1 - np.sort(dist, axis=1) / dist.max()  # [K, K] as in the reference
    ref = np.zeros(3)
    for i in range(batches):
        acc.update(logits[i * b : (i + 1) * b], labels[i * b : (i + 1) * b])
        top = np.argsort(-logits[i * b : (i + 1) * b], axis=1, kind="stable")
        sim = 1 - dist[top, labels[i * b : (i + 1) * b, None]] / dist.max()
        ref += [sim[:, :kk].sum() / best_all[:, :kk].sum() for kk in (1, 2, 3)]
    ref /= batches
    out = acc.compute()
    ours = np.array([out["hprec@1"], out["hprec@2"], out["hprec@3"]])
    np.testing.assert_allclose(ref, b / k * ours, rtol=1e-12)


def test_default_ks_and_zero_off_diagonal() -> None:
    assert HierarchicalMetrics(torch.tensor(D4)).ks == (1,)
    assert DEFAULT_KS == (1, 5, 10, 20)
    d = torch.tensor(random_tree_distances(1, 12))
    assert HierarchicalMetrics(d).ks == (1, 5, 10)
    assert HierarchicalMetrics(torch.tensor(random_tree_distances(1, 30))).ks == DEFAULT_KS
    # two classes at distance 0 (merged leaves): predicting the twin is a mistake of severity 0
    d0 = torch.tensor([[0, 0, 1], [0, 0, 1], [1, 1, 0]])
    acc = HierarchicalMetrics(d0, (1, 2))
    acc.update(torch.tensor([[0.0, 1.0, -1.0]]), torch.tensor([0]))
    out = acc.compute()
    assert (out["num_mistakes"], out["mistake_severity"], out["hprec@1"]) == (1, 0.0, 1.0)


def test_input_dtypes_and_numpy() -> None:
    acc = HierarchicalMetrics(np.array(D4, dtype=np.int64), (1, 2, 3))
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        acc.reset()
        acc.update(logits_for(HAND_RANKINGS).to(dtype), torch.tensor(HAND_LABELS, dtype=torch.int8))
        assert_metrics_equal(acc.compute(), HAND_EXPECTED)
    acc.reset()
    acc.update(logits_for(HAND_RANKINGS).numpy(), np.array(HAND_LABELS, dtype=np.uint8))
    assert_metrics_equal(acc.compute(), HAND_EXPECTED)
    assert "samples=4" in repr(acc)


def test_state_dict_round_trip(tmp_path: Any) -> None:
    dist = torch.tensor(random_tree_distances(6, 14))
    rng = np.random.default_rng(6)
    logits = torch.from_numpy(rng.standard_normal((30, 14)))
    labels = torch.from_numpy(rng.integers(0, 14, 30))
    acc = HierarchicalMetrics(dist, (1, 5), crm=True)
    acc.update(logits[:20], labels[:20])
    path = tmp_path / "state.pt"
    torch.save(acc.state_dict(), path)
    restored = HierarchicalMetrics.from_state_dict(torch.load(path, weights_only=True))
    assert (restored.ks, restored.crm, restored.num_samples) == ((1, 5), True, 20)
    assert restored.compute() == acc.compute()
    acc.update(logits[20:], labels[20:])
    restored.update(logits[20:], labels[20:])
    assert restored.compute() == acc.compute()
    # in-memory buffer too, and a broken state
    buf = io.BytesIO()
    torch.save(acc.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    state["hprec_sum"] = torch.zeros(3)
    with pytest.raises(ValueError, match="'hprec_sum': expected shape"):
        HierarchicalMetrics.from_state_dict(state)
    del state["hdist_sum"]
    with pytest.raises(ValueError, match="missing keys \\['hdist_sum'\\]"):
        HierarchicalMetrics.from_state_dict(state)


def test_reset_and_empty() -> None:
    acc = HierarchicalMetrics(torch.tensor(D4), (1,))
    with pytest.raises(ValueError, match="no samples"):
        acc.compute()
    acc.update(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    acc.reset()
    assert acc.num_samples == 0
    with pytest.raises(ValueError, match="no samples"):
        acc.compute()


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("distances", "exc", "match"),
    [
        ([[0, 1], [1, 0]], TypeError, "torch.Tensor or numpy.ndarray"),
        (torch.tensor([[False, True], [True, False]]), TypeError, "real numeric dtype"),
        (torch.zeros(2, 3), ValueError, "square"),
        (torch.zeros(1, 1), ValueError, "at least 2 classes"),
        (torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), ValueError, "1 NaN"),
        (torch.tensor([[0.0, -1.0], [-1.0, 0.0]]), ValueError, r"non-negative.*\[0, 1\] = -1"),
        (torch.tensor([[0.0, 1.0], [1.0, 2.0]]), ValueError, r"zero diagonal.*classes \[1\]"),
        (torch.tensor([[0.0, 1.0], [2.0, 0.0]]), ValueError, r"symmetric.*\[0, 1\] = 1.0 but"),
        (torch.zeros(3, 3), ValueError, "all zeros"),
    ],
)
def test_bad_distances(distances: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        check_distances(distances)
    with pytest.raises(exc, match=match):
        HierarchicalMetrics(distances)


@pytest.mark.parametrize(
    ("ks", "exc", "match"),
    [
        ((0, 1), ValueError, "1 <= k <= K = 4, got 0"),
        ((1, 5), ValueError, "1 <= k <= K = 4, got 5"),
        ((), ValueError, "ks is empty"),
        ((1.0,), TypeError, "ks must contain ints"),
        ((True,), TypeError, "ks must contain ints"),
        (3, TypeError, "sequence of ints"),
    ],
)
def test_bad_ks(ks: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        HierarchicalMetrics(torch.tensor(D4), ks)


def test_bad_batches() -> None:
    acc = HierarchicalMetrics(torch.tensor(D4), (1, 2))
    y = torch.tensor([0, 1])
    cases: list[tuple[Any, Any, type[Exception], str]] = [
        (torch.zeros(2, 3), y, ValueError, "3 columns but distances describe K = 4"),
        (torch.zeros(2, 4, dtype=torch.int64), y, TypeError, "floating-point dtype"),
        (torch.zeros(4), y, ValueError, r"shape \[B, K\]"),
        (torch.zeros(0, 4), y[:0], ValueError, "empty batch"),
        (torch.tensor([[0.0, 1, 2, 3], [0, float("inf"), 0, 0]]), y, ValueError, r"1 Inf.*\[1\]"),
        (torch.zeros(2, 4), torch.tensor([0, 1, 2]), ValueError, "3 entries but logits have 2"),
        (torch.zeros(2, 4), torch.tensor([0.0, 1.0]), TypeError, "integer dtype"),
        (torch.zeros(2, 4), torch.tensor([0, 4]), ValueError, r"out of range \[0, 4\)"),
        (torch.zeros(2, 4), torch.tensor([-1, 0]), ValueError, "out of range"),
        ([[0.0] * 4] * 2, y, TypeError, "torch.Tensor or numpy.ndarray"),
    ]
    for logits, labels, exc, match in cases:
        with pytest.raises(exc, match=match):
            acc.update(logits, labels)
    assert acc.num_samples == 0  # nothing was accumulated by a rejected batch
    ranked_cases: list[tuple[Any, type[Exception], str]] = [
        (torch.tensor([[0], [1]]), ValueError, "1 columns but k_max = max\\(ks\\) = 2"),
        (torch.tensor([[0.0, 1.0], [1.0, 0.0]]), TypeError, "integer dtype"),
        (torch.tensor([[0, 4], [1, 0]]), ValueError, r"out of range \[0, 4\).*rows: \[0\]"),
        (torch.tensor([[0, 1], [2, 2]]), ValueError, r"repeat a class.*rows: \[1\]"),
        (torch.tensor([0, 1]), ValueError, r"shape \[B, k\]"),
    ]
    for ranked, exc, match in ranked_cases:
        with pytest.raises(exc, match=match):
            acc.update_ranked(ranked, y)
    with pytest.raises(ValueError, match="crm=True re-ranks"):
        HierarchicalMetrics(torch.tensor(D4), (1,), crm=True).update_ranked(
            torch.tensor([[0], [1]]), y
        )
    with pytest.raises(ValueError, match="1 <= k <= K = 4, got 5"):
        acc.rank(torch.zeros(1, 4), 5)
    with pytest.raises(TypeError, match="crm must be a bool"):
        HierarchicalMetrics(torch.tensor(D4), crm=1)  # type: ignore[arg-type]
