"""Which sign flips of the toy's influence curves survive Monte Carlo noise and initialisation.

One toy run gives one BIF curve per pair of items; whether it "flips" (helpful, then harmful, or
the reverse) can be noise. Over several sampler seeds at one initialisation, a flip is *robust*
when both of its extremes are resolved: the curve's value at the helpful peak has a confidence
interval above zero and at the harmful peak one below zero. The peaks are located on the other
seeds' mean curve (cross-fitting), so picking the extremes does not by itself make them look
significant. The analytic prediction and leave-one-out, which have no sampler noise, are reported
beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from bifrepro.data.hierarchy import Hierarchy
from bifrepro.dynamics.toy_analysis import has_sign_flip

__all__ = ["cross_fitted_extremes", "flip_robustness", "summarise_robustness"]


def cross_fitted_extremes(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per seed, the curve's value at the max and at the min of the *other* seeds' mean curve.

    Args:
        curves: ``[S, T]`` one curve per sampler seed (S ≥ 2) over T checkpoints.

    Returns:
        ``(at_max, at_min)``, each ``[S]``.
    """
    c = np.asarray(curves, dtype=float)
    if c.ndim != 2 or c.shape[0] < 2:
        raise ValueError(f"curves must be [seeds >= 2, checkpoints], got shape {c.shape}")
    total = c.sum(0)
    at_max, at_min = np.empty(c.shape[0]), np.empty(c.shape[0])
    for s in range(c.shape[0]):
        others = (total - c[s]) / (c.shape[0] - 1)
        at_max[s], at_min[s] = c[s, int(np.argmax(others))], c[s, int(np.argmin(others))]
    return at_max, at_min


def _t_interval(x: np.ndarray, confidence: float) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def flip_robustness(
    h: Hierarchy,
    steps: Sequence[int],
    bif: np.ndarray,
    analytic: np.ndarray,
    loo: np.ndarray,
    *,
    flip_threshold: float = 0.2,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per unordered pair of items: how often and how robustly each curve flips.

    Args:
        h: the hierarchy (names, common ancestors).
        steps: the T checkpoint steps.
        bif: ``[S, T, P, P]`` BIF scores per sampler seed (one initialisation).
        analytic, loo: ``[T, P, P]`` the analytic prediction and leave-one-out influence.
        flip_threshold: as in :func:`~bifrepro.dynamics.toy_analysis.has_sign_flip`.
        confidence: level of the t-intervals over seeds at the cross-fitted extremes.

    Columns: ``flips_bif`` (seeds whose own curve flips), ``seeds``, ``robust_flip_bif`` (both
    extremes resolved), the intervals at the extremes, the peak steps of the mean curve and their
    spread over seeds, and ``sign_flip_analytic`` / ``sign_flip_loo``.
    """
    b = np.asarray(bif, dtype=float)
    steps_arr = np.asarray(list(steps), dtype=float)
    seeds = b.shape[0]
    rows = []
    for i in range(h.num_items):
        for j in range(i + 1, h.num_items):
            curves = b[:, :, j, i]
            at_max, at_min = cross_fitted_extremes(curves)
            hi_lo, hi_hi = _t_interval(at_max, confidence)
            lo_lo, lo_hi = _t_interval(at_min, confidence)
            own_max = steps_arr[np.argmax(curves, axis=1)]
            own_min = steps_arr[np.argmin(curves, axis=1)]
            mean = curves.mean(0)
            rows.append({
                "source": h.item_names[i],
                "target": h.item_names[j],
                "common_ancestor": h.common_ancestor_name(i, j),
                "ancestor_depth": h.common_ancestor_depth(i, j),
                "seeds": seeds,
                "flips_bif": int(sum(has_sign_flip(c, flip_threshold) for c in curves)),
                "robust_flip_bif": bool(hi_lo > 0 and lo_hi < 0),
                "at_helpful_peak_ci_low": hi_lo,
                "at_helpful_peak_ci_high": hi_hi,
                "at_harmful_peak_ci_low": lo_lo,
                "at_harmful_peak_ci_high": lo_hi,
                "helpful_peak_step_mean_curve": float(steps_arr[int(np.argmax(mean))]),
                "harmful_peak_step_mean_curve": float(steps_arr[int(np.argmin(mean))]),
                "log10_helpful_peak_step_sd": float(np.log10(own_max).std(ddof=1)),
                "log10_harmful_peak_step_sd": float(np.log10(own_min).std(ddof=1)),
                "sign_flip_analytic": has_sign_flip(analytic[:, j, i], flip_threshold),
                "sign_flip_loo": has_sign_flip(loo[:, j, i], flip_threshold),
            })  # fmt: skip
    return pd.DataFrame(rows)


def summarise_robustness(table: pd.DataFrame) -> pd.DataFrame:
    """Per initialisation seed and ancestor depth: pairs, BIF flips in any/all seeds, robust BIF
    flips, and analytic / leave-one-out flips (``table`` has an ``init_seed`` column)."""
    g = table.groupby(["init_seed", "ancestor_depth"], sort=True)
    out = g.agg(
        pairs=("source", "size"),
        bif_flips_any_seed=("flips_bif", lambda x: int((x > 0).sum())),
        bif_flips_every_seed=("flips_bif", lambda x: int((x == table["seeds"].max()).sum())),
        bif_robust_flips=("robust_flip_bif", "sum"),
        analytic_flips=("sign_flip_analytic", "sum"),
        loo_flips=("sign_flip_loo", "sum"),
    )
    return out.reset_index()
