"""Cheaper observable forwards: ``inference_mode`` always, bfloat16 autocast on request.

The chain (SGLD steps, their noise, the weights) must not change: only the recorded losses do, by
bfloat16 rounding. Tolerance: |Δloss| ≤ (1 + |loss|)/64 per recorded value (bfloat16 keeps 8
significant bits, 1/256 relative; a few roundings through a forward pass stay well inside 4 ulps).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.attribution import bif_scores
from bifrepro.sampling import ChainDriftWarning, SGLDConfig, sample_loss_traces
from bifrepro.sampling.chain_common import observable_forward
from tests.sampling._models import ce_loss, mse_loss, regression_problem, small_mlp_problem


def sample(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChainDriftWarning)
        return sample_loss_traces(*args, progress=False, **kwargs)


def _within_bf16_tolerance(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a - b).abs() <= (1 + a.abs()) / 64).all())


@pytest.mark.parametrize("mode", ["off", "on"])
def test_bf16_traces_match_fp32_and_the_chain_is_untouched(mode):
    x, y, model = regression_problem()  # float32 model: autocast leaves float64 alone
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(
        step_size=1e-3,
        nbeta=40.0,
        localization=20.0,
        num_chains=2,
        num_draws=300,
        burn_in=20,
        batch_size=40,
        chain_batching=mode,
    )
    fp32 = sample(model, mse_loss, ds, {"train": ds}, cfg)
    bf16 = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(observable_dtype="bfloat16"))
    assert bf16["train"].dtype == torch.float32
    # the chain is the same: same weights at every draw, same minibatch losses
    assert torch.equal(bf16.diagnostics.distance, fp32.diagnostics.distance)
    assert torch.equal(bf16.diagnostics.sgld_loss, fp32.diagnostics.sgld_loss)
    # the recorded losses differ (the option is active) by bf16 rounding only
    assert not torch.equal(bf16["train"], fp32["train"])
    assert _within_bf16_tolerance(fp32["train"], bf16["train"])
    # BIF scores barely move (measured correlation 0.9999)
    s32 = bif_scores(fp32["train"], fp32["train"]).flatten()
    s16 = bif_scores(bf16["train"], bf16["train"]).flatten()
    assert torch.corrcoef(torch.stack([s32, s16]))[0, 1] > 0.99


def test_bf16_on_a_small_mlp_stays_within_tolerance():
    """A trained classifier with near-zero losses: the hard case for bf16 logits (measured
    BIF correlation with fp32 0.99; the losses' fluctuations are small against their rounding)."""
    ds, model = small_mlp_problem()
    cfg = SGLDConfig(
        step_size=1e-3,
        nbeta=64.0,
        localization=50.0,
        num_chains=2,
        num_draws=100,
        burn_in=20,
        batch_size=16,
    )
    fp32 = sample(model, ce_loss, ds, {"train": ds}, cfg)
    bf16 = sample(model, ce_loss, ds, {"train": ds}, cfg.replace(observable_dtype="bfloat16"))
    assert torch.equal(bf16.diagnostics.distance, fp32.diagnostics.distance)
    assert _within_bf16_tolerance(fp32["train"], bf16["train"])
    s32 = bif_scores(fp32["train"], fp32["train"]).flatten()
    s16 = bif_scores(bf16["train"], bf16["train"]).flatten()
    assert torch.corrcoef(torch.stack([s32, s16]))[0, 1] > 0.95


@pytest.mark.parametrize("observable_dtype", ["float32", "bfloat16"])
def test_observables_run_in_inference_mode_and_autocast_only_when_asked(observable_dtype):
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    seen = {"grad": set(), "eval": set()}

    def spying(m, batch):
        kind = "grad" if torch.is_grad_enabled() else "eval"
        seen[kind].add((torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu")))
        return mse_loss(m, batch)

    cfg = SGLDConfig(num_chains=1, num_draws=3, burn_in=1, batch_size=8)
    sample(model, spying, ds, {"q": ds}, cfg.replace(observable_dtype=observable_dtype))
    autocast = observable_dtype == "bfloat16"
    assert seen["grad"] == {(False, False)}  # the SGLD gradient: plain float32 autograd
    # the losses at w* are always float32 (they set the divergence limit and the store check)
    assert seen["eval"] == {(True, False), (True, autocast)}


def test_bf16_on_an_unsupported_device_is_refused_clearly():
    with pytest.raises(ValueError, match="observable_dtype='bfloat16'"):
        with observable_forward(torch.device("mps"), "bfloat16"):
            pass
    with observable_forward(torch.device("meta"), "float32"):
        assert torch.is_inference_mode_enabled()
