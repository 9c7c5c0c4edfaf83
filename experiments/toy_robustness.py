"""Robustness of the toy hierarchy's sign flips over sampler and initialisation seeds.

A single toy run counts a pair as flipping when its BIF curve has both a helpful and a harmful
extreme; with Monte Carlo noise, many of those are noise. This experiment repeats the toy protocol
(:mod:`bifrepro.dynamics.toy`) for every initialisation seed and, at each, every sampler seed, and
calls a flip *robust* only when both extremes are resolved over the sampler seeds
(:mod:`bifrepro.dynamics.toy_robustness`). The analytic prediction and leave-one-out are computed
at each initialisation alongside.

Outputs (``results/toy_robustness/``): ``pair_robustness.csv`` (every pair × init seed),
``robustness_summary.csv`` (per init seed × ancestor depth), ``flip_counts.png``,
``seed_bands.png``, ``metrics.json``; the same to MLflow.

Run: ``python -m experiments.toy_robustness`` (``make reproduce-toy-robustness``).
"""

from __future__ import annotations

import logging
import time

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.config import ConfigError, register_configs, validate_config
from bifrepro.config.toy_hierarchy import ToyRobustnessConfig
from bifrepro.data.hierarchy import Hierarchy, focus_items, make_hierarchy
from bifrepro.dynamics.toy import checkpoint_steps, run_toy_protocol
from bifrepro.dynamics.toy_analysis import has_sign_flip
from bifrepro.dynamics.toy_robustness import flip_robustness, summarise_robustness
from bifrepro.io import (
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    round_significant,
    staged_directory,
)
from bifrepro.models.linear import DeepLinearNetwork
from bifrepro.plots.toy_robustness import plot_flip_counts, plot_seed_bands
from bifrepro.tracking import start_run
from experiments import CONF_DIR, output_dir, resolve_device, run_or_exit

__all__ = ["run", "main"]

log = logging.getLogger(__name__)

register_configs()


def _metrics(table: pd.DataFrame, per_run_flip_share: list[float]) -> dict[str, float]:
    m: dict[str, float] = {
        "pairs": float(len(table)),
        "robust_flip_fraction": float(table["robust_flip_bif"].mean()),
        "flip_fraction_any_seed": float((table["flips_bif"] > 0).mean()),
        "flip_fraction_analytic": float(table["sign_flip_analytic"].mean()),
        "flip_fraction_loo": float(table["sign_flip_loo"].mean()),
        "single_run_flip_share_mean": float(np.mean(per_run_flip_share)),
        "single_run_flip_share_sd": float(np.std(per_run_flip_share, ddof=1)),
    }
    for d, g in table.groupby("ancestor_depth"):
        m[f"depth{d}/robust_flip_fraction"] = float(g["robust_flip_bif"].mean())
        m[f"depth{d}/flip_fraction_analytic"] = float(g["sign_flip_analytic"].mean())
        m[f"depth{d}/flip_fraction_loo"] = float(g["sign_flip_loo"].mean())
        both = g["robust_flip_bif"] & g["sign_flip_loo"]
        m[f"depth{d}/robust_and_loo_flip_fraction"] = float(both.mean())
    return m


def run(cfg: DictConfig) -> dict[str, float]:
    """Run every (init seed, sampler seed) toy protocol; returns the summary metrics."""
    t_start = time.perf_counter()
    vc = validate_config(cfg, groups=("data", "model", "sampler", "tracking", "experiment"))
    exp: ToyRobustnessConfig = vc.experiment
    if not isinstance(exp, ToyRobustnessConfig):
        raise ConfigError(
            "experiment: expected the toy_robustness schema (experiment=toy_robustness)"
        )
    device = resolve_device(exp.device)
    h = make_hierarchy(vc.data.depth, vc.data.branching, vc.data.item_names)
    src, targets = focus_items(h, exp.focus_item, exp.focus_targets)
    out_dir = output_dir(exp.output_dir, vc.results_dir, exp.name)
    steps = checkpoint_steps(exp.steps, exp.num_checkpoints, exp.first_checkpoint)
    m = vc.model
    tables, per_run_share, bands, transitions = [], [], {}, []
    with logging_redirect_tqdm(), start_run(cfg, tags={"device": str(device)}) as tracker:
        for init in exp.init_seeds:
            bif_runs = []
            for s in exp.sampler_seeds:
                gen = torch.Generator().manual_seed(init)
                model = DeepLinearNetwork(
                    h.num_items, h.num_features, m.hidden, m.num_layers, m.init_scale, gen
                )
                r = run_toy_protocol(
                    h, model, vc.sampler.replace(seed=s), lr=exp.lr, num_steps=exp.steps,
                    steps=steps, device=device, progress=exp.progress,
                )  # fmt: skip
                scores = r.bif.scores(exp.normalize).double().numpy()
                bif_runs.append(scores)
                log.info(
                    "init %d, sampler seed %d: %s healthy checkpoints", init, s, r.bif.num_healthy
                )
            bif = np.stack(bif_runs)  # [S, T, P, P]
            table = flip_robustness(
                h, r.steps, bif, r.analytic_cov.double().numpy(), r.loo.double().numpy(),
                flip_threshold=exp.flip_threshold, confidence=exp.confidence,
            )  # fmt: skip
            level_t = r.level_transitions
            table.insert(0, "init_seed", init)
            table["transition_shared"] = [float(level_t[d]) for d in table["ancestor_depth"]]
            table["transition_separating"] = [
                float(level_t[d + 1]) for d in table["ancestor_depth"]
            ]
            per_run_share += [float(x) for x in _single_run_shares(bif, exp.flip_threshold)]
            tables.append(table)
            if init == exp.init_seeds[0]:
                transitions = [float(t) for t in level_t]
                for j in targets:
                    label = f"{h.item_names[src]} ↔ {h.item_names[j]}"
                    bands[label] = bif[:, :, max(src, j), min(src, j)]
        table = pd.concat(tables, ignore_index=True)
        summary = summarise_robustness(table)
        metrics = _metrics(table, per_run_share)
        metrics["wall_seconds"] = time.perf_counter() - t_start
        n_s, n_i = len(exp.sampler_seeds), len(exp.init_seeds)
        names = {d: h.common_ancestor_name(*_pair_at_depth(h, d)) for d in summary.ancestor_depth}
        figures = {
            "flip_counts.png": plot_flip_counts(
                summary, names,
                f"Toy hierarchy: sign flips over {n_s} sampler × {n_i} init seeds; robust = both "
                f"extremes resolved ({exp.confidence:.0%} t-interval over sampler seeds)",
            ),
            "seed_bands.png": plot_seed_bands(
                r.steps, bands, transitions,
                f"BIF ({exp.normalize}) per sampler seed (init seed {exp.init_seeds[0]}); "
                "dashed: stage transitions",
            ),
        }  # fmt: skip
        with staged_directory(out_dir) as stage:
            for name, fig in figures.items():
                atomic_save_figure(fig, stage / name)
            atomic_write_csv(round_significant(table), stage / "pair_robustness.csv")
            atomic_write_csv(summary, stage / "robustness_summary.csv")
            atomic_write_json(
                {"metrics": metrics, "sampler": vc.sampler.to_dict(), "experiment": exp.__dict__},
                stage / "metrics.json",
            )
        tracker.log_metrics(metrics)
        for name, fig in figures.items():
            tracker.log_figure(fig, f"figures/{name}")
            fig.clear()
        for name in ("pair_robustness.csv", "robustness_summary.csv", "metrics.json"):
            tracker.log_artifact(out_dir / name, "tables")
    log.info(
        "toy_robustness done in %.0fs: robust flips %.2f of pairs (single runs flip %.2f ± %.2f); "
        "analytic %.2f, leave-one-out %.2f -> %s", metrics["wall_seconds"],
        metrics["robust_flip_fraction"], metrics["single_run_flip_share_mean"],
        metrics["single_run_flip_share_sd"], metrics["flip_fraction_analytic"],
        metrics["flip_fraction_loo"], out_dir,
    )  # fmt: skip
    return metrics


def _single_run_shares(bif: np.ndarray, threshold: float) -> list[float]:
    """Per sampler seed, the share of pairs whose single-run curve flips (what one run reports)."""
    pairs = [(i, j) for i in range(bif.shape[2]) for j in range(i + 1, bif.shape[2])]
    return [
        float(np.mean([has_sign_flip(bif[s, :, j, i], threshold) for i, j in pairs]))
        for s in range(bif.shape[0])
    ]


def _pair_at_depth(h: Hierarchy, depth: int) -> tuple[int, int]:
    return next((0, j) for j in range(1, h.num_items) if h.common_ancestor_depth(0, j) == depth)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the share of pairs with a robust flip."""
    return run_or_exit(run, cfg)["robust_flip_fraction"]


if __name__ == "__main__":
    main()
