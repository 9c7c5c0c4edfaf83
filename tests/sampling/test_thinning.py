"""Thinning from the autocorrelation time: the most effective samples per unit cost."""

from __future__ import annotations

import math

import pytest
import torch

from bifrepro.sampling.thinning import best_thinning, choose_thinning, draw_tau, tau_in_steps


def _ar1(rho: float, chains: int, draws: int, items: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(chains, draws, items, dtype=torch.float64)
    x[:, 0] = torch.randn(chains, items, generator=g, dtype=torch.float64)
    scale = math.sqrt(1 - rho**2)
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + scale * torch.randn(
            chains, items, generator=g, dtype=torch.float64
        )
    return x


def test_tau_of_an_ar1_chain_in_steps() -> None:
    """AR(1) with coefficient ρ per step: τ = (1+ρ)/(1-ρ) steps; thinned by 2, ρ² per draw."""
    rho = 0.9  # τ = 19 steps
    x = _ar1(rho, chains=4, draws=4000, items=8)
    assert tau_in_steps({"train": x}, thinning=1) == pytest.approx(19.0, rel=0.15)
    thinned = x[:, ::2]
    assert tau_in_steps({"train": thinned}, thinning=2) == pytest.approx(
        2 * (1 + rho**2) / (1 - rho**2), rel=0.15
    )


def test_best_thinning_is_near_tau_when_draws_are_expensive() -> None:
    # a draw costs 100x a step: record about once per autocorrelation time
    assert best_thinning(20.0, step_cost=1.0, draw_cost=100.0, max_thinning=100) == 20
    # draws as cheap as steps: still never beyond tau (no gain past it)
    assert best_thinning(20.0, step_cost=1.0, draw_cost=1.0, max_thinning=100) <= 20
    assert best_thinning(20.0, 1.0, 100.0, max_thinning=5) == 5  # capped
    assert best_thinning(0.7, 1.0, 100.0, 100) == 1  # uncorrelated draws: keep every one
    assert best_thinning(math.nan, 1.0, 100.0, 100) == 1

    def rate(k: int) -> float:  # effective samples per unit cost, by brute force
        return 1.0 / (draw_tau(20.0, k) * (k + 100.0))

    assert max(range(1, 101), key=rate) == 20


def test_choose_thinning_keeps_the_effective_sample_size() -> None:
    c = choose_thinning(20.0, thinning=1, num_draws=2000, step_cost=1.0, draw_cost=100.0,
                        max_thinning=100, min_draws=50)  # fmt: skip
    assert c.thinning == 20
    # ESS of 2000 draws with τ = 20 draws is 100; at thinning 20 each draw is ~independent
    assert c.num_draws == 100
    # cost 2000·(1 + 100) = 202,000 before vs 100·(20 + 100) = 12,000 after, same ESS
    assert c.speedup == pytest.approx(202_000 / 12_000, rel=1e-9)
    floor = choose_thinning(20.0, 1, 2000, 1.0, 100.0, max_thinning=100, min_draws=300)
    assert floor.num_draws == 300  # the diagnostics' floor
    small = choose_thinning(20.0, 1, 40, 1.0, 100.0, max_thinning=100, min_draws=300)
    assert small.num_draws == 40  # ... but never more draws than asked for at equal ESS
    assert c.draws_for(4000, old_thinning=1) == 200
