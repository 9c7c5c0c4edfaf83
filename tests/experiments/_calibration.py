"""Shared check of what `sampler=auto` / `calibration=auto` leaves behind in an experiment."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

#: Small pilots for tests (a few seconds).
FAST_CALIBRATION = (
    "calibration.grid_points=3",
    "calibration.refine_points=0",
    "calibration.min_pilot_draws=12",
    "calibration.estimate_curvature=false",
)


def assert_calibration_recorded(
    metrics: dict[str, float], calibration_dir: Path, configured_step: float
) -> float:
    """The evidence is saved and consistent with the metrics; returns the chosen step size.

    A healthy candidate is chosen from the table, or (tiny pilots may all fail) the configured
    step is kept.
    """
    chosen = metrics["calibration/step_size"]
    table = pd.read_csv(calibration_dir / "calibration.csv")
    assert len(table) == metrics["calibration/num_candidates"] >= 1
    assert (calibration_dir / "calibration_summary.png").stat().st_size > 0
    if metrics["calibration/healthy"]:
        assert chosen in set(table["step_size"])
    else:
        assert chosen == pytest.approx(configured_step)
    return chosen
