"""Analysis of a toy-hierarchy run: sign flips, peaks, rank agreement, the summary metrics."""

from __future__ import annotations

import math

import numpy as np

from bifrepro.dynamics.toy_analysis import (
    FOCUS_COLUMNS,
    analyse_toy_run,
    focus_metrics,
    has_sign_flip,
    log_ratio,
    mode_strength_table,
    pair_key,
)
from tests.dynamics._toy_run import STEPS, tiny_toy_run


def test_sign_flip_and_log_ratio() -> None:
    assert has_sign_flip(np.array([0.0, 1.0, -0.5]), 0.2)
    assert not has_sign_flip(np.array([0.0, 1.0, -0.1]), 0.2)  # -min below 0.2 x max
    assert not has_sign_flip(np.zeros(4), 0.2)
    assert has_sign_flip(np.array([np.nan, 1.0, -1.0]), 0.2)  # NaN counts as 0
    assert log_ratio(100.0, 10.0) == 1.0
    for a, b in ((0.0, 1.0), (1.0, -1.0), (math.nan, 1.0), (1.0, math.inf)):
        assert math.isnan(log_ratio(a, b))


def test_analysis_tables_and_metrics() -> None:
    h, _, r = tiny_toy_run()
    a = analyse_toy_run(h, r, "covariance", sign_tolerance=0.05, flip_threshold=0.2)
    p, t = h.num_items, len(STEPS)
    assert len(a.pairs) == p * (p - 1) and len(a.checkpoints) == t
    assert len(a.curves) == t * p * p and set(a.curves.step) == set(STEPS)
    assert a.pairs.sign_agreement_bif_loo.dropna().between(0, 1).all()
    for key in ("sign_agreement_bif_loo_mean", "spearman_bif_loo_mean", "bif_seconds"):
        assert key in a.metrics
    assert [k for k in a.metrics if k.startswith("transition_step/")] == [
        f"transition_step/stage{k}" for k in range(h.num_levels)
    ]
    assert f"ancestor_depth{h.depth - 1}/sign_agreement_bif_loo" in a.metrics
    # the correlation estimator is bounded; its analytic counterpart is normalised the same way
    corr = analyse_toy_run(h, r, "correlation", 0.05, 0.2)
    assert corr.metrics["spearman_bif_correlation_loo_mean"] == a.metrics[
        "spearman_bif_correlation_loo_mean"
    ] or math.isnan(a.metrics["spearman_bif_correlation_loo_mean"])

    focus = focus_metrics(h, a.pairs, 0, [1, 4])
    assert len(focus) == 2 * len(FOCUS_COLUMNS)
    assert f"focus/{pair_key(h, 0, 4)}/sign_flip_loo" in focus
    assert pair_key(h, 0, 2) == "dog_to_sparrow"


def test_mode_strength_table_is_log_spaced_from_step_zero() -> None:
    h, _, r = tiny_toy_run()
    modes = mode_strength_table(h, r, points=20)
    assert modes.step.iloc[0] == 0 and modes.step.iloc[-1] == 400
    assert modes.step.is_monotonic_increasing and len(modes) <= 21
    assert list(modes.columns) == ["step", *h.mode_names, "train_loss"]
