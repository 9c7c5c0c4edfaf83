"""Linear datamodeling score of BIF, EK-FAC, TRAK and GradSim against counterfactual retraining.

The poster's "Quantitative" panel (Kreer et al.): how well each method's attributions predict
the outputs of models retrained on random subsets of the training set (Park et al.'s LDS;
:mod:`bifrepro.evaluation.lds`), as the subset fraction α varies. The claim under test: BIF beats
EK-FAC when the retraining subsets are small, EK-FAC is competitive or better for large ones,
TRAK and GradSim lie below both. Protocol and statistics: docs/experiments/lds.md.

Pipeline: config (:mod:`bifrepro.config.lds`) → data, full-data model ``w*`` and, for every α,
``m`` seeded subsets × ``k`` seeds retrained (cached; :mod:`bifrepro.evaluation.lds_protocol`) →
each method's scores at ``w*`` (BIF per sampler seed, TRAK over several models;
:mod:`bifrepro.evaluation.lds_methods`) → LDS per method, arm and α with bootstrap intervals,
paired differences from EK-FAC, the resolved ranking, BIF's seeds and LDS vs draws
(:mod:`bifrepro.evaluation.lds_tables`) → figure, tables, MLflow.

Stages (``experiment.stage``), so that retraining can be spread over machines:

* ``all`` (default): retrain what the cache lacks (``experiment.retrain_jobs`` processes), then
  attribute and evaluate.
* ``retrain``: only retrain the subsets ``experiment.subset_index`` (null: all) and seeds
  ``experiment.retrain_seed`` (null: all) of every α into the cache; a Hydra sweep job, e.g.
  ``python -m experiments.lds -m experiment.stage=retrain experiment.subset_index='range(0,40)'
  hydra/launcher=slurm``.
* ``evaluate``: the merge step: read every retrained output from the cache (failing with a list
  of what is missing, never training), attribute and evaluate.

Outputs (replaced as one set) in ``results/lds/`` for ``experiment.primary_data`` (Fashion-MNIST),
``results/lds/<data name>/`` for other data (``data=mnist5k``): ``lds_vs_alpha.png``, ``lds.csv``,
``lds_per_query.csv``, ``lds_paired_vs_ekfac.csv``, ``lds_ranking.csv``, ``lds_bif_seeds.csv``,
``costs.csv``, ``bif_draws.csv``, ``masks.npz``, ``metrics.json``; the same to MLflow. Retrained
outputs, full-data models and scores are cached under ``results/cache/lds/``.

Run: ``python -m experiments.lds`` (``make reproduce-lds``); the paper's setting: ``CIFAR10_ROOT=
/data/cifar10 python -m experiments.lds experiment=lds_cifar10``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.attribution.configs import method_config_from_mapping
from bifrepro.attribution.timing import torch_threads
from bifrepro.config import ValidatedConfig, register_configs, validate_config
from bifrepro.config.lds import checked_lds_config, lds_output_parts, lds_problem
from bifrepro.evaluation.lds import save_masks
from bifrepro.evaluation.lds_methods import METHOD_LABELS, MethodRun, attribute, calibrate_bif
from bifrepro.evaluation.lds_protocol import LDSProblem, actual_outputs, full_model, retrain_share
from bifrepro.evaluation.lds_tables import (
    MAIN_ARM,
    alpha_key,
    bif_draws_curve,
    bif_seed_table,
    costs_table,
    evaluate,
    paired_differences,
)
from bifrepro.evaluation.ranking import resolved_ranking
from bifrepro.io import (
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    round_significant,
    staged_directory,
)
from bifrepro.plots.calibration import save_calibration
from bifrepro.plots.lds import plot_lds_vs_alpha, ranking_note
from bifrepro.tracking import RunTracker, start_run
from experiments import CONF_DIR, in_multirun, output_dir, resolve_device, run_or_exit

__all__ = ["run", "main"]

log = logging.getLogger(__name__)

register_configs()

#: Config groups the experiment validates.
GROUPS = ("data", "model", "tracking", "experiment", "methods", "calibration")


def _retrain_jobs(jobs: int) -> int:
    """Local retraining processes: one per job inside a multirun (the launcher parallelises)."""
    if in_multirun() and jobs > 1:
        log.info("retrain stage inside a multirun: one process per job (the launcher parallelises)")
        return 1
    return jobs


def _title(
    problem: LDSProblem, runs: dict[str, MethodRun], sampler: Any | None, ranking: pd.DataFrame
) -> str:
    exp, data = problem.exp, problem.data
    k = len(exp.seeds)
    head = (
        f"LDS on {data.name} ({problem.retrainer.model.name}, n={problem.n_train}, "
        f"q={problem.n_query}; m={exp.num_subsets} subsets × k={k} seed{'s' if k > 1 else ''})"
    )
    if "trak" in runs and "num_checkpoints" in runs["trak"].timings:
        head += f"; TRAK over {runs['trak'].timings['num_checkpoints']:g} models"
    if "bif" in runs and sampler is not None:
        bif = runs["bif"]
        verdict = bif.chain_verdict or (
            "chains healthy" if bif.chains_healthy else "chains UNHEALTHY"
        )
        seeds = exp.bif_seeds or [sampler.seed]
        head += (
            f"\nBIF: {sampler.num_chains}×{sampler.num_draws} draws × {len(seeds)} sampler "
            f"seed(s), ε={sampler.step_size:g}, nβ={sampler.nbeta:g}, γ={sampler.localization:g}; "
            f"{verdict}"
        )
    note = ranking_note(ranking)
    return f"{head}\n{note}" if note else head


def _summary_metrics(
    table: pd.DataFrame,
    paired: pd.DataFrame,
    runs: dict[str, MethodRun],
    actual: dict[float, torch.Tensor],
) -> dict[str, float]:
    """LDS and intervals per variant and α, costs, chain diagnostics, paired differences and the
    spread of the retrained outputs (how much signal there is to predict at each α)."""
    metrics: dict[str, float] = {}
    for df, prefix, column in (
        (table, "lds", "lds"),
        (paired, "lds_minus_ekfac", "lds_difference"),
    ):
        for row in df.itertuples():
            key = f"{row.variant}/{alpha_key(row.alpha)}"
            metrics[f"{prefix}/{key}"] = float(getattr(row, column))
            metrics[f"{prefix}_ci_low/{key}"] = float(row.ci_low)
            metrics[f"{prefix}_ci_high/{key}"] = float(row.ci_high)
    for name, r in runs.items():
        metrics.update({f"cost/{name}/{k}": v for k, v in r.timings.items()})
        metrics.update({f"bif/{k}": v for k, v in r.chain_metrics.items()})
    for a, y in actual.items():
        spread = float(y.nanmean(1).std(0).mean())
        metrics[f"retrained/margin_std_over_subsets/{alpha_key(a)}"] = spread
        metrics[f"retrained/margin_mean/{alpha_key(a)}"] = float(y.nanmean())
    return metrics


def _attribute_and_evaluate(
    stage: Path, vc: ValidatedConfig, problem: LDSProblem, t_start: float
) -> tuple[dict[str, float], pd.DataFrame, dict[str, MethodRun], dict[str, str]]:
    """Retrained outputs, ``w*``, every method's scores and their LDS, written into ``stage``.

    Returns the metrics, the LDS table, the method runs and the files written (relative path →
    MLflow artifact folder).
    """
    exp = problem.exp
    save_masks(problem.masks, stage / "masks.npz")
    t0 = time.perf_counter()
    actual = actual_outputs(problem, train_missing=exp.stage == "all")
    metrics: dict[str, float] = {"retrain_seconds": time.perf_counter() - t0}
    model, info = full_model(problem)
    metrics.update({f"model/{k}": v for k, v in info.items()})
    methods = dict(vc.methods)
    artifacts: dict[str, str] = {}
    evidence = None
    if "bif" in exp.methods and vc.calibration.enabled:  # sampler=auto
        methods["bif"], report = calibrate_bif(problem, model, methods["bif"], vc.calibration)
        for path in save_calibration(report, stage / "calibration").values():
            artifacts[str(Path(path).relative_to(stage))] = "calibration"
        metrics.update(report.to_metrics("calibration/"))
        evidence = report.health_evidence()  # curvature + step-halving check for BIF's health
    runs = attribute(problem, model, methods, bif_evidence=evidence)
    table, per_query, results = evaluate(problem, runs, actual)
    paired = paired_differences(results, "ekfac", exp.num_bootstrap, exp.confidence, exp.mask_seed)
    metrics.update(_summary_metrics(table, paired, runs, actual))
    tables = {"lds.csv": table, "lds_per_query.csv": per_query, "costs.csv": costs_table(runs)}
    ranking = resolved_ranking(  # which steps of the ranking (each method's main arm) are resolved
        per_query[per_query["arm"] == MAIN_ARM], method="method", value="lds", unit="query",
        by=["alpha"], num_bootstrap=exp.num_bootstrap, confidence=exp.confidence,
        seed=exp.mask_seed,
    )  # fmt: skip
    tables["lds_ranking.csv"] = ranking
    if not paired.empty:
        tables["lds_paired_vs_ekfac.csv"] = paired
    seeds = bif_seed_table(results)
    if not seeds.empty:
        tables["lds_bif_seeds.csv"] = seeds
        for r in seeds.itertuples():
            for stat in ("seed_mean", "seed_std", "averaged_scores_lds"):
                metrics[f"bif_seeds/{stat}/{r.variant}/{alpha_key(r.alpha)}"] = getattr(r, stat)
    sampler = None
    if "bif" in runs:
        sampler = method_config_from_mapping(methods["bif"]).sampler
        curve = bif_draws_curve(problem, runs["bif"], actual, sampler, exp.bif_draws_grid)
        tables["bif_draws.csv"] = curve
    metrics["wall_seconds"] = time.perf_counter() - t_start

    order = [lab for m in exp.methods for lab in METHOD_LABELS[m].values()]
    title = _title(problem, runs, sampler, ranking)
    main_rows = table[table["arm"] == MAIN_ARM]
    fig = plot_lds_vs_alpha(main_rows, title, order, exp.confidence, seeds if len(seeds) else None)
    atomic_save_figure(fig, stage / "lds_vs_alpha.png")
    fig.clear()
    for fname, df in tables.items():
        atomic_write_csv(round_significant(df), stage / fname)
    summary = {
        "metrics": metrics,
        "dataset": problem.data.name,
        "data": {"name": problem.data.name, "source": problem.data.source},
        "bif_seeds": list(exp.bif_seeds or []),
        "trak_num_checkpoints": int(runs["trak"].timings.get("num_checkpoints", 1))
        if "trak" in runs
        else None,
        "n_train": problem.n_train,
        "n_query": problem.n_query,
        "retrain_fingerprint": problem.cache.fingerprint,
        "retrain_config": problem.retrainer.describe(),
        "bif_chains": {n: r.chain_summary for n, r in runs.items() if r.chain_summary},
        "bif_sampler": sampler.to_dict() if sampler is not None else None,
        "device": str(problem.device),
    }
    atomic_write_json(summary, stage / "metrics.json")
    artifacts["lds_vs_alpha.png"] = "figures"
    artifacts.update({f: "tables" for f in (*tables, "metrics.json", "masks.npz")})
    return metrics, table, runs, artifacts


def _log_mlflow(
    tracker: RunTracker,
    metrics: dict[str, float],
    table: pd.DataFrame,
    runs: dict[str, MethodRun],
) -> None:
    if not tracker.enabled:
        return
    tracker.log_metrics(metrics)
    for variant, rows in table.groupby("variant"):
        rows = rows.sort_values("alpha")
        steps = [int(round(100 * a)) for a in rows["alpha"]]
        tracker.log_metric_series(f"lds_vs_alpha_percent/{variant}", rows["lds"], steps)
    tracker.set_tags({f"chains.{n}": r.chain_summary for n, r in runs.items() if r.chain_summary})


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the experiment described by ``cfg``; returns the summary metrics.

    The config is validated first (a :class:`~bifrepro.config.ConfigError` naming the key,
    before any compute). A failing step (e.g. a diverged sampler) fails the run: the MLflow run
    ends FAILED and the previous results stay untouched.
    """
    t_start = time.perf_counter()
    vc = validate_config(cfg, groups=GROUPS)
    exp = checked_lds_config(vc)
    problem = lds_problem(vc, resolve_device(exp.device))
    out_dir = output_dir(exp.output_dir, vc.results_dir, *lds_output_parts(exp, problem.data.name))
    with (
        torch_threads(exp.torch_threads),
        logging_redirect_tqdm(),
        start_run(cfg, tags={"device": str(problem.device)}) as tracker,
    ):
        if exp.stage == "retrain":
            metrics = retrain_share(problem, _retrain_jobs(exp.retrain_jobs))
            tracker.log_metrics(metrics)
            return metrics
        with staged_directory(out_dir) as stage:
            metrics, table, runs, artifacts = _attribute_and_evaluate(stage, vc, problem, t_start)
        _log_mlflow(tracker, metrics, table, runs)
        for rel, folder in artifacts.items():
            tracker.log_artifact(out_dir / rel, folder)
    best = table.sort_values("lds", ascending=False).groupby("alpha").head(1)
    log.info(
        "lds done in %.0f s; best per α: %s -> %s",
        metrics["wall_seconds"],
        ", ".join(
            f"α={r.alpha:g}: {r.method} {r.lds:.3f}" for r in best.sort_values("alpha").itertuples()
        ),
        out_dir,
    )
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns BIF's (covariance) mean LDS over α (NaN in the retrain stage)."""
    metrics = run_or_exit(run, cfg)
    vals = [v for k, v in metrics.items() if k.startswith("lds/bif_covariance/")]
    return float(np.mean(vals)) if vals else math.nan


if __name__ == "__main__":
    main()
