"""LDS and compute figures: one line per method, intervals drawn, log axes, labels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from bifrepro.plots.compute import plot_cost_scaling, plot_time_to_equal_lds  # noqa: E402
from bifrepro.plots.lds import method_color, plot_lds_vs_alpha  # noqa: E402
from bifrepro.plots.style import ESTIMATOR_COLORS  # noqa: E402


def test_lds_vs_alpha_draws_one_errorbar_line_per_method() -> None:
    rows = [
        {
            "method": m,
            "alpha": a,
            "lds": 0.1 * k + a,
            "ci_low": 0.1 * k + a - 0.05,
            "ci_high": 0.1 * k + a + 0.05,
        }
        for k, m in enumerate(["BIF (cov)", "BIF (corr)", "EK-FAC"])
        for a in (0.05, 0.5)
    ]
    fig = plot_lds_vs_alpha(pd.DataFrame(rows), "title")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["BIF (cov)", "BIF (corr)", "EK-FAC"]
    assert ax.get_xscale() == "log" and "LDS" in ax.get_ylabel()
    assert len(ax.containers) == 3  # one errorbar container per method
    assert method_color("BIF (corr)") == ESTIMATOR_COLORS["BIF"]
    assert method_color("EK-FAC") == ESTIMATOR_COLORS["EK-FAC"]


def test_cost_scaling_has_time_and_memory_rows_per_axis() -> None:
    rows = []
    for axis in ("n_train", "draws"):
        for x in (10, 100):
            for m in ("BIF", "EK-FAC"):
                if axis == "draws" and m != "BIF":
                    continue
                rows.append(
                    {
                        "method": m,
                        "axis": axis,
                        "x": x,
                        "total_seconds": x / 10,
                        "fit_seconds": x / 100,
                        "peak_mb": x,
                    }
                )
    fig = plot_cost_scaling(pd.DataFrame(rows), {("BIF", "n_train"): 1.0}, "t")
    assert len(fig.axes) == 4  # 2 rows x 2 axes present
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["BIF (slope 1.00)", "EK-FAC"]
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in fig.axes)


def test_time_to_equal_lds_marks_the_reference() -> None:
    curve = pd.DataFrame(
        {
            "alpha": [0.1, 0.1, 0.5, 0.5],
            "total_draws": [8, 16, 8, 16],
            "seconds": [1, 2, 1, 2],
            "lds": [0.1, 0.2, 0.3, 0.4],
        }
    )
    ref = pd.DataFrame({"alpha": [0.1, 0.5], "lds": [0.15, 0.5], "seconds": [3.0, 3.0]})
    fig = plot_time_to_equal_lds(curve, ref, "t")
    assert len(fig.axes) == 2  # one estimator: one row
    two = pd.concat([curve.assign(estimator="covariance"), curve.assign(estimator="correlation")])
    assert len(plot_time_to_equal_lds(two, ref, "t").axes) == 4
    right = fig.axes[1]
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert "EK-FAC α=0.1" in labels and "BIF α=0.5" in labels


def test_cost_scaling_marks_unhealthy_bif_points_and_keeps_flat_memory_flat() -> None:
    """Unhealthy BIF points are drawn hollow and named in the legend; memory that varies by 1%
    spans at least a factor 4 on its axis instead of being drawn as a peak."""
    rows = [
        {"method": "BIF", "axis": "draws", "x": x, "total_seconds": x / 10, "fit_seconds": 0.0,
         "peak_mb": 100.0 + 0.01 * x, "chains_healthy": float(x >= 100)}
        for x in (10, 50, 100)
    ]  # fmt: skip
    fig = plot_cost_scaling(pd.DataFrame(rows), {}, "t")
    time_ax, memory_ax = fig.axes
    legend = [t.get_text() for t in time_ax.get_legend().get_texts()]
    assert legend == ["BIF", "BIF: chains unhealthy"]
    hollow = time_ax.collections[0]
    assert [tuple(p) for p in hollow.get_offsets()] == [(10.0, 1.0), (50.0, 5.0)]
    lo, hi = memory_ax.get_ylim()
    assert hi / lo >= 4.0 - 1e-9
