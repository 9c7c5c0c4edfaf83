"""BIF behind the attributor interface: SGLD loss traces → covariance or correlation.

Phases: BIF has no fitting phase (no curvature, no features). The queries' losses have to be
recorded on the *same* posterior draws as the training items' losses, so all sampling happens in
:meth:`BIFAttributor.score`; ``fit`` only checks and stores its inputs. Compare methods on
``fit + score`` time.

Which losses are recorded: SGLD moves on the task's training loss; the training items are observed
through :meth:`AttributionTask.train_loss` and the queries through
:meth:`AttributionTask.measurement` (loss-like, e.g. ``-margin`` for LDS), so ``+Cov`` (or the
Pearson correlation) is positive when upweighting a training item lowers the query measurement:
positive = helpful, like every other method here.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from bifrepro.attribution.base import PER_TOKEN_MODES, Attributor
from bifrepro.attribution.bif_pipeline import run_bif
from bifrepro.attribution.configs import BIFMethodConfig
from bifrepro.sampling import HealthReport, LossTraces, RunHealth

__all__ = ["BIFAttributor", "UnhealthyChainsError"]

log = logging.getLogger(__name__)


class UnhealthyChainsError(RuntimeError):
    """Chains drifted or did not mix and ``on_unhealthy="raise"`` was asked for."""


class BIFAttributor(Attributor):
    """Bayesian influence function (Kreer et al.): ``+Cov`` or Pearson correlation of loss traces.

    Per token: ``per_token="train"`` records per-token training losses (``[n_query, n_train, T]``),
    ``"query"`` per-token query measurements (``[n_query, T, n_train]``), ``"both"`` both
    (``[n_query, T, n_train, T]``). After :meth:`score`, ``self.traces`` holds the recorded traces
    and their chain diagnostics.
    """

    name = "bif"
    per_token_modes = PER_TOKEN_MODES

    def __init__(self, config: BIFMethodConfig | None = None) -> None:
        super().__init__(config if config is not None else BIFMethodConfig())
        self.config: BIFMethodConfig
        self.traces: LossTraces | None = None
        self.health: HealthReport | None = None
        self.run_health: RunHealth | None = None
        #: What a calibration measured that the traces cannot show (``step_curvature``,
        #: ``extra_checks``: :meth:`~bifrepro.sampling.CalibrationReport.health_evidence`),
        #: passed to every run's health check.
        self.health_evidence: dict[str, Any] = {}
        self._calls = 0

    def _fit(self) -> None:
        if not any(p.requires_grad for p in self.model.parameters()):  # type: ignore[union-attr]
            raise ValueError("bif: the model has no trainable parameters to sample")

    def _score(self, query_data: Dataset) -> torch.Tensor:
        task, cfg = self.task, self.config
        assert task is not None and self.model is not None and self.train_data is not None
        per_train = cfg.per_token in ("train", "both")
        per_query = cfg.per_token in ("query", "both")
        train_fn = task.train_loss_per_token if per_train else task.train_loss
        query_fn = task.measurement_per_token if per_query else task.measurement
        out_dir = None
        if cfg.out_dir is not None:
            # One sub-folder per score() call: rerunning the same calls resumes each of them.
            out_dir = Path(cfg.out_dir).expanduser().resolve() / f"query{self._calls}"
        self._calls += 1
        run = run_bif(
            self.model,
            task.train_loss,
            self.train_data,
            train=(self.train_data, train_fn),
            query=(query_data, query_fn),
            config=cfg.sampler,
            out_dir=out_dir,
            progress=cfg.progress,
            normalize=cfg.normalize,
            **self.health_evidence,
        )
        self.traces, self.run_health, self.health = run.traces, run.health, run.health.report
        log.info("bif: %s | %s", run.traces.diagnostics.summary(), self.health.summary())
        if not self.health.is_healthy:
            msg = f"bif: {self.health.summary()}; scores from unhealthy chains are unreliable"
            if cfg.on_unhealthy == "raise":
                raise UnhealthyChainsError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return run.scores(cfg.normalize, detrend=cfg.detrend)

    def diagnostics_metrics(self, prefix: str = "chain/") -> dict[str, float]:
        """Chain-health metrics of the last :meth:`score` call (empty before it): the core
        diagnostics under ``prefix``, every health rule under ``health/`` and the effect of
        detrending (per-item traces) under ``detrend/``."""
        if self.traces is None:
            return {}
        if self.run_health is None:
            return self.traces.diagnostics.to_metrics(prefix)
        return {
            (prefix + k[len("chain/") :] if k.startswith("chain/") else k): v
            for k, v in self.run_health.metrics.items()
        }
