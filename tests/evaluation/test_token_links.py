"""The token-link benchmark protocol: query tokens, links, BIF rankings, tables and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bifrepro.attribution.token_bif import TokenBIF
from bifrepro.data.text import (
    AMBIGUOUS,
    POSTER_EXAMPLES,
    TokenizedSequences,
)
from bifrepro.evaluation.token_links import (
    QueryToken,
    baseline_rankings,
    benchmark_metrics,
    benchmark_tables,
    bif_rankings,
    dense_ranking,
    example_outcomes,
    link_key,
    query_token_dataset,
    query_tokens,
    token_surfaces,
    training_links,
)
from tests.data._text import packed_text


@pytest.fixture(scope="module")
def packed():
    """Poster examples + a few generated queries, and training sequences, on one tokenizer."""
    tok, seqs, qs = packed_text()
    return tok, seqs.subset(range(12)), qs


def test_link_key_groups_categories_only_where_they_link() -> None:
    assert link_key("country:france") == "country" and link_key("name:marie") == "name"
    assert link_key("num:3") == "num:3"


class _WordTokenizer:
    """Token id i decodes to " W<i>" (with a leading space and a capital)."""

    def decode(self, ids: list[int]) -> str:
        return f" W{ids[0]}"


def test_token_surfaces_are_stripped_lower_case() -> None:
    ids = torch.tensor([[3, 4], [4, 3]])
    surf = token_surfaces(_WordTokenizer(), ids)
    assert surf.tolist() == [["w3", "w4"], ["w4", "w3"]]


def test_query_tokens_flag_poster_examples_and_their_focus_word(packed) -> None:
    tok, _, qs = packed
    qts = query_tokens(qs, tok)
    by_example = {q.example: q for q in qts if q.example}
    assert set(by_example) == {e.name for e in POSTER_EXAMPLES if e.name in by_example}
    assert by_example["numbers"].surface == "3"
    for e in POSTER_EXAMPLES:  # a poster example contributes only its focus word
        own = [q for q in qts if q.example == e.name]
        assert all(q.concept == e.focus_concept for q in own)
    assert all(q.pos > 0 for q in qts)
    generated = [q for q in qts if q.example is None]
    assert generated and all(q.seq >= len(POSTER_EXAMPLES) for q in generated)
    # a generated token is cued when its link key occurred earlier in its sentence
    for q in generated:
        earlier = [
            link_key(qs.concept_names[int(c)]) for c in qs.concepts[q.seq, : q.pos] if int(c) >= 0
        ]
        assert q.cued == (link_key(q.concept) in earlier)


def test_query_token_dataset_keeps_one_label(packed) -> None:
    tok, _, qs = packed
    qts = query_tokens(qs, tok)[:3]
    ids, mask, labels = query_token_dataset(qs, qts).tensors
    assert ids.shape == (3, qs.seq_len) and mask.shape == ids.shape
    for r, q in enumerate(qts):
        assert (labels[r] != -100).sum() == 1 and labels[r, q.pos] == ids[r, q.pos]


def test_training_links_exclude_position_zero_and_padding(packed) -> None:
    tok, obs, _ = packed
    links = training_links(obs, tok)
    assert not links.base_valid[:, 0].any()
    real = obs.attention_mask.bool().numpy()
    assert not (links.base_valid & ~real).any()
    assert not (links.base_valid & (obs.concepts.numpy() == AMBIGUOUS)).any()


def test_blockwise_bif_ranking_equals_dense_and_tables_summarise(packed) -> None:
    tok, obs, qs = packed
    qts = query_tokens(qs, tok)
    links = training_links(obs, tok)
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(2, 6, len(obs), obs.seq_len, generator=gen, dtype=torch.float64)
    query = torch.randn(2, 6, len(qs), qs.seq_len, generator=gen, dtype=torch.float64)
    tb = TokenBIF(query, train, block_size=5)  # several blocks
    ks = (1, 5)
    results = bif_rankings(tb, links, qts, ks)
    pairs = [(q.seq, q.pos) for q in qts]
    dense = dense_ranking(tb.scores(pairs), links, qts, ks, "token")
    for combo, res in results[("bif", "token")].items():
        np.testing.assert_allclose(res.reciprocal_rank, dense[combo].reciprocal_rank)
    # EK-FAC-like token scores also rank per sequence (summed); GradSim only per sequence
    fake = {"ekfac": tb.scores(pairs), "gradsim": tb.sequence_scores(pairs)}
    results |= baseline_rankings(fake, links, qts, ks)
    assert list(results) == [
        ("bif", "token"), ("bif", "sequence"), ("ekfac", "token"), ("ekfac", "sequence"),
        ("gradsim", "sequence"),
    ]  # fmt: skip
    table, per_query = benchmark_tables(results, qts)
    assert set(table.subset) <= {"all", "cued", "uncued"} and "all" in set(table.category)
    assert len(per_query) == len(qts) and "rr_bif_token_all_other" in per_query
    metrics = benchmark_metrics(table, ks)
    row = table[(table.category == "all") & (table.subset == "all")]
    row = row[(row.method == "bif") & (row.level == "token") & (row.scope == "all")]
    row = row[row.form == "other"].iloc[0]
    assert metrics["token/bif/all_other/mrr"] == pytest.approx(row.mrr)
    assert metrics["token/bif/all_other/precision_at_5"] == pytest.approx(row.precision_at_5)
    assert "sequence/gradsim/all_any/chance_precision" in metrics


def test_dense_sequence_ranking_takes_any_relevant_token() -> None:
    concepts = torch.tensor([[AMBIGUOUS, 0, -1], [AMBIGUOUS, -1, -1]])
    ids = torch.tensor([[1, 2, 3], [1, 4, 5]])
    obs = TokenizedSequences(ids, torch.ones_like(ids), concepts, ["num:3"], ["t", "t"], ["", ""])
    links = training_links(obs, _WordTokenizer())
    qts = [QueryToken(0, 1, "num:3", "x", None)]
    res = dense_ranking(torch.tensor([[0.1, 0.9]]), links, qts, (1,), "sequence")
    assert res[("all", "any")].reciprocal_rank[0] == 0.5  # sequence 1 holds no "3"


def test_example_outcomes_state_the_rank_of_the_first_linked_token() -> None:
    import pandas as pd

    pq = pd.DataFrame(
        {
            "example": ["numbers", "numbers_five", "bank_river", "elle", ""],
            "rr_bif_token_all_other": [1.0, 1 / 63, np.nan, np.nan, 0.5],
            "rr_bif_token_all_any": [1.0, 1.0, 0.25, np.nan, 1.0],
        }
    )
    out = example_outcomes(pq)
    assert set(out) == {"numbers", "numbers_five", "bank_river", "elle"}  # unlabelled row skipped
    assert out["numbers"].startswith("reproduced") and "rank 1" in out["numbers"]
    assert out["numbers_five"].startswith("NOT reproduced") and "rank 63" in out["numbers_five"]
    # no other surface form: falls back to any token of the concept
    assert (
        out["bank_river"].startswith("in the top 10")
        and "same-concept token at rank 4" in (out["bank_river"])
    )
    assert out["elle"].startswith("not measurable")


def test_example_outcomes_say_whether_the_chain_groups_agree() -> None:
    import pandas as pd

    pq = pd.DataFrame(
        {
            "example": ["numbers", "numbers_five"],
            "rr_bif_token_all_other": [1.0, 1 / 63],
            "rr_bif_token_all_any": [1.0, 1.0],
        }
    )
    groups = pd.DataFrame(
        {
            "group": [0, 1, 2, 0, 1, 2],
            "form": ["other"] * 6,
            "category": ["example:numbers"] * 3 + ["example:numbers_five"] * 3,
            "mrr": [1.0, 1.0, 1.0, 1 / 40, 1 / 2, 1 / 120],
        }
    )
    out = example_outcomes(pq, per_group=groups)
    assert out["numbers"].endswith("(per chain group: 1, 1, 1; same verdict in every group)")
    # one group puts the translation at rank 2 (top 10), the others far below: not resolved
    assert out["numbers_five"].startswith("NOT reproduced")
    assert "(per chain group: 40, 2, 120; not resolved)" in out["numbers_five"]
