"""The causal check of class-level BIF: reweight one token class in a training window.

From a checkpoint ``w*_s`` (before the induction transition), :func:`class_interventions`
continues training for ``window`` steps once per condition: the control (plain loss) and, for
each token class, that class's predicted tokens weighted by ``factor`` (x3 = upweighted, 0 =
removed; :class:`~bifrepro.dynamics.class_weights.ClassLossWeights`). Every condition starts from
the same weights with a fresh AdamW, the same learning rate and the same batches (same seed, the
synthetic repeats of steps ``s .. s + window``), so the only difference is the weighting.
Afterwards it measures the induction score and the held-out query loss per token class; the
effect of a condition is its difference from the control.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bifrepro.attribution.token_bif import token_losses
from bifrepro.data.token_classes import TOKEN_CLASSES
from bifrepro.dynamics.class_weights import ClassLossWeights
from bifrepro.dynamics.induction import induction_score
from bifrepro.dynamics.stagewise_data import StagewiseData
from bifrepro.models.lm import LMTrainConfig, load_causal_lm
from bifrepro.training.lm import train_causal_lm

__all__ = ["query_class_losses", "class_interventions"]


@torch.no_grad()
def query_class_losses(model: torch.nn.Module, data: StagewiseData) -> np.ndarray:
    """``[K]`` mean held-out query loss (nats per token) of each token class (NaN: no token)."""
    losses = token_losses(model, [data.query_ids, data.query_mask]).double()
    cls = data.query_classes
    out = np.full(len(TOKEN_CLASSES), np.nan)
    for k in range(len(TOKEN_CLASSES)):
        sel = cls == k
        if sel.any():
            out[k] = float(losses[sel].mean())
    return out


def class_interventions(
    model_dir: str | Path,
    data: StagewiseData,
    train_cfg: LMTrainConfig,
    start_step: int,
    window: int,
    factor: float,
    half_len: int,
    classes: Sequence[str] = TOKEN_CLASSES,
    progress: bool | None = False,
) -> pd.DataFrame:
    """One row per condition (``control`` first, then each class of ``classes``): induction
    score and query loss per class after the window, and their differences from the control
    (``delta_induction``, ``delta_loss_<class>``). ``train_cfg`` supplies the learning rate, batch
    size, weight decay, clipping and seed; the window runs at the constant peak learning rate."""
    cfg = dataclasses.replace(
        train_cfg, steps=window, warmup_steps=0, min_lr_ratio=1.0, save_steps=[],
        checkpoint_every=window,
    )  # fmt: skip
    rows = []
    for name in ("control", *classes):
        model = load_causal_lm(model_dir)
        weights = None if name == "control" else ClassLossWeights(data.classifier, name, factor)
        train_causal_lm(
            model, data.corpus_ids, data.corpus_mask, cfg, None, progress=progress,
            batch_transform=data.augment, token_weights=weights, step_offset=start_step,
        )  # fmt: skip
        ind = induction_score(model, data.probe_ids, data.probe_mask, half_len).score
        loss = query_class_losses(model, data)
        row = {"condition": name, "factor": 1.0 if name == "control" else factor}
        row |= {"induction": ind} | {
            f"loss_{c}": float(v) for c, v in zip(TOKEN_CLASSES, loss, strict=True)
        }
        rows.append(row)
    out = pd.DataFrame(rows)
    ctrl = out.iloc[0]
    out["delta_induction"] = out["induction"] - ctrl["induction"]
    for c in TOKEN_CLASSES:
        out[f"delta_loss_{c}"] = out[f"loss_{c}"] - ctrl[f"loss_{c}"]
    return out
