"""Full-batch gradient descent of many deep linear networks at once, with per-item weights.

Leave-one-out ground truth needs one retraining per removed item, from the same initialisation, to
every checkpoint. For deep linear networks on a few items all of them fit in one batched tensor
program: ensemble member ``e`` minimises ``(1/P)·Σ_k w_ek·ℓ_k`` with its own weight row ``w_e``.
Member 0 of :func:`leave_one_out_weights` is the real run (all weights 1); member ``i + 1`` drops
item ``i`` by setting its weight to 0 while keeping the ``1/P`` normalisation, so every other item
keeps exactly the gradient weight it had (the perturbation an influence function describes),
instead of being upweighted to ``1/(P-1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["WeightedTrainingResult", "train_deep_linear_weighted", "leave_one_out_weights"]


@dataclass
class WeightedTrainingResult:
    """What :func:`train_deep_linear_weighted` recorded.

    Attributes:
        steps: the checkpoint steps (number of GD updates applied; 0 = initialisation).
        losses: ``[E, n_ckpt, P]`` unweighted per-item loss of every member at every checkpoint.
        weights: ``weights[c][k]`` is ``[E, out_k, in_k]``: layer ``k`` of every member at
            checkpoint ``c``.
        map_steps: steps at which the end-to-end map of member 0 was recorded.
        maps: ``[len(map_steps), out, in]`` end-to-end map ``W_L ⋯ W_1`` of member 0.
    """

    steps: list[int]
    losses: torch.Tensor
    weights: list[list[torch.Tensor]]
    map_steps: list[int]
    maps: torch.Tensor

    def member_weights(self, checkpoint: int, member: int = 0) -> list[torch.Tensor]:
        """The layer matrices of one member at checkpoint index ``checkpoint``."""
        return [w[member].clone() for w in self.weights[checkpoint]]


def leave_one_out_weights(num_items: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[P + 1, P]`` item weights: row 0 all ones, row ``i + 1`` with item ``i`` removed."""
    w = torch.ones(num_items + 1, num_items, dtype=dtype)
    w[1:].fill_diagonal_(0.0)
    return w


def _end_to_end(ws: Sequence[torch.Tensor]) -> torch.Tensor:
    m = ws[0]
    for w in ws[1:]:
        m = w @ m
    return m


def train_deep_linear_weighted(
    init_weights: Sequence[torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    item_weights: torch.Tensor,
    lr: float,
    steps: int,
    record_steps: Sequence[int],
    map_every: int = 1,
    dtype: torch.dtype = torch.float64,
    progress: bool | None = None,
) -> WeightedTrainingResult:
    """Train ``E`` copies of a deep linear network by full-batch GD, each with its own item weights.

    Every member starts from ``init_weights`` (``[W_1, ..., W_L]``, ``W_k`` is ``[out_k, in_k]``).
    The per-item loss is ``½‖y - W_L⋯W_1 x‖²`` and member ``e`` descends ``(1/P)·Σ_k w_ek·ℓ_k``.

    Args:
        init_weights: the shared initialisation.
        inputs: ``[P, in]``; targets: ``[P, out]``.
        item_weights: ``[E, P]`` nonnegative weights (see :func:`leave_one_out_weights`).
        lr: learning rate; steps: number of updates.
        record_steps: steps (0..steps) at which losses and weights are kept.
        map_every: record member 0's end-to-end map every this many steps (for mode strengths).
        dtype: compute dtype (float64 by default: leave-one-out differences are small early on).
        progress: tqdm bar (``None``: only on a terminal).
    """
    if not lr > 0:
        raise ValueError(f"lr={lr} must be > 0")
    if steps < 0:
        raise ValueError(f"steps={steps} must be >= 0")
    rec = sorted(set(int(s) for s in record_steps))
    if rec and (rec[0] < 0 or rec[-1] > steps):
        raise ValueError(f"record_steps must lie in [0, {steps}], got {rec[0]}..{rec[-1]}")
    if item_weights.dim() != 2 or item_weights.shape[1] != inputs.shape[0]:
        raise ValueError(
            f"item_weights must be [E, {inputs.shape[0]}], got {tuple(item_weights.shape)}"
        )
    x = inputs.to(dtype)
    y = targets.to(dtype)
    iw = item_weights.to(dtype)
    n_members, n_items = iw.shape
    params = [
        w.detach().to(dtype).unsqueeze(0).repeat(n_members, 1, 1).requires_grad_(True)
        for w in init_weights
    ]
    rec_set = set(rec)
    losses, weights, map_steps, maps = [], [], [], []

    def item_losses() -> torch.Tensor:
        h = x.unsqueeze(0).expand(n_members, -1, -1)  # [E, P, in]
        for w in params:
            h = h @ w.transpose(1, 2)
        return 0.5 * (h - y).pow(2).sum(-1)  # [E, P]

    with logging_redirect_tqdm():
        disable = None if progress is None else not progress
        for t in tqdm(range(steps + 1), desc="GD (+ leave-one-out)", disable=disable, leave=False):
            ell = item_losses()
            if t in rec_set:
                losses.append(ell.detach().clone())
                weights.append([w.detach().clone() for w in params])
            if t % map_every == 0 or t == steps:
                map_steps.append(t)
                maps.append(_end_to_end([w[0].detach() for w in params]).clone())
            if t == steps:
                break
            objective = (iw * ell).sum() / n_items
            grads = torch.autograd.grad(objective, params)
            with torch.no_grad():
                for w, g in zip(params, grads, strict=True):
                    w.sub_(lr * g)
    loss_t = (
        torch.stack(losses, dim=1) if losses else torch.empty(n_members, 0, n_items, dtype=dtype)
    )
    return WeightedTrainingResult(
        steps=rec, losses=loss_t, weights=weights, map_steps=map_steps, maps=torch.stack(maps)
    )
