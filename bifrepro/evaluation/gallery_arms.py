"""The compared arms of the gallery experiment, each computed once and shared where possible.

* ``bif`` / ``bif_cov``: BIF by posterior correlation and by covariance, both from the *same* loss
  traces; with ``seeds > 1`` the sampler runs again with seeds ``sampler.seed + 1, ...`` so the
  agreement's spread over Monte Carlo seeds can be reported. The headline arms are the first seed
  (``sampler.seed``), whose chain health is the run's.
* ``ekfac`` / ``ekfac_relatif``: kronfluence's raw score, and RelatIF (the raw score divided by
  ``sqrt`` of the training item's self-influence, :mod:`bifrepro.attribution.relatif`), from one
  EK-FAC fit.
* ``trak``: ensembled over ``num_checkpoints`` models: the analysed one plus small CNNs trained
  from scratch with seeds ``seed + 1, ...`` (cached like the main model; stand-in only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bifrepro.attribution.base import ClassificationTask
from bifrepro.attribution.registry import build_attributor
from bifrepro.attribution.relatif import ekfac_self_influence, relatif_scores
from bifrepro.data.fashion_mnist import CONFUSABLE_GROUPS
from bifrepro.data.imagenet import InfluencePool
from bifrepro.evaluation.agreement import label_agreement, mean_with_ci
from bifrepro.evaluation.gallery import (
    DISPLAY_NAMES,
    MethodResult,
    run_attributor,
    run_gallery_bif,
    traces_key,
)
from bifrepro.models.vision import trained_small_cnn
from bifrepro.sampling import RunHealth, SGLDConfig

__all__ = [
    "DERIVED_ARMS",
    "bif_arms",
    "ekfac_arms",
    "pool_groups",
    "run_other",
    "seed_agreement_table",
    "trak_checkpoints",
]

log = logging.getLogger(__name__)

#: Arms computed alongside another method (no settings node of their own): arm -> its parent.
DERIVED_ARMS = {"bif_cov": "bif", "ekfac_relatif": "ekfac"}


def pool_groups(pool: InfluencePool) -> dict[str, tuple[int, ...]]:
    """Groups of look-alike classes of the pool's dataset (Fashion-MNIST's; none otherwise)."""
    return dict(CONFUSABLE_GROUPS) if pool.name == "fashion_mnist" else {}


def bif_arms(
    model: torch.nn.Module,
    task: ClassificationTask,
    pool: InfluencePool,
    sampler: SGLDConfig,
    *,
    normalize: str,
    gallery_k: int,
    seeds: int = 1,
    covariance_arm: bool = False,
    traces_root: Path | None = None,
    settings: dict[str, Any] | None = None,
    progress: bool | None = None,
    evidence: dict[str, Any] | None = None,
) -> tuple[dict[str, MethodResult], RunHealth, dict[str, list[torch.Tensor]]]:
    """BIF arms of the first seed, that seed's chain health, and every seed's scores per arm.

    ``traces_root``: keep each seed's traces under ``traces_root/<traces_key>`` (resumable).
    """
    other = "covariance"
    if covariance_arm and normalize != "correlation":
        raise ValueError("the bif_cov arm needs experiment.normalize=correlation for bif")
    per_seed: dict[str, list[torch.Tensor]] = {}
    results: dict[str, MethodResult] = {}
    health: RunHealth | None = None
    for i in range(seeds):
        cfg = sampler.replace(seed=sampler.seed + i)
        traces = traces_root / traces_key(cfg, settings or {}) if traces_root else None
        result, h = run_gallery_bif(
            model, task, pool, cfg, normalize, gallery_k, traces, progress,
            evidence=evidence if i == 0 else None, alternatives=(other,) if covariance_arm else (),
        )  # fmt: skip
        arms = {"bif": result.scores}
        if covariance_arm:
            arms["bif_cov"] = result.alternatives[other]
        for arm, s in arms.items():
            per_seed.setdefault(arm, []).append(s)
        if i == 0:
            health = h
            results["bif"] = result
            if covariance_arm:
                results["bif_cov"] = MethodResult(
                    result.alternatives[other], result.seconds,
                    result.note.replace(normalize, other, 1) + " (same traces)",
                )  # fmt: skip
        else:
            results["bif"].metrics[f"bif/seed{i}_healthy"] = float(h.healthy)
            log.info("BIF seed %d: %s", cfg.seed, h.summary)
    assert health is not None
    results["bif"].metrics["bif/seed0_healthy"] = float(health.healthy)
    results["bif"].metrics["bif/num_seeds"] = float(seeds)
    return results, health, per_seed


def seed_agreement_table(
    per_seed: dict[str, list[torch.Tensor]],
    pool: InfluencePool,
    ks: Sequence[int],
    first_seed: int,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Most-helpful label agreement of every BIF arm and sampler seed (bootstrap CI over
    queries), plus per (arm, k) the ``spread`` (max - min over seeds) and ``seed_sd``."""
    rows = []
    for arm, scores in per_seed.items():
        for k in ks:
            values = []
            for i, s in enumerate(scores):
                per_query = label_agreement(s, pool.pool_labels, pool.query_labels, k)
                ci = mean_with_ci(per_query, confidence, "bootstrap", k, n_boot, seed)
                values.append(ci.mean)
                rows.append(
                    {"method": arm, "k": int(k), "sampler_seed": first_seed + i,
                     "agreement": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "n_queries": ci.n}
                )  # fmt: skip
            t = torch.tensor(values, dtype=torch.float64)
            for row in rows[-len(values) :]:
                row["spread"] = float(t.max() - t.min())
                row["seed_sd"] = float(t.std()) if len(values) > 1 else 0.0
    return pd.DataFrame(rows)


def ekfac_arms(
    settings: Any,
    model: torch.nn.Module,
    task: ClassificationTask,
    pool: InfluencePool,
    note: str = "",
    relatif: bool = False,
) -> dict[str, MethodResult]:
    """``ekfac`` (raw score) and, with ``relatif``, ``ekfac_relatif`` from one EK-FAC fit."""
    attributor = build_attributor(settings)
    root_level = logging.getLogger().level
    try:
        attributor.fit(model, task, pool.pool)
        raw = attributor.score(pool.queries)
        out = {"ekfac": MethodResult(raw, attributor.timings.total_seconds, note,
                                     attributor.timings.to_metrics(prefix="ekfac/"))}  # fmt: skip
        if relatif:
            t0 = time.perf_counter()
            self_inf = ekfac_self_influence(attributor)  # type: ignore[arg-type]
            extra = time.perf_counter() - t0
            out["ekfac_relatif"] = MethodResult(
                relatif_scores(raw, self_inf),
                attributor.timings.total_seconds + extra,
                "RelatIF: score / sqrt(self-influence)\n(same EK-FAC factors)",
                {"ekfac_relatif/self_influence_seconds": extra},
            )
    finally:
        # kronfluence's Analyzer sets the root logger's level; keep this run's log lines
        logging.getLogger().setLevel(root_level)
    log.info("%s: %s", DISPLAY_NAMES["ekfac"], attributor.timings.summary())
    return out


def trak_checkpoints(
    model_cfg: Any,
    pool: InfluencePool,
    n: int,
    seed: int,
    cache_dir: Path,
    device: torch.device,
    progress: bool | None = None,
) -> list[dict[str, torch.Tensor]]:
    """``n - 1`` further small CNNs for TRAK's ensemble, trained from scratch on the same data
    with seeds ``seed + 1, ...`` (cached). Needs the stand-in's ``image_data``."""
    if n <= 1:
        return []
    data = pool.info.get("image_data")
    if data is None:
        raise ValueError(
            f"methods.trak.num_checkpoints={n}: further checkpoints are trained only for the "
            "stand-in (small CNN); use num_checkpoints=1 on ImageNet"
        )
    states = []
    for i in range(1, n):
        m, _ = trained_small_cnn(
            model_cfg, data.train, data.num_classes, seed + i, cache_dir=cache_dir,
            device=device, progress=progress, tag=f"{pool.name}_trak",
        )  # fmt: skip
        states.append({k: v.detach().clone() for k, v in m.state_dict().items()})
    return states


def run_other(
    name: str,
    settings: Any,
    model: torch.nn.Module,
    task: ClassificationTask,
    pool: InfluencePool,
    checkpoints: list[dict[str, torch.Tensor]] | None = None,
) -> MethodResult:
    """A registry method (TRAK, GradSim) with the gallery note of its settings."""
    note = f"{len(checkpoints) + 1} checkpoints" if checkpoints else ""
    return run_attributor(name, settings, model, task, pool, note, checkpoints=checkpoints)
