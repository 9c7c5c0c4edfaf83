"""Influence dynamics on the toy semantic hierarchy (Lee et al., *Influence Dynamics and Stagewise
Data Attribution*; Saxe, McClelland & Ganguli 2019).

A deep linear network learns the tree's singular modes one stage at a time. At log-spaced
checkpoints we compute the item x item BIF with the BIF core (SGLD localised at that checkpoint),
the analytic prediction from the learned mode strengths (:mod:`bifrepro.dynamics.modes`) and the
leave-one-out ground truth (retrain without item i from the same init to the same step). The claim
under test: influence is not static; it changes sign and peaks at developmental transitions.

Protocol: :mod:`bifrepro.dynamics.toy`; analysis: :mod:`bifrepro.dynamics.toy_analysis`; figures:
:mod:`bifrepro.plots.toy_figures`; schemas: :mod:`bifrepro.config.toy_hierarchy`.

Outputs (``results/toy_hierarchy/`` for a single run, the Hydra job folder inside a multirun):
``fig1_mode_strengths.png``, ``fig2_influence_curves.png``, ``fig3_influence_matrices.png``,
``influence_curves.csv`` (every pair at every checkpoint), ``pair_metrics.csv``,
``checkpoint_metrics.csv``, ``mode_strengths.csv`` and ``metrics.json``, written as one set
(a failed run leaves the previous set untouched); the same metrics, figures and tables go to
MLflow.

Run: ``python -m experiments.toy_hierarchy [key=value ...]`` (``make reproduce-toy``);
sweep: ``python -m experiments.toy_hierarchy -m experiment=toy_sweep`` (``make sweep-toy``).
"""

from __future__ import annotations

import logging
import time

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.config import ConfigError, register_configs, validate_config
from bifrepro.config.toy_hierarchy import ToyHierarchyConfig
from bifrepro.data.hierarchy import Hierarchy, focus_items, make_hierarchy
from bifrepro.dynamics.toy import ToyRun, checkpoint_steps, run_toy_protocol
from bifrepro.dynamics.toy_analysis import (
    ToyAnalysis,
    analyse_toy_run,
    focus_metrics,
    mode_strength_table,
    pair_key,
)
from bifrepro.io import (
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    round_significant,
    staged_directory,
)
from bifrepro.models.linear import DeepLinearNetwork
from bifrepro.plots.calibration import save_calibration
from bifrepro.plots.toy_figures import toy_figures
from bifrepro.sampling import CalibrationConfig
from bifrepro.tracking import RunTracker, start_run
from experiments import CONF_DIR, output_dir, resolve_device, run_or_exit

__all__ = ["run", "main"]

log = logging.getLogger(__name__)

register_configs()


def _calibration(cfg: DictConfig) -> CalibrationConfig | None:
    """The ``calibration`` node (``sampler=auto``), checked before any compute."""
    if OmegaConf.select(cfg, "calibration") is None:
        return None
    try:
        return CalibrationConfig.from_mapping(OmegaConf.to_container(cfg.calibration, resolve=True))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"calibration: {err}") from err


def _describe(model: DeepLinearNetwork) -> str:
    widths = [model.layers[0].in_features] + [layer.out_features for layer in model.layers]
    return "linear " + "-".join(str(w) for w in widths)


def _log_to_mlflow(
    tracker: RunTracker,
    h: Hierarchy,
    r: ToyRun,
    a: ToyAnalysis,
    normalize: str,
    src: int,
    targets: list[int],
) -> None:
    if not tracker.enabled:
        return
    tracker.log_metrics(a.metrics)
    tracker.log_metrics({
        f"sign_agreement/{row.source}_to_{row.target}": row.sign_agreement_bif_loo
        for row in a.pairs.itertuples()
    })  # fmt: skip
    for col in ("spearman_bif_loo", "spearman_analytic_loo", "spearman_bif_analytic"):
        tracker.log_metric_series(f"per_checkpoint/{col}", a.checkpoints[col], r.steps)
    tracker.log_metric_series(
        "per_checkpoint/chains_healthy", [float(x) for x in r.bif.healthy], r.steps
    )
    bif = r.bif.scores(normalize)
    for j in targets:
        key = pair_key(h, src, j)
        for name, values in (("bif", bif), ("analytic", r.analytic_cov), ("loo", r.loo)):
            tracker.log_metric_series(
                f"influence/{name}/{key}", values[:, j, src].tolist(), r.steps
            )


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the experiment described by ``cfg``; returns the summary metrics.

    The config is validated first (a :class:`~bifrepro.config.ConfigError` naming the key, before
    any compute); figures and tables go to the output folder, everything to MLflow.
    """
    t_start = time.perf_counter()
    # 1. Config: validated, with the focus items and device checked before any compute.
    vc = validate_config(cfg, groups=("data", "model", "sampler", "tracking", "experiment"))
    exp: ToyHierarchyConfig = vc.experiment
    if not isinstance(exp, ToyHierarchyConfig):
        raise ConfigError(
            "experiment: expected the toy_hierarchy schema (experiment=toy_hierarchy)"
        )
    device = resolve_device(exp.device)
    h = make_hierarchy(vc.data.depth, vc.data.branching, vc.data.item_names)
    try:
        src, targets = focus_items(h, exp.focus_item, exp.focus_targets)
    except ValueError as err:
        raise ConfigError(f"experiment.focus_item / experiment.focus_targets: {err}") from err
    out_dir = output_dir(exp.output_dir, vc.results_dir, exp.name)
    calibration = _calibration(cfg)

    # 2. Data and model.
    torch.manual_seed(vc.seed)
    gen = torch.Generator().manual_seed(vc.seed)
    m = vc.model
    model = DeepLinearNetwork(
        h.num_items, h.num_features, m.hidden, m.num_layers, m.init_scale, gen
    )
    with logging_redirect_tqdm(), start_run(cfg, tags={"device": str(device)}) as tracker:
        # 3. Train, leave-one-out, BIF at every checkpoint; 4. evaluate.
        steps = checkpoint_steps(
            exp.steps, exp.num_checkpoints, exp.first_checkpoint, exp.matrix_steps
        )
        r = run_toy_protocol(
            h, model, vc.sampler, lr=exp.lr, num_steps=exp.steps, steps=steps, device=device,
            calibration=calibration, progress=exp.progress,
        )  # fmt: skip
        a = analyse_toy_run(h, r, exp.normalize, exp.sign_tolerance, exp.flip_threshold)
        metrics = a.metrics
        if r.calibration is not None:  # the evidence behind the calibrated step size
            metrics.update(r.calibration.to_metrics("calibration/"))
        metrics.update(focus_metrics(h, a.pairs, src, targets))
        metrics["wall_seconds"] = time.perf_counter() - t_start

        # 5. Figures and tables, swapped in as one set.
        figures = toy_figures(
            h, r, normalize=exp.normalize, src=src, targets=targets, model_desc=_describe(model),
            lr=exp.lr, first_checkpoint=exp.first_checkpoint, matrix_steps=exp.matrix_steps,
        )  # fmt: skip
        tables = {
            "influence_curves.csv": a.curves,
            "pair_metrics.csv": a.pairs,
            "checkpoint_metrics.csv": a.checkpoints,
            "mode_strengths.csv": mode_strength_table(h, r),
        }
        summary = {
            "metrics": metrics,
            "config": {
                "sampler": r.sampler.to_dict(),
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
        with staged_directory(out_dir) as stage:
            calibration_files = (
                save_calibration(r.calibration, stage / "calibration") if r.calibration else {}
            )
            for name, fig in figures.items():
                atomic_save_figure(fig, stage / name)
            for name, df in tables.items():
                atomic_write_csv(round_significant(df), stage / name)
            atomic_write_json(summary, stage / "metrics.json")

        # 6. MLflow, from the final folder.
        for path in calibration_files.values():
            tracker.log_artifact(out_dir / "calibration" / path.name, "calibration")
        for name, fig in figures.items():
            tracker.log_figure(fig, f"figures/{name}")
            fig.clear()
        _log_to_mlflow(tracker, h, r, a, exp.normalize, src, targets)
        for name in (*tables, "metrics.json"):
            tracker.log_artifact(out_dir / name, "tables")
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
    metrics = run_or_exit(run, cfg)
    return metrics["spearman_bif_loo_mean"]


if __name__ == "__main__":
    main()
