import itertools
import random

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import cophenet, linkage
from scipy.spatial.distance import squareform

from geomtools.frames.hierarchy import Hierarchy

KINDS = ("height", "max_path", "path")


# ---------------------------------------------------------------------------- references
def nested_333() -> dict:
    return {
        f"g{a}": {f"g{a}{b}": [f"c{a}{b}{c}" for c in range(3)] for b in range(3)} for a in range(3)
    }


def expected_333() -> np.ndarray:
    """1 for siblings, 2 for cousins, 3 across top-level groups (classes in sorted order)."""
    leaves = list(itertools.product(range(3), range(3), range(3)))
    h = np.zeros((27, 27))
    for i, a in enumerate(leaves):
        for j, b in enumerate(leaves):
            if i != j:
                h[i, j] = 3 if a[0] != b[0] else (2 if a[1] != b[1] else 1)
    return h


def random_tree(n: int, seed: int, window: int | None = None) -> dict[int, int]:
    """Parent map of a random tree on nodes 0..n-1 rooted at 0 (parent of i drawn before i).

    A small ``window`` draws the parent among the last few nodes: deep trees with chains.
    """
    rng = random.Random(seed)
    return {i: rng.randrange(0 if window is None else max(0, i - window), i) for i in range(1, n)}


def brute_force(parent: dict, classes: list) -> dict[str, np.ndarray]:
    """LCA distances by walking parent pointers; heights by recursion on the children."""
    children: dict = {}
    for c, p in parent.items():
        children.setdefault(p, []).append(c)
        children.setdefault(c, [])

    heights: dict = {}

    def height(v) -> int:
        if v not in heights:
            heights[v] = 0 if not children[v] else 1 + max(height(c) for c in children[v])
        return heights[v]

    def chain(v) -> list:
        out = [v]
        while out[-1] in parent:
            out.append(parent[out[-1]])
        return out

    k = len(classes)
    chains = [chain(a) for a in classes]
    out = {kind: np.zeros((k, k)) for kind in KINDS}
    for i in range(k):
        ca = chains[i]
        for j in range(k):
            cb = chains[j]
            anc_b = set(cb)
            up_a = next(s for s, v in enumerate(ca) if v in anc_b)  # edges a -> lca
            lca = ca[up_a]
            up_b = cb.index(lca)
            out["height"][i, j] = height(lca)
            out["max_path"][i, j] = max(up_a, up_b)
            out["path"][i, j] = up_a + up_b
    return out


# ---------------------------------------------------------------------------- balanced tree
def test_balanced_333_hand_known_heights():
    h = Hierarchy.from_nested(nested_333())
    assert h.classes == [f"c{a}{b}{c}" for a, b, c in itertools.product(range(3), repeat=3)]
    assert h.num_classes == 27 and len(h) == 1 + 3 + 9 + 27
    assert h.root == "<root>"
    d = h.lca_distances()
    assert d.dtype == torch.float64 and d.shape == (27, 27)
    np.testing.assert_array_equal(d.numpy(), expected_333())
    # balanced: "height" and "max_path" agree; "path" is twice that
    assert torch.equal(h.lca_distances("max_path"), d)
    assert torch.equal(h.lca_distances("path"), 2 * d)
    assert h.depth("c120") == 3 and h.height("<root>") == 3 and h.height("g12") == 1
    assert h.lca("c120", "c122") == "g12" and h.lca("c120", "c101") == "g1"
    assert h.lca("c120", "c000") == "<root>" and h.lca("c120", "c120") == "c120"
    assert h.lca("g12", "c121") == "g12"


def test_balanced_333_from_edges_same_matrix():
    edges = [("top", f"g{a}") for a in range(3)]
    edges += [(f"g{a}", f"g{a}{b}") for a in range(3) for b in range(3)]
    edges += [(f"g{a}{b}", f"c{a}{b}{c}") for a, b, c in itertools.product(range(3), repeat=3)]
    random.Random(0).shuffle(edges)
    h_edges = Hierarchy.from_edges(edges)
    h_nested = Hierarchy.from_nested({"top": nested_333()})
    assert h_edges.root == h_nested.root == "top"
    assert h_edges.classes == h_nested.classes
    for kind in KINDS:
        assert torch.equal(h_edges.lca_distances(kind), h_nested.lca_distances(kind))


# ---------------------------------------------------------------------------- unbalanced tree
UNBALANCED = {"animal": {"dog": ["poodle", "beagle"], "cat": ["siamese"]}, "vehicle": ["car"]}


def test_unbalanced_each_kind():
    h = Hierarchy.from_nested(UNBALANCED)
    assert h.classes == ["beagle", "car", "poodle", "siamese"]
    assert h.depth("car") == 2 and h.depth("poodle") == 3 and h.depth("<root>") == 0
    assert h.height("animal") == 2 and h.height("vehicle") == 1 and h.height("car") == 0
    # pairs: (beagle, poodle) lca dog; (beagle, siamese) lca animal; (x, car) lca root
    expected = {
        "height": [[0, 3, 1, 2], [3, 0, 3, 3], [1, 3, 0, 2], [2, 3, 2, 0]],
        "max_path": [[0, 3, 1, 2], [3, 0, 3, 3], [1, 3, 0, 2], [2, 3, 2, 0]],
        "path": [[0, 5, 2, 4], [5, 0, 5, 5], [2, 5, 0, 4], [4, 5, 4, 0]],
    }
    for kind, want in expected.items():
        np.testing.assert_array_equal(h.lca_distances(kind).numpy(), np.array(want, float))


def test_unbalanced_height_differs_from_max_path():
    # r -> a -> {x, b -> c -> d}: lca(x, b-branch leaf d) = a with height 3,
    # r -> y: lca(x, y) = r with height 4 but only 2 edges from x
    h = Hierarchy.from_edges([("r", "a"), ("a", "x"), ("a", "b"), ("b", "c"), ("c", "d")])
    h2 = Hierarchy.from_edges([*h.to_edges(), ("r", "y")])
    assert h.classes == ["d", "x"]
    np.testing.assert_array_equal(h.lca_distances("height").numpy(), [[0, 3], [3, 0]])
    np.testing.assert_array_equal(h.lca_distances("max_path").numpy(), [[0, 3], [3, 0]])
    np.testing.assert_array_equal(h.lca_distances("path").numpy(), [[0, 4], [4, 0]])
    assert h2.classes == ["d", "x", "y"]
    np.testing.assert_array_equal(
        h2.lca_distances("height").numpy(), [[0, 3, 4], [3, 0, 4], [4, 4, 0]]
    )
    np.testing.assert_array_equal(
        h2.lca_distances("max_path").numpy(), [[0, 3, 4], [3, 0, 2], [4, 2, 0]]
    )
    np.testing.assert_array_equal(
        h2.lca_distances("path").numpy(), [[0, 4, 5], [4, 0, 3], [5, 3, 0]]
    )


# ---------------------------------------------------------------------------- brute force
@pytest.mark.parametrize(("n", "seed", "window"), [(300, 0, None), (400, 1, 3), (250, 2, 2)])
def test_random_tree_matches_brute_force(n, seed, window):
    parent = random_tree(n, seed, window)
    rng = random.Random(seed + 100)
    edges = [(p, c) for c, p in parent.items()]
    rng.shuffle(edges)
    leaves = sorted(set(parent) - set(parent.values()))
    classes = leaves[:]
    rng.shuffle(classes)
    h = Hierarchy.from_edges(edges, classes)
    assert h.classes == classes and h.root == 0 and len(h) == n
    ref = brute_force(parent, classes)
    for kind in KINDS:
        d = h.lca_distances(kind)
        np.testing.assert_array_equal(d.numpy(), ref[kind])
        assert torch.equal(d, d.T)
    # lca of arbitrary node pairs, and parent / depth / subtree against the parent map
    for _ in range(100):
        a, b = rng.randrange(n), rng.randrange(n)
        anc_b = set()
        v = b
        while True:
            anc_b.add(v)
            if v not in parent:
                break
            v = parent[v]
        v = a
        while v not in anc_b:
            v = parent[v]
        assert h.lca(a, b) == v
    assert dict(h.parent) == parent
    for v in rng.sample(range(n), 30):
        depth, u = 0, v
        while u in parent:
            u, depth = parent[u], depth + 1
        assert h.depth(v) == depth
        under = [leaf for leaf in classes if v in h.ancestors(leaf)]
        assert h.subtree_leaves(v) == under


# ---------------------------------------------------------------------------- class order
def test_classes_order_is_respected():
    h = Hierarchy.from_nested(UNBALANCED)
    order = ["siamese", "car", "beagle", "poodle"]
    h2 = Hierarchy.from_nested(UNBALANCED, order)
    assert h2.classes == order and h2.index("car") == 1
    perm = [h.classes.index(c) for c in order]
    for kind in KINDS:
        d = h.lca_distances(kind)
        assert torch.equal(h2.lca_distances(kind), d[perm][:, perm])
    assert h2.subtree_leaves("animal") == ["siamese", "beagle", "poodle"]


def test_classes_sorted_when_omitted():
    h = Hierarchy.from_edges([(0, 10), (0, 2), (0, 33), (0, 1), (1, 5)])
    assert h.classes == [2, 5, 10, 33]
    mixed = Hierarchy.from_edges([("r", "b"), ("r", 7), ("r", "a"), ("r", 3)])
    assert mixed.classes == [3, 7, "a", "b"]  # ints first (numeric), then strings


def test_numpy_names_and_array_of_pairs():
    pairs = np.array([[0, 1], [0, 2], [1, 3], [1, 4]])
    h = Hierarchy.from_edges(pairs)
    assert h.classes == [2, 3, 4] and all(type(c) is int for c in h.classes)
    assert type(h.root) is int
    h2 = Hierarchy.from_edges(np.array([["r", "a"], ["r", "b"]]))
    assert h2.classes == ["a", "b"] and type(h2.root) is str


def test_properties_round_trip_and_repr():
    h = Hierarchy.from_nested(UNBALANCED)
    assert dict(h.children)["dog"] == ("poodle", "beagle")
    assert h.children["car"] == () and h.is_leaf("car") and not h.is_leaf("dog")
    assert h.parent["poodle"] == "dog" and h.root not in h.parent
    with pytest.raises(TypeError):
        h.parent["x"] = "y"  # type: ignore[index]
    assert h.nodes[0] == h.root and set(h.nodes) == set(h.parent) | {h.root}
    assert "dog" in h and "zebra" not in h and [1] not in h
    assert h.ancestors("poodle") == ["poodle", "dog", "animal", "<root>"]
    assert h.subtree_leaves("car") == ["car"]
    assert h.subtree_leaves(h.root) == h.classes
    h2 = Hierarchy(h.to_edges(), h.classes)
    assert h2.nodes == h.nodes and dict(h2.parent) == dict(h.parent)
    for kind in KINDS:
        assert torch.equal(h2.lca_distances(kind), h.lca_distances(kind))
    assert repr(h) == "Hierarchy(num_classes=4, num_nodes=9, height=3, root='<root>')"
    # the lca_matrix indexes nodes
    m = h.lca_matrix()
    assert h.nodes[m[0, 2]] == "dog" and h.nodes[m[0, 3]] == "animal"


def test_repeated_identical_edge_is_ignored():
    h = Hierarchy.from_edges([("r", "a"), ("r", "b"), ("r", "a")])
    assert h.children["r"] == ("a", "b") and len(h) == 3


def test_nested_grammar():
    tree = {
        "r": [
            "a",
            {"b": None, "c": {}, "d": []},  # leaves
            {"e": "f"},  # a single leaf child
            {"g": ({"h": ["i", "j"]}, "k")},  # tuple of items
        ]
    }
    h = Hierarchy.from_nested(tree)
    assert h.root == "r"
    assert h.classes == ["a", "b", "c", "d", "f", "i", "j", "k"]
    assert h.parent["f"] == "e" and h.parent["i"] == "h" and h.parent["k"] == "g"
    h2 = Hierarchy.from_nested(["x", {"y": ["z"]}], implicit_root="ROOT")
    assert h2.root == "ROOT" and h2.children["ROOT"] == ("x", "y")
    h3 = Hierarchy.from_nested({1: [2, 3]})
    assert h3.classes == [2, 3] and h3.root == 1


def test_restrict_keeps_depths_and_recomputes_heights():
    h = Hierarchy.from_edges(
        [("r", "a"), ("a", "x"), ("a", "b"), ("b", "c"), ("c", "d"), ("r", "y"), ("b", "e")]
    )
    sub = h.restrict(["y", "x"])
    assert sub.classes == ["y", "x"] and sub.root == "r"
    assert set(sub.nodes) == {"r", "a", "x", "y"}
    np.testing.assert_array_equal(sub.lca_distances().numpy(), [[0, 2], [2, 0]])
    assert h.lca_distances()[h.index("x"), h.index("y")] == 4  # before: via the deep branch
    keep = ["d", "y", "e"]
    sub2 = h.restrict(keep)
    idx = [h.index(c) for c in keep]
    for kind in ("max_path", "path"):  # depths are kept, so these are sub-matrices
        assert torch.equal(sub2.lca_distances(kind), h.lca_distances(kind)[idx][:, idx])
    with pytest.raises(ValueError, match=r"'b', 'zz' are not leaves"):
        h.restrict(["x", "b", "zz"])


# ---------------------------------------------------------------------------- linkage
def test_from_linkage_matches_merge_structure():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    k = len(x)
    for method in ("single", "average", "ward"):
        z = linkage(x, method)
        h = Hierarchy.from_linkage(z)
        assert h.classes == list(range(k)) and h.root == 2 * k - 2 and len(h) == 2 * k - 1
        d = h.lca_distances()
        # the two points merged first are siblings: the smallest off-diagonal distance (1)
        a, b = int(z[0, 0]), int(z[0, 1])
        off = d + torch.diag(torch.full((k,), np.inf, dtype=torch.float64))
        assert d[a, b] == 1 == off.min()
        # the LCA node is the first merge holding both points: its merge distance is the
        # cophenetic distance
        lca = h.lca_matrix()
        nodes = np.array(h.nodes)
        lca_ids = nodes[lca]
        coph = squareform(cophenet(z))
        off_diag = ~np.eye(k, dtype=bool)
        np.testing.assert_array_equal(z[lca_ids[off_diag] - k, 2], coph[off_diag])
        # heights follow the merges: h(K+i) = 1 + max(h(children)) (leaves 0)
        ref = np.zeros(2 * k - 1, dtype=int)
        for i, (p, q) in enumerate(z[:, :2].astype(int)):
            ref[k + i] = 1 + max(ref[p], ref[q])
            assert h.height(k + i) == ref[k + i]
            assert h.children[k + i] == (int(p), int(q))


def test_from_linkage_named_classes_and_tensor_input():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 3))
    z = linkage(x, "average")
    names = [f"class{i}" for i in range(12)]
    h = Hierarchy.from_linkage(torch.from_numpy(z), names)
    assert h.classes == names  # the linkage order, not sorted
    assert torch.equal(h.lca_distances(), Hierarchy.from_linkage(z).lca_distances())


def test_from_linkage_errors():
    z = linkage(np.random.default_rng(2).normal(size=(5, 2)))
    with pytest.raises(ValueError, match=r"shape \[K-1, 4\]"):
        Hierarchy.from_linkage(z[:, :3])
    with pytest.raises(ValueError, match="K >= 2"):
        Hierarchy.from_linkage(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="K = 5 classes; got 4"):
        Hierarchy.from_linkage(z, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"collide with the internal node ids 5\.\.8"):
        Hierarchy.from_linkage(z, [0, 1, 2, 3, 7])
    bad = z.copy()
    bad[0, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Hierarchy.from_linkage(bad)
    bad = z.copy()
    bad[0, 0] = 0.5
    with pytest.raises(ValueError, match="integer cluster ids"):
        Hierarchy.from_linkage(bad)
    bad = z.copy()
    bad[0, 1] = 6
    with pytest.raises(ValueError, match=r"Z\[0\] merges cluster 6, but only ids 0..4"):
        Hierarchy.from_linkage(bad)
    bad = z.copy()
    bad[1, :2] = bad[0, :2]
    with pytest.raises(ValueError, match="already merged"):
        Hierarchy.from_linkage(bad)
    bad = z.copy()
    bad[0, 3] = 3
    with pytest.raises(ValueError, match=r"Z\[0, 3\] = 3 but clusters"):
        Hierarchy.from_linkage(bad)
    with pytest.raises(TypeError, match="numeric"):
        Hierarchy.from_linkage([["a", "b", "c", "d"]])


# ---------------------------------------------------------------------------- is-a files
def write_isa(path, seed: int = 0, n: int = 3000):
    """A WordNet-shaped is-a file: ``n%08d`` ids, random tree, comments and blank lines."""
    rng = random.Random(seed)
    ids = [f"n{v:08d}" for v in rng.sample(range(10**8), n)]
    parent = {ids[i]: ids[j] for i, j in random_tree(n, seed, window=50).items()}
    lines = ["# WordNet is-a relations: parent child", ""]
    pairs = list(parent.items())
    rng.shuffle(pairs)
    for child, par in pairs:
        sep = "\t" if rng.random() < 0.3 else " "
        line = f"{par}{sep}{child}"
        r = rng.random()
        if r < 0.05:
            line += "  # trailing comment"
        elif r < 0.1:
            lines.append("   ")
        elif r < 0.12:
            lines.append("# a comment line")
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return parent, ids[0]


def test_isa_file_many_nodes(tmp_path):
    path = tmp_path / "wordnet.is_a.txt"
    parent, root = write_isa(path)
    h = Hierarchy.from_isa_file(path)
    leaves = sorted(set(parent) - set(parent.values()))
    assert len(h) == 3000 and h.root == root
    assert h.num_classes == len(leaves) and h.classes == leaves
    assert dict(h.parent) == parent
    d = h.lca_distances()
    sample = random.Random(5).sample(leaves, 25)
    ref = brute_force(parent, sample)
    idx = [h.index(c) for c in sample]
    np.testing.assert_array_equal(d[idx][:, idx].numpy(), ref["height"])
    np.testing.assert_array_equal(h.lca_distances("path")[idx][:, idx].numpy(), ref["path"])
    # the same file as a str path
    assert Hierarchy.from_isa_file(str(path)).classes == leaves


def test_isa_file_errors(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("# header\nn1 n2\nn1 n3 n4\n")
    with pytest.raises(ValueError, match=r"bad\.txt:3: expected 'parent child'.*3 field"):
        Hierarchy.from_isa_file(path)
    path.write_text("\nn1\n")
    with pytest.raises(ValueError, match=r":2: expected 'parent child'.*1 field"):
        Hierarchy.from_isa_file(path)
    path.write_text("n1 n2\nn1 n3\n\n# c\nn3 n2\n")
    with pytest.raises(
        ValueError, match=r"node 'n2' has two parents: 'n1' \(line 1\) and 'n3' \(line 5\)"
    ):
        Hierarchy.from_isa_file(path)
    path.write_text("n1 n2\nn2 n2\n")
    with pytest.raises(ValueError, match=r"self-loop: node 'n2' is its own parent \(line 2\)"):
        Hierarchy.from_isa_file(path)
    path.write_text("# only comments\n\n")
    with pytest.raises(ValueError, match="empty hierarchy"):
        Hierarchy.from_isa_file(path)
    path.write_text("a x\nb y\n")
    with pytest.raises(ValueError, match="2 roots"):
        Hierarchy.from_isa_file(path)
    assert Hierarchy.from_isa_file(path, implicit_root="top").root == "top"


# ---------------------------------------------------------------------------- errors
def test_cycle_errors_name_the_cycle():
    with pytest.raises(ValueError, match="cycle") as err:
        Hierarchy.from_edges([("r", "x"), ("a", "b"), ("b", "c"), ("c", "a")])
    msg = str(err.value)
    assert all(repr(n) in msg for n in "abc") and "'r'" not in msg and "'x'" not in msg
    with pytest.raises(ValueError, match=r"cycle: ('a' -> 'b' -> 'a'|'b' -> 'a' -> 'b')"):
        Hierarchy.from_edges([("a", "b"), ("b", "a")])
    # a tail hanging below a cycle: the cycle is named, not the tail
    with pytest.raises(ValueError, match="cycle") as err:
        Hierarchy.from_edges([("r", "x"), ("p", "q"), ("q", "p"), ("q", "t1"), ("t1", "t2")])
    assert "t1" not in str(err.value) and "'p'" in str(err.value)


def test_two_parents_names_node_and_both_parents():
    with pytest.raises(
        ValueError, match=r"node 'x' has two parents: 'a' \(pair 2\) and 'b' \(pair 3\)"
    ):
        Hierarchy.from_edges([("r", "a"), ("r", "b"), ("a", "x"), ("b", "x")])
    with pytest.raises(ValueError, match=r"node 'x' has two parents: 'a' and 'b'"):
        Hierarchy.from_nested({"a": ["x"], "b": ["x"]})


def test_several_roots():
    edges = [("a", "x"), ("b", "y"), ("c", "z")]
    with pytest.raises(ValueError, match=r"3 roots .*'a', 'b', 'c'.*implicit_root"):
        Hierarchy.from_edges(edges)
    h = Hierarchy.from_edges(edges, implicit_root="top")
    assert h.root == "top" and h.children["top"] == ("a", "b", "c")
    assert h.lca_distances()[0, 1] == 2
    # one root: implicit_root is ignored
    assert Hierarchy.from_edges(edges[:1], implicit_root="top").root == "a"
    with pytest.raises(ValueError, match="implicit_root 'a' is already a node"):
        Hierarchy.from_edges(edges, implicit_root="a")
    with pytest.raises(ValueError, match="implicit_root 'x' is already a node"):
        Hierarchy.from_nested({"x": ["y"], "z": ["w"]}, implicit_root="x")
    many = [(f"p{i}", f"c{i}") for i in range(15)]
    with pytest.raises(ValueError, match=r"15 roots.*\.\.\. \(5 more\)"):
        Hierarchy.from_edges(many)


def test_classes_must_equal_the_leaves():
    h_edges = [("r", "a"), ("r", "b"), ("a", "x"), ("a", "y")]
    with pytest.raises(ValueError, match=r"classes not in the tree: 'zzz'"):
        Hierarchy.from_edges(h_edges, ["x", "y", "b", "zzz"])
    with pytest.raises(ValueError, match=r"leaves missing from classes: 'b'"):
        Hierarchy.from_edges(h_edges, ["x", "y"])
    with pytest.raises(ValueError, match=r"internal nodes, not leaves: 'a'"):
        Hierarchy.from_edges(h_edges, ["x", "y", "b", "a"])
    with pytest.raises(ValueError, match=r"repeated names: 'x'"):
        Hierarchy.from_edges(h_edges, ["x", "y", "b", "x"])
    with pytest.raises(ValueError, match="classes is empty"):
        Hierarchy.from_edges(h_edges, [])
    with pytest.raises(TypeError, match="classes must be a sequence"):
        Hierarchy.from_edges(h_edges, "xyb")  # type: ignore[arg-type]


def test_empty_and_self_loop():
    with pytest.raises(ValueError, match="empty hierarchy"):
        Hierarchy.from_edges([])
    with pytest.raises(ValueError, match="empty"):
        Hierarchy.from_nested({})
    with pytest.raises(ValueError, match="empty"):
        Hierarchy.from_nested([])
    with pytest.raises(ValueError, match="empty hierarchy"):
        Hierarchy.from_nested({"a": None})
    with pytest.raises(ValueError, match=r"self-loop: node 'a' is its own parent \(pair 1\)"):
        Hierarchy.from_edges([("r", "a"), ("a", "a")])
    with pytest.raises(ValueError, match="self-loop"):
        Hierarchy.from_nested({"a": ["a"]})


def test_type_errors():
    with pytest.raises(TypeError, match=r"str or int, got float 1\.5 \(pair 0\)"):
        Hierarchy.from_edges([("r", 1.5)])
    with pytest.raises(TypeError, match="got bool"):
        Hierarchy.from_edges([("r", True)])
    with pytest.raises(TypeError, match=r"pair 1 must be a \(parent, child\) pair"):
        Hierarchy.from_edges([("r", "a"), ("r", "b", "c")])
    with pytest.raises(TypeError, match=r"pair 0 must be a \(parent, child\) pair"):
        Hierarchy.from_edges(["ra"])
    with pytest.raises(TypeError, match="iterable of"):
        Hierarchy.from_edges("ra")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="top level"):
        Hierarchy.from_nested("animal")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"children of 'a' must be a dict, a list"):
        Hierarchy.from_nested({"a": 1.5})
    with pytest.raises(TypeError, match=r"children of 'a': item 1 must be a name or a dict"):
        Hierarchy.from_nested({"a": ["b", ["c"]]})
    with pytest.raises(TypeError, match="top-level item 0"):
        Hierarchy.from_nested([["a"]])
    with pytest.raises(TypeError, match=r"got tuple \('a', 1\) \(a dict key under 'r'\)"):
        Hierarchy.from_nested({"r": {("a", 1): None}})


def test_unknown_nodes_and_bad_kind():
    h = Hierarchy.from_nested(UNBALANCED)
    for call in (
        lambda: h.depth("zebra"),
        lambda: h.height("zebra"),
        lambda: h.lca("dog", "zebra"),
        lambda: h.subtree_leaves("zebra"),
        lambda: h.ancestors("zebra"),
        lambda: h.is_leaf([1]),  # unhashable
    ):
        with pytest.raises(ValueError, match="unknown node"):
            call()
    with pytest.raises(ValueError, match=r"'dog' is not a class \(an internal node\)"):
        h.index("dog")
    with pytest.raises(ValueError, match=r"'zebra' is not a class \(not in this hierarchy\)"):
        h.index("zebra")
    with pytest.raises(ValueError, match="kind must be 'height', 'max_path' or 'path'"):
        h.lca_distances("cophenetic")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- scale
def test_thousand_leaves_deep_and_wide():
    # speed is measured in benchmarks/bench_haframe.py, not asserted here
    rng = random.Random(0)
    edges = [(f"i{rng.randrange(max(0, i - 5), i)}", f"i{i}") for i in range(1, 3000)]
    internal = sorted({p for p, _ in edges})
    edges += [(rng.choice(internal), f"leaf{j}") for j in range(1000)]
    caterpillar = [(f"c{i}", f"c{i + 1}") for i in range(1000)]
    caterpillar += [(f"c{i}", f"l{i}") for i in range(1000)]
    for pairs in (edges, caterpillar):
        h = Hierarchy.from_edges(pairs)
        d = h.lca_distances()
        assert h.num_classes >= 1000 and d.shape == (h.num_classes,) * 2
    # caterpillar: l_i and l_j (i < j) meet at c_i, whose height is 1000 - i
    i, j = h.index("l10"), h.index("l500")
    assert d[i, j] == 990 and h.lca_distances("path")[i, j] == 1 + 491
