"""Induction score (Olsson et al. 2022): does a language model copy from its context?

Sequences ``[BOS] r r`` of ``L`` random tokens repeated once
(:func:`~bifrepro.dynamics.repeated_tokens.repeated_random_tokens`). A model with induction heads
predicts the second copy from the first, so the mean loss on the second occurrence falls below the
first; the score is ``loss(first) − loss(second)`` in nats (0 without in-context copying; the first
position of each half is left out because nothing can predict it from context).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bifrepro.attribution.token_bif import token_losses

__all__ = ["InductionScore", "induction_score"]


@dataclass
class InductionScore:
    """Loss on the first and second copy of repeated random tokens (nats per token).

    Attributes:
        first_loss: mean loss on ``r_2..r_L`` (first copy).
        second_loss: mean loss on ``r_2..r_L`` (second copy).
        score: ``first_loss − second_loss`` (> 0: the model copies from context).
        per_position: ``[2L]`` mean loss at each predicted position of the ``r r`` part.
    """

    first_loss: float
    second_loss: float
    score: float
    per_position: list[float]

    def to_metrics(self, prefix: str = "induction/") -> dict[str, float]:
        return {
            f"{prefix}score": self.score,
            f"{prefix}first_loss": self.first_loss,
            f"{prefix}second_loss": self.second_loss,
        }


@torch.no_grad()
def induction_score(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    half_len: int,
    token_loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
    batch_size: int = 64,
) -> InductionScore:
    """Induction score of ``model`` on sequences from
    :func:`~bifrepro.dynamics.repeated_tokens.repeated_random_tokens`.

    ``token_loss_fn(model, [ids, mask]) -> [B, T]`` per-token losses indexed by the predicted
    token (default :func:`bifrepro.attribution.token_bif.token_losses`). The repeated part is
    the last ``2·half_len`` positions (so sequences with or without BOS both work).
    """
    fn = token_loss_fn or token_losses
    t = input_ids.shape[1]
    if t < 2 * half_len:
        raise ValueError(f"sequences of {t} tokens cannot hold two copies of {half_len} tokens")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    try:
        for start in range(0, len(input_ids), batch_size):
            ids = input_ids[start : start + batch_size].to(device)
            mask = attention_mask[start : start + batch_size].to(device)
            rows.append(fn(model, [ids, mask]).float().cpu())
    finally:
        model.train(was_training)
    losses = torch.cat(rows)[:, t - 2 * half_len :]  # [N, 2L]
    per_pos = losses.mean(0)
    first = float(losses[:, 1:half_len].mean())
    second = float(losses[:, half_len + 1 :].mean())
    return InductionScore(first, second, first - second, [float(x) for x in per_pos])
