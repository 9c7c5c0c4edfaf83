"""The time-to-accuracy block: table rows, speed-ups, and the verdict against the 3x target."""

from __future__ import annotations

import pandas as pd
import pytest

from bifrepro.report_time_to_accuracy import task_verdicts, time_to_accuracy_block


def _row(task: str, setting: str, per_seed: str, median: float, speedup: float, bound: str):
    return {
        "task": task,
        "setting": setting,
        "description": setting,
        "target_kind": "absolute",
        "target": 0.9,
        "seeds": 3,
        "seeds_reached": 3,
        "seconds_per_seed": per_seed,
        "median_seconds": median,
        "budget_seconds": 30.0,
        "calibration_seconds": 1.0,
        "spearman_at_budget_mean": 0.95,
        "spearman_at_budget_sd": 0.01,
        "speedup_vs_baseline": speedup,
        "speedup_bound": bound,
    }


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        [
            # fast: 4x, every seed of "fast" before every baseline seed
            _row("easy", "sgld_cal", "12;16;20", 16.0, float("nan"), "="),
            _row("easy", "fast", "3;4;5", 4.0, 4.0, "="),
            _row("easy", "slow", "10;12;14", 12.0, 16 / 12, "="),
            # the baseline never gets there: a lower bound, 30 / 12 = 2.5 < 3
            _row(
                "hard",
                "sgld_cal",
                "not reached;not reached;not reached",
                float("nan"),
                float("nan"),
                "other not reached",
            ),  # fmt: skip
            _row("hard", "fast", "10;12;40", 12.0, 2.5, ">="),
        ]
    )


def test_verdicts_name_the_fastest_sampler_and_whether_the_target_is_met() -> None:
    v = task_verdicts(_table()).set_index("task")
    assert v.at["easy", "best"] == "fast" and v.at["easy", "speedup"] == pytest.approx(4.0)
    assert bool(v.at["easy", "met"]) and bool(v.at["easy", "resolved"])
    assert v.at["hard", "bound"] == ">=" and not bool(v.at["hard", "met"])
    # 40 s for one seed of "fast" is beyond the baseline's 30 s budget: not resolved
    assert not bool(v.at["hard", "resolved"])


def test_block_lists_every_row_and_the_verdicts(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="bench-time-to-accuracy"):
        time_to_accuracy_block(tmp_path)
    folder = tmp_path / "accuracy" / "time_to_target"
    folder.mkdir(parents=True)
    _table().to_csv(folder / "time_to_target.csv", index=False)
    block = time_to_accuracy_block(tmp_path)
    assert block.count("| `easy` |") == 3 and block.count("| `hard` |") == 2
    assert "| fast | 3;4;5 | 4.0 | 4.0× |" in block
    assert "≥ 2.5×" in block
    assert "fastest fast, 4.0× the baseline's speed: met (every seed before" in block
    assert "at least 2.5× the baseline's speed: not met (seeds overlap)" in block
