"""The Saxe–McClelland–Ganguli semantic hierarchy: items at the leaves of a tree.

Each item is a leaf of a complete tree of ``depth`` levels below the root, each internal node with
``branching`` children (default 2 x 3 levels = 8 items). The input of an item is its one-hot vector;
its target has one indicator feature per tree node the item descends from, root and leaf included
(8 items -> 1 + 2 + 4 + 8 = 15 features). Items that share deeper ancestors share more features,
which is what makes the network learn the hierarchy coarse-to-fine.

The tree also gives the singular value decomposition of the input-output correlation
``Σ_yx = Σ_i y_i x_iᵀ = Yᵀ`` in closed form (why it is built here, not by a numerical SVD whose basis
inside a degenerate subspace is arbitrary): one uniform mode over all items, then for every internal
node ``branching - 1`` *contrast* modes separating its children. A contrast mode of a node at depth
``d`` lives on that node's leaves; for a binary tree its squared singular value is the number of
nodes in one child's subtree, ``2^(depth - d) - 1``. For the default tree:
``√15`` (uniform), ``√7`` (animals vs plants), ``√3`` x 2 (mammals vs birds, flowers vs trees) and
``1`` x 4 (one per pair of sibling items).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils.data import TensorDataset

__all__ = [
    "Hierarchy",
    "make_hierarchy",
    "focus_items",
    "DEFAULT_ITEM_NAMES",
    "DEFAULT_NODE_NAMES",
]

#: Item names of the default binary tree of depth 3 (left to right).
DEFAULT_ITEM_NAMES: tuple[str, ...] = (
    "dog", "cat", "sparrow", "robin", "rose", "daisy", "oak", "pine",
)  # fmt: skip
#: Names of the internal nodes of the default tree, by (depth, index).
DEFAULT_NODE_NAMES: dict[tuple[int, int], str] = {
    (0, 0): "living thing",
    (1, 0): "animal",
    (1, 1): "plant",
    (2, 0): "mammal",
    (2, 1): "bird",
    (2, 2): "flower",
    (2, 3): "tree",
}


@dataclass(frozen=True)
class Hierarchy:
    """A semantic hierarchy: data tensors plus the tree and its closed-form modes.

    Attributes:
        inputs: ``[P, P]`` one-hot item inputs (the identity).
        targets: ``[P, F]`` 0/1 features, one per tree node (ordered root first, level by level).
        item_names: ``P`` item names.
        feature_names: ``F`` names of the tree nodes behind the features.
        depth, branching: the tree's shape.
        mode_vectors: ``[P, M]`` orthonormal item-space singular vectors (columns), ``M = P``.
        singular_values: ``[M]`` singular values of ``Yᵀ`` for those vectors (descending levels).
        mode_levels: ``[M]`` level of each mode: 0 = uniform, ``k >= 1`` = contrast of a node at
            depth ``k - 1``; a pair of items whose deepest common ancestor has depth ``d`` is
            separated by the level ``d + 1`` modes.
        mode_names: ``M`` short names ("uniform", "animal vs plant", ...).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    item_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    depth: int
    branching: int
    mode_vectors: torch.Tensor
    singular_values: torch.Tensor
    mode_levels: tuple[int, ...]
    mode_names: tuple[str, ...]
    _paths: tuple[tuple[int, ...], ...] = field(repr=False, default=())

    @property
    def num_items(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.targets.shape[1])

    @property
    def num_levels(self) -> int:
        """Number of distinct mode levels (``depth + 1``)."""
        return self.depth + 1

    def dataset(self) -> TensorDataset:
        """``TensorDataset(inputs, targets)``: a default DataLoader collates it to ``[x, y]``."""
        return TensorDataset(self.inputs, self.targets)

    def item_index(self, item: str | int) -> int:
        """Index of an item given by name or index (raises ``KeyError`` naming the choices)."""
        if isinstance(item, int):
            if not 0 <= item < self.num_items:
                raise KeyError(f"item index {item} out of range [0, {self.num_items})")
            return item
        if item not in self.item_names:
            raise KeyError(f"unknown item {item!r}; items are {list(self.item_names)}")
        return self.item_names.index(item)

    def common_ancestor_depth(self, i: int, j: int) -> int:
        """Depth of the deepest common ancestor of items ``i`` and ``j`` (``depth`` if ``i == j``)."""
        pi, pj = self._paths[i], self._paths[j]
        d = 0
        while d < self.depth and pi[d] == pj[d]:
            d += 1
        return d

    def shared_features(self) -> torch.Tensor:
        """``[P, P]`` number of target features two items share (= ``Y Yᵀ``)."""
        return self.targets @ self.targets.T

    def common_ancestor_name(self, i: int, j: int) -> str:
        """Name of the deepest common ancestor node of items ``i`` and ``j``."""
        d = self.common_ancestor_depth(i, j)
        offset = sum(self.branching**level for level in range(d))
        return self.feature_names[offset + i // self.branching ** (self.depth - d)]

    def separating_modes(self, i: int, j: int) -> list[int]:
        """Indices of the modes that separate items ``i != j`` (opposite signs on the two)."""
        level = self.separating_level(i, j)
        v = self.mode_vectors
        return [
            m
            for m, lvl in enumerate(self.mode_levels)
            if lvl == level and float(v[i, m] * v[j, m]) < 0
        ]

    def separating_level(self, i: int, j: int) -> int:
        """Level of the modes that separate items ``i != j`` (their common ancestor's contrast)."""
        if i == j:
            raise ValueError("an item is not separated from itself")
        return self.common_ancestor_depth(i, j) + 1


def focus_items(
    h: Hierarchy, item: str | int | None, targets: list[str] | None
) -> tuple[int, list[int]]:
    """Source item and target items of an influence-curve figure, as indices.

    ``item`` null: the first item; ``targets`` null: one target per depth of common ancestor,
    closest first. Raises ``ValueError`` for an unknown name, an empty target list or a target
    equal to the source.
    """
    try:
        src = h.item_index(item) if item is not None else 0
        if targets is not None:
            chosen = [h.item_index(t) for t in targets]
        else:
            chosen = []
            for d in range(h.depth - 1, -1, -1):
                js = [
                    j
                    for j in range(h.num_items)
                    if j != src and h.common_ancestor_depth(src, j) == d
                ]
                chosen.extend(js[:1])
    except KeyError as err:
        raise ValueError(err.args[0]) from err
    if src in chosen:
        raise ValueError("the targets must not contain the focus item itself")
    if not chosen:
        raise ValueError("the target list is empty")
    return src, chosen


def _helmert(b: int) -> torch.Tensor:
    """``[b, b-1]`` orthonormal contrasts of ``b`` groups (columns sum to zero)."""
    cols = []
    for k in range(1, b):
        v = torch.zeros(b, dtype=torch.float64)
        v[:k] = 1.0
        v[k] = -float(k)
        cols.append(v / v.norm())
    return torch.stack(cols, dim=1)


def make_hierarchy(
    depth: int = 3,
    branching: int = 2,
    item_names: list[str] | tuple[str, ...] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Hierarchy:
    """Build the tree dataset and its closed-form modes.

    Args:
        depth: levels below the root (>= 1); there are ``branching ** depth`` items.
        branching: children per internal node (>= 2).
        item_names: names for the items; defaults to dog/cat/... for the 2 x 3 tree, else
            ``item0, item1, ...``.
        dtype: dtype of ``inputs`` and ``targets`` (the mode tensors are float64).
    """
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth={depth!r} must be an integer >= 1")
    if not isinstance(branching, int) or branching < 2:
        raise ValueError(f"branching={branching!r} must be an integer >= 2")
    n_items = branching**depth
    if n_items > 4096:
        raise ValueError(f"depth={depth}, branching={branching} gives {n_items} items (max 4096)")
    default_tree = depth == 3 and branching == 2
    if item_names is None:
        names = DEFAULT_ITEM_NAMES if default_tree else tuple(f"item{i}" for i in range(n_items))
    else:
        names = tuple(str(n) for n in item_names)
        if len(names) != n_items or len(set(names)) != n_items:
            raise ValueError(f"item_names needs {n_items} distinct names, got {list(names)}")

    # Path of each leaf: its child index at every level (base-`branching` digits).
    paths = tuple(
        tuple((i // branching ** (depth - 1 - d)) % branching for d in range(depth))
        for i in range(n_items)
    )
    # Features: every tree node, root first then level by level; node (d, k) at depth d is the
    # k-th node of that level and covers the leaves whose first d digits encode k.
    cols, feat_names = [], []
    for d in range(depth + 1):
        for k in range(branching**d):
            cols.append(
                [1.0 if i // branching ** (depth - d) == k else 0.0 for i in range(n_items)]
            )
            if d == depth:
                feat_names.append(names[k])
            elif default_tree:
                feat_names.append(DEFAULT_NODE_NAMES[(d, k)])
            else:
                feat_names.append(f"node{d}.{k}")
    targets = torch.tensor(cols, dtype=torch.float64).T.contiguous()  # [P, F]

    # Closed-form item-space singular vectors: uniform, then node contrasts level by level.
    uniform = torch.full((n_items,), 1.0 / math.sqrt(n_items), dtype=torch.float64)
    vecs, levels, mode_names = [uniform], [0], ["uniform"]
    contrast = _helmert(branching)
    for d in range(depth):  # internal nodes at depth d
        leaves_per_child = branching ** (depth - d - 1)
        for k in range(branching**d):
            start = k * branching ** (depth - d)
            for c in range(branching - 1):
                v = torch.zeros(n_items, dtype=torch.float64)
                for child in range(branching):
                    s = start + child * leaves_per_child
                    v[s : s + leaves_per_child] = contrast[child, c] / math.sqrt(leaves_per_child)
                vecs.append(v)
                levels.append(d + 1)
                if default_tree and d < 2:
                    kids = [DEFAULT_NODE_NAMES[(d + 1, branching * k + ch)] for ch in range(2)]
                    mode_names.append(f"{kids[0]} vs {kids[1]}")
                elif default_tree:
                    mode_names.append(f"{names[2 * k]} vs {names[2 * k + 1]}")
                else:
                    mode_names.append(f"node{d}.{k} contrast {c}")
    v_mat = torch.stack(vecs, dim=1)  # [P, M]
    gram = targets @ targets.T  # Y Yᵀ = V S² Vᵀ
    s2 = torch.einsum("im,ij,jm->m", v_mat, gram, v_mat)
    singular = s2.clamp_min(0).sqrt()

    return Hierarchy(
        inputs=torch.eye(n_items, dtype=dtype),
        targets=targets.to(dtype),
        item_names=names,
        feature_names=tuple(feat_names),
        depth=depth,
        branching=branching,
        mode_vectors=v_mat,
        singular_values=singular,
        mode_levels=tuple(levels),
        mode_names=tuple(mode_names),
        _paths=paths,
    )
