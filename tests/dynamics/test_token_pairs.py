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


def test_panel_records_its_candidates_and_noise_and_the_figure_draws_the_band() -> None:
    """The figure must show what the pairs were picked from and how large noise is."""
    from bifrepro.plots.stagewise import plot_token_pairs

    results = fake_results()
    panel = token_pair_panel(results, fake_data(), "correlation", 2, 0.2, (30, 300))
    assert panel.num_candidates > len(panel.titles) and panel.noise_se is None  # not recorded
    for i, r in enumerate(results):
        r["token_precision"] = {"score_se_median": 0.05 + 0.01 * i}
    panel = token_pair_panel(results, fake_data(), "correlation", 2, 0.2, (30, 300))
    np.testing.assert_allclose(panel.noise_se, [0.05, 0.06, 0.07, 0.08, 0.09])
    assert token_pair_panel(results, fake_data(), "covariance", 2, 0.2).noise_se is None
    fig = plot_token_pairs(
        panel.steps, panel.curves, panel.titles, {}, [0.0] * 5, noise_se=panel.noise_se
    )
    band = fig.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    assert np.isclose(band.max(), 1.96 * 0.09) and np.isclose(band.min(), -1.96 * 0.09)
    assert "noise" in fig.axes[0].get_legend().get_texts()[0].get_text()
