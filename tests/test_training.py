"""The deterministic training loop."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.training import TrainConfig, accuracy, train_model


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] > 0).long()
    return TensorDataset(x, y)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_training_learns_and_is_deterministic():
    ds = _data()
    a, b = _model(), _model()
    cfg = TrainConfig(epochs=15, batch_size=32, lr=1e-2, seed=3)
    hist = train_model(a, ds, cfg, progress=False)
    train_model(b, ds, cfg, progress=False)
    assert hist[-1] < hist[0]
    assert accuracy(a, ds) > 0.9
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_train_config_validation():
    with pytest.raises(ValueError, match="TrainConfig.lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="TrainConfig.optimizer"):
        TrainConfig(optimizer="lbfgs")
