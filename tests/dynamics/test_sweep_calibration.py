"""One calibration shared by a sweep: keyed folder, read back by later jobs, its evidence copied."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bifrepro.dynamics.sweep_calibration import calibration_dir, shared_calibration
from bifrepro.sampling import SGLDConfig
from bifrepro.sampling.calibration import CalibrationConfig


def test_calibration_dir_is_keyed_by_what_changes_it(tmp_path: Path) -> None:
    cal, sampler = CalibrationConfig(), SGLDConfig()
    base = calibration_dir(tmp_path, cal, sampler, "step20")
    assert base.parent == tmp_path / "calibration" and base.name.startswith("cal-")
    assert calibration_dir(tmp_path, CalibrationConfig(enabled=True), sampler, "step20") == base
    assert calibration_dir(tmp_path, cal, sampler, "step10") != base
    assert calibration_dir(tmp_path, cal, sampler.replace(step_size=1e-3), "step20") != base


def test_a_saved_calibration_is_read_back(tmp_path: Path) -> None:
    cal, sampler = CalibrationConfig(enabled=True), SGLDConfig()
    checkpoints = SimpleNamespace(labels=["step4", "step20"], work_dir=tmp_path, progress=False)
    assert shared_calibration(checkpoints, None, sampler, CalibrationConfig()) is None
    with pytest.raises(RuntimeError, match="no SGLD calibration"):
        shared_calibration(checkpoints, None, sampler, cal, compute=False)
    folder = calibration_dir(tmp_path, cal, sampler, "step20")
    folder.mkdir(parents=True)
    chosen = sampler.replace(step_size=sampler.step_size / 4)
    (folder / "sampler.json").write_text(json.dumps({
        "sampler": chosen.to_dict(), "original": sampler.to_dict(), "checkpoint": "step20",
        "summary": "calibrated", "metrics": {"calibration/healthy": 1.0},
    }))  # fmt: skip
    (folder / "report.pt").write_bytes(b"not a pickle")
    (folder / "calibration.csv").write_text("step_size\n1\n")
    got = shared_calibration(checkpoints, None, sampler, cal, compute=False)
    assert got is not None and got.report is None and got.sampler == chosen
    assert "calibrated at step20" in got.note and got.to_summary()["step_size"] == chosen.step_size
    assert got.save(tmp_path / "out") == {"calibration/healthy": 1.0}
    assert (tmp_path / "out" / "calibration.csv").read_text() == "step_size\n1\n"


def test_evidence_only_for_the_calibrated_checkpoint(tmp_path: Path) -> None:
    """The measured curvature holds where it was measured: other checkpoints get no evidence."""
    from bifrepro.dynamics.sweep_calibration import SharedCalibration

    class _Report:
        def health_evidence(self, config):
            return {"step_curvature": 0.25 * config.step_size / 1e-4, "extra_checks": ()}

    sampler = SGLDConfig()
    shared = SharedCalibration(
        sampler=sampler, original=sampler, folder=tmp_path, checkpoint="step20",
        summary="", metrics={}, report=_Report(),
    )  # fmt: skip
    assert shared.evidence_for("step20") == {"step_curvature": 0.25, "extra_checks": ()}
    assert shared.evidence_for("step4") == {}
    shared.report = None  # its pickle could not be read back: nothing to vouch with
    assert shared.evidence_for("step20") == {}
