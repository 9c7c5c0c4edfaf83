"""The semantic hierarchy dataset and its closed-form modes, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from bifrepro.data.hierarchy import make_hierarchy


def test_default_tree_layout() -> None:
    h = make_hierarchy()
    assert h.num_items == 8 and h.num_features == 15
    assert h.item_names == ("dog", "cat", "sparrow", "robin", "rose", "daisy", "oak", "pine")
    assert torch.equal(h.inputs, torch.eye(8))
    # dog descends from: living thing, animal, mammal, dog (features in level order)
    dog = dict(zip(h.feature_names, h.targets[0].tolist(), strict=True))
    assert {k for k, v in dog.items() if v == 1.0} == {"living thing", "animal", "mammal", "dog"}
    rose = dict(zip(h.feature_names, h.targets[4].tolist(), strict=True))
    assert {k for k, v in rose.items() if v == 1.0} == {"living thing", "plant", "flower", "rose"}
    # every item has exactly depth + 1 features
    assert h.targets.sum(1).tolist() == [4.0] * 8


def test_shared_features_are_common_ancestor_counts() -> None:
    h = make_hierarchy()
    shared = h.shared_features()
    dog, cat, sparrow, rose = 0, 1, 2, 4
    assert shared[dog, dog] == 4  # root, animal, mammal, dog
    assert shared[dog, cat] == 3  # root, animal, mammal
    assert shared[dog, sparrow] == 2  # root, animal
    assert shared[dog, rose] == 1  # root
    assert h.common_ancestor_depth(dog, cat) == 2
    assert h.common_ancestor_depth(dog, sparrow) == 1
    assert h.common_ancestor_depth(dog, rose) == 0
    assert h.common_ancestor_name(dog, cat) == "mammal"
    assert h.common_ancestor_name(dog, sparrow) == "animal"
    assert h.common_ancestor_name(dog, rose) == "living thing"
    assert h.separating_level(dog, sparrow) == 2


def test_singular_values_of_the_8_item_tree() -> None:
    h = make_hierarchy()
    expected = [math.sqrt(15), math.sqrt(7), math.sqrt(3), math.sqrt(3), 1, 1, 1, 1]
    assert h.singular_values.tolist() == pytest.approx(expected, abs=1e-12)
    assert h.mode_levels == (0, 1, 2, 2, 3, 3, 3, 3)
    # ...and they are the singular values of Y^T, computed independently
    svd = torch.linalg.svdvals(h.targets.double().T)
    assert sorted(svd.tolist(), reverse=True) == pytest.approx(expected, abs=1e-10)


def test_mode_vectors_diagonalise_the_correlation() -> None:
    h = make_hierarchy()
    v = h.mode_vectors
    assert torch.allclose(v.T @ v, torch.eye(8, dtype=torch.float64), atol=1e-12)
    gram = h.targets.double() @ h.targets.double().T
    assert torch.allclose(v @ torch.diag(h.singular_values**2) @ v.T, gram, atol=1e-12)
    # the animal/plant mode is +1/sqrt(8) on animals and -1/sqrt(8) on plants
    ap = v[:, h.mode_names.index("animal vs plant")]
    assert ap.tolist() == pytest.approx([1 / math.sqrt(8)] * 4 + [-1 / math.sqrt(8)] * 4)
    # dog and sparrow are separated by mammal-vs-bird only
    assert [h.mode_names[m] for m in h.separating_modes(0, 2)] == ["mammal vs bird"]
    assert [h.mode_names[m] for m in h.separating_modes(0, 1)] == ["dog vs cat"]


def test_ternary_tree() -> None:
    h = make_hierarchy(depth=2, branching=3)
    assert h.num_items == 9 and h.num_features == 1 + 3 + 9
    # uniform: 9 + 3 + 1 = 13; root contrasts: 4 nodes per child subtree; leaf contrasts: 1
    assert (h.singular_values**2).tolist() == pytest.approx([13, 4, 4] + [1] * 6)
    v = h.mode_vectors
    gram = h.targets.double() @ h.targets.double().T
    assert torch.allclose(v @ torch.diag(h.singular_values**2) @ v.T, gram, atol=1e-12)
    assert h.item_names[0] == "item0"


@pytest.mark.parametrize(
    "kwargs", [{"depth": 0}, {"branching": 1}, {"item_names": ["a", "b"]}, {"depth": 13}]
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_hierarchy(**kwargs)


def test_dataset_and_item_lookup() -> None:
    h = make_hierarchy(item_names=list("abcdefgh"))
    x, y = h.dataset()[3]
    assert x.argmax() == 3 and torch.equal(y, h.targets[3])
    assert h.item_index("c") == 2 and h.item_index(5) == 5
    with pytest.raises(KeyError, match="unknown item"):
        h.item_index("dog")


def test_focus_items_default_one_target_per_ancestor_depth() -> None:
    from bifrepro.data.hierarchy import focus_items

    h = make_hierarchy()
    # dog: cat (mammal), sparrow (animal), rose (living thing), closest first
    assert focus_items(h, None, None) == (0, [1, 2, 4])
    assert focus_items(h, "rose", ["oak", "dog"]) == (4, [6, 0])
    for item, targets, match in (
        ("unicorn", None, "unicorn"),
        ("dog", ["dog"], "focus item itself"),
        ("dog", [], "empty"),
    ):
        with pytest.raises(ValueError, match=match):
            focus_items(h, item, targets)
