"""Stage readings of a language model: induction score, transitions, LLC, class-level influence."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bifrepro.attribution import bif_scores
from bifrepro.dynamics.lm_stages import (
    RandomRepeats,
    class_influence,
    detect_transition,
    estimate_llc,
    fastest_drop_steps,
    frequent_token_ids,
    induction_score,
    repeated_random_tokens,
    sign_flips,
)

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


def test_frequent_token_ids() -> None:
    ids = torch.tensor([[0, 5, 5, 5, 7, 7, 9, 1], [0, 7, 3, 3, 3, 3, 1, 1]])
    mask = torch.tensor([[1] * 7 + [0], [1] * 8])
    assert frequent_token_ids(ids, mask, 3).tolist() == [3, 5, 7]  # 1 occurs twice (masked once)
    assert frequent_token_ids(ids, mask, 3, exclude=[3, 0]).tolist() == [5, 7, 1]


def _sigmoid_curve(steps: np.ndarray, mid: float, height: float) -> np.ndarray:
    return height / (1 + np.exp(-4.0 * (np.log(steps) - np.log(mid))))


def test_detect_transition_finds_the_midpoint_in_log_time() -> None:
    steps = np.unique(np.round(np.geomspace(1, 10_000, 25)).astype(int))
    y = _sigmoid_curve(steps, 150.0, 2.0)
    tr = detect_transition(steps, y, min_rise=0.5)
    assert tr.detected and tr.rise == pytest.approx(y.max() - y.min())
    assert tr.midpoint == pytest.approx(150.0, rel=0.1)
    assert tr.onset < tr.midpoint < tr.end
    # 20% -> 80% of a logistic in 4·log(t) spans ln(16)/4 in ln(t)
    assert tr.width_decades == pytest.approx(math.log10(math.e) * math.log(16) / 4, rel=0.1)
    # an early dip below the starting level is not part of the rise
    dip = y.copy()
    dip[2] = -1.0
    assert detect_transition(steps, dip, 0.5).onset > steps[2]
    flat = detect_transition(steps, 0.1 * y, min_rise=0.5)
    assert not flat.detected and math.isnan(flat.midpoint) and math.isnan(flat.width_decades)
    assert tr.to_metrics("induction/")["induction/detected"] == 1.0


def test_fastest_drop_steps_finds_two_drops() -> None:
    steps = np.arange(1, 20_001)
    loss = 5.0 - _sigmoid_curve(steps, 30.0, 2.0) - _sigmoid_curve(steps, 2000.0, 1.0)
    noisy = loss + np.random.default_rng(0).normal(0, 0.05, len(steps))
    drops = fastest_drop_steps(steps, noisy, num=2)
    assert len(drops) == 2
    assert abs(math.log10(drops[0] / 30.0)) < 0.15
    assert abs(math.log10(drops[1] / 2000.0)) < 0.15
    assert fastest_drop_steps(steps, np.full(len(steps), 1.0)) == []


def test_llc_of_a_quadratic_is_half_its_rank() -> None:
    """Exact Gaussian posterior draws of a rank-r quadratic: λ̂ → r/2 when γ << nβ·curvature."""
    rng = np.random.default_rng(0)
    d, r, n = 6, 4, 200
    x = rng.normal(size=(n, r)) @ rng.normal(size=(r, d))  # rank-r design
    h = x.T @ x / n  # Hessian of L(w) = mean_i ½(x_iᵀw)²
    nbeta, gamma = 1000.0, 1e-3
    cov = np.linalg.inv(nbeta * h + gamma * np.eye(d))
    w = rng.multivariate_normal(np.zeros(d), cov, size=(4, 3000))  # [C, D, d]
    trace = torch.tensor(0.5 * (w @ x.T) ** 2)  # [C, D, n] per-item losses
    est = estimate_llc(trace, torch.zeros(n), nbeta)
    exact = 0.5 * nbeta * np.trace(h @ cov)
    assert exact == pytest.approx(r / 2, rel=0.01)
    assert est.mean == pytest.approx(exact, rel=0.05)
    assert len(est.per_chain) == 4 and 0 < est.std_error < 0.2
    # weights: items with weight 0 do not enter L_n (here: doubling the losses of dropped items)
    w8 = torch.ones(n)
    w8[: n // 2] = 0
    trace2 = trace.clone()
    trace2[..., : n // 2] *= 2
    assert estimate_llc(trace2, torch.zeros(n), nbeta, w8).mean == pytest.approx(
        estimate_llc(trace, torch.zeros(n), nbeta, w8).mean
    )
    with pytest.raises(ValueError, match="match"):
        estimate_llc(trace, torch.zeros(n + 1), nbeta)


def _planted(c: int = 3, d: int = 400, seed: int = 0):
    """Query/train per-token traces with a shared signal: train class 1 follows it (helpful),
    class 2 opposes it (harmful), class 0 is independent noise."""
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(c, d, 1, 1, generator=g)
    q = signal + torch.randn(c, d, 2, 5, generator=g)
    t = torch.randn(c, d, 3, 5, generator=g)
    q_cls = torch.tensor([[-1, 0, 0, 0, 0], [-1, 0, 0, 1, -1]])
    t_cls = torch.tensor([[-1, 1, 1, 2, 2], [-1, 0, 0, 1, 2], [-1, 2, 1, 0, 0]])
    t = t + torch.where(t_cls == 1, 1.0, 0.0) * signal - torch.where(t_cls == 2, 1.0, 0.0) * signal
    t[:, :, :, 0] = 0.0  # position 0: constant trace
    return q, t, q_cls, t_cls


@pytest.mark.parametrize("normalize", ["correlation", "covariance"])
def test_class_influence_equals_the_mean_of_token_scores(normalize: str) -> None:
    q, t, q_cls, t_cls = _planted()
    k = 4  # class 3 has no tokens
    ci = class_influence(q, t, q_cls, t_cls, k, normalize=normalize, block_size=4)
    dense = bif_scores(q, t, normalize=normalize).double()  # [2, 5, 3, 5]
    for a in range(k):
        for b in range(k):
            sel = dense[q_cls == a][:, t_cls == b]
            if sel.numel() == 0:
                assert math.isnan(ci.mean[a, b])
            else:
                assert float(ci.mean[a, b]) == pytest.approx(float(sel.mean()), rel=1e-4, abs=1e-6)
    assert ci.query_counts.tolist() == [6, 1, 0, 0] and ci.train_counts.tolist() == [4, 4, 4, 0]
    # the planted signs: train class 1 helps query class 0, class 2 hurts it, class 0 ~ nothing
    assert ci.mean[0, 1] > 0 and ci.mean[0, 2] < 0 and abs(ci.mean[0, 0]) < 0.5 * ci.mean[0, 1]
    assert ci.per_block.shape == (3, k, k)
    assert torch.all(ci.std_error[:2, :3] > 0)
    # per-chain estimates agree with scoring each chain alone
    one = bif_scores(q[1:2], t[1:2], normalize=normalize).double()
    assert float(ci.per_block[1, 0, 1]) == pytest.approx(
        float(one[q_cls == 0][:, t_cls == 1].mean()), rel=1e-4
    )
    # blocks of draws: 4 per chain -> 12 estimates; block 5 = chain 1, draws 100..199
    cb = class_influence(q, t, q_cls, t_cls, k, normalize=normalize, blocks_per_chain=4)
    assert cb.per_block.shape == (12, k, k)
    assert torch.allclose(cb.mean, ci.mean, equal_nan=True)
    blk = bif_scores(q[1:2, 100:200], t[1:2, 100:200], normalize=normalize).double()
    assert float(cb.per_block[5, 0, 2]) == pytest.approx(
        float(blk[q_cls == 0][:, t_cls == 2].mean()), rel=1e-4
    )
    with pytest.raises(ValueError, match="blocks_per_chain"):
        class_influence(q, t, q_cls, t_cls, k, blocks_per_chain=300)


def test_class_influence_checks_shapes() -> None:
    q, t, q_cls, t_cls = _planted()
    with pytest.raises(ValueError, match="shaped"):
        class_influence(q, t, q_cls[:1], t_cls, 3)
    with pytest.raises(ValueError, match="same"):
        class_influence(q[:, :10], t, q_cls, t_cls, 3)
    with pytest.raises(ValueError, match="normalize"):
        class_influence(q, t, q_cls, t_cls, 3, normalize="rank")


def test_sign_flips() -> None:
    curves = np.array([[1.0, 1.0, 0.0], [-1.0, 0.5, 0.0], [0.5, 0.1, 0.0]])
    assert sign_flips(curves).tolist() == [True, False, False]
    assert sign_flips(torch.tensor(curves), threshold=0.99).tolist() == [True, False, False]
    assert sign_flips(np.array([[1.0], [-0.1]]), threshold=0.2).tolist() == [False]
