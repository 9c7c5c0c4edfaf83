"""A sampling job run in a subprocess by the kill -9 resume test: `python _resume_job.py OUT_DIR`."""

from __future__ import annotations

import sys

import torch
from torch.utils.data import TensorDataset

from bifrepro.sampling import SGLDConfig, sample_loss_traces


def job_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 8, generator=g)
    y = (x[:, :2].sum(1) > 0).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.Tanh(), torch.nn.Linear(256, 2))
    ds = TensorDataset(x, y)
    config = SGLDConfig(
        step_size=1e-4,
        nbeta=100.0,
        localization=100.0,
        num_chains=2,
        num_draws=60,
        burn_in=3,
        thinning=2,
        batch_size=64,
        checkpoint_every=7,
    )
    return model, ds, config


def loss_fn(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y, reduction="none")


def run(out_dir: str | None):
    model, ds, config = job_inputs()
    return sample_loss_traces(
        model,
        loss_fn,
        ds,
        {"train": ds, "query": TensorDataset(*ds[:10])},
        config,
        out_dir=out_dir,
        progress=False,
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1])
