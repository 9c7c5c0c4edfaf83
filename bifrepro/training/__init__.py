"""Deterministic training loops for the small models of the embedded experiments.

Training is a means here (we need a ``w*`` to attribute, and retrained models for LDS), so the
loops are short and plain: seeded shuffling, Adam or SGD, fixed epochs, optional progress bar.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from bifrepro.data.batches import to_device
from bifrepro.validation import finite_numbers

__all__ = ["TrainConfig", "train_model", "classification_loss", "accuracy"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of :func:`train_model` (OmegaConf-compatible)."""

    #: Passes over the training set.
    epochs: int = 10
    #: Minibatch size.
    batch_size: int = 64
    #: Learning rate.
    lr: float = 1e-3
    #: "adam" or "sgd" (momentum 0.9).
    optimizer: str = "adam"
    #: L2 weight decay.
    weight_decay: float = 0.0
    #: Seed of the initialisation-independent parts (shuffling).
    seed: int = 0

    def __post_init__(self) -> None:
        finite_numbers(self)
        if self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs={self.epochs} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr={self.lr} must be > 0")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"TrainConfig.optimizer={self.optimizer!r} must be 'adam' or 'sgd'")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay={self.weight_decay} must be >= 0")


def classification_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Per-item cross-entropy ``[B]`` for ``(x, y)`` batches."""
    x, y = batch[0], batch[1]
    return F.cross_entropy(model(x), y, reduction="none")


def train_model(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = classification_loss,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> list[float]:
    """Train ``model`` in place; return the mean training loss per epoch.

    Deterministic on the CPU for a given model initialisation, dataset and ``config.seed``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    if config.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    gen = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=gen)
    history = []
    for _ in tqdm(
        range(config.epochs),
        desc=desc,
        disable=None if progress is None else not progress,
        leave=False,
    ):
        total, count = 0.0, 0
        for batch in loader:
            batch = to_device(batch, device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {float(loss)}; lower the learning rate"
                )
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch[0])
            count += len(batch[0])
        history.append(total / count)
    model.eval()
    log.debug("%s: final epoch loss %.4f", desc, history[-1])
    return history


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of a classifier on ``(x, y)`` data."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        pred = model(x.to(device)).argmax(-1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / total
