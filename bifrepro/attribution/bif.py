"""Bayesian influence scores from loss traces: covariance or correlation over posterior draws.

The paper's BIF is ``BIF(z_i, φ) = -Cov(ℓ_i, φ)`` (negative = helpful, like the classical IF).
bifrepro reports every method with **positive = helpful**, so the score is ``+Cov`` — this module
is the one place where that conversion happens. The normalised variant is the Pearson correlation
of the two loss traces, in [-1, 1]; it ranks far better than raw covariance, where a few
high-variance training items dominate (REFERENCE §6), so it is the default.
"""

from __future__ import annotations

import torch

__all__ = ["bif_scores"]

_NORMALIZE = ("correlation", "covariance")
_BLOCK_BYTES = 256 * 2**20


def _flatten(traces: torch.Tensor, what: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    if traces.dim() < 3:
        raise ValueError(
            f"{what} traces must be [num_chains, num_draws, n(, T)], got shape {tuple(traces.shape)}"
        )
    item_shape = tuple(traces.shape[2:])
    return traces.reshape(traces.shape[0] * traces.shape[1], -1), item_shape


def _centre(x: torch.Tensor, normalize: str, compute_dtype: torch.dtype) -> torch.Tensor:
    """Centre columns (mean in float64); for correlation also scale them to unit norm."""
    x64 = x.to(torch.float64)
    xc = x64 - x64.mean(0, keepdim=True)
    if normalize == "correlation":
        norm = torch.linalg.vector_norm(xc, dim=0, keepdim=True)
        # Constant traces (e.g. padding tokens) have no correlation with anything: score 0.
        xc = torch.where(norm > 0, xc / norm.clamp_min(1e-300), torch.zeros_like(xc))
    return xc.to(compute_dtype)


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
    """
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    if query_traces.shape[:2] != train_traces.shape[:2]:
        raise ValueError(
            "query and train traces must come from the same draws: got [chains, draws] "
            f"{tuple(query_traces.shape[:2])} vs {tuple(train_traces.shape[:2])}"
        )
    if detrend:
        from bifrepro.sampling.health import detrend_traces  # lazy: no import cycle

        query_traces, train_traces = detrend_traces(query_traces), detrend_traces(train_traces)
    q, q_shape = _flatten(query_traces, "query")
    t, t_shape = _flatten(train_traces, "train")
    n_samples = q.shape[0]
    if n_samples < 2:
        raise ValueError("need at least 2 draws in total to estimate a covariance")
    qc = _centre(q, normalize, dtype)
    if block_size is None:
        block_size = max(1, _BLOCK_BYTES // (8 * n_samples))
    out = torch.empty((qc.shape[1], t.shape[1]), dtype=dtype)
    scale = 1.0 if normalize == "correlation" else 1.0 / (n_samples - 1)
    for start in range(0, t.shape[1], block_size):
        block = _centre(t[:, start : start + block_size], normalize, dtype)
        torch.matmul(qc.T, block, out=out[:, start : start + block.shape[1]])
    if scale != 1.0:
        out.mul_(scale)
    return out.reshape(*q_shape, *t_shape)
