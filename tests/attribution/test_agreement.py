"""Agreement with ground truth on small models: exact IF vs retraining, EK-FAC and BIF vs exact IF,
GradSim vs a brute-force cosine."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch.utils.data import TensorDataset

from bifrepro.attribution.base import ClassificationTask
from bifrepro.attribution.configs import (
    BIFMethodConfig,
    EKFACConfig,
    ExactIFConfig,
    GradSimConfig,
)
from bifrepro.attribution.registry import build_attributor
from bifrepro.models.small import MLPClassifier
from bifrepro.sampling import SGLDConfig
from tests.attribution._problems import blobs_problem


def mean_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.mean([spearmanr(a[i], b[i]).statistic for i in range(a.shape[0])]))


def _logistic_regression(damping: float):
    """Multinomial logistic regression trained (float64) on CE + (λ/2)|w|², plus its data."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(40, generator=g, dtype=torch.float64) > 0).long()
    y = y + (x[:, 1] > 1).long()
    model = MLPClassifier(3, 3, hidden=()).double()
    task = ClassificationTask()

    def train(weights: torch.Tensor) -> None:
        opt = torch.optim.LBFGS(
            model.parameters(),
            max_iter=500,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-13,
            tolerance_change=1e-16,
        )

        def closure():
            opt.zero_grad()
            loss = (weights * task.train_loss(model, [x, y])).sum() / len(x)
            loss = loss + damping / 2 * sum((p**2).sum() for p in model.parameters())
            loss.backward()
            return loss

        opt.step(closure)

    return model, task, x, y, train


def test_exact_if_matches_finite_difference_retraining() -> None:
    """On a convex, L2-regularised model, damped IF is exact: score = -dφ/dε by retraining."""
    lam, eps = 0.1, 1e-3
    model, task, x, y, train = _logistic_regression(lam)
    train(torch.ones(len(x), dtype=torch.float64))
    w_star = copy.deepcopy(model.state_dict())
    query = TensorDataset(x[:2] + 0.3, y[:2])
    scores = (
        build_attributor(ExactIFConfig(damping=lam))
        .fit(model, task, TensorDataset(x, y))
        .score(query)
    )

    def phi_after_upweighting(i: int, by: float) -> torch.Tensor:
        weights = torch.ones(len(x), dtype=torch.float64)
        weights[i] += by * len(x)  # objective: mean(ℓ) + by·ℓ_i (+ L2)
        model.load_state_dict(w_star)
        train(weights)
        with torch.no_grad():
            return task.measurement(model, list(query.tensors))

    for i in (0, 5, 17):  # central difference of the query measurement
        dphi = (phi_after_upweighting(i, eps) - phi_after_upweighting(i, -eps)) / (2 * eps)
        torch.testing.assert_close(scores[:, i].double(), -dphi, rtol=1e-4, atol=1e-7)
    model.load_state_dict(w_star)


def test_gauss_newton_equals_hessian_for_a_linear_model() -> None:
    """For logistic regression the loss is convex in the logits, which are linear in w: GGN = H."""
    lam = 0.1
    model, task, x, y, train = _logistic_regression(lam)
    train(torch.ones(len(x), dtype=torch.float64))
    data = TensorDataset(x, y)
    h = build_attributor(ExactIFConfig(curvature="hessian")).fit(model, task, data).curvature
    gn = build_attributor(ExactIFConfig(curvature="gauss_newton")).fit(model, task, data).curvature
    torch.testing.assert_close(gn, h, rtol=1e-8, atol=1e-10)


def test_ekfac_agrees_with_exact_gauss_newton_influence() -> None:
    """EK-FAC approximates the GGN; per-query Spearman with exact damped IF, above GradDot's."""
    p = blobs_problem()
    lam = 0.1
    exact = build_attributor(ExactIFConfig(curvature="gauss_newton", damping=lam))
    exact = exact.fit(p.model, p.task, p.train).score(p.query)
    ekfac = build_attributor(EKFACConfig(damping=lam)).fit(p.model, p.task, p.train).score(p.query)
    identity = build_attributor(EKFACConfig(strategy="identity", damping=lam))
    identity = identity.fit(p.model, p.task, p.train).score(p.query)
    rho_ekfac, rho_identity = mean_spearman(ekfac, exact), mean_spearman(identity, exact)
    assert rho_ekfac >= 0.7, rho_ekfac
    assert rho_ekfac > rho_identity, (rho_ekfac, rho_identity)


def test_bif_covariance_matches_damped_influence_at_large_localization() -> None:
    """Laplace: Cov(ℓ_i, φ) ≈ ∇φᵀ (nβ H + γ I)⁻¹ ∇ℓ_i = (1/nβ) ∇φᵀ (H + (γ/nβ) I)⁻¹ ∇ℓ_i."""
    p = blobs_problem()
    nbeta, gamma = 1000.0, 10000.0
    sampler = SGLDConfig(
        step_size=2e-5,
        nbeta=nbeta,
        localization=gamma,
        num_chains=4,
        num_draws=300,
        burn_in=100,
        batch_size=len(p.train),
        seed=0,
    )
    bif = build_attributor(BIFMethodConfig(normalize="covariance", sampler=sampler))
    cov = bif.fit(p.model, p.task, p.train).score(p.query).double()
    assert bif.traces is not None and bif.traces.diagnostics.is_healthy
    exact = build_attributor(ExactIFConfig(damping=gamma / nbeta)).fit(p.model, p.task, p.train)
    laplace = exact.score(p.query).double() / nbeta
    assert mean_spearman(cov, laplace) >= 0.9
    assert np.corrcoef(cov.flatten(), laplace.flatten())[0, 1] >= 0.97
    scale = float((cov * laplace).sum() / (laplace * laplace).sum())
    assert 0.8 <= scale <= 1.5, scale  # leading order; higher-order terms and ε bias add a little


def _brute_force_gradients(model, fn, data: TensorDataset) -> torch.Tensor:
    rows = []
    for i in range(len(data)):
        model.zero_grad()
        fn(model, [t[i : i + 1] for t in data.tensors]).sum().backward()
        rows.append(torch.cat([q.grad.reshape(-1) for q in model.parameters()]))
    model.zero_grad()
    return torch.stack(rows)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_gradsim_matches_brute_force(similarity: str) -> None:
    p = blobs_problem()
    work = copy.deepcopy(p.model)
    g_train = _brute_force_gradients(work, p.task.train_loss, p.train)
    g_query = _brute_force_gradients(work, p.task.measurement, p.query)
    if similarity == "cosine":
        g_train = g_train / g_train.norm(dim=1, keepdim=True)
        g_query = g_query / g_query.norm(dim=1, keepdim=True)
    expected = g_query @ g_train.T
    cached = build_attributor(GradSimConfig(similarity=similarity, chunk_size=50))
    streamed = build_attributor(
        GradSimConfig(similarity=similarity, chunk_size=7, max_cache_mb=0.0)
    )
    for attributor in (cached, streamed):
        scores = attributor.fit(p.model, p.task, p.train).score(p.query)
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    assert cached._train_features is not None and streamed._train_features is None


def test_gradsim_projection_preserves_cosines() -> None:
    p = blobs_problem()
    exact = build_attributor(GradSimConfig()).fit(p.model, p.task, p.train).score(p.query)
    proj = build_attributor(GradSimConfig(proj_dim=4096, chunk_size=64))
    projected = proj.fit(p.model, p.task, p.train).score(p.query)
    assert np.corrcoef(exact.flatten(), projected.flatten())[0, 1] >= 0.99
    assert (projected - exact).abs().mean() < 0.03  # JL error ~ 1/sqrt(k)
    again = build_attributor(GradSimConfig(proj_dim=4096, chunk_size=13, max_cache_mb=0.0))
    torch.testing.assert_close(again.fit(p.model, p.task, p.train).score(p.query), projected)
