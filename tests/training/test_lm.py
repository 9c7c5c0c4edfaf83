"""Training of causal LMs: the loss goes down, a killed run resumes exactly, snapshots, the cache."""

from __future__ import annotations

import json

import pytest
import torch

import bifrepro.training.lm as lm
from bifrepro.data.tokenizer import train_bpe_tokenizer
from bifrepro.models.lm import (
    CausalLMConfig,
    LMTrainConfig,
    build_small_lm,
    lm_batch_loss,
    load_causal_lm,
    snapshot_dir,
)
from bifrepro.training.lm import embedded_causal_lm, train_causal_lm
from tests.models._lm import TINY, lm_sequences, one_thread  # noqa: F401 - autouse


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path, monkeypatch) -> None:
    ids, mask = lm_sequences()
    cfg = LMTrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=1, checkpoint_every=3)
    arch = CausalLMConfig(**TINY)
    straight = build_small_lm(arch, vocab_size=20, seed=1)
    with torch.no_grad():
        before = float(lm_batch_loss(straight, ids, mask))
    res = train_causal_lm(straight, ids, mask, cfg, tmp_path / "a", progress=False)
    with torch.no_grad():
        assert len(res.losses) == 6 and float(lm_batch_loss(straight, ids, mask)) < before

    # the same run, interrupted after its step-3 checkpoint, then resumed
    interrupted = build_small_lm(arch, vocab_size=20, seed=1)
    real_lr = lm._lr_at

    def crash(step: int, c: LMTrainConfig) -> float:
        if step == 4:
            raise KeyboardInterrupt
        return real_lr(step, c)

    monkeypatch.setattr(lm, "_lr_at", crash)
    with pytest.raises(KeyboardInterrupt):
        train_causal_lm(interrupted, ids, mask, cfg, tmp_path / "b", progress=False)
    monkeypatch.setattr(lm, "_lr_at", real_lr)
    fresh = build_small_lm(arch, vocab_size=20, seed=1)  # a new process would start from init
    res_b = train_causal_lm(fresh, ids, mask, cfg, tmp_path / "b", progress=False)
    assert res_b.resumed_from == 3 and res_b.losses == pytest.approx(res.losses)
    for p, q in zip(straight.parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    # other settings in the same folder are refused
    with pytest.raises(ValueError, match="other settings"):
        train_causal_lm(fresh, ids, mask, LMTrainConfig(steps=7, batch_size=8), tmp_path / "b")


def test_snapshots_reload_through_from_pretrained(tmp_path) -> None:
    ids, mask = lm_sequences()
    cfg = LMTrainConfig(steps=4, batch_size=8, save_steps=[0, 2, 4])
    model = build_small_lm(CausalLMConfig(**TINY), vocab_size=20)
    res = train_causal_lm(model, ids, mask, cfg, tmp_path, progress=False)
    assert sorted(res.snapshots) == [0, 2, 4]
    last = load_causal_lm(snapshot_dir(tmp_path, 4))
    first = load_causal_lm(snapshot_dir(tmp_path, 0))
    with torch.no_grad():
        torch.testing.assert_close(last(input_ids=ids).logits, model(input_ids=ids).logits)
        assert not torch.allclose(first(input_ids=ids).logits, model(input_ids=ids).logits)


def test_embedded_model_is_trained_once_and_cached(tmp_path, monkeypatch) -> None:
    tok = train_bpe_tokenizer(["one two three four five six"] * 10, vocab_size=270)
    ids = torch.tensor([tok("one two three four five six")["input_ids"]] * 12)
    cfg = CausalLMConfig(**TINY, train=LMTrainConfig(steps=3, batch_size=4))
    model, path, summary = embedded_causal_lm(cfg, tok, ids, None, tmp_path, "data-a")
    assert (path / "config.json").exists() and (path / "tokenizer.json").exists()
    assert summary["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert json.loads((path.parent / "train_summary.json").read_text())["train"]["steps"] == 3

    def no_training(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("the cached model must not be retrained")

    monkeypatch.setattr(lm, "train_causal_lm", no_training)
    again, path2, _ = embedded_causal_lm(cfg, tok, ids, None, tmp_path, "data-a")
    assert path2 == path
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    with pytest.raises(AssertionError, match="retrained"):  # other data -> another cache entry
        embedded_causal_lm(cfg, tok, ids, None, tmp_path, "data-b")
