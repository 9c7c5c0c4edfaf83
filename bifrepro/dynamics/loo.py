"""Leave-one-out ground truth for influence: retrain without an item, compare losses.

The influence of training item ``i`` on query ``j`` at checkpoint ``t`` is
``ℓ_j(θ_t without i) - ℓ_j(θ_t with i)``: positive when removing ``i`` makes ``j`` worse, i.e.
``i`` helped (the project's sign convention). Both runs start from the same initialisation and take
the same number of steps, so the difference is the effect of ``i`` on the training trajectory.
"""

from __future__ import annotations

import torch

__all__ = ["leave_one_out_influence"]


def leave_one_out_influence(
    losses_with: torch.Tensor, losses_without: torch.Tensor
) -> torch.Tensor:
    """``[T, n_query, n_train]`` leave-one-out influence from recorded losses.

    Args:
        losses_with: ``[T, n_query]`` query losses of the run trained on every item.
        losses_without: ``[n_train, T, n_query]``; row ``i`` is the run trained without item ``i``.

    Returns:
        ``out[t, j, i] = losses_without[i, t, j] - losses_with[t, j]`` (positive = ``i`` helped ``j``).
    """
    if losses_with.dim() != 2 or losses_without.dim() != 3:
        raise ValueError(
            "expected losses_with [T, n_query] and losses_without [n_train, T, n_query]"
        )
    if losses_without.shape[1:] != losses_with.shape:
        raise ValueError(
            f"shape mismatch: losses_with {tuple(losses_with.shape)} vs losses_without "
            f"{tuple(losses_without.shape)}"
        )
    return (losses_without - losses_with.unsqueeze(0)).permute(1, 2, 0).contiguous()
