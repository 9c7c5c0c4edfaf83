"""Chains as separate jobs: finding the chain-job stores of a run, and the language experiment's
Hydra multirun over ``sampler.first_chain`` followed by the run of all chains, which merges the
jobs' stores and scores exactly as one run of all chains."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.errors import ConfigCompositionException
from torch.utils.data import TensorDataset

from bifrepro.config import ConfigError
from bifrepro.config.language import LanguageConfig
from bifrepro.sampling import SGLDConfig, sample_loss_traces
from bifrepro.sampling.chain_jobs import chain_job_stores, merge_chain_jobs
from bifrepro.traces import LossTraces
from tests.experiments.test_language import TINY
from tests.sampling._models import gaussian_regression, mse_loss

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore::bifrepro.sampling.ChainDriftWarning")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _chain_job_log() -> Iterator[list[str]]:
    """Messages of bifrepro.sampling.chain_jobs, by a handler of its own (a multirun's logging
    set-up in this process drops caplog's handler and disables loggers created before it)."""
    logger, records = logging.getLogger("bifrepro.sampling.chain_jobs"), _Records()
    old = (logger.disabled, logger.level)
    logger.disabled, logger.level = False, logging.INFO
    logger.addHandler(records)
    try:
        yield records.messages
    finally:
        logger.removeHandler(records)
        logger.disabled, logger.level = old


# -- finding and merging the stores of chain jobs (a tiny linear-Gaussian model) ------------------
CFG = SGLDConfig(
    step_size=1e-3, nbeta=10.0, localization=100.0, num_chains=4, num_draws=5, burn_in=2,
    batch_size=8, seed=5,
)  # fmt: skip


@pytest.fixture(scope="module")
def problem():
    torch.set_num_threads(1)
    x, y, _, model = gaussian_regression(n=20, d=3, seed=4)
    train = TensorDataset(x, y)
    return model, train, {"train": train, "query": TensorDataset(x[:4] - 0.2, y[:4])}


def _store_dir(root: Path):
    def store_dir(config: SGLDConfig) -> Path:
        return root / f"traces-{config.fingerprint()}"

    return store_dir


def _sample(problem, config: SGLDConfig, out: Path | None) -> LossTraces:
    model, train, observables = problem
    return sample_loss_traces(model, mse_loss, train, observables, config, out, progress=False)


def _jobs(problem, root: Path, ranges: list[tuple[int, int]]) -> None:
    for first, num in ranges:
        config = CFG.replace(first_chain=first, num_chains=num)
        _sample(problem, config, _store_dir(root)(config))


def test_merge_chain_jobs_merges_stores_that_cover_the_run(problem, tmp_path):
    _jobs(problem, tmp_path, [(0, 1), (1, 1), (2, 2)])
    out = _store_dir(tmp_path)(CFG)
    with _chain_job_log() as messages:
        used = merge_chain_jobs(out, CFG.replace(chain_batching="auto"), _store_dir(tmp_path))
    assert any("merged chains 0..3 from 3 chain-job stores" in m for m in messages)
    assert used.chain_batching == "off"  # the jobs ran one chain after another
    merged = LossTraces.load(out)
    reference = _sample(problem, CFG, None)
    for name in ("train", "query"):
        assert torch.equal(merged[name], reference[name])
    # the sampler now loads the merged store as the run's own
    assert torch.equal(_sample(problem, used, out)["query"], reference["query"])


def test_the_fewest_stores_are_chosen_and_foreign_stores_ignored(problem, tmp_path):
    _jobs(problem, tmp_path, [(0, 2), (0, 1), (1, 1), (2, 2)])
    # a complete store of chains 2..3 in a folder the run's key does not name (other inputs)
    config = CFG.replace(first_chain=2, num_chains=2)
    shutil.copytree(_store_dir(tmp_path)(config), tmp_path / "traces-elsewhere")
    stores = chain_job_stores(_store_dir(tmp_path)(CFG), CFG, _store_dir(tmp_path))
    assert stores == [_store_dir(tmp_path)(CFG.replace(num_chains=2)), _store_dir(tmp_path)(config)]


def test_no_merge_without_a_complete_cover(problem, tmp_path):
    _jobs(problem, tmp_path, [(0, 2), (3, 1)])
    other = CFG.replace(first_chain=2, num_chains=1, step_size=2e-3)  # other settings
    _sample(problem, other, _store_dir(tmp_path)(CFG.replace(first_chain=2, num_chains=1)))
    out = _store_dir(tmp_path)(CFG)
    with _chain_job_log() as messages:
        assert merge_chain_jobs(out, CFG, _store_dir(tmp_path)) == CFG
    assert not out.exists()
    assert any("hold chains 0..1, 3..3, not all of 0..3" in m for m in messages)
    # an incomplete job store does not count either
    config = CFG.replace(first_chain=2, num_chains=1)
    manifest_path = _store_dir(tmp_path)(config) / "manifest.json"
    shutil.rmtree(manifest_path.parent)
    _sample(problem, config, manifest_path.parent)
    manifest = json.loads(manifest_path.read_text())
    manifest["status"] = "running"
    manifest_path.write_text(json.dumps(manifest))
    assert chain_job_stores(out, CFG, _store_dir(tmp_path)) is None


def test_an_existing_store_of_the_run_is_left_alone(problem, tmp_path):
    _jobs(problem, tmp_path, [(0, 2), (2, 2)])
    out = _store_dir(tmp_path)(CFG)
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # an interrupted run's: it resumes, no merge
    assert merge_chain_jobs(out, CFG, _store_dir(tmp_path)) == CFG
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


# -- the language experiment: chain jobs (a Hydra multirun) then the run of all chains -----------
def _tiny() -> list[str]:
    return [*TINY, "experiment.methods=[bif]"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """One in-process run of both chains (results folder, metrics); its cache holds the model."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import experiments.language as lang
    from bifrepro.config import register_configs

    root = tmp_path_factory.mktemp("reference")
    register_configs()
    GlobalHydra.instance().clear()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", [*_tiny(), f"results_dir={root}", "tracking.enabled=false"])
            metrics = lang.run(cfg)
    finally:
        GlobalHydra.instance().clear()
        torch.set_num_threads(n)
    return root, metrics


def _with_model_of(reference_dir: Path, results: Path) -> None:
    """Copy the reference's tokenizer and trained model (not its traces) into ``results``."""
    cache = results / "cache" / "language"
    cache.mkdir(parents=True)
    for src in (reference_dir / "cache" / "language").iterdir():
        if src.name.startswith(("tokenizer-", "lm-")):
            shutil.copytree(src, cache / src.name)


def _assert_same_scores(reference: tuple[Path, dict[str, float]], results: Path, metrics) -> None:
    ref_dir, ref = reference
    scores = [k for k in ref if k.startswith(("token/", "sequence/", "chain/", "health/"))]
    assert scores
    for key in scores:
        assert metrics[key] == ref[key] or (math.isnan(ref[key]) and math.isnan(metrics[key])), key
    pd.testing.assert_frame_equal(
        pd.read_csv(results / "language" / "benchmark.csv"),
        pd.read_csv(ref_dir / "language" / "benchmark.csv"),
    )


def _full_run_config(hydra_compose, results: Path):
    return hydra_compose([*_tiny(), f"results_dir={results}", "tracking.enabled=false"])


def _merged_run(cfg, results: Path) -> dict[str, float]:
    """The run of both chains, which must merge the chain jobs' stores."""
    import experiments.language as lang

    with _chain_job_log() as messages:
        metrics = lang.run(cfg)
    assert any("merged chains 0..1 from 2 chain-job stores" in m for m in messages)
    stores = sorted((results / "cache" / "language").glob("traces-*/manifest.json"))
    manifests = {
        (m["config"]["first_chain"], m["config"]["num_chains"]): m
        for m in (json.loads(p.read_text()) for p in stores)
    }
    assert sorted(manifests) == [(0, 1), (0, 2), (1, 1)]
    assert [s["first_chain"] for s in manifests[0, 2]["merged_from"]] == [0, 1]
    return metrics


def test_multirun_chain_jobs_then_the_full_run_merges_them(
    reference, hydra_compose, monkeypatch, mlflow_uri, search_runs, tmp_path
):
    """Hydra multirun over sampler.first_chain (basic launcher, in process), then the run of both
    chains: it merges the jobs' stores instead of sampling, and scores exactly as one run."""
    from hydra.core.global_hydra import GlobalHydra

    import experiments.language as lang

    results = tmp_path / "results"
    _with_model_of(reference[0], results)
    cfg = _full_run_config(hydra_compose, results)  # composed before main() clears Hydra
    torch.set_num_threads(1)
    argv = [
        "language", "-m", *_tiny(), f"results_dir={results}", f"tracking.uri={mlflow_uri}",
        "sampler.num_chains=1", "sampler.first_chain=0,1", "experiment.chain_job=true",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", argv)
    try:
        lang.main()
    finally:
        GlobalHydra.instance().clear()
    assert not (results / "language").exists()  # chain jobs write no results
    runs = search_runs("language")
    jobs = runs[runs["tags.chain_job"] == "true"]
    assert sorted(jobs["tags.chains"]) == ["0..0", "1..1"]
    assert set(jobs["status"]) == {"FINISHED"}
    assert "metrics.timing/bif/sampling_seconds" in jobs
    assert "metrics.token/bif/all_other/mrr" not in jobs  # no scores
    metrics = _merged_run(cfg, results)
    _assert_same_scores(reference, results, metrics)


def test_chain_job_settings_are_validated(hydra_compose, tmp_path):
    import experiments.language as lang

    base = [*_tiny(), f"results_dir={tmp_path}", "tracking.enabled=false"]
    with pytest.raises(ConfigError, match="experiment.chain_job"):
        lang.run(hydra_compose([*base, "experiment.chain_job=true", "calibration=auto"]))
    with pytest.raises(ConfigCompositionException, match="experiment.chain_job"):
        hydra_compose([*base, "experiment.chain_job=sometimes"])
    with pytest.raises(ValueError, match="LanguageConfig.chain_job"):
        LanguageConfig(chain_job="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "cache").exists()  # refused before any compute


def _sweep(results: Path, sweep_dir: Path, launcher: list[str]) -> None:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "experiments.language", "-m", *_tiny(), f"results_dir={results}",
        "tracking.enabled=false", "sampler.num_chains=1", "sampler.first_chain=0,1",
        "experiment.chain_job=true", f"hydra.sweep.dir={sweep_dir}", *launcher,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"],
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
    ],
    ids=["joblib", "submitit_local"],
)
def test_chain_jobs_as_parallel_processes(reference, hydra_compose, tmp_path, launcher):
    """The scale-out path: chain jobs in separate processes (joblib, submitit's local executor)
    sharing one cache, then the run of all chains merges them."""
    if launcher[0].endswith("submitit_local"):
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    results = tmp_path / "results"
    _with_model_of(reference[0], results)
    _sweep(results, tmp_path / "sweep", launcher)
    torch.set_num_threads(1)
    metrics = _merged_run(_full_run_config(hydra_compose, results), results)
    _assert_same_scores(reference, results, metrics)


@pytest.mark.slow
def test_parallel_chain_jobs_build_a_cold_cache_once(reference, hydra_compose, tmp_path):
    """Without a model in the cache, the parallel jobs take turns (file lock): one trains it."""
    results = tmp_path / "results"
    _sweep(
        results, tmp_path / "sweep", ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"]
    )
    assert len(list((results / "cache" / "language").glob("lm-*"))) == 1
    logs = [p.read_text() for p in sorted((tmp_path / "sweep").glob("*/*.log"))]
    assert len(logs) == 2
    assert sum("training the embedded" in text for text in logs) == 1  # the other one waited
    torch.set_num_threads(1)
    metrics = _merged_run(_full_run_config(hydra_compose, results), results)
    assert math.isfinite(metrics["token/bif/all_other/mrr"])
