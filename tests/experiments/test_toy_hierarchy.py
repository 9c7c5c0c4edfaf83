"""The toy hierarchy experiment end to end: run(cfg), MLflow read-back, multiruns, the science."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import experiments.toy_hierarchy as toy
from bifrepro.tracking import PARENT_RUN_FILE

REPO = Path(__file__).resolve().parents[2]
#: A tiny but complete run: all four stages are learned by step 600.
TINY = [
    "experiment.steps=600",
    "experiment.num_checkpoints=6",
    "experiment.first_checkpoint=60",
    "sampler.num_chains=2",
    "sampler.num_draws=30",
    "sampler.burn_in=5",
    "sampler.thinning=2",
]
FIGURES = ("fig1_mode_strengths.png", "fig2_influence_curves.png", "fig3_influence_matrices.png")
TABLES = (
    "influence_curves.csv",
    "pair_metrics.csv",
    "checkpoint_metrics.csv",
    "mode_strengths.csv",
    "metrics.json",
)


def test_run_writes_results_and_mlflow(hydra_compose, mlflow_uri, search_runs, tmp_path) -> None:
    cfg = hydra_compose([*TINY, f"results_dir={tmp_path}", f"tracking.uri={mlflow_uri}"])
    metrics = toy.run(cfg)
    out = tmp_path / "toy_hierarchy"
    for name in FIGURES + TABLES:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporaries
    # the stages are learned in order, coarse first
    stages = [metrics[f"transition_step/stage{k}"] for k in range(4)]
    assert stages == sorted(stages) and stages[-1] < 600
    assert 0.0 <= metrics["sign_agreement_bif_loo_mean"] <= 1.0
    assert -1.0 <= metrics["spearman_bif_loo_mean"] <= 1.0
    # leave-one-out is deterministic: dog -> sparrow is helpful, then harmful
    assert metrics["focus/dog_to_sparrow/sign_flip_loo"] == 1.0
    assert (
        metrics["focus/dog_to_sparrow/helpful_peak_loo"]
        < metrics["focus/dog_to_sparrow/harmful_peak_loo"]
    )
    pairs = pd.read_csv(out / "pair_metrics.csv")
    assert len(pairs) == 8 * 7
    curves = pd.read_csv(out / "influence_curves.csv")
    assert len(curves) == 6 * 8 * 8 and set(curves.columns) >= {"bif_covariance", "leave_one_out"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["spearman_bif_loo_mean"] == pytest.approx(
        metrics["spearman_bif_loo_mean"], nan_ok=True
    )

    runs = search_runs("toy_hierarchy")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    assert row["params.sampler.num_draws"] == "30" and row["params.experiment.steps"] == "600"
    assert row["tags.dataset"] == "hierarchy" and row["tags.device"] == "cpu"
    assert row["metrics.sign_agreement_bif_loo_mean"] == pytest.approx(
        metrics["sign_agreement_bif_loo_mean"]
    )
    from bifrepro.tracking import get_client

    client = get_client(mlflow_uri)
    figs = {a.path for a in client.list_artifacts(row["run_id"], "figures")}
    assert figs == {f"figures/{f}" for f in FIGURES}
    hist = client.get_metric_history(row["run_id"], "influence/loo/dog_to_sparrow")
    assert len(hist) == 6 and all(m.step > 0 for m in hist)


def _main(monkeypatch, argv: list[str]) -> None:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    # Hydra re-raises instead of exiting when HYDRA_FULL_ERROR is set: test the user-facing path.
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["toy_hierarchy", *argv])
    try:
        toy.main()
    finally:
        GlobalHydra.instance().clear()


def test_multirun_creates_parent_and_children(
    monkeypatch, mlflow_uri, search_runs, tmp_path
) -> None:
    sweep_dir = tmp_path / "sweep"
    _main(
        monkeypatch,
        [
            "-m",
            *TINY,
            "sampler.num_draws=10",
            "experiment.num_checkpoints=3",
            f"results_dir={tmp_path}",
            f"tracking.uri={mlflow_uri}",
            f"hydra.sweep.dir={sweep_dir}",
            "sampler.nbeta=50,100",
        ],
    )
    parent_id = json.loads((sweep_dir / PARENT_RUN_FILE).read_text())["run_id"]
    runs = search_runs("toy_hierarchy")
    assert len(runs) == 3
    parent = runs[runs.run_id == parent_id].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent_id]
    assert parent["status"] == "FINISHED"
    assert sorted(children["params.sampler.nbeta"]) == ["100.0", "50.0"]
    assert set(children["status"]) == {"FINISHED"}
    assert parent["params.sweep.sampler.nbeta"] == "50,100"
    assert sorted(children["tags.mlflow.runName"]) == [
        "toy_hierarchy sampler.nbeta=100",
        "toy_hierarchy sampler.nbeta=50",
    ]
    # sweep jobs write their figures into their own job folders, not into results/
    for job in ("0", "1"):
        assert (sweep_dir / job / "fig2_influence_curves.png").exists()
    assert not (tmp_path / "toy_hierarchy").exists()


def test_failed_job_marks_parent_failed(monkeypatch, mlflow_uri, search_runs, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    with pytest.raises(SystemExit):
        _main(
            monkeypatch,
            [
                "-m",
                *TINY,
                f"results_dir={tmp_path}",
                f"tracking.uri={mlflow_uri}",
                f"hydra.sweep.dir={sweep_dir}",
                "sampler.step_size=-1",
            ],
        )
    runs = search_runs("toy_hierarchy")
    parent_id = json.loads((sweep_dir / PARENT_RUN_FILE).read_text())["run_id"]
    assert runs.set_index("run_id").loc[parent_id, "status"] == "FAILED"
    assert runs.set_index("run_id").loc[parent_id, "tags.failed_jobs"] == "job_0"
    assert "sampler.step_size" in (sweep_dir / ".mlflow_failed_jobs" / "job_0.txt").read_text()


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(mlflow_uri, search_runs, tmp_path) -> None:
    """The local scale-out path: `-m hydra/launcher=local_parallel` from the command line."""
    sweep_dir = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "experiments.toy_hierarchy",
        "-m",
        "hydra/launcher=local_parallel",
        *TINY,
        "experiment.num_checkpoints=3",
        "sampler.num_draws=10",
        f"results_dir={tmp_path}",
        f"tracking.uri={mlflow_uri}",
        f"hydra.sweep.dir={sweep_dir}",
        "sampler.nbeta=50,100",
    ]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib" in proc.stdout + proc.stderr
    runs = search_runs("toy_hierarchy")
    parent_id = json.loads((sweep_dir / PARENT_RUN_FILE).read_text())["run_id"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent_id]
    assert len(children) == 2 and set(children["status"]) == {"FINISHED"}
    assert runs.set_index("run_id").loc[parent_id, "status"] == "FINISHED"


@pytest.mark.slow
def test_default_run_reproduces_the_sign_flip(hydra_compose, tmp_path) -> None:
    """The full default experiment: BIF flips sign and peaks where leave-one-out does."""
    metrics = toy.run(hydra_compose([f"results_dir={tmp_path}", "tracking.enabled=false"]))
    assert metrics["chains_healthy_fraction"] >= 0.9
    for est in ("bif", "loo", "analytic"):
        assert metrics[f"focus/dog_to_sparrow/sign_flip_{est}"] == 1.0
    # helpful first, harmful later, for BIF as for leave-one-out
    assert (
        metrics["focus/dog_to_sparrow/helpful_peak_bif"]
        < metrics["focus/dog_to_sparrow/harmful_peak_bif"]
    )
    # the harmful peak lies within a factor 2 of the leave-one-out one
    ratio = (
        metrics["focus/dog_to_sparrow/harmful_peak_bif"]
        / metrics["focus/dog_to_sparrow/harmful_peak_loo"]
    )
    assert 0.5 <= ratio <= 2.0
    assert metrics["spearman_bif_loo_mean"] > 0.3
    assert np.isfinite(metrics["sign_agreement_bif_loo_mean"])


def test_bad_values_fail_before_any_compute(hydra_compose, monkeypatch, tmp_path) -> None:
    from bifrepro.config import ConfigError

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("compute started")

    monkeypatch.setattr(toy, "run_toy_protocol", boom)
    base = [f"results_dir={tmp_path}", "tracking.enabled=false"]
    for override, key in [
        ("sampler.step_size=-1", "sampler.step_size"),
        ("experiment.focus_item=unicorn", "experiment.focus_item"),
        ("experiment.focus_targets=[dog]", "experiment.focus_targets"),
        ("experiment.focus_targets=[]", "experiment.focus_targets"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            toy.run(hydra_compose([*base, override]))
    assert not (tmp_path / "toy_hierarchy").exists()


def test_a_diverged_sampler_fails_the_run_and_keeps_the_old_results(
    hydra_compose, mlflow_uri, search_runs, monkeypatch, tmp_path
) -> None:
    from bifrepro.sampling import SamplerDivergedError

    def diverge(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise SamplerDivergedError("chain 1 diverged at checkpoint 3")

    monkeypatch.setattr(toy, "run_toy_protocol", diverge)
    out = tmp_path / "toy_hierarchy"
    out.mkdir()
    (out / "metrics.json").write_text('{"old": true}')
    cfg = hydra_compose([*TINY, f"results_dir={tmp_path}", f"tracking.uri={mlflow_uri}"])
    with pytest.raises(SamplerDivergedError):
        toy.run(cfg)
    assert [p.name for p in out.iterdir()] == ["metrics.json"]
    assert json.loads((out / "metrics.json").read_text()) == {"old": True}
    assert search_runs("toy_hierarchy").iloc[0]["status"] == "FAILED"


def test_a_second_run_replaces_the_whole_result_set(hydra_compose, tmp_path) -> None:
    out = tmp_path / "toy_hierarchy"
    (out / "calibration").mkdir(parents=True)  # a sub-folder of another run is kept
    (out / "stale.csv").write_text("from an older version\n")
    toy.run(hydra_compose([*TINY, f"results_dir={tmp_path}", "tracking.enabled=false"]))
    names = {p.name for p in out.iterdir()}
    assert names == {*FIGURES, *TABLES, "calibration"}
    assert not list(tmp_path.glob(".toy_hierarchy.*"))
