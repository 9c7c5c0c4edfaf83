"""Stagewise influence in a language model: per-token BIF across training checkpoints (Lee et al.,
*Influence Dynamics and Stagewise Data Attribution*, language-model claim).

Claim under test: token-level influence changes over training, and the changes line up with
developmental stages such as the formation of induction heads. Modes (``experiment.mode``):

1. **train**: the embedded causal LM is trained with ``save_pretrained`` snapshots on a log-spaced
   grid of steps (resumable); a Pythia-style run instead names its checkpoints as Hugging Face
   revisions or sub-folders of a local run (:mod:`bifrepro.dynamics.lm_checkpoints`).
2. **checkpoint** (one independent job per checkpoint): induction score, SGLD localised at the
   checkpoint, class x class per-token BIF, LLC, token-pair panel and chain health, in one result
   file (:mod:`bifrepro.dynamics.lm_checkpoint_job`).
3. **merge**: stage transitions, class-level influence before/after the induction transition,
   token pairs whose influence changes sign (:mod:`bifrepro.dynamics.stagewise_merge`); figures,
   tables, ``metrics.json`` and MLflow.

``all`` (the default, ``make reproduce-stagewise``) does the three in one process; as a sweep
(``make sweep-stagewise``) the jobs share ``experiment.work_dir``, keyed by every setting that
changes their numbers. ``calibration=auto`` calibrates the step size once, at the last checkpoint
(:mod:`bifrepro.dynamics.sweep_calibration`). A diverged sampler fails the job. Outputs
(``results/stagewise_lm/``, replaced as one set): :data:`FIGURES`, :data:`TABLES`; and MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.config import ValidatedConfig, register_configs
from bifrepro.config.stagewise_lm import (
    StagewiseLMConfig,
    checkpoint_grid,
    checkpoint_step,
    selected_label,
    validate_stagewise,
    work_dir_key,
)
from bifrepro.data.text import build_corpus
from bifrepro.dynamics.lm_checkpoint_job import (
    checkpoint_metrics,
    load_result,
    result_path,
    run_checkpoint,
)
from bifrepro.dynamics.lm_checkpoints import LMCheckpoints
from bifrepro.dynamics.stagewise_data import StagewiseData, build_stagewise_data
from bifrepro.dynamics.stagewise_merge import merge_checkpoints
from bifrepro.dynamics.sweep_calibration import shared_calibration
from bifrepro.io import (
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    round_significant,
    staged_directory,
)
from bifrepro.models.lm import CausalLMConfig
from bifrepro.plots.calibration import calibration_figures
from bifrepro.plots.stagewise import figure_notes, stagewise_figures
from bifrepro.sampling import SGLDConfig
from bifrepro.tracking import RunTracker, start_run
from bifrepro.training.lm_setup import corpus_texts
from experiments import CONF_DIR, output_dir, resolve_device, run_or_exit

__all__ = ["StagewiseLMConfig", "checkpoint_step", "run", "main", "FIGURES", "TABLES"]

log = logging.getLogger(__name__)

FIGURES = (
    "fig1_stages.png",
    "fig2_class_influence.png",
    "fig3_token_pairs.png",
    "fig4_class_matrices.png",
)
TABLES = (
    "checkpoints.csv",
    "class_influence.csv",
    "class_changes.csv",
    "token_pairs.csv",
    "training_loss.csv",
    "metrics.json",
)

register_configs()


def _quiet_transformers(progress: bool | None) -> None:
    """Hugging Face's own load/save progress bars would flood logs once per checkpoint."""
    if progress is not True:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _model_desc(m: CausalLMConfig) -> str:
    if m.is_embedded:
        return f"{m.name} ({m.arch}, {m.num_layers} layers, d={m.hidden_size})"
    return str(m.name_or_path)


def _prepare(
    vc: ValidatedConfig, sampler: SGLDConfig, device: torch.device
) -> tuple[LMCheckpoints, StagewiseData]:
    """The run's checkpoints and folders, and the data every checkpoint shares."""
    exp: StagewiseLMConfig = vc.experiment
    labels, steps = checkpoint_grid(exp, vc.model)
    default_cache = vc.results_dir / "cache" / "stagewise_lm"
    cache_dir = Path(exp.cache_dir).expanduser().resolve() if exp.cache_dir else default_cache
    work_dir = (
        Path(exp.work_dir).expanduser().resolve()
        if exp.work_dir
        else cache_dir / f"run-{work_dir_key(vc, sampler)}"
    )
    checkpoints = LMCheckpoints(
        vc.model, labels, steps, work_dir, cache_dir, exp.checkpoint_subfolders, device,
        exp.progress,
    )  # fmt: skip
    corpus = build_corpus(vc.data)
    tokenizer, tokenizer_key = checkpoints.tokenizer(corpus_texts(corpus))
    return checkpoints, build_stagewise_data(corpus, tokenizer, tokenizer_key, exp, vc.seed)


def _all_results(
    ckpts: LMCheckpoints,
    run_one: Any,
    exp: StagewiseLMConfig,
    paths: dict[str, Path],
    tracker: RunTracker,
) -> list[dict[str, Any]]:
    """mode=all: every checkpoint now; mode=merge: the result files the checkpoint jobs wrote."""
    if exp.mode == "all":
        results = []
        disable = None if exp.progress is None else not exp.progress
        for label in tqdm(ckpts.labels, desc="checkpoints", disable=disable):
            results.append(run_one(label))
            tracker.log_metrics(checkpoint_metrics(results[-1]), step=results[-1]["step"])
        return results
    missing = [lab for lab in ckpts.labels if not paths[lab].exists()]
    if missing and (not exp.allow_missing or len(missing) == len(ckpts.labels)):
        raise RuntimeError(
            f"no results for checkpoints {missing} in {ckpts.work_dir / 'checkpoints'}: run "
            "them first (experiment.mode=checkpoint experiment.checkpoint=<label>), or "
            "merge what exists with experiment.allow_missing=true"
        )
    if missing:
        log.warning("merging without checkpoints %s (not computed yet)", missing)
    return [load_result(paths[lab]) for lab in ckpts.labels if lab not in missing]


def _config_record(vc: ValidatedConfig, used: SGLDConfig) -> dict[str, Any]:
    """The settings behind the results (``metrics.json``)."""

    def plain(obj: Any) -> Any:
        return json.loads(json.dumps(dataclasses.asdict(obj), default=str))

    return {
        "sampler": vc.sampler.to_dict(), "sampler_used": used.to_dict(),
        "calibration": plain(vc.calibration), "experiment": plain(vc.experiment),
        "data": dataclasses.asdict(vc.data), "model": plain(vc.model), "seed": vc.seed,
    }  # fmt: skip


def _log_outputs(
    tracker: RunTracker,
    metrics: dict[str, float],
    ck: pd.DataFrame,
    out_dir: Path,
    calibrated: bool,
) -> None:
    """Metrics, per-checkpoint series (``ck``) and the final results folder's files to MLflow."""
    if not tracker.enabled:
        return
    tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
    for col in ("induction_score", "llc", "loss_query", "chains_healthy"):
        tracker.log_metric_series(f"per_checkpoint/{col}", ck[col].astype(float), ck["step"])
    for name in (*FIGURES, *TABLES):
        if (out_dir / name).exists():
            tracker.log_artifact(out_dir / name, "figures" if name in FIGURES else "tables")
    for path in sorted((out_dir / "calibration").glob("*")) if calibrated else ():
        tracker.log_artifact(path, "calibration")


def run(cfg: DictConfig) -> dict[str, float]:
    """Run one mode of the stagewise LM experiment (see the module docstring); returns metrics."""
    t_start = time.perf_counter()
    vc = validate_stagewise(cfg)
    exp: StagewiseLMConfig = vc.experiment
    sampler, model_cfg, cal_cfg = vc.sampler, vc.model, vc.calibration
    device = resolve_device(exp.device)
    _quiet_transformers(exp.progress)
    if exp.num_threads is not None:
        torch.set_num_threads(exp.num_threads)
    torch.manual_seed(vc.seed)
    tags = {"device": exp.device, "mode": exp.mode, "bif_estimator": exp.normalize,
            "sampler_calibrated": cal_cfg.enabled}  # fmt: skip
    with logging_redirect_tqdm(), start_run(cfg, tags=tags) as tracker:
        ckpts, data = _prepare(vc, sampler, device)
        label = selected_label(exp, ckpts.labels) if exp.mode == "checkpoint" else None
        ckpts.work_dir.mkdir(parents=True, exist_ok=True)
        tracker.set_tags({"work_dir": str(ckpts.work_dir)})
        log.info(
            "stagewise_lm mode=%s: %d training sequences, %d observed, %d queries x %d tokens; "
            "checkpoints %s; work folder %s", exp.mode, len(data.train_ids),
            len(data.observed_index), len(data.query_ids), exp.seq_len, ckpts.labels, ckpts.work_dir,
        )  # fmt: skip
        metrics: dict[str, float] = {}
        if exp.mode in ("all", "train") and model_cfg.is_embedded:
            training = ckpts.train(
                data.tokenizer, data.corpus_ids, data.corpus_mask, data.data_key, data.augment
            )
            metrics.update(
                lm_train_seconds=training["train_seconds"], lm_final_loss=training["final_loss"],
                num_parameters=float(training["num_parameters"]),
            )  # fmt: skip
        # calibration=auto: once, at the last checkpoint (computed by the training job)
        calibration = shared_calibration(ckpts, data, sampler, cal_cfg, exp.mode != "merge")
        used = calibration.sampler if calibration is not None else sampler
        if calibration is not None:
            tracker.set_tags({"calibration": calibration.summary})
        paths = {lab: result_path(ckpts.work_dir, lab, used, sampler) for lab in ckpts.labels}

        def run_one(lab: str) -> dict[str, Any]:
            evidence = calibration.evidence_for(lab) if calibration is not None else None
            return run_checkpoint(ckpts, data, used, lab, paths[lab], exp,
                                  cal_cfg.thresholds, exp.overwrite, evidence)  # fmt: skip

        if exp.mode == "train":
            metrics.update(calibration.metrics if calibration is not None else {})
            tracker.log_metrics(metrics)
            curve = training["loss_curve"]
            tracker.log_metric_series("train_loss", curve, range(1, len(curve) + 1))
            return metrics
        if exp.mode == "checkpoint":
            r = run_one(label)  # type: ignore[arg-type]
            metrics = checkpoint_metrics(r)
            tracker.log_metrics(metrics, step=int(r["step"]))
            tracker.set_tags({"checkpoint": label, "chains_healthy": r.get("healthy", False),
                              "chain_health": r.get("health_summary", "")})  # fmt: skip
            return metrics
        results = _all_results(ckpts, run_one, exp, paths, tracker)
        if len(results) < 2:
            raise RuntimeError("the merge needs at least 2 checkpoints")
        merged = merge_checkpoints(results, data, ckpts.training(), exp)
        metrics.update(merged.metrics)
        cal_note = calibration.note if calibration is not None else None
        notes = figure_notes(merged.healthy, used, exp.normalize, cal_note)
        figures = stagewise_figures(
            merged, _model_desc(model_cfg), notes, exp.normalize, len(data.query_ids),
            len(data.observed_index),
        )  # fmt: skip
        out_dir = output_dir(exp.output_dir, vc.results_dir, exp.name)
        with staged_directory(out_dir) as stage:
            if calibration is not None:  # the evidence behind the step size every checkpoint used
                figs = calibration_figures(calibration.report) if calibration.report else None
                metrics.update(calibration.save(stage / "calibration", figs))
            metrics["wall_seconds"] = time.perf_counter() - t_start
            for name, fig in figures.items():
                atomic_save_figure(fig, stage / name)
                fig.clear()
            for name, df in merged.tables.items():
                atomic_write_csv(round_significant(df, 5), stage / name)
            summary = merged.summary | {
                "note": notes[0], "sampler_note": notes[1], "metrics": metrics,
                "calibration": calibration.to_summary() if calibration is not None else None,
                "work_dir": str(ckpts.work_dir),
                "config": _config_record(vc, used),
            }  # fmt: skip
            atomic_write_json(summary, stage / "metrics.json")
        ck = merged.tables["checkpoints.csv"]
        _log_outputs(tracker, metrics, ck, out_dir, calibration is not None)
    log.info(
        "stagewise_lm done in %.1fs: induction transition %s (midpoint step %.0f, rise %.2f "
        "nats); class pairs changing sign %.2f -> %s", metrics["wall_seconds"],
        "detected" if metrics["induction_transition/detected"] else "NOT detected",
        metrics["induction_transition/midpoint_step"], metrics["induction_transition/rise"],
        metrics["class_sign_flip_fraction"], out_dir,
    )  # fmt: skip
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the induction score (checkpoint jobs) or the transition rise."""
    metrics = run_or_exit(run, cfg)
    return float(metrics.get("induction_transition/rise", metrics.get("induction/score", math.nan)))


if __name__ == "__main__":
    main()
