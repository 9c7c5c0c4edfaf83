"""Small models built locally (no downloads): shared by tests and the embedded-scale experiments.

* :class:`SmallCNN`: a conv classifier (Conv2d + Linear only, so kronfluence tracks every layer)
  for MNIST-like ``[B, C, H, W]`` images of any size (adaptive pooling).
* :class:`MLPClassifier`: a tiny multilayer perceptron, small enough for exact influence.
* :func:`tiny_causal_lm`: a Llama-style Hugging Face causal LM whose every weight matrix is an
  ``nn.Linear`` (GPT-2's ``Conv1D`` layers would be invisible to kronfluence).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN", "MLPClassifier", "tiny_causal_lm", "count_parameters"]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class SmallCNN(nn.Module):
    """``conv(3×3)-ReLU-maxpool`` × 2, adaptive average pooling, then a two-layer head.

    Args:
        in_channels: image channels (1 for MNIST).
        num_classes: output classes.
        width: channels of the first conv layer (the second has ``2 * width``).
        hidden: width of the hidden linear layer.
        pool_size: side of the adaptive-pooled feature map fed to the head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 8,
        hidden: int = 32,
        pool_size: int = 2,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(pool_size),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * pool_size * pool_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLPClassifier(nn.Module):
    """``Linear-tanh`` hidden layers then a linear output: smooth, so its Hessian is informative."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (16,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.Tanh()]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(nn.Flatten(), *layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_causal_lm(
    vocab_size: int = 64,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 128,
    seed: int = 0,
) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` with tiny sizes (all projections ``nn.Linear``).

    Word embeddings are untied from the output head so ``lm_head`` is a separate ``nn.Linear``.
    Attention uses the eager implementation, which ``torch.func`` transforms support.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return model
