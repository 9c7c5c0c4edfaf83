"""The language-scale benchmark's pieces on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from bifrepro.evaluation.token_links import QueryToken
from bifrepro.evaluation.token_metrics import TokenLinks
from bifrepro.evaluation.token_scale import (
    category_table,
    covering_observed,
    draws_for_agreement,
    link_resolution,
    method_comparison,
    projected_agreement,
    seed_agreement,
    seed_ranking,
)


def _links() -> TokenLinks:
    """Two training sequences x 3 tokens: [_, "3", "x"], [_, "three", "y"]; concept 0 = num:3."""
    concepts = torch.tensor([[-2, 0, -1], [-2, 0, -1]])
    surfaces = np.array([["", "3", "x"], ["", "three", "y"]])
    valid = torch.tensor([[False, True, True], [False, True, True]])
    return TokenLinks(concepts, surfaces, ["num:3"], valid)


QT = [QueryToken(0, 1, "num:3", "3", None)]


def test_cross_form_ranking_ignores_the_same_surface() -> None:
    links = _links()
    # "3" (same form) scores highest, then "three": cross-form rank 1
    scores = torch.tensor([[[0.0, 0.9, 0.1], [0.0, 0.5, 0.2]]])
    res = seed_ranking(scores, links, QT, (1,))
    assert res.precision[1][0] == 1.0 and res.reciprocal_rank[0] == 1.0
    # "x" above "three": rank 2
    scores = torch.tensor([[[0.0, 0.9, 0.6], [0.0, 0.5, 0.2]]])
    res = seed_ranking(scores, links, QT, (1,))
    assert res.precision[1][0] == 0.0 and res.reciprocal_rank[0] == 0.5
    # any form: the same word "3" counts, and it is first
    assert seed_ranking(scores, links, QT, (1,), form="any").precision[1][0] == 1.0


def _traces(link_like: bool, draws: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(2, draws, generator=g)
    train = torch.randn(2, draws, 2, 3, generator=g)
    target = (1, 1) if link_like else (0, 2)  # "three" or the unlinked "x"
    train[:, :, target[0], target[1]] = base + 0.3 * torch.randn(2, draws, generator=g)
    return base.unsqueeze(-1), train


@pytest.mark.parametrize("link_like", [True, False])
def test_link_resolution_knows_which_token_tracks_the_query(link_like: bool) -> None:
    q, train = _traces(link_like)
    (row,) = link_resolution(q, train, _links(), QT)
    assert row["resolved"]
    if link_like:
        assert row["outcome"] == "reproduced" and row["rank"] == 1
        assert row["best_link"] == 1 * 3 + 1
    else:
        assert row["outcome"] == "not reproduced" and row["rank"] >= 2


def test_link_resolution_marks_pure_noise_unresolved() -> None:
    g = torch.Generator().manual_seed(1)
    q, train = torch.randn(2, 60, 1, generator=g), torch.randn(2, 60, 2, 3, generator=g)
    (row,) = link_resolution(q, train, _links(), QT)
    assert not row["resolved"]


def test_seed_agreement_is_one_for_equal_scores_and_near_zero_for_noise() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 40, 6, generator=g)
    valid = torch.ones(40, 6, dtype=torch.bool)
    rows = seed_agreement({0: a, 1: a.clone(), 2: torch.randn(5, 40, 6, generator=g)}, valid, "s")
    by_pair = {(r["seed_a"], r["seed_b"]): r["pearson"] for r in rows}
    assert by_pair[(0, 1)] == pytest.approx(1.0)
    assert abs(by_pair[(0, 2)]) < 0.1


def test_category_table_means_and_intervals() -> None:
    rows = []
    for seed in (0, 1, 2):
        for q in range(4):
            cat = "numbers" if q < 2 else "verbs"
            hit = float(cat == "numbers")  # numbers always hit, verbs never
            rows.append(
                {
                    "size": "S",
                    "sampler_seed": seed,
                    "query": q,
                    "category": cat,
                    "precision_at_1": hit,
                    "reciprocal_rank": 1.0 if hit else 0.25,
                    "first_rank": 1.0 if hit else 4.0,
                    "chance_precision": 0.1,
                }
            )
    t = category_table(pd.DataFrame(rows), (1,), num_bootstrap=50).set_index("category")
    assert t.at["numbers", "precision_at_1"] == 1.0
    assert t.at["verbs", "precision_at_1"] == 0.0
    assert t.at["all", "precision_at_1"] == 0.5
    assert t.at["all", "mrr"] == pytest.approx(0.625)
    assert t.at["numbers", "precision_at_1_seed_sd"] == 0.0  # every seed agrees
    assert t.at["all", "num_queries"] == 4 and t.at["all", "num_seeds"] == 3
    assert t.at["all", "precision_at_1_q_low"] <= 0.5 <= t.at["all", "precision_at_1_q_high"]


def _method_rows(method: str, seeds: tuple[int, ...], rr: list[float]) -> list[dict]:
    return [
        {
            "method": method,
            "size": "S",
            "sampler_seed": seed,
            "query": q,
            "category": "numbers",
            "precision_at_1": float(r == 1.0),
            "reciprocal_rank": r,
            "first_rank": 1 / r,
            "chance_precision": 0.1,
        }
        for seed in seeds
        for q, r in enumerate(rr)
    ]


def test_methods_get_their_own_rows_and_a_paired_comparison() -> None:
    strong = [1.0] * 20 + [0.5] * 10  # BIF: first on 20 of 30 queries
    weak = [0.25] * 30  # EK-FAC: fourth on every query
    per_query = pd.DataFrame(
        _method_rows("bif", (0, 1, 2), strong) + _method_rows("ekfac", (-1,), weak)
    )
    table = category_table(per_query, (1,), num_bootstrap=50).set_index(["method", "category"])
    assert table.at[("bif", "all"), "precision_at_1"] == pytest.approx(2 / 3)
    assert table.at[("ekfac", "all"), "precision_at_1"] == 0.0
    assert table.at[("ekfac", "all"), "num_seeds"] == 1
    assert math.isnan(table.at[("ekfac", "all"), "precision_at_1_seed_sd"])
    compared = method_comparison(per_query, (1,), num_bootstrap=200)
    mrr = compared[compared["metric"] == "mrr"].sort_values("rank")
    assert list(mrr["method"]) == ["bif", "ekfac"]
    assert mrr.iloc[0]["resolved"] and mrr.iloc[0]["difference"] == pytest.approx(5 / 6 - 0.25)
    # the same scores for both methods: a tie, not resolved
    tie = pd.DataFrame(_method_rows("bif", (0,), weak) + _method_rows("ekfac", (-1,), weak))
    assert not method_comparison(tie, (1,), num_bootstrap=200)["resolved"].any()


def test_draws_for_agreement_inverts_the_noise_model() -> None:
    assert draws_for_agreement(0.5, 100) == pytest.approx(100)
    assert draws_for_agreement(0.2, 100) == pytest.approx(400)  # odds 1/4 -> 4x the draws
    assert math.isnan(draws_for_agreement(-0.1, 100))


def test_projected_agreement_matches_the_noise_model_and_measured_bif_runs() -> None:
    r = 0.2
    assert projected_agreement(r, draws_for_agreement(r, 100) / 100) == pytest.approx(0.5)
    assert projected_agreement(0.37, 1.0) == pytest.approx(0.37)
    assert math.isnan(projected_agreement(0.0, 3.0))
    # measured on token BIF: four independent runs of 4 chains each and two runs of 12 chains
    # whose loss traces share a latent structure (the true scores) under per-draw noise
    from bifrepro.attribution.token_bif import TokenBIF

    gen = torch.Generator().manual_seed(0)
    latent, q, n, t, draws = 6, 4, 30, 8, 40
    load_q = torch.randn(latent, q, t, generator=gen, dtype=torch.float64)
    load_n = torch.randn(latent, n, t, generator=gen, dtype=torch.float64)

    def run(chains: int) -> torch.Tensor:
        z = torch.randn(chains, draws, latent, generator=gen, dtype=torch.float64)
        qt = torch.einsum("cdl,lqt->cdqt", z, load_q) + 4 * torch.randn(
            chains, draws, q, t, generator=gen, dtype=torch.float64
        )
        nt = torch.einsum("cdl,lnt->cdnt", z, load_n) + 4 * torch.randn(
            chains, draws, n, t, generator=gen, dtype=torch.float64
        )
        tb = TokenBIF(qt, nt)
        return tb.scores([(i, j) for i in range(q) for j in range(t)], list(range(n))).reshape(-1)

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    small = [run(4) for _ in range(4)]
    r_small = float(np.mean([corr(small[0], small[1]), corr(small[2], small[3])]))
    r_full = corr(run(12), run(12))
    assert 0.1 < r_small < 0.7 and r_full > r_small  # a regime where the projection matters
    assert projected_agreement(r_small, 3) == pytest.approx(r_full, abs=0.08)


def test_senses_rank_the_right_sense_among_bank_tokens() -> None:
    """One surface form, two senses: the query "bank" (money) must find the money "bank"."""
    concepts = torch.tensor([[-2, 0, -1], [-2, 1, -1]])
    surfaces = np.array([["", "bank", "x"], ["", "bank", "y"]])
    valid = torch.tensor([[False, True, True], [False, True, True]])
    links = TokenLinks(concepts, surfaces, ["bank:finance", "bank:river"], valid)
    qt = [QueryToken(0, 1, "bank:finance", "bank", None)]
    right = torch.tensor([[[0.0, 0.8, 0.9], [0.0, 0.1, 0.95]]])  # x, y score higher: ignored
    assert seed_ranking(right, links, qt, (1,)).precision[1][0] == 1.0
    wrong = torch.tensor([[[0.0, 0.1, 0.0], [0.0, 0.8, 0.0]]])
    assert seed_ranking(wrong, links, qt, (1,)).precision[1][0] == 0.0


def test_covering_observed_holds_every_form_of_every_query_concept() -> None:
    from bifrepro.data.separated_text import (
        generate_separated_corpus,
        pack_separated,
        separated_queries,
    )
    from bifrepro.data.tokenizer import train_bpe_tokenizer
    from bifrepro.evaluation.token_links import token_surfaces

    docs = generate_separated_corpus(400, seed=0)
    tok = train_bpe_tokenizer([d.text for d in docs], 500)
    seqs = pack_separated(docs, tok, 48, {})
    concepts = sorted({q.text.spans[0][2] for q in separated_queries()})
    idx = covering_observed(seqs, tok, concepts, 150, seed=0, per_form=1)
    assert len(idx) == 150 and len(set(idx.tolist())) == 150
    surf = token_surfaces(tok, seqs.input_ids)
    for cid, name in enumerate(seqs.concept_names):
        if name not in concepts:
            continue
        rows, cols = np.nonzero(seqs.concepts.numpy() == cid)
        everywhere = {str(surf[r, c]) for r, c in zip(rows, cols, strict=True)}
        rows, cols = np.nonzero(seqs.concepts[idx].numpy() == cid)
        observed = {str(surf[idx[r], c]) for r, c in zip(rows, cols, strict=True)}
        assert observed == everywhere, name
    with pytest.raises(ValueError, match="too small"):
        covering_observed(seqs, tok, concepts, 10, seed=0)
