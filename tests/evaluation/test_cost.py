"""Cost models of the compute experiment: log-log slopes, the additive model and its crossover."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bifrepro.evaluation.cost import (
    AdditiveCost,
    crossover_queries,
    device_label,
    fit_additive_cost,
    loglog_slope,
)


def test_cost_models_recover_known_laws() -> None:
    # an n-grid, a q-grid and a diagonal (a cross alone cannot separate c_nq from c_n and c_q)
    n = np.array([100, 200, 400, 800, 100, 100, 100, 200, 400], dtype=float)
    q = np.array([10, 10, 10, 10, 20, 40, 80, 20, 40], dtype=float)
    bif = 0.5 + 0.01 * (n + q)  # draws x (n + q)
    ekfac = 2.0 + 0.001 * n + 0.0004 * n * q  # fit + n q score
    fb, fe = fit_additive_cost(n, q, bif), fit_additive_cost(n, q, ekfac)
    assert fb.c_n == pytest.approx(0.01, rel=1e-3) and fb.c_nq == pytest.approx(0, abs=1e-9)
    assert fe.c_nq == pytest.approx(0.0004, rel=1e-3)
    # at n = 100: BIF 1.5 + 0.01 q, EK-FAC 2.1 + 0.04 q: BIF is cheaper from the first query
    assert crossover_queries(fb, fe, 100) == 1.0
    # at n = 1000: BIF 10.5 + 0.01 q, EK-FAC 3 + 0.4 q: equal at q = 7.5 / 0.39
    assert crossover_queries(fb, fe, 1000) == pytest.approx(7.5 / 0.39)
    assert crossover_queries(AdditiveCost(1, 0, 1, 0), AdditiveCost(0, 0, 0.5, 0), 10) == math.inf
    slope, _ = loglog_slope([1, 10, 100], [3, 30, 300])
    assert slope == pytest.approx(1.0)
    assert math.isnan(loglog_slope([5, 5], [1, 2])[0])


def test_device_label_names_the_thread_count():
    assert device_label("cpu").startswith("cpu (") and "thread" in device_label("cpu")
