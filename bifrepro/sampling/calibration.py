"""Choosing SGLD hyperparameters automatically: short pilot chains over a step-size grid.

The rule
--------
1. **Pilots.** For each candidate step size ε, run ``pilot_chains`` short chains with the caller's
   nβ, γ, batch size, burn-in and thinning, recording the losses of ``pilot_items`` training items
   drawn with a fixed seed (plus as many queries, if given). SGLD minibatches come from the whole
   training set, so the pilots sample the same posterior as the real run.
2. **Grid.** A geometric grid from ``grid_max`` down to ``grid_min`` (``grid_points`` points, one
   per decade by default) is scanned from the largest ε down and stops at the first healthy one
   (or at the first that fails the ESS rule: smaller steps mix even more slowly);
   ``refine_points`` geometric points between it and the next larger (unhealthy) grid point are
   then scanned the same way. If no grid point is healthy, the gap between the largest step that
   ran (i.e. did not diverge) and the next larger grid point is refined instead: a window of
   healthy steps narrower than the grid spacing sits just below the stability limit.
   **Curvature pre-filter.** Per eigendirection of the local posterior's precision
   ``A = nβH + γI`` (``a`` its eigenvalue), full-batch SGLD is an AR(1) process with stationary
   variance ``1/(a(1 - εa/4))``: stable for ``εa < 4`` and inflated by ``1/(1 - εa/4)``. The top
   eigenvalue of ``H`` (mean training loss at w*, on ``curvature_items`` seeded training items) is
   estimated by power iteration on Hessian-vector products, and candidates with
   ``ε·λ_max(A) > max_step_curvature`` (default 1: inflation <= 1.33 in the stiffest direction)
   are rejected without running. For RMSProp-SGLD only the prior part is used, with
   ``ε_eff = ε/rmsprop_eps`` (the preconditioner reaches ``1/rmsprop_eps`` in flat directions);
   where double backward is unsupported, too. Power iteration underestimates ``λ_max`` if it has
   not converged; the empirical rules below still apply.
3. **Health.** A candidate is healthy when every rule of :mod:`bifrepro.sampling.health` passes,
   judged for the *real* run's size: the pilot's trend is extrapolated to the real number of
   draws and its effective sample size is projected to the real ``chains × draws``. A pilot that
   diverges (``SamplerDivergedError``) is unhealthy.
4. **Choice.** The chosen step size is the **largest healthy ε** (larger steps mix faster per
   draw; every rule guards against steps that are too large, and the ESS rule against steps too
   small to move). nβ and γ define the posterior, i.e. what BIF measures, so they are kept unless
   the caller asks to search them; when searched, the (γ, nβ) pairs are tried in order of their
   log-distance from the caller's values and the closest pair with a healthy ε wins (ties: the
   larger projected ESS) — calibration changes the posterior only as much as needed.
5. **Cost.** Pilot draws per candidate are set so that the worst case (every grid point evaluated)
   costs at most ``pilot_fraction`` of the real run, counting forward-pass item evaluations: an
   SGLD step costs ``3 × batch`` (forward + backward), a draw ``n_observed`` evaluations. A floor
   of ``min_pilot_draws`` draws applies (tiny real runs then cost more than the fraction, in
   seconds); the report states the fraction actually spent.

Everything is seeded (the pilot seed derives from the sampler's and the calibration's seeds), so
the same call returns the same choice.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from itertools import product
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.sampling.calibration_config import (
    RULE,
    SEARCHABLE,
    CalibrationConfig,
    CalibrationError,
)
from bifrepro.sampling.calibration_report import CalibrationReport, Candidate
from bifrepro.sampling.parameters import count_sampled_parameters
from bifrepro.sampling.pilots import (
    pilot_seed,
    run_cost,
    run_pilot,
    seeded_subset,
    top_hessian_eigenvalue,
)
from bifrepro.sampling.sampler import LossFn
from bifrepro.sampling.step_grid import anchor_grid, coarse_grid
from bifrepro.sampling.sweep_runs import load_sweep_runs
from bifrepro.sgld_config import SGLDConfig

__all__ = [
    "CalibrationConfig",
    "CalibrationError",
    "CalibrationReport",
    "Candidate",
    "calibrate",
    "calibrate_report",
    "resolve_sampler",
    "run_cost",
    "anchor_grid",
    "coarse_grid",
    "top_hessian_eigenvalue",
    "load_sweep_runs",
    "RULE",
]

log = logging.getLogger(__name__)


def _pairs(config: SGLDConfig, cal: CalibrationConfig, search: Sequence[str]) -> list[list[tuple]]:
    """(γ, nβ) pairs grouped by log-distance from the caller's, nearest group first."""
    gammas = [config.localization]
    nbetas = [config.nbeta]
    if "localization" in search:
        gammas = sorted({float(config.localization), *(float(v) for v in cal.localization_grid)})
    if "nbeta" in search:
        nbetas = sorted({float(config.nbeta), *(float(v) for v in cal.nbeta_grid)})

    def logdist(a: float, b: float) -> float:
        if a == b:
            return 0.0
        if a <= 0 or b <= 0:
            return math.inf
        return abs(math.log10(a) - math.log10(b))

    groups: dict[float, list[tuple]] = {}
    for g, nb in product(gammas, nbetas):
        dist = round(logdist(g, config.localization) + logdist(nb, config.nbeta), 9)
        groups.setdefault(dist, []).append((g, nb))
    return [groups[k] for k in sorted(groups)]


def _too_slow(cand: Candidate) -> bool:
    """The pilot ran but its chains mix too slowly (ESS rule failed)."""
    return (
        cand.status == "ok"
        and cand.health is not None
        and any(c.name == "ess" for c in cand.health.failed)
    )


def calibrate_report(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_data: Dataset,
    config: SGLDConfig,
    search: Sequence[str] = ("step_size",),
    calibration: CalibrationConfig | None = None,
    *,
    n_query: int = 0,
    n_observed: int | None = None,
    query_data: Dataset | None = None,
    query_loss_fn: LossFn | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    progress: bool | None = None,
) -> CalibrationReport:
    """Run the calibration (see the module docstring for the rule) and return all the evidence.

    Args:
        model: trained network (its weights are w*); never modified.
        loss_fn: per-item (or per-token) loss, as for :func:`sample_loss_traces`.
        train_data: the training set SGLD samples from.
        config: the real run's sampler settings: nβ, γ, chains, draws, burn-in, batch size and
            preconditioner are kept; ``step_size`` is what is searched.
        search: fields to search: ``"step_size"`` always, plus ``"localization"`` and/or
            ``"nbeta"``.
        calibration: grid, pilot sizes and health thresholds.
        n_query: queries the real run will observe (for its cost; taken from ``query_data``).
        n_observed: items the real run observes on every draw (for its cost; default: every
            training item plus the queries).
        query_data: optional queries; a seeded subset is observed by the pilots too.
        query_loss_fn: loss of the queries (default ``loss_fn``).
        collate_fn: collate function of the datasets.
        progress: tqdm bar over candidates (None: only on a terminal).
    """
    cal = calibration if calibration is not None else CalibrationConfig()
    search = tuple(search)
    unknown = sorted(set(search) - set(SEARCHABLE))
    if unknown or "step_size" not in search:
        raise ValueError(f"search must contain 'step_size' and only {SEARCHABLE}, got {search}")
    config.validate()
    start_time = time.perf_counter()
    d = count_sampled_parameters(model)
    n_train = len(train_data)  # type: ignore[arg-type]
    if query_data is not None:
        n_query = len(query_data)  # type: ignore[arg-type]
    observables: dict[str, Any] = {"train": seeded_subset(train_data, cal.pilot_items, cal.seed)}
    if query_data is not None:
        q_sub = seeded_subset(query_data, cal.pilot_items, cal.seed + 1)
        observables["query"] = (q_sub, query_loss_fn or loss_fn)
    n_obs = sum(len(o[0] if isinstance(o, tuple) else o) for o in observables.values())
    real_cost = run_cost(config, n_train, n_observed if n_observed else n_train + n_query)

    lam_h = math.nan
    if cal.estimate_curvature and config.preconditioner == "none":
        lam_h = top_hessian_eigenvalue(
            model,
            loss_fn,
            seeded_subset(train_data, cal.curvature_items, cal.seed),
            iters=cal.curvature_iters,
            seed=cal.seed,
            batch_size=config.eval_batch_size,
            collate_fn=collate_fn,
        )
        log.info("top Hessian eigenvalue of the mean training loss at w*: %.4g", lam_h)
    groups = _pairs(config, cal, search)
    n_pairs = sum(len(g) for g in groups)
    worst_case = n_pairs * (cal.grid_points + cal.refine_points)
    chains = cal.pilot_chains
    batch = min(config.batch_size, n_train)
    per_chain = cal.pilot_fraction * real_cost / worst_case / chains
    draws = (per_chain - config.burn_in * 3 * batch) / (config.thinning * 3 * batch + n_obs)
    draws = int(min(max(math.floor(draws), cal.min_pilot_draws), config.num_draws))
    pilot_base = config.replace(num_chains=chains, num_draws=draws, seed=pilot_seed(config, cal))
    coarse = coarse_grid(cal)
    log.info(
        "calibrating SGLD (%s): %d (γ, nβ) pair(s) × grid %s; pilots of %d chains × %d draws on "
        "%d observed items",
        ", ".join(search),
        n_pairs,
        [f"{e:.0e}" for e in coarse],
        chains,
        draws,
        n_obs,
    )
    candidates: list[Candidate] = []
    bar = tqdm(
        total=worst_case,
        desc="SGLD calibration",
        unit="pilot",
        disable=None if progress is None else not progress,
        leave=False,
    )

    def evaluate(eps: float, gamma: float, nbeta: float, stage: str) -> Candidate:
        cand = run_pilot(
            model, loss_fn, train_data, observables, pilot_base, cal, d, eps, gamma, nbeta,
            stage, config, n_train, n_obs, collate_fn, lam_h,
        )  # fmt: skip
        candidates.append(cand)
        bar.update(1)
        verdict = "healthy" if cand.healthy else "unhealthy: " + "; ".join(cand.reasons)
        log.info("  ε=%.3g γ=%g nβ=%g (%s): %s", eps, gamma, nbeta, stage, verdict)
        return cand

    def search_step(gamma: float, nbeta: float) -> Candidate | None:
        steps = anchor_grid(cal, config, gamma, nbeta, lam_h)
        best: Candidate | None = None
        lower: float | None = None  # bottom of the gap to refine
        upper: float | None = None  # top of the gap (an unhealthy grid point)
        ran: list[Candidate] = []
        for i, eps in enumerate(steps):
            cand = evaluate(eps, gamma, nbeta, "coarse")
            ran.append(cand)
            if cand.healthy and best is None:
                best = cand
                lower, upper = eps, (steps[i - 1] if i > 0 else None)
                if not cal.exhaustive:
                    break
            if best is None and not cal.exhaustive and _too_slow(cand):
                break  # smaller steps mix even more slowly: stop descending
        if best is None:
            # No healthy grid point: the window may lie between the largest step that ran (too
            # small) and the next larger one (diverged or skipped); refine that gap.
            ok = [c.step_size for c in ran if c.status == "ok"]
            if ok:
                lower = max(ok)
                above = [e for e in steps if e > lower]
                upper = min(above) if above else None
        if lower is not None and upper is not None and cal.refine_points > 0:
            ratio = upper / lower
            for j in range(cal.refine_points, 0, -1):
                eps = lower * ratio ** (j / (cal.refine_points + 1))
                cand = evaluate(eps, gamma, nbeta, "refine")
                if cand.healthy:
                    best = cand
                    break
        return best

    chosen: Candidate | None = None
    with logging_redirect_tqdm():
        try:
            for group in groups:
                found = [c for c in (search_step(g, nb) for g, nb in group) if c is not None]
                if found:
                    chosen = max(
                        found,
                        key=lambda c: (c.health.stats.get("ess_projected", 0.0), c.step_size),  # type: ignore[union-attr]
                    )
                    break
        finally:
            bar.close()

    if chosen is not None:
        result = config.replace(
            step_size=chosen.step_size, localization=chosen.localization, nbeta=chosen.nbeta
        )
    else:
        result = config
    report = CalibrationReport(
        config=result,
        original=config,
        calibration=cal,
        candidates=candidates,
        chosen=chosen,
        num_params=d,
        pilot_items=n_obs,
        real_cost=real_cost,
        seconds=time.perf_counter() - start_time,
        search=search,
        hessian_top_eigenvalue=lam_h,
    )
    log.info(report.summary())
    if chosen is None:
        if cal.on_failure == "raise":
            raise CalibrationError(report.summary())
        warnings.warn(report.summary(), RuntimeWarning, stacklevel=2)
    return report


def calibrate(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_data: Dataset,
    config: SGLDConfig,
    search: Sequence[str] = ("step_size",),
    calibration: CalibrationConfig | None = None,
    **kwargs: Any,
) -> SGLDConfig:
    """``config`` with the largest healthy step size (and searched γ/nβ); see :func:`calibrate_report`."""
    return calibrate_report(
        model, loss_fn, train_data, config, search, calibration, **kwargs
    ).config


def resolve_sampler(
    sampler: SGLDConfig,
    calibration: CalibrationConfig | None,
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_data: Dataset,
    *,
    query_data: Dataset | None = None,
    query_loss_fn: LossFn | None = None,
    n_query: int = 0,
    n_observed: int | None = None,
    out_dir: str | Path | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    progress: bool | None = None,
) -> tuple[SGLDConfig, CalibrationReport | None]:
    """The sampler settings an experiment should use: as given, or calibrated (``sampler=auto``).

    With ``calibration.enabled`` the calibration runs (searching what the calibration config asks
    for); its table and JSON are saved under ``out_dir`` (the figures are drawn above this layer:
    :func:`bifrepro.plots.calibration.save_calibration`). Otherwise ``(sampler, None)``.
    """
    if calibration is None or not calibration.enabled:
        return sampler, None
    report = calibrate_report(
        model,
        loss_fn,
        train_data,
        sampler,
        calibration.search,
        calibration,
        n_query=n_query,
        n_observed=n_observed,
        query_data=query_data,
        query_loss_fn=query_loss_fn,
        collate_fn=collate_fn,
        progress=progress,
    )
    if out_dir is not None:
        report.save(out_dir)
    return report.config, report
