"""Shared pieces of the causal-LM tests: a tiny architecture, learnable sequences, one thread."""

from __future__ import annotations

import pytest
import torch

#: A tiny embedded architecture (fields of CausalLMConfig).
TINY = dict(
    hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=16
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are dominated by thread synchronisation on a busy machine: one thread.

    Import it into a test module to use it there (autouse).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def lm_sequences(n: int = 24, t: int = 8, vocab: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of a repeating pattern (learnable), some padded."""
    base = torch.arange(t)
    ids = torch.stack([(base * (1 + i % 3) + i) % (vocab - 2) + 2 for i in range(n)])
    mask = torch.ones_like(ids)
    mask[::5, -3:] = 0
    ids[mask == 0] = 0
    return ids, mask
