"""The embedded text corpus: labelled spans, natural text sources, tokenizer, packing."""

from __future__ import annotations

import pytest
import torch

from bifrepro.data.text import (
    AMBIGUOUS,
    NO_CONCEPT,
    NUMBERS,
    POSTER_EXAMPLES,
    LabelledText,
    TextCorpusConfig,
    build_corpus,
    generate_template_corpus,
    load_natural_text,
    pack_documents,
    split_sentences,
)
from bifrepro.data.tokenizer import load_or_train_tokenizer, load_tokenizer, train_bpe_tokenizer


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory):
    train, queries = generate_template_corpus(300, 20, seed=0)
    texts = (
        [d.text for d in train] + [q.text for q in queries] + [e.text.text for e in POSTER_EXAMPLES]
    )
    tok, path = load_or_train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=600)
    return train, queries, tok, path


def test_spans_point_at_the_words_they_label() -> None:
    train, queries = generate_template_corpus(200, 10, seed=1)
    words = {k: set(v) for k, v in NUMBERS.items()}
    seen = set()
    for doc in train + queries:
        for a, b, concept in doc.spans:
            word = doc.text[a:b]
            assert word and word == word.strip()
            seen.add(concept.split(":")[0])
            if concept.startswith("num:"):
                assert word in words[int(concept[4:])]
            if concept.startswith("bank:"):
                assert word == "bank"
            if concept == "then:if":
                assert word in ("then", "alors")
    assert {"num", "pron", "verb", "noun", "country", "city", "name", "bank", "then", "if"} <= seen


def test_generator_is_seeded_and_queries_are_held_out() -> None:
    a_train, a_q = generate_template_corpus(100, 10, seed=3)
    b_train, b_q = generate_template_corpus(100, 10, seed=3)
    c_train, _ = generate_template_corpus(100, 10, seed=4)
    assert [d.text for d in a_train] == [d.text for d in b_train]
    assert [q.text for q in a_q] == [q.text for q in b_q]
    assert [d.text for d in a_train] != [d.text for d in c_train]
    held = [q.text for q in a_q] + [e.text.text for e in POSTER_EXAMPLES]
    assert not any(h in d.text for d in a_train for h in held)


def test_poster_examples_label_their_focus_word() -> None:
    for ex in POSTER_EXAMPLES:
        ((a, b, concept),) = ex.text.spans
        assert concept == ex.focus_concept
        assert ex.text.text[a:b] in ex.description or concept.startswith("country")


def test_labelled_text_concatenation_shifts_spans() -> None:
    a = LabelledText("I saw 3 cats.", [(6, 7, "num:3")])
    b = LabelledText("J'ai vu trois chats.", [(8, 13, "num:3")])
    c = a + b
    assert [c.text[s:e] for s, e, _ in c.spans] == ["3", "trois"]


def test_natural_text_from_gensim_and_from_a_file(tmp_path) -> None:
    lee = load_natural_text(TextCorpusConfig(max_natural_sentences=50))
    assert len(lee) == 50 and all(d.source == "natural" and not d.spans for d in lee)
    assert all(len(d.text) >= 20 for d in lee)
    path = tmp_path / "corpus.txt"
    path.write_text(
        "First document. It has two sentences here.\n\nSecond document is short but fine."
    )
    docs = load_natural_text(TextCorpusConfig(natural_source="file", natural_path=str(path)))
    # "First document." is below the 20-character minimum of a sentence
    assert [d.text for d in docs] == [
        "It has two sentences here.",
        "Second document is short but fine.",
    ]
    with pytest.raises(FileNotFoundError, match="natural_path"):
        load_natural_text(TextCorpusConfig(natural_source="file", natural_path=str(tmp_path / "x")))


def test_natural_text_from_a_saved_hugging_face_dataset(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"text": ["A saved dataset sentence number one. And then two more words follow."]}
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    docs = load_natural_text(
        TextCorpusConfig(natural_source="hf", natural_path=str(tmp_path / "ds"))
    )
    assert [d.text for d in docs] == [
        "A saved dataset sentence number one.",
        "And then two more words follow.",
    ]


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="natural_source"):
        TextCorpusConfig(natural_source="web")
    with pytest.raises(ValueError, match="natural_path"):
        TextCorpusConfig(natural_source="file")
    with pytest.raises(ValueError, match="num_documents"):
        TextCorpusConfig(num_documents=-1)


def test_split_sentences() -> None:
    text = 'The first sentence is here.  The second one? Yes! "Quoted start" goes on and on.'
    assert split_sentences(text, min_chars=5) == [
        "The first sentence is here.",
        "The second one?",
        '"Quoted start" goes on and on.',
    ]  # "Yes!" is shorter than min_chars


def test_tokenizer_round_trips_through_save_pretrained(corpus_and_tokenizer, tmp_path) -> None:
    _, _, tok, path = corpus_and_tokenizer
    again = load_tokenizer(path)
    text = "Marie a trois chats. Elle a répondu à la question."
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.decode(again(text)["input_ids"]).strip() == text
    assert tok.bos_token_id is not None and tok.pad_token_id != tok.bos_token_id
    # a word is the same token at the start of a text and mid-sentence
    assert tok(" three")["input_ids"] == tok("three")["input_ids"]
    fresh = train_bpe_tokenizer(["aa bb aa bb cc"] * 3, vocab_size=270)
    assert len(fresh) <= 270


def test_packing_keeps_documents_whole_and_labels_first_tokens(corpus_and_tokenizer) -> None:
    train, _, tok, _ = corpus_and_tokenizer
    seqs = pack_documents(train, tok, seq_len=32)
    assert seqs.input_ids.shape[1] == 32 and len(seqs.sources) == len(seqs)
    assert (seqs.input_ids[:, 0] == tok.bos_token_id).all()
    real = seqs.attention_mask.bool()
    assert (seqs.input_ids[~real] == tok.pad_token_id).all()
    assert (seqs.concepts[~real] == AMBIGUOUS).all()
    # every labelled token decodes to (the start of) a word of its concept
    n_checked = 0
    for i in range(len(seqs)):
        for pos in torch.nonzero(seqs.concepts[i] >= 0).flatten().tolist():
            concept = seqs.concept_names[int(seqs.concepts[i, pos])]
            word = tok.decode([int(seqs.input_ids[i, pos])]).strip()
            if concept.startswith("num:"):
                assert any(w.startswith(word) for w in NUMBERS[int(concept[4:])])
                n_checked += 1
    assert n_checked > 20
    # unlabelled tokens are NO_CONCEPT or AMBIGUOUS only
    assert set(seqs.concepts.unique().tolist()) >= {NO_CONCEPT, AMBIGUOUS}
    one_per = pack_documents(train[:5], tok, seq_len=64, pack=False)
    assert len(one_per) == 5


def test_build_corpus_mixes_sources() -> None:
    c = build_corpus(TextCorpusConfig(num_documents=50, num_queries=5, max_natural_sentences=20))
    sources = {d.source for d in c.train}
    assert sources == {"template", "natural"}
    assert len(c.queries) == 5 and len(c.examples) == len(POSTER_EXAMPLES)
