"""Calibration on linear regression, where the stable step sizes are known: ε < 4/λ_max(nβH + γI)."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

from bifrepro.sampling import SGLDConfig, sample_loss_traces
from bifrepro.sampling.calibration import (
    CalibrationConfig,
    CalibrationError,
    calibrate,
    calibrate_report,
    resolve_sampler,
    run_cost,
)
from bifrepro.sampling.health import HealthThresholds, assess_traces
from tests.sampling._models import mse_loss, regression_problem

NBETA, GAMMA = 100.0, 20.0


@pytest.fixture(scope="module")
def problem():
    x, y, model = regression_problem(n=40, d=3)
    hessian = x.T @ x / len(x)  # of the mean loss ½(y - xᵀw)²
    lam_max = float(torch.linalg.eigvalsh(NBETA * hessian + GAMMA * torch.eye(3)).max())
    return TensorDataset(x, y), model, lam_max


def _config(**kw) -> SGLDConfig:
    base = dict(
        step_size=1e-4,
        nbeta=NBETA,
        localization=GAMMA,
        num_chains=4,
        num_draws=200,
        burn_in=50,
        batch_size=40,  # full batch: the stability limit is exactly 4/λ_max
        seed=0,
    )
    base.update(kw)
    return SGLDConfig(**base)


_GRID = dict(grid_min=1e-5, grid_max=1e-1, grid_points=5, refine_points=2)


@pytest.fixture(scope="module")
def report(problem):
    data, model, _ = problem
    cal = CalibrationConfig(exhaustive=True, **_GRID)
    return calibrate_report(model, mse_loss, data, _config(), calibration=cal, progress=False)


@pytest.fixture(scope="module")
def empirical_report(problem):
    """No curvature pre-filter (only εγ < 4): every candidate runs and the pilots must judge."""
    data, model, _ = problem
    cal = CalibrationConfig(
        exhaustive=True, estimate_curvature=False, max_step_curvature=4.0, **_GRID
    )
    return calibrate_report(model, mse_loss, data, _config(), calibration=cal, progress=False)


def test_curvature_estimate_matches_the_exact_hessian(report, problem):
    data, _, lam_max = problem
    x = data.tensors[0]
    exact = float(torch.linalg.eigvalsh(x.T @ x / len(x)).max())
    assert report.hessian_top_eigenvalue == pytest.approx(exact, rel=0.01)
    assert NBETA * report.hessian_top_eigenvalue + GAMMA == pytest.approx(lam_max, rel=0.01)
    # The grid starts at the largest step the curvature filter admits: nothing is skipped.
    assert (report.table["status"] != "skipped").all()
    top = report.table["step_size"].max()
    assert top * lam_max == pytest.approx(report.calibration.max_step_curvature, rel=0.02)


def test_fixed_grid_rejects_steps_beyond_the_curvature_limit_unrun(problem):
    data, model, lam_max = problem
    cal = CalibrationConfig(anchor_grid=False, **_GRID)
    report = calibrate_report(model, mse_loss, data, _config(), calibration=cal, progress=False)
    skipped = report.table[report.table["status"] == "skipped"]
    assert len(skipped) >= 1 and (skipped["seconds"] == 0).all()
    assert (skipped["step_size"] * lam_max > report.calibration.max_step_curvature * 0.99).all()
    assert skipped["reasons"].str.contains("λ_max").all()
    assert report.config.step_size * lam_max <= report.calibration.max_step_curvature * 1.01


def test_chooses_the_largest_healthy_step_inside_the_stable_range(report, problem):
    _, _, lam_max = problem
    chosen = report.config.step_size
    assert report.healthy and report.chosen is not None and report.chosen.healthy
    assert chosen * lam_max < 4, f"ε={chosen} is outside the stable range ε < {4 / lam_max:.3g}"
    table = report.table
    assert table["chosen"].sum() == 1
    assert table.loc[table["chosen"], "step_size"].item() == pytest.approx(chosen)
    # Largest healthy: no healthy candidate has a larger step.
    assert table.loc[table["healthy"], "step_size"].max() == pytest.approx(chosen)
    # Everything else the caller set is kept.
    assert report.config.replace(step_size=1e-4) == _config()


def test_unstable_and_too_small_steps_are_rejected_with_reasons(empirical_report, problem):
    _, _, lam_max = problem
    report = empirical_report
    table = report.table.set_index("step_size")
    # Beyond the stability limit the pilot blows up: reported as diverged.
    unstable = table[table.index * lam_max > 4]
    assert len(unstable) >= 1
    assert (unstable["status"] == "diverged").all()
    assert unstable["reasons"].str.contains("diverged").all()
    # The smallest steps barely move the chains: too few effective samples, named as such.
    tiny = table.loc[1e-5]
    assert not tiny["healthy"] and "ess" in tiny["reasons"]
    # Every row carries the evidence behind its verdict.
    for col in ("trend_max_abs_t", "rhat", "ess_projected", "distance_ratio", "llc", "seconds"):
        assert col in report.table


def test_step_close_to_the_stability_edge_is_flagged_by_the_loss_bound(empirical_report, problem):
    """Near εa = 4 the discretised chain is far hotter than the posterior: λ̂ exceeds d/2."""
    _, _, lam_max = problem
    assert empirical_report.config.step_size * lam_max < 4
    rows = empirical_report.table[(empirical_report.table["status"] == "ok")]
    edge = rows[rows["step_size"] * lam_max > 3]
    assert len(edge) >= 1
    assert (~edge["healthy"]).all()
    assert edge["reasons"].str.contains("loss").all()


def test_calibration_is_deterministic(problem, report):
    data, model, _ = problem
    cal = CalibrationConfig(exhaustive=True, **_GRID)
    again = calibrate_report(model, mse_loss, data, _config(), calibration=cal, progress=False)
    assert again.config == report.config
    cols = ["step_size", "status", "healthy", "ess_projected", "llc"]
    assert again.table[cols].fillna(-1).equals(report.table[cols].fillna(-1))


def test_the_chosen_setting_gives_a_healthy_real_run_and_a_bad_one_is_flagged(report, problem):
    data, model, _ = problem
    good = sample_loss_traces(model, mse_loss, data, {"train": data}, report.config)
    verdict = assess_traces(good, num_params=3)
    assert verdict.is_healthy, verdict.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the drift warning is expected here
        bad = sample_loss_traces(model, mse_loss, data, {"train": data}, _config(step_size=1e-5))
    verdict = assess_traces(bad, num_params=3)
    assert not verdict.is_healthy
    assert "ess" in {c.name for c in verdict.failed}
    assert "UNHEALTHY" in verdict.summary()


def test_no_healthy_candidate_keeps_the_config_or_raises(problem):
    data, model, _ = problem
    # Only unstable steps on the grid (and no pre-filter to reject them unrun).
    cal = CalibrationConfig(
        grid_min=0.05,
        grid_max=0.5,
        grid_points=2,
        refine_points=0,
        estimate_curvature=False,
        max_step_curvature=100.0,
    )
    with pytest.warns(RuntimeWarning, match="NO healthy"):
        report = calibrate_report(model, mse_loss, data, _config(), calibration=cal)
    assert not report.healthy and report.config == _config()
    assert "Try" in report.summary() or "diverged" in report.summary()
    cal.on_failure = "raise"
    with pytest.raises(CalibrationError, match="NO healthy"):
        calibrate(model, mse_loss, data, _config(), calibration=cal)


def test_prior_only_prefilter_skips_without_running(problem):
    data, model, _ = problem
    cal = CalibrationConfig(
        grid_min=1e-3,
        grid_max=1.0,
        grid_points=4,
        refine_points=0,
        estimate_curvature=False,
        max_step_curvature=1.5,
        anchor_grid=False,
    )
    report = calibrate_report(model, mse_loss, data, _config(), calibration=cal)
    skipped = report.table[report.table["status"] == "skipped"]
    # Without the Hessian estimate only γ enters: ε·γ > 1.5 for ε = 1 and 0.1 with γ = 20.
    assert sorted(skipped["step_size"].tolist()) == pytest.approx([0.1, 1.0])
    assert (skipped["cost"] == 0).all() and skipped["reasons"].str.contains("·γ").all()


def test_searching_localization_keeps_a_healthy_caller_value(problem):
    data, model, _ = problem
    cal = CalibrationConfig(search_localization=True, localization_grid=[1.0, 1e3], **_GRID)
    report = calibrate_report(model, mse_loss, data, _config(), cal.search, cal)
    assert report.search == ("step_size", "localization")
    assert report.config.localization == GAMMA  # closest to the caller's and healthy
    assert set(report.table["localization"]) == {GAMMA}  # farther values never needed


def test_a_window_narrower_than_the_grid_is_found_by_refining_below_the_divergence(problem):
    data, model, lam_max = problem
    # Grid 1e-1 (beyond the curvature limit), 1e-3 (mixes too slowly), 1e-5: the healthy window
    # lies in between.
    # (max_step_curvature 1: the window this test was built around; the default is stricter)
    kw = dict(grid_min=1e-5, grid_max=1e-1, grid_points=3, refine_points=2, max_step_curvature=1.0)
    cal = CalibrationConfig(anchor_grid=False, **kw)
    report = calibrate_report(model, mse_loss, data, _config(), calibration=cal)
    assert report.healthy, report.table[["step_size", "reasons"]]
    assert report.chosen is not None and report.chosen.stage == "refine"
    assert 1e-3 < report.config.step_size < 4 / lam_max
    # The anchored grid starts inside that window (at the curvature limit): one pilot suffices.
    anchored = calibrate_report(
        model, mse_loss, data, _config(), calibration=CalibrationConfig(bias_check=False, **kw)
    )
    assert anchored.chosen is not None and anchored.chosen.stage == "coarse"
    assert len(anchored.table) == 1 and anchored.config.step_size > report.config.step_size


def test_resolve_sampler_passthrough_and_calibrated(problem, tmp_path):
    data, model, _ = problem
    cfg = _config()
    assert resolve_sampler(cfg, CalibrationConfig(enabled=False), model, mse_loss, data) == (
        cfg,
        None,
    )
    cal = CalibrationConfig(enabled=True, grid_points=3, **{
        k: v for k, v in _GRID.items() if k != "grid_points"
    })  # fmt: skip
    chosen, report = resolve_sampler(cfg, cal, model, mse_loss, data, out_dir=tmp_path)
    assert report is not None and chosen == report.config
    assert chosen.step_size != cfg.step_size
    for name in ("calibration.csv", "calibration.json"):
        assert (tmp_path / name).stat().st_size > 0
    # the report writes tables only; its figures are the plots layer's (tests/plots)
    assert not list(tmp_path.glob("*.png"))
    metrics = report.to_metrics()
    assert metrics["calibration/step_size"] == chosen.step_size
    assert 0 < metrics["calibration/cost_fraction"] < math.inf


def test_cost_model_and_pilot_budget(problem):
    cfg = _config(num_chains=4, num_draws=200, burn_in=50, batch_size=10)
    # 4 chains × (250 steps × 3 × 10 + 200 draws × 100 items)
    assert run_cost(cfg, n_train=40, n_observed=100) == 4 * (250 * 30 + 200 * 100)
    assert run_cost(cfg.replace(batch_size=1000), 40, 40) == 4 * (250 * 120 + 200 * 40)


def test_calibration_config_validation_and_omegaconf_roundtrip():
    with pytest.raises(ValueError, match="grid_min"):
        CalibrationConfig(grid_min=1.0, grid_max=0.1)
    with pytest.raises(ValueError, match="on_failure"):
        CalibrationConfig(on_failure="ignore")
    with pytest.raises(ValueError, match="max_rhat"):
        HealthThresholds(max_rhat=0)
    node = OmegaConf.structured(CalibrationConfig(enabled=True))
    node.thresholds.min_ess = 50.0
    node.localization_grid = [1.0, 10.0]
    back = CalibrationConfig.from_mapping(OmegaConf.to_container(node))
    assert back.enabled and back.thresholds.min_ess == 50.0
    assert back.localization_grid == [1.0, 10.0]
    assert CalibrationConfig(search_nbeta=True).search == ("step_size", "nbeta")
    with pytest.raises(ValueError, match="grid_maxx"):
        CalibrationConfig.from_mapping({"grid_maxx": 1.0})
    with pytest.raises(ValueError, match="min_es"):
        CalibrationConfig.from_mapping({"thresholds": {"min_es": 1.0}})


def test_hydra_sampler_auto_turns_calibration_on():
    from hydra import compose, initialize_config_dir

    from bifrepro.config import register_configs
    from experiments import CONF_DIR

    register_configs()  # the harness's schemas
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        off = compose("config")
        auto = compose("config", overrides=["sampler=auto", "calibration.grid_min=1e-6"])
        rms = compose("config", overrides=["sampler=rmsprop_sgld", "calibration=auto"])
        frozen = compose("config", overrides=["sampler=rmsprop_frozen_sgld"])
        plain = compose("config", overrides=["sampler=sgld", "calibration=auto"])
    assert not CalibrationConfig.from_mapping(
        OmegaConf.to_container(off.calibration, resolve=True)
    ).enabled
    cal = CalibrationConfig.from_mapping(OmegaConf.to_container(auto.calibration, resolve=True))
    assert cal.enabled and cal.grid_min == 1e-6
    # ... and sizes the run for the health check's precision rule
    assert cal.target_resolved == cal.thresholds.min_resolved_share and cal.max_draws >= 1000
    # sampler=auto is frozen RMSProp-SGLD (the bench's choice) with the experiment's own settings.
    assert auto.sampler.preconditioner == "rmsprop_frozen"
    assert auto.sampler.nbeta == off.sampler.nbeta
    assert plain.sampler.preconditioner == "none" and plain.calibration.enabled
    assert rms.sampler.preconditioner == "rmsprop" and rms.calibration.enabled
    assert frozen.sampler.preconditioner == "rmsprop_frozen"
    assert frozen.sampler.step_size == rms.sampler.step_size
    SGLDConfig.from_mapping(OmegaConf.to_container(frozen.sampler, resolve=True))


# -- step-halving bias check, preconditioned curvature, precision target --------------------------


def _edge_calibration(bias_check: bool) -> CalibrationConfig:
    """A permissive pre-filter (ε·λ_max up to 2.5: inflation 2.7 in the stiffest direction) whose
    first pilot passes every health rule although its scores are biased."""
    return CalibrationConfig(max_step_curvature=2.5, bias_check=bias_check, **_GRID)


def test_step_halving_lowers_a_biased_step_the_health_rules_accept(problem):
    data, model, lam_max = problem
    plain = calibrate_report(
        model, mse_loss, data, _config(), calibration=_edge_calibration(False), progress=False
    )
    # Without the check the biased edge step is chosen: every health rule passes there.
    assert plain.chosen is not None and plain.chosen.health.is_healthy
    assert plain.config.step_size * lam_max == pytest.approx(2.5, rel=0.02)
    assert plain.bias_check is None
    checked = calibrate_report(
        model, mse_loss, data, _config(), calibration=_edge_calibration(True), progress=False
    )
    # With it (removing the check from calibrate_report makes this fail) the step is halved.
    assert checked.config.step_size <= plain.config.step_size / 2 * 1.001
    assert checked.bias_check is not None and checked.bias_check.name == "step_halving"
    assert checked.bias_check.passed, checked.bias_check.detail
    assert any("lowered ε" in note for note in checked.notes)
    table = checked.table
    assert (table["stage"] == "halving").sum() >= 2
    assert table.loc[table["chosen"], "stage"].item() == "halving"
    # The halving pilots run twice the draws and their cost counts.
    halving = [c for c in checked.candidates if c.stage == "halving"]
    assert all(c.pilot_draws == 2 * checked.candidates[0].pilot_draws for c in halving)
    assert checked.pilot_cost == pytest.approx(sum(c.cost for c in checked.candidates))
    assert checked.cost_fraction > plain.cost_fraction
    metrics = checked.to_metrics()
    assert metrics["calibration/step_halving_ok"] == 1.0
    assert metrics["calibration/step_curvature"] == pytest.approx(
        checked.config.step_size * lam_max, rel=0.02
    )
    assert "step halving ok" in checked.summary()


def test_a_step_halving_failure_is_reported_when_the_rounds_run_out(problem, tmp_path):
    data, model, _ = problem
    cal = _edge_calibration(True)
    cal.bias_check_rounds = 1
    report = calibrate_report(model, mse_loss, data, _config(), calibration=cal, progress=False)
    assert report.bias_check is not None and not report.bias_check.passed
    assert "ε=" in report.bias_check.detail and "variance" in report.bias_check.detail
    assert report.chosen is not None and report.chosen.stage == "halving"  # least biased tried
    assert any("NOT verified" in note for note in report.notes)
    assert "step halving FAILED" in report.summary()
    saved = json.loads(Path(report.save(tmp_path)["json"]).read_text())
    assert saved["bias_check"]["name"] == "step_halving" and not saved["bias_check"]["passed"]


@pytest.mark.parametrize("preconditioner", ["rmsprop", "rmsprop_frozen"])
def test_rmsprop_prefilter_uses_the_preconditioned_curvature(problem, preconditioner):
    data, model, lam_max = problem
    # Full batches: the gradient vanishes at w*, so P = 1/rmsprop_eps = 10 and the chain sees
    # 10·A. At ε = 1e-3 the old rule ε_eff·γ = 0.2 admits the step, but ε·λ_max(P^½AP^½) = 1.76.
    # The frozen preconditioner is the same P (RMSProp's at the end of burn-in), kept fixed.
    config = _config(preconditioner=preconditioner, rmsprop_eps=0.1)
    cal = CalibrationConfig(anchor_grid=False, bias_check=False, max_step_curvature=1.0, **_GRID)
    report = calibrate_report(model, mse_loss, data, config, calibration=cal, progress=False)
    assert report.top_eigenvalue == pytest.approx(10 * lam_max, rel=1e-3)
    row = report.table.set_index("step_size").loc[1e-3]
    assert row["status"] == "skipped" and "P^½" in row["reasons"]
    assert row["step_curvature"] == pytest.approx(1e-3 * 10 * lam_max, rel=1e-3)
    assert report.chosen is not None
    assert report.curvature == pytest.approx(report.config.step_size * 10 * lam_max, rel=1e-3)
    assert report.curvature <= cal.max_step_curvature
    # The old rule (no estimate: ε_eff·γ only) runs that step and would choose above the limit.
    old = CalibrationConfig(
        anchor_grid=False, bias_check=False, estimate_curvature=False, max_step_curvature=1.0,
        **_GRID,
    )  # fmt: skip
    before = calibrate_report(model, mse_loss, data, config, calibration=old, progress=False)
    assert before.table.set_index("step_size").loc[1e-3, "status"] == "ok"
    assert before.config.step_size * 10 * lam_max > 1


def test_precision_target_sets_the_draws_or_says_it_is_out_of_budget(problem):
    data, model, _ = problem
    xq, yq, _ = regression_problem(n=8, d=3, seed=1)
    queries = TensorDataset(xq, yq)
    cal = CalibrationConfig(target_resolved=0.5, precision_k=5, bias_check=False, **_GRID)
    report = calibrate_report(
        model, mse_loss, data, _config(), calibration=cal, query_data=queries, progress=False
    )
    assert report.draws_needed is not None and report.draws_needed > _config().num_draws
    assert report.precision_reachable is True
    assert report.config.num_draws == report.draws_needed
    assert report.config.replace(num_draws=200, step_size=1e-4) == _config()
    # The draws come from the chosen pilot, ranked on one half of its draws, gaps on the other.
    from bifrepro.sampling.precision_target import draws_for_resolved_crossfit

    pilot = report.chosen.traces
    assert pilot is not None
    assert report.draws_needed == draws_for_resolved_crossfit(
        pilot["query"], pilot["train"], 0.5, k=5, num_chains=4
    )
    # A target the pilot cannot size (its rankings do not hold across halves): the budget is
    # spent and the note says why.
    hard = dataclasses.replace(cal, target_resolved=0.9, max_draws=500)
    spent = calibrate_report(
        model, mse_loss, data, _config(), calibration=hard, query_data=queries, progress=False
    )
    assert spent.precision_reachable is False and spent.config.num_draws == 500
    assert any("cannot size" in note for note in spent.notes)
    # Within a budget too small for it: capped, and said so.
    cal.max_draws = 300
    capped = calibrate_report(
        model, mse_loss, data, _config(), calibration=cal, query_data=queries, progress=False
    )
    assert capped.precision_reachable is False and capped.config.num_draws == 300
    assert any("NOT reachable" in note for note in capped.notes)
    assert capped.to_metrics()["calibration/precision_reachable"] == 0.0
    # Without queries there is nothing to resolve: the draws are kept and a note says why.
    plain = calibrate_report(model, mse_loss, data, _config(), calibration=cal, progress=False)
    assert plain.config.num_draws == 200 and plain.precision_reachable is None
    assert any("needs per-item query traces" in note for note in plain.notes)


def test_new_calibration_fields_are_validated():
    for bad in (
        {"bias_check_rounds": 0},
        {"bias_z": 0.0},
        {"bias_z": math.inf},
        {"target_resolved": 1.5},
        {"target_resolved": 0.0},
        {"precision_k": 0},
        {"max_draws": 0},
        {"bias_check": "yes"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CalibrationConfig(**bad)
    ok = CalibrationConfig(target_resolved=0.5, max_draws=1000, bias_check_rounds=3)
    assert ok.target_resolved == 0.5 and ok.max_draws == 1000


def test_the_default_curvature_cap_bounds_the_variance_inflation(problem):
    """Default cap 0.5: the chosen step inflates the stiffest direction's variance by <= 1.14
    (1/(1 - ε·λ_max/4) on the exact linear-Gaussian problem)."""
    data, model, lam_max = problem
    report = calibrate_report(
        model, mse_loss, data, _config(), calibration=CalibrationConfig(bias_check=False, **_GRID)
    )
    assert CalibrationConfig().max_step_curvature == 0.5
    assert report.chosen is not None
    assert report.config.step_size * lam_max <= 0.5 * (1 + 1e-3)
    assert 1 / (1 - report.config.step_size * lam_max / 4) <= 1.143


def test_choose_thinning_records_every_tau_steps_and_keeps_the_ess(problem):
    """With choose_thinning the real run records about once per autocorrelation time of the
    chosen pilot and keeps its effective sample size with fewer draws; the precision target's
    draws are converted to the chosen thinning."""
    from bifrepro.sampling.thinning import choose_thinning

    data, model, _ = problem
    cfg = _config(num_draws=2000)
    cal = CalibrationConfig(choose_thinning=True, min_draws=50, bias_check=False, **_GRID)
    report = calibrate_report(model, mse_loss, data, cfg, calibration=cal, progress=False)
    assert report.chosen is not None and math.isfinite(report.tau_steps)
    assert report.tau_steps > 2  # small steps: draws one step apart are strongly correlated
    # the choice is the cost-optimal one for the measured τ (40 observed items, full batch of 40)
    expected = choose_thinning(report.tau_steps, 1, 2000, 3.0 * 40, 40.0, 100, 50)
    assert (report.config.thinning, report.config.num_draws) == (
        expected.thinning,
        expected.num_draws,
    )
    assert report.config.thinning > 1 and report.config.num_draws < 2000
    assert report.thinning_speedup > 1
    assert any("thinning 1 ->" in n for n in report.notes)
    metrics = report.to_metrics()
    assert metrics["calibration/thinning"] == report.config.thinning
    # without the option nothing changes
    plain = calibrate_report(
        model, mse_loss, data, cfg, calibration=CalibrationConfig(bias_check=False, **_GRID),
        progress=False,
    )  # fmt: skip
    assert (plain.config.thinning, plain.config.num_draws) == (1, 2000)
    assert math.isnan(plain.tau_steps)
