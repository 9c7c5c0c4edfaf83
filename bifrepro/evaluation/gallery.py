"""The influence-gallery protocol (Kreer et al.'s first result): data and model, BIF and the
comparison methods on one pool of training images, and the per-query and summary tables.

BIF runs through the shared pipeline (:func:`bifrepro.attribution.bif_pipeline.run_bif`): SGLD
minibatches come from ``pool.sgld_train`` (the whole training set), the observed training items
are ``pool.pool``. Besides the scores it reports the chains' health and the Monte Carlo error of
the scores (is each query's top-k more than noise?). EK-FAC, TRAK and GradSim run through
:func:`bifrepro.attribution.registry.build_attributor`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bifrepro.attribution.base import ClassificationTask
from bifrepro.attribution.bif_pipeline import run_bif
from bifrepro.attribution.registry import build_attributor
from bifrepro.data.fashion_mnist_data import FashionMNISTDataConfig
from bifrepro.data.imagenet import InfluencePool, load_imagenet_pool, load_standin_pool
from bifrepro.evaluation.agreement import label_agreement, topk_indices
from bifrepro.evaluation.ranking import resolved_ranking
from bifrepro.models.vision import build_googlenet, describe_model, trained_small_cnn
from bifrepro.sampling import (
    RunHealth,
    SGLDConfig,
    bif_standard_errors,
    draws_needed,
    topk_resolved,
)

__all__ = [
    "DISPLAY_NAMES",
    "MethodResult",
    "dataset_title",
    "ekfac_note",
    "load_gallery_inputs",
    "per_query_table",
    "agreement_ranking",
    "run_attributor",
    "run_gallery_bif",
    "summary_metrics",
    "traces_key",
]

log = logging.getLogger(__name__)

#: Display names of the methods (and keys of the house colours).
DISPLAY_NAMES = {
    "bif": "BIF",
    "bif_cov": "BIF (cov)",
    "ekfac": "EK-FAC",
    "ekfac_relatif": "EK-FAC (RelatIF)",
    "trak": "TRAK",
    "gradsim": "GradSim",
}
_STANDIN_NAMES = {
    "mnist5k": "MNIST-5k",
    "digits": "sklearn digits",
    "fashion_mnist": "Fashion-MNIST",
}


@dataclass
class MethodResult:
    """One method's scores on the pool (``[n_query, n_pool]``, positive = helpful)."""

    scores: torch.Tensor
    seconds: float
    #: Gallery column note (settings, chain verdict).
    note: str
    metrics: dict[str, float] = field(default_factory=dict)
    #: Extra per-query columns of per_query.csv (e.g. how much of BIF's top-k is resolved).
    per_query: dict[str, list[float]] = field(default_factory=dict)
    #: Scores of the same run by other estimators (BIF: ``{"covariance": ...}``, same traces).
    alternatives: dict[str, torch.Tensor] = field(default_factory=dict)


def load_gallery_inputs(
    data_cfg: Any,
    model_cfg: Any,
    seed: int,
    standin: bool,
    device: torch.device,
    cache_dir: Path,
    progress: bool | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> tuple[InfluencePool, torch.nn.Module, dict[str, Any]]:
    """Pool and trained model of the chosen path, plus ``model_note`` and model statistics.

    Stand-in: a small CNN trained here (cached under ``cache_dir``). ImageNet: GoogLeNet with
    ``weights`` (the already read ``model.weights_path``), the torchvision enum, or random.
    """
    if standin:
        if isinstance(data_cfg, FashionMNISTDataConfig):
            pool = data_cfg.load_pool(seed, device=device)
        else:
            pool = load_standin_pool(data_cfg, seed, device=device)
        data = pool.info["image_data"]
        model, info = trained_small_cnn(
            model_cfg, data.train, data.num_classes, seed, cache_dir=cache_dir,
            test_data=data.test, device=device, progress=progress, tag=data_cfg.name,
        )  # fmt: skip
        info["model_note"] = (
            f"{describe_model(model)}, trained from scratch, "
            f"{100 * info['test_accuracy']:.1f}% test accuracy"
        )
        return pool, model, info
    pool = load_imagenet_pool(
        data_cfg, seed, device=device if device.type == "cuda" else None, progress=progress
    )
    model = build_googlenet(model_cfg, state=weights).to(device)
    m = model_cfg
    source = m.weights_path or (f"torchvision {m.weights}" if m.weights else "random weights")
    info = {
        "model_note": f"GoogLeNet ({source})",
        "params": sum(p.numel() for p in model.parameters()),
    }
    return pool, model, info


def traces_key(sampler: SGLDConfig, settings: dict[str, Any]) -> str:
    """16 hex digits naming the on-disk traces of ``sampler`` and the other ``settings``."""
    key = json.dumps({"sampler": sampler.fingerprint(), **settings}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def run_gallery_bif(
    model: torch.nn.Module,
    task: ClassificationTask,
    pool: InfluencePool,
    sampler: SGLDConfig,
    normalize: str,
    gallery_k: int,
    traces_dir: Path | None = None,
    progress: bool | None = None,
    evidence: dict[str, Any] | None = None,
    alternatives: tuple[str, ...] = (),
) -> tuple[MethodResult, RunHealth]:
    """BIF of every query against the pool, with chain health and score uncertainty.

    ``alternatives``: further estimators (e.g. ``("covariance",)``) scored from the same traces,
    returned in :attr:`MethodResult.alternatives`.

    ``evidence``: what a calibration measured for this sampler
    (:meth:`~bifrepro.sampling.CalibrationReport.health_evidence`), judged with the traces.
    A diverged sampler raises (:class:`~bifrepro.sampling.SamplerDivergedError`).
    """
    t0 = time.perf_counter()
    run = run_bif(
        model,
        task.train_loss,
        pool.sgld_train,
        train=(pool.pool, task.train_loss),
        query=(pool.queries, task.measurement),
        config=sampler,
        out_dir=traces_dir,
        progress=progress,
        normalize=normalize,
        **(evidence or {}),
    )
    scores = run.scores(normalize)
    seconds = time.perf_counter() - t0
    health = run.health
    verdict = "chains healthy" if health.healthy else "chains NOT healthy"
    note = (
        f"{normalize}, {sampler.num_chains}×{sampler.num_draws} draws, {verdict}\n"
        f"ε={sampler.step_size:.3g}, γ={sampler.localization:g}, nβ={sampler.nbeta:g}"
    )
    metrics = {f"bif/{k}": v for k, v in health.metrics.items()}
    # Monte Carlo error of the scores (batch means): is the gallery's top-k more than noise?
    unc = bif_standard_errors(run.traces["query"], run.traces["train"], normalize=normalize)
    resolved = topk_resolved(unc, gallery_k)
    metrics["bif/score_se_median"] = float(unc.se.median())
    metrics[f"bif/top{gallery_k}_resolved_fraction"] = float(resolved.mean())
    metrics["bif/draws_per_chain_for_se_0.01"] = float(draws_needed(unc, 0.01))
    per_query = {f"bif_top{gallery_k}_resolved": resolved.tolist()}
    log.info(
        "BIF: %.1f s; %s; median score s.e. %.3g, %.0f%% of the top-%d resolved",
        seconds, health.summary, metrics["bif/score_se_median"], 100 * resolved.mean(), gallery_k,
    )  # fmt: skip
    others = {n: run.scores(n).cpu() for n in alternatives}
    return MethodResult(scores.cpu(), seconds, note, metrics, per_query, others), health


def run_attributor(
    name: str,
    settings: Any,
    model: torch.nn.Module,
    task: ClassificationTask,
    pool: InfluencePool,
    note: str = "",
    checkpoints: list[dict[str, torch.Tensor]] | None = None,
) -> MethodResult:
    """Scores of one registry method (``settings``: its config dataclass) on the pool;
    ``checkpoints``: further state dicts for methods that ensemble (TRAK)."""
    attributor = build_attributor(settings)
    root_level = logging.getLogger().level
    try:
        attributor.fit(model, task, pool.pool, checkpoints=checkpoints)
        scores = attributor.score(pool.queries)
    finally:
        # kronfluence's Analyzer sets the *root* logger's level (to WARNING here), which would
        # silence every later log line of this run
        logging.getLogger().setLevel(root_level)
    timings = attributor.timings
    log.info("%s: %s", DISPLAY_NAMES[name], timings.summary())
    return MethodResult(scores, timings.total_seconds, note, timings.to_metrics(prefix=f"{name}/"))


def ekfac_note(tracked: list[str], total: int) -> str:
    """Gallery note of EK-FAC: raw score, and which Linear/Conv2d layers it tracked."""
    if len(tracked) == total:
        return f"raw score\nall {total} Linear/Conv2d layers tracked"
    shown = ", ".join(tracked[-2:])
    return f"raw score\nlast {len(tracked)} of {total} layers only ({shown})"


def per_query_table(
    pool: InfluencePool, results: dict[str, MethodResult], ks: list[int], gallery_k: int
) -> pd.DataFrame:
    """One row per query: label agreement at every k and the top images of every method."""
    rows: dict[str, Any] = {
        "query": pool.query_ids,
        "label": pool.query_labels.tolist(),
        "class": [pool.label(int(c)) for c in pool.query_labels],
        "in_gallery": [i in set(pool.gallery) for i in range(pool.n_query)],
    }
    for name, r in results.items():
        for k in ks:
            rows[f"{name}_agreement_top{k}"] = label_agreement(
                r.scores, pool.pool_labels, pool.query_labels, k
            ).tolist()
        top = topk_indices(r.scores, gallery_k)
        rows[f"{name}_top{gallery_k}"] = [
            " ".join(pool.pool_ids[int(t)] for t in row) for row in top
        ]
        rows[f"{name}_top{gallery_k}_labels"] = [
            " ".join(str(int(pool.pool_labels[int(t)])) for t in row) for row in top
        ]
        rows.update(r.per_query)
    return pd.DataFrame(rows)


def agreement_ranking(
    per_query: pd.DataFrame,
    methods: list[str],
    ks: list[int],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Methods ranked by top-k label agreement at every k, each step resolved or not by a paired
    bootstrap over the queries (:func:`bifrepro.evaluation.ranking.resolved_ranking`)."""
    long = pd.DataFrame(
        [
            {"k": k, "method": m, "query": q, "agreement": v}
            for m in methods
            for k in ks
            for q, v in enumerate(per_query[f"{m}_agreement_top{k}"])
        ]
    )
    return resolved_ranking(
        long, method="method", value="agreement", unit="query", by=["k"],
        num_bootstrap=n_boot, confidence=confidence, seed=seed,
    )  # fmt: skip


def summary_metrics(
    table: pd.DataFrame, overlaps: pd.DataFrame, results: dict[str, MethodResult]
) -> dict[str, float]:
    """Flat metrics: agreement (with CI) per method, direction and k; overlaps; method timings."""
    m: dict[str, float] = {"chance_agreement": float(table["chance"].iloc[0])}
    for row in table.itertuples():
        what = "agreement" if row.direction == "helpful" else "harmful_agreement"
        prefix = f"{row.method}/{what}"
        m[f"{prefix}_top{row.k}"] = float(row.agreement)
        m[f"{prefix}_top{row.k}_ci_low"] = float(row.ci_low)
        m[f"{prefix}_top{row.k}_ci_high"] = float(row.ci_high)
    for row in overlaps.itertuples():
        if row.direction == "helpful":
            m[f"overlap/{row.method_a}_vs_{row.method_b}_top{row.k}"] = float(row.overlap)
    for name, r in results.items():
        m[f"{name}/seconds"] = float(r.seconds)
        m.update(r.metrics)
    return m


def dataset_title(pool: InfluencePool, standin: bool) -> str:
    """``"ImageNet"``, or which stand-in ran (every figure names its dataset)."""
    if standin:
        name = _STANDIN_NAMES.get(pool.name, pool.name)
        if pool.info.get("fallback"):
            name += (
                f" (fallback: {_STANDIN_NAMES.get(pool.info['requested'], 'requested')} missing)"
            )
        return f"Stand-in for ImageNet: {name}"
    return "ImageNet"
