"""The toy-hierarchy protocol: train a deep linear network (with every leave-one-out run), track
its singular modes, then BIF, the analytic prediction and leave-one-out at every checkpoint.

One call computes everything the analysis (:mod:`bifrepro.dynamics.toy_analysis`) and the figures
(:mod:`bifrepro.plots.toy`) need, so ``experiments/toy_hierarchy.py`` only wires config to it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from bifrepro.data.hierarchy import Hierarchy
from bifrepro.dynamics.checkpoints import log_spaced_steps
from bifrepro.dynamics.influence import CheckpointBIF, bif_over_checkpoints
from bifrepro.dynamics.loo import leave_one_out_influence
from bifrepro.dynamics.modes import (
    analytic_loss_covariance,
    level_transition_steps,
    mode_strengths,
    output_mode_vectors,
    transition_steps,
)
from bifrepro.dynamics.training import leave_one_out_weights, train_deep_linear_weighted
from bifrepro.models.linear import DeepLinearNetwork, per_item_squared_error
from bifrepro.sampling import CalibrationConfig, CalibrationReport, SGLDConfig, resolve_sampler

__all__ = ["ToyRun", "checkpoint_steps", "run_toy_protocol"]

log = logging.getLogger(__name__)


@dataclass
class ToyRun:
    """Everything the toy analysis needs, computed once."""

    steps: list[int]
    map_steps: list[int]
    strengths: torch.Tensor  # [steps+1, M] at every GD step
    train_loss: np.ndarray  # [steps+1]
    mode_transitions: np.ndarray  # [M]
    level_transitions: np.ndarray  # [levels]
    analytic_cov: torch.Tensor  # [T, P, P]
    loo: torch.Tensor  # [T, P, P]
    bif: CheckpointBIF
    bif_seconds: float
    sampler: SGLDConfig  # the settings actually used (calibrated with sampler=auto)
    calibration: CalibrationReport | None = None


def checkpoint_steps(
    steps: int, num_checkpoints: int, first_checkpoint: int, extra: list[int] | None = None
) -> list[int]:
    """Log-spaced checkpoint steps from ``first_checkpoint`` to ``steps``, plus ``extra``."""
    grid = log_spaced_steps(steps, num_checkpoints, first_checkpoint)
    return sorted(set(grid) | {int(s) for s in extra}) if extra else grid


def run_toy_protocol(
    h: Hierarchy,
    model: DeepLinearNetwork,
    sampler: SGLDConfig,
    *,
    lr: float,
    num_steps: int,
    steps: list[int],
    device: torch.device,
    calibration: CalibrationConfig | None = None,
    progress: bool | None = None,
) -> ToyRun:
    """Train ``model`` (and one leave-one-out run per item) for ``num_steps`` full-batch GD steps
    at ``lr``, then BIF (SGLD localised at each checkpoint of ``steps``), the analytic prediction
    and leave-one-out influence. ``calibration`` enabled: the step size is calibrated once, at the
    last checkpoint, and used at every checkpoint."""
    p = h.num_items
    log.info(
        "training %d + %d leave-one-out runs for %d steps; %d checkpoints",
        1, p, num_steps, len(steps),
    )  # fmt: skip
    train = train_deep_linear_weighted(
        model.weights(),
        h.inputs,
        h.targets,
        leave_one_out_weights(p),
        lr,
        num_steps,
        steps,
        map_every=1,
        progress=progress,
    )
    u = output_mode_vectors(h.targets, h.mode_vectors, h.singular_values)
    strengths = mode_strengths(train.maps, u, h.mode_vectors)  # [steps+1, M]
    resid = train.maps - h.targets.T.to(train.maps.dtype)
    train_loss = (resid.pow(2).sum((1, 2)) / (2 * p)).numpy()
    mode_t = transition_steps(strengths, h.singular_values, train.map_steps)
    level_t = level_transition_steps(mode_t, h.mode_levels)
    log.info("stage transitions (a/s = 1/2) at steps %s", np.round(level_t, 1).tolist())
    loo = leave_one_out_influence(train.losses[0], train.losses[1:])

    checkpoints = []
    for c, s in enumerate(steps):
        model.load_weights([w.to(torch.float32) for w in train.member_weights(c)])
        checkpoints.append((s, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    model.to(device)
    report = None
    if calibration is not None and calibration.enabled:
        model.load_state_dict(checkpoints[-1][1])
        sampler, report = resolve_sampler(
            sampler, calibration, model, per_item_squared_error, h.dataset(), progress=progress
        )
    scale = 1.0 / sampler.localization if sampler.localization > 0 else 1.0
    analytic = analytic_loss_covariance(
        strengths[torch.tensor(steps)], h.singular_values, h.mode_vectors, len(model.layers), scale
    )
    t0 = time.perf_counter()
    # the calibration's curvature and bias check vouch for the checkpoint it ran at
    evidence = {steps[-1]: report.health_evidence(sampler)} if report is not None else None
    bif = bif_over_checkpoints(
        model, checkpoints, per_item_squared_error, h.dataset(), sampler, progress=progress,
        evidence=evidence,
    )  # fmt: skip
    return ToyRun(
        steps=steps,
        map_steps=train.map_steps,
        strengths=strengths,
        train_loss=train_loss,
        mode_transitions=mode_t,
        level_transitions=level_t,
        analytic_cov=analytic,
        loo=loo,
        bif=bif,
        bif_seconds=time.perf_counter() - t0,
        sampler=sampler,
        calibration=report,
    )
