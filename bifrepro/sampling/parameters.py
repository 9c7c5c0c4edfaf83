"""Which parameters SGLD samples: those with ``requires_grad`` (buffers stay at w*)."""

from __future__ import annotations

import torch

__all__ = ["sampled_parameters", "count_sampled_parameters"]


def sampled_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the sampler moves (``requires_grad=True``), in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def count_sampled_parameters(model: torch.nn.Module) -> int:
    """Number of sampled parameters ``d`` (the dimension the health rules' bounds scale with)."""
    return sum(p.numel() for p in sampled_parameters(model))
