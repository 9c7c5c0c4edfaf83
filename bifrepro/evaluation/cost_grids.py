"""Cost grids of the compute experiment: every method timed as n, q, model size and draws grow.

One process, one method after another, on cost-only SmallCNNs (a few epochs on the embedded
data). :func:`scaling_grids` measures; :func:`slopes` fits log-log slopes per method and axis;
:func:`crossover` fits the additive cost model of :mod:`bifrepro.evaluation.cost` to BIF and the
reference method and solves for the ``n·q`` at which BIF becomes cheaper; :func:`base_ratios`
compares the methods at the base sizes. BIF's times are also scaled to the LDS sampler setting
with the sampler's cost model (``total_seconds_at_lds_draws``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Subset, TensorDataset
from tqdm.auto import tqdm

from bifrepro.attribution.base import ClassificationTask
from bifrepro.attribution.configs import BIFMethodConfig, method_config_from_mapping
from bifrepro.data.images import ImageData
from bifrepro.evaluation.cost import (
    crossover_queries,
    device_label,
    fit_additive_cost,
    loglog_slope,
    time_method,
)
from bifrepro.models.small import SmallCNN, count_parameters
from bifrepro.models.vision import SmallCNNConfig
from bifrepro.sampling.calibration import run_cost
from bifrepro.training import train_model

__all__ = [
    "COST_LABELS",
    "GridSettings",
    "grid_plan",
    "grid_method_settings",
    "scaling_grids",
    "slopes",
    "crossover",
    "base_ratios",
]

#: Method name → label in the cost tables and figures.
COST_LABELS = {"bif": "BIF", "ekfac": "EK-FAC", "trak": "TRAK", "gradsim": "GradSim"}


class GridSettings(Protocol):
    """What the grids read of the compute settings (:class:`bifrepro.config.compute.
    ComputeConfig` has these fields and more)."""

    n_grid: list[int]
    q_grid: list[int]
    width_grid: list[int]
    draws_grid: list[int]
    n_base: int
    q_base: int
    methods: list[str]
    grid_draws: int | None
    grid_epochs: int
    reference: str
    progress: bool | None


def _grid_model(
    model_cfg: SmallCNNConfig,
    width: int,
    data: TensorDataset,
    num_classes: int,
    epochs: int,
    seed: int,
    device: torch.device,
) -> torch.nn.Module:
    """A SmallCNN of ``width`` trained ``epochs`` epochs (its weights only matter for realism)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(
            int(data.tensors[0].shape[1]), num_classes, width, model_cfg.hidden, model_cfg.pool_size
        )
    cfg = dataclasses.replace(model_cfg.train_config(seed), epochs=epochs)
    train_model(model, data, cfg, device=device, progress=False)
    return model.to(device).eval()


def grid_method_settings(settings: Any, draws: int | None) -> Any:
    """A method's settings for timing: BIF with ``draws`` per chain (None: as configured),
    warning (not failing) on unhealthy chains, without progress bars."""
    settings = method_config_from_mapping(settings)
    if isinstance(settings, BIFMethodConfig):
        sampler = settings.sampler
        if draws is not None:
            sampler = sampler.replace(num_draws=draws)
        settings = dataclasses.replace(
            settings, sampler=sampler, on_unhealthy="warn", progress=False
        )
    return settings


def grid_plan(comp: GridSettings, width: int) -> list[tuple[str, int, int, int, int | None]]:
    """Every measurement point ``(axis, n, q, width, draws)``; the n·q diagonal only when the n-
    and q-grids have as many entries."""
    plan: list[tuple[str, int, int, int, int | None]] = []
    plan += [("n_train", n, comp.q_base, width, None) for n in comp.n_grid]
    plan += [("n_query", comp.n_base, q, width, None) for q in comp.q_grid]
    if len(comp.n_grid) == len(comp.q_grid):  # both grow together: x = n·q
        plan += [("nq", n, q, width, None) for n, q in zip(comp.n_grid, comp.q_grid, strict=True)]
    plan += [("num_params", comp.n_base, comp.q_base, w, None) for w in comp.width_grid]
    plan += [("draws", comp.n_base, comp.q_base, width, dr) for dr in comp.draws_grid]
    return plan


def scaling_grids(
    comp: GridSettings,
    model_cfg: SmallCNNConfig,
    data: ImageData,
    methods: dict[str, Any],
    lds_sampler: Any,
    seed: int,
    device: torch.device,
) -> pd.DataFrame:
    """Time every method over the n, q, width and draws grids; one row per measurement.

    ``data`` must hold at least the largest n training and q held-out images; ``methods`` maps
    each method of ``comp.methods`` to its settings.
    """
    task = ClassificationTask("margin")
    plan = grid_plan(comp, model_cfg.width)
    models: dict[int, torch.nn.Module] = {}
    rows = []
    total = sum(1 if axis == "draws" else len(comp.methods) for axis, *_ in plan)
    label = device_label(device)
    disable = None if comp.progress is None else not comp.progress
    with tqdm(total=total, desc="compute grids", disable=disable) as bar:
        for axis, n, q, width, draws in plan:
            if width not in models:
                models[width] = _grid_model(
                    model_cfg, width, data.train, data.num_classes, comp.grid_epochs, seed, device
                )
            model = models[width]
            train = Subset(data.train, range(n))
            queries = Subset(data.test, range(q))
            for name in ["bif"] if axis == "draws" else comp.methods:
                settings = grid_method_settings(
                    methods[name], draws if axis == "draws" else comp.grid_draws
                )
                t = time_method(settings, model, task, train, queries)
                row = {
                    "method": COST_LABELS[name],
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


def slopes(points: pd.DataFrame) -> pd.DataFrame:
    """Log-log slope of time (total, fit, score) and peak memory per method and grid axis."""
    rows = []
    for (method, axis), sub in points.groupby(["method", "axis"]):
        for quantity in ("total_seconds", "fit_seconds", "score_seconds", "peak_mb"):
            slope, _ = loglog_slope(sub["x"], sub[quantity])
            rows.append({"method": method, "axis": axis, "quantity": quantity, "slope": slope})
    return pd.DataFrame(rows)


def crossover(points: pd.DataFrame, comp: GridSettings) -> tuple[pd.DataFrame, dict[str, float]]:
    """n·q at which BIF (scaled to the LDS draws) becomes cheaper than the reference method."""
    ref = COST_LABELS[comp.reference]
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


def base_ratios(points: pd.DataFrame, comp: GridSettings) -> dict[str, float]:
    """Time (BIF at the LDS draws) and peak memory of every method over BIF's at the base sizes
    (the q-grid's q_base point, else the n-grid's n_base point)."""
    base = points[(points["axis"] == "n_query") & (points["n_query"] == comp.q_base)]
    if base.empty:
        base = points[(points["axis"] == "n_train") & (points["n_train"] == comp.n_base)]
    by = base.set_index("method")
    metrics: dict[str, float] = {}
    if "BIF" in by.index:
        bif_t = float(by.loc["BIF", "total_seconds_at_lds_draws"])
        bif_m = float(by.loc["BIF", "peak_mb"])
        for m in by.index:
            if m != "BIF":
                metrics[f"ratio/time_{m}_over_BIF"] = float(by.loc[m, "total_seconds"]) / bif_t
                metrics[f"ratio/memory_{m}_over_BIF"] = float(by.loc[m, "peak_mb"]) / max(
                    bif_m, 1e-9
                )
    return metrics
