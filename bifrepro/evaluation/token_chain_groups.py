"""Sampler-seed spread of the token-link benchmark from groups of chains.

Every chain has its own random stream (seeded by the sampler seed and the chain index), so the
chains split into G equal groups are G independent runs of ``num_chains / G`` chains each, as G
sampler seeds would be. :func:`chain_group_benchmark` scores the benchmark on each group and
measures how well the groups' token scores agree; the headline pools every chain.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from bifrepro.attribution.token_bif import TokenBIF
from bifrepro.evaluation.token_links import (
    EXAMPLE_PREFIX,
    QueryToken,
    benchmark_tables,
    bif_rankings,
)
from bifrepro.evaluation.token_metrics import TokenLinks
from bifrepro.evaluation.token_scale import projected_agreement, seed_agreement
from bifrepro.traces import LossTraces

__all__ = ["chain_groups", "chain_group_benchmark", "chain_group_metrics"]

#: Benchmark columns kept per group.
_COLUMNS = ("precision_at_1", "precision_at_10", "mrr")


def chain_groups(num_chains: int, groups: int) -> list[list[int]]:
    """Chain indices of ``groups`` equal, contiguous groups (``num_chains`` must divide evenly)."""
    if groups < 1 or num_chains % groups:
        raise ValueError(
            f"chain_groups={groups} must divide num_chains={num_chains} into equal groups"
        )
    size = num_chains // groups
    return [list(range(g * size, (g + 1) * size)) for g in range(groups)]


def chain_group_benchmark(
    traces: LossTraces,
    groups: int,
    links: TokenLinks,
    qts: list[QueryToken],
    ks: tuple[int, ...],
    normalize: str = "correlation",
    detrend: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per chain group, BIF's token-level benchmark (every category, cross-form and any-form
    links, all queries); between groups, the Pearson / Spearman agreement of their token scores.

    Returns ``(per_group, agreement)``: ``per_group`` has ``group, form, category`` and
    precision@1, precision@10 (when 10 is in ``ks``) and MRR, and one row per poster example and
    form (category ``example:<name>``, its one query's reciprocal rank as MRR); ``agreement`` one
    row per pair of groups (:func:`~bifrepro.evaluation.token_scale.seed_agreement`).
    """
    query, train = torch.as_tensor(traces["query"]), torch.as_tensor(traces["train"])
    pairs = [(q.seq, q.pos) for q in qts]
    rows, scores = [], {}
    for g, chains in enumerate(chain_groups(int(train.shape[0]), groups)):
        tb = TokenBIF(query[chains], train[chains], normalize=normalize, detrend=detrend)
        table, per_query = benchmark_tables(bif_rankings(tb, links, qts, ks), qts)
        token = table[(table.method == "bif") & (table.level == "token")]
        token = token[(token.subset == "all") & (token.scope == "all")]
        keep = [c for c in _COLUMNS if c in token.columns]
        rows.append(token[["form", "category", *keep]].assign(group=g))
        rows.append(_example_rows(per_query).assign(group=g))
        scores[g] = tb.scores(pairs, list(range(tb.n_train)))
    per_group = pd.concat(rows, ignore_index=True)[["group", "form", "category", *keep]]
    draws = len(chain_groups(int(train.shape[0]), groups)[0]) * int(train.shape[1])
    valid = torch.as_tensor(links.base_valid)
    agreement = pd.DataFrame(seed_agreement(scores, valid, "chain groups", draws))
    agreement = agreement.drop(columns="size").rename(
        columns={"seed_a": "group_a", "seed_b": "group_b"}
    )
    return per_group, agreement


def _example_rows(per_query: pd.DataFrame) -> pd.DataFrame:
    """One row per poster example and form with its single query's reciprocal rank (``mrr``) and
    whether it ranks first; category ``example:<name>``, so a figure can say whether the rank of
    an example holds across the groups (:func:`~bifrepro.evaluation.token_links.example_outcomes`).
    """
    rows = []
    for _, q in per_query[per_query["example"].astype(str) != ""].iterrows():
        for form in ("other", "any"):
            rr = float(q.get(f"rr_bif_token_all_{form}", float("nan")))
            rows.append({"form": form, "category": f"{EXAMPLE_PREFIX}{q['example']}",
                         "precision_at_1": float(rr == 1.0), "mrr": rr})  # fmt: skip
    return pd.DataFrame(rows, columns=["form", "category", "precision_at_1", "mrr"])


def chain_group_metrics(per_group: pd.DataFrame, agreement: pd.DataFrame) -> dict[str, Any]:
    """``chain_groups/...`` metrics: cross-form precision@1 / MRR over all categories, mean and
    standard deviation over the groups, the mean pairwise Pearson agreement, and the agreement
    two runs of all the chains would have (:func:`projected_agreement`, G times the draws of a
    group: projected, not measured)."""
    cross = per_group[(per_group.form == "other") & (per_group.category == "all")]
    out: dict[str, Any] = {"chain_groups/num_groups": float(per_group.group.nunique())}
    for col in ("precision_at_1", "mrr"):
        out[f"chain_groups/all_other/{col}_mean"] = float(cross[col].mean())
        out[f"chain_groups/all_other/{col}_sd"] = float(cross[col].std(ddof=1))
    out["chain_groups/agreement_pearson"] = float(agreement["pearson"].mean())
    groups = out["chain_groups/num_groups"]
    out["chain_groups/projected_agreement_all_chains"] = projected_agreement(
        out["chain_groups/agreement_pearson"], groups
    )
    return out
