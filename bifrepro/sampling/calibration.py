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
   ``ε·λ_max(A) > max_step_curvature`` (default 0.5: inflation <= 1.14 in the stiffest direction)
   are rejected without running. For RMSProp-SGLD the chain sees ``P^½AP^½`` (``P`` the diagonal
   preconditioner, estimated at the end of burn-in by
   :func:`~bifrepro.sampling.curvature.rmsprop_preconditioner`), so ``ε·λ_max(P^½AP^½)`` is
   used; without the estimate only the prior part, ``ε_eff·γ`` with ``ε_eff = ε/rmsprop_eps``
   (the preconditioner reaches ``1/rmsprop_eps`` in flat directions), and ``ε·γ·max(P)`` where
   double backward is unsupported. Power iteration underestimates ``λ_max`` if it has not
   converged; the empirical rules below still apply.
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
5. **Step halving.** Health rules cannot see discretisation bias (a biased chain can mix
   perfectly), so with ``bias_check`` an independent pilot at ε/2 (twice the draws and burn-in:
   the same time span) must reproduce the chosen pilot's scores and item-loss variance within
   ``bias_z`` Monte Carlo standard errors (:mod:`bifrepro.sampling.bias_check`); if not, the
   healthy ε/2 pilot becomes the choice and is checked against ε/4, at most
   ``bias_check_rounds`` times. The last check is stored in the report (``bias_check``) for
   ``run_health``; a check still failing names the choice as unverified.
6. **Draws.** With ``target_resolved`` and queries, the chosen pilot's score standard errors,
   scaled as ``1/√(chains × draws)``, give the draws per chain at which that share of each
   query's top-``precision_k`` items is resolved beyond noise
   (:func:`~bifrepro.sampling.precision_target.draws_for_resolved`); ``num_draws`` is raised to
   it (never lowered, capped at ``max_draws``; ``precision_reachable`` says whether it fits).
   The gaps between a query's top-k items are measured on one half of the pilot's draws with the
   items ranked on the other (a short run's own ranking overstates its gaps); when the pilot's
   rankings do not hold across its halves, the draws are set to ``max_draws``.
   With ``choose_thinning`` the chosen pilot's autocorrelation time ``τ`` (SGLD steps) and the
   cost model below pick the thinning with the most effective samples per unit cost (about
   ``τ`` when evaluating the observed items dominates) and rescale ``num_draws`` to keep the
   effective sample size (:mod:`bifrepro.sampling.thinning`); the precision target's draws are
   converted to that thinning.
7. **Cost.** Pilot draws per candidate are set so that the worst case (every grid point
   evaluated, every halving round counting as two pilots) costs at most ``pilot_fraction`` of the
   real run, counting forward-pass item evaluations: an SGLD step costs ``3 × batch`` (forward +
   backward), a draw ``n_observed`` evaluations. A floor of ``min_pilot_draws`` draws applies
   (tiny real runs then cost more than the fraction, in seconds); the report states the fraction
   actually spent, halving pilots included.

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

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.sampling.bias_check import step_halving_check
from bifrepro.sampling.calibration_config import (
    RULE,
    SEARCHABLE,
    CalibrationConfig,
    CalibrationError,
)
from bifrepro.sampling.calibration_report import CalibrationReport, Candidate
from bifrepro.sampling.curvature import (
    preconditioned_top_eigenvalue,
    rmsprop_preconditioner,
    top_hessian_eigenvalue,
)
from bifrepro.sampling.health import HealthCheck
from bifrepro.sampling.parameters import count_sampled_parameters
from bifrepro.sampling.pilots import (
    StepCurvature,
    pilot_seed,
    plain_curvature,
    run_cost,
    run_pilot,
    seeded_subset,
)
from bifrepro.sampling.precision_target import draws_for_resolved, draws_for_resolved_crossfit
from bifrepro.sampling.sampler import LossFn
from bifrepro.sampling.step_grid import anchor_grid, coarse_grid
from bifrepro.sampling.sweep_runs import load_sweep_runs
from bifrepro.sampling.thinning import ThinningChoice, choose_thinning, tau_in_steps
from bifrepro.sampling.uncertainty import bif_standard_errors
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
    "preconditioned_top_eigenvalue",
    "rmsprop_preconditioner",
    "step_halving_check",
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
    curvature_data = seeded_subset(train_data, cal.curvature_items, cal.seed)
    if cal.estimate_curvature and not config.preconditioned:
        lam_h = top_hessian_eigenvalue(
            model,
            loss_fn,
            curvature_data,
            iters=cal.curvature_iters,
            seed=cal.seed,
            batch_size=config.eval_batch_size,
            collate_fn=collate_fn,
        )
        log.info("top Hessian eigenvalue of the mean training loss at w*: %.4g", lam_h)
    precond: list[torch.Tensor] | None = None
    if cal.estimate_curvature and config.preconditioned:
        precond = rmsprop_preconditioner(model, loss_fn, train_data, config, collate_fn=collate_fn)
    curvatures: dict[tuple[float, float], StepCurvature] = {}

    def curvature_of(gamma: float, nbeta: float) -> StepCurvature:
        """κ of one (γ, nβ): what ε·κ <= max_step_curvature is judged against."""
        if precond is None:
            return plain_curvature(config, gamma, nbeta, lam_h)
        if (gamma, nbeta) not in curvatures:
            lam = preconditioned_top_eigenvalue(
                model, loss_fn, curvature_data, nbeta, gamma, precond, iters=cal.curvature_iters,
                seed=cal.seed, batch_size=config.eval_batch_size, collate_fn=collate_fn,
            )  # fmt: skip
            if math.isfinite(lam):
                kappa = StepCurvature(lam, "ε·λ_max(P^½(nβH + γI)P^½)")
            else:  # P^½AP^½ ⪰ γP for H ⪰ 0: γ·max(P) still bounds λ_max from below
                p_max = max(float(p.max()) for p in precond) if precond else 0.0
                kappa = StepCurvature(gamma * p_max, "ε·γ·max(P)")
            log.info("γ=%g nβ=%g: %s per unit ε = %.4g", gamma, nbeta, kappa.label, kappa.value)
            curvatures[(gamma, nbeta)] = kappa
        return curvatures[(gamma, nbeta)]

    groups = _pairs(config, cal, search)
    n_pairs = sum(len(g) for g in groups)
    # A halving pilot runs twice the steps and draws of a grid pilot: two units each.
    halving_units = 2 * cal.bias_check_rounds if cal.bias_check else 0
    worst_case = n_pairs * (cal.grid_points + cal.refine_points) + halving_units
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

    def evaluate(
        eps: float, gamma: float, nbeta: float, stage: str, base: SGLDConfig = pilot_base
    ) -> Candidate:
        cand = run_pilot(
            model, loss_fn, train_data, observables, base, cal, d, eps, gamma, nbeta,
            stage, config, n_train, n_obs, collate_fn, curvature=curvature_of(gamma, nbeta),
            keep_traces=True,
        )  # fmt: skip
        if not cand.healthy and stage != "halving":
            cand.traces = None  # only healthy pilots can be chosen; any halving pilot compared
        candidates.append(cand)
        bar.update(1)
        verdict = "healthy" if cand.healthy else "unhealthy: " + "; ".join(cand.reasons)
        log.info("  ε=%.3g γ=%g nβ=%g (%s): %s", eps, gamma, nbeta, stage, verdict)
        return cand

    def search_step(gamma: float, nbeta: float) -> Candidate | None:
        steps = anchor_grid(cal, config, gamma, nbeta, curvature=curvature_of(gamma, nbeta).value)
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
    bias: HealthCheck | None = None
    notes: list[str] = []
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
            if chosen is not None and cal.bias_check:
                chosen, bias = _step_halving(chosen, cal, pilot_base, evaluate, notes)
        finally:
            bar.close()

    result = config
    precision: tuple[int | None, bool | None] = (None, None)
    thin: ThinningChoice | None = None
    if chosen is not None:
        result = config.replace(
            step_size=chosen.step_size, localization=chosen.localization, nbeta=chosen.nbeta
        )
        if cal.choose_thinning and chosen.traces is not None:
            thin = _thinning(chosen, cal, config, n_train, n_observed or n_train + n_query, notes)
            result = result.replace(thinning=thin.thinning, num_draws=thin.num_draws)
        if cal.target_resolved is not None:
            precision = _precision_draws(chosen, cal, config, n_train, notes)
            if precision[0] is not None:
                # the pilot ran at the configured thinning: convert to the chosen one
                needed = thin.draws_for(precision[0], config.thinning) if thin else precision[0]
                precision = (needed, precision[1])
                draws = max(result.num_draws, needed)
                if cal.max_draws is not None:
                    draws = min(draws, max(cal.max_draws, result.num_draws))
                result = result.replace(num_draws=draws)
            elif precision[1] is False and cal.max_draws is not None:
                # the pilot cannot size the run (its top-k orders are noise): spend the budget
                result = result.replace(num_draws=max(result.num_draws, cal.max_draws))
                notes.append(f"draws set to max_draws={cal.max_draws}: the pilot cannot size them")
    for cand in candidates:  # keep the chosen pilot's traces only (memory)
        if cand is not chosen:
            cand.traces = None
    kappa = curvature_of(chosen.localization, chosen.nbeta) if chosen is not None else None
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
        top_eigenvalue=kappa.value if kappa is not None else math.nan,
        curvature=chosen.step_curvature if chosen is not None else None,
        bias_check=bias,
        draws_needed=precision[0],
        precision_reachable=precision[1],
        notes=notes,
        tau_steps=thin.tau_steps if thin is not None else math.nan,
        thinning_speedup=thin.speedup if thin is not None else math.nan,
    )
    for note in notes:
        log.info("calibration: %s", note)
    log.info(report.summary())
    if chosen is None:
        if cal.on_failure == "raise":
            raise CalibrationError(report.summary())
        warnings.warn(report.summary(), RuntimeWarning, stacklevel=2)
    return report


def _step_halving(
    chosen: Candidate,
    cal: CalibrationConfig,
    pilot_base: SGLDConfig,
    evaluate: Callable[..., Candidate],
    notes: list[str],
) -> tuple[Candidate, HealthCheck]:
    """Step-halving rounds on the chosen pilot; returns the final choice and the last check.

    Each round runs an independent pilot at ε/2 with twice the draws and burn-in (the same
    simulated time span and equilibration time, and the real run's thinning, so its health
    projection still holds) and compares the two pilots' scores
    (:func:`~bifrepro.sampling.bias_check.step_halving_check`). If they differ and the ε/2 pilot is
    healthy, it becomes the choice (halving the step halves the O(ε) bias) and, while rounds
    remain, is compared with ε/4 in turn. A check still failing after the last round stays in the
    report: the choice is then the least biased healthy step tried, not a verified one.
    """
    current = chosen
    check = HealthCheck("step_halving", math.nan, 1.0, False, "not run")
    for r in range(cal.bias_check_rounds):
        seed = int(np.random.SeedSequence([pilot_base.seed, r, 0x4A1F]).generate_state(1)[0])
        base = pilot_base.replace(
            num_draws=2 * pilot_base.num_draws, burn_in=2 * pilot_base.burn_in, seed=seed
        )
        eps = current.step_size
        half = evaluate(eps / 2, current.localization, current.nbeta, "halving", base)
        if half.traces is None or current.traces is None:  # diverged: nothing to compare
            detail = f"ε={eps:.3g} vs ε/2: the ε/2 pilot {'; '.join(half.reasons)}"
            check = HealthCheck("step_halving", math.nan, 1.0, False, detail)
            break
        got = step_halving_check(current.traces, half.traces, z=cal.bias_z)
        detail = f"ε={eps:.3g} vs ε/2: {got.detail}"
        if not got.passed and not half.healthy:
            detail += f" (ε/2 not adopted, its pilot is unhealthy: {'; '.join(half.reasons)})"
        check = HealthCheck(got.name, got.value, got.limit, got.passed, detail)
        log.info("  step halving: %s", check)
        if check.passed or not half.healthy:
            break
        current = half
    if not check.passed:
        notes.append(
            f"step-halving check failed ({check.detail}); chose ε={current.step_size:.3g}, the "
            f"least biased healthy step tried, which is NOT verified free of discretisation bias"
        )
    elif current is not chosen:
        notes.append(
            f"step halving lowered ε from {chosen.step_size:.3g} to {current.step_size:.3g} "
            f"(discretisation bias at the larger step)"
        )
    return current, check


def _thinning(
    chosen: Candidate,
    cal: CalibrationConfig,
    config: SGLDConfig,
    n_train: int,
    n_observed: int,
    notes: list[str],
) -> ThinningChoice:
    """Thinning and draws from the chosen pilot's autocorrelation time and the cost model."""
    batch = min(config.batch_size, n_train)
    tau = tau_in_steps(chosen.traces, config.thinning)
    thin = choose_thinning(
        tau, config.thinning, config.num_draws, step_cost=3.0 * batch, draw_cost=float(n_observed),
        max_thinning=cal.max_thinning, min_draws=cal.min_draws,
    )  # fmt: skip
    notes.append(
        f"thinning {config.thinning} -> {thin.thinning} and draws {config.num_draws} -> "
        f"{thin.num_draws} (pilot autocorrelation time {tau:.3g} SGLD steps; a draw costs "
        f"{n_observed} item evaluations, a step {3 * batch}): {thin.speedup:.2g}x the effective "
        "samples per unit cost, the same effective sample size"
    )
    return thin


def _precision_draws(
    chosen: Candidate, cal: CalibrationConfig, config: SGLDConfig, n_train: int, notes: list[str]
) -> tuple[int | None, bool | None]:
    """Draws per chain for ``target_resolved`` from the chosen pilot: (needed, reachable).

    Scores are correlations (the BIF default) between the pilot's queries and training items.
    """
    traces = chosen.traces
    if (
        traces is None
        or "query" not in traces
        or traces["query"].dim() + traces["train"].dim() != 6
    ):
        notes.append("precision target skipped: it needs per-item query traces in the pilots")
        return None, None
    unc = bif_standard_errors(traces["query"], traces["train"])
    k = min(cal.precision_k, traces["train"].shape[2] - 1)
    if traces["query"].shape[1] >= 8:  # ranked on one half of the draws, gaps on the other
        needed = draws_for_resolved_crossfit(
            traces["query"], traces["train"], cal.target_resolved, k=k, num_chains=config.num_chains
        )
    else:
        needed = draws_for_resolved(unc, cal.target_resolved, k=k, num_chains=config.num_chains)
    budget = cal.max_draws if cal.max_draws is not None else math.inf
    reachable = needed <= budget
    shown = int(min(needed, 2**62))
    ranked = traces["train"].shape[2]
    subset = (
        f"; the pilot ranks {ranked} of {n_train} training items, so this is optimistic for the "
        f"full training set (closer scores, smaller gaps)"
        if ranked < n_train
        else ""
    )
    what = (
        f"{cal.target_resolved:.0%} of the top-{k} resolved (pilot's {unc.num_chains}×"
        f"{unc.num_draws} draws extrapolated to {config.num_chains} chains{subset})"
    )
    if not math.isfinite(needed):
        notes.append(f"precision target NOT reachable with any number of draws: {what}")
        return None, False
    if not reachable:
        notes.append(
            f"precision target NOT reachable within max_draws={cal.max_draws}: {shown} "
            f"draws/chain needed for {what}"
        )
    else:
        notes.append(f"{shown} draws/chain needed for {what}")
    return shown, reachable


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
