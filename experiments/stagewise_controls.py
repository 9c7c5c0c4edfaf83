"""Stagewise attribution under controls (issue #19): does the influence change move with the stage?

Two curriculum arms of the embedded LM at a constant learning rate after warm-up: ``early``
(repeated-token sequences, which reward induction, in every batch from step 0) and ``late`` (only
from ``experiment.late_start_step``). For every arm x training seed:

1. train with a snapshot every ``scan_every`` steps and read the induction transition off their
   induction scores (:mod:`bifrepro.dynamics.transitions`);
2. class x class per-token BIF at ``bif_steps`` (shared by both arms) for every sampler seed, with
   chain health (:func:`~bifrepro.dynamics.lm_checkpoint_job.run_checkpoint`);
3. the step of the largest class-level influence change; across arms, the shift ``late - early``
   of it and of the transition, paired by training seed (:mod:`bifrepro.dynamics.stagewise_controls`).

Then the intervention: from ``intervention_step`` of ``intervention_arm``, one token class
reweighted in the loss for a window vs the control continuation
(:mod:`bifrepro.dynamics.lm_intervention`), compared with the class BIF at that checkpoint.
Outputs in ``results/stagewise_controls/`` (:data:`FIGURES`, :data:`TABLES`) and MLflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.config import register_configs
from bifrepro.config.stagewise_controls import ARMS, StagewiseControlsConfig, validate_controls
from bifrepro.data.text import build_corpus
from bifrepro.data.token_classes import TokenClassifier
from bifrepro.dynamics.induction import induction_score
from bifrepro.dynamics.lm_checkpoint_job import run_checkpoint
from bifrepro.dynamics.lm_checkpoints import LMCheckpoints, settings_hash
from bifrepro.dynamics.lm_intervention import class_interventions
from bifrepro.dynamics.stagewise_controls import (
    RunData,
    analyse_run,
    intervention_agreement,
    shift_table,
    shift_verdict,
    stage_change_summary,
    survival_table,
)
from bifrepro.dynamics.stagewise_data import StagewiseData, build_stagewise_data
from bifrepro.io import (
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    round_significant,
    staged_directory,
)
from bifrepro.plots.stagewise_controls import controls_figures
from bifrepro.tracking import start_run
from bifrepro.training.lm_setup import corpus_texts
from experiments import CONF_DIR, output_dir, run_or_exit

__all__ = ["run", "main", "FIGURES", "TABLES"]

log = logging.getLogger(__name__)

FIGURES = ("fig1_induction_arms.png", "fig2_influence_change_arms.png", "fig3_intervention.png")
TABLES = (
    "runs.csv", "shift.csv", "class_changes_by_estimator.csv", "survival.csv", "checkpoints.csv",
    "induction_scan.csv", "intervention.csv", "intervention_pairs.csv", "metrics.json",
)  # fmt: skip

register_configs()


def _init_worker() -> None:
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _pool(workers: int) -> Any:
    """One process pool for every phase (spawning workers costs seconds each), or none."""
    if workers <= 1:
        return contextlib.nullcontext(None)
    return ProcessPoolExecutor(workers, get_context("spawn"), _init_worker)


def _map(fn: Any, jobs: list[tuple], pool: Any) -> list[Any]:
    """``fn(*job)`` for every job, in order; in the worker processes of ``pool`` if any."""
    if pool is None or len(jobs) <= 1:
        return [fn(*j) for j in jobs]
    return list(pool.map(fn, *zip(*jobs, strict=True)))


def _portable(data: StagewiseData) -> StagewiseData:
    """Picklable for the worker processes: the token classifier (a closure) is rebuilt there."""
    return dataclasses.replace(data, classifier=None)


def _train(ckpts: LMCheckpoints, data: StagewiseData) -> dict[str, Any]:
    return ckpts.train(
        data.tokenizer, data.corpus_ids, data.corpus_mask, data.data_key, data.augment
    )


def _bif(ckpts: LMCheckpoints, data: StagewiseData, sampler: Any, label: str, path: Path,
         exp: Any, thresholds: Any) -> dict[str, Any]:  # fmt: skip
    r = run_checkpoint(ckpts, data, sampler, label, path, exp, thresholds)
    return {k: v for k, v in r.items() if k != "pairs"}


def _intervene(model_dir: str, data: StagewiseData, train_cfg: Any, exp: Any) -> pd.DataFrame:
    classifier = TokenClassifier.from_tokenizer(data.tokenizer, priority=tuple(exp.token_priority))
    data = dataclasses.replace(data, classifier=classifier)
    out = class_interventions(
        model_dir, data, train_cfg, exp.intervention_step, exp.intervention_window,
        exp.intervention_factor, exp.induction_half_len, exp.intervention_classes,
    )  # fmt: skip
    out.insert(0, "seed", train_cfg.seed)
    return out


def _setup(vc: Any, device: torch.device) -> tuple[dict[str, StagewiseData], dict, Path]:
    """Data per arm, the checkpoints of every (arm, seed) run, and the work folder."""
    exp: StagewiseControlsConfig = vc.experiment
    cache = vc.results_dir / "cache" / "stagewise_lm"  # shares the tokenizer with stagewise_lm
    key = settings_hash(
        {"data": dataclasses.asdict(vc.data), "model": str(dataclasses.asdict(vc.model)),
         "exp": {k: v for k, v in dataclasses.asdict(exp).items()
                 if k not in ("name", "workers", "output_dir", "progress", "num_threads")},
         "seed": vc.seed}
    )  # fmt: skip
    work = cache / f"controls-{key}"
    grid = sorted(set(range(exp.scan_every, vc.model.train.steps + 1, exp.scan_every)) | set(exp.bif_steps))  # fmt: skip
    corpus = build_corpus(vc.data)
    probe = LMCheckpoints(vc.model, [], [], work, cache, device=device, progress=exp.progress)
    tok, tok_key = probe.tokenizer(corpus_texts(corpus))
    data, runs = {}, {}
    for arm in ARMS:
        start = 0 if arm == "early" else exp.late_start_step
        settings = SimpleNamespace(**dataclasses.asdict(exp), repeat_start_step=start)
        data[arm] = _portable(build_stagewise_data(corpus, tok, tok_key, settings, vc.seed))
        for seed in exp.train_seeds:
            model = dataclasses.replace(vc.model, train=dataclasses.replace(vc.model.train, seed=seed))  # fmt: skip
            runs[arm, seed] = LMCheckpoints(
                model, [f"step{s}" for s in grid], grid, work / f"{arm}-seed{seed}", cache,
                device=device, progress=exp.progress,
            )  # fmt: skip
    return data, runs, work


def _scan(ckpts: LMCheckpoints, data: StagewiseData, half_len: int) -> list[float]:
    return [
        induction_score(ckpts.load(lab), data.probe_ids, data.probe_mask, half_len).score
        for lab in ckpts.labels
    ]


def run(cfg: DictConfig) -> dict[str, float]:
    """Train both arms, BIF at the shared checkpoints, shifts, intervention; returns metrics."""
    t0 = time.perf_counter()
    vc = validate_controls(cfg)
    exp: StagewiseControlsConfig = vc.experiment
    if exp.num_threads is not None:
        torch.set_num_threads(exp.num_threads)
    _init_worker()
    device = torch.device(exp.device)
    tags = {"bif_estimator": exp.normalize}
    with logging_redirect_tqdm(), start_run(cfg, tags=tags) as tracker, _pool(exp.workers) as pool:
        data, runs, work = _setup(vc, device)
        keys = list(runs)
        log.info("stagewise_controls: training %d runs (%s) in %s", len(keys), keys, work)
        _map(_train, [(runs[k], data[k[0]]) for k in keys], pool)
        scans = {
            k: (runs[k].steps, _scan(runs[k], data[k[0]], exp.induction_half_len)) for k in keys
        }
        thresholds = vc.calibration.thresholds
        jobs, index = [], []
        for k in keys:
            for ss in exp.sampler_seeds:
                sampler = vc.sampler.replace(seed=ss)
                for st in exp.bif_steps:
                    path = (
                        runs[k].work_dir
                        / f"bif-{sampler.fingerprint()}"
                        / f"step{st}"
                        / "result.pt"
                    )
                    jobs.append((runs[k], data[k[0]], sampler, f"step{st}", path, exp, thresholds))
                    index.append((k, ss, st))
        # intervention from intervention_step of the intervention arm, one job per training seed;
        # queued in the pool ahead of the checkpoint jobs
        arm = exp.intervention_arm
        ijobs = []
        for s in exp.train_seeds:
            snap = runs[arm, s].training()["snapshots"][f"step{exp.intervention_step}"]
            ijobs.append((snap, data[arm], runs[arm, s].model.train, exp))
        ifut = [pool.submit(_intervene, *j) for j in ijobs] if pool is not None else None
        log.info("stagewise_controls: %d BIF checkpoint jobs", len(jobs))
        results = _map(_bif, jobs, pool)
        by_run = {k: [[r for (kk, s2, _), r in zip(index, results, strict=True) if kk == k and s2 == ss]
                      for ss in exp.sampler_seeds] for k in keys}  # fmt: skip
        an = {k: analyse_run(RunData(k[0], k[1], scans[k][0], scans[k][1], exp.bif_steps, by_run[k]),
                             exp.normalize, exp.induction_level, exp.induction_min_rise) for k in keys}  # fmt: skip
        rows = pd.DataFrame([an[k].row for k in keys])
        shifts = shift_table(rows, exp.confidence)
        verdict = shift_verdict(shifts)
        by_est = pd.concat([an[k].by_estimator for k in keys if an[k].by_estimator is not None] or [pd.DataFrame()])  # fmt: skip
        surv = survival_table(by_est) if len(by_est) else pd.DataFrame()
        effects = pd.concat([f.result() for f in ifut] if ifut else _map(_intervene, ijobs, None),
                            ignore_index=True)  # fmt: skip
        i_bif = {s: {e: an[arm, s].mean[e][exp.bif_steps.index(exp.intervention_step)]
                     for e in ("correlation", "covariance", "partial")} for s in exp.train_seeds}  # fmt: skip
        pairs, summ = intervention_agreement(
            effects, i_bif, exp.intervention_factor, exp.confidence
        )
        ck = pd.DataFrame([{"arm": k[0], "seed": k[1], "sampler_seed": ss, "step": st,
            "induction_score": r["induction"]["score"], "loss_query": r["loss_query"],
            "healthy": r.get("healthy", False), "health_failed": ";".join(r.get("health_failed", [])),
            "health_summary": r.get("health_summary", ""), "seconds": r.get("seconds", math.nan)}
            for (k, ss, st), r in zip(index, results, strict=True)])  # fmt: skip
        scan_df = pd.DataFrame([{"arm": k[0], "seed": k[1], "step": st, "induction_score": v}
                                for k in keys for st, v in zip(*scans[k], strict=True)])  # fmt: skip
        metrics: dict[str, float] = dict(summ)
        for r in shifts.itertuples():
            for f in ("mean", "std_error", "t_low", "t_high", "boot_low", "boot_high"):
                metrics[f"shift/{r.quantity}/{f}"] = float(getattr(r, f))
        metrics |= {f"verdict/{k}": float(v) for k, v in verdict.items() if k != "text"}
        metrics["chains_healthy_fraction"] = float(ck.healthy.mean())
        metrics["transition_detected_fraction"] = float(rows.transition_detected.mean())
        metrics |= stage_change_summary(rows, exp.confidence)
        if len(surv):
            for e in ("correlation", "covariance", "partial"):
                metrics[f"class_change/{e}_significant_total"] = float(
                    surv[f"{e}_significant"].sum()
                )
            metrics["class_change/survive_partial_total"] = float(surv["survives_partial"].sum())
        metrics["wall_seconds"] = time.perf_counter() - t0
        figures = controls_figures(an, scans, shifts, verdict, pairs, summ, exp)
        tables = {"runs.csv": rows, "shift.csv": shifts, "class_changes_by_estimator.csv": by_est,
                  "survival.csv": surv, "checkpoints.csv": ck, "induction_scan.csv": scan_df,
                  "intervention.csv": effects, "intervention_pairs.csv": pairs}  # fmt: skip
        out_dir = output_dir(exp.output_dir, vc.results_dir, exp.name)
        with staged_directory(out_dir) as stage:
            for name, fig in figures.items():
                atomic_save_figure(fig, stage / name)
            for name, df in tables.items():
                atomic_write_csv(round_significant(df, 5), stage / name)
            atomic_write_json(
                {"metrics": metrics, "verdict": verdict, "work_dir": str(work),
                 "sampler": vc.sampler.to_dict(), "experiment": dataclasses.asdict(exp),
                 "train": dataclasses.asdict(vc.model.train)}, stage / "metrics.json",
            )  # fmt: skip
        tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        tracker.set_tags({"prediction": verdict["text"], "work_dir": str(work)})
        for name in (*FIGURES, *TABLES):
            if (out_dir / name).exists():
                tracker.log_artifact(out_dir / name, "figures" if name in FIGURES else "tables")
    log.info("stagewise_controls done in %.0fs: prediction %s; shifts\n%s -> %s",
             metrics["wall_seconds"], verdict["text"], shifts.to_string(), out_dir)  # fmt: skip
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the shift of the largest influence change (steps)."""
    return run_or_exit(run, cfg)["shift/influence_change_step/mean"]


if __name__ == "__main__":
    main()
