"""Token pairs whose influence changes sign: the strongest, diverse in classes, across a window."""

from __future__ import annotations

import math

import numpy as np

from bifrepro.dynamics.token_pairs import first_sign_change, pick_pairs, token_pair_panel
from tests.dynamics._stagewise_fakes import fake_data, fake_results


def test_pick_pairs_prefers_strong_sign_changes_of_distinct_classes() -> None:
    q_cls, t_cls = np.array([0, 1]), np.array([0, -1])  # pairs: (0,0) (0,1) (1,0) (1,1)
    curves = np.array([[1.0, 5.0, 0.5, 3.0], [-1.0, -5.0, -0.4, -3.0], [1.0, 5.0, 0.5, 3.0]])
    # pair 1 and 3 have an ignored training token; 0 is stronger than 2
    assert pick_pairs(curves, q_cls, t_cls, 1, 0.2) == [0]
    assert pick_pairs(curves, q_cls, t_cls, 4, 0.2) == [0, 2]
    flat = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert pick_pairs(flat, q_cls, t_cls, 2, 0.2) == []


def test_first_sign_change() -> None:
    assert first_sign_change([1, 2, 3], np.array([0.5, 0.0, -0.5])) != 2.0
    assert first_sign_change([1, 2, 3], np.array([0.5, -0.1, -0.5])) == 2.0
    assert math.isnan(first_sign_change([1, 2], np.array([0.5, 0.2])))


def test_token_pair_panel_rows_and_titles() -> None:
    panel = token_pair_panel(fake_results(), fake_data(), "correlation", 2, 0.2, (30, 300))
    assert len(panel.titles) == 1 and "query" in panel.titles[0]
    assert [r["step"] for r in panel.rows] == panel.steps
    row = panel.rows[0]
    assert (row["query_seq"], row["query_pos"], row["train_seq"], row["train_pos"]) == (0, 1, 5, 1)
    assert row["query_token"] == "t1" and row["train_token"] == "t11"
    assert 0 < panel.sign_flip_fraction < 1
