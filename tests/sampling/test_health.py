"""Health rules on synthetic traces whose trend, autocorrelation and spread are known."""

from __future__ import annotations

import math

import pytest
import torch

from bifrepro.attribution import bif_scores
from bifrepro.sampling.diagnostics import ChainDiagnostics
from bifrepro.sampling.health import (
    HealthThresholds,
    assess_chains,
    autocorrelation,
    check_distance,
    check_ess,
    check_loss,
    check_rhat,
    check_step,
    check_trend,
    check_trend_share,
    detrend_effect,
    detrend_traces,
    distance_bound,
    effective_sample_size,
    integrated_autocorrelation_time,
    trend_share,
)


def _signal_queries(train: torch.Tensor, queries: int, seed: int) -> torch.Tensor:
    """Queries that depend on 8 of the training items with weights 1 ... 0.3 (plus AR(1) noise),
    so their top-k lists are resolved beyond noise (the precision rule passes on them)."""
    g = torch.Generator().manual_seed(seed)
    c, n, m = train.shape
    centred = train - train.mean((0, 1), keepdim=True)
    out = []
    for _ in range(queries):
        w = torch.zeros(m, dtype=torch.float64)
        w[torch.randperm(m, generator=g)[:8]] = torch.linspace(1.0, 0.3, 8, dtype=torch.float64)
        out.append(centred @ w)
    noise = 0.03 * _ar1(c, n, 0.5, queries, seed=seed + 1)
    return torch.stack(out, dim=-1) + noise + 1.0


def _ar1(chains: int, n: int, rho: float, items: int = 1, seed: int = 0) -> torch.Tensor:
    """Stationary AR(1) with unit variance: ``[chains, n, items]``."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(chains, n, items, generator=g, dtype=torch.float64)
    x = torch.empty_like(eps)
    x[:, 0] = eps[:, 0]
    scale = math.sqrt(1 - rho**2)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + scale * eps[:, t]
    return x


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_ess_of_ar1_matches_n_times_1_minus_rho_over_1_plus_rho(rho):
    chains, n, items = 4, 2000, 16
    x = _ar1(chains, n, rho, items, seed=1)
    expected = chains * n * (1 - rho) / (1 + rho)
    ess = effective_sample_size(x)
    assert ess.shape == (items,)
    # Averaged over 16 independent items the estimator is within a few percent of the truth.
    assert float(ess.mean()) == pytest.approx(expected, rel=0.08)
    tau = integrated_autocorrelation_time(x)
    assert float(tau.mean()) == pytest.approx((1 + rho) / (1 - rho), rel=0.08)
    assert integrated_autocorrelation_time(x[..., 0]).dim() == 0  # [C, D] in, one number out


def test_ess_drops_when_chains_disagree():
    x = _ar1(4, 500, 0.3, 8, seed=2)
    shifted = x.clone()
    shifted[0] += 2.0  # chain 0 sits elsewhere: the pooled draws are worth far fewer samples
    assert float(effective_sample_size(shifted).median()) < 0.3 * float(
        effective_sample_size(x).median()
    )


def test_ess_of_a_constant_item_is_nan_and_autocorrelation_starts_at_one():
    x = torch.ones(2, 50, 1, dtype=torch.float64)
    assert torch.isnan(effective_sample_size(x)).all()
    ac = autocorrelation(_ar1(1, 20000, 0.7, seed=3)[0, :, 0])
    assert float(ac[0]) == 1.0
    assert float(ac[1]) == pytest.approx(0.7, abs=0.03)
    assert float(ac[2]) == pytest.approx(0.49, abs=0.04)


def test_check_ess_projects_the_pilot_to_the_real_run():
    x = _ar1(2, 400, 0.8, 32, seed=4)  # τ = 9
    th = HealthThresholds(min_ess=100)
    ok, stats = check_ess(x, th, target_samples=4 * 400)  # 1600 / 9 ≈ 178 > 100
    assert ok.passed and stats["ess_projected"] == pytest.approx(1600 / 9, rel=0.3)
    bad, _ = check_ess(x, th, target_samples=4 * 100)  # 400 / 9 ≈ 44 < 100
    assert not bad.passed
    assert "ESS" in bad.detail


def test_trend_rule_flags_a_known_drift_and_not_a_stationary_chain():
    n = 300
    stationary = _ar1(4, n, 0.5, seed=5)[..., 0]
    check, stats = check_trend(stationary)
    assert check.passed and stats["num_drifting"] == 0
    drifting = stationary.clone()
    drifting[1] += 0.02 * torch.arange(n, dtype=torch.float64)  # 6 sd over the run
    check, stats = check_trend(drifting)
    assert not check.passed
    assert "chains [1]" in check.detail and "rising" in check.detail
    assert stats["num_drifting"] == 1


def test_trend_rule_extrapolates_a_slow_pilot_drift_to_the_real_run():
    n = 400
    g = torch.Generator().manual_seed(6)
    noise = torch.randn(2, n, generator=g, dtype=torch.float64)
    strong = noise + 0.002 * torch.arange(n, dtype=torch.float64)  # 0.8 sd over 400, |t| ~ 7
    # Significant but small over the pilot itself ...
    check, _ = check_trend(strong, HealthThresholds(max_trend_effect=2.0))
    assert check.passed
    # ... yet it would move the loss by ~10 sd over a 4000-draw run: flagged.
    check, stats = check_trend(strong, HealthThresholds(max_trend_effect=2.0), target_draws=4000)
    assert not check.passed
    assert stats["trend_max_effect"] > 5


def test_rhat_rule():
    x = _ar1(4, 400, 0.3, seed=7)[..., 0]
    assert check_rhat(x).passed
    shifted = x.clone()
    shifted[2] += 3.0
    bad = check_rhat(shifted)
    assert not bad.passed and bad.value > 1.5
    # too few draws: R-hat is NaN, and NaN never passes; the reason says why
    short = check_rhat(x[:, :3])
    assert not short.passed and math.isnan(short.value)
    assert "n/a" in short.detail and ">= 4 draws" in short.detail


def test_distance_bound_and_rule():
    d, gamma, eps = 1000, 100.0, 1e-3
    bound = distance_bound(d, gamma, eps)
    assert bound == pytest.approx(d / (gamma * (1 - eps * gamma / 4)))
    # Distances of exactly the Gaussian-prior scale pass; 2x the squared bound fails.
    at_bound = torch.full((2, 50), math.sqrt(bound), dtype=torch.float64)
    check, stats = check_distance(at_bound, d, gamma, eps)
    assert check.passed and stats["distance_ratio"] == pytest.approx(1.0)
    check, stats = check_distance(at_bound * math.sqrt(2.0), d, gamma, eps)
    assert not check.passed and stats["distance_ratio"] == pytest.approx(2.0)
    # εγ >= 4: unstable whatever the distances; γ = 0: no bound.
    assert not check_distance(at_bound, d, gamma, 4.0 / gamma)[0].passed
    assert check_distance(at_bound * 100, d, 0.0, eps)[0].passed
    assert distance_bound(d, 0.0, eps) == math.inf


def test_distance_bound_holds_for_the_gaussian_prior_alone():
    """Unadjusted Langevin on the prior N(0, I/γ): E|w|² -> d/(γ(1-εγ/4)) exactly."""
    d, gamma, eps, steps = 200, 50.0, 0.02, 400
    g = torch.Generator().manual_seed(8)
    w = torch.zeros(64, d, dtype=torch.float64)
    sq = []
    for t in range(steps):
        w = w - eps / 2 * gamma * w + math.sqrt(eps) * torch.randn(w.shape, generator=g)
        if t >= 100:
            sq.append(float((w * w).sum(1).mean()))
    assert sum(sq) / len(sq) == pytest.approx(distance_bound(d, gamma, eps), rel=0.02)


def test_loss_rule_uses_the_learning_coefficient_bound():
    d = 10
    check, stats = check_loss(mean_loss=1.2, init_loss=1.0, nbeta=20.0, num_params=d)
    assert stats["llc"] == pytest.approx(4.0)  # nβ·ΔL = 20·0.2
    assert check.passed  # 4 <= 2·d/2
    check, stats = check_loss(mean_loss=2.5, init_loss=1.0, nbeta=20.0, num_params=d)
    assert stats["llc"] == pytest.approx(30.0) and not check.passed
    assert not check_loss(math.nan, 1.0, 20.0, d)[0].passed


def test_detrend_removes_a_known_linear_trend_and_keeps_chain_means():
    n = 100
    base = _ar1(3, n, 0.2, 5, seed=9)
    t = torch.arange(n, dtype=torch.float64)
    slopes = torch.tensor([0.05, -0.02, 0.0], dtype=torch.float64)
    x = base + slopes[:, None, None] * t[None, :, None] + 3.0
    out = detrend_traces(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.mean(1), x.mean(1))
    # What is left has no trend at all: detrending twice changes nothing.
    torch.testing.assert_close(detrend_traces(out), out)
    # Detrending is linear and a pure line collapses to its mean level.
    torch.testing.assert_close(out, detrend_traces(base) + 3.0 + slopes[:, None, None] * t.mean())


def test_trend_share_is_near_one_for_pure_trend_and_small_for_stationary_traces():
    n = 200
    t = torch.arange(n, dtype=torch.float64)
    g = torch.Generator().manual_seed(10)
    loadings = torch.randn(8, generator=g, dtype=torch.float64)
    trend = t[None, :, None] * loadings[None, None, :] * torch.ones(4, 1, 1, dtype=torch.float64)
    noisy_trend = trend + 0.01 * torch.randn(4, n, 8, generator=g, dtype=torch.float64)
    assert trend_share(noisy_trend) > 0.95
    stationary = _ar1(4, n, 0.3, 8, seed=11)
    assert trend_share(stationary) < 0.1
    check, stats = check_trend_share(noisy_trend)
    assert not check.passed and stats["trend_share"] > 0.95


def test_bif_scores_detrend_matches_explicit_detrending():
    q = _ar1(2, 60, 0.4, 3, seed=12) + 0.1 * torch.arange(60, dtype=torch.float64)[:, None]
    tr = _ar1(2, 60, 0.4, 5, seed=13) + 0.1 * torch.arange(60, dtype=torch.float64)[:, None]
    torch.testing.assert_close(
        bif_scores(q, tr, detrend=True, dtype=torch.float64),
        bif_scores(detrend_traces(q), detrend_traces(tr), dtype=torch.float64),
    )
    # A shared trend makes everything look correlated; detrending removes it.
    assert float(bif_scores(q, tr).abs().mean()) > 0.6
    assert float(bif_scores(q, tr, detrend=True).abs().mean()) < 0.3
    effect = detrend_effect(q, tr)
    assert effect["trend_share"] > 0.5 and effect["mean_abs_change"] > 0.3


def _diagnostics(loss: torch.Tensor, distance: torch.Tensor, init: float) -> ChainDiagnostics:
    return ChainDiagnostics(
        sgld_loss=loss, distance=distance, observed_loss={"train": loss}, init_loss={"train": init}
    )


def test_assess_chains_healthy_and_each_failure_named():
    c, n, d, gamma, eps, nbeta = 4, 300, 50, 100.0, 1e-3, 10.0
    items = 0.1 * _ar1(c, n, 0.5, 12, seed=14) + 1.0
    loss = items.mean(-1)
    dist = torch.full((c, n), math.sqrt(0.9 * distance_bound(d, gamma, eps)), dtype=torch.float64)
    kwargs = dict(num_params=d, step_size=eps, nbeta=nbeta, localization=gamma)
    report = assess_chains(_diagnostics(loss, dist, 0.99), {"train": items}, **kwargs)
    assert report.is_healthy, report.summary()
    assert report.reasons == []
    assert {ch.name for ch in report.checks} == {
        "step",
        "trend",
        "rhat",
        "ess",
        "trend_share",
        "distance",
        "loss",
    }
    metrics = report.to_metrics()
    assert metrics["health/healthy"] == 1.0 and "health/ess_projected" in metrics
    assert report.summary().startswith("chains healthy")

    drift = items + 0.003 * torch.arange(n, dtype=torch.float64)[None, :, None]
    bad = assess_chains(_diagnostics(drift.mean(-1), dist, 0.99), {"train": drift}, **kwargs)
    assert not bad.is_healthy
    assert {ch.name for ch in bad.failed} >= {"trend", "trend_share"}
    assert any(r.startswith("trend:") for r in bad.reasons)

    far = assess_chains(_diagnostics(loss, dist * 2, 0.99), {"train": items}, **kwargs)
    assert [ch.name for ch in far.failed] == ["distance"]

    sticky = 0.1 * _ar1(c, n, 0.995, 12, seed=15) + 1.0  # τ ~ 400: the chains barely move
    slow = assess_chains(_diagnostics(sticky.mean(-1), dist, 0.99), {"train": sticky}, **kwargs)
    assert "ess" in {ch.name for ch in slow.failed}
    assert slow.to_row()["healthy"] is False


def test_run_health_reports_rules_diagnostics_and_detrending_effect():
    """A stationary run is healthy with a small detrending effect; a drifting one is flagged and
    detrending changes its scores (the shared trend dominates the covariance)."""
    from bifrepro.sampling.config import SGLDConfig
    from bifrepro.sampling.health import run_health
    from bifrepro.traces import LossTraces

    c, n, d, gamma, eps, nbeta = 4, 300, 50, 100.0, 1e-3, 10.0
    config = SGLDConfig(step_size=eps, nbeta=nbeta, localization=gamma, num_chains=c, num_draws=n)
    dist = torch.full((c, n), math.sqrt(0.9 * distance_bound(d, gamma, eps)), dtype=torch.float64)

    def traces(train: torch.Tensor, query: torch.Tensor) -> LossTraces:
        diag = ChainDiagnostics(
            sgld_loss=train.mean(-1),
            distance=dist,
            observed_loss={"train": train.mean(-1), "query": query.mean(-1)},
            init_loss={"train": 0.99, "query": 0.99},
        )
        init = {"train": torch.full((12,), 0.99), "query": torch.full((3,), 0.99)}
        return LossTraces({"train": train, "query": query}, diag, config, init)

    train = 0.1 * _ar1(c, n, 0.5, 12, seed=21) + 1.0
    query = _signal_queries(train, 3, seed=22)
    ok = run_health(traces(train, query), d)
    assert ok.healthy and ok.summary.startswith("chains healthy")
    assert ok.metrics["health/healthy"] == 1.0 and "chain/rhat" in ok.metrics
    assert ok.metrics["detrend/trend_share"] < 0.5

    ramp = 0.01 * torch.arange(n, dtype=torch.float64)[None, :, None]
    bad = run_health(traces(train + ramp, query + ramp), d)
    assert not bad.healthy and "UNHEALTHY" in bad.summary
    assert bad.metrics["health/trend_ok"] == 0.0
    # the shared trend is most of the cross-covariance: detrending removes it
    assert bad.metrics["detrend/trend_share"] > 0.9 > ok.metrics["detrend/trend_share"]


def test_rhat_of_a_short_pilot_is_projected_to_the_real_run():
    """Stationary chains: R̂² − 1 is Monte Carlo spread of chain means, shrinking as 1/draws."""
    from bifrepro.sampling.diagnostics import split_rhat

    short = _ar1(2, 40, 0.97, seed=30)[..., 0]  # τ ≈ 65 draws: chain means differ by noise
    observed = split_rhat(short)
    assert observed > 1.5  # a 40-draw pilot of slowly mixing chains looks unconverged ...
    plain = check_rhat(short)
    assert plain.value == pytest.approx(observed) and not plain.passed
    projected = check_rhat(short, target_draws=4000)
    expected = math.sqrt(1 + (observed**2 - 1) * 40 / 4000)
    assert projected.value == pytest.approx(expected) and projected.passed  # ... not at 4000
    assert "projected to 4000 draws" in projected.detail
    # a run vouching for itself (or a shorter one) is judged on its own R-hat
    assert check_rhat(short, target_draws=40).value == pytest.approx(observed)
    # long stationary chains that agree: R-hat near 1 either way
    long = _ar1(2, 4000, 0.9, seed=32)[..., 0]
    assert check_rhat(long).value < 1.05


def test_step_rule_flags_a_step_too_coarse_for_the_localization():
    """ε·γ is a lower bound on ε·λ_max(nβH + γI): above the limit the step is too coarse, even if
    the chains look stationary (a 10x step need not diverge)."""
    ok = check_step(1e-4, 1000.0)
    assert ok.passed and ok.value == pytest.approx(0.1)
    coarse = check_step(1.5e-3, 1000.0)
    assert not coarse.passed and coarse.value == pytest.approx(1.5) and "ε_eff·γ" in coarse.detail
    # with the Hessian's top eigenvalue the bound tightens: 1e-4 * (1000 + 100 * 59) = 0.69
    tight = check_step(1e-4, 1000.0, hessian_top_eigenvalue=59.0, nbeta=100.0)
    assert tight.passed and tight.value == pytest.approx(0.69)
    assert not check_step(2e-4, 1000.0, hessian_top_eigenvalue=59.0, nbeta=100.0).passed
    # the threshold is configurable
    assert check_step(1.5e-3, 1000.0, HealthThresholds(max_step_curvature=2.0)).passed


def _nan_at(x: torch.Tensor, *index) -> torch.Tensor:
    out = x.clone()
    out[index] = math.nan
    return out


def test_every_rule_fails_on_nan_with_a_reason():
    c, n, d, gamma, eps = 4, 300, 50, 100.0, 1e-3
    items = 0.1 * _ar1(c, n, 0.5, 12, seed=40) + 1.0
    loss = _nan_at(items.mean(-1), 1, 7)
    trend, _ = check_trend(loss)
    assert not trend.passed and "NaN" in trend.detail
    rhat = check_rhat(loss)
    assert not rhat.passed and "NaN" in rhat.detail
    ess, _ = check_ess(_nan_at(items, 0, 3, 5))
    assert not ess.passed and "NaN or Inf" in ess.detail
    share, _ = check_trend_share(_nan_at(items, 0, 3, 5))
    assert not share.passed and "NaN" in share.detail
    dist = torch.full((c, n), 0.1, dtype=torch.float64)
    for gamma_ in (gamma, 0.0):  # also where the distance rule does not apply (γ = 0)
        check, _ = check_distance(_nan_at(dist, 2, 2), d, gamma_, eps)
        assert not check.passed and "NaN" in check.detail
    loss_check, _ = check_loss(math.nan, 1.0, 10.0, d)
    assert not loss_check.passed and "non-finite" in loss_check.detail
    assert not check_step(math.nan, gamma).passed


def test_diagnostics_and_assessment_never_call_nan_healthy():
    c, n, d, gamma, eps, nbeta = 4, 300, 50, 100.0, 1e-3, 10.0
    items = 0.1 * _ar1(c, n, 0.5, 12, seed=41) + 1.0
    dist = torch.full((c, n), math.sqrt(0.9 * distance_bound(d, gamma, eps)), dtype=torch.float64)
    kwargs = dict(num_params=d, step_size=eps, nbeta=nbeta, localization=gamma)
    assert _diagnostics(items.mean(-1), dist, 0.99).is_healthy  # the baseline is healthy
    broken = _nan_at(items, 2, 10, 4)
    diag = _diagnostics(broken.mean(-1), dist, 0.99)
    assert math.isnan(diag.rhat)
    assert not diag.is_healthy and any("NaN" in p for p in diag.problems)
    assert "UNHEALTHY" in diag.summary()
    report = assess_chains(diag, {"train": broken}, **kwargs)
    assert not report.is_healthy
    assert {ch.name for ch in report.failed} >= {"trend", "rhat", "ess"}
    # too few draws to compare chains: not healthy either, with the reason
    short = _diagnostics(items.mean(-1)[:, :3], dist[:, :3], 0.99)
    assert not short.is_healthy and any(">= 4 draws" in p for p in short.problems)


def test_run_health_takes_num_params_from_the_traces():
    from bifrepro.sampling.config import SGLDConfig
    from bifrepro.sampling.health import run_health
    from bifrepro.traces import LossTraces

    c, n, d, gamma, eps, nbeta = 4, 300, 50, 100.0, 1e-3, 10.0
    config = SGLDConfig(step_size=eps, nbeta=nbeta, localization=gamma, num_chains=c, num_draws=n)
    dist = torch.full((c, n), math.sqrt(0.9 * distance_bound(d, gamma, eps)), dtype=torch.float64)
    train = 0.1 * _ar1(c, n, 0.5, 12, seed=42) + 1.0
    query = _signal_queries(train, 3, seed=43)
    diag = ChainDiagnostics(
        sgld_loss=train.mean(-1),
        distance=dist,
        observed_loss={"train": train.mean(-1), "query": query.mean(-1)},
        init_loss={"train": 0.99, "query": 0.99},
    )
    init = {"train": torch.full((12,), 0.99), "query": torch.full((3,), 0.99)}
    data = {"train": train, "query": query}
    recorded = LossTraces(data, diag, config, init, num_params=d)
    implicit = run_health(recorded)
    explicit = run_health(recorded, d)
    assert implicit.metrics == explicit.metrics and implicit.healthy
    assert detrend_traces(recorded).num_params == d
    unknown = LossTraces(data, diag, config, init)
    with pytest.raises(ValueError, match="num_params"):
        run_health(unknown)
    # NaN losses: unhealthy with reasons, never a crash or a healthy verdict
    broken = LossTraces({"train": _nan_at(train, 1, 5, 2), "query": query}, diag, config, init)
    verdict = run_health(broken, d)
    assert not verdict.healthy and "ess" in {ch.name for ch in verdict.report.failed}
    assert math.isnan(verdict.metrics["detrend/trend_share"])


def test_preconditioned_sgld_inflates_each_direction_by_one_over_one_minus_eps_a_over_4():
    """Known answer behind the step rule: SGLD with a fixed preconditioner P on N(0, A⁻¹) is an
    AR(1) per eigendirection of P^½AP^½ (here diagonal, curvature p·a) with stationary variance
    1/(a(1 - ε·p·a/4)). The stiff direction is inflated by 1.6 at ε·p·a = 1.5, while the lower
    bound ε·γ (γ = the softest precision) reads 0.03 and passes."""
    a = torch.tensor([1.0, 100.0], dtype=torch.float64)
    p = torch.tensor([1.0, 0.5], dtype=torch.float64)
    eps = 0.03
    curvature = eps * float((p * a).max())  # ε·λ_max(P^½AP^½) = 1.5
    g = torch.Generator().manual_seed(50)
    w = torch.zeros(4000, 2, dtype=torch.float64)
    second = torch.zeros(2, dtype=torch.float64)
    for t in range(300):
        noise = torch.randn(w.shape, generator=g, dtype=torch.float64)
        w = w - eps / 2 * p * a * w + torch.sqrt(eps * p) * noise
        if t >= 100:
            second += (w * w).mean(0) / 200
    inflation = float(second[1] * a[1])
    assert inflation == pytest.approx(1 / (1 - curvature / 4), rel=0.03)  # 1.6
    lower_bound = check_step(eps, float(a.min()))
    assert lower_bound.passed and lower_bound.value == pytest.approx(0.03)
    measured = check_step(eps, float(a.min()), step_curvature=curvature)
    assert not measured.passed and measured.value == pytest.approx(1.5)
    assert "measured" in measured.detail and "P^½" in measured.detail


def test_measured_step_curvature_is_judged_instead_of_the_lower_bound():
    tiny = check_step(1e-6, 1.0, step_curvature=2.0)  # ε·γ = 1e-6, yet the step is too coarse
    assert not tiny.passed and tiny.value == 2.0 and "measured" in tiny.detail
    assert check_step(1e-6, 1.0, step_curvature=0.9).passed
    # the measured value, not the RMSProp bound ε/rmsprop_eps·γ, decides
    assert check_step(2.0, 1.0, step_curvature=0.5, preconditioned=True).passed
    nan = check_step(1e-6, 1.0, step_curvature=math.nan)
    assert not nan.passed and "NaN" in nan.detail
    # without a measurement RMSProp keeps today's rule and says it is only a lower bound
    rms = check_step(1e-3, 100.0, preconditioned=True)
    assert rms.passed and rms.value == pytest.approx(0.1)
    assert "RMSProp" in rms.detail and "lower bound" in rms.detail


def _run_traces(preconditioner: str = "none"):
    from bifrepro.sampling.config import SGLDConfig
    from bifrepro.traces import LossTraces

    c, n, d, gamma, eps, nbeta = 4, 300, 50, 100.0, 1e-3, 10.0
    config = SGLDConfig(
        step_size=eps * (1e-3 if preconditioner == "rmsprop" else 1.0),
        nbeta=nbeta,
        localization=gamma,
        num_chains=c,
        num_draws=n,
        preconditioner=preconditioner,
    )
    dist = torch.full((c, n), math.sqrt(0.9 * distance_bound(d, gamma, eps)), dtype=torch.float64)
    train = 0.1 * _ar1(c, n, 0.5, 12, seed=60) + 1.0
    query = _signal_queries(train, 3, seed=61)
    diag = ChainDiagnostics(
        sgld_loss=train.mean(-1),
        distance=dist,
        observed_loss={"train": train.mean(-1), "query": query.mean(-1)},
        init_loss={"train": 0.99, "query": 0.99},
    )
    init = {"train": torch.full((12,), 0.99), "query": torch.full((3,), 0.99)}
    return LossTraces({"train": train, "query": query}, diag, config, init, num_params=d)


def test_run_health_takes_the_measured_step_curvature_and_extra_checks():
    from bifrepro.sampling.health import HealthCheck, run_health

    traces = _run_traces()
    base = run_health(traces)
    assert base.healthy, base.summary
    coarse = run_health(traces, step_curvature=2.0)  # ε·γ = 0.1 passes; the measurement does not
    assert not coarse.healthy and [c.name for c in coarse.report.failed] == ["step"]
    assert coarse.metrics["health/step_curvature"] == 2.0
    assert coarse.metrics["health/step_times_gamma"] == pytest.approx(0.1)
    assert "measured" in coarse.summary

    halving = HealthCheck("step_halving", 3.2, 2.0, False, "scores at ε and ε/2 differ by 3.2 SE")
    biased = run_health(traces, extra_checks=[None, halving])
    assert not biased.healthy and "step_halving FAIL" in biased.summary
    assert [c.name for c in biased.report.failed] == ["step_halving"]
    assert biased.metrics["health/step_halving_ok"] == 0.0
    assert biased.metrics["health/step_halving_value"] == pytest.approx(3.2)
    passed = HealthCheck("step_halving", 0.5, 2.0, True, "agree")
    assert run_health(traces, extra_checks=[passed]).healthy
    assert run_health(traces, extra_checks=[None]).metrics == base.metrics
    with pytest.raises(ValueError, match="duplicates"):
        run_health(traces, extra_checks=[HealthCheck("ess", 1.0, 1.0, True, "")])

    rms = run_health(_run_traces("rmsprop"))
    step = next(c for c in rms.report.checks if c.name == "step")
    assert "RMSProp" in step.detail and "lower bound" in step.detail


def test_assess_chains_appends_extra_checks():
    from bifrepro.sampling.health import HealthCheck

    c, n, d, gamma, eps, nbeta = 4, 300, 50, 100.0, 1e-3, 10.0
    items = 0.1 * _ar1(c, n, 0.5, 12, seed=62) + 1.0
    dist = torch.full((c, n), math.sqrt(0.9 * distance_bound(d, gamma, eps)), dtype=torch.float64)
    kwargs = dict(num_params=d, step_size=eps, nbeta=nbeta, localization=gamma)
    diag = _diagnostics(items.mean(-1), dist, 0.99)
    assert assess_chains(diag, {"train": items}, **kwargs).is_healthy
    failing = HealthCheck("step_halving", 3.0, 2.0, False, "biased")
    report = assess_chains(diag, {"train": items}, extra_checks=(failing,), **kwargs)
    assert not report.is_healthy and report.checks[-1] is failing
    assert "step_halving FAIL" in report.summary()


def test_the_short_verdict_names_the_failed_rules() -> None:
    from bifrepro.sampling.health import HealthCheck, HealthReport, RunHealth

    ok = HealthCheck("ess", 200.0, 100.0, True, "")
    bad = HealthCheck("precision", 0.2, 0.5, False, "")
    assert RunHealth(True, "", {}, HealthReport([ok], {})).verdict == "chains healthy"
    unhealthy = RunHealth(False, "", {}, HealthReport([ok, bad], {}))
    assert unhealthy.verdict == "chains UNHEALTHY (precision)"
