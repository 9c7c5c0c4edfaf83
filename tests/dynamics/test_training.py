"""Batched weighted deep-linear training, checked against plain PyTorch training."""

from __future__ import annotations

import torch

from bifrepro.data.hierarchy import make_hierarchy
from bifrepro.dynamics.training import leave_one_out_weights, train_deep_linear_weighted
from bifrepro.models.linear import DeepLinearNetwork, per_item_squared_error


def _setup():
    h = make_hierarchy()
    net = DeepLinearNetwork(
        8, 15, hidden=6, init_scale=0.1, generator=torch.Generator().manual_seed(0)
    )
    return h, net


def test_leave_one_out_weights() -> None:
    w = leave_one_out_weights(3)
    assert w.tolist() == [[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]]


def _reference(net: DeepLinearNetwork, x, y, keep: torch.Tensor, lr: float, steps: int):
    """Plain SGD on (1/P) sum_k keep_k l_k with an nn.Module, float64."""
    ref = DeepLinearNetwork(8, 15, hidden=6).double()
    ref.load_weights([w.double() for w in net.weights()])
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = (keep * per_item_squared_error(ref, (x, y))).sum() / x.shape[0]
        loss.backward()
        opt.step()
    return ref


def test_members_match_independent_training() -> None:
    h, net = _setup()
    x, y = h.inputs.double(), h.targets.double()
    res = train_deep_linear_weighted(
        net.weights(),
        h.inputs,
        h.targets,
        leave_one_out_weights(8),
        lr=0.2,
        steps=30,
        record_steps=[0, 10, 30],
    )
    assert res.steps == [0, 10, 30]
    assert res.losses.shape == (9, 3, 8)
    full = _reference(net, x, y, torch.ones(8, dtype=torch.float64), 0.2, 30)
    for k, w in enumerate(full.weights()):
        assert torch.allclose(res.weights[2][k][0], w, atol=1e-12)
    keep = torch.ones(8, dtype=torch.float64)
    keep[3] = 0.0
    without3 = _reference(net, x, y, keep, 0.2, 30)
    for k, w in enumerate(without3.weights()):
        assert torch.allclose(res.weights[2][k][4], w, atol=1e-12)  # member 3 + 1
    # recorded losses are the unweighted losses of the recorded weights
    assert torch.allclose(res.losses[4, 2], per_item_squared_error(without3, (x, y)), atol=1e-12)
    # at step 0 every member is the initialisation
    assert torch.allclose(res.losses[:, 0], res.losses[0:1, 0].expand(9, 8))


def test_removed_item_never_moves_its_input_weights() -> None:
    """One-hot inputs: without item i, column i of W_1 gets no gradient at all."""
    h, net = _setup()
    res = train_deep_linear_weighted(
        net.weights(),
        h.inputs,
        h.targets,
        leave_one_out_weights(8),
        lr=0.2,
        steps=20,
        record_steps=[20],
    )
    w1_init = net.weights()[0].double()
    w1_without5 = res.weights[0][0][6]
    assert torch.equal(w1_without5[:, 5], w1_init[:, 5])
    assert not torch.allclose(res.weights[0][0][0][:, 5], w1_init[:, 5])


def test_maps_are_member_zero_end_to_end() -> None:
    h, net = _setup()
    res = train_deep_linear_weighted(
        net.weights(),
        h.inputs,
        h.targets,
        torch.ones(1, 8),
        lr=0.1,
        steps=6,
        record_steps=[6],
        map_every=3,
    )
    assert res.map_steps == [0, 3, 6]
    w1, w2 = res.weights[0]
    assert torch.allclose(res.maps[-1], w2[0] @ w1[0])
