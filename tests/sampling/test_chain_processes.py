"""Chains split between forked worker processes (``SGLDConfig.chain_processes``): the traces equal
one process's bit for bit (in memory and on disk), a worker's divergence fails the run with the
same error, a store already in ``out_dir`` is loaded in this process, and the ranges tile the
chains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.sampling import SamplerDivergedError, SGLDConfig, sample_loss_traces
from bifrepro.sampling.chain_processes import chain_ranges, resolve_chain_processes
from tests.sampling._models import gaussian_regression, mse_loss

pytestmark = pytest.mark.filterwarnings("ignore::bifrepro.sampling.ChainDriftWarning")

CFG = SGLDConfig(
    step_size=1e-3, nbeta=10.0, localization=100.0, num_chains=5, num_draws=6, burn_in=2,
    batch_size=8, seed=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def problem():
    x, y, _, model = gaussian_regression(n=20, d=3, seed=4)
    train = TensorDataset(x, y)
    return model, train, {"train": train, "query": TensorDataset(x[:4] - 0.2, y[:4])}


def _sample(problem, config: SGLDConfig, out: Path | None = None):
    model, train, observables = problem
    # a lambda: workers are forked, so nothing has to be picklable
    loss = lambda m, b: mse_loss(m, b)  # noqa: E731
    return sample_loss_traces(model, loss, train, observables, config, out, progress=False)


def _same(a, b) -> None:
    for name in ("train", "query"):
        assert torch.equal(a[name], b[name]), name
    assert torch.equal(a.diagnostics.sgld_loss, b.diagnostics.sgld_loss)
    assert torch.equal(a.diagnostics.distance, b.diagnostics.distance)
    for name in ("train", "query"):
        assert torch.equal(a.init_losses[name], b.init_losses[name])


def test_ranges_tile_the_chains() -> None:
    assert chain_ranges(5, 2) == [(0, 3), (3, 2)]
    assert chain_ranges(12, 3) == [(0, 4), (4, 4), (8, 4)]
    for chains, procs in [(7, 3), (2, 2), (9, 4)]:
        ranges = chain_ranges(chains, procs)
        assert sum(n for _, n in ranges) == chains
        assert all(a + n == b for (a, n), (b, _) in zip(ranges, ranges[1:], strict=False))


def test_resolve_caps_at_the_chains_and_declines_off_cpu(monkeypatch) -> None:
    assert resolve_chain_processes(CFG.replace(chain_processes=8), torch.device("cpu"))[0] == 5
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert resolve_chain_processes(CFG.replace(chain_processes=0), torch.device("cpu"))[0] == 2
    n, why = resolve_chain_processes(CFG.replace(chain_processes=2), torch.device("meta"))
    assert n == 1 and "CPU only" in why


def test_in_memory_traces_equal_one_process(problem) -> None:
    one = _sample(problem, CFG)
    two = _sample(problem, CFG.replace(chain_processes=2))
    _same(one, two)
    assert two.out_dir is None and two.sampling_seconds > 0
    assert two.config.num_chains == 5


def test_on_disk_store_equals_one_process_and_reloads(problem, tmp_path: Path) -> None:
    one = _sample(problem, CFG, tmp_path / "one")
    out = tmp_path / "three"
    three = _sample(problem, CFG.replace(chain_processes=3), out)
    _same(one, three)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["sampling_seconds"] > 0
    assert len(manifest["merged_from"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "three"]  # job stores removed
    # a rerun loads the merged store (in this process), whatever chain_processes says
    _same(one, _sample(problem, CFG.replace(chain_processes=2), out))
    _same(one, _sample(problem, CFG, out))


def test_a_diverging_worker_fails_the_run(problem, tmp_path: Path) -> None:
    bad = CFG.replace(step_size=50.0, chain_processes=2)
    with pytest.raises(SamplerDivergedError):
        _sample(problem, bad, tmp_path / "diverged")
    assert not (tmp_path / "diverged" / "manifest.json").exists()  # nothing merged
    with pytest.raises(SamplerDivergedError):
        _sample(problem, bad)


def test_vmapped_chains_refuse_several_processes() -> None:
    with pytest.raises(ValueError, match="chain_processes"):
        CFG.replace(chain_processes=2, chain_batching="on").validate()
    with pytest.raises(ValueError, match="chain_processes"):
        CFG.replace(chain_processes=-1).validate()


def _resolve_in_daemon(queue) -> None:
    queue.put(resolve_chain_processes(CFG.replace(chain_processes=2), torch.device("cpu")))


def test_a_daemonic_worker_samples_in_its_own_process() -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=_resolve_in_daemon, args=(queue,), daemon=True)
    proc.start()
    proc.join()
    n, why = queue.get()
    assert n == 1 and "daemonic" in why
