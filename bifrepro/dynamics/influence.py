"""Time-resolved BIF: the local posterior at each training checkpoint, influence at each.

For every checkpoint ``w*_t`` the BIF pipeline (:mod:`bifrepro.attribution.bif_pipeline`) samples
SGLD chains localised at ``w*_t`` and scores every (query, train) pair from the recorded losses.
Both normalisations come out of the same draws (covariance is the paper's BIF up to sign;
correlation is what ranks best), with the chain-health verdict of every checkpoint, so a curve
over training can say where it can be trusted. A sampler that diverges at any checkpoint fails the
whole call: a curve with NaN holes is not a result.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.attribution.bif_pipeline import run_bif
from bifrepro.sampling import ChainDriftWarning, LossFn, SGLDConfig

__all__ = ["CheckpointBIF", "bif_over_checkpoints"]

log = logging.getLogger(__name__)


@dataclass
class CheckpointBIF:
    """BIF scores at every checkpoint.

    Attributes:
        steps: training step of each checkpoint.
        covariance: ``[T, n_query, n_train]`` ``+Cov`` scores (positive = helpful).
        correlation: ``[T, n_query, n_train]`` Pearson scores.
        healthy: chain-health verdict per checkpoint.
        summaries: one-line chain summary per checkpoint.
        chain_metrics: flat diagnostics per checkpoint (``chain/*``, ``health/*``, ``detrend/*``).
        draws: draws per checkpoint (chains x draws).
    """

    steps: list[int]
    covariance: torch.Tensor
    correlation: torch.Tensor
    healthy: list[bool]
    summaries: list[str]
    chain_metrics: list[dict[str, float]] = field(default_factory=list)
    draws: int = 0

    def scores(self, normalize: str) -> torch.Tensor:
        """``covariance`` or ``correlation`` by name."""
        if normalize == "covariance":
            return self.covariance
        if normalize == "correlation":
            return self.correlation
        raise ValueError(f"normalize must be 'covariance' or 'correlation', got {normalize!r}")

    @property
    def num_healthy(self) -> int:
        return sum(self.healthy)


def bif_over_checkpoints(
    model: torch.nn.Module,
    checkpoints: Sequence[tuple[int, Mapping[str, Any]]],
    loss_fn: LossFn,
    train_data: Dataset,
    config: SGLDConfig,
    query_data: Dataset | None = None,
    trace_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    evidence: Mapping[int, Mapping[str, Any]] | None = None,
) -> CheckpointBIF:
    """Sample the local posterior at each checkpoint and score query x train influence.

    Each checkpoint is one run of the BIF pipeline
    (:func:`bifrepro.attribution.bif_pipeline.run_bif`).

    Args:
        model: architecture to load each checkpoint's ``state_dict`` into (modified in place).
        checkpoints: ``(step, state_dict)`` pairs in training order.
        loss_fn: per-item (or per-token) loss, as for :func:`bifrepro.sampling.sample_loss_traces`.
        train_data: training set (defines the posterior; its items are the ``train`` side).
        config: SGLD settings, the same at every checkpoint.
        query_data: queries; ``None`` scores the training set against itself.
        trace_dir: keep each checkpoint's traces under ``trace_dir/step_<step>`` (resumable).
        progress: tqdm bar over checkpoints (``None``: only on a terminal).
        evidence: per checkpoint step, what a calibration there measured that the traces cannot
            show (:meth:`~bifrepro.sampling.CalibrationReport.health_evidence`: the step
            curvature and the step-halving check), judged with that checkpoint's chains.

    Raises:
        SamplerDivergedError: the sampler diverged at a checkpoint. A curve with a hole is not a
            result: lower the step size (or calibrate it) and rerun.
    """
    train = (train_data, loss_fn)
    query = None if query_data is None else (query_data, loss_fn)
    cov_rows, corr_rows, healthy, summaries, metrics = [], [], [], [], []
    steps = [int(s) for s, _ in checkpoints]
    disable = None if progress is None else not progress
    with logging_redirect_tqdm():
        for step, state in tqdm(checkpoints, desc="BIF per checkpoint", disable=disable):
            model.load_state_dict(state)
            out_dir = None if trace_dir is None else Path(trace_dir) / f"step_{int(step)}"
            with warnings.catch_warnings():
                # drift is judged per checkpoint (``healthy``, ``chain_metrics``), not warned about
                warnings.simplefilter("ignore", ChainDriftWarning)
                run = run_bif(
                    model,
                    loss_fn,
                    train_data,
                    train,
                    query,
                    config=config,
                    out_dir=out_dir,
                    progress=False,
                    **(evidence or {}).get(int(step), {}),
                )
            cov_rows.append(run.scores("covariance"))
            corr_rows.append(run.scores("correlation"))
            healthy.append(run.health.healthy)
            summaries.append(run.health.summary)
            metrics.append(run.health.metrics)
            log.debug("step %d: %s", step, run.health.summary)
    return CheckpointBIF(
        steps=steps,
        covariance=torch.stack(cov_rows),
        correlation=torch.stack(corr_rows),
        healthy=healthy,
        summaries=summaries,
        chain_metrics=metrics,
        draws=config.num_chains * config.num_draws,
    )
