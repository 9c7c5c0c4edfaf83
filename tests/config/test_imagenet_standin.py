"""The gallery stand-in's defaults: Fashion-MNIST, 500 queries, every arm, 3 BIF seeds, TRAK with
5 checkpoints; and the new experiment fields' checks."""

from __future__ import annotations

from pathlib import Path

import pytest

import bifrepro.config as config
from bifrepro.config import ConfigError
from bifrepro.config.imagenet import DEFAULT_STANDIN, ImageNetExperimentConfig, choose_imagenet_path
from bifrepro.data.imagenet import IMAGENET_ROOT_ENV


@pytest.fixture
def no_imagenet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(IMAGENET_ROOT_ENV, raising=False)


def test_standin_defaults(hydra_compose, tmp_path: Path, no_imagenet) -> None:
    cfg = hydra_compose(["experiment=imagenet", f"results_dir={tmp_path}"])
    chosen, standin = choose_imagenet_path(cfg)
    assert standin and chosen.data.name == DEFAULT_STANDIN == "fashion_mnist"
    assert chosen.data.queries_per_class * 10 >= 500
    arms = ["bif", "bif_cov", "ekfac", "ekfac_relatif", "trak", "gradsim"]
    assert list(chosen.experiment.methods) == arms
    assert chosen.experiment.bif_seeds == 3 and cfg.experiment.bif_seeds == 1  # ImageNet: 1
    assert chosen.methods.trak.num_checkpoints >= 5 and cfg.methods.trak.num_checkpoints == 1
    vc = config.validate_config(chosen, groups=("data", "experiment"))
    assert vc.experiment.bif_seeds == 3 and vc.data.queries_per_class == 50


def test_mnist5k_standin_stays_selectable(hydra_compose, tmp_path: Path, no_imagenet) -> None:
    cfg = hydra_compose(
        ["experiment=imagenet", "data@standin.data=imagenet_standin", f"results_dir={tmp_path}"]
    )
    chosen, _ = choose_imagenet_path(cfg)
    assert chosen.data.name == "mnist5k" and chosen.data.queries_per_class == 50


def test_bad_standin_overrides_name_the_node(hydra_compose, tmp_path: Path, no_imagenet) -> None:
    cfg = hydra_compose(
        ["experiment=imagenet", "+standin.experiment.no_such_field=1", f"results_dir={tmp_path}"]
    )
    with pytest.raises(ConfigError, match="standin"):
        choose_imagenet_path(cfg)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bif_seeds": 0}, "bif_seeds"),
        ({"methods": ["bif", "bif_cov", "ekfac"], "normalize": "covariance"}, "normalize"),
        ({"methods": ["bif", "ekfac", "ekfac_rel"]}, "methods"),
    ],
)
def test_new_fields_are_checked(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"ImageNetExperimentConfig.{field}="):
        ImageNetExperimentConfig(**kwargs)
