"""Batching for the sampler: collate observed data once, draw SGLD minibatches without a DataLoader.

Loss evaluation on every draw is the sampler's cost, so observed datasets are collated into
evaluation batches once and kept (on the model's device) instead of being re-read and re-collated
on each draw. SGLD minibatches are drawn by index from a seeded generator, so a chain's minibatch
sequence depends only on the seed and the chain index (not on worker processes or timing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

__all__ = ["EvalBatches", "MinibatchStream", "batch_size_of", "to_device", "index_batch"]

Batch = Any


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _is_leaf_list(obj: Sequence[Any]) -> bool:
    return len(obj) > 0 and not isinstance(obj[0], torch.Tensor | Mapping | list | tuple)


def index_batch(batch: Batch, idx: torch.Tensor) -> Batch:
    """Select rows ``idx`` of every tensor in a collated batch (lists of strings are indexed too)."""
    if isinstance(batch, torch.Tensor):
        return batch[idx.to(batch.device)]
    if isinstance(batch, Mapping):
        return {k: index_batch(v, idx) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        if _is_leaf_list(batch):
            return [batch[i] for i in idx.tolist()]
        return type(batch)(index_batch(v, idx) for v in batch)
    return batch


def batch_size_of(batch: Batch) -> int:
    """Number of items in a collated batch (leading dimension of its first tensor)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        return batch_size_of(next(iter(batch.values())))
    if isinstance(batch, tuple | list):
        if _is_leaf_list(batch):
            return len(batch)
        return batch_size_of(batch[0])
    raise TypeError(f"cannot infer the batch size of a {type(batch).__name__}")


class EvalBatches:
    """A dataset split into fixed, ordered evaluation batches, collated (and moved) once.

    With ``cache=False`` the batches are re-collated from a DataLoader on every pass, for data that
    does not fit in memory; the order is the same either way.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: torch.device,
        cache: bool = True,
        collate_fn: Callable[[list[Any]], Batch] | None = None,
        num_workers: int = 0,
    ) -> None:
        self.dataset = dataset
        self.n_items = len(dataset)  # type: ignore[arg-type]
        if self.n_items == 0:
            raise ValueError("an observed dataset is empty")
        self.device = device
        self._loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            collate_fn=collate_fn,
            num_workers=num_workers,
        )
        self._cached: list[Batch] | None = None
        if cache:
            self._cached = [to_device(b, device) for b in self._loader]

    def __iter__(self) -> Iterator[Batch]:
        if self._cached is not None:
            yield from self._cached
        else:
            for b in self._loader:
                yield to_device(b, self.device)


class MinibatchStream:
    """Endless seeded minibatches for SGLD: shuffled epochs, fixed batch size, no DataLoader.

    A :class:`~torch.utils.data.TensorDataset` is indexed directly; any other dataset is either
    collated whole once (``cache=True``) and indexed, or collated per minibatch from its items.
    If ``batch_size >= len(dataset)`` every step sees the full dataset (full-batch gradient).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: torch.device,
        generator: torch.Generator,
        cache: bool = True,
        collate_fn: Callable[[list[Any]], Batch] | None = None,
    ) -> None:
        self.dataset = dataset
        self.n_items = len(dataset)  # type: ignore[arg-type]
        if self.n_items == 0:
            raise ValueError("the SGLD training dataset is empty")
        self.batch_size = min(batch_size, self.n_items)
        self.generator = generator
        self.collate_fn = collate_fn or default_collate
        self.device = device
        self._full: Batch | None = None
        if isinstance(dataset, TensorDataset):
            self._full = [t.to(device) for t in dataset.tensors]
        elif cache:
            self._full = to_device(
                self.collate_fn([dataset[i] for i in range(self.n_items)]), device
            )
        self._perm = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def state_dict(self) -> dict[str, Any]:
        """Position in the current epoch and the generator state (for exact resumption)."""
        return {"perm": self._perm.clone(), "pos": self._pos, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._perm = state["perm"].clone()
        self._pos = int(state["pos"])
        self.generator.set_state(state["rng"])

    def _next_indices(self) -> torch.Tensor:
        if self.batch_size == self.n_items:
            return torch.arange(self.n_items)
        if self._pos + self.batch_size > len(self._perm):
            self._perm = torch.randperm(self.n_items, generator=self.generator)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx

    def next(self) -> Batch:
        """The next minibatch, on the device."""
        idx = self._next_indices()
        if self._full is not None:
            if self.batch_size == self.n_items:
                return self._full
            return index_batch(self._full, idx)
        items = [self.dataset[i] for i in idx.tolist()]
        return to_device(self.collate_fn(items), self.device)
