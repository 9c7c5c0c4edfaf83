"""Analysis of a toy-hierarchy run (:class:`~bifrepro.dynamics.toy.ToyRun`): per pair, sign
agreement with leave-one-out, sign flips and where influence peaks relative to the stage
transitions; per checkpoint, rank agreement; the summary metrics of ``metrics.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bifrepro.data.hierarchy import Hierarchy
from bifrepro.dynamics.metrics import (
    off_diagonal,
    peak_step,
    sign_agreement,
    spearman_per_checkpoint,
)
from bifrepro.dynamics.modes import covariance_to_correlation
from bifrepro.dynamics.toy import ToyRun

__all__ = [
    "ToyAnalysis",
    "analyse_toy_run",
    "has_sign_flip",
    "log_ratio",
    "pair_key",
    "focus_metrics",
    "mode_strength_table",
    "FOCUS_COLUMNS",
]

#: Columns of the pair table reported as ``focus/<source>_to_<target>/<column>`` metrics.
FOCUS_COLUMNS = (
    "sign_agreement_bif_loo",
    "sign_flip_bif",
    "sign_flip_loo",
    "sign_flip_analytic",
    "helpful_peak_bif",
    "harmful_peak_bif",
    "helpful_peak_loo",
    "harmful_peak_loo",
    "helpful_peak_analytic",
    "harmful_peak_analytic",
    "transition_shared",
    "transition_separating",
)


@dataclass
class ToyAnalysis:
    """Summary metrics plus the pair, checkpoint and curve tables of one run."""

    metrics: dict[str, float]
    pairs: pd.DataFrame
    checkpoints: pd.DataFrame
    curves: pd.DataFrame


def has_sign_flip(curve: np.ndarray, threshold: float) -> bool:
    """Both the max and -min of ``curve`` exceed ``threshold`` x max |curve|."""
    c = np.nan_to_num(np.asarray(curve, dtype=float))
    m = np.abs(c).max()
    return bool(m > 0 and c.max() > threshold * m and -c.min() > threshold * m)


def log_ratio(a: float, b: float) -> float:
    """``log10(a / b)`` for finite positive ``a``, ``b``; NaN otherwise."""
    return (
        float(np.log10(a / b))
        if a > 0 and b > 0 and np.isfinite(a) and np.isfinite(b)
        else math.nan
    )


def pair_key(h: Hierarchy, i: int, j: int) -> str:
    """``"<item i>_to_<item j>"`` with spaces as underscores (metric names)."""
    return f"{h.item_names[i]}_to_{h.item_names[j]}".replace(" ", "_")


def _nanmean(x: Any) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def _pair_table(
    h: Hierarchy,
    curves: dict[str, Any],
    steps: np.ndarray,
    level_t: np.ndarray,
    sign_tolerance: float,
    flip_threshold: float,
) -> pd.DataFrame:
    """Per ordered pair: sign agreement with leave-one-out, peaks vs the mode transitions."""
    loo = curves["loo"]
    agree_bif, counted = sign_agreement(curves["bif"], loo, sign_tolerance)
    agree_ana, _ = sign_agreement(curves["analytic"], loo, sign_tolerance)
    peaks = {
        (name, kind): peak_step(curve, steps, kind)
        for name, curve in curves.items()
        for kind in ("max", "min")
    }
    rows = []
    for j in range(h.num_items):
        for i in range(h.num_items):
            if i == j:
                continue
            d = h.common_ancestor_depth(i, j)
            t_shared, t_sep = float(level_t[d]), float(level_t[d + 1])
            row: dict[str, Any] = {
                "source": h.item_names[i],
                "target": h.item_names[j],
                "common_ancestor": h.common_ancestor_name(i, j),
                "ancestor_depth": d,
                "transition_shared": t_shared,
                "transition_separating": t_sep,
                "sign_agreement_bif_loo": agree_bif[j, i],
                "sign_agreement_analytic_loo": agree_ana[j, i],
                "checkpoints_counted": int(counted[j, i]),
            }
            for name, curve in curves.items():
                hp, hm = float(peaks[(name, "max")][j, i]), float(peaks[(name, "min")][j, i])
                row[f"helpful_peak_{name}"] = hp
                row[f"harmful_peak_{name}"] = hm
                row[f"sign_flip_{name}"] = has_sign_flip(curve[:, j, i].numpy(), flip_threshold)
                row[f"log10_helpful_peak_over_shared_{name}"] = log_ratio(hp, t_shared)
                row[f"log10_harmful_peak_over_separating_{name}"] = log_ratio(hm, t_sep)
            rows.append(row)
    return pd.DataFrame(rows)


def analyse_toy_run(
    h: Hierarchy, r: ToyRun, normalize: str, sign_tolerance: float, flip_threshold: float
) -> ToyAnalysis:
    """Pair, checkpoint and curve tables and the summary metrics of run ``r``.

    ``normalize``: the BIF estimator compared with leave-one-out ("covariance" or
    "correlation"; the analytic prediction is normalised the same way).
    """
    steps = np.asarray(r.steps)
    bif = r.bif.scores(normalize).double()
    analytic = (
        r.analytic_cov if normalize == "covariance" else covariance_to_correlation(r.analytic_cov)
    )
    loo = r.loo.double()
    p = h.num_items
    curves = {"bif": bif, "analytic": analytic, "loo": loo}
    pairs = _pair_table(h, curves, steps, r.level_transitions, sign_tolerance, flip_threshold)

    # Per checkpoint: rank agreement over all ordered pairs, where leave-one-out is non-negligible.
    off_loo = off_diagonal(loo)
    loo_scale = np.abs(off_loo).max(axis=1)
    active = loo_scale > sign_tolerance * loo_scale.max()
    sp_bif = spearman_per_checkpoint(off_diagonal(bif), off_loo)
    sp_cov = spearman_per_checkpoint(off_diagonal(r.bif.covariance), off_loo)
    sp_corr = spearman_per_checkpoint(off_diagonal(r.bif.correlation), off_loo)
    sp_ana = spearman_per_checkpoint(off_diagonal(analytic), off_loo)
    sp_bif_ana = spearman_per_checkpoint(off_diagonal(bif), off_diagonal(analytic))
    checkpoints = pd.DataFrame({
        "step": steps, "loo_active": active, "spearman_bif_loo": sp_bif,
        "spearman_bif_covariance_loo": sp_cov, "spearman_bif_correlation_loo": sp_corr,
        "spearman_analytic_loo": sp_ana, "spearman_bif_analytic": sp_bif_ana,
        "chains_healthy": r.bif.healthy,
        "rhat": [m.get("chain/rhat", math.nan) for m in r.bif.chain_metrics],
        "ess": [m.get("health/ess_projected", math.nan) for m in r.bif.chain_metrics],
        "chain_summary": r.bif.summaries,
    })  # fmt: skip

    # Long table of every curve (wide in the estimators).
    t_idx, j_idx, i_idx = np.meshgrid(
        np.arange(len(steps)), np.arange(p), np.arange(p), indexing="ij"
    )
    curve_table = pd.DataFrame({
        "step": steps[t_idx.ravel()],
        "source": np.asarray(h.item_names)[i_idx.ravel()],
        "target": np.asarray(h.item_names)[j_idx.ravel()],
        "bif_covariance": r.bif.covariance.numpy().ravel(),
        "bif_correlation": r.bif.correlation.numpy().ravel(),
        "analytic_covariance": r.analytic_cov.numpy().ravel(),
        "analytic_correlation": covariance_to_correlation(r.analytic_cov).numpy().ravel(),
        "leave_one_out": loo.numpy().ravel(),
    })  # fmt: skip

    metrics: dict[str, float] = {
        "sign_agreement_bif_loo_mean": _nanmean(pairs["sign_agreement_bif_loo"]),
        "sign_agreement_analytic_loo_mean": _nanmean(pairs["sign_agreement_analytic_loo"]),
        "spearman_bif_loo_mean": _nanmean(sp_bif[active]),
        "spearman_bif_covariance_loo_mean": _nanmean(sp_cov[active]),
        "spearman_bif_correlation_loo_mean": _nanmean(sp_corr[active]),
        "spearman_analytic_loo_mean": _nanmean(sp_ana[active]),
        "spearman_bif_analytic_mean": _nanmean(sp_bif_ana[active]),
        "loo_active_checkpoints": float(active.sum()),
        "chains_healthy_fraction": r.bif.num_healthy / max(len(r.bif.healthy), 1),
        "sign_flip_fraction_bif": _nanmean(pairs["sign_flip_bif"]),
        "sign_flip_fraction_loo": _nanmean(pairs["sign_flip_loo"]),
        "sign_flip_fraction_analytic": _nanmean(pairs["sign_flip_analytic"]),
        "bif_seconds": r.bif_seconds,
    }
    for k, t in enumerate(r.level_transitions):
        metrics[f"transition_step/stage{k}"] = float(t)
    for d in range(h.depth):
        sel = pairs["ancestor_depth"] == d
        for name in ("bif", "loo", "analytic"):
            metrics[f"ancestor_depth{d}/log10_harmful_peak_over_separating_{name}"] = _nanmean(
                pairs.loc[sel, f"log10_harmful_peak_over_separating_{name}"]
            )
            metrics[f"ancestor_depth{d}/sign_flip_fraction_{name}"] = _nanmean(
                pairs.loc[sel, f"sign_flip_{name}"]
            )
        metrics[f"ancestor_depth{d}/sign_agreement_bif_loo"] = _nanmean(
            pairs.loc[sel, "sign_agreement_bif_loo"]
        )
    return ToyAnalysis(metrics, pairs, checkpoints, curve_table)


def focus_metrics(
    h: Hierarchy, pairs: pd.DataFrame, src: int, targets: list[int]
) -> dict[str, float]:
    """``focus/<src>_to_<target>/<column>`` for every target and :data:`FOCUS_COLUMNS`."""
    out: dict[str, float] = {}
    for j in targets:
        sel = (pairs.source == h.item_names[src]) & (pairs.target == h.item_names[j])
        row = pairs[sel].iloc[0]
        for col in FOCUS_COLUMNS:
            out[f"focus/{pair_key(h, src, j)}/{col}"] = float(row[col])
    return out


def mode_strength_table(h: Hierarchy, r: ToyRun, points: int = 200) -> pd.DataFrame:
    """Mode strengths and training loss at ~``points`` log-spaced steps (plus step 0)."""
    idx = sorted({int(round(x)) for x in np.geomspace(1, len(r.map_steps) - 1, points)} | {0})
    modes = pd.DataFrame(r.strengths[idx].numpy(), columns=list(h.mode_names))
    modes.insert(0, "step", [r.map_steps[k] for k in idx])
    modes["train_loss"] = r.train_loss[idx]
    return modes
