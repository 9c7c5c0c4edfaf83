"""Figures of the stagewise controls: both curriculum arms with training seeds as bands.

* :func:`plot_induction_arms`: induction score over training, transition midpoints marked.
* :func:`plot_influence_change_arms`: the largest class-level influence change between adjacent
  checkpoints, and the induction class's self-influence, with the transitions marked.
* :func:`plot_intervention`: effect of reweighting a class against its BIF before the window.
* :func:`controls_figures`: all three from a run's analyses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bifrepro.data.token_classes import TOKEN_CLASSES
from bifrepro.plots.style import house_style, legend_below, new_figure

__all__ = [
    "ARM_COLORS",
    "controls_figures",
    "plot_induction_arms",
    "plot_influence_change_arms",
    "plot_intervention",
]

ARM_COLORS = {"early": "#1f77b4", "late": "#d62728"}
_ARMS = ("early", "late")


def _band(ax, x: np.ndarray, ys: np.ndarray, color: str, label: str) -> None:
    """Mean over seeds (rows of ``ys``) as a line, min..max over seeds as a band."""
    ax.fill_between(x, np.nanmin(ys, 0), np.nanmax(ys, 0), color=color, alpha=0.2, lw=0)
    ax.plot(x, np.nanmean(ys, 0), color=color, lw=1.6, label=label)


def _mark(ax, steps: Sequence[float], color: str, ls: str = "--") -> None:
    for s in steps:
        if np.isfinite(s):
            ax.axvline(s, color=color, ls=ls, lw=0.9, alpha=0.7, zorder=0)


def plot_induction_arms(
    scans: Mapping[str, tuple[np.ndarray, np.ndarray]],
    midpoints: Mapping[str, Sequence[float]],
    late_start: int,
    title: str,
) -> Figure:
    """``scans[arm] = (steps [T], scores [seeds, T])``; dashed: each seed's transition midpoint."""
    with house_style():
        fig, axes = new_figure(width=7.2, height=3.8)
        ax = axes[0, 0]
        for arm, (x, ys) in scans.items():
            n = ys.shape[0]
            _band(ax, x, ys, ARM_COLORS[arm], f"{arm} arm ({n} seeds: mean, min-max band)")
            _mark(ax, midpoints.get(arm, ()), ARM_COLORS[arm])
        ax.axvline(late_start, color="k", ls=":", lw=1.0, label="repeats start (late arm)")
        ax.set_xlabel("training step")
        ax.set_ylabel("induction score (nats)")
        ax.set_title(title, fontsize=9)
        legend_below(ax, gap_in=0.45, ncol=2, fontsize=8)
    return fig


def plot_influence_change_arms(
    change: Mapping[str, tuple[np.ndarray, np.ndarray]],
    self_infl: Mapping[str, tuple[np.ndarray, np.ndarray]],
    midpoints: Mapping[str, Sequence[float]],
    change_steps: Mapping[str, Sequence[float]],
    estimator: str,
    title: str,
) -> Figure:
    """Left: largest |change| over class pairs per checkpoint interval (``change[arm] =
    (interval midpoints, [seeds, T-1])``), with each seed's largest-change step (dotted) and
    transition midpoint (dashed). Right: induction -> induction influence per checkpoint."""
    with house_style():
        fig, axes = new_figure(1, 2, width=9.6, height=3.9)
        for ax, data, ylabel in (
            (axes[0, 0], change, f"largest |change| of class {estimator}\nbetween checkpoints"),
            (axes[0, 1], self_infl, f"induction -> induction class {estimator}"),
        ):
            for arm, (x, ys) in data.items():
                _band(ax, x, ys, ARM_COLORS[arm], f"{arm} arm")
                _mark(ax, midpoints.get(arm, ()), ARM_COLORS[arm])
                if data is change:
                    _mark(ax, change_steps.get(arm, ()), ARM_COLORS[arm], ls=":")
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel)
        legend_below(axes[0, 0], gap_in=0.45, ncol=2, fontsize=8)
        fig.suptitle(title, fontsize=9)
    return fig


def plot_intervention(table: pd.DataFrame, estimator: str, title: str) -> Figure:
    """Change of the query-class loss after reweighting a class vs the class-level BIF before
    the window (filled: the reweighted class's own loss)."""
    with house_style():
        fig, axes = new_figure(width=6.4, height=4.0)
        ax = axes[0, 0]
        own = table.reweighted_class == table.query_class
        ax.scatter(table.loc[~own, f"bif_{estimator}"], table.loc[~own, "delta_loss"],
                   s=14, facecolors="none", edgecolors="#7f7f7f", label="other query classes")  # fmt: skip
        ax.scatter(table.loc[own, f"bif_{estimator}"], table.loc[own, "delta_loss"], s=22,
                   color="#1f77b4", label="the reweighted class's own loss")  # fmt: skip
        ax.axhline(0, color="k", lw=0.6)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_xlabel(f"class-level BIF ({estimator}) before the window (+ = helpful)")
        ax.set_ylabel("query loss change vs control (nats)")
        ax.set_title(title, fontsize=9)
        legend_below(ax, gap_in=0.45, ncol=2, fontsize=8)
    return fig


def controls_figures(an: dict, scans: dict, shifts: pd.DataFrame, verdict: dict, pairs: pd.DataFrame,
             summ: dict, exp: Any) -> dict[str, Figure]:  # fmt: skip
    """The three figures of a controls run: ``an[arm, seed]`` run analyses
    (:class:`~bifrepro.dynamics.stagewise_controls.RunAnalysis`), ``scans[arm, seed] = (steps,
    induction scores)``, the shift table and verdict, the intervention pairs and agreement
    metrics, and the experiment settings; titles state the numbers and the verdict."""
    est, seeds = exp.normalize, exp.train_seeds
    mids = {a: [an[a, s].row["transition_step"] for s in seeds] for a in _ARMS}
    sc = {a: (np.array(scans[a, seeds[0]][0]), np.array([scans[a, s][1] for s in seeds])) for a in _ARMS}  # fmt: skip
    by = shifts.set_index("quantity")
    t, c = by.loc["transition_step"], by.loc["influence_change_step"]
    ind = TOKEN_CLASSES.index("induction")
    change = {a: (an[a, seeds[0]].change_steps, np.array([an[a, s].change_curve for s in seeds])) for a in _ARMS}  # fmt: skip
    self_infl = {a: (np.array(exp.bif_steps), np.array([an[a, s].mean[est][:, ind, ind] for s in seeds])) for a in _ARMS}  # fmt: skip
    csteps = {a: [an[a, s].row["influence_change_step"] for s in seeds] for a in _ARMS}
    ci = f"{exp.confidence:.0%} CI"
    agree = summ.get(f"intervention/{est}/own_class/agreement", math.nan)
    return {
        "fig1_induction_arms.png": plot_induction_arms(sc, mids, exp.late_start_step,
            f"Induction score reaches {exp.induction_level:g} nats (constant LR): late - early = "
            f"{t['mean']:.0f} steps ({ci} {t['t_low']:.0f}..{t['t_high']:.0f}, {int(t['n'])} seeds); dashed: per seed"),
        "fig2_influence_change_arms.png": plot_influence_change_arms(change, self_infl, mids, csteps, est,
            f"Largest class-level change moves {c['mean']:.0f} steps ({ci} {c['t_low']:.0f}.."
            f"{c['t_high']:.0f}) vs transition {t['mean']:.0f}: the prediction {verdict['text'].upper()} "
            f"here (dashed: transitions, dotted: largest change)"),
        "fig3_intervention.png": plot_intervention(pairs, est,
            f"Reweighting x{exp.intervention_factor:g} from step {exp.intervention_step}: "
            f"BIF sign predicts the own-class loss change in {agree:.0%}"),
    }  # fmt: skip
