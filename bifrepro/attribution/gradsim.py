"""Gradient similarity (GradSim / Grad-Cos, or Grad-Dot): per-sample gradients, streamed in chunks.

Score (positive = helpful)::

    score(q, i) = cos(∇φ_q, ∇ℓ_i)      (similarity="cosine")
    score(q, i) = ∇φ_qᵀ ∇ℓ_i           (similarity="dot")

A gradient step on training item ``i`` moves the weights along ``-∇ℓ_i``, which changes the query
measurement by ``-η ∇φ_qᵀ ∇ℓ_i``: a positive dot product means the item lowers the query
measurement, i.e. helps.

Memory: a dense per-sample gradient matrix is ``n × d`` floats (3.3 GB for 2,000 samples of a
400k-parameter model), so gradients are computed ``chunk_size`` samples at a time with
``torch.func`` (``vmap`` of ``grad`` over a functional call; a per-sample autograd loop when the
model cannot be vmapped). With ``proj_dim > 0`` each gradient is projected by a seeded Gaussian
matrix ``P ∈ R^{d×k}``, ``P_ij ~ N(0, 1/k)``, which is itself generated block by block (and cached
only when small), so only ``chunk_size × d`` gradient floats and one block of ``P`` exist at once.
Training features are cached after ``fit`` when ``n × k`` floats fit in ``max_cache_mb``;
otherwise they are recomputed while scoring, streamed against each block of query features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from bifrepro.attribution.base import (
    Attributor,
    eval_mode,
    functional_task_call,
    iterate_batches,
    model_device,
    trainable_parameters,
)
from bifrepro.attribution.configs import GradSimConfig
from bifrepro.data.batches import batch_size_of, index_batch

__all__ = ["GradSimAttributor", "PerSampleGradients", "GaussianProjector"]

log = logging.getLogger(__name__)

_MB = 1024.0**2
_PROJ_BLOCK_BYTES = 64 * 2**20


def _unsqueeze(item: Any) -> Any:
    """Give every tensor of a single (vmapped) item its batch dimension back."""
    if isinstance(item, torch.Tensor):
        return item.unsqueeze(0)
    if isinstance(item, dict):
        return {k: _unsqueeze(v) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(_unsqueeze(v) for v in item)
    return item


class PerSampleGradients:
    """Per-item gradients ``[B, d]`` of ``fn(model, batch)`` w.r.t. the trainable parameters.

    Uses ``vmap(grad(...))`` over a functional call; falls back (once, with a log line) to a loop
    of per-item autograd calls when the model cannot be vmapped. The model is never modified.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = trainable_parameters(model)
        self.num_params = sum(p.numel() for p in self.params.values())
        self.use_vmap = True

    def __call__(self, fn: Callable[[nn.Module, Any], torch.Tensor], batch: Any) -> torch.Tensor:
        if self.use_vmap:
            try:
                return self._vmapped(fn, batch)
            except Exception as err:  # noqa: BLE001 - any vmap failure means: use the loop
                reason = str(err).split(". ")[0]  # torch's vmap errors run to a page of advice
                log.info("per-sample gradients: vmap failed (%s); using a per-item loop", reason)
                log.debug("the full vmap error: %s", err)
                self.use_vmap = False
        return self._looped(fn, batch)

    def _vmapped(self, fn: Callable[[nn.Module, Any], torch.Tensor], batch: Any) -> torch.Tensor:
        model = self.model

        def one(params: dict[str, torch.Tensor], item: Any) -> torch.Tensor:
            item = _unsqueeze(item)
            return functional_task_call(model, fn, params, item).sum()

        grads = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0), randomness="different")(
            self.params, batch
        )
        b = batch_size_of(batch)
        return torch.cat([g.reshape(b, -1) for g in grads.values()], dim=1).detach()

    def _looped(self, fn: Callable[[nn.Module, Any], torch.Tensor], batch: Any) -> torch.Tensor:
        names = list(self.params)
        live = dict(self.model.named_parameters())
        tensors = [live[n] for n in names]
        b = batch_size_of(batch)
        out = torch.empty(b, self.num_params, device=tensors[0].device, dtype=tensors[0].dtype)
        for i in range(b):
            item = index_batch(batch, torch.tensor([i]))
            with torch.enable_grad():
                value = fn(self.model, item).sum()
                grads = torch.autograd.grad(value, tensors, allow_unused=True)
            out[i] = torch.cat(
                [
                    (g if g is not None else torch.zeros_like(t)).reshape(-1)
                    for g, t in zip(grads, tensors, strict=True)
                ]
            )
        return out


class GaussianProjector:
    """Seeded Gaussian projection ``g ↦ g P`` with ``P ∈ R^{d×k}``, ``P_ij ~ N(0, 1/k)``.

    ``P`` is generated in row blocks of about 64 MB from per-block seeds, so it never exists in
    full unless it is small enough to cache (``cache_mb``); results do not depend on caching.
    """

    def __init__(
        self, dim: int, proj_dim: int, seed: int, device: torch.device, cache_mb: float = 256.0
    ) -> None:
        self.dim, self.proj_dim, self.seed, self.device = dim, proj_dim, seed, device
        rows = max(1, _PROJ_BLOCK_BYTES // (4 * proj_dim))
        self.blocks = [(s, min(s + rows, dim)) for s in range(0, dim, rows)]
        self._cache: list[torch.Tensor] | None = None
        if dim * proj_dim * 4 <= cache_mb * _MB:
            self._cache = [self._block(j) for j in range(len(self.blocks))]

    def _block(self, j: int) -> torch.Tensor:
        start, stop = self.blocks[j]
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + j)
        block = torch.randn(stop - start, self.proj_dim, generator=gen, device=self.device)
        return block.div_(math.sqrt(self.proj_dim))

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(grads.shape[0], self.proj_dim, device=grads.device, dtype=grads.dtype)
        for j, (start, stop) in enumerate(self.blocks):
            block = self._cache[j] if self._cache is not None else self._block(j)
            out.addmm_(grads[:, start:stop], block.to(grads.dtype))
        return out


class GradSimAttributor(Attributor):
    """Cosine (or dot-product) similarity of per-sample loss gradients (positive = helpful)."""

    name = "gradsim"

    def __init__(self, config: GradSimConfig | None = None) -> None:
        super().__init__(config if config is not None else GradSimConfig())
        self.config: GradSimConfig
        self._train_features: torch.Tensor | None = None

    @property
    def feature_dim(self) -> int:
        return self.config.proj_dim or self._grads.num_params

    def _fit(self) -> None:
        assert self.model is not None and self.task is not None and self.train_data is not None
        cfg = self.config
        self._grads = PerSampleGradients(self.model)
        self._device = model_device(self.model)
        self._projector = (
            GaussianProjector(self._grads.num_params, cfg.proj_dim, cfg.seed, self._device)
            if cfg.proj_dim > 0
            else None
        )
        n = len(self.train_data)  # type: ignore[arg-type]
        cache_mb = n * self.feature_dim * 4 / _MB
        if cache_mb <= cfg.max_cache_mb:
            self._train_features = torch.cat(list(self._features(self.train_data, "train")))
        else:
            log.info(
                "gradsim: training features would take %.0f MB > max_cache_mb=%.0f; they are "
                "recomputed while scoring",
                cache_mb,
                cfg.max_cache_mb,
            )

    def _features(self, dataset: Dataset, which: str) -> Iterator[torch.Tensor]:
        """Chunks of (projected, normalised) per-sample gradients, in dataset order."""
        assert self.model is not None and self.task is not None
        fn = self.task.train_loss if which == "train" else self.task.measurement
        with eval_mode(self.model):
            for batch in iterate_batches(dataset, self.config.chunk_size, self._device):
                g = self._grads(fn, batch)
                if self._projector is not None:
                    g = self._projector(g)
                if self.config.similarity == "cosine":
                    g = g / torch.linalg.vector_norm(g, dim=1, keepdim=True).clamp_min(1e-12)
                yield g

    def _score(self, query_data: Dataset) -> torch.Tensor:
        cfg = self.config
        n_query = len(query_data)  # type: ignore[arg-type]
        # Query features are held in blocks that fit the memory budget.
        block = max(1, int(cfg.max_cache_mb * _MB // (4 * self.feature_dim)))
        out = torch.empty(n_query, self.n_train, dtype=torch.float32)
        for start in range(0, n_query, block):
            idx = list(range(start, min(start + block, n_query)))
            q = torch.cat(list(self._features(Subset(query_data, idx), "query")))
            if self._train_features is not None:
                out[idx[0] : idx[-1] + 1] = (q @ self._train_features.T).cpu()
                continue
            col = 0
            for t in self._features(self.train_data, "train"):  # type: ignore[arg-type]
                out[idx[0] : idx[-1] + 1, col : col + t.shape[0]] = (q @ t.T).cpu()
                col += t.shape[0]
        return out
