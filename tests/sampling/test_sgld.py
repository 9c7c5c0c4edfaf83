"""One SGLD update against the formula written out by hand."""

from __future__ import annotations

import math

import torch

from bifrepro.sampling import SGLDConfig
from bifrepro.sampling.sgld import SGLDState, sgld_update


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
