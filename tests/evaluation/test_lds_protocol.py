"""LDS protocol: the model spec, the cache key, retraining shares, outputs and the full model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from bifrepro.config.lds import EmbeddedImagesConfig, LDSConfig
from bifrepro.evaluation.lds_protocol import (
    actual_outputs,
    full_model,
    model_spec,
    prepare,
    retrain_share,
)
from bifrepro.evaluation.retrain import MissingRetrainError
from bifrepro.models.resnet9 import ResNet9Config
from bifrepro.models.vision import SmallCNNConfig

#: The tiny LDS setting of tests/experiments/test_lds.py (conf/model/small_cnn.yaml's recipe).
TINY_MODEL = SmallCNNConfig(width=2, hidden=8, pool_size=2, epochs=2, lr=3e-3)
TINY_DATA = EmbeddedImagesConfig(train_per_class=6, test_per_class=1)


def _problem(tmp_path: Path, **exp):
    data_cfg = EmbeddedImagesConfig(name="digits", train_per_class=3, test_per_class=1)
    settings = LDSConfig(num_subsets=3, alphas=[0.5], retrain_jobs=1, **exp)
    model = dataclasses.replace(TINY_MODEL, epochs=1)
    return prepare(settings, data_cfg.load(), data_cfg, model, 0, tmp_path, torch.device("cpu"))


def test_cache_key_of_the_tiny_setting_is_unchanged(tmp_path) -> None:
    """The retraining cache folder is keyed by the setting; a change would orphan every cache."""
    problem = prepare(
        LDSConfig(num_subsets=5, alphas=[0.2, 0.5]),
        TINY_DATA.load(),
        TINY_DATA,
        TINY_MODEL,
        0,
        tmp_path,
        torch.device("cpu"),
    )
    assert problem.retrainer.fingerprint() == "5759d68cfebd9164"
    assert problem.cache.dir == tmp_path / "cache" / "lds" / "5759d68cfebd9164"
    assert [int(m.sum(1)[0]) for m in problem.masks.values()] == [12, 30]
    elsewhere = _problem(tmp_path, cache_dir=str(tmp_path / "c"))
    assert elsewhere.cache.dir.parent == tmp_path / "c"


def test_model_spec_builds_both_architectures() -> None:
    data = TINY_DATA.load()
    x = data.train.tensors[0][:4]
    assert model_spec(TINY_MODEL, data).build(0)(x).shape == (4, 10)
    resnet = model_spec(ResNet9Config(width=2), data)
    assert resnet.name == "resnet9" and resnet.kwargs["in_channels"] == 1
    with pytest.raises(TypeError, match="no model"):
        model_spec(object(), data)  # type: ignore[arg-type]


def test_retrain_share_then_outputs_then_full_model(tmp_path) -> None:
    problem = _problem(tmp_path, subset_index=1)
    assert retrain_share(problem, n_jobs=1)["retrained_models"] == 1.0
    with pytest.raises(MissingRetrainError, match="2 of 3"):
        actual_outputs(problem, train_missing=False)
    actual = actual_outputs(problem)[0.5]
    assert actual.shape == (3, 1, 10) and torch.isfinite(actual).all()
    assert problem.cache.num_entries() == 3
    model, info = full_model(problem)
    assert 0.0 <= info["test_accuracy"] <= 1.0 and info["num_params"] > 0
    again, info2 = full_model(problem)  # from the cache: the same weights and training time
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
    assert info2["train_seconds"] == info["train_seconds"]
