"""Figures of the LM-family compute comparison: cost vs parameters, cost vs q, phase breakdown.

Markers say what each point is: filled = measured, open = scaled from a measured part (BIF's
draws and scores), ``x`` = a BIF point whose pilot chains were not healthy; dashed lines and
diamonds are the fitted cost models extrapolated to Pythia's sizes. Legends and the assumptions
sit outside the axes so they never cover data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from bifrepro.evaluation.lm_scaling import BIF_PHASES, EKFAC_PHASES, PYTHIA_PARAMS, predict
from bifrepro.plots.style import ESTIMATOR_COLORS, LEVEL_COLORS, house_style, new_figure

__all__ = ["METHOD_LABELS", "plot_model_scaling", "plot_q_scaling", "plot_phase_breakdown"]

#: Method key → label (colours follow the house style).
METHOD_LABELS = {"bif": "BIF", "ekfac": "EK-FAC"}


def _scatter(ax, g: pd.DataFrame, x: str, y: str, method: str) -> None:
    """Points of one method: filled measured, open scaled, ``x`` for unhealthy BIF chains."""
    color = ESTIMATOR_COLORS[METHOD_LABELS[method]]
    healthy = g["healthy"] if "healthy" in g else pd.Series(True, index=g.index)
    unhealthy = (method == "bif") & (healthy.astype(str).str.lower() == "false")
    measured = g["status"] == "measured"
    for mask, kw in (
        (measured & ~unhealthy, {"facecolors": color}),
        (~measured & ~unhealthy, {"facecolors": "none"}),
    ):
        if mask.any():
            ax.scatter(g.loc[mask, x], g.loc[mask, y], edgecolors=color, s=36, zorder=3, **kw)
    if unhealthy.any():
        ax.scatter(
            g.loc[unhealthy, x], g.loc[unhealthy, y], marker="x", color=color, s=44, zorder=3
        )


def _legend_handles(ax) -> None:
    """Legend of methods and marker meanings, placed beside the axes."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=ESTIMATOR_COLORS[lab], lw=2, label=lab)
        for lab in METHOD_LABELS.values()
    ]
    handles += [
        Line2D([], [], ls="", marker="o", color="k", label="measured"),
        Line2D([], [], ls="", marker="o", mfc="none", color="k", label="scaled (timed part)"),
        Line2D([], [], ls="", marker="x", color="k", label="BIF, chains unhealthy"),
        Line2D([], [], ls="--", color="k", label="cost model (extrapolated)"),
        Line2D([], [], ls="", marker="D", mfc="none", color="k", label="Pythia sizes"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7)


def plot_model_scaling(
    table: pd.DataFrame,
    fits: pd.DataFrame,
    extrapolation: pd.DataFrame,
    assumptions: str,
    title: str,
) -> Figure:
    """Total time and peak memory against parameters (log-log), both methods, with the fitted
    totals extended to Pythia-2.8B and the assumptions printed beside the curves."""
    totals = table[table["phase"] == "total"]
    with house_style():
        fig, axes = new_figure(1, 2, width=12.0, height=4.4)
        ax_t, ax_m = axes[0]
        p_lo = float(totals["num_params"].min())
        grid = np.logspace(np.log10(p_lo), np.log10(max(PYTHIA_PARAMS.values())), 100)
        for method, label in METHOD_LABELS.items():
            g = totals[totals["method"] == method].sort_values("num_params")
            if g.empty:
                continue
            color = ESTIMATOR_COLORS[label]
            ax_t.plot(g["num_params"], g["seconds"], color=color, lw=1.2)
            _scatter(ax_t, g, "num_params", "seconds", method)
            ax_t.plot(grid, predict(fits, method, grid), color=color, ls="--", lw=1)
            col = f"{method}_seconds"
            ax_t.scatter(extrapolation["num_params"], extrapolation[col], marker="D",
                         facecolors="none", edgecolors=color, s=30)  # fmt: skip
            ax_m.plot(g["num_params"], g["peak_memory_mb"].clip(lower=0.1), color=color, lw=1.2)
            g_mem = g.assign(peak_memory_mb=g["peak_memory_mb"].clip(lower=0.1))
            _scatter(ax_m, g_mem, "num_params", "peak_memory_mb", method)
        for ax, ylabel in ((ax_t, "seconds (per-token attribution, total)"),
                           (ax_m, "peak memory increase, MB (largest phase)")):  # fmt: skip
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("parameters P")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide
        ax_t.set_title("time: measured family, extrapolated to Pythia")
        ax_m.set_title("memory (measured sizes)")
        _legend_handles(ax_m)
        ax_m.text(1.02, 0.0, assumptions, transform=ax_m.transAxes, fontsize=7, va="bottom")
        fig.suptitle(title, fontsize=9)
    return fig


def plot_q_scaling(q_table: pd.DataFrame, title: str) -> Figure:
    """Query-dependent time (EK-FAC scores; BIF draws + scores) against q, one panel per size."""
    sizes = sorted(q_table["num_params"].unique())
    with house_style():
        fig, axes = new_figure(1, len(sizes), width=4.4 * len(sizes) + 2.0, height=3.8)
        for ax, p in zip(axes[0], sizes, strict=True):
            g = q_table[(q_table["num_params"] == p) & (q_table["phase"] != "scores_sequence")]
            per_q = g.groupby(["method", "q"], as_index=False).agg(
                seconds=("seconds", "sum"),
                status=("status", lambda s: "scaled" if (s == "scaled").any() else "measured"),
                healthy=("healthy", "first") if "healthy" in g else ("seconds", lambda s: True),
            )
            for method, label in METHOD_LABELS.items():
                m = per_q[per_q["method"] == method].sort_values("q")
                if m.empty:
                    continue
                ax.plot(m["q"], m["seconds"], color=ESTIMATOR_COLORS[label], lw=1.2)
                _scatter(ax, m, "q", "seconds", method)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("query sequences q")
            ax.set_ylabel("seconds (query-dependent phases)")
            ax.set_title(f"{g['size'].iloc[0]} ({p / 1e6:.2g}M parameters)", fontsize=9)
        _legend_handles(axes[0][-1])
        fig.suptitle(title + "\nEK-FAC: per-token scores on shared factors; BIF: draws + scores",
                     fontsize=9)  # fmt: skip
    return fig


def plot_phase_breakdown(table: pd.DataFrame, title: str) -> Figure:
    """Share of each phase in the total time at every size (total on top), one panel per
    method; hatched = scaled."""
    phases = {"ekfac": EKFAC_PHASES[:4], "bif": BIF_PHASES[:3]}
    with house_style():
        fig, axes = new_figure(1, 2, width=11.0, height=4.0)
        for ax, (method, names) in zip(axes[0], phases.items(), strict=True):
            g = table[table["method"] == method]
            sizes = sorted(g["num_params"].unique())
            x = np.arange(len(sizes))
            totals = g[g["phase"].isin(names)].groupby("num_params")["seconds"].sum()
            totals = totals.reindex(sizes).to_numpy()
            bottom = np.zeros(len(sizes))
            for k, phase in enumerate(names):
                part = g[g["phase"] == phase].set_index("num_params").reindex(sizes)
                vals = part["seconds"].fillna(0).to_numpy() / np.maximum(totals, 1e-12)
                hatch = ["//" if s == "scaled" else "" for s in part["status"].fillna("")]
                bars = ax.bar(x, vals, bottom=bottom, color=LEVEL_COLORS[k], label=phase)
                for bar, h in zip(bars, hatch, strict=True):
                    bar.set_hatch(h)
                bottom += vals
            for xi, t in zip(x, totals, strict=True):
                ax.text(xi, 1.02, f"{t:.3g} s", ha="center", va="bottom", fontsize=7)
            ax.set_xticks(x, [f"{p / 1e6:.2g}M" for p in sizes])
            ax.set_ylim(0, 1.12)
            ax.set_xlabel("parameters")
            ax.set_ylabel("share of total time (total above)")
            ax.set_title(f"{METHOD_LABELS[method]} (hatched: scaled)", fontsize=9)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
        fig.suptitle(title, fontsize=9)
    return fig
