"""BIF vs EK-FAC cost across a family of causal LMs: the paper's compute axis (model size).

Kreer et al. report that BIF's evaluation time grows more slowly with model size than EK-FAC's
across the Pythia family, ending about two orders of magnitude lower at 2.8B parameters. This
experiment measures both methods on the same work at every member of a family of embedded
Llama-style LMs (layers × width grow together; each trained briefly on the embedded corpus,
cached with ``save_pretrained`` and loaded with ``from_pretrained``):

1. **Per size**: q query sequences against n training sequences of T tokens (the same n, q, T at
   every size), per training token and per sequence. EK-FAC: factor steps (covariance,
   eigendecomposition, lambda) and scores; BIF: burn-in, draws, scores, from a timed pilot scaled
   to the draws the precision rule asks for (:mod:`bifrepro.evaluation.lm_scaling`). Peak memory
   per phase, one thread, every row labelled with the device and ``measured`` / ``scaled``.
2. **q sweep** at two sizes (up to 1,000 query sequences): EK-FAC scores on shared factors, BIF
   draws and scores.
3. **Cost models**: ``t ≈ a·P^b`` per method and phase; the crossover size (or its absence and
   the dominant term); extrapolation to Pythia-70M … 2.8B with the assumptions on the figure.

Outputs: the set ``results/compute/lm_family/`` (``model_scaling.csv``: one row per method × size
× phase; ``model_scaling.png``, ``q_scaling.png``, ``phase_breakdown.png``, ``q_scaling.csv``, ``fits.csv``, ``extrapolation.csv``, ``summary.md``,
``metrics.json``); the same to MLflow.

Run: ``python -m experiments.compute_lm experiment=compute_lm`` (``make reproduce-compute-lm``).
"""

from __future__ import annotations

import dataclasses
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

from bifrepro.attribution.timing import torch_threads
from bifrepro.config import ValidatedConfig, method_settings, register_configs, validate_config
from bifrepro.config.compute_lm import ComputeLMConfig, checked_compute_lm_config
from bifrepro.evaluation.cost import device_label
from bifrepro.evaluation.lm_scaling import (
    BIFPlan,
    LMSize,
    crossover_params,
    extrapolate,
    fit_ekfac,
    fit_power_laws,
    fit_q_costs,
    headline,
    summary_markdown,
    time_bif,
    time_bif_queries,
    time_ekfac,
    time_ekfac_scores,
    with_totals,
)
from bifrepro.io import (
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    round_significant,
    staged_directory,
)
from bifrepro.plots.lm_scaling import plot_model_scaling, plot_phase_breakdown, plot_q_scaling
from bifrepro.tracking import start_run
from bifrepro.training.lm_setup import CausalLMSetup, setup_causal_lm
from experiments import CONF_DIR, output_dir, resolve_device, run_or_exit

__all__ = ["run", "main"]

log = logging.getLogger(__name__)

register_configs()

#: Config groups the experiment validates.
GROUPS = (
    "data",
    "model",
    "sampler",
    "calibration",
    "methods",
    "tracking",
    "experiment",
    "compute_lm",
)


def _member(
    vc: ValidatedConfig,
    comp: ComputeLMConfig,
    size: LMSize | None,
    device: torch.device,
    cache: Path,
) -> CausalLMSetup:
    """One member of the family, trained once (cached) and loaded through ``from_pretrained``;
    ``size=None``: the configured model itself (e.g. a Pythia checkpoint)."""
    model_cfg = vc.model
    if size is not None:
        train = dataclasses.replace(
            model_cfg.train,
            steps=comp.train_steps,
            batch_size=comp.train_batch_size,
            warmup_steps=min(model_cfg.train.warmup_steps, comp.train_steps // 5),
            save_steps=[],
        )
        model_cfg = dataclasses.replace(
            model_cfg,
            name=f"{model_cfg.name}-{size.name}",
            hidden_size=size.hidden_size,
            num_layers=size.num_layers,
            num_heads=size.num_heads,
            intermediate_size=size.intermediate_size,
            train=train,
        )
    return setup_causal_lm(vc.data, model_cfg, comp.seq_len, cache, device, comp.progress)


def _work(lm: CausalLMSetup, comp: ComputeLMConfig, seed: int) -> dict[str, Any]:
    """The same work at every size: n training sequences, q queries, and a query pool for the
    q sweep (held-out training sequences, repeated when the corpus has fewer)."""
    total = len(lm.train)
    if total < comp.num_train + 1:
        raise ValueError(f"compute_lm: {total} packed sequences, need > num_train={comp.num_train}")
    order = np.random.default_rng(seed).permutation(total)
    pool = order[comp.num_train :]

    def queries(q: int) -> Any:
        return lm.train.subset(np.resize(pool, q).tolist()).dataset()

    return {
        "sgld": lm.train.dataset(),
        "train": lm.train.subset(np.sort(order[: comp.num_train]).tolist()).dataset(),
        "train_q": lm.train.subset(np.sort(order[: comp.q_num_train]).tolist()).dataset(),
        "query": queries(comp.num_query),
        "queries": queries,
    }


def _size_info(lm: CausalLMSetup, size: LMSize | None, comp: ComputeLMConfig) -> dict[str, Any]:
    info = lm.model_info
    cfg = lm.model.config
    return {
        "size": size.name if size is not None else info["display_name"],
        "num_params": int(sum(p.numel() for p in lm.model.parameters())),
        "num_layers": int(getattr(cfg, "num_hidden_layers", 0)),
        "hidden_size": int(getattr(cfg, "hidden_size", 0)),
        "train_loss": float(info.get("lm_final_loss", math.nan)),
        "n": comp.num_train,
        "T": comp.seq_len,
    }


def _q_sweep(
    lm: CausalLMSetup,
    work: dict[str, Any],
    comp: ComputeLMConfig,
    ekfac: Any,
    sampler: Any,
    base: dict[str, Any],
    info: dict[str, Any],
) -> list[dict[str, Any]]:
    """Query-dependent per-token cost at one size for every q of ``q_grid``, against the first
    ``q_num_train`` training sequences: EK-FAC token scores on factors fitted once (untimed),
    BIF draws and token scores (scaled from a short chain)."""
    train = work["train_q"]
    att = fit_ekfac(lm.model, train, ekfac)
    rows: list[dict[str, Any]] = []
    for q in comp.q_grid:
        qds = work["queries"](q)
        for r in time_ekfac_scores(att, qds, sequence=False):
            rows.append(base | {"q": q, "n": comp.q_num_train} | r)
        for r in time_bif_queries(
            lm.model, work["sgld"], train, qds, sampler, comp.q_draws,
            base["chains"], info["draws"],
        ):  # fmt: skip
            if r["phase"] != "scores_sequence":
                rows.append(base | {"q": q, "n": comp.q_num_train, "healthy": info["healthy"]} | r)
    return rows


def _measure(
    vc: ValidatedConfig, comp: ComputeLMConfig, device: torch.device, cache: Path, label: str
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """Every member: both methods per phase; the q sweep at ``q_sizes``."""
    ekfac = method_settings(("ekfac",), vc.methods)["ekfac"]
    sampler = dataclasses.replace(vc.sampler, first_chain=0)
    members: list[LMSize | None] = comp.family() if vc.model.is_embedded else [None]
    rows: list[dict[str, Any]] = []
    q_rows: list[dict[str, Any]] = []
    infos: list[dict[str, Any]] = []
    for i, size in enumerate(members):
        lm = _member(vc, comp, size, device, cache)
        work = _work(lm, comp, vc.seed)
        base = _size_info(lm, size, comp) | {"device": label}
        log.info("compute_lm: %s (%d parameters)", base["size"], base["num_params"])
        ek_rows, _ = time_ekfac(lm.model, work["train"], work["query"], ekfac)  # type: ignore[arg-type]
        plan = BIFPlan(
            chains=sampler.num_chains, burn_in=sampler.burn_in,
            pilot_chains=comp.pilot_chains, pilot_burn_in=comp.pilot_burn_in,
            pilot_draws=comp.pilot_draws, draws=comp.draws, target_resolved=comp.target_resolved,
            k=comp.resolved_k, min_draws=comp.min_draws, max_draws=comp.max_draws,
        )  # fmt: skip
        bif_rows, info = time_bif(
            lm.model, work["sgld"], work["train"], work["query"], sampler, plan
        )
        bif_extra = {"chains": plan.chains, "draws_per_chain": info["draws"]}
        q_low_rank = ekfac.query_gradient_low_rank  # type: ignore[attr-defined]
        for r in ek_rows:
            rows.append(base | {"q": comp.num_query, "query_low_rank": q_low_rank} | r)
        for r in bif_rows:
            rows.append(base | {"q": comp.num_query} | bif_extra | r)
        infos.append(base | info)
        if i in comp.q_sizes and size is not None:
            q_rows += _q_sweep(lm, work, comp, ekfac, sampler, base | bif_extra, info)
        del lm
    return with_totals(pd.DataFrame(rows)), pd.DataFrame(q_rows), infos


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the LM compute comparison described by ``cfg``; returns the summary metrics."""
    t_start = time.perf_counter()
    register_configs()
    vc = validate_config(cfg, groups=GROUPS)
    comp = checked_compute_lm_config(vc)
    device = resolve_device(comp.device, "compute_lm.device")
    out_dir = output_dir(comp.output_dir, vc.results_dir, "compute")
    cache = Path(comp.cache_dir) if comp.cache_dir else vc.results_dir / "cache" / "compute_lm"
    with (
        torch_threads(comp.torch_threads),
        logging_redirect_tqdm(),
        start_run(cfg, tags={"device": device_label(device)}) as tracker,
    ):
        label = device_label(device)
        table, q_table, infos = _measure(vc, comp, device, cache, label)
        fits = fit_power_laws(table)
        cross = crossover_params(fits, float(table["num_params"].min()))
        extra = extrapolate(fits, rows=table)
        q_costs = fit_q_costs(q_table) if len(q_table) else pd.DataFrame()
        metrics, assumptions = headline(table, fits, cross, extra, infos, comp.num_query, q_costs)
        metrics["wall_seconds"] = time.perf_counter() - t_start
        title = (
            f"BIF vs EK-FAC across a family of causal LMs; n={comp.num_train}, "
            f"q={comp.num_query}, T={comp.seq_len}; {label}"
        )
        figures = {
            "model_scaling.png": plot_model_scaling(table, fits, extra, assumptions, title),
            "phase_breakdown.png": plot_phase_breakdown(table, title),
        }
        if len(q_table):
            q_title = title.replace(f"n={comp.num_train}", f"n={comp.q_num_train}")
            figures["q_scaling.png"] = plot_q_scaling(q_table, q_title)
        tables = {
            "model_scaling.csv": table,
            "q_scaling.csv": q_table,
            "fits.csv": fits,
            "q_fits.csv": q_costs,
            "extrapolation.csv": extra,
            "members.csv": pd.DataFrame(infos),
        }
        set_dir = out_dir / "lm_family"
        with staged_directory(set_dir) as stage:
            for fname, fig in figures.items():
                atomic_save_figure(fig, stage / fname)
                fig.clear()
            for fname, df in tables.items():
                atomic_write_csv(round_significant(df), stage / fname)
            atomic_write_text(
                stage / "summary.md", summary_markdown(metrics, cross, extra, assumptions, label)
            )
            atomic_write_json(
                {"metrics": metrics, "crossover": cross, "device": label}, stage / "metrics.json"
            )
        tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        for fname in (*figures, *tables, "summary.md", "metrics.json"):
            tracker.log_artifact(set_dir / fname, "lm_family")
    log.info("compute_lm done in %.0f s -> %s", metrics["wall_seconds"], out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the EK-FAC / BIF time ratio at the largest size."""
    metrics = run_or_exit(run, cfg)
    return metrics.get("ratio/largest_ekfac_over_bif", math.nan)


if __name__ == "__main__":
    main()
