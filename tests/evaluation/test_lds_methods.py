"""LDS attribution step: the score cache key, cached scores and timings, refused settings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bifrepro.attribution.configs import method_config_from_mapping
from bifrepro.config.lds import EmbeddedImagesConfig, LDSConfig
from bifrepro.evaluation.lds_methods import METHOD_LABELS, attribute, settings_key
from bifrepro.evaluation.lds_protocol import full_model, prepare
from bifrepro.models.vision import SmallCNNConfig


@pytest.fixture
def problem(tmp_path):
    data_cfg = EmbeddedImagesConfig(name="digits", train_per_class=3, test_per_class=1)
    settings = LDSConfig(num_subsets=2, alphas=[0.5], methods=["gradsim"])
    model = SmallCNNConfig(width=2, hidden=8, pool_size=2, epochs=1)
    return prepare(settings, data_cfg.load(), data_cfg, model, 0, tmp_path, torch.device("cpu"))


def test_settings_key_ignores_what_does_not_change_the_numbers(problem) -> None:
    bif = method_config_from_mapping({"name": "bif"})
    key = settings_key(bif, problem)
    quiet = dataclasses.replace(bif, progress=True, on_unhealthy="raise")
    assert settings_key(quiet, problem) == key
    assert (
        settings_key(
            dataclasses.replace(bif, sampler=bif.sampler.replace(eval_batch_size=7)), problem
        )
        == key
    )
    assert (
        settings_key(dataclasses.replace(bif, sampler=bif.sampler.replace(num_draws=7)), problem)
        != key
    )
    assert set(METHOD_LABELS) == {"bif", "ekfac", "trak", "gradsim"}


def test_scores_are_cached_with_their_timings(problem) -> None:
    model, _ = full_model(problem)
    settings = {"gradsim": {"name": "gradsim"}}
    first = attribute(problem, model, settings)["gradsim"]
    assert not first.cached and first.scores["gradsim"].shape == (10, 30)
    again = attribute(problem, model, settings)["gradsim"]
    assert again.cached and again.timings == first.timings
    assert torch.equal(again.scores["gradsim"], first.scores["gradsim"])
    assert len(list((problem.cache.dir / "scores").glob("gradsim_*.pt"))) == 1
    with pytest.raises(KeyError, match="methods.gradsim is missing"):
        attribute(problem, model, {})
    with pytest.raises(ValueError, match="must be 'ekfac'"):
        attribute(problem, model, {"ekfac": {"name": "gradsim"}}, ["ekfac"])
