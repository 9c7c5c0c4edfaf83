"""What each attribution method costs, and what BIF costs to match EK-FAC's LDS.

The poster's "Compute" panel (Kreer et al.): BIF needs no fitting phase and its cost is
``draws × (n + q)`` forward passes, while EK-FAC fits curvature factors and then pays for an
``n × q`` score matrix; the claim is that BIF is far cheaper than EK-FAC at scale. Measured here on
the LDS experiment's model and data, in one process, one method after another:

1. **Scaling grids** (log-spaced): wall time, split into fit and score, and peak memory of every
   method as the number of training items ``n`` grows (``q`` fixed), as the number of queries
   ``q`` grows (``n`` fixed), as the model grows (SmallCNN width), and, for BIF, as the number
   of draws grows. Log-log slopes are fitted per method and axis.
2. **Crossover**: an additive cost model ``t ≈ c₀ + c_n·n + c_q·q + c_nq·n·q`` per method
   (:mod:`bifrepro.evaluation.cost`) gives, at each ``n``, the number of queries — hence the
   ``n·q`` — at which BIF becomes cheaper than EK-FAC.
3. **Time-to-equal-LDS**: BIF's LDS computed from the first ``d`` draws of every chain on the
   LDS task (reusing the LDS experiment's retraining and score caches), against EK-FAC's LDS:
   how many draws, and how many seconds, BIF needs to match it.

BIF in the grids uses ``compute.grid_draws`` draws per chain (to keep the grids short); its
times are also reported scaled to the LDS sampler setting with the sampler's cost model, and
the draws grid checks that the cost is linear in the draws. Every timing is labelled with its
device (``compute.device=cuda`` for the GPU path).

Outputs (``results/compute/``): ``cost_scaling.png``, ``time_to_equal_lds.png``, ``costs.csv``
(every measurement), ``slopes.csv``, ``crossover.csv``, ``time_to_equal_lds.csv``,
``metrics.json``; the same to MLflow.

Run: ``python -m experiments.compute experiment=compute`` (``make reproduce-compute``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch.utils.data import Subset, TensorDataset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import experiments.lds as lds_exp
from bifrepro.attribution.base import ClassificationTask
from bifrepro.attribution.configs import BIFMethodConfig, method_config_from_mapping
from bifrepro.config import ConfigError, validate_config
from bifrepro.data.images import load_embedded_images
from bifrepro.evaluation.cost import (
    crossover_queries,
    device_label,
    fit_additive_cost,
    loglog_slope,
    time_method,
)
from bifrepro.evaluation.lds import lds
from bifrepro.io import atomic_save_figure, atomic_write_csv, atomic_write_json
from bifrepro.models.small import SmallCNN, count_parameters
from bifrepro.models.vision import SmallCNNConfig
from bifrepro.plots.compute import plot_cost_scaling, plot_time_to_equal_lds
from bifrepro.sampling.calibration import run_cost
from bifrepro.tracking import start_run
from bifrepro.training import train_model
from bifrepro.validation import bad as _bad
from experiments import CONF_DIR, output_dir, resolve_device

__all__ = ["ComputeConfig", "register_compute_configs", "run", "main"]

log = logging.getLogger(__name__)

_LABELS = {"bif": "BIF", "ekfac": "EK-FAC", "trak": "TRAK", "gradsim": "GradSim"}


@dataclass
class ComputeConfig:
    """Settings of the compute grids (node ``compute``; the LDS task is the ``experiment`` node)."""

    #: Training items n of the n-grid (queries fixed at q_base).
    n_grid: list[int] = field(default_factory=lambda: [250, 500, 1000, 2000])
    #: Queries q of the q-grid (training items fixed at n_base). With as many entries as n_grid,
    #: the pairs (n_grid[i], q_grid[i]) also form a diagonal grid along which n·q grows.
    q_grid: list[int] = field(default_factory=lambda: [10, 30, 100, 200])
    #: SmallCNN widths of the model-size grid (at n_base, q_base).
    width_grid: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    #: BIF draws per chain of the draws grid (at n_base, q_base).
    draws_grid: list[int] = field(default_factory=lambda: [10, 25, 50, 100])
    #: Fixed sizes of the other grids.
    n_base: int = 1000
    q_base: int = 50
    #: Methods timed.
    methods: list[str] = field(default_factory=lambda: ["bif", "ekfac", "trak", "gradsim"])
    #: BIF draws per chain in the n, q and width grids (null: the LDS sampler's num_draws).
    grid_draws: int | None = 25
    #: Epochs of the (cost-only) models trained for the grids.
    grid_epochs: int = 1
    #: Also measure time-to-equal-LDS on the LDS task (reuses its caches).
    time_to_equal_lds: bool = True
    #: Method BIF is compared with for the crossover and time-to-equal-LDS.
    reference: str = "ekfac"
    #: Device of the grids: "cpu", "cuda" or "auto" (CUDA when available).
    device: str = "cpu"
    #: null: results_dir/<experiment.name> (single run) or the Hydra job folder (multirun).
    output_dir: str | None = None
    #: Torch intra-op threads while timing (null: torch's default); timings are labelled with it.
    torch_threads: int | None = 1
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.torch_threads is not None and self.torch_threads < 1:
            _bad(self, "torch_threads", "must be >= 1 or null")
        for name in ("n_grid", "q_grid", "width_grid", "draws_grid"):
            v = getattr(self, name)
            if any(not isinstance(x, int) or x < 2 for x in v) or len(set(v)) != len(v):
                _bad(self, name, "must be distinct integers >= 2 (an empty list skips the grid)")
        for name in ("n_base", "q_base", "grid_epochs"):
            if getattr(self, name) < 1:
                _bad(self, name, "must be >= 1")
        unknown = [m for m in self.methods if m not in _LABELS]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            _bad(self, "methods", f"must name methods of {list(_LABELS)}, once each")
        if self.grid_draws is not None and self.grid_draws < 2:
            _bad(self, "grid_draws", "must be >= 2 or null")
        if self.reference not in _LABELS or self.reference == "bif":
            _bad(self, "reference", "must be ekfac, trak or gradsim")


_REGISTERED = False


def register_compute_configs() -> None:
    """Store this experiment's schema (and the LDS experiment's) in Hydra's ConfigStore."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    lds_exp.register_lds_configs()
    ConfigStore.instance().store(group="compute_schema", name="compute_schema", node=ComputeConfig)
    _REGISTERED = True


register_compute_configs()


# --------------------------------------------------------------------------------------------
# Scaling grids
# --------------------------------------------------------------------------------------------


def _grid_model(
    model_cfg: SmallCNNConfig,
    width: int,
    data: TensorDataset,
    num_classes: int,
    epochs: int,
    seed: int,
    device: torch.device,
) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(
            int(data.tensors[0].shape[1]), num_classes, width, model_cfg.hidden, model_cfg.pool_size
        )
    cfg = dataclasses.replace(model_cfg.train_config(seed), epochs=epochs)
    train_model(model, data, cfg, device=device, progress=False)
    return model.to(device).eval()


def _method_settings(name: str, methods: dict[str, Any], grid_draws: int | None) -> Any:
    settings = method_config_from_mapping(methods[name])
    if isinstance(settings, BIFMethodConfig):
        sampler = settings.sampler
        if grid_draws is not None:
            sampler = sampler.replace(num_draws=grid_draws)
        settings = dataclasses.replace(
            settings, sampler=sampler, on_unhealthy="warn", progress=False
        )
    return settings


def _scaling_grids(
    comp: ComputeConfig,
    model_cfg: SmallCNNConfig,
    data_name: str,
    split_seed: int,
    methods: dict[str, Any],
    lds_sampler: Any,
    seed: int,
    device: torch.device,
) -> pd.DataFrame:
    """Time every method over the n, q, width and draws grids; one row per measurement."""
    n_max = max([comp.n_base, *comp.n_grid])
    q_max = max([comp.q_base, *comp.q_grid])
    per_class_train = math.ceil(n_max / 10)
    per_class_test = math.ceil(q_max / 10)
    d = load_embedded_images(data_name, per_class_test, per_class_train, seed=split_seed)
    if len(d.train) < n_max or len(d.test) < q_max:
        raise ConfigError(
            f"compute: {data_name} has too few images for n={n_max} and q={q_max} "
            f"({len(d.train)} training, {len(d.test)} held out)"
        )
    task = ClassificationTask("margin")
    plan: list[tuple[str, int, int, int, int | None]] = []  # axis, n, q, width, draws
    plan += [("n_train", n, comp.q_base, model_cfg.width, None) for n in comp.n_grid]
    plan += [("n_query", comp.n_base, q, model_cfg.width, None) for q in comp.q_grid]
    if len(comp.n_grid) == len(comp.q_grid):  # both grow together: x = n·q
        plan += [
            ("nq", n, q, model_cfg.width, None)
            for n, q in zip(comp.n_grid, comp.q_grid, strict=True)
        ]
    plan += [("num_params", comp.n_base, comp.q_base, w, None) for w in comp.width_grid]
    plan += [("draws", comp.n_base, comp.q_base, model_cfg.width, dr) for dr in comp.draws_grid]
    models: dict[int, torch.nn.Module] = {}
    rows = []
    total = sum(1 if axis == "draws" else len(comp.methods) for axis, *_ in plan)
    label = device_label(device)
    with tqdm(
        total=total,
        desc="compute grids",
        disable=None if comp.progress is None else not comp.progress,
    ) as bar:
        for axis, n, q, width, draws in plan:
            if width not in models:
                models[width] = _grid_model(
                    model_cfg, width, d.train, d.num_classes, comp.grid_epochs, seed, device
                )
            model = models[width]
            train = Subset(d.train, range(n))
            queries = Subset(d.test, range(q))
            names = ["bif"] if axis == "draws" else comp.methods
            for name in names:
                if name not in methods:
                    raise ConfigError(f"methods.{name} is missing: no settings for method {name!r}")
                settings = _method_settings(
                    name, methods, draws if axis == "draws" else comp.grid_draws
                )
                t = time_method(settings, model, task, train, queries)
                row = {
                    "method": _LABELS[name],
                    "axis": axis,
                    "n_train": n,
                    "n_query": q,
                    "width": width,
                    "num_params": count_parameters(model),
                    "device": label,
                    **t,
                }
                if name == "bif":
                    s = settings.sampler
                    row["draws"] = s.num_chains * s.num_draws
                    scale = run_cost(lds_sampler, n, n + q) / run_cost(s, n, n + q)
                    row["total_seconds_at_lds_draws"] = t["total_seconds"] * scale
                else:
                    row["draws"] = math.nan
                    row["total_seconds_at_lds_draws"] = t["total_seconds"]
                cuda = [t.get(k, math.nan) for k in ("fit_peak_cuda_mb", "score_peak_cuda_mb")]
                rss = [t.get(k, math.nan) for k in ("fit_peak_rss_mb", "score_peak_rss_mb")]
                row["peak_mb"] = (
                    float(np.nanmax(cuda)) if device.type == "cuda" else float(max(rss))
                )
                row["x"] = {
                    "n_train": n,
                    "n_query": q,
                    "nq": n * q,
                    "num_params": row["num_params"],
                    "draws": row["draws"],
                }[axis]
                rows.append(row)
                bar.update()
    return pd.DataFrame(rows)


def _slopes(points: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (method, axis), sub in points.groupby(["method", "axis"]):
        for quantity in ("total_seconds", "fit_seconds", "score_seconds", "peak_mb"):
            slope, _ = loglog_slope(sub["x"], sub[quantity])
            rows.append({"method": method, "axis": axis, "quantity": quantity, "slope": slope})
    return pd.DataFrame(rows)


def _crossover(points: pd.DataFrame, comp: ComputeConfig) -> tuple[pd.DataFrame, dict[str, float]]:
    """n·q at which BIF (scaled to the LDS draws) becomes cheaper than the reference method."""
    ref = _LABELS[comp.reference]
    nq = points[points["axis"].isin(["n_train", "n_query", "nq"])]
    models = {}
    for method in ("BIF", ref):
        sub = nq[nq["method"] == method]
        models[method] = fit_additive_cost(
            sub["n_train"], sub["n_query"], sub["total_seconds_at_lds_draws"]
        )
    rows = []
    for n in sorted({comp.n_base, *comp.n_grid}):
        q_star = crossover_queries(models["BIF"], models[ref], float(n))
        rows.append({"n_train": n, "q_crossover": q_star, "nq_crossover": n * q_star})
    metrics = {f"cost_model/{m}/{k}": v for m, c in models.items() for k, v in c.to_dict().items()}
    # measured: the first point of the q-grid (n fixed) and of the n·q diagonal where BIF is cheaper
    for axis, key in (("n_query", "measured_q_at_n_base"), ("nq", "measured_nq_diagonal")):
        grid = points[points["axis"] == axis].pivot_table(
            index="x", columns="method", values="total_seconds_at_lds_draws"
        )
        if {"BIF", ref} <= set(grid.columns):
            cheaper = grid.index[grid["BIF"] < grid[ref]]
            metrics[f"crossover/{key}"] = float(cheaper[0]) if len(cheaper) else math.inf
    table = pd.DataFrame(rows)
    base = table[table["n_train"] == comp.n_base].iloc[0]
    metrics["crossover/model_q_at_n_base"] = float(base["q_crossover"])
    metrics["crossover/model_nq_at_n_base"] = float(base["nq_crossover"])
    return table, metrics


# --------------------------------------------------------------------------------------------
# Time to equal LDS
# --------------------------------------------------------------------------------------------


def _time_to_equal_lds(
    vc: Any, comp: ComputeConfig, label: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float], Any]:
    """BIF's LDS vs draws (both estimators) against the reference's LDS on the LDS task.

    Retrained outputs come from the LDS cache; BIF and the reference are scored (and timed) in
    this run unless ``experiment.reuse_scores`` is true.
    """
    exp: lds_exp.LDSConfig = vc.experiment
    problem = lds_exp.prepare(exp, vc.data, vc.model, vc.seed, vc.results_dir)
    actual = lds_exp.actual_outputs(problem)
    model, _ = lds_exp.full_model(problem)
    runs = lds_exp.attribute(problem, model, vc.methods, ["bif", comp.reference])
    sampler = method_config_from_mapping(vc.methods["bif"]).sampler
    grid = sorted({int(round(x)) for x in np.geomspace(2, sampler.num_draws, 12)})
    curve = lds_exp.bif_draws_curve(problem, runs["bif"], actual, sampler, grid)
    ref_run = runs[comp.reference]
    ref_seconds = ref_run.timings.get("total_seconds", math.nan)
    reference = pd.DataFrame([
        {
            "alpha": a,
            "lds": lds(ref_run.scores[comp.reference], masks, actual[a], num_bootstrap=0).mean,
            "seconds": ref_seconds,
        }
        for a, masks in problem.masks.items()
    ])  # fmt: skip
    metrics: dict[str, float] = {}
    rows = []
    for (est, a), sub in curve.groupby(["estimator", "alpha"]):
        sub = sub.sort_values("total_draws")
        ref_lds = float(reference.loc[reference["alpha"] == a, "lds"].iloc[0])
        reached = sub[sub["lds"] >= ref_lds]
        draws = float(reached["total_draws"].iloc[0]) if len(reached) else math.inf
        secs = float(reached["seconds"].iloc[0]) if len(reached) else math.inf
        key = f"{est}/alpha_{a:g}"
        metrics[f"time_to_equal_lds/draws/{key}"] = draws
        metrics[f"time_to_equal_lds/seconds/{key}"] = secs
        metrics[f"time_to_equal_lds/bif_over_{comp.reference}_time/{key}"] = secs / ref_seconds
        rows.append({
            "bif_estimator": est,
            "alpha": a,
            f"{comp.reference}_lds": ref_lds,
            f"{comp.reference}_seconds": ref_seconds,
            "bif_lds_max_draws": float(sub["lds"].iloc[-1]),
            "bif_max_draws": float(sub["total_draws"].iloc[-1]),
            "bif_seconds_max_draws": float(sub["seconds"].iloc[-1]),
            "draws_to_equal": draws,
            "seconds_to_equal": secs,
            "reached": bool(len(reached)),
        })  # fmt: skip
    title = (
        f"Time to equal LDS: BIF (first d draws of each of {sampler.num_chains} chains) vs "
        f"{_LABELS[comp.reference]} on {problem.data.name} (n={problem.n_train}, "
        f"q={problem.n_query}); {label}"
    )
    fig = plot_time_to_equal_lds(curve, reference, title, _LABELS[comp.reference])
    return pd.DataFrame(rows), curve.assign(reference_seconds=ref_seconds), metrics, fig


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _output_dir(comp: ComputeConfig, name: str, results_dir: Path) -> Path:
    """Explicit output_dir, else the Hydra job folder in a multirun, else under results_dir."""
    return output_dir(comp.output_dir, results_dir, name)


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the compute experiment described by ``cfg``; returns the summary metrics."""
    t_start = time.perf_counter()
    vc = validate_config(
        cfg,
        groups=("data", "model", "tracking", "experiment", "methods", "compute", "calibration"),
    )
    comp: ComputeConfig = vc.compute
    if not isinstance(comp, ComputeConfig):
        raise ConfigError("compute: expected the compute schema (experiment=compute)")
    if vc.calibration.enabled:
        raise ConfigError(
            "sampler=auto / calibration=auto: experiment=compute times a fixed sampler; calibrate "
            "with `experiment=lds sampler=auto` and pass the chosen step (sampler.step_size=...)"
        )
    if not isinstance(vc.model, SmallCNNConfig) or not isinstance(
        vc.data, lds_exp.EmbeddedImagesConfig
    ):
        raise ConfigError(
            "compute: the grids need model=small_cnn and an embedded dataset (data=mnist5k)"
        )
    device = resolve_device(comp.device, "compute.device")
    out_dir = _output_dir(comp, vc.experiment.name, vc.results_dir)
    lds_sampler = method_config_from_mapping(vc.methods["bif"]).sampler
    metrics: dict[str, float] = {}
    with (
        lds_exp.torch_threads(comp.torch_threads),
        logging_redirect_tqdm(),
        start_run(cfg, tags={"device": device_label(device)}) as tracker,
    ):
        label = device_label(device)
        points = _scaling_grids(
            comp,
            vc.model,
            vc.data.name,
            vc.data.split_seed,
            vc.methods,
            lds_sampler,
            vc.seed,
            device,
        )
        slopes = _slopes(points)
        tables: dict[str, pd.DataFrame] = {"costs.csv": points, "slopes.csv": slopes}
        for r in slopes.itertuples():
            metrics[f"slope/{r.method}/{r.axis}/{r.quantity}"] = float(r.slope)
        base = points[(points["axis"] == "n_query") & (points["n_query"] == comp.q_base)]
        if base.empty:
            base = points[(points["axis"] == "n_train") & (points["n_train"] == comp.n_base)]
        by = base.set_index("method")
        if "BIF" in by.index:
            bif_t = float(by.loc["BIF", "total_seconds_at_lds_draws"])
            bif_m = float(by.loc["BIF", "peak_mb"])
            for m in by.index:
                if m != "BIF":
                    metrics[f"ratio/time_{m}_over_BIF"] = float(by.loc[m, "total_seconds"]) / bif_t
                    metrics[f"ratio/memory_{m}_over_BIF"] = float(by.loc[m, "peak_mb"]) / max(
                        bif_m, 1e-9
                    )
        if "bif" in comp.methods and comp.reference in comp.methods and comp.n_grid and comp.q_grid:
            cross, cm = _crossover(points, comp)
            tables["crossover.csv"] = cross
            metrics.update(cm)
        slope_map = {
            (r.method, r.axis): r.slope
            for r in slopes[slopes["quantity"] == "total_seconds"].itertuples()
        }
        s = lds_sampler
        bif_label = f"BIF {s.num_chains}×{comp.grid_draws or s.num_draws} draws"
        title = (
            f"Attribution cost on {vc.data.name} / SmallCNN, device {label} "
            f"(n={comp.n_base}, q={comp.q_base}, width={vc.model.width} unless varied; {bif_label})"
        )
        figures = {"cost_scaling.png": plot_cost_scaling(points, slope_map, title)}
        if comp.time_to_equal_lds and "bif" in vc.experiment.methods:
            t2e, curve, tm, fig = _time_to_equal_lds(vc, comp, label)
            tables["time_to_equal_lds.csv"] = t2e
            tables["bif_lds_vs_draws.csv"] = curve
            metrics.update(tm)
            figures["time_to_equal_lds.png"] = fig
        metrics["wall_seconds"] = time.perf_counter() - t_start
        out_dir.mkdir(parents=True, exist_ok=True)
        for fname, fig in figures.items():
            atomic_save_figure(fig, out_dir / fname)
            tracker.log_figure(fig, f"figures/{fname}")
            fig.clear()
        for fname, df in tables.items():
            atomic_write_csv(lds_exp._significant(df), out_dir / fname)
        atomic_write_json(
            {"metrics": metrics, "device": label, "lds_sampler": lds_sampler.to_dict()},
            out_dir / "metrics.json",
        )
        tracker.log_metrics(metrics)
        for fname in (*tables, "metrics.json"):
            tracker.log_artifact(out_dir / fname, "tables")
    log.info("compute done in %.0f s -> %s", metrics["wall_seconds"], out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the EK-FAC / BIF time ratio at the base sizes (NaN if absent)."""
    return run(cfg).get("ratio/time_EK-FAC_over_BIF", math.nan)


if __name__ == "__main__":
    main()
