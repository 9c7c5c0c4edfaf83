"""ResNet-9: builds offline, runs forward and backward on random images, has the known size."""

from __future__ import annotations

import pytest
import torch

from bifrepro.attribution.ekfac import supported_modules
from bifrepro.models.resnet9 import ResNet9, ResNet9Config
from bifrepro.models.small import count_parameters


def test_forward_backward_on_random_cifar_sized_images() -> None:
    torch.manual_seed(0)
    model = ResNet9(in_channels=3, num_classes=10, width=8)
    x = torch.randn(4, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # 8x8 inputs survive the three poolings; eval mode is deterministic
    model.eval()
    small = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(small), model(small))


def test_parameter_count_matches_the_original_network() -> None:
    # docs/science.md §6: width 16 / 32 / 64 have about 0.4 / 1.6 / 6.6 M parameters
    for width, millions in ((16, 0.4), (32, 1.6), (64, 6.6)):
        n = count_parameters(ResNet9(width=width))
        assert n / 1e6 == pytest.approx(millions, rel=0.06), width


def test_every_weight_matrix_is_visible_to_kronfluence() -> None:
    model = ResNet9(width=4)
    tracked = supported_modules(model)
    assert len(tracked) == 9  # 8 convolutions + the classifier


def test_config_validates_and_gives_a_train_config() -> None:
    cfg = ResNet9Config(width=16, epochs=3, lr=0.1)
    tc = cfg.train_config(seed=4)
    assert (tc.epochs, tc.lr, tc.seed, tc.optimizer) == (3, 0.1, 4, "sgd")
    with pytest.raises(ValueError, match="width"):
        ResNet9Config(width=0)
    with pytest.raises(ValueError, match="lr"):
        ResNet9Config(lr=-1.0)


@pytest.mark.parametrize("field", ["scale", "lr", "weight_decay"])
def test_config_refuses_non_finite_numbers(field: str) -> None:
    with pytest.raises(ValueError, match=rf"ResNet9Config\.{field}=inf is invalid"):
        ResNet9Config(**{field: float("inf")})
