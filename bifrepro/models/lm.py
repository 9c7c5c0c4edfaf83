"""Causal language models: load any Hugging Face checkpoint, or train a small one here.

Two ways to get a model, one loading path:

* **Any Hugging Face causal LM** — ``load_causal_lm("EleutherAI/pythia-70m", revision="step3000")``
  goes through ``AutoModelForCausalLM.from_pretrained`` (Pythia's training checkpoints are
  revisions). Nothing is downloaded by bifrepro itself; without network the name must already be
  in the Hugging Face cache (``local_files_only=True`` says so explicitly).
* **The embedded model** — a small GPT-NeoX- or Llama-style model (every weight matrix an
  ``nn.Linear``, so kronfluence's EK-FAC sees every layer) trained from scratch by
  :func:`bifrepro.training.lm.train_causal_lm`, written with ``save_pretrained`` under a cache
  folder and then loaded back through the very same ``from_pretrained`` path
  (:func:`bifrepro.training.lm.embedded_causal_lm`).

This module holds what defines and loads a model (configs, architecture, loading, the loss,
snapshot folders); the resumable training loop and the train-once cache are in
:mod:`bifrepro.training.lm`.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bifrepro.validation import bad as _bad
from bifrepro.validation import finite_numbers
from bifrepro.validation import int_at_least as _int_at_least

__all__ = [
    "LMTrainConfig",
    "CausalLMConfig",
    "BatchTransform",
    "build_small_lm",
    "load_causal_lm",
    "lm_batch_loss",
    "snapshot_dir",
    "save_snapshot",
    "frozen_copy",
]

_ARCHS = ("llama", "gpt_neox")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LMTrainConfig:
    """AdamW with linear warm-up and cosine decay on the mean token cross-entropy
    (:func:`bifrepro.training.lm.train_causal_lm`)."""

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
        finite_numbers(self)
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
#: in ``data_key`` of :func:`bifrepro.training.lm.embedded_causal_lm`.
BatchTransform = Callable[
    [int, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]
]


def snapshot_dir(out_dir: str | os.PathLike[str], step: int) -> Path:
    """Folder of the ``save_pretrained`` snapshot at ``step``."""
    return Path(out_dir) / f"step{step:06d}"


def save_snapshot(model: nn.Module, path: Path, tokenizer: Any | None = None) -> None:
    """``save_pretrained`` of the model (and tokenizer) into ``path``, replaced as a whole."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def frozen_copy(model: nn.Module, frozen: Sequence[str]) -> tuple[nn.Module, list[str]]:
    """``model`` itself (nothing frozen), or a copy whose parameters whose names contain one of
    ``frozen`` do not require grad; also the names of the frozen parameters.

    Raises ``ValueError`` when ``frozen`` is not empty but matches no parameter.
    """
    if not frozen:
        return model, []
    work = copy.deepcopy(model)
    names = [n for n, p in work.named_parameters() if any(f in n for f in frozen)]
    if not names:
        raise ValueError(f"{list(frozen)} matches no parameter of the model")
    for n, p in work.named_parameters():
        if n in names:
            p.requires_grad_(False)
    return work, names
