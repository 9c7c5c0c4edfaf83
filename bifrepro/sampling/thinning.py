"""How often to record a draw: thinning chosen from the autocorrelation and the cost of a draw.

A kept draw costs ``k`` SGLD steps (``3·batch`` forward-pass item evaluations each: forward and
backward) plus one evaluation of every observed item (``n_observed``), the cost model of
:func:`~bifrepro.sampling.pilots.run_cost`. Draws ``k`` steps apart have an integrated
autocorrelation time of about ``max(1, τ/k)`` draws, ``τ`` the chain's autocorrelation time in
SGLD steps, so the effective samples per unit cost are ``1 / (max(1, τ/k)·(3·batch·k + n))``:
rising in ``k`` up to ``k ≈ τ`` (recording correlated draws wastes evaluations), falling beyond
(steps whose draws are never recorded). When evaluating the observed items is expensive
(``n ≫ 3·batch``, e.g. every training item of an attribution) the best ``k`` is near ``τ`` and
saves most of the evaluations; at equal effective samples the run then needs fewer draws.

``τ`` comes from pilot traces (:func:`tau_in_steps`): the median over observed items of the
multi-chain integrated autocorrelation time. Short pilots underestimate long autocorrelation
times, so the choice errs towards thinning too little, never too much.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from bifrepro.sampling.health import integrated_autocorrelation_time, item_traces

__all__ = ["ThinningChoice", "best_thinning", "choose_thinning", "tau_in_steps"]


def tau_in_steps(traces: Mapping[str, torch.Tensor], thinning: int) -> float:
    """Median integrated autocorrelation time, in SGLD steps, of every observed item's trace.

    ``traces[name]`` is ``[chains, draws, n(, T)]`` recorded every ``thinning`` steps.
    """
    taus = [integrated_autocorrelation_time(item_traces(t)).flatten() for t in traces.values()]
    tau = torch.cat(taus)
    tau = tau[torch.isfinite(tau)]
    if tau.numel() == 0:
        return math.nan
    return float(tau.median()) * thinning


def draw_tau(tau_steps: float, thinning: int) -> float:
    """Autocorrelation time, in draws, of draws ``thinning`` steps apart (at least 1)."""
    return max(1.0, tau_steps / thinning)


def best_thinning(tau_steps: float, step_cost: float, draw_cost: float, max_thinning: int) -> int:
    """The ``k`` in ``[1, max_thinning]`` with the most effective samples per unit cost."""
    if not math.isfinite(tau_steps) or tau_steps <= 1:
        return 1
    candidates = {1, max_thinning}
    for k in (math.floor(tau_steps), math.ceil(tau_steps)):
        candidates.add(min(max(k, 1), max_thinning))

    def rate(k: int) -> float:
        return 1.0 / (draw_tau(tau_steps, k) * (k * step_cost + draw_cost))

    return max(sorted(candidates), key=rate)


@dataclass(frozen=True)
class ThinningChoice:
    """The chosen thinning and the draws that keep the run's effective sample size."""

    thinning: int
    num_draws: int
    tau_steps: float
    #: Effective samples per unit cost at the chosen thinning over that at the configured one.
    speedup: float

    def draws_for(self, draws_at_old: float, old_thinning: int) -> int:
        """Draws at the chosen thinning worth ``draws_at_old`` draws at ``old_thinning``."""
        ratio = draw_tau(self.tau_steps, self.thinning) / draw_tau(self.tau_steps, old_thinning)
        return max(1, math.ceil(draws_at_old * ratio))


def choose_thinning(
    tau_steps: float,
    thinning: int,
    num_draws: int,
    step_cost: float,
    draw_cost: float,
    max_thinning: int,
    min_draws: int,
) -> ThinningChoice:
    """Thinning with the most effective samples per unit cost, and the draws (at least
    ``min(min_draws, num_draws)``) that keep the effective sample size of ``num_draws`` draws
    at ``thinning``."""
    k = best_thinning(tau_steps, step_cost, draw_cost, max_thinning)
    if not math.isfinite(tau_steps):
        return ThinningChoice(thinning, num_draws, tau_steps, 1.0)

    def rate(t: int) -> float:
        return 1.0 / (draw_tau(tau_steps, t) * (t * step_cost + draw_cost))

    choice = ThinningChoice(k, num_draws, tau_steps, rate(k) / rate(thinning))
    draws = max(choice.draws_for(num_draws, thinning), min(min_draws, num_draws))
    return ThinningChoice(k, draws, tau_steps, choice.speedup)
