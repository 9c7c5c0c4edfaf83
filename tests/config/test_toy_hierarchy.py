"""Schemas of the toy-hierarchy experiment: registered, re-exported, validated."""

from __future__ import annotations

import pytest

import bifrepro.config as config
from bifrepro.config.toy_hierarchy import (
    SCHEMAS,
    DeepLinearModelConfig,
    HierarchyDataConfig,
    ToyHierarchyConfig,
    ToyRobustnessConfig,
)


def test_schemas_are_registered_and_reexported() -> None:
    assert {(g, n) for g, n, _ in SCHEMAS} == {
        ("data", "hierarchy"),
        ("model", "deep_linear"),
        ("experiment_schema", "toy_hierarchy"),
        ("experiment_schema", "toy_robustness"),
    }
    registered = {(g, n): s for g, n, s in config.all_schemas()}
    for group, name, schema in SCHEMAS:
        assert registered[(group, name)] is schema
    assert config.ToyHierarchyConfig is ToyHierarchyConfig
    assert config.HierarchyDataConfig is HierarchyDataConfig
    assert config.DeepLinearModelConfig is DeepLinearModelConfig
    assert config.ToyRobustnessConfig is ToyRobustnessConfig


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: ToyHierarchyConfig(first_checkpoint=10, steps=5), "first_checkpoint"),
        (lambda: ToyHierarchyConfig(matrix_steps=[99999]), "matrix_steps"),
        (lambda: ToyHierarchyConfig(flip_threshold=1.0), "flip_threshold"),
        (lambda: HierarchyDataConfig(item_names=["a", "a"]), "item_names"),
        (lambda: HierarchyDataConfig(depth=13, branching=2), "depth"),
        (lambda: DeepLinearModelConfig(hidden=0), "hidden"),
    ],
)
def test_bad_values_name_the_field(build, field: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=field):
        build()
