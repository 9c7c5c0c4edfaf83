"""Every method on a tiny Hugging Face causal LM: per-sequence, and per-token for BIF and EK-FAC."""

from __future__ import annotations

import pytest
import torch
from torch import nn
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
from tests.attribution._problems import lm_problem, rank_of

_SAMPLER = SGLDConfig(
    step_size=1e-4,
    nbeta=100.0,
    localization=3000.0,
    num_chains=2,
    num_draws=60,
    burn_in=30,
    batch_size=8,
    seed=0,
)

METHODS = {
    "bif": BIFMethodConfig(sampler=_SAMPLER),
    "ekfac": EKFACConfig(damping=1e-2),
    "trak": TRAKConfig(proj_dim=128, lambda_reg=1e-2),
    "gradsim": GradSimConfig(),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_sequence_scores_rank_the_copy_first(method: str) -> None:
    p = lm_problem()
    scores = build_attributor(METHODS[method]).fit(p.model, p.task, p.train).score(p.query)
    assert scores.shape == (len(p.query), len(p.train))
    assert torch.isfinite(scores).all()
    assert (rank_of(scores, p.copy_idx) == 0).all()


def test_exact_if_refuses_models_above_the_parameter_cap() -> None:
    p = lm_problem()
    with pytest.raises(ValueError, match=r"max_params=1,000.*ekfac or bif"):
        build_attributor(ExactIFConfig(max_params=1000)).fit(p.model, p.task, p.train)


def test_ekfac_per_token_scores_sum_to_sequence_scores() -> None:
    p = lm_problem()
    seq = build_attributor(METHODS["ekfac"]).fit(p.model, p.task, p.train).score(p.query)
    tok = build_attributor(METHODS["ekfac"], per_token="train").fit(p.model, p.task, p.train)
    tok = tok.score(p.query)
    length = p.train.tensors[0].shape[1]
    assert tok.shape == (len(p.query), len(p.train), length)
    assert torch.all(tok[..., 0] == 0)  # position 0 predicts nothing
    torch.testing.assert_close(tok.sum(-1), seq, rtol=1e-3, atol=1e-4 * seq.abs().max().item())


def test_bif_per_token_layouts_and_linearity() -> None:
    """Same seed → same draws, so summed per-token covariances equal the sequence covariance."""
    p = lm_problem()
    cfg = BIFMethodConfig(normalize="covariance", sampler=_SAMPLER)
    seq = build_attributor(cfg).fit(p.model, p.task, p.train).score(p.query)
    length = p.train.tensors[0].shape[1]
    nq, nt = len(p.query), len(p.train)
    shapes = {
        "train": (nq, nt, length),
        "query": (nq, length, nt),
        "both": (nq, length, nt, length),
    }
    out = {}
    for mode, shape in shapes.items():
        out[mode] = (
            build_attributor(cfg, per_token=mode).fit(p.model, p.task, p.train).score(p.query)
        )
        assert out[mode].shape == shape
    scale = seq.abs().max().item()
    torch.testing.assert_close(out["train"].sum(-1), seq, rtol=1e-3, atol=1e-4 * scale)
    torch.testing.assert_close(out["query"].sum(1), seq, rtol=1e-3, atol=1e-4 * scale)
    torch.testing.assert_close(out["both"].sum((1, 3)), seq, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("method", ["gradsim", "trak", "exact_if"])
def test_per_token_is_refused_where_unsupported(method: str) -> None:
    with pytest.raises(ValueError, match="per_token"):
        build_attributor({"name": method, "per_token": "train"})


def test_per_token_needs_a_sequence_task() -> None:
    p = lm_problem()
    attributor = build_attributor(EKFACConfig(per_token="train"))
    with pytest.raises(ValueError, match="per-token"):
        attributor.fit(p.model, ClassificationTask(), p.train)


def test_ekfac_refuses_models_without_linear_or_conv2d_layers() -> None:
    class EmbeddingOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.emb(x).sum(1)

    data = TensorDataset(torch.randint(0, 10, (8, 4)), torch.randint(0, 3, (8,)))
    with pytest.raises(ValueError, match=r"nn\.Linear or nn\.Conv2d"):
        build_attributor(EKFACConfig()).fit(EmbeddingOnly(), ClassificationTask(), data)
