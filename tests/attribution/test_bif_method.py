"""BIFAttributor: one run of the BIF pipeline per score(), with the chain-health policy."""

from __future__ import annotations

import pytest
import torch

from bifrepro.attribution.base import AttributionTask
from bifrepro.attribution.bif_method import BIFAttributor, UnhealthyChainsError
from bifrepro.attribution.bif_pipeline import run_bif
from bifrepro.attribution.configs import BIFMethodConfig
from bifrepro.data.hierarchy import make_hierarchy
from bifrepro.models.linear import DeepLinearNetwork, per_item_squared_error
from bifrepro.sampling import SGLDConfig

pytestmark = pytest.mark.filterwarnings("ignore::bifrepro.sampling.ChainDriftWarning")


class _SquaredError(AttributionTask):
    def train_loss(self, model, batch):
        return per_item_squared_error(model, batch)


def _net() -> DeepLinearNetwork:
    return DeepLinearNetwork(
        8, 15, hidden=8, init_scale=0.3, generator=torch.Generator().manual_seed(0)
    )


_GOOD = SGLDConfig(step_size=1e-4, nbeta=100.0, localization=1000.0, num_chains=2, num_draws=30,
                   burn_in=5, thinning=2, batch_size=8, seed=1)  # fmt: skip
#: Four draws per chain: too few for the effective-sample-size rule.
_SHORT = SGLDConfig(step_size=1e-4, nbeta=100.0, localization=1000.0, num_chains=2, num_draws=4,
                    burn_in=0, batch_size=8, seed=1)  # fmt: skip


@pytest.mark.filterwarnings("ignore:bif. chains UNHEALTHY:RuntimeWarning")
def test_scores_and_health_are_the_pipeline_run() -> None:
    h, net = make_hierarchy(), _net()
    data, queries = h.dataset(), torch.utils.data.Subset(h.dataset(), [2, 3, 7])
    cfg = BIFMethodConfig(normalize="covariance", detrend=True, sampler=_GOOD)
    attributor = BIFAttributor(cfg).fit(net, _SquaredError(), data)
    scores = attributor.score(queries)
    run = run_bif(
        net, per_item_squared_error, data, (data, per_item_squared_error),
        (queries, per_item_squared_error), config=_GOOD, progress=False, normalize="covariance",
    )  # fmt: skip
    assert torch.equal(scores, run.scores("covariance", detrend=True))
    assert attributor.run_health is not None and attributor.traces is not None
    assert attributor.run_health.metrics == run.health.metrics
    assert attributor.diagnostics_metrics() == run.health.metrics


def test_unhealthy_chains_warn_or_raise() -> None:
    h, net = make_hierarchy(), _net()
    data = h.dataset()
    warn = BIFAttributor(BIFMethodConfig(sampler=_SHORT)).fit(net, _SquaredError(), data)
    with pytest.warns(RuntimeWarning, match="unhealthy chains"):
        warn.score(data)
    assert warn.health is not None and not warn.health.is_healthy
    strict = BIFMethodConfig(sampler=_SHORT, on_unhealthy="raise")
    with pytest.raises(UnhealthyChainsError):
        BIFAttributor(strict).fit(net, _SquaredError(), data).score(data)
