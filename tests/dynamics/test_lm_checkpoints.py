"""Checkpoints of a stagewise run: local sub-folders, Hugging Face revisions, the embedded run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bifrepro.dynamics.lm_checkpoints as lm_checkpoints
from bifrepro.data.tokenizer import train_bpe_tokenizer
from bifrepro.dynamics.lm_checkpoints import LMCheckpoints, settings_hash
from bifrepro.models.lm import CausalLMConfig, build_small_lm

ARCH = CausalLMConfig(arch="gpt_neox", hidden_size=16, num_layers=1, num_heads=2,
                      intermediate_size=32, max_position_embeddings=32)  # fmt: skip


def _local_run(root: Path) -> None:
    """A 'training run' saved as step1/ and step2/ sub-folders, the tokenizer in the first."""
    tok = train_bpe_tokenizer(["a small corpus of words", "the words repeat"] * 20, 280)
    for seed, name in ((0, "step1"), (1, "step2")):
        model = build_small_lm(ARCH, len(tok), tok.pad_token_id, tok.bos_token_id,
                               tok.eos_token_id, seed)  # fmt: skip
        model.save_pretrained(root / name)
    tok.save_pretrained(root / "step1")


def test_subfolder_checkpoints_and_their_tokenizer(tmp_path: Path) -> None:
    _local_run(tmp_path / "run")
    model = CausalLMConfig(name_or_path=str(tmp_path / "run"))
    ck = LMCheckpoints(model, ["step1", "step2"], [1, 2], tmp_path / "work", tmp_path, True)
    tok, key = ck.tokenizer([])
    assert tok.bos_token_id is not None and key.endswith("step1")
    a, b = ck.load("step1"), ck.load("step2")
    assert not torch.equal(next(a.parameters()), next(b.parameters()))
    assert ck.step("step2") == 2 and ck.training() is None


def test_revisions_go_through_from_pretrained(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(lm_checkpoints, "load_causal_lm", lambda *a, **kw: calls.append((a, kw)))
    model = CausalLMConfig(name_or_path="EleutherAI/pythia-70m", local_files_only=True)
    LMCheckpoints(model, ["step1000"], [1000], tmp_path, tmp_path).load("step1000")
    (path,), kw = calls[0]
    assert path == "EleutherAI/pythia-70m" and kw["revision"] == "step1000"
    assert kw["local_files_only"] is True


def test_the_embedded_model_needs_its_training_first(tmp_path: Path) -> None:
    ck = LMCheckpoints(CausalLMConfig(), ["step4"], [4], tmp_path / "work", tmp_path)
    with pytest.raises(RuntimeError, match="mode=train"):
        ck.load("step4")


def test_settings_hash() -> None:
    assert settings_hash({"a": 1, "b": [2]}) == settings_hash({"b": [2], "a": 1})
    assert len(settings_hash({"a": 1})) == 16 and settings_hash({"a": 2}) != settings_hash({"a": 1})
