"""Token-level BIF links across a ladder of model sizes, beyond Monte Carlo noise (issue 21).

The poster attributes its language links (5 → five, elle → she, répondu → answered, ...) to
shared multilingual features of a large model. Here: a corpus whose translations never share a
sequence (:mod:`bifrepro.data.separated_text`), a ladder of embedded Llama-style LMs trained on
it (:mod:`bifrepro.evaluation.lm_ladder`: perplexity and a transfer probe per size), per-token
SGLD traces for several sampler seeds per size, and the cross-form benchmark per category with
intervals over queries and over seeds, the seeds' agreement, and which links are resolved beyond
noise (:mod:`bifrepro.evaluation.token_scale`); EK-FAC per training token on the same tokens,
ranked against BIF with paired intervals; the poster's six examples as figures per size. One
size end to end is :func:`bifrepro.evaluation.lm_ladder_run.run_ladder_member`.

Outputs (``results/language_scale/``): ``benchmark.csv`` (method × size × category, CIs),
``per_query.csv``, ``method_comparison.csv`` (BIF vs EK-FAC per size, paired CIs over queries),
``links.csv`` (pooled ranks, resolved or not), ``seed_agreement.csv``, ``members.csv``,
``fig_<example>.png``, ``fig_scaling.png``, ``metrics.json``; the same to MLflow.

Run: ``python -m experiments.language_scale experiment=language_scale [key=value ...]``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.config import ConfigError, method_settings, register_configs, validate_config
from bifrepro.config.language_scale import LanguageScaleConfig
from bifrepro.data.separated_text import SCALE_EXAMPLES
from bifrepro.evaluation.lm_ladder import ladder_corpus
from bifrepro.evaluation.lm_ladder_run import MemberResult, run_ladder_member
from bifrepro.evaluation.lm_scaling import family
from bifrepro.evaluation.token_scale import category_table, method_comparison
from bifrepro.io import (
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    round_significant,
    staged_directory,
)
from bifrepro.plots.token_scale import (
    example_figure,
    outcome_text,
    plot_category_scaling,
    scale_panel,
)
from bifrepro.report_language_scale import chance_text, reproduced_categories
from bifrepro.sampling import SGLDConfig
from bifrepro.tracking import start_run
from experiments import CONF_DIR, output_dir, resolve_device, run_or_exit

__all__ = ["run", "main"]

log = logging.getLogger(__name__)

register_configs()

GROUPS = ("sampler", "calibration", "tracking", "experiment")


def _validated(cfg: DictConfig) -> Any:
    vc = validate_config(cfg, groups=GROUPS)
    if not isinstance(vc.experiment, LanguageScaleConfig):
        raise ConfigError("experiment: expected the language_scale schema")
    resolve_device(vc.experiment.device)
    return vc


def _panels(exp: LanguageScaleConfig, corpus: Any, m: MemberResult) -> dict[str, Any]:
    """The poster examples' panels of one member (pooled draws), with their link outcome."""
    panels = {}
    for q, r in zip(m.query_tokens, m.links, strict=True):
        if q.example:
            title = f"{m.label}: {outcome_text(r)}"
            panel = scale_panel(
                m.pooled, corpus.tokenizer, m.observed, corpus.queries, q, r["best_link"],
                exp.rows_per_example, title,
            )  # fmt: skip
            panels[q.example] = (panel, r)
    return panels


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the language-scale experiment described by ``cfg``; returns the summary metrics."""
    t_start = time.perf_counter()
    vc = _validated(cfg)
    exp: LanguageScaleConfig = vc.experiment
    methods = method_settings(("ekfac",), cfg.get("methods", {})) if "ekfac" in exp.methods else {}
    out_dir = output_dir(exp.output_dir, vc.results_dir, exp.name)
    cache = Path(exp.cache_dir) if exp.cache_dir else vc.results_dir / "cache" / "language_scale"
    torch.manual_seed(vc.seed)
    metrics: dict[str, float] = {}
    tags = {"device": exp.device, "dataset": "separated_text", "model": "embedded_llama_ladder"}
    with logging_redirect_tqdm(), start_run(cfg, tags=tags) as tracker:
        corpus = ladder_corpus(
            exp.num_documents, exp.corpus_seed, exp.num_heldout, exp.vocab_size, exp.seq_len, cache
        )
        sizes = family(exp.hidden_sizes, exp.num_layers, exp.num_heads, exp.mlp_ratio)
        ekfac = methods["ekfac"] if "ekfac" in exp.methods else None
        calibration = vc.calibration if vc.calibration.enabled else None
        runs = [
            run_ladder_member(exp, vc.sampler, calibration, vc.seed, corpus, size, cache, ekfac)
            for size in sizes
        ]
        panels = {m.label: _panels(exp, corpus, m) for m in runs}
        ks = tuple(sorted(set(exp.ks)))
        per_query = pd.DataFrame([r for m in runs for r in m.rows])
        table = category_table(per_query, ks, exp.num_bootstrap, seed=vc.seed)
        compared = method_comparison(per_query, ks, exp.num_bootstrap, seed=vc.seed)
        agreement = pd.DataFrame([r for m in runs for r in m.agreement])
        links = pd.DataFrame([r for m in runs for r in m.links]).drop(columns="best_link")
        members = pd.DataFrame(
            [{k: v for k, v in m.info.items() if k != "model_path"} for m in runs]
        )
        params = {m.label: int(m.info["num_parameters"]) for m in runs}
        s0: SGLDConfig = runs[0].sampler
        note = (
            f"BIF per token ({exp.normalize}), draws of {len(exp.sampler_seeds)} sampler seeds "
            f"pooled ({s0.num_chains} chain(s) x {s0.num_draws} draws each); rank among all "
            "observed training tokens, the query's own surface form excluded"
        )
        figures = {}
        for name, _, _, description in SCALE_EXAMPLES:
            got = [panels[m.label][name] for m in runs if name in panels[m.label]]
            outcomes = [
                (m.label, r["outcome"] == "reproduced", bool(r["resolved"]))
                for m in runs
                for n, (_, r) in panels[m.label].items()
                if n == name
            ]
            figures[f"fig_{name}.png"] = example_figure(
                description, [p for p, _ in got], outcomes, note, f"{exp.normalize} with the query"
            )
        bif_table = table[table["method"] == "bif"]
        above = {s: c for s, c in reproduced_categories(bif_table).items() if c}
        verdict = (
            (
                "above chance: "
                + "; ".join(f"{s.split(' ')[0]} {', '.join(c)}" for s, c in above.items())
            )
            if above
            else "NO category above chance at any size"
        ) + f"; {chance_text(bif_table)}"
        figures["fig_scaling.png"] = plot_category_scaling(
            bif_table,
            params,
            "Cross-form P@1 per category vs model size (BIF per token, 95% CI over queries; "
            f"{len(exp.sampler_seeds)} sampler seeds averaged)\n{verdict}",
            reference=table[(table["method"] == "ekfac") & (table["category"] == "all")],
        )
        for r in table.itertuples():
            key = f"{r.method}/{r.size.split(' ')[0]}/{r.category.replace('/', '_')}"
            metrics[f"{key}/precision_at_1"] = float(r.precision_at_1)
            metrics[f"{key}/mrr"] = float(r.mrr)
        for label, grp in agreement.groupby("size", sort=False):
            metrics[f"seed_agreement/{label.split(' ')[0]}"] = float(grp["pearson"].mean())
        for m in runs:
            for k in ("heldout_perplexity", "probe_seen_choice", "probe_heldout_choice"):
                metrics[f"{k}/{m.info['size']}"] = float(m.info[k])
        metrics["wall_seconds"] = time.perf_counter() - t_start
        tables = {
            "benchmark.csv": table,
            "per_query.csv": per_query,
            "links.csv": links,
            "method_comparison.csv": compared,
            "seed_agreement.csv": agreement,
            "members.csv": members,
        }
        summary = {
            "metrics": metrics,
            "note": note,
            "sampler": s0.to_dict(),
            "sizes": list(params),
            "parameters": params,
            "experiment": dataclasses.asdict(exp),
            "seed": vc.seed,
        }
        with staged_directory(out_dir) as stage:
            for fname, fig in figures.items():
                atomic_save_figure(fig, stage / fname)
                fig.clear()
            for fname, df in tables.items():
                atomic_write_csv(round_significant(df, 5), stage / fname)
            atomic_write_json(summary, stage / "metrics.json")
        tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        for fname in (*figures, *tables, "metrics.json"):
            tracker.log_artifact(out_dir / fname, "language_scale")
    log.info("language_scale done in %.0f s -> %s", metrics["wall_seconds"], out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns cross-form P@1 (all categories) at the largest size."""
    metrics = run_or_exit(run, cfg)
    last = [
        v for k, v in metrics.items() if k.startswith("bif/") and k.endswith("/all/precision_at_1")
    ]
    return last[-1] if last else math.nan


if __name__ == "__main__":
    main()
