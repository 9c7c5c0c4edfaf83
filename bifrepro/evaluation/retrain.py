"""Counterfactual retraining for LDS, with an on-disk cache of the retrained models' query outputs.

Retraining is the expensive part of LDS (``m`` subsets × ``k`` seeds models), so every retrained
model's query outputs are saved as soon as it finishes, keyed by

* the **training-config fingerprint** (:meth:`Retrainer.fingerprint`: model spec, training
  settings, task, and content hashes of the training and query data),
* the **subset mask** (:func:`bifrepro.evaluation.lds.mask_hash`),
* the **seed**,

under ``<cache root>/<fingerprint>/<mask hash>/seed<k>.pt`` (written atomically). Hence:

* reruns, new attribution methods and new α values that happen to reuse a subset retrain nothing;
* an interrupted sweep resumes: only missing entries are trained;
* the unit of work is one (mask, seed) pair, so work can be split any way: a local process pool
  (:func:`retrain_outputs` with ``n_jobs > 1``), Hydra's joblib launcher, or SLURM jobs through
  the submitit launcher, with the subset index and the seed as sweep axes. Each job writes its own
  cache files; the **merge step** is simply reading the cache (:func:`retrain_outputs` with
  ``train_missing=False``, which names what is missing instead of training it).

What a retrained model records: ``f = -task.measurement(model, query)`` per query, i.e. the margin
for ``ClassificationTask(measurement="margin")`` and the negative loss for a language model
(higher = better; see :mod:`bifrepro.evaluation.lds` for why no further sign flip is needed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from bifrepro.attribution.base import AttributionTask, ClassificationTask, eval_mode
from bifrepro.data.batches import to_device
from bifrepro.evaluation.lds import mask_hash
from bifrepro.io import atomic_torch_save, atomic_write_json
from bifrepro.training import TrainConfig, train_model

__all__ = [
    "MODEL_BUILDERS",
    "ModelSpec",
    "Retrainer",
    "RetrainCache",
    "MissingRetrainError",
    "dataset_fingerprint",
    "retrain_outputs",
    "missing_entries",
]

log = logging.getLogger(__name__)

#: Version of the cache layout and of what an entry means; bump to invalidate old caches.
CACHE_VERSION = 1

#: Short model names usable in :class:`ModelSpec` (any ``"module:attr"`` works too).
MODEL_BUILDERS: dict[str, str] = {
    "small_cnn": "bifrepro.models.small:SmallCNN",
    "mlp": "bifrepro.models.small:MLPClassifier",
    "resnet9": "bifrepro.models.resnet9:ResNet9",
}


def _resolve(target: str) -> Callable[..., nn.Module]:
    path = MODEL_BUILDERS.get(target, target)
    if ":" not in path:
        raise ValueError(
            f"unknown model {target!r}: use one of {sorted(MODEL_BUILDERS)} or 'package.module:attr'"
        )
    module, attr = path.split(":", 1)
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class ModelSpec:
    """How to build a fresh model: a builder name (or ``"module:attr"``) and keyword arguments.

    A spec rather than a model object so that it can be hashed into the cache key and sent to
    worker processes; ``build(seed)`` seeds torch's global RNG before constructing, so the
    initialisation depends only on the seed.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int | None = None) -> nn.Module:
        builder = _resolve(self.name)
        if seed is None:
            return builder(**self.kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return builder(**self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(sorted(self.kwargs.items()))}


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)};".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def dataset_fingerprint(dataset: Dataset, batch_size: int = 1024) -> str:
    """Content hash of a dataset (tensors of a ``TensorDataset``, else every collated batch)."""
    h = hashlib.sha256()
    if isinstance(dataset, TensorDataset):
        for t in dataset.tensors:
            _hash_tensor(h, t)
    else:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            items = batch if isinstance(batch, list | tuple) else [batch]
            for t in items:
                if isinstance(t, torch.Tensor):
                    _hash_tensor(h, t)
                else:
                    h.update(repr(t).encode())
    h.update(f"len={len(dataset)}".encode())  # type: ignore[arg-type]
    return h.hexdigest()[:20]


@dataclass
class Retrainer:
    """Trains one model on a subset of the training set and records its query outputs.

    Args:
        model: spec of the architecture (built fresh, seeded, for every retraining).
        train_data: the full training set (indexed by the subset masks).
        query_data: the queries whose outputs are recorded.
        train: training settings of the full-data model; ``train.seed`` is replaced by the
            retraining seed.
        task: defines the recorded output ``f = -task.measurement`` (default: the margin).
        equal_steps: give every retrained model as many optimiser steps as the full-data model
            (epochs scaled by ``n / |S|``); otherwise every model trains ``train.epochs`` epochs,
            and models on small subsets take few steps.
        init: ``"shared"``: the model initialisation depends on the seed only (every subset
            starts from the same weights for a given seed, which removes initialisation noise
            from the comparison between subsets); ``"per_subset"``: it depends on the seed and
            the mask.
        device: where to train (``"cpu"``, ``"cuda"``); not part of the cache key.
        data_key: identifies the training and query data in the cache key instead of a content
            hash of their tensors. Use it when the data is rebuilt from settings each run:
            normalised floats can differ in the last bit between runs (e.g. a mean reduced with
            another number of threads), which would change a content hash and miss the cache.
    """

    model: ModelSpec
    train_data: Dataset
    query_data: Dataset
    train: TrainConfig
    task: AttributionTask = field(default_factory=lambda: ClassificationTask("margin"))
    equal_steps: bool = True
    init: str = "shared"
    device: str = "cpu"
    data_key: str | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.init not in ("shared", "per_subset"):
            raise ValueError(f"init={self.init!r} must be 'shared' or 'per_subset'")

    @property
    def n_train(self) -> int:
        return len(self.train_data)  # type: ignore[arg-type]

    @property
    def n_query(self) -> int:
        return len(self.query_data)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        """Everything that determines a cache entry's numbers (besides mask and seed)."""
        train = dataclasses.asdict(self.train)
        train.pop("seed", None)
        return {
            "version": CACHE_VERSION,
            "model": self.model.to_dict(),
            "train": train,
            "task": self.task.describe(),
            "equal_steps": self.equal_steps,
            "init": self.init,
            "n_train": self.n_train,
            "n_query": self.n_query,
            "train_data": self.data_key or dataset_fingerprint(self.train_data),
            "query_data": self.data_key or dataset_fingerprint(self.query_data),
        }

    def fingerprint(self) -> str:
        """Hash of :meth:`describe` (the training-config part of the cache key)."""
        if self._fingerprint is None:
            text = json.dumps(self.describe(), sort_keys=True, default=str)
            self._fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._fingerprint

    def epochs_for(self, subset_size: int) -> int:
        """Epochs for a subset of ``subset_size`` items (see ``equal_steps``)."""
        if not self.equal_steps:
            return self.train.epochs
        b = self.train.batch_size
        full_steps = self.train.epochs * math.ceil(self.n_train / b)
        return max(1, math.ceil(full_steps / math.ceil(subset_size / b)))

    def init_seed(self, mask: torch.Tensor, seed: int) -> int:
        if self.init == "shared":
            return int(seed)
        text = f"{seed}:{mask_hash(mask)}".encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)

    def train_subset(self, mask: torch.Tensor, seed: int) -> tuple[nn.Module, list[float]]:
        """A model trained on the items where ``mask`` is True (returns it and its loss history)."""
        mask = torch.as_tensor(mask).to(torch.bool).cpu()
        if mask.shape != (self.n_train,):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected ({self.n_train},)")
        idx = torch.nonzero(mask).flatten()
        if len(idx) == 0:
            raise ValueError("empty subset mask")
        if isinstance(self.train_data, TensorDataset):
            subset: Dataset = TensorDataset(*(t[idx] for t in self.train_data.tensors))
        else:
            subset = Subset(self.train_data, idx.tolist())
        model = self.model.build(self.init_seed(mask, seed)).to(self.device)
        cfg = dataclasses.replace(self.train, seed=int(seed), epochs=self.epochs_for(len(idx)))
        history = train_model(
            model, subset, cfg, loss_fn=self.task.train_loss, device=self.device, progress=False
        )
        return model, history

    @torch.no_grad()
    def outputs(self, model: nn.Module, batch_size: int = 512) -> torch.Tensor:
        """``f = -task.measurement`` of every query ``[n_query]`` (float64, CPU)."""
        device = torch.device(self.device)
        out = []
        with eval_mode(model):
            for batch in DataLoader(self.query_data, batch_size=batch_size, shuffle=False):
                out.append(-self.task.measurement(model, to_device(batch, device)).double().cpu())
        return torch.cat(out)

    def __call__(self, mask: torch.Tensor, seed: int) -> dict[str, Any]:
        """Train on ``mask`` with ``seed``; return the cache entry (outputs and bookkeeping)."""
        t0 = time.perf_counter()
        model, history = self.train_subset(mask, seed)
        outputs = self.outputs(model)
        return {
            "outputs": outputs,
            "final_train_loss": float(history[-1]),
            "epochs": len(history),
            "seconds": time.perf_counter() - t0,
            "mask_hash": mask_hash(mask),
            "subset_size": int(torch.as_tensor(mask).sum()),
            "seed": int(seed),
            "fingerprint": self.fingerprint(),
        }


class MissingRetrainError(RuntimeError):
    """The merge step found subsets/seeds that no job has retrained yet."""


class RetrainCache:
    """Query outputs of retrained models on disk: ``root/<fingerprint>/<mask hash>/seed<k>.pt``.

    ``root/<fingerprint>/config.json`` describes the training config the entries belong to.
    """

    def __init__(self, root: str | os.PathLike[str], fingerprint: str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.fingerprint = fingerprint
        self.dir = self.root / fingerprint

    def path(self, mask_hash_: str, seed: int) -> Path:
        return self.dir / mask_hash_ / f"seed{int(seed)}.pt"

    def has(self, mask_hash_: str, seed: int) -> bool:
        return self.path(mask_hash_, seed).is_file()

    def load(self, mask_hash_: str, seed: int) -> dict[str, Any] | None:
        """The stored entry, or ``None`` when missing or unreadable (e.g. a truncated file)."""
        p = self.path(mask_hash_, seed)
        if not p.is_file():
            return None
        try:
            entry = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a broken entry is retrained, not fatal
            log.warning("unreadable cache entry %s (%s): it will be retrained", p, err)
            return None
        if entry.get("fingerprint") != self.fingerprint:
            log.warning("cache entry %s belongs to another config: ignored", p)
            return None
        return entry

    def save(self, entry: dict[str, Any]) -> Path:
        if entry.get("fingerprint") != self.fingerprint:
            raise ValueError("entry was produced under another training config")
        return atomic_torch_save(entry, self.path(entry["mask_hash"], entry["seed"]))

    def write_description(self, description: dict[str, Any]) -> None:
        """Record the training config next to its entries (once)."""
        p = self.dir / "config.json"
        if not p.is_file():
            atomic_write_json(description, p)

    def num_entries(self) -> int:
        return sum(1 for _ in self.dir.glob("*/seed*.pt")) if self.dir.is_dir() else 0


# --- workers ---------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(retrainer: Retrainer, cache_root: str | None, threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    _WORKER["retrainer"] = retrainer
    _WORKER["cache"] = (
        RetrainCache(cache_root, retrainer.fingerprint()) if cache_root is not None else None
    )


def _work(mask: torch.Tensor, seed: int) -> dict[str, Any]:
    entry = _WORKER["retrainer"](mask, seed)
    cache = _WORKER["cache"]
    if cache is not None:
        cache.save(entry)  # saved by the worker as soon as it is done: survives an interruption
    return entry


def missing_entries(
    retrainer: Retrainer, masks: torch.Tensor, seeds: Sequence[int], cache: RetrainCache | None
) -> list[tuple[int, int]]:
    """``(subset row, seed)`` pairs without a cache entry (all of them without a cache)."""
    hashes = [mask_hash(m) for m in masks]
    return [
        (j, int(s))
        for j, h in enumerate(hashes)
        for s in seeds
        if cache is None or cache.load(h, s) is None
    ]


def retrain_outputs(
    retrainer: Retrainer,
    masks: torch.Tensor,
    seeds: Sequence[int],
    cache: RetrainCache | None = None,
    n_jobs: int = 1,
    threads_per_job: int = 1,
    train_missing: bool = True,
    progress: bool | None = None,
    desc: str = "retrain",
) -> torch.Tensor:
    """Query outputs of models retrained on every subset and seed: ``[m, k, n_query]``.

    Cached entries are read; missing ones are trained (in ``n_jobs`` spawned worker processes
    with ``threads_per_job`` torch threads each, or in this process for ``n_jobs=1``) and cached
    one by one as they finish, so an interrupted call resumes where it stopped. With
    ``train_missing=False`` nothing is trained: missing entries raise
    :class:`MissingRetrainError` (the merge step after a sweep).
    """
    masks = torch.as_tensor(masks).to(torch.bool).cpu()
    if masks.dim() != 2 or masks.shape[1] != retrainer.n_train:
        raise ValueError(
            f"masks must be [m, {retrainer.n_train}] (one row per subset), got {tuple(masks.shape)}"
        )
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty")
    if cache is not None:
        if cache.fingerprint != retrainer.fingerprint():
            raise ValueError("cache fingerprint does not match the retrainer's training config")
        cache.write_description(retrainer.describe())
    hashes = [mask_hash(m) for m in masks]
    out = torch.full((len(masks), len(seeds), retrainer.n_query), math.nan, dtype=torch.float64)
    todo: list[tuple[int, int]] = []
    for j, h in enumerate(hashes):
        for k, s in enumerate(seeds):
            entry = cache.load(h, s) if cache is not None else None
            if entry is None:
                todo.append((j, k))
            else:
                out[j, k] = entry["outputs"].double()
    if todo and not train_missing:
        raise MissingRetrainError(
            f"{len(todo)} of {len(masks) * len(seeds)} retrained models are missing from "
            f"{cache.dir if cache is not None else 'the (absent) cache'}, e.g. subset "
            f"{todo[0][0]} seed {seeds[todo[0][1]]}; run the retraining jobs first"
        )
    if not todo:
        log.info("%s: all %d models found in the cache", desc, out.shape[0] * out.shape[1])
        return out
    log.info(
        "%s: %d of %d models to train (%d cached), %d job(s)",
        desc,
        len(todo),
        out.shape[0] * out.shape[1],
        out.shape[0] * out.shape[1] - len(todo),
        n_jobs,
    )
    bar = tqdm(total=len(todo), desc=desc, disable=None if progress is None else not progress)
    try:
        if n_jobs <= 1:
            for j, k in todo:
                entry = retrainer(masks[j], seeds[k])
                if cache is not None:
                    cache.save(entry)
                out[j, k] = entry["outputs"]
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            root = str(cache.root) if cache is not None else None
            with ProcessPoolExecutor(
                max_workers=n_jobs,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(retrainer, root, threads_per_job),
            ) as pool:
                futures = {pool.submit(_work, masks[j], seeds[k]): (j, k) for j, k in todo}
                try:
                    for fut in as_completed(futures):
                        j, k = futures[fut]
                        out[j, k] = fut.result()["outputs"]  # re-raises a worker's exception
                        bar.update()
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        bar.close()
    return out
