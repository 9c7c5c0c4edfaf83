"""The time-to-accuracy bench: prefix grid, time model, crossing times and ratios to the baseline."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

_DIR = Path(__file__).resolve().parents[2] / "bench"


def _bench():
    if "time_to_accuracy" in sys.modules:
        return sys.modules["time_to_accuracy"]
    sys.path.insert(0, str(_DIR))  # it imports the accuracy bench beside it
    spec = importlib.util.spec_from_file_location("time_to_accuracy", _DIR / "time_to_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["time_to_accuracy"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_prefix_grid_is_increasing_and_ends_at_the_budget() -> None:
    grid = _bench().prefix_grid(1000, first=25)
    assert grid[0] == 25 and grid[-1] == 1000
    assert all(b > a for a, b in zip(grid, grid[1:], strict=False))
    assert 20 <= len(grid) <= 24  # ~4 per doubling over 5.3 doublings


def test_prefix_seconds_adds_the_fixed_cost_and_scales_by_steps() -> None:
    t = _bench().prefix_seconds(10.0, burn_in=100, thinning=2, draws=200, prefix=[200, 50], fixed=3)
    assert t[0] == pytest.approx(13.0)  # the whole run
    assert t[1] == pytest.approx(3 + 10 * (100 + 100) / 500)


def test_time_to_target_interpolates_and_ignores_a_single_noisy_crossing() -> None:
    ttt = _bench().time_to_target
    seconds = [1.0, 2.0, 3.0, 4.0, 5.0]
    # 0.95 at t=2 drops back below at t=3: not reached there; reached between 3 and 4
    values = [0.5, 0.95, 0.8, 1.0, 0.95]
    assert ttt(seconds, values, 0.9) == pytest.approx(3.5)
    assert ttt(seconds, [0.95, 0.96, 0.97, 0.98, 0.99], 0.9) == 1.0
    assert math.isnan(ttt(seconds, [0.1, 0.2, 0.3, 0.4, 0.5], 0.9))
    assert ttt(seconds, [0.1, 0.2, 0.3, 0.4, 0.91], 0.9) == pytest.approx(4.0 + 0.5 / 0.51)
    with pytest.raises(ValueError):
        ttt([1.0, 2.0], [0.5], 0.9)


def test_ratio_is_a_lower_bound_when_the_baseline_never_gets_there() -> None:
    ratio = _bench().ratio_to_baseline
    assert ratio([6.0, 8.0, 10.0], [2.0, 2.0, 3.0], budget=20.0) == {"ratio": 4.0, "bound": "="}
    bounded = ratio([math.nan, 8.0, math.nan], [2.0, 4.0, 3.0], budget=20.0)
    assert bounded == {"ratio": pytest.approx(20.0 / 3.0), "bound": ">="}
    assert math.isnan(ratio([1.0, 1.0], [math.nan, 1.0], budget=5.0)["ratio"])


def _curve(task: str, setting: str, seed: int, slope: float) -> list[dict]:
    rows = []
    for draws in (10, 20, 40, 80):
        rows.append(
            {
                "task": task,
                "setting": setting,
                "description": setting,
                "seed": seed,
                "draws": draws,
                "seconds": draws / 10,
                "calibration_seconds": 0.0,
                "spearman_cov": min(0.99, slope * draws),
            }
        )
    return rows


def test_target_table_ranks_a_faster_sampler_against_the_baseline() -> None:
    b = _bench()
    rows = []
    for seed in (0, 1, 2):
        rows += _curve("easy", "sgld_cal", seed, 0.9 / 40)  # reaches 0.9 at 40 draws = 4 s
        rows += _curve("easy", "fast", seed, 0.9 / 10)  # at 10 draws = 1 s
        rows += _curve("hard", "sgld_cal", seed, 0.005)  # never reaches 0.9 (0.4 at 80 draws)
        rows += _curve("hard", "fast", seed, 0.01)  # 0.8 at 80 draws
    table = b.target_table(pd.DataFrame(rows)).set_index(["task", "setting", "target_kind"])
    easy = table.loc[("easy", "fast", "absolute")]
    assert easy["median_seconds"] == pytest.approx(1.0)
    assert easy["speedup_vs_baseline"] == pytest.approx(4.0) and easy["speedup_bound"] == "="
    # nothing reaches 0.9 on "hard": a relative target, 0.9 x the best (0.8) = 0.72
    hard = table.loc[("hard", "fast", "0.9 × best")]
    assert hard["target"] == pytest.approx(0.72)
    assert hard["median_seconds"] == pytest.approx(7.2)
    assert hard["speedup_bound"] == ">="  # the baseline never gets to 0.72 in its 8 s
    assert hard["speedup_vs_baseline"] == pytest.approx(8.0 / 7.2)
    assert np.isnan(table.loc[("hard", "fast", "absolute")]["median_seconds"])


def test_the_figure_passes_the_figure_checks_and_titles_the_verdict() -> None:
    from bifrepro.plots.checks import figure_problems

    b = _bench()
    rows = []
    for seed in (0, 1, 2):
        rows += _curve("easy", "sgld_cal", seed, 0.9 / 40)
        rows += _curve("easy", "fast", seed, 0.9 / 10)
    curves = pd.DataFrame(rows)
    table = b.target_table(curves)
    fig = b.plot_curves(curves, table)
    assert figure_problems(fig) == []
    assert "fast 4.0× sgld_cal's speed (3/3 seeds)" in fig.axes[0].get_title()
