"""The fixed data of a stagewise run: corpus + synthetic repeats, observed rows, classes, probe."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bifrepro.data.text import TextCorpusConfig, build_corpus
from bifrepro.data.token_classes import IGNORE, TOKEN_CLASSES
from bifrepro.data.tokenizer import train_bpe_tokenizer
from bifrepro.dynamics.stagewise_data import build_stagewise_data

SETTINGS = SimpleNamespace(
    seq_len=20, repeat_fraction=0.5, query_repeat_fraction=0.5, num_observed=6,
    num_observed_synthetic=3, num_query=3, induction_sequences=4, induction_half_len=4,
    induction_vocab=20, token_priority=list(TOKEN_CLASSES),
)  # fmt: skip


@pytest.fixture(scope="module")
def corpus_and_tokenizer():
    corpus = build_corpus(
        TextCorpusConfig(num_documents=30, num_queries=8, max_natural_sentences=4)
    )
    return corpus, train_bpe_tokenizer(corpus.all_texts(), 300)


def test_build_stagewise_data(corpus_and_tokenizer) -> None:
    corpus, tok = corpus_and_tokenizer
    d = build_stagewise_data(corpus, tok, "/cache/tok-abc", SETTINGS, seed=0)
    n_corpus = len(d.corpus_ids)
    assert len(d.train_ids) == 2 * n_corpus and int(d.synthetic.sum()) == n_corpus  # share 0.5
    assert d.train_ids.shape[1] == 20 and d.query_ids.shape == (3, 20)
    synth_obs = d.synthetic[torch.as_tensor(d.observed_index)]
    assert len(d.observed_index) == 9 and int(synth_obs.sum()) == 3
    # synthetic rows are random tokens: only their induction completions carry a class
    allowed = {IGNORE, TOKEN_CLASSES.index("induction")}
    assert set(d.observed_classes[synth_obs].unique().tolist()) <= allowed
    assert d.probe_ids.shape == (4, 9) and d.query_classes.shape == d.query_ids.shape
    assert d.data_key.startswith("tok-abc-")
    assert len(d.sgld_dataset()) == len(d.train_ids) and len(d.query_dataset()) == 3
    again = build_stagewise_data(corpus, tok, "/cache/tok-abc", SETTINGS, seed=0)
    assert torch.equal(again.train_ids, d.train_ids) and again.data_key == d.data_key
    other = build_stagewise_data(corpus, tok, "/cache/tok-abc", SETTINGS, seed=1)
    assert other.data_key != d.data_key  # the synthetic sequences' seed keys the model


def test_a_tokenizer_without_bos_is_refused(corpus_and_tokenizer) -> None:
    corpus, _ = corpus_and_tokenizer
    with pytest.raises(ValueError, match="BOS"):
        build_stagewise_data(corpus, SimpleNamespace(pad_token_id=0, bos_token_id=None), "t",
                             SETTINGS, seed=0)  # fmt: skip
