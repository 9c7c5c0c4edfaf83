"""One SGLD / RMSProp-SGLD / SGHMC update on a list of parameters, in place (devinterp convention)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bifrepro.sampling.config import SGLDConfig

__all__ = [
    "SGLDState",
    "adapts_preconditioner",
    "sgld_noise",
    "sgld_update",
    "sgld_update_with_noise",
]


@dataclass
class SGLDState:
    """Per-chain mutable state: RMSProp's running squared-gradient average (if used) and the
    SGHMC momentum (if used).

    For ``"rmsprop_frozen"`` whether ``V`` is still updated follows from the step number
    (:func:`adapts_preconditioner`), so a resumed chain needs only ``V`` and the momentum.
    """

    square_avg: list[torch.Tensor] = field(default_factory=list)
    #: SGHMC momentum v = the last step's displacement w_k - w_{k-1} (zero at w*); empty for SGLD.
    momentum: list[torch.Tensor] = field(default_factory=list)
    #: Scratch copy of the weights before an SGHMC step (no state: recomputed every step).
    _previous: list[torch.Tensor] = field(default_factory=list, repr=False)
    #: ``(G, √G)`` of a frozen ``V``, computed on the first non-adapting step (speed only:
    #: the same numbers as recomputing them); cleared by any step that updates ``V``.
    frozen: tuple[list[torch.Tensor], list[torch.Tensor]] | None = field(default=None, repr=False)

    @classmethod
    def init(cls, params: list[torch.Tensor], config: SGLDConfig) -> SGLDState:
        square_avg = [torch.zeros_like(p) for p in params] if config.preconditioned else []
        if config.has_momentum:
            return cls(square_avg, [torch.zeros_like(p) for p in params])
        return cls(square_avg)


def adapts_preconditioner(config: SGLDConfig, step: int) -> bool:
    """Whether SGLD step ``step`` (1-based) updates RMSProp's ``V`` before using it.

    Adaptive RMSProp updates it on every step; ``"rmsprop_frozen"`` on the ``burn_in`` steps only,
    so every recorded draw comes from one fixed preconditioner.
    """
    return config.preconditioner != "rmsprop_frozen" or step <= config.burn_in


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
    *,
    adapt: bool = True,
) -> None:
    """``w ← w - (ε/2)·G·[nβ·g + γ·(w - w*)] + √(εG)·ξ``, ξ ~ N(0, I), for every parameter.

    ``G`` is 1 for plain SGLD and ``1/(√V + eps)`` for RMSProp-SGLD, with
    ``V ← αV + (1-α)·g²`` updated from the minibatch loss gradient ``g`` first when ``adapt``
    (pass :func:`adapts_preconditioner`; ``False`` keeps ``V``, i.e. a frozen preconditioner).
    """
    noise = sgld_noise(params, generator)
    sgld_update_with_noise(params, grads, w_star, state, config, noise, adapt=adapt)


@torch.no_grad()
def sgld_update_with_noise(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    w_star: list[torch.Tensor],
    state: SGLDState,
    config: SGLDConfig,
    noise: list[torch.Tensor],
    *,
    adapt: bool = True,
) -> None:
    """:func:`sgld_update` with the standard normal draws ``noise`` given (overwritten in place).

    Every operation is elementwise, so stacked chains (a leading chain dimension on ``params``,
    ``grads``, ``noise`` and the RMSProp state and momentum, with ``w_star`` broadcast) update
    exactly as each chain would on its own.

    SGHMC (``config.integrator == "sghmc"``, friction α) computes
    ``w ← w + (1-α)·v - (ε/2)·G·drift + √(αεG)·ξ`` and then ``v ← w_new - w_old``: the momentum
    is the step actually taken (exact whenever a weight changes by less than half its size), and
    for α = 1 the operations are SGLD's, in SGLD's order (plus an exact ``w + 0·v``), so the
    chain is bit-for-bit the SGLD chain.
    """
    eps = config.step_size
    noise_scale = math.sqrt(eps)
    if config.has_momentum:
        noise_scale = math.sqrt(config.friction * eps)
        if not state._previous:
            state._previous = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(state._previous, params)
    drift = torch._foreach_mul(grads, config.nbeta)
    if config.localization > 0:
        diff = torch._foreach_sub(params, w_star)
        torch._foreach_add_(drift, diff, alpha=config.localization)
    if config.preconditioned:
        precond, root = _preconditioner(state, config, grads, adapt)
        torch._foreach_mul_(drift, precond)
        torch._foreach_mul_(noise, root)
    if config.has_momentum:  # after the drift, which is evaluated at the current weights
        torch._foreach_add_(params, state.momentum, alpha=1.0 - config.friction)
    torch._foreach_add_(params, drift, alpha=-eps / 2)
    torch._foreach_add_(params, noise, alpha=noise_scale)
    if config.has_momentum:
        torch._foreach_copy_(state.momentum, params)
        torch._foreach_sub_(state.momentum, state._previous)


def _preconditioner(
    state: SGLDState, config: SGLDConfig, grads: list[torch.Tensor], adapt: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``G = 1/(√V + eps)`` and ``√G``, after updating ``V`` when ``adapt`` (else cached)."""
    if not adapt and state.frozen is not None:
        return state.frozen
    v = state.square_avg
    if adapt:
        torch._foreach_mul_(v, config.rmsprop_alpha)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - config.rmsprop_alpha)
    precond = torch._foreach_sqrt(v)
    torch._foreach_add_(precond, config.rmsprop_eps)
    torch._foreach_reciprocal_(precond)
    root = torch._foreach_sqrt(precond)
    state.frozen = None if adapt else (precond, root)
    return precond, root
