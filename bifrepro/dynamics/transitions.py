"""Stage transitions in curves over training, read in log time.

:func:`detect_transition`: where a curve (e.g. the induction score) rises through 20 / 50 / 80 %
of its total rise; :func:`fastest_drop_steps`: where the training loss falls fastest per unit of
``log(step)``; :func:`sign_flips`: which curves (e.g. influence between two token classes) take
both signs over training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Transition", "detect_transition", "fastest_drop_steps", "sign_flips"]


@dataclass
class Transition:
    """Where a curve rises (in log time).

    Attributes:
        onset, midpoint, end: steps where the curve first reaches 20 / 50 / 80 % (by default) of
            its rise from its starting level to its maximum (log-interpolated between
            checkpoints); NaN when not detected.
        rise: maximum minus starting level.
        detected: ``rise >= min_rise``.
        width_decades: ``log10(end / onset)``: how sharp the transition is.
    """

    onset: float
    midpoint: float
    end: float
    rise: float
    detected: bool

    @property
    def width_decades(self) -> float:
        if not (self.detected and self.onset > 0 and self.end > 0):
            return math.nan
        return math.log10(self.end / self.onset)

    def to_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}onset_step": self.onset,
            f"{prefix}midpoint_step": self.midpoint,
            f"{prefix}end_step": self.end,
            f"{prefix}rise": self.rise,
            f"{prefix}detected": float(self.detected),
            f"{prefix}width_decades": self.width_decades,
        }


def _log_t(steps: Sequence[float]) -> np.ndarray:
    return np.log(np.maximum(np.asarray(steps, dtype=float), 0.5))


def _first_crossing(logt: np.ndarray, y: np.ndarray, level: float, start: int) -> float:
    """First log-step at which ``y`` reaches ``level`` going up, from index ``start`` on."""
    for k in range(start, len(y)):
        if y[k] >= level:
            if k == start or y[k] == y[k - 1]:
                return float(np.exp(logt[k]))
            f = (level - y[k - 1]) / (y[k] - y[k - 1])
            return float(np.exp(logt[k - 1] + f * (logt[k] - logt[k - 1])))
    return math.nan


def detect_transition(
    steps: Sequence[float],
    values: Sequence[float],
    min_rise: float,
    fractions: tuple[float, float, float] = (0.2, 0.5, 0.8),
) -> Transition:
    """The rise of a curve over training (e.g. the induction score) and where it happens.

    The starting level is the curve's minimum before its maximum (so an early dip does not count
    as part of the rise); crossings are searched after that minimum and interpolated linearly in
    ``log(step)``. ``min_rise``: smallest rise (in the curve's units) that counts as a transition.
    """
    y = np.asarray(values, dtype=float)
    if y.shape[0] != len(steps):
        raise ValueError(f"{len(steps)} steps but {y.shape[0]} values")
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return Transition(math.nan, math.nan, math.nan, math.nan, False)
    s = np.asarray(steps, dtype=float)[ok]
    y = y[ok]
    top = int(np.argmax(y))
    low = int(np.argmin(y[: top + 1]))
    rise = float(y[top] - y[low])
    if not rise >= min_rise:
        return Transition(math.nan, math.nan, math.nan, rise, False)
    logt = _log_t(s)
    marks = [_first_crossing(logt, y, y[low] + f * rise, low) for f in fractions]
    return Transition(marks[0], marks[1], marks[2], rise, True)


def fastest_drop_steps(
    steps: Sequence[float],
    loss: Sequence[float],
    num: int = 2,
    points_per_decade: int = 8,
    min_separation_decades: float = 0.4,
) -> list[float]:
    """Steps where the loss falls fastest per unit of ``log10(step)`` (biggest drops first).

    The curve (e.g. the per-step training loss) is averaged into bins evenly spaced in
    ``log10(step)`` (``points_per_decade`` per decade, which also smooths minibatch noise); the
    slope between bins is ranked and peaks closer than ``min_separation_decades`` to a steeper
    one are dropped.
    """
    s = np.asarray(steps, dtype=float)
    y = np.asarray(loss, dtype=float)
    keep = (s > 0) & np.isfinite(y)
    s, y = s[keep], y[keep]
    if len(s) < 3:
        return []
    ls = np.log10(s)
    edges = np.arange(ls.min(), ls.max() + 1.0 / points_per_decade, 1.0 / points_per_decade)
    centres, means = [], []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        sel = (ls >= a) & (ls < b) if b < edges[-1] else (ls >= a) & (ls <= b)
        if sel.any():
            centres.append(ls[sel].mean())
            means.append(y[sel].mean())
    if len(centres) < 3:
        return []
    c, m = np.asarray(centres), np.asarray(means)
    slope = -(m[1:] - m[:-1]) / (c[1:] - c[:-1])  # loss drop per decade
    mid = 0.5 * (c[1:] + c[:-1])
    chosen: list[float] = []
    for k in np.argsort(-slope):
        if slope[k] <= 0 or len(chosen) >= num:
            break
        if all(abs(mid[k] - x) >= min_separation_decades for x in chosen):
            chosen.append(float(mid[k]))
    return sorted(float(10**x) for x in chosen)


def sign_flips(curves: np.ndarray | torch.Tensor, threshold: float = 0.2) -> np.ndarray:
    """Per curve of ``[T, ...]``: both signs reach ``threshold`` x max |curve| (NaNs ignored)."""
    c = curves.detach().cpu().double().numpy() if isinstance(curves, torch.Tensor) else curves
    c = np.nan_to_num(np.asarray(c, dtype=float))
    scale = np.abs(c).max(axis=0)
    return (scale > 0) & (c.max(axis=0) > threshold * scale) & (-c.min(axis=0) > threshold * scale)
