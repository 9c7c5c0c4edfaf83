"""Every table and summary metric of the gallery experiment, from the arms' scores.

Files (keys of :func:`gallery_tables`' first result): ``label_agreement.csv`` (all queries, both
directions), ``topk_overlap.csv``, ``per_query.csv``, ``label_agreement_ranking.csv`` (paired
bootstrap per adjacent step, :func:`~bifrepro.evaluation.ranking.resolved_ranking`), and where the
dataset has groups of look-alike classes ``group_agreement.csv`` (exact-class and same-group
shares of the top-k for the queries in a group) and ``group_agreement_ranking.csv`` (the methods
ranked by the exact-class share within the groups); ``bif_seeds.csv`` (BIF's agreement for every
sampler seed and its spread) when BIF ran with several seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from bifrepro.data.imagenet import InfluencePool
from bifrepro.evaluation.agreement import (
    ALL_GROUPS,
    agreement_table,
    group_agreement,
    group_agreement_table,
    overlap_table,
)
from bifrepro.evaluation.gallery import (
    MethodResult,
    agreement_ranking,
    per_query_table,
    summary_metrics,
)
from bifrepro.evaluation.gallery_arms import seed_agreement_table
from bifrepro.evaluation.ranking import resolved_ranking

__all__ = ["gallery_tables", "group_ranking"]


def group_ranking(
    scores: Mapping[str, torch.Tensor],
    pool: InfluencePool,
    groups: Mapping[str, Sequence[int]],
    ks: Sequence[int],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Methods ranked by the exact-class share of the top-k over the queries in a confusable
    group, each adjacent step with a paired bootstrap CI over those queries."""
    rows = []
    for m, s in scores.items():
        for k in ks:
            g = group_agreement(s, pool.pool_labels, pool.query_labels, k, groups)
            for q in torch.nonzero(g["group"] >= 0).flatten().tolist():
                rows.append({"k": k, "method": m, "query": q, "exact": float(g["exact"][q])})
    ranking = resolved_ranking(
        pd.DataFrame(rows), method="method", value="exact", unit="query", by=["k"],
        num_bootstrap=n_boot, confidence=confidence, seed=seed,
    )  # fmt: skip
    return ranking.assign(group=ALL_GROUPS)


def gallery_tables(
    pool: InfluencePool,
    results: Mapping[str, MethodResult],
    ks: Sequence[int],
    gallery_k: int,
    *,
    groups: Mapping[str, Sequence[int]],
    per_seed: Mapping[str, list[torch.Tensor]] | None = None,
    first_seed: int = 0,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    ci_method: str = "bootstrap",
) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    """``(tables by file name, flat summary metrics)`` (see the module docstring)."""
    scores = {k: r.scores for k, r in results.items()}
    ci: dict[str, Any] = {"confidence": confidence, "n_boot": n_boot, "seed": seed}
    ks = list(ks)
    table = agreement_table(
        scores, pool.pool_labels, pool.query_labels, ks=ks, method=ci_method, **ci
    )
    overlaps = overlap_table(scores, ks=ks, **ci)
    metrics = summary_metrics(table, overlaps, dict(results))
    per_query = per_query_table(pool, dict(results), ks, gallery_k)
    tables = {
        "label_agreement.csv": table.assign(dataset=pool.name),
        "topk_overlap.csv": overlaps.assign(dataset=pool.name),
        "per_query.csv": per_query,
        "label_agreement_ranking.csv": agreement_ranking(
            per_query, list(results), ks, confidence, n_boot, seed
        ),
    }
    if groups:
        names = list(groups)
        g = group_agreement(scores[next(iter(scores))], pool.pool_labels, pool.query_labels,
                            1, groups)["group"]  # fmt: skip
        per_query["confusable_group"] = [names[int(i)] if i >= 0 else "" for i in g]
        within = group_agreement_table(
            scores, pool.pool_labels, pool.query_labels, groups, ks=ks, **ci
        )
        tables["group_agreement.csv"] = within.assign(dataset=pool.name)
        tables["group_agreement_ranking.csv"] = group_ranking(scores, pool, groups, ks, **ci)
        for r in within[within.group == ALL_GROUPS].itertuples():
            key = f"{r.method}/group_{r.metric}_top{r.k}"
            metrics[key] = float(r.value)
            metrics[f"{key}_ci_low"] = float(r.ci_low)
            metrics[f"{key}_ci_high"] = float(r.ci_high)
        metrics["n_group_queries"] = float((g >= 0).sum())
    if per_seed and max(len(v) for v in per_seed.values()) > 1:
        seeds = seed_agreement_table(dict(per_seed), pool, ks, first_seed, **ci)
        tables["bif_seeds.csv"] = seeds.assign(dataset=pool.name)
        for (arm, k), rows in seeds.groupby(["method", "k"]):
            metrics[f"{arm}/seed_mean_agreement_top{k}"] = float(rows.agreement.mean())
            metrics[f"{arm}/seed_spread_agreement_top{k}"] = float(rows.spread.iloc[0])
    return tables, metrics
