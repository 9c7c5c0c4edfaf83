"""The cross-form token-link benchmark across model sizes and sampler seeds, with its noise.

For each model size and sampler seed the per-token BIF ranks every observed training token for
each labelled query token (:func:`seed_ranking`, reusing
:func:`bifrepro.evaluation.token_links.dense_ranking`: scope "all", form "other", so only a
translation or another form can be a hit). :func:`per_query_rows` keeps one row per size × seed ×
query; :func:`category_table` summarises them per size × category with two intervals: over
queries (percentile bootstrap of the seed-averaged per-query values) and over sampler seeds
(t interval of the per-seed means). :func:`seed_agreement` correlates the token score matrices of
two seeds on the same queries (how much of a score is Monte Carlo noise), and
:func:`link_resolution` says, from the pooled draws and their standard errors
(:func:`bifrepro.sampling.bif_standard_errors`), whether each query's best cross-form link beats
the best other candidate (or loses to it) beyond noise.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from bifrepro.data.separated_text import SeparatedQuery, benchmark_category
from bifrepro.data.text import TokenizedSequences
from bifrepro.evaluation.lds import bootstrap_mean_ci
from bifrepro.evaluation.ranking import resolved_ranking
from bifrepro.evaluation.token_links import QueryToken, dense_ranking, token_surfaces
from bifrepro.evaluation.token_metrics import RankingResult, TokenLinks
from bifrepro.sampling.uncertainty import bif_standard_errors

__all__ = [
    "SCOPE_FORM",
    "SENSES_SCOPE_FORM",
    "scope_form",
    "covering_observed",
    "draws_for_agreement",
    "projected_agreement",
    "scale_query_tokens",
    "seed_ranking",
    "per_query_rows",
    "category_table",
    "method_comparison",
    "seed_agreement",
    "link_resolution",
]

#: The benchmark's combination: every candidate token, the query's own surface form excluded.
SCOPE_FORM = ("all", "other")
#: Senses of "bank" have one surface form: there the question is whether the right sense ranks
#: above the other among the "bank" tokens (scope "category", any form).
SENSES_SCOPE_FORM = ("category", "any")


def scope_form(concept: str, form: str = "other") -> tuple[str, str]:
    """The benchmark's (scope, form) for a query concept: the senses' own, else
    ``("all", form)``."""
    return SENSES_SCOPE_FORM if concept.startswith("bank:") else ("all", form)


def covering_observed(
    train: TokenizedSequences,
    tokenizer: Any,
    concepts: list[str],
    n: int,
    seed: int,
    per_form: int = 2,
) -> np.ndarray:
    """``n`` observed training sequences (sorted indices) that hold, for every query concept,
    ``per_form`` sequences of each of its surface forms where the corpus has them (so every query
    has cross-form candidates), the rest drawn at random; seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    surf = token_surfaces(tokenizer, train.input_ids)
    wanted = {train.concept_names.index(c) for c in concepts if c in train.concept_names}
    holds: dict[tuple[int, str], list[int]] = {}  # (concept id, surface) -> sequences
    for r, c in zip(*np.nonzero(train.concepts.numpy() >= 0), strict=True):
        cid = int(train.concepts[r, c])
        if cid in wanted:
            holds.setdefault((cid, str(surf[r, c])), []).append(int(r))
    chosen: list[int] = []
    for key in sorted(holds):
        seqs = list(dict.fromkeys(holds[key]))
        have = len(set(seqs) & set(chosen))
        pool = [r for r in seqs if r not in chosen]
        chosen += [pool[i] for i in rng.permutation(len(pool))[: max(0, per_form - have)]]
    if len(chosen) > n:
        raise ValueError(
            f"num_observed={n} is too small: covering every query concept in every "
            f"form needs {len(chosen)} sequences"
        )
    rest = np.setdiff1d(np.arange(len(train)), chosen)
    extra = rng.choice(rest, n - len(chosen), replace=False) if n > len(chosen) else []
    return np.sort(np.concatenate([np.asarray(chosen, int), np.asarray(extra, int)]))


def scale_query_tokens(
    queries: TokenizedSequences, info: list[SeparatedQuery], tokenizer: Any
) -> list[QueryToken]:
    """The focus token of every query sequence (its only labelled token)."""
    surf = token_surfaces(tokenizer, queries.input_ids)
    out = []
    for i, q in enumerate(info):
        pos = (queries.concepts[i] >= 0).nonzero().flatten().tolist()
        if len(pos) != 1:
            raise ValueError(
                f"query {i} ({q.text.text!r}) must have exactly one labelled token "
                "(is seq_len too short?)"
            )
        p = pos[0]
        concept = queries.concept_names[int(queries.concepts[i, p])]
        out.append(QueryToken(i, p, concept, str(surf[i, p]), q.example))
    return out


def seed_ranking(
    scores: torch.Tensor,
    links: TokenLinks,
    qts: list[QueryToken],
    ks: tuple[int, ...],
    form: str = "other",
) -> RankingResult:
    """Ranking of dense token scores ``[q, n, T]``: cross-form among all training tokens
    (``form="other"``, the benchmark; senses of "bank": the right sense among the "bank" tokens,
    :func:`scope_form`) or any form (``"any"``: the same word counts too)."""
    combos = dense_ranking(scores, links, qts, ks, "token")
    picks = [combos[scope_form(q.concept, form)] for q in qts]
    first = picks[0]
    return RankingResult(
        ks=first.ks,
        precision={k: np.array([p.precision[k][i] for i, p in enumerate(picks)]) for k in first.ks},
        reciprocal_rank=np.array([p.reciprocal_rank[i] for i, p in enumerate(picks)]),
        first_rank=np.array([p.first_rank[i] for i, p in enumerate(picks)]),
        n_relevant=np.array([p.n_relevant[i] for i, p in enumerate(picks)]),
        n_candidates=np.array([p.n_candidates[i] for i, p in enumerate(picks)]),
    )


def per_query_rows(
    res: RankingResult,
    qts: list[QueryToken],
    size: str,
    seed: int,
    any_form: RankingResult | None = None,
    method: str = "bif",
) -> list[dict[str, Any]]:
    """One row per query token: its category, cross-form precision@k, reciprocal and first
    rank; with ``any_form`` also ``any_form_precision_at_1`` (the same word may count).
    ``seed`` is the sampler seed (-1 for a deterministic method)."""
    rows = []
    for i, q in enumerate(qts):
        row = {
            "method": method,
            "size": size,
            "sampler_seed": seed,
            "query": i,
            "concept": q.concept,
            "category": benchmark_category(q.concept),
            "surface": q.surface,
            "example": q.example or "",
            "reciprocal_rank": float(res.reciprocal_rank[i]),
            "first_rank": float(res.first_rank[i]),
            "chance_precision": float(res.chance[i]),
        }
        for k in res.ks:
            row[f"precision_at_{k}"] = float(res.precision[k][i])
        if any_form is not None:
            row["any_form_precision_at_1"] = float(any_form.precision[min(any_form.ks)][i])
        rows.append(row)
    return rows


def _seed_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def category_table(
    per_query: pd.DataFrame,
    ks: tuple[int, ...],
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per method × size × category (and "all"): mean precision@k and MRR, each with a CI over
    queries (``<metric>_q_low/high``) and over sampler seeds (``<metric>_seed_low/high``,
    ``_seed_sd``; NaN for a method with one seed); the mean any-form P@1 when the rows have it
    (no interval: a sanity check). Rows without a ``method`` column are BIF's."""
    metrics = [f"precision_at_{k}" for k in ks] + ["reciprocal_rank"]
    rows = []
    df = per_query.copy()
    if "method" not in df:
        df["method"] = "bif"
    for (method, size), frame in df.groupby(["method", "size"], sort=False):
        for cat in ["all", *sorted(frame["category"].unique())]:
            sub = frame if cat == "all" else frame[frame["category"] == cat]
            row: dict[str, Any] = {
                "method": method,
                "size": size,
                "category": cat,
                "num_queries": int(sub["query"].nunique()),
                "num_seeds": int(sub["sampler_seed"].nunique()),
            }
            for m in metrics:
                by_query = np.array(sub.groupby("query")[m].mean(), dtype=float)
                by_seed = np.array(sub.groupby("sampler_seed")[m].mean(), dtype=float)
                name = "mrr" if m == "reciprocal_rank" else m
                finite = by_query[np.isfinite(by_query)]
                row[name] = float(finite.mean()) if len(finite) else math.nan
                lo, hi = bootstrap_mean_ci(by_query, num_bootstrap, confidence, seed)
                row[f"{name}_q_low"], row[f"{name}_q_high"] = lo, hi
                s_lo, s_hi = _seed_interval(by_seed, confidence)
                row[f"{name}_seed_low"], row[f"{name}_seed_high"] = s_lo, s_hi
                ok = by_seed[np.isfinite(by_seed)]
                row[f"{name}_seed_sd"] = float(np.std(ok, ddof=1)) if len(ok) > 1 else math.nan
            if "any_form_precision_at_1" in sub:
                row["any_form_precision_at_1"] = float(sub["any_form_precision_at_1"].mean())
            row["chance_precision"] = float(sub["chance_precision"].mean())
            row["median_first_rank"] = float(sub.groupby("query")["first_rank"].median().median())
            rows.append(row)
    return pd.DataFrame(rows)


def method_comparison(
    per_query: pd.DataFrame, ks: tuple[int, ...], num_bootstrap: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Per size and metric (MRR, P@k): the methods ranked on the same query tokens, each step
    with a paired bootstrap CI over queries (a method's seeds averaged per query first)."""
    frames = []
    for metric in ["reciprocal_rank", *(f"precision_at_{k}" for k in ks)]:
        ranking = resolved_ranking(
            per_query,
            method="method",
            value=metric,
            unit="query",
            by=["size"],
            num_bootstrap=num_bootstrap,
            seed=seed,
        )
        ranking.insert(1, "metric", "mrr" if metric == "reciprocal_rank" else metric)
        frames.append(ranking)
    return pd.concat(frames, ignore_index=True)


def draws_for_agreement(r: float, draws: int, target: float = 0.5) -> float:
    """Draws per seed for two seeds' scores to correlate at ``target``, from ``r`` at ``draws``.

    Two seeds' scores share the true score (variance ``s``) and carry independent Monte Carlo
    noise of variance ``v/draws``, so ``r = s / (s + v/draws)``; solving for the draws that give
    ``target`` assumes the autocorrelation and the estimator stay as they are.
    """
    if not 0 < r < 1:
        return math.nan if r <= 0 else float(draws)
    return draws * (target / (1 - target)) / (r / (1 - r))


def projected_agreement(r: float, factor: float) -> float:
    """Agreement of two runs with ``factor`` times the draws of two runs that agree at ``r``
    (the Spearman-Brown formula under :func:`draws_for_agreement`'s model: the Monte Carlo noise
    variance falls as 1/draws, the true scores stay)."""
    if not math.isfinite(r) or r <= 0:
        return math.nan
    return factor * r / (1 + (factor - 1) * r)


def seed_agreement(
    scores: dict[int, torch.Tensor], valid: torch.Tensor, size: str, draws: int | None = None
) -> list[dict[str, Any]]:
    """Pearson and Spearman correlation of two seeds' token scores ``[q, n, T]`` over the valid
    training tokens ``[n, T]`` of every query, for every pair of seeds; with ``draws`` (recorded
    draws per seed) also the draws :func:`draws_for_agreement` extrapolates for 0.5."""
    flat_valid = valid.reshape(-1).bool()
    rows = []
    for a, b in itertools.combinations(sorted(scores), 2):
        x = scores[a].reshape(scores[a].shape[0], -1)[:, flat_valid].reshape(-1).double().numpy()
        y = scores[b].reshape(scores[b].shape[0], -1)[:, flat_valid].reshape(-1).double().numpy()
        ok = np.isfinite(x) & np.isfinite(y)
        rows.append(
            {
                "size": size,
                "seed_a": a,
                "seed_b": b,
                "pearson": float(np.corrcoef(x[ok], y[ok])[0, 1]),
                "spearman": float(stats.spearmanr(x[ok], y[ok]).statistic),
                "num_scores": int(ok.sum()),
            }
        )
        if draws is not None:
            rows[-1]["draws_for_agreement_0.5"] = draws_for_agreement(rows[-1]["pearson"], draws)
    return rows


def link_resolution(
    query_cols: torch.Tensor,
    train_traces: torch.Tensor,
    links: TokenLinks,
    qts: list[QueryToken],
    normalize: str = "correlation",
    z: float = 1.96,
) -> list[dict[str, Any]]:
    """Per query token, from pooled draws: is its best cross-form link ranked first, and is the
    gap to the best non-link candidate beyond Monte Carlo noise?

    ``query_cols [C, D, q]`` are the query tokens' traces, ``train_traces [C, D, n, T]``. The gap
    ``s_link - s_other`` is resolved when ``|gap| > z·√(se_link² + se_other²)`` (batch-means
    standard errors). ``outcome``: "reproduced" (a link is first), "not reproduced" or "no link"
    (no cross-form candidate).
    """
    unc = bif_standard_errors(query_cols, train_traces, normalize=normalize)
    rows = []
    for i, q in enumerate(qts):
        rel, val = links.masks(q.concept, q.surface, *scope_form(q.concept))
        s = unc.scores[i].reshape(-1)
        se = unc.se[i].reshape(-1)
        rel, val = rel.reshape(-1), val.reshape(-1)
        other = val & ~rel
        if not bool(rel.any()) or not bool(other.any()):
            rows.append(
                {
                    "query": i,
                    "outcome": "no link",
                    "resolved": False,
                    "rank": math.nan,
                    "gap": math.nan,
                    "gap_se": math.nan,
                    "best_link": -1,
                }
            )
            continue
        s_rel = torch.where(rel, s, torch.tensor(-math.inf, dtype=s.dtype))
        s_oth = torch.where(other, s, torch.tensor(-math.inf, dtype=s.dtype))
        i_rel, i_oth = int(s_rel.argmax()), int(s_oth.argmax())
        gap = float(s[i_rel] - s[i_oth])
        gap_se = float(torch.sqrt(se[i_rel] ** 2 + se[i_oth] ** 2))
        rank = 1 + int((s_oth > s[i_rel]).sum())
        rows.append(
            {
                "query": i,
                "outcome": "reproduced" if gap > 0 else "not reproduced",
                "resolved": bool(abs(gap) > z * gap_se),
                "rank": rank,
                "gap": gap,
                "gap_se": gap_se,
                "best_link": i_rel,
            }
        )
    return rows
