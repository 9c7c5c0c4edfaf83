"""Standard errors of BIF scores, and how many draws a target precision needs.

A BIF score is a covariance (or Pearson correlation) estimated from ``C × D`` autocorrelated SGLD
draws, so it has Monte Carlo error. Two estimators of that error:

``batch_means`` (default)
    Each score is (to first order) the mean over draws of its *influence series*: for the
    covariance ``ψ_t = (x_t - x̄)(y_t - ȳ) - Cov``; for the correlation, with standardised traces
    ``x̃, ỹ``, ``ψ_t = x̃_t ỹ_t - r·(x̃_t² + ỹ_t²)/2`` (the delta method). The draws of every chain
    are cut into consecutive batches of ``L`` draws (never crossing chains); the variance of the
    batch means of ψ, divided by the number of batches, estimates the variance of the score and
    accounts for autocorrelation shorter than ``L`` and for chains that disagree. For iid Gaussian
    traces it recovers the textbook ``(1 - r²)/√N`` and ``√((σ_x²σ_y² + Cov²)/N)``.
``chains``
    The score computed on each chain alone; the standard error is the spread across chains,
    ``sd_c / (c4·√C)`` (``c4`` removes the small-sample bias of a standard deviation). Assumption-free but noisy with few chains (``C - 1`` degrees of freedom).

Monte Carlo standard errors shrink as ``1/√draws``, so :func:`draws_needed` extrapolates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from bifrepro.stats import detrend_chains, trace_association

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ScoreUncertainty",
    "bif_standard_errors",
    "draws_needed",
    "topk_with_uncertainty",
    "topk_resolved",
]

_METHODS = ("batch_means", "chains")
_BLOCK_BYTES = 128 * 2**20


@dataclass
class ScoreUncertainty:
    """BIF scores with their Monte Carlo standard errors (same layout as ``bif_scores``)."""

    #: ``[n_query(, T_q), n_train(, T_t)]`` scores (positive = helpful).
    scores: torch.Tensor
    #: Standard errors of ``scores``, same shape.
    se: torch.Tensor
    #: "correlation" or "covariance".
    normalize: str
    #: "batch_means" or "chains".
    method: str
    num_chains: int
    num_draws: int
    #: Number of batches (batch means) or chains (chains) the spread was taken over.
    num_batches: int

    @property
    def z(self) -> torch.Tensor:
        """``scores / se``: how many standard errors each score is away from zero."""
        return self.scores / self.se.clamp_min(1e-300)

    def draws_needed(self, target: float, quantile: float = 0.5) -> int:
        """Draws per chain for the ``quantile`` of the standard errors to reach ``target``."""
        return draws_needed(self.se, target, self.num_draws, quantile)

    def summary(self) -> str:
        """One line: estimator, typical and worst standard error."""
        se = self.se.flatten().double()
        return (
            f"{self.normalize} SE ({self.method}, {self.num_batches} batches, "
            f"{self.num_chains}×{self.num_draws} draws): median {float(se.median()):.3g}, "
            f"max {float(se.max()):.3g}"
        )


def _scores(query: torch.Tensor, train: torch.Tensor, normalize: str) -> torch.Tensor:
    """The scores of :func:`~bifrepro.attribution.bif_scores` (``+Cov``/correlation), in float64."""
    return trace_association(query, train, normalize, dtype=torch.float64, names=("query", "train"))


def _standardise(x: torch.Tensor, normalize: str) -> torch.Tensor:
    """Columns centred (float64) and, for correlation, scaled to unit population variance."""
    xc = x - x.mean(0, keepdim=True)
    if normalize == "correlation":
        sd = xc.pow(2).mean(0, keepdim=True).sqrt()
        xc = torch.where(sd > 0, xc / sd.clamp_min(1e-300), torch.zeros_like(xc))
    return xc


def bif_standard_errors(
    query_traces: torch.Tensor,
    train_traces: torch.Tensor,
    normalize: str = "correlation",
    method: str = "batch_means",
    batch_length: int | None = None,
    detrend: bool = False,
    block_size: int | None = None,
) -> ScoreUncertainty:
    """BIF scores and their standard errors (see the module docstring for the estimators).

    Args:
        query_traces: ``[C, D, n_query(, T_q)]`` query losses per draw.
        train_traces: ``[C, D, n_train(, T_t)]`` training losses on the same draws.
        normalize: "correlation" or "covariance" (as in :func:`~bifrepro.attribution.bif_scores`).
        method: "batch_means" or "chains".
        batch_length: draws per batch for batch means (default ``⌊√(C·D)⌋``, at most ``D/2``;
            it should exceed the traces' autocorrelation time).
        detrend: remove per-chain linear trends first (:func:`~bifrepro.sampling.detrend_traces`).
        block_size: training columns processed at once (memory bound).

    Returns:
        :class:`ScoreUncertainty` whose ``scores`` equal ``bif_scores(...)`` of the same traces.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if normalize not in ("correlation", "covariance"):
        raise ValueError(f"normalize must be 'correlation' or 'covariance', got {normalize!r}")
    if query_traces.shape[:2] != train_traces.shape[:2]:
        raise ValueError(
            "query and train traces must come from the same draws: got "
            f"{tuple(query_traces.shape[:2])} vs {tuple(train_traces.shape[:2])}"
        )
    if detrend:
        query_traces, train_traces = detrend_chains(query_traces), detrend_chains(train_traces)
    c, d = query_traces.shape[:2]
    q_shape, t_shape = tuple(query_traces.shape[2:]), tuple(train_traces.shape[2:])
    scores = _scores(query_traces, train_traces, normalize)

    if method == "chains":
        if c < 2:
            raise ValueError("method='chains' needs at least 2 chains")
        per_chain = torch.stack(
            [_scores(query_traces[i : i + 1], train_traces[i : i + 1], normalize) for i in range(c)]
        )
        # c4 makes the sample standard deviation unbiased for Gaussian spread (0.92 for C = 4).
        c4 = math.sqrt(2.0 / (c - 1)) * math.exp(math.lgamma(c / 2) - math.lgamma((c - 1) / 2))
        se = per_chain.std(0, unbiased=True) / (c4 * math.sqrt(c))
        return ScoreUncertainty(scores, se, normalize, method, c, d, c)

    if batch_length is None:
        batch_length = max(1, min(int(math.sqrt(c * d)), d // 2))
    if not 1 <= batch_length <= d:
        raise ValueError(f"batch_length must be in [1, {d}], got {batch_length}")
    per_chain = d // batch_length
    nb = c * per_chain
    if nb < 2:
        raise ValueError(
            f"batch means need at least 2 batches: {c} chain(s) × {d} draws with batch_length "
            f"{batch_length} give {nb}; lower batch_length or use method='chains'"
        )
    n = c * d
    q = _standardise(query_traces.double().reshape(n, -1), normalize)
    t_all = train_traces.reshape(n, -1)
    flat_scores = scores.reshape(q.shape[1], t_all.shape[1])
    # Whole batches at the end of every chain (the earliest draws are dropped if D % L != 0).
    keep = torch.arange(d - per_chain * batch_length, d)
    qb = q.reshape(c, d, -1)[:, keep].reshape(nb, batch_length, -1)
    if block_size is None:
        block_size = max(1, _BLOCK_BYTES // (8 * (n + 4 * q.shape[1])))
    se = torch.empty_like(flat_scores)
    cov_scale = n / (n - 1) if normalize == "covariance" else 1.0
    for start in range(0, t_all.shape[1], block_size):
        stop = min(start + block_size, t_all.shape[1])
        tb = _standardise(t_all[:, start:stop].double(), normalize)
        tb = tb.reshape(c, d, -1)[:, keep].reshape(nb, batch_length, -1)
        r = flat_scores[:, start:stop] / cov_scale  # population-normalised estimate
        total = torch.zeros_like(r)
        total_sq = torch.zeros_like(r)
        for b in range(nb):
            psi = qb[b].T @ tb[b] / batch_length  # batch mean of x̃ỹ
            if normalize == "correlation":
                qsq = qb[b].pow(2).mean(0)
                tsq = tb[b].pow(2).mean(0)
                psi -= 0.5 * r * (qsq.unsqueeze(1) + tsq.unsqueeze(0))
            else:
                psi -= r
            total += psi
            total_sq += psi * psi
        var = (total_sq - total * total / nb) / (nb - 1) / nb
        se[:, start:stop] = var.clamp_min(0).sqrt() * cov_scale
    return ScoreUncertainty(scores, se.reshape(*q_shape, *t_shape), normalize, method, c, d, nb)


def draws_needed(
    se: torch.Tensor | float | ScoreUncertainty,
    target: float,
    num_draws: int | None = None,
    quantile: float = 0.5,
) -> int:
    """Draws per chain needed for the standard error to reach ``target``.

    Monte Carlo errors scale as ``1/√draws``, so ``D_needed = D·(se/target)²``, with ``se`` the
    ``quantile`` of the given standard errors (0.5: the typical score; 1.0: every score).

    Args:
        se: standard errors (tensor or float) measured with ``num_draws`` draws per chain, or a
            :class:`ScoreUncertainty` (which knows its draws).
        target: wanted standard error (> 0).
        num_draws: draws per chain behind ``se`` (taken from a :class:`ScoreUncertainty`).
        quantile: which standard error must reach the target.
    """
    if isinstance(se, ScoreUncertainty):
        num_draws = se.num_draws if num_draws is None else num_draws
        se = se.se
    if num_draws is None:
        raise ValueError("num_draws is required unless se is a ScoreUncertainty")
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target}")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    values = torch.as_tensor(se, dtype=torch.float64).flatten()
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        raise ValueError("no finite standard errors")
    level = float(torch.quantile(values, quantile))
    needed = num_draws * (level / target) ** 2
    # A relative tolerance keeps float32 round-off from adding a draw (0.2f/0.1 -> 4.00000012).
    return max(1, math.ceil(needed * (1 - 1e-6)))


def topk_with_uncertainty(
    uncertainty: ScoreUncertainty, query: int, k: int = 10, z: float = 1.96
) -> pd.DataFrame:
    """The top-``k`` training items of one query, with error bars and which ranks are resolved.

    Columns: ``rank``, ``train_index``, ``score``, ``se``, ``lower``/``upper`` (± z·se),
    ``distinct_from_next`` (its score exceeds the next-ranked one by more than
    ``z·√(se_i² + se_next²)``) and ``in_topk_for_sure`` (it exceeds the ``k+1``-th that way, so its
    membership in the top-k is not Monte Carlo noise).
    """
    scores, se = uncertainty.scores, uncertainty.se
    if scores.dim() != 2:
        raise ValueError("topk_with_uncertainty needs per-item scores [n_query, n_train]")
    row, row_se = scores[query].double(), se[query].double()
    k = min(k, row.numel())
    order = torch.argsort(row, descending=True)
    top = order[: k + 1]
    s, e = row[top], row_se[top]

    def distinct(i: int, j: int) -> bool:
        return bool(s[i] - s[j] > z * math.sqrt(float(e[i] ** 2 + e[j] ** 2)))

    last = min(k, top.numel() - 1)
    rows = []
    for i in range(k):
        has_next = i + 1 < top.numel()
        rows.append(
            {
                "rank": i + 1,
                "train_index": int(top[i]),
                "score": float(s[i]),
                "se": float(e[i]),
                "lower": float(s[i] - z * e[i]),
                "upper": float(s[i] + z * e[i]),
                "distinct_from_next": distinct(i, i + 1) if has_next else True,
                "in_topk_for_sure": distinct(i, last) if last > i else True,
            }
        )
    import pandas as pd

    return pd.DataFrame(rows)


def topk_resolved(uncertainty: ScoreUncertainty, k: int = 10, z: float = 1.96) -> torch.Tensor:
    """Per query, the share of its top-``k`` training items that are in the top-k for sure.

    An item is in the top-k for sure when its score exceeds the ``k+1``-th ranked score by more
    than ``z·√(se_i² + se_{k+1}²)`` (as ``in_topk_for_sure`` of :func:`topk_with_uncertainty`,
    for every query at once): 1.0 means the top-k list is not Monte Carlo noise. ``[n_query]``.
    """
    scores, se = uncertainty.scores.double(), uncertainty.se.double()
    if scores.dim() != 2:
        raise ValueError("topk_resolved needs per-item scores [n_query, n_train]")
    n_train = scores.shape[1]
    if not 1 <= k < n_train:
        raise ValueError(f"k={k} must be in [1, n_train - 1 = {n_train - 1}]")
    values, order = torch.sort(scores, dim=1, descending=True)
    top, nxt = values[:, :k], values[:, k : k + 1]
    se_sorted = torch.gather(se, 1, order)
    margin = z * torch.sqrt(se_sorted[:, :k] ** 2 + se_sorted[:, k : k + 1] ** 2)
    return ((top - nxt) > margin).double().mean(dim=1)
