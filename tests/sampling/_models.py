"""Tiny models and data shared by the sampling tests."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset


def regression_problem(n: int = 40, d: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, generator=g) + 0.5 * torch.randn(n, generator=g)
    w_star = torch.linalg.lstsq(x, y[:, None]).solution.squeeze(1)
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w_star[None])
    return x, y, model


def gaussian_regression(n: int = 40, d: int = 3, seed: int = 0):
    """Float64 least squares at its minimum w*: the local posterior is Gaussian, known exactly.
    Returns ``x, y, w_star, model``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    w_star = torch.linalg.lstsq(x, y[:, None]).solution.squeeze(1)
    model = torch.nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w_star[None])
    return x, y, w_star, model


def mse_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return 0.5 * (y - model(x).squeeze(-1)) ** 2


class DictDataset(Dataset):
    """A non-TensorDataset with dict items (exercises the generic collate path)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def dict_mse_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    return 0.5 * (batch["y"] - model(batch["x"]).squeeze(-1)) ** 2


def small_mlp_problem(n: int = 64, seed: int = 0):
    """A small trained classifier (a few hundred parameters)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return TensorDataset(x, y), model


def ce_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y, reduction="none")
