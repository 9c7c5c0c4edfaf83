"""On-disk traces: resume after kill -9, refusal of a mismatched out_dir, divergence bookkeeping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.sampling import (
    SamplerDivergedError,
    SGLDConfig,
    TraceStoreMismatchError,
    sample_loss_traces,
)
from bifrepro.traces import LossTraces
from tests.sampling import _resume_job_batching
from tests.sampling._models import ce_loss, mse_loss, regression_problem, small_mlp_problem

REPO = Path(__file__).resolve().parents[2]


def _completed(out: Path) -> list[int]:
    try:
        return json.loads((out / "manifest.json").read_text())["completed"]
    except (FileNotFoundError, json.JSONDecodeError):
        return [0, 0]


def _sequential_kill_point(done: list[int]) -> bool:
    """Inside the second chain, past a checkpoint, with draws left to do."""
    return done[0] == 60 and done[1] >= 9


def _batched_kill_point(done: list[int]) -> bool:
    """Both chains (which run in lockstep) past a checkpoint, with draws left to do."""
    return min(done) >= 9


@pytest.mark.filterwarnings("ignore::bifrepro.sampling.ChainDriftWarning")
@pytest.mark.parametrize(
    ("mode", "kill_point"), [("off", _sequential_kill_point), ("on", _batched_kill_point)]
)
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, mode, kill_point):
    torch.set_num_threads(1)
    reference = _resume_job_batching.run(None, mode)

    out = tmp_path / "traces"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = str(Path(_resume_job_batching.__file__))
    proc = subprocess.Popen([sys.executable, script, str(out), mode], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if kill_point(_completed(out)):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the job finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"
    assert kill_point(manifest["completed"]) and min(manifest["completed"]) < 60
    with pytest.raises(RuntimeError, match="not complete"):
        LossTraces.load(out)

    resumed = _resume_job_batching.run(str(out), mode)
    for name in ("train", "query"):
        assert torch.equal(resumed[name], reference[name]), name
    torch.testing.assert_close(
        resumed.diagnostics.distance, reference.diagnostics.distance.double()
    )
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"

    reopened = LossTraces.load(out)
    assert torch.equal(reopened["query"], reference["query"])


@pytest.mark.parametrize("preconditioner", ["none", "rmsprop_frozen"])
@pytest.mark.parametrize(("mode", "fail_at"), [("off", 150), ("on", 80)])
def test_in_process_interruption_resumes_from_checkpoint(tmp_path, mode, fail_at, preconditioner):
    """An exception mid-chain (like Ctrl-C) leaves a resumable store; rerun completes it exactly.

    Batched chains call ``loss_fn`` once per step for all chains, hence the earlier ``fail_at``.
    With the frozen preconditioner the checkpointed V must come back, and stay frozen: the
    resumed step count is past burn-in.
    """
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(
        step_size=1e-3,
        nbeta=50.0,
        localization=100.0,
        num_chains=2,
        num_draws=30,
        burn_in=4,
        thinning=3,
        batch_size=8,
        checkpoint_every=4,
        chain_batching=mode,
        preconditioner=preconditioner,
    )
    reference = sample_loss_traces(model, mse_loss, ds, {"train": ds}, cfg, progress=False)

    # One loss function for both calls (a different one would be a different store identity).
    calls = {"n": 0, "fail_at": fail_at}

    def flaky(m, batch):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return mse_loss(m, batch)

    out = tmp_path / "t"
    with pytest.raises(KeyboardInterrupt):
        sample_loss_traces(model, flaky, ds, {"train": ds}, cfg, out_dir=out, progress=False)
    assert 0 < sum(_completed(out)) < 60
    calls["fail_at"] = -1
    resumed = sample_loss_traces(model, flaky, ds, {"train": ds}, cfg, out_dir=out, progress=False)
    assert torch.equal(resumed["train"], reference["train"])


def test_completed_store_is_loaded_not_resampled(tmp_path):
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(num_chains=1, num_draws=5, burn_in=0, batch_size=8)
    calls = {"grad": 0}

    def counting(m, b):
        calls["grad"] += int(torch.is_grad_enabled())
        return mse_loss(m, b)

    first = sample_loss_traces(
        model, counting, ds, {"train": ds}, cfg, out_dir=tmp_path, progress=False
    )
    assert calls["grad"] > 0
    calls["grad"] = 0
    second = sample_loss_traces(
        model, counting, ds, {"train": ds}, cfg, out_dir=tmp_path, progress=False
    )
    assert calls["grad"] == 0
    assert torch.equal(first["train"], second["train"])


def test_different_config_model_or_data_is_refused(tmp_path):
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(num_chains=1, num_draws=3, burn_in=0, batch_size=8)
    sample_loss_traces(model, mse_loss, ds, {"train": ds}, cfg, out_dir=tmp_path, progress=False)
    with pytest.raises(TraceStoreMismatchError, match="step_size"):
        sample_loss_traces(
            model, mse_loss, ds, {"train": ds}, cfg.replace(step_size=5e-4), out_dir=tmp_path
        )
    _, _, other_model = regression_problem(seed=5)
    with pytest.raises(TraceStoreMismatchError, match="model weights"):
        sample_loss_traces(other_model, mse_loss, ds, {"train": ds}, cfg, out_dir=tmp_path)
    shuffled = TensorDataset(x, y.flip(0))
    with pytest.raises(TraceStoreMismatchError, match="different data"):
        sample_loss_traces(model, mse_loss, ds, {"train": shuffled}, cfg, out_dir=tmp_path)
    # Speed-only settings are not part of the identity: a different eval batch size resumes fine.
    again = sample_loss_traces(
        model,
        mse_loss,
        ds,
        {"train": ds},
        cfg.replace(eval_batch_size=3),
        out_dir=tmp_path,
        progress=False,
    )
    assert again["train"].shape == (1, 3, 40)


def test_divergence_leaves_nothing_marked_complete(tmp_path):
    ds, model = small_mlp_problem()
    cfg = SGLDConfig(
        step_size=10.0,
        nbeta=100.0,
        localization=0.0,
        num_chains=1,
        num_draws=5,
        burn_in=0,
        batch_size=16,
    )
    with pytest.raises(SamplerDivergedError):
        sample_loss_traces(model, ce_loss, ds, {"train": ds}, cfg, out_dir=tmp_path, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "diverged"
    assert "diverged" in manifest["error"]
    with pytest.raises(RuntimeError, match="not complete"):
        LossTraces.load(tmp_path)
