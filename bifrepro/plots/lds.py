"""LDS figure: linear datamodeling score against the retraining subset fraction α, per method."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bifrepro.plots.style import ESTIMATOR_COLORS, house_style, new_figure

__all__ = ["method_color", "method_linestyle", "method_marker", "plot_lds_vs_alpha", "ranking_note"]


def ranking_note(ranking: pd.DataFrame, width: int = 120) -> str:
    """Title lines on the ranking (:func:`~bifrepro.evaluation.ranking.resolved_ranking` by α):
    the unresolved steps (``A ≈ B``) of every α that has any, wrapped at ``width`` characters,
    or that every step is resolved (the full rankings are in ``lds_ranking.csv``)."""
    if ranking.empty:
        return ""
    parts = []
    for a, g in ranking.groupby("alpha", sort=True):
        g = g.sort_values("rank")
        ties = [
            f"{m} ≈ {n}"
            for m, n, r in zip(g["method"], g["method"].iloc[1:], g["resolved"], strict=False)
            if not r
        ]
        if ties:
            parts.append(f"α={a:g}: {', '.join(ties)}")
    if not parts:
        return "ranking resolved at every α (paired CIs exclude 0)"
    text = "UNRESOLVED ranking steps (paired CI includes 0): " + "; ".join(parts)
    return textwrap.fill(text, width)


def method_color(label: str) -> str:
    """House colour of a method label (``"BIF (cov)"`` uses BIF's colour)."""
    for key, color in ESTIMATOR_COLORS.items():
        if label == key or label.startswith(f"{key} "):
            return color
    return "#333333"


def method_linestyle(label: str) -> str:
    """Dashed for the second variant of a method (BIF correlation), solid otherwise."""
    return "--" if "corr" in label else "-"


def method_marker(label: str) -> str:
    """Square for the second variant of a method (BIF correlation), circle otherwise: with the
    dashed line, the two BIF variants differ in the legend, not only along the curve."""
    return "s" if "corr" in label else "o"


def plot_lds_vs_alpha(
    table: pd.DataFrame,
    title: str,
    methods: Sequence[str] | None = None,
    confidence: float = 0.95,
    seed_bands: pd.DataFrame | None = None,
) -> Figure:
    """LDS (mean over queries, with its bootstrap interval) against α, one line per method.

    Args:
        table: rows with columns ``method`` (label), ``alpha``, ``lds``, ``ci_low``, ``ci_high``.
        title: figure title (setting, estimator, draws, chain health).
        methods: labels in legend order (default: order of appearance).
        confidence: level of the intervals, for the axis label.
        seed_bands: BIF's spread over sampler seeds (:func:`~bifrepro.evaluation.lds_tables.
            bif_seed_table`: ``method``, ``alpha``, ``seed_min``, ``seed_max``), drawn as a band
            around the method's line (min to max over seeds).
    """
    methods = list(methods) if methods is not None else list(dict.fromkeys(table["method"]))
    alphas = np.sort(table["alpha"].unique())
    with house_style():
        fig, axes = new_figure(1, 1, width=8.4, height=4.0)
        ax = axes[0, 0]
        # small horizontal offsets (in log space) so that the intervals do not hide each other
        offsets = np.linspace(-0.04, 0.04, max(len(methods), 1))
        for k, label in enumerate(methods):
            rows = table[table["method"] == label].sort_values("alpha")
            if rows.empty:
                continue
            x = rows["alpha"].to_numpy(dtype=float) * 10 ** offsets[k]
            y = rows["lds"].to_numpy(dtype=float)
            lo = y - rows["ci_low"].to_numpy(dtype=float)
            hi = rows["ci_high"].to_numpy(dtype=float) - y
            ax.errorbar(
                x,
                y,
                yerr=np.vstack([np.nan_to_num(lo), np.nan_to_num(hi)]),
                color=method_color(label),
                ls=method_linestyle(label),
                marker=method_marker(label),
                ms=4,
                capsize=3,
                label=label,
            )
            band = None if seed_bands is None else seed_bands[seed_bands["method"] == label]
            if band is not None and not band.empty:
                band = band.sort_values("alpha")
                n_seeds = int(band["num_seeds"].max())
                ax.fill_between(
                    band["alpha"].to_numpy(dtype=float),
                    band["seed_min"].to_numpy(dtype=float),
                    band["seed_max"].to_numpy(dtype=float),
                    color=method_color(label),
                    alpha=0.15,
                    lw=0,
                    hatch="////" if "corr" in label else None,
                    label=f"{label}: range over {n_seeds} sampler seeds",
                )
        ax.axhline(0.0, color="0.4", lw=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_xticks(alphas)
        ax.set_xticklabels([f"{a:g}" for a in alphas])
        ax.minorticks_off()
        ax.set_xlabel("retraining subset fraction α (subsets of ⌊α·n⌋ training items)")
        ax.set_ylabel(f"LDS (Spearman, mean over queries; {confidence:.0%} bootstrap CI)")
        # over the whole figure: the long title would run into the y label above the axes alone
        fig.suptitle(title, fontsize="small")
        # beside the axes: inside, some α's interval always sits under it
        # long handles: a dashed variant shows its dashes
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small",
                  handlelength=3.2)  # fmt: skip
    return fig
