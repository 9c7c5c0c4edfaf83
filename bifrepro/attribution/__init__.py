"""Attribution methods behind one interface: scores ``[n_query, n_train]``, positive = helpful.

* :func:`bif_scores` — the BIF estimator on recorded loss traces (covariance or correlation).
* :func:`run_bif` — the one BIF pipeline (SGLD loss traces → chain health → scores) behind every
  BIF entry point: :class:`BIFAttributor`, per-token traces and BIF over training checkpoints.
* :class:`AttributionTask` (what is measured) and :class:`Attributor` (``fit`` then ``score``), with
  adapters for BIF, EK-FAC (kronfluence), TRAK (traker), GradSim and exact influence, built from a
  Hydra ``method`` config by :func:`build_attributor`. kronfluence and traker are imported only when
  their method is built.
"""

from bifrepro.attribution.base import (
    AttributionTask,
    Attributor,
    CausalLMTask,
    ClassificationTask,
)
from bifrepro.attribution.bif import bif_scores
from bifrepro.attribution.bif_method import BIFAttributor
from bifrepro.attribution.bif_pipeline import BIFRun, run_bif, sample_bif_traces
from bifrepro.attribution.configs import (
    BIFMethodConfig,
    EKFACConfig,
    ExactIFConfig,
    GradSimConfig,
    MethodConfig,
    TRAKConfig,
    register_method_configs,
)
from bifrepro.attribution.registry import METHODS, build_attributor
from bifrepro.attribution.timing import AttributionTimings, measure_phase

__all__ = [
    "bif_scores",
    "BIFRun",
    "run_bif",
    "sample_bif_traces",
    "AttributionTask",
    "Attributor",
    "CausalLMTask",
    "ClassificationTask",
    "BIFAttributor",
    "MethodConfig",
    "BIFMethodConfig",
    "EKFACConfig",
    "TRAKConfig",
    "GradSimConfig",
    "ExactIFConfig",
    "register_method_configs",
    "METHODS",
    "build_attributor",
    "AttributionTimings",
    "measure_phase",
]
