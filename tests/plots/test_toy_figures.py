"""The toy experiment's figure set from one run."""

from __future__ import annotations

import math

import numpy as np

from bifrepro.plots.toy_figures import key_steps, toy_figures
from tests.dynamics._toy_run import tiny_toy_run


def test_key_steps_requested_else_nearest_each_transition() -> None:
    steps = [10, 20, 40, 80, 160, 320]
    assert key_steps(steps, np.array([15.0, 70.0]), [40, 10, 40]) == [10, 40]
    assert key_steps(steps, np.array([19.0, 90.0, 300.0]), None) == [20, 80, 320]
    # no finite transition: the middle checkpoint
    assert key_steps(steps, np.array([math.nan, math.inf]), None) == [80]


def test_three_figures_for_either_estimator() -> None:
    h, _, r = tiny_toy_run()
    for normalize in ("covariance", "correlation"):
        figs = toy_figures(
            h, r, normalize=normalize, src=0, targets=[1, 2, 4], model_desc="linear 8-16-15",
            lr=0.1, first_checkpoint=40, matrix_steps=[r.steps[1]],
        )  # fmt: skip
        assert list(figs) == [
            "fig1_mode_strengths.png",
            "fig2_influence_curves.png",
            "fig3_influence_matrices.png",
        ]
        # one curve panel per target
        assert len(figs["fig2_influence_curves.png"].get_axes()) >= 3
        for fig in figs.values():
            fig.clear()
