"""Pieces shared by the sequential and the batched chain loops: seeds, divergence, shape checks,
the no-autograd (and optionally bfloat16) context of the observables' forward passes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from bifrepro.sampling.diagnostics import SamplerDivergedError
from bifrepro.sgld_config import SGLDConfig

__all__ = ["chain_seed", "check_divergence", "check_loss_shape", "observable_forward"]

#: Device types ``torch.autocast`` runs bfloat16 forwards on here (tested on CPU; CUDA).
_AUTOCAST_DEVICES = ("cpu", "cuda")


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


@contextlib.contextmanager
def observable_forward(device: torch.device, observable_dtype: str = "float32") -> Iterator[None]:
    """Context of the per-draw loss evaluation of observed items.

    ``torch.inference_mode`` (cheaper than ``no_grad``: no version counters or views tracked);
    safe because its outputs are only copied into float32 buffers, never used by autograd.
    With ``observable_dtype="bfloat16"`` the forward also runs under
    ``torch.autocast(device.type, torch.bfloat16)``; the losses are stored as float32 anyway.
    """
    with torch.inference_mode():
        if observable_dtype == "float32":
            yield
            return
        if device.type not in _AUTOCAST_DEVICES:
            raise ValueError(
                f"observable_dtype={observable_dtype!r} runs on {_AUTOCAST_DEVICES} devices only, "
                f"the model is on {device.type!r}; use observable_dtype='float32'"
            )
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
