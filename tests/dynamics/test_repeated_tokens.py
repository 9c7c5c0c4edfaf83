"""Synthetic repeated-token sequences: probes, the training-batch transform, repeated queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bifrepro.dynamics.repeated_tokens import (
    RandomRepeats,
    frequent_token_ids,
    repeat_halves,
    repeated_random_tokens,
)


def test_repeated_random_tokens_layout() -> None:
    cand = torch.arange(2, 40)
    ids, mask = repeated_random_tokens(cand, 5, 6, bos_id=0, seed=3)
    assert ids.shape == (5, 13) and bool(mask.all())
    assert (ids[:, 0] == 0).all()
    assert torch.equal(ids[:, 1:7], ids[:, 7:])
    for row in ids[:, 1:7]:
        assert len(set(row.tolist())) == 6 and set(row.tolist()) <= set(cand.tolist())
    again, _ = repeated_random_tokens(cand, 5, 6, bos_id=0, seed=3)
    other, _ = repeated_random_tokens(cand, 5, 6, bos_id=0, seed=4)
    assert torch.equal(ids, again) and not torch.equal(ids, other)
    no_bos, _ = repeated_random_tokens(cand, 2, 6, bos_id=None)
    assert no_bos.shape == (2, 12)
    with pytest.raises(ValueError, match="candidate"):
        repeated_random_tokens(torch.arange(3), 1, 6, bos_id=0)


def _repeats(row: list[int], min_half: int) -> list[tuple[int, int]]:
    """Every (start, half) with row[start:start+half] == row[start+half:start+2·half]."""
    n = len(row)
    return [
        (a, h)
        for h in range(min_half, n // 2 + 1)
        for a in range(1, n - 2 * h + 1)
        if row[a : a + h] == row[a + h : a + 2 * h]
    ]


def test_random_repeats_batch_transform() -> None:
    cand = torch.arange(10, 60)
    ids = torch.arange(8 * 21).reshape(8, 21) % 7
    mask = torch.ones_like(ids)
    aug = RandomRepeats(cand, 1.0, bos_id=0, pad_id=1, seed=5, distinct=True, min_half=3)
    new, new_mask = aug(3, ids, mask)
    assert torch.equal(new[:, 0], torch.zeros(8, dtype=torch.long)) and bool(new_mask.all())
    assert set(new[:, 1:].unique().tolist()) <= set(cand.tolist())
    # every sequence holds a repeated span of >= 3 tokens; its length and position vary
    found = [_repeats(r.tolist(), 3) for r in new]
    assert all(found)
    many, _ = aug.sample(60, 21, torch.Generator().manual_seed(0))
    halves = {max(h for _, h in _repeats(r.tolist(), 3)) for r in many}
    starts = {min(a for a, _ in _repeats(r.tolist(), 3)) for r in many}
    assert len(halves) >= 4 and len(starts) >= 4 and max(halves) <= 10
    # max_half + tile: a short span tiled to the end of the sequence (period <= 4 from some point on)
    tiled, _ = RandomRepeats(cand, 1.0, 0, 1, min_half=3, max_half=4, tile=True).sample(
        20, 21, torch.Generator().manual_seed(1)
    )
    for r in tiled.tolist():
        assert any(
            all(r[p] == r[p - h] for p in range(a + h, 21)) and 21 - a >= 2 * h
            for h in (3, 4)
            for a in range(1, 21 - 2 * h + 1)
        )
    # a function of (seed, step) only: the same step gives the same batch, another step not
    assert torch.equal(aug(3, ids, mask)[0], new) and not torch.equal(aug(4, ids, mask)[0], new)
    half = RandomRepeats(cand, 0.5, 0, 1, seed=0)
    changed = [(half(s, ids, mask)[0] != ids).any(1).float().mean().item() for s in range(40)]
    assert 0.35 < float(np.mean(changed)) < 0.65
    assert RandomRepeats(cand, 0.0, 0, 1)(0, ids, mask)[0] is ids
    # independent draws (the training default) may reuse tokens: 3 candidates suffice
    few = torch.arange(10, 13)
    iid, _ = RandomRepeats(few, 1.0, 0, 1)(0, ids, mask)
    assert set(iid[:, 1:].unique().tolist()) <= {10, 11, 12}
    with pytest.raises(ValueError, match="distinct"):
        RandomRepeats(few, 1.0, 0, 1, distinct=True)(0, ids, mask)
    with pytest.raises(ValueError, match="too short"):
        RandomRepeats(cand, 1.0, 0, 1, min_half=12)(0, ids, mask)
    with pytest.raises(ValueError, match="fraction"):
        RandomRepeats(cand, 1.5, 0, 1)


def test_frequent_token_ids() -> None:
    ids = torch.tensor([[0, 5, 5, 5, 7, 7, 9, 1], [0, 7, 3, 3, 3, 3, 1, 1]])
    mask = torch.tensor([[1] * 7 + [0], [1] * 8])
    assert frequent_token_ids(ids, mask, 3).tolist() == [3, 5, 7]  # 1 occurs twice (masked once)
    assert frequent_token_ids(ids, mask, 3, exclude=[3, 0]).tolist() == [5, 7, 1]


def test_repeat_halves() -> None:
    ids = torch.tensor([[0, 5, 6, 7, 8, 9, 10], [0, 5, 6, 1, 1, 1, 1], [0, 4, 3, 2, 1, 6, 7]])
    mask = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1] * 7])
    new, new_mask, flags = repeat_halves(ids, mask, 1.0, seed=0, pad_id=1)
    # k = 3: [BOS] a b c a b c; the short sequence is not eligible
    assert new[0].tolist() == [0, 5, 6, 7, 5, 6, 7] and new[2].tolist() == [0, 4, 3, 2, 4, 3, 2]
    assert torch.equal(new[1], ids[1]) and flags.tolist() == [True, False, True]
    assert new_mask[0].tolist() == [1] * 7
    none, _, f0 = repeat_halves(ids, mask, 0.0, seed=0, pad_id=1)
    assert torch.equal(none, ids) and not f0.any()
