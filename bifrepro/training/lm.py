"""Training of the causal LMs of :mod:`bifrepro.models.lm`: a resumable loop and a cache.

:func:`train_causal_lm` is resumable (its full state is checkpointed atomically every
``checkpoint_every`` steps and a re-run continues from it) and can snapshot the model with
``save_pretrained`` at chosen steps, for attribution along training (stagewise, issue #9).
:func:`embedded_causal_lm` trains the embedded model once per architecture, training settings and
data, caches it with ``save_pretrained`` and always returns it loaded through ``from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.io import atomic_torch_save, atomic_write_json
from bifrepro.models.lm import (
    BatchTransform,
    CausalLMConfig,
    LMTrainConfig,
    build_small_lm,
    lm_batch_loss,
    load_causal_lm,
    save_snapshot,
    snapshot_dir,
)

__all__ = [
    "LMTrainResult",
    "TokenWeights",
    "weighted_lm_batch_loss",
    "train_causal_lm",
    "embedded_causal_lm",
]

log = logging.getLogger(__name__)


#: ``token_weights(input_ids, attention_mask) -> [B, T-1]`` loss weight of every predicted token
#: (position ``t`` weighs the prediction of token ``t+1``): e.g. one token class upweighted x3,
#: or removed with weight 0 (:func:`weighted_lm_batch_loss`).
TokenWeights = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def weighted_lm_batch_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted mean next-token cross-entropy ``sum(w * loss) / sum(w)`` over real tokens.

    ``weights`` is ``[B, T-1]`` (non-negative, one per predicted token). With all weights 1 this
    is :func:`~bifrepro.models.lm.lm_batch_loss`; weight 0 removes a token exactly, so the
    gradient equals the one of the batch without those tokens.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    target = input_ids[:, 1:]
    losses = F.cross_entropy(
        logits.flatten(0, 1).float(), target.flatten(), reduction="none"
    ).view_as(target)
    w = weights.to(losses.dtype)
    if tuple(w.shape) != tuple(target.shape):
        raise ValueError(f"token weights must be [B, T-1] = {tuple(target.shape)}")
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError("token weights must be finite and >= 0")
    if attention_mask is not None:
        w = w * attention_mask[:, 1:].to(w.dtype)
    return (w * losses).sum() / w.sum().clamp_min(1e-12)


@dataclass
class LMTrainResult:
    """Loss curve and where the snapshots are."""

    losses: list[float]
    seconds: float
    snapshots: dict[int, Path]
    resumed_from: int


def _lr_at(step: int, cfg: LMTrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def train_causal_lm(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cfg: LMTrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    tokenizer: Any | None = None,
    progress: bool | None = None,
    batch_transform: BatchTransform | None = None,
    token_weights: TokenWeights | None = None,
    step_offset: int = 0,
) -> LMTrainResult:
    """Train ``model`` in place on ``[N, T]`` sequences; resumable when ``out_dir`` is given.

    Batches are drawn from seeded shuffled epochs, so a run's batch sequence depends only on
    ``cfg.seed``. With ``out_dir``: the state (weights, optimiser, step, batch order, losses) goes to
    ``out_dir/train_state.pt`` every ``checkpoint_every`` steps and a re-run resumes from it (a
    different configuration in the same folder is refused); ``save_steps`` snapshots go to
    ``out_dir/step<NNNNNN>/`` via ``save_pretrained`` (with the tokenizer, when given).
    The model is left in eval mode.

    ``token_weights`` (optional, default: the plain mean loss): per-token loss weights of each
    (transformed) batch (:func:`weighted_lm_batch_loss`), e.g. to upweight or remove one token
    class. ``step_offset``: ``batch_transform`` sees ``step + step_offset``, so a continuation
    from a checkpoint at step ``s`` gets the batches the original run would have had from ``s``.
    Neither is part of the resume settings: use a fresh ``out_dir`` per weighting.
    """
    n = int(input_ids.shape[0])
    if n == 0:
        raise ValueError("no training sequences")
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    perm, pos, start, losses = torch.randperm(n, generator=gen), 0, 0, []
    state_path = Path(out_dir) / "train_state.pt" if out_dir is not None else None
    settings = dataclasses.asdict(cfg) | {"n_sequences": n, "seq_len": int(input_ids.shape[1])}
    settings.pop("save_steps")
    settings.pop("checkpoint_every")
    if state_path is not None:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        if state_path.exists():
            state = torch.load(state_path, weights_only=False)
            if state["settings"] != settings:
                raise ValueError(
                    f"{state_path} holds a run with other settings {state['settings']}; "
                    f"requested {settings}: use another out_dir or delete it"
                )
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            perm, pos, start, losses = state["perm"], state["pos"], state["step"], state["losses"]
            log.info("resuming LM training from step %d in %s", start, out_dir)
    snapshots: dict[int, Path] = {}
    save_steps = {int(s) for s in cfg.save_steps}
    if out_dir is not None and 0 in save_steps and start == 0:
        snapshots[0] = snapshot_dir(out_dir, 0)
        save_snapshot(model, snapshots[0], tokenizer)
    t0 = time.perf_counter()
    model.train()
    with logging_redirect_tqdm():
        bar = tqdm(
            total=cfg.steps,
            initial=start,
            desc="LM training",
            unit="step",
            disable=None if progress is None else not progress,
            leave=False,
        )
        for step in range(start, cfg.steps):
            if pos + cfg.batch_size > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos : pos + cfg.batch_size]
            pos += cfg.batch_size
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            ids = input_ids[idx]
            mask = attention_mask[idx] if attention_mask is not None else None
            if batch_transform is not None:  # must depend only on (step, batch): resumable
                ids, mask = batch_transform(step + step_offset, ids, mask)
            ids = ids.to(device)
            mask = mask.to(device) if mask is not None else None
            if token_weights is None:
                loss = lm_batch_loss(model, ids, mask)
            else:
                w = token_weights(ids.cpu(), None if mask is None else mask.cpu()).to(device)
                loss = weighted_lm_batch_loss(model, ids, mask, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            done = step + 1
            if out_dir is not None and done in save_steps:
                snapshots[done] = snapshot_dir(out_dir, done)
                model.eval()
                save_snapshot(model, snapshots[done], tokenizer)
                model.train()
            if state_path is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                atomic_torch_save(
                    {
                        "settings": settings,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "generator": gen.get_state(),
                        "perm": perm,
                        "pos": pos,
                        "step": done,
                        "losses": losses,
                    },
                    state_path,
                )
        bar.close()
    model.eval()
    if out_dir is not None:
        for s in save_steps:
            if snapshot_dir(out_dir, s).exists():
                snapshots[s] = snapshot_dir(out_dir, s)
    return LMTrainResult(losses, time.perf_counter() - t0, snapshots, start)


def _embedded_key(cfg: CausalLMConfig, data_key: str) -> str:
    spec = {"arch": cfg.architecture(), "train": dataclasses.asdict(cfg.train), "data": data_key}
    spec["train"].pop("checkpoint_every")
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def embedded_causal_lm(
    cfg: CausalLMConfig,
    tokenizer: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache_dir: str | os.PathLike[str],
    data_key: str,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    batch_transform: BatchTransform | None = None,
) -> tuple[nn.Module, Path, dict[str, Any]]:
    """The embedded model: trained once (resumably) and cached, always loaded via ``from_pretrained``.

    The cache folder ``cache_dir/lm-<hash of architecture, training settings and data_key>/``
    holds ``model/`` (``save_pretrained`` of the weights and the tokenizer), the training state and
    ``train_summary.json``. Returns the reloaded model, its folder and the summary.
    """
    root = Path(cache_dir) / f"lm-{_embedded_key(cfg, data_key)}"
    final = root / "model"
    summary_path = root / "train_summary.json"
    if not (final / "config.json").exists() or not summary_path.exists():
        model = build_small_lm(
            cfg,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            seed=cfg.train.seed,
        ).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "training the embedded %s LM (%.2fM parameters) for %d steps -> %s",
            cfg.arch,
            n_params / 1e6,
            cfg.train.steps,
            root,
        )
        result = train_causal_lm(
            model, input_ids, attention_mask, cfg.train, root / "training", tokenizer, progress,
            batch_transform,
        )  # fmt: skip
        save_snapshot(model, final, tokenizer)
        k = max(1, len(result.losses) // 20)
        atomic_write_json(
            {
                "num_parameters": n_params,
                "train_seconds": result.seconds,
                "resumed_from": result.resumed_from,
                "final_loss": sum(result.losses[-k:]) / k,
                "first_loss": result.losses[0] if result.losses else float("nan"),
                "loss_curve": result.losses[:: max(1, len(result.losses) // 200)],
                "architecture": cfg.architecture(),
                "train": dataclasses.asdict(cfg.train),
            },
            summary_path,
        )
    summary = json.loads(summary_path.read_text())
    model = load_causal_lm(final, dtype=cfg.dtype, device=device)
    return model, final, summary
