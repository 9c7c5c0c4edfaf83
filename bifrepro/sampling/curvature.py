"""The stiffest curvature an SGLD chain sees: power iteration on (preconditioned) Hessian products.

Per eigendirection of the local posterior's precision ``A = nβH + γI`` full-batch SGLD with step
ε is an AR(1) process whose stationary variance is inflated by ``1/(1 - εa/4)`` (unstable for
``εa >= 4``). With a diagonal preconditioner ``P`` the update is
``Δw = -(ε/2)·P·A·(w - w*) + N(0, εP)``, i.e. plain SGLD on ``u = P^-½ w`` with precision
``P^½ A P^½``: its top eigenvalue is what ``ε`` must be small against (docs/science.md §7).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bifrepro.data.batches import MinibatchStream, batch_size_of, to_device
from bifrepro.sampling.parameters import sampled_parameters
from bifrepro.sampling.sampler import LossFn
from bifrepro.sgld_config import SGLDConfig

__all__ = [
    "top_hessian_eigenvalue",
    "rmsprop_preconditioner",
    "preconditioned_top_eigenvalue",
]

log = logging.getLogger(__name__)

Vectors = list[torch.Tensor]
Operator = Callable[[Vectors], Vectors]


def _hessian_operator(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: Dataset,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any] | None,
) -> tuple[Vectors, Operator]:
    """Sampled parameters of a deep copy (eval mode) and ``v ↦ H v`` for the mean loss on ``data``."""
    work = copy.deepcopy(model).eval()
    params = sampled_parameters(work)
    device = params[0].device if params else torch.device("cpu")
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    batches = [to_device(b, device) for b in loader]
    n = sum(batch_size_of(b) for b in batches)

    def hvp(v: Vectors) -> Vectors:
        out = [torch.zeros_like(p) for p in params]
        for batch in batches:
            with torch.enable_grad():
                loss = loss_fn(work, batch).reshape(batch_size_of(batch), -1).mean(1).sum() / n
                grads = torch.autograd.grad(loss, params, create_graph=True)
                dot = sum((g * x).sum() for g, x in zip(grads, v, strict=True))
                part = torch.autograd.grad(dot, params)
            for acc, h in zip(out, part, strict=True):
                acc.add_(h.detach())
        return out

    return params, hvp


def _power_iteration(params: Vectors, op: Operator, iters: int, seed: int) -> float:
    """Rayleigh quotient after ``iters`` power steps of a symmetric ``op`` from a seeded start.

    Converges to the largest-magnitude eigenvalue; before convergence ``|result|`` is a lower
    bound on it. NaN if ``op`` needs double backward and the model does not support it.
    """
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen).to(p) for p in params]
    lam = math.nan
    try:
        for _ in range(iters):
            norm = torch.sqrt(sum((x.double() ** 2).sum() for x in v))
            if not norm > 0:
                return 0.0
            v = [x / norm.to(x.dtype) for x in v]
            av = op(v)
            lam = float(sum((a.double() * x.double()).sum() for a, x in zip(av, v, strict=True)))
            v = av
    except RuntimeError as err:  # e.g. fused kernels without double backward
        log.warning("curvature estimate unavailable (%s); the pre-filter uses γ only", err)
        return math.nan
    return lam


def top_hessian_eigenvalue(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: Dataset,
    iters: int = 20,
    seed: int = 0,
    batch_size: int = 256,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> float:
    """Largest-magnitude eigenvalue of the Hessian of the mean loss over ``data`` at the weights.

    Power iteration on Hessian-vector products (double backward), ``iters`` steps from a seeded
    random start; returns the last Rayleigh quotient (a lower bound on ``|λ_max|`` if it has not
    converged), or NaN if the model does not support double backward. The model is deep-copied and
    put in eval mode, as the sampler does; it is never modified.
    """
    params, hvp = _hessian_operator(model, loss_fn, data, batch_size, collate_fn)
    if not params:
        return math.nan
    return _power_iteration(params, hvp, iters, seed)


def rmsprop_preconditioner(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: Dataset,
    config: SGLDConfig,
    max_batches: int = 64,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> Vectors:
    """RMSProp-SGLD's diagonal preconditioner ``P = 1/(√V + rmsprop_eps)`` at the end of burn-in.

    For ``preconditioner="rmsprop_frozen"`` this is the ``P`` every recorded draw uses (it is
    frozen there); adaptive RMSProp keeps moving it.

    Estimated from minibatch gradients **at w*** rather than by running the sampler: ``V`` is the
    exponential average of squared minibatch gradients (``V₀ = 0``), so after ``T = burn_in``
    steps (at least 1: the first update also updates ``V`` first) its expectation is
    ``(1 - α^T)·E[g²]``; ``E[g²]`` is the mean of ``g²`` over ``min(T, max_batches)`` minibatches
    drawn as the sampler draws them (``config.batch_size``, a seed derived from ``config.seed``).
    Why: it needs no step size (one estimate serves every candidate ε), costs a few backward
    passes and is deterministic; and it errs on the safe side. At w* the full-batch gradient
    vanishes, so ``E[g²]`` holds only minibatch noise, while along a chain it also holds the
    ``H(w - w*)`` part: ``V`` is under- and ``P`` over-estimated, so the curvature
    ``λ_max(P^½AP^½)`` is over-estimated and the pre-filter is conservative. With full batches
    ``V = 0`` and ``P = 1/rmsprop_eps`` (the old ``ε_eff = ε/rmsprop_eps`` bound).

    Returns one tensor per sampled parameter (same shapes); the model is never modified.
    """
    work = copy.deepcopy(model).eval()
    params = sampled_parameters(work)
    if not params:
        return []
    device = params[0].device
    steps = max(config.burn_in, 1)
    seed = int(np.random.SeedSequence([config.seed, 0x9EC0]).generate_state(1, np.uint64)[0] >> 1)
    stream = MinibatchStream(
        data,
        config.batch_size,
        device,
        torch.Generator().manual_seed(seed),
        config.cache_data,
        collate_fn,
    )
    count = min(steps, max_batches)
    mean_sq = [torch.zeros_like(p) for p in params]
    for _ in range(count):
        batch = stream.next()
        with torch.enable_grad():
            loss = loss_fn(work, batch).mean()
        grads = torch.autograd.grad(loss, params)
        for acc, g in zip(mean_sq, grads, strict=True):
            acc.add_(g.detach() ** 2, alpha=1.0 / count)
    weight = 1.0 - config.rmsprop_alpha**steps
    return [1.0 / ((weight * v).sqrt() + config.rmsprop_eps) for v in mean_sq]


def preconditioned_top_eigenvalue(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: Dataset,
    nbeta: float,
    localization: float,
    precond: Sequence[torch.Tensor] | None = None,
    iters: int = 20,
    seed: int = 0,
    batch_size: int = 256,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> float:
    """Top eigenvalue of ``P^½(nβH + γI)P^½``: the stiffest curvature the chain sees.

    ``H`` is the Hessian of the mean loss over ``data`` at the model's weights. ``precond=None``
    is plain SGLD (``P = I``): ``nβ·|λ_max(H)| + γ`` from :func:`top_hessian_eigenvalue`. With a
    preconditioner (e.g. :func:`rmsprop_preconditioner`) power iteration runs on the operator
    ``v ↦ P^½(nβ·H(P^½v) + γP^½v)``; it returns the magnitude of the largest-magnitude eigenvalue
    (a lower bound if not converged), or NaN without double backward.
    """
    if precond is None:
        lam = top_hessian_eigenvalue(model, loss_fn, data, iters, seed, batch_size, collate_fn)
        return nbeta * abs(lam) + localization if math.isfinite(lam) else math.nan
    params, hvp = _hessian_operator(model, loss_fn, data, batch_size, collate_fn)
    if not params:
        return math.nan
    root = [p.to(q).sqrt() for p, q in zip(precond, params, strict=True)]

    def op(v: Vectors) -> Vectors:
        pv = [r * x for r, x in zip(root, v, strict=True)]
        hv = hvp(pv)
        return [r * (nbeta * h + localization * x) for r, h, x in zip(root, hv, pv, strict=True)]

    lam = _power_iteration(params, op, iters, seed)
    return abs(lam) if math.isfinite(lam) else math.nan
