"""Causal language models: load any Hugging Face checkpoint, or train a small one here.

Two ways to get a model, one loading path:

* **Any Hugging Face causal LM** — ``load_causal_lm("EleutherAI/pythia-70m", revision="step3000")``
  goes through ``AutoModelForCausalLM.from_pretrained`` (Pythia's training checkpoints are
  revisions). Nothing is downloaded by bifrepro itself; without network the name must already be
  in the Hugging Face cache (``local_files_only=True`` says so explicitly).
* **The embedded model** — a small GPT-NeoX- or Llama-style model (every weight matrix an
  ``nn.Linear``, so kronfluence's EK-FAC sees every layer) trained from scratch by
  :func:`train_causal_lm`, written with ``save_pretrained`` under a cache folder and then loaded
  back through the very same ``from_pretrained`` path (:func:`embedded_causal_lm`).

:func:`train_causal_lm` is resumable (its full state is checkpointed atomically every
``checkpoint_every`` steps and a re-run continues from it) and can snapshot the model with
``save_pretrained`` at chosen steps, for attribution along training (stagewise, issue #9).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.io import atomic_torch_save, atomic_write_json
from bifrepro.validation import bad as _bad
from bifrepro.validation import int_at_least as _int_at_least

__all__ = [
    "LMTrainConfig",
    "CausalLMConfig",
    "LMTrainResult",
    "BatchTransform",
    "build_small_lm",
    "load_causal_lm",
    "train_causal_lm",
    "lm_batch_loss",
    "embedded_causal_lm",
    "snapshot_dir",
]

log = logging.getLogger(__name__)

_ARCHS = ("llama", "gpt_neox")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LMTrainConfig:
    """AdamW with linear warm-up and cosine decay on the mean token cross-entropy."""

    #: Optimiser steps.
    steps: int = 600
    #: Sequences per step.
    batch_size: int = 32
    #: Peak learning rate.
    lr: float = 3e-3
    #: AdamW weight decay (not applied to norms and biases).
    weight_decay: float = 0.1
    #: Linear warm-up steps.
    warmup_steps: int = 50
    #: Final learning rate as a fraction of the peak (cosine decay).
    min_lr_ratio: float = 0.1
    #: Gradient-norm clipping (0 = off).
    grad_clip: float = 1.0
    #: Seed of the initialisation and of the batch order.
    seed: int = 0
    #: Save the full training state every this many steps (resume point).
    checkpoint_every: int = 200
    #: Steps at which a ``save_pretrained`` snapshot is written (``step<NNNNNN>/``).
    save_steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            _int_at_least(self, name, 1)
        _int_at_least(self, "warmup_steps", 0)
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            _bad(self, "lr", "must be a finite number > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            _bad(self, "min_lr_ratio", "must be in [0, 1]")
        if self.weight_decay < 0 or self.grad_clip < 0:
            _bad(self, "weight_decay" if self.weight_decay < 0 else "grad_clip", "must be >= 0")
        if any(int(s) < 0 or int(s) > self.steps for s in self.save_steps):
            _bad(self, "save_steps", f"steps must lie in [0, {self.steps}]")


@dataclass
class CausalLMConfig:
    """Which causal LM to attribute: a Hugging Face checkpoint, or the embedded one trained here."""

    #: Model name (recorded as the MLflow ``model`` tag).
    name: str = "embedded_llama"
    #: Hugging Face model name or local folder (e.g. EleutherAI/pythia-70m); null = embedded model.
    name_or_path: str | None = None
    #: Revision of a Hugging Face model (Pythia training checkpoints: "step3000", ...).
    revision: str | None = None
    #: Only use files already on disk / in the Hugging Face cache (no download attempt).
    local_files_only: bool = False
    #: Weights dtype: float32 | bfloat16 | float16.
    dtype: str = "float32"
    #: Embedded model architecture: "llama" or "gpt_neox" (all weight matrices nn.Linear).
    arch: str = "llama"
    #: Width of the embedded model.
    hidden_size: int = 128
    #: Transformer blocks of the embedded model.
    num_layers: int = 2
    #: Attention heads of the embedded model.
    num_heads: int = 4
    #: MLP width of the embedded model.
    intermediate_size: int = 256
    #: Maximum sequence length of the embedded model.
    max_position_embeddings: int = 128
    #: Byte-level BPE vocabulary of the embedded tokenizer.
    vocab_size: int = 2048
    #: Training of the embedded model.
    train: LMTrainConfig = field(default_factory=LMTrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = LMTrainConfig(**self.train)
        if self.arch not in _ARCHS:
            _bad(self, "arch", f"must be one of {list(_ARCHS)}")
        if self.dtype not in _DTYPES:
            _bad(self, "dtype", f"must be one of {list(_DTYPES)}")
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            _int_at_least(self, name, 1)
        _int_at_least(self, "max_position_embeddings", 2)
        _int_at_least(self, "vocab_size", 258)
        if self.hidden_size % self.num_heads:
            _bad(self, "num_heads", f"must divide hidden_size={self.hidden_size}")

    @property
    def is_embedded(self) -> bool:
        return not self.name_or_path

    def architecture(self) -> dict[str, Any]:
        """The settings that define the embedded model (cache key)."""
        keys = ("arch", "hidden_size", "num_layers", "num_heads", "intermediate_size")
        return {k: getattr(self, k) for k in keys} | {
            "max_position_embeddings": self.max_position_embeddings
        }


def build_small_lm(
    cfg: CausalLMConfig,
    vocab_size: int,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """A randomly initialised small GPT-NeoX or Llama causal LM (untied, eager attention).

    Every projection is an ``nn.Linear``; the output head is untied from the embeddings so it is
    a separate ``nn.Linear`` that EK-FAC tracks. Llama reuses
    :func:`bifrepro.models.small.tiny_causal_lm`.
    """
    if cfg.arch == "llama":
        from bifrepro.models.small import tiny_causal_lm

        model = tiny_causal_lm(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            seed=seed,
        )
    else:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        config = GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            tie_word_embeddings=False,
            use_cache=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            attn_implementation="eager",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPTNeoXForCausalLM(config)
    for key, value in (
        ("pad_token_id", pad_token_id),
        ("bos_token_id", bos_token_id),
        ("eos_token_id", eos_token_id),
    ):
        if value is not None:
            setattr(model.config, key, value)
    model.eval()
    return model


def load_causal_lm(
    name_or_path: str | os.PathLike[str],
    revision: str | None = None,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    local_files_only: bool = False,
) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` in eval mode, eager attention, no KV cache.

    Eager attention is what ``torch.func`` (GradSim) and kronfluence's hooks handle everywhere;
    the KV cache is useless when every forward pass sees whole sequences.
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": _DTYPES[dtype], "attn_implementation": "eager"}
    if revision is not None:
        kwargs["revision"] = revision
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(name_or_path), local_files_only=local_files_only, **kwargs
        )
    except OSError as err:
        raise OSError(
            f"could not load the causal LM {str(name_or_path)!r}"
            f"{f' (revision {revision!r})' if revision else ''}: {err}. Without network access "
            "a Hugging Face model must already be in the local cache (or pass a local folder)."
        ) from err
    model.config.use_cache = False
    model.to(device)
    model.eval()
    return model


def lm_batch_loss(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's real (unmasked) predicted tokens."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    target = input_ids[:, 1:]
    if attention_mask is not None:
        target = target.masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100
    )


#: ``batch_transform(step, input_ids, attention_mask) -> (input_ids, attention_mask)``: rewrites a
#: training batch (e.g. fresh synthetic sequences); it must be a function of its arguments only
#: (seed any randomness by ``step``) so a resumed run sees the same batches. Include its settings
#: in ``data_key`` of :func:`embedded_causal_lm`.
BatchTransform = Callable[
    [int, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]
]


@dataclass
class LMTrainResult:
    """Loss curve and where the snapshots are."""

    losses: list[float]
    seconds: float
    snapshots: dict[int, Path]
    resumed_from: int


def snapshot_dir(out_dir: str | os.PathLike[str], step: int) -> Path:
    """Folder of the ``save_pretrained`` snapshot at ``step``."""
    return Path(out_dir) / f"step{step:06d}"


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


def _save_snapshot(model: nn.Module, path: Path, tokenizer: Any | None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def train_causal_lm(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cfg: LMTrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    tokenizer: Any | None = None,
    progress: bool | None = None,
    batch_transform: BatchTransform | None = None,
) -> LMTrainResult:
    """Train ``model`` in place on ``[N, T]`` sequences; resumable when ``out_dir`` is given.

    Batches are drawn from seeded shuffled epochs, so a run's batch sequence depends only on
    ``cfg.seed``. With ``out_dir``: the state (weights, optimiser, step, batch order, losses) goes to
    ``out_dir/train_state.pt`` every ``checkpoint_every`` steps and a re-run resumes from it (a
    different configuration in the same folder is refused); ``save_steps`` snapshots go to
    ``out_dir/step<NNNNNN>/`` via ``save_pretrained`` (with the tokenizer, when given).
    The model is left in eval mode.
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
        _save_snapshot(model, snapshots[0], tokenizer)
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
                ids, mask = batch_transform(step, ids, mask)
            ids = ids.to(device)
            mask = mask.to(device) if mask is not None else None
            loss = lm_batch_loss(model, ids, mask)
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
                _save_snapshot(model, snapshots[done], tokenizer)
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
        _save_snapshot(model, final, tokenizer)
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
