"""Retraining for LDS: exact datamodels end to end, the cache (reuse, resume, merge), workers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bifrepro.attribution.base import ClassificationTask
from bifrepro.evaluation.lds import lds, mask_hash, subset_masks
from bifrepro.evaluation.retrain import (
    MissingRetrainError,
    ModelSpec,
    RetrainCache,
    Retrainer,
    dataset_fingerprint,
    missing_entries,
    retrain_outputs,
)
from bifrepro.training import TrainConfig
from tests.evaluation._linear import RegressionTask, regression_data, two_class_data

#: One full-batch SGD step (the first step of momentum SGD is a plain gradient step).
ONE_STEP = TrainConfig(epochs=1, batch_size=10_000, lr=0.5, optimizer="sgd")


def _regression_retrainer(**kw) -> Retrainer:
    train, query, _ = regression_data()
    spec = ModelSpec("tests.evaluation._linear:zero_linear", {"in_features": 5, "out_features": 1})
    return Retrainer(spec, train, query, ONE_STEP, task=RegressionTask(), equal_steps=False, **kw)


class CountingRetrainer(Retrainer):
    """Counts trainings; raises on call number ``fail_at`` (a simulated interruption)."""

    calls: int = 0
    fail_at: int | None = None

    def __call__(self, mask, seed):  # noqa: ANN001, ANN204
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return super().__call__(mask, seed)


def _counting(**kw) -> CountingRetrainer:
    base = _regression_retrainer()
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    r = CountingRetrainer(**fields)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_linear_regression_retraining_has_the_exact_datamodel() -> None:
    """One GD step from zero is additive in the subset: the true attribution has LDS 1."""
    train, query, true = regression_data()
    r = _regression_retrainer()
    masks = subset_masks(40, 0.5, 25, seed=0)
    actual = retrain_outputs(r, masks, seeds=[0])
    assert actual.shape == (25, 1, 6)
    # the output is the prediction (lr/|S|) sum_S y_i x_i . x_q, written out by hand
    x, y = train.tensors
    s = masks[0].nonzero().flatten()
    expected = 0.5 / len(s) * (y[s] @ x[s]) @ query.tensors[0].T
    torch.testing.assert_close(actual[0, 0].float(), expected, rtol=1e-4, atol=1e-5)
    assert lds(true, masks, actual).mean == pytest.approx(1.0)
    assert lds(-true, masks, actual).mean == pytest.approx(-1.0)


def test_classification_records_the_margin_not_its_negative() -> None:
    """Retrained outputs are margins, so helpful (same-class, similar) items give LDS +1."""
    train, query, true = two_class_data(n=40, q=6)
    spec = ModelSpec("tests.evaluation._linear:zero_linear", {"in_features": 4, "out_features": 2})
    r = Retrainer(
        spec, train, query, ONE_STEP, task=ClassificationTask("margin"), equal_steps=False
    )
    masks = subset_masks(40, 0.25, 20, seed=1)
    actual = retrain_outputs(r, masks, seeds=[0])
    assert lds(true, masks, actual).mean == pytest.approx(1.0)
    # and it is the margin of the retrained model, by hand from its logits
    model, _ = r.train_subset(masks[0], 0)
    logits = model(query.tensors[0]).detach()
    yq = query.tensors[1]
    other = logits.gather(1, 1 - yq[:, None]).squeeze(1)  # two classes: logsumexp over one
    torch.testing.assert_close(
        r.outputs(model).float(), logits.gather(1, yq[:, None]).squeeze(1) - other
    )


def test_retraining_is_deterministic_and_seeded() -> None:
    train, query, _ = two_class_data(n=30, q=4)
    spec = ModelSpec("mlp", {"in_features": 4, "num_classes": 2, "hidden": (8,)})
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2)
    r = Retrainer(spec, train, query, cfg)
    mask = subset_masks(30, 0.5, 1, seed=0)[0]
    a, b, c = r(mask, 0), r(mask, 0), r(mask, 1)
    torch.testing.assert_close(a["outputs"], b["outputs"], rtol=0, atol=0)
    assert not torch.allclose(a["outputs"], c["outputs"])
    # equal_steps: a 15-item subset with batch 8 takes 2 steps per epoch, the full set 4
    assert r.epochs_for(15) == 6 and a["epochs"] == 6
    assert dataclasses.replace(r, equal_steps=False).epochs_for(15) == 3
    # per-subset initialisation differs between masks, shared does not
    other = subset_masks(30, 0.5, 2, seed=0)[1]
    shared = dataclasses.replace(r)
    per = dataclasses.replace(r, init="per_subset")
    assert shared.init_seed(mask, 0) == shared.init_seed(other, 0) == 0
    assert per.init_seed(mask, 0) != per.init_seed(other, 0)


def test_fingerprint_covers_config_and_data_but_not_seed_or_device() -> None:
    r = _regression_retrainer()
    fp = r.fingerprint()
    assert _regression_retrainer().fingerprint() == fp
    assert (
        dataclasses.replace(
            r, device="cpu", train=dataclasses.replace(ONE_STEP, seed=5)
        ).fingerprint()
        == fp
    )
    assert dataclasses.replace(r, train=dataclasses.replace(ONE_STEP, lr=0.1)).fingerprint() != fp
    assert dataclasses.replace(r, equal_steps=True).fingerprint() != fp
    train, query, _ = regression_data(seed=1)
    assert dataclasses.replace(r, train_data=train).fingerprint() != fp
    assert dataset_fingerprint(train) != dataset_fingerprint(r.train_data)
    # a data key stands in for the content hash (data rebuilt from settings on every run)
    keyed = dataclasses.replace(r, data_key="mnist5k:100/class")
    assert keyed.fingerprint() != fp
    assert dataclasses.replace(keyed, train_data=train).fingerprint() == keyed.fingerprint()
    assert dataset_fingerprint(torch.utils.data.Subset(train, range(40))) == dataset_fingerprint(
        torch.utils.data.Subset(train, range(40))
    )


def test_cache_is_reused_and_an_interrupted_run_resumes(tmp_path) -> None:
    masks = subset_masks(40, 0.25, 6, seed=0)
    reference = retrain_outputs(_regression_retrainer(), masks, seeds=[0, 1])

    r = _counting(fail_at=5)
    cache = RetrainCache(tmp_path, r.fingerprint())
    with pytest.raises(KeyboardInterrupt):
        retrain_outputs(r, masks, seeds=[0, 1], cache=cache)
    assert r.calls == 5 and cache.num_entries() == 4  # the first four were saved as they finished
    assert len(missing_entries(r, masks, [0, 1], cache)) == 8

    r.fail_at = None
    resumed = retrain_outputs(r, masks, seeds=[0, 1], cache=cache)
    assert r.calls == 5 + 8  # only the missing models were trained
    torch.testing.assert_close(resumed, reference)

    again = retrain_outputs(r, masks, seeds=[0, 1], cache=cache)  # everything cached
    assert r.calls == 13
    torch.testing.assert_close(again, reference)
    # a new alpha that reuses no subset trains only its own models; one shared subset is reused
    more = torch.cat([masks[:1], subset_masks(40, 0.5, 2, seed=0)])
    retrain_outputs(r, more, seeds=[0], cache=cache)
    assert r.calls == 13 + 2
    assert (cache.dir / "config.json").is_file()


def test_merge_step_names_what_is_missing(tmp_path) -> None:
    r = _regression_retrainer()
    cache = RetrainCache(tmp_path, r.fingerprint())
    masks = subset_masks(40, 0.5, 3, seed=0)
    # two "sweep jobs" each retrain one (subset, seed) pair
    for j in (0, 2):
        cache.save(r(masks[j], 0))
    with pytest.raises(MissingRetrainError, match="1 of 3"):
        retrain_outputs(r, masks, seeds=[0], cache=cache, train_missing=False)
    cache.save(r(masks[1], 0))
    merged = retrain_outputs(r, masks, seeds=[0], cache=cache, train_missing=False)
    assert torch.isfinite(merged).all()


def test_corrupt_or_foreign_entries_are_retrained(tmp_path) -> None:
    r = _counting()
    cache = RetrainCache(tmp_path, r.fingerprint())
    masks = subset_masks(40, 0.5, 2, seed=0)
    retrain_outputs(r, masks, seeds=[0], cache=cache)
    cache.path(mask_hash(masks[0]), 0).write_bytes(b"truncated")
    retrain_outputs(r, masks, seeds=[0], cache=cache)
    assert r.calls == 3
    with pytest.raises(ValueError, match="another training config"):
        RetrainCache(tmp_path, "other").save(r(masks[0], 0))


@pytest.mark.slow
def test_process_pool_matches_in_process(tmp_path) -> None:
    """Spawned workers (each imports torch: slow on a busy machine) write the same cache."""
    train, query, _ = two_class_data(n=30, q=4)
    spec = ModelSpec("small_cnn", {"in_channels": 1, "num_classes": 2, "width": 2, "hidden": 4})
    # tiny images so that the CNN runs: reshape the 4 features to 1x2x2
    img = torch.utils.data.TensorDataset(train.tensors[0].view(-1, 1, 2, 2), train.tensors[1])
    qimg = torch.utils.data.TensorDataset(query.tensors[0].view(-1, 1, 2, 2), query.tensors[1])
    r = Retrainer(spec, img, qimg, TrainConfig(epochs=2, batch_size=8, lr=1e-2))
    masks = subset_masks(30, 0.5, 3, seed=0)
    cache = RetrainCache(tmp_path, r.fingerprint())
    parallel = retrain_outputs(r, masks, seeds=[0], cache=cache, n_jobs=2)
    assert cache.num_entries() == 3  # the workers wrote the cache
    torch.testing.assert_close(parallel, retrain_outputs(r, masks, seeds=[0]))
