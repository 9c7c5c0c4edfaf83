"""A 10-second BIF demo on linear regression, where the exact answer is known.

    python -m bifrepro.demo

Fits least squares, samples the local posterior with SGLD, and compares the BIF covariance of
every pair of training losses with the exact Gaussian-posterior value
``Cov(l_i, l_j) = r_i r_j s_ij + ½ s_ij²`` (see ``docs/science.md``).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import TensorDataset

from bifrepro.attribution import bif_scores
from bifrepro.sampling import SGLDConfig, sample_loss_traces


def main() -> dict[str, float]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    g = torch.Generator().manual_seed(0)
    n, d = 40, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.5 * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    w_star = torch.linalg.lstsq(x, y[:, None]).solution.squeeze(1)
    model = torch.nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w_star[None])

    def loss_fn(m: torch.nn.Module, batch) -> torch.Tensor:
        xb, yb = batch
        return 0.5 * (yb - m(xb).squeeze(-1)) ** 2

    config = SGLDConfig(
        step_size=1e-3,
        nbeta=100.0,
        localization=20.0,
        num_chains=4,
        num_draws=1500,
        burn_in=200,
        thinning=4,
        batch_size=n,
    )
    data = TensorDataset(x, y)
    traces = sample_loss_traces(model, loss_fn, data, {"train": data}, config)
    estimate = bif_scores(traces["train"], traces["train"], "covariance", dtype=torch.float64)
    precision = config.nbeta / n * x.T @ x + config.localization * torch.eye(d, dtype=torch.float64)
    s = x @ torch.linalg.inv(precision) @ x.T
    r = y - x @ w_star
    exact = r[:, None] * r[None, :] * s + 0.5 * s**2
    rel = float(torch.linalg.norm(estimate - exact) / torch.linalg.norm(exact))
    corr = float(torch.corrcoef(torch.stack([estimate.flatten(), exact.flatten()]))[0, 1])
    print(
        f"BIF covariance vs exact Gaussian posterior: relative error {rel:.3f}, "
        f"entry-wise correlation {corr:.4f}"
    )
    print(traces.diagnostics.summary())
    return {"relative_error": rel, "correlation": corr}


if __name__ == "__main__":
    main()
