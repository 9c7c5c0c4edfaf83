"""ResNet-9 (the fast CIFAR-10 network of Page's DAWNBench entry), as used in LDS benchmarks.

Layout, with base width ``w`` (64 in the original, about 6.6 M parameters; 32 → 1.6 M; 16 → 0.4 M)::

    prep   conv3x3(C→w)  BN ReLU
    layer1 conv3x3(w→2w) BN ReLU maxpool2 + residual[2 × (conv3x3(2w→2w) BN ReLU)]
    layer2 conv3x3(2w→4w) BN ReLU maxpool2
    layer3 conv3x3(4w→8w) BN ReLU maxpool2 + residual[2 × (conv3x3(8w→8w) BN ReLU)]
    head   global max pool, linear(8w→classes), logits × scale (0.125)

Convolutions have no bias (batch norm follows). Only ``nn.Conv2d`` and ``nn.Linear`` carry
weights besides batch norm, so kronfluence tracks every weight matrix. Built locally with random
weights: nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bifrepro.training import TrainConfig
from bifrepro.validation import finite_numbers

__all__ = ["ResNet9", "ResNet9Config"]


@dataclass
class ResNet9Config:
    """ResNet-9 and its training recipe; Hydra group ``model=resnet9``."""

    #: Model name (MLflow tag ``model``).
    name: str = "resnet9"
    #: Base width ``w`` (channels w, 2w, 4w, 8w; 64 is the original network).
    width: int = 64
    #: Logit scale of the original recipe.
    scale: float = 0.125
    #: Training: epochs, minibatch size, learning rate, optimizer ("adam" | "sgd"), weight decay.
    epochs: int = 16
    batch_size: int = 256
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    #: Reuse a cached trained model when the settings and data match.
    cache: bool = True

    def __post_init__(self) -> None:
        finite_numbers(self)
        if not isinstance(self.width, int) or isinstance(self.width, bool) or self.width < 1:
            raise ValueError(f"ResNet9Config.width={self.width!r} is invalid: must be >= 1")
        if not self.scale > 0:
            raise ValueError(f"ResNet9Config.scale={self.scale!r} is invalid: must be > 0")
        self.train_config()  # validates the training fields

    def train_config(self, seed: int = 0) -> TrainConfig:
        """The :class:`~bifrepro.training.TrainConfig` of these settings."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            seed=seed,
        )


def _conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=False),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """ResNet-9 classifier for ``[B, C, H, W]`` images (any size >= 8×8; CIFAR-10 is 32×32).

    Args:
        in_channels: image channels (3 for CIFAR-10).
        num_classes: output classes.
        width: base width ``w`` (channels ``w, 2w, 4w, 8w``).
        scale: multiplier of the logits (0.125 in the original recipe).
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, width: int = 64, scale: float = 0.125
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width={width} must be >= 1")
        w = width
        self.scale = float(scale)
        self.features = nn.Sequential(
            _conv_bn(in_channels, w),
            _conv_bn(w, 2 * w, pool=True),
            _Residual(2 * w),
            _conv_bn(2 * w, 4 * w, pool=True),
            _conv_bn(4 * w, 8 * w, pool=True),
            _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * w, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)) * self.scale
