"""RelatIF (EK-FAC normalised by self-influence): known answers on the planted-copy problem."""

from __future__ import annotations

import pytest
import torch

from bifrepro.attribution.configs import EKFACConfig
from bifrepro.attribution.registry import build_attributor
from bifrepro.attribution.relatif import ekfac_self_influence, relatif_scores
from tests.attribution._problems import image_problem, rank_of


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_relatif_divides_each_column_and_keeps_the_sign() -> None:
    scores = torch.tensor([[2.0, -3.0, 0.5], [-1.0, 6.0, 0.0]])
    self_inf = torch.tensor([4.0, 9.0, 0.0])
    out = relatif_scores(scores, self_inf)
    assert torch.allclose(out[:, :2], torch.tensor([[1.0, -1.0], [-0.5, 2.0]]))
    assert torch.isnan(out[:, 2]).all()  # no gradient: no normalised score (ranked last)
    assert (torch.sign(out[:, :2]) == torch.sign(scores[:, :2])).all()
    with pytest.raises(ValueError, match="negative"):
        relatif_scores(scores, torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="one self-influence per column"):
        relatif_scores(scores, torch.ones(2))


def test_normalised_ekfac_ranks_the_query_copy_first_and_is_positive_when_helpful() -> None:
    """Query = training item i: score(q, i) / sqrt(I(i)) = sqrt(I(i)) is the maximum over items
    (Cauchy-Schwarz in the H^-1 inner product); mislabelled copies stay negative (harmful)."""
    p = image_problem()
    attributor = build_attributor(EKFACConfig(damping=1e-2)).fit(p.model, p.task, p.train)
    raw = attributor.score(p.query)
    self_inf = ekfac_self_influence(attributor)
    assert self_inf.shape == (len(p.train),) and (self_inf > 0).all()
    norm = relatif_scores(raw, self_inf)
    rows = torch.arange(len(p.query))
    assert (rank_of(norm, p.copy_idx) == 0).all()
    # the copy's normalised score is its own sqrt(self-influence) (the query's H^-1 norm)
    assert torch.allclose(norm[rows, p.copy_idx], self_inf[p.copy_idx].sqrt(), rtol=2e-2)
    assert (norm[rows, p.copy_idx] > 0).all()
    assert (norm[rows, p.wrong_idx] < 0).all()
    assert (torch.sign(norm) == torch.sign(raw)).all()
