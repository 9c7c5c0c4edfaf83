"""MLflow tracking: params, config artifact, tags, metrics, figures, statuses, disabled mode,
signals, stale runs, the store lock and the sweep-folder resolver (end-to-end checks with real
processes: tests/reliability/)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from bifrepro.tracking import (
    PARENT_RUN_FILE,
    Terminated,
    flatten_config,
    get_client,
    mark_stale_runs_killed,
    multirun_parent_run_id,
    start_run,
    store_lock,
)


def _cfg(uri: str, enabled: bool = True):
    return OmegaConf.create({
        "seed": 3,
        "experiment": {"name": "unit", "nbeta_default": 30.0},
        "data": {"name": "toydata", "depth": 3},
        "model": {"name": "tiny", "hidden": 4},
        "sampler": {"step_size": 1e-4, "nbeta": "${experiment.nbeta_default}"},
        "tracking": {"enabled": enabled, "uri": uri, "experiment_name": "unit-tests",
                     "artifact_location": None, "run_name": None, "tags": {"team": "bif"}},
    })  # fmt: skip


def test_flatten_config() -> None:
    flat = flatten_config({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None, "f": {}})
    assert flat == {"a.b": "1", "a.c.d": "[1, 2]", "e": "None", "f": "{}"}
    assert len(flatten_config({"long": "x" * 10000})["long"]) <= 6000


def test_run_logs_params_config_tags_metrics_and_figure(mlflow_uri, search_runs) -> None:
    cfg = _cfg(mlflow_uri)
    with start_run(cfg, tags={"device": "cpu"}) as tracker:
        assert tracker.enabled
        tracker.log_metrics({"score": 0.5, "other": 2.0})
        tracker.log_metric_series("curve", [1.0, 2.0, 3.0], [10, 20, 40])
        fig = Figure()
        fig.subplots().plot([0, 1], [0, 1])
        tracker.log_figure(fig, "figures/line.png")
        run_id = tracker.run_id
    runs = search_runs("unit-tests")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    assert row["params.sampler.nbeta"] == "30.0"  # resolved interpolation
    assert row["params.data.depth"] == "3"
    assert row["metrics.score"] == 0.5
    assert row["tags.dataset"] == "toydata" and row["tags.model"] == "tiny"
    assert row["tags.device"] == "cpu" and row["tags.team"] == "bif"
    assert row["tags.mlflow.runName"] == "unit"
    assert len(row["tags.git_commit"]) == 40  # this checkout is a git repository
    client = get_client(mlflow_uri)
    history = client.get_metric_history(run_id, "curve")
    assert [(m.step, m.value) for m in history] == [(10, 1.0), (20, 2.0), (40, 3.0)]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config", "figures"} <= artifacts
    text = client.download_artifacts(run_id, "config/config.yaml")
    saved = OmegaConf.load(text)
    assert saved.sampler.nbeta == 30.0 and saved.experiment.name == "unit"
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == ["figures/line.png"]


def test_failed_body_marks_run_failed(mlflow_uri, search_runs) -> None:
    with pytest.raises(RuntimeError, match="boom"), start_run(_cfg(mlflow_uri)):
        raise RuntimeError("boom")
    runs = search_runs("unit-tests")
    assert runs["status"].tolist() == ["FAILED"]


def test_disabled_tracking_is_a_no_op(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/never/mlflow.db"
    with start_run(_cfg(uri, enabled=False)) as tracker:
        assert not tracker.enabled
        tracker.log_metrics({"x": 1.0})
        tracker.log_figure(Figure(), "f.png")
        tracker.log_artifact(tmp_path)
    assert not (tmp_path / "never").exists()


def test_no_parent_outside_a_multirun(tmp_path) -> None:
    (tmp_path / PARENT_RUN_FILE).write_text(json.dumps({"run_id": "x", "tracking_uri": "y"}))
    assert multirun_parent_run_id() is None


def test_artifacts_default_to_the_store_folder(mlflow_uri, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with start_run(_cfg(mlflow_uri)) as tracker:
        tracker.log_text("hello", "notes/hello.txt")
    exp = get_client(mlflow_uri).get_experiment_by_name("unit-tests")
    store_dir = Path(mlflow_uri[len("sqlite:///") :]).parent
    assert exp.artifact_location == (store_dir / "mlartifacts").as_uri()
    assert (store_dir / "mlartifacts").is_dir()
    assert not (tmp_path / "mlruns").exists()  # nothing lands in the current directory


def test_experiment_is_created_once_with_artifact_location(mlflow_uri, tmp_path) -> None:
    cfg = _cfg(mlflow_uri)
    cfg.tracking.artifact_location = str(tmp_path / "arts")
    with start_run(cfg):
        pass
    with start_run(cfg, run_name="second"):
        pass
    client = get_client(mlflow_uri)
    exp = client.get_experiment_by_name("unit-tests")
    assert exp.artifact_location == (tmp_path / "arts").as_uri()
    assert len(client.search_runs([exp.experiment_id])) == 2


def test_run_records_its_process(mlflow_uri, search_runs) -> None:
    with start_run(_cfg(mlflow_uri)):
        pass
    row = search_runs("unit-tests").iloc[0]
    assert row["tags.host"] == socket.gethostname() and row["tags.pid"] == str(os.getpid())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_stop_signal_marks_the_run_killed(mlflow_uri, search_runs, sig) -> None:  # noqa: ANN001
    # a runner started under nohup ignores SIGHUP, which a run keeps ignored (next test)
    inherited = signal.signal(sig, signal.SIG_DFL)
    try:
        with pytest.raises(Terminated) as info, start_run(_cfg(mlflow_uri)):
            os.kill(os.getpid(), sig)
            time.sleep(10)  # interrupted by the handler
        assert info.value.code == 128 + sig
        assert search_runs("unit-tests")["status"].tolist() == ["KILLED"]
        assert signal.getsignal(sig) == signal.SIG_DFL  # the previous handler is back
    finally:
        signal.signal(sig, inherited)


def test_an_ignored_signal_stays_ignored(mlflow_uri) -> None:
    """``nohup`` ignores SIGHUP on purpose; a run must not undo that."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with start_run(_cfg(mlflow_uri)):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGHUP, previous)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process start times: Linux")
def test_stale_runs_of_dead_processes_on_this_host_are_marked_killed(mlflow_uri) -> None:
    client = get_client(mlflow_uri)
    exp_id = client.create_experiment("stale")
    host, dead = socket.gethostname(), str(_dead_pid())

    def running(**tags: str) -> str:
        return client.create_run(exp_id, tags=tags).info.run_id

    gone = running(host=host, pid=dead)
    reused = running(
        host=host, pid=str(os.getpid()), pid_start="1"
    )  # pid now names another process
    alive = running(host=host, pid=str(os.getpid()))
    elsewhere = running(host="another-node", pid=dead)
    untagged = running(host=host)
    assert sorted(mark_stale_runs_killed(client, exp_id)) == sorted([gone, reused])
    status = {r: client.get_run(r).info.status for r in (gone, reused, alive, elsewhere, untagged)}
    assert status == {
        gone: "KILLED", reused: "KILLED", alive: "RUNNING", elsewhere: "RUNNING", untagged: "RUNNING"
    }  # fmt: skip
    assert dead in client.get_run(gone).data.tags["killed_reason"]


def test_store_lock_creates_the_folder_and_skips_other_stores(tmp_path) -> None:
    with store_lock(f"sqlite:///{tmp_path}/new/mlflow.db"):
        assert (tmp_path / "new" / "mlflow.db.lock").is_file()
    with store_lock("http://127.0.0.1:5000"):
        pass


def test_sweep_id_is_fixed_within_a_config_and_new_for_the_next() -> None:
    node = {"a": "${bifrepro.sweep_id:}", "b": "x_${bifrepro.sweep_id:}"}
    cfg, other = OmegaConf.create(node), OmegaConf.create(node)
    assert f"x_{cfg.a}" == cfg.b and cfg.a.startswith(f"{os.getpid()}-")
    assert other.a != cfg.a


def test_new_experiments_open_on_the_runs_table(mlflow_uri) -> None:
    """MLflow 3's UI opens an experiment on its GenAI overview unless it is tagged as model
    development; experiments bifrepro creates are."""
    from mlflow.tracking import MlflowClient

    from bifrepro.tracking import get_or_create_experiment

    client = MlflowClient(mlflow_uri)
    exp_id = get_or_create_experiment(client, "kind_check")
    tags = client.get_experiment(exp_id).tags
    assert tags.get("mlflow.experimentKind") == "custom_model_development"
    assert get_or_create_experiment(client, "kind_check") == exp_id  # found, not recreated
