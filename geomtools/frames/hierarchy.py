r"""Class hierarchies: a rooted tree whose leaves are the classes, and LCA distances.

A :class:`Hierarchy` is a rooted tree. Its **leaves are the classes** (in a fixed order,
class index :math:`0..K-1`); every other node is an internal node (a superclass). Node names
are ``str`` or ``int``. Build one from

* ``(parent, child)`` pairs (:meth:`Hierarchy.from_edges`),
* a WordNet-style is-a text file, one ``parent child`` pair a line
  (:meth:`Hierarchy.from_isa_file`),
* nested dicts and lists (:meth:`Hierarchy.from_nested`),
* a SciPy linkage matrix, e.g. of the class means (:meth:`Hierarchy.from_linkage`).

Definitions (all counted in edges):

* :math:`\operatorname{depth}(v)`: edges from the root to :math:`v` (root 0);
* :math:`\operatorname{height}(v)`: edges on the longest downward path from :math:`v` to a leaf
  (leaves 0);
* :math:`\operatorname{lca}(a, b)`: the deepest node that is an ancestor of both (a node is its
  own ancestor, so :math:`\operatorname{lca}(a, a) = a`).

:meth:`Hierarchy.lca_distances` returns the :math:`K\times K` matrix, for :math:`v =
\operatorname{lca}(a, b)`,

.. math::

    d_{\text{height}}(a, b) &= \operatorname{height}(v), \\
    d_{\text{max\_path}}(a, b) &= \max\big(\operatorname{depth}(a),
        \operatorname{depth}(b)\big) - \operatorname{depth}(v), \\
    d_{\text{path}}(a, b) &= \operatorname{depth}(a) + \operatorname{depth}(b)
        - 2\operatorname{depth}(v),

all 0 on the diagonal. ``"height"`` is the project convention (``docs/conventions.md``, "Hierarchy
metrics"; the mistake severity of Bertinetto et al. 2020 and the :math:`h_{ij}` of HAFrame,
Liang & Davis 2023). ``"max_path"`` counts edges from the deeper of the two classes up to the
LCA; ``"path"`` is the tree (shortest-path) distance, a metric. When every leaf has the same
depth, :math:`\operatorname{height}(v) = \operatorname{depth}(\text{leaf}) -
\operatorname{depth}(v)`, so ``"height"`` and ``"max_path"`` agree; on unbalanced trees
``"height"`` can exceed ``"max_path"`` (a deep sibling branch raises the LCA's height).

Algorithm: leaves are numbered in depth-first order, so the leaves under each node form a
contiguous range. Two leaves in the ranges of different children :math:`c \ne c'` of a node
:math:`v` have :math:`\operatorname{lca} = v`; for each child the two slices of the parent's
range beside the child's range are filled with :math:`v` (numpy slice assignments, two per
edge). Every entry of the :math:`K\times K` LCA matrix is written exactly once: :math:`O(K^2)`
work and :math:`O(\text{nodes})` Python steps, whatever the depth (a 4000-node tree of height
965 with K ≈ 2000 leaves: ~0.06 s on 2 CPU cores, construction included).

References
----------
G. A. Miller. WordNet: a lexical database for English. Communications of the ACM 38(11), 1995.
L. Bertinetto, R. Mueller, K. Tertikas, S. Samangooei, N. A. Lord. Making better mistakes:
leveraging class hierarchies with deep networks. CVPR 2020.
T. Liang, J. Davis. Inducing neural collapse to a fixed hierarchy-aware frame for reducing
mistake severity. ICCV 2023.
D. Müllner. Modern hierarchical, agglomerative clustering algorithms. arXiv:1109.2378, 2011
(the linkage matrix format used by :func:`scipy.cluster.hierarchy.linkage`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

import numpy as np
import torch

__all__ = ["Hierarchy", "Node"]

Node: TypeAlias = str | int
"""A node name: ``str`` or ``int`` (``bool`` is rejected; numpy scalars are converted)."""

DistanceKind = Literal["height", "max_path", "path"]

_SHOW = 10  # names listed in an error message before "... (N more)"


# ---------------------------------------------------------------------------- helpers
def _node(x: Any, where: str = "") -> Node:
    """Validate a node name; numpy strings and integers become ``str`` / ``int``."""
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"node names must be str or int, got bool {x!r}{where}")
    if isinstance(x, str):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    raise TypeError(f"node names must be str or int, got {type(x).__name__} {x!r}{where}")


def _names(items: Sequence[Node]) -> str:
    """``'a', 'b', ... (N more)`` for an error message."""
    shown = ", ".join(repr(x) for x in items[:_SHOW])
    more = len(items) - _SHOW
    return shown + (f" ... ({more} more)" if more > 0 else "")


def _sort_key(n: Node) -> tuple[int, int, str]:
    """Ints first in numeric order, then strings in lexicographic order."""
    return (1, 0, n) if isinstance(n, str) else (0, n, "")


def _class_list(classes: Any) -> list[Node]:
    """Validate a ``classes`` argument: a sequence of distinct node names."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
        raise TypeError(
            f"classes must be a sequence of node names, got {type(classes).__name__} {classes!r}"
        )
    out = [_node(c, f" (classes[{i}])") for i, c in enumerate(classes)]
    if not out:
        raise ValueError("classes is empty")
    if len(set(out)) < len(out):
        seen: set[Node] = set()
        dup: list[Node] = []
        for c in out:
            if c in seen and c not in dup:
                dup.append(c)
            seen.add(c)
        raise ValueError(f"classes contains repeated names: {_names(dup)}")
    return out


# ---------------------------------------------------------------------------- Hierarchy
class Hierarchy:
    r"""A rooted class hierarchy whose leaves are the classes.

    Parameters
    ----------
    pairs : iterable of (parent, child)
        Edges, node names ``str`` or ``int``. A repeated identical pair is ignored. Same as
        :meth:`from_edges`.
    classes : sequence of node names, optional
        The class order (class index ``i`` is ``classes[i]``). It must name exactly the leaves
        of the tree: internal nodes cannot be classes, and every leaf must be listed (use
        :meth:`restrict` to keep only some leaves). Default: the leaves sorted (ints first in
        numeric order, then strings).
    implicit_root : node name, optional
        When the edges have several roots (nodes without a parent), a new node of this name is
        made the parent of all of them; without it several roots are an error. Ignored when
        there is a single root. The name must not already be a node.

    Raises
    ------
    ValueError
        No edge; a self-loop; a node with two different parents (both named); a cycle (the
        nodes on it are named); several roots without ``implicit_root``; ``classes`` not equal
        to the leaf set (classes not in the tree, classes that are internal nodes, and leaves
        missing from ``classes`` are listed).
    TypeError
        A node name that is not ``str`` or ``int``; a malformed pair.

    Notes
    -----
    The object is immutable. Children keep the order in which their edges were given;
    :attr:`nodes` lists the nodes in depth-first preorder from the root.
    """

    def __init__(
        self,
        pairs: Iterable[tuple[Node, Node]],
        classes: Sequence[Node] | None = None,
        *,
        implicit_root: Node | None = None,
    ) -> None:
        edges, where = _parse_pairs(pairs)
        self._build(edges, where, classes, implicit_root)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_edges(
        cls,
        pairs: Iterable[tuple[Node, Node]],
        classes: Sequence[Node] | None = None,
        *,
        implicit_root: Node | None = None,
    ) -> Hierarchy:
        """Hierarchy from ``(parent, child)`` pairs.

        Parameters
        ----------
        pairs : iterable of (parent, child)
            Edges (any iterable of 2-sequences, e.g. a list of tuples or an ``[E, 2]`` array).
        classes, implicit_root
            See :class:`Hierarchy`.

        Examples
        --------
        >>> h = Hierarchy.from_edges([("animal", "dog"), ("animal", "cat")])
        >>> h.classes, h.root
        (['cat', 'dog'], 'animal')
        """
        return cls(pairs, classes, implicit_root=implicit_root)

    @classmethod
    def from_isa_file(
        cls,
        path: str | os.PathLike[str],
        classes: Sequence[Node] | None = None,
        *,
        implicit_root: Node | None = None,
    ) -> Hierarchy:
        """Hierarchy from a WordNet-style is-a file: one ``parent child`` pair per line.

        The format of ImageNet's ``wordnet.is_a.txt`` (``n00001740 n00001930``): two
        whitespace-separated names per line, parent first. Blank lines are skipped and ``#``
        starts a comment running to the end of the line. Names are kept as strings (``"42"``
        stays ``"42"``). Read as UTF-8.

        Parameters
        ----------
        path : str or path-like
            The file.
        classes, implicit_root
            See :class:`Hierarchy`. With the full WordNet file and a dataset's classes, build
            the tree first and call :meth:`restrict`.

        Raises
        ------
        ValueError
            A line with other than two names (its line number and text are given), and every
            error of :class:`Hierarchy`; self-loops and nodes with two parents name their line
            numbers.
        """
        edges: list[tuple[Node, Node]] = []
        where: list[str] = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.split("#", 1)[0].split()
                if not fields:
                    continue
                if len(fields) != 2:
                    raise ValueError(
                        f"{os.fspath(path)}:{lineno}: expected 'parent child' (two names), "
                        f"got {len(fields)} field(s): {line.rstrip()!r}"
                    )
                edges.append((fields[0], fields[1]))
                where.append(f"line {lineno}")
        if not edges:
            raise ValueError(f"{os.fspath(path)}: no 'parent child' line (empty hierarchy)")
        obj = cls.__new__(cls)
        obj._build(edges, where, classes, implicit_root)
        return obj

    @classmethod
    def from_nested(
        cls,
        obj: Mapping[Any, Any] | Sequence[Any],
        classes: Sequence[Node] | None = None,
        *,
        implicit_root: Node = "<root>",
    ) -> Hierarchy:
        """Hierarchy from nested dicts and lists (e.g. loaded from JSON or YAML).

        Grammar::

            tree     := mapping | sequence          # the top level
            mapping  := {name: children, ...}       # each key is a node, its value the children
            sequence := [item, ...]                 # siblings
            item     := name                        # a leaf
                      | mapping                     # one or more subtrees
            children := mapping | sequence | name   # a name: a single leaf child
                      | None | {} | []              # the key is a leaf

        A name is a ``str`` or ``int`` (JSON object keys are always strings). When the top level
        holds one node, it is the root; when it holds several (a dict with several keys, or a
        list), a new node ``implicit_root`` is made their parent.

        Examples
        --------
        >>> h = Hierarchy.from_nested(
        ...     {"animal": {"dog": ["poodle", "beagle"], "cat": ["siamese"]}, "vehicle": ["car"]}
        ... )
        >>> h.root, h.classes
        ('<root>', ['beagle', 'car', 'poodle', 'siamese'])
        >>> h.depth("poodle"), h.height("animal")
        (3, 2)
        """
        if not isinstance(obj, (Mapping, list, tuple)):
            raise TypeError(
                f"from_nested expects a dict or a list at the top level, got {type(obj).__name__}"
            )
        edges: list[tuple[Node, Node]] = []
        tops: list[Node] = []
        _nested_top(obj, tops, edges)
        if not tops:
            raise ValueError("from_nested: the structure is empty (empty hierarchy)")
        if len(tops) > 1:
            root = _node(implicit_root, " (implicit_root)")
            names = {n for e in edges for n in e} | set(tops)
            if root in names:
                raise ValueError(
                    f"implicit_root {root!r} is already a node name; pass another implicit_root"
                )
            edges = [(root, t) for t in tops] + edges
        h = cls.__new__(cls)
        h._build(edges, None, classes, None)
        return h

    @classmethod
    def from_linkage(cls, Z: Any, classes: Sequence[Node] | None = None) -> Hierarchy:
        r"""Hierarchy from a SciPy linkage matrix (a data-driven hierarchy, e.g. of class means).

        Row :math:`i` of ``Z`` ``[K-1, 4]`` merges clusters ``Z[i, 0]`` and ``Z[i, 1]`` into
        cluster :math:`K+i` (ids below :math:`K` are the classes), as returned by
        :func:`scipy.cluster.hierarchy.linkage`. The internal node of row :math:`i` is named by
        the int :math:`K+i` (SciPy's cluster id), its children are ``Z[i, 0]`` then ``Z[i, 1]``
        and the root is :math:`2K-2`. The merge distances ``Z[:, 2]`` are not used: heights
        count edges (for merge distances use :func:`scipy.cluster.hierarchy.cophenet`).

        Parameters
        ----------
        Z : array-like ``[K-1, 4]``
            Linkage matrix, :math:`K \ge 2`; validated (ids in range, each cluster merged once,
            cluster sizes ``Z[:, 3]`` consistent).
        classes : sequence of K node names, optional
            Name of leaf ``i`` (the ``i``-th observation given to ``linkage``); the class order
            is this order (not sorted). Default ``range(K)``. Ints in :math:`[K, 2K-2]` are
            rejected (they name internal nodes).

        Examples
        --------
        >>> import numpy as np
        >>> from scipy.cluster.hierarchy import linkage
        >>> means = np.array([[0.0], [0.1], [5.0]])
        >>> h = Hierarchy.from_linkage(linkage(means), ["a", "b", "c"])
        >>> h.lca_distances()
        tensor([[0., 1., 2.],
                [1., 0., 2.],
                [2., 2., 0.]], dtype=torch.float64)
        """
        try:
            z = np.asarray(Z.detach().cpu() if isinstance(Z, torch.Tensor) else Z, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"Z must be a numeric [K-1, 4] array, got {type(Z).__name__}") from err
        if z.ndim != 2 or z.shape[1] != 4:
            raise ValueError(f"Z must have shape [K-1, 4], got {list(z.shape)}")
        if z.shape[0] == 0:
            raise ValueError("Z has no row: a hierarchy from a linkage needs K >= 2 classes")
        if not np.isfinite(z).all():
            raise ValueError(f"Z contains {int((~np.isfinite(z)).sum())} NaN/Inf values")
        k = z.shape[0] + 1
        ids = z[:, :2]
        if not np.array_equal(ids, np.round(ids)):
            raise ValueError("Z[:, :2] must hold integer cluster ids")
        names = list(range(k)) if classes is None else _class_list(classes)
        if len(names) != k:
            raise ValueError(f"Z has {k - 1} rows, so K = {k} classes; got {len(names)} classes")
        clash = [c for c in names if isinstance(c, int) and k <= c <= 2 * k - 2]
        if clash:
            raise ValueError(
                f"classes {_names(clash)} collide with the internal node ids {k}..{2 * k - 2} "
                "of the linkage; use other names (e.g. strings)"
            )
        size = np.ones(2 * k - 1, dtype=np.int64)
        used = np.zeros(2 * k - 1, dtype=bool)
        edges: list[tuple[Node, Node]] = []
        for i in range(k - 1):
            a, b = int(ids[i, 0]), int(ids[i, 1])
            for c in (a, b):
                if not 0 <= c < k + i:
                    raise ValueError(
                        f"Z[{i}] merges cluster {c}, but only ids 0..{k + i - 1} exist at row {i}"
                    )
                if used[c]:
                    raise ValueError(f"Z[{i}] merges cluster {c}, which was already merged")
                used[c] = True
            if a == b:
                raise ValueError(f"Z[{i}] merges cluster {a} with itself")
            size[k + i] = size[a] + size[b]
            if z[i, 3] != size[k + i]:
                raise ValueError(
                    f"Z[{i}, 3] = {z[i, 3]:g} but clusters {a} and {b} hold {size[k + i]} "
                    "observations together"
                )
            for c in (a, b):
                edges.append((k + i, names[c] if c < k else c))
        h = cls.__new__(cls)
        h._build(edges, None, names, None)
        return h

    def restrict(self, classes: Sequence[Node]) -> Hierarchy:
        """The sub-hierarchy spanned by some of the classes (e.g. a dataset's classes in WordNet).

        Keeps the given leaves and their ancestors; the root stays the root (even if it is left
        with one child) and single-child chains are kept, so depths do not change. Heights are
        recomputed on the smaller tree.

        Parameters
        ----------
        classes : sequence of node names
            Leaves of this hierarchy; their order is the class order of the result.
        """
        names = _class_list(classes)
        bad = [c for c in names if c not in self._id or self._children[c]]
        if bad:
            raise ValueError(f"restrict: {_names(bad)} are not leaves of this hierarchy")
        keep: set[Node] = set()
        for c in names:
            while c not in keep:
                keep.add(c)
                if c == self._root:
                    break
                c = self._parent[c]
        edges = [(self._parent[v], v) for v in self._nodes[1:] if v in keep]
        h = Hierarchy.__new__(Hierarchy)
        h._build(edges, None, names, None)
        return h

    # ------------------------------------------------------------------ construction
    def _build(
        self,
        edges: list[tuple[Node, Node]],
        where: list[str] | None,
        classes: Sequence[Node] | None,
        implicit_root: Node | None,
    ) -> None:
        """Validate the edges, index the tree, fix the class order."""
        if not edges:
            raise ValueError("empty hierarchy: no (parent, child) edge given")

        def at(i: int) -> str:
            return f" ({where[i]})" if where is not None else ""

        parent: dict[Node, Node] = {}
        parent_at: dict[Node, int] = {}
        children: dict[Node, list[Node]] = {}
        for i, (p, c) in enumerate(edges):
            if p == c:
                raise ValueError(f"self-loop: node {p!r} is its own parent{at(i)}")
            children.setdefault(p, [])
            children.setdefault(c, [])
            if c in parent:
                if parent[c] != p:
                    raise ValueError(
                        f"node {c!r} has two parents: {parent[c]!r}{at(parent_at[c])} "
                        f"and {p!r}{at(i)}"
                    )
                continue  # repeated identical edge
            parent[c] = p
            parent_at[c] = i
            children[p].append(c)
        roots = [n for n in children if n not in parent]

        # every node reachable from a root; the others lie on (or hang below) a cycle
        seen: set[Node] = set(roots)
        stack = list(roots)
        while stack:
            for c in children[stack.pop()]:
                seen.add(c)
                stack.append(c)
        if len(seen) < len(children):
            first = next(n for n in children if n not in seen)
            path = [first]
            index = {first: 0}
            while (up := parent[path[-1]]) not in index:
                index[up] = len(path)
                path.append(up)
            cycle = path[index[up] :][::-1]  # parent -> child order
            raise ValueError(
                "the edges contain a cycle: "
                + " -> ".join(repr(n) for n in [*cycle, cycle[0]])
                + " (parent -> child)"
            )
        if len(roots) > 1:
            if implicit_root is None:
                raise ValueError(
                    f"the edges have {len(roots)} roots (nodes without a parent): "
                    f"{_names(roots)}; add the missing edges or pass implicit_root=<name> to "
                    "join them under a new root"
                )
            new = _node(implicit_root, " (implicit_root)")
            if new in children:
                raise ValueError(
                    f"implicit_root {new!r} is already a node name; pass another implicit_root"
                )
            children = {new: list(roots), **children}
            for r in roots:
                parent[r] = new
            roots = [new]
        root = roots[0]

        # preorder from the root: ids, depths; leaves get depth-first positions
        nodes: list[Node] = []
        node_id: dict[Node, int] = {}
        parent_id: list[int] = []
        depth: list[int] = []
        stack_d: list[tuple[Node, int, int]] = [(root, -1, 0)]
        while stack_d:
            v, p_id, d = stack_d.pop()
            node_id[v] = len(nodes)
            nodes.append(v)
            parent_id.append(p_id)
            depth.append(d)
            me = node_id[v]
            for c in reversed(children[v]):
                stack_d.append((c, me, d + 1))
        n = len(nodes)
        child_ids = [[node_id[c] for c in children[v]] for v in nodes]
        # leaves under node i: dfs positions start[i]:end[i] (contiguous in preorder)
        hgt, beg, fin = [0] * n, [0] * n, [0] * n
        leaf_ids = [i for i in range(n) if not child_ids[i]]
        for pos, i in enumerate(leaf_ids):
            beg[i], fin[i] = pos, pos + 1
        for i in range(n - 1, -1, -1):  # children before parents
            ch = child_ids[i]
            if ch:
                hgt[i] = 1 + max(hgt[c] for c in ch)
                beg[i], fin[i] = beg[ch[0]], fin[ch[-1]]
        height = np.asarray(hgt, dtype=np.int64)
        start = np.asarray(beg, dtype=np.int64)
        end = np.asarray(fin, dtype=np.int64)

        leaves = [nodes[i] for i in leaf_ids]
        if classes is None:
            order = sorted(leaves, key=_sort_key)
        else:
            order = _class_list(classes)
            missing = [c for c in order if c not in node_id]
            internal = [c for c in order if c in node_id and child_ids[node_id[c]]]
            wanted = set(order)
            unlisted = [x for x in leaves if x not in wanted]
            if missing or internal or unlisted:
                parts = []
                if missing:
                    parts.append(f"classes not in the tree: {_names(missing)}")
                if internal:
                    parts.append(f"classes that are internal nodes, not leaves: {_names(internal)}")
                if unlisted:
                    parts.append(f"leaves missing from classes: {_names(unlisted)}")
                raise ValueError(
                    "classes must be exactly the leaves of the hierarchy; " + "; ".join(parts)
                )

        self._root: Node = root
        self._nodes: list[Node] = nodes
        self._id: dict[Node, int] = node_id
        self._parent: dict[Node, Node] = {v: parent[v] for v in nodes[1:]}
        self._children: dict[Node, tuple[Node, ...]] = {v: tuple(children[v]) for v in nodes}
        self._parent_id = np.asarray(parent_id, dtype=np.int64)
        self._child_ids = child_ids
        self._depth = np.asarray(depth, dtype=np.int64)
        self._height = height
        self._start, self._end = start, end
        self._classes: list[Node] = order
        self._class_index: dict[Node, int] = {c: i for i, c in enumerate(order)}
        self._class_ids = np.asarray([node_id[c] for c in order], dtype=np.int64)  # node ids
        self._dfs_leaf = np.asarray(leaf_ids, dtype=np.int64)  # node id at each dfs position
        self._dfs_class = np.empty(len(order), dtype=np.int64)  # class index at dfs position
        self._dfs_class[start[self._class_ids]] = np.arange(len(order))

    # ------------------------------------------------------------------ properties
    @property
    def classes(self) -> list[Node]:
        """The classes (leaves) in class-index order (a copy)."""
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        """:math:`K`, the number of classes (leaves)."""
        return len(self._classes)

    @property
    def root(self) -> Node:
        """The root node."""
        return self._root

    @property
    def nodes(self) -> list[Node]:
        """All nodes in depth-first preorder from the root (a copy)."""
        return list(self._nodes)

    @property
    def parent(self) -> Mapping[Node, Node]:
        """Read-only mapping child -> parent (every node except the root)."""
        return MappingProxyType(self._parent)

    @property
    def children(self) -> Mapping[Node, tuple[Node, ...]]:
        """Read-only mapping node -> its children in edge order (``()`` for a leaf)."""
        return MappingProxyType(self._children)

    def __len__(self) -> int:
        """Number of nodes (leaves and internal nodes); see :attr:`num_classes` for leaves."""
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        try:
            return node in self._id
        except TypeError:  # unhashable
            return False

    def __repr__(self) -> str:
        return (
            f"Hierarchy(num_classes={self.num_classes}, num_nodes={len(self)}, "
            f"height={int(self._height[0])}, root={self._root!r})"
        )

    # ------------------------------------------------------------------ queries
    def _lookup(self, node: Any) -> int:
        try:
            return self._id[node]
        except (KeyError, TypeError):
            raise ValueError(f"unknown node {node!r}: not in this hierarchy") from None

    def index(self, cls: Node) -> int:
        """Class index of a class (leaf) name."""
        try:
            return self._class_index[cls]
        except (KeyError, TypeError):
            kind = "an internal node" if cls in self else "not in this hierarchy"
            raise ValueError(f"{cls!r} is not a class ({kind})") from None

    def depth(self, node: Node) -> int:
        """Edges from the root to ``node`` (root 0)."""
        return int(self._depth[self._lookup(node)])

    def height(self, node: Node) -> int:
        """Edges on the longest downward path from ``node`` to a leaf (leaves 0)."""
        return int(self._height[self._lookup(node)])

    def is_leaf(self, node: Node) -> bool:
        """Whether ``node`` is a leaf (a class)."""
        return not self._child_ids[self._lookup(node)]

    def ancestors(self, node: Node) -> list[Node]:
        """``node``, its parent, ... up to the root."""
        i = self._lookup(node)
        out = []
        while i >= 0:
            out.append(self._nodes[i])
            i = int(self._parent_id[i])
        return out

    def lca(self, a: Node, b: Node) -> Node:
        """Lowest common ancestor of two nodes (``lca(a, a) == a``; any nodes, not only leaves)."""
        i, j = self._lookup(a), self._lookup(b)
        while self._depth[i] > self._depth[j]:
            i = int(self._parent_id[i])
        while self._depth[j] > self._depth[i]:
            j = int(self._parent_id[j])
        while i != j:
            i, j = int(self._parent_id[i]), int(self._parent_id[j])
        return self._nodes[i]

    def subtree_leaves(self, node: Node) -> list[Node]:
        """The classes under ``node``, in class-index order (``[node]`` for a leaf)."""
        i = self._lookup(node)
        idx = np.sort(self._dfs_class[self._start[i] : self._end[i]])
        return [self._classes[int(c)] for c in idx]

    def to_edges(self) -> list[tuple[Node, Node]]:
        """``(parent, child)`` pairs in preorder.

        ``Hierarchy(h.to_edges(), h.classes)`` rebuilds ``h`` (an implicit root becomes an
        ordinary node).
        """
        return [(self._parent[v], v) for v in self._nodes[1:]]

    def lca_matrix(self) -> np.ndarray:
        r"""``[K, K]`` preorder ids of :math:`\operatorname{lca}(a, b)` (index :attr:`nodes`).

        Built in :math:`O(K^2)` as described in the module docstring; int32 when the ids fit.
        """
        k, n = self.num_classes, len(self._nodes)
        m = np.empty((k, k), dtype=np.int32 if n < 2**31 else np.int64)
        pos = np.arange(k)
        m[pos, pos] = self._dfs_leaf
        start, end = self._start.tolist(), self._end.tolist()
        for v, ch in enumerate(self._child_ids):
            if len(ch) < 2:  # a leaf, or a single child: no pair splits here
                continue
            s, e = start[v], end[v]
            for c in ch:
                cs, ce = start[c], end[c]
                m[cs:ce, s:cs] = v
                m[cs:ce, ce:e] = v
        perm = self._start[self._class_ids]  # dfs position of each class
        return m[perm][:, perm]

    def lca_distances(self, kind: DistanceKind = "height") -> torch.Tensor:
        r"""``[K, K]`` float64 tensor of LCA distances between the classes (CPU).

        Parameters
        ----------
        kind : {"height", "max_path", "path"}
            With :math:`v = \operatorname{lca}(a, b)`: ``"height"`` (default, the project
            convention): :math:`\operatorname{height}(v)`; ``"max_path"``:
            :math:`\max(\operatorname{depth} a, \operatorname{depth} b) -
            \operatorname{depth} v`; ``"path"``: :math:`\operatorname{depth} a +
            \operatorname{depth} b - 2\operatorname{depth} v` (tree distance). See the module
            docstring.

        Returns
        -------
        Tensor ``[K, K]``, float64
            Symmetric, integer-valued, 0 on the diagonal; row/column ``i`` is ``classes[i]``.
            Float64 so that it feeds :func:`~geomtools.frames.haframe` and arithmetic directly.
        """
        if kind not in ("height", "max_path", "path"):
            raise ValueError(f"kind must be 'height', 'max_path' or 'path', got {kind!r}")
        m = self.lca_matrix()
        if kind == "height":
            out = self._height[m]
        else:
            dv = self._depth[m]
            da = self._depth[self._class_ids]
            if kind == "path":
                out = da[:, None] + da[None, :] - 2 * dv
            else:
                out = np.maximum(da[:, None], da[None, :]) - dv
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float64))


# ---------------------------------------------------------------------------- parsing
def _parse_pairs(pairs: Any) -> tuple[list[tuple[Node, Node]], list[str]]:
    """Validate ``(parent, child)`` pairs; returns the edges and ``"pair i"`` locations."""
    if isinstance(pairs, (str, bytes, Mapping)) or not isinstance(pairs, Iterable):
        raise TypeError(
            f"pairs must be an iterable of (parent, child) pairs, got {type(pairs).__name__}"
        )
    edges: list[tuple[Node, Node]] = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)):
            raise TypeError(f"pair {i} must be a (parent, child) pair, got {pair!r}")
        try:
            p, c = pair
        except (TypeError, ValueError):
            raise TypeError(f"pair {i} must be a (parent, child) pair, got {pair!r}") from None
        edges.append((_node(p, f" (pair {i})"), _node(c, f" (pair {i})")))
    return edges, [f"pair {i}" for i in range(len(edges))]


def _is_name(x: Any) -> bool:
    return isinstance(x, (str, int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _nested_top(obj: Any, tops: list[Node], edges: list[tuple[Node, Node]]) -> None:
    """Top level of :meth:`Hierarchy.from_nested`: collect the top nodes and all edges."""
    if isinstance(obj, Mapping):
        for key, val in obj.items():
            name = _node(key, " (a dict key at the top level)")
            tops.append(name)
            _nested_children(name, val, edges)
    elif isinstance(obj, (list, tuple)):
        for j, item in enumerate(obj):
            if _is_name(item):
                tops.append(_node(item))
            elif isinstance(item, Mapping):
                _nested_top(item, tops, edges)
            else:
                raise TypeError(
                    f"top-level item {j} must be a name or a dict, got {type(item).__name__}"
                )


def _nested_children(parent: Node, spec: Any, edges: list[tuple[Node, Node]]) -> None:
    """Add the edges from ``parent`` to the children described by ``spec`` (recursively)."""
    if spec is None:
        return
    if _is_name(spec):
        edges.append((parent, _node(spec)))
    elif isinstance(spec, Mapping):
        for key, val in spec.items():
            name = _node(key, f" (a dict key under {parent!r})")
            edges.append((parent, name))
            _nested_children(name, val, edges)
    elif isinstance(spec, (list, tuple)):
        for j, item in enumerate(spec):
            if _is_name(item):
                edges.append((parent, _node(item)))
            elif isinstance(item, Mapping):
                _nested_children(parent, item, edges)
            else:
                raise TypeError(
                    f"children of {parent!r}: item {j} must be a name or a dict, "
                    f"got {type(item).__name__} {item!r}"
                )
    else:
        raise TypeError(
            f"children of {parent!r} must be a dict, a list, a name or None, "
            f"got {type(spec).__name__} {spec!r}"
        )
