"""How many draws a run needs for its top-k lists to be resolved beyond Monte Carlo noise.

An item is "in the top-k for sure" (:func:`~bifrepro.sampling.uncertainty.topk_resolved`) when
its score exceeds the ``k+1``-th by more than ``z·√(se_i² + se_{k+1}²)``. Monte Carlo standard
errors shrink as ``1/√(chains × draws)`` while the scores stay put, so item ``i`` becomes resolved
once the run is ``m_i = (z·√(se_i² + se_{k+1}²) / gap_i)²`` times the measured run (never, if its
gap is not positive). The share resolved, averaged over queries, reaches ``target`` at the
``target``-quantile of these ``m_i``.
"""

from __future__ import annotations

import math

import torch

from bifrepro.sampling.uncertainty import ScoreUncertainty, bif_standard_errors

__all__ = ["draws_for_resolved", "draws_for_resolved_crossfit"]


def draws_for_resolved(
    uncertainty: ScoreUncertainty,
    target: float,
    k: int = 10,
    z: float = 1.96,
    num_chains: int | None = None,
) -> float:
    """Draws per chain for the mean ``topk_resolved`` share to reach ``target``.

    Args:
        uncertainty: scores ``[n_query, n_train]`` and standard errors measured with
            ``uncertainty.num_chains × uncertainty.num_draws`` draws (e.g. a pilot).
        target: wanted share in (0, 1].
        k, z: as in :func:`~bifrepro.sampling.uncertainty.topk_resolved`.
        num_chains: chains of the run being sized (default: the measured run's).

    Returns:
        The smallest whole number of draws per chain that reaches ``target`` (``math.inf`` if no
        number of draws can, e.g. tied scores); an estimate, as the measured scores are noisy.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1], got {target}")
    scores, se = uncertainty.scores.double(), uncertainty.se.double()
    if scores.dim() != 2:
        raise ValueError("draws_for_resolved needs per-item scores [n_query, n_train]")
    if not 1 <= k < scores.shape[1]:
        raise ValueError(f"k={k} must be in [1, n_train - 1 = {scores.shape[1] - 1}]")
    values, order = torch.sort(scores, dim=1, descending=True)
    se_sorted = torch.gather(se, 1, order)
    gap = values[:, :k] - values[:, k : k + 1]
    spread = z * torch.sqrt(se_sorted[:, :k] ** 2 + se_sorted[:, k : k + 1] ** 2)
    factor = torch.where(gap > 0, (spread / gap.clamp_min(1e-300)) ** 2, torch.inf).flatten()
    count = math.ceil(target * factor.numel() - 1e-9)
    m_star = float(torch.sort(factor).values[count - 1])
    if not math.isfinite(m_star):
        return math.inf
    chains = num_chains if num_chains is not None else uncertainty.num_chains
    draws = m_star * uncertainty.num_chains * uncertainty.num_draws / chains
    return float(max(1, math.floor(draws) + 1))  # resolved needs m strictly above m_i


def draws_for_resolved_crossfit(
    query: torch.Tensor,
    train: torch.Tensor,
    target: float,
    k: int = 10,
    z: float = 1.96,
    num_chains: int | None = None,
) -> float:
    """:func:`draws_for_resolved` without the winner's curse of a short run.

    Ranking items by noisy scores and measuring the gaps between the top-``k`` and the next item
    on the same scores inflates the gaps (the items that came out on top did so partly by noise),
    so a short pilot promises resolution too soon. Here each chain's draws are split in halves:
    the items are ranked on one half and their gaps measured on the other (both ways round, the
    larger requirement kept), with the standard errors of all draws. A gap that changes sign across halves
    never resolves.

    Args:
        query, train: ``[C, D, n]`` traces of the measured run (``D >= 8``).
        target, k, z, num_chains: as in :func:`draws_for_resolved`.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1], got {target}")
    d = query.shape[1]
    if d < 8:
        raise ValueError(f"need at least 8 draws per chain to split in halves, got {d}")
    full = bif_standard_errors(query, train)
    half = d // 2
    first = bif_standard_errors(query[:, :half], train[:, :half]).scores.double()
    second = bif_standard_errors(query[:, half:], train[:, half:]).scores.double()
    se = full.se.double()
    if not 1 <= k < se.shape[1]:
        raise ValueError(f"k={k} must be in [1, n_train - 1 = {se.shape[1] - 1}]")
    factors = []
    for rank_on, gap_on in ((first, second), (second, first)):
        order = torch.argsort(rank_on, dim=1, descending=True)
        values = torch.gather(gap_on, 1, order)
        se_sorted = torch.gather(se, 1, order)
        gap = values[:, :k] - values[:, k : k + 1]
        spread = z * torch.sqrt(se_sorted[:, :k] ** 2 + se_sorted[:, k : k + 1] ** 2)
        factors.append(torch.where(gap > 0, (spread / gap.clamp_min(1e-300)) ** 2, torch.inf))
    factor = torch.maximum(factors[0], factors[1]).flatten()
    count = math.ceil(target * factor.numel() - 1e-9)
    m_star = float(torch.sort(factor).values[count - 1])
    if not math.isfinite(m_star):
        return math.inf
    chains = num_chains if num_chains is not None else full.num_chains
    draws = m_star * full.num_chains * full.num_draws / chains
    return float(max(1, math.floor(draws) + 1))
