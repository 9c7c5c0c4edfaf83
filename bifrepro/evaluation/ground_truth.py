"""Exact answers for small problems, to measure BIF estimates against (float64 throughout).

* **Linear regression** (``ℓ_i = ½(y_i - x_iᵀw)²``, w* the least-squares fit): the local posterior
  ``exp(-nβ·L(w) - γ/2·|w - w*|²)`` is exactly Gaussian, ``N(w*, Σ)`` with precision
  ``A = (nβ/n)·XᵀX + γI``, and ``Cov(ℓ_a, ℓ_b) = r_a r_b s_ab + ½ s_ab²`` with ``s_ab = x_aᵀΣx_b``
  and ``r`` the residuals at w*. Full-batch SGLD with step ε samples ``Σ_ε = (A(I - εA/4))⁻¹``.
* **L2-regularised models** (logistic regression, small MLPs): the training objective is
  ``J(θ) = Σ_i ℓ_i(θ) + (λ/2)·|θ|²`` (sum over items, so the local posterior of BIF with
  ``nβ = n`` and ``γ = λ`` has the same Hessian ``Σ_i ∇²ℓ_i + λI`` as J). Leave-one-out
  retraining is exact: ``θ_{-i} = argmin J - ℓ_i``, found by Newton's method started at θ*.
  The classical influence function is its first-order approximation.

Sign convention (bifrepro's, positive = helpful): the effect of training item ``i`` on query ``q``
is ``φ_q(θ_{-i}) - φ_q(θ*)``, the *increase* of the query loss when ``i`` is left out, i.e. its
decrease when ``i`` is (re-)added with weight 1. The influence function in the same sign is
``∇φ_qᵀ (Σ_j ∇²ℓ_j + λI)⁻¹ ∇ℓ_i``, which is also what ``+Cov(φ_q, ℓ_i)`` estimates to first order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bifrepro.attribution.base import functional_task_call, trainable_parameters

__all__ = [
    "NewtonDidNotConvergeError",
    "gaussian_posterior_covariance",
    "linear_loss_covariance",
    "logistic_losses",
    "flat_model_losses",
    "newton_minimize",
    "fit_l2",
    "fit_logistic",
    "loo_parameters",
    "logistic_loo_parameters",
    "loo_effects",
    "influence_scores",
]

#: ``theta [d] -> per-item losses [n]`` (float64).
FlatLosses = Callable[[torch.Tensor], torch.Tensor]


class NewtonDidNotConvergeError(RuntimeError):
    """Newton's method did not reach the gradient tolerance within its iterations."""


# -- linear regression: the exact Gaussian answer --------------------------------------------------


def gaussian_posterior_covariance(
    x: torch.Tensor, nbeta: float, localization: float, step_size: float | None = None
) -> torch.Tensor:
    """``Σ = A⁻¹`` with ``A = (nβ/n)·XᵀX + γI`` (or ``Σ_ε = (A(I - εA/4))⁻¹`` given ``step_size``).

    ``x``: ``[n, d]`` training inputs. ``step_size``: the stationary covariance of unadjusted
    full-batch Langevin with that step instead of the continuous-time posterior.
    """
    x = x.double()
    n, d = x.shape
    eye = torch.eye(d, dtype=torch.float64)
    precision = nbeta / n * x.T @ x + localization * eye
    if step_size is not None:
        precision = precision @ (eye - step_size * precision / 4)
    return torch.linalg.inv(precision)


def linear_loss_covariance(
    x_a: torch.Tensor,
    r_a: torch.Tensor,
    x_b: torch.Tensor,
    r_b: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """``[n_a, n_b]``: exact ``Cov(ℓ_a, ℓ_b)`` of squared-error losses under ``w ~ N(w*, Σ)``.

    ``r``: residuals ``y - xᵀw*`` at the posterior mean. With ``δ = w - w*`` and ``u = xᵀδ``,
    ``ℓ = ½r² - r·u + ½u²``; Gaussian moments give ``r_a r_b s + ½s²`` (``s = x_aᵀΣx_b``).
    """
    s = x_a.double() @ sigma.double() @ x_b.double().T
    return r_a.double()[:, None] * r_b.double()[None, :] * s + 0.5 * s**2


# -- losses as functions of a flat parameter vector ------------------------------------------------


def logistic_losses(x: torch.Tensor, y: torch.Tensor) -> FlatLosses:
    """Per-item binary cross-entropy of ``θ = [w (d), b]`` on inputs ``x [n, d]``, labels ``y ∈ {0,1}``.

    The layout matches ``nn.Linear(d, 1)``: ``θ = cat(weight.flatten(), bias)``.
    """
    x64, y64 = x.double(), y.double()

    def losses(theta: torch.Tensor) -> torch.Tensor:
        logits = x64 @ theta[:-1] + theta[-1]
        return F.binary_cross_entropy_with_logits(logits, y64, reduction="none")

    return losses


def flat_model_losses(
    model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], batch: Any
) -> tuple[torch.Tensor, FlatLosses]:
    """``(θ*, losses)``: the model's trainable parameters as one float64 vector, and
    ``θ -> loss_fn(model, batch)`` evaluated at any θ (a float64 copy; the model is untouched)."""
    work = _double_copy(model)
    params = trainable_parameters(work)
    names = list(params)
    shapes = [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    theta = torch.cat([p.reshape(-1) for p in params.values()]).clone()
    batch64 = _to_double(batch)

    def losses(vec: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(vec, sizes)
        new = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return functional_task_call(work, loss_fn, new, batch64)

    return theta, losses


def _double_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double().eval()


def _to_double(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.double() if batch.is_floating_point() else batch
    if isinstance(batch, list | tuple):
        return type(batch)(_to_double(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_double(v) for k, v in batch.items()}
    return batch


# -- Newton's method on the L2-regularised objective -----------------------------------------------


def _objective(losses: FlatLosses, l2: float, weights: torch.Tensor | None) -> FlatLosses:
    def total(theta: torch.Tensor) -> torch.Tensor:
        per_item = losses(theta)
        data = per_item.sum() if weights is None else (weights * per_item).sum()
        return data + 0.5 * l2 * (theta * theta).sum()

    return total


#: ``theta -> (objective value, gradient [d], Hessian [d, d])``.
Derivatives = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _autodiff(objective: Callable[[torch.Tensor], torch.Tensor]) -> Derivatives:
    grad_and_value = torch.func.grad_and_value(objective)
    hessian = torch.func.hessian(objective)

    def derivatives(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grad, value = grad_and_value(theta)
        return value, grad, hessian(theta)

    return derivatives


def newton_minimize(
    objective: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    *,
    derivatives: Derivatives | None = None,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> torch.Tensor:
    """Minimise a smooth scalar function of a flat float64 vector by damped Newton steps.

    Exact gradient and Hessian (by autodiff, or from ``derivatives`` when given in closed form);
    a Hessian that is not positive definite is shifted (Levenberg) until it is; each step
    backtracks until the objective decreases (Armijo), except within rounding distance of the
    minimum, where full steps are taken. Stops when ``|∇|_∞ <= tol · max(1, |J(θ)|)``.

    Raises:
        NewtonDidNotConvergeError: the tolerance was not reached within ``max_iter`` steps.
    """
    theta = theta0.detach().double().clone()
    derivatives = derivatives or _autodiff(objective)
    eye = torch.eye(theta.numel(), dtype=torch.float64)
    gnorm = float("inf")
    for _ in range(max_iter):
        value_t, grad, hess = derivatives(theta)
        value = float(value_t)
        gnorm = float(grad.abs().max())
        if gnorm <= tol * max(1.0, abs(value)):
            return theta
        hess = 0.5 * (hess + hess.T)
        shift = 0.0
        while True:
            chol, info = torch.linalg.cholesky_ex(hess + shift * eye)
            if int(info) == 0:
                break
            shift = max(2 * shift, 1e-8 * float(hess.diagonal().abs().max()) + 1e-12)
        step = -torch.cholesky_solve(grad[:, None], chol).squeeze(1)
        slope = float(grad @ step)
        t = 1.0
        # Backtrack only while the predicted decrease is above the objective's rounding level;
        # closer in, the quadratic model is exact to machine precision and full steps converge.
        if -slope > 1e-12 * max(1.0, abs(value)):
            while t > 1e-12:
                if float(objective(theta + t * step)) <= value + 1e-4 * t * slope:
                    break
                t *= 0.5
        theta = theta + t * step
    raise NewtonDidNotConvergeError(
        f"Newton's method stopped after {max_iter} steps with |gradient|_inf = {gnorm:.3g}"
    )


def fit_l2(
    losses: FlatLosses, theta0: torch.Tensor, l2: float, *, tol: float = 1e-10
) -> torch.Tensor:
    """``argmin_θ Σ_i ℓ_i(θ) + (λ/2)|θ|²`` by Newton's method from ``theta0`` (float64)."""
    return newton_minimize(_objective(losses, l2, None), theta0, tol=tol)


def loo_parameters(
    losses: FlatLosses,
    theta_star: torch.Tensor,
    l2: float,
    items: torch.Tensor | list[int] | None = None,
    *,
    tol: float = 1e-10,
) -> torch.Tensor:
    """``[k, d]``: exact leave-one-out optima ``argmin Σ_{j≠i} ℓ_j + (λ/2)|θ|²`` for each ``i``.

    Each is found by Newton's method started at ``theta_star`` (which must minimise the full
    objective: the leave-one-out optimum is then one small step away). ``items``: the left-out
    training indices (default: all).
    """
    theta_star = theta_star.detach().double()
    n = int(losses(theta_star).shape[0])
    return _loo(n, theta_star, items, lambda w: (_objective(losses, l2, w), None), tol)


def _loo(
    n: int,
    theta_star: torch.Tensor,
    items: torch.Tensor | list[int] | None,
    objective_for: Callable[[torch.Tensor], tuple[Any, Derivatives | None]],
    tol: float,
) -> torch.Tensor:
    chosen = range(n) if items is None else [int(i) for i in items]
    rows = []
    for i in chosen:
        weights = torch.ones(n, dtype=torch.float64)
        weights[i] = 0.0
        objective, derivatives = objective_for(weights)
        rows.append(newton_minimize(objective, theta_star, derivatives=derivatives, tol=tol))
    return torch.stack(rows) if rows else theta_star.new_zeros((0, theta_star.numel()))


def _logistic_objective(
    x: torch.Tensor, y: torch.Tensor, l2: float, weights: torch.Tensor | None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Derivatives]:
    """``Σ v_i ℓ_i + (λ/2)|θ|²`` of logistic regression with its closed-form derivatives."""
    design = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    y64 = y.double()
    v = torch.ones_like(y64) if weights is None else weights.double()
    eye = torch.eye(design.shape[1], dtype=torch.float64)

    def objective(theta: torch.Tensor) -> torch.Tensor:
        z = design @ theta
        data = F.binary_cross_entropy_with_logits(z, y64, reduction="none")
        return (v * data).sum() + 0.5 * l2 * (theta * theta).sum()

    def derivatives(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = torch.sigmoid(design @ theta)
        grad = design.T @ (v * (p - y64)) + l2 * theta
        hess = design.T @ ((v * p * (1 - p))[:, None] * design) + l2 * eye
        return objective(theta), grad, hess

    return objective, derivatives


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float, *, tol: float = 1e-10
) -> torch.Tensor:
    """θ* = ``[w, b]`` of L2-regularised logistic regression (closed-form Newton, float64)."""
    objective, derivatives = _logistic_objective(x, y, l2, None)
    theta0 = torch.zeros(x.shape[1] + 1, dtype=torch.float64)
    return newton_minimize(objective, theta0, derivatives=derivatives, tol=tol)


def logistic_loo_parameters(
    x: torch.Tensor,
    y: torch.Tensor,
    l2: float,
    theta_star: torch.Tensor,
    items: torch.Tensor | list[int] | None = None,
    *,
    tol: float = 1e-10,
) -> torch.Tensor:
    """:func:`loo_parameters` for logistic regression with closed-form derivatives (fast)."""
    theta_star = theta_star.detach().double()
    return _loo(x.shape[0], theta_star, items, lambda w: _logistic_objective(x, y, l2, w), tol)


def loo_effects(
    query_losses: FlatLosses, theta_star: torch.Tensor, loo_params: torch.Tensor
) -> torch.Tensor:
    """``[n_query, k]``: ``φ_q(θ_{-i}) - φ_q(θ*)`` (positive = item ``i`` helps query ``q``)."""
    base = query_losses(theta_star.double())
    return torch.stack([query_losses(p) - base for p in loo_params.double()], dim=1)


def influence_scores(
    train_losses: FlatLosses,
    query_losses: FlatLosses,
    theta_star: torch.Tensor,
    l2: float,
) -> torch.Tensor:
    """``[n_query, n_train]``: ``∇φ_qᵀ (Σ_j ∇²ℓ_j + λI)⁻¹ ∇ℓ_i`` (positive = helpful).

    The classical influence function of the L2-regularised sum objective: the first-order
    approximation of :func:`loo_effects`.
    """
    theta = theta_star.detach().double()
    hess = torch.func.hessian(_objective(train_losses, l2, None))(theta)
    hess = 0.5 * (hess + hess.T)
    train_grads = torch.func.jacrev(train_losses)(theta)  # [n, d]
    query_grads = torch.func.jacrev(query_losses)(theta)  # [n_query, d]
    return query_grads @ torch.linalg.solve(hess, train_grads.T)
