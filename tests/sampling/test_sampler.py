"""Behaviour of sample_loss_traces: shapes, determinism, independence, errors, diagnostics."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.sampling import (
    ChainDriftWarning,
    SamplerDivergedError,
    SGLDConfig,
    sample_loss_traces,
)
from tests.sampling._models import (
    DictDataset,
    ce_loss,
    dict_mse_loss,
    mse_loss,
    regression_problem,
    small_mlp_problem,
)

FAST = dict(
    step_size=1e-3,
    nbeta=50.0,
    localization=100.0,
    num_chains=2,
    num_draws=20,
    burn_in=5,
    thinning=2,
    batch_size=16,
)


def _run(model, ds, obs=None, **overrides):
    cfg = SGLDConfig(**{**FAST, **overrides})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChainDriftWarning)
        return sample_loss_traces(model, mse_loss, ds, obs or {"train": ds}, cfg, progress=False)


def test_shapes_and_names():
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    q = TensorDataset(x[:5], y[:5])
    traces = _run(model, ds, {"train": ds, "query": q})
    assert traces.names == ["train", "query"]
    assert traces["train"].shape == (2, 20, 40)
    assert traces["query"].shape == (2, 20, 5)
    assert traces.stacked("query").shape == (40, 5)
    assert traces.diagnostics.distance.shape == (2, 20)
    assert torch.isfinite(traces["train"]).all()
    with pytest.raises(KeyError, match="no observable"):
        traces["missing"]


def test_same_seed_identical_different_seed_differs():
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    a = _run(model, ds, seed=7)["train"]
    b = _run(model, ds, seed=7)["train"]
    c = _run(model, ds, seed=8)["train"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_chains_are_independent_streams():
    """Chain c depends only on (seed, c): chain 0 is the same whatever the number of chains."""
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    two = _run(model, ds, num_chains=2)["train"]
    three = _run(model, ds, num_chains=3)["train"]
    assert torch.equal(two, three[:2])
    assert not torch.allclose(three[0], three[1])
    assert not torch.allclose(three[1], three[2])


def test_model_is_not_modified():
    x, y, model = regression_problem()
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    _run(model, TensorDataset(x, y), step_size=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert model.training  # mode untouched too


def test_generic_dataset_path_matches_tensordataset():
    """Items collated per minibatch (non-TensorDataset, cache off) give the same traces."""
    x, y, model = regression_problem()
    tensor_traces = _run(model, TensorDataset(x, y))["train"]
    dd = DictDataset(x, y)
    cfg = SGLDConfig(**FAST, cache_data=False, eval_batch_size=7)
    dict_traces = sample_loss_traces(model, dict_mse_loss, dd, {"train": dd}, cfg, progress=False)
    torch.testing.assert_close(dict_traces["train"], tensor_traces, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batching", ["off", "on"])
def test_step_and_evaluation_counts(batching):
    """burn_in + draws·thinning gradient steps per chain; one evaluation pass per kept draw.

    Sequential chains call ``loss_fn`` once per chain and step; batched chains call it once per
    step for all chains (vmap traces it once), plus one probe: a vmapped gradient and, on the first
    evaluation batch, one vmapped and two plain (chains 0 and C-1) forwards.
    """
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    calls = {"grad": 0, "eval_items": 0}

    def counting_loss(m, batch):
        if torch.is_grad_enabled():
            calls["grad"] += 1
        else:
            calls["eval_items"] += batch[0].shape[0]
        return mse_loss(m, batch)

    cfg = SGLDConfig(**{**FAST, "eval_batch_size": 16, "chain_batching": batching})
    sample_loss_traces(model, counting_loss, ds, {"train": ds}, cfg, progress=False)
    if batching == "off":
        assert calls["grad"] == cfg.num_chains * (cfg.burn_in + cfg.num_draws * cfg.thinning)
        assert calls["eval_items"] == 40 * (1 + cfg.num_chains * cfg.num_draws)  # +1: at w*
    else:
        assert calls["grad"] == 1 + cfg.burn_in + cfg.num_draws * cfg.thinning
        assert calls["eval_items"] == 40 * (1 + cfg.num_draws) + 3 * 16


def test_per_observable_loss_functions():
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)

    def doubled(m, batch):
        return 2 * mse_loss(m, batch)

    traces = _run(model, ds, {"train": ds, "double": (ds, doubled)})
    torch.testing.assert_close(traces["double"], 2 * traces["train"])


def test_per_token_traces():
    """A loss_fn returning [B, T] gives traces [C, D, n, T]."""
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)

    def per_token(m, batch):
        base = mse_loss(m, batch)
        return torch.stack([base, 2 * base, torch.zeros_like(base)], dim=1)

    traces = _run(model, ds, {"train": ds, "tokens": (ds, per_token)})
    assert traces["tokens"].shape == (2, 20, 40, 3)
    torch.testing.assert_close(traces["tokens"][..., 1], 2 * traces["train"])


def test_loss_fn_that_reduces_is_rejected():
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(**FAST)
    with pytest.raises(ValueError, match="must not reduce over the batch"):
        sample_loss_traces(model, lambda m, b: mse_loss(m, b).mean()[None], ds, {"train": ds}, cfg)
    with pytest.raises(ValueError, match=r"tensor \[B\] or \[B, T\]"):
        sample_loss_traces(model, lambda m, b: mse_loss(m, b).mean(), ds, {"train": ds}, cfg)


def test_divergence_raises_naming_the_knobs():
    ds, model = small_mlp_problem()
    cfg = SGLDConfig(
        step_size=10.0,
        nbeta=100.0,
        localization=0.0,
        num_chains=1,
        num_draws=5,
        burn_in=0,
        batch_size=16,
    )
    with pytest.raises(SamplerDivergedError) as err:
        sample_loss_traces(model, ce_loss, ds, {"train": ds}, cfg, progress=False)
    msg = str(err.value)
    for needle in ("chain 0", "draw", "ε=10", "γ=0", "nβ=100"):
        assert needle in msg


def test_drifting_chain_warns_with_advice():
    """Starting at w* without burn-in and with slow mixing, the loss rises through the draws."""
    x, y, model = regression_problem(n=200, d=30)
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(
        step_size=2e-4,
        nbeta=5.0,
        localization=0.0,
        num_chains=2,
        num_draws=100,
        burn_in=0,
        thinning=5,
        batch_size=200,
    )
    with pytest.warns(ChainDriftWarning, match="lower step_size"):
        traces = sample_loss_traces(model, mse_loss, ds, {"train": ds}, cfg, progress=False)
    assert not traces.diagnostics.is_healthy
    assert "UNHEALTHY" in traces.diagnostics.summary()


def test_healthy_chain_is_called_healthy():
    x, y, model = regression_problem(n=100)
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(
        step_size=2e-3,
        nbeta=100.0,
        localization=20.0,
        num_chains=4,
        num_draws=300,
        burn_in=100,
        thinning=3,
        batch_size=100,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainDriftWarning)
        traces = sample_loss_traces(model, mse_loss, ds, {"train": ds}, cfg, progress=False)
    assert traces.diagnostics.is_healthy, traces.diagnostics.summary()
    metrics = traces.diagnostics.to_metrics()
    assert metrics["chain/healthy"] == 1.0
    assert 0.9 < metrics["chain/rhat"] < 1.1


def test_rmsprop_preconditioner_runs():
    ds, model = small_mlp_problem()
    cfg = SGLDConfig(
        step_size=1e-4,
        nbeta=64.0,
        localization=100.0,
        num_chains=2,
        num_draws=20,
        burn_in=10,
        batch_size=32,
        preconditioner="rmsprop",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChainDriftWarning)
        traces = sample_loss_traces(model, ce_loss, ds, {"train": ds}, cfg, progress=False)
    assert torch.isfinite(traces["train"]).all()
    assert float(traces.diagnostics.distance.min()) > 0


def test_float16_traces():
    x, y, model = regression_problem()
    traces = _run(model, TensorDataset(x, y), trace_dtype="float16")
    assert traces["train"].dtype == torch.float16


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("step_size", -1.0),
        ("step_size", 0.0),
        ("nbeta", float("nan")),
        ("localization", -1.0),
        ("num_chains", 0),
        ("num_draws", 0),
        ("burn_in", -1),
        ("thinning", 0),
        ("batch_size", 0),
        ("preconditioner", "adam"),
        ("trace_dtype", "int8"),
        ("rmsprop_alpha", 1.0),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"SGLDConfig.{field}"):
        SGLDConfig(**{field: value})


def test_config_from_mapping_rejects_unknown_keys():
    with pytest.raises(ValueError, match="stepsize"):
        SGLDConfig.from_mapping({"stepsize": 1e-3})
    assert SGLDConfig.from_mapping({"step_size": 1e-3}).step_size == 1e-3
