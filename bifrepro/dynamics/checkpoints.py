"""Checkpoint grids for time-resolved attribution.

Stagewise learning happens on a logarithmic clock (each mode's sigmoid is sharp in log time when
modes are well separated), so checkpoints are spaced evenly in ``log(step)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["log_spaced_steps"]


def log_spaced_steps(total_steps: int, num: int, first: int = 1) -> list[int]:
    """About ``num`` distinct integer steps from ``first`` to ``total_steps``, log-spaced.

    Both ends are included; rounding can merge neighbouring steps near ``first``, so fewer than
    ``num`` steps may come back (never more).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if not 1 <= first <= total_steps:
        raise ValueError(f"first={first} must be in [1, total_steps={total_steps}]")
    if num < 1:
        raise ValueError(f"num={num} must be >= 1")
    if num == 1:
        return [int(total_steps)]
    grid = np.geomspace(first, total_steps, num)
    steps = sorted({int(round(s)) for s in grid} | {int(first), int(total_steps)})
    return steps
