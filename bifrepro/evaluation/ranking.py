"""Rankings of methods that say which of their steps the evidence resolves.

A table that lists methods by their mean score invites reading every gap as a win. Here every
adjacent pair of the ranking gets a *paired* bootstrap interval of its difference over the same
units (queries): a step whose interval excludes zero is ``resolved``; the others are ties at this
sample size, and the ranking text writes them with ``≈`` instead of ``>``. Methods joined by
unresolved steps share a ``tier``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bifrepro.evaluation.lds import bootstrap_mean_ci

__all__ = ["ranking_text", "resolved_ranking"]


def resolved_ranking(
    per_unit: pd.DataFrame,
    *,
    method: str,
    value: str,
    unit: str,
    by: Sequence[str] = (),
    higher_is_better: bool = True,
    num_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Rank ``method`` by the mean of ``value`` within each group of ``by``, resolving each step.

    Args:
        per_unit: long table, one row per (group, method, unit) with a numeric ``value``.
        method, value, unit: column names (e.g. ``"method"``, ``"lds"``, ``"query"``).
        by: grouping columns (e.g. ``["alpha"]``); one ranking per group.
        higher_is_better: direction of ``value``.

    Returns:
        One row per (group, method) in rank order: ``rank``, the ``method`` column, ``mean``,
        ``num_units``, ``tier`` (1 + resolved steps above), then for the step to the next method
        down ``next_method``, ``difference`` (this − next, over the units both have), ``ci_low``,
        ``ci_high`` (paired percentile bootstrap) and ``resolved`` (the interval excludes 0;
        False for the last method).

    Raises:
        KeyError: a named column is missing.
    """
    missing = [c for c in (method, value, unit, *by) if c not in per_unit.columns]
    if missing:
        raise KeyError(f"resolved_ranking: columns {missing} not in {list(per_unit.columns)}")
    sign = 1.0 if higher_is_better else -1.0
    groups = per_unit.groupby(list(by), sort=True) if by else [((), per_unit)]
    rows: list[dict[str, object]] = []
    for key, frame in groups:
        key = key if isinstance(key, tuple) else (key,)
        wide = frame.pivot_table(index=unit, columns=method, values=value, aggfunc="mean")
        means = wide.mean(axis=0, skipna=True)
        order = sorted(means.index, key=lambda m: (-sign * means[m], str(m)))
        tier = 1
        for i, name in enumerate(order):
            row: dict[str, object] = dict(zip(by, key, strict=True))
            row.update({"rank": i + 1, method: name})
            row.update(
                mean=float(means[name]),
                num_units=int(wide[name].notna().sum()),
                tier=tier,
            )
            if i + 1 < len(order):
                nxt = order[i + 1]
                diff = (wide[name] - wide[nxt]).to_numpy(dtype=np.float64)
                diff = diff[np.isfinite(diff)]
                lo, hi = bootstrap_mean_ci(diff, num_bootstrap, confidence, seed)
                # an end that is 0 up to rounding (e.g. means of thirds) touches 0: not resolved
                pair = wide[[name, nxt]].to_numpy(dtype=np.float64)
                scale = np.nanmax(np.abs(pair)) if np.isfinite(pair).any() else 0.0
                tol = 1e-9 * float(scale)
                resolved = bool(np.isfinite(lo) and (lo > tol or hi < -tol))
                row.update(
                    next_method=nxt,
                    difference=float(diff.mean()) if diff.size else math.nan,
                    ci_low=lo,
                    ci_high=hi,
                    resolved=resolved,
                )
                tier += int(resolved)
            else:
                row.update(
                    next_method="", difference=math.nan, ci_low=math.nan, ci_high=math.nan,
                    resolved=False,
                )  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def ranking_text(ranking: pd.DataFrame, method: str = "method") -> str:
    """``"A > B ≈ C"`` for one group of :func:`resolved_ranking` (``>``: resolved step)."""
    rows = ranking.sort_values("rank")
    names = [str(m) for m in rows[method]]
    steps = [">" if r else "≈" for r in rows["resolved"].iloc[:-1]]
    return " ".join([names[0], *(f"{s} {n}" for s, n in zip(steps, names[1:], strict=True))])
