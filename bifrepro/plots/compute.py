"""Compute figures: cost of each method against problem size (log-log), and time-to-equal-LDS."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter

from bifrepro.plots.lds import method_color, method_linestyle
from bifrepro.plots.style import LEVEL_COLORS, house_style, legend_below, new_figure

__all__ = ["AXIS_LABELS", "plot_cost_scaling", "plot_time_to_equal_lds"]

#: Grid axis → x-axis label.
AXIS_LABELS: dict[str, str] = {
    "n_train": "training items n",
    "n_query": "queries q",
    "nq": "n·q (n and q grow together)",
    "num_params": "model parameters d",
    "draws": "BIF draws (chains × draws per chain)",
}


def _plain_log_ticks(ax: Any) -> None:
    """Log axes labelled at decades on x (minor labels collide in narrow panels) and at 1, 2, 5
    times a power of ten on y, written as plain numbers."""
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(LogFormatterSciNotation(base=10))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _min_log_span(ax: Any, factor: float = 4.0) -> None:
    """Widen a log y axis to at least ``factor`` between its limits, around the data's geometric
    centre: a flat curve (e.g. memory that varies by 1%) then looks flat instead of drawing its
    noise as a peak, and a 1-2-5 tick always falls inside."""
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < factor:
        centre, half = np.sqrt(lo * hi), np.sqrt(factor)
        ax.set_ylim(centre / half, centre * half)


def plot_cost_scaling(
    points: pd.DataFrame,
    slopes: Mapping[tuple[str, str], float],
    title: str,
    axes_order: Sequence[str] = ("n_train", "n_query", "nq", "num_params", "draws"),
    methods: Sequence[str] | None = None,
) -> Figure:
    """Wall time (top row) and peak memory (bottom row) against each grid axis, log-log.

    Args:
        points: one row per measurement with ``method`` (label), ``axis``, ``x``,
            ``total_seconds``, ``fit_seconds`` and ``peak_mb`` (optional ``chains_healthy``:
            0 marks a BIF point whose chains failed health, drawn hollow).
        slopes: ``(method, axis) → fitted log-log slope of total time`` (shown in the legend).
        title: figure title (device, fixed sizes, BIF draws).
        axes_order: grid axes to show, left to right (absent ones are skipped).
        methods: method labels in legend order.
    """
    axes_present = [a for a in axes_order if a in set(points["axis"])]
    methods = list(methods) if methods is not None else list(dict.fromkeys(points["method"]))
    with house_style():
        fig, axes = new_figure(2, len(axes_present), width=3.2 * len(axes_present), height=5.6)
        for col, axis in enumerate(axes_present):
            ax_t, ax_m = axes[0, col], axes[1, col]
            sub = points[points["axis"] == axis]
            for label in methods:
                rows = sub[sub["method"] == label].sort_values("x")
                if rows.empty:
                    continue
                color, ls = method_color(label), method_linestyle(label)
                slope = slopes.get((label, axis), np.nan)
                ax_t.plot(
                    rows["x"],
                    rows["total_seconds"],
                    color=color,
                    ls=ls,
                    marker="o",
                    ms=3.5,
                    label=f"{label} (slope {slope:.2f})" if np.isfinite(slope) else label,
                )
                if "chains_healthy" in rows:  # BIF: hollow markers where its chains fail health
                    sick = rows["chains_healthy"].notna() & (rows["chains_healthy"] == 0)
                    if sick.any():
                        ax_t.scatter(
                            rows.loc[sick, "x"], rows.loc[sick, "total_seconds"], s=22,
                            facecolors="white", edgecolors=color, zorder=4,
                            label=f"{label}: chains unhealthy",
                        )  # fmt: skip
                if (rows["fit_seconds"] > 0.01 * rows["total_seconds"]).any():
                    ax_t.plot(rows["x"], rows["fit_seconds"], color=color, ls=":", lw=1.0)
                ax_m.plot(rows["x"], rows["peak_mb"], color=color, ls=ls, marker="o", ms=3.5)
            for ax in (ax_t, ax_m):
                ax.set_xscale("log")
                ax.set_yscale("log")
                _plain_log_ticks(ax)
                _min_log_span(ax)
            ax_t.set_title(f"vs {AXIS_LABELS.get(axis, axis)}")
            ax_m.set_xlabel(AXIS_LABELS.get(axis, axis))
            legend_below(ax_t, frameon=False, fontsize=6.5)  # between the rows: serves both
        axes[0, 0].set_ylabel("wall time fit + score (s)\n(dotted: fit phase)")
        axes[1, 0].set_ylabel("peak memory increase (MB)")
        fig.suptitle(title)
    return fig


def plot_time_to_equal_lds(
    curve: pd.DataFrame,
    reference: pd.DataFrame,
    title: str,
    reference_label: str = "EK-FAC",
) -> Figure:
    """BIF's LDS as draws accumulate against the reference method's LDS and time, per α.

    One row per BIF estimator (``estimator`` column; one row if absent): LDS against draws (left)
    and against wall time (right); dashed lines are the reference's LDS, stars its time.

    Args:
        curve: BIF rows with ``alpha``, ``total_draws``, ``seconds``, ``lds`` (and ``estimator``).
        reference: the reference method's rows with ``alpha``, ``lds``, ``seconds``.
        title: figure title.
        reference_label: legend name of the reference method.
    """
    if "estimator" not in curve:
        curve = curve.assign(estimator="")
    estimators = list(dict.fromkeys(curve["estimator"]))
    alphas = sorted(curve["alpha"].unique())
    with house_style():
        fig, axes = new_figure(
            len(estimators), 2, width=9.6, height=3.4 * len(estimators), sharey="row"
        )
        for r, est in enumerate(estimators):
            left, right = axes[r, 0], axes[r, 1]
            for k, a in enumerate(alphas):
                color = LEVEL_COLORS[k % len(LEVEL_COLORS)]
                rows = curve[(curve["estimator"] == est) & (curve["alpha"] == a)]
                rows = rows.sort_values("total_draws")
                ref = reference[reference["alpha"] == a]
                for ax, x in ((left, "total_draws"), (right, "seconds")):
                    ax.plot(
                        rows[x], rows["lds"], color=color, marker="o", ms=3.5, label=f"BIF α={a:g}"
                    )
                    if not ref.empty:
                        ax.axhline(float(ref["lds"].iloc[0]), color=color, ls="--", lw=1.0)
                if not ref.empty:
                    right.plot(
                        float(ref["seconds"].iloc[0]),
                        float(ref["lds"].iloc[0]),
                        marker="*",
                        ms=11,
                        color=color,
                        ls="none",
                        label=f"{reference_label} α={a:g}",
                    )
            for ax in (left, right):
                ax.set_xscale("log")
            name = f"BIF ({est})" if est else "BIF"
            left.set_ylabel(f"LDS of {name}\n(dashed: {reference_label})")
            left.set_xlabel("BIF draws used (all chains)")
            right.set_xlabel("wall time (s)")
            left.legend(frameon=False, fontsize=7)
            right.legend(frameon=False, fontsize=6.5, ncol=2)
        fig.suptitle(title)
    return fig
