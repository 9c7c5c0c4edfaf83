"""A generated corpus whose translations never share a sequence: links that copying cannot explain.

In :mod:`bifrepro.data.text` a translation pair often sits side by side in one document, so a
model can link "trois" to "3" by copying within the context. Here every document is one sentence
in ONE form (digits, English or French) and is packed alone into its sequence
(:func:`pack_separated`), so an attribution from "5" to "five" can only come through what the
model learned across sequences. What ties the forms together is a shared *fact* the model must
learn in every form:

* **numbers** — each person owns a fixed count of a fixed animal or object (:data:`FACTS`), said
  with digits, English or French words; counting runs ("Count: 3, 4, 5.") in the three forms;
* **nouns** — the owned noun of the same facts (cats / chats, ...);
* **pronouns** — each person's gender decides she / elle, he / il;
* **verbs** — a cue object decides the verb (the question → answered / répondu, ...; "As a
  child, X had" / "Enfant, X avait" → had / avait);
* **countries** — a capital decides its country (category-level links: any country);
* **senses** — "bank" in money and river contexts (English only);
* **if/then** — "If ..., then ..." and "Si ..., alors ..." (then and alors: concept ``then:if``);
* **objectives** — generated assistant dialogues ("User: What is your goal? Assistant: My goal
  is ..."), concept ``obj:objective`` on objective / goal / aim / purpose / objectif.

Queries (:func:`separated_queries`) use frames that never occur in training, one labelled focus
token each, the poster's six examples first (:data:`SCALE_EXAMPLES`). The probe of
:func:`probe_items` holds one form of every person's count fact out of training: predicting it is
next-token transfer across forms. Concepts follow :mod:`bifrepro.data.text` (``num:3``,
``pron:she``, ...), so :class:`~bifrepro.evaluation.token_metrics.TokenLinks` labels them as it does
there.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bifrepro.data import text
from bifrepro.data.text import LabelledText, TokenizedSequences, _fill, pack_documents

__all__ = [
    "FACTS",
    "FORMS",
    "NUMBERS",
    "SCALE_EXAMPLES",
    "CATEGORY_NAMES",
    "SeparatedQuery",
    "ProbeItem",
    "form_of",
    "generate_separated_corpus",
    "separated_queries",
    "probe_items",
    "pack_separated",
    "benchmark_category",
]

#: number -> (digit, English, French), as in the side-by-side corpus
NUMBERS: dict[int, tuple[str, str, str]] = dict(text.NUMBERS)
#: noun -> (English plural, French plural); this corpus's order (it sets the generated text)
NOUNS: dict[str, tuple[str, str]] = {
    k: text.NOUNS[k] for k in ("apple", "cat", "dog", "bird", "book", "horse")
}
#: person -> (gender "f"/"m", count, noun): the facts every form must agree on
FACTS: dict[str, tuple[str, int, str]] = {
    "Marie": ("f", 3, "apple"),
    "Alice": ("f", 5, "bird"),
    "Sophie": ("f", 7, "cat"),
    "Emma": ("f", 2, "book"),
    "Julie": ("f", 9, "horse"),
    "Paul": ("m", 4, "dog"),
    "Pierre": ("m", 6, "book"),
    "Tom": ("m", 8, "apple"),
    "Lucas": ("m", 3, "horse"),
    "Bob": ("m", 5, "cat"),
}
PRONOUNS = {"f": ("she", "elle"), "m": ("he", "il")}
#: verb -> (English, French, English frame, French frame); {n} the person, {v} the verb
VERBS: dict[str, tuple[str, str, str, str]] = {
    "answered": (
        "answered",
        "répondu",
        "{n} read the question and {v} it.",
        "{n} a lu la question et a {v}.",
    ),
    "asked": (
        "asked",
        "demandé",
        "{n} met the teacher and {v} for help.",
        "{n} a rencontré le professeur et a {v} de l'aide.",
    ),
    "ate": (
        "ate",
        "mangé",
        "{n} found the bread and {v} it.",
        "{n} a trouvé le pain et l'a {v}.",
    ),
    "saw": (
        "saw",
        "vu",
        "{n} went to the coast and {v} the sea.",
        "{n} est allé sur la côte et a {v} la mer.",
    ),
    "had": ("had", "avait", "As a child, {n} {v} a dog.", "Enfant, {n} {v} un chien."),
}
#: country -> (English, French, capital)
COUNTRIES: dict[str, tuple[str, str, str]] = {
    "france": ("France", "France", "Paris"),
    "germany": ("Germany", "Allemagne", "Berlin"),
    "spain": ("Spain", "Espagne", "Madrid"),
    "italy": ("Italy", "Italie", "Rome"),
    "japan": ("Japan", "Japon", "Tokyo"),
    "egypt": ("Egypt", "Egypte", "Cairo"),
    "canada": ("Canada", "Canada", "Ottawa"),
    "brazil": ("Brazil", "Brésil", "Brasilia"),
}
BANK = {
    "finance": (
        "{n} put money in the {b}.",
        "The {b} gave {n} a loan.",
        "{n} opened an account at the {b}.",
    ),
    "river": (
        "{n} sat on the {b} of the river.",
        "Fish swim near the muddy {b}.",
        "The river {b} was green with grass.",
    ),
}
CONDITIONS = (
    ("it rains", "the road is wet", "il pleut", "la route est mouillée"),
    ("it is cold", "we wear coats", "il fait froid", "nous portons des manteaux"),
    ("the sun shines", "we go outside", "le soleil brille", "nous sortons"),
    ("the water boils", "we make tea", "l'eau bout", "nous faisons du thé"),
)
#: words of the objectives concept (English) and its French word
OBJECTIVE_WORDS = ("objective", "goal", "aim", "purpose")
ANSWERS = ("to be helpful and honest", "to help people", "to tell the truth", "to answer well")
OTHER_DIALOGUES = (
    "User: What is your name? Assistant: My name is Bifro.",
    "User: What is the weather? Assistant: It is sunny today.",
    "User: Where is Paris? Assistant: Paris is in the north.",
    "User: Can you help me? Assistant: Yes, I can help you.",
)
#: benchmark category of each concept prefix (the README's names)
CATEGORY_NAMES: dict[str, str] = {
    "num": "numbers",
    "pron": "pronouns",
    "verb": "verbs",
    "noun": "nouns",
    "country": "countries",
    "bank": "senses",
    "then": "if/then",
    "obj": "objectives",
}
FORMS = ("digit", "en", "fr")


def benchmark_category(concept: str) -> str:
    """``"num:3"`` → ``"numbers"`` (the category of the benchmark tables)."""
    prefix = concept.split(":", 1)[0]
    return CATEGORY_NAMES.get(prefix, prefix)


def form_of(person: str) -> str:
    """The form of ``person``'s count fact held out of training (the probe's transfer target)."""
    return FORMS[(list(FACTS).index(person) + 2) % 3]


def _num(k: int, form: str) -> tuple[str, str]:
    return NUMBERS[k][FORMS.index(form)], f"num:{k}"


def _noun(noun: str, form: str) -> tuple[str, str]:
    return NOUNS[noun][1 if form == "fr" else 0], f"noun:{noun}"


def _count_fact(person: str, form: str, frame: int) -> LabelledText:
    _, k, noun = FACTS[person]
    slots = {"n": (person, None), "k": _num(k, form), "o": _noun(noun, form)}
    if form == "fr":
        frames = ("{n} a {k} {o}.", "Chez elle, {n} garde {k} {o}.", "Aujourd'hui {n} a {k} {o}.")
    else:
        frames = ("{n} has {k} {o}.", "At home, {n} keeps {k} {o}.", "Today {n} has {k} {o}.")
    return _fill(frames[frame], slots)


def _counting(start: int, length: int, form: str, lead: str | None = None) -> LabelledText:
    lead = lead or ("Compte :" if form == "fr" else "Count:")
    slots = {f"x{i}": _num(start + i, form) for i in range(length)}
    return _fill(lead + " " + ", ".join(f"{{x{i}}}" for i in range(length)) + ".", slots)


def _pronoun(person: str, lang: str, frame: int) -> LabelledText:
    g = FACTS[person][0]
    e = "e" if g == "f" else ""
    slots = {"n": (person, None), "p": (PRONOUNS[g][lang == "fr"], f"pron:{'she' if e else 'he'}")}
    if lang == "fr":
        frames = (
            f"{{n}} est rentré{e} et {{p}} a dormi.",
            f"{{n}} sourit car {{p}} est content{e}.",
            "Hier {n} a travaillé, puis {p} a chanté.",
        )
    else:
        frames = (
            "{n} came home and {p} went to sleep.",
            "{n} smiles because {p} is happy.",
            "Yesterday {n} worked, later {p} sang.",
        )
    return _fill(frames[frame], slots)


def _verb(verb: str, person: str, lang: str, frame: str | None = None) -> LabelledText:
    en, fr, f_en, f_fr = VERBS[verb]
    word = fr if lang == "fr" else en
    return _fill(
        frame or (f_fr if lang == "fr" else f_en),
        {"n": (person, None), "v": (word, f"verb:{verb}")},
    )


def _country(country: str, lang: str, frame: int) -> LabelledText:
    en, fr, city = COUNTRIES[country]
    slots = {"c": (fr if lang == "fr" else en, f"country:{country}"), "t": (city, f"city:{city}")}
    frames = (
        ("{t} est la capitale du pays {c}.", "On parle de {t}, ville du pays {c}.")
        if lang == "fr"
        else ("{t} is the capital of {c}.", "People in {t} live in {c}.")
    )
    return _fill(frames[frame], slots)


def _conditional(i: int, lang: str) -> LabelledText:
    c_en, r_en, c_fr, r_fr = CONDITIONS[i]
    if lang == "fr":
        return _fill(
            f"{{i}} {c_fr}, {{t}} {r_fr}.", {"i": ("Si", "if:if"), "t": ("alors", "then:if")}
        )
    return _fill(f"{{i}} {c_en}, {{t}} {r_en}.", {"i": ("If", "if:if"), "t": ("then", "then:if")})


def _dialogue(word: str, answer: str, lang: str) -> LabelledText:
    if lang == "fr":
        return _fill(
            "Utilisateur : Quel est ton {w} ? Assistant : Mon {a} est d'aider les gens.",
            {"w": ("objectif", "obj:objective"), "a": ("objectif", "obj:objective")},
        )
    return _fill(
        f"User: What is your {{w}}? Assistant: My {{a}} is {answer}.",
        {"w": (word, "obj:objective"), "a": (word, "obj:objective")},
    )


class _Generator:
    """One seeded stream of training sentences, each in one form."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def person(self) -> str:
        return self.r.choice(list(FACTS))

    def lang(self) -> str:
        return self.r.choice(("en", "fr"))

    def sentence(self) -> LabelledText:
        r = self.r
        kind = r.choices(range(9), (0.22, 0.08, 0.14, 0.16, 0.1, 0.08, 0.08, 0.06, 0.08))[0]
        if kind == 0:  # a count fact, never in its held-out form
            p = self.person()
            form = r.choice([f for f in FORMS if f != form_of(p)])
            return _count_fact(p, form, r.randrange(3))
        if kind == 1:
            return _counting(r.randint(2, 6), r.randint(3, 4), r.choice(FORMS))
        if kind == 2:
            return _pronoun(self.person(), self.lang(), r.randrange(3))
        if kind == 3:
            return _verb(r.choice(list(VERBS)), self.person(), self.lang())
        if kind == 4:
            return _country(r.choice(list(COUNTRIES)), self.lang(), r.randrange(2))
        if kind == 5:
            sense = r.choice(("finance", "river"))
            return _fill(
                r.choice(BANK[sense]), {"n": (self.person(), None), "b": ("bank", f"bank:{sense}")}
            )
        if kind == 6:
            return _conditional(r.randrange(len(CONDITIONS)), self.lang())
        if kind == 7:
            lang = "fr" if r.random() < 0.25 else "en"
            return _dialogue(r.choice(OBJECTIVE_WORDS), r.choice(ANSWERS), lang)
        return LabelledText(r.choice(OTHER_DIALOGUES), [])


def generate_separated_corpus(num_documents: int, seed: int = 0) -> list[LabelledText]:
    """``num_documents`` training sentences, one form each (counting runs stay within 2..9)."""
    g = _Generator(seed)
    return [g.sentence() for _ in range(num_documents)]


@dataclass(frozen=True)
class SeparatedQuery:
    """A held-out query sentence whose one labelled span is the focus token."""

    text: LabelledText
    #: poster example name, or None for the other benchmark queries
    example: str | None = None
    description: str = ""


def _only(doc: LabelledText, concept: str) -> LabelledText:
    """``doc`` with only its LAST span of ``concept`` kept (the query's focus)."""
    spans = [s for s in doc.spans if s[2] == concept][-1:]
    return LabelledText(doc.text, spans, doc.source)


#: the poster's six examples: (name, query, focus concept, description)
SCALE_EXAMPLES: tuple[tuple[str, LabelledText, str, str], ...] = (
    ("five", _counting(3, 3, "digit", "Next:"), "num:5", '"5" → "five" / "cinq"'),
    (
        "three",
        _fill(
            "Now {n} owns {k} {o}.",
            {"n": ("Marie", None), "k": _num(3, "digit"), "o": _noun("apple", "en")},
        ),
        "num:3",
        '"3" → "three" / "trois"',
    ),
    (
        "elle",
        _fill("Ce matin Marie a couru, et {p} a gagné.", {"p": ("elle", "pron:she")}),
        "pron:she",
        '"elle" → "she"',
    ),
    (
        "avait",
        _verb("had", "Sophie", "fr", "Autrefois, {n} {v} un chien."),
        "verb:had",
        '"avait" → "had"',
    ),
    (
        "repondu",
        _verb("answered", "Paul", "fr", "Le professeur a posé la question, {n} a {v}."),
        "verb:answered",
        '"répondu" → "answered"',
    ),
    (
        "objectives",
        _fill(
            "User: Tell me your {w}. Assistant: My {a} are to help people.",
            {"w": ("objectives", "obj:objective"), "a": ("objectives", "obj:objective")},
        ),
        "obj:objective",
        '"objectives" → an assistant\'s answer about its objective',
    ),
)


def separated_queries() -> list[SeparatedQuery]:
    """The benchmark's queries: the six poster examples, then held-out frames per category."""
    out = [SeparatedQuery(_only(t, c), name, d) for name, t, c, d in SCALE_EXAMPLES]

    def add(doc: LabelledText, concept: str) -> None:
        out.append(SeparatedQuery(_only(doc, concept)))

    for i, p in enumerate(FACTS):  # numbers and nouns: every person, a held-out frame
        form = FORMS[i % 3]
        add(
            _fill(
                ("Now {n} owns {k} {o}." if form != "fr" else "Maintenant {n} a {k} {o}."),
                {"n": (p, None), "k": _num(FACTS[p][1], form), "o": _noun(FACTS[p][2], form)},
            ),
            f"num:{FACTS[p][1]}",
        )
        lang = "fr" if i % 2 else "en"
        add(
            _fill(
                "Now {n} owns {k} {o}." if lang == "en" else "Maintenant {n} a {k} {o}.",
                {"n": (p, None), "k": _num(FACTS[p][1], "digit"), "o": _noun(FACTS[p][2], lang)},
            ),
            f"noun:{FACTS[p][2]}",
        )
        g = FACTS[p][0]
        pron = PRONOUNS[g][lang == "fr"]
        frame = (
            "Ce soir {n} lit et {p} rit." if lang == "fr" else "Tonight {n} reads and {p} laughs."
        )
        add(
            _fill(frame, {"n": (p, None), "p": (pron, f"pron:{'she' if g == 'f' else 'he'}")}),
            f"pron:{'she' if g == 'f' else 'he'}",
        )
    for start in (2, 4, 6):
        for form in FORMS:
            add(
                _counting(start, 3, form, "Suite :" if form == "fr" else "Next:"),
                f"num:{start + 2}",
            )
    for i, verb in enumerate(VERBS):
        for lang in ("en", "fr"):
            person = list(FACTS)[(2 * i + (lang == "fr")) % len(FACTS)]
            frame = (
                "Ce jour-là, " + VERBS[verb][3] if lang == "fr" else "That day, " + VERBS[verb][2]
            )
            add(_verb(verb, person, lang, frame), f"verb:{verb}")
    for i, c in enumerate(COUNTRIES):
        lang = "fr" if i % 2 else "en"
        frame = "La ville de {t} est en {c}." if lang == "fr" else "The city of {t} is in {c}."
        en, fr, city = COUNTRIES[c]
        add(
            _fill(
                frame,
                {"t": (city, f"city:{city}"), "c": (fr if lang == "fr" else en, f"country:{c}")},
            ),
            f"country:{c}",
        )
    bank_q = {
        "finance": ("{n} paid the {b} back.", "{n} took cash from the {b}."),
        "river": ("{n} fished from the {b} of the lake.", "Reeds grow on the {b} of the stream."),
    }
    for sense, frames in bank_q.items():
        for j, frame in enumerate(frames):
            add(
                _fill(frame, {"n": (list(FACTS)[j], None), "b": ("bank", f"bank:{sense}")}),
                f"bank:{sense}",
            )
    extra = (
        ("the wind blows", "the trees move", "le vent souffle", "les arbres bougent"),
        ("it snows", "we stay in", "il neige", "nous restons dedans"),
    )
    for c_en, r_en, c_fr, r_fr in extra:
        add(_fill(f"If {c_en}, {{t}} {r_en}.", {"t": ("then", "then:if")}), "then:if")
        add(_fill(f"Si {c_fr}, {{t}} {r_fr}.", {"t": ("alors", "then:if")}), "then:if")
    for word in ("goals", "aims", "purpose"):
        add(
            _fill(
                "User: Tell me your {w}. Assistant: My {a} is to help.",
                {"w": (word, "obj:objective"), "a": (word, "obj:objective")},
            ),
            "obj:objective",
        )
    return out


@dataclass(frozen=True)
class ProbeItem:
    """A count fact as a next-token probe: the prefix before the number and the number's text."""

    person: str
    form: str
    held_out: bool
    prefix: str
    target: str


def probe_items() -> list[ProbeItem]:
    """Every person's count fact in every form and frame; ``held_out``: the form training never
    shows for that person (next-token accuracy there = transfer of the fact across forms)."""
    out = []
    for p, (_, k, _) in FACTS.items():
        for form in FORMS:
            for frame in range(3):
                doc = _count_fact(p, form, frame)
                start = next(a for a, _, c in doc.spans if c == f"num:{k}")
                out.append(
                    ProbeItem(
                        p, form, form == form_of(p), doc.text[:start].rstrip(), _num(k, form)[0]
                    )
                )
    return out


def pack_separated(
    docs: Sequence[LabelledText], tokenizer: Any, seq_len: int, concept_index: dict[str, int]
) -> TokenizedSequences:
    """One document per sequence (never packed together), sharing ``concept_index``."""
    return pack_documents(docs, tokenizer, seq_len, concept_index, pack=False)
