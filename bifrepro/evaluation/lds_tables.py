"""Evaluation step of the LDS protocol: the result tables of the LDS and compute experiments.

* :func:`evaluate`: LDS of every method variant at every α with bootstrap intervals; with several
  BIF sampler seeds also each seed's LDS and the mean over seeds (arms ``seed``, ``seed_mean``).
* :func:`bif_seed_table`: per BIF estimator and α, each seed's LDS, their mean and spread, and
  the LDS of the seed-averaged scores.
* :func:`paired_differences`: per-query LDS difference from a reference method (paired bootstrap).
* :func:`bif_draws_curve`: BIF's LDS from the first ``d`` draws of every chain, with their cost.
* :func:`time_to_equal_lds`: draws and seconds BIF needs to reach a reference method's LDS.
* :func:`costs_table`: fit/score time and memory per method, with the device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from bifrepro.attribution.bif import bif_scores
from bifrepro.evaluation.lds import LDSResult, bootstrap_mean_ci, lds, subset_size
from bifrepro.evaluation.lds_methods import MethodRun, split_seed_variant, variant_label
from bifrepro.evaluation.lds_protocol import LDSProblem
from bifrepro.sampling.calibration import run_cost

__all__ = [
    "alpha_key",
    "evaluate",
    "MAIN_ARM",
    "bif_seed_table",
    "paired_differences",
    "draws_grid",
    "bif_draws_curve",
    "time_to_equal_lds",
    "costs_table",
]


def alpha_key(a: float) -> str:
    """``alpha_0.25``: the α part of a metric name."""
    return f"alpha_{a:g}"


#: ``arm`` of a method's own entry (BIF: the seed-averaged scores), as opposed to one BIF seed
#: (``"seed"``) or the mean of the seeds' LDS (``"seed_mean"``).
MAIN_ARM = "main"


def _arm(variant: str) -> str:
    return MAIN_ARM if split_seed_variant(variant)[1] is None else "seed"


def _seed_means(
    results: dict[tuple[str, float], LDSResult], exp: Any
) -> dict[tuple[str, float], LDSResult]:
    """Per base variant with seed variants and α: the mean over seeds of each query's LDS (its
    mean is the mean of the seeds' LDS; the interval is bootstrapped over queries)."""
    groups: dict[tuple[str, float], list[LDSResult]] = {}
    for (variant, a), res in results.items():
        base, seed = split_seed_variant(variant)
        if seed is not None:
            groups.setdefault((base, a), []).append(res)
    out = {}
    for (base, a), seeds in groups.items():
        with np.errstate(all="ignore"):
            per_query = np.nanmean(np.stack([r.per_query for r in seeds]), axis=0)
        finite = per_query[np.isfinite(per_query)]
        lo, hi = bootstrap_mean_ci(per_query, exp.num_bootstrap, exp.confidence, exp.mask_seed)
        ref = results[(base, a)]
        labels = {
            **ref.labels,
            "method": f"{ref.labels['method']} mean of {len(seeds)} seeds",
            "variant": f"{base}_seedmean",
            "arm": "seed_mean",
        }
        out[(labels["variant"], a)] = LDSResult(
            per_query, float(finite.mean()) if finite.size else math.nan, lo, hi,
            ref.num_subsets, ref.num_seeds, exp.confidence, labels,
        )  # fmt: skip
    return out


def evaluate(
    problem: LDSProblem, runs: dict[str, MethodRun], actual: dict[float, torch.Tensor]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, float], LDSResult]]:
    """LDS of every method variant at every α: summary table, per-query table, results.

    Rows carry an ``arm``: ``main`` (a method's entry), ``seed`` (one BIF sampler seed) or
    ``seed_mean`` (the mean over BIF's seeds of each query's LDS).
    """
    exp = problem.exp
    results: dict[tuple[str, float], LDSResult] = {}
    for name, run in runs.items():
        for variant, scores in run.scores.items():
            for a, masks in problem.masks.items():
                results[(variant, a)] = lds(
                    scores,
                    masks,
                    actual[a],
                    num_bootstrap=exp.num_bootstrap,
                    confidence=exp.confidence,
                    seed=exp.mask_seed,
                    labels={
                        "method": variant_label(name, variant),
                        "variant": variant,
                        "alpha": a,
                        "subset_size": subset_size(problem.n_train, a),
                        "arm": _arm(variant),
                    },
                )
    results.update(_seed_means(results, exp))
    rows, per_query = [], []
    for (variant, a), res in results.items():
        rows.append(res.to_row())
        label, arm = res.labels["method"], res.labels["arm"]
        per_query.extend(
            {
                "method": label,
                "variant": variant,
                "alpha": a,
                "arm": arm,
                "query": i,
                "lds": float(v),
            }
            for i, v in enumerate(res.per_query)
        )
    return pd.DataFrame(rows), pd.DataFrame(per_query), results


def bif_seed_table(results: dict[tuple[str, float], LDSResult]) -> pd.DataFrame:
    """Per BIF estimator (base variant) and α with several sampler seeds: each seed's LDS
    (``lds_seed<s>``), their mean, standard deviation (ddof 1), min and max over seeds, and the
    LDS of the seed-averaged scores with its interval. Empty without seed variants."""
    seeds: dict[tuple[str, float], dict[int, float]] = {}
    for (variant, a), res in results.items():
        base, seed = split_seed_variant(variant)
        if seed is not None:
            seeds.setdefault((base, a), {})[seed] = res.mean
    rows = []
    for (base, a), by_seed in sorted(seeds.items()):
        v = np.array(list(by_seed.values()), dtype=np.float64)
        avg = results[(base, a)]
        rows.append({
            "variant": base,
            "method": avg.labels.get("method", base),
            "alpha": a,
            "num_seeds": len(by_seed),
            **{f"lds_seed{s}": x for s, x in sorted(by_seed.items())},
            "seed_mean": float(v.mean()),
            "seed_std": float(v.std(ddof=1)) if v.size > 1 else math.nan,
            "seed_min": float(v.min()),
            "seed_max": float(v.max()),
            "averaged_scores_lds": avg.mean,
            "averaged_scores_ci_low": avg.ci_low,
            "averaged_scores_ci_high": avg.ci_high,
        })  # fmt: skip
    return pd.DataFrame(rows)


def paired_differences(
    results: dict[tuple[str, float], LDSResult],
    reference: str = "ekfac",
    num_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-query LDS difference of every variant from ``reference`` at each α (paired bootstrap).

    All methods are scored on the same queries, so the per-query difference cancels the
    query-to-query spread that makes the separate intervals overlap. Every arm gets one (each BIF
    seed and the mean over seeds too; column ``arm``).
    """
    rows = []
    for (variant, a), res in results.items():
        ref = results.get((reference, a))
        if ref is None or variant == reference:
            continue
        diff = res.per_query - ref.per_query
        lo, hi = bootstrap_mean_ci(diff, num_bootstrap, confidence, seed)
        finite = diff[np.isfinite(diff)]
        rows.append({
            "method": res.labels.get("method", variant),
            "variant": variant,
            "arm": res.labels.get("arm", MAIN_ARM),
            "reference": reference,
            "alpha": a,
            "lds_difference": float(finite.mean()) if finite.size else math.nan,
            "ci_low": lo,
            "ci_high": hi,
            "fraction_of_queries_better": float((finite > 0).mean()) if finite.size else math.nan,
        })  # fmt: skip
    return pd.DataFrame(rows)


def draws_grid(num_draws: int, requested: list[int] | None) -> list[int]:
    """Draws per chain of the LDS-vs-draws curve: ``requested`` (capped, with ``num_draws``), or
    eight log-spaced values up to ``num_draws``."""
    if requested:
        return sorted({min(int(d), num_draws) for d in requested} | {num_draws})
    grid = {int(round(x)) for x in np.geomspace(min(5, num_draws), num_draws, 8)}
    return sorted(d for d in grid if d >= 2) or [num_draws]


def bif_draws_curve(
    problem: LDSProblem,
    run: MethodRun,
    actual: dict[float, torch.Tensor],
    sampler: Any,
    draws: list[int] | None = None,
) -> pd.DataFrame:
    """BIF's LDS from the first ``d`` draws of every chain, with the sampling time they cost.

    The time of ``d`` draws is the measured BIF time scaled by the sampler's cost model
    (:func:`bifrepro.sampling.calibration.run_cost`: SGLD steps of a minibatch plus the loss
    evaluations of every observed item per draw), which is how the cost grows with draws.
    """
    assert run.traces is not None
    q, t = run.traces["query"], run.traces["train"]
    num_draws = int(q.shape[1])
    total = run.timings.get("total_seconds", math.nan)
    n_obs = problem.n_train + problem.n_query
    full_cost = run_cost(sampler, problem.n_train, n_obs)
    rows = []
    for d in draws_grid(num_draws, draws):
        cost = run_cost(sampler.replace(num_draws=d), problem.n_train, n_obs)
        seconds = total * cost / full_cost
        for est in ("covariance", "correlation"):
            scores = bif_scores(q[:, :d], t[:, :d], normalize=est)
            for a, masks in problem.masks.items():
                res = lds(scores, masks, actual[a], num_bootstrap=0)
                rows.append({
                    "estimator": est,
                    "alpha": a,
                    "draws_per_chain": d,
                    "total_draws": d * int(q.shape[0]),
                    "seconds": seconds,
                    "lds": res.mean,
                })  # fmt: skip
    return pd.DataFrame(rows)


def time_to_equal_lds(
    problem: LDSProblem,
    runs: dict[str, MethodRun],
    actual: dict[float, torch.Tensor],
    sampler: Any,
    reference: str,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """BIF's LDS vs draws (both estimators, 12 log-spaced draw counts) against ``reference``'s.

    Returns the summary table (draws and seconds to equal the reference's LDS per estimator and
    α; ``inf`` where never reached), the curve (with the reference's seconds), the reference's
    LDS per α, and the metrics.
    """
    grid = sorted({int(round(x)) for x in np.geomspace(2, sampler.num_draws, 12)})
    curve = bif_draws_curve(problem, runs["bif"], actual, sampler, grid)
    ref_run = runs[reference]
    ref_seconds = ref_run.timings.get("total_seconds", math.nan)
    ref_table = pd.DataFrame([
        {
            "alpha": a,
            "lds": lds(ref_run.scores[reference], masks, actual[a], num_bootstrap=0).mean,
            "seconds": ref_seconds,
        }
        for a, masks in problem.masks.items()
    ])  # fmt: skip
    metrics: dict[str, float] = {}
    rows = []
    for (est, a), sub in curve.groupby(["estimator", "alpha"]):
        sub = sub.sort_values("total_draws")
        ref_lds = float(ref_table.loc[ref_table["alpha"] == a, "lds"].iloc[0])
        reached = sub[sub["lds"] >= ref_lds]
        draws = float(reached["total_draws"].iloc[0]) if len(reached) else math.inf
        secs = float(reached["seconds"].iloc[0]) if len(reached) else math.inf
        key = f"{est}/{alpha_key(a)}"
        metrics[f"time_to_equal_lds/draws/{key}"] = draws
        metrics[f"time_to_equal_lds/seconds/{key}"] = secs
        metrics[f"time_to_equal_lds/bif_over_{reference}_time/{key}"] = secs / ref_seconds
        rows.append({
            "bif_estimator": est,
            "alpha": a,
            f"{reference}_lds": ref_lds,
            f"{reference}_seconds": ref_seconds,
            "bif_lds_max_draws": float(sub["lds"].iloc[-1]),
            "bif_max_draws": float(sub["total_draws"].iloc[-1]),
            "bif_seconds_max_draws": float(sub["seconds"].iloc[-1]),
            "draws_to_equal": draws,
            "seconds_to_equal": secs,
            "reached": bool(len(reached)),
        })  # fmt: skip
    return pd.DataFrame(rows), curve.assign(reference_seconds=ref_seconds), ref_table, metrics


def costs_table(runs: dict[str, MethodRun]) -> pd.DataFrame:
    """Fit/score seconds and peak memory of every method, its device and whether it was cached."""
    keys = (
        "fit_seconds",
        "score_seconds",
        "total_seconds",
        "fit_peak_rss_mb",
        "score_peak_rss_mb",
        "fit_peak_cuda_mb",
        "score_peak_cuda_mb",
    )
    return pd.DataFrame([
        {
            "method": name,
            "device": run.device,
            **{k: run.timings.get(k, math.nan) for k in keys},
            "from_cache": run.cached,
        }
        for name, run in runs.items()
    ])  # fmt: skip
