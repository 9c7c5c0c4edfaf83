"""The one BIF pipeline: sampling, chain health and scores equal the separate core calls."""

from __future__ import annotations

import pytest
import torch

from bifrepro.attribution.bif import bif_scores
from bifrepro.attribution.bif_pipeline import run_bif, sample_bif_traces
from bifrepro.data.hierarchy import make_hierarchy
from bifrepro.models.linear import DeepLinearNetwork, per_item_squared_error
from bifrepro.sampling import (
    HealthThresholds,
    SamplerDivergedError,
    SGLDConfig,
    count_sampled_parameters,
    run_health,
    sample_loss_traces,
)


def _cfg(**kw) -> SGLDConfig:
    base = dict(step_size=1e-4, nbeta=100.0, localization=1000.0, num_chains=2, num_draws=30,
                burn_in=5, thinning=2, batch_size=8, seed=1)  # fmt: skip
    base.update(kw)
    return SGLDConfig(**base)


def _net() -> DeepLinearNetwork:
    return DeepLinearNetwork(
        8, 15, hidden=8, init_scale=0.3, generator=torch.Generator().manual_seed(0)
    )


def test_run_equals_sampling_health_and_scores_by_hand() -> None:
    h, net = make_hierarchy(), _net()
    data, queries = h.dataset(), torch.utils.data.Subset(h.dataset(), [1, 4])
    run = run_bif(
        net,
        per_item_squared_error,
        data,
        train=(data, per_item_squared_error),
        query=(queries, per_item_squared_error),
        config=_cfg(),
        progress=False,
        normalize="covariance",
    )
    traces = sample_loss_traces(
        net, per_item_squared_error, data, {"train": data, "query": queries}, _cfg(), progress=False
    )
    assert run.query == "query" and run.traces.names == ["train", "query"]
    assert torch.equal(run.traces["query"], traces["query"])
    for normalize in ("covariance", "correlation"):
        for detrend in (False, True):
            ref = bif_scores(traces["query"], traces["train"], normalize=normalize, detrend=detrend)
            assert torch.equal(run.scores(normalize, detrend=detrend), ref)
    ref_health = run_health(traces, count_sampled_parameters(net), normalize="covariance")
    assert run.health.metrics == ref_health.metrics
    assert run.health.healthy == ref_health.healthy and run.health.summary == ref_health.summary


def test_without_queries_the_training_items_are_scored_against_themselves() -> None:
    h, net = make_hierarchy(), _net()
    data = h.dataset()
    run = run_bif(
        net, per_item_squared_error, data, (data, per_item_squared_error), config=_cfg(),
        progress=False,
    )  # fmt: skip
    assert run.query == "train" and run.traces.names == ["train"]
    scores = run.scores("correlation")
    assert scores.shape == (8, 8)
    assert torch.diagonal(scores).tolist() == pytest.approx([1.0] * 8, abs=1e-5)
    assert "detrend/trend_share" in run.health.metrics  # train vs itself


@pytest.mark.filterwarnings("ignore::bifrepro.sampling.ChainDriftWarning")
def test_sgld_data_defines_the_posterior_and_observed_items_are_recorded() -> None:
    """SGLD moves on ``sgld_data``; only the observed items are recorded."""
    h, net = make_hierarchy(), _net()
    data = h.dataset()
    observed = torch.utils.data.Subset(data, [0, 1, 2])
    traces = sample_bif_traces(
        net, per_item_squared_error, data, (observed, per_item_squared_error), config=_cfg(),
        progress=False,
    )  # fmt: skip
    full = sample_loss_traces(net, per_item_squared_error, data, {"train": data}, _cfg(),
                              progress=False)  # fmt: skip
    # same draws (batch shapes may round differently)
    torch.testing.assert_close(traces["train"], full["train"][:, :, :3])


def test_a_diverged_sampler_raises() -> None:
    h, net = make_hierarchy(), _net()
    data = h.dataset()
    cfg = _cfg(step_size=1.0, localization=0.0, nbeta=1e4, divergence_factor=2.0)
    with pytest.raises(SamplerDivergedError):
        run_bif(net, per_item_squared_error, data, (data, per_item_squared_error), config=cfg,
                progress=False)  # fmt: skip


def test_step_curvature_and_extra_checks_reach_the_verdict() -> None:
    """A failing extra check (the calibration's step-halving bias check) or a measured step
    curvature above the limit makes the run unhealthy, whatever the chains look like."""
    from bifrepro.sampling.health import HealthCheck

    h, net = make_hierarchy(), _net()
    data, queries = h.dataset(), torch.utils.data.Subset(h.dataset(), [1, 4])
    halving = HealthCheck("step_halving", 4.0, 2.0, False, "scores at ε and ε/2 differ")
    run = run_bif(
        net,
        per_item_squared_error,
        data,
        train=(data, per_item_squared_error),
        query=(queries, per_item_squared_error),
        config=_cfg(),
        progress=False,
        thresholds=HealthThresholds(min_resolved_share=0.0),
        step_curvature=3.0,
        extra_checks=(halving, None),
    )
    ref = run_health(
        run.traces, thresholds=HealthThresholds(min_resolved_share=0.0), step_curvature=3.0,
        extra_checks=(halving,),
    )  # fmt: skip
    assert not run.health.healthy
    assert {c.name for c in run.health.report.failed} >= {"step", "step_halving"}
    assert "step_halving FAIL" in run.health.summary
    assert run.health.metrics == ref.metrics and run.health.summary == ref.summary
