"""Does the influence change move with the stage transition? Shift statistics over seeds.

* :func:`level_crossing`: the first step at which a curve (the induction score) reaches a level.
* :func:`largest_change`: the interval between adjacent checkpoints where class-level influence
  changes most (max over class pairs of ``|change|``), with the change's standard error.
* :func:`combine_sampler_seeds`: class matrices of several sampler seeds at one checkpoint,
  averaged, with the standard error of the mean.
* :func:`paired_shift`: ``late - early`` differences paired by training seed, their mean with a
  t interval and a bootstrap interval.
* :func:`sign_agreement`: share of predicted signs that match the observed ones, Wilson interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

__all__ = [
    "ChangeStep",
    "Shift",
    "level_crossing",
    "largest_change",
    "combine_sampler_seeds",
    "paired_shift",
    "sign_agreement",
]


@dataclass
class ChangeStep:
    """Where influence changes most between adjacent checkpoints.

    Attributes:
        step: midpoint of the interval ``(steps[i] + steps[i+1]) / 2``.
        interval: ``(steps[i], steps[i+1])``.
        change: the largest ``|change|`` over the class pairs considered.
        std_error: its standard error (``hypot`` of the two checkpoints' standard errors).
        pair: ``(query class index, training class index)`` of that change.
        per_interval: ``[T-1]`` the largest ``|change|`` of every interval (the curve).
    """

    step: float
    interval: tuple[int, int]
    change: float
    std_error: float
    pair: tuple[int, int]
    per_interval: np.ndarray


def level_crossing(
    steps: list[int] | np.ndarray, values: list[float] | np.ndarray, level: float
) -> float:
    """First step at which ``values`` reach ``level`` from below (linear interpolation between
    the two steps around the crossing; the first step itself if it is already there); NaN if
    never. A fixed level (nats of induction score) marks when copying is established, whatever
    the curve did before (e.g. an anti-copying dip below 0 before repeats are shown)."""
    st, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    for k in range(len(y)):
        if np.isfinite(y[k]) and y[k] >= level:
            if k == 0 or not np.isfinite(y[k - 1]) or y[k] == y[k - 1]:
                return float(st[k])
            f = (level - y[k - 1]) / (y[k] - y[k - 1])
            return float(st[k - 1] + f * (st[k] - st[k - 1]))
    return math.nan


def combine_sampler_seeds(
    means: np.ndarray, std_errors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the leading (sampler-seed) axis, and its standard error: the within-seed block
    standard errors combined (``sqrt(sum se^2) / S``) or, if larger, the spread between seeds
    (``sd / sqrt(S)``), so disagreeing seeds are never hidden."""
    m = np.asarray(means, dtype=float)
    s = np.asarray(std_errors, dtype=float)
    k = m.shape[0]
    within = np.sqrt(np.nansum(s**2, axis=0)) / k
    between = np.nanstd(m, axis=0, ddof=1) / math.sqrt(k) if k > 1 else np.zeros_like(within)
    return np.nanmean(m, axis=0), np.fmax(within, between)


def largest_change(
    steps: list[int] | np.ndarray,
    mean: np.ndarray,
    std_error: np.ndarray,
    pairs: list[tuple[int, int]] | None = None,
) -> ChangeStep:
    """The adjacent-checkpoint interval with the largest class-level ``|change|``.

    ``mean`` / ``std_error``: ``[T, K, K]`` class x class influence per checkpoint (steps
    ascending). ``pairs``: the (query, training) class pairs considered (default: all).
    """
    m, s = np.asarray(mean, dtype=float), np.asarray(std_error, dtype=float)
    st = np.asarray(steps, dtype=float)
    if m.shape[0] < 2 or m.shape != s.shape or len(st) != m.shape[0]:
        raise ValueError("need >= 2 checkpoints and mean, std_error of the same [T, K, K] shape")
    if np.any(np.diff(st) <= 0):
        raise ValueError("steps must be strictly increasing")
    k = m.shape[1]
    sel = pairs if pairs is not None else [(a, b) for a in range(k) for b in range(k)]
    d = np.stack([m[1:, a, b] - m[:-1, a, b] for a, b in sel], axis=1)  # [T-1, P]
    se = np.stack([np.hypot(s[1:, a, b], s[:-1, a, b]) for a, b in sel], axis=1)
    absd = np.where(np.isfinite(d), np.abs(d), -np.inf)
    per_interval = absd.max(axis=1)
    i = int(np.argmax(per_interval))
    p = int(np.argmax(absd[i]))
    return ChangeStep(
        step=float(0.5 * (st[i] + st[i + 1])),
        interval=(int(st[i]), int(st[i + 1])),
        change=float(absd[i, p]),
        std_error=float(se[i, p]),
        pair=sel[p],
        per_interval=np.where(np.isfinite(per_interval), per_interval, np.nan),
    )


@dataclass
class Shift:
    """Mean of paired differences (``late - early`` per training seed) with two intervals."""

    mean: float
    std_error: float
    t_low: float
    t_high: float
    boot_low: float
    boot_high: float
    n: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.t_low > 0 or self.t_high < 0)

    def to_dict(self) -> dict[str, float]:
        return asdict(self) | {"excludes_zero": self.excludes_zero}


def paired_shift(
    early: np.ndarray | list[float],
    late: np.ndarray | list[float],
    confidence: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
) -> Shift:
    """``late - early`` paired by position (training seed): mean, its standard error, a Student-t
    interval (n-1 degrees of freedom) and a percentile bootstrap interval over seeds. Pairs with
    a NaN on either side are dropped; with fewer than 2 pairs the intervals are NaN."""
    a, b = np.asarray(early, dtype=float), np.asarray(late, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"early {a.shape} and late {b.shape} must pair up")
    d = (b - a)[np.isfinite(a) & np.isfinite(b)]
    n, nan = len(d), math.nan
    if n == 0:
        return Shift(nan, nan, nan, nan, nan, nan, 0, confidence)
    mean = float(d.mean())
    if n < 2:
        return Shift(mean, nan, nan, nan, nan, nan, n, confidence)
    se = float(d.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.quantile(boots, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Shift(mean, se, mean - half, mean + half, float(lo), float(hi), n, confidence)


def sign_agreement(
    predicted: np.ndarray | list[float],
    observed: np.ndarray | list[float],
    confidence: float = 0.95,
) -> dict[str, float]:
    """Share of cases where ``sign(predicted) == sign(observed)`` (zeros and NaNs left out), with
    a Wilson score interval (cases treated as independent)."""
    p, o = np.asarray(predicted, dtype=float), np.asarray(observed, dtype=float)
    keep = np.isfinite(p) & np.isfinite(o) & (p != 0) & (o != 0)
    n = int(keep.sum())
    if n == 0:
        return {"agreement": math.nan, "low": math.nan, "high": math.nan, "n": 0.0}
    k = float((np.sign(p[keep]) == np.sign(o[keep])).sum())
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    phat = k / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"agreement": phat, "low": centre - half, "high": centre + half, "n": float(n)}
