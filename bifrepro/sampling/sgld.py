"""One SGLD / RMSProp-SGLD update on a list of parameters, in place (devinterp convention)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bifrepro.sampling.config import SGLDConfig

__all__ = ["SGLDState", "sgld_noise", "sgld_update", "sgld_update_with_noise"]


@dataclass
class SGLDState:
    """Per-chain mutable state: RMSProp's running squared-gradient average (if used)."""

    square_avg: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def init(cls, params: list[torch.Tensor], config: SGLDConfig) -> SGLDState:
        if config.preconditioner == "rmsprop":
            return cls([torch.zeros_like(p) for p in params])
        return cls([])


def sgld_noise(params: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """One standard normal draw per parameter, in order (the exact stream a chain consumes)."""
    return [
        torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) for p in params
    ]


@torch.no_grad()
def sgld_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    w_star: list[torch.Tensor],
    state: SGLDState,
    config: SGLDConfig,
    generator: torch.Generator,
) -> None:
    """``w ← w - (ε/2)·G·[nβ·g + γ·(w - w*)] + √(εG)·ξ``, ξ ~ N(0, I), for every parameter.

    ``G`` is 1 for plain SGLD and ``1/(√V + eps)`` for RMSProp-SGLD, with
    ``V ← αV + (1-α)·g²`` updated from the minibatch loss gradient ``g`` first.
    """
    sgld_update_with_noise(params, grads, w_star, state, config, sgld_noise(params, generator))


@torch.no_grad()
def sgld_update_with_noise(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    w_star: list[torch.Tensor],
    state: SGLDState,
    config: SGLDConfig,
    noise: list[torch.Tensor],
) -> None:
    """:func:`sgld_update` with the standard normal draws ``noise`` given (overwritten in place).

    Every operation is elementwise, so stacked chains (a leading chain dimension on ``params``,
    ``grads``, ``noise`` and the RMSProp state, with ``w_star`` broadcast) update exactly as each
    chain would on its own.
    """
    eps = config.step_size
    drift = torch._foreach_mul(grads, config.nbeta)
    if config.localization > 0:
        diff = torch._foreach_sub(params, w_star)
        torch._foreach_add_(drift, diff, alpha=config.localization)
    if config.preconditioner == "rmsprop":
        v = state.square_avg
        torch._foreach_mul_(v, config.rmsprop_alpha)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - config.rmsprop_alpha)
        precond = torch._foreach_sqrt(v)
        torch._foreach_add_(precond, config.rmsprop_eps)
        torch._foreach_reciprocal_(precond)
        torch._foreach_mul_(drift, precond)
        torch._foreach_sqrt_(precond)
        torch._foreach_mul_(noise, precond)
    torch._foreach_add_(params, drift, alpha=-eps / 2)
    torch._foreach_add_(params, noise, alpha=math.sqrt(eps))
