"""One SGLD calibration shared by every checkpoint job of a sweep (``calibration=auto``).

The step size is calibrated once, at the last checkpoint (the trained model), and used at every
checkpoint, so influence at different checkpoints is measured with the same sampler. The first
job that needs it computes it into ``<work_dir>/calibration/cal-<key>/`` (``sampler.json``, the
report's files and the pickled report); later jobs read it from there. The calibration is seeded,
so jobs that race to compute it get the same result, and every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bifrepro.attribution.token_bif import sequence_loss
from bifrepro.dynamics.lm_checkpoints import LMCheckpoints, settings_hash
from bifrepro.dynamics.stagewise_data import StagewiseData
from bifrepro.io import atomic_torch_save, atomic_write_bytes, atomic_write_json
from bifrepro.sampling import SGLDConfig
from bifrepro.sampling.calibration import CalibrationConfig, CalibrationReport, resolve_sampler

__all__ = ["SharedCalibration", "calibration_dir", "shared_calibration"]

log = logging.getLogger(__name__)

_CALIBRATED_SAMPLER = "sampler.json"
_CALIBRATION_REPORT = "report.pt"


@dataclass
class SharedCalibration:
    """The shared outcome of the calibration: the sampler every checkpoint uses, and its evidence."""

    sampler: SGLDConfig
    original: SGLDConfig
    folder: Path
    checkpoint: str
    summary: str
    metrics: dict[str, float]
    #: The full report (None if its pickle could not be read back; the files in folder remain).
    report: CalibrationReport | None = None

    @property
    def note(self) -> str:
        """Figure-note fragment naming the calibrated step size."""
        if not self.metrics.get("calibration/healthy", 0.0):
            return (
                f"ε={self.sampler.step_size:g} kept: the calibration at {self.checkpoint} "
                "found no healthy step"
            )
        if self.sampler.step_size == self.original.step_size:
            return f"ε={self.sampler.step_size:g} confirmed by calibration at {self.checkpoint}"
        return (
            f"ε={self.sampler.step_size:.3g} calibrated at {self.checkpoint} "
            f"(configured {self.original.step_size:g})"
        )

    def evidence_for(self, label: str) -> dict[str, Any]:
        """Health evidence (curvature, step-halving check) for the checkpoint it was measured
        at; other checkpoints have other curvatures, so they get none."""
        if label != self.checkpoint or self.report is None:
            return {}
        return self.report.health_evidence(self.sampler)

    def save(self, out_dir: Path, figures: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Write the evidence (table, summary and ``figures``, drawn by the plots layer:
        :func:`bifrepro.plots.calibration.calibration_figures`) to ``out_dir``; return the
        metrics."""
        if self.report is not None:
            self.report.save(out_dir, figures)
            return self.report.to_metrics()
        for src in sorted(self.folder.glob("calibration*")):  # the files report.save wrote
            atomic_write_bytes(out_dir / src.name, src.read_bytes())
        return dict(self.metrics)

    def to_summary(self) -> dict[str, object]:
        """What ``metrics.json`` records about the calibration."""
        return {
            "summary": self.summary,
            "checkpoint": self.checkpoint,
            "folder": str(self.folder),
            "step_size": self.sampler.step_size,
            "configured_step_size": self.original.step_size,
        }


def calibration_dir(work_dir: Path, cal: CalibrationConfig, sampler: SGLDConfig, at: str) -> Path:
    """Folder of a run's calibration, keyed by everything that changes it."""
    settings = {k: v for k, v in dataclasses.asdict(cal).items() if k != "enabled"}
    key = settings_hash({"calibration": settings, "sampler": sampler.fingerprint(), "at": at})
    return work_dir / "calibration" / f"cal-{key}"


def _read(folder: Path, original: SGLDConfig) -> SharedCalibration:
    saved = json.loads((folder / _CALIBRATED_SAMPLER).read_text())
    log.info("SGLD calibration: reusing %s (%s)", folder, saved["summary"])
    report: CalibrationReport | None = None
    try:
        report = torch.load(folder / _CALIBRATION_REPORT, weights_only=False)
    except Exception as err:  # noqa: BLE001 - written by another version of the classes
        log.warning("cannot read the calibration report in %s (%s); using its files", folder, err)
    return SharedCalibration(
        sampler=SGLDConfig.from_mapping(saved["sampler"]), original=original, folder=folder,
        checkpoint=saved["checkpoint"], summary=saved["summary"],
        metrics={k: float(v) for k, v in saved["metrics"].items()}, report=report,
    )  # fmt: skip


def shared_calibration(
    checkpoints: LMCheckpoints,
    data: StagewiseData,
    sampler: SGLDConfig,
    cal: CalibrationConfig,
    compute: bool = True,
) -> SharedCalibration | None:
    """The calibrated sampler, read from the work folder or (``compute``) computed there.

    The calibration runs at the last checkpoint on what the checkpoint jobs use: SGLD on the mean
    sequence loss of the SGLD data, pilots observing seeded subsets of the observed training and
    query sequences. None when calibration is disabled.
    """
    if not cal.enabled:
        return None
    label = checkpoints.labels[-1]
    folder = calibration_dir(checkpoints.work_dir, cal, sampler, label)
    if (folder / _CALIBRATED_SAMPLER).exists():
        return _read(folder, sampler)
    if not compute:
        raise RuntimeError(
            f"no SGLD calibration in {folder}: run the checkpoint jobs with the same settings "
            "(calibration=auto) first"
        )
    log.info("calibrating SGLD at the last checkpoint %s (used at every checkpoint)", label)
    used, report = resolve_sampler(
        sampler, cal, checkpoints.load(label), sequence_loss, data.sgld_dataset(),
        query_data=data.query_dataset(), query_loss_fn=sequence_loss, out_dir=folder,
        progress=checkpoints.progress,
        n_observed=len(data.observed_index) + len(data.query_ids),  # sequences per draw (cost)
    )  # fmt: skip
    assert report is not None
    atomic_torch_save(report, folder / _CALIBRATION_REPORT)
    metrics = report.to_metrics()
    saved = {
        "sampler": used.to_dict(),
        "original": sampler.to_dict(),
        "checkpoint": label,
        "summary": report.summary(),
        "metrics": metrics,
    }
    atomic_write_json(saved, folder / _CALIBRATED_SAMPLER)  # last: its presence = complete
    return SharedCalibration(used, sampler, folder, label, report.summary(), metrics, report)
