"""Cost models, crossover and per-phase timing of the LM-family compute comparison."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from bifrepro.attribution.configs import EKFACConfig
from bifrepro.evaluation import lm_scaling as ls
from bifrepro.models.lm import CausalLMConfig, build_small_lm
from bifrepro.sampling import SGLDConfig

SIZES = [1e5, 3e5, 1e6, 3e6, 1e7]


def _synthetic(laws: dict[tuple[str, str], tuple[float, float]]) -> pd.DataFrame:
    """Rows with seconds exactly a·P^b per (method, phase), all measured."""
    rows = [
        {
            "method": m,
            "phase": ph,
            "num_params": p,
            "seconds": a * p**b,
            "peak_memory_mb": 1.0,
            "status": "measured",
            "n": 8,
            "T": 4,
        }  # fmt: skip
        for (m, ph), (a, b) in laws.items()
        for p in SIZES
    ]
    return pd.DataFrame(rows)


def _laws(bif: tuple[float, float], ek: tuple[float, float]) -> dict:
    out = {("bif", ph): bif for ph in ls.TOTAL_PHASES["bif"]}
    out |= {("ekfac", ph): ek for ph in ls.TOTAL_PHASES["ekfac"]}
    return out


def test_power_law_fit_recovers_known_exponents():
    fits = ls.fit_power_laws(_synthetic(_laws((1e-2, 0.5), (1e-6, 1.3))))
    for r in fits.itertuples():
        expected_b = 0.5 if r.method == "bif" else 1.3
        assert r.b == pytest.approx(expected_b, abs=1e-5)
        assert r.a == pytest.approx(1e-2 if r.method == "bif" else 1e-6, rel=1e-3)
        assert r.c == pytest.approx(0.0, abs=1e-6)
        assert r.points == len(SIZES)


def test_fixed_cost_is_separated_from_the_growth():
    rows = _synthetic(_laws((1e-2, 0.5), (1e-7, 1.5)))
    rows["seconds"] += np.where(rows["method"] == "ekfac", 3.0, 0.0)  # per-call overhead
    fits = ls.fit_power_laws(rows).set_index(["method", "phase"])
    ek = fits.loc[("ekfac", "scores_token")]
    assert ek["b"] == pytest.approx(1.5, abs=1e-3)
    assert ek["c"] == pytest.approx(3.0, rel=1e-3)
    assert fits.loc[("bif", "draws"), "c"] == pytest.approx(0.0, abs=1e-6)
    # a plain log-log fit would see a much flatter EK-FAC (the overhead dominates small sizes)
    plain = ls.fit_power_laws(rows, offset_min_points=99).set_index(["method", "phase"])
    assert plain.loc[("ekfac", "scores_token"), "b"] < 1.45


def test_q_costs_are_linear_fits():
    q_rows = pd.DataFrame(
        [
            {"method": m, "num_params": 1e5, "q": q, "phase": ph, "seconds": s0 + k * q}
            for m, s0, k in (("bif", 1.0, 0.01), ("ekfac", 5.0, 0.2))
            for q in (10, 100, 1000)
            for ph in ("scores_token", "scores_sequence")
        ]
    )
    out = ls.fit_q_costs(q_rows).set_index("method")
    assert out.loc["bif", "c_q"] == pytest.approx(0.01)
    assert out.loc["ekfac", "c0"] == pytest.approx(5.0)


def test_crossover_on_constructed_case():
    # BIF total 3·1e-2·P^0.5, EK-FAC total 4·1e-6·P: equal at sqrt(P) = 3e-2 / 4e-6 = 7500
    fits = ls.fit_power_laws(_synthetic(_laws((1e-2, 0.5), (1e-6, 1.0))))
    out = ls.crossover_params(fits, 1e5)
    assert out["cheaper_at_smallest"] == "ekfac"
    assert out["crossover_direction"] == "bif_becomes_cheaper"
    assert out["crossover_params"] == pytest.approx(7500.0**2, rel=0.02)
    assert out["slope_bif"] == pytest.approx(0.5, abs=1e-6)
    assert out["slope_ekfac"] == pytest.approx(1.0, abs=1e-6)
    # extrapolated ratio at Pythia-2.8B: 4e-6·P / (3e-2·sqrt(P))
    p = ls.PYTHIA_PARAMS["pythia-2.8b"]
    ext = ls.extrapolate(fits).set_index("model")
    assert ext.loc["pythia-2.8b", "ratio_ekfac_over_bif"] == pytest.approx(
        4e-6 * p / (3e-2 * math.sqrt(p)), rel=1e-6
    )


def test_leave_one_size_out_range_is_tight_for_exact_laws_and_wide_for_a_bent_one():
    rows = _synthetic(_laws((1e-2, 0.5), (1e-6, 1.0)))
    ext = ls.extrapolate(ls.fit_power_laws(rows), rows=rows).set_index("model")
    exact = ext.loc["pythia-2.8b"]
    assert exact["ratio_loo_low"] == pytest.approx(exact["ratio_ekfac_over_bif"], rel=1e-3)
    assert exact["ratio_loo_high"] == pytest.approx(exact["ratio_ekfac_over_bif"], rel=1e-3)
    # EK-FAC's largest size twice as slow as its law: the refits disagree far out
    bent = rows.copy()
    last = (bent["method"] == "ekfac") & (bent["num_params"] == SIZES[-1])
    bent.loc[last, "seconds"] *= 2.0
    wide = ls.extrapolate(ls.fit_power_laws(bent), rows=bent).set_index("model")
    r = wide.loc["pythia-2.8b"]
    assert r["ratio_loo_low"] <= r["ratio_ekfac_over_bif"] <= r["ratio_loo_high"]
    assert r["ratio_loo_high"] / r["ratio_loo_low"] > 1.5
    assert "ratio_loo_low" not in ls.extrapolate(ls.fit_power_laws(rows)).columns


def test_no_crossover_names_the_dominant_term():
    laws = _laws((1e-2, 1.2), (1e-3, 0.5))
    laws[("ekfac", "scores_token")] = (1e-4, 0.9)  # grows fastest among EK-FAC's phases
    fits = ls.fit_power_laws(_synthetic(laws))
    out = ls.crossover_params(fits, 1e5)
    assert out["crossover_params"] == math.inf and out["crossover_direction"] == ""
    assert out["cheaper_at_smallest"] == "ekfac"
    assert out["dominant_ekfac"] == "scores_token"
    assert out["slope_bif"] > out["slope_ekfac"]
    # BIF cheaper at the smallest size but growing faster: EK-FAC takes over where they meet,
    # 4 phases · 1e-3·P = 3 phases · 1e-6·P^1.5  ->  sqrt(P) = 4e-3 / 3e-6
    fits = ls.fit_power_laws(_synthetic(_laws((1e-6, 1.5), (1e-3, 1.0))))
    out = ls.crossover_params(fits, 1e5)
    assert out["cheaper_at_smallest"] == "bif"
    assert out["crossover_direction"] == "ekfac_becomes_cheaper"
    assert out["crossover_params"] == pytest.approx((4e-3 / 3e-6) ** 2, rel=0.02)


def test_with_totals_sums_phases_and_marks_scaled():
    rows = _synthetic(_laws((1.0, 0.0), (2.0, 0.0)))
    rows.loc[(rows["method"] == "bif") & (rows["phase"] == "draws"), "status"] = "scaled"
    extra = pd.DataFrame([{"method": "ekfac", "phase": "scores_sequence", "num_params": 1e5,
                           "seconds": 100.0, "peak_memory_mb": 5.0, "status": "measured",
                           "n": 8, "T": 4}])  # fmt: skip
    out = ls.with_totals(pd.concat([rows, extra], ignore_index=True))
    tot = out[out["phase"] == "total"]
    assert len(tot) == 2 * len(SIZES)
    assert (tot[tot["method"] == "bif"]["seconds"] == 3.0).all()
    assert (tot[tot["method"] == "bif"]["status"] == "scaled").all()
    ek = tot[tot["method"] == "ekfac"].set_index("num_params")["seconds"]
    assert ek.loc[1e5] == 8.0  # scores_sequence is not part of the per-token total


def test_llama_params_matches_built_model():
    for size in ls.family([16, 24], [1, 2], [2, 4], mlp_ratio=4):
        cfg = CausalLMConfig(
            hidden_size=size.hidden_size, num_layers=size.num_layers, num_heads=size.num_heads,
            intermediate_size=size.intermediate_size, max_position_embeddings=16,
        )  # fmt: skip
        model = build_small_lm(cfg, vocab_size=300)
        assert ls.llama_params(size, 300) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="same length"):
        ls.family([16], [1, 2], [2])


def _tiny_lm():
    cfg = CausalLMConfig(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
                         max_position_embeddings=16)  # fmt: skip
    model = build_small_lm(cfg, vocab_size=40, seed=0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (24, 8), generator=gen)
    data = torch.utils.data.TensorDataset(ids, torch.ones_like(ids))
    return model, data


def test_time_ekfac_times_every_factor_step():
    torch.set_num_threads(1)
    model, data = _tiny_lm()
    train = torch.utils.data.Subset(data, range(12))
    query = torch.utils.data.Subset(data, range(12, 15))
    rows, att = ls.time_ekfac(model, train, query, EKFACConfig(train_batch_size=8))
    assert [r["phase"] for r in rows] == list(ls.EKFAC_PHASES)
    assert all(r["seconds"] > 0 and r["status"] == "measured" for r in rows)
    more = ls.time_ekfac_scores(att, torch.utils.data.Subset(data, range(12, 20)))
    assert [r["phase"] for r in more] == ["scores_token", "scores_sequence"]
    assert att.config.per_token == "train"  # restored after the sequence-level scores


def test_time_bif_scales_the_pilot():
    torch.set_num_threads(1)
    model, data = _tiny_lm()
    train = torch.utils.data.Subset(data, range(12))
    query = torch.utils.data.Subset(data, range(12, 15))
    sampler = SGLDConfig(step_size=1e-4, num_chains=3, burn_in=40, batch_size=8, num_draws=10)
    plan = ls.BIFPlan(chains=3, burn_in=40, pilot_chains=2, pilot_burn_in=2, pilot_draws=4,
                      draws=100)  # fmt: skip
    rows, info = ls.time_bif(model, data, train, query, sampler, plan)
    by = {r["phase"]: r for r in rows}
    assert list(by) == list(ls.BIF_PHASES)
    assert all(r["status"] == "scaled" for r in rows)  # 3 × 100 draws > 2 × 4 measured
    assert by["draws"]["seconds"] == pytest.approx(info["draw_seconds"] * 300)
    assert by["burn_in"]["seconds"] == pytest.approx(info["burn_in_step_seconds"] * 120)
    assert info["draws"] == 100 and info["draws_rule"] == "fixed"
    assert isinstance(info["healthy"], bool)
    # the precision rule picks a number of draws within its bounds
    plan = ls.BIFPlan(chains=3, burn_in=40, pilot_chains=2, pilot_burn_in=2, pilot_draws=4,
                      k=3, min_draws=5, max_draws=50)  # fmt: skip
    _, info = ls.time_bif(model, data, train, query, sampler, plan)
    assert 5 <= info["draws"] <= 50 and info["draws_rule"].startswith("pilot")
    q_rows = ls.time_bif_queries(model, data, train, query, sampler, 2, chains=3, draws=10)
    assert [r["phase"] for r in q_rows] == ["draws", "scores_token", "scores_sequence"]


def test_headline_and_summary_from_results():
    table = ls.with_totals(_synthetic(_laws((1e-2, 0.5), (1e-6, 1.0))))
    fits = ls.fit_power_laws(table)
    table["chains"] = np.where(table["method"] == "bif", 4, np.nan)
    cross = ls.crossover_params(fits, 1e5)
    extra = ls.extrapolate(fits)
    infos = [{"draws": 200, "healthy": True}, {"draws": 400, "healthy": False}]
    metrics, assumptions = ls.headline(table, fits, cross, extra, infos, num_query=16)
    p = SIZES[-1]
    assert metrics["ratio/largest_ekfac_over_bif"] == pytest.approx(
        4e-6 * p / (3e-2 * math.sqrt(p)), rel=1e-9
    )
    assert metrics["exponent/ekfac/total"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["bif/healthy_sizes"] == 1.0
    assert "4 chains × 300 draws" in assumptions
    text = ls.summary_markdown(metrics, cross, extra, assumptions, "cpu (1 thread)")
    assert "BIF becomes the cheaper method at about 5.6" in text
    assert "pythia-2.8b" in text
