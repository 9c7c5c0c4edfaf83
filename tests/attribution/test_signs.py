"""Sign tests with a known answer, for every method, on a small CNN classifier.

Each query has an exact copy in the training set (it must be among the most helpful items) and
the same image with a wrong label (it must be harmful: negative score).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.attribution.base import ClassificationTask
from bifrepro.attribution.configs import (
    BIFMethodConfig,
    EKFACConfig,
    ExactIFConfig,
    GradSimConfig,
    TRAKConfig,
)
from bifrepro.attribution.registry import build_attributor
from bifrepro.sampling import SGLDConfig
from tests.attribution._problems import image_problem, rank_of

_SAMPLER = SGLDConfig(
    step_size=2e-5,
    nbeta=1000.0,
    localization=10000.0,
    num_chains=2,
    num_draws=100,
    burn_in=20,
    batch_size=32,
    seed=0,
)

METHODS = {
    "exact_if": ExactIFConfig(curvature="gauss_newton", damping=1e-2),
    "ekfac": EKFACConfig(damping=1e-2),
    "trak": TRAKConfig(proj_dim=128, lambda_reg=1e-2),
    "gradsim": GradSimConfig(),
    "bif_correlation": BIFMethodConfig(sampler=_SAMPLER),
    "bif_covariance": BIFMethodConfig(normalize="covariance", sampler=_SAMPLER),
    "bif_detrended": BIFMethodConfig(detrend=True, sampler=_SAMPLER),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_copy_is_helpful_and_wrong_label_is_harmful(method: str) -> None:
    p = image_problem()
    before = copy.deepcopy(p.model.state_dict())
    attributor = build_attributor(METHODS[method]).fit(p.model, p.task, p.train)
    scores = attributor.score(p.query)

    assert scores.shape == (len(p.query), len(p.train))
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    ranks = rank_of(scores, p.copy_idx)
    assert (ranks < 3).all(), f"{method}: ranks of the query's own copy {ranks.tolist()}"
    wrong = scores[torch.arange(len(p.query)), p.wrong_idx]
    assert (wrong < 0).all(), f"{method}: mislabelled copies scored {wrong.tolist()}"
    # The caller's model is untouched: same weights, still in eval mode.
    after = p.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not p.model.training
    # Both phases are timed.
    t = attributor.timings
    assert t.fit.calls == 1 and t.score.calls == 1
    assert t.fit.seconds >= 0 and t.score.seconds > 0
    assert t.total_seconds == pytest.approx(t.fit.seconds + t.score.seconds)


def test_trak_ensembles_checkpoints() -> None:
    """num_checkpoints=2 featurises two models and still orients scores the same way."""
    p = image_problem()
    other = copy.deepcopy(p.model)
    with torch.no_grad():
        for q in other.parameters():
            q.mul_(0.9)
    cfg = TRAKConfig(proj_dim=128, lambda_reg=1e-2, num_checkpoints=2)
    with pytest.raises(ValueError, match="num_checkpoints"):
        build_attributor(cfg).fit(p.model, p.task, p.train)
    one = build_attributor(TRAKConfig(proj_dim=128, lambda_reg=1e-2)).fit(p.model, p.task, p.train)
    two = build_attributor(cfg).fit(p.model, p.task, p.train, checkpoints=[other.state_dict()])
    s1, s2 = one.score(p.query), two.score(p.query)
    assert not torch.allclose(s1, s2)  # the second checkpoint contributes
    assert (rank_of(s2, p.copy_idx) < 3).all()


class _BatchNormNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 6)
        self.bn = torch.nn.BatchNorm1d(6)
        self.drop = torch.nn.Dropout(0.5)
        self.out = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.relu(self.bn(self.fc(x)))))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # an untrained net: BIF warns, rightly
@pytest.mark.parametrize("method", ["exact_if", "ekfac", "trak", "gradsim", "bif_correlation"])
def test_a_model_in_training_mode_is_left_exactly_as_it_was(method: str) -> None:
    """Batch-norm statistics, weights and the train/eval flag survive fit and score untouched."""
    torch.manual_seed(0)
    model = _BatchNormNet()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    model(x)  # non-trivial running statistics
    model.train()
    before = copy.deepcopy(model.state_dict())
    train = TensorDataset(x, y)
    scores = (
        build_attributor(METHODS[method])
        .fit(model, ClassificationTask(), train)
        .score(TensorDataset(x[:2], y[:2]))
    )
    assert scores.shape == (2, 16) and torch.isfinite(scores).all()
    assert model.training and model.bn.training and model.drop.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
