"""Bayesian influence scores from loss traces: covariance or correlation over posterior draws.

The paper's BIF is ``BIF(z_i, φ) = -Cov(ℓ_i, φ)`` (negative = helpful, like the classical IF).
bifrepro reports every method with **positive = helpful**, so the score is ``+Cov`` — this module
is the one place where that conversion happens (the covariance itself is
:func:`bifrepro.stats.trace_association`). The normalised variant is the Pearson correlation of
the two loss traces, in [-1, 1]; it ranks far better than raw covariance, where a few
high-variance training items dominate (see ``docs/science.md``), so it is the default.
"""

from __future__ import annotations

import torch

from bifrepro.stats import NORMALIZATIONS, detrend_chains, trace_association

__all__ = ["bif_scores"]


def bif_scores(
    query_traces: torch.Tensor,
    train_traces: torch.Tensor,
    normalize: str = "correlation",
    block_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    detrend: bool = False,
) -> torch.Tensor:
    """BIF scores between every query and every training item (positive = helpful).

    Args:
        query_traces: ``[C, D, n_query(, T_q)]`` losses of the queries on each draw.
        train_traces: ``[C, D, n_train(, T_t)]`` losses of the training items on the same draws.
        normalize: ``"correlation"`` (Pearson, in [-1, 1]; default, best for rankings) or
            ``"covariance"`` (``+Cov``, sample covariance with ddof 1; the paper's BIF is its
            negative).
        block_size: training columns processed at once (default: ~256 MB of centred traces);
            only one block of centred training traces exists at a time.
        dtype: dtype of the matrix product (centring is done in float64 first).
        detrend: remove each chain's linear trend through its draws first (per item; see
            :func:`bifrepro.sampling.health.detrend_traces`), so a drifting chain's shared trend
            does not masquerade as influence. Report its effect with
            :func:`bifrepro.sampling.health.detrend_effect`.

    Returns:
        ``[n_query(, T_q), n_train(, T_t)]``: all chains and draws are stacked as one sample.
        A constant trace (e.g. a padding token) scores 0 with correlation.

    Raises:
        ValueError: bad shapes or ``normalize``, or NaN/Inf in either traces: the message names
            the query or training items concerned. Scores are never computed from non-finite
            losses (no silent 0 or NaN).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if query_traces.shape[:2] != train_traces.shape[:2]:
        raise ValueError(
            "query and train traces must come from the same draws: got [chains, draws] "
            f"{tuple(query_traces.shape[:2])} vs {tuple(train_traces.shape[:2])}"
        )
    if detrend:
        query_traces, train_traces = detrend_chains(query_traces), detrend_chains(train_traces)
    # The sign convention: score = +Cov(query loss, train loss), positive = helpful (the paper's
    # BIF is -Cov). Monte Carlo errors of these scores: bifrepro.sampling.bif_standard_errors.
    return trace_association(
        query_traces, train_traces, normalize, block_size, dtype, names=("query", "train")
    )
