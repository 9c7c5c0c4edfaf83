"""LDS attribution step: the score cache key, cached scores and timings, refused settings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bifrepro.attribution.configs import method_config_from_mapping
from bifrepro.config.lds import EmbeddedImagesConfig, LDSConfig
from bifrepro.evaluation.lds_methods import (
    METHOD_LABELS,
    MethodRun,
    attribute,
    bif_seed_list,
    combine_seed_runs,
    settings_key,
    split_seed_variant,
    variant_label,
)
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


def _seed_run(value: float, healthy: bool = True) -> MethodRun:
    scores = {"bif_covariance": torch.full((2, 3), value), "bif_correlation": torch.ones(2, 3)}
    traces = {"query": torch.zeros(4, 5, 2), "train": torch.zeros(4, 5, 3)}
    return MethodRun(
        "bif", scores, {"total_seconds": 10.0}, "cpu", traces=traces,
        chain_metrics={"chain/rhat": 1.0}, chain_summary=f"s{value:g}", chains_healthy=healthy,
        chain_verdict="" if healthy else "chains UNHEALTHY (rhat)",
    )  # fmt: skip


def test_bif_seeds_combine_into_averaged_scores_and_keep_each_seed() -> None:
    runs = {0: _seed_run(1.0), 3: _seed_run(3.0, healthy=False)}
    both = combine_seed_runs(runs)
    assert torch.equal(both.scores["bif_covariance"], torch.full((2, 3), 2.0))
    assert torch.equal(both.scores["bif_covariance_seed3"], torch.full((2, 3), 3.0))
    assert set(both.scores) == {
        f"bif_{e}{s}" for e in ("covariance", "correlation") for s in ("", "_seed0", "_seed3")
    }
    assert both.timings["total_seconds"] == 20.0  # the averaged scores cost both runs
    assert both.traces is not None and both.traces["train"].shape == (8, 5, 3)
    assert not both.chains_healthy and "seed(s) 3" in both.chain_verdict
    assert set(both.chain_metrics) == {"seed0/chain/rhat", "seed3/chain/rhat"}
    single = _seed_run(1.0)
    assert combine_seed_runs({0: single}) is single  # one seed: the run as it was
    assert variant_label("bif", "bif_correlation_seed3") == "BIF (corr) seed 3"
    assert variant_label("trak", "trak") == "TRAK"
    assert split_seed_variant("bif_covariance_seed12") == ("bif_covariance", 12)
    assert split_seed_variant("ekfac") == ("ekfac", None)
    assert bif_seed_list(LDSConfig(bif_seeds=[4, 5]), 0) == [4, 5]
    assert bif_seed_list(LDSConfig(), 7) == [7]
