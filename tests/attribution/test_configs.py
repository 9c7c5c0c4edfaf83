"""Method settings: Hydra composition of conf/method/*.yaml, validation, and the factory."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from bifrepro.attribution.configs import (
    METHOD_CONFIGS,
    BIFMethodConfig,
    method_config_from_mapping,
    register_method_configs,
)
from bifrepro.attribution.registry import METHODS, attributor_class, build_attributor

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(*overrides: str):
    register_method_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=list(overrides))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_yaml_composes_to_its_validated_defaults(name: str) -> None:
    cfg = _compose(f"+method={name}")
    settings = method_config_from_mapping(OmegaConf.to_object(cfg.method))
    assert type(settings) is METHOD_CONFIGS[name]
    # The YAML documents the dataclass defaults: they must not drift apart.
    assert settings == METHOD_CONFIGS[name]()
    attributor = build_attributor(cfg.method)
    assert attributor.name == name and type(attributor) is attributor_class(name)


def test_overrides_are_type_checked_and_validated() -> None:
    cfg = _compose("+method=bif", "+sampler.nbeta=100", "method.normalize=covariance")
    attributor = build_attributor(cfg.method)
    assert isinstance(attributor.config, BIFMethodConfig)
    # the method's sampler is the top-level `sampler` node (one set of sampler settings)
    assert attributor.config.sampler.nbeta == 100.0
    assert attributor.config.normalize == "covariance"
    with pytest.raises(ConfigCompositionException):
        _compose("+method=trak", "method.proj_dim=many")
    with pytest.raises(ValueError, match="normalize"):
        build_attributor(_compose("+method=bif", "method.normalize=spearman").method)


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        ({"name": "trak", "proj_dim": 0}, "proj_dim"),
        ({"name": "ekfac", "strategy": "kfc"}, "strategy"),
        ({"name": "ekfac", "per_token": "query"}, "per_token"),
        ({"name": "exact_if", "curvature": "fisher"}, "curvature"),
        ({"name": "exact_if", "damping": -1.0}, "damping"),
        ({"name": "gradsim", "chunk_size": 0}, "chunk_size"),
        ({"name": "bif", "sampler": {"step_size": -1.0}}, "step_size"),
        ({"name": "gradsim", "chunksize": 8}, "chunksize"),
        ({"name": "tracin"}, "tracin"),
    ],
)
def test_invalid_settings_name_the_field(mapping: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        method_config_from_mapping(mapping)


def test_build_attributor_overrides() -> None:
    attributor = build_attributor({"name": "gradsim"}, proj_dim=256, similarity="dot")
    assert attributor.config.proj_dim == 256 and attributor.config.similarity == "dot"
    attributor = build_attributor(METHOD_CONFIGS["ekfac"](), per_token="train")
    assert attributor.per_token == "train"


def test_trak_refuses_a_cpu_projection_dimension_that_traker_cannot_score() -> None:
    import torch
    from torch.utils.data import TensorDataset

    from bifrepro.attribution.base import ClassificationTask

    data = TensorDataset(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=">= 128"):
        build_attributor({"name": "trak", "proj_dim": 64}).fit(
            torch.nn.Linear(2, 2), ClassificationTask(), data
        )
