"""The language set-up: corpus → tokenizer → packed sequences → model (cached), queries, observed."""

from __future__ import annotations

import numpy as np
import torch

import bifrepro.training.lm as training_lm
from bifrepro.data.text import POSTER_EXAMPLES, TextCorpusConfig, TokenizedSequences
from bifrepro.models.lm import CausalLMConfig, LMTrainConfig
from bifrepro.training.lm_setup import (
    choose_observed,
    max_positions,
    sequences_fingerprint,
    setup_causal_lm,
    setup_language,
    traces_key,
)
from tests.models._lm import one_thread  # noqa: F401 - autouse

DATA = TextCorpusConfig(num_documents=80, num_queries=4, max_natural_sentences=10)
MODEL = CausalLMConfig(
    hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=64,
    vocab_size=320, train=LMTrainConfig(steps=5, batch_size=8),
)  # fmt: skip


def _seqs(labelled: list[bool]) -> TokenizedSequences:
    n = len(labelled)
    concepts = torch.full((n, 4), -1)
    concepts[torch.tensor(labelled), 1] = 0
    ids = torch.arange(4 * n).view(n, 4)
    return TokenizedSequences(
        ids, torch.ones_like(ids), concepts, ["num:3"], ["template"] * n, [""] * n
    )


def test_choose_observed_draws_the_template_share_seeded() -> None:
    seqs = _seqs([True] * 10 + [False] * 10)
    idx = choose_observed(seqs, 10, 0.8, seed=0)
    assert len(idx) == 10 and (np.diff(idx) > 0).all()
    assert (idx < 10).sum() == 8  # 80 % labelled
    np.testing.assert_array_equal(idx, choose_observed(seqs, 10, 0.8, seed=0))
    assert not np.array_equal(idx, choose_observed(seqs, 10, 0.8, seed=1))
    # too few labelled sequences: the rest comes from the others, never more than exist
    few = choose_observed(_seqs([True] * 2 + [False] * 10), 6, 0.8, seed=0)
    assert len(few) == 6 and (few < 2).sum() == 2
    assert len(choose_observed(seqs, 100, 0.5, seed=0)) == 20


def test_sequences_fingerprint_depends_on_the_bytes() -> None:
    a = torch.arange(6).view(2, 3)
    assert sequences_fingerprint(a) == sequences_fingerprint(a.clone())
    assert sequences_fingerprint(a) != sequences_fingerprint(a + 1)
    assert sequences_fingerprint(a, a) != sequences_fingerprint(a)
    assert len(sequences_fingerprint(a)) == 16


def test_setup_language_builds_queries_observed_and_caches_the_model(tmp_path, monkeypatch) -> None:
    s = setup_language(DATA, MODEL, 48, 16, 0.8, tmp_path, seed=0)
    assert s.train.seq_len == 48 and len(s.observed) == 16
    assert s.observed.input_ids.equal(s.train.input_ids[torch.as_tensor(s.observed_index)])
    # one query sentence per sequence, the poster examples first; one concept table for all
    assert len(s.queries) == len(POSTER_EXAMPLES) + DATA.num_queries
    assert s.train.concept_names == s.queries.concept_names
    assert s.model_info["num_parameters"] == sum(p.numel() for p in s.model.parameters())
    assert max_positions(s.model) == MODEL.max_position_embeddings
    assert list(tmp_path.glob("tokenizer-*/tokenizer.json"))
    assert list(tmp_path.glob("lm-*/model/config.json"))

    def no_training(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("the cached model must not be retrained")

    monkeypatch.setattr(training_lm, "train_causal_lm", no_training)
    again = setup_causal_lm(DATA, MODEL, 48, tmp_path)
    assert again.train.input_ids.equal(s.train.input_ids)
    for p, q in zip(s.model.parameters(), again.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    # the trace cache key follows the sampler and the frozen parameters
    key = traces_key(s, "sampler-a", [])
    assert key == traces_key(s, "sampler-a", [])
    assert key != traces_key(s, "sampler-b", []) != traces_key(s, "sampler-a", ["lm_head"])
