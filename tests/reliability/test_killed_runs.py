"""Item 6: killed runs do not stay RUNNING.

SIGTERM and SIGHUP (``kill``, SLURM time limits, ``scancel``, a closed terminal) end the run
KILLED, like Ctrl-C, and the process exits 128 + signal. ``kill -9`` leaves no chance to clean up:
the next run of the same MLflow experiment marks the dead process's run KILLED.
"""

from __future__ import annotations

import signal

import pytest
from omegaconf import OmegaConf

from bifrepro.tracking import start_run
from tests.reliability._subprocess import APP, runs, start, wait_for_file


def _start_sleeping_run(tmp_path):  # noqa: ANN001, ANN202
    ready = tmp_path / "ready"
    proc = start(
        [*APP, f"results_dir={tmp_path / 'results'}"],
        cwd=tmp_path,
        RELIABILITY_READY=str(ready),
        RELIABILITY_SLEEP="300",
    )
    wait_for_file(ready, proc)
    return proc, f"sqlite:///{tmp_path / 'results'}/mlflow.db"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_terminated_run_ends_killed(tmp_path, sig: signal.Signals) -> None:
    proc, uri = _start_sleeping_run(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert [r.info.status for r in runs(uri)] == ["KILLED"]


def test_run_of_a_dead_process_is_closed_by_the_next_run(tmp_path) -> None:
    proc, uri = _start_sleeping_run(tmp_path)
    proc.kill()  # SIGKILL: the run cannot be closed by its own process
    proc.communicate(timeout=60)
    (dead,) = runs(uri)
    assert dead.info.status == "RUNNING" and dead.data.tags["pid"] == str(proc.pid)
    cfg = OmegaConf.create({"experiment": {"name": "toy_hierarchy"}, "tracking": {
        "enabled": True, "uri": uri, "experiment_name": "toy_hierarchy",
        "artifact_location": None, "run_name": "next", "tags": {}}})  # fmt: skip
    with start_run(cfg):
        pass
    old, new = runs(uri)
    assert old.info.run_id == dead.info.run_id and old.info.status == "KILLED"
    assert str(proc.pid) in old.data.tags["killed_reason"]
    assert new.info.status == "FINISHED"
