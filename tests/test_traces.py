"""Trace stores never return wrong data: identity checks, damaged files, num_params round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.sampling import SGLDConfig, count_sampled_parameters, sample_loss_traces
from bifrepro.traces import LossTraces, TraceStoreError, TraceStoreMismatchError
from tests.sampling._models import mse_loss, regression_problem

pytestmark = pytest.mark.filterwarnings("ignore::bifrepro.sampling.ChainDriftWarning")

CFG = SGLDConfig(
    step_size=1e-3, nbeta=50.0, localization=100.0, num_chains=2, num_draws=6, burn_in=2,
    batch_size=8, checkpoint_every=2,
)  # fmt: skip


def _problem():
    x, y, model = regression_problem()
    return x, y, model, TensorDataset(x, y)


#: Interrupts ``_loss`` after ``after`` calls (None: never). One loss function for every call of
#: a test, since a different loss function is a different store identity.
_STOP: dict[str, int | None] = {"after": None, "calls": 0}


def _loss(m, batch):
    _STOP["calls"] += 1
    if _STOP["after"] is not None and _STOP["calls"] > _STOP["after"]:
        raise KeyboardInterrupt
    return mse_loss(m, batch)


@pytest.fixture(autouse=True)
def _never_stop():
    _STOP.update(after=None, calls=0)
    yield
    _STOP.update(after=None, calls=0)


def _sample(model, ds, out, loss_fn=_loss, train=None):
    train = ds if train is None else train
    return sample_loss_traces(
        model, loss_fn, train, {"train": ds}, CFG, out_dir=out, progress=False
    )


def _interrupted(model, ds, out, after: int = 24) -> None:
    """A store with chain 0 done and 3 draws of chain 1 (checkpointed at 2): the loss function
    raises after ``after`` calls (1 at w*, 2 per draw after 2 burn-in steps per chain)."""
    _STOP.update(after=after, calls=0)
    with pytest.raises(KeyboardInterrupt):
        _sample(model, ds, out)
    _STOP.update(after=None, calls=0)


def test_a_fresh_interpreter_imports_the_traces_alone():
    done = subprocess.run(
        [sys.executable, "-c", "from bifrepro.traces import LossTraces"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_num_params_is_recorded_persisted_and_restored(tmp_path):
    _, _, model, ds = _problem()
    assert count_sampled_parameters(model) == 3
    in_memory = sample_loss_traces(model, mse_loss, ds, {"train": ds}, CFG, progress=False)
    assert in_memory.num_params == 3
    _sample(model, ds, tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["num_params"] == 3
    assert LossTraces.load(tmp_path).num_params == 3


def test_frozen_parameters_are_not_counted():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    assert count_sampled_parameters(model) == 3 + 3 + 1


@pytest.mark.parametrize("complete", [False, True])
def test_different_training_data_is_refused(tmp_path, complete):
    """The SGLD training data shapes the posterior: another train_data must not resume a store."""
    x, y, model, ds = _problem()
    if complete:
        _sample(model, ds, tmp_path)
    else:
        _interrupted(model, ds, tmp_path)
    other_train = TensorDataset(x, y + 1.0)  # same observables, different posterior
    with pytest.raises(TraceStoreMismatchError, match="training data") as err:
        _sample(model, ds, tmp_path, train=other_train)
    assert "train_data" in str(err.value)
    # and the store itself is untouched: the same call still resumes / loads it
    assert _sample(model, ds, tmp_path)["train"].shape == (2, 6, 40)


def test_a_different_loss_function_is_refused(tmp_path):
    _, _, model, ds = _problem()
    _sample(model, ds, tmp_path)

    def scaled_loss(m, batch):  # same losses at w* would be needed to fool the old check
        return 2.0 * mse_loss(m, batch)

    with pytest.raises(TraceStoreMismatchError, match="loss function"):
        _sample(model, ds, tmp_path, loss_fn=scaled_loss)


def test_different_weights_are_refused_even_with_equal_sums(tmp_path):
    """A permutation of the weights keeps (numel, sum, sum of squares) but changes the model."""
    _, _, model, ds = _problem()
    _sample(model, ds, tmp_path)
    permuted = regression_problem()[2]
    with torch.no_grad():
        permuted.weight.copy_(model.weight.flip(1))
    with pytest.raises(TraceStoreMismatchError, match="model weights"):
        _sample(permuted, ds, tmp_path)


def test_sampling_seconds_survive_loading_from_the_store(tmp_path):
    """A rerun that loads finished traces reports what sampling them cost, not the load time."""
    _, _, model, ds = _problem()
    in_memory = sample_loss_traces(model, mse_loss, ds, {"train": ds}, CFG, progress=False)
    assert in_memory.sampling_seconds is not None and in_memory.sampling_seconds > 0
    first = _sample(model, ds, tmp_path)
    recorded = json.loads((tmp_path / "manifest.json").read_text())["sampling_seconds"]
    assert recorded > 0 and first.sampling_seconds == recorded
    assert _sample(model, ds, tmp_path).sampling_seconds == recorded  # loaded, not re-timed
    assert LossTraces.load(tmp_path).sampling_seconds == recorded


def test_complete_status_on_a_partial_store_raises(tmp_path):
    _, _, model, ds = _problem()
    _interrupted(model, ds, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["completed"] != [CFG.num_draws] * CFG.num_chains
    manifest["status"] = "complete"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TraceStoreError, match=r"manifest\.json.*completed draws per chain"):
        LossTraces.load(tmp_path)
    with pytest.raises(TraceStoreError, match=str(tmp_path)):
        _sample(model, ds, tmp_path)


def _overwrite(path: Path, offset_from_end: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) - offset_from_end : len(raw) - offset_from_end + len(data)] = data
    path.write_bytes(bytes(raw))


def test_overwritten_bytes_giving_nan_raise_naming_observable_chain_and_draw(tmp_path):
    _, _, model, ds = _problem()
    _sample(model, ds, tmp_path)
    path = tmp_path / "traces" / "train.npy"
    # float32 [2, 6, 40]: the last draw of chain 1 is the last 160 bytes; put NaN into item 3.
    _overwrite(path, 160 - 3 * 4, np.array([np.nan], dtype=np.float32).tobytes())
    with pytest.raises(TraceStoreError, match=r"observable 'train'.*chain 1, draw 5"):
        LossTraces.load(tmp_path)
    with pytest.raises(TraceStoreError, match="NaN or Inf"):
        _sample(model, ds, tmp_path)  # a completed store is checked before it is returned


def test_nan_in_completed_draws_is_caught_when_the_store_is_finished(tmp_path):
    _, _, model, ds = _problem()
    _interrupted(model, ds, tmp_path)
    done = json.loads((tmp_path / "manifest.json").read_text())["completed"]
    assert done[0] >= 1
    path = tmp_path / "traces" / "train.npy"
    arr = np.load(path, mmap_mode="r+")
    arr[0, 0, 0] = np.inf
    arr.flush()
    del arr
    with pytest.raises(TraceStoreError, match=r"chain 0, draw 0"):
        _sample(model, ds, tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] != "complete"


def test_truncated_array_raises_naming_the_store_and_the_file(tmp_path):
    _, _, model, ds = _problem()
    _sample(model, ds, tmp_path)
    path = tmp_path / "traces" / "train.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TraceStoreError) as err:
        LossTraces.load(tmp_path)
    assert str(tmp_path) in str(err.value) and "train.npy" in str(err.value)
    assert "mmap" not in type(err.value).__name__


def test_garbage_manifest_raises_naming_the_store_and_the_file(tmp_path):
    _, _, model, ds = _problem()
    _sample(model, ds, tmp_path)
    (tmp_path / "manifest.json").write_text('{"status": "compl')
    for call in (lambda: LossTraces.load(tmp_path), lambda: _sample(model, ds, tmp_path)):
        with pytest.raises(TraceStoreError) as err:
            call()
        assert str(tmp_path) in str(err.value) and "manifest.json" in str(err.value)
        assert not isinstance(err.value, json.JSONDecodeError)


def test_damaged_checkpoint_raises_naming_the_file(tmp_path):
    _, _, model, ds = _problem()
    _interrupted(model, ds, tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["completed"] == [6, 3]
    ckpt = tmp_path / "chains" / "chain1.pt"
    assert ckpt.exists()
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(TraceStoreError, match=r"chain1\.pt"):
        _sample(model, ds, tmp_path)


def test_mismatch_errors_are_trace_store_errors_and_value_errors():
    assert issubclass(TraceStoreMismatchError, TraceStoreError)
    assert issubclass(TraceStoreMismatchError, ValueError)
    assert issubclass(TraceStoreError, RuntimeError)
