"""The token-link benchmark of the language experiment: which training tokens does a method rank
first for a labelled query token, against the generator's ground truth?

The queries are the labelled tokens of the query sentences (:func:`query_tokens`; the poster
examples only count their focus word); the candidates are the observed training tokens, linked by
concept (:func:`training_links`, :class:`~bifrepro.evaluation.token_metrics.TokenLinks`).
:func:`bif_rankings` ranks BIF per token (blockwise, exact) and per sequence,
:func:`baseline_rankings` EK-FAC per token and per sequence and GradSim per sequence, for every
scope × form; :func:`benchmark_tables` and
:func:`benchmark_metrics` summarise them per method × level × subset (cued / uncued) × category.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from bifrepro.attribution.base import CausalLMTask
from bifrepro.attribution.configs import EKFACConfig, GradSimConfig
from bifrepro.attribution.ekfac import EKFACAttributor
from bifrepro.attribution.gradsim import GradSimAttributor
from bifrepro.attribution.token_bif import TokenBIF
from bifrepro.data.text import CATEGORY_LEVEL, POSTER_EXAMPLES, TokenizedSequences, concept_category
from bifrepro.evaluation.ranking import resolved_ranking
from bifrepro.evaluation.token_metrics import (
    FORMS,
    SCOPES,
    BlockwiseRanking,
    RankingResult,
    TokenLinks,
    ranking_metrics,
)

__all__ = [
    "QueryToken",
    "Rankings",
    "token_surfaces",
    "link_key",
    "query_tokens",
    "training_links",
    "bif_token_ranking",
    "dense_ranking",
    "query_token_dataset",
    "baseline_scores",
    "bif_rankings",
    "baseline_rankings",
    "benchmark_ranking",
    "benchmark_tables",
    "benchmark_metrics",
    "EXAMPLE_PREFIX",
    "example_outcomes",
]

#: ``category`` of a single poster example's rows in per-group tables (``example:numbers``).
EXAMPLE_PREFIX = "example:"

#: (method, level) -> (scope, form) -> ranking of every query token
Rankings = dict[tuple[str, str], dict[tuple[str, str], RankingResult]]


@dataclass
class QueryToken:
    """One labelled query token: where it is, what it means, and whether it is a poster example."""

    seq: int
    pos: int
    concept: str
    surface: str
    example: str | None
    #: the concept (category for countries, cities, names) occurs earlier in the query, e.g. the
    #: "3" of "Marie a trois pommes. Marie has 3 apples.": its prediction can use the link
    cued: bool = False


def token_surfaces(tokenizer: Any, ids: torch.Tensor) -> np.ndarray:
    """Normalised surface form (stripped, lower case) of every token in ``ids``."""
    vocab = sorted(set(ids.unique().tolist()))
    table = {i: tokenizer.decode([i]).strip().lower() for i in vocab}
    flat = np.array([table[i] for i in ids.reshape(-1).tolist()], dtype=object)
    return flat.reshape(tuple(ids.shape)).astype(str)


def link_key(concept: str) -> str:
    """What a token links by: its category for countries, cities and names, else its concept."""
    cat = concept_category(concept)
    return cat if cat in CATEGORY_LEVEL else concept


def query_tokens(queries: TokenizedSequences, tokenizer: Any) -> list[QueryToken]:
    """Every labelled query token (the benchmark's queries); poster examples are flagged.

    ``queries`` hold one sentence per sequence, the :data:`~bifrepro.data.text.POSTER_EXAMPLES`
    first; a poster example contributes only its focus word.
    """
    q = queries
    surf = token_surfaces(tokenizer, q.input_ids)
    out = []
    for i in range(len(q)):
        example = POSTER_EXAMPLES[i].name if i < len(POSTER_EXAMPLES) else None
        earlier: set[str] = set()
        for pos, word in enumerate(surf[i].tolist()):
            cid = int(q.concepts[i, pos])
            concept = q.concept_names[cid] if cid >= 0 else None
            key = link_key(concept) if concept else None
            if example is not None:
                # poster examples label only their focus word: cue = its translation earlier on
                cued = POSTER_EXAMPLES[i].text.text.count(".") > 1
            else:
                cued = key in earlier
            if concept is not None and pos > 0:
                if example is None or concept == POSTER_EXAMPLES[i].focus_concept:
                    out.append(QueryToken(i, pos, concept, str(word), example, cued))
            if key is not None:
                earlier.add(key)
    return out


def training_links(observed: TokenizedSequences, tokenizer: Any) -> TokenLinks:
    """Links of the observed training tokens; candidates are real tokens after position 0."""
    base = observed.attention_mask.bool().clone()
    base[:, 0] = False
    surfaces = token_surfaces(tokenizer, observed.input_ids)
    return TokenLinks(observed.concepts, surfaces, observed.concept_names, base)


def _stack_masks(
    links: TokenLinks, qts: list[QueryToken], scope: str, form: str, rows: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    rel, val = zip(
        *(links.masks(q.concept, q.surface, scope, form, rows) for q in qts), strict=True
    )
    return torch.stack(rel).flatten(1), torch.stack(val).flatten(1)


def bif_token_ranking(
    tb: TokenBIF, links: TokenLinks, qts: list[QueryToken], ks: tuple[int, ...]
) -> dict[tuple[str, str], RankingResult]:
    """Exact precision@k / MRR over all training tokens, two passes over blocks (never the full
    matrix)."""
    pairs = [(q.seq, q.pos) for q in qts]
    combos = [(sc, fo) for sc in SCOPES for fo in FORMS]
    acc = {c: BlockwiseRanking(len(qts), ks) for c in combos}
    for phase in ("update", "count"):
        for start, stop, block in tb.iter_blocks(pairs):
            flat = block.reshape(len(qts), -1)
            for c in combos:
                rel, val = _stack_masks(links, qts, *c, slice(start, stop))
                getattr(acc[c], phase)(flat, rel, val)
    return {c: a.result() for c, a in acc.items()}


def dense_ranking(
    scores: torch.Tensor,
    links: TokenLinks,
    qts: list[QueryToken],
    ks: tuple[int, ...],
    level: str,
) -> dict[tuple[str, str], RankingResult]:
    """Rankings of dense scores ``[q, n, T]`` (token level) or ``[q, n]`` (sequence level)."""
    out = {}
    for sc in SCOPES:
        for fo in FORMS:
            rel, val = _stack_masks(links, qts, sc, fo, slice(None))
            if level == "sequence":
                n = scores.shape[1]
                rel, val = rel.view(len(qts), n, -1).any(-1), val.view(len(qts), n, -1).any(-1)
                out[(sc, fo)] = ranking_metrics(scores, rel, val, ks)
            else:
                out[(sc, fo)] = ranking_metrics(scores.reshape(len(qts), -1), rel, val, ks)
    return out


def query_token_dataset(queries: TokenizedSequences, qts: list[QueryToken]) -> TensorDataset:
    """One item per query token: its sentence with labels kept only at that token."""
    ids = queries.input_ids[[q.seq for q in qts]]
    mask = queries.attention_mask[[q.seq for q in qts]]
    labels = torch.full_like(ids, -100)
    for r, q in enumerate(qts):
        labels[r, q.pos] = ids[r, q.pos]
    return TensorDataset(ids, mask, labels)


def baseline_scores(
    model: torch.nn.Module,
    observed: TokenizedSequences,
    queries: TokenizedSequences,
    qts: list[QueryToken],
    methods: list[str],
    ekfac: EKFACConfig,
    gradsim: GradSimConfig,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """EK-FAC per training token and GradSim per training sequence, for every query token.

    Returns the scores of the ``methods`` named (``ekfac`` ``[q, n, T]``, ``gradsim`` ``[q, n]``)
    and their timings (``timing/<method>/...``).
    """
    task = CausalLMTask(reduction="sum")  # per-token losses are raw NLLs, as BIF observes
    query_data = query_token_dataset(queries, qts)
    train = observed.dataset()
    scores: dict[str, torch.Tensor] = {}
    metrics: dict[str, float] = {}
    if "ekfac" in methods:
        cfg = dataclasses.replace(ekfac, per_token="train")
        att = EKFACAttributor(cfg).fit(model, task, train)
        scores["ekfac"] = att.score(query_data)  # [q, n, T]
        metrics.update(att.timings.to_metrics("timing/ekfac/"))
    if "gradsim" in methods:
        att = GradSimAttributor(gradsim).fit(model, task, train)
        scores["gradsim"] = att.score(query_data)  # [q, n]
        metrics.update(att.timings.to_metrics("timing/gradsim/"))
    return scores, metrics


def bif_rankings(
    tb: TokenBIF, links: TokenLinks, qts: list[QueryToken], ks: tuple[int, ...]
) -> Rankings:
    """BIF's rankings per training token (blockwise, exact) and per training sequence."""
    results: Rankings = {("bif", "token"): bif_token_ranking(tb, links, qts, ks)}
    pairs = [(q.seq, q.pos) for q in qts]
    results[("bif", "sequence")] = dense_ranking(
        tb.sequence_scores(pairs), links, qts, ks, "sequence"
    )
    return results


def baseline_rankings(
    scores: dict[str, torch.Tensor], links: TokenLinks, qts: list[QueryToken], ks: tuple[int, ...]
) -> Rankings:
    """Rankings of :func:`baseline_scores`: EK-FAC per token and per sequence (its token scores
    summed), GradSim per sequence."""
    results: Rankings = {}
    if "ekfac" in scores:
        results[("ekfac", "token")] = dense_ranking(scores["ekfac"], links, qts, ks, "token")
        results[("ekfac", "sequence")] = dense_ranking(
            scores["ekfac"].sum(-1), links, qts, ks, "sequence"
        )
    if "gradsim" in scores:
        results[("gradsim", "sequence")] = dense_ranking(
            scores["gradsim"], links, qts, ks, "sequence"
        )
    return results


def benchmark_tables(results: Rankings, qts: list[QueryToken]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long benchmark table (every subset and category) and per-query reciprocal ranks."""
    cats = np.array([concept_category(q.concept) for q in qts])
    cued = np.array([q.cued for q in qts])
    subsets = {"all": np.ones(len(qts), bool), "cued": cued, "uncued": ~cued}
    rows, per_query = [], {}
    for (method, level), combos in results.items():
        for (scope, form), res in combos.items():
            for subset, in_subset in subsets.items():
                for cat in ["all", *sorted(set(cats))]:
                    sel = in_subset & (True if cat == "all" else cats == cat)
                    summ = res.summary(sel)
                    if summ["num_queries"] == 0:
                        continue
                    key = {"method": method, "level": level, "scope": scope, "form": form}
                    rows.append(key | {"subset": subset, "category": cat} | summ)
            per_query[f"rr_{method}_{level}_{scope}_{form}"] = res.reciprocal_rank
    table = pd.DataFrame(rows)
    pq = pd.DataFrame(
        {
            "query_seq": [q.seq for q in qts],
            "position": [q.pos for q in qts],
            "concept": [q.concept for q in qts],
            "surface": [q.surface for q in qts],
            "example": [q.example or "" for q in qts],
            "cued": [q.cued for q in qts],
        }
        | per_query
    )
    return table, pq


def benchmark_ranking(
    per_query: pd.DataFrame, num_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Methods ranked by mean reciprocal rank per level (token or sequence: different questions,
    never mixed), scope, form and category, each step resolved or not by a paired bootstrap over
    the queries (:func:`bifrepro.evaluation.ranking.resolved_ranking`)."""
    cats = [concept_category(c) for c in per_query["concept"]]
    rows = []
    for col in (c for c in per_query.columns if c.startswith("rr_")):
        method, level, scope, form = col[3:].split("_", 3)
        for q, (rr, cat) in enumerate(zip(per_query[col], cats, strict=True)):
            for category in ("all", cat):
                rows.append({"method": method, "level": level, "scope": scope, "form": form,
                             "category": category, "query": q, "rr": rr})  # fmt: skip
    return resolved_ranking(
        pd.DataFrame(rows), method="method", value="rr", unit="query",
        by=["level", "scope", "form", "category"], num_bootstrap=num_bootstrap,
        confidence=confidence, seed=seed,
    )  # fmt: skip


def benchmark_metrics(table: pd.DataFrame, ks: tuple[int, ...]) -> dict[str, float]:
    """``<level>/<method>/[<subset>/]<scope>_<form>/{precision_at_k, mrr, chance_precision}`` of
    the rows over every category of :func:`benchmark_tables`' table."""
    metrics: dict[str, float] = {}
    overall = table[table.category == "all"].reset_index(drop=True)
    for r in overall.itertuples():
        sub = "" if r.subset == "all" else f"{r.subset}/"
        prefix = f"{r.level}/{r.method}/{sub}{r.scope}_{r.form}/"
        for k in ks:
            metrics[prefix + f"precision_at_{k}"] = float(getattr(r, f"precision_at_{k}"))
        metrics[prefix + "mrr"] = float(r.mrr)
        metrics[prefix + "chance_precision"] = float(r.chance_precision)
    return metrics


def example_outcomes(
    per_query: pd.DataFrame,
    method: str = "bif",
    level: str = "token",
    top: int = 10,
    per_group: pd.DataFrame | None = None,
) -> dict[str, str]:
    """Per poster example, whether ``method`` reproduces its link, with the rank, for figure titles.

    The rank is that of the first linked training token in ``method``'s ranking over all observed
    tokens (``per_query``'s reciprocal ranks, :func:`benchmark_tables`): the translation or other
    surface form where the concept has one (e.g. "five" for "5"), otherwise any token of the same
    concept (the two senses of "bank"). Rank 1 is "reproduced", rank <= ``top`` "in the top
    ``top``", anything later "NOT reproduced". With ``per_group`` (BIF's ranks per group of chains,
    rows of category ``example:<name>``,
    :func:`~bifrepro.evaluation.token_chain_groups.chain_group_benchmark`) the groups' ranks
    follow, and whether every group gives the same verdict (else: "not resolved").
    """

    def verdict(rank: int) -> str:
        return (
            "reproduced" if rank == 1 else f"in the top {top}" if rank <= top else "NOT reproduced"
        )

    out = {}
    for _, row in per_query[per_query["example"].astype(str) != ""].iterrows():
        form = "other"
        rr = row.get(f"rr_{method}_{level}_all_other", np.nan)
        if not np.isfinite(rr):
            form, rr = "any", row.get(f"rr_{method}_{level}_all_any", np.nan)
        what = "translation / other form" if form == "other" else "same-concept token"
        if not np.isfinite(rr) or rr <= 0:
            out[row["example"]] = f"not measurable (no {what} observed)"
            continue
        rank = int(round(1.0 / rr))
        text = f"{verdict(rank)}: first {what} at rank {rank}"
        if per_group is not None:
            sel = per_group[(per_group["category"] == f"{EXAMPLE_PREFIX}{row['example']}")
                            & (per_group["form"] == form)]  # fmt: skip
            ranks = [int(round(1.0 / r)) if r > 0 else None for r in sel["mrr"].astype(float)]
            if ranks and None not in ranks:
                same = len({verdict(r) for r in ranks}) == 1
                text += (f" (per chain group: {', '.join(map(str, ranks))}; "
                         f"{'same verdict in every group' if same else 'not resolved'})")  # fmt: skip
        out[row["example"]] = text
    return out
