"""bifrepro's house style for figures: one look across experiments, readable in a paper column.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot global state, no GUI
backend), so they are safe inside parallel sweep jobs; save them with
:func:`bifrepro.io.atomic_save_figure` and log them with ``RunTracker.log_figure``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

__all__ = [
    "ESTIMATOR_COLORS",
    "LEVEL_COLORS",
    "DIVERGING_CMAP",
    "house_style",
    "new_figure",
    "mark_transitions",
    "health_note",
    "legend_beside",
    "legend_below",
]

#: One colour per estimator, used in every figure.
ESTIMATOR_COLORS: dict[str, str] = {
    "BIF": "#1f77b4",
    "analytic": "#7f7f7f",
    "leave-one-out": "#d62728",
    "EK-FAC": "#2ca02c",
    "TRAK": "#9467bd",
    "GradSim": "#8c564b",
}
#: Colours of successive developmental stages / mode levels.
LEVEL_COLORS: tuple[str, ...] = ("#332288", "#117733", "#DDCC77", "#CC6677", "#88CCEE", "#AA4499")
#: Colour map for signed scores (blue = harmful, red = helpful, white = 0).
DIVERGING_CMAP = "RdBu_r"

_RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "lines.linewidth": 1.6,
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
}


@contextlib.contextmanager
def house_style() -> Iterator[None]:
    """Context in which figures are created and drawn with the house rcParams."""
    with mpl.rc_context(_RC):
        yield


def new_figure(
    nrows: int = 1, ncols: int = 1, width: float = 6.4, height: float = 3.6, **kw: Any
) -> tuple[Figure, Any]:
    """A constrained-layout figure and its axes (call inside :func:`house_style`)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def mark_transitions(
    ax: Axes,
    steps: Sequence[float],
    labels: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    label_text: bool = True,
) -> None:
    """Dashed vertical lines at stage transitions, labelled at the top of the axes."""
    colors = colors or LEVEL_COLORS
    for k, s in enumerate(steps):
        if s is None or not s == s:  # NaN: this transition never happened
            continue
        c = colors[k % len(colors)]
        ax.axvline(s, color=c, ls="--", lw=1.0, alpha=0.8, zorder=0)
        if label_text and labels is not None:
            ax.text(
                s,
                1.0,
                f" {labels[k]}",
                transform=ax.get_xaxis_transform(),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color=c,
            )


def health_note(num_healthy: int, num_total: int, draws: int, estimator: str) -> str:
    """Title fragment: estimator, draws and chain health (every BIF figure says all three)."""
    verdict = (
        "all chains healthy"
        if num_healthy == num_total
        else (f"chains healthy at {num_healthy}/{num_total} checkpoints")
    )
    return f"BIF ({estimator}, {draws} draws/checkpoint; {verdict})"


def legend_beside(
    ax: Axes, handles: Sequence[Any], labels: Sequence[str], gap_in: float = 0.0, **kw: Any
) -> Any:
    """An axes legend to the right of ``ax``, ``gap_in`` inches clear of its right edge (room for
    a twin axis's tick labels and label), so it never covers the data; constrained layout makes
    room for it."""
    anchor = ax.transAxes + ScaledTranslation(gap_in, 0.0, ax.figure.dpi_scale_trans)
    return ax.legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), bbox_transform=anchor, **kw
    )


def legend_below(ax: Axes, gap_in: float = 0.25, **kw: Any) -> Any:
    """An axes legend centred under ``ax``, ``gap_in`` inches below it (clear of the x tick
    labels), so it never covers the data; constrained layout makes room for it."""
    anchor = ax.transAxes + ScaledTranslation(0.0, -gap_in, ax.figure.dpi_scale_trans)
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=anchor, **kw)
