"""Tiny problems whose exact datamodel is known, shared by the LDS and retraining tests.

One full-batch SGD step from zero weights is exactly additive in the training subset:

* regression ``ℓ_i = ½ (y_i - wᵀx_i)²``: ``w₁ = (lr/|S|) Σ_{i∈S} y_i x_i``, so the query output
  ``f = wᵀx_q = (lr/|S|) Σ_{i∈S} y_i x_iᵀx_q``; the true attribution is ``τ_i ∝ y_i x_iᵀx_q``.
* two-class softmax ``logits = W x`` (no bias): ``W₁ = (lr/|S|) Σ_{i∈S} (e_{y_i} - ½) x_iᵀ``, so
  the query margin ``logit_y - logit_other = (lr/|S|) Σ_{i∈S} s_i x_iᵀx_q`` with ``s_i = +1`` when
  ``y_i = y_q`` and ``-1`` otherwise: same-class items close to the query are helpful.

Subsets of one size share the factor ``lr/|S|``, so Spearman over them is exactly 1 for ``τ``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from bifrepro.attribution.base import AttributionTask


def zero_linear(in_features: int, out_features: int) -> nn.Module:
    """``nn.Linear`` without bias, initialised at zero (the seed does not matter)."""
    layer = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
    return layer


class RegressionTask(AttributionTask):
    """Squared error; the query measurement is ``-prediction`` (so ``f`` = the prediction)."""

    def train_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch[0], batch[1]
        return 0.5 * (y - model(x).squeeze(-1)) ** 2

    def measurement(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return -model(batch[0]).squeeze(-1)

    def describe(self) -> dict[str, Any]:
        return {"task": "test-regression"}


def regression_data(n: int = 40, q: int = 6, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, generator=g)
    xq = torch.randn(q, d, generator=g)
    true = y[None, :] * (xq @ x.T)  # [q, n]
    return TensorDataset(x, y), TensorDataset(xq, torch.zeros(q)), true


def two_class_data(n: int = 40, q: int = 6, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    centres = torch.randn(2, d, generator=g) * 2
    x = centres[y] + torch.randn(n, d, generator=g)
    yq = torch.randint(0, 2, (q,), generator=g)
    xq = centres[yq] + torch.randn(q, d, generator=g)
    s = torch.where(yq[:, None] == y[None, :], 1.0, -1.0)
    true = s * (xq @ x.T)  # [q, n], positive = helpful for the margin
    return TensorDataset(x, y), TensorDataset(xq, yq), true
