"""Influence over training: checkpoints, leave-one-out ground truth, mode analysis, curve metrics.

Reusable by every time-resolved experiment (the toy hierarchy, the language-model stages):
:func:`bif_over_checkpoints` runs the BIF pipeline at each checkpoint, :mod:`~bifrepro.dynamics.loo`
turns retrained losses into ground-truth influence, :mod:`~bifrepro.dynamics.metrics` compares
curves, and :mod:`~bifrepro.dynamics.modes` holds the deep-linear-network theory.
"""

from bifrepro.dynamics.checkpoints import log_spaced_steps
from bifrepro.dynamics.influence import CheckpointBIF, bif_over_checkpoints
from bifrepro.dynamics.loo import leave_one_out_influence
from bifrepro.dynamics.metrics import (
    off_diagonal,
    peak_step,
    sign_agreement,
    spearman_per_checkpoint,
)
from bifrepro.dynamics.modes import (
    analytic_loss_covariance,
    covariance_to_correlation,
    level_transition_steps,
    mode_strengths,
    output_mode_vectors,
    transition_steps,
)
from bifrepro.dynamics.training import (
    WeightedTrainingResult,
    leave_one_out_weights,
    train_deep_linear_weighted,
)

__all__ = [
    "log_spaced_steps",
    "CheckpointBIF",
    "bif_over_checkpoints",
    "leave_one_out_influence",
    "off_diagonal",
    "peak_step",
    "sign_agreement",
    "spearman_per_checkpoint",
    "analytic_loss_covariance",
    "covariance_to_correlation",
    "level_transition_steps",
    "mode_strengths",
    "output_mode_vectors",
    "transition_steps",
    "WeightedTrainingResult",
    "leave_one_out_weights",
    "train_deep_linear_weighted",
]
