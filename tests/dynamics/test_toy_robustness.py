"""Robust sign flips: resolved at both extremes over sampler seeds, with peaks cross-fitted."""

from __future__ import annotations

import numpy as np
import pytest

from bifrepro.data.hierarchy import make_hierarchy
from bifrepro.dynamics.toy_robustness import (
    cross_fitted_extremes,
    flip_robustness,
    summarise_robustness,
)


def test_cross_fitted_extremes_use_the_other_seeds() -> None:
    # seed 0 alone peaks at t=0; the others peak at t=2: seed 0 is read at t=2
    curves = np.array([[3.0, 0.0, 1.0, -1.0], [0.0, 0.0, 5.0, -2.0], [0.0, 0.0, 5.0, -2.0]])
    at_max, at_min = cross_fitted_extremes(curves)
    assert at_max.tolist() == [1.0, 5.0, 5.0] and at_min.tolist() == [-1.0, -2.0, -2.0]
    with pytest.raises(ValueError, match="seeds >= 2"):
        cross_fitted_extremes(curves[:1])


def test_a_clean_flip_is_robust_and_noise_is_not() -> None:
    h = make_hierarchy()
    p, t, s = h.num_items, 12, 5
    steps = np.geomspace(10, 1000, t).round().tolist()
    rng = np.random.default_rng(0)
    bif = rng.normal(0.0, 1.0, (s, t, p, p))  # pure noise everywhere ...
    flip = np.sin(np.linspace(0, 2 * np.pi, t)) * 10.0  # ... but a strong flip for items (0, 1)
    bif[:, :, 1, 0] = flip + rng.normal(0.0, 0.5, (s, t))
    zeros = np.zeros((t, p, p))
    analytic = zeros.copy()
    analytic[:, 1, 0] = flip
    table = flip_robustness(h, steps, bif, analytic, zeros)
    assert len(table) == p * (p - 1) // 2
    row = table[(table.source == h.item_names[0]) & (table.target == h.item_names[1])].iloc[0]
    assert row.robust_flip_bif and row.flips_bif == s and row.sign_flip_analytic
    assert not row.sign_flip_loo  # leave-one-out was all zeros here
    assert row.at_helpful_peak_ci_low > 0 and row.at_harmful_peak_ci_high < 0
    noise = table.drop(index=row.name)
    assert noise.robust_flip_bif.sum() <= 1  # noise curves "flip" often, but are not resolved
    assert noise.flips_bif.mean() > 2  # ... which is why a single run's flip count misleads
    summary = summarise_robustness(table.assign(init_seed=0))
    assert summary.pairs.sum() == len(table)
    assert summary.bif_robust_flips.sum() == table.robust_flip_bif.sum()
