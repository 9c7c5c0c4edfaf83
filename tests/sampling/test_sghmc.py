"""SGHMC (``integrator="sghmc"``): exact law on a Gaussian, SGLD at friction 1, faster mixing, resume.

On a quadratic U(w) = ½ δᵀAδ (δ = w - w*, A = (nβ/n)·XᵀX + γI) with full-batch gradients the
update ``v ← (1-α)v - (ε/2)·G·Aδ + √(αεG)·ξ; δ ← δ + v`` is a linear Gaussian recursion in (δ, v),
so its stationary covariance solves a discrete Lyapunov equation exactly; it tends to A⁻¹ as ε → 0.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.attribution import bif_scores
from bifrepro.sampling import (
    ChainDriftWarning,
    SGLDConfig,
    effective_sample_size,
    sample_loss_traces,
)
from bifrepro.sampling.sgld import SGLDState, sgld_update_with_noise
from tests.sampling._models import (
    ce_loss,
    gaussian_regression,
    mse_loss,
    regression_problem,
    small_mlp_problem,
)

#: SGLDConfig().fingerprint() before integrator / friction / observable_dtype existed.
DEFAULT_FINGERPRINT = "5614fc70765df8d0"


def sample(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChainDriftWarning)
        return sample_loss_traces(*args, progress=False, **kwargs)


# -- the exact law of the recursion on a Gaussian -----------------------------------------------


def discrete_covariance(a: torch.Tensor, eps: float, alpha: float, g: torch.Tensor | None = None):
    """Stationary Cov(δ) of the SGHMC recursion with constant diagonal preconditioner ``g``."""
    d = a.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    g = torch.ones(d, dtype=torch.float64) if g is None else g
    ga = g[:, None] * a
    m = torch.cat(
        [
            torch.cat([eye - eps / 2 * ga, (1 - alpha) * eye], 1),
            torch.cat([-eps / 2 * ga, (1 - alpha) * eye], 1),
        ]
    )
    b = math.sqrt(alpha * eps) * torch.cat([torch.diag(g.sqrt())] * 2)
    n = 2 * d
    kron = torch.eye(n * n, dtype=torch.float64) - torch.kron(m, m)
    p = torch.linalg.solve(kron, (b @ b.T).reshape(-1)).reshape(n, n)
    return p[:d, :d]


def simulate(a, config, chains, steps, keep_from, g=None, seed=0):
    """``[chains, kept steps, d]`` of δ from stacked chains driven by the exact gradient Aδ."""
    d = a.shape[0]
    w = torch.zeros(chains, d, dtype=torch.float64)
    w_star = [torch.zeros(d, dtype=torch.float64)]
    state = SGLDState.init([w], config)
    if g is not None:  # a frozen V whose G = 1/(√V + eps) is g
        state.square_avg = [((1 / g - config.rmsprop_eps) ** 2).expand(chains, d).clone()]
    gen = torch.Generator().manual_seed(seed)
    kept = []
    for step in range(steps):
        grad = (w @ a.T - config.localization * w) / config.nbeta  # nβ·grad + γ·δ = A·δ
        noise = [torch.randn(chains, d, generator=gen, dtype=torch.float64)]
        sgld_update_with_noise([w], [grad], w_star, state, config, noise, adapt=False)
        if step >= keep_from:
            kept.append(w.clone())
    return torch.stack(kept, 1)


A = torch.tensor([[40.0, 5.0], [5.0, 1.5]], dtype=torch.float64)  # eigenvalues 0.86 and 40.6


@pytest.mark.parametrize("alpha", [0.1, 0.5])
@pytest.mark.parametrize("preconditioner", ["none", "rmsprop_frozen"])
def test_stationary_covariance_is_the_exact_discrete_law(alpha, preconditioner):
    eps = 0.01
    cfg = SGLDConfig(
        step_size=eps,
        nbeta=10.0,
        localization=1.0,
        integrator="sghmc",
        friction=alpha,
        preconditioner=preconditioner,
    )
    g = None if preconditioner == "none" else torch.tensor([0.5, 2.0], dtype=torch.float64)
    draws = simulate(A, cfg, chains=500, steps=2500, keep_from=1000, g=g).reshape(-1, 2)
    estimate = draws.T @ draws / draws.shape[0]
    exact = discrete_covariance(A, eps, alpha, g)
    # Monte Carlo error of ~500 chains × ~15-150 effective draws each: well below 3 %.
    rel = torch.linalg.norm(estimate - exact) / torch.linalg.norm(exact)
    assert rel < 0.03, f"{rel:.4f}"
    # ... and the small-step law is the posterior A⁻¹ (O(ε) bias, ~3 % here).
    posterior = torch.linalg.inv(A)
    assert torch.linalg.norm(exact - posterior) / torch.linalg.norm(posterior) < 0.05
    assert torch.linalg.norm(estimate - posterior) / torch.linalg.norm(posterior) < 0.06


def test_momentum_mixes_the_slowest_direction_faster_than_sgld_at_the_same_cost():
    """Same ε, same number of steps (the same gradient evaluations): ESS per draw along A's
    flattest eigenvector. Measured ~0.0012 (SGLD) vs ~0.02 (SGHMC, friction 0.1)."""
    eps = 0.01
    slow = torch.linalg.eigh(A).eigenvectors[:, 0]
    ess = {}
    for name, extra in (("sgld", {}), ("sghmc", {"integrator": "sghmc", "friction": 0.1})):
        cfg = SGLDConfig(step_size=eps, nbeta=10.0, localization=1.0, **extra)
        draws = simulate(A, cfg, chains=8, steps=4000, keep_from=1000)
        ess[name] = float(effective_sample_size(draws @ slow)) / (8 * 3000)
    assert ess["sghmc"] > 5 * ess["sgld"], ess


def test_update_matches_the_formula():
    """Two steps by hand: v ← (1-α)v - (ε/2)[nβ g + γ(w - w*)] + √(αε) ξ; w ← w + v."""
    cfg = SGLDConfig(step_size=0.02, nbeta=3.0, localization=2.0, integrator="sghmc", friction=0.25)
    w = torch.tensor([1.0, -2.0], dtype=torch.float64)
    w_star = torch.tensor([0.5, 0.5], dtype=torch.float64)
    params = [w.clone()]
    state = SGLDState.init(params, cfg)
    v = torch.zeros(2, dtype=torch.float64)
    for g, xi in (
        (torch.tensor([0.3, -0.1]), torch.tensor([1.0, 2.0])),
        (torch.tensor([-1.0, 0.5]), torch.tensor([-0.5, 0.2])),
    ):
        g, xi = g.double(), xi.double()
        v = 0.75 * v - 0.01 * (3.0 * g + 2.0 * (w - w_star)) + math.sqrt(0.25 * 0.02) * xi
        w = w + v
        sgld_update_with_noise(params, [g], [w_star], state, cfg, [xi.clone()])
        torch.testing.assert_close(params[0], w, rtol=0, atol=1e-14)
        torch.testing.assert_close(state.momentum[0], v, rtol=0, atol=1e-14)


# -- friction 1 is SGLD, bit for bit ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["off", "on"])
@pytest.mark.parametrize("preconditioner", ["none", "rmsprop_frozen"])
def test_friction_one_reproduces_sgld_bit_for_bit(mode, preconditioner):
    """The momentum path with α = 1 takes SGLD's operations on SGLD's noise stream: equal traces.
    With α < 1 the same seed gives different traces (the momentum path is really taken)."""
    ds, model = small_mlp_problem()
    cfg = SGLDConfig(
        step_size=2e-3,
        nbeta=64.0,
        localization=50.0,
        num_chains=2,
        num_draws=12,
        burn_in=5,
        thinning=2,
        batch_size=16,
        chain_batching=mode,
        preconditioner=preconditioner,
        seed=4,
    )
    sgld = sample(model, ce_loss, ds, {"train": ds}, cfg)
    hmc1 = sample(model, ce_loss, ds, {"train": ds}, cfg.replace(integrator="sghmc", friction=1.0))
    assert torch.equal(hmc1["train"], sgld["train"])
    assert torch.equal(hmc1.diagnostics.distance, sgld.diagnostics.distance)
    assert torch.equal(hmc1.diagnostics.sgld_loss, sgld.diagnostics.sgld_loss)
    hmc = sample(model, ce_loss, ds, {"train": ds}, cfg.replace(integrator="sghmc", friction=0.5))
    assert not torch.equal(hmc["train"], sgld["train"])


def test_batched_sghmc_matches_sequential_to_rounding():
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(
        step_size=1e-3,
        nbeta=40.0,
        localization=20.0,
        num_chains=3,
        num_draws=20,
        burn_in=5,
        batch_size=8,
        integrator="sghmc",
        friction=0.2,
    )
    off = sample(model, mse_loss, ds, {"train": ds}, cfg)
    on = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="on"))
    torch.testing.assert_close(on["train"], off["train"], rtol=1e-4, atol=1e-6)


# -- through the sampler: the loss covariance of the linear-Gaussian model -----------------------


def test_sampler_loss_covariance_matches_exact_gaussian_posterior():
    x, y, w_star, model = gaussian_regression(seed=2)
    n, d = x.shape
    nbeta, gamma, eps, alpha = 100.0, 20.0, 2e-3, 0.2
    cfg = SGLDConfig(
        step_size=eps,
        nbeta=nbeta,
        localization=gamma,
        num_chains=4,
        num_draws=800,
        burn_in=100,
        thinning=2,
        batch_size=n,
        integrator="sghmc",
        friction=alpha,
        seed=1,
    )
    ds = TensorDataset(x, y)
    traces = sample(model, mse_loss, ds, {"train": ds}, cfg)
    estimate = bif_scores(traces["train"], traces["train"], normalize="covariance")
    precision = nbeta / n * x.T @ x + gamma * torch.eye(d, dtype=torch.float64)
    r = y - x @ w_star

    def loss_cov(sigma):
        s = x @ sigma @ x.T
        return r[:, None] * r[None, :] * s + 0.5 * s**2

    for sigma, tol in (
        (discrete_covariance(precision, eps, alpha), 0.12),
        (torch.linalg.inv(precision), 0.15),
    ):
        exact = loss_cov(sigma)
        rel = torch.linalg.norm(estimate.double() - exact) / torch.linalg.norm(exact)
        assert rel < tol, f"{rel:.3f}"


# -- checkpoint / resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("preconditioner", ["none", "rmsprop_frozen"])
@pytest.mark.parametrize(("mode", "fail_at"), [("off", 150), ("on", 80)])
def test_interrupted_sghmc_resumes_to_the_uninterrupted_traces(
    tmp_path, mode, fail_at, preconditioner
):
    """The momentum is in the checkpoint: restarting it at zero would give other traces."""
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(
        step_size=1e-3,
        nbeta=50.0,
        localization=100.0,
        num_chains=2,
        num_draws=30,
        burn_in=4,
        thinning=3,
        batch_size=8,
        checkpoint_every=4,
        chain_batching=mode,
        preconditioner=preconditioner,
        integrator="sghmc",
        friction=0.1,
    )
    reference = sample(model, mse_loss, ds, {"train": ds}, cfg)
    calls = {"n": 0, "fail_at": fail_at}

    def flaky(m, batch):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return mse_loss(m, batch)

    out = tmp_path / "t"
    with pytest.raises(KeyboardInterrupt):
        sample(model, flaky, ds, {"train": ds}, cfg, out_dir=out)
    done = json.loads((out / "manifest.json").read_text())["completed"]
    assert 0 < sum(done) < 60
    ckpts = list((out / "chains").glob("*.pt"))
    assert ckpts and all("momentum" in torch.load(p, weights_only=False) for p in ckpts)
    calls["fail_at"] = -1
    resumed = sample(model, flaky, ds, {"train": ds}, cfg, out_dir=out)
    assert torch.equal(resumed["train"], reference["train"])


# -- settings -----------------------------------------------------------------------------------


def test_defaults_keep_old_fingerprints_and_sghmc_is_its_own_store():
    cfg = SGLDConfig()
    assert cfg.integrator == "sgld" and cfg.observable_dtype == "float32"
    assert cfg.fingerprint() == DEFAULT_FINGERPRINT
    assert cfg.replace(friction=0.5).fingerprint() == DEFAULT_FINGERPRINT  # unused by SGLD
    hmc = cfg.replace(integrator="sghmc")
    assert hmc.fingerprint() != DEFAULT_FINGERPRINT
    assert hmc.replace(friction=0.5).fingerprint() != hmc.fingerprint()
    assert cfg.replace(observable_dtype="bfloat16").fingerprint() != DEFAULT_FINGERPRINT


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"integrator": "hmc"}, "integrator"),
        ({"integrator": "sghmc", "friction": 0.0}, "friction"),
        ({"integrator": "sghmc", "friction": 1.5}, "friction"),
        ({"observable_dtype": "float16"}, "observable_dtype"),
    ],
)
def test_bad_values_are_refused_by_name(changes, field):
    with pytest.raises(ValueError, match=f"SGLDConfig.{field}"):
        SGLDConfig(**changes)


def test_adaptive_rmsprop_is_refused_with_sghmc():
    with pytest.raises(ValueError, match="constant mass matrix"):
        SGLDConfig(integrator="sghmc", preconditioner="rmsprop")


def test_sampler_sghmc_option_composes(hydra_compose):
    from bifrepro.config import validate_config

    vc = validate_config(hydra_compose(["experiment=toy_hierarchy", "sampler=sghmc"]))
    assert vc.sampler.integrator == "sghmc"
    assert vc.sampler.friction == pytest.approx(0.1)
