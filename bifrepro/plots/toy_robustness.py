"""Figures of the toy robustness study: flips per ancestor depth (robust vs any seed, with the
analytic prediction and leave-one-out), and focus curves with their spread over sampler seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bifrepro.plots.style import house_style, mark_transitions, new_figure

__all__ = ["plot_flip_counts", "plot_seed_bands"]

_BARS = (
    ("bif_flips_any_seed", "BIF: flips in ≥ 1 sampler seed", "#c7c7c7"),
    ("bif_flips_every_seed", "BIF: flips in every seed", "#8c8c8c"),
    ("bif_robust_flips", "BIF: robust flip (both extremes resolved)", "#1f77b4"),
    ("analytic_flips", "analytic prediction flips", "#2ca02c"),
    ("loo_flips", "leave-one-out flips", "#d62728"),
)


def plot_flip_counts(summary: pd.DataFrame, depth_names: dict[int, str], title: str) -> Figure:
    """Share of pairs that flip, per depth of the common ancestor, summed over init seeds."""
    totals = summary.groupby("ancestor_depth").sum(numeric_only=True)
    depths = list(totals.index)
    with house_style():
        fig, axes = new_figure(width=7.2, height=3.8)
        ax = axes[0, 0]
        width = 0.8 / len(_BARS)
        for b, (col, label, color) in enumerate(_BARS):
            share = totals[col] / totals["pairs"]
            x = np.arange(len(depths)) + (b - (len(_BARS) - 1) / 2) * width
            ax.bar(x, share, width, label=label, color=color)
        ax.set_xticks(range(len(depths)))
        ax.set_xticklabels(
            [f"{depth_names.get(d, d)}\n({int(totals.at[d, 'pairs'])} pair-inits)" for d in depths]
        )
        ax.set_xlabel("common ancestor of the pair (depth in the hierarchy)")
        ax.set_ylabel("share of pairs that flip sign")
        ax.set_ylim(0, 1.35)  # room for the legend above the bars
        ax.legend(loc="upper center", ncols=2, fontsize=7, frameon=False)
        ax.set_title(title, fontsize=9)
    return fig


def plot_seed_bands(
    steps: list[int],
    curves: dict[str, np.ndarray],
    transitions: list[float],
    title: str,
) -> Figure:
    """One panel per focus pair: BIF per sampler seed (thin), its mean (thick), zero line, and the
    stage transitions. ``curves[label]`` is ``[S, T]``."""
    with house_style():
        fig, axes = new_figure(1, len(curves), width=3.2 * len(curves), height=3.0, sharex=True)
        for ax, (label, c) in zip(axes[0], curves.items(), strict=True):
            for row in c:
                ax.plot(steps, row, color="#1f77b4", lw=0.6, alpha=0.4)
            ax.plot(steps, c.mean(0), color="#1f77b4", lw=2.0, label="mean over seeds")
            ax.axhline(0.0, color="black", lw=0.6)
            mark_transitions(ax, transitions, label_text=False)
            ax.set_xscale("log")
            ax.set_xlabel("training step")
            ax.set_title(label, fontsize=8)
        axes[0, 0].set_ylabel("BIF (covariance)")
        fig.suptitle(title, fontsize=9)
    return fig
