"""Top-k label agreement of attribution rankings, with confidence intervals, and top-k overlap.

The poster's qualitative claim for image galleries is that BIF's most influential training images
share the query's class more often than EK-FAC's. Measured over many queries:

* **label agreement@k** of a query: the fraction of its top-k training items (by score, positive =
  helpful; ``direction="harmful"`` ranks the most negative instead) whose label equals the query's.
  Its mean over queries is reported with a confidence interval. The default interval is a
  percentile **bootstrap over queries** (queries are the independent units; the k items of one
  query are not independent). :func:`wilson_interval` is also given for a pooled proportion
  (exact for k = 1, optimistic for k > 1 because it treats the k items as independent).
* **chance level**: the expected agreement of a random ranking, i.e. the fraction of the training
  pool that shares the query's class, averaged over queries.
* **overlap@k** of two methods for a query: ``|top-k(A) ∩ top-k(B)| / k``.
* **within confusable groups** (:func:`group_agreement`, :func:`group_agreement_table`): for
  queries whose class belongs to a group of look-alike classes (e.g. Fashion-MNIST's shirt,
  T-shirt, pullover, coat), the share of the top-k with the *exact* class, and the share in the
  same group but of another class (the look-alike confusions a method makes).

Scores are ``[n_query, n_train]`` tensors as everywhere in bifrepro.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from statistics import NormalDist

import numpy as np
import pandas as pd
import torch

__all__ = [
    "DIRECTIONS",
    "MeanWithCI",
    "topk_indices",
    "label_agreement",
    "chance_agreement",
    "topk_overlap",
    "bootstrap_ci",
    "wilson_interval",
    "mean_with_ci",
    "agreement_table",
    "overlap_table",
    "ALL_GROUPS",
    "group_agreement",
    "group_agreement_table",
]

#: Name of the rows of :func:`group_agreement_table` that pool the queries of every group.
ALL_GROUPS = "all groups"

#: ``"helpful"`` ranks the largest scores first, ``"harmful"`` the most negative first.
DIRECTIONS = ("helpful", "harmful")


@dataclass(frozen=True)
class MeanWithCI:
    """A mean with a two-sided confidence interval ``[low, high]`` over ``n`` units."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float
    method: str

    def __str__(self) -> str:
        pct = round(100 * self.confidence)
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] ({pct}% CI, n={self.n})"


def _check_scores(scores: torch.Tensor, k: int) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [n_query, n_train], got shape {tuple(scores.shape)}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k={k} must be in [1, n_train={scores.shape[1]}]")


def topk_indices(scores: torch.Tensor, k: int, direction: str = "helpful") -> torch.Tensor:
    """``[n_query, k]`` training indices ranked by score (most helpful or most harmful first).

    NaN scores (e.g. a training item whose loss never moved) rank last in both directions.
    """
    _check_scores(scores, k)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    s = scores.double()
    s = s if direction == "helpful" else -s
    s = torch.nan_to_num(s, nan=-math.inf)
    return torch.topk(s, k, dim=1).indices


def label_agreement(
    scores: torch.Tensor,
    train_labels: torch.Tensor,
    query_labels: torch.Tensor,
    k: int,
    direction: str = "helpful",
) -> torch.Tensor:
    """Per-query fraction of the top-k training items whose label equals the query's: ``[n_query]``."""
    train_labels = torch.as_tensor(train_labels).long().cpu()
    query_labels = torch.as_tensor(query_labels).long().cpu()
    if train_labels.shape != (scores.shape[1],) or query_labels.shape != (scores.shape[0],):
        raise ValueError(
            f"labels do not match scores {tuple(scores.shape)}: train {tuple(train_labels.shape)}, "
            f"query {tuple(query_labels.shape)}"
        )
    top = topk_indices(scores.cpu(), k, direction)
    return (train_labels[top] == query_labels[:, None]).double().mean(dim=1)


def chance_agreement(train_labels: torch.Tensor, query_labels: torch.Tensor) -> torch.Tensor:
    """Per-query agreement of a random ranking: share of the pool with the query's label."""
    train_labels = torch.as_tensor(train_labels).long().cpu()
    query_labels = torch.as_tensor(query_labels).long().cpu()
    return (train_labels[None, :] == query_labels[:, None]).double().mean(dim=1)


def topk_overlap(
    scores_a: torch.Tensor, scores_b: torch.Tensor, k: int, direction: str = "helpful"
) -> torch.Tensor:
    """Per-query ``|top-k(A) ∩ top-k(B)| / k``: ``[n_query]``."""
    if scores_a.shape != scores_b.shape:
        raise ValueError(f"score shapes differ: {tuple(scores_a.shape)} vs {tuple(scores_b.shape)}")
    ta = topk_indices(scores_a.cpu(), k, direction)
    tb = topk_indices(scores_b.cpu(), k, direction)
    hits = (ta[:, :, None] == tb[:, None, :]).any(dim=2).double().sum(dim=1)
    return hits / k


def bootstrap_ci(
    values: Sequence[float] | np.ndarray | torch.Tensor,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling the units)."""
    x = np.asarray(torch.as_tensor(values).double().cpu().numpy(), dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 500):  # chunks keep memory at 500 x n
        stop = min(start + 500, n_boot)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``."""
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must be in [0, n={n}]")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mean_with_ci(
    values: Sequence[float] | np.ndarray | torch.Tensor,
    confidence: float = 0.95,
    method: str = "bootstrap",
    k: int = 1,
    n_boot: int = 2000,
    seed: int = 0,
) -> MeanWithCI:
    """Mean of per-query values with a CI: ``"bootstrap"`` over queries or pooled ``"wilson"``.

    For ``"wilson"`` the values must be per-query fractions of ``k`` binary outcomes; the
    interval is that of the pooled proportion over ``n_query × k`` outcomes.
    """
    x = torch.as_tensor(values).double().cpu().flatten()
    x = x[torch.isfinite(x)]
    n = int(x.numel())
    if n == 0:
        return MeanWithCI(math.nan, math.nan, math.nan, 0, confidence, method)
    mean = float(x.mean())
    if method == "bootstrap":
        low, high = bootstrap_ci(x, confidence, n_boot, seed)
    elif method == "wilson":
        successes = float(torch.round(x * k).sum())
        low, high = wilson_interval(successes, n * k, confidence)
    else:
        raise ValueError(f"method must be 'bootstrap' or 'wilson', got {method!r}")
    return MeanWithCI(mean, low, high, n, confidence, method)


def agreement_table(
    scores: Mapping[str, torch.Tensor],
    train_labels: torch.Tensor,
    query_labels: torch.Tensor,
    ks: Sequence[int] = (1, 3, 10),
    directions: Sequence[str] = DIRECTIONS,
    confidence: float = 0.95,
    method: str = "bootstrap",
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (method, direction, k): mean label agreement, its CI and the chance level.

    Columns: ``method, direction, k, agreement, ci_low, ci_high, n_queries, chance, ci_method,
    confidence``. The bootstrap uses the same seed for every row, so rows are comparable.
    """
    chance = float(chance_agreement(train_labels, query_labels).mean())
    rows = []
    for name, s in scores.items():
        for direction in directions:
            for k in ks:
                per_query = label_agreement(s, train_labels, query_labels, k, direction)
                ci = mean_with_ci(per_query, confidence, method, k, n_boot, seed)
                rows.append(
                    {
                        "method": name,
                        "direction": direction,
                        "k": int(k),
                        "agreement": ci.mean,
                        "ci_low": ci.low,
                        "ci_high": ci.high,
                        "n_queries": ci.n,
                        "chance": chance,
                        "ci_method": method,
                        "confidence": confidence,
                    }
                )
    return pd.DataFrame(rows)


def overlap_table(
    scores: Mapping[str, torch.Tensor],
    ks: Sequence[int] = (1, 3, 10),
    directions: Sequence[str] = DIRECTIONS,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean top-k overlap (bootstrap CI over queries) for every pair of methods.

    Columns: ``method_a, method_b, direction, k, overlap, ci_low, ci_high, n_queries``.
    """
    rows = []
    for (a, sa), (b, sb) in combinations(scores.items(), 2):
        for direction in directions:
            for k in ks:
                ov = topk_overlap(sa, sb, k, direction)
                ci = mean_with_ci(ov, confidence, "bootstrap", k, n_boot, seed)
                rows.append(
                    {
                        "method_a": a,
                        "method_b": b,
                        "direction": direction,
                        "k": int(k),
                        "overlap": ci.mean,
                        "ci_low": ci.low,
                        "ci_high": ci.high,
                        "n_queries": ci.n,
                    }
                )
    return pd.DataFrame(rows)


def _group_of(labels: torch.Tensor, groups: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """Index of each label's group in ``groups`` (order of the mapping), -1 for none."""
    out = torch.full_like(labels, -1)
    seen: set[int] = set()
    for g, members in enumerate(groups.values()):
        members = [int(c) for c in members]
        if seen & set(members):
            raise ValueError(f"groups overlap: class(es) {sorted(seen & set(members))} twice")
        seen |= set(members)
        out[torch.isin(labels, torch.tensor(members, dtype=labels.dtype))] = g
    return out


def group_agreement(
    scores: torch.Tensor,
    train_labels: torch.Tensor,
    query_labels: torch.Tensor,
    k: int,
    groups: Mapping[str, Sequence[int]],
    direction: str = "helpful",
) -> dict[str, torch.Tensor]:
    """Per-query top-k shares for queries in a group of look-alike classes.

    Returns ``exact`` (share of the top-k with the query's exact class), ``group_other`` (share in
    the query's group but of another class) and ``group`` (index of the query's group in
    ``groups``, -1 when its class is in none; the two shares are NaN for those queries), each
    ``[n_query]``.
    """
    train_labels = torch.as_tensor(train_labels).long().cpu()
    query_labels = torch.as_tensor(query_labels).long().cpu()
    exact = label_agreement(scores, train_labels, query_labels, k, direction)
    top = topk_indices(scores.cpu(), k, direction)
    q_group = _group_of(query_labels, groups)
    t_group = _group_of(train_labels, groups)[top]  # [n_query, k]
    other = (t_group == q_group[:, None]) & (train_labels[top] != query_labels[:, None])
    other = other.double().mean(dim=1)
    outside = q_group < 0
    exact, other = exact.clone(), other.clone()
    exact[outside] = math.nan
    other[outside] = math.nan
    return {"exact": exact, "group_other": other, "group": q_group}


def group_agreement_table(
    scores: Mapping[str, torch.Tensor],
    train_labels: torch.Tensor,
    query_labels: torch.Tensor,
    groups: Mapping[str, Sequence[int]],
    ks: Sequence[int] = (1, 3, 10),
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Most-helpful top-k shares within the confusable groups, with bootstrap CIs over queries.

    One row per (method, group, k, metric) with ``group`` a name of ``groups`` or
    :data:`ALL_GROUPS` (every query in some group) and ``metric`` ``"exact"`` or
    ``"group_other"`` (see :func:`group_agreement`). Columns: ``method, group, k, metric, value,
    ci_low, ci_high, n_queries, chance`` (``chance``: the pool's share of that kind for a random
    ranking, averaged over the group's queries). Empty when no query is in a group.
    """
    train_labels = torch.as_tensor(train_labels).long().cpu()
    query_labels = torch.as_tensor(query_labels).long().cpu()
    q_group = _group_of(query_labels, groups)
    t_group = _group_of(train_labels, groups)
    same = train_labels[None, :] == query_labels[:, None]
    in_group = (t_group[None, :] == q_group[:, None]) & (q_group[:, None] >= 0)
    chance = {
        "exact": same.double().mean(dim=1),
        "group_other": (in_group & ~same).double().mean(dim=1),
    }
    subsets = [(ALL_GROUPS, q_group >= 0)] + [(name, q_group == g) for g, name in enumerate(groups)]
    rows = []
    for name, s in scores.items():
        for k in ks:
            per_query = group_agreement(s, train_labels, query_labels, k, groups)
            for group, mask in subsets:
                if not bool(mask.any()):
                    continue
                for metric in ("exact", "group_other"):
                    ci = mean_with_ci(per_query[metric][mask], confidence, "bootstrap", k,
                                      n_boot, seed)  # fmt: skip
                    rows.append(
                        {
                            "method": name,
                            "group": group,
                            "k": int(k),
                            "metric": metric,
                            "value": ci.mean,
                            "ci_low": ci.low,
                            "ci_high": ci.high,
                            "n_queries": ci.n,
                            "chance": float(chance[metric][mask].mean()),
                        }
                    )
    return pd.DataFrame(rows)
