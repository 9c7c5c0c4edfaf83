"""Causal LMs: the from_pretrained path on models saved here, training, resuming, caching."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import bifrepro.models.lm as lm
from bifrepro.attribution.ekfac import supported_modules
from bifrepro.data.tokenizer import load_tokenizer, train_bpe_tokenizer
from bifrepro.models.lm import (
    CausalLMConfig,
    LMTrainConfig,
    build_small_lm,
    embedded_causal_lm,
    lm_batch_loss,
    load_causal_lm,
    snapshot_dir,
    train_causal_lm,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are dominated by thread synchronisation on a busy machine: one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(
    hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=16
)


def _data(n: int = 24, t: int = 8, vocab: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of a repeating pattern (learnable), some padded."""
    base = torch.arange(t)
    ids = torch.stack([(base * (1 + i % 3) + i) % (vocab - 2) + 2 for i in range(n)])
    mask = torch.ones_like(ids)
    mask[::5, -3:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_small_lm_is_all_linear_and_untied(arch: str) -> None:
    model = build_small_lm(CausalLMConfig(arch=arch, **TINY), vocab_size=20, pad_token_id=0)
    weights = [n for n, p in model.named_parameters() if p.dim() == 2]
    linear = set(supported_modules(model))
    embeddings = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    # every 2-D weight belongs to an nn.Linear, except the input embedding
    for name in weights:
        module = name.rsplit(".", 1)[0]
        assert module in linear or module in embeddings, name
    head = model.get_output_embeddings()
    assert isinstance(head, nn.Linear)
    assert head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert model.config.pad_token_id == 0 and not model.training


def test_from_pretrained_path_on_a_model_saved_here(tmp_path) -> None:
    """The real loading path (AutoModelForCausalLM / AutoTokenizer.from_pretrained)."""
    tok = train_bpe_tokenizer(["the cat sat on the mat", "a dog sat on a log"] * 5, vocab_size=280)
    model = build_small_lm(
        CausalLMConfig(**TINY), vocab_size=len(tok), pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = load_causal_lm(tmp_path / "m")
    tok2 = load_tokenizer(tmp_path / "m")
    ids = torch.tensor([tok2("the cat sat on the log")["input_ids"]])
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config.use_cache is False
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    with pytest.raises(OSError, match="local cache"):
        load_causal_lm("bifrepro-test/no-such-model", local_files_only=True)


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path, monkeypatch) -> None:
    ids, mask = _data()
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
    ids, mask = _data()
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


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="arch"):
        CausalLMConfig(arch="gpt2")
    with pytest.raises(ValueError, match="num_heads"):
        CausalLMConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="save_steps"):
        LMTrainConfig(steps=10, save_steps=[11])
    assert CausalLMConfig(train={"steps": 5}).train.steps == 5
    assert CausalLMConfig().is_embedded and not CausalLMConfig(name_or_path="x").is_embedded
