"""The gallery experiment's schemas, path choice and early weights-file check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bifrepro.config as config
from bifrepro.config import ConfigError
from bifrepro.config.imagenet import (
    SCHEMAS,
    ImageNetExperimentConfig,
    check_weights_file,
    choose_imagenet_path,
)
from bifrepro.data.imagenet import IMAGENET_ROOT_ENV
from bifrepro.models.vision import GoogLeNetConfig


def test_schemas_are_registered() -> None:
    registered = {(g, n): s for g, n, s in config.all_schemas()}
    for group, name, schema in SCHEMAS:
        assert registered[(group, name)] is schema
    assert registered[("experiment_schema", "imagenet")] is ImageNetExperimentConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"methods": ["bif"]}, "methods"),
        ({"methods": ["bif", "ekfac", "bif"]}, "methods"),
        ({"normalize": "rank"}, "normalize"),
        ({"ks": []}, "ks"),
        ({"n_boot": 10}, "n_boot"),
        ({"ekfac_last_layers": -1}, "ekfac_last_layers"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"ImageNetExperimentConfig.{field}="):
        ImageNetExperimentConfig(**kwargs)


def test_path_choice(hydra_compose, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config.register_configs()
    monkeypatch.delenv(IMAGENET_ROOT_ENV, raising=False)
    cfg = hydra_compose(["experiment=imagenet", f"results_dir={tmp_path}"])
    chosen, standin = choose_imagenet_path(cfg)
    assert standin and chosen.model.name == "small_cnn" and cfg.model.name == "googlenet"
    assert list(chosen.experiment.methods) == list(cfg.standin.methods)
    with pytest.raises(ConfigError, match=IMAGENET_ROOT_ENV):
        choose_imagenet_path(hydra_compose(["experiment=imagenet_real", f"results_dir={tmp_path}"]))
    monkeypatch.setenv(IMAGENET_ROOT_ENV, str(tmp_path))  # set: no fallback, checked on loading
    chosen, standin = choose_imagenet_path(cfg)
    assert not standin and chosen is cfg
    with pytest.raises(ConfigError, match="imagenet schema"):
        choose_imagenet_path(hydra_compose([f"results_dir={tmp_path}"]))


def test_weights_file_is_read_up_front_with_a_clear_error(tmp_path: Path) -> None:
    assert check_weights_file(GoogLeNetConfig(weights_path=None)) is None
    garbage = tmp_path / "googlenet.pth"
    garbage.write_bytes(b"\x80\x02not a checkpoint at all")
    with pytest.raises(ConfigError, match=r"model\.weights_path=") as info:
        check_weights_file(GoogLeNetConfig(weights_path=str(garbage)))
    assert str(garbage) in str(info.value) and "weights_only" not in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        check_weights_file(GoogLeNetConfig(weights_path=str(tmp_path / "missing.pth")))
    torch.save({"fc.weight": torch.zeros(3, 1024), "aux1.fc.weight": torch.zeros(1)}, garbage)
    state = check_weights_file(GoogLeNetConfig(weights_path=str(garbage)))
    assert state is not None and set(state) == {"fc.weight"}


def test_methods_compose_like_every_experiment(hydra_compose, tmp_path: Path) -> None:
    """Method settings are the ``methods.<name>`` nodes (conf/method/), as in the LDS."""
    cfg = hydra_compose(
        ["experiment=imagenet", f"results_dir={tmp_path}", "methods.ekfac.query_batch_size=8"]
    )
    vc = config.validate_config(cfg, groups=("methods",))
    methods = config.method_settings(["ekfac", "trak", "gradsim"], vc.methods)
    assert methods["ekfac"].query_batch_size == 8
    assert methods["trak"].proj_dim == 512 and methods["gradsim"].similarity == "cosine"
    with pytest.raises(config.ConfigError, match=r"methods\.exact_if is missing"):
        config.method_settings(["exact_if"], vc.methods)
