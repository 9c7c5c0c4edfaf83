"""The LDS protocol before attribution: subsets, counterfactual retraining and the full-data model.

Pipeline (one direction): data → :func:`prepare` (the retrainer, its cache and every α's seeded
subset masks, nothing trained) → :func:`actual_outputs` (``m`` subsets × ``k`` seeds retrained
per α, read from / written to the cache under ``results/cache/lds``) and :func:`full_model`
(``w*``, the model the attribution methods explain). :func:`retrain_share` is the ``retrain``
stage of a sweep: one job's share of the retraining, into the cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from bifrepro.attribution.base import ClassificationTask
from bifrepro.data.lds import LDSData
from bifrepro.evaluation.lds import subset_masks
from bifrepro.evaluation.retrain import ModelSpec, RetrainCache, Retrainer, retrain_outputs
from bifrepro.io import atomic_torch_save
from bifrepro.models.resnet9 import ResNet9Config
from bifrepro.models.small import count_parameters
from bifrepro.models.vision import SmallCNNConfig
from bifrepro.training import accuracy

__all__ = [
    "LDSSettings",
    "LDSProblem",
    "model_spec",
    "prepare",
    "actual_outputs",
    "full_model",
    "checkpoint_states",
    "retrain_share",
]

log = logging.getLogger(__name__)


class LDSSettings(Protocol):
    """What the protocol reads of the experiment's settings (:class:`bifrepro.config.lds.
    LDSConfig` has these fields and more)."""

    alphas: list[float]
    num_subsets: int
    seeds: list[int]
    mask_seed: int
    equal_steps: bool
    init: str
    methods: list[str]
    num_bootstrap: int
    confidence: float
    subset_index: int | None
    retrain_seed: int | None
    retrain_jobs: int
    threads_per_job: int
    reuse_scores: bool
    cache_dir: str | None
    progress: bool | None


@dataclass
class LDSProblem:
    """Everything the LDS evaluation of one setting needs, before any training."""

    exp: LDSSettings
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


def model_spec(model: SmallCNNConfig | ResNet9Config, data: LDSData) -> ModelSpec:
    """Architecture of the configured model for this data (built fresh, seeded, per training)."""
    shape = {"in_channels": data.in_channels, "num_classes": data.num_classes}
    if isinstance(model, SmallCNNConfig):
        kwargs = {"width": model.width, "hidden": model.hidden, "pool_size": model.pool_size}
        return ModelSpec("small_cnn", {**shape, **kwargs})
    if isinstance(model, ResNet9Config):
        return ModelSpec("resnet9", {**shape, "width": model.width, "scale": model.scale})
    raise TypeError(f"the LDS protocol has no model {type(model).__name__} (SmallCNN, ResNet-9)")


def _data_key(data: LDSData, data_cfg: Any, n: int) -> dict[str, Any]:
    """What names the data in the retraining cache; ``loaded`` only when the data that ran is not
    the configured one (a fallback), so every existing cache key stays as it was."""
    key: dict[str, Any] = {"config": dataclasses.asdict(data_cfg), "n": n, "q": len(data.queries)}
    if data.name != getattr(data_cfg, "name", data.name):
        key["loaded"] = data.name
    return key


def prepare(
    exp: LDSSettings,
    data: LDSData,
    data_cfg: Any,
    model_cfg: SmallCNNConfig | ResNet9Config,
    seed: int,
    results_dir: Path,
    device: torch.device,
) -> LDSProblem:
    """Build the retrainer, its cache and every α's subset masks for loaded ``data``.

    ``data_cfg`` (the dataclass ``data`` was loaded from) keys the retraining cache: the data is
    rebuilt from its settings on every run, and a content hash of normalised floats would change
    with the thread count of the normalisation.
    """
    n = len(data.train)
    retrainer = Retrainer(
        model=model_spec(model_cfg, data),
        train_data=data.train,
        query_data=data.queries,
        train=model_cfg.train_config(seed),
        task=ClassificationTask("margin"),
        equal_steps=exp.equal_steps,
        init=exp.init,
        device=str(device),
        data_key=json.dumps(_data_key(data, data_cfg, n), sort_keys=True),
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


def retrain_share(problem: LDSProblem, n_jobs: int) -> dict[str, float]:
    """Retrain one job's share (``subset_index`` × ``retrain_seed`` of every α) into the cache.

    ``n_jobs`` local processes (1 inside a sweep, whose launcher parallelises). Returns the
    number of models trained, the cache's size and the seconds it took.
    """
    exp = problem.exp
    seeds = exp.seeds if exp.retrain_seed is None else [exp.retrain_seed]
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


def full_model(
    problem: LDSProblem, seed: int | None = None
) -> tuple[torch.nn.Module, dict[str, float]]:
    """``w*``: the model trained on every training item with the master seed (cached).

    ``seed``: another training seed (the same data and settings), e.g. the further checkpoints
    that TRAK ensembles over; cached as ``full_model_seed<seed>.pt`` like ``w*``.
    """
    r = problem.retrainer
    seed = problem.seed if seed is None else int(seed)
    path = problem.cache.dir / f"full_model_seed{seed}.pt"
    model = r.model.build(seed)
    info: dict[str, float] = {}
    if getattr(problem.model_cfg, "cache", True) and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        info["train_seconds"] = float(saved["train_seconds"])
        log.info("full-data model (seed %d) loaded from %s", seed, path)
    else:
        t0 = time.perf_counter()
        model, _ = r.train_subset(torch.ones(problem.n_train, dtype=torch.bool), seed)
        info["train_seconds"] = time.perf_counter() - t0
        atomic_torch_save(
            {"state_dict": model.cpu().state_dict(), "train_seconds": info["train_seconds"]}, path
        )
        log.info("full-data model (seed %d) trained in %.1f s", seed, info["train_seconds"])
    model.to(problem.device).eval()
    info["test_accuracy"] = accuracy(model, problem.data.queries)
    info["train_accuracy"] = accuracy(model, problem.data.train)
    info["num_params"] = float(count_parameters(model))
    return model, info


def checkpoint_states(
    problem: LDSProblem, count: int
) -> tuple[list[dict[str, torch.Tensor]], float]:
    """State dicts of ``count`` further full-data models (seeds ``seed + 1 ..``; cached) for
    methods that ensemble over independently trained models (TRAK), and their training seconds."""
    states, seconds = [], 0.0
    for i in range(1, count + 1):
        model, info = full_model(problem, problem.seed + i)
        states.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        seconds += info["train_seconds"]
    return states, seconds
