"""Toy figures: the panels, labels and legends that the figures promise."""

from __future__ import annotations

import numpy as np

from bifrepro.plots.style import health_note
from bifrepro.plots.toy import plot_influence_curves, plot_influence_matrices, plot_mode_strengths


def _texts(fig) -> str:  # noqa: ANN001
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_title("left"), ax.get_xlabel(), ax.get_ylabel()]
        parts += [t.get_text() for t in ax.texts]
        if ax.get_legend():
            parts += [t.get_text() for t in ax.get_legend().get_texts()]
    return " | ".join(parts)


def test_mode_strengths_figure() -> None:
    steps = np.arange(1, 101)
    strengths = np.stack([np.clip(steps / 50, 0, 1) * 2.0, np.clip(steps / 80, 0, 1)], axis=1)
    fig = plot_mode_strengths(
        steps,
        strengths,
        np.array([2.0, 1.0]),
        ["coarse", "fine"],
        [0, 1],
        [25.0, 40.0],
        train_loss=1.0 / steps,
    )
    assert len(fig.axes) == 2
    text = _texts(fig)
    assert "stage 0: coarse" in text and "stage 1" in text and "training loss" in text
    assert "log scale" in text
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    # two dashed transition lines (+ the a/s = 1/2 guide) on the mode panel
    assert sum(1 for line in ax.lines if line.get_linestyle() == "--") == 2


def test_influence_curves_figure_shares_zero_between_axes() -> None:
    steps = [10, 20, 40, 80]
    bif = np.array([[0.0, 1.0], [2.0, 0.5], [-1.0, 0.1], [0.0, 0.0]]) * 1e-4
    loo = np.array([[0.0, 3.0], [4.0, 1.0], [-9.0, 0.2], [0.0, 0.0]])
    fig = plot_influence_curves(
        steps,
        {"BIF": bif, "analytic": bif * 0.9, "leave-one-out": loo},
        ["a → b", "a → c"],
        [15.0, 30.0],
        healthy=[True, False, True, True],
        title=health_note(3, 4, 1600, "covariance"),
    )
    main_axes = [ax for ax in fig.axes if ax.get_ylabel().startswith("BIF")]
    twins = [ax for ax in fig.axes if ax.get_ylabel().startswith("leave-one-out")]
    assert len(main_axes) == 2 and len(twins) == 2
    for ax in main_axes + twins:
        lo, hi = ax.get_ylim()
        assert lo == -hi  # symmetric: the zero lines of both axes coincide
    text = _texts(fig)
    assert "BIF (covariance, 1600 draws/checkpoint; chains healthy at 3/4 checkpoints)" in text
    assert (
        "unhealthy" in text
        and "leave-one-out (right axis)" in text
        and "analytic prediction" in text
    )


def test_influence_matrices_figure() -> None:
    rng = np.random.default_rng(0)
    mats = {k: rng.normal(size=(3, 4, 4)) for k in ("BIF", "analytic", "leave-one-out")}
    fig = plot_influence_matrices([1, 2, 3], mats, list("abcd"))
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 9
    first = images[0].images[0].get_array()
    assert np.ma.is_masked(first[0, 0]) or np.isnan(first[0, 0])  # diagonal greyed out
    assert np.nanmax(np.abs(first)) == 1.0  # scaled by the largest off-diagonal value
    assert "influencing item" in _texts(fig)
