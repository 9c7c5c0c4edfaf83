"""The LDS metric: hand-checked Spearman, exact linear datamodels, sign, masks, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bifrepro.evaluation.lds import (
    bootstrap_mean_ci,
    lds,
    load_masks,
    mask_hash,
    predicted_outputs,
    save_masks,
    spearman_rows,
    subset_masks,
    subset_size,
)


def test_hand_computed_example() -> None:
    # 3 training items, 4 subsets: {0}, {1}, {2}, {0, 1}; retrained outputs rise with the subset.
    masks = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    actual = torch.tensor([[10.0, 5.0], [20.0, 6.0], [30.0, 7.0], [40.0, 8.0]])  # [m, q]
    scores = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 1.0]])
    # query 0: g = (3, 1, 2, 4), ranks (3, 1, 2, 4) vs (1, 2, 3, 4): d = (2, -1, -1, 0),
    #          rho = 1 - 6 * 6 / (4 * 15) = 0.4
    # query 1: g = (0, 0, 1, 0), tied ranks (2, 2, 4, 2) vs (1, 2, 3, 4): centred
    #          (-.5, -.5, 1.5, -.5) . (-1.5, -.5, .5, 1.5) = 1, norms sqrt(3), sqrt(5): 1/sqrt(15)
    res = lds(scores, masks, actual, num_bootstrap=0)
    assert res.per_query[0] == pytest.approx(0.4)
    assert res.per_query[1] == pytest.approx(1 / math.sqrt(15))
    assert res.mean == pytest.approx((0.4 + 1 / math.sqrt(15)) / 2)
    assert math.isnan(res.ci_low)  # no bootstrap asked for
    np.testing.assert_allclose(
        predicted_outputs(scores, masks).numpy(), [[3, 1, 2, 4], [0, 0, 1, 0]]
    )


def test_seeds_are_averaged_before_ranking() -> None:
    masks = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    scores = torch.tensor([[1.0, 2.0]])  # g = (1, 2, 3)
    # seed 0 alone ranks the subsets (3, 2, 1); the mean over both seeds ranks them (1, 2, 3)
    actual = torch.tensor([[[3.0], [-10.0]], [[2.0], [0.0]], [[1.0], [10.0]]])  # [m, k, q]
    assert lds(scores, masks, actual[:, :1], num_bootstrap=0).mean == pytest.approx(-1.0)
    res = lds(scores, masks, actual, num_bootstrap=0)
    assert res.mean == pytest.approx(1.0) and res.num_seeds == 2


def test_exact_linear_datamodel() -> None:
    """Outputs exactly additive in the subset: LDS is 1 for the truth, -1 for its negative, ~0
    for random scores, and invariant to positive rescaling and a monotone output transform."""
    g = torch.Generator().manual_seed(1)
    n, q = 200, 30
    theta = torch.randn(q, n, generator=g)
    masks = subset_masks(n, 0.5, 60, seed=3)
    actual = (masks.double() @ theta.double().T) + 5.0  # [m, q]
    assert lds(theta, masks, actual).mean == pytest.approx(1.0)
    assert lds(-theta, masks, actual).mean == pytest.approx(-1.0)
    assert lds(3.0 * theta, masks, torch.exp(actual / 10)).mean == pytest.approx(1.0)
    random = lds(torch.randn(q, n, generator=g), masks, actual)
    assert abs(random.mean) < 0.1
    assert random.ci_low < random.mean < random.ci_high
    # a noisy datamodel is in between
    noisy = lds(theta + 2.0 * torch.randn(q, n, generator=g), masks, actual)
    assert 0.2 < noisy.mean < 0.95


def test_margin_sign_convention_with_a_known_datamodel() -> None:
    """Helpful items (same class, similar input) raise the margin f; positive-helpful scores
    must therefore get a positive LDS without any sign flip."""
    from tests.evaluation._linear import two_class_data

    train, query, true = two_class_data(n=60, q=8)
    x, y = train.tensors
    xq, yq = query.tensors
    masks = subset_masks(60, 0.25, 40, seed=0)
    # margin of a two-class linear model after one GD step from zero, written out by hand
    lr = 0.5
    margins = []
    for mask in masks:
        s = mask.nonzero().flatten()
        w = lr / len(s) * (torch.nn.functional.one_hot(y[s], 2).float() - 0.5).T @ x[s]  # [2, d]
        logits = xq @ w.T
        margins.append(
            logits.gather(1, yq[:, None]).squeeze(1) - logits.gather(1, 1 - yq[:, None]).squeeze(1)
        )
    actual = torch.stack(margins)
    assert lds(true, masks, actual).mean == pytest.approx(1.0)
    assert lds(-true, masks, actual).mean == pytest.approx(-1.0)  # the -margin mistake


def test_spearman_rows_matches_scipy_and_handles_constants() -> None:
    from scipy.stats import spearmanr

    g = np.random.default_rng(0)
    a = g.normal(size=(4, 25))
    b = a + g.normal(size=(4, 25))
    b[:, :5] = 0.0  # ties
    got = spearman_rows(a, b)
    for r in range(4):
        assert got[r] == pytest.approx(spearmanr(a[r], b[r]).statistic)
    a[2] = 1.0
    assert np.isnan(spearman_rows(a, b)[2])
    # a constant query is left out of the mean, not counted as 0
    masks = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    res = lds(
        torch.tensor([[1.0, 2.0], [1.0, 1.0]]),
        masks,
        torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]),
    )
    assert res.num_queries == 1 and res.mean == pytest.approx(1.0)


def test_subset_masks_are_deterministic_and_extend() -> None:
    a = subset_masks(100, 0.1, 20, seed=7)
    assert a.dtype == torch.bool and a.shape == (20, 100)
    assert (a.sum(1) == 10).all()
    assert torch.equal(a, subset_masks(100, 0.1, 20, seed=7))
    assert torch.equal(a, subset_masks(100, 0.1, 50, seed=7)[:20])  # more subsets extend fewer
    assert torch.equal(subset_masks(100, 0.1, 20, seed=7, indices=[3, 11]), a[[3, 11]])
    assert not torch.equal(a, subset_masks(100, 0.1, 20, seed=8))
    assert len({mask_hash(m) for m in a}) == 20
    # the hash depends on content only, and on the length
    assert mask_hash(a[0]) == mask_hash(a[0].clone().to(torch.uint8))
    assert mask_hash(torch.zeros(8, dtype=torch.bool)) != mask_hash(
        torch.zeros(9, dtype=torch.bool)
    )


def test_subset_size_and_errors() -> None:
    assert subset_size(1000, 0.1) == 100 and subset_size(1000, 0.05) == 50
    assert subset_size(999, 0.5) == 499
    for alpha in (0.0, 1.0, 0.0001):
        with pytest.raises(ValueError, match="alpha"):
            subset_size(100, alpha)
    with pytest.raises(ValueError, match="indices"):
        subset_masks(10, 0.5, 3, indices=[3])
    with pytest.raises(ValueError, match="masks"):
        lds(torch.zeros(2, 5), torch.zeros(3, 4, dtype=torch.bool), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="queries"):
        lds(torch.zeros(2, 5), torch.zeros(3, 5, dtype=torch.bool), torch.zeros(3, 4))


def test_masks_round_trip(tmp_path) -> None:
    masks = {0.1: subset_masks(37, 0.1, 5), 0.5: subset_masks(37, 0.5, 4, seed=2)}
    path = save_masks(masks, tmp_path / "masks.npz")
    back = load_masks(path)
    assert sorted(back) == [0.1, 0.5]
    for alpha, m in masks.items():
        assert torch.equal(back[alpha], m)


def test_bootstrap_interval() -> None:
    v = np.random.default_rng(0).normal(0.3, 0.1, size=200)
    lo, hi = bootstrap_mean_ci(v, 2000, 0.95, seed=1)
    assert lo < v.mean() < hi
    # about 2 x 1.96 standard errors wide
    assert hi - lo == pytest.approx(2 * 1.96 * v.std() / math.sqrt(v.size), rel=0.2)
    assert (lo, hi) == bootstrap_mean_ci(v, 2000, 0.95, seed=1)
    lo90, hi90 = bootstrap_mean_ci(v, 2000, 0.90, seed=1)
    assert hi90 - lo90 < hi - lo
    assert all(math.isnan(x) for x in bootstrap_mean_ci([1.0, np.nan], 100))


def test_actual_output_of_a_subset_is_the_mean_over_its_seeds() -> None:
    """Known answer: each seed's outputs are the additive truth plus seed noise that cancels in
    the mean over seeds, so exact scores have LDS 1 only when the seeds are averaged."""
    g = torch.Generator().manual_seed(3)
    n, q, m = 40, 5, 12
    true = torch.randn(q, n, generator=g, dtype=torch.float64)
    masks = subset_masks(n, 0.5, m, seed=1)
    f = masks.double() @ true.T  # [m, q]
    noise = 5.0 * torch.randn(m, q, generator=g, dtype=torch.float64)
    actual = torch.stack([f + noise, f - noise], dim=1)  # [m, k=2, q]
    both = lds(true, masks, actual, num_bootstrap=0)
    assert both.mean == pytest.approx(1.0) and both.num_seeds == 2
    one = lds(true, masks, actual[:, :1], num_bootstrap=0)
    assert one.mean < 0.9 and one.num_seeds == 1
    # a missing (NaN) seed of one subset falls back to the other seed's output
    gap = actual.clone()
    gap[0, 1] = math.nan
    assert lds(true, masks, gap, num_bootstrap=0).mean < 1.0
