"""Attribution step of the LDS protocol: every method's scores at the full-data model ``w*``.

Each method scores the queries' measurement ``-margin`` (positive = helpful) with its configured
settings; scores and timings are cached under the retraining cache (``scores/<method>_<key>.pt``,
keyed by the settings that change the numbers, the retraining setup, the seed and the device).
BIF is reported with both estimators (``+Cov``, the natural one for an additive datamodel, and
Pearson correlation) from the same draws, and keeps its loss traces for the LDS-vs-draws curve.

Two ensembles make the comparison less noisy than one run of each method:

* BIF over several sampler seeds (``experiment.bif_seeds``): every seed is a separate run (cached
  on its own, optionally in parallel processes); the BIF entry is the average of the seeds'
  score matrices (variants ``bif_covariance`` / ``bif_correlation``), and each seed stays
  available as ``bif_<estimator>_seed<s>`` so that its own LDS can be reported.
* TRAK over ``methods.trak.num_checkpoints`` independently trained full-data models
  (:func:`~bifrepro.evaluation.lds_protocol.checkpoint_states`: ``w*`` plus the same training
  with seeds ``seed + 1, ...``), as in Park et al.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from bifrepro.attribution.base import ClassificationTask
from bifrepro.attribution.bif import bif_scores
from bifrepro.attribution.configs import (
    BIFMethodConfig,
    MethodConfig,
    TRAKConfig,
    method_config_from_mapping,
)
from bifrepro.attribution.registry import build_attributor
from bifrepro.attribution.timing import AttributionTimings
from bifrepro.evaluation.lds_protocol import LDSProblem, checkpoint_states
from bifrepro.io import atomic_torch_save
from bifrepro.sampling.calibration import CalibrationConfig, CalibrationReport, resolve_sampler

__all__ = [
    "METHOD_LABELS",
    "MethodRun",
    "settings_key",
    "calibrate_bif",
    "attribute",
    "seed_variant",
    "split_seed_variant",
    "variant_label",
    "bif_seed_list",
    "combine_seed_runs",
]

log = logging.getLogger(__name__)

#: Method name → label(s) in tables and figures (BIF has two estimators).
METHOD_LABELS: dict[str, dict[str, str]] = {
    "bif": {"bif_covariance": "BIF (cov)", "bif_correlation": "BIF (corr)"},
    "ekfac": {"ekfac": "EK-FAC"},
    "trak": {"trak": "TRAK"},
    "gradsim": {"gradsim": "GradSim"},
}

_SEED_VARIANT = re.compile(r"^(?P<base>.+)_seed(?P<seed>\d+)$")


def seed_variant(variant: str, seed: int) -> str:
    """``bif_covariance_seed2``: the variant of one BIF sampler seed."""
    return f"{variant}_seed{int(seed)}"


def split_seed_variant(variant: str) -> tuple[str, int | None]:
    """``("bif_covariance", 2)`` for ``bif_covariance_seed2``; ``(variant, None)`` otherwise."""
    m = _SEED_VARIANT.match(variant)
    return (m["base"], int(m["seed"])) if m else (variant, None)


def variant_label(name: str, variant: str) -> str:
    """Table label of a method variant (``"BIF (cov) seed 2"`` for a single BIF seed)."""
    base, seed = split_seed_variant(variant)
    label = METHOD_LABELS[name][base]
    return label if seed is None else f"{label} seed {seed}"


def bif_seed_list(exp: Any, sampler_seed: int) -> list[int]:
    """BIF's sampler seeds: ``experiment.bif_seeds``, or the sampler's own seed alone."""
    seeds = getattr(exp, "bif_seeds", None)
    return [int(s) for s in seeds] if seeds else [int(sampler_seed)]


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
    extra: dict[str, float] = {}
    checkpoints = None
    if isinstance(settings, TRAKConfig) and settings.num_checkpoints > 1:
        checkpoints, seconds = checkpoint_states(problem, settings.num_checkpoints - 1)
        extra = {
            "num_checkpoints": float(settings.num_checkpoints),
            "checkpoint_train_seconds": seconds,
        }
    attributor.fit(model, task, problem.data.train, checkpoints=checkpoints)
    scores = attributor.score(problem.data.queries)
    timings: AttributionTimings = attributor.timings
    run = MethodRun(name, {}, {**timings.to_metrics(), **extra}, problem.device.type)
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


def _cached_or_run(
    name: str,
    settings: MethodConfig,
    model: torch.nn.Module,
    problem: LDSProblem,
    bif_evidence: dict[str, Any] | None,
) -> MethodRun:
    """One method run, from the score cache or computed (and then cached)."""
    path = problem.cache.dir / "scores" / f"{name}_{settings_key(settings, problem)}.pt"
    if problem.exp.reuse_scores and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        run = MethodRun(**saved)
        run.cached = True
        log.info("%s: scores and timings from the cache %s", name, path)
        return run
    run = _run_method(name, settings, model, problem, bif_evidence)
    fields = (f.name for f in dataclasses.fields(run) if f.name != "cached")
    atomic_torch_save({f: getattr(run, f) for f in fields}, path)
    return run


def _seed_worker(args: tuple[Any, ...]) -> MethodRun:
    """One BIF seed in a worker process (``threads`` torch threads)."""
    threads, *rest = args
    torch.set_num_threads(max(1, int(threads)))
    return _cached_or_run(*rest)


def _bif_seed_runs(
    settings: BIFMethodConfig,
    model: torch.nn.Module,
    problem: LDSProblem,
    bif_evidence: dict[str, Any] | None,
) -> dict[int, MethodRun]:
    """BIF once per sampler seed; ``experiment.attribution_jobs`` processes side by side."""
    seeds = bif_seed_list(problem.exp, settings.sampler.seed)
    per_seed = {
        s: dataclasses.replace(settings, sampler=settings.sampler.replace(seed=s)) for s in seeds
    }
    jobs = min(int(getattr(problem.exp, "attribution_jobs", 1)), len(seeds))
    if jobs <= 1:
        return {
            s: _cached_or_run("bif", c, model, problem, bif_evidence) for s, c in per_seed.items()
        }
    threads = getattr(problem.exp, "threads_per_job", 1)
    work = [(threads, "bif", c, model.cpu(), problem, bif_evidence) for c in per_seed.values()]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        runs = list(pool.map(_seed_worker, work))
    model.to(problem.device)
    return dict(zip(seeds, runs, strict=True))


def combine_seed_runs(runs: dict[int, MethodRun]) -> MethodRun:
    """One BIF run from several sampler seeds: the seed-averaged scores (the method's variants),
    every seed's own scores (``<variant>_seed<s>``), the seeds' summed cost, their chains
    stacked (``[seeds x C, D, n]``, for the LDS-vs-draws curve) and the worst chain verdict."""
    if len(runs) == 1:
        return next(iter(runs.values()))
    first = next(iter(runs.values()))
    scores: dict[str, torch.Tensor] = {}
    for variant in first.scores:
        stack = torch.stack([r.scores[variant].double() for r in runs.values()])
        scores[variant] = stack.mean(0).to(first.scores[variant].dtype)
        scores.update({seed_variant(variant, s): r.scores[variant] for s, r in runs.items()})
    timings = {k: sum(r.timings.get(k, 0.0) for r in runs.values()) for k in first.timings}
    chain_metrics = {f"seed{s}/{k}": v for s, r in runs.items() for k, v in r.chain_metrics.items()}
    unhealthy = [s for s, r in runs.items() if not r.chains_healthy]
    verdict = (
        f"chains UNHEALTHY in seed(s) {', '.join(map(str, unhealthy))} "
        f"({runs[unhealthy[0]].chain_verdict or 'see metrics.json'})"
        if unhealthy
        else f"chains healthy ({len(runs)} seeds)"
    )
    traces = None
    if all(r.traces is not None for r in runs.values()):
        traces = {
            k: torch.cat([r.traces[k] for r in runs.values()])  # type: ignore[index]
            for k in ("query", "train")
        }
    return MethodRun(
        method=first.method,
        scores=scores,
        timings=timings,
        device=first.device,
        traces=traces,
        chain_metrics=chain_metrics,
        chain_summary="; ".join(f"seed {s}: {r.chain_summary}" for s, r in runs.items()),
        chains_healthy=not unhealthy,
        chain_verdict=verdict,
        cached=all(r.cached for r in runs.values()),
    )


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
    BIF runs once per seed of ``experiment.bif_seeds`` (:func:`combine_seed_runs`).

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
        if isinstance(settings, BIFMethodConfig):
            out[name] = combine_seed_runs(_bif_seed_runs(settings, model, problem, bif_evidence))
        else:
            out[name] = _cached_or_run(name, settings, model, problem, bif_evidence)
    return out
