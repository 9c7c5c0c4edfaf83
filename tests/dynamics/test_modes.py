"""Mode strengths, transition times and the analytic influence, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bifrepro.data.hierarchy import make_hierarchy
from bifrepro.dynamics.modes import (
    analytic_loss_covariance,
    covariance_to_correlation,
    level_transition_steps,
    mode_strengths,
    output_mode_vectors,
    transition_steps,
)

DOG, CAT, SPARROW, ROSE = 0, 1, 2, 4


@pytest.fixture(scope="module")
def tree():
    h = make_hierarchy()
    u = output_mode_vectors(h.targets, h.mode_vectors, h.singular_values)
    return h, u


def test_output_vectors_are_orthonormal(tree) -> None:
    h, u = tree
    assert torch.allclose(u.T @ u, torch.eye(8, dtype=torch.float64), atol=1e-12)


def test_strengths_of_the_target_map_are_the_singular_values(tree) -> None:
    h, u = tree
    w_target = h.targets.double().T  # the map that fits the data exactly
    a = mode_strengths(w_target, u, h.mode_vectors)
    assert a.tolist() == pytest.approx(h.singular_values.tolist(), abs=1e-12)
    assert mode_strengths(torch.zeros(2, 15, 8), u, h.mode_vectors).abs().max() == 0
    half = mode_strengths(0.5 * w_target, u, h.mode_vectors)
    assert half.tolist() == pytest.approx((0.5 * h.singular_values).tolist(), abs=1e-12)


def test_transition_step_interpolates_in_log_time() -> None:
    s = torch.tensor([2.0, 1.0])
    a = torch.tensor([[0.0, 0.0], [0.5, 0.1], [1.5, 0.2], [2.0, 0.3]])
    t = transition_steps(a, s, [1, 10, 100, 1000])
    # mode 0: a/s goes 0.25 -> 0.75 between steps 10 and 100: halfway in log time = sqrt(1000)
    assert t[0] == pytest.approx(math.sqrt(1000))
    assert math.isnan(t[1])  # never reaches half
    assert level_transition_steps(np.array([10.0, 30.0, 100.0]), (0, 1, 1)).tolist() == [10.0, 65.0]


def test_no_influence_before_anything_is_learned(tree) -> None:
    h, _ = tree
    cov = analytic_loss_covariance(torch.zeros(8), h.singular_values, h.mode_vectors, num_layers=2)
    assert cov.abs().max() == 0


def test_helpful_while_shared_modes_are_learned_by_hand(tree) -> None:
    h, _ = tree
    s = h.singular_values
    # only the uniform mode learned: residual overlap of dog and sparrow is 2 - 15/8 = 1/8,
    # representation overlap a_1 v_dog v_sparrow = sqrt(15)/8 -> +sqrt(15)/64
    a = torch.zeros(8, dtype=torch.float64)
    a[0] = s[0]
    cov = analytic_loss_covariance(a, s, h.mode_vectors, num_layers=2)
    assert cov[SPARROW, DOG].item() == pytest.approx(math.sqrt(15) / 64)
    # dog and rose share only the uniform mode: residual overlap 1 - 15/8 < 0: already harmful
    assert cov[ROSE, DOG].item() == pytest.approx((1 - 15 / 8) * math.sqrt(15) / 8)


def test_harmful_once_only_the_separating_mode_is_left_by_hand(tree) -> None:
    h, _ = tree
    s = h.singular_values
    a = torch.zeros(8, dtype=torch.float64)
    a[:2] = s[:2]  # uniform and animal/plant learned
    cov = analytic_loss_covariance(a, s, h.mode_vectors, num_layers=2, scale=1e-3)
    expected = (2 - 15 / 8 - 7 / 8) * (math.sqrt(15) + math.sqrt(7)) / 8 * 1e-3
    assert cov[SPARROW, DOG].item() == pytest.approx(expected)
    assert cov[SPARROW, DOG] < 0
    # all modes learned: no residual, no influence
    full = analytic_loss_covariance(s.clone(), s, h.mode_vectors)
    assert full.abs().max() < 1e-12


def test_one_layer_is_linear_regression(tree) -> None:
    h, _ = tree
    # W itself is the parameter: grad l_i = -r_i e_i^T, so Cov ~ (r_i . r_j)(e_i . e_j): diagonal
    cov = analytic_loss_covariance(torch.zeros(8), h.singular_values, h.mode_vectors, num_layers=1)
    assert torch.allclose(cov, 4.0 * torch.eye(8, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("num_layers", [2, 3])
def test_matches_exact_gradient_products_of_a_balanced_network(tree, num_layers: int) -> None:
    """The formula equals sigma^2 grad l_i . grad l_j computed by autograd."""
    h, u = tree
    s = h.singular_values
    a = torch.tensor([3.5, 2.0, 1.0, 0.3, 0.2, 0.05, 0.0, 0.01], dtype=torch.float64)
    root = a ** (1.0 / num_layers)
    v = h.mode_vectors
    # balanced factors: W_1 = D V^T, W_k = D (middle), W_L = U D, D = diag(a^(1/L))
    mats = (
        [torch.diag(root) @ v.T]
        + [torch.diag(root) for _ in range(num_layers - 2)]
        + [u @ torch.diag(root)]
    )
    params = [m.clone().requires_grad_(True) for m in mats]
    x, y = h.inputs.double(), h.targets.double()
    grads = []
    for i in range(8):
        out = x[i]
        for w in params:
            out = w @ out
        loss = 0.5 * (out - y[i]).pow(2).sum()
        g = torch.autograd.grad(loss, params)
        grads.append(torch.cat([gi.flatten() for gi in g]))
    gmat = torch.stack(grads)
    exact = 0.01 * gmat @ gmat.T
    cov = analytic_loss_covariance(a, s, v, num_layers=num_layers, scale=0.01)
    assert torch.allclose(cov, exact, atol=1e-10, rtol=1e-8)


def test_correlation_from_covariance() -> None:
    cov = torch.tensor([[4.0, -2.0, 0.0], [-2.0, 9.0, 0.0], [0.0, 0.0, 0.0]])
    corr = covariance_to_correlation(cov)
    assert corr[0, 1].item() == pytest.approx(-2.0 / 6.0)
    assert corr[0, 0].item() == pytest.approx(1.0)
    assert corr[2, 2].item() == 0.0 and corr[0, 2].item() == 0.0
