"""The token-link benchmark per group of chains and the groups' agreement."""

from __future__ import annotations

import pytest
import torch

from bifrepro.attribution.token_bif import TokenBIF
from bifrepro.evaluation.token_chain_groups import (
    chain_group_benchmark,
    chain_group_metrics,
    chain_groups,
)
from bifrepro.evaluation.token_links import (
    benchmark_tables,
    bif_rankings,
    query_tokens,
    training_links,
)
from tests.data._text import packed_text


@pytest.fixture(scope="module")
def setup():
    tok, seqs, qs = packed_text()
    obs = seqs.subset(range(12))
    return obs, qs, query_tokens(qs, tok), training_links(obs, tok)


def _traces(query: torch.Tensor, train: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"query": query, "train": train}


def test_groups_are_equal_contiguous_slices_or_an_error():
    assert chain_groups(6, 3) == [[0, 1], [2, 3], [4, 5]]
    assert chain_groups(4, 1) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="equal groups"):
        chain_groups(4, 3)


def test_identical_groups_agree_fully_and_match_the_benchmark_of_one_group(setup):
    obs, qs, qts, links = setup
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(2, 8, len(obs), obs.seq_len, generator=gen, dtype=torch.float64)
    query = torch.randn(2, 8, len(qs), qs.seq_len, generator=gen, dtype=torch.float64)
    # three groups holding the very same two chains
    traces = _traces(query.repeat(3, 1, 1, 1), train.repeat(3, 1, 1, 1))
    per_group, agreement = chain_group_benchmark(traces, 3, links, qts, (1, 10))
    assert len(agreement) == 3  # pairs (0,1), (0,2), (1,2)
    assert agreement["pearson"].tolist() == pytest.approx([1.0] * 3)
    table, _ = benchmark_tables(bif_rankings(TokenBIF(query, train), links, qts, (1, 10)), qts)
    ref = table[(table.method == "bif") & (table.level == "token") & (table.subset == "all")]
    ref = ref[(ref.scope == "all") & (ref.form == "other") & (ref.category == "all")].iloc[0]
    cross = per_group[(per_group.form == "other") & (per_group.category == "all")]
    assert cross["mrr"].tolist() == pytest.approx([ref.mrr] * 3)
    # each poster example's own reciprocal rank per group, equal to the one-group benchmark's
    _, per_query = benchmark_tables(bif_rankings(TokenBIF(query, train), links, qts, (1, 10)), qts)
    ex = per_query[per_query.example.astype(str) != ""].iloc[0]
    rows = per_group[(per_group.category == f"example:{ex.example}") & (per_group.form == "any")]
    assert rows["mrr"].tolist() == pytest.approx([ex.rr_bif_token_all_any] * 3)
    metrics = chain_group_metrics(per_group, agreement)
    assert metrics["chain_groups/all_other/mrr_sd"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["chain_groups/agreement_pearson"] == pytest.approx(1.0)


def test_independent_noise_groups_do_not_agree(setup):
    obs, qs, qts, links = setup
    gen = torch.Generator().manual_seed(1)
    train = torch.randn(6, 40, len(obs), obs.seq_len, generator=gen, dtype=torch.float64)
    query = torch.randn(6, 40, len(qs), qs.seq_len, generator=gen, dtype=torch.float64)
    _, agreement = chain_group_benchmark(_traces(query, train), 3, links, qts, (1,))
    assert agreement["pearson"].abs().max() < 0.1
    # a shared signal on top of the noise makes them agree
    signal_q = torch.randn(1, 40, len(qs), qs.seq_len, generator=gen, dtype=torch.float64)
    signal_t = torch.randn(1, 40, len(obs), obs.seq_len, generator=gen, dtype=torch.float64)
    shared = _traces(query + 3 * signal_q, train + 3 * signal_t.expand(6, -1, -1, -1))
    _, agree_shared = chain_group_benchmark(shared, 3, links, qts, (1,))
    assert agree_shared["pearson"].min() > 0.5
