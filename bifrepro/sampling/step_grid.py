"""The step sizes the calibration tries: a geometric grid, optionally anchored at the curvature cap.

Per eigendirection of the local posterior's precision ``A = nβH + γI`` full-batch SGLD is stable
for ``εa < 4``; steps with ``ε·κ`` (``κ = λ_max(A)``, or ``λ_max(P^½AP^½)`` with a
preconditioner ``P``) above ``max_step_curvature`` are rejected unrun, so
with ``anchor_grid`` the grid starts at the largest admitted step instead of ``grid_max``.
"""

from __future__ import annotations

import math

import numpy as np

from bifrepro.sampling.calibration_config import CalibrationConfig
from bifrepro.sgld_config import SGLDConfig

__all__ = ["coarse_grid", "anchor_grid"]


def coarse_grid(cal: CalibrationConfig) -> list[float]:
    """``grid_points`` geometric steps from ``grid_max`` down to ``grid_min`` (largest first)."""
    points = np.geomspace(cal.grid_min, cal.grid_max, cal.grid_points)
    return sorted({float(v) for v in points}, reverse=True)


def anchor_grid(
    cal: CalibrationConfig,
    config: SGLDConfig,
    gamma: float,
    nbeta: float,
    hessian_top_eigenvalue: float = math.nan,
    *,
    curvature: float | None = None,
) -> list[float]:
    """The coarse grid for one (γ, nβ), anchored at its curvature cap when ``cal.anchor_grid``.

    The cap is ``max_step_curvature / κ``, with ``κ = curvature`` when given (the stiffest
    curvature per unit ε, preconditioner included: ``λ_max(P^½(nβH + γI)P^½)`` for RMSProp-SGLD)
    and otherwise ``κ = (γ + nβ·|λ_max(H)|) / scale`` (``scale = rmsprop_eps`` for RMSProp-SGLD,
    whose effective step is at most ``ε/rmsprop_eps``); when the cap lies inside
    ``(grid_min, grid_max)`` the ``grid_points`` run from it down to ``grid_min``, otherwise the
    fixed :func:`coarse_grid` is used. Largest step first.
    """
    coarse = coarse_grid(cal)
    if not cal.anchor_grid:
        return coarse
    if curvature is None:
        lam = hessian_top_eigenvalue
        curvature = gamma + (nbeta * abs(lam) if math.isfinite(lam) else 0.0)
        curvature /= config.rmsprop_eps if config.preconditioned else 1.0
    cap = cal.max_step_curvature / curvature * (1 - 1e-9) if curvature > 0 else math.inf
    if not cal.grid_min < cap < cal.grid_max:
        return coarse
    points = np.geomspace(cal.grid_min, cap, cal.grid_points)
    return sorted({float(v) for v in points}, reverse=True)
