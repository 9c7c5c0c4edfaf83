"""A tiny toy-hierarchy run shared by the protocol, analysis and figure tests."""

from __future__ import annotations

import functools

import torch

from bifrepro.data.hierarchy import Hierarchy, make_hierarchy
from bifrepro.dynamics.toy import ToyRun, checkpoint_steps, run_toy_protocol
from bifrepro.models.linear import DeepLinearNetwork
from bifrepro.sampling import SGLDConfig

STEPS = checkpoint_steps(400, 4, 40)


@functools.cache
def tiny_toy_run() -> tuple[Hierarchy, DeepLinearNetwork, ToyRun]:
    """Depth-3 tree, 400 GD steps, 4 checkpoints, 2 x 20 SGLD draws (about a second)."""
    torch.manual_seed(0)
    h = make_hierarchy()
    model = DeepLinearNetwork(8, h.num_features, 16, 2, 1e-3, torch.Generator().manual_seed(0))
    sampler = SGLDConfig(
        step_size=1e-4, nbeta=100.0, localization=1000.0, num_chains=2, num_draws=20,
        burn_in=5, thinning=2, batch_size=8,
    )  # fmt: skip
    run = run_toy_protocol(
        h, model, sampler, lr=0.1, num_steps=400, steps=STEPS, device=torch.device("cpu")
    )
    return h, model, run
