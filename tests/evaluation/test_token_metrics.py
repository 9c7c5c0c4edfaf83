"""Precision@k and reciprocal rank against known token links (hand-computed cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bifrepro.data.text import AMBIGUOUS, NO_CONCEPT
from bifrepro.evaluation.token_metrics import BlockwiseRanking, TokenLinks, ranking_metrics


def test_hand_computed_precision_and_reciprocal_rank() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
    relevant = torch.tensor([[False, True, False, False, True], [True, False, False, False, False]])
    res = ranking_metrics(scores, relevant, ks=(1, 2, 5))
    # query 0: ranking 0,1,2,3,4 -> relevant at ranks 2 and 5
    assert res.precision[1][0] == 0.0 and res.precision[2][0] == 0.5 and res.precision[5][0] == 0.4
    assert res.reciprocal_rank[0] == 0.5
    # query 1: ranking 4,3,2,1,0 -> relevant item 0 is last
    assert res.reciprocal_rank[1] == pytest.approx(1 / 5) and res.first_rank[1] == 5
    assert res.chance[0] == pytest.approx(2 / 5) and res.chance[1] == pytest.approx(1 / 5)
    summary = res.summary()
    assert summary["mrr"] == pytest.approx((0.5 + 0.2) / 2)
    assert summary["precision_at_1"] == 0.0 and summary["num_queries"] == 2


def test_invalid_candidates_are_ignored_and_empty_queries_are_nan() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0], [1.0, 2.0, 3.0]])
    relevant = torch.tensor([[False, False, True], [False, False, False]])
    valid = torch.tensor([[False, True, True], [True, True, True]])
    res = ranking_metrics(scores, relevant, valid, ks=(1,))
    assert res.reciprocal_rank[0] == 0.5  # item 0 is not a candidate, item 1 beats item 2
    assert math.isnan(res.reciprocal_rank[1]) and math.isnan(res.precision[1][1])
    assert res.summary()["num_queries"] == 1


def test_blockwise_equals_dense_on_random_scores() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(7, 300, generator=g)
    relevant = torch.rand(7, 300, generator=g) < 0.05
    valid = torch.rand(7, 300, generator=g) < 0.9
    dense = ranking_metrics(scores, relevant, valid, ks=(1, 5, 10))
    acc = BlockwiseRanking(7, ks=(1, 5, 10))
    for phase in ("update", "count"):
        for a in range(0, 300, 37):
            getattr(acc, phase)(
                scores[:, a : a + 37], relevant[:, a : a + 37], valid[:, a : a + 37]
            )
    blocked = acc.result()
    for k in (1, 5, 10):
        np.testing.assert_array_equal(dense.precision[k], blocked.precision[k])
    np.testing.assert_array_equal(dense.reciprocal_rank, blocked.reciprocal_rank)
    # brute force reciprocal rank
    for q in range(7):
        order = torch.argsort(scores[q].masked_fill(~valid[q], -1e9), descending=True)
        ranks = [i + 1 for i, j in enumerate(order.tolist()) if relevant[q, j] and valid[q, j]]
        if ranks:
            assert dense.reciprocal_rank[q] == pytest.approx(1 / ranks[0])


def test_result_needs_the_second_pass() -> None:
    acc = BlockwiseRanking(1)
    acc.update(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="count"):
        acc.result()


def _links() -> TokenLinks:
    names = ["num:3", "num:5", "country:france", "country:spain", "bank:finance", "bank:river"]
    c = {n: i for i, n in enumerate(names)}
    concepts = torch.tensor(
        [
            [AMBIGUOUS, c["num:3"], c["num:3"], c["num:5"], NO_CONCEPT],
            [
                AMBIGUOUS,
                c["country:france"],
                c["country:spain"],
                c["bank:finance"],
                c["bank:river"],
            ],
        ]
    )
    surfaces = np.array(
        [["<s>", "3", "trois", "5", "the"], ["<s>", "france", "spain", "bank", "bank"]]
    )
    base = torch.ones(2, 5, dtype=torch.bool)
    base[:, 0] = False
    return TokenLinks(concepts, surfaces, names, base)


def test_token_links_scopes_and_forms() -> None:
    links = _links()
    rel, val = links.masks("num:3", "3", "all", "any")
    assert rel.tolist() == [[False, True, True, False, False], [False] * 5]
    assert val.sum() == 8  # position 0 / ambiguous tokens are never candidates
    rel, val = links.masks("num:3", "3", "all", "other")
    assert rel[0].tolist() == [False, False, True, False, False] and not val[0, 1]
    rel, val = links.masks("num:3", "3", "category", "any")
    assert val.tolist() == [[False, True, True, True, False], [False] * 5]
    # countries link at category level; the category scope is then meaningless (empty)
    rel, _ = links.masks("country:italy", "italy", "all", "any")
    assert rel[1].tolist() == [False, True, True, False, False]
    rel, val = links.masks("country:italy", "italy", "category", "any")
    assert not rel.any() and not val.any()
    # bank senses: the category scope keeps both senses as candidates
    rel, val = links.masks("bank:finance", "bank", "category", "any")
    assert rel[1].tolist() == [False, False, False, True, False]
    assert val[1].tolist() == [False, False, False, True, True]
    # rows select a block of training sequences
    rel, _ = links.masks("num:5", "5", "all", "any", rows=slice(0, 1))
    assert rel.shape == (1, 5) and rel[0, 3]
    with pytest.raises(ValueError, match="scope"):
        links.masks("num:3", "3", "some", "any")
