"""The compute experiment end to end on tiny grids: tables, slopes, crossover, time-to-equal-LDS."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

import experiments.compute as compute
from bifrepro.config import ConfigError
from tests.experiments.test_lds import TINY, tiny_lds  # noqa: F401 - shared fixture

GRIDS = [
    "experiment=compute",
    "compute.n_grid=[20,40]",
    "compute.q_grid=[4,8]",
    "compute.width_grid=[2,4]",
    "compute.draws_grid=[4,8]",
    "compute.n_base=40",
    "compute.q_base=4",
    "compute.grid_draws=4",
    # GradSim as the reference keeps the test fast (kronfluence costs seconds per call even on
    # tiny models; EK-FAC runs in the LDS test); the crossover logic does not depend on it
    "compute.methods=[bif,gradsim]",
    "compute.reference=gradsim",
]


def test_run_writes_tables_figures_and_mlflow(
    tiny_lds,  # noqa: F811 - its retraining and score caches serve time-to-equal-LDS
    hydra_compose,
    mlflow_uri,
    search_runs,
) -> None:
    results, _ = tiny_lds
    overrides = [o for o in TINY if o != "experiment=lds"] + GRIDS
    cfg = hydra_compose([*overrides, f"results_dir={results}", f"tracking.uri={mlflow_uri}"])
    metrics = compute.run(cfg)
    out = results / "compute"
    for name in (
        "cost_scaling.png",
        "time_to_equal_lds.png",
        "costs.csv",
        "slopes.csv",
        "crossover.csv",
        "time_to_equal_lds.csv",
        "bif_lds_vs_draws.csv",
        "metrics.json",
    ):
        assert (out / name).stat().st_size > 0, name
    costs = pd.read_csv(out / "costs.csv")
    # 2 methods on the n, q, n·q and width grids (2 points each), BIF alone on the draws grid
    assert len(costs) == 2 * 2 * 4 + 2
    assert costs["device"].str.startswith("cpu").all()
    assert (costs["total_seconds"] > 0).all()
    assert (costs["total_seconds"] >= costs["score_seconds"] - 1e-9).all()
    bif = costs[costs["method"] == "BIF"]
    assert (bif["fit_seconds"] < bif["score_seconds"]).all()
    # scaled to the LDS sampler (2 chains x 12 draws) from the grid's 2 x 4 draws: more expensive
    grid_bif = bif[bif["axis"] != "draws"]
    assert (grid_bif["total_seconds_at_lds_draws"] > grid_bif["total_seconds"]).all()
    draws = bif[bif["axis"] == "draws"].sort_values("draws")
    assert draws["draws"].tolist() == [8, 16]
    widths = costs[costs["axis"] == "num_params"]
    assert widths["num_params"].nunique() == 2
    slopes = pd.read_csv(out / "slopes.csv")
    assert set(slopes["axis"]) == {"n_train", "n_query", "nq", "num_params", "draws"}
    diagonal = costs[costs["axis"] == "nq"]
    assert sorted(diagonal["x"].unique()) == [80, 320]
    cross = pd.read_csv(out / "crossover.csv")
    assert set(cross["n_train"]) == {20, 40}
    t2e = pd.read_csv(out / "time_to_equal_lds.csv")
    assert len(t2e) == 4 and set(t2e["alpha"]) == {0.2, 0.5}
    assert set(t2e["bif_estimator"]) == {"covariance", "correlation"}
    for est in ("covariance", "correlation"):
        for a in (0.2, 0.5):
            d = metrics[f"time_to_equal_lds/draws/{est}/alpha_{a:g}"]
            assert d == math.inf or 4 <= d <= 24  # 2 chains x 2..12 draws
            row = t2e[(t2e.bif_estimator == est) & (t2e.alpha == a)].iloc[0]
            assert bool(row["reached"]) == math.isfinite(d)
            if math.isfinite(d):
                assert row["bif_lds_max_draws"] >= row["gradsim_lds"] or d < 24
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["device"].startswith("cpu")

    runs = search_runs("compute")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    assert runs.iloc[0]["metrics.ratio/time_GradSim_over_BIF"] == pytest.approx(
        metrics["ratio/time_GradSim_over_BIF"]
    )
    from bifrepro.tracking import get_client

    figures = get_client(mlflow_uri).list_artifacts(runs.iloc[0]["run_id"], "figures")
    assert {a.path for a in figures} == {
        "figures/cost_scaling.png",
        "figures/time_to_equal_lds.png",
    }


def test_failed_run_leaves_the_results_and_fails_mlflow(
    tiny_lds,  # noqa: F811 - its caches serve the LDS step
    hydra_compose,
    mlflow_uri,
    search_runs,
    monkeypatch,
) -> None:
    """A sampler failure after the grids fails the run; the previous result set stays whole."""
    from bifrepro.sampling.diagnostics import SamplerDivergedError

    results, _ = tiny_lds
    out = results / "compute_failed"
    out.mkdir()
    (out / "metrics.json").write_text("{}")

    def diverge(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise SamplerDivergedError("SGLD diverged (simulated)")

    monkeypatch.setattr(compute, "time_to_equal_lds", diverge)
    overrides = [o for o in TINY if o != "experiment=lds"] + GRIDS
    cfg = hydra_compose(
        [
            *overrides,
            "compute.width_grid=[]",
            "compute.draws_grid=[]",
            f"compute.output_dir={out}",
            f"results_dir={results}",
            f"tracking.uri={mlflow_uri}",
        ]
    )
    with pytest.raises(SamplerDivergedError):
        compute.run(cfg)
    assert [p.name for p in out.iterdir()] == ["metrics.json"]
    assert (out / "metrics.json").read_text() == "{}"
    runs = search_runs("compute")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FAILED"


def test_bad_grid_is_refused(hydra_compose, tmp_path) -> None:
    cfg = hydra_compose(["experiment=compute", "compute.n_grid=[1,10]", f"results_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="n_grid"):
        compute.run(cfg)
    cfg = hydra_compose(["experiment=compute", "compute.reference=bif", f"results_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="reference"):
        compute.run(cfg)
    # a calibrated sampler is not silently ignored: the compute experiment times a fixed one
    cfg = hydra_compose(["experiment=compute", "sampler=auto", f"results_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="sampler=auto"):
        compute.run(cfg)
    assert not (tmp_path / "compute").exists()
