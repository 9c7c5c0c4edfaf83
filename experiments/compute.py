"""What each attribution method costs, and what BIF costs to match EK-FAC's LDS.

The poster's "Compute" panel (Kreer et al.): BIF needs no fitting phase and its cost is
``draws × (n + q)`` forward passes, while EK-FAC fits curvature factors and then pays for an
``n × q`` score matrix; the claim is that BIF is far cheaper than EK-FAC at scale. Measured here on
the LDS experiment's model and data, in one process, one method after another:

1. **Scaling grids** (log-spaced; :mod:`bifrepro.evaluation.cost_grids`): wall time, split into
   fit and score, and peak memory of every method as the number of training items ``n`` grows
   (``q`` fixed), as the number of queries ``q`` grows (``n`` fixed), as the model grows
   (SmallCNN width), and, for BIF, as the number of draws grows. Log-log slopes are fitted per
   method and axis.
2. **Crossover**: an additive cost model ``t ≈ c₀ + c_n·n + c_q·q + c_nq·n·q`` per method
   (:mod:`bifrepro.evaluation.cost`) gives, at each ``n``, the number of queries — hence the
   ``n·q`` — at which BIF becomes cheaper than EK-FAC.
3. **Time-to-equal-LDS** (:func:`bifrepro.evaluation.lds_tables.time_to_equal_lds`): BIF's LDS
   from the first ``d`` draws of every chain on the LDS task (reusing the LDS experiment's
   retraining and score caches), against EK-FAC's LDS: how many draws, and how many seconds,
   BIF needs to match it.

BIF in the grids uses ``compute.grid_draws`` draws per chain (to keep the grids short); its
times are also reported scaled to the LDS sampler setting with the sampler's cost model, and
the draws grid checks that the cost is linear in the draws. Every timing is labelled with its
device (``compute.device=cuda`` for the GPU path).

Outputs (``results/compute/``, replaced as one set): ``cost_scaling.png``,
``time_to_equal_lds.png``, ``costs.csv`` (every measurement), ``slopes.csv``, ``crossover.csv``,
``time_to_equal_lds.csv``, ``bif_lds_vs_draws.csv``, ``metrics.json``; the same to MLflow.

Run: ``python -m experiments.compute experiment=compute`` (``make reproduce-compute``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import hydra
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.attribution.configs import method_config_from_mapping
from bifrepro.attribution.timing import torch_threads
from bifrepro.config import ValidatedConfig, register_configs, validate_config
from bifrepro.config.compute import ComputeConfig, checked_compute_config, grid_data
from bifrepro.config.lds import checked_lds_config, lds_problem
from bifrepro.evaluation.cost import device_label
from bifrepro.evaluation.cost_grids import COST_LABELS, base_ratios, crossover, scaling_grids
from bifrepro.evaluation.cost_grids import slopes as grid_slopes
from bifrepro.evaluation.lds_methods import attribute
from bifrepro.evaluation.lds_protocol import actual_outputs, full_model
from bifrepro.evaluation.lds_tables import time_to_equal_lds
from bifrepro.io import (
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    round_significant,
    staged_directory,
)
from bifrepro.plots.compute import plot_cost_scaling, plot_time_to_equal_lds
from bifrepro.tracking import start_run
from experiments import CONF_DIR, output_dir, resolve_device, run_or_exit

__all__ = ["run", "main"]

log = logging.getLogger(__name__)

register_configs()

#: Config groups the experiment validates.
GROUPS = ("data", "model", "tracking", "experiment", "methods", "compute", "calibration")


def _lds_comparison(
    vc: ValidatedConfig, comp: ComputeConfig, label: str
) -> tuple[dict[str, pd.DataFrame], dict[str, float], Figure]:
    """Time-to-equal-LDS on the LDS task: tables, metrics and figure.

    Retrained outputs come from the LDS cache; BIF and the reference are scored (and timed) in
    this run unless ``experiment.reuse_scores`` is true.
    """
    exp = checked_lds_config(vc)
    problem = lds_problem(vc, resolve_device(exp.device))
    actual = actual_outputs(problem)
    model, _ = full_model(problem)
    runs = attribute(problem, model, vc.methods, ["bif", comp.reference])
    sampler = method_config_from_mapping(vc.methods["bif"]).sampler
    table, curve, reference, metrics = time_to_equal_lds(
        problem, runs, actual, sampler, comp.reference
    )
    title = (
        f"Time to equal LDS: BIF (first d draws of each of {sampler.num_chains} chains) vs "
        f"{COST_LABELS[comp.reference]} on {problem.data.name} (n={problem.n_train}, "
        f"q={problem.n_query}); {label}"
    )
    fig = plot_time_to_equal_lds(curve, reference, title, COST_LABELS[comp.reference])
    return {"time_to_equal_lds.csv": table, "bif_lds_vs_draws.csv": curve}, metrics, fig


def _cost_title(vc: ValidatedConfig, comp: ComputeConfig, sampler: Any, label: str) -> str:
    bif_label = f"BIF {sampler.num_chains}×{comp.grid_draws or sampler.num_draws} draws"
    return (
        f"Attribution cost on {vc.data.name} / SmallCNN, device {label} "
        f"(n={comp.n_base}, q={comp.q_base}, width={vc.model.width} unless varied; {bif_label})"
    )


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the compute experiment described by ``cfg``; returns the summary metrics.

    A failing measurement (e.g. a diverged sampler) fails the run: the MLflow run ends FAILED and
    the previous results stay untouched.
    """
    t_start = time.perf_counter()
    vc = validate_config(cfg, groups=GROUPS)
    comp = checked_compute_config(vc)
    device = resolve_device(comp.device, "compute.device")
    data = grid_data(comp, vc.data)
    out_dir = output_dir(comp.output_dir, vc.results_dir, vc.experiment.name)
    lds_sampler = method_config_from_mapping(vc.methods["bif"]).sampler
    metrics: dict[str, float] = {}
    with (
        torch_threads(comp.torch_threads),
        logging_redirect_tqdm(),
        start_run(cfg, tags={"device": device_label(device)}) as tracker,
    ):
        label = device_label(device)
        points = scaling_grids(comp, vc.model, data, vc.methods, lds_sampler, vc.seed, device)
        slopes = grid_slopes(points)
        tables: dict[str, pd.DataFrame] = {"costs.csv": points, "slopes.csv": slopes}
        for r in slopes.itertuples():
            metrics[f"slope/{r.method}/{r.axis}/{r.quantity}"] = float(r.slope)
        metrics.update(base_ratios(points, comp))
        if "bif" in comp.methods and comp.reference in comp.methods and comp.n_grid and comp.q_grid:
            tables["crossover.csv"], cross_metrics = crossover(points, comp)
            metrics.update(cross_metrics)
        slope_map = {
            (r.method, r.axis): r.slope
            for r in slopes[slopes["quantity"] == "total_seconds"].itertuples()
        }
        title = _cost_title(vc, comp, lds_sampler, label)
        figures = {"cost_scaling.png": plot_cost_scaling(points, slope_map, title)}
        if comp.time_to_equal_lds and "bif" in vc.experiment.methods:
            lds_tables, lds_metrics, figures["time_to_equal_lds.png"] = _lds_comparison(
                vc, comp, label
            )
            tables.update(lds_tables)
            metrics.update(lds_metrics)
        metrics["wall_seconds"] = time.perf_counter() - t_start
        with staged_directory(out_dir) as stage:
            for fname, fig in figures.items():
                atomic_save_figure(fig, stage / fname)
                fig.clear()
            for fname, df in tables.items():
                atomic_write_csv(round_significant(df), stage / fname)
            atomic_write_json(
                {"metrics": metrics, "device": label, "lds_sampler": lds_sampler.to_dict()},
                stage / "metrics.json",
            )
        tracker.log_metrics(metrics)
        for fname in figures:
            tracker.log_artifact(out_dir / fname, "figures")
        for fname in (*tables, "metrics.json"):
            tracker.log_artifact(out_dir / fname, "tables")
    log.info("compute done in %.0f s -> %s", metrics["wall_seconds"], out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the EK-FAC / BIF time ratio at the base sizes (NaN if absent)."""
    metrics = run_or_exit(run, cfg)
    return metrics.get("ratio/time_EK-FAC_over_BIF", math.nan)


if __name__ == "__main__":
    main()
