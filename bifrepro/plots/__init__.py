"""Figures: a shared house style (:mod:`bifrepro.plots.style`) and one module per experiment."""

from bifrepro.plots.style import (
    DIVERGING_CMAP,
    ESTIMATOR_COLORS,
    LEVEL_COLORS,
    health_note,
    house_style,
    mark_transitions,
    new_figure,
)

__all__ = [
    "DIVERGING_CMAP",
    "ESTIMATOR_COLORS",
    "LEVEL_COLORS",
    "health_note",
    "house_style",
    "mark_transitions",
    "new_figure",
]
