"""Local SGLD sampling around trained weights and the loss traces it records."""

from bifrepro.sampling.config import SGLDConfig
from bifrepro.sampling.diagnostics import (
    ChainDiagnostics,
    ChainDriftWarning,
    SamplerDivergedError,
    split_rhat,
    trend_tstat,
)
from bifrepro.sampling.sampler import LossFn, sample_loss_traces
from bifrepro.traces import LossTraces, TraceStoreMismatchError

__all__ = [
    "SGLDConfig",
    "sample_loss_traces",
    "LossTraces",
    "LossFn",
    "ChainDiagnostics",
    "ChainDriftWarning",
    "SamplerDivergedError",
    "TraceStoreMismatchError",
    "split_rhat",
    "trend_tstat",
]
