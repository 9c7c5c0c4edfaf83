"""CalibrationReport.health_evidence: what the calibration measured, passed on to run_health."""

from __future__ import annotations

import pytest

from bifrepro.sampling import CalibrationConfig, CalibrationReport, HealthCheck, SGLDConfig

CHOSEN = SGLDConfig(step_size=1e-3, nbeta=10.0, localization=100.0)
BIAS = HealthCheck("step_halving", 1.2, 3.0, True, "scores at ε and ε/2 agree")


def _report(chosen: object | None = object(), bias: HealthCheck | None = BIAS) -> CalibrationReport:
    return CalibrationReport(
        config=CHOSEN, original=CHOSEN, calibration=CalibrationConfig(), candidates=[],
        chosen=chosen, num_params=3, pilot_items=4, real_cost=1.0, seconds=0.1,  # type: ignore[arg-type]
        top_eigenvalue=500.0, curvature=0.5, bias_check=bias,
    )  # fmt: skip


def test_the_chosen_step_gets_the_measured_curvature_and_the_bias_check() -> None:
    evidence = _report().health_evidence()
    assert evidence["step_curvature"] == pytest.approx(0.5)
    assert evidence["extra_checks"] == (BIAS,)


def test_a_larger_step_is_not_vouched_for_and_its_curvature_scales() -> None:
    evidence = _report().health_evidence(CHOSEN.replace(step_size=4e-3))
    assert evidence["step_curvature"] == pytest.approx(2.0)  # fails max_step_curvature = 1
    assert evidence["extra_checks"] == ()
    smaller = _report().health_evidence(CHOSEN.replace(step_size=5e-4))
    assert smaller["extra_checks"] == (BIAS,)


@pytest.mark.parametrize(
    "run", [CHOSEN.replace(localization=10.0), CHOSEN.replace(preconditioner="rmsprop")]
)
def test_another_posterior_or_preconditioner_gets_no_evidence(run: SGLDConfig) -> None:
    assert _report().health_evidence(run) == {"step_curvature": None, "extra_checks": ()}


def test_no_choice_means_no_evidence() -> None:
    assert _report(chosen=None).health_evidence()["step_curvature"] is None
