"""Settings of the automatic SGLD calibration and its selection rule (``sampler=auto``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from bifrepro.sampling.health import HealthThresholds
from bifrepro.validation import finite_numbers

__all__ = ["CalibrationConfig", "CalibrationError", "RULE", "SEARCHABLE"]

#: Sampler fields the calibration can search.
SEARCHABLE = ("step_size", "localization", "nbeta")

#: The selection rule in one paragraph (also written next to every calibration report).
RULE = (
    "Largest healthy step size. Pilot chains (same nβ, γ, batch size, burn-in and thinning as the "
    "real run; a seeded subset of training items observed) run for a geometric grid of ε (from "
    "the largest step the curvature filter admits down to grid_min, with anchor_grid) scanned "
    "from the largest value down (stopping at the first healthy one, or at the first whose chains "
    "mix too slowly), then refined between the largest healthy grid point and the next "
    "larger one (if no grid point is healthy: between the largest step that did not diverge and the "
    "next larger one). Steps with ε·λ_max(nβH+γI) > max_step_curvature (power-iteration estimate "
    "of the Hessian's top eigenvalue; for RMSProp-SGLD λ_max(P^½(nβH+γI)P^½) with P the "
    "preconditioner after burn-in) are rejected unrun. A pilot is healthy when no chain drifts "
    "(trend extrapolated to the real run's draws), split R-hat projected to the real run's draws "
    "<= max_rhat, the ESS projected to "
    "the real run >= min_ess, E|w-w*|² <= distance_slack·d/(γ(1-εγ/4)), λ̂ = nβ·ΔL <= "
    "loss_slack·d/2 and per-chain trends explain <= max_trend_share of the item covariance. "
    "Searched γ/nβ: the pair closest (in log) to the caller's that has a healthy ε wins. Step "
    "halving (bias_check): an independent pilot at ε/2 must reproduce the chosen pilot's scores "
    "and item-loss variance within bias_z standard errors, else the healthy ε/2 is chosen "
    "(at most bias_check_rounds times). With target_resolved, num_draws is raised to what the "
    "chosen pilot's standard errors say that share of resolved top-k items needs (<= max_draws). "
    "With choose_thinning, the thinning is the k with the most effective samples per unit cost "
    "given the chosen pilot's autocorrelation time, draws rescaled to keep the effective sample "
    "size."
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
    #: Candidates with ε·λ_max(nβH + γI) above this are rejected without running. 0.5 bounds the
    #: variance inflation 1/(1 - x/4) by 1.14; on the accuracy bench 1.0 (inflation 1.33) left a
    #: discretisation bias that capped logistic regression's Spearman at 0.90, 0.5 reached 0.95.
    max_step_curvature: float = 0.5
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
    #: Step-halving bias check: after choosing ε, a pilot at ε/2 (twice the draws and burn-in:
    #: the same time span) must give the same pilot scores within Monte Carlo error; else ε/2
    #: is tried instead (discretisation bias is invisible to the other health rules).
    bias_check: bool = True
    #: Most halvings the bias check may make (each costs about two pilots).
    bias_check_rounds: int = 2
    #: |z| above which the step-halving statistics count as a systematic difference.
    bias_z: float = 3.0
    #: Precision target: share of each query's top-``precision_k`` items resolved beyond Monte
    #: Carlo noise (``uncertainty.topk_resolved``, mean over queries) that the real run's draws
    #: should reach, extrapolated from the chosen pilot (needs queries). None: keep num_draws.
    target_resolved: float | None = None
    #: k of the precision target's top-k.
    precision_k: int = 10
    #: Most draws per chain the precision target may ask for (None: no limit).
    max_draws: int | None = None
    #: Choose the thinning from the chosen pilot's autocorrelation time τ (in SGLD steps) and
    #: the cost of a draw (:mod:`bifrepro.sampling.thinning`): the k with the most effective
    #: samples per unit cost, with the draws rescaled to keep the effective sample size.
    choose_thinning: bool = False
    #: Largest thinning it may choose.
    max_thinning: int = 100
    #: Fewest draws per chain it may leave (chain diagnostics need draws; never above num_draws).
    min_draws: int = 100
    #: Thresholds of the health rules.
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        finite_numbers(self)

        def bad(name: str, why: str) -> None:
            raise ValueError(f"CalibrationConfig.{name}={getattr(self, name)!r} is invalid: {why}")

        for name in ("grid_min", "grid_max", "pilot_fraction", "max_step_curvature", "bias_z"):
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
            ("bias_check_rounds", 1),
            ("precision_k", 1),
            ("max_thinning", 1),
            ("min_draws", 4),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                bad(name, f"must be an integer >= {low}")
        for name in ("localization_grid", "nbeta_grid"):
            values = list(getattr(self, name))
            if not values or any(not float(v) > 0 for v in values):
                bad(name, "must be a non-empty list of numbers > 0")
        for name in ("bias_check", "choose_thinning"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "must be true or false")
        t = self.target_resolved
        if t is not None and (
            not isinstance(t, int | float) or isinstance(t, bool) or not 0 < t <= 1
        ):
            bad("target_resolved", "must be None or a number in (0, 1]")
        m = self.max_draws
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
            bad("max_draws", "must be None or an integer >= 1")
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
