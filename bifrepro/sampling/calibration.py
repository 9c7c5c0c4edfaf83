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

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.sampling.config import SGLDConfig
from bifrepro.sampling.diagnostics import ChainDriftWarning, SamplerDivergedError
from bifrepro.sampling.health import (
    HealthReport,
    HealthThresholds,
    assess_chains,
    distance_bound,
)
from bifrepro.sampling.sampler import LossFn, sample_loss_traces

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CalibrationConfig",
    "CalibrationError",
    "CalibrationReport",
    "Candidate",
    "calibrate",
    "calibrate_report",
    "resolve_sampler",
    "run_cost",
    "top_hessian_eigenvalue",
    "load_sweep_runs",
    "RULE",
]

log = logging.getLogger(__name__)

_SEARCHABLE = ("step_size", "localization", "nbeta")

#: The selection rule in one paragraph (also written next to every calibration report).
RULE = (
    "Largest healthy step size. Pilot chains (same nβ, γ, batch size, burn-in and thinning as the "
    "real run; a seeded subset of training items observed) run for a geometric grid of ε (from "
    "the largest step the curvature filter admits down to grid_min, with anchor_grid) scanned "
    "from the largest value down (stopping at the first healthy one, or at the first whose chains "
    "mix too slowly), then refined between the largest healthy grid point and the next "
    "larger one (if no grid point is healthy: between the largest step that did not diverge and the "
    "next larger one). Steps with ε·λ_max(nβH+γI) > max_step_curvature (power-iteration estimate "
    "of the Hessian's top eigenvalue) are rejected unrun. A pilot is healthy when no chain drifts "
    "(trend extrapolated to the real run's draws), split R-hat projected to the real run's draws "
    "<= max_rhat, the ESS projected to "
    "the real run >= min_ess, E|w-w*|² <= distance_slack·d/(γ(1-εγ/4)), λ̂ = nβ·ΔL <= "
    "loss_slack·d/2 and per-chain trends explain <= max_trend_share of the item covariance. "
    "Searched γ/nβ: the pair closest (in log) to the caller's that has a healthy ε wins."
)


class CalibrationError(RuntimeError):
    """No candidate was healthy and ``on_failure="raise"`` was asked for."""


@dataclass
class CalibrationConfig:
    """Settings of the automatic SGLD calibration (``sampler=auto``); OmegaConf-compatible."""

    #: Run the calibration (``sampler=auto`` turns it on); off = use the sampler config as is.
    enabled: bool = False
    #: Smallest step size of the coarse grid.
    grid_min: float = 1e-7
    #: Largest step size of the coarse grid.
    grid_max: float = 1e-2
    #: Points of the coarse geometric grid (6 over 1e-7..1e-2 = one per decade).
    grid_points: int = 6
    #: Geometric points tried between the largest healthy grid point and the next larger one.
    refine_points: int = 2
    #: Worst-case pilot cost as a fraction of the real run (forward-pass item evaluations).
    pilot_fraction: float = 0.1
    #: Chains per pilot (>= 2 so that R-hat compares chains).
    pilot_chains: int = 2
    #: Training items (and queries, if given) observed by the pilots.
    pilot_items: int = 64
    #: Floor on the draws of one pilot (the estimates need a minimum length).
    min_pilot_draws: int = 40
    #: Candidates with ε·λ_max(nβH + γI) above this are rejected without running.
    max_step_curvature: float = 1.0
    #: Start the coarse grid at the largest step the curvature pre-filter admits
    #: (``max_step_curvature / λ_max(nβH + γI)``, when inside [grid_min, grid_max]) and space the
    #: ``grid_points`` down to ``grid_min`` from there: no pilot is spent on steps the filter
    #: rejects, and the grid is finer where the healthy window is. Off: the fixed grid.
    anchor_grid: bool = True
    #: Estimate λ_max(H) by power iteration (off: only γ enters the pre-filter).
    estimate_curvature: bool = True
    #: Training items (seeded subset) in the Hessian-vector products of the curvature estimate.
    curvature_items: int = 256
    #: Power iterations of the curvature estimate.
    curvature_iters: int = 20
    #: Also search the localization γ over ``localization_grid``.
    search_localization: bool = False
    #: Values of γ tried when searching it (the caller's value is always included).
    localization_grid: list[float] = field(default_factory=lambda: [10.0, 100.0, 1e3, 1e4, 1e5])
    #: Also search nβ over ``nbeta_grid``.
    search_nbeta: bool = False
    #: Values of nβ tried when searching it (the caller's value is always included).
    nbeta_grid: list[float] = field(default_factory=lambda: [1.0, 10.0, 100.0, 1e3])
    #: Evaluate every coarse grid point (full evidence) instead of stopping at the first healthy.
    exhaustive: bool = False
    #: No healthy candidate: "keep" the given config (with a warning) or "raise".
    on_failure: str = "keep"
    #: Seed of the pilot item subset and (with the sampler's seed) of the pilot chains.
    seed: int = 0
    #: Thresholds of the health rules.
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"CalibrationConfig.{name}={getattr(self, name)!r} is invalid: {why}")

        for name in ("grid_min", "grid_max", "pilot_fraction", "max_step_curvature"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v < math.inf:
                bad(name, "must be a finite number > 0")
        if self.grid_min > self.grid_max:
            bad("grid_min", f"must be <= grid_max={self.grid_max}")
        for name, low in (
            ("grid_points", 1),
            ("refine_points", 0),
            ("pilot_chains", 1),
            ("pilot_items", 1),
            ("min_pilot_draws", 8),
            ("curvature_items", 1),
            ("curvature_iters", 1),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                bad(name, f"must be an integer >= {low}")
        for name in ("localization_grid", "nbeta_grid"):
            values = list(getattr(self, name))
            if not values or any(not float(v) > 0 for v in values):
                bad(name, "must be a non-empty list of numbers > 0")
        if self.on_failure not in ("keep", "raise"):
            bad("on_failure", "must be 'keep' or 'raise'")
        if isinstance(self.thresholds, dict):
            self.thresholds = HealthThresholds(**self.thresholds)

    @property
    def search(self) -> tuple[str, ...]:
        """The ``search`` argument of :func:`calibrate` these settings ask for."""
        out = ["step_size"]
        if self.search_localization:
            out.append("localization")
        if self.search_nbeta:
            out.append("nbeta")
        return tuple(out)

    @classmethod
    def from_mapping(cls, mapping: Any) -> CalibrationConfig:
        """Build from a dict or OmegaConf node (``thresholds`` may be a nested mapping)."""
        items = dict(mapping.items()) if hasattr(mapping, "items") else dict(mapping)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(items) - known)
        if unknown:
            raise ValueError(f"unknown calibration key(s) {unknown}; known: {sorted(known)}")
        if "thresholds" in items and not isinstance(items["thresholds"], HealthThresholds):
            th = dict(items["thresholds"].items())
            bad = sorted(set(th) - {f.name for f in fields(HealthThresholds)})
            if bad:
                raise ValueError(f"unknown calibration.thresholds key(s) {bad}")
            items["thresholds"] = HealthThresholds(**th)
        for key in ("localization_grid", "nbeta_grid"):
            if key in items:
                items[key] = [float(v) for v in items[key]]
        return cls(**items)


def run_cost(config: SGLDConfig, n_train: int, n_observed: int) -> float:
    """Cost of a sampling run in forward-pass item evaluations.

    ``num_chains · (total_steps · 3 · batch + num_draws · n_observed)``: an SGLD step is a forward
    and a backward pass (about 3 forwards) on one minibatch, a draw evaluates every observed item.
    """
    batch = min(config.batch_size, n_train)
    return float(
        config.num_chains * (config.total_steps * 3 * batch + config.num_draws * n_observed)
    )


@dataclass
class Candidate:
    """One pilot: the settings tried, how it went and the health verdict with its evidence."""

    step_size: float
    localization: float
    nbeta: float
    #: "coarse" or "refine".
    stage: str
    #: "ok" (ran), "diverged" (SamplerDivergedError) or "skipped" (rejected without running).
    status: str
    health: HealthReport | None = None
    message: str = ""
    pooled_loss: torch.Tensor | None = None
    distance: torch.Tensor | None = None
    init_loss: float = math.nan
    distance_bound: float = math.nan
    #: ε_eff·λ_max(nβH + γI) used by the pre-filter (NaN: not estimated).
    step_curvature: float = math.nan
    seconds: float = 0.0
    cost: float = 0.0
    pilot_chains: int = 0
    pilot_draws: int = 0

    @property
    def healthy(self) -> bool:
        return self.status == "ok" and self.health is not None and self.health.is_healthy

    @property
    def reasons(self) -> list[str]:
        if self.status != "ok":
            return [f"{self.status}: {self.message}"]
        return self.health.reasons if self.health is not None else []

    def row(self) -> dict[str, Any]:
        """Table row: settings, status, every health statistic and rule flag, verdict, reasons."""
        row: dict[str, Any] = {
            "step_size": self.step_size,
            "localization": self.localization,
            "nbeta": self.nbeta,
            "stage": self.stage,
            "status": self.status,
            "step_curvature": self.step_curvature,
        }
        if self.health is not None:
            row.update(self.health.to_row())
        row["healthy"] = self.healthy
        row["reasons"] = "; ".join(self.reasons)
        row.update(
            pilot_chains=self.pilot_chains,
            pilot_draws=self.pilot_draws,
            seconds=self.seconds,
            cost=self.cost,
        )
        return row


@dataclass
class CalibrationReport:
    """The evidence behind a calibration: every candidate, the choice and what it cost."""

    #: The returned sampler settings (the caller's with the chosen values).
    config: SGLDConfig
    #: The caller's settings.
    original: SGLDConfig
    calibration: CalibrationConfig
    candidates: list[Candidate]
    #: The chosen candidate (None if none was healthy).
    chosen: Candidate | None
    num_params: int
    pilot_items: int
    real_cost: float
    seconds: float
    search: tuple[str, ...] = ("step_size",)
    #: Estimated top eigenvalue of the Hessian of the mean training loss at w* (NaN: none).
    hessian_top_eigenvalue: float = math.nan
    rule: str = RULE

    @property
    def healthy(self) -> bool:
        """Whether a healthy candidate was found (False: ``config`` is the caller's)."""
        return self.chosen is not None

    @property
    def pilot_cost(self) -> float:
        return float(sum(c.cost for c in self.candidates))

    @property
    def cost_fraction(self) -> float:
        """Pilot cost actually spent, as a fraction of the real run's cost."""
        return self.pilot_cost / self.real_cost if self.real_cost > 0 else math.nan

    @property
    def table(self) -> pd.DataFrame:
        """One row per candidate (in evaluation order) with a ``chosen`` column."""
        import pandas as pd

        rows = [c.row() for c in self.candidates]
        df = pd.DataFrame(rows)
        if len(df):
            df["chosen"] = [c is self.chosen for c in self.candidates]
        return df

    def summary(self) -> str:
        """One line: the choice (or the failure), candidates tried and the cost spent."""
        cost = f"pilot cost {self.cost_fraction:.1%} of the real run, {self.seconds:.1f} s"
        tried = f"{len(self.candidates)} candidates"
        if self.chosen is None:
            return (
                f"calibration found NO healthy setting ({tried}, {cost}); kept ε="
                f"{self.original.step_size:g}, γ={self.original.localization:g}, "
                f"nβ={self.original.nbeta:g}. {self.advice()}"
            )
        c = self.chosen
        edge = ""
        if c.step_size >= self.calibration.grid_max * (1 - 1e-9):
            edge = "; at grid_max: raise it to try larger steps"
        return (
            f"calibration chose ε={c.step_size:.3g} (γ={c.localization:g}, nβ={c.nbeta:g}; "
            f"largest healthy of {tried}; {cost}{edge})"
        )

    def advice(self) -> str:
        """What to change when nothing was healthy, from the rules that failed most."""
        counts: dict[str, int] = {}
        for cand in self.candidates:
            if cand.health is not None:
                for check in cand.health.failed:
                    counts[check.name] = counts.get(check.name, 0) + 1
        tips = {
            "ess": "more draws or thinning (chains mix too slowly at the stable step sizes)",
            "trend": "a longer burn_in, or a larger γ so the chains equilibrate faster",
            "trend_share": "a longer burn_in, or a larger γ so the chains equilibrate faster",
            "distance": "a larger batch_size (less minibatch noise) or a larger γ",
            "loss": "a larger nβ or γ (the chains leave the basin)",
            "rhat": "more draws or a larger γ (chains disagree)",
        }
        if not counts:
            return "Every candidate diverged or was skipped: lower grid_min or raise γ."
        worst = sorted(counts, key=lambda k: -counts[k])[:2]
        return "Try " + "; ".join(f"{k}: {tips.get(k, '')}" for k in worst) + "."

    def to_metrics(self, prefix: str = "calibration/") -> dict[str, float]:
        """Flat float metrics for MLflow."""
        out = {
            f"{prefix}healthy": float(self.healthy),
            f"{prefix}step_size": float(self.config.step_size),
            f"{prefix}localization": float(self.config.localization),
            f"{prefix}nbeta": float(self.config.nbeta),
            f"{prefix}num_candidates": float(len(self.candidates)),
            f"{prefix}cost_fraction": float(self.cost_fraction),
            f"{prefix}seconds": float(self.seconds),
            f"{prefix}hessian_top_eigenvalue": float(self.hessian_top_eigenvalue),
        }
        if self.chosen is not None and self.chosen.health is not None:
            for k, v in self.chosen.health.stats.items():
                out[f"{prefix}chosen_{k}"] = float(v)
        return out

    def figures(self) -> dict[str, Any]:
        """``{"calibration_summary": fig, "calibration_traces": fig}`` (matplotlib figures)."""
        from bifrepro.plots.calibration import plot_calibration_summary, plot_calibration_traces

        return {
            "calibration_summary": plot_calibration_summary(self),
            "calibration_traces": plot_calibration_traces(self),
        }

    def save(self, out_dir: str | Path, figures: bool = True) -> dict[str, Path]:
        """Write ``calibration.csv``, ``calibration.json`` and the figures (PNG) atomically."""
        from bifrepro.io import atomic_save_figure, atomic_write_csv, atomic_write_json

        out = Path(out_dir)
        paths = {
            "table": atomic_write_csv(self.table, out / "calibration.csv"),
            "json": atomic_write_json(
                {
                    "summary": self.summary(),
                    "rule": self.rule,
                    "search": list(self.search),
                    "chosen": asdict(self.config),
                    "original": asdict(self.original),
                    "calibration": asdict(self.calibration),
                    "metrics": self.to_metrics(prefix=""),
                },
                out / "calibration.json",
            ),
        }
        if figures:
            for name, fig in self.figures().items():
                paths[name] = atomic_save_figure(fig, out / f"{name}.png")
        return paths

    def record(
        self, tracker: Any, out_dir: str | Path, prefix: str = "calibration/"
    ) -> dict[str, float]:
        """Save the evidence under ``out_dir``, log it as ``calibration/`` artifacts of
        ``tracker`` (a :class:`bifrepro.tracking.RunTracker`) and return the metrics to log.

        What every experiment does with a report of ``sampler=auto``.
        """
        for path in self.save(out_dir).values():
            tracker.log_artifact(path, "calibration")
        return self.to_metrics(prefix)

    def log_mlflow(self, prefix: str = "calibration/", figures: bool = True) -> None:
        """Log metrics, the table (CSV text) and the figures to the active MLflow run."""
        import mlflow

        mlflow.log_metrics(self.to_metrics(prefix))
        mlflow.log_text(self.table.to_csv(index=False), "calibration/calibration.csv")
        mlflow.log_text(self.summary() + "\n\n" + self.rule + "\n", "calibration/summary.txt")
        if figures:
            for name, fig in self.figures().items():
                mlflow.log_figure(fig, f"calibration/{name}.png")


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _pilot_seed(config: SGLDConfig, calibration: CalibrationConfig) -> int:
    seq = np.random.SeedSequence([config.seed, calibration.seed, 0xCA1B])
    return int(seq.generate_state(1, np.uint32)[0])


def _subset(data: Dataset, k: int, seed: int) -> Subset:
    n = len(data)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[: min(k, n)].sort().values
    return Subset(data, idx.tolist())


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
    unknown = sorted(set(search) - set(_SEARCHABLE))
    if unknown or "step_size" not in search:
        raise ValueError(f"search must contain 'step_size' and only {_SEARCHABLE}, got {search}")
    config.validate()
    start_time = time.perf_counter()
    d = _num_params(model)
    n_train = len(train_data)  # type: ignore[arg-type]
    if query_data is not None:
        n_query = len(query_data)  # type: ignore[arg-type]
    observables: dict[str, Any] = {"train": _subset(train_data, cal.pilot_items, cal.seed)}
    if query_data is not None:
        q_sub = _subset(query_data, cal.pilot_items, cal.seed + 1)
        observables["query"] = (q_sub, query_loss_fn or loss_fn)
    n_obs = sum(len(o[0] if isinstance(o, tuple) else o) for o in observables.values())
    real_cost = run_cost(config, n_train, n_observed if n_observed else n_train + n_query)

    lam_h = math.nan
    if cal.estimate_curvature and config.preconditioner == "none":
        lam_h = top_hessian_eigenvalue(
            model,
            loss_fn,
            _subset(train_data, cal.curvature_items, cal.seed),
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
    pilot_base = config.replace(num_chains=chains, num_draws=draws, seed=_pilot_seed(config, cal))
    coarse = sorted(
        {float(v) for v in np.geomspace(cal.grid_min, cal.grid_max, cal.grid_points)}, reverse=True
    )
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
        cand = _run_pilot(
            model, loss_fn, train_data, observables, pilot_base, cal, d, eps, gamma, nbeta,
            stage, config, n_train, n_obs, collate_fn, lam_h,
        )  # fmt: skip
        candidates.append(cand)
        bar.update(1)
        verdict = "healthy" if cand.healthy else "unhealthy: " + "; ".join(cand.reasons)
        log.info("  ε=%.3g γ=%g nβ=%g (%s): %s", eps, gamma, nbeta, stage, verdict)
        return cand

    def grid(gamma: float, nbeta: float) -> list[float]:
        """The coarse grid, anchored at the curvature cap of this (γ, nβ) when asked."""
        if not cal.anchor_grid:
            return coarse
        curvature = gamma + (nbeta * abs(lam_h) if math.isfinite(lam_h) else 0.0)
        scale = config.rmsprop_eps if config.preconditioner == "rmsprop" else 1.0
        cap = cal.max_step_curvature * scale / curvature * (1 - 1e-9) if curvature > 0 else math.inf
        if not cal.grid_min < cap < cal.grid_max:
            return coarse
        points = np.geomspace(cal.grid_min, cap, cal.grid_points)
        return sorted({float(v) for v in points}, reverse=True)

    def search_step(gamma: float, nbeta: float) -> Candidate | None:
        coarse_grid = grid(gamma, nbeta)
        best: Candidate | None = None
        lower: float | None = None  # bottom of the gap to refine
        upper: float | None = None  # top of the gap (an unhealthy grid point)
        ran: list[Candidate] = []
        for i, eps in enumerate(coarse_grid):
            cand = evaluate(eps, gamma, nbeta, "coarse")
            ran.append(cand)
            if cand.healthy and best is None:
                best = cand
                lower, upper = eps, (coarse_grid[i - 1] if i > 0 else None)
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
                above = [e for e in coarse_grid if e > lower]
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


def _run_pilot(
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
    from torch.utils.data import DataLoader

    from bifrepro.data.batches import batch_size_of, to_device

    work = copy.deepcopy(model).eval()
    params = [p for p in work.parameters() if p.requires_grad]
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
    log_mlflow: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    progress: bool | None = None,
) -> tuple[SGLDConfig, CalibrationReport | None]:
    """The sampler settings an experiment should use: as given, or calibrated (``sampler=auto``).

    With ``calibration.enabled`` the calibration runs (searching what the calibration config asks
    for); the report is saved under ``out_dir`` (table, JSON, figures) and, with ``log_mlflow``,
    logged to the active MLflow run. Otherwise ``(sampler, None)``.
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
    if log_mlflow:
        report.log_mlflow()
    return report.config, report


def load_sweep_runs(
    tracking_uri: str, parent_run_id: str | None = None, experiment_name: str | None = None
) -> pd.DataFrame:
    """Runs of a sweep as a ``mlflow.search_runs``-style table (``params.*``, ``metrics.*``, ``tags.*``).

    With ``parent_run_id``: that sweep's child runs (its experiment is looked up); otherwise every
    run of ``experiment_name``. Uses an ``MlflowClient`` (no global MLflow state). Feed the result
    to :func:`bifrepro.plots.calibration.plot_sampler_sweep`.
    """
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if parent_run_id is not None:
        exp_id = client.get_run(parent_run_id).info.experiment_id
        filt = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    elif experiment_name is not None:
        exp = client.get_experiment_by_name(experiment_name)
        if exp is None:
            raise ValueError(f"no MLflow experiment {experiment_name!r} at {tracking_uri}")
        exp_id, filt = exp.experiment_id, ""
    else:
        raise ValueError("give parent_run_id or experiment_name")
    rows = []
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string=filt, max_results=1000, page_token=token)
        for run in page:
            row: dict[str, Any] = {"run_id": run.info.run_id, "status": run.info.status}
            row.update({f"params.{k}": v for k, v in run.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
            row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
            rows.append(row)
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows)
