"""Chain-health statistics on synthetic series with known properties."""

from __future__ import annotations

import math

import torch

from bifrepro.sampling import split_rhat, trend_tstat
from bifrepro.sampling.diagnostics import ChainDiagnostics, lag1_autocorrelation


def _ar1(n: int, rho: float, chains: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(chains, n, generator=g, dtype=torch.float64)
    x = torch.zeros(chains, n, dtype=torch.float64)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + math.sqrt(1 - rho**2) * eps[:, t]
    return x


def test_lag1_autocorrelation_recovers_rho():
    x = _ar1(20000, 0.8, 1, 0)
    assert abs(float(lag1_autocorrelation(x)[0]) - 0.8) < 0.02


def test_stationary_autocorrelated_series_has_no_significant_trend():
    x = _ar1(500, 0.9, 50, 1)
    _, t, _ = trend_tstat(x)
    # With the AR(1) correction the t-statistics are roughly standard: few exceed 4.
    assert float((t.abs() > 4).double().mean()) <= 0.04


def test_linear_trend_is_detected_with_its_slope():
    n = 400
    x = _ar1(n, 0.5, 4, 2) + 0.02 * torch.arange(n, dtype=torch.float64)
    slope, t, effect = trend_tstat(x)
    torch.testing.assert_close(
        slope, torch.full((4,), 0.02, dtype=torch.float64), atol=3e-3, rtol=0
    )
    assert (t > 10).all()
    assert (effect > 2).all()


def test_split_rhat_near_one_for_agreeing_chains_and_large_for_shifted():
    x = _ar1(1000, 0.3, 4, 3)
    assert abs(split_rhat(x) - 1.0) < 0.02
    shifted = x.clone()
    shifted[0] += 3.0
    assert split_rhat(shifted) > 1.5


def test_diagnostics_flag_a_drifting_chain():
    n = 300
    stationary = _ar1(n, 0.5, 3, 4) * 0.01 + 1.0
    drifting = stationary.clone()
    drifting[2] += 0.001 * torch.arange(n, dtype=torch.float64)
    diag = ChainDiagnostics(
        sgld_loss=drifting.float(),
        distance=torch.ones(3, n),
        observed_loss={"train": drifting},
        init_loss={"train": 1.0},
    )
    assert diag.drifting_chains == [2]
    assert not diag.is_healthy
    healthy = ChainDiagnostics(
        sgld_loss=stationary.float(),
        distance=torch.ones(3, n),
        observed_loss={"train": stationary},
        init_loss={"train": 1.0},
    )
    assert healthy.is_healthy
    assert healthy.drifting_chains == []
