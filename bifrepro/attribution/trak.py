"""TRAK through MadryLab's ``traker`` (Park et al. 2023), behind the attributor interface.

traker's two phases map onto ours: ``fit`` = ``load_checkpoint`` → ``featurize`` (projected
per-sample gradients of the model output ``f`` and the out-to-loss weights ``Q``) →
``finalize_features`` for each checkpoint; ``score`` = ``start_scoring_checkpoint`` → ``score`` →
``finalize_scores``. traker lays scores out ``[n_train, n_query]`` with positive = helpful (the
training item raises the query's output ``f``, i.e. lowers its loss); this adapter transposes them
to ``[n_query, n_train]`` and keeps the sign.

Model output ``f`` (traker's "task"):

* ``"margin"``: traker's own ``ImageClassificationModelOutput`` (``f = log p/(1-p)`` of the true
  class, ``Q = 1 - p``): the canonical TRAK for classification (:class:`ClassificationTask`).
* ``"loss"``: ``f = -ℓ`` (the task's per-item training loss, negated so that higher is better) and
  ``Q = 1``; works for any task, e.g. causal LMs, for which traker has no built-in output.

TRAK uses the same ``f`` for training items and queries, so with ``"margin"`` a query is measured
by its margin even when the task measures the loss; for cross-entropy the two gradients are
parallel (``∇ℓ = -(1-p)∇f``), so each query's ranking and sign are the same.

On CPU traker uses its ``BasicProjector`` with a Gaussian matrix generated block by block (the
fast projector is a CUDA extension); it fails for ``proj_dim <= 100``, so ``>= 128`` is required.
All of traker's memory maps go to ``save_dir`` (a temporary folder by default, removed with the
attributor). The caller's model is never modified: traker gets a copy.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from bifrepro.attribution.base import (
    Attributor,
    ClassificationTask,
    eval_mode,
    functional_task_call,
    iterate_batches,
    model_device,
)
from bifrepro.attribution.configs import TRAKConfig
from bifrepro.data.batches import batch_size_of
from bifrepro.io import atomic_write_json

__all__ = ["TRAKAttributor"]

log = logging.getLogger(__name__)

_MIN_CPU_PROJ_DIM = 128


def _flatten(batch: Any) -> tuple[list[torch.Tensor], Any]:
    """Tensors of a (nested) batch in a fixed order, and the structure to rebuild it."""
    leaves: list[torch.Tensor] = []

    def walk(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            leaves.append(obj)
            return len(leaves) - 1
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return type(obj)(walk(v) for v in obj)
        raise TypeError(f"trak: batches may hold only tensors, got a {type(obj).__name__}")

    return leaves, walk(batch)


def _rebuild(spec: Any, leaves: Iterable[torch.Tensor]) -> Any:
    leaves = list(leaves)
    if isinstance(spec, int):
        return leaves[spec]
    if isinstance(spec, dict):
        return {k: _rebuild(v, leaves) for k, v in spec.items()}
    return type(spec)(_rebuild(v, leaves) for v in spec)


def _loss_model_output_class() -> type:
    """traker ``AbstractModelOutput`` with ``f = -ℓ`` (``Q = 1``), built lazily (import cost)."""
    from trak.modelout_functions import AbstractModelOutput

    class TaskLossModelOutput(AbstractModelOutput):
        """``f(z) = -task.train_loss(z)``, called by traker per item inside ``vmap(grad)``."""

        def __init__(self, task: Any, spec: Any) -> None:
            super().__init__()
            self.task = task
            self.spec = spec

        def get_output(self, model: nn.Module, weights: Any, buffers: Any, *leaves: torch.Tensor):
            item = _rebuild(self.spec, [t.unsqueeze(0) for t in leaves])
            params = {**weights, **buffers}
            return -functional_task_call(model, self.task.train_loss, params, item).sum()

        def get_out_to_loss_grad(self, model: nn.Module, weights: Any, buffers: Any, batch: Any):
            return torch.ones(batch[0].shape[0], 1, device=batch[0].device)

    return TaskLossModelOutput


class TRAKAttributor(Attributor):
    """TRAK scores via ``traker.TRAKer`` (positive = helpful), ensembled over checkpoints."""

    name = "trak"

    def __init__(self, config: TRAKConfig | None = None) -> None:
        super().__init__(config if config is not None else TRAKConfig())
        self.config: TRAKConfig
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._calls = 0

    def _output_kind(self) -> str:
        kind = self.config.model_output
        if kind == "auto":
            kind = "margin" if isinstance(self.task, ClassificationTask) else "loss"
        if kind == "margin" and not isinstance(self.task, ClassificationTask):
            raise ValueError(
                f"trak: model_output='margin' needs a ClassificationTask, got "
                f"{type(self.task).__name__}; use model_output='loss'"
            )
        return kind

    def _batch_leaves(self, batch: Any) -> list[torch.Tensor]:
        if self._kind == "margin":
            return list(ClassificationTask._xy(batch))
        leaves, _ = _flatten(batch)
        return leaves

    def _fit(self) -> None:
        from trak import TRAKer

        cfg = self.config
        assert self.model is not None and self.task is not None and self.train_data is not None
        device = model_device(self.model)
        if device.type == "cpu" and cfg.proj_dim < _MIN_CPU_PROJ_DIM:
            raise ValueError(
                f"trak: proj_dim={cfg.proj_dim} on CPU; traker's CPU projector fails in score() "
                f"for proj_dim <= 100, use >= {_MIN_CPU_PROJ_DIM}"
            )
        self._kind = self._output_kind()
        extra = self.checkpoints or []
        if cfg.num_checkpoints - 1 > len(extra):
            raise ValueError(
                f"trak: num_checkpoints={cfg.num_checkpoints} but fit() got the model plus "
                f"{len(extra)} checkpoint(s); pass checkpoints=[state_dict, ...] (e.g. models "
                "trained on other seeds) or lower method.num_checkpoints"
            )
        work = copy.deepcopy(self.model).eval()
        first = self._first_batch(self.train_data)
        if self._kind == "margin":
            traker_model: nn.Module = work
            output: Any = "image_classification"
            prefix = ""
        else:
            traker_model = _LossWrapper(work)
            _, spec = _flatten(first)
            output = _loss_model_output_class()(self.task, spec)
            prefix = "model."
        self._states = [
            {f"{prefix}{k}": v.detach().clone() for k, v in s.items()}
            for s in [self.model.state_dict(), *extra[: cfg.num_checkpoints - 1]]
        ]
        if cfg.save_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="bifrepro-trak-")
            save_dir = Path(self._tmp.name)
        else:
            save_dir = Path(cfg.save_dir).expanduser().resolve()
            self._claim_save_dir(save_dir)
        self.traker = TRAKer(
            model=traker_model,
            task=output,
            train_set_size=len(self.train_data),  # type: ignore[arg-type]
            save_dir=str(save_dir),
            # traker only creates its experiments file when loading is on; a fresh folder
            # holds nothing to load, and a configured one is fingerprinted (_claim_save_dir).
            load_from_save_dir=True,
            device="cpu" if device.type == "cpu" else str(device),
            proj_dim=cfg.proj_dim,
            use_half_precision=cfg.use_half_precision,
            projector_seed=cfg.projector_seed,
            lambda_reg=cfg.lambda_reg,
            logging_level=logging.WARNING,
        )
        with eval_mode(work):
            for model_id, state in enumerate(self._states):
                self.traker.load_checkpoint(state, model_id=model_id)
                for batch in iterate_batches(self.train_data, cfg.batch_size, device):
                    self.traker.featurize(
                        batch=self._batch_leaves(batch), num_samples=batch_size_of(batch)
                    )
            self.traker.finalize_features()

    def _claim_save_dir(self, save_dir: Path) -> None:
        """Refuse a save_dir whose features belong to another model, dataset or setting.

        traker resumes from whatever features its folder holds; features of another model
        would silently be reused, so the folder is tied to a fingerprint of what made them.
        """
        h = hashlib.sha256()
        for state in self._states:
            for key in sorted(state):
                h.update(key.encode())
                h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
        cfg = self.config
        h.update(
            json.dumps(
                [
                    len(self.train_data),
                    cfg.proj_dim,
                    cfg.projector_seed,
                    self._kind,  # type: ignore[arg-type]
                    cfg.lambda_reg,
                    cfg.use_half_precision,
                ]
            ).encode()
        )
        fingerprint = h.hexdigest()[:16]
        path = save_dir / "bifrepro_fingerprint.json"
        if path.exists():
            found = json.loads(path.read_text()).get("fingerprint")
            if found != fingerprint:
                raise ValueError(
                    f"trak: save_dir {save_dir} holds TRAK features of another model, dataset or "
                    f"setting (fingerprint {found} != {fingerprint}); use a fresh save_dir"
                )
        else:
            atomic_write_json({"fingerprint": fingerprint}, path)

    @staticmethod
    def _first_batch(dataset: Dataset) -> Any:
        return next(iter(iterate_batches(dataset, 1)))

    def _score(self, query_data: Dataset) -> torch.Tensor:
        cfg = self.config
        device = model_device(self.model)  # type: ignore[arg-type]
        exp_name = f"queries{self._calls}"
        self._calls += 1
        n_query = len(query_data)  # type: ignore[arg-type]
        for model_id, state in enumerate(self._states):
            self.traker.start_scoring_checkpoint(
                exp_name=exp_name, checkpoint=state, model_id=model_id, num_targets=n_query
            )
            for batch in iterate_batches(query_data, cfg.batch_size, device):
                self.traker.score(batch=self._batch_leaves(batch), num_samples=batch_size_of(batch))
        scores = self.traker.finalize_scores(exp_name=exp_name)  # [n_train, n_query]
        return torch.from_numpy(np.array(scores, dtype=np.float32)).T.contiguous()


class _LossWrapper(nn.Module):
    """Holds the model under ``model.`` so traker's functional calls can address its weights."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - not called directly
        return self.model(*args, **kwargs)
