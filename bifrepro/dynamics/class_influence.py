"""Class x class per-token BIF, without building the token x token score matrix.

The mean Pearson correlation (or covariance) over all pairs of a query token class and a training
token class is an inner product of class-summed, normalised loss traces
(:func:`class_influence`); token classes come from :mod:`bifrepro.data.token_classes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ClassInfluence", "class_influence"]


@dataclass
class ClassInfluence:
    """Mean per-token BIF over all (query token, training token) pairs of two classes.

    Attributes:
        mean: ``[K, K]`` pooled estimate (all chains x draws), row = query class, column =
            training class; NaN where a class has no tokens. Positive = helpful.
        std_error: ``[K, K]`` standard deviation of the block estimates over sqrt(number of
            blocks) (NaN for a single block): blocks are contiguous runs of draws, treated as
            independent, so this is approximate (it ignores correlation between blocks).
        per_block: ``[C·B, K, K]`` the same estimate from each block of draws alone (``B``
            blocks per chain; ``B = 1``: one estimate per chain).
        query_counts, train_counts: ``[K]`` tokens per class.
        normalize: "correlation", "covariance" or "partial".
    """

    mean: torch.Tensor
    std_error: torch.Tensor
    per_block: torch.Tensor
    query_counts: torch.Tensor
    train_counts: torch.Tensor
    normalize: str


def _class_sums(
    traces: torch.Tensor,
    classes: torch.Tensor,
    k: int,
    normalize: str,
    block: int,
    control: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[S, K]`` sums of centred (and, for correlation, unit-norm) traces per class.

    ``traces`` is ``[S, M]`` (samples x tokens), processed ``block`` columns at a time. With
    ``control`` (``[S]``), each trace is first replaced by its residual after regressing it on
    the control (partial correlation).
    """
    zc = None
    if control is not None:
        zc = control.double() - control.double().mean()
        zz = float(zc @ zc)
        zc = zc if zz > 0 else None
    s = traces.shape[0]
    out = torch.zeros(s, k, dtype=torch.float64)
    for start in range(0, traces.shape[1], block):
        cls = classes[start : start + block]
        keep = cls >= 0
        if not keep.any():
            continue
        x = traces[:, start : start + block][:, keep].double()
        x = x - x.mean(0, keepdim=True)
        if zc is not None:
            x = x - zc[:, None] * ((zc @ x) / zz)[None, :]
        if normalize in ("correlation", "partial"):
            norm = torch.linalg.vector_norm(x, dim=0, keepdim=True)
            x = torch.where(norm > 0, x / norm.clamp_min(1e-300), torch.zeros_like(x))
        out.index_add_(1, cls[keep], x)
    return out


def class_influence(
    query_traces: torch.Tensor,
    train_traces: torch.Tensor,
    query_classes: torch.Tensor,
    train_classes: torch.Tensor,
    num_classes: int,
    normalize: str = "correlation",
    block_size: int = 4096,
    blocks_per_chain: int = 1,
    control: torch.Tensor | None = None,
) -> ClassInfluence:
    """Class x class per-token BIF, never materialising the token x token matrix.

    For unit-norm centred traces ``z``, the mean correlation over the pairs of classes A and B is
    ``(Σ_{a∈A} z_a)·(Σ_{b∈B} z_b) / (|A|·|B|)`` (covariance: centred traces and ``1/(S−1)``),
    so the cost is one pass over the traces. Tokens of class :data:`~bifrepro.data.token_classes.IGNORE`
    (< 0) are left out; constant traces (padding) contribute 0.

    Args:
        query_traces: ``[C, D, n_q, T]`` (or ``[C, D, n_q]``) per-token losses of the queries.
        train_traces: ``[C, D, n_t, T]`` on the same draws.
        query_classes, train_classes: class id per token, shaped like one draw of the traces.
        num_classes: ``K``.
        normalize: "correlation" (Pearson, default), "covariance" (``+Cov``, ddof 1) or
            "partial": the correlation of the traces' residuals after regressing each on
            ``control`` (e.g. the per-draw mean loss: a posterior whose loss rises on every draw
            correlates everything with everything; the partial correlation removes that).
        block_size: tokens whose traces are centred at once (memory bound).
        blocks_per_chain: contiguous blocks of draws per chain for the standard error (with 2
            chains, per-chain estimates alone give a standard error with one degree of freedom).
        control: ``[C, D]`` per-draw series to partial out (needed for ``"partial"`` only).
    """
    if normalize not in ("correlation", "covariance", "partial"):
        raise ValueError(
            f"normalize must be 'correlation', 'covariance' or 'partial', got {normalize!r}"
        )
    if (normalize == "partial") != (control is not None):
        raise ValueError("normalize='partial' needs a control [chains, draws], and only it does")
    if control is not None and tuple(control.shape) != tuple(query_traces.shape[:2]):
        raise ValueError(f"control must be [chains, draws] = {tuple(query_traces.shape[:2])}")
    if query_traces.shape[:2] != train_traces.shape[:2]:
        raise ValueError("query and train traces must come from the same [chains, draws]")
    if tuple(query_classes.shape) != tuple(query_traces.shape[2:]) or tuple(
        train_classes.shape
    ) != tuple(train_traces.shape[2:]):
        raise ValueError("class arrays must be shaped like one draw of their traces")
    c, d = query_traces.shape[:2]
    qc = query_classes.reshape(-1).long()
    tc = train_classes.reshape(-1).long()
    nq = torch.bincount(qc[qc >= 0], minlength=num_classes)[:num_classes].double()
    nt = torch.bincount(tc[tc >= 0], minlength=num_classes)[:num_classes].double()
    pair_counts = nq[:, None] * nt[None, :]

    def estimate(q: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        sq = _class_sums(q, qc, num_classes, normalize, block_size, z)
        st = _class_sums(t, tc, num_classes, normalize, block_size, z)
        m = sq.T @ st
        if normalize == "covariance":
            m = m / max(q.shape[0] - 1, 1)
        return torch.where(pair_counts > 0, m / pair_counts.clamp_min(1), torch.nan)

    if not 1 <= blocks_per_chain <= max(d // 2, 1):
        raise ValueError(f"blocks_per_chain={blocks_per_chain} must be in [1, draws/2 = {d // 2}]")
    q_all = query_traces.reshape(c * d, -1)
    t_all = train_traces.reshape(c * d, -1)
    z_all = control.reshape(c * d) if control is not None else None
    pooled = estimate(q_all, t_all, z_all)
    edges = np.linspace(0, d, blocks_per_chain + 1).astype(int)
    per_block = torch.stack(
        [
            estimate(
                query_traces[i, a:b].reshape(b - a, -1),
                train_traces[i, a:b].reshape(b - a, -1),
                control[i, a:b] if control is not None else None,
            )
            for i in range(c)
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
    )
    n_blocks = per_block.shape[0]
    se = (
        per_block.std(0, unbiased=True) / math.sqrt(n_blocks)
        if n_blocks > 1
        else torch.full_like(pooled, math.nan)
    )
    return ClassInfluence(pooled, se, per_block, nq.long(), nt.long(), normalize)
