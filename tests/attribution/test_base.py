"""The interface: tasks (losses, measurements, per-token losses) and the Attributor contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from bifrepro.attribution.base import (
    Attributor,
    CausalLMTask,
    ClassificationTask,
    functional_task_call,
    trainable_parameters,
)
from bifrepro.models.small import tiny_causal_lm


class _Fixed(nn.Module):
    """Returns preset logits, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def test_classification_loss_and_margin_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 1])
    model, batch = _Fixed(logits), [torch.zeros(2, 1), y]
    loss = ClassificationTask().train_loss(model, batch)
    expected = torch.tensor(
        [
            math.log(math.exp(2) + 1 + math.exp(-1)) - 2,
            math.log(2 * math.exp(0.5) + math.exp(3)) - 0.5,
        ]
    )
    torch.testing.assert_close(loss, expected)
    margin_task = ClassificationTask(measurement="margin")
    # loss-like: measurement = -(logit_y - logsumexp of the other logits)
    expected_margin = torch.tensor(
        [2 - math.log(1 + math.exp(-1)), 0.5 - math.log(math.exp(0.5) + math.exp(3))]
    )
    torch.testing.assert_close(margin_task.measurement(model, batch), -expected_margin)
    torch.testing.assert_close(margin_task.train_loss(model, batch), loss)  # training unchanged


def test_classification_sampled_loss_uses_model_labels() -> None:
    # A model that is certain of class 2 always samples label 2.
    model = _Fixed(torch.tensor([[-50.0, -50.0, 50.0]] * 4))
    batch = [torch.zeros(4, 1), torch.tensor([0, 1, 0, 1])]
    sampled = ClassificationTask().sampled_train_loss(model, batch)
    assert sampled.shape == (4,) and torch.all(sampled < 1e-6)
    assert torch.all(ClassificationTask().train_loss(model, batch) > 50)


def test_unknown_measurement_is_refused() -> None:
    with pytest.raises(ValueError, match="measurement"):
        ClassificationTask(measurement="accuracy")


@pytest.fixture(scope="module")
def lm() -> nn.Module:
    return tiny_causal_lm(vocab_size=20, hidden_size=16, num_layers=1, num_heads=2, seed=3)


def test_causal_lm_loss_matches_hugging_face(lm: nn.Module) -> None:
    ids = torch.randint(0, 20, (3, 9), generator=torch.Generator().manual_seed(0))
    task = CausalLMTask()
    per_seq = task.train_loss(lm, ids)
    for i in range(3):
        hf = lm(input_ids=ids[i : i + 1], labels=ids[i : i + 1]).loss
        torch.testing.assert_close(per_seq[i], hf, rtol=1e-5, atol=1e-6)
    per_token = task.train_loss_per_token(lm, ids)
    assert per_token.shape == (3, 9)
    assert torch.all(per_token[:, 0] == 0)
    torch.testing.assert_close(per_token.sum(1), per_seq)
    summed = CausalLMTask(reduction="sum").train_loss(lm, ids)
    torch.testing.assert_close(summed, per_seq * 8)


def test_causal_lm_padding_is_ignored(lm: nn.Module) -> None:
    ids = torch.randint(0, 20, (1, 6), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], dim=1).long()
    task = CausalLMTask()
    alone = task.train_loss(lm, ids)
    with_pad = task.train_loss(lm, {"input_ids": padded, "attention_mask": mask})
    torch.testing.assert_close(with_pad, alone, rtol=1e-5, atol=1e-6)
    as_tuple = task.train_loss_per_token(lm, [padded, mask])
    assert torch.all(as_tuple[0, 6:] == 0)


def test_functional_call_swaps_weights_without_touching_the_model() -> None:
    model = nn.Linear(2, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: torch.zeros_like(v) for k, v in trainable_parameters(model).items()}
    out = functional_task_call(model, lambda m, b: m(b).squeeze(1), params, torch.ones(3, 2))
    assert torch.all(out == 0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _Echo(Attributor):
    """Returns whatever tensor it is told to (to test the contract checks)."""

    name = "echo"
    per_token_modes = ("none", "train")

    def __init__(self, config, make) -> None:
        super().__init__(config)
        self.make = make

    def _fit(self) -> None:
        pass

    def _score(self, query_data: Dataset) -> torch.Tensor:
        return self.make(len(query_data), self.n_train)


class _Cfg:
    def __init__(self, per_token: str = "none") -> None:
        self.per_token = per_token


def _data(n: int) -> TensorDataset:
    return TensorDataset(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long))


def test_attributor_contract() -> None:
    good = _Echo(_Cfg(), lambda q, n: torch.ones(q, n, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="fit"):
        good.score(_data(2))
    good.fit(nn.Linear(2, 2), ClassificationTask(), _data(5))
    scores = good.score(_data(3))
    assert scores.shape == (3, 5) and scores.dtype == torch.float32
    good.score(_data(1))
    assert good.timings.score.calls == 2 and good.timings.fit.calls == 1
    metrics = good.timings.to_metrics("echo/")
    assert {"echo/fit_seconds", "echo/score_seconds", "echo/score_peak_rss_mb"} <= set(metrics)

    transposed = _Echo(_Cfg(), lambda q, n: torch.ones(n, q))
    transposed.fit(nn.Linear(2, 2), ClassificationTask(), _data(5))
    with pytest.raises(RuntimeError, match="expected layout"):
        transposed.score(_data(3))

    with pytest.raises(ValueError, match="per_token='query'"):
        _Echo(_Cfg("query"), lambda q, n: torch.ones(q, n))
    per_token = _Echo(_Cfg("train"), lambda q, n: torch.ones(q, n, 4))
    with pytest.raises(ValueError, match="per-token"):
        per_token.fit(nn.Linear(2, 2), ClassificationTask(), _data(5))
    with pytest.raises(ValueError, match="empty"):
        good.fit(nn.Linear(2, 2), ClassificationTask(), _data(0))


def test_cross_entropy_reference_is_independent() -> None:
    """Guard: the hand-written CE above agrees with torch's (so the first test checks our task)."""
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    assert F.cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(
        math.log(math.exp(2) + 1 + math.exp(-1)) - 2
    )
