"""The separated corpus: translations never share a sequence, labels are right, queries held out."""

from __future__ import annotations

import pytest

from bifrepro.data.separated_text import (
    COUNTRIES,
    FACTS,
    NOUNS,
    NUMBERS,
    PRONOUNS,
    SCALE_EXAMPLES,
    VERBS,
    _count_fact,
    benchmark_category,
    form_of,
    generate_separated_corpus,
    pack_separated,
    probe_items,
    separated_queries,
)
from bifrepro.data.text import LabelledText, TokenizedSequences
from bifrepro.data.tokenizer import train_bpe_tokenizer

#: labelled words of each language (digits count as their own form)
FRENCH = {fr for _, _, fr in NUMBERS.values()} | {fr for _, fr in NOUNS.values()}
FRENCH |= {fr for _, fr in PRONOUNS.values()} | {v[1] for v in VERBS.values()} | {"alors"}
ENGLISH = {en for _, en, _ in NUMBERS.values()} | {en for en, _ in NOUNS.values()}
ENGLISH |= {en for en, _ in PRONOUNS.values()} | {v[0] for v in VERBS.values()} | {"then"}
SHARED = ENGLISH & FRENCH  # "six" is both
ENGLISH, FRENCH = ENGLISH - SHARED, FRENCH - SHARED


def mixed_forms(seqs: TokenizedSequences, surfaces: list[list[str]]) -> list[int]:
    """Sequences holding one concept in two surface forms, or labelled words of both languages."""
    bad = []
    for i in range(len(seqs)):
        forms: dict[int, set[str]] = {}
        words = set()
        for pos, cid in enumerate(seqs.concepts[i].tolist()):
            if cid >= 0:
                forms.setdefault(cid, set()).add(surfaces[i][pos])
                words.add(surfaces[i][pos])
        if any(len(f) > 1 for f in forms.values()) or (words & FRENCH and words & ENGLISH):
            bad.append(i)
    return bad


@pytest.fixture(scope="module")
def packed():
    docs = generate_separated_corpus(600, seed=0)
    queries = separated_queries()
    tok = train_bpe_tokenizer([d.text for d in docs] + [q.text.text for q in queries], 600)
    index: dict[str, int] = {}
    seqs = pack_separated(docs, tok, 48, index)
    surfaces = [[tok.decode([t]).strip().lower() for t in row.tolist()] for row in seqs.input_ids]
    return docs, tok, seqs, surfaces, index


def test_no_sequence_holds_a_translation_pair(packed) -> None:
    docs, _, seqs, surfaces, _ = packed
    assert len(seqs) == len(docs)  # one sentence per sequence, never packed together
    assert mixed_forms(seqs, surfaces) == []


def test_the_checker_catches_a_side_by_side_pair(packed) -> None:
    """Known bad case: an English and a French sentence in one sequence is flagged."""
    _, tok, _, _, index = packed
    pair = _count_fact("Paul", "en", 0) + _count_fact("Paul", "fr", 0)
    seqs = pack_separated([pair], tok, 48, dict(index))
    surfaces = [[tok.decode([t]).strip().lower() for t in row.tolist()] for row in seqs.input_ids]
    assert mixed_forms(seqs, surfaces) == [0]


def test_labels_name_the_right_words() -> None:
    doc = _count_fact("Marie", "fr", 0)
    assert doc.text == "Marie a trois pommes."
    assert [(doc.text[a:b], c) for a, b, c in doc.spans] == [
        ("trois", "num:3"),
        ("pommes", "noun:apple"),
    ]
    words = {
        "num": {k: set(v) for k, v in NUMBERS.items()},
        "noun": {k: set(v) for k, v in NOUNS.items()},
        "verb": {k: {v[0], v[1]} for k, v in VERBS.items()},
        "country": {k: {v[0], v[1]} for k, v in COUNTRIES.items()},
    }
    seen = set()
    for d in generate_separated_corpus(800, seed=1):
        for a, b, concept in d.spans:
            cat, item = concept.split(":", 1)
            seen.add(cat)
            text = d.text[a:b]
            if cat in words:
                key = int(item) if cat == "num" else item
                assert text in words[cat][key], (concept, text)
            elif cat == "pron":
                assert text in {"she": {"she", "elle"}, "he": {"he", "il"}}[item]
            elif cat == "obj":
                assert text in {"objective", "goal", "aim", "purpose", "objectif"}
            elif cat == "bank":
                assert text == "bank"
    assert {"num", "noun", "pron", "verb", "country", "bank", "then", "obj"} <= seen


def test_facts_hold_in_every_form_and_the_probe_form_is_held_out() -> None:
    texts = {d.text for d in generate_separated_corpus(3000, seed=0)}
    for person, (gender, _, _) in FACTS.items():
        held = form_of(person)
        for frame in range(3):
            for form in ("digit", "en", "fr"):
                present = _count_fact(person, form, frame).text in texts
                assert present == (form != held), (person, form, frame)
        for d in texts:  # the pronoun always matches the person's gender
            if d.startswith(person + " came home and "):
                assert d.split()[4] == PRONOUNS[gender][0]
    items = probe_items()
    assert len(items) == len(FACTS) * 9
    assert sum(it.held_out for it in items) == len(FACTS) * 3


def test_queries_are_held_out_with_one_focus_each() -> None:
    queries = separated_queries()
    texts = {d.text for d in generate_separated_corpus(3000, seed=0)}
    assert [q.example for q in queries[: len(SCALE_EXAMPLES)]] == [e[0] for e in SCALE_EXAMPLES]
    focus = {q.example: q.text.text[q.text.spans[0][0] : q.text.spans[0][1]] for q in queries[:6]}
    assert focus == {
        "five": "5",
        "three": "3",
        "elle": "elle",
        "avait": "avait",
        "repondu": "répondu",
        "objectives": "objectives",
    }
    for q in queries:
        assert len(q.text.spans) == 1
        assert q.text.text not in texts, q.text.text
    cats = {benchmark_category(q.text.spans[0][2]) for q in queries}
    assert cats == {
        "numbers",
        "pronouns",
        "verbs",
        "nouns",
        "countries",
        "senses",
        "if/then",
        "objectives",
    }


def test_the_corpus_is_deterministic() -> None:
    a = generate_separated_corpus(50, seed=3)
    b = generate_separated_corpus(50, seed=3)
    assert [d.text for d in a] == [d.text for d in b]
    assert [d.text for d in a] != [d.text for d in generate_separated_corpus(50, seed=4)]
    assert isinstance(a[0], LabelledText)
