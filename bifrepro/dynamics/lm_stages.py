"""Developmental stages of a language model, and class-level influence to compare them with.

Three independent readings of a checkpoint, all cheap next to the BIF sampling itself:

* **Induction score** (Olsson et al. 2022): sequences ``[BOS] r r`` of ``L`` random tokens
  repeated once. A model with induction heads predicts the second copy from the first, so the
  mean loss on the second occurrence falls below the first; the score is
  ``loss(first) − loss(second)`` in nats (0 without in-context copying; the first position of
  each half is left out because nothing can predict it from context).
* **Stage transitions** in a curve over training (log time): where it rises through 20 / 50 /
  80 % of its total rise (:func:`detect_transition`), and where the training loss falls fastest
  per unit of ``log(step)`` (:func:`fastest_drop_steps`).
* **Local learning coefficient** from the SGLD draws the BIF already made (Lau et al.;
  devinterp's estimator): ``λ̂ = nβ·(E_w[L_n(w)] − L_n(w*))`` with ``L_n`` the mean training loss
  recorded on every draw (:func:`estimate_llc`).

:func:`class_influence` aggregates per-token BIF into a class x class matrix without building the
token x token score matrix: the mean Pearson correlation (or covariance) over all pairs of a query
class and a training class is an inner product of class-summed, normalised loss traces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "InductionScore",
    "RandomRepeats",
    "repeated_random_tokens",
    "frequent_token_ids",
    "induction_score",
    "Transition",
    "detect_transition",
    "fastest_drop_steps",
    "LLCEstimate",
    "estimate_llc",
    "ClassInfluence",
    "class_influence",
    "sign_flips",
]


# -- induction score --------------------------------------------------------------------------


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
    :func:`bifrepro.models.lm.train_causal_lm`.
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
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must be in [0, 1]")
        if min_half < 2 or (max_half is not None and max_half < min_half):
            raise ValueError(f"need 2 <= min_half={min_half} <= max_half={max_half}")
        self.min_half = int(min_half)
        self.max_half = None if max_half is None else int(max_half)
        self.tile = bool(tile)
        self.candidates = torch.as_tensor(candidates, dtype=torch.long)
        self.fraction = float(fraction)
        self.bos_id, self.pad_id, self.seed = int(bos_id), int(pad_id), int(seed)
        self.distinct = bool(distinct)

    def settings(self) -> dict[str, Any]:
        """What determines the batches (for cache keys)."""
        return {
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
        if self.fraction == 0.0:
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


def _default_token_losses(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    from bifrepro.attribution.token_bif import token_losses  # lazy: attribution imports are heavy

    return token_losses(model, batch)


@torch.no_grad()
def induction_score(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    half_len: int,
    token_loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
    batch_size: int = 64,
) -> InductionScore:
    """Induction score of ``model`` on sequences from :func:`repeated_random_tokens`.

    ``token_loss_fn(model, [ids, mask]) -> [B, T]`` per-token losses indexed by the predicted
    token (default :func:`bifrepro.attribution.token_bif.token_losses`). The repeated part is
    the last ``2·half_len`` positions (so sequences with or without BOS both work).
    """
    fn = token_loss_fn or _default_token_losses
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


# -- transitions ----------------------------------------------------------------------------------


@dataclass
class Transition:
    """Where a curve rises (in log time).

    Attributes:
        onset, midpoint, end: steps where the curve first reaches 20 / 50 / 80 % (by default) of
            its rise from its starting level to its maximum (log-interpolated between
            checkpoints); NaN when not detected.
        rise: maximum minus starting level.
        detected: ``rise >= min_rise``.
        width_decades: ``log10(end / onset)``: how sharp the transition is.
    """

    onset: float
    midpoint: float
    end: float
    rise: float
    detected: bool

    @property
    def width_decades(self) -> float:
        if not (self.detected and self.onset > 0 and self.end > 0):
            return math.nan
        return math.log10(self.end / self.onset)

    def to_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}onset_step": self.onset,
            f"{prefix}midpoint_step": self.midpoint,
            f"{prefix}end_step": self.end,
            f"{prefix}rise": self.rise,
            f"{prefix}detected": float(self.detected),
            f"{prefix}width_decades": self.width_decades,
        }


def _log_t(steps: Sequence[float]) -> np.ndarray:
    return np.log(np.maximum(np.asarray(steps, dtype=float), 0.5))


def _first_crossing(logt: np.ndarray, y: np.ndarray, level: float, start: int) -> float:
    """First log-step at which ``y`` reaches ``level`` going up, from index ``start`` on."""
    for k in range(start, len(y)):
        if y[k] >= level:
            if k == start or y[k] == y[k - 1]:
                return float(np.exp(logt[k]))
            f = (level - y[k - 1]) / (y[k] - y[k - 1])
            return float(np.exp(logt[k - 1] + f * (logt[k] - logt[k - 1])))
    return math.nan


def detect_transition(
    steps: Sequence[float],
    values: Sequence[float],
    min_rise: float,
    fractions: tuple[float, float, float] = (0.2, 0.5, 0.8),
) -> Transition:
    """The rise of a curve over training (e.g. the induction score) and where it happens.

    The starting level is the curve's minimum before its maximum (so an early dip does not count
    as part of the rise); crossings are searched after that minimum and interpolated linearly in
    ``log(step)``. ``min_rise``: smallest rise (in the curve's units) that counts as a transition.
    """
    y = np.asarray(values, dtype=float)
    if y.shape[0] != len(steps):
        raise ValueError(f"{len(steps)} steps but {y.shape[0]} values")
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return Transition(math.nan, math.nan, math.nan, math.nan, False)
    s = np.asarray(steps, dtype=float)[ok]
    y = y[ok]
    top = int(np.argmax(y))
    low = int(np.argmin(y[: top + 1]))
    rise = float(y[top] - y[low])
    if not rise >= min_rise:
        return Transition(math.nan, math.nan, math.nan, rise, False)
    logt = _log_t(s)
    marks = [_first_crossing(logt, y, y[low] + f * rise, low) for f in fractions]
    return Transition(marks[0], marks[1], marks[2], rise, True)


def fastest_drop_steps(
    steps: Sequence[float],
    loss: Sequence[float],
    num: int = 2,
    points_per_decade: int = 8,
    min_separation_decades: float = 0.4,
) -> list[float]:
    """Steps where the loss falls fastest per unit of ``log10(step)`` (biggest drops first).

    The curve (e.g. the per-step training loss) is averaged into bins evenly spaced in
    ``log10(step)`` (``points_per_decade`` per decade, which also smooths minibatch noise); the
    slope between bins is ranked and peaks closer than ``min_separation_decades`` to a steeper
    one are dropped.
    """
    s = np.asarray(steps, dtype=float)
    y = np.asarray(loss, dtype=float)
    keep = (s > 0) & np.isfinite(y)
    s, y = s[keep], y[keep]
    if len(s) < 3:
        return []
    ls = np.log10(s)
    edges = np.arange(ls.min(), ls.max() + 1.0 / points_per_decade, 1.0 / points_per_decade)
    centres, means = [], []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        sel = (ls >= a) & (ls < b) if b < edges[-1] else (ls >= a) & (ls <= b)
        if sel.any():
            centres.append(ls[sel].mean())
            means.append(y[sel].mean())
    if len(centres) < 3:
        return []
    c, m = np.asarray(centres), np.asarray(means)
    slope = -(m[1:] - m[:-1]) / (c[1:] - c[:-1])  # loss drop per decade
    mid = 0.5 * (c[1:] + c[:-1])
    chosen: list[float] = []
    for k in np.argsort(-slope):
        if slope[k] <= 0 or len(chosen) >= num:
            break
        if all(abs(mid[k] - x) >= min_separation_decades for x in chosen):
            chosen.append(float(mid[k]))
    return sorted(float(10**x) for x in chosen)


# -- local learning coefficient -------------------------------------------------------------------


@dataclass
class LLCEstimate:
    """``λ̂ = nβ·(E[L_n] − L_n(w*))`` per chain and pooled.

    Attributes:
        mean: mean of the per-chain estimates.
        std_error: their standard deviation over ``sqrt(num_chains)`` (NaN for one chain).
        per_chain: one estimate per chain.
        init_loss: ``L_n(w*)``.
    """

    mean: float
    std_error: float
    per_chain: list[float]
    init_loss: float


def estimate_llc(
    trace: torch.Tensor,
    init_losses: torch.Tensor,
    nbeta: float,
    weights: torch.Tensor | None = None,
) -> LLCEstimate:
    """Local learning coefficient from recorded training losses (no extra forward passes).

    Args:
        trace: ``[C, D, n(, T)]`` losses of training items (or tokens) on every draw.
        init_losses: ``[n(, T)]`` the same losses at w*.
        nbeta: the sampler's ``nβ``.
        weights: ``[n(, T)]`` weights of the items in ``L_n`` (normalised to sum 1; default
            uniform). For per-token traces of sequences use ``mask / tokens_per_sequence``, so
            ``L_n`` is the mean over sequences of the mean token loss — the SGLD objective.
    """
    if trace.dim() < 3 or tuple(trace.shape[2:]) != tuple(init_losses.shape):
        raise ValueError(
            f"trace {tuple(trace.shape)} and init_losses {tuple(init_losses.shape)} do not match"
        )
    w = torch.ones(init_losses.shape, dtype=torch.float64) if weights is None else weights.double()
    if tuple(w.shape) != tuple(init_losses.shape) or not float(w.sum()) > 0:
        raise ValueError("weights must match init_losses and have a positive sum")
    w = (w / w.sum()).reshape(-1)
    c, d = trace.shape[:2]
    per_draw = trace.reshape(c, d, -1).double() @ w  # [C, D]
    l0 = float(init_losses.reshape(-1).double() @ w)
    per_chain = (nbeta * (per_draw.mean(1) - l0)).tolist()
    mean = float(np.mean(per_chain))
    se = float(np.std(per_chain, ddof=1) / math.sqrt(c)) if c > 1 else math.nan
    return LLCEstimate(mean, se, [float(x) for x in per_chain], l0)


# -- class x class influence ----------------------------------------------------------------------


@dataclass
class ClassInfluence:
    """Mean per-token BIF over all (query token, training token) pairs of two classes.

    Attributes:
        mean: ``[K, K]`` pooled estimate (all chains x draws), row = query class, column =
            training class; NaN where a class has no tokens. Positive = helpful.
        std_error: ``[K, K]`` standard deviation of the block estimates over sqrt(number of
            blocks) (NaN for a single block): blocks are contiguous runs of draws, treated as
            independent, so this is approximate (it ignores correlation between blocks).
        per_block: ``[C·B, K, K]`` the same estimate from each block of draws alone (``B``
            blocks per chain; ``B = 1``: one estimate per chain).
        query_counts, train_counts: ``[K]`` tokens per class.
        normalize: "correlation" or "covariance".
    """

    mean: torch.Tensor
    std_error: torch.Tensor
    per_block: torch.Tensor
    query_counts: torch.Tensor
    train_counts: torch.Tensor
    normalize: str


def _class_sums(
    traces: torch.Tensor, classes: torch.Tensor, k: int, normalize: str, block: int
) -> torch.Tensor:
    """``[S, K]`` sums of centred (and, for correlation, unit-norm) traces per class.

    ``traces`` is ``[S, M]`` (samples x tokens), processed ``block`` columns at a time.
    """
    s = traces.shape[0]
    out = torch.zeros(s, k, dtype=torch.float64)
    for start in range(0, traces.shape[1], block):
        cls = classes[start : start + block]
        keep = cls >= 0
        if not keep.any():
            continue
        x = traces[:, start : start + block][:, keep].double()
        x = x - x.mean(0, keepdim=True)
        if normalize == "correlation":
            norm = torch.linalg.vector_norm(x, dim=0, keepdim=True)
            x = torch.where(norm > 0, x / norm.clamp_min(1e-300), torch.zeros_like(x))
        out.index_add_(1, cls[keep], x)
    return out


def class_influence(
    query_traces: torch.Tensor,
    train_traces: torch.Tensor,
    query_classes: torch.Tensor,
    train_classes: torch.Tensor,
    num_classes: int,
    normalize: str = "correlation",
    block_size: int = 4096,
    blocks_per_chain: int = 1,
) -> ClassInfluence:
    """Class x class per-token BIF, never materialising the token x token matrix.

    For unit-norm centred traces ``z``, the mean correlation over the pairs of classes A and B is
    ``(Σ_{a∈A} z_a)·(Σ_{b∈B} z_b) / (|A|·|B|)`` (covariance: centred traces and ``1/(S−1)``),
    so the cost is one pass over the traces. Tokens of class :data:`~bifrepro.data.token_classes.IGNORE`
    (< 0) are left out; constant traces (padding) contribute 0.

    Args:
        query_traces: ``[C, D, n_q, T]`` (or ``[C, D, n_q]``) per-token losses of the queries.
        train_traces: ``[C, D, n_t, T]`` on the same draws.
        query_classes, train_classes: class id per token, shaped like one draw of the traces.
        num_classes: ``K``.
        normalize: "correlation" (Pearson, default) or "covariance" (``+Cov``, ddof 1).
        block_size: tokens whose traces are centred at once (memory bound).
        blocks_per_chain: contiguous blocks of draws per chain for the standard error (with 2
            chains, per-chain estimates alone give a standard error with one degree of freedom).
    """
    if normalize not in ("correlation", "covariance"):
        raise ValueError(f"normalize must be 'correlation' or 'covariance', got {normalize!r}")
    if query_traces.shape[:2] != train_traces.shape[:2]:
        raise ValueError("query and train traces must come from the same [chains, draws]")
    if tuple(query_classes.shape) != tuple(query_traces.shape[2:]) or tuple(
        train_classes.shape
    ) != tuple(train_traces.shape[2:]):
        raise ValueError("class arrays must be shaped like one draw of their traces")
    c, d = query_traces.shape[:2]
    qc = query_classes.reshape(-1).long()
    tc = train_classes.reshape(-1).long()
    nq = torch.bincount(qc[qc >= 0], minlength=num_classes)[:num_classes].double()
    nt = torch.bincount(tc[tc >= 0], minlength=num_classes)[:num_classes].double()
    pair_counts = nq[:, None] * nt[None, :]

    def estimate(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sq = _class_sums(q, qc, num_classes, normalize, block_size)
        st = _class_sums(t, tc, num_classes, normalize, block_size)
        m = sq.T @ st
        if normalize == "covariance":
            m = m / max(q.shape[0] - 1, 1)
        return torch.where(pair_counts > 0, m / pair_counts.clamp_min(1), torch.nan)

    if not 1 <= blocks_per_chain <= max(d // 2, 1):
        raise ValueError(f"blocks_per_chain={blocks_per_chain} must be in [1, draws/2 = {d // 2}]")
    q_all = query_traces.reshape(c * d, -1)
    t_all = train_traces.reshape(c * d, -1)
    pooled = estimate(q_all, t_all)
    edges = np.linspace(0, d, blocks_per_chain + 1).astype(int)
    per_block = torch.stack(
        [
            estimate(
                query_traces[i, a:b].reshape(b - a, -1), train_traces[i, a:b].reshape(b - a, -1)
            )
            for i in range(c)
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
    )
    n_blocks = per_block.shape[0]
    se = (
        per_block.std(0, unbiased=True) / math.sqrt(n_blocks)
        if n_blocks > 1
        else torch.full_like(pooled, math.nan)
    )
    return ClassInfluence(pooled, se, per_block, nq.long(), nt.long(), normalize)


def sign_flips(curves: np.ndarray | torch.Tensor, threshold: float = 0.2) -> np.ndarray:
    """Per curve of ``[T, ...]``: both signs reach ``threshold`` x max |curve| (NaNs ignored)."""
    c = curves.detach().cpu().double().numpy() if isinstance(curves, torch.Tensor) else curves
    c = np.nan_to_num(np.asarray(c, dtype=float))
    scale = np.abs(c).max(axis=0)
    return (scale > 0) & (c.max(axis=0) > threshold * scale) & (-c.min(axis=0) > threshold * scale)
