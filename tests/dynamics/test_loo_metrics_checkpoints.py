"""Leave-one-out layout, curve metrics and checkpoint grids on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bifrepro.dynamics import (
    leave_one_out_influence,
    log_spaced_steps,
    off_diagonal,
    peak_step,
    sign_agreement,
    spearman_per_checkpoint,
)


def test_leave_one_out_sign_and_layout() -> None:
    with_all = torch.tensor([[1.0, 2.0]])  # one checkpoint, two items
    # without item 0: item 1's loss rises to 2.5 (item 0 helped item 1)
    # without item 1: item 0's loss falls to 0.5 (item 1 hurt item 0)
    without = torch.tensor([[[1.4, 2.5]], [[0.5, 2.2]]])
    loo = leave_one_out_influence(with_all, without)
    assert loo.shape == (1, 2, 2)  # [T, query j, train i]
    assert loo[0, 1, 0].item() == pytest.approx(0.5)  # influence of 0 on 1: helpful
    assert loo[0, 0, 1].item() == pytest.approx(-0.5)  # influence of 1 on 0: harmful
    with pytest.raises(ValueError):
        leave_one_out_influence(with_all, without[:, :, :1])


def test_sign_agreement_skips_negligible_truth() -> None:
    truth = np.array([[1e-9], [1.0], [-2.0], [0.5]])
    est = np.array([[-1.0], [0.2], [-0.1], [-0.3]])
    frac, counted = sign_agreement(est, truth, rel_tol=0.05)
    assert counted[0] == 3  # the 1e-9 checkpoint does not count
    assert frac[0] == pytest.approx(2 / 3)


def test_peak_steps() -> None:
    curve = np.array([[0.0], [2.0], [-3.0], [1.0]])
    steps = [1, 10, 100, 1000]
    assert peak_step(curve, steps, "max")[0] == 10
    assert peak_step(curve, steps, "min")[0] == 100
    assert peak_step(curve, steps, "abs")[0] == 100
    with pytest.raises(ValueError):
        peak_step(curve, steps, "median")


def test_spearman_and_off_diagonal() -> None:
    m = np.arange(9, dtype=float).reshape(1, 3, 3)
    assert off_diagonal(m).tolist() == [[1, 2, 3, 5, 6, 7]]
    a = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    b = np.array([[10.0, 20.0, 30.0, 45.0], [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    rho = spearman_per_checkpoint(a, b)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0)
    assert np.isnan(rho[2])  # constant estimate


def test_log_spaced_steps() -> None:
    steps = log_spaced_steps(3000, 24, first=40)
    assert steps[0] == 40 and steps[-1] == 3000
    assert len(steps) <= 24 and steps == sorted(set(steps))
    ratios = np.diff(np.log(steps))
    assert ratios.max() < 2 * ratios.min() + 1e-9  # evenly spaced in log time (up to rounding)
    assert log_spaced_steps(5, 10) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        log_spaced_steps(10, 3, first=20)
