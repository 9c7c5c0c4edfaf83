"""Chain health statistics of a sampling run, and the error a diverging sampler raises.

The statistics (:func:`~bifrepro.stats.trend_tstat`, :func:`~bifrepro.stats.split_rhat`) and the
per-run container (:class:`~bifrepro.chain_diagnostics.ChainDiagnostics`) live at the lowest layer,
next to the traces that carry them; this module keeps their ``bifrepro.sampling`` import paths.
"""

from __future__ import annotations

from bifrepro.chain_diagnostics import (
    RHAT_THRESHOLD,
    TREND_EFFECT_THRESHOLD,
    TREND_T_THRESHOLD,
    ChainDiagnostics,
    ChainDriftWarning,
)
from bifrepro.stats import lag1_autocorrelation, split_rhat, trend_tstat

__all__ = [
    "ChainDiagnostics",
    "ChainDriftWarning",
    "SamplerDivergedError",
    "trend_tstat",
    "split_rhat",
    "lag1_autocorrelation",
    "TREND_T_THRESHOLD",
    "TREND_EFFECT_THRESHOLD",
    "RHAT_THRESHOLD",
]


class SamplerDivergedError(RuntimeError):
    """SGLD produced a non-finite or exploding loss; the run is not usable."""
