"""The estimator against the exact answer: linear regression, where the local posterior is Gaussian.

With l_i = ½(y_i - x_iᵀw)², w* the least-squares fit and posterior precision
A = (nβ/n)·XᵀX + γI, δ = w - w* ~ N(0, Σ) and Cov(l_i, l_j) = r_i r_j s_ij + ½ s_ij² with
s_ij = x_iᵀ Σ x_j (see docs/science.md). Unadjusted Langevin with full-batch gradients has the Gaussian
stationary law N(w*, Σ_ε), Σ_ε = (A·(I - εA/4))⁻¹, so the implementation can be checked against
Σ_ε tightly and against the continuous-time Σ up to the O(ε) discretisation bias.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from bifrepro.attribution import bif_scores
from bifrepro.sampling import SGLDConfig, sample_loss_traces
from tests.sampling._models import gaussian_regression


def _problem(n: int = 40, d: int = 3, seed: int = 0):
    return gaussian_regression(n, d, seed)


def _loss(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return 0.5 * (y - model(x).squeeze(-1)) ** 2


def _exact_cov(x, y, w_star, sigma):
    r = y - x @ w_star
    s = x @ sigma @ x.T
    return r[:, None] * r[None, :] * s + 0.5 * s**2


def test_covariance_matches_exact_gaussian_posterior():
    x, y, w_star, model = _problem()
    n, d = x.shape
    nbeta, gamma, eps = 100.0, 20.0, 2e-3
    config = SGLDConfig(
        step_size=eps,
        nbeta=nbeta,
        localization=gamma,
        num_chains=4,
        num_draws=1500,
        burn_in=100,
        thinning=4,
        batch_size=n,
        seed=1,
    )
    ds = TensorDataset(x, y)
    traces = sample_loss_traces(model, _loss, ds, {"train": ds}, config, progress=False)
    estimate = bif_scores(
        traces["train"], traces["train"], normalize="covariance", dtype=torch.float64
    )

    precision = nbeta / n * x.T @ x + gamma * torch.eye(d, dtype=torch.float64)
    sigma_discrete = torch.linalg.inv(
        precision @ (torch.eye(d, dtype=torch.float64) - eps * precision / 4)
    )
    exact_discrete = _exact_cov(x, y, w_star, sigma_discrete)
    exact_continuous = _exact_cov(x, y, w_star, torch.linalg.inv(precision))

    rel_err = torch.linalg.norm(estimate - exact_discrete) / torch.linalg.norm(exact_discrete)
    assert rel_err < 0.12, f"relative Frobenius error vs exact Σ_ε: {rel_err:.3f}"
    rel_cont = torch.linalg.norm(estimate - exact_continuous) / torch.linalg.norm(exact_continuous)
    assert rel_cont < 0.15, f"relative Frobenius error vs continuous Σ: {rel_cont:.3f}"
    # Entry-wise: the estimate tracks the exact matrix closely.
    corr = torch.corrcoef(torch.stack([estimate.flatten(), exact_discrete.flatten()]))[0, 1]
    assert corr > 0.98
    # The positive = helpful sign: a sample covaries positively with itself.
    assert (torch.diagonal(estimate) > 0).all()


def test_weights_sample_the_gaussian_posterior_covariance():
    """Distance from w* at each draw matches E||δ||² = tr Σ_ε."""
    x, y, w_star, model = _problem(seed=3)
    n, d = x.shape
    nbeta, gamma, eps = 100.0, 20.0, 2e-3
    config = SGLDConfig(
        step_size=eps,
        nbeta=nbeta,
        localization=gamma,
        num_chains=2,
        num_draws=1000,
        burn_in=100,
        thinning=4,
        batch_size=n,
        seed=0,
    )
    ds = TensorDataset(x, y)
    traces = sample_loss_traces(model, _loss, ds, {"train": ds}, config, progress=False)
    precision = nbeta / n * x.T @ x + gamma * torch.eye(d, dtype=torch.float64)
    sigma = torch.linalg.inv(precision @ (torch.eye(d, dtype=torch.float64) - eps * precision / 4))
    mean_sq = float((traces.diagnostics.distance**2).mean())
    assert abs(mean_sq / float(torch.trace(sigma)) - 1) < 0.1
