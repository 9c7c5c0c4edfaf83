"""Analysis of the stagewise controls: per run, across arms, and the intervention.

A *run* is one curriculum arm x one training seed: a dense induction-score scan of its snapshots
and class x class BIF at shared checkpoints for several sampler seeds
(:func:`~bifrepro.dynamics.lm_checkpoint_job.run_checkpoint` results).

* :func:`analyse_run`: the induction transition (the step where the induction score reaches a
  fixed level, :func:`~bifrepro.dynamics.stage_shift.level_crossing`; the relative 20/50/80 %
  marks of :func:`~bifrepro.dynamics.transitions.detect_transition` alongside), the step of the largest class-level influence change (all class pairs, and the induction
  class's self-influence), and the change across the transition under every estimator
  (:func:`~bifrepro.dynamics.stagewise_merge.estimator_changes`).
* :func:`shift_table`: ``late - early`` per training seed for each step, with intervals.
* :func:`stage_change_summary`: per arm, is the class-level influence change across the
  transition larger than over the equally long checkpoint interval just before it? (paired by
  training seed: the question of the single-run stagewise experiment, with seeds).
* :func:`intervention_agreement`: does the sign of class-level BIF before a window predict the
  effect of reweighting a class in it?
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bifrepro.data.token_classes import TOKEN_CLASSES
from bifrepro.dynamics.stage_shift import (
    combine_sampler_seeds,
    largest_change,
    level_crossing,
    paired_shift,
    sign_agreement,
)
from bifrepro.dynamics.stagewise_merge import estimator_changes
from bifrepro.dynamics.transitions import detect_transition

__all__ = [
    "ESTIMATORS",
    "RunData",
    "RunAnalysis",
    "class_matrices",
    "analyse_run",
    "shift_table",
    "stage_change_summary",
    "survival_table",
    "intervention_agreement",
    "shift_verdict",
]

#: Class-level estimators stored by every checkpoint job.
ESTIMATORS = ("correlation", "covariance", "partial")
_IND = TOKEN_CLASSES.index("induction")


@dataclass
class RunData:
    """One arm x training seed: the induction scan and the checkpoint results per sampler seed."""

    arm: str
    seed: int
    scan_steps: list[int]
    scan_scores: list[float]
    bif_steps: list[int]
    #: ``results[s][i]``: sampler seed ``s`` (position), checkpoint ``bif_steps[i]``.
    results: list[list[dict[str, Any]]]


@dataclass
class RunAnalysis:
    """What :func:`analyse_run` finds in one run."""

    row: dict[str, Any]
    #: Per estimator: ``[T, K, K]`` mean over sampler seeds and its standard error.
    mean: dict[str, np.ndarray]
    se: dict[str, np.ndarray]
    #: Largest |change| over class pairs per checkpoint interval, and its midpoints.
    change_curve: np.ndarray
    change_steps: np.ndarray
    by_estimator: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def class_matrices(results: list[list[dict[str, Any]]], est: str) -> tuple[np.ndarray, np.ndarray]:
    """``[T, K, K]`` class influence of estimator ``est`` averaged over sampler seeds, with its
    standard error (:func:`~bifrepro.dynamics.stage_shift.combine_sampler_seeds`)."""
    m = np.stack(
        [np.stack([r[f"class_{est}"]["mean"].double().numpy() for r in rs]) for rs in results]
    )
    s = np.stack(
        [np.stack([r[f"class_{est}"]["std_error"].double().numpy() for r in rs]) for rs in results]
    )
    return combine_sampler_seeds(m, s)


def _index_before(steps: list[int], target: float) -> int | None:
    idx = [i for i, s in enumerate(steps) if s <= target]
    return idx[-1] if idx else None


def _index_after(steps: list[int], target: float) -> int | None:
    idx = [i for i, s in enumerate(steps) if s >= target]
    return idx[0] if idx else None


def analyse_run(run: RunData, normalize: str, level: float, min_rise: float) -> RunAnalysis:
    """Transition (induction score reaches ``level`` nats), largest influence change (estimator
    ``normalize``) and the by-estimator changes across the transition (between the checkpoints
    just before and just after it; none when it is not bracketed by checkpoints).
    ``min_rise``: of the relative marks (:func:`detect_transition`), reported alongside."""
    trans = detect_transition(run.scan_steps, run.scan_scores, min_rise)
    cross = level_crossing(run.scan_steps, run.scan_scores, level)
    mean, se = {}, {}
    for e in ESTIMATORS:
        mean[e], se[e] = class_matrices(run.results, e)
    steps = run.bif_steps
    allpairs = largest_change(steps, mean[normalize], se[normalize])
    self_ind = largest_change(steps, mean[normalize], se[normalize], pairs=[(_IND, _IND)])
    healthy = [bool(r.get("healthy", False)) for rs in run.results for r in rs]
    names = TOKEN_CLASSES
    row: dict[str, Any] = {
        "arm": run.arm, "seed": run.seed, "transition_detected": bool(np.isfinite(cross)),
        "transition_step": cross, "induction_final": float(run.scan_scores[-1]),
        "relative_onset": trans.onset, "relative_midpoint": trans.midpoint,
        "relative_end": trans.end, "induction_rise": trans.rise,
        "influence_change_step": allpairs.step, "influence_change": allpairs.change,
        "influence_change_se": allpairs.std_error,
        "influence_change_pair": f"{names[allpairs.pair[0]]}->{names[allpairs.pair[1]]}",
        "induction_self_change_step": self_ind.step, "induction_self_change": self_ind.change,
        "induction_self_change_se": self_ind.std_error,
        "healthy_fraction": float(np.mean(healthy)), "checkpoints": len(healthy),
    }  # fmt: skip
    out = RunAnalysis(
        row, mean, se, allpairs.per_interval, 0.5 * (np.array(steps[1:]) + np.array(steps[:-1]))
    )
    if np.isfinite(cross):
        b, a = _index_before(steps, cross), _index_after(steps, cross)
        if a == b:
            a = a + 1 if a + 1 < len(steps) else None
        if b is not None and a is not None and a > b:
            row |= _stage_change(mean[normalize], b, a)
            table = estimator_changes(mean, se, b, a)
            table.insert(0, "after_step", steps[a])
            table.insert(0, "before_step", steps[b])
            table.insert(0, "seed", run.seed)
            table.insert(0, "arm", run.arm)
            out.by_estimator = table
    return out


def _stage_change(m: np.ndarray, before: int, after: int) -> dict[str, float]:
    """Mean |change| of the ``[T, K, K]`` class matrices over the class pairs across the
    transition (checkpoints ``before`` -> ``after``) and over the interval of as many checkpoints
    just before it (NaN when the grid does not reach back that far), and their ratio."""
    across = float(np.nanmean(np.abs(m[after] - m[before])))
    start = before - (after - before)
    prior = float(np.nanmean(np.abs(m[before] - m[start]))) if start >= 0 else math.nan
    ratio = across / prior if np.isfinite(prior) and prior > 0 else math.nan
    return {"change_across_transition": across, "change_before_transition": prior,
            "change_ratio_across_over_before": ratio}  # fmt: skip


def stage_change_summary(rows: pd.DataFrame, confidence: float = 0.95) -> dict[str, float]:
    """Per arm, over training seeds: the mean |class change| across the transition and before it
    (:func:`analyse_run`'s row), the ratio of their means, the paired difference ``across -
    before`` with t and bootstrap intervals (:func:`~bifrepro.dynamics.stage_shift.paired_shift`)
    and how many seeds have a larger change across the transition. Keys
    ``stage_change/<arm>/<quantity>``; an arm without bracketed transitions is left out."""
    out: dict[str, float] = {}
    if "change_across_transition" not in rows.columns:
        return out
    for arm, g in rows.groupby("arm", sort=True):
        across = g["change_across_transition"].to_numpy(float)
        before = g["change_before_transition"].to_numpy(float)
        ok = np.isfinite(across) & np.isfinite(before)
        if not ok.any():
            continue
        d = paired_shift(before[ok], across[ok], confidence)
        key = f"stage_change/{arm}"
        out |= {
            f"{key}/across_mean": float(across[ok].mean()),
            f"{key}/before_mean": float(before[ok].mean()),
            f"{key}/ratio_of_means": float(across[ok].mean() / before[ok].mean())
            if before[ok].mean() > 0 else math.nan,
            f"{key}/difference_mean": d.mean, f"{key}/difference_t_low": d.t_low,
            f"{key}/difference_t_high": d.t_high, f"{key}/difference_boot_low": d.boot_low,
            f"{key}/difference_boot_high": d.boot_high,
            f"{key}/seeds_larger_across": float((across[ok] > before[ok]).sum()),
            f"{key}/seeds": float(ok.sum()),
        }  # fmt: skip
    return out


def shift_table(rows: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """``late - early`` (paired by training seed) of the transition step and of the steps of
    the largest influence changes: mean, standard error, t and bootstrap intervals."""
    early = rows[rows.arm == "early"].set_index("seed")
    late = rows[rows.arm == "late"].set_index("seed")
    seeds = sorted(set(early.index) & set(late.index))
    out = []
    for q in ("transition_step", "influence_change_step", "induction_self_change_step"):
        sh = paired_shift(
            early.loc[seeds, q].to_numpy(float), late.loc[seeds, q].to_numpy(float), confidence
        )
        out.append(
            {"quantity": q, "early_mean": float(early.loc[seeds, q].mean()),
             "late_mean": float(late.loc[seeds, q].mean())} | sh.to_dict()
        )  # fmt: skip
    return pd.DataFrame(out)


def survival_table(by_estimator: pd.DataFrame) -> pd.DataFrame:
    """Per arm and class pair: in how many runs the change across the transition is beyond 2
    standard errors under each estimator, and survives the covariance / partial correlation
    (significant with the same sign as the correlation's)."""
    cols = [f"{e}_significant" for e in ESTIMATORS] + ["survives_covariance", "survives_partial"]
    g = by_estimator.groupby(["arm", "query_class", "train_class"], sort=False)
    out = g[cols].sum().astype(int)
    out["runs"] = g.size()
    out["partial_change_mean"] = g["partial_change"].mean()
    out["correlation_change_mean"] = g["correlation_change"].mean()
    return out.reset_index()


def intervention_agreement(
    effects: pd.DataFrame, bif: dict[int, dict[str, np.ndarray]], factor: float, confidence: float
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Compare the reweighting effects with the class-level BIF measured before the window.

    ``effects``: rows of :func:`~bifrepro.dynamics.lm_intervention.class_interventions` with a
    ``seed`` column; ``bif[seed][estimator]``: ``[K, K]`` (query class, training class) BIF at
    the window's start (positive = helpful). Upweighting (``factor > 1``) a helpful training
    class should lower the query loss of that query class and, for the induction query class,
    raise the induction score; removing it (``factor < 1``) the opposite. Returns one row per
    seed x reweighted class x query class, and the agreement (share, Wilson interval) for the
    diagonal (the class's own loss), every pair, and the induction score.
    """
    direction = 1.0 if factor > 1 else -1.0
    rows = []
    for r in effects[effects.condition != "control"].itertuples():
        c = TOKEN_CLASSES.index(r.condition)
        for q, qname in enumerate(TOKEN_CLASSES):
            row: dict[str, Any] = {
                "seed": r.seed, "reweighted_class": r.condition, "query_class": qname,
                "delta_loss": getattr(r, f"delta_loss_{qname}"),
                "delta_induction": r.delta_induction,
            }  # fmt: skip
            for e, m in bif[int(r.seed)].items():
                row[f"bif_{e}"] = float(m[q, c])
                # predicted sign of the loss change: helpful & upweighted -> loss falls
                row[f"agree_{e}"] = bool(
                    np.sign(-direction * m[q, c]) == np.sign(row["delta_loss"])
                )
            rows.append(row)
    table = pd.DataFrame(rows)
    summary: dict[str, float] = {}
    for e in next(iter(bif.values())):
        pred = -direction * table[f"bif_{e}"].to_numpy(float)
        obs = table["delta_loss"].to_numpy(float)
        diag = (table.reweighted_class == table.query_class).to_numpy()
        ind_q = (table.query_class == "induction").to_numpy()
        for key, sel, p, o in (
            ("own_class", diag, pred, obs),
            ("all_pairs", np.ones_like(diag), pred, obs),
            ("induction_score", ind_q, -pred, table["delta_induction"].to_numpy(float)),
        ):
            a = sign_agreement(p[sel], o[sel], confidence)
            for k, v in a.items():
                summary[f"intervention/{e}/{key}/{k}"] = v
    summary["intervention/effect_sizes_mean_abs"] = float(
        np.nanmean(np.abs(table["delta_loss"])) if len(table) else math.nan
    )
    return table, summary


def shift_verdict(shifts: pd.DataFrame) -> dict[str, Any]:
    """Does the largest influence change move with the induction transition?

    ``moved``: the curriculum moved the transition (its shift's t interval excludes 0).
    ``holds``: the influence-change step moved too, in the same direction (its interval excludes
    0 with the transition shift's sign) and its interval contains the transition's shift.
    """
    by = shifts.set_index("quantity")
    t, c = by.loc["transition_step"], by.loc["influence_change_step"]
    moved = bool(t["excludes_zero"])
    same_dir = bool(c["excludes_zero"]) and np.sign(c["mean"]) == np.sign(t["mean"])
    covers = bool(c["t_low"] <= t["mean"] <= c["t_high"])
    holds = moved and same_dir and covers
    return {
        "transition_moved": moved,
        "influence_moved_same_direction": bool(same_dir),
        "influence_shift_covers_transition_shift": covers,
        "holds": holds,
        "text": "holds" if holds else "does not hold",
    }
