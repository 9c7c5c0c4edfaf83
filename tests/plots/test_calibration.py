"""Figures of a calibration report and of a sampler sweep, and saving/logging them with a report."""

from __future__ import annotations

import pandas as pd
import pytest
from torch.utils.data import TensorDataset

from bifrepro.plots.calibration import (
    plot_calibration_summary,
    plot_calibration_traces,
    plot_sampler_sweep,
    record_calibration,
    save_calibration,
)
from bifrepro.sampling import SGLDConfig
from bifrepro.sampling.calibration import CalibrationConfig, calibrate_report
from tests.sampling._models import mse_loss, regression_problem


@pytest.fixture(scope="module")
def report():
    x, y, model = regression_problem(n=40, d=3)
    config = SGLDConfig(
        step_size=1e-4, nbeta=100.0, localization=20.0, num_chains=4, num_draws=200, burn_in=50,
        batch_size=40,
    )  # fmt: skip
    cal = CalibrationConfig(
        grid_min=1e-5, grid_max=1e-1, grid_points=5, refine_points=2, exhaustive=True
    )
    return calibrate_report(
        model, mse_loss, TensorDataset(x, y), config, calibration=cal, progress=False
    )


def test_sweep_summary_figure_from_a_runs_table():
    runs = pd.DataFrame(
        {
            "params.sampler.step_size": ["1e-05", "0.0001", "0.001"] * 2,
            "params.sampler.localization": ["100"] * 3 + ["1000"] * 3,
            "params.sampler.nbeta": ["10"] * 6,
            "metrics.lds": [0.1, 0.3, 0.2, 0.15, 0.35, 0.3],
            "metrics.chain/healthy": [0.0, 1.0, 0.0, 0.0, 1.0, 1.0],
            "metrics.chain/rhat": [1.5, 1.01, 1.3, 1.4, 1.02, 1.05],
        }
    )
    fig = plot_sampler_sweep(runs, "metrics.lds")
    axes = fig.get_axes()
    assert len(axes) == 3  # quality, health flag, R-hat
    assert axes[0].get_xscale() == "log" and axes[0].get_title().startswith("quality")
    # One line per γ plus ring markers for the unhealthy runs (3 of them) on the quality panel.
    rings = [ln for ln in axes[0].get_lines() if ln.get_markerfacecolor() == "none"]
    assert sum(len(ln.get_xdata()) for ln in rings) == 3
    with pytest.raises(ValueError, match="metrics.missing"):
        plot_sampler_sweep(runs, "metrics.missing")


def test_report_figures_have_one_column_per_candidate(report):
    summary = plot_calibration_summary(report)
    assert len(summary.get_axes()) == 6
    assert "calibration chose" in summary._suptitle.get_text()
    traces = plot_calibration_traces(report)
    assert len(traces.get_axes()) == 2 * len(report.candidates)


class _Tracker:
    def __init__(self) -> None:
        self.artifacts: list[tuple[str, str]] = []

    def log_artifact(self, path, folder) -> None:
        self.artifacts.append((path.name, folder))


def test_save_and_record_write_tables_and_figures(report, tmp_path):
    paths = save_calibration(report, tmp_path / "saved")
    for name in ("calibration.csv", "calibration.json", "calibration_summary.png",
                 "calibration_traces.png"):  # fmt: skip
        assert (tmp_path / "saved" / name).stat().st_size > 0
    assert set(paths) == {"table", "json", "calibration_summary", "calibration_traces"}
    tracker = _Tracker()
    metrics = record_calibration(report, tracker, tmp_path / "recorded")
    assert metrics["calibration/step_size"] == report.config.step_size
    assert ("calibration_summary.png", "calibration") in tracker.artifacts
    assert len(tracker.artifacts) == 4
