"""LDS tables on an exact additive datamodel: per method and α, paired, vs draws, costs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from bifrepro.evaluation.lds import subset_masks
from bifrepro.evaluation.lds_methods import MethodRun
from bifrepro.evaluation.lds_tables import (
    alpha_key,
    bif_draws_curve,
    bif_seed_table,
    costs_table,
    draws_grid,
    evaluate,
    paired_differences,
    time_to_equal_lds,
)
from bifrepro.sampling.config import SGLDConfig

N, Q, C, D = 30, 6, 2, 12


def _problem() -> tuple[SimpleNamespace, dict[float, torch.Tensor], torch.Tensor]:
    """A problem whose retrained outputs are exactly additive in ``true`` (shape [Q, N])."""
    g = torch.Generator().manual_seed(0)
    true = torch.randn(Q, N, generator=g, dtype=torch.float64)
    masks = {a: subset_masks(N, a, 8, seed=0) for a in (0.3, 0.5)}
    actual = {a: (m.double() @ true.T)[:, None, :] for a, m in masks.items()}  # [m, k=1, q]
    exp = SimpleNamespace(num_bootstrap=100, confidence=0.9, mask_seed=0)
    return SimpleNamespace(exp=exp, masks=masks, n_train=N, n_query=Q), actual, true


def _runs(true: torch.Tensor) -> dict[str, MethodRun]:
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(Q, N, generator=g, dtype=torch.float64)
    timings = {"fit_seconds": 2.0, "score_seconds": 1.0, "total_seconds": 3.0}
    traces = {
        "query": torch.randn(C, D, Q, generator=g),
        "train": torch.randn(C, D, N, generator=g),
    }
    bif = {"bif_covariance": noise, "bif_correlation": noise}
    return {
        "bif": MethodRun("bif", bif, {**timings, "fit_seconds": 0.0}, "cpu", traces=traces),
        "ekfac": MethodRun("ekfac", {"ekfac": true}, timings, "cpu", cached=True),
        "gradsim": MethodRun("gradsim", {"gradsim": noise + 3 * true}, timings, "cpu"),
    }


def test_evaluate_scores_the_exact_datamodel_one() -> None:
    problem, actual, true = _problem()
    table, per_query, results = evaluate(problem, _runs(true), actual)
    assert len(table) == 4 * 2 and len(per_query) == 4 * 2 * Q
    exact = table[table["variant"] == "ekfac"]
    assert exact["lds"].tolist() == pytest.approx([1.0, 1.0])
    assert set(table["method"]) == {"BIF (cov)", "BIF (corr)", "EK-FAC", "GradSim"}
    assert set(table["subset_size"]) == {9, 15}
    assert results[("gradsim", 0.5)].labels["alpha"] == 0.5
    paired = paired_differences(results, "ekfac", 100, 0.9, 0)
    assert len(paired) == 3 * 2 and "ekfac" not in set(paired["variant"])
    assert (paired["lds_difference"] < 0).all()  # nothing beats the exact datamodel
    assert (paired["ci_low"] <= paired["lds_difference"]).all()
    assert paired_differences(results, "trak").empty
    assert alpha_key(0.25) == "alpha_0.25"


def test_draws_grid_caps_and_includes_the_last_draw() -> None:
    assert draws_grid(12, [4, 50]) == [4, 12]
    assert draws_grid(200, None) == sorted(set(draws_grid(200, None)))
    assert draws_grid(200, None)[0] == 5 and draws_grid(200, None)[-1] == 200
    assert draws_grid(2, None) == [2]


def test_bif_lds_against_draws_and_the_time_to_equal_a_reference() -> None:
    problem, actual, true = _problem()
    runs = _runs(true)
    sampler = SGLDConfig(num_chains=C, num_draws=D, burn_in=2)
    curve = bif_draws_curve(problem, runs["bif"], actual, sampler, [4])
    assert sorted(curve["draws_per_chain"].unique()) == [4, D]
    assert set(curve["total_draws"]) == {4 * C, D * C}
    full = curve[curve["draws_per_chain"] == D]["seconds"]
    assert full.tolist() == pytest.approx([3.0] * len(full))  # all draws: the measured time
    assert (curve[curve["draws_per_chain"] == 4]["seconds"] < 3.0).all()

    table, t_curve, reference, metrics = time_to_equal_lds(problem, runs, actual, sampler, "ekfac")
    assert len(table) == 2 * 2 and set(table["bif_estimator"]) == {"covariance", "correlation"}
    assert reference["lds"].tolist() == pytest.approx([1.0, 1.0])
    assert not table["reached"].any()  # random traces never match the exact datamodel
    assert metrics["time_to_equal_lds/draws/covariance/alpha_0.5"] == math.inf
    assert (t_curve["reference_seconds"] == 3.0).all()
    assert t_curve["draws_per_chain"].min() == 2 and t_curve["draws_per_chain"].max() == D


def test_costs_table_has_every_phase_and_the_cache_flag() -> None:
    _, _, true = _problem()
    costs = costs_table(_runs(true)).set_index("method")
    assert costs.loc["ekfac", "from_cache"] and not costs.loc["bif", "from_cache"]
    assert costs.loc["bif", "fit_seconds"] == 0.0 and costs.loc["gradsim", "total_seconds"] == 3.0
    assert math.isnan(costs.loc["gradsim", "fit_peak_cuda_mb"])
    assert (costs["device"] == "cpu").all()


def test_bif_seeds_are_reported_alone_averaged_and_paired() -> None:
    """Two BIF seeds (exact scores, and exact scores plus noise): each seed's LDS, the mean over
    seeds, the LDS of the seed-averaged scores, and a paired difference for every arm."""
    problem, actual, true = _problem()
    g = torch.Generator().manual_seed(2)
    noisy = true + 2.0 * torch.randn(Q, N, generator=g, dtype=torch.float64)
    scores = {
        "bif_covariance": (true + noisy) / 2,
        "bif_covariance_seed0": true,
        "bif_covariance_seed1": noisy,
    }
    runs = {
        "bif": MethodRun("bif", scores, {}, "cpu"),
        "ekfac": MethodRun("ekfac", {"ekfac": true}, {}, "cpu"),
    }
    table, per_query, results = evaluate(problem, runs, actual)
    lds_of = table.set_index(["variant", "alpha"])
    assert set(table["arm"]) == {"main", "seed", "seed_mean"}
    assert lds_of.loc[("bif_covariance_seed0", 0.5), "method"] == "BIF (cov) seed 0"
    assert lds_of.loc[("bif_covariance_seedmean", 0.5), "method"] == "BIF (cov) mean of 2 seeds"
    seeds = bif_seed_table(results)
    assert len(seeds) == 2 and (seeds["num_seeds"] == 2).all()
    for r in seeds.itertuples():
        s0 = lds_of.loc[("bif_covariance_seed0", r.alpha), "lds"]
        s1 = lds_of.loc[("bif_covariance_seed1", r.alpha), "lds"]
        assert s0 == pytest.approx(1.0) and s1 < 1.0
        assert (r.lds_seed0, r.lds_seed1) == pytest.approx((s0, s1))
        assert r.seed_mean == pytest.approx((s0 + s1) / 2)
        assert r.seed_std == pytest.approx(abs(s0 - s1) / math.sqrt(2))
        assert (r.seed_min, r.seed_max) == pytest.approx((s1, s0))
        assert r.averaged_scores_lds == pytest.approx(
            lds_of.loc[("bif_covariance", r.alpha), "lds"]
        )
        assert lds_of.loc[("bif_covariance_seedmean", r.alpha), "lds"] == pytest.approx(r.seed_mean)
    assert len(per_query) == len(table) * Q
    paired = paired_differences(results, "ekfac", 100, 0.9, 0)
    assert set(paired["arm"]) == {"main", "seed", "seed_mean"} and len(paired) == 4 * 2
    seed0 = paired[paired["variant"] == "bif_covariance_seed0"]
    assert seed0["lds_difference"].tolist() == pytest.approx([0.0, 0.0])  # identical scores
    assert bif_seed_table({k: v for k, v in results.items() if "seed" not in k[0]}).empty
