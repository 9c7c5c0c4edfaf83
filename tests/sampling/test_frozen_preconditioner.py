"""``preconditioner="rmsprop_frozen"``: RMSProp's V estimated during burn-in, then a fixed G.

Known answer. With a loss linear in the weights, ``l_k(w) = wᵀx_k``, the full-batch gradient is
the constant ``x̄`` (the mean of the ``x_k``), so ``V`` after ``B`` burn-in steps is exactly
``(1 - α^B)·x̄²`` and the frozen preconditioner ``G = 1/(√V + rmsprop_eps)`` is known. The drift
``nβ·x̄ + γ(w - w*)`` has precision ``A = γI``; with the constant ``G`` each coordinate is plain
SGLD on ``u = G^-½ w`` with precision ``b = γG``, an AR(1) process
``u' = (1 - εb/2)u + √ε·ξ`` whose stationary variance is ``1/(b(1 - εb/4))``. Back in ``w``
(multiply by ``G``): ``Var w_i = 1/(γ(1 - εγG_i/4))``, so the recorded losses have covariance
``X·diag(Var w)·Xᵀ``. Adaptive RMSProp keeps growing ``V`` towards ``x̄²`` after burn-in, which
changes ``G`` and hence the discretisation inflation: the same check fails for it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

import bifrepro.sampling.batched as batched_module
import bifrepro.sampling.sampler as sampler_module
from bifrepro.sampling import ChainDriftWarning, SGLDConfig, run_health
from bifrepro.sampling import sample_loss_traces as _sample
from bifrepro.sampling.calibration_config import CalibrationConfig
from bifrepro.sampling.pilots import plain_curvature
from bifrepro.sampling.step_grid import anchor_grid
from tests.sampling._models import mse_loss, regression_problem

GAMMA, EPS, ALPHA, BURN_IN = 10.0, 0.01, 0.99, 30
#: Mean gradient per coordinate: εγG = 0.5, 1.2, 2.4 with the frozen G (inflation 1.14-2.5).
MEAN_GRAD = torch.tensor([0.392, 0.163, 0.0817], dtype=torch.float64)


def sample(*args, **kwargs):
    kwargs.setdefault("progress", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChainDriftWarning)
        return _sample(*args, **kwargs)


def _linear_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    return model(batch[0]).squeeze(-1)


def _linear_problem(n: int = 40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x = x - x.mean(0) + MEAN_GRAD
    model = torch.nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 3, generator=g, dtype=torch.float64))
    return x, model


def _config(preconditioner: str, mode: str = "off", **changes) -> SGLDConfig:
    base = dict(
        step_size=EPS,
        nbeta=1.0,
        localization=GAMMA,
        num_chains=4,
        num_draws=1500,
        burn_in=BURN_IN,
        thinning=1,
        batch_size=10_000,  # full batch: V is deterministic
        preconditioner=preconditioner,
        rmsprop_alpha=ALPHA,
        rmsprop_eps=1e-4,
        divergence_factor=1e6,
        seed=3,
        chain_batching=mode,
    )
    return SGLDConfig(**{**base, **changes})


def _exact_loss_covariance(x: torch.Tensor, cfg: SGLDConfig) -> torch.Tensor:
    """``X·diag(1/(γ(1 - εγG_i/4)))·Xᵀ`` with the frozen ``G`` of the linear loss."""
    v = (1 - cfg.rmsprop_alpha**cfg.burn_in) * MEAN_GRAD**2
    g = 1 / (v.sqrt() + cfg.rmsprop_eps)
    b = cfg.localization * g
    var_w = g / (b * (1 - cfg.step_size * b / 4))
    return x @ torch.diag(var_w) @ x.T


def _rel_error(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.norm(estimate - exact) / torch.linalg.norm(exact))


@pytest.mark.parametrize("mode", ["off", "on"])
def test_frozen_chain_has_the_exact_discretised_law_of_constant_g(mode):
    x, model = _linear_problem()
    ds = TensorDataset(x)
    cfg = _config("rmsprop_frozen", mode)
    traces = sample(model, _linear_loss, ds, {"train": ds}, cfg)
    flat = traces.stacked("train").double()
    estimate = torch.cov(flat.T)
    exact = _exact_loss_covariance(x, cfg)
    assert _rel_error(estimate, exact) < 0.1
    # the discretisation inflation is real (continuous time: Var w = 1/γ) ...
    continuous = x @ x.T / GAMMA
    assert _rel_error(estimate, continuous) > 0.3
    # ... and the stationary mean is the posterior's, w* - nβx̄/γ, whatever G is
    w_mean = model.weight.detach()[0] - cfg.nbeta * MEAN_GRAD / GAMMA
    sd = exact.diagonal().sqrt()
    z = (flat.mean(0) - x @ w_mean) / sd
    assert float(z.abs().max()) < 0.15


def test_adaptive_rmsprop_fails_the_same_check():
    """Without freezing, V keeps growing after burn-in: G shrinks and the law differs."""
    x, model = _linear_problem()
    ds = TensorDataset(x)
    cfg = _config("rmsprop")
    traces = sample(model, _linear_loss, ds, {"train": ds}, cfg)
    estimate = torch.cov(traces.stacked("train").double().T)
    assert _rel_error(estimate, _exact_loss_covariance(x, cfg)) > 0.25


def _spy(monkeypatch, module, name):
    """Record (adapt, V after the call) of every SGLD update the chains make."""
    calls: list[tuple[bool, list[torch.Tensor]]] = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        real(*args, **kwargs)
        state = args[3]
        calls.append((kwargs.get("adapt", True), [v.clone() for v in state.square_avg]))

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize(
    ("mode", "module", "name"),
    [("off", sampler_module, "sgld_update"), ("on", batched_module, "sgld_update_with_noise")],
)
def test_v_changes_during_burn_in_only(monkeypatch, mode, module, name):
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    burn_in = 6
    cfg = SGLDConfig(
        step_size=1e-3,
        nbeta=50.0,
        localization=100.0,
        num_chains=2,
        num_draws=5,
        burn_in=burn_in,
        thinning=2,
        batch_size=8,
        preconditioner="rmsprop_frozen",
        chain_batching=mode,
    )
    calls = _spy(monkeypatch, module, name)
    sample(model, mse_loss, ds, {"train": ds}, cfg)
    per_chain = cfg.total_steps
    assert len(calls) == per_chain * (cfg.num_chains if mode == "off" else 1)
    for start in range(0, len(calls), per_chain):
        chain = calls[start : start + per_chain]
        assert [adapt for adapt, _ in chain] == [s <= burn_in for s in range(1, per_chain + 1)]
        vs = [v[0] for _, v in chain]
        for step in range(1, burn_in):  # minibatch gradients: V moves on every burn-in step
            assert not torch.equal(vs[step], vs[step - 1]), step
        for step in range(burn_in, per_chain):  # and never after
            assert torch.equal(vs[step], vs[burn_in - 1]), step


def test_frozen_runs_are_their_own_stores_and_are_judged_as_preconditioned():
    frozen = SGLDConfig(preconditioner="rmsprop_frozen", rmsprop_eps=0.1, step_size=1e-3)
    adaptive = frozen.replace(preconditioner="rmsprop")
    assert frozen.fingerprint() != adaptive.fingerprint()
    # the pre-filter without a preconditioner estimate: ε_eff·γ with ε_eff = ε/rmsprop_eps
    kappa = plain_curvature(frozen, gamma=100.0, nbeta=10.0, lam_h=5.0)
    assert kappa.value == pytest.approx(100.0 / 0.1) and kappa.label == "ε_eff·γ"
    assert plain_curvature(adaptive, 100.0, 10.0, 5.0) == kappa
    cal = CalibrationConfig(anchor_grid=True)
    assert anchor_grid(cal, frozen, 100.0, 10.0) == anchor_grid(cal, adaptive, 100.0, 10.0)


def test_run_health_uses_the_effective_step_of_the_frozen_preconditioner():
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(
        step_size=1e-5,
        nbeta=50.0,
        localization=100.0,
        num_chains=2,
        num_draws=30,
        burn_in=5,
        batch_size=8,
        rmsprop_eps=0.1,
    )
    reports = {
        p: run_health(sample(model, mse_loss, ds, {"train": ds}, cfg.replace(preconditioner=p)))
        for p in ("rmsprop", "rmsprop_frozen", "none")
    }
    step = {p: next(c for c in r.report.checks if c.name == "step") for p, r in reports.items()}
    # same ε/rmsprop_eps·γ bound as adaptive RMSProp, not plain SGLD's ε·γ
    assert step["rmsprop_frozen"].value == pytest.approx(1e-5 / 0.1 * 100.0)
    assert step["rmsprop_frozen"].value == pytest.approx(step["rmsprop"].value)
    assert step["none"].value == pytest.approx(1e-5 * 100.0)
    assert "RMSProp" in step["rmsprop_frozen"].detail
