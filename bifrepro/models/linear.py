"""Deep linear networks: the solvable model of stagewise learning (Saxe, McClelland & Ganguli).

A stack of bias-free ``nn.Linear`` layers with no nonlinearity. The network computes a linear map
``W = W_L ⋯ W_1``, but gradient descent on the factors from a small initialisation learns the
singular modes of the input-output correlation one after another, strongest first: the stages.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DeepLinearNetwork", "per_item_squared_error"]


class DeepLinearNetwork(nn.Module):
    """``x -> W_L ⋯ W_1 x`` with bias-free linear layers and small Gaussian initialisation.

    Args:
        in_features: input dimension.
        out_features: output dimension.
        hidden: width of every hidden layer.
        num_layers: number of weight matrices (>= 1; 2 = one hidden layer).
        init_scale: standard deviation of every initial weight (small => stagewise learning).
        generator: optional ``torch.Generator`` for a reproducible initialisation.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 16,
        num_layers: int = 2,
        init_scale: float = 1e-3,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers} must be >= 1")
        if hidden < 1 or in_features < 1 or out_features < 1:
            raise ValueError("layer widths must be >= 1")
        if not init_scale > 0:
            raise ValueError(f"init_scale={init_scale} must be > 0")
        dims = [in_features] + [hidden] * (num_layers - 1) + [out_features]
        self.layers = nn.ModuleList(
            nn.Linear(dims[k], dims[k + 1], bias=False) for k in range(num_layers)
        )
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(
                    torch.randn(layer.weight.shape, generator=generator) * init_scale
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def weights(self) -> list[torch.Tensor]:
        """The weight matrices ``[W_1, ..., W_L]`` (``W_k`` maps layer k-1 to layer k)."""
        return [layer.weight for layer in self.layers]

    def load_weights(self, weights: list[torch.Tensor]) -> DeepLinearNetwork:
        """Copy ``weights`` (as returned by :meth:`weights`) into the layers; returns ``self``."""
        if len(weights) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} weight matrices, got {len(weights)}")
        with torch.no_grad():
            for layer, w in zip(self.layers, weights, strict=True):
                layer.weight.copy_(w)
        return self

    @torch.no_grad()
    def end_to_end(self) -> torch.Tensor:
        """The composed map ``W = W_L ⋯ W_1`` as an ``[out, in]`` matrix."""
        w = self.layers[0].weight
        for layer in self.layers[1:]:
            w = layer.weight @ w
        return w.detach().clone()


def per_item_squared_error(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Per-item loss ``½‖y - f(x)‖²`` (summed over output features), shape ``[B]``.

    The ½-sum convention makes the mean training loss ``(1/2P)‖Yᵀ - W‖²`` for one-hot inputs, so
    mode ``α`` with singular value ``s_α`` is learned on the time scale ``P / (lr · s_α)``.
    """
    x, y = batch[0], batch[1]
    out = model(x)
    return 0.5 * (out - y.to(out.dtype)).pow(2).sum(dim=-1)
