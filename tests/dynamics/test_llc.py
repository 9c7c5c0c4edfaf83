"""Local learning coefficient from recorded losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bifrepro.dynamics.llc import estimate_llc


def test_llc_of_a_quadratic_is_half_its_rank() -> None:
    """Exact Gaussian posterior draws of a rank-r quadratic: λ̂ → r/2 when γ << nβ·curvature."""
    rng = np.random.default_rng(0)
    d, r, n = 6, 4, 200
    x = rng.normal(size=(n, r)) @ rng.normal(size=(r, d))  # rank-r design
    h = x.T @ x / n  # Hessian of L(w) = mean_i ½(x_iᵀw)²
    nbeta, gamma = 1000.0, 1e-3
    cov = np.linalg.inv(nbeta * h + gamma * np.eye(d))
    w = rng.multivariate_normal(np.zeros(d), cov, size=(4, 3000))  # [C, D, d]
    trace = torch.tensor(0.5 * (w @ x.T) ** 2)  # [C, D, n] per-item losses
    est = estimate_llc(trace, torch.zeros(n), nbeta)
    exact = 0.5 * nbeta * np.trace(h @ cov)
    assert exact == pytest.approx(r / 2, rel=0.01)
    assert est.mean == pytest.approx(exact, rel=0.05)
    assert len(est.per_chain) == 4 and 0 < est.std_error < 0.2
    # weights: items with weight 0 do not enter L_n (here: doubling the losses of dropped items)
    w8 = torch.ones(n)
    w8[: n // 2] = 0
    trace2 = trace.clone()
    trace2[..., : n // 2] *= 2
    assert estimate_llc(trace2, torch.zeros(n), nbeta, w8).mean == pytest.approx(
        estimate_llc(trace, torch.zeros(n), nbeta, w8).mean
    )
    with pytest.raises(ValueError, match="match"):
        estimate_llc(trace, torch.zeros(n + 1), nbeta)
