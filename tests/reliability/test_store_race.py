"""Item 4: processes that create a fresh MLflow store at the same moment all succeed."""

from __future__ import annotations

import time

from bifrepro.tracking import get_client
from tests.reliability._subprocess import runs, start

#: One MLflow run through start_run, begun when the file argv[3] appears (after the imports).
_SCRIPT = """
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from bifrepro.tracking import start_run
uri, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
cfg = OmegaConf.create({"experiment": {"name": "toy_hierarchy"}, "tracking": {
    "enabled": True, "uri": uri, "experiment_name": "toy_hierarchy",
    "artifact_location": None, "run_name": None, "tags": {}}})
ready.touch()
while not go.exists():
    time.sleep(0.01)
with start_run(cfg) as tracker:
    tracker.log_metrics({"x": 1.0})
"""


def test_parallel_first_runs_share_a_fresh_store(tmp_path) -> None:
    """Without the store lock, MLflow's schema migrations race: runs crash and the file can be
    left half-migrated (``table _alembic_tmp_... already exists``) for every later command."""
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(3)]
    procs = [start(["-c", _SCRIPT, uri, str(r), str(go)], cwd=tmp_path) for r in ready]
    deadline = time.time() + 120
    while not all(r.exists() for r in ready) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()  # all three open the fresh store at the same moment
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    assert [r.info.status for r in runs(uri)] == ["FINISHED"] * 3
    get_client(uri).search_experiments()  # the store still opens afterwards
