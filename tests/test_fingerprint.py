"""Fingerprints of data, weights and loss functions: equal inputs agree, any change is seen."""

from __future__ import annotations

import functools

import torch
from torch.utils.data import TensorDataset

from bifrepro.fingerprint import (
    callable_fingerprint,
    dataset_fingerprint,
    describe_difference,
    fingerprint_positions,
    hash_value,
    model_fingerprint,
)


def _loss(model, batch, scale=1.0):
    return scale * model(batch[0]).squeeze(-1)


def test_tensors_hash_by_dtype_shape_and_bytes():
    x = torch.arange(6.0)
    assert hash_value(x) == hash_value(x.clone())
    assert hash_value(x) != hash_value(x.double())
    assert hash_value(x) != hash_value(x.reshape(2, 3))
    assert hash_value({"a": x, "b": [1, "s"]}) == hash_value({"b": [1, "s"], "a": x.clone()})


def test_dataset_fingerprint_sees_values_and_length_and_samples_big_sets():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    y = torch.arange(50)
    base = dataset_fingerprint(TensorDataset(x, y))
    assert base == dataset_fingerprint(TensorDataset(x.clone(), y.clone()))
    assert base != dataset_fingerprint(TensorDataset(x, y.flip(0)))
    assert base != dataset_fingerprint(TensorDataset(x[:49], y[:49]))
    # A big dataset is hashed on evenly spaced items (first and last included) plus its length.
    positions = fingerprint_positions(10_000, 100)
    assert len(positions) == 100 and positions[0] == 0 and positions[-1] == 9_999
    assert fingerprint_positions(7, 100) == list(range(7))


def test_model_fingerprint_covers_weights_and_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    fp = model_fingerprint(model)
    model[1].running_mean += 1.0  # a buffer: not sampled, but it changes every loss
    assert model_fingerprint(model) != fp


def test_callable_fingerprint_names_source_and_simple_arguments():
    fp = callable_fingerprint(_loss)
    assert fp["name"] == "_loss" and fp["source"]
    assert callable_fingerprint(functools.partial(_loss, scale=2.0)) != callable_fingerprint(
        functools.partial(_loss, scale=3.0)
    )

    def make(scale):
        return lambda m, b: scale * _loss(m, b)

    assert callable_fingerprint(make(1.0)) != callable_fingerprint(make(2.0))
    assert callable_fingerprint(make(1.0)) == callable_fingerprint(make(1.0))


def test_describe_difference_names_the_differing_leaves():
    stored = {"model": "a", "observables": {"q": {"data": "x", "loss_fn": {"name": "f"}}}}
    requested = {"model": "a", "observables": {"q": {"data": "y", "loss_fn": {"name": "f"}}}}
    assert describe_difference(stored, requested) == ["observables.q.data"]
    assert describe_difference(stored, stored) == []
