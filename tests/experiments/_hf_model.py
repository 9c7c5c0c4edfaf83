"""A tiny Hugging Face causal LM folder (GPT-NeoX architecture, tokenizer included) that tests
load through ``model.name_or_path``, as a locally cached Pythia checkpoint would be."""

from __future__ import annotations

from pathlib import Path

import torch

from bifrepro.data.text import TextCorpusConfig, build_corpus
from bifrepro.data.tokenizer import train_bpe_tokenizer
from bifrepro.models.lm import CausalLMConfig, build_small_lm


def save_tiny_gpt_neox(folder: Path, num_documents: int, num_queries: int) -> torch.nn.Module:
    """Train a 300-token BPE tokenizer on the embedded corpus, build a 1-layer GPT-NeoX model and
    save both with ``save_pretrained`` into ``folder``; returns the model."""
    corpus = build_corpus(
        TextCorpusConfig(
            num_documents=num_documents, num_queries=num_queries, max_natural_sentences=10
        )
    )
    tok = train_bpe_tokenizer(corpus.all_texts() + [e.text.text for e in corpus.examples], 300)
    arch = CausalLMConfig(arch="gpt_neox", hidden_size=16, num_layers=1, num_heads=2,
                          intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    model = build_small_lm(arch, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model
