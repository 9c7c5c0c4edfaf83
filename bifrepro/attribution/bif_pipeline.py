"""The BIF pipeline, written once: SGLD loss traces → chain health → scores.

Every BIF in bifrepro runs through here: :class:`~bifrepro.attribution.bif_method.BIFAttributor`
(``method=bif``, per item or per token), the per-token traces of
:mod:`bifrepro.attribution.token_bif` and :func:`bifrepro.dynamics.bif_over_checkpoints`. The
observables are always named ``"train"`` (the attributed training items) and ``"query"``; SGLD
moves on the mean loss of ``sgld_data``, which may be larger than the observed training items.

A diverged sampler raises :class:`~bifrepro.sampling.SamplerDivergedError`: there are no scores
to report from a run whose chains blew up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from bifrepro.attribution.bif import bif_scores
from bifrepro.sampling import (
    HealthThresholds,
    LossFn,
    LossTraces,
    RunHealth,
    SGLDConfig,
    run_health,
    sample_loss_traces,
)
from bifrepro.sampling.health import HealthCheck

__all__ = ["Observed", "BIFRun", "sample_bif_traces", "run_bif"]

#: A dataset and the per-item ``[B]`` or per-token ``[B, T]`` loss recorded for its items.
Observed = tuple[Dataset, LossFn]


@dataclass
class BIFRun:
    """One BIF run: the recorded traces and the verdict on their chains.

    Attributes:
        traces: ``"train"`` (and ``"query"``, unless the queries are the training items).
        health: core diagnostics, every health rule and the detrending effect.
        query: the observable scored as the query side (``"query"`` or ``"train"``).
    """

    traces: LossTraces
    health: RunHealth
    query: str = "query"

    def scores(self, normalize: str = "correlation", detrend: bool = False) -> torch.Tensor:
        """``[n_query(, T), n_train(, T)]`` scores, positive = helpful (see :func:`bif_scores`)."""
        return bif_scores(
            self.traces[self.query], self.traces["train"], normalize=normalize, detrend=detrend
        )


def sample_bif_traces(
    model: torch.nn.Module,
    sgld_loss: LossFn,
    sgld_data: Dataset,
    train: Observed,
    query: Observed | None = None,
    *,
    config: SGLDConfig,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> LossTraces:
    """SGLD around the model's weights, recording the ``"train"`` and ``"query"`` losses.

    Args:
        model: w* = its current weights (never modified).
        sgld_loss: per-item loss whose minibatch mean SGLD moves on.
        sgld_data: items that define the posterior.
        train: observed training items and the loss recorded for them.
        query: queries and their (loss-like) measurement; ``None`` records only ``"train"``.
        config: sampler settings.
        out_dir: traces on disk (memory-mapped, resumable); ``None`` keeps them in memory.
        progress: tqdm bars (``None``: only on a terminal).
    """
    observables = {"train": train} if query is None else {"train": train, "query": query}
    return sample_loss_traces(
        model,
        sgld_loss,
        sgld_data,
        observables=observables,
        config=config,
        out_dir=out_dir,
        progress=progress,
    )


def run_bif(
    model: torch.nn.Module,
    sgld_loss: LossFn,
    sgld_data: Dataset,
    train: Observed,
    query: Observed | None = None,
    *,
    config: SGLDConfig,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    normalize: str = "correlation",
    thresholds: HealthThresholds | None = None,
    step_curvature: float | None = None,
    extra_checks: Sequence[HealthCheck | None] = (),
) -> BIFRun:
    """Sample (:func:`sample_bif_traces`), then judge the chains (every health rule).

    ``query=None`` scores the training items against themselves; ``normalize`` is the score the
    detrending effect and the precision rule are measured on (per-item traces only).
    ``step_curvature`` (the calibration's measured ``ε·λ_max(P^½(nβH + γI)P^½)``) and
    ``extra_checks`` (e.g. its ``step_halving`` bias check) go to
    :func:`~bifrepro.sampling.run_health`. Raises
    :class:`~bifrepro.sampling.SamplerDivergedError` when the sampler diverges.
    """
    traces = sample_bif_traces(
        model, sgld_loss, sgld_data, train, query, config=config, out_dir=out_dir, progress=progress
    )
    qname = "train" if query is None else "query"
    # d for the health bounds: traces.num_params, recorded by the sampler
    health = run_health(
        traces,
        query=qname,
        normalize=normalize,
        thresholds=thresholds,
        step_curvature=step_curvature,
        extra_checks=extra_checks,
    )
    return BIFRun(traces, health, qname)
