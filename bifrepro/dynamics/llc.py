"""Local learning coefficient from the SGLD draws the BIF already made (Lau et al.).

devinterp's estimator ``λ̂ = nβ·(E_w[L_n(w)] − L_n(w*))`` with ``L_n`` the mean training loss
recorded on every draw: no extra forward passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LLCEstimate", "estimate_llc"]


@dataclass
class LLCEstimate:
    """``λ̂ = nβ·(E[L_n] − L_n(w*))`` per chain and pooled.

    Attributes:
        mean: mean of the per-chain estimates.
        std_error: their standard deviation over ``sqrt(num_chains)`` (NaN for one chain).
        per_chain: one estimate per chain.
        init_loss: ``L_n(w*)``.
    """

    mean: float
    std_error: float
    per_chain: list[float]
    init_loss: float


def estimate_llc(
    trace: torch.Tensor,
    init_losses: torch.Tensor,
    nbeta: float,
    weights: torch.Tensor | None = None,
) -> LLCEstimate:
    """Local learning coefficient from recorded training losses (no extra forward passes).

    Args:
        trace: ``[C, D, n(, T)]`` losses of training items (or tokens) on every draw.
        init_losses: ``[n(, T)]`` the same losses at w*.
        nbeta: the sampler's ``nβ``.
        weights: ``[n(, T)]`` weights of the items in ``L_n`` (normalised to sum 1; default
            uniform). For per-token traces of sequences use ``mask / tokens_per_sequence``, so
            ``L_n`` is the mean over sequences of the mean token loss — the SGLD objective.
    """
    if trace.dim() < 3 or tuple(trace.shape[2:]) != tuple(init_losses.shape):
        raise ValueError(
            f"trace {tuple(trace.shape)} and init_losses {tuple(init_losses.shape)} do not match"
        )
    w = torch.ones(init_losses.shape, dtype=torch.float64) if weights is None else weights.double()
    if tuple(w.shape) != tuple(init_losses.shape) or not float(w.sum()) > 0:
        raise ValueError("weights must match init_losses and have a positive sum")
    w = (w / w.sum()).reshape(-1)
    c, d = trace.shape[:2]
    per_draw = trace.reshape(c, d, -1).double() @ w  # [C, D]
    l0 = float(init_losses.reshape(-1).double() @ w)
    per_chain = (nbeta * (per_draw.mean(1) - l0)).tolist()
    mean = float(np.mean(per_chain))
    se = float(np.std(per_chain, ddof=1) / math.sqrt(c)) if c > 1 else math.nan
    return LLCEstimate(mean, se, [float(x) for x in per_chain], l0)
