"""Step-halving check on linear regression, where SGLD's discretisation bias is known exactly.

Full-batch SGLD on the Gaussian local posterior of precision A samples N(w*, Σ_ε) with
Σ_ε = (A(I - εA/4))⁻¹: each eigendirection is inflated by 1/(1 - εa/4). The item losses
l_i = ½(y_i - x_iᵀw)² then have Var(l_i) = r_i² s_ii + ½ s_ii², s = XΣ_εXᵀ.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.sampling import SGLDConfig, sample_loss_traces
from bifrepro.sampling.bias_check import step_halving_check, step_halving_stats, total_variance
from bifrepro.sampling.health import HealthCheck
from tests.sampling._models import gaussian_regression

NBETA, GAMMA = 100.0, 20.0


def _problem(n: int = 40, d: int = 3, seed: int = 0):
    x, y, w_star, model = gaussian_regression(n, d, seed)
    precision = NBETA / n * x.T @ x + GAMMA * torch.eye(d, dtype=torch.float64)
    return TensorDataset(x, y), model, w_star, precision


def _loss(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return 0.5 * (y - model(x).squeeze(-1)) ** 2


@pytest.fixture(scope="module")
def problem():
    return _problem()


def _run(problem, eps: float, draws: int, burn_in: int, seed: int):
    data, model, _, _ = problem
    cfg = SGLDConfig(
        step_size=eps,
        nbeta=NBETA,
        localization=GAMMA,
        num_chains=2,
        num_draws=draws,
        burn_in=burn_in,
        thinning=2,
        batch_size=len(data),
        seed=seed,
    )
    return sample_loss_traces(model, _loss, data, {"train": data}, cfg, progress=False)


def _pair(problem, eps_times_lam: float, seed: int = 1):
    """Pilots at ε (ε·λ_max(A) given) and at ε/2 with twice the draws and burn-in."""
    lam = float(torch.linalg.eigvalsh(problem[3]).max())
    eps = eps_times_lam / lam
    return eps, _run(problem, eps, 100, 50, seed), _run(problem, eps / 2, 200, 100, seed + 100)


def _exact_total_variance(problem, eps: float) -> float:
    data, _, w_star, a = problem
    x, y = data.tensors
    eye = torch.eye(len(a), dtype=torch.float64)
    sigma = torch.linalg.inv(a @ (eye - eps * a / 4))
    s = torch.diagonal(x @ sigma @ x.T)
    r = y - x @ w_star
    return float((r**2 * s + 0.5 * s**2).mean())


def test_large_step_fails_the_check_with_the_numbers(problem):
    eps, at_eps, at_half = _pair(problem, 3.0)
    check = step_halving_check(at_eps, at_half)
    assert isinstance(check, HealthCheck) and check.name == "step_halving"
    assert not check.passed and check.value > 1
    assert "variance" in check.detail and "lower ε" in check.detail
    # The measured inflation is the exact one (stiffest direction: 1/(1-3/4) = 4 vs 1.6).
    exact = _exact_total_variance(problem, eps) / _exact_total_variance(problem, eps / 2)
    stats = step_halving_stats(at_eps, at_half)
    assert exact > 2
    assert stats["variance_ratio"] == pytest.approx(exact, rel=0.15)
    assert stats["variance_z"] > 3 and stats["mean_z"] > 0


def test_small_step_passes(problem):
    eps, at_eps, at_half = _pair(problem, 0.2)
    check = step_halving_check(at_eps, at_half)
    assert check.passed, check.detail
    exact = _exact_total_variance(problem, eps) / _exact_total_variance(problem, eps / 2)
    assert exact < 1.03  # the bias left at ε·λ_max = 0.2 is below the pilots' Monte Carlo error


def test_each_statistic_alone_detects_the_bias(problem):
    _, at_eps, at_half = _pair(problem, 3.0, seed=7)
    # The scores' pattern alone (a correlation ignores a uniform inflation, not this one).
    assert step_halving_stats(at_eps, at_half)["share_beyond"] > 0.1
    # The variance alone: with an unreachable share limit only the variance z can fail.
    assert not step_halving_check(at_eps, at_half, max_share=1.0).passed


def test_same_step_twice_passes_and_queries_are_used_when_present(problem):
    _, at_eps, _ = _pair(problem, 1.0)
    again = _run(problem, float(at_eps.config.step_size), 100, 50, seed=55)
    assert step_halving_check(at_eps, again).passed
    # With a "query" observable the scores are query × train (here 5 queries × 40 items).
    qa = {"query": at_eps["train"][:, :, :5], "train": at_eps["train"]}
    qb = {"query": again["train"][:, :, :5], "train": again["train"]}
    assert step_halving_stats(qa, qb)["num_scores"] == 5 * 40
    assert step_halving_stats(at_eps, again)["num_scores"] == 40 * 41 / 2


def test_total_variance_and_its_standard_error_on_iid_draws():
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(4, 400, 10, generator=g, dtype=torch.float64)
    value, se = total_variance(x)
    assert value == pytest.approx(4.0, rel=0.05)
    # iid Gaussian: Var(x²-type mean over 10 items) = 2σ⁴/10 per draw, 1600 draws.
    assert se == pytest.approx((2 * 16 / 10 / 1600) ** 0.5, rel=0.4)


def test_non_finite_traces_fail():
    x = torch.randn(2, 40, 6, dtype=torch.float64)
    bad = x.clone()
    bad[0, 3, 2] = float("nan")
    check = step_halving_check({"train": x}, {"train": bad})
    assert not check.passed and "NaN" in check.detail
