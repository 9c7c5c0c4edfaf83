"""Schemas of the LDS experiment and the config checks that run before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bifrepro.config import ConfigError, ValidatedConfig
from bifrepro.config.lds import (
    SCHEMAS,
    EmbeddedImagesConfig,
    ImageFolderDataConfig,
    LDSConfig,
    check_method_settings,
    checked_lds_config,
    lds_problem,
)
from bifrepro.models.resnet9 import ResNet9Config
from bifrepro.models.vision import SmallCNNConfig

TINY_DATA = EmbeddedImagesConfig(name="digits", train_per_class=6, test_per_class=1)
METHODS = {"gradsim": {"name": "gradsim"}}


def _vc(tmp_path: Path, **groups) -> ValidatedConfig:
    base = {
        "experiment": LDSConfig(methods=["gradsim"], num_subsets=3, alphas=[0.5]),
        "data": TINY_DATA,
        "model": SmallCNNConfig(width=2, hidden=8, epochs=1),
        "methods": METHODS,
    }
    return ValidatedConfig(seed=0, results_dir=tmp_path, groups={**base, **groups})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alphas": [0.5, 1.5]}, "alphas"),
        ({"alphas": [0.5, 0.5]}, "alphas"),
        ({"methods": ["bif", "foo"]}, "methods"),
        ({"subset_index": 40}, "subset_index"),
        ({"retrain_seed": 3}, "retrain_seed"),
        ({"stage": "train"}, "stage"),
        ({"init": "random"}, "init"),
        ({"bif_draws_grid": [1]}, "bif_draws_grid"),
        ({"confidence": 1.0}, "confidence"),
    ],
)
def test_lds_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"LDSConfig.{field}="):
        LDSConfig(**kwargs)


def test_schemas_are_registered_under_their_option_names() -> None:
    from hydra.core.config_store import ConfigStore

    from bifrepro.config import register_configs

    register_configs()
    repo = ConfigStore.instance().repo
    for group, name, _ in SCHEMAS:
        assert f"{name}_schema.yaml" in repo[group.split("/")[0]], (group, name)
    with pytest.raises(ValueError, match="name"):
        EmbeddedImagesConfig(name="imagenet")


def test_image_folder_without_a_root_or_with_a_bad_one_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="CIFAR10_ROOT"):
        ImageFolderDataConfig(root=None).load()
    with pytest.raises(ConfigError, match="data.root"):
        ImageFolderDataConfig(root=str(tmp_path / "nowhere")).load()


def test_method_settings_must_exist_and_name_their_method() -> None:
    check_method_settings(["gradsim"], METHODS)
    with pytest.raises(ConfigError, match="methods.ekfac is missing"):
        check_method_settings(["ekfac"], METHODS)
    with pytest.raises(ConfigError, match="must be 'trak'"):
        check_method_settings(["trak"], {"trak": {"name": "gradsim"}})


def test_checked_config_refuses_unsupported_groups(tmp_path) -> None:
    assert checked_lds_config(_vc(tmp_path)).methods == ["gradsim"]
    assert checked_lds_config(_vc(tmp_path, model=ResNet9Config())).name == "lds"
    with pytest.raises(ConfigError, match="lds schema"):
        checked_lds_config(_vc(tmp_path, experiment=object()))
    with pytest.raises(ConfigError, match="data: dict"):
        checked_lds_config(_vc(tmp_path, data={}))
    with pytest.raises(ConfigError, match="model: dict"):
        checked_lds_config(_vc(tmp_path, model={}))
    with pytest.raises(ConfigError, match="methods.gradsim"):
        checked_lds_config(_vc(tmp_path, methods={}))
    # the retrain stage needs no method settings
    retrain = LDSConfig(methods=["gradsim"], stage="retrain")
    assert checked_lds_config(_vc(tmp_path, experiment=retrain, methods={})) is retrain


def test_lds_problem_loads_data_and_checks_alphas_against_n(tmp_path) -> None:
    problem = lds_problem(_vc(tmp_path), torch.device("cpu"))
    assert problem.n_train == 60 and problem.n_query == 10
    assert list(problem.masks) == [0.5] and problem.masks[0.5].shape == (3, 60)
    assert problem.cache.dir.parent == tmp_path / "cache" / "lds"
    tiny = LDSConfig(methods=["gradsim"], alphas=[0.001])  # floor(0.001 * 60) = 0 items
    with pytest.raises(ConfigError, match="experiment.alphas"):
        lds_problem(_vc(tmp_path, experiment=tiny), torch.device("cpu"))
