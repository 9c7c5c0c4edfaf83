"""Comparing influence curves over training: sign agreement, peaks, rank correlation.

All functions take curves laid out ``[T, ...]`` (checkpoints first) on a shared step grid.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

__all__ = ["sign_agreement", "peak_step", "spearman_per_checkpoint", "off_diagonal"]


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return (
        x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)
    )


def sign_agreement(
    estimate: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray, rel_tol: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of checkpoints where ``estimate`` has the sign of ``truth``, per curve.

    Checkpoints where ``|truth|`` is below ``rel_tol`` times that curve's largest ``|truth|`` are
    skipped: there the true influence is ~0 and its sign is noise.

    Returns:
        ``(agreement, counted)``: arrays shaped like ``truth[0]``; ``agreement`` is NaN where no
        checkpoint counted.
    """
    est, tru = _np(estimate), _np(truth)
    if est.shape != tru.shape:
        raise ValueError(f"shape mismatch {est.shape} vs {tru.shape}")
    scale = np.abs(tru).max(axis=0, keepdims=True)
    mask = np.abs(tru) > rel_tol * scale
    agree = (np.sign(est) == np.sign(tru)) & mask
    counted = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(counted > 0, agree.sum(axis=0) / np.maximum(counted, 1), np.nan)
    return frac, counted


def peak_step(
    curves: torch.Tensor | np.ndarray, steps: list[int] | np.ndarray, kind: str = "abs"
) -> np.ndarray:
    """Step of each curve's extremum: ``"max"`` (most helpful), ``"min"`` (most harmful) or ``"abs"``."""
    c = _np(curves)
    t = np.asarray(steps)
    if c.shape[0] != t.shape[0]:
        raise ValueError(f"curves have {c.shape[0]} checkpoints but {t.shape[0]} steps were given")
    filled = np.nan_to_num(c, nan=0.0)
    if kind == "max":
        idx = filled.argmax(axis=0)
    elif kind == "min":
        idx = filled.argmin(axis=0)
    elif kind == "abs":
        idx = np.abs(filled).argmax(axis=0)
    else:
        raise ValueError(f"kind must be 'max', 'min' or 'abs', got {kind!r}")
    return t[idx]


def off_diagonal(matrices: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[T, P, P]`` → ``[T, P·(P-1)]``: every ordered pair ``i != j`` (row-major)."""
    m = _np(matrices)
    p = m.shape[-1]
    mask = ~np.eye(p, dtype=bool)
    return m[..., mask]


def spearman_per_checkpoint(
    estimate: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray
) -> np.ndarray:
    """Spearman correlation over items of ``estimate[t]`` vs ``truth[t]`` for each checkpoint.

    Inputs are ``[T, K]`` (e.g. :func:`off_diagonal` of ``[T, P, P]`` matrices). NaN where either
    side is constant or not finite.
    """
    est, tru = _np(estimate), _np(truth)
    if est.shape != tru.shape or est.ndim != 2:
        raise ValueError(
            f"expected two [T, K] arrays of the same shape, got {est.shape}, {tru.shape}"
        )
    out = np.full(est.shape[0], np.nan)
    for t in range(est.shape[0]):
        a, b = est[t], tru[t]
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            continue
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        out[t] = float(spearmanr(a, b).statistic)
    return out
