"""Evaluation of attributions against counterfactual retraining: the linear datamodeling score.

* :mod:`bifrepro.evaluation.lds`: subset masks, the additive prediction and the LDS metric with a
  bootstrap confidence interval.
* :mod:`bifrepro.evaluation.retrain`: retraining on subsets with an on-disk cache of query outputs
  (resumable; process-pool parallel; Hydra/SLURM sweep-friendly).
* :mod:`bifrepro.evaluation.lds_protocol`: the LDS experiment's problem (data, retrainer, cache,
  subset masks), retrained outputs, the full-data model ``w*`` and the retraining stage.
* :mod:`bifrepro.evaluation.lds_methods`: every method's scores at ``w*``, cached by settings.
* :mod:`bifrepro.evaluation.lds_tables`: LDS per method and α, paired differences, BIF's LDS
  against the number of draws, time to equal LDS, costs.
* :mod:`bifrepro.evaluation.cost`: timing one method, log-log slopes, the additive cost model.
* :mod:`bifrepro.evaluation.cost_grids`: the compute experiment's grids, slopes and crossover.
"""

from bifrepro.evaluation.lds import (
    LDSResult,
    bootstrap_mean_ci,
    lds,
    load_masks,
    mask_hash,
    predicted_outputs,
    save_masks,
    spearman_rows,
    subset_masks,
    subset_size,
)
from bifrepro.evaluation.retrain import (
    MissingRetrainError,
    ModelSpec,
    RetrainCache,
    Retrainer,
    dataset_fingerprint,
    missing_entries,
    retrain_outputs,
)

__all__ = [
    "LDSResult",
    "bootstrap_mean_ci",
    "load_masks",
    "lds",
    "mask_hash",
    "predicted_outputs",
    "save_masks",
    "spearman_rows",
    "subset_masks",
    "subset_size",
    "MissingRetrainError",
    "ModelSpec",
    "RetrainCache",
    "Retrainer",
    "dataset_fingerprint",
    "missing_entries",
    "retrain_outputs",
]
