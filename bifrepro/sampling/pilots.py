"""One calibration pilot: a short seeded SGLD run at a candidate step, judged by the health rules.

Also what the pilots need: the cost model of a run (:func:`run_cost`), the seeded item subsets
they observe and the curvature estimate of the pre-filter (:func:`top_hessian_eigenvalue`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from bifrepro.chain_diagnostics import ChainDriftWarning
from bifrepro.data.batches import batch_size_of, to_device
from bifrepro.sampling.calibration_config import CalibrationConfig
from bifrepro.sampling.calibration_report import Candidate
from bifrepro.sampling.diagnostics import SamplerDivergedError
from bifrepro.sampling.health import assess_chains, distance_bound
from bifrepro.sampling.parameters import sampled_parameters
from bifrepro.sampling.sampler import LossFn, sample_loss_traces
from bifrepro.sgld_config import SGLDConfig

__all__ = ["run_cost", "run_pilot", "top_hessian_eigenvalue", "pilot_seed", "seeded_subset"]

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
    lam_h: float,
) -> Candidate:
    """One pilot run and its health verdict (or why it was skipped / diverged)."""
    cfg = pilot_base.replace(step_size=eps, localization=gamma, nbeta=nbeta)
    eff = eps / cfg.rmsprop_eps if cfg.preconditioner == "rmsprop" else eps
    cand = Candidate(
        eps, gamma, nbeta, stage, "ok", pilot_chains=cfg.num_chains, pilot_draws=cfg.num_draws
    )
    curvature = gamma + (nbeta * abs(lam_h) if math.isfinite(lam_h) else 0.0)
    cand.step_curvature = eff * curvature
    if cand.step_curvature > cal.max_step_curvature:
        cand.status = "skipped"
        what = "λ_max(nβH + γI)" if math.isfinite(lam_h) else "γ"
        cand.message = (
            f"ε_eff·{what} = {cand.step_curvature:.3g} > max_step_curvature "
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
    return cand


def top_hessian_eigenvalue(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: Dataset,
    iters: int = 20,
    seed: int = 0,
    batch_size: int = 256,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> float:
    """Largest-magnitude eigenvalue of the Hessian of the mean loss over ``data`` at the weights.

    Power iteration on Hessian-vector products (double backward), ``iters`` steps from a seeded
    random start; returns the last Rayleigh quotient (a lower bound on ``|λ_max|`` if it has not
    converged), or NaN if the model does not support double backward. The model is deep-copied and
    put in eval mode, as the sampler does; it is never modified.
    """
    work = copy.deepcopy(model).eval()
    params = sampled_parameters(work)
    if not params:
        return math.nan
    device = params[0].device
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    batches = [to_device(b, device) for b in loader]
    n = sum(batch_size_of(b) for b in batches)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen).to(p) for p in params]
    lam = math.nan
    try:
        for _ in range(iters):
            norm = torch.sqrt(sum((x.double() ** 2).sum() for x in v))
            if not norm > 0:
                return 0.0
            v = [x / norm.to(x.dtype) for x in v]
            hv = [torch.zeros_like(p) for p in params]
            for batch in batches:
                with torch.enable_grad():
                    loss = loss_fn(work, batch).reshape(batch_size_of(batch), -1).mean(1).sum() / n
                    grads = torch.autograd.grad(loss, params, create_graph=True)
                    dot = sum((g * x).sum() for g, x in zip(grads, v, strict=True))
                    part = torch.autograd.grad(dot, params)
                for acc, h in zip(hv, part, strict=True):
                    acc.add_(h.detach())
            lam = float(sum((h.double() * x.double()).sum() for h, x in zip(hv, v, strict=True)))
            v = hv
    except RuntimeError as err:  # e.g. fused kernels without double backward
        log.warning("curvature estimate unavailable (%s); the pre-filter uses γ only", err)
        return math.nan
    return lam
