"""Cost grids: the measurement plan, timed rows, slopes, the crossover and the base ratios."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from bifrepro.attribution.configs import BIFMethodConfig
from bifrepro.data.images import load_embedded_images
from bifrepro.evaluation.cost_grids import (
    base_ratios,
    crossover,
    grid_method_settings,
    grid_plan,
    scaling_grids,
    slopes,
)
from bifrepro.models.vision import SmallCNNConfig


def _comp(**kw) -> SimpleNamespace:
    base = dict(
        n_grid=[100, 200, 400],
        q_grid=[10, 20, 40],
        width_grid=[2, 4],
        draws_grid=[5, 10],
        n_base=100,
        q_base=10,
        methods=["bif", "gradsim"],
        grid_draws=4,
        grid_epochs=1,
        reference="gradsim",
        progress=False,
    )
    return SimpleNamespace(**{**base, **kw})


def test_grid_plan_covers_every_axis_and_the_diagonal() -> None:
    plan = grid_plan(_comp(), width=8)
    axes = [p[0] for p in plan]
    assert axes.count("n_train") == 3 and axes.count("nq") == 3 and axes.count("draws") == 2
    assert ("nq", 200, 20, 8, None) in plan and ("num_params", 100, 10, 4, None) in plan
    assert "nq" not in {p[0] for p in grid_plan(_comp(q_grid=[10]), width=8)}


def test_grid_method_settings_sets_bif_draws_and_keeps_others() -> None:
    bif = grid_method_settings({"name": "bif"}, 7)
    assert isinstance(bif, BIFMethodConfig) and bif.sampler.num_draws == 7
    assert bif.on_unhealthy == "warn" and bif.progress is False
    assert grid_method_settings({"name": "gradsim"}, 7).name == "gradsim"


def _points() -> pd.DataFrame:
    """BIF costs 0.01 (n + q); the reference 0.001 n q: BIF is cheaper from q ≈ 10."""
    rows = []
    for axis, pairs in {
        "n_train": [(100, 10), (200, 10), (400, 10)],
        "n_query": [(100, 5), (100, 10), (100, 40)],
        "nq": [(100, 10), (200, 20), (400, 40)],
    }.items():
        for n, q in pairs:
            for method, t in (("BIF", 0.01 * (n + q)), ("GradSim", 0.001 * n * q)):
                x = {"n_train": n, "n_query": q, "nq": n * q}[axis]
                rows.append({
                    "method": method, "axis": axis, "n_train": n, "n_query": q, "x": x,
                    "total_seconds": t, "fit_seconds": 0.0, "score_seconds": t,
                    "total_seconds_at_lds_draws": t, "peak_mb": 10.0 if method == "BIF" else 5.0,
                })  # fmt: skip
    return pd.DataFrame(rows)


def test_slopes_crossover_and_ratios_of_known_laws() -> None:
    points = _points()
    s = slopes(points).set_index(["method", "axis", "quantity"])["slope"]
    assert s[("GradSim", "n_train", "total_seconds")] == pytest.approx(1.0)
    assert s[("GradSim", "nq", "total_seconds")] == pytest.approx(1.0)
    assert math.isnan(s[("BIF", "n_train", "fit_seconds")])  # zero times: no slope
    table, metrics = crossover(points, _comp(n_grid=[100, 200, 400]))
    assert set(table["n_train"]) == {100, 200, 400}
    # at n = 100: 1 + 0.01 q vs 0.1 q -> q = 1 / 0.09
    q100 = table.set_index("n_train").loc[100, "q_crossover"]
    assert q100 == pytest.approx(1 / 0.09, rel=1e-3)
    assert metrics["crossover/model_q_at_n_base"] == pytest.approx(q100)
    assert metrics["crossover/measured_q_at_n_base"] == 40.0
    ratios = base_ratios(points, _comp())
    assert ratios["ratio/time_GradSim_over_BIF"] == pytest.approx(1.0 / 1.1)
    assert ratios["ratio/memory_GradSim_over_BIF"] == pytest.approx(0.5)


def test_scaling_grids_time_every_point() -> None:
    data = load_embedded_images("digits", 1, 4, seed=0)
    comp = _comp(n_grid=[20, 40], q_grid=[4, 8], width_grid=[], draws_grid=[], n_base=40, q_base=4)
    model_cfg = SmallCNNConfig(width=2, hidden=8, pool_size=2)
    sampler = BIFMethodConfig().sampler.replace(num_chains=1, num_draws=8, burn_in=1)
    methods = {"bif": BIFMethodConfig(sampler=sampler), "gradsim": {"name": "gradsim"}}
    points = scaling_grids(comp, model_cfg, data, methods, sampler, 0, torch.device("cpu"))
    assert len(points) == 2 * 3 * 2  # two methods on the n, q and n·q grids
    bif = points[points["method"] == "BIF"]
    assert (bif["draws"] == 4).all()  # 1 chain x grid_draws
    assert (bif["total_seconds_at_lds_draws"] > bif["total_seconds"]).all()
    assert points["device"].str.startswith("cpu").all() and (points["peak_mb"] >= 0).all()
    assert sorted(points[points["axis"] == "nq"]["x"].unique()) == [80, 320]
