"""One SGLD update against the formula written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from bifrepro.sampling import SGLDConfig
from bifrepro.sampling.sgld import SGLDState, adapts_preconditioner, sgld_update


def _setup():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 2, generator=g), torch.randn(4, generator=g)]
    w_star = [p + 0.1 * torch.randn(p.shape, generator=g) for p in params]
    grads = [torch.randn(p.shape, generator=g) for p in params]
    return params, w_star, grads


def _noise(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen) for p in params]


def test_plain_sgld_step_matches_formula():
    params, w_star, grads = _setup()
    cfg = SGLDConfig(step_size=1e-2, nbeta=7.0, localization=3.0)
    expected = [
        p
        - cfg.step_size / 2 * (cfg.nbeta * g + cfg.localization * (p - p0))
        + math.sqrt(cfg.step_size) * xi
        for p, p0, g, xi in zip(params, w_star, grads, _noise(params, 5), strict=True)
    ]
    work = [p.clone() for p in params]
    sgld_update(
        work, grads, w_star, SGLDState.init(work, cfg), cfg, torch.Generator().manual_seed(5)
    )
    for got, want in zip(work, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_rmsprop_sgld_steps_match_formula():
    params, w_star, grads = _setup()
    cfg = SGLDConfig(
        step_size=1e-2,
        nbeta=7.0,
        localization=3.0,
        preconditioner="rmsprop",
        rmsprop_alpha=0.9,
        rmsprop_eps=0.1,
    )
    work = [p.clone() for p in params]
    state = SGLDState.init(work, cfg)
    ref = [p.clone() for p in params]
    v = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(11)
    ref_gen = torch.Generator().manual_seed(11)
    for _ in range(2):  # two steps: V accumulates
        noise = [torch.randn(p.shape, generator=ref_gen) for p in ref]
        for i, (p0, g, xi) in enumerate(zip(w_star, grads, noise, strict=True)):
            v[i] = 0.9 * v[i] + 0.1 * g * g
            precond = 1.0 / (v[i].sqrt() + 0.1)
            drift = cfg.nbeta * g + cfg.localization * (ref[i] - p0)
            ref[i] = (
                ref[i]
                - cfg.step_size / 2 * precond * drift
                + torch.sqrt(cfg.step_size * precond) * xi
            )
        sgld_update(work, grads, w_star, state, cfg, gen)
    for got, want in zip(work, ref, strict=True):
        torch.testing.assert_close(got, want)


def test_frozen_rmsprop_adapts_during_burn_in_then_keeps_v():
    """``rmsprop_frozen``: RMSProp's update on burn-in steps, then the same G on every step."""
    params, w_star, grads = _setup()
    common = dict(step_size=1e-2, nbeta=7.0, localization=3.0, rmsprop_alpha=0.9, burn_in=2)
    frozen = SGLDConfig(**common, preconditioner="rmsprop_frozen")
    adaptive = SGLDConfig(**common, preconditioner="rmsprop")
    assert [adapts_preconditioner(frozen, s) for s in (1, 2, 3, 10)] == [True, True, False, False]
    assert all(adapts_preconditioner(adaptive, s) for s in (1, 2, 3, 10))
    assert frozen.preconditioned and adaptive.preconditioned
    assert not SGLDConfig().preconditioned

    work_f, work_a = [p.clone() for p in params], [p.clone() for p in params]
    state_f, state_a = SGLDState.init(work_f, frozen), SGLDState.init(work_a, adaptive)
    for step in range(1, 5):
        gen_f, gen_a = torch.Generator().manual_seed(step), torch.Generator().manual_seed(step)
        before = [v.clone() for v in state_f.square_avg]
        adapt = adapts_preconditioner(frozen, step)
        sgld_update(work_f, grads, w_star, state_f, frozen, gen_f, adapt=adapt)
        sgld_update(work_a, grads, w_star, state_a, adaptive, gen_a)
        same_v = all(torch.equal(b, v) for b, v in zip(before, state_f.square_avg, strict=True))
        assert same_v == (step > frozen.burn_in), step
        if step <= frozen.burn_in:  # identical to adaptive RMSProp-SGLD during burn-in
            for got, want in zip(work_f, work_a, strict=True):
                assert torch.equal(got, want)
    # after burn-in the adaptive V moved on, the frozen one did not: the chains differ
    assert not torch.allclose(state_f.square_avg[0], state_a.square_avg[0])
    assert not torch.allclose(work_f[0], work_a[0])


def test_frozen_rmsprop_step_matches_formula_with_fixed_g():
    """A step with ``adapt=False`` uses G = 1/(√V + eps) of the given V and leaves V alone."""
    params, w_star, grads = _setup()
    cfg = SGLDConfig(
        step_size=1e-2, nbeta=7.0, localization=3.0, preconditioner="rmsprop_frozen", burn_in=1
    )
    state = SGLDState.init(params, cfg)
    state.square_avg = [0.5 + g.abs() for g in grads]
    v_before = [v.clone() for v in state.square_avg]
    expected = []
    for p, p0, g, v, xi in zip(params, w_star, grads, v_before, _noise(params, 3), strict=True):
        precond = 1.0 / (v.sqrt() + cfg.rmsprop_eps)
        drift = cfg.nbeta * g + cfg.localization * (p - p0)
        expected.append(
            p - cfg.step_size / 2 * precond * drift + torch.sqrt(cfg.step_size * precond) * xi
        )
    work = [p.clone() for p in params]
    sgld_update(work, grads, w_star, state, cfg, torch.Generator().manual_seed(3), adapt=False)
    for got, want in zip(work, expected, strict=True):
        torch.testing.assert_close(got, want)
    for v, v0 in zip(state.square_avg, v_before, strict=True):
        assert torch.equal(v, v0)


def test_frozen_rmsprop_needs_a_burn_in():
    with pytest.raises(ValueError, match="SGLDConfig.preconditioner"):
        SGLDConfig(preconditioner="rmsprop_frozen", burn_in=0)
    assert SGLDConfig(preconditioner="rmsprop_frozen", burn_in=1).burn_in == 1


def test_frozen_preconditioner_cache_changes_no_number():
    """The cached ``(G, √G)`` of a frozen V gives exactly the recomputed update."""
    params, w_star, grads = _setup()
    cfg = SGLDConfig(step_size=1e-2, preconditioner="rmsprop_frozen", burn_in=1)
    cached, fresh = [p.clone() for p in params], [p.clone() for p in params]
    state_c, state_f = SGLDState.init(cached, cfg), SGLDState.init(fresh, cfg)
    for step in range(1, 5):
        adapt = adapts_preconditioner(cfg, step)
        state_f.frozen = None  # recompute G from V every step
        sgld_update(
            cached, grads, w_star, state_c, cfg, torch.Generator().manual_seed(step), adapt=adapt
        )
        sgld_update(
            fresh, grads, w_star, state_f, cfg, torch.Generator().manual_seed(step), adapt=adapt
        )
        assert (state_c.frozen is None) == adapt
        for a, b in zip(cached, fresh, strict=True):
            assert torch.equal(a, b)
    sgld_update(cached, grads, w_star, state_c, cfg, torch.Generator(), adapt=True)
    assert state_c.frozen is None  # a step that moves V drops the cache
