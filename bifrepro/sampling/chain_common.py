"""Pieces shared by the sequential and the batched chain loops: seeds, divergence, shape checks."""

from __future__ import annotations

import numpy as np
import torch

from bifrepro.sampling.diagnostics import SamplerDivergedError
from bifrepro.sgld_config import SGLDConfig

__all__ = ["chain_seed", "check_divergence", "check_loss_shape"]


def chain_seed(seed: int, chain: int, stream: int) -> int:
    """Independent, reproducible seeds per (master seed, chain, stream)."""
    return int(np.random.SeedSequence([seed, chain, stream]).generate_state(1, np.uint64)[0] >> 1)


def check_divergence(
    value: float, limit: float, config: SGLDConfig, chain: int, draw: int, what: str
) -> None:
    """Raise :class:`SamplerDivergedError` naming ``chain`` if ``value`` is non-finite or too large."""
    if not np.isfinite(value) or value > limit:
        raise SamplerDivergedError(
            f"SGLD diverged in chain {chain} at draw {draw}: {what} = {value:.4g} "
            f"(limit {limit:.4g}) with step_size ε={config.step_size:g}, localization "
            f"γ={config.localization:g}, nbeta nβ={config.nbeta:g}. Lower step_size or raise "
            "localization; `bifrepro.sampling.calibrate` picks a stable step size."
        )


def check_loss_shape(
    losses: torch.Tensor, batch_items: int, row_shape: tuple[int, ...], name: str
) -> None:
    """``losses`` must be ``[batch_items, *row_shape]`` (per item, or per token with a fixed T)."""
    if losses.shape[0] != batch_items or tuple(losses.shape[1:]) != tuple(row_shape):
        raise ValueError(
            f"loss_fn returned shape {tuple(losses.shape)} for a batch of {batch_items} items of "
            f"observable {name!r}; expected [{batch_items}{''.join(f', {s}' for s in row_shape)}] "
            "(per-item [B] or per-token [B, T] with a fixed T)"
        )
