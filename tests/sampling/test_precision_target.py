"""Draws for a precision target, on scores and standard errors whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from bifrepro.sampling.precision_target import draws_for_resolved
from bifrepro.sampling.uncertainty import ScoreUncertainty, topk_resolved


def _uncertainty(scores, se, chains=2, draws=100) -> ScoreUncertainty:
    s = torch.tensor(scores, dtype=torch.float64)
    e = torch.tensor(se, dtype=torch.float64).expand_as(s).clone()
    return ScoreUncertainty(s, e, "correlation", "batch_means", chains, draws, 10)


def _scaled(u: ScoreUncertainty, chains: int, draws: int) -> ScoreUncertainty:
    factor = math.sqrt(u.num_chains * u.num_draws / (chains * draws))
    return ScoreUncertainty(u.scores, u.se * factor, u.normalize, u.method, chains, draws, 10)


def test_known_answer_for_one_query():
    # k = 2: gaps to the 3rd score are 3 and 1; se 0.5 everywhere, z = 1.96:
    # item i resolves once the run is m_i = (1.96·√0.5 / gap_i)² times the measured one.
    u = _uncertainty([[4.0, 2.0, 1.0, 0.0]], 0.5, chains=2, draws=100)
    m_first, m_second = (1.96 * math.sqrt(0.5) / 3) ** 2, (1.96 * math.sqrt(0.5) / 1) ** 2
    assert draws_for_resolved(u, 0.5, k=2) == math.floor(100 * m_first) + 1
    assert draws_for_resolved(u, 1.0, k=2) == math.floor(100 * m_second) + 1
    # Four chains instead of two halve the draws per chain.
    assert draws_for_resolved(u, 1.0, k=2, num_chains=4) == math.floor(50 * m_second) + 1


def test_the_answer_reaches_the_target_and_one_draw_less_does_not():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 50, generator=g, dtype=torch.float64)
    u = _uncertainty(scores.tolist(), 0.3, chains=2, draws=40)
    for target in (0.3, 0.6, 0.9):
        draws = int(draws_for_resolved(u, target, k=10, num_chains=4))
        assert float(topk_resolved(_scaled(u, 4, draws), k=10).mean()) >= target - 1e-9
        assert float(topk_resolved(_scaled(u, 4, draws - 1), k=10).mean()) < target - 1e-9


def test_ties_can_never_be_resolved():
    u = _uncertainty([[1.0, 1.0, 1.0, 0.0]], 0.1)
    assert draws_for_resolved(u, 1.0, k=2) == math.inf
    with pytest.raises(ValueError, match="target"):
        draws_for_resolved(u, 0.0, k=2)
    with pytest.raises(ValueError, match="k="):
        draws_for_resolved(u, 0.5, k=4)


def test_crossfit_is_not_fooled_by_the_winners_curse() -> None:
    """Pure noise (every training item has the same true score): ranking and measuring gaps on
    the same draws promises resolution after finitely many draws; cross-fitting says never. With
    a real, well-separated signal both give a finite answer."""
    import math

    from bifrepro.sampling.precision_target import draws_for_resolved_crossfit
    from bifrepro.sampling.uncertainty import bif_standard_errors

    g = torch.Generator().manual_seed(0)
    c, d, n_q, n_t = 4, 200, 3, 40
    query = torch.randn(c, d, n_q, generator=g, dtype=torch.float64)
    noise = torch.randn(c, d, n_t, generator=g, dtype=torch.float64)
    naive = draws_for_resolved(bif_standard_errors(query, noise), 0.5, k=5)
    assert math.isfinite(naive)  # the naive estimate believes the noise ranking
    assert math.isinf(draws_for_resolved_crossfit(query, noise, 0.5, k=5))
    # a signal: the first 5 training items follow every query strongly, graded
    weights = torch.zeros(n_t, dtype=torch.float64)
    weights[:5] = torch.linspace(3.0, 1.0, 5)
    shared = query.mean(-1, keepdim=True)
    signal = noise + shared * weights
    got = draws_for_resolved_crossfit(query, signal, 0.5, k=5)
    assert math.isfinite(got) and got >= 1
    with pytest.raises(ValueError, match="8 draws"):
        draws_for_resolved_crossfit(query[:, :6], noise[:, :6], 0.5, k=5)
