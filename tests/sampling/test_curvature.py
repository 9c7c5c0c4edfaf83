"""Curvature the chain sees, against explicit eigen-decompositions on linear regression.

For l_i = ½(y_i - x_iᵀw)² the Hessian of the mean loss is XᵀX/n everywhere, so
A = nβ·XᵀX/n + γI and, with a diagonal preconditioner P, P^½AP^½ are explicit 3×3 matrices.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.sampling import SGLDConfig
from bifrepro.sampling.curvature import (
    preconditioned_top_eigenvalue,
    rmsprop_preconditioner,
    top_hessian_eigenvalue,
)
from tests.sampling._models import mse_loss, regression_problem

NBETA, GAMMA = 100.0, 20.0


def _setup(n: int = 40, d: int = 3):
    x, y, model = regression_problem(n=n, d=d)
    x, y, model = x.double(), y.double(), model.double()
    precision = NBETA * x.T @ x / n + GAMMA * torch.eye(d, dtype=torch.float64)
    return TensorDataset(x, y), model, x, precision


def test_preconditioned_power_iteration_matches_the_explicit_eigenvalue():
    data, model, _, precision = _setup()
    # A strongly anisotropic P: the top direction of P^½AP^½ differs from A's.
    p = torch.tensor([[4.0, 0.5, 9.0]], dtype=torch.float64)
    root = torch.diag(p.flatten().sqrt())
    exact = float(torch.linalg.eigvalsh(root @ precision @ root).max())
    got = preconditioned_top_eigenvalue(
        model, mse_loss, data, NBETA, GAMMA, precond=[p], iters=100, seed=3
    )
    assert got == pytest.approx(exact, rel=1e-4)
    # It is not simply max(P)·λ_max(A) nor λ_max(A)·mean(P): the preconditioner reshapes A.
    assert got < 9.0 * float(torch.linalg.eigvalsh(precision).max()) * 0.99


def test_plain_sgld_curvature_is_nbeta_times_hessian_plus_gamma():
    data, model, x, precision = _setup()
    lam_a = float(torch.linalg.eigvalsh(precision).max())
    got = preconditioned_top_eigenvalue(model, mse_loss, data, NBETA, GAMMA, iters=60)
    assert got == pytest.approx(lam_a, rel=1e-4)
    lam_h = top_hessian_eigenvalue(model, mse_loss, data, iters=60)
    assert NBETA * lam_h + GAMMA == pytest.approx(got)


def test_top_hessian_eigenvalue_still_importable_from_its_old_homes():
    from bifrepro.sampling.calibration import top_hessian_eigenvalue as from_calibration
    from bifrepro.sampling.pilots import top_hessian_eigenvalue as from_pilots

    assert from_pilots is top_hessian_eigenvalue is from_calibration


def _config(**kw) -> SGLDConfig:
    base = dict(
        step_size=1e-3,
        nbeta=NBETA,
        localization=GAMMA,
        burn_in=30,
        batch_size=40,
        preconditioner="rmsprop",
        rmsprop_alpha=0.9,
        rmsprop_eps=0.1,
    )
    base.update(kw)
    return SGLDConfig(**base)


def test_rmsprop_preconditioner_full_batch_known_answers():
    data, model, x, _ = _setup()
    # At the least-squares w* the full-batch gradient vanishes: V = 0, P = 1/rmsprop_eps.
    (p,) = rmsprop_preconditioner(model, mse_loss, data, _config())
    assert torch.allclose(p, torch.full_like(p, 10.0), rtol=1e-4)  # w* fitted in float32
    # Away from the minimum the full-batch gradient g is fixed: V = (1 - α^T)·g² after T steps.
    shifted = _setup()[1]
    with torch.no_grad():
        shifted.weight.add_(0.3)
    x_, y_ = data.tensors
    w = shifted.weight.detach().flatten()
    g = -(x_ * (y_ - x_ @ w)[:, None]).mean(0)
    cfg = _config()
    v = (1 - cfg.rmsprop_alpha**cfg.burn_in) * g**2
    (p,) = rmsprop_preconditioner(shifted, mse_loss, data, cfg)
    assert torch.allclose(p.flatten(), 1 / (v.sqrt() + cfg.rmsprop_eps), rtol=1e-6)


def test_rmsprop_preconditioner_minibatch_noise_lowers_p_and_is_seeded():
    data, model, _, _ = _setup()
    cfg = _config(batch_size=4, seed=5, rmsprop_alpha=0.99, burn_in=20)
    (p,) = rmsprop_preconditioner(model, mse_loss, data, cfg)
    assert p.shape == model.weight.shape
    assert (p < 10.0).all() and (p > 0).all()  # minibatch gradients are not zero at w*
    (again,) = rmsprop_preconditioner(model, mse_loss, data, cfg)
    assert torch.equal(p, again)
    # A longer burn-in accumulates more of E[g²]: V grows, P shrinks.
    (longer,) = rmsprop_preconditioner(model, mse_loss, data, cfg.replace(burn_in=400))
    assert (longer < p).all()
