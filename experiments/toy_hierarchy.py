"""Influence dynamics on the toy semantic hierarchy (Lee et al., *Influence Dynamics and Stagewise
Data Attribution*; Saxe, McClelland & Ganguli 2019).

A deep linear network learns the tree's singular modes one stage at a time. At log-spaced
checkpoints we compute the item x item BIF with the BIF core (SGLD localised at that checkpoint),
the analytic prediction from the learned mode strengths (:mod:`bifrepro.dynamics.modes`) and the
leave-one-out ground truth (retrain without item i from the same init to the same step). The claim
under test: influence is not static; it changes sign and peaks at developmental transitions.

Outputs (``results/toy_hierarchy/`` for a single run, the Hydra job folder inside a multirun):
``fig1_mode_strengths.png``, ``fig2_influence_curves.png``, ``fig3_influence_matrices.png``,
``influence_curves.csv`` (every pair at every checkpoint), ``pair_metrics.csv``,
``checkpoint_metrics.csv``, ``mode_strengths.csv`` and ``metrics.json``; the same metrics,
figures and tables go to MLflow.

Run: ``python -m experiments.toy_hierarchy [key=value ...]`` (``make reproduce-toy``);
sweep: ``python -m experiments.toy_hierarchy -m experiment=toy_sweep`` (``make sweep-toy``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.config import ConfigError, ToyHierarchyConfig, validate_config
from bifrepro.data.hierarchy import Hierarchy, make_hierarchy
from bifrepro.dynamics import (
    CheckpointBIF,
    analytic_loss_covariance,
    bif_over_checkpoints,
    covariance_to_correlation,
    leave_one_out_influence,
    leave_one_out_weights,
    level_transition_steps,
    log_spaced_steps,
    mode_strengths,
    off_diagonal,
    output_mode_vectors,
    peak_step,
    sign_agreement,
    spearman_per_checkpoint,
    train_deep_linear_weighted,
    transition_steps,
)
from bifrepro.io import atomic_save_figure, atomic_write_csv, atomic_write_json
from bifrepro.models.linear import DeepLinearNetwork, per_item_squared_error
from bifrepro.plots.style import health_note
from bifrepro.plots.toy import plot_influence_curves, plot_influence_matrices, plot_mode_strengths
from bifrepro.sampling import CalibrationConfig, CalibrationReport, SGLDConfig, resolve_sampler
from bifrepro.tracking import RunTracker, start_run
from experiments import CONF_DIR, output_dir, resolve_device

__all__ = ["run", "main"]

log = logging.getLogger(__name__)


@dataclass
class _Computed:
    """Everything the analysis needs, computed once."""

    steps: list[int]
    map_steps: list[int]
    strengths: torch.Tensor  # [steps+1, M] at every GD step
    train_loss: np.ndarray  # [steps+1]
    mode_transitions: np.ndarray  # [M]
    level_transitions: np.ndarray  # [levels]
    analytic_cov: torch.Tensor  # [T, P, P]
    loo: torch.Tensor  # [T, P, P]
    bif: CheckpointBIF
    bif_seconds: float
    sampler: SGLDConfig | None = None  # the settings actually used (calibrated with sampler=auto)
    calibration: CalibrationReport | None = None


def _resolve_focus(h: Hierarchy, exp: ToyHierarchyConfig) -> tuple[int, list[int]]:
    """Focus item and its targets (names checked here, before any compute)."""
    try:
        src = h.item_index(exp.focus_item) if exp.focus_item is not None else 0
        if exp.focus_targets is not None:
            targets = [h.item_index(t) for t in exp.focus_targets]
        else:
            targets = []
            for d in range(h.depth - 1, -1, -1):
                js = [
                    j
                    for j in range(h.num_items)
                    if j != src and h.common_ancestor_depth(src, j) == d
                ]
                targets.extend(js[:1])
    except KeyError as err:
        raise ConfigError(
            f"experiment.focus_item / experiment.focus_targets: {err.args[0]}"
        ) from err
    if src in targets:
        raise ConfigError("experiment.focus_targets must not contain the focus item itself")
    if not targets:
        raise ConfigError("experiment.focus_targets is empty")
    return src, targets


def _output_dir(exp: ToyHierarchyConfig, results_dir: Path) -> Path:
    """Explicit output_dir, else the Hydra job folder in a multirun, else under results_dir."""
    return output_dir(exp.output_dir, results_dir, exp.name)


def _compute(
    h: Hierarchy,
    model: DeepLinearNetwork,
    exp: ToyHierarchyConfig,
    sampler: SGLDConfig,
    num_layers: int,
    device: torch.device,
    calibration: CalibrationConfig | None = None,
) -> _Computed:
    """Train (with every leave-one-out run), track modes, then BIF at every checkpoint."""
    p = h.num_items
    steps = log_spaced_steps(exp.steps, exp.num_checkpoints, exp.first_checkpoint)
    if exp.matrix_steps:
        steps = sorted(set(steps) | {int(s) for s in exp.matrix_steps})
    log.info(
        "training %d + %d leave-one-out runs for %d steps; %d checkpoints",
        1,
        p,
        exp.steps,
        len(steps),
    )
    train = train_deep_linear_weighted(
        model.weights(),
        h.inputs,
        h.targets,
        leave_one_out_weights(p),
        exp.lr,
        exp.steps,
        steps,
        map_every=1,
        progress=exp.progress,
    )
    u = output_mode_vectors(h.targets, h.mode_vectors, h.singular_values)
    strengths = mode_strengths(train.maps, u, h.mode_vectors)  # [steps+1, M]
    resid = train.maps - h.targets.T.to(train.maps.dtype)
    train_loss = (resid.pow(2).sum((1, 2)) / (2 * p)).numpy()
    mode_t = transition_steps(strengths, h.singular_values, train.map_steps)
    level_t = level_transition_steps(mode_t, h.mode_levels)
    log.info("stage transitions (a/s = 1/2) at steps %s", np.round(level_t, 1).tolist())

    ck = torch.tensor(steps)
    a_ck = strengths[ck]
    loo = leave_one_out_influence(train.losses[0], train.losses[1:])

    checkpoints = []
    for c, s in enumerate(steps):
        model.load_weights([w.to(torch.float32) for w in train.member_weights(c)])
        checkpoints.append((s, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    model.to(device)
    report = None
    if calibration is not None and calibration.enabled:
        # sampler=auto: calibrate at the trained network (last checkpoint), used at every checkpoint
        model.load_state_dict(checkpoints[-1][1])
        sampler, report = resolve_sampler(
            sampler, calibration, model, per_item_squared_error, h.dataset(), progress=exp.progress
        )
    scale = 1.0 / sampler.localization if sampler.localization > 0 else 1.0
    analytic = analytic_loss_covariance(a_ck, h.singular_values, h.mode_vectors, num_layers, scale)
    t0 = time.perf_counter()
    bif = bif_over_checkpoints(
        model, checkpoints, per_item_squared_error, h.dataset(), sampler, progress=exp.progress
    )
    bif_seconds = time.perf_counter() - t0
    return _Computed(
        steps=steps,
        map_steps=train.map_steps,
        strengths=strengths,
        train_loss=train_loss,
        mode_transitions=mode_t,
        level_transitions=level_t,
        analytic_cov=analytic,
        loo=loo,
        bif=bif,
        bif_seconds=bif_seconds,
        sampler=sampler,
        calibration=report,
    )


def _significant(df: pd.DataFrame, digits: int = 6) -> pd.DataFrame:
    """Float columns rounded to ``digits`` significant digits (small, diff-friendly CSVs)."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = [float(f"{x:.{digits}g}") for x in out[col]]
    return out


def _has_flip(curve: np.ndarray, threshold: float) -> bool:
    c = np.nan_to_num(np.asarray(curve, dtype=float))
    m = np.abs(c).max()
    return bool(m > 0 and c.max() > threshold * m and -c.min() > threshold * m)


def _log_ratio(a: float, b: float) -> float:
    return (
        float(np.log10(a / b))
        if a > 0 and b > 0 and np.isfinite(a) and np.isfinite(b)
        else math.nan
    )


def _pair_key(h: Hierarchy, i: int, j: int) -> str:
    return f"{h.item_names[i]}_to_{h.item_names[j]}".replace(" ", "_")


def _analyse(
    h: Hierarchy, r: _Computed, exp: ToyHierarchyConfig
) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Summary metrics plus pair, checkpoint and curve tables."""
    steps = np.asarray(r.steps)
    bif = r.bif.scores(exp.normalize).double()
    analytic = (
        r.analytic_cov
        if exp.normalize == "covariance"
        else covariance_to_correlation(r.analytic_cov)
    )
    loo = r.loo.double()
    level_t = r.level_transitions
    p = h.num_items

    # Per pair: sign agreement with leave-one-out, peaks vs the matching mode transitions.
    agree_bif, counted = sign_agreement(bif, loo, exp.sign_tolerance)
    agree_ana, _ = sign_agreement(analytic, loo, exp.sign_tolerance)
    peaks = {
        (name, kind): peak_step(curve, steps, kind)
        for name, curve in (("bif", bif), ("analytic", analytic), ("loo", loo))
        for kind in ("max", "min")
    }
    rows = []
    for j in range(p):
        for i in range(p):
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
            for name, curve in (("bif", bif), ("analytic", analytic), ("loo", loo)):
                hp, hm = float(peaks[(name, "max")][j, i]), float(peaks[(name, "min")][j, i])
                row[f"helpful_peak_{name}"] = hp
                row[f"harmful_peak_{name}"] = hm
                row[f"sign_flip_{name}"] = _has_flip(curve[:, j, i].numpy(), exp.flip_threshold)
                row[f"log10_helpful_peak_over_shared_{name}"] = _log_ratio(hp, t_shared)
                row[f"log10_harmful_peak_over_separating_{name}"] = _log_ratio(hm, t_sep)
            rows.append(row)
    pairs = pd.DataFrame(rows)

    # Per checkpoint: rank agreement over all ordered pairs, where leave-one-out is non-negligible.
    off_loo = off_diagonal(loo)
    loo_scale = np.abs(off_loo).max(axis=1)
    active = loo_scale > exp.sign_tolerance * loo_scale.max()
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
    analytic_corr = covariance_to_correlation(r.analytic_cov)
    curves = pd.DataFrame({
        "step": steps[t_idx.ravel()],
        "source": np.asarray(h.item_names)[i_idx.ravel()],
        "target": np.asarray(h.item_names)[j_idx.ravel()],
        "bif_covariance": r.bif.covariance.numpy().ravel(),
        "bif_correlation": r.bif.correlation.numpy().ravel(),
        "analytic_covariance": r.analytic_cov.numpy().ravel(),
        "analytic_correlation": analytic_corr.numpy().ravel(),
        "leave_one_out": loo.numpy().ravel(),
    })  # fmt: skip

    def mean(x: Any) -> float:
        x = np.asarray(x, dtype=float)
        return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan

    metrics: dict[str, float] = {
        "sign_agreement_bif_loo_mean": mean(pairs["sign_agreement_bif_loo"]),
        "sign_agreement_analytic_loo_mean": mean(pairs["sign_agreement_analytic_loo"]),
        "spearman_bif_loo_mean": mean(sp_bif[active]),
        "spearman_bif_covariance_loo_mean": mean(sp_cov[active]),
        "spearman_bif_correlation_loo_mean": mean(sp_corr[active]),
        "spearman_analytic_loo_mean": mean(sp_ana[active]),
        "spearman_bif_analytic_mean": mean(sp_bif_ana[active]),
        "loo_active_checkpoints": float(active.sum()),
        "chains_healthy_fraction": r.bif.num_healthy / max(len(r.bif.healthy), 1),
        "sign_flip_fraction_bif": mean(pairs["sign_flip_bif"]),
        "sign_flip_fraction_loo": mean(pairs["sign_flip_loo"]),
        "sign_flip_fraction_analytic": mean(pairs["sign_flip_analytic"]),
        "bif_seconds": r.bif_seconds,
    }
    for k, t in enumerate(level_t):
        metrics[f"transition_step/stage{k}"] = float(t)
    for d in range(h.depth):
        sel = pairs["ancestor_depth"] == d
        for name in ("bif", "loo", "analytic"):
            metrics[f"ancestor_depth{d}/log10_harmful_peak_over_separating_{name}"] = mean(
                pairs.loc[sel, f"log10_harmful_peak_over_separating_{name}"]
            )
            metrics[f"ancestor_depth{d}/sign_flip_fraction_{name}"] = mean(
                pairs.loc[sel, f"sign_flip_{name}"]
            )
        metrics[f"ancestor_depth{d}/sign_agreement_bif_loo"] = mean(
            pairs.loc[sel, "sign_agreement_bif_loo"]
        )
    return metrics, pairs, checkpoints, curves


def _key_steps(steps: list[int], level_t: np.ndarray, requested: list[int] | None) -> list[int]:
    """Checkpoints for the matrix figure: requested, else the one nearest each stage transition.

    (Not the last checkpoint: once every mode is learned all three estimators are ~0 and a
    per-panel colour scale would only show noise.)
    """
    if requested:
        return sorted({int(s) for s in requested})
    logs = np.log(np.maximum(np.asarray(steps, dtype=float), 0.5))
    chosen = [
        steps[int(np.argmin(np.abs(logs - math.log(t))))]
        for t in level_t
        if np.isfinite(t) and t > 0
    ]
    return sorted(set(chosen)) or [steps[len(steps) // 2]]


def _figures(
    h: Hierarchy,
    r: _Computed,
    exp: ToyHierarchyConfig,
    src: int,
    targets: list[int],
    sampler: SGLDConfig,
    model_desc: str,
) -> dict[str, Any]:
    """The three figures, keyed by file name."""
    steps = r.steps
    level_t = r.level_transitions
    # 1. Stages (mode strengths, every ~log-spaced step to keep the figure light).
    lo = max(1, exp.first_checkpoint // 2)
    idx = sorted({int(round(x)) for x in np.geomspace(lo, len(r.map_steps) - 1, 400)})
    fig1 = plot_mode_strengths(
        [r.map_steps[k] for k in idx],
        r.strengths[idx].numpy(),
        h.singular_values.numpy(),
        h.mode_names,
        h.mode_levels,
        level_t,
        train_loss=r.train_loss[idx],
        title=f"Stages: singular-mode strengths ({h.num_items} items, {model_desc}, lr {exp.lr})",
    )
    # 2. Influence of the focus item on its targets over training.
    bif = r.bif.scores(exp.normalize).numpy()
    if exp.normalize == "covariance":
        analytic = r.analytic_cov.numpy()
        bif_label, left = "BIF (+Cov of losses)", "BIF / analytic (+Cov)"
    else:
        analytic = covariance_to_correlation(r.analytic_cov).numpy()
        bif_label, left = "BIF (Pearson corr.)", "BIF / analytic (corr.)"
    loo = r.loo.numpy()
    curves = {
        "BIF": bif[:, targets, src],
        "analytic": analytic[:, targets, src],
        "leave-one-out": loo[:, targets, src],
    }
    titles = []
    for j in targets:
        seps = h.separating_modes(src, j)
        sep = h.mode_names[seps[0]] if seps else "?"
        lvl = h.separating_level(src, j)
        titles.append(
            f"{h.item_names[src]} → {h.item_names[j]}   (common ancestor: {h.common_ancestor_name(src, j)}; "
            f"separated by '{sep}', stage {lvl})"
        )
    note = health_note(r.bif.num_healthy, len(steps), r.bif.draws, exp.normalize)
    fig2 = plot_influence_curves(
        steps,
        curves,
        titles,
        level_t,
        healthy=r.bif.healthy,
        bif_label=bif_label,
        left_ylabel=left,
        title=(
            f"Influence of {h.item_names[src]} on other items over training (+ = helpful)\n"
            f"{note}; SGLD ε={sampler.step_size:g}, nβ={sampler.nbeta:g}, γ={sampler.localization:g}"
        ),
    )
    # 3. Item x item matrices at key steps.
    keys = _key_steps(steps, level_t, exp.matrix_steps)
    pos = [steps.index(s) for s in keys]
    fig3 = plot_influence_matrices(
        keys,
        {"BIF": bif[pos], "analytic": analytic[pos], "leave-one-out": loo[pos]},
        h.item_names,
        title=f"Item × item influence at the stage transitions (+ = helpful); {note}",
        row_labels={
            "BIF": f"BIF ({exp.normalize})",
            "analytic": "analytic",
            "leave-one-out": "leave-one-out",
        },
    )
    return {
        "fig1_mode_strengths.png": fig1,
        "fig2_influence_curves.png": fig2,
        "fig3_influence_matrices.png": fig3,
    }


def _log_to_mlflow(
    tracker: RunTracker,
    h: Hierarchy,
    r: _Computed,
    metrics: dict[str, float],
    pairs: pd.DataFrame,
    checkpoints: pd.DataFrame,
    exp: ToyHierarchyConfig,
    src: int,
    targets: list[int],
) -> None:
    if not tracker.enabled:
        return
    tracker.log_metrics(metrics)
    tracker.log_metrics({
        f"sign_agreement/{row.source}_to_{row.target}": row.sign_agreement_bif_loo
        for row in pairs.itertuples()
    })  # fmt: skip
    for col in ("spearman_bif_loo", "spearman_analytic_loo", "spearman_bif_analytic"):
        tracker.log_metric_series(f"per_checkpoint/{col}", checkpoints[col], r.steps)
    tracker.log_metric_series(
        "per_checkpoint/chains_healthy", [float(x) for x in r.bif.healthy], r.steps
    )
    bif = r.bif.scores(exp.normalize)
    for j in targets:
        key = _pair_key(h, src, j)
        tracker.log_metric_series(f"influence/bif/{key}", bif[:, j, src].tolist(), r.steps)
        tracker.log_metric_series(
            f"influence/analytic/{key}", r.analytic_cov[:, j, src].tolist(), r.steps
        )
        tracker.log_metric_series(f"influence/loo/{key}", r.loo[:, j, src].tolist(), r.steps)


@torch.no_grad()
def _describe(model: DeepLinearNetwork) -> str:
    widths = [model.layers[0].in_features] + [layer.out_features for layer in model.layers]
    return "linear " + "-".join(str(w) for w in widths)


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the experiment described by ``cfg``; returns the summary metrics.

    The config is validated first (a :class:`~bifrepro.config.ConfigError` naming the key, before
    any compute); figures and tables go to the output folder, everything to MLflow.
    """
    t_start = time.perf_counter()
    vc = validate_config(cfg, groups=("data", "model", "sampler", "tracking", "experiment"))
    exp: ToyHierarchyConfig = vc.experiment
    sampler: SGLDConfig = vc.sampler
    if not isinstance(exp, ToyHierarchyConfig):
        raise ConfigError(
            "experiment: expected the toy_hierarchy schema (experiment=toy_hierarchy)"
        )
    device = resolve_device(exp.device)
    h = make_hierarchy(vc.data.depth, vc.data.branching, vc.data.item_names)
    src, targets = _resolve_focus(h, exp)
    out_dir = _output_dir(exp, vc.results_dir)
    calibration = None
    if OmegaConf.select(cfg, "calibration") is not None:
        try:
            node = OmegaConf.to_container(cfg.calibration, resolve=True)
            calibration = CalibrationConfig.from_mapping(node)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"calibration: {err}") from err

    torch.manual_seed(vc.seed)
    gen = torch.Generator().manual_seed(vc.seed)
    m = vc.model
    model = DeepLinearNetwork(
        h.num_items, h.num_features, m.hidden, m.num_layers, m.init_scale, gen
    )
    with logging_redirect_tqdm(), start_run(cfg, tags={"device": str(device)}) as tracker:
        r = _compute(h, model, exp, sampler, m.num_layers, device, calibration)
        sampler = r.sampler or sampler
        metrics, pairs, checkpoints, curves = _analyse(h, r, exp)
        if r.calibration is not None:  # the evidence behind the calibrated step size
            metrics.update(r.calibration.record(tracker, out_dir / "calibration"))
        for j in targets:
            row = pairs[
                (pairs.source == h.item_names[src]) & (pairs.target == h.item_names[j])
            ].iloc[0]
            key = _pair_key(h, src, j)
            for col in (
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
            ):
                metrics[f"focus/{key}/{col}"] = float(row[col])
        metrics["wall_seconds"] = time.perf_counter() - t_start

        figures = _figures(h, r, exp, src, targets, sampler, _describe(model))
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            atomic_save_figure(fig, out_dir / name)
            tracker.log_figure(fig, f"figures/{name}")
        idx = sorted({int(round(x)) for x in np.geomspace(1, len(r.map_steps) - 1, 200)} | {0})
        modes = pd.DataFrame(r.strengths[idx].numpy(), columns=list(h.mode_names))
        modes.insert(0, "step", [r.map_steps[k] for k in idx])
        modes["train_loss"] = r.train_loss[idx]
        tables = {
            "influence_curves.csv": curves,
            "pair_metrics.csv": pairs,
            "checkpoint_metrics.csv": checkpoints,
            "mode_strengths.csv": modes,
        }
        for name, df in tables.items():
            atomic_write_csv(_significant(df), out_dir / name)
        summary = {
            "metrics": metrics,
            "config": {
                "sampler": sampler.to_dict(),
                "experiment": exp.__dict__,
                "model": vc.model.__dict__,
                "data": vc.data.__dict__,
                "seed": vc.seed,
            },
            "stage_transitions": {
                h.mode_names[k]: float(t) for k, t in enumerate(r.mode_transitions)
            },
            "checkpoints": r.steps,
        }
        atomic_write_json(summary, out_dir / "metrics.json")
        _log_to_mlflow(tracker, h, r, metrics, pairs, checkpoints, exp, src, targets)
        for name in (*tables, "metrics.json"):
            tracker.log_artifact(out_dir / name, "tables")
        for fig in figures.values():
            fig.clear()
    log.info(
        "toy_hierarchy done in %.1fs: Spearman(BIF, LOO) %.3f, sign agreement %.3f -> %s",
        metrics["wall_seconds"],
        metrics["spearman_bif_loo_mean"],
        metrics["sign_agreement_bif_loo_mean"],
        out_dir,
    )
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the mean Spearman of BIF vs leave-one-out (for sweepers)."""
    return run(cfg)["spearman_bif_loo_mean"]


if __name__ == "__main__":
    main()
