"""Token-level BIF links across a ladder of model sizes, beyond Monte Carlo noise (issue 21).

The poster attributes its language links (5 → five, elle → she, répondu → answered, ...) to
shared multilingual features of a large model. Here: a corpus whose translations never share a
sequence (:mod:`bifrepro.data.separated_text`), a ladder of embedded Llama-style LMs trained on
it (:mod:`bifrepro.evaluation.lm_ladder`: perplexity and a transfer probe per size), per-token
SGLD traces for several sampler seeds per size, and the cross-form benchmark per category with
intervals over queries and over seeds, the seeds' agreement, and which links are resolved beyond
noise (:mod:`bifrepro.evaluation.token_scale`); the poster's six examples as figures per size.

Outputs (``results/language_scale/``): ``benchmark.csv`` (size × category, CIs), ``per_query.csv``,
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
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.attribution.token_bif import TokenBIF, query_token_columns, sample_token_traces
from bifrepro.config import ConfigError, register_configs, validate_config
from bifrepro.config.language_scale import LanguageScaleConfig
from bifrepro.data.separated_text import SCALE_EXAMPLES
from bifrepro.evaluation.lm_ladder import (
    heldout_perplexity,
    ladder_corpus,
    ladder_member,
    probe_accuracy,
)
from bifrepro.evaluation.lm_scaling import family
from bifrepro.evaluation.token_links import training_links
from bifrepro.evaluation.token_scale import (
    category_table,
    covering_observed,
    link_resolution,
    per_query_rows,
    scale_query_tokens,
    seed_agreement,
    seed_ranking,
)
from bifrepro.io import (
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    round_significant,
    staged_directory,
)
from bifrepro.models.lm import LMTrainConfig
from bifrepro.plots.token_scale import (
    example_figure,
    outcome_text,
    plot_category_scaling,
    scale_panel,
)
from bifrepro.report_language_scale import reproduced_categories
from bifrepro.sampling import SGLDConfig
from bifrepro.tracking import start_run
from bifrepro.training.lm_setup import (
    LanguageSetup,
    calibrate_sampler,
    traces_store,
)
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


def _size_label(info: dict[str, Any]) -> str:
    return f"{info['size']} ({info['num_parameters'] / 1e6:.2f}M)"


def _member_run(vc: Any, corpus: Any, size: Any, cache: Path) -> dict[str, Any]:
    """Train/load one size, sample every seed, rank, and collect what the tables need."""
    exp: LanguageScaleConfig = vc.experiment
    train_cfg = LMTrainConfig(
        steps=exp.train_steps,
        batch_size=exp.train_batch_size,
        lr=exp.train_lr,
        warmup_steps=min(50, exp.train_steps // 5),
        checkpoint_every=max(1, exp.train_steps // 2),
    )
    model, info = ladder_member(corpus, size, train_cfg, cache, exp.device, exp.progress)
    info |= heldout_perplexity(model, corpus.heldout) | probe_accuracy(model, corpus.tokenizer)
    label = _size_label(info)
    log.info(
        "%s: held-out perplexity %.2f, count probe (choice) trained forms %.2f / held-out "
        "form %.2f",
        label,
        info["heldout_perplexity"],
        info["probe_seen_choice"],
        info["probe_heldout_choice"],
    )
    concepts = [q.text.spans[0][2] for q in corpus.query_info]
    idx = covering_observed(
        corpus.train, corpus.tokenizer, concepts, exp.num_observed, vc.seed, exp.cover_per_form
    )
    obs = corpus.train.subset(idx)
    setup = LanguageSetup(model, corpus.tokenizer, corpus.train, idx, obs, corpus.queries, info)
    sampler: SGLDConfig = vc.sampler
    if vc.calibration.enabled:  # once per size, at seed sampler.seed; every seed uses its step
        sampler, report = calibrate_sampler(setup, model, sampler, vc.calibration, exp.progress)
        info["calibration"] = report.summary()
    qts = scale_query_tokens(corpus.queries, corpus.query_info, corpus.tokenizer)
    links = training_links(obs, corpus.tokenizer)
    pairs = [(q.seq, q.pos) for q in qts]
    ks = tuple(sorted(set(exp.ks)))
    rows, scores, q_full, train_tr, health = [], {}, [], [], []
    t0, cached = time.perf_counter(), 0
    for seed in exp.sampler_seeds:
        sc = dataclasses.replace(sampler, seed=int(seed))
        traces_dir, sc = traces_store(setup, sc, cache, [])
        cached += int((traces_dir / "manifest.json").is_file())  # a store from an earlier run
        tr = sample_token_traces(
            model,
            obs.dataset(),
            corpus.queries.dataset(),
            sc,
            sgld_data=corpus.train.dataset(),
            out_dir=traces_dir,
            progress=exp.progress,
        )
        health.append(bool(tr.diagnostics.is_healthy))
        tb = TokenBIF.from_traces(tr, normalize=exp.normalize)
        scores[int(seed)] = tb.scores(pairs, list(range(len(obs))))
        ranked = [seed_ranking(scores[int(seed)], links, qts, ks, f) for f in ("other", "any")]
        rows += per_query_rows(ranked[0], qts, label, seed, any_form=ranked[1])
        q_full.append(torch.as_tensor(np.asarray(tr["query"])))
        train_tr.append(torch.as_tensor(np.asarray(tr["train"])))
    # seconds to sample the traces, or to load those of `cached` seeds from the cache
    info["traces_seconds"], info["traces_cached_seeds"] = time.perf_counter() - t0, cached
    info["chains_healthy"] = float(all(health))
    valid = torch.from_numpy(links.base_valid)
    agree = seed_agreement(scores, valid, label, sampler.num_chains * sampler.num_draws)
    pooled_q, pooled_t = torch.cat(q_full), torch.cat(train_tr)  # every seed's chains together
    res = link_resolution(query_token_columns(pooled_q, pairs), pooled_t, links, qts, exp.normalize)
    tb = TokenBIF(pooled_q, pooled_t, normalize=exp.normalize)
    for r, q in zip(res, qts, strict=True):
        r |= {"size": label, "concept": q.concept, "surface": q.surface, "example": q.example or ""}
    panels = {}
    for q, r in zip(qts, res, strict=True):
        if q.example:
            panel = scale_panel(
                tb,
                corpus.tokenizer,
                obs,
                corpus.queries,
                q,
                r["best_link"],
                exp.rows_per_example,
                f"{label}: {outcome_text(r)}",
            )
            panels[q.example] = (panel, r)
    return {
        "info": info,
        "label": label,
        "rows": rows,
        "agreement": agree,
        "links": res,
        "panels": panels,
        "sampler": sampler,
    }


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the language-scale experiment described by ``cfg``; returns the summary metrics."""
    t_start = time.perf_counter()
    vc = _validated(cfg)
    exp: LanguageScaleConfig = vc.experiment
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
        runs = [_member_run(vc, corpus, size, cache) for size in sizes]
        ks = tuple(sorted(set(exp.ks)))
        per_query = pd.DataFrame([r for m in runs for r in m["rows"]])
        table = category_table(per_query, ks, exp.num_bootstrap, seed=vc.seed)
        agreement = pd.DataFrame([r for m in runs for r in m["agreement"]])
        links = pd.DataFrame([r for m in runs for r in m["links"]]).drop(columns="best_link")
        members = pd.DataFrame(
            [{k: v for k, v in m["info"].items() if k != "model_path"} for m in runs]
        )
        params = {m["label"]: int(m["info"]["num_parameters"]) for m in runs}
        s0: SGLDConfig = runs[0]["sampler"]
        note = (
            f"BIF per token ({exp.normalize}), draws of {len(exp.sampler_seeds)} sampler seeds "
            f"pooled ({s0.num_chains} chain(s) x {s0.num_draws} draws each); rank among all "
            "observed training tokens, the query's own surface form excluded"
        )
        figures = {}
        for name, _, _, description in SCALE_EXAMPLES:
            got = [m["panels"][name] for m in runs if name in m["panels"]]
            outcomes = [
                (m["label"], r["outcome"] == "reproduced", bool(r["resolved"]))
                for m in runs
                for n, (_, r) in m["panels"].items()
                if n == name
            ]
            figures[f"fig_{name}.png"] = example_figure(
                description, [p for p, _ in got], outcomes, note, f"{exp.normalize} with the query"
            )
        above = {s: c for s, c in reproduced_categories(table).items() if c}
        verdict = (
            (
                "above chance: "
                + "; ".join(f"{s.split(' ')[0]} {', '.join(c)}" for s, c in above.items())
            )
            if above
            else "NO category above chance at any size"
        )
        figures["fig_scaling.png"] = plot_category_scaling(
            table,
            params,
            "Cross-form P@1 per category vs model size (95% CI over queries; "
            f"{len(exp.sampler_seeds)} sampler seeds averaged)\n{verdict}",
        )
        for r in table.itertuples():
            key = f"{r.size.split(' ')[0]}/{r.category.replace('/', '_')}"
            metrics[f"bif/{key}/precision_at_1"] = float(r.precision_at_1)
            metrics[f"bif/{key}/mrr"] = float(r.mrr)
        for label, grp in agreement.groupby("size", sort=False):
            metrics[f"seed_agreement/{label.split(' ')[0]}"] = float(grp["pearson"].mean())
        for m in runs:
            for k in ("heldout_perplexity", "probe_seen_choice", "probe_heldout_choice"):
                metrics[f"{k}/{m['info']['size']}"] = float(m["info"][k])
        metrics["wall_seconds"] = time.perf_counter() - t_start
        tables = {
            "benchmark.csv": table,
            "per_query.csv": per_query,
            "links.csv": links,
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
    last = [v for k, v in metrics.items() if k.endswith("/all/precision_at_1")]
    return last[-1] if last else math.nan


if __name__ == "__main__":
    main()
