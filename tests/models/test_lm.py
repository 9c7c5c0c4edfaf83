"""Causal LMs: the architecture, the from_pretrained path on models saved here, frozen copies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bifrepro.attribution.ekfac import supported_modules
from bifrepro.data.tokenizer import load_tokenizer, train_bpe_tokenizer
from bifrepro.models.lm import (
    CausalLMConfig,
    LMTrainConfig,
    build_small_lm,
    frozen_copy,
    lm_batch_loss,
    load_causal_lm,
    save_snapshot,
    snapshot_dir,
)
from tests.models._lm import TINY, lm_sequences, one_thread  # noqa: F401 - autouse


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


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="arch"):
        CausalLMConfig(arch="gpt2")
    with pytest.raises(ValueError, match="num_heads"):
        CausalLMConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="save_steps"):
        LMTrainConfig(steps=10, save_steps=[11])
    assert CausalLMConfig(train={"steps": 5}).train.steps == 5
    assert CausalLMConfig().is_embedded and not CausalLMConfig(name_or_path="x").is_embedded


def test_frozen_copy_freezes_matching_parameters_of_a_copy() -> None:
    model = build_small_lm(CausalLMConfig(**TINY), vocab_size=20)
    same, none = frozen_copy(model, [])
    assert same is model and none == []
    work, names = frozen_copy(model, ["embed_tokens", "lm_head"])
    assert work is not model and names and all("embed_tokens" in n or "lm_head" in n for n in names)
    frozen = {n for n, p in work.named_parameters() if not p.requires_grad}
    assert frozen == set(names)
    assert all(p.requires_grad for p in model.parameters())  # the original is untouched
    with pytest.raises(ValueError, match="matches no parameter"):
        frozen_copy(model, ["no_such_layer"])


def test_save_snapshot_replaces_the_folder_and_reloads(tmp_path) -> None:
    ids, mask = lm_sequences()
    model = build_small_lm(CausalLMConfig(**TINY), vocab_size=20, seed=2)
    path = snapshot_dir(tmp_path, 7)
    assert path.name == "step000007"
    path.mkdir(parents=True)
    (path / "stale.txt").write_text("old")
    save_snapshot(model, path)
    assert not (path / "stale.txt").exists() and (path / "config.json").exists()
    with torch.no_grad():
        torch.testing.assert_close(
            load_causal_lm(path)(input_ids=ids).logits, model(input_ids=ids).logits
        )
        assert torch.isfinite(lm_batch_loss(model, ids, mask))
