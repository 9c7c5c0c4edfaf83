"""Exact answers of :mod:`bifrepro.evaluation.ground_truth`, checked by independent routes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bifrepro.evaluation import ground_truth as gt
from bifrepro.evaluation.lds import spearman_rows


def _logistic_data(n: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(x @ w)).double()
    return x, y


def _gradient_descent(losses, theta0: torch.Tensor, l2: float, weights: torch.Tensor, steps: int):
    """Plain full-batch gradient descent on Σ v_i ℓ_i + (λ/2)|θ|² (an independent retraining)."""
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = (weights * losses(theta)).sum() + 0.5 * l2 * (theta * theta).sum()
        loss.backward()
        opt.step()
    return theta.detach()


def test_loo_by_newton_matches_retraining_by_gradient_descent():
    x, y = _logistic_data(n=30, d=3)
    l2 = 2.0
    losses = gt.logistic_losses(x, y)
    theta = gt.fit_l2(losses, torch.zeros(4, dtype=torch.float64), l2)
    items = [0, 7, 19]
    loo = gt.loo_parameters(losses, theta, l2, items)
    for row, i in zip(loo, items, strict=True):
        weights = torch.ones(30, dtype=torch.float64)
        weights[i] = 0.0
        retrained = _gradient_descent(
            losses, torch.zeros(4, dtype=torch.float64), l2, weights, 3000
        )
        assert torch.allclose(row, retrained, atol=1e-6, rtol=0)


def test_closed_form_logistic_path_matches_autodiff():
    x, y = _logistic_data(n=40, d=3, seed=7)
    losses = gt.logistic_losses(x, y)
    theta = gt.fit_logistic(x, y, 1.5)
    assert torch.allclose(theta, gt.fit_l2(losses, torch.zeros(4, dtype=torch.float64), 1.5))
    fast = gt.logistic_loo_parameters(x, y, 1.5, theta, [3, 30])
    assert torch.allclose(fast, gt.loo_parameters(losses, theta, 1.5, [3, 30]), atol=1e-10)


def test_classical_influence_agrees_with_leave_one_out():
    x, y = _logistic_data(n=100, d=5, seed=1)
    l2 = 1.0
    losses = gt.logistic_losses(x[:80], y[:80])
    query = gt.logistic_losses(x[80:], y[80:])
    theta = gt.fit_logistic(x[:80], y[:80], l2)
    effects = gt.loo_effects(query, theta, gt.logistic_loo_parameters(x[:80], y[:80], l2, theta))
    influence = gt.influence_scores(losses, query, theta, l2)
    assert effects.shape == influence.shape == (20, 80)
    assert spearman_rows(effects, influence).mean() > 0.99


def test_leaving_out_a_copy_of_the_query_raises_its_loss():
    """Sign convention: positive = helpful (the item's removal raises the query loss)."""
    x, y = _logistic_data(n=40, d=3, seed=2)
    x = torch.cat([x, x[:1]])
    y = torch.cat([y, y[:1]])
    losses = gt.logistic_losses(x, y)
    theta = gt.fit_l2(losses, torch.zeros(4, dtype=torch.float64), 1.0)
    query = gt.logistic_losses(x[:1], y[:1])
    effect = gt.loo_effects(query, theta, gt.loo_parameters(losses, theta, 1.0, [40]))
    influence = gt.influence_scores(losses, query, theta, 1.0)
    assert float(effect[0, 0]) > 0
    assert float(influence[0, 40]) > 0


def test_flat_model_losses_reproduce_the_logistic_path():
    x, y = _logistic_data(n=50, d=4, seed=3)
    model = nn.Linear(4, 1)

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        xb, yb = batch
        return F.binary_cross_entropy_with_logits(model(xb).squeeze(-1), yb, reduction="none")

    theta0, losses = gt.flat_model_losses(model, loss_fn, (x, y))
    assert theta0.dtype == torch.float64 and theta0.shape == (5,)
    analytic = gt.logistic_losses(x, y)
    assert torch.allclose(losses(theta0), analytic(theta0), atol=1e-12)
    fitted = gt.fit_l2(losses, theta0, 0.5)
    assert torch.allclose(fitted, gt.fit_l2(analytic, torch.zeros(5, dtype=torch.float64), 0.5))
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched


def test_linear_loss_covariance_matches_monte_carlo():
    g = torch.Generator().manual_seed(4)
    n, d = 30, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    w_star = torch.linalg.lstsq(x, y[:, None]).solution.squeeze(1)
    sigma = gt.gaussian_posterior_covariance(x, nbeta=60.0, localization=5.0)
    r = y - x @ w_star
    exact = gt.linear_loss_covariance(x, r, x, r, sigma)
    draws = torch.distributions.MultivariateNormal(w_star, sigma).sample((200_000,))
    losses = 0.5 * (y[None] - draws @ x.T) ** 2
    empirical = torch.cov(losses.T)
    assert torch.linalg.norm(empirical - exact) / torch.linalg.norm(exact) < 0.03


def test_discrete_covariance_is_the_langevin_stationary_law():
    """Σ_ε solves Σ = (I - εA/2) Σ (I - εA/2) + εI, the AR(1) recursion of full-batch SGLD."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    nbeta, gamma, eps = 40.0, 3.0, 0.01
    precision = torch.linalg.inv(gt.gaussian_posterior_covariance(x, nbeta, gamma))
    sigma = gt.gaussian_posterior_covariance(x, nbeta, gamma, step_size=eps)
    contraction = torch.eye(3, dtype=torch.float64) - eps * precision / 2
    recursion = contraction @ sigma @ contraction + eps * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(sigma, recursion, atol=1e-10)


def test_newton_reports_non_convergence():
    x, y = _logistic_data(n=20, d=2, seed=6)
    with pytest.raises(gt.NewtonDidNotConvergeError):
        gt.newton_minimize(
            lambda t: gt.logistic_losses(x, y)(t).sum() + 1e-3 * (t * t).sum(),
            torch.full((3,), 50.0, dtype=torch.float64),
            max_iter=1,
        )
