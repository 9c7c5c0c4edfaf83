"""Item 5: multiruns started in the same second get their own sweep folders and parent runs, and a
sweep folder that already holds a parent run is refused."""

from __future__ import annotations

import json

from bifrepro.tracking import get_client
from tests.reliability._subprocess import APP, run, runs, start


def test_simultaneous_multiruns_keep_apart_and_a_used_folder_is_refused(tmp_path) -> None:
    results = tmp_path / "results"
    uri = f"sqlite:///{results}/mlflow.db"
    get_client(uri)  # the store exists already: this test is about the sweep folders (item 4 aside)
    # both start in the same second: ${now:%Y-%m-%d_%H-%M-%S} is the same for both
    args = [*APP, "-m", "seed=0,1", f"results_dir={results}"]
    now = "2030-01-02T03:04:05"
    procs = [start(args, cwd=tmp_path, RELIABILITY_NOW=now) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]

    sweeps = sorted((tmp_path / "multirun" / "toy_hierarchy").iterdir())
    assert len(sweeps) == 2, sweeps
    assert all(s.name.startswith("2030-01-02_03-04-05_") for s in sweeps)
    parents = [json.loads((s / ".mlflow_parent_run.json").read_text())["run_id"] for s in sweeps]
    assert len(set(parents)) == 2
    for sweep in sweeps:
        assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    all_runs = runs(uri)
    assert {r.info.status for r in all_runs} == {"FINISHED"}
    children = [r.data.tags.get("mlflow.parentRunId") for r in all_runs]
    assert sorted(c for c in children if c) == sorted(parents * 2)  # two children each

    again = run([*APP, "-m", "seed=2", f"results_dir={results}", f"hydra.sweep.dir={sweeps[0]}"],
                cwd=tmp_path)  # fmt: skip
    assert again.returncode == 2
    assert "hydra.sweep.dir" in again.stderr and parents[0] in again.stderr
    assert "Traceback" not in again.stderr
    assert len(runs(uri)) == len(all_runs)  # no run attached to the other sweep's parent
