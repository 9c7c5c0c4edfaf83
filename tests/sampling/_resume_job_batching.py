"""The kill -9 resume job with a chosen ``chain_batching``: `python _resume_job_batching.py OUT MODE`."""

from __future__ import annotations

import sys

import torch
from torch.utils.data import TensorDataset

from bifrepro.sampling import sample_loss_traces
from tests.sampling._resume_job import job_inputs, loss_fn


def run(out_dir: str | None, mode: str):
    model, ds, config = job_inputs()
    return sample_loss_traces(
        model,
        loss_fn,
        ds,
        {"train": ds, "query": TensorDataset(*ds[:10])},
        config.replace(chain_batching=mode),
        out_dir=out_dir,
        progress=False,
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], sys.argv[2])
