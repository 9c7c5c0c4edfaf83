"""The toy-hierarchy protocol: checkpoint grid, training with leave-one-out, BIF per checkpoint."""

from __future__ import annotations

import torch

from bifrepro.dynamics.toy import checkpoint_steps
from tests.dynamics._toy_run import STEPS, tiny_toy_run


def test_checkpoint_steps_are_log_spaced_plus_requested() -> None:
    grid = checkpoint_steps(3000, 6, 40)
    assert grid[0] == 40 and grid[-1] == 3000 and grid == sorted(set(grid))
    extra = checkpoint_steps(3000, 6, 40, [100, 40])
    assert extra == sorted(set(grid) | {100})
    assert checkpoint_steps(3000, 6, 40, []) == grid


def test_protocol_shapes_and_leave_one_out() -> None:
    h, model, r = tiny_toy_run()
    t, p = len(STEPS), h.num_items
    assert r.steps == STEPS and r.map_steps[0] == 0 and r.map_steps[-1] == 400
    assert r.strengths.shape == (401, len(h.mode_names)) and r.train_loss.shape == (401,)
    # training lowers the loss; the coarse stage is learned first
    assert r.train_loss[-1] < r.train_loss[0]
    assert r.level_transitions[0] <= r.level_transitions[1]
    for x in (r.analytic_cov, r.loo):
        assert x.shape == (t, p, p) and torch.isfinite(x).all()
    assert r.bif.covariance.shape == (t, p, p) and len(r.bif.healthy) == t
    assert r.sampler.num_draws == 20 and r.calibration is None and r.bif_seconds > 0
    # the model is left at the last checkpoint's weights, on the requested device
    assert next(model.parameters()).device.type == "cpu"
