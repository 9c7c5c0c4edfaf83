"""The evidence of a calibration: every candidate tried, the choice, the cost, saved as tables.

A report only holds numbers and writes tables; figures of it are drawn, and logged with them, by
:mod:`bifrepro.plots.calibration` (``record_calibration``), above this layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bifrepro.io import atomic_save_figure, atomic_write_csv, atomic_write_json
from bifrepro.sampling.calibration_config import RULE, CalibrationConfig
from bifrepro.sampling.health import HealthCheck, HealthReport
from bifrepro.sgld_config import SGLDConfig

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Candidate", "CalibrationReport"]


@dataclass
class Candidate:
    """One pilot: the settings tried, how it went and the health verdict with its evidence."""

    step_size: float
    localization: float
    nbeta: float
    #: "coarse", "refine" or "halving" (the ε/2 pilot of the step-halving bias check).
    stage: str
    #: "ok" (ran), "diverged" (SamplerDivergedError) or "skipped" (rejected without running).
    status: str
    health: HealthReport | None = None
    message: str = ""
    pooled_loss: torch.Tensor | None = None
    distance: torch.Tensor | None = None
    init_loss: float = math.nan
    distance_bound: float = math.nan
    #: ε·κ used by the pre-filter, κ the stiffest curvature the chain sees: λ_max(nβH + γI),
    #: λ_max(P^½(nβH + γI)P^½) for RMSProp-SGLD, or γ (/rmsprop_eps) without an estimate.
    step_curvature: float = math.nan
    seconds: float = 0.0
    cost: float = 0.0
    pilot_chains: int = 0
    pilot_draws: int = 0
    #: The pilot's loss traces, kept only where needed (chosen pilot, step-halving pilots).
    traces: Any = field(default=None, repr=False, compare=False)

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
    #: κ of the chosen (γ, nβ): the stiffest curvature the chain sees, λ_max(nβH + γI) or, for
    #: RMSProp-SGLD, λ_max(P^½(nβH + γI)P^½) (NaN: not estimated).
    top_eigenvalue: float = math.nan
    #: ε_chosen·κ (variance inflation 1/(1 - x/4) in the stiffest direction); None: no choice.
    curvature: float | None = None
    #: Outcome of the step-halving bias check on the chosen step (None: off or nothing chosen).
    bias_check: HealthCheck | None = None
    #: Draws per chain the precision target needs (None: no target or no queries).
    draws_needed: int | None = None
    #: Whether ``target_resolved`` is reachable within ``max_draws`` (None: not asked / n/a).
    precision_reachable: bool | None = None
    #: Remarks on the choice (bias check, precision target), also in the summary and JSON.
    notes: list[str] = field(default_factory=list)
    #: Autocorrelation time of the chosen pilot in SGLD steps (NaN: thinning not chosen).
    tau_steps: float = math.nan
    #: Effective samples per unit cost at the chosen thinning over the configured one.
    thinning_speedup: float = math.nan

    @property
    def healthy(self) -> bool:
        """Whether a healthy candidate was found (False: ``config`` is the caller's)."""
        return self.chosen is not None

    def health_evidence(self, config: SGLDConfig | None = None) -> dict[str, Any]:
        """What this calibration measured that a run's health check cannot see from its traces:
        keyword arguments for :func:`~bifrepro.sampling.run_health` / ``run_bif``.

        ``step_curvature`` is ``ε·κ`` at the run's step (``config``, default the chosen one) with
        κ measured here, when the run samples the same posterior (same γ, nβ, preconditioner);
        the step-halving check vouches for steps no larger than the one it checked.
        """
        run = config or self.config
        same = (
            run.localization == self.config.localization
            and run.nbeta == self.config.nbeta
            and run.preconditioner == self.config.preconditioner
        )
        out: dict[str, Any] = {"step_curvature": None, "extra_checks": ()}
        if not same or self.chosen is None:
            return out
        if math.isfinite(self.top_eigenvalue):
            out["step_curvature"] = run.step_size * self.top_eigenvalue
        if self.bias_check is not None and run.step_size <= self.config.step_size * (1 + 1e-9):
            out["extra_checks"] = (self.bias_check,)
        return out

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
        extra = ""
        if self.curvature is not None and math.isfinite(self.curvature):
            extra += f"; ε·λ_max = {self.curvature:.3g}"
        if self.bias_check is not None:
            extra += f"; step halving {'ok' if self.bias_check.passed else 'FAILED'}"
        if self.precision_reachable is not None:
            extra += f"; {self.config.num_draws} draws/chain"
            extra += "" if self.precision_reachable else " (precision target NOT reachable)"
        return (
            f"calibration chose ε={c.step_size:.3g} (γ={c.localization:g}, nβ={c.nbeta:g}; "
            f"largest healthy of {tried}; {cost}{edge}{extra})"
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
            f"{prefix}top_eigenvalue": float(self.top_eigenvalue),
            f"{prefix}step_curvature": math.nan if self.curvature is None else self.curvature,
            f"{prefix}num_draws": float(self.config.num_draws),
            f"{prefix}thinning": float(self.config.thinning),
            f"{prefix}tau_steps": float(self.tau_steps),
            f"{prefix}thinning_speedup": float(self.thinning_speedup),
        }
        if self.bias_check is not None:
            out[f"{prefix}step_halving_ok"] = float(self.bias_check.passed)
            out[f"{prefix}step_halving_value"] = float(self.bias_check.value)
        if self.precision_reachable is not None:
            out[f"{prefix}precision_reachable"] = float(self.precision_reachable)
        if self.draws_needed is not None:
            out[f"{prefix}draws_needed"] = float(self.draws_needed)
        if self.chosen is not None and self.chosen.health is not None:
            for k, v in self.chosen.health.stats.items():
                out[f"{prefix}chosen_{k}"] = float(v)
        return out

    def save(
        self, out_dir: str | Path, figures: Mapping[str, Any] | None = None
    ) -> dict[str, Path]:
        """Write ``calibration.csv``, ``calibration.json`` and the given figures (PNG) atomically.

        ``figures``: ``{name: matplotlib figure}`` saved as ``<name>.png``; the plots layer draws
        them (:func:`bifrepro.plots.calibration.calibration_figures`).
        """
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
                    "bias_check": None if self.bias_check is None else asdict(self.bias_check),
                    "notes": list(self.notes),
                },
                out / "calibration.json",
            ),
        }
        for name, fig in (figures or {}).items():
            paths[name] = atomic_save_figure(fig, out / f"{name}.png")
        return paths

    def record(
        self,
        tracker: Any,
        out_dir: str | Path,
        prefix: str = "calibration/",
        figures: Mapping[str, Any] | None = None,
    ) -> dict[str, float]:
        """Save the evidence under ``out_dir``, log it as ``calibration/`` artifacts of
        ``tracker`` (a :class:`bifrepro.tracking.RunTracker`) and return the metrics to log.

        What every experiment does with a report of ``sampler=auto``; with the figures, use
        :func:`bifrepro.plots.calibration.record_calibration`.
        """
        for path in self.save(out_dir, figures).values():
            tracker.log_artifact(path, "calibration")
        return self.to_metrics(prefix)
