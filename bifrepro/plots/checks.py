"""Checks that a matplotlib figure is readable: titles, axis labels, legends clear of the data, and
y axes with more than one tick label.

Each check takes a :class:`~matplotlib.figure.Figure` and returns a list of human-readable
problems (empty when the figure passes), so a test can assert ``figure_problems(fig) == []`` and
print what is wrong otherwise. Only *data axes* are inspected: visible axes that draw lines, bars
or scatter points (image grids, text panels and axes turned off are skipped).

The legend check draws the figure and compares display coordinates: a legend's bounding box,
shrunk by a small tolerance, must not contain a data point (line vertex, errorbar cap, scatter
offset), be crossed by a plotted line segment, or overlap a bar. Reference lines drawn in axes
coordinates (``axhline``, ``axvline``) and filled bands are not counted as data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure, SubFigure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox

__all__ = [
    "data_axes",
    "check_titles",
    "check_axis_labels",
    "check_legends_clear",
    "check_y_ticks",
    "figure_problems",
]

#: Pixels by which a legend box is shrunk before testing overlap (anti-aliasing, frame edges).
LEGEND_TOLERANCE_PX = 2.0


def _name(ax: Axes) -> str:
    """A short name of an axes for messages: its title, else its position in the figure."""
    title = ax.get_title() or ax.get_title("left") or ax.get_title("right")
    if title:
        return repr(title.splitlines()[0][:60])
    return f"axes #{ax.figure.axes.index(ax)}" if ax in ax.figure.axes else "axes"


def _is_data_line(line: Line2D, ax: Axes) -> bool:
    """True for a line plotted in data coordinates (not an ``axhline``/``axvline`` guide)."""
    return line.get_visible() and line.get_transform() == ax.transData and len(line.get_xdata()) > 0


def _bar_patches(ax: Axes) -> list:
    return [p for c in ax.containers if isinstance(c, BarContainer) for p in c.patches]


def _has_data(ax: Axes) -> bool:
    """Visible axes that draw lines, bars or scatter points."""
    if not (ax.get_visible() and ax.axison):
        return False
    if any(_is_data_line(line, ax) for line in ax.lines) or _bar_patches(ax):
        return True
    return any(isinstance(c, PathCollection) and len(c.get_offsets()) for c in ax.collections)


def data_axes(fig: Figure) -> list[Axes]:
    """The axes of ``fig`` (subfigures included) that show data."""
    return [ax for ax in fig.get_axes() if _has_data(ax)]


def _figures(fig: Figure | SubFigure) -> Iterator[Figure | SubFigure]:
    yield fig
    for sub in fig.subfigs:
        yield from _figures(sub)


def _suptitle(fig: Figure | SubFigure) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


def check_titles(fig: Figure) -> list[str]:
    """Every data axes has a title, unless the figure (or its subfigure) has a suptitle."""
    if any(_suptitle(f) for f in _figures(fig)):
        return []
    return [
        f"{_name(ax)}: no title and no figure suptitle"
        for ax in data_axes(fig)
        if not (ax.get_title() or ax.get_title("left") or ax.get_title("right"))
    ]


def _grid_mates(ax: Axes, which: str) -> list[Axes]:
    """Axes of the same subplot grid in the same column (``which="x"``) or row (``"y"``), twins
    of ``ax`` excluded (a twin's y label belongs to the other side)."""
    spec = ax.get_subplotspec()
    if spec is None:
        return []
    twins = set(ax._twinned_axes.get_siblings(ax))
    span = spec.colspan if which == "x" else spec.rowspan
    mates = []
    for other in ax.figure.get_axes():
        other_spec = other.get_subplotspec()
        if other in twins or other_spec is None:
            continue
        if other_spec.get_gridspec() is not spec.get_gridspec():
            continue
        other_span = other_spec.colspan if which == "x" else other_spec.rowspan
        if set(span) & set(other_span):
            mates.append(other)
    return mates


def _has_label(ax: Axes, which: str) -> bool:
    """The axis is labelled: on the axes itself, once for its column (x) or row (y) of the subplot
    grid, on an axes sharing the axis (or, for x, a twin), or by a figure-wide super label."""
    getter = "get_xlabel" if which == "x" else "get_ylabel"
    if getattr(ax, getter)():
        return True
    shared = ax.get_shared_x_axes() if which == "x" else ax.get_shared_y_axes()
    others = set(shared.get_siblings(ax)) | set(_grid_mates(ax, which))
    if which == "x":  # a twinx axes shares the x axis with its host
        others |= set(ax._twinned_axes.get_siblings(ax))
    if any(getattr(other, getter)() for other in others):
        return True
    sup = ax.figure._supxlabel if which == "x" else ax.figure._supylabel
    return sup is not None and bool(sup.get_text())


def check_axis_labels(fig: Figure) -> list[str]:
    """Every data axes has an x and a y label; a label written once per grid column (x) or row
    (y), on a shared or twinned axis, or as a figure super label counts for all of them."""
    problems = []
    for ax in data_axes(fig):
        if not _has_label(ax, "x"):
            problems.append(f"{_name(ax)}: no x-axis label")
        if not _has_label(ax, "y"):
            problems.append(f"{_name(ax)}: no y-axis label")
    return problems


def _legends(fig: Figure) -> list[Legend]:
    found = [ax.get_legend() for ax in fig.get_axes() if ax.get_legend() is not None]
    for f in _figures(fig):
        found += list(f.legends)
    return [lg for lg in found if lg.get_visible()]


def _segments_hit(xy: np.ndarray, box: Bbox) -> bool:
    """Whether any segment of the display-space polyline ``xy`` ([n, 2]) meets ``box``."""
    (x0, y0), (x1, y1) = box.get_points()
    finite = np.isfinite(xy).all(axis=1)
    inside = finite & (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    if inside.any():
        return True
    for a, b, ok in zip(xy[:-1], xy[1:], finite[:-1] & finite[1:], strict=True):
        if ok and _segment_meets_box(a, b, x0, y0, x1, y1):
            return True
    return False


def _segment_meets_box(
    a: np.ndarray, b: np.ndarray, x0: float, y0: float, x1: float, y1: float
) -> bool:
    """Liang–Barsky clipping: does the segment a→b pass through the rectangle?"""
    d = b - a
    t_lo, t_hi = 0.0, 1.0
    for p, q in ((-d[0], a[0] - x0), (d[0], x1 - a[0]), (-d[1], a[1] - y0), (d[1], y1 - a[1])):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            t_lo = max(t_lo, t)
        else:
            t_hi = min(t_hi, t)
        if t_lo > t_hi:
            return False
    return True


def _points_hit(xy: np.ndarray, box: Bbox) -> bool:
    (x0, y0), (x1, y1) = box.get_points()
    xy = xy[np.isfinite(xy).all(axis=1)]
    return bool(((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)).any())


def _covered(ax: Axes, box: Bbox, renderer) -> list[str]:  # noqa: ANN001
    """Descriptions of the data artists of ``ax`` that ``box`` (display coordinates) covers."""
    hits = []
    for line in ax.lines:
        if not _is_data_line(line, ax):
            continue
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
        drawn = line.get_linestyle() not in ("None", "none", "", " ")
        if _segments_hit(xy, box) if drawn else _points_hit(xy, box):
            hits.append(f"line {line.get_label()!r}")
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and len(coll.get_offsets()):
            xy = coll.get_offset_transform().transform(np.asarray(coll.get_offsets(), float))
            if _points_hit(xy, box):
                hits.append(f"scatter {coll.get_label()!r}")
        elif isinstance(coll, LineCollection) and coll.get_transform() == ax.transData:
            for seg in coll.get_segments():
                if len(seg) and _segments_hit(ax.transData.transform(seg), box):
                    hits.append("errorbar/segments")
                    break
    for patch in _bar_patches(ax):
        if patch.get_visible() and patch.get_window_extent(renderer).overlaps(box):
            hits.append(f"bar {patch.get_label()!r}")
            break
    return hits


def _draw(fig: Figure):  # noqa: ANN202
    """Draw ``fig`` with the Agg renderer (layout and tick labels settle) and return the renderer."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def check_legends_clear(fig: Figure, tolerance_px: float = LEGEND_TOLERANCE_PX) -> list[str]:
    """No legend (axes or figure legend) covers a data point, line segment or bar of any axes."""
    renderer = _draw(fig)
    problems = []
    for legend in _legends(fig):
        box = legend.get_window_extent(renderer)
        for ax in data_axes(fig):
            inner = Bbox.intersection(box, ax.get_window_extent(renderer))
            if inner is None or inner.width <= 2 * tolerance_px or inner.height <= 2 * tolerance_px:
                continue
            inner = Bbox.from_extents(
                inner.x0 + tolerance_px,
                inner.y0 + tolerance_px,
                inner.x1 - tolerance_px,
                inner.y1 - tolerance_px,
            )
            hits = _covered(ax, inner, renderer)
            if hits:
                problems.append(f"{_name(ax)}: legend covers {', '.join(sorted(set(hits)))}")
    return problems


def _shown_tick_labels(ax: Axes) -> list[str]:
    """Texts of the y tick labels actually drawn (major and minor, inside the view limits)."""
    texts = []
    for tick in ax.yaxis._update_ticks():  # the ticks matplotlib draws, with their labels set
        for label in (tick.label1, tick.label2):
            if label.get_visible() and label.get_text().strip():
                texts.append(label.get_text())
    return texts


def check_y_ticks(fig: Figure) -> list[str]:
    """No data axes shows exactly one y tick label (a lone label gives no scale)."""
    _draw(fig)
    problems = []
    for ax in data_axes(fig):
        shown = _shown_tick_labels(ax)
        if len(shown) == 1:
            problems.append(f"{_name(ax)}: a single y tick label ({shown[0]!r})")
    return problems


def figure_problems(fig: Figure) -> list[str]:
    """All problems found by the checks above."""
    return (
        check_titles(fig) + check_axis_labels(fig) + check_legends_clear(fig) + check_y_ticks(fig)
    )
