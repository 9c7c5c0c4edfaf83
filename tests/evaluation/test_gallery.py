"""The gallery protocol on a tiny synthetic pool: BIF with uncertainty, tables, metrics."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bifrepro.attribution.base import ClassificationTask
from bifrepro.attribution.configs import GradSimConfig
from bifrepro.data.imagenet import InfluencePool
from bifrepro.evaluation.agreement import agreement_table, overlap_table
from bifrepro.evaluation.gallery import (
    dataset_title,
    ekfac_note,
    per_query_table,
    run_attributor,
    run_gallery_bif,
    summary_metrics,
    traces_key,
)
from bifrepro.sampling import SGLDConfig


def tiny_pool(name: str = "digits") -> InfluencePool:
    """Two well separated classes in 4-d; 6 pool items, 4 queries, 12 SGLD items."""
    gen = torch.Generator().manual_seed(0)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(2).repeat(n // 2)
        return torch.randn(n, 4, generator=gen) + 3.0 * y.view(-1, 1).float(), y

    (xs, ys), (xp, yp), (xq, yq) = data(12), data(6), data(4)
    return InfluencePool(
        name=name, source="synthetic", sgld_train=TensorDataset(xs, ys),
        pool=TensorDataset(xp, yp), queries=TensorDataset(xq, yq), pool_labels=yp,
        query_labels=yq, class_names=["zero", "one"], gallery=[0, 1],
        unnormalize=lambda x: x, pool_ids=[f"p{i}" for i in range(6)],
        query_ids=[f"q{i}" for i in range(4)],
    )  # fmt: skip


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def test_bif_reports_health_and_score_uncertainty() -> None:
    pool = tiny_pool()
    sampler = SGLDConfig(
        step_size=1e-4, nbeta=10.0, localization=100.0, num_chains=2, num_draws=30, burn_in=5,
        batch_size=4,
    )  # fmt: skip
    result, health = run_gallery_bif(
        tiny_model(), ClassificationTask(), pool, sampler, "correlation", 2
    )
    assert result.scores.shape == (4, 6) and result.scores.abs().max() <= 1.0 + 1e-6
    assert isinstance(health.healthy, bool) and "2×30 draws" in result.note
    assert result.metrics["bif/score_se_median"] > 0
    assert 0 <= result.metrics["bif/top2_resolved_fraction"] <= 1
    assert "bif/health/step_ok" in result.metrics
    assert len(result.per_query["bif_top2_resolved"]) == 4


def test_tables_and_summary_metrics() -> None:
    pool = tiny_pool()
    task = ClassificationTask()
    results = {
        "bif": run_attributor("gradsim", GradSimConfig(), tiny_model(), task, pool, "note"),
        "ekfac": run_attributor(
            "gradsim", GradSimConfig(similarity="dot"), tiny_model(), task, pool
        ),
    }
    scores = {k: r.scores for k, r in results.items()}
    table = agreement_table(scores, pool.pool_labels, pool.query_labels, ks=[1, 2], n_boot=200)
    overlaps = overlap_table(scores, ks=[1, 2], n_boot=200)
    metrics = summary_metrics(table, overlaps, results)
    assert metrics["chance_agreement"] == pytest.approx(0.5)
    for name in ("bif", "ekfac"):
        assert 0 <= metrics[f"{name}/agreement_top2"] <= 1
        assert metrics[f"{name}/agreement_top2_ci_low"] <= metrics[f"{name}/agreement_top2"]
        assert f"{name}/harmful_agreement_top1" in metrics and f"{name}/seconds" in metrics
    assert "overlap/bif_vs_ekfac_top2" in metrics

    per_query = per_query_table(pool, results, [1, 2], 2)
    assert isinstance(per_query, pd.DataFrame) and len(per_query) == 4
    assert per_query.in_gallery.tolist() == [True, True, False, False]
    assert per_query["class"].tolist() == ["0 zero", "1 one", "0 zero", "1 one"]
    assert all(len(s.split()) == 2 for s in per_query.bif_top2)


def test_notes_titles_and_trace_keys() -> None:
    assert ekfac_note(["a", "b"], 2).endswith("all 2 Linear/Conv2d layers tracked")
    assert "last 1 of 58 layers only (fc)" in ekfac_note(["fc"], 58)
    assert dataset_title(tiny_pool("digits"), True) == "Stand-in for ImageNet: sklearn digits"
    assert dataset_title(tiny_pool("imagenet"), False) == "ImageNet"
    a, b = SGLDConfig(), SGLDConfig(num_draws=7)
    settings = {"data": {"name": "x"}, "seed": 0}
    assert traces_key(a, settings) == traces_key(a, dict(settings))
    assert len(traces_key(a, settings)) == 16
    assert traces_key(a, settings) != traces_key(b, settings)
    assert traces_key(a, settings) != traces_key(a, {**settings, "seed": 1})
