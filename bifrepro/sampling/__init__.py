"""Local SGLD sampling around trained weights and the loss traces it records."""

from bifrepro.sampling.batched import ChainBatchingError
from bifrepro.sampling.bias_check import step_halving_check
from bifrepro.sampling.calibration import (
    CalibrationConfig,
    CalibrationError,
    CalibrationReport,
    calibrate,
    calibrate_report,
    resolve_sampler,
)
from bifrepro.sampling.config import SGLDConfig
from bifrepro.sampling.curvature import (
    preconditioned_top_eigenvalue,
    rmsprop_preconditioner,
    top_hessian_eigenvalue,
)
from bifrepro.sampling.diagnostics import (
    ChainDiagnostics,
    ChainDriftWarning,
    SamplerDivergedError,
    split_rhat,
    trend_tstat,
)
from bifrepro.sampling.health import (
    HealthCheck,
    HealthReport,
    HealthThresholds,
    RunHealth,
    assess_chains,
    assess_traces,
    check_precision,
    detrend_effect,
    detrend_traces,
    effective_sample_size,
    run_health,
)
from bifrepro.sampling.parameters import count_sampled_parameters, sampled_parameters
from bifrepro.sampling.precision_target import draws_for_resolved
from bifrepro.sampling.sampler import LossFn, sample_loss_traces
from bifrepro.sampling.uncertainty import (
    ScoreUncertainty,
    bif_standard_errors,
    draws_needed,
    topk_resolved,
    topk_with_uncertainty,
)
from bifrepro.traces import LossTraces, TraceStoreError, TraceStoreMismatchError

__all__ = [
    "SGLDConfig",
    "sample_loss_traces",
    "LossTraces",
    "LossFn",
    "ChainBatchingError",
    "ChainDiagnostics",
    "ChainDriftWarning",
    "SamplerDivergedError",
    "TraceStoreError",
    "TraceStoreMismatchError",
    "count_sampled_parameters",
    "sampled_parameters",
    "split_rhat",
    "trend_tstat",
    "CalibrationConfig",
    "CalibrationError",
    "CalibrationReport",
    "calibrate",
    "calibrate_report",
    "resolve_sampler",
    "HealthCheck",
    "HealthReport",
    "HealthThresholds",
    "check_precision",
    "step_halving_check",
    "preconditioned_top_eigenvalue",
    "rmsprop_preconditioner",
    "top_hessian_eigenvalue",
    "draws_for_resolved",
    "assess_chains",
    "assess_traces",
    "detrend_effect",
    "RunHealth",
    "run_health",
    "detrend_traces",
    "effective_sample_size",
    "ScoreUncertainty",
    "bif_standard_errors",
    "draws_needed",
    "topk_with_uncertainty",
    "topk_resolved",
]
