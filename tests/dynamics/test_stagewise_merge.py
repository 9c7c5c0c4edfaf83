"""The merge: induction transition, class changes across it, token pairs, tables and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from bifrepro.dynamics.stagewise_merge import merge_checkpoints
from tests.dynamics._stagewise_fakes import SETTINGS, STEPS, K, fake_data, fake_results


def test_merge_finds_the_transition_and_the_class_change_across_it() -> None:
    training = {"loss_curve": list(np.linspace(5.0, 2.0, 1000))}
    m = merge_checkpoints(fake_results(), fake_data(), training, SETTINGS)
    assert m.transition.detected and 30 < m.transition.midpoint < 300
    assert STEPS[m.before] <= m.transition.onset and STEPS[m.after] >= m.transition.end
    assert m.matrix_index[0] == 0 and m.matrix_index[-1] == len(STEPS) - 1
    metrics = m.metrics
    assert metrics["induction/score_last"] == 2.0 and metrics["llc_last"] == 9.0
    assert metrics["chains_healthy_fraction"] == pytest.approx(0.8)
    assert metrics["class_correlation/delimiter_to_delimiter/sign_flip"] == 1.0
    assert metrics["class_correlation/delimiter_to_delimiter/change_across_induction"] < 0
    assert metrics["class_sign_flip_fraction"] == pytest.approx(1 / K**2)
    assert set(m.tables) == {
        "checkpoints.csv", "class_influence.csv", "class_changes.csv", "token_pairs.csv",
        "training_loss.csv", "class_changes_by_estimator.csv",
    }  # fmt: skip
    assert len(m.tables["class_influence.csv"]) == len(STEPS) * K * K
    assert m.tables["checkpoints.csv"].step.tolist() == STEPS
    assert m.tables["training_loss.csv"].step.iloc[-1] == 1000
    # the one sign-changing token pair is picked; the constant one is not
    assert len(m.pairs.titles) == 1 and m.pairs.curves.shape == (len(STEPS), 1)
    assert m.summary["checkpoints"]["step100"] == 100
    assert m.summary["before_after"] == [STEPS[m.before], STEPS[m.after]]


def test_merge_without_a_training_curve_or_a_transition() -> None:
    results = fake_results()
    for r in results:
        r["induction"]["score"] = 0.0
    m = merge_checkpoints(results, fake_data(), None, SETTINGS)
    assert not m.transition.detected and m.before is None and m.after is None
    assert "change" not in m.tables["class_changes.csv"].columns
    assert m.tables["training_loss.csv"].step.tolist() == STEPS  # the query loss instead


def test_partial_correlation_is_merged_and_says_which_changes_survive() -> None:
    """A change the correlation sees but the partial correlation does not (the loss rise made
    it) is significant under one estimator and does not survive the other."""
    results = fake_results()
    for i, r in enumerate(results):
        partial = {**r["class_correlation"], "mean": r["class_correlation"]["mean"].clone()}
        partial["mean"][0, 0] = 0.5  # no change across the window once the rise is removed
        partial["mean"][1, 1] = 0.01 * i  # same as the correlation
        r["class_partial"] = partial
    m = merge_checkpoints(results, fake_data(), None, SETTINGS)
    table = m.tables["class_influence.csv"]
    assert {"partial", "partial_se"} <= set(table.columns)
    by = m.tables["class_changes_by_estimator.csv"].set_index(["query_class", "train_class"])
    names = by.index.get_level_values(0).unique()
    first = (names[0], names[0])
    assert bool(by.loc[first, "correlation_significant"])
    assert not bool(by.loc[first, "partial_significant"])
    assert not bool(by.loc[first, "survives_partial"])
    assert m.metrics["class_change/survive_partial_count"] == float(by["survives_partial"].sum())
    # results without the partial estimator merge as before
    assert (
        "partial"
        not in merge_checkpoints(fake_results(), fake_data(), None, SETTINGS).tables[
            "class_influence.csv"
        ]
    )
