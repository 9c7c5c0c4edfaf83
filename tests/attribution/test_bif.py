"""bif_scores: the estimator's arithmetic, layout and sign."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.attribution import bif_scores
from bifrepro.sampling import SGLDConfig, sample_loss_traces
from tests.sampling._models import mse_loss


def _traces(c=3, d=50, n=7, seed=0, extra=()):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, d, n, *extra, generator=g)


def test_covariance_and_correlation_match_numpy():
    q, t = _traces(n=4, seed=1), _traces(n=9, seed=2)
    qn = q.reshape(-1, 4).numpy().astype(np.float64)
    tn = t.reshape(-1, 9).numpy().astype(np.float64)
    full_cov = np.cov(np.concatenate([qn, tn], axis=1), rowvar=False)[:4, 4:]
    full_corr = np.corrcoef(np.concatenate([qn, tn], axis=1), rowvar=False)[:4, 4:]
    np.testing.assert_allclose(
        bif_scores(q, t, "covariance").numpy(), full_cov, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(bif_scores(q, t).numpy(), full_corr, rtol=1e-5, atol=1e-6)


def test_blocked_equals_unblocked():
    q, t = _traces(n=5), _traces(n=23, seed=3)
    for norm in ("covariance", "correlation"):
        torch.testing.assert_close(bif_scores(q, t, norm, block_size=4), bif_scores(q, t, norm))


def test_per_token_layout():
    q, t = _traces(n=2, extra=(3,)), _traces(n=5, extra=(4,), seed=4)
    s = bif_scores(q, t)
    assert s.shape == (2, 3, 5, 4)
    flat = bif_scores(q.reshape(3, 50, 6), t.reshape(3, 50, 20))
    torch.testing.assert_close(s.reshape(6, 20), flat)


def test_constant_traces_score_zero_and_correlation_is_bounded():
    q, t = _traces(n=3), _traces(n=6, seed=5)
    t[..., 0] = 1.5  # e.g. a padding token: constant loss
    corr = bif_scores(q, t)
    assert torch.all(corr[:, 0] == 0)
    assert corr.abs().max() <= 1 + 1e-6
    assert torch.all(bif_scores(q, t, "covariance")[:, 0].abs() < 1e-6)


def test_input_errors():
    q, t = _traces(n=3), _traces(n=6, d=40)
    with pytest.raises(ValueError, match="same draws"):
        bif_scores(q, t)
    with pytest.raises(ValueError, match="normalize"):
        bif_scores(q, q, "pearson")
    with pytest.raises(ValueError, match="num_chains, num_draws"):
        bif_scores(q[0], q[0])


def test_sign_duplicate_is_helpful_and_flipped_residual_is_harmful():
    """Linear regression: a training copy of the query is its most helpful item; the same input
    with its residual mirrored (a label on the other side of the fit) is harmful."""
    g = torch.Generator().manual_seed(0)
    n, d = 60, 3
    x = torch.randn(n, d, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.8 * torch.randn(n, generator=g)
    w_star = torch.linalg.lstsq(x, y[:, None]).solution.squeeze(1)
    r = y - x @ w_star
    q_idx = int(r.abs().argmax())
    # Append two training items: an exact copy of the query and its mirror across the fit.
    x_train = torch.cat([x, x[q_idx : q_idx + 1], x[q_idx : q_idx + 1]])
    mirror = x[q_idx] @ w_star - r[q_idx]
    y_train = torch.cat([y, y[q_idx : q_idx + 1], mirror[None]])
    w_star = torch.linalg.lstsq(x_train, y_train[:, None]).solution.squeeze(1)
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w_star[None])
    train = TensorDataset(x_train, y_train)
    query = TensorDataset(x[q_idx : q_idx + 1], y[q_idx : q_idx + 1])
    cfg = SGLDConfig(
        step_size=2e-3,
        nbeta=100.0,
        localization=20.0,
        num_chains=4,
        num_draws=400,
        burn_in=100,
        thinning=3,
        batch_size=len(train),
        seed=0,
    )
    traces = sample_loss_traces(
        model, mse_loss, train, {"train": train, "query": query}, cfg, progress=False
    )
    cov = bif_scores(traces["query"], traces["train"], "covariance")[0]
    corr = bif_scores(traces["query"], traces["train"])[0]
    copy_idx, mirror_idx = n, n + 1
    assert corr[copy_idx] > 0.99  # identical loss traces
    assert int(corr.argmax()) in (q_idx, copy_idx)
    assert cov[copy_idx] > 0  # (raw covariance need not rank it first: see docs/science.md)
    assert cov[mirror_idx] < 0 and corr[mirror_idx] < 0


@pytest.mark.parametrize("normalize", ["correlation", "covariance"])
def test_nan_traces_raise_naming_the_items_never_score_zero(normalize):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 30, 4, generator=g)
    t = torch.randn(2, 30, 6, generator=g)
    bad_train = t.clone()
    bad_train[1, 7, 5] = float("nan")
    with pytest.raises(ValueError, match=r"train traces hold NaN or Inf .*index 5"):
        bif_scores(q, bad_train, normalize)
    bad_query = q.clone()
    bad_query[0, 0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"query traces hold NaN or Inf .*index 2"):
        bif_scores(bad_query, t, normalize, block_size=2)
    # per-token traces name the item, not the flattened column
    tokens = torch.randn(2, 30, 3, 4, generator=g)
    tokens[0, 3, 2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"index 2\)"):
        bif_scores(q, tokens, normalize)
