"""Per-token BIF for causal language models, memory-bounded.

BIF records the loss of every observed *token* on every posterior draw, so token-level attribution
comes for free (Kreer et al.): the score of query token ``(q, s)`` on training token ``(i, s')`` is
the Pearson correlation (default) or ``+Cov`` of their loss traces — positive = helpful, the
layout and sign of :mod:`bifrepro.attribution.base`. Token ``s`` is the *predicted* token, its loss
``-log p(x_s | x_<s)``; position 0 and padding have constant (zero) traces and score 0.

The full token × token matrix is ``(n_query·T) × (n_train·T)`` numbers — at Pythia scale far too
big to hold. Here it never exists:

1. :func:`sample_token_traces` runs SGLD on the mean sequence loss and records per-token losses
   ``[C, D, n, T]`` of the training and query sequences, on disk (``out_dir``; memory-mapped,
   resumable) or in memory: the sampling step of the one BIF pipeline
   (:mod:`bifrepro.attribution.bif_pipeline`), with raw token NLLs recorded.
2. :class:`TokenBIF` computes only what is asked: the scores of chosen query tokens against
   chosen training sequences (:meth:`TokenBIF.scores`), a stream of blocks of training sequences
   (:meth:`TokenBIF.iter_blocks`), the top-k training tokens per query token
   (:meth:`TokenBIF.topk`, merged block by block), or per-sequence scores
   (:meth:`TokenBIF.sequence_scores`). One block of centred training traces
   (``C·D × block·T`` floats) and the ``q × block·T`` scores are the only large arrays.

For dense per-token scores of a few sequences, ``BIFAttributor`` with ``per_token`` set runs the
same pipeline on a :class:`CausalLMTask` (its per-token losses are the token's share of the
sequence loss); its ``"both"`` traces also feed :meth:`TokenBIF.from_traces`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from bifrepro.attribution.base import CausalLMTask
from bifrepro.attribution.bif import bif_scores
from bifrepro.attribution.bif_pipeline import sample_bif_traces
from bifrepro.sampling import LossTraces, SGLDConfig

__all__ = [
    "TokenTopK",
    "TokenBIF",
    "sample_token_traces",
    "sequence_loss",
    "token_losses",
    "query_token_columns",
]

#: Centred training traces of one block stay below this many bytes (float64 centring).
_BLOCK_BYTES = 256 * 2**20

_MEAN_TASK = CausalLMTask(reduction="mean")
_SUM_TASK = CausalLMTask(reduction="sum")


def sequence_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Per-sequence mean next-token loss ``[B]`` (the Hugging Face convention): SGLD's loss."""
    return _MEAN_TASK.train_loss(model, batch)


def token_losses(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Per-token losses ``[B, T]``: ``-log p(x_s | x_<s)`` at predicted position ``s``, 0 at
    position 0 and at padding (batches ``[ids, attention_mask]`` or as :class:`CausalLMTask`)."""
    return _SUM_TASK.train_loss_per_token(model, batch)


def sample_token_traces(
    model: torch.nn.Module,
    train: Dataset,
    query: Dataset,
    config: SGLDConfig,
    sgld_data: Dataset | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> LossTraces:
    """SGLD around the model's weights, recording per-token losses of ``train`` and ``query``.

    Args:
        model: the causal LM (w* = its current weights; never modified).
        train: observed training sequences (batches ``[input_ids, attention_mask]``).
        query: query sequences, same layout and length.
        config: sampler settings.
        sgld_data: sequences whose mean loss defines the posterior (default: ``train``); usually
            the whole training set, of which ``train`` is the observed part.
        out_dir: traces on disk (memory-mapped, resumable); ``None`` keeps them in memory.
        progress: tqdm bars (``None``: only on a terminal).

    Returns:
        :class:`~bifrepro.sampling.LossTraces` with ``"train"`` ``[C, D, n_train, T]`` and
        ``"query"`` ``[C, D, n_query, T]``.
    """
    return sample_bif_traces(
        model,
        sequence_loss,
        sgld_data if sgld_data is not None else train,
        train=(train, token_losses),
        query=(query, token_losses),
        config=config,
        out_dir=out_dir,
        progress=progress,
    )


def query_token_columns(
    query_traces: torch.Tensor, query_tokens: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """``[C, D, q]`` traces of the chosen query tokens ``(sequence, position)``."""
    if query_traces.dim() != 4:
        raise ValueError(
            f"per-token query traces must be [C, D, n_query, T], got {tuple(query_traces.shape)}"
        )
    if not len(query_tokens):
        raise ValueError("no query tokens given")
    n, t = query_traces.shape[2:]
    seq = torch.tensor([int(s) for s, _ in query_tokens])
    pos = torch.tensor([int(p) for _, p in query_tokens])
    if (seq < 0).any() or (seq >= n).any() or (pos < 0).any() or (pos >= t).any():
        raise IndexError(f"query tokens out of range for {n} sequences x {t} positions")
    return query_traces[:, :, seq, pos]


@dataclass
class TokenTopK:
    """Top-k training tokens per query token (best first).

    ``values``, ``seq`` and ``pos`` are ``[q, k]``: score, training sequence and position.
    Fewer than k valid candidates leave ``-inf`` values with ``seq = pos = -1``.
    """

    values: torch.Tensor
    seq: torch.Tensor
    pos: torch.Tensor


class TokenBIF:
    """Per-token BIF scores from per-token loss traces, computed block by block on demand.

    Args:
        query_traces: ``[C, D, n_query, T_q]`` (in memory or a memory map).
        train_traces: ``[C, D, n_train, T]`` on the same draws.
        normalize: ``"correlation"`` (Pearson, default) or ``"covariance"`` (``+Cov``, ddof 1).
        block_size: training sequences per block (default: ~256 MB of centred traces).
        detrend: remove each chain's linear trend per token first (see :func:`bif_scores`).

    Scores are positive = helpful (``+Cov`` of losses; the paper's BIF is its negative).
    """

    def __init__(
        self,
        query_traces: torch.Tensor,
        train_traces: torch.Tensor,
        normalize: str = "correlation",
        block_size: int | None = None,
        detrend: bool = False,
    ) -> None:
        if train_traces.dim() != 4 or query_traces.dim() != 4:
            raise ValueError(
                "per-token traces must be [C, D, n, T]; got query "
                f"{tuple(query_traces.shape)} and train {tuple(train_traces.shape)}"
            )
        if query_traces.shape[:2] != train_traces.shape[:2]:
            raise ValueError(
                "query and train traces must come from the same draws: [chains, draws] "
                f"{tuple(query_traces.shape[:2])} vs {tuple(train_traces.shape[:2])}"
            )
        if normalize not in ("correlation", "covariance"):
            raise ValueError(f"normalize must be 'correlation' or 'covariance', got {normalize!r}")
        self.query_traces = query_traces
        self.train_traces = train_traces
        self.normalize = normalize
        self.detrend = detrend
        c, d, _, t = train_traces.shape
        per_seq = 8 * c * d * t
        self.block_size = block_size or max(1, _BLOCK_BYTES // per_seq)

    @classmethod
    def from_traces(cls, traces: LossTraces, **kwargs: Any) -> TokenBIF:
        """From :func:`sample_token_traces`'s result (``"query"`` and ``"train"``)."""
        return cls(traces["query"], traces["train"], **kwargs)

    @property
    def n_train(self) -> int:
        return int(self.train_traces.shape[2])

    @property
    def seq_len(self) -> int:
        return int(self.train_traces.shape[3])

    def _block(self, q_cols: torch.Tensor, seqs: torch.Tensor | slice) -> torch.Tensor:
        block = self.train_traces[:, :, seqs]
        return bif_scores(q_cols, block, normalize=self.normalize, detrend=self.detrend)

    def scores(
        self,
        query_tokens: Sequence[tuple[int, int]],
        train_seqs: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """``[q, len(train_seqs), T]`` scores of the query tokens on every token of those sequences.

        ``train_seqs=None`` means all training sequences (only sensible at small scale).
        """
        q_cols = query_token_columns(self.query_traces, query_tokens)
        if train_seqs is None:
            return torch.cat([s for _, _, s in self.iter_blocks(query_tokens)], dim=1)
        idx = torch.as_tensor(list(train_seqs), dtype=torch.long)
        out = [
            self._block(q_cols, idx[i : i + self.block_size])
            for i in range(0, len(idx), self.block_size)
        ]
        return torch.cat(out, dim=1) if out else torch.empty(len(query_tokens), 0, self.seq_len)

    def iter_blocks(
        self, query_tokens: Sequence[tuple[int, int]]
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(start, stop, scores [q, stop - start, T])`` per block of training sequences."""
        q_cols = query_token_columns(self.query_traces, query_tokens)
        for start in range(0, self.n_train, self.block_size):
            stop = min(start + self.block_size, self.n_train)
            yield start, stop, self._block(q_cols, slice(start, stop))

    def topk(
        self,
        query_tokens: Sequence[tuple[int, int]],
        k: int,
        valid: torch.Tensor | None = None,
    ) -> TokenTopK:
        """The ``k`` highest-scoring training tokens per query token, merged block by block.

        ``valid``: optional ``[n_train, T]`` bool mask of candidate tokens (e.g. real tokens that
        are not position 0); tokens with a constant trace (padding) are never returned either.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        t = self.seq_len
        if valid is not None and tuple(valid.shape) != (self.n_train, t):
            raise ValueError(
                f"valid must be [n_train, T] = {(self.n_train, t)}, got {tuple(valid.shape)}"
            )
        q = len(query_tokens)
        best_v = torch.full((q, 0), -torch.inf)
        best_i = torch.zeros((q, 0), dtype=torch.long)
        for start, stop, block in self.iter_blocks(query_tokens):
            flat = block.reshape(q, -1).clone()
            constant = self._constant(start, stop).reshape(-1)
            mask = constant if valid is None else constant | ~valid[start:stop].reshape(-1)
            flat[:, mask] = -torch.inf
            idx = torch.arange(start * t, stop * t).expand(q, -1)
            v = torch.cat([best_v, flat], dim=1)
            i = torch.cat([best_i, idx], dim=1)
            kk = min(k, v.shape[1])
            best_v, pick = torch.topk(v, kk, dim=1)
            best_i = torch.gather(i, 1, pick)
        if best_v.shape[1] < k:  # fewer candidates than k in total
            pad = k - best_v.shape[1]
            best_v = torch.cat([best_v, torch.full((q, pad), -torch.inf)], dim=1)
            best_i = torch.cat([best_i, torch.full((q, pad), -1, dtype=torch.long)], dim=1)
        none = ~torch.isfinite(best_v)
        seq = torch.where(none, -1, best_i // t)
        pos = torch.where(none, -1, best_i % t)
        return TokenTopK(best_v, seq, pos)

    def _constant(self, start: int, stop: int) -> torch.Tensor:
        """``[b, T]`` tokens whose trace does not vary over the draws (padding, position 0)."""
        block = self.train_traces[:, :, start:stop]
        flat = block.reshape(-1, *block.shape[2:])
        return (flat.amax(0) - flat.amin(0)) == 0

    def sequence_scores(
        self, query_tokens: Sequence[tuple[int, int]], reduce: str = "sum"
    ) -> torch.Tensor:
        """``[q, n_train]``: query tokens against whole training sequences.

        ``reduce="sum"``: the BIF of the sequence loss (sum of its token losses), the usual
        per-sequence attribution; ``"max"``: the best token of each sequence.
        """
        if reduce not in ("sum", "max"):
            raise ValueError(f"reduce must be 'sum' or 'max', got {reduce!r}")
        q_cols = query_token_columns(self.query_traces, query_tokens)
        out = []
        for start in range(0, self.n_train, self.block_size):
            stop = min(start + self.block_size, self.n_train)
            if reduce == "sum":
                seq_traces = self.train_traces[:, :, start:stop].sum(-1)
                out.append(
                    bif_scores(q_cols, seq_traces, normalize=self.normalize, detrend=self.detrend)
                )
            else:
                out.append(self._block(q_cols, slice(start, stop)).amax(-1))
        return torch.cat(out, dim=1)
