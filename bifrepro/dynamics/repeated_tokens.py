"""Synthetic repeated-token sequences: the inputs that make in-context copying visible.

* :func:`frequent_token_ids`: the corpus tokens random sequences are drawn from.
* :func:`repeated_random_tokens`: ``[BOS] r r`` probes of the induction score
  (:mod:`bifrepro.dynamics.induction`).
* :class:`RandomRepeats`: a training-batch transform mixing fresh ``[BOS] a r r b`` sequences into
  every batch, so copying from context pays off during training.
* :func:`repeat_halves`: query sequences whose second half repeats their first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["frequent_token_ids", "repeated_random_tokens", "RandomRepeats", "repeat_halves"]


def frequent_token_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    k: int,
    exclude: Sequence[int] = (),
) -> torch.Tensor:
    """The ``k`` most frequent token ids of a corpus (ties by id), without ``exclude``.

    Random tokens for the induction probe are drawn from these: tokens the model has seen often,
    so the first occurrence is merely unpredictable rather than out of distribution.
    """
    ids = input_ids if attention_mask is None else input_ids[attention_mask.bool()]
    counts = torch.bincount(ids.reshape(-1), minlength=int(ids.max()) + 1).double()
    for i in exclude:
        if 0 <= int(i) < len(counts):
            counts[int(i)] = -1.0
    order = sorted(range(len(counts)), key=lambda i: (-counts[i].item(), i))
    chosen = [i for i in order if counts[i] > 0][:k]
    if len(chosen) < 2:
        raise ValueError("fewer than 2 candidate tokens for the induction probe")
    return torch.tensor(chosen, dtype=torch.long)


def repeated_random_tokens(
    candidates: torch.Tensor,
    num_sequences: int,
    half_len: int,
    bos_id: int | None,
    seed: int = 0,
    distinct: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``[BOS] r_1..r_L r_1..r_L`` sequences.

    With ``distinct`` (the probe's default) the ``L = half_len`` tokens of a sequence are drawn
    without replacement from ``candidates``, so any drop in loss on the second copy is copying,
    not repetition statistics; otherwise they are drawn independently (then a token seen earlier
    is no less likely than any other: nothing rewards an anti-repetition heuristic).
    """
    if half_len < 2:
        raise ValueError(f"half_len={half_len} must be >= 2")
    if distinct and len(candidates) < half_len:
        raise ValueError(
            f"{len(candidates)} candidate tokens for half_len={half_len} distinct ones"
        )
    g = torch.Generator().manual_seed(int(seed))
    if distinct:
        rows = [
            candidates[torch.randperm(len(candidates), generator=g)[:half_len]]
            for _ in range(num_sequences)
        ]
        r = torch.stack(rows)
    else:
        r = candidates[torch.randint(len(candidates), (num_sequences, half_len), generator=g)]
    parts = [r, r]
    if bos_id is not None:
        parts.insert(0, torch.full((num_sequences, 1), int(bos_id), dtype=torch.long))
    ids = torch.cat(parts, dim=1)
    return ids, torch.ones_like(ids)


class RandomRepeats:
    """Training-batch transform: each sequence becomes, with probability ``fraction``, a fresh
    random-token sequence ``[BOS] a r r b`` (see :meth:`sample`: a span ``r`` of random length
    and position, repeated once; tokens drawn from ``candidates``, independently unless
    ``distinct``).

    Fresh tokens at every step mean these sequences cannot be memorised: the only way to predict
    a second copy is to copy from context, so induction heads pay off (the classic synthetic
    in-context-learning ingredient). Randomness is seeded by ``(seed, step)``, so a resumed
    training sees the same batches. Pass it as ``batch_transform`` of
    :func:`bifrepro.training.lm.train_causal_lm`.

    ``start_step`` (a curriculum): batches of steps before it are left untouched (corpus only),
    so in-context copying only starts to pay off from that step. The default 0 mixes repeats in
    from the first step and keeps :meth:`settings` (and every cache key built from it) as before.
    """

    def __init__(
        self,
        candidates: torch.Tensor,
        fraction: float,
        bos_id: int,
        pad_id: int,
        seed: int = 0,
        distinct: bool = False,
        min_half: int = 4,
        max_half: int | None = None,
        tile: bool = False,
        start_step: int = 0,
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must be in [0, 1]")
        if min_half < 2 or (max_half is not None and max_half < min_half):
            raise ValueError(f"need 2 <= min_half={min_half} <= max_half={max_half}")
        self.min_half = int(min_half)
        self.max_half = None if max_half is None else int(max_half)
        self.tile = bool(tile)
        if int(start_step) < 0:
            raise ValueError(f"start_step={start_step} must be >= 0")
        self.start_step = int(start_step)
        self.candidates = torch.as_tensor(candidates, dtype=torch.long)
        self.fraction = float(fraction)
        self.bos_id, self.pad_id, self.seed = int(bos_id), int(pad_id), int(seed)
        self.distinct = bool(distinct)

    def settings(self) -> dict[str, Any]:
        """What determines the batches (for cache keys; ``start_step`` only when set, so runs
        without a curriculum keep their old keys)."""
        out = {
            "fraction": self.fraction,
            "seed": self.seed,
            "bos": self.bos_id,
            "pad": self.pad_id,
            "distinct": self.distinct,
            "min_half": self.min_half,
            "max_half": self.max_half,
            "tile": self.tile,
            "candidates": self.candidates.tolist(),
        }
        if self.start_step:
            out["start_step"] = self.start_step
        return out

    def sample(
        self, num: int, seq_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` fresh sequences ``[BOS] a r r b`` of length ``seq_len`` (ids, mask).

        A span ``r`` of random length ``L`` in ``[min_half, max_half]`` (default max:
        ``(seq_len-1)//2``) starts at a random offset after random filler ``a`` and occurs twice
        (with ``tile``: repeats to the end of the sequence); ``b`` is random filler. A fixed
        period would let one attention head copy by relative position alone (attend ``L`` tokens
        back); a random period leaves only content-based copying, i.e. an induction head.
        """
        k_max = (seq_len - 1) // 2
        if k_max < self.min_half:
            raise ValueError(f"seq_len={seq_len} is too short for two copies of {self.min_half}")
        hi = k_max if self.max_half is None else min(self.max_half, k_max)
        n_cand = len(self.candidates)
        ids = self.candidates[torch.randint(n_cand, (num, seq_len), generator=generator)]
        ids[:, 0] = self.bos_id
        for i in range(num):
            half = int(torch.randint(self.min_half, hi + 1, (1,), generator=generator))
            start = 1 + int(torch.randint(0, seq_len - 2 * half, (1,), generator=generator))
            if self.distinct:
                if n_cand < half:
                    raise ValueError(f"{n_cand} candidate tokens for {half} distinct ones")
                ids[i, start : start + half] = self.candidates[
                    torch.randperm(n_cand, generator=generator)[:half]
                ]
            stop = seq_len if self.tile else start + 2 * half
            for p in range(start + half, stop):
                ids[i, p] = ids[i, p - half]
        return ids, torch.ones_like(ids)

    def __call__(
        self, step: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.fraction == 0.0 or int(step) < self.start_step:
            return input_ids, attention_mask
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, int(step)]).generate_state(1)[0])
        )
        chosen = torch.rand(len(input_ids), generator=g) < self.fraction
        if not chosen.any():
            return input_ids, attention_mask
        ids = input_ids.clone()
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.clone()
        new_ids, new_mask = self.sample(int(chosen.sum()), ids.shape[1], g)
        ids[chosen] = new_ids
        mask[chosen] = new_mask.to(mask.dtype)
        return ids, mask


def repeat_halves(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    fraction: float,
    seed: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copies where a ``fraction`` of the sequences repeat their first half as their second half.

    A sequence ``[BOS] x_1 … x_{T-1}`` becomes ``[BOS] x_1 … x_k x_1 … x_k`` (``k = (T-1)//2``,
    padded after), so its second half can only be predicted well by copying from context. Only
    sequences with at least ``k`` real tokens after BOS are eligible. Returns the new ids, mask and
    a ``[N]`` bool flag of the repeated sequences.
    """
    ids, mask = input_ids.clone(), attention_mask.clone()
    n, t = ids.shape
    k = (t - 1) // 2
    flags = torch.zeros(n, dtype=torch.bool)
    eligible = torch.nonzero(mask.sum(1) >= 1 + k).flatten()
    want = min(len(eligible), int(round(fraction * n)))
    if want == 0:
        return ids, mask, flags
    g = torch.Generator().manual_seed(int(seed))
    chosen = eligible[torch.randperm(len(eligible), generator=g)[:want]]
    for i in chosen.tolist():
        ids[i, 1 + k : 1 + 2 * k] = ids[i, 1 : 1 + k]
        ids[i, 1 + 2 * k :] = pad_id
        mask[i, : 1 + 2 * k] = 1
        mask[i, 1 + 2 * k :] = 0
        flags[i] = True
    return ids, mask, flags
