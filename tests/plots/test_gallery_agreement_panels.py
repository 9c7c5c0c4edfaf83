"""The label-agreement figure: a within-group panel when groups exist, legend clear of the data."""

from __future__ import annotations

import pandas as pd

from bifrepro.plots.gallery import plot_agreement

METHODS = ["BIF", "BIF (cov)", "EK-FAC", "EK-FAC (RelatIF)", "TRAK", "GradSim"]


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [
        {"method": m, "direction": d, "k": k, "agreement": 0.5, "ci_low": 0.4, "ci_high": 0.6,
         "n_queries": 500, "chance": 0.1, "confidence": 0.95}
        for m in METHODS for d in ("helpful", "harmful") for k in (1, 3, 10)
    ]  # fmt: skip
    groups = [
        {"method": m, "group": "all groups", "k": k, "metric": metric, "value": 0.9,
         "ci_low": 0.8, "ci_high": 1.0, "n_queries": 350, "chance": 0.1}
        for m in METHODS for k in (1, 3, 10) for metric in ("exact", "group_other")
    ]  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(groups)


def test_group_panel_and_legend_outside_the_axes() -> None:
    table, groups = _tables()
    assert len(plot_agreement(table).axes) == 2
    fig = plot_agreement(table, title="t", groups=groups)
    assert len(fig.axes) == 3
    assert "look-alike group (350)" in fig.axes[2].get_title()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert len(legend.get_texts()) == len(METHODS) + 1  # methods and chance
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()


def test_a_zero_agreement_bar_stays_visible() -> None:
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba

    table, _ = _tables()
    table.loc[(table.method == "BIF") & (table.direction == "harmful"), "agreement"] = 0.0
    fig = plot_agreement(table)
    harmful = fig.axes[1]
    bif_color = next(p.get_facecolor() for p in harmful.patches if p.get_height() == 0.0)
    tops = [
        c
        for c in harmful.collections
        if isinstance(c, LineCollection) and c.get_linewidth()[0] >= 2
    ]
    zero_lines = [
        seg
        for c in tops
        if tuple(c.get_colors()[0]) == to_rgba(bif_color)
        for seg in c.get_segments()
    ]
    assert len(zero_lines) == 3 and all(seg[:, 1].max() == 0.0 for seg in zero_lines)
    assert harmful.get_ylim()[0] < 0  # the zero lines sit above the axis, not on it
