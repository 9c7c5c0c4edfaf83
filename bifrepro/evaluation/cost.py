"""What attribution costs: timed fit/score runs over size grids, log-log slopes, crossovers.

Every measurement goes through the attributor interface (:class:`~bifrepro.attribution.base.
Attributor`), whose fit and score phases are timed by :mod:`bifrepro.attribution.timing` (wall
clock, peak RSS increase, peak CUDA allocation), and is labelled with the device it ran on.

Cost models used to summarise the grids:

* **Log-log slope** (:func:`loglog_slope`): ``t ≈ A·x^s`` along one axis with the others fixed
  (``s ≈ 1``: linear in that size).
* **Additive model** (:func:`fit_additive_cost`): ``t ≈ c₀ + c_n·n + c_q·q + c_nq·n·q`` with
  non-negative coefficients, fitted to every point of a method's n- and q-grids. BIF's cost is
  ``draws·(n + q)`` forward passes (``c_nq ≈ 0``); pairwise methods (EK-FAC, TRAK, GradSim)
  pay for the ``n·q`` score matrix and, in kronfluence, for recomputing training gradients per
  query batch. :func:`crossover_queries` solves the two models for the number of queries at
  which one method becomes cheaper than another at a given ``n``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from bifrepro.attribution.base import AttributionTask
from bifrepro.attribution.registry import build_attributor

__all__ = [
    "AdditiveCost",
    "time_method",
    "loglog_slope",
    "fit_additive_cost",
    "crossover_queries",
    "device_label",
]

log = logging.getLogger(__name__)


def device_label(device: torch.device | str) -> str:
    """``"cpu (1 thread)"`` or ``"cuda:0 (NVIDIA H200)"``: what a timing ran on."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"


def time_method(
    settings: Any,
    model: nn.Module,
    task: AttributionTask,
    train_data: Dataset,
    query_data: Dataset,
) -> dict[str, float]:
    """Fit and score one method once; its timings (``fit_seconds``, ``score_seconds``, ...)."""
    attributor = build_attributor(settings)
    attributor.fit(model, task, train_data)
    attributor.score(query_data)
    out = attributor.timings.to_metrics()
    traces = getattr(attributor, "traces", None)
    if traces is not None:
        out["chains_healthy"] = float(traces.diagnostics.is_healthy)
    return out


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``log10 y`` on ``log10 x`` (NaN with < 2 points)."""
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya) & (xa > 0) & (ya > 0)
    if ok.sum() < 2 or np.unique(xa[ok]).size < 2:
        return math.nan, math.nan
    slope, intercept = np.polyfit(np.log10(xa[ok]), np.log10(ya[ok]), 1)
    return float(slope), float(intercept)


@dataclass
class AdditiveCost:
    """``t ≈ c0 + c_n·n + c_q·q + c_nq·n·q`` (seconds), coefficients >= 0."""

    c0: float
    c_n: float
    c_q: float
    c_nq: float

    def __call__(self, n: float, q: float) -> float:
        return self.c0 + self.c_n * n + self.c_q * q + self.c_nq * n * q

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in vars(self).items()}


def fit_additive_cost(
    n: Sequence[float], q: Sequence[float], seconds: Sequence[float]
) -> AdditiveCost:
    """Non-negative least squares fit of :class:`AdditiveCost`, in relative error.

    Rows are weighted by ``1/t`` so that small and large runs count alike.
    """
    from scipy.optimize import nnls

    n_a = np.asarray(n, dtype=float)
    q_a = np.asarray(q, dtype=float)
    t_a = np.asarray(seconds, dtype=float)
    ok = np.isfinite(t_a) & (t_a > 0)
    if ok.sum() < 2:
        return AdditiveCost(math.nan, math.nan, math.nan, math.nan)
    n_a, q_a, t_a = n_a[ok], q_a[ok], t_a[ok]
    design = np.stack([np.ones_like(n_a), n_a, q_a, n_a * q_a], axis=1)
    w = 1.0 / t_a
    coef, _ = nnls(design * w[:, None], t_a * w)
    return AdditiveCost(*(float(c) for c in coef))


def crossover_queries(
    cheap_later: AdditiveCost, other: AdditiveCost, n: float, q_max: float = 1e9
) -> float:
    """Smallest number of queries at which ``cheap_later`` costs no more than ``other`` at ``n``.

    Both models are linear in ``q`` at fixed ``n``; returns 1 if ``cheap_later`` is already
    cheaper for one query, ``inf`` if it never becomes cheaper (up to ``q_max``).
    """
    a0, a1 = cheap_later.c0 + cheap_later.c_n * n, cheap_later.c_q + cheap_later.c_nq * n
    b0, b1 = other.c0 + other.c_n * n, other.c_q + other.c_nq * n
    if any(math.isnan(v) for v in (a0, a1, b0, b1)):
        return math.nan
    if a0 + a1 <= b0 + b1:
        return 1.0
    if a1 >= b1:
        return math.inf
    q = (a0 - b0) / (b1 - a1)
    return float(q) if q <= q_max else math.inf
