"""Shared piece of the token-attribution tests: generated text packed with a small tokenizer."""

from __future__ import annotations

from typing import Any

from bifrepro.data.text import (
    POSTER_EXAMPLES,
    TokenizedSequences,
    generate_template_corpus,
    pack_documents,
)
from bifrepro.data.tokenizer import train_bpe_tokenizer


def packed_text(
    num_train: int = 60, num_queries: int = 4, seq_len: int = 32
) -> tuple[Any, TokenizedSequences, TokenizedSequences]:
    """A byte-level BPE tokenizer, packed training sequences and the query sentences (the poster
    examples first, one per sequence), sharing one concept table."""
    train, queries = generate_template_corpus(num_train, num_queries, seed=0)
    texts = [d.text for d in train] + [q.text for q in queries]
    tok = train_bpe_tokenizer(texts + [e.text.text for e in POSTER_EXAMPLES], vocab_size=400)
    index: dict[str, int] = {}
    seqs = pack_documents(train, tok, seq_len, index)
    qs = pack_documents(
        [e.text for e in POSTER_EXAMPLES] + queries, tok, seq_len, index, pack=False
    )
    seqs.concept_names = qs.concept_names
    return tok, seqs, qs
