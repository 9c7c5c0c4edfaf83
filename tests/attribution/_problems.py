"""Small attribution problems with known answers, shared by the attribution tests.

Every problem plants, for each query, an exact copy of it in the training set (which must be among
the most helpful items) and the same input with a wrong label (which must be harmful).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from bifrepro.attribution.base import AttributionTask, CausalLMTask, ClassificationTask
from bifrepro.models.small import MLPClassifier, SmallCNN, tiny_causal_lm


@dataclass
class Problem:
    model: nn.Module
    task: AttributionTask
    train: TensorDataset
    query: TensorDataset
    copy_idx: torch.Tensor  # training index of each query's exact copy
    wrong_idx: torch.Tensor | None  # training index of each query's mislabelled copy


def _plant(x: torch.Tensor, y: torch.Tensor, n_query: int, num_classes: int):
    """Split off queries and append their copies and mislabelled copies to the training set."""
    xq, yq = x[-n_query:], y[-n_query:]
    x, y = x[:-n_query], y[:-n_query]
    n = x.shape[0]
    wrong = (yq + 1) % num_classes
    xt, yt = torch.cat([x, xq, xq]), torch.cat([y, yq, wrong])
    copy_idx = torch.arange(n, n + n_query)
    wrong_idx = torch.arange(n + n_query, n + 2 * n_query)
    return TensorDataset(xt, yt), TensorDataset(xq, yq), copy_idx, wrong_idx


def _fit_lbfgs(model: nn.Module, task: AttributionTask, batch, weight_decay: float) -> None:
    opt = torch.optim.LBFGS(
        model.parameters(),
        max_iter=1500,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
    )

    def closure():
        opt.zero_grad()
        loss = task.train_loss(model, batch).mean()
        loss = loss + weight_decay / 2 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)


@functools.cache
def blobs_problem(
    n: int = 300,
    n_query: int = 8,
    dim: int = 6,
    classes: int = 3,
    hidden: int = 8,
    spread: float = 2.0,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> Problem:
    """A tanh MLP (83 parameters) on overlapping Gaussian blobs, trained to convergence."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * spread
    y = torch.randint(0, classes, (n + n_query,), generator=g)
    x = centers[y] + torch.randn(n + n_query, dim, generator=g)
    train, query, copy_idx, wrong_idx = _plant(x, y, n_query, classes)
    torch.manual_seed(seed)
    model = MLPClassifier(dim, classes, (hidden,))
    task = ClassificationTask()
    _fit_lbfgs(model, task, list(train.tensors), weight_decay)
    model.eval()
    return Problem(model, task, train, query, copy_idx, wrong_idx)


@functools.cache
def image_problem(n: int = 120, n_query: int = 4, classes: int = 3, seed: int = 0) -> Problem:
    """A SmallCNN (~1k parameters) on 8×8 images: a class-specific pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 1, 8, 8, generator=g)
    y = torch.randint(0, classes, (n + n_query,), generator=g)
    x = patterns[y] + 1.5 * torch.randn(n + n_query, 1, 8, 8, generator=g)
    train, query, copy_idx, wrong_idx = _plant(x, y, n_query, classes)
    torch.manual_seed(seed)
    model = SmallCNN(in_channels=1, num_classes=classes, width=4, hidden=16)
    task = ClassificationTask()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = train.tensors
    for _ in range(150):
        opt.zero_grad()
        task.train_loss(model, [xt, yt]).mean().backward()
        opt.step()
    model.eval()
    return Problem(model, task, train, query, copy_idx, wrong_idx)


@functools.cache
def lm_problem(n: int = 24, n_query: int = 2, length: int = 12, seed: int = 0) -> Problem:
    """A tiny Llama on random token sequences; each query sequence also appears in training."""
    g = torch.Generator().manual_seed(seed)
    vocab = 32
    seqs = torch.randint(0, vocab, (n + n_query, length), generator=g)
    query_ids = seqs[-n_query:]
    train_ids = torch.cat([seqs[:-n_query], query_ids])
    copy_idx = torch.arange(n, n + n_query)
    model = tiny_causal_lm(vocab_size=vocab, hidden_size=16, num_layers=1, num_heads=2, seed=seed)
    task = CausalLMTask()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(60):
        opt.zero_grad()
        task.train_loss(model, train_ids).mean().backward()
        opt.step()
    model.eval()
    return Problem(model, task, TensorDataset(train_ids), TensorDataset(query_ids), copy_idx, None)


def rank_of(scores: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rank (0 = most helpful) of training item ``idx[q]`` among query ``q``'s scores."""
    order = scores.argsort(dim=1, descending=True)
    return (order == idx[:, None]).float().argmax(dim=1)
