"""Standard errors of BIF scores on traces whose sampling variance is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from bifrepro.attribution import bif_scores
from bifrepro.sampling.uncertainty import (
    ScoreUncertainty,
    bif_standard_errors,
    draws_needed,
    topk_resolved,
    topk_with_uncertainty,
)


def _gaussian_pairs(
    chains: int, draws: int, items: int, rho: float, sx: float, sy: float, seed: int
):
    """Query item i and train item i are bivariate Gaussian with correlation rho (iid over draws);
    different items are independent."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(chains, draws, items, generator=g, dtype=torch.float64)
    e = torch.randn(chains, draws, items, generator=g, dtype=torch.float64)
    q = sx * z
    t = sy * (rho * z + math.sqrt(1 - rho**2) * e)
    return q, t


@pytest.mark.parametrize("method", ["batch_means", "chains"])
def test_correlation_se_matches_the_textbook_formula_for_iid_gaussian_traces(method):
    chains, draws, items, rho = 4, 500, 200, 0.6
    q, t = _gaussian_pairs(chains, draws, items, rho, 1.0, 1.0, seed=0)
    u = bif_standard_errors(q, t, normalize="correlation", method=method)
    n = chains * draws
    diag_se = torch.diagonal(u.se)
    # Var(r) ≈ (1 - ρ²)² / N for bivariate normal data.
    assert float(diag_se.mean()) == pytest.approx((1 - rho**2) / math.sqrt(n), rel=0.1)
    # ... and the standard errors are honest: the spread of 200 independent estimates agrees.
    assert float(torch.diagonal(u.scores).std()) == pytest.approx(float(diag_se.mean()), rel=0.15)
    off = u.se[~torch.eye(items, dtype=torch.bool)]
    assert float(off.mean()) == pytest.approx(1 / math.sqrt(n), rel=0.1)  # ρ = 0 pairs


def test_covariance_se_matches_the_textbook_formula_for_iid_gaussian_traces():
    chains, draws, items, rho, sx, sy = 4, 500, 200, 0.5, 2.0, 0.5
    q, t = _gaussian_pairs(chains, draws, items, rho, sx, sy, seed=1)
    u = bif_standard_errors(q, t, normalize="covariance")
    n = chains * draws
    cov = rho * sx * sy
    expected = math.sqrt((sx**2 * sy**2 + cov**2) / n)  # Var of a sample covariance
    assert float(torch.diagonal(u.se).mean()) == pytest.approx(expected, rel=0.1)
    assert float(torch.diagonal(u.scores).mean()) == pytest.approx(cov, abs=3 * expected / 10)
    assert float(torch.diagonal(u.scores).std()) == pytest.approx(expected, rel=0.15)


def test_scores_equal_bif_scores_and_shapes_follow_per_token_layout():
    q, t = _gaussian_pairs(2, 40, 6, 0.3, 1.0, 1.0, seed=2)
    u = bif_standard_errors(q, t)
    torch.testing.assert_close(u.scores, bif_scores(q, t, dtype=torch.float64))
    per_token = t.reshape(2, 40, 3, 2)  # [C, D, n_train, T]
    u_tok = bif_standard_errors(q, per_token, normalize="covariance")
    assert u_tok.scores.shape == u_tok.se.shape == (6, 3, 2)
    assert (u_tok.se > 0).all()


def test_batch_means_account_for_autocorrelation():
    """Independent AR(1) traces: Var(r) = τ_xy / N with τ_xy = (1 + ρ²)/(1 - ρ²) for ρ_x = ρ_y."""
    chains, draws, items, rho = 4, 1600, 60, 0.7
    g = torch.Generator().manual_seed(3)

    def ar1(k: int) -> torch.Tensor:
        eps = torch.randn(chains, draws, k, generator=g, dtype=torch.float64)
        x = torch.empty_like(eps)
        x[:, 0] = eps[:, 0]
        for s in range(1, draws):
            x[:, s] = rho * x[:, s - 1] + math.sqrt(1 - rho**2) * eps[:, s]
        return x

    q, t = ar1(items), ar1(items)
    u = bif_standard_errors(q, t, batch_length=80)
    n = chains * draws
    tau = (1 + rho**2) / (1 - rho**2)
    assert float(u.se.mean()) == pytest.approx(math.sqrt(tau / n), rel=0.12)
    assert float(u.scores.std()) == pytest.approx(math.sqrt(tau / n), rel=0.15)
    # One draw per batch ignores the autocorrelation and is overconfident by ~√τ.
    naive = bif_standard_errors(q, t, batch_length=1)
    assert float(naive.se.mean()) < 0.75 * float(u.se.mean())


def test_draws_needed_scales_with_the_inverse_square_of_the_target():
    q, t = _gaussian_pairs(4, 200, 50, 0.2, 1.0, 1.0, seed=4)
    u = bif_standard_errors(q, t)
    median = float(u.se.flatten().median())
    assert draws_needed(u, median / 2) == pytest.approx(4 * 200, rel=0.02)
    assert u.draws_needed(median) == pytest.approx(200, rel=0.02)
    # Measured: quadrupling the draws halves the standard error.
    q4, t4 = _gaussian_pairs(4, 800, 50, 0.2, 1.0, 1.0, seed=5)
    u4 = bif_standard_errors(q4, t4)
    assert float(u4.se.median()) == pytest.approx(median / 2, rel=0.1)
    assert draws_needed(torch.tensor([0.1, 0.2]), 0.1, num_draws=100, quantile=1.0) == 400
    with pytest.raises(ValueError, match="num_draws"):
        draws_needed(torch.tensor([0.1]), 0.05)


def test_topk_says_which_ranks_are_resolved():
    scores = torch.tensor([[0.9, 0.5, 0.49, 0.1, 0.0]], dtype=torch.float64)
    se = torch.full_like(scores, 0.01)
    u = ScoreUncertainty(scores, se, "correlation", "batch_means", 4, 100, 40)
    table = topk_with_uncertainty(u, query=0, k=3)
    assert table["train_index"].tolist() == [0, 1, 2]
    # 0.5 vs 0.49 is within noise; all three clearly beat the 4th (0.1).
    assert table["distinct_from_next"].tolist() == [True, False, True]
    assert table["in_topk_for_sure"].all()
    noisy = ScoreUncertainty(scores, se * 30, "correlation", "batch_means", 4, 100, 40)
    table = topk_with_uncertainty(noisy, query=0, k=3)
    assert not table["in_topk_for_sure"].iloc[1:].any()
    assert table["lower"].iloc[0] == pytest.approx(0.9 - 1.96 * 0.3)


def test_topk_resolved_agrees_with_the_per_query_table():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(6, 12, generator=g, dtype=torch.float64)
    se = 0.05 * torch.rand(6, 12, generator=g, dtype=torch.float64)
    u = ScoreUncertainty(scores, se, "correlation", "batch_means", 4, 100, 40)
    shares = topk_resolved(u, k=3)
    for q in range(6):
        table = topk_with_uncertainty(u, query=q, k=3)
        assert shares[q].item() == pytest.approx(table["in_topk_for_sure"].mean())
    # hand-made: every one of the top-3 beats the 4th; at s.e. 0.2 (margin 1.96·0.28 = 0.55)
    # only 0.9 - 0.1 = 0.8 does
    scores = torch.tensor([[0.9, 0.5, 0.49, 0.1, 0.0]], dtype=torch.float64)
    sharp = ScoreUncertainty(scores, torch.full_like(scores, 0.01), "correlation", "b", 4, 100, 40)
    noisy = ScoreUncertainty(scores, torch.full_like(scores, 0.2), "correlation", "b", 4, 100, 40)
    assert topk_resolved(sharp, 3).item() == 1.0
    assert topk_resolved(noisy, 3).item() == pytest.approx(1 / 3)  # only 0.9 vs 0.1 survives
    with pytest.raises(ValueError, match="k=5"):
        topk_resolved(sharp, 5)


def test_invalid_arguments_are_refused():
    q, t = _gaussian_pairs(1, 10, 2, 0.1, 1.0, 1.0, seed=6)
    with pytest.raises(ValueError, match="2 chains"):
        bif_standard_errors(q, t, method="chains")
    with pytest.raises(ValueError, match="method"):
        bif_standard_errors(q, t, method="bootstrap")
    with pytest.raises(ValueError, match="at least 2 batches"):
        bif_standard_errors(q, t, batch_length=10)


def test_topk_figure_draws_error_bars():
    from bifrepro.plots.calibration import plot_topk_uncertainty

    scores = torch.tensor([[0.9, 0.5, 0.49, 0.1, 0.0]], dtype=torch.float64)
    u = ScoreUncertainty(scores, torch.full_like(scores, 0.01), "correlation", "chains", 4, 100, 4)
    fig = plot_topk_uncertainty(u, query=0, k=3, labels=["a", "b", "c", "d", "e"])
    ax = fig.get_axes()[0]
    assert len(ax.patches) == 3  # one bar per ranked item
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0\na", "1\nb", "2\nc"]
