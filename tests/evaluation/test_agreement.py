"""Top-k label agreement, overlap and their confidence intervals, on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from bifrepro.evaluation.agreement import (
    agreement_table,
    bootstrap_ci,
    chance_agreement,
    label_agreement,
    mean_with_ci,
    overlap_table,
    topk_indices,
    topk_overlap,
    wilson_interval,
)

# 2 queries x 5 training items; training labels 0 0 1 1 2; query labels 0 and 1
SCORES = torch.tensor(
    [
        [0.9, -0.5, 0.8, 0.1, -0.9],  # ranking 0, 2, 3, 1, 4
        [0.2, 0.3, 0.7, -0.8, 0.6],  # ranking 2, 4, 1, 0, 3
    ]
)
TRAIN = torch.tensor([0, 0, 1, 1, 2])
QUERY = torch.tensor([0, 1])


def test_topk_indices_both_directions() -> None:
    assert topk_indices(SCORES, 2).tolist() == [[0, 2], [2, 4]]
    assert topk_indices(SCORES, 2, "harmful").tolist() == [[4, 1], [3, 0]]


def test_nan_scores_rank_last_in_both_directions() -> None:
    s = torch.tensor([[float("nan"), 1.0, -1.0]])
    assert topk_indices(s, 2).tolist() == [[1, 2]]
    assert topk_indices(s, 2, "harmful").tolist() == [[2, 1]]


def test_label_agreement_by_hand() -> None:
    # query 0 (label 0): top-1 {0} -> 1; top-2 {0, 2} -> 1/2; top-3 {0, 2, 3} -> 1/3
    # query 1 (label 1): top-1 {2} -> 1; top-2 {2, 4} -> 1/2; top-3 {2, 4, 1} -> 1/3
    assert label_agreement(SCORES, TRAIN, QUERY, 1).tolist() == [1.0, 1.0]
    assert label_agreement(SCORES, TRAIN, QUERY, 2).tolist() == [0.5, 0.5]
    got = label_agreement(SCORES, TRAIN, QUERY, 3)
    assert torch.allclose(got, torch.tensor([1 / 3, 1 / 3], dtype=torch.float64))
    # most harmful: query 0 -> {4, 1}: labels 2, 0 -> 1/2; query 1 -> {3, 0}: labels 1, 0 -> 1/2
    assert label_agreement(SCORES, TRAIN, QUERY, 2, "harmful").tolist() == [0.5, 0.5]


def test_label_agreement_checks_shapes_and_k() -> None:
    with pytest.raises(ValueError, match="labels do not match"):
        label_agreement(SCORES, TRAIN[:4], QUERY, 1)
    with pytest.raises(ValueError, match="k=6"):
        label_agreement(SCORES, TRAIN, QUERY, 6)
    with pytest.raises(ValueError, match="direction"):
        topk_indices(SCORES, 1, "sideways")


def test_chance_is_the_class_share_of_the_pool() -> None:
    assert chance_agreement(TRAIN, QUERY).tolist() == [0.4, 0.4]
    assert chance_agreement(TRAIN, torch.tensor([2])).tolist() == [0.2]


def test_topk_overlap_by_hand() -> None:
    other = torch.tensor([[0.0, 0.0, 1.0, 2.0, 0.0], [1.0, 0.0, 3.0, 0.0, 2.0]])
    # query 0: {0, 2} vs {3, 2} -> 1/2; query 1: {2, 4} vs {2, 4} -> 1
    assert topk_overlap(SCORES, other, 2).tolist() == [0.5, 1.0]
    assert topk_overlap(SCORES, SCORES, 3).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="shapes differ"):
        topk_overlap(SCORES, other[:1], 2)


def test_wilson_interval_matches_the_closed_form() -> None:
    # 0/10 at 95%: upper bound z^2 / (n + z^2) = 0.2775
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.27753, abs=1e-4)
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_bootstrap_ci_is_seeded_covers_the_mean_and_shrinks_with_n() -> None:
    gen = torch.Generator().manual_seed(0)
    small = torch.rand(20, generator=gen)
    large = torch.rand(2000, generator=gen)
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    low, high = bootstrap_ci(small)
    assert low < float(small.mean()) < high
    low_l, high_l = bootstrap_ci(large)
    assert high_l - low_l < (high - low) / 4
    # roughly the normal-theory width for n = 2000 uniforms (sd 0.2887)
    assert high_l - low_l == pytest.approx(2 * 1.96 * 0.2887 / math.sqrt(2000), rel=0.2)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_mean_with_ci_methods_and_nan_handling() -> None:
    values = torch.tensor([1.0, 0.0, 1.0, 1.0, float("nan")])
    boot = mean_with_ci(values)
    assert boot.n == 4 and boot.mean == 0.75 and boot.low <= 0.75 <= boot.high
    wil = mean_with_ci(values, method="wilson", k=1)
    assert (wil.low, wil.high) == pytest.approx(wilson_interval(3, 4))
    assert "95% CI" in str(wil)
    empty = mean_with_ci(torch.tensor([float("nan")]))
    assert empty.n == 0 and math.isnan(empty.mean)
    with pytest.raises(ValueError, match="bootstrap"):
        mean_with_ci(values, method="jackknife")


def test_agreement_table_perfect_vs_random_rankings() -> None:
    gen = torch.Generator().manual_seed(1)
    train = torch.arange(10).repeat_interleave(20)  # 200 items, 10 classes
    query = torch.arange(10).repeat(20)  # 200 queries
    perfect = (train[None, :] == query[:, None]).float() + 0.01 * torch.rand(
        200, 200, generator=gen
    )
    random = torch.randn(200, 200, generator=gen)
    table = agreement_table({"perfect": perfect, "random": random}, train, query, ks=(1, 10))
    assert len(table) == 2 * 2 * 2
    assert set(table.columns) >= {"method", "direction", "k", "agreement", "ci_low", "ci_high"}
    row = table.set_index(["method", "direction", "k"])
    assert row.loc[("perfect", "helpful", 10), "agreement"] == 1.0
    assert row.loc[("perfect", "harmful", 10), "agreement"] == 0.0
    rnd = row.loc[("random", "helpful", 10)]
    assert rnd.chance == pytest.approx(0.1)
    assert rnd.ci_low < 0.1 < rnd.ci_high  # a random ranking sits at chance


def test_overlap_table_lists_every_pair() -> None:
    scores = {"a": SCORES, "b": SCORES.flip(1), "c": SCORES}
    table = overlap_table(scores, ks=(2,), directions=("helpful",))
    pairs = set(zip(table.method_a, table.method_b, strict=True))
    assert pairs == {("a", "b"), ("a", "c"), ("b", "c")}
    assert float(table[(table.method_a == "a") & (table.method_b == "c")].overlap.iloc[0]) == 1.0
