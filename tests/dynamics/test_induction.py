"""Induction score: log V for a perfect copier, 0 for a model that ignores its context."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bifrepro.dynamics.induction import induction_score
from bifrepro.dynamics.repeated_tokens import repeated_random_tokens

V = 50  # vocabulary of the hand-built models


class _Copier(nn.Module):
    """A perfect induction head: after token A, predict what followed A's previous occurrence;
    with no previous occurrence, a uniform guess over the vocabulary."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, V)
        for r in range(b):
            ids = input_ids[r].tolist()
            for s in range(t):
                earlier = [j for j in range(s) if ids[j] == ids[s]]
                if earlier:
                    logits[r, s, ids[earlier[-1] + 1]] = 60.0
        return SimpleNamespace(logits=logits + 0 * self.dummy)


class _Uniform(_Copier):
    """Ignores the context altogether."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, V) + 0 * self.dummy)


def test_induction_score_of_a_perfect_copier_is_log_vocab() -> None:
    ids, mask = repeated_random_tokens(torch.arange(1, V), 8, 10, bos_id=0, seed=0)
    res = induction_score(_Copier(), ids, mask, half_len=10, batch_size=3)
    # first copy: nothing to copy from -> uniform, log V per token; second: copied, ~0
    assert res.first_loss == pytest.approx(math.log(V), abs=1e-5)
    assert res.second_loss == pytest.approx(0.0, abs=1e-5)
    assert res.score == pytest.approx(math.log(V), abs=1e-4)
    # the first token of the second copy cannot be copied (its predecessor never occurred before)
    assert res.per_position[10] == pytest.approx(math.log(V), abs=1e-5)
    assert len(res.per_position) == 20
    assert res.to_metrics()["induction/score"] == res.score


def test_induction_score_without_context_use_is_zero() -> None:
    ids, mask = repeated_random_tokens(torch.arange(1, V), 4, 8, bos_id=0, seed=1)
    res = induction_score(_Uniform(), ids, mask, half_len=8)
    assert res.first_loss == pytest.approx(math.log(V), abs=1e-5)
    assert res.score == pytest.approx(0.0, abs=1e-6)
