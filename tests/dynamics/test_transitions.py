"""Stage transitions in log time, fastest loss drops, sign changes of curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bifrepro.dynamics.transitions import detect_transition, fastest_drop_steps, sign_flips


def _sigmoid_curve(steps: np.ndarray, mid: float, height: float) -> np.ndarray:
    return height / (1 + np.exp(-4.0 * (np.log(steps) - np.log(mid))))


def test_detect_transition_finds_the_midpoint_in_log_time() -> None:
    steps = np.unique(np.round(np.geomspace(1, 10_000, 25)).astype(int))
    y = _sigmoid_curve(steps, 150.0, 2.0)
    tr = detect_transition(steps, y, min_rise=0.5)
    assert tr.detected and tr.rise == pytest.approx(y.max() - y.min())
    assert tr.midpoint == pytest.approx(150.0, rel=0.1)
    assert tr.onset < tr.midpoint < tr.end
    # 20% -> 80% of a logistic in 4·log(t) spans ln(16)/4 in ln(t)
    assert tr.width_decades == pytest.approx(math.log10(math.e) * math.log(16) / 4, rel=0.1)
    # an early dip below the starting level is not part of the rise
    dip = y.copy()
    dip[2] = -1.0
    assert detect_transition(steps, dip, 0.5).onset > steps[2]
    flat = detect_transition(steps, 0.1 * y, min_rise=0.5)
    assert not flat.detected and math.isnan(flat.midpoint) and math.isnan(flat.width_decades)
    assert tr.to_metrics("induction/")["induction/detected"] == 1.0


def test_fastest_drop_steps_finds_two_drops() -> None:
    steps = np.arange(1, 20_001)
    loss = 5.0 - _sigmoid_curve(steps, 30.0, 2.0) - _sigmoid_curve(steps, 2000.0, 1.0)
    noisy = loss + np.random.default_rng(0).normal(0, 0.05, len(steps))
    drops = fastest_drop_steps(steps, noisy, num=2)
    assert len(drops) == 2
    assert abs(math.log10(drops[0] / 30.0)) < 0.15
    assert abs(math.log10(drops[1] / 2000.0)) < 0.15
    assert fastest_drop_steps(steps, np.full(len(steps), 1.0)) == []


def test_sign_flips() -> None:
    curves = np.array([[1.0, 1.0, 0.0], [-1.0, 0.5, 0.0], [0.5, 0.1, 0.0]])
    assert sign_flips(curves).tolist() == [True, False, False]
    assert sign_flips(torch.tensor(curves), threshold=0.99).tolist() == [True, False, False]
    assert sign_flips(np.array([[1.0], [-0.1]]), threshold=0.2).tolist() == [False]
