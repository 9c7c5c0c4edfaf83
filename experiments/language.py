"""Token-level BIF on a Hugging Face causal language model (Kreer et al., poster's language panel).

Corpus, tokenizer and model: :mod:`bifrepro.training.lm_setup`; per-token traces:
:func:`~bifrepro.attribution.token_bif.sample_token_traces`; the token-link benchmark (BIF and
EK-FAC per token; BIF, EK-FAC, GradSim per sequence): :mod:`bifrepro.evaluation.token_links`, its
spread over groups of chains: :mod:`bifrepro.evaluation.token_chain_groups`; the poster's
examples: :mod:`bifrepro.plots.token_examples`. Outputs in ``results/language/`` (figures, HTML,
``benchmark*.csv``, ``per_query.csv``, ``bif_chain_groups.csv``, ``metrics.json``);
``bench/bench_devinterp.py`` adds the devinterp comparison (``make reproduce-language``).
Run: ``python -m experiments.language experiment=language``; chains as jobs: docs/chain_jobs.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.attribution.token_bif import TokenBIF, sample_token_traces
from bifrepro.config import ConfigError, method_settings, register_configs, validate_config
from bifrepro.config.language import LanguageConfig
from bifrepro.data.text import TextCorpusConfig
from bifrepro.evaluation.token_chain_groups import chain_group_benchmark, chain_group_metrics
from bifrepro.evaluation.token_links import (
    baseline_rankings,
    baseline_scores,
    benchmark_metrics,
    benchmark_ranking,
    benchmark_tables,
    bif_rankings,
    example_outcomes,
    query_tokens,
    training_links,
)
from bifrepro.io import (
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    round_significant,
    staged_directory,
)
from bifrepro.models.lm import CausalLMConfig, frozen_copy
from bifrepro.plots.calibration import save_calibration
from bifrepro.plots.token_examples import FIGURES, example_panels, poster_figures, poster_page
from bifrepro.sampling import SGLDConfig
from bifrepro.sampling.chain_jobs import record_chain_job
from bifrepro.sampling.health import run_health
from bifrepro.tracking import start_run
from bifrepro.training.lm_setup import LanguageSetup, calibrate_sampler, max_positions, traces_store
from bifrepro.training.lm_setup import setup_language as _setup_language
from experiments import CONF_DIR, output_dir, resolve_device, run_or_exit

__all__ = ["LanguageConfig", "LanguageSetup", "setup_language", "calibrate_sampler", "run", "main",
           "FIGURES"]  # fmt: skip

log = logging.getLogger(__name__)

register_configs()

#: Files of ``bench/bench_devinterp.py`` in the same folder, kept when the experiment reruns.
BENCH_FILES = ("devinterp_comparison.csv", "devinterp_comparison.json")


def _validated(cfg: DictConfig) -> Any:
    groups = ("data", "model", "sampler", "tracking", "experiment", "calibration")
    vc = validate_config(cfg, groups=groups)
    if not isinstance(vc.experiment, LanguageConfig):
        raise ConfigError("experiment: expected the language schema (experiment=language)")
    if not isinstance(vc.data, TextCorpusConfig) or not isinstance(vc.model, CausalLMConfig):
        raise ConfigError("data / model: expected data=text and model=small_lm (or pythia)")
    if vc.experiment.chain_job and vc.calibration.enabled:  # each job would calibrate anew
        raise ConfigError("experiment.chain_job=true is invalid with calibration on: calibrate "
                          "once, then pass sampler.step_size to every chain job")  # fmt: skip
    if not vc.experiment.chain_job and vc.sampler.num_chains % vc.experiment.chain_groups:
        raise ConfigError(f"experiment.chain_groups={vc.experiment.chain_groups} must divide "
                          f"sampler.num_chains={vc.sampler.num_chains} evenly")  # fmt: skip
    resolve_device(vc.experiment.device)
    return vc


def _cache_dir(exp: LanguageConfig, results_dir: Path) -> Path:
    if exp.cache_dir:
        return Path(exp.cache_dir).expanduser().resolve()
    return results_dir / "cache" / "language"


def _setup(vc: Any) -> LanguageSetup:
    exp: LanguageConfig = vc.experiment
    s = _setup_language(
        vc.data, vc.model, exp.seq_len, exp.num_observed, exp.template_fraction,
        _cache_dir(exp, vc.results_dir), vc.seed, exp.device, exp.progress,
    )  # fmt: skip
    max_pos = max_positions(s.model)
    if max_pos is not None and exp.seq_len > max_pos:
        raise ConfigError(
            f"experiment.seq_len={exp.seq_len} is invalid: the model takes at most {max_pos} tokens"
        )
    return s


def setup_language(cfg: DictConfig) -> LanguageSetup:
    """Corpus, tokenizer and model of a composed ``experiment=language`` config (cached).

    Also used by ``bench/bench_devinterp.py`` so the benchmark runs on the very same model.
    """
    return _setup(_validated(cfg))


def _sampled_model(model: torch.nn.Module, frozen: list[str]) -> torch.nn.Module:
    """The model, or a copy whose parameters matching ``experiment.frozen`` stay at w*."""
    try:
        sampled, names = frozen_copy(model, frozen)
    except ValueError:
        raise ConfigError(f"experiment.frozen={frozen} matches no parameter of the model") from None
    if names:
        log.info("sampling with %d parameter tensors frozen at w*: %s", len(names), names)
    return sampled


def _relative(path: str, results_dir: Path) -> str:
    """``path`` relative to ``results_dir`` when it lies inside (committed files hold no local paths)."""
    try:
        return str(Path(path).resolve().relative_to(results_dir.resolve()))
    except ValueError:
        return str(path)


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the language experiment described by ``cfg``; returns the summary metrics."""
    t_start = time.perf_counter()
    vc = _validated(cfg)
    exp: LanguageConfig = vc.experiment
    methods = method_settings(("ekfac", "gradsim"), cfg.get("methods", {}))  # the baselines
    sampler: SGLDConfig = vc.sampler
    out_dir = output_dir(exp.output_dir, vc.results_dir, exp.name)
    cache_dir = _cache_dir(exp, vc.results_dir)
    ks = tuple(sorted({int(k) for k in exp.ks}))
    torch.manual_seed(vc.seed)
    metrics: dict[str, float] = {}
    with logging_redirect_tqdm(), start_run(cfg, tags={"device": exp.device}) as tracker:
        # 1. corpus, tokenizer, model
        s = _setup(vc)
        obs, qs = s.observed, s.queries
        log.info(
            "corpus: %d training sequences (%d observed) x %d tokens, %d query sentences; model %s",
            len(s.train), len(obs), exp.seq_len, len(qs), s.model_info["model_path"],
        )  # fmt: skip
        sampled = _sampled_model(s.model, exp.frozen)
        report = None
        if vc.calibration.enabled:  # sampler=auto / calibration=auto
            sampler, report = calibrate_sampler(s, sampled, sampler, vc.calibration, exp.progress)
            metrics.update(report.to_metrics("calibration/"))

        # 2. per-token loss traces on disk (resumable; chain jobs' stores merged); failures fail
        traces_dir, sampler = traces_store(s, sampler, cache_dir, exp.frozen, exp.chain_job)
        traces = sample_token_traces(
            sampled, obs.dataset(), qs.dataset(), sampler, sgld_data=s.train.dataset(),
            out_dir=traces_dir, progress=exp.progress,
        )  # fmt: skip
        # what sampling cost when the draws were made (NaN: a store from before it was recorded)
        metrics["timing/bif/sampling_seconds"] = traces.sampling_seconds or math.nan
        diag = traces.diagnostics
        metrics.update(diag.to_metrics("chain/"))
        if exp.chain_job:  # only this job's chains, into the cache: no scores, no results
            return record_chain_job(tracker, sampler, str(traces_dir), metrics)
        # every health rule (precision: per query token), with the calibration's evidence
        thresholds = vc.calibration.thresholds
        evidence = report.health_evidence(sampler) if report is not None else {}
        checked = run_health(traces, normalize=exp.normalize, thresholds=thresholds, **evidence)
        metrics.update(checked.metrics)
        health, healthy = checked.report, checked.healthy
        if not healthy:
            log.warning("BIF chains are not healthy: %s | %s", diag.summary(), health.summary())
        tb = TokenBIF.from_traces(
            traces, normalize=exp.normalize, block_size=exp.block_size, detrend=exp.detrend
        )
        draws = sampler.num_chains * sampler.num_draws
        note = (
            f"BIF ({exp.normalize}, {draws} draws = {sampler.num_chains} chains x "
            f"{sampler.num_draws}; {'chains healthy' if healthy else 'chains NOT healthy'})"
        )

        # 3. ground-truth token-link benchmark
        qts = query_tokens(qs, s.tokenizer)
        links = training_links(obs, s.tokenizer)
        t0 = time.perf_counter()
        results = bif_rankings(tb, links, qts, ks)
        metrics["timing/bif/benchmark_seconds"] = time.perf_counter() - t0
        base_scores, timing = baseline_scores(
            s.model, obs, qs, qts, exp.methods, methods["ekfac"], methods["gradsim"]
        )
        metrics.update(timing)
        results |= baseline_rankings(base_scores, links, qts, ks)
        table, per_query = benchmark_tables(results, qts)
        overall = table[table.category == "all"].reset_index(drop=True)
        metrics.update(benchmark_metrics(table, ks))
        groups: dict[str, Any] = {}  # the spread over groups of chains (= sampler seeds)
        if exp.chain_groups > 1:
            groups = dict(zip(("bif_chain_groups.csv", "chain_group_agreement.csv"), chain_group_benchmark(
                traces, exp.chain_groups, links, qts, ks, exp.normalize, exp.detrend), strict=True))  # fmt: skip
            metrics.update(chain_group_metrics(*groups.values()))

        # 4. figures and HTML
        outcomes = example_outcomes(per_query, per_group=groups.get("bif_chain_groups.csv"))
        panels = example_panels(tb, s.tokenizer, obs, s.observed_index, qs, qts,
                                max(exp.rows_per_example, exp.html_rows), exp.normalize, outcomes)  # fmt: skip
        model_name = s.model_info["display_name"]
        figures = poster_figures(panels, note, model_name, exp.rows_per_example, exp.normalize)
        page = poster_page(
            panels,
            f"{note}. Model {model_name}. SGLD ε={sampler.step_size:g}, nβ={sampler.nbeta:g}, "
            f"γ={sampler.localization:g}, preconditioner {sampler.preconditioner}. "
            f"{diag.summary()}. {health.summary()}",
            exp.normalize,
        )

        metrics |= {
            "num_query_tokens": float(len(qts)), "num_observed_sequences": float(len(obs)),
            "num_observed_tokens": float(obs.attention_mask.sum()),
            "chains_healthy": float(healthy), "num_sampled_parameters": float(traces.num_params or 0),
        }  # fmt: skip
        for name in ("step_size", "nbeta", "localization"):
            metrics[f"sampler/{name}"] = float(getattr(sampler, name))
        for k in ("lm_train_seconds", "lm_final_loss", "lm_first_loss", "num_parameters"):
            if k in s.model_info:
                metrics[k] = float(s.model_info[k])
        metrics["wall_seconds"] = time.perf_counter() - t_start

        # 5. results/ as one set, then MLflow
        tables = {"benchmark.csv": table, "benchmark_summary.csv": overall, "per_query.csv": per_query,
                  "benchmark_ranking.csv": benchmark_ranking(per_query, seed=vc.seed)} | groups  # fmt: skip
        summary = {
            "metrics": metrics,
            "chain_summary": diag.summary(),
            "health_summary": health.summary(),
            "calibration_summary": report.summary() if report is not None else None,
            "note": note,
            "model": {
                k: _relative(v, vc.results_dir) if k == "model_path" else v
                for k, v in s.model_info.items()
                if k != "lm_loss_curve"
            },
            "lm_loss_curve": s.model_info.get("lm_loss_curve"),
            "traces_dir": _relative(str(traces_dir), vc.results_dir),
            "config": {
                "sampler": sampler.to_dict(),
                "experiment": json.loads(json.dumps(dataclasses.asdict(exp), default=str)),
                "data": dataclasses.asdict(vc.data),
                "model": json.loads(json.dumps(dataclasses.asdict(vc.model), default=str)),
                "seed": vc.seed,
            },
        }
        with staged_directory(out_dir) as stage:
            for name in BENCH_FILES:  # written by bench/bench_devinterp.py, not by this run
                if (out_dir / name).is_file():
                    shutil.copy2(out_dir / name, stage / name)
            if report is not None:
                save_calibration(report, stage / "calibration")
            for fname, fig in figures.items():
                atomic_save_figure(fig, stage / fname)
                fig.clear()
            atomic_write_text(stage / "language_tokens.html", page)
            for name, df in tables.items():
                atomic_write_csv(round_significant(df, 5), stage / name)
            atomic_write_json(summary, stage / "metrics.json")
        tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        tracker.set_tags({"chains_healthy": healthy, "bif_estimator": exp.normalize,
                          "sampler_calibrated": report is not None})  # fmt: skip
        if report is not None:
            tracker.log_artifact(out_dir / "calibration", "calibration")
        for fname in figures:
            tracker.log_artifact(out_dir / fname, "figures")
        for name in (*tables, "metrics.json", "language_tokens.html"):
            tracker.log_artifact(out_dir / name, "tables")
    p_at = f"all_other/precision_at_{ks[-1]}"
    log.info("language done in %.1fs: token P@%d (all, other form) BIF %.3f, EK-FAC %.3f -> %s",
             metrics["wall_seconds"], ks[-1], metrics.get(f"token/bif/{p_at}", math.nan),
             metrics.get(f"token/ekfac/{p_at}", math.nan), out_dir)  # fmt: skip
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns BIF's token-level MRR (cross-form links; NaN for a chain job)."""
    return run_or_exit(run, cfg).get("token/bif/all_other/mrr", math.nan)


if __name__ == "__main__":
    main()
