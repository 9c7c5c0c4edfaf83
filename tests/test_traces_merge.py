"""merge_trace_stores: chain jobs merged equal one run of all chains; every mismatch is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.sampling import SGLDConfig, sample_loss_traces
from bifrepro.traces import (
    LossTraces,
    TraceStoreError,
    TraceStoreMismatchError,
    merge_trace_stores,
)
from tests.sampling._models import gaussian_regression, mse_loss

pytestmark = pytest.mark.filterwarnings("ignore::bifrepro.sampling.ChainDriftWarning")

CFG = SGLDConfig(
    step_size=1e-3, nbeta=10.0, localization=100.0, num_chains=4, num_draws=6, burn_in=3,
    batch_size=8, seed=11,
)  # fmt: skip


@pytest.fixture(scope="module")
def problem():
    torch.set_num_threads(1)
    x, y, _, model = gaussian_regression(n=24, d=3, seed=2)
    train = TensorDataset(x, y)
    query = TensorDataset(x[:5] + 0.3, y[:5])
    return model, train, {"train": train, "query": query}


def _sample(problem, config: SGLDConfig, out: Path | None, **changes):
    model, train, observables = problem
    args = {"model": model, "loss_fn": mse_loss, "train_data": train, "observables": observables}
    args.update(changes)
    return sample_loss_traces(config=config, out_dir=out, progress=False, **args)


def _job(problem, root: Path, first: int, num: int, **changes) -> Path:
    out = root / f"job-{first}-{num}"
    _sample(problem, CFG.replace(first_chain=first, num_chains=num), out, **changes)
    return out


@pytest.fixture(scope="module")
def jobs(problem, tmp_path_factory) -> dict[str, Path]:
    """Chain-job stores of CFG's run: two of 2 chains, four of 1 chain, and a 4-chain run."""
    root = tmp_path_factory.mktemp("jobs")
    out = {f"{j}+{n}": _job(problem, root, j, n) for j, n in [(0, 2), (2, 2)]}
    out |= {f"{j}+1": _job(problem, root, j, 1) for j in range(4)}
    _sample(problem, CFG, root / "single")
    out["single"] = root / "single"
    return out


def _assert_same_traces(a: LossTraces, b: LossTraces) -> None:
    assert sorted(a.names) == sorted(b.names)  # a store lists them sorted
    for name in a.names:
        assert a[name].dtype == b[name].dtype
        assert torch.equal(a[name], b[name]), name  # bit for bit
        assert torch.equal(a.init_losses[name], b.init_losses[name])
    da, db = a.diagnostics, b.diagnostics
    assert torch.equal(da.sgld_loss, db.sgld_loss) and torch.equal(da.distance, db.distance)
    for name in a.names:
        assert torch.equal(da.observed_loss[name], db.observed_loss[name])
    assert da.init_loss == db.init_loss
    assert torch.equal(da.trend_tstat, db.trend_tstat) and da.rhat == db.rhat
    assert da.summary() == db.summary()
    assert a.num_params == b.num_params
    assert a.config.fingerprint() == b.config.fingerprint()


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if ".merging-" in p.name]


@pytest.mark.parametrize("split", [["0+2", "2+2"], ["3+1", "1+1", "0+1", "2+1"]])
def test_merged_chain_jobs_equal_one_run_of_all_chains(problem, jobs, tmp_path, split):
    """Known answer: chains are bit-reproducible, so the merge equals the 4-chain run exactly."""
    in_memory = _sample(problem, CFG, None)
    merged = merge_trace_stores([jobs[k] for k in split], tmp_path / "merged")
    assert merged.config.num_chains == 4 and merged.config.first_chain == 0
    _assert_same_traces(merged, in_memory)
    _assert_same_traces(LossTraces.load(tmp_path / "merged"), in_memory)
    # the files are those a single run writes: same manifest (bar provenance), same arrays
    single = json.loads((jobs["single"] / "manifest.json").read_text())
    mine = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    expected = [0, 2] if len(split) == 2 else [0, 1, 2, 3]
    assert [s["first_chain"] for s in mine.pop("merged_from")] == expected
    assert single.pop("sampling_seconds") > 0 and "sampling_seconds" not in mine  # no one wall time
    assert mine == single
    for rel in ("traces/train.npy", "traces/query.npy", "traces/init_train.npy",
                "diagnostics/sgld_loss.npy", "diagnostics/distance.npy"):  # fmt: skip
        assert np.array_equal(np.load(jobs["single"] / rel), np.load(tmp_path / "merged" / rel))
    # the sampler opens the merged store as its own (same identity) and loads it
    _assert_same_traces(_sample(problem, CFG, tmp_path / "merged"), in_memory)
    _no_leftovers(tmp_path)


def test_a_merge_from_a_later_first_chain_holds_those_chains(problem, jobs, tmp_path):
    merged = merge_trace_stores([jobs["3+1"], jobs["2+1"]], tmp_path / "merged")
    assert merged.config.first_chain == 2 and merged.config.num_chains == 2
    full = _sample(problem, CFG, None)
    assert torch.equal(merged["query"], full["query"][2:4])
    assert merged.config.fingerprint() == CFG.replace(first_chain=2, num_chains=2).fingerprint()


def test_merging_again_loads_the_existing_store(jobs, tmp_path):
    out = tmp_path / "merged"
    merge_trace_stores([jobs["0+2"], jobs["2+2"]], out)
    manifest = out / "manifest.json"
    before = (manifest.read_text(), manifest.stat().st_mtime_ns)
    again = merge_trace_stores([jobs["0+1"], jobs["1+1"], jobs["2+2"]], out)  # same chains
    assert (manifest.read_text(), manifest.stat().st_mtime_ns) == before
    assert again.config.num_chains == 4


def _refused(sources: list[Path], out: Path, match: str, error=TraceStoreMismatchError) -> None:
    with pytest.raises(error, match=match):
        merge_trace_stores(sources, out)
    assert not out.exists()
    _no_leftovers(out.parent)


def test_different_weights_data_or_loss_are_refused(problem, jobs, tmp_path):
    model, train, observables = problem
    moved = type(model)(3, 1, bias=False).double()
    with torch.no_grad():
        moved.weight.copy_(model.weight + 1e-3)
    other = _job(problem, tmp_path, 2, 2, model=moved)
    _refused([jobs["0+2"], other], tmp_path / "m", "model weights")
    x, y = train.tensors
    other = _job(problem, tmp_path / "data", 2, 2, train_data=TensorDataset(x[:20], y[:20]))
    _refused([jobs["0+2"], other], tmp_path / "m", "train_data")

    def doubled(m, batch):
        return 2.0 * mse_loss(m, batch)

    other = _job(problem, tmp_path / "loss", 2, 2, loss_fn=doubled)
    _refused([jobs["0+2"], other], tmp_path / "m", "loss function")


def test_different_settings_or_observables_are_refused(problem, jobs, tmp_path):
    out = tmp_path / "other"
    _sample(problem, CFG.replace(first_chain=2, num_chains=2, step_size=2e-3), out)
    _refused([jobs["0+2"], out], tmp_path / "m", "step_size")
    _, train, observables = problem
    fewer = _job(problem, tmp_path / "obs", 2, 2, observables={"train": train})
    _refused([jobs["0+2"], fewer], tmp_path / "m", "observables")
    shorter = {
        "train": train,
        "query": TensorDataset(*[t[:3] for t in observables["query"].tensors]),
    }
    other = _job(problem, tmp_path / "shape", 2, 2, observables=shorter)
    _refused([jobs["0+2"], other], tmp_path / "m", "observable")


def test_overlapping_or_gapped_chain_ranges_are_refused(jobs, tmp_path):
    _refused([jobs["0+2"], jobs["1+1"]], tmp_path / "m", r"overlap")
    _refused([jobs["0+2"], jobs["0+1"]], tmp_path / "m", r"overlap")
    _refused([jobs["0+1"], jobs["2+2"]], tmp_path / "m", r"gap \(chains 1..1 missing\)")


def test_an_incomplete_or_missing_source_is_refused(problem, jobs, tmp_path):
    partial = tmp_path / "partial"
    _job(problem, tmp_path, 2, 2)
    (tmp_path / "job-2-2").rename(partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    manifest.update(status="running", completed=[6, 3])
    (partial / "manifest.json").write_text(json.dumps(manifest))
    _refused([jobs["0+2"], partial], tmp_path / "m", "not complete")
    _refused([jobs["0+2"], tmp_path / "nothing"], tmp_path / "m", "holds no trace store")


def test_a_damaged_source_is_refused(problem, jobs, tmp_path):
    _job(problem, tmp_path, 2, 2)
    arr = np.load(tmp_path / "job-2-2" / "traces" / "query.npy", mmap_mode="r+")
    arr[1, 4, 0] = np.nan
    arr.flush()
    del arr
    _refused([jobs["0+2"], tmp_path / "job-2-2"], tmp_path / "m", "NaN", TraceStoreError)


def test_an_out_dir_with_other_traces_is_refused_and_kept(jobs, tmp_path):
    out = tmp_path / "merged"
    merge_trace_stores([jobs["0+1"], jobs["1+1"]], out)  # chains 0..1, not 0..3
    before = (out / "manifest.json").read_text()
    with pytest.raises(TraceStoreMismatchError, match="already holds other traces"):
        merge_trace_stores([jobs["0+2"], jobs["2+2"]], out)
    assert (out / "manifest.json").read_text() == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(TraceStoreMismatchError, match="not a trace store"):
        merge_trace_stores([jobs["0+2"], jobs["2+2"]], tmp_path / "junk")
    assert (tmp_path / "junk" / "notes.txt").read_text() == "x"
    _no_leftovers(tmp_path)


def test_a_failure_while_writing_leaves_nothing(jobs, tmp_path, monkeypatch):
    import bifrepro.traces as traces_mod

    real = np.lib.format.open_memmap
    calls = []

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003
        if kwargs.get("mode") == "w+":  # the merged arrays, not the sources read
            calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(traces_mod.np.lib.format, "open_memmap", failing)
    _refused([jobs["0+2"], jobs["2+2"]], tmp_path / "m", "disk full", OSError)
