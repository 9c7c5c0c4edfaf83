"""Attribution step of the LDS protocol: every method's scores at the full-data model ``w*``.

Each method scores the queries' measurement ``-margin`` (positive = helpful) with its configured
settings; scores and timings are cached under the retraining cache (``scores/<method>_<key>.pt``,
keyed by the settings that change the numbers, the retraining setup, the seed and the device).
BIF is reported with both estimators (``+Cov``, the natural one for an additive datamodel, and
Pearson correlation) from the same draws, and keeps its loss traces for the LDS-vs-draws curve.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from bifrepro.attribution.base import ClassificationTask
from bifrepro.attribution.bif import bif_scores
from bifrepro.attribution.configs import BIFMethodConfig, MethodConfig, method_config_from_mapping
from bifrepro.attribution.registry import build_attributor
from bifrepro.attribution.timing import AttributionTimings
from bifrepro.evaluation.lds_protocol import LDSProblem
from bifrepro.io import atomic_torch_save
from bifrepro.sampling.calibration import CalibrationConfig, CalibrationReport, resolve_sampler

__all__ = ["METHOD_LABELS", "MethodRun", "settings_key", "calibrate_bif", "attribute"]

log = logging.getLogger(__name__)

#: Method name → label(s) in tables and figures (BIF has two estimators).
METHOD_LABELS: dict[str, dict[str, str]] = {
    "bif": {"bif_covariance": "BIF (cov)", "bif_correlation": "BIF (corr)"},
    "ekfac": {"ekfac": "EK-FAC"},
    "trak": {"trak": "TRAK"},
    "gradsim": {"gradsim": "GradSim"},
}

_NON_SEMANTIC = {"progress", "out_dir", "output_dir", "save_dir", "on_unhealthy"}
_NON_SEMANTIC_SAMPLER = {"eval_batch_size", "cache_data", "checkpoint_every"}


@dataclass
class MethodRun:
    """One method's scores at ``w*`` (one entry per variant) and what they cost."""

    method: str
    scores: dict[str, torch.Tensor]
    timings: dict[str, float]
    device: str
    #: BIF only: the loss traces ``{"train": [C, D, n], "query": [C, D, q]}``, chain diagnostics.
    traces: dict[str, torch.Tensor] | None = None
    chain_metrics: dict[str, float] = field(default_factory=dict)
    chain_summary: str = ""
    chains_healthy: bool = True
    #: Short verdict naming the failed rules (figure titles; "" in caches written before it).
    chain_verdict: str = ""
    cached: bool = False


def settings_key(settings: MethodConfig, problem: LDSProblem) -> str:
    """Cache key of a method's scores: the settings that change numbers, the retraining setup,
    the seed and the device type (progress bars, output folders and batch sizes are left out)."""
    d = {k: v for k, v in dataclasses.asdict(settings).items() if k not in _NON_SEMANTIC}
    if isinstance(d.get("sampler"), dict):
        d["sampler"] = {k: v for k, v in d["sampler"].items() if k not in _NON_SEMANTIC_SAMPLER}
    key = {
        "method": d,
        "retrain": problem.retrainer.fingerprint(),
        "seed": problem.seed,
        "device": problem.device.type,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_method(
    name: str,
    settings: MethodConfig,
    model: torch.nn.Module,
    problem: LDSProblem,
    bif_evidence: dict[str, Any] | None = None,
) -> MethodRun:
    task = ClassificationTask("margin")
    if isinstance(settings, BIFMethodConfig):
        settings = dataclasses.replace(settings, on_unhealthy="warn", progress=problem.exp.progress)
    attributor = build_attributor(settings)
    if bif_evidence and isinstance(settings, BIFMethodConfig):
        attributor.health_evidence = dict(bif_evidence)  # type: ignore[attr-defined]
    attributor.fit(model, task, problem.data.train)
    scores = attributor.score(problem.data.queries)
    timings: AttributionTimings = attributor.timings
    run = MethodRun(name, {}, timings.to_metrics(), problem.device.type)
    if name == "bif":
        traces = attributor.traces  # type: ignore[attr-defined]
        q, t = traces["query"], traces["train"]
        run.traces = {"query": q.cpu(), "train": t.cpu()}
        for est in ("covariance", "correlation"):
            run.scores[f"bif_{est}"] = (
                scores if est == settings.normalize else bif_scores(q, t, normalize=est)
            )
        # core diagnostics, every rule of bifrepro.sampling.health and the detrending effect
        health = attributor.run_health  # type: ignore[attr-defined]
        run.chain_metrics = attributor.diagnostics_metrics("chain/")  # type: ignore[attr-defined]
        run.chain_summary = health.summary
        run.chains_healthy = health.healthy
        run.chain_verdict = health.verdict
    else:
        run.scores[name] = scores
    log.info("%s: %s", name, timings.summary())
    return run


def calibrate_bif(
    problem: LDSProblem,
    model: torch.nn.Module,
    bif_settings: Any,
    calibration: CalibrationConfig,
) -> tuple[BIFMethodConfig, CalibrationReport]:
    """BIF's settings with the calibrated sampler (``sampler=auto``), and the evidence.

    Pilot chains run at the full-data model ``w*`` on the training loss; the query margins are
    observed too, so the health rules cover what the LDS scores are made of.
    """
    settings = method_config_from_mapping(bif_settings)
    assert isinstance(settings, BIFMethodConfig)
    task = ClassificationTask("margin")
    sampler, report = resolve_sampler(
        settings.sampler,
        dataclasses.replace(calibration, enabled=True),
        model,
        task.train_loss,
        problem.data.train,
        query_data=problem.data.queries,
        query_loss_fn=task.measurement,
        n_query=problem.n_query,
        progress=problem.exp.progress,
    )
    assert report is not None
    return dataclasses.replace(settings, sampler=sampler), report


def attribute(
    problem: LDSProblem,
    model: torch.nn.Module,
    method_settings: dict[str, Any],
    methods: list[str] | None = None,
    bif_evidence: dict[str, Any] | None = None,
) -> dict[str, MethodRun]:
    """Scores of every method at ``w*`` (query measurement ``-margin``), cached by settings.

    ``bif_evidence``: the calibration's :meth:`~bifrepro.sampling.CalibrationReport.health_evidence`
    for BIF's health check (it depends only on the calibrated sampler, part of the cache key).

    Raises:
        KeyError: ``method_settings`` has no entry for a method.
        ValueError: a method's settings name another method.
    """
    out: dict[str, MethodRun] = {}
    for name in methods or problem.exp.methods:
        if name not in method_settings:
            raise KeyError(f"methods.{name} is missing: no settings for method {name!r}")
        settings = method_config_from_mapping(method_settings[name])
        if settings.name != name:
            raise ValueError(f"methods.{name}.name={settings.name!r} must be {name!r}")
        path = problem.cache.dir / "scores" / f"{name}_{settings_key(settings, problem)}.pt"
        if problem.exp.reuse_scores and path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            run = MethodRun(**saved)
            run.cached = True
            log.info("%s: scores and timings from the cache %s", name, path)
        else:
            run = _run_method(name, settings, model, problem, bif_evidence)
            fields = (f.name for f in dataclasses.fields(run) if f.name != "cached")
            atomic_torch_save({f: getattr(run, f) for f in fields}, path)
        out[name] = run
    return out
