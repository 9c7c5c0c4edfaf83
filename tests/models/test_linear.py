"""Deep linear network and its per-item loss."""

from __future__ import annotations

import pytest
import torch

from bifrepro.models.linear import DeepLinearNetwork, per_item_squared_error


def test_forward_is_the_product_of_the_weights() -> None:
    net = DeepLinearNetwork(
        4, 3, hidden=5, num_layers=3, init_scale=0.5, generator=torch.Generator().manual_seed(0)
    )
    w1, w2, w3 = net.weights()
    x = torch.randn(7, 4)
    assert torch.allclose(net(x), x @ (w3 @ w2 @ w1).T, atol=1e-6)
    assert torch.allclose(net.end_to_end(), w3 @ w2 @ w1)
    assert all(layer.bias is None for layer in net.layers)


def test_init_scale_and_reproducibility() -> None:
    a = DeepLinearNetwork(
        50, 40, hidden=60, init_scale=1e-3, generator=torch.Generator().manual_seed(1)
    )
    b = DeepLinearNetwork(
        50, 40, hidden=60, init_scale=1e-3, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(a.layers[0].weight, b.layers[0].weight)
    std = a.layers[0].weight.std().item()
    assert 0.9e-3 < std < 1.1e-3


def test_load_weights_round_trip() -> None:
    net = DeepLinearNetwork(2, 2, hidden=2)
    new = [torch.eye(2), 2 * torch.eye(2)]
    net.load_weights(new)
    assert torch.equal(net.end_to_end(), 2 * torch.eye(2))
    with pytest.raises(ValueError):
        net.load_weights([torch.eye(2)])


def test_per_item_squared_error_by_hand() -> None:
    net = DeepLinearNetwork(2, 2, hidden=2).load_weights([torch.eye(2), torch.eye(2)])
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    # item 0: output (1, 0), error^2 = 1 -> 0.5; item 1: output (0, 2), error^2 = 1 -> 0.5
    assert per_item_squared_error(net, (x, y)).tolist() == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize("kw", [{"num_layers": 0}, {"init_scale": 0.0}, {"hidden": 0}])
def test_bad_arguments(kw: dict) -> None:
    with pytest.raises(ValueError):
        DeepLinearNetwork(2, 2, **kw)
