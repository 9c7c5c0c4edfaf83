"""Influence galleries, BIF vs EK-FAC (Kreer et al., the poster's first result), and a benchmark
that tells attribution methods apart.

For query images, the most influential training images by BIF (ranked by the posterior
correlation of loss traces) beside those by EK-FAC (raw kronfluence score) and EK-FAC normalised
by self-influence (RelatIF), with class labels. Over many queries: top-k label agreement with
confidence intervals, overall and within groups of look-alike classes, for every arm (BIF by
correlation and covariance from the same traces, EK-FAC raw and RelatIF, TRAK over checkpoints,
GradSim), BIF's spread over sampler seeds, and method rankings with paired CIs
(:mod:`bifrepro.evaluation.gallery_arms`, :mod:`bifrepro.evaluation.gallery_tables`;
docs/experiments/vision.md).

Two paths, one pipeline (:mod:`bifrepro.evaluation.gallery`; schemas and the path choice:
:mod:`bifrepro.config.imagenet`):

* **ImageNet** (``IMAGENET_ROOT`` or ``data.root`` set): torchvision GoogLeNet (Inception-v1)
  with ImageNet weights, ``ImageFolder`` train/val, the standard evaluation transforms. SGLD
  minibatches come from the whole training set; the observed pool is ``data.pool_per_class``
  images per class; the gallery queries are validation images of the poster's classes 188, 951,
  140 and 528. EK-FAC may be restricted to the last layers (``experiment.ekfac_last_layers``).
  A ``model.weights_path`` file is read before the (minutes-long) folder scan.
* **Stand-in** (no ImageNet root set, ``experiment=imagenet`` only): the same pipeline on
  Fashion-MNIST (MNIST-5k when its files are missing, with a warning; or chosen with
  ``data@standin.data=imagenet_standin``) with a small CNN trained from scratch and cached; the
  settings are the ``standin`` node (data, model, sampler, methods, experiment, method_settings).
  One log line says so, and every figure, file and MLflow run names the dataset that ran. A root that *was* set but is
  missing or malformed is an error, never a silent fallback; ``experiment=imagenet_real`` refuses
  to run without ImageNet.

Outputs (``results/imagenet/<dataset>/``, written as one set: a failed run leaves the previous
set untouched): ``gallery_helpful.png``, ``gallery_harmful.png``, ``label_agreement.png``,
``label_agreement.csv``, ``label_agreement_ranking.csv``, ``topk_overlap.csv``, ``per_query.csv``,
``metrics.json``, and where they apply ``group_agreement.csv``, ``group_agreement_ranking.csv``,
``bif_seeds.csv``; the same metrics, figures and tables go to MLflow.

Run: ``python -m experiments.imagenet experiment=imagenet`` (``make reproduce-imagenet``);
ImageNet: ``IMAGENET_ROOT=/data/imagenet python -m experiments.imagenet experiment=imagenet_real``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.attribution.base import ClassificationTask
from bifrepro.config import method_settings, register_configs, validate_config
from bifrepro.config.imagenet import (
    ImageNetExperimentConfig,
    check_weights_file,
    choose_imagenet_path,
)
from bifrepro.evaluation.gallery import dataset_title, ekfac_note, load_gallery_inputs
from bifrepro.evaluation.gallery_arms import (
    DERIVED_ARMS,
    bif_arms,
    ekfac_arms,
    pool_groups,
    run_other,
    trak_checkpoints,
)
from bifrepro.evaluation.gallery_tables import gallery_tables
from bifrepro.io import atomic_save_figure, atomic_write_csv, atomic_write_json, staged_directory
from bifrepro.models.vision import keep_last_layers, linear_conv_layers
from bifrepro.plots.calibration import save_calibration
from bifrepro.plots.gallery import gallery_figures
from bifrepro.sampling import SGLDConfig, resolve_sampler
from bifrepro.tracking import start_run
from experiments import CONF_DIR, output_dir, resolve_device, run_or_exit

__all__ = ["ImageNetExperimentConfig", "run", "main"]

log = logging.getLogger(__name__)

register_configs()


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the gallery experiment described by ``cfg``; returns the summary metrics.

    The config is validated first (a :class:`~bifrepro.config.ConfigError` naming the key,
    before any compute); figures and tables go to the output folder, everything to MLflow.
    """
    t_start = time.perf_counter()
    # 1. Config: the path (ImageNet or stand-in), every group validated, the weights file read.
    cfg, standin = choose_imagenet_path(cfg)
    vc = validate_config(
        cfg, groups=("data", "model", "sampler", "calibration", "tracking", "experiment")
    )
    exp: ImageNetExperimentConfig = vc.experiment
    names = [m for m in exp.methods if m != "bif" and m not in DERIVED_ARMS]
    methods = method_settings(names, cfg.get("methods", {}))
    sampler: SGLDConfig = vc.sampler
    device = resolve_device(exp.device)
    cache_dir = (
        Path(exp.cache_dir).expanduser().resolve()
        if exp.cache_dir
        else vc.results_dir / "cache" / exp.name
    )
    weights = None if standin else check_weights_file(vc.model)
    if not standin and vc.data.sgld_source == "train" and sampler.cache_data:
        # SGLD minibatches are decoded from the ImageFolder per step; never collate it whole.
        log.info("sampler.cache_data=false: SGLD minibatches are read from the ImageFolder")
        sampler = sampler.replace(cache_data=False)
    ks = sorted(set(exp.ks) | {exp.gallery_k})
    torch.manual_seed(vc.seed)

    # 2. Data and model.
    with logging_redirect_tqdm():
        pool, model, model_info = load_gallery_inputs(
            vc.data, vc.model, vc.seed, standin, device, cache_dir, exp.progress, weights
        )
    # the data that actually ran names the folder, the tables and the tags (Fashion-MNIST may
    # have fallen back to MNIST-5k)
    dataset = pool.name
    out_dir = output_dir(exp.output_dir, vc.results_dir, exp.name, dataset)
    task = ClassificationTask(exp.measurement)
    layers = linear_conv_layers(model)
    last = 0 if standin else exp.ekfac_last_layers
    tags = {
        "dataset": dataset,
        "standin": str(standin).lower(),
        "device": str(device),
        "model": vc.model.name,
        "ekfac_layers": "all" if last == 0 or last >= len(layers) else f"last {last}",
    }
    title = (
        f"{dataset_title(pool, standin)} · {model_info['model_note']}\n"
        f"pool of {pool.n_pool} training images ({len(torch.unique(pool.pool_labels))} classes)"
    )
    log.info(
        "%s; %d queries (%d in the gallery); SGLD on %d training images; device %s",
        title.replace("\n", " · "), pool.n_query, len(pool.gallery),
        len(pool.sgld_train), device,  # type: ignore[arg-type]
    )  # fmt: skip
    with logging_redirect_tqdm(), start_run(cfg, tags=tags) as tracker:
        metrics: dict[str, float] = {
            "n_pool": float(pool.n_pool),
            "n_queries": float(pool.n_query),
            "n_sgld_train": float(len(pool.sgld_train)),  # type: ignore[arg-type]
            "model_params": float(sum(p.numel() for p in model.parameters())),
        }
        if "test_accuracy" in model_info:
            metrics["model_test_accuracy"] = float(model_info["test_accuracy"])
            metrics["model_train_seconds"] = float(model_info["train_seconds"])
        # 3. Attribute: BIF (step size calibrated with sampler=auto), EK-FAC, then the others.
        hand_picked, report = sampler, None
        if exp.calibrate or vc.calibration.enabled:  # sampler=auto (or experiment.calibrate)
            sampler, report = resolve_sampler(
                sampler, dataclasses.replace(vc.calibration, enabled=True), model,
                task.train_loss, pool.sgld_train, query_data=pool.queries,
                query_loss_fn=task.measurement, progress=exp.progress,
            )  # fmt: skip
            assert report is not None
            metrics.update(report.to_metrics("calibration/"))
            metrics["calibration/hand_picked_step_size"] = hand_picked.step_size
            metrics["calibration/step_ratio_to_hand_picked"] = (
                sampler.step_size / hand_picked.step_size
            )
        traces_root, settings = None, None
        if exp.traces_on_disk:
            settings = {
                "data": OmegaConf.to_container(cfg.data, resolve=True),
                "model": OmegaConf.to_container(cfg.model, resolve=True),
                "measurement": exp.measurement,
                "seed": int(cfg.seed),
            }
            traces_root = cache_dir / "traces"
        results, health, per_seed = bif_arms(
            model, task, pool, sampler, normalize=exp.normalize, gallery_k=exp.gallery_k,
            seeds=exp.bif_seeds, covariance_arm="bif_cov" in exp.methods,
            traces_root=traces_root, settings=settings,
            progress=exp.progress,
            evidence=report.health_evidence(sampler) if report is not None else None,
        )  # fmt: skip
        ek_model, tracked = keep_last_layers(model, last)
        results.update(
            ekfac_arms(methods["ekfac"], ek_model, task, pool,
                       ekfac_note(tracked, len(layers)), relatif="ekfac_relatif" in exp.methods)
        )  # fmt: skip
        del ek_model
        for name in exp.methods:
            if name in results or name in DERIVED_ARMS:
                continue
            n_ckpt = getattr(methods[name], "num_checkpoints", 1)
            ckpts = trak_checkpoints(vc.model, pool, n_ckpt, vc.seed, cache_dir, device)
            results[name] = run_other(name, methods[name], model, task, pool, ckpts or None)
        results = {m: results[m] for m in exp.methods}  # the configured order

        # 4. Evaluate: label agreement (overall and within confusable groups), overlaps,
        # rankings with paired CIs, BIF's spread over sampler seeds.
        tables, eval_metrics = gallery_tables(
            pool, results, ks, exp.gallery_k, groups=pool_groups(pool), per_seed=per_seed,
            first_seed=sampler.seed, confidence=exp.confidence, n_boot=exp.n_boot, seed=vc.seed,
            ci_method=exp.ci_method,
        )  # fmt: skip
        metrics.update(eval_metrics)
        table = tables["label_agreement.csv"]

        # 5. Figures and tables, swapped in as one set.
        figures = gallery_figures(
            pool, results, table, normalize=exp.normalize, gallery_k=exp.gallery_k,
            confidence=exp.confidence, title=title, groups=tables.get("group_agreement.csv"),
        )  # fmt: skip
        metrics["wall_seconds"] = time.perf_counter() - t_start
        summary = {
            "dataset": dataset,
            "requested_dataset": vc.data.name,
            "standin": standin,
            "source": pool.source,
            "title": title.replace("\n", " · "),
            "metrics": metrics,
            "chains": health.summary,
            "chains_healthy": health.healthy,
            "ekfac_tracked_layers": tracked,
            "gallery_queries": [pool.query_ids[i] for i in pool.gallery],
            "config": {
                "sampler": sampler.to_dict(),
                "hand_picked_sampler": hand_picked.to_dict(),
                "experiment": {
                    k: (asdict(v) if dataclasses.is_dataclass(v) else v)
                    for k, v in exp.__dict__.items()
                },
                "data": asdict(vc.data),
                "model": asdict(vc.model),
                "seed": vc.seed,
            },
        }
        with staged_directory(out_dir) as stage:
            calibration_files = save_calibration(report, stage / "calibration") if report else {}
            for name, fig in figures.items():
                atomic_save_figure(fig, stage / name)
            for name, df in tables.items():
                atomic_write_csv(df.round(6), stage / name)
            atomic_write_json(summary, stage / "metrics.json")

        # 6. MLflow, from the final folder.
        if tracker.enabled:
            for path in calibration_files.values():
                tracker.log_artifact(out_dir / "calibration" / path.name, "calibration")
            tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
            for name, fig in figures.items():
                tracker.log_figure(fig, f"figures/{name}")
            for name in (*tables, "metrics.json"):
                tracker.log_artifact(out_dir / name, "tables")
        for fig in figures.values():
            fig.clear()
    k = exp.gallery_k
    log.info(
        "imagenet (%s) done in %.1f s: label agreement@%d BIF %.3f [%.3f, %.3f], EK-FAC %.3f "
        "[%.3f, %.3f], chance %.3f -> %s",
        dataset, metrics["wall_seconds"], k, metrics[f"bif/agreement_top{k}"],
        metrics[f"bif/agreement_top{k}_ci_low"], metrics[f"bif/agreement_top{k}_ci_high"],
        metrics[f"ekfac/agreement_top{k}"], metrics[f"ekfac/agreement_top{k}_ci_low"],
        metrics[f"ekfac/agreement_top{k}_ci_high"], metrics["chance_agreement"], out_dir,
    )  # fmt: skip
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns BIF's label agreement at the gallery's k (for sweepers)."""
    metrics = run_or_exit(run, cfg)
    return metrics[f"bif/agreement_top{cfg.experiment.get('gallery_k', 3)}"]


if __name__ == "__main__":
    main()
