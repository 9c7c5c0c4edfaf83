"""One calibration pilot: a short seeded SGLD run at a candidate step, judged by the health rules.

Also what the pilots need: the cost model of a run (:func:`run_cost`) and the seeded item subsets
they observe. The curvature estimate of the pre-filter lives in
:mod:`bifrepro.sampling.curvature` (:func:`top_hessian_eigenvalue` is re-exported here).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from bifrepro.chain_diagnostics import ChainDriftWarning
from bifrepro.sampling.calibration_config import CalibrationConfig
from bifrepro.sampling.calibration_report import Candidate
from bifrepro.sampling.curvature import top_hessian_eigenvalue
from bifrepro.sampling.diagnostics import SamplerDivergedError
from bifrepro.sampling.health import assess_chains, distance_bound
from bifrepro.sampling.sampler import LossFn, sample_loss_traces
from bifrepro.sgld_config import SGLDConfig

__all__ = [
    "run_cost",
    "run_pilot",
    "top_hessian_eigenvalue",
    "pilot_seed",
    "seeded_subset",
    "StepCurvature",
    "plain_curvature",
]

log = logging.getLogger(__name__)


def run_cost(config: SGLDConfig, n_train: int, n_observed: int) -> float:
    """Cost of a sampling run in forward-pass item evaluations.

    ``num_chains · (total_steps · 3 · batch + num_draws · n_observed)``: an SGLD step is a forward
    and a backward pass (about 3 forwards) on one minibatch, a draw evaluates every observed item.
    """
    batch = min(config.batch_size, n_train)
    return float(
        config.num_chains * (config.total_steps * 3 * batch + config.num_draws * n_observed)
    )


def pilot_seed(config: SGLDConfig, calibration: CalibrationConfig) -> int:
    """Seed of the pilot chains, from the sampler's and the calibration's seeds."""
    seq = np.random.SeedSequence([config.seed, calibration.seed, 0xCA1B])
    return int(seq.generate_state(1, np.uint32)[0])


@dataclass(frozen=True)
class StepCurvature:
    """The curvature ``κ`` a step size is judged against (``ε·κ <= max_step_curvature``)."""

    #: Stiffest curvature the chain sees, per unit of ε (preconditioner included).
    value: float
    #: How ``ε·value`` reads in a reason, e.g. "ε·λ_max(nβH + γI)".
    label: str


def plain_curvature(config: SGLDConfig, gamma: float, nbeta: float, lam_h: float) -> StepCurvature:
    """``κ`` without a preconditioner estimate: ``γ + nβ·|λ_max(H)|`` (just ``γ`` if unknown).

    For RMSProp-SGLD (adaptive or frozen) the effective step is bounded by ``ε/rmsprop_eps``, so
    ``κ`` is divided by ``rmsprop_eps`` and only ``γ`` is used (the old rule; used when no
    preconditioner estimate is available).
    """
    if config.preconditioned:
        return StepCurvature(gamma / config.rmsprop_eps, "ε_eff·γ")
    if math.isfinite(lam_h):
        return StepCurvature(gamma + nbeta * abs(lam_h), "ε_eff·λ_max(nβH + γI)")
    return StepCurvature(gamma, "ε_eff·γ")


def seeded_subset(data: Dataset, k: int, seed: int) -> Subset:
    """``k`` items of ``data`` drawn with ``seed`` (in index order)."""
    n = len(data)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[: min(k, n)].sort().values
    return Subset(data, idx.tolist())


def run_pilot(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_data: Dataset,
    observables: dict[str, Any],
    pilot_base: SGLDConfig,
    cal: CalibrationConfig,
    num_params: int,
    eps: float,
    gamma: float,
    nbeta: float,
    stage: str,
    target: SGLDConfig,
    n_train: int,
    n_obs: int,
    collate_fn: Callable[[list[Any]], Any] | None,
    lam_h: float = math.nan,
    *,
    curvature: StepCurvature | None = None,
    keep_traces: bool = False,
) -> Candidate:
    """One pilot run and its health verdict (or why it was skipped / diverged).

    ``curvature``: the stiffest curvature the chain sees for this (γ, nβ) (default: from the
    Hessian's ``lam_h`` as :func:`plain_curvature` computes it); ``ε·curvature.value`` above
    ``max_step_curvature`` skips the pilot unrun. ``keep_traces``: keep the pilot's loss traces
    on the candidate (for the step-halving check and the precision target).
    """
    cfg = pilot_base.replace(step_size=eps, localization=gamma, nbeta=nbeta)
    eff = eps / cfg.rmsprop_eps if cfg.preconditioned else eps
    cand = Candidate(
        eps, gamma, nbeta, stage, "ok", pilot_chains=cfg.num_chains, pilot_draws=cfg.num_draws
    )
    if curvature is None:
        curvature = plain_curvature(cfg, gamma, nbeta, lam_h)
    cand.step_curvature = eps * curvature.value
    if cand.step_curvature > cal.max_step_curvature:
        cand.status = "skipped"
        cand.message = (
            f"{curvature.label} = {cand.step_curvature:.3g} > max_step_curvature "
            f"{cal.max_step_curvature:g}: the Euler step is too coarse for the stiffest direction "
            f"(variance inflation 1/(1-x/4) or instability)"
        )
        return cand
    cand.cost = run_cost(cfg, n_train, n_obs)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ChainDriftWarning)
            traces = sample_loss_traces(
                model, loss_fn, train_data, observables, cfg, progress=False, collate_fn=collate_fn
            )
    except SamplerDivergedError as err:
        cand.status = "diverged"
        cand.message = str(err).split(". Lower")[0]
        cand.seconds = time.perf_counter() - start
        return cand
    cand.seconds = time.perf_counter() - start
    diag = traces.diagnostics
    cand.health = assess_chains(
        diag,
        traces,
        num_params=num_params,
        step_size=eff,
        nbeta=nbeta,
        localization=gamma,
        thresholds=cal.thresholds,
        target_draws=target.num_draws,
        target_chains=target.num_chains,
    )
    cand.pooled_loss = diag.observed_loss["train"].clone()
    cand.distance = diag.distance.clone()
    cand.init_loss = diag.init_loss["train"]
    cand.distance_bound = distance_bound(num_params, gamma, eff)
    if keep_traces:
        cand.traces = traces
    return cand
