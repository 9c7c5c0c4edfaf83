"""BIF over checkpoints: one BIF-pipeline run per checkpoint, both normalisations, health recorded;
a diverged sampler fails the call."""

from __future__ import annotations

import pytest
import torch

from bifrepro.attribution import bif_scores
from bifrepro.data.hierarchy import make_hierarchy
from bifrepro.dynamics import bif_over_checkpoints
from bifrepro.models.linear import DeepLinearNetwork, per_item_squared_error
from bifrepro.sampling import SamplerDivergedError, SGLDConfig, run_health, sample_loss_traces


def _cfg(**kw) -> SGLDConfig:
    base = dict(
        step_size=1e-4,
        nbeta=100.0,
        localization=1000.0,
        num_chains=2,
        num_draws=40,
        burn_in=10,
        thinning=2,
        batch_size=8,
        seed=3,
    )
    base.update(kw)
    return SGLDConfig(**base)


def test_matches_direct_core_calls() -> None:
    h = make_hierarchy()
    net = DeepLinearNetwork(
        8, 15, hidden=8, init_scale=0.3, generator=torch.Generator().manual_seed(0)
    )
    states = []
    for scale in (1.0, 2.0):
        m = DeepLinearNetwork(8, 15, hidden=8).load_weights([scale * w for w in net.weights()])
        states.append((int(10 * scale), m.state_dict()))
    out = bif_over_checkpoints(
        DeepLinearNetwork(8, 15, hidden=8),
        states,
        per_item_squared_error,
        h.dataset(),
        _cfg(),
        progress=False,
    )
    assert out.steps == [10, 20]
    assert out.covariance.shape == out.correlation.shape == (2, 8, 8)
    assert out.draws == 80 and len(out.healthy) == 2 and len(out.summaries) == 2
    # checkpoint 1 by hand
    ref_model = DeepLinearNetwork(8, 15, hidden=8)
    ref_model.load_state_dict(states[1][1])
    traces = sample_loss_traces(
        ref_model,
        per_item_squared_error,
        h.dataset(),
        {"train": h.dataset()},
        _cfg(),
        progress=False,
    )
    ref = bif_scores(traces["train"], traces["train"], normalize="covariance")
    assert torch.equal(out.covariance[1], ref)
    assert out.chain_metrics[1] == run_health(traces, query="train").metrics
    assert torch.allclose(out.covariance[1], out.covariance[1].T, atol=1e-9)  # train vs itself
    assert torch.diagonal(out.correlation[1]).tolist() == pytest.approx([1.0] * 8, abs=1e-5)
    assert out.scores("correlation") is out.correlation
    with pytest.raises(ValueError):
        out.scores("rank")


def test_divergence_fails_the_run() -> None:
    """A diverged chain at any checkpoint raises: no curve with NaN holes, no results written."""
    h = make_hierarchy()
    net = DeepLinearNetwork(
        8, 15, hidden=8, init_scale=0.3, generator=torch.Generator().manual_seed(0)
    )
    healthy_state = (5, {k: v.clone() for k, v in net.state_dict().items()})
    cfg = _cfg(step_size=1.0, localization=0.0, nbeta=1e4, divergence_factor=2.0)
    with pytest.raises(SamplerDivergedError, match="diverged"):
        bif_over_checkpoints(
            net, [healthy_state, healthy_state], per_item_squared_error, h.dataset(), cfg,
            progress=False,
        )  # fmt: skip


def test_evidence_is_judged_at_its_checkpoint_only() -> None:
    """A calibration's evidence (here a failed step-halving check) makes the checkpoint it was
    measured at unhealthy; the other checkpoints are judged on their traces alone."""
    from bifrepro.sampling.health import HealthCheck

    h = make_hierarchy()
    net = DeepLinearNetwork(
        8, 15, hidden=8, init_scale=0.3, generator=torch.Generator().manual_seed(0)
    )
    states = [(s, net.state_dict()) for s in (10, 20)]
    biased = HealthCheck("step_halving", 5.0, 3.0, False, "ε and ε/2 disagree (test)")
    out = bif_over_checkpoints(
        DeepLinearNetwork(8, 15, hidden=8), states, per_item_squared_error, h.dataset(), _cfg(),
        progress=False, evidence={20: {"extra_checks": (biased,)}},
    )  # fmt: skip
    assert not out.healthy[1] and "step_halving" in out.summaries[1]
    assert "step_halving" not in out.summaries[0]
    assert out.chain_metrics[1]["health/step_halving_ok"] == 0.0
    assert "health/step_halving_ok" not in out.chain_metrics[0]
