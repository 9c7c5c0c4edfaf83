"""Schema of the compute grids and the checks before any timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bifrepro.config import ConfigError, ValidatedConfig
from bifrepro.config.compute import ComputeConfig, checked_compute_config, grid_data
from bifrepro.config.lds import EmbeddedImagesConfig, LDSConfig
from bifrepro.models.resnet9 import ResNet9Config
from bifrepro.models.vision import SmallCNNConfig
from bifrepro.sampling.calibration import CalibrationConfig

METHODS = {name: {"name": name} for name in ("bif", "ekfac", "trak", "gradsim")}


def _vc(tmp_path: Path, **groups) -> ValidatedConfig:
    base = {
        "experiment": LDSConfig(),
        "compute": ComputeConfig(),
        "data": EmbeddedImagesConfig(name="digits"),
        "model": SmallCNNConfig(),
        "methods": METHODS,
        "calibration": CalibrationConfig(),
    }
    return ValidatedConfig(seed=0, results_dir=tmp_path, groups={**base, **groups})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_grid": [1, 10]}, "n_grid"),
        ({"q_grid": [10, 10]}, "q_grid"),
        ({"n_base": 0}, "n_base"),
        ({"methods": ["bif", "exact_if"]}, "methods"),
        ({"grid_draws": 1}, "grid_draws"),
        ({"reference": "bif"}, "reference"),
        ({"torch_threads": 0}, "torch_threads"),
    ],
)
def test_compute_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"ComputeConfig.{field}="):
        ComputeConfig(**kwargs)


def test_checks_before_timing(tmp_path) -> None:
    comp = checked_compute_config(_vc(tmp_path))
    assert comp.reference == "ekfac"
    with pytest.raises(ConfigError, match="compute schema"):
        checked_compute_config(_vc(tmp_path, compute={}))
    with pytest.raises(ConfigError, match="sampler=auto"):
        checked_compute_config(_vc(tmp_path, calibration=CalibrationConfig(enabled=True)))
    with pytest.raises(ConfigError, match="model=small_cnn"):
        checked_compute_config(_vc(tmp_path, model=ResNet9Config()))
    without_ekfac = {k: v for k, v in METHODS.items() if k != "ekfac"}
    with pytest.raises(ConfigError, match="methods.ekfac"):
        checked_compute_config(_vc(tmp_path, methods=without_ekfac))


def test_grid_data_holds_the_largest_grid_or_says_why_not() -> None:
    comp = ComputeConfig(n_grid=[20, 40], q_grid=[4, 8], n_base=40, q_base=4)
    data = grid_data(comp, EmbeddedImagesConfig(name="digits"))
    assert len(data.train) >= 40 and len(data.test) >= 8
    with pytest.raises(ConfigError, match="too few images"):
        grid_data(ComputeConfig(n_grid=[5000]), EmbeddedImagesConfig(name="digits"))
