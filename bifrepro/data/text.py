"""Text for token-level attribution: a generated bilingual corpus with known links, plus real text.

Why generated text: the poster's language examples (Kreer et al.) link "3" to "three" and "trois",
"elle" to "she", "répondu" to "answered", country names to each other, the two senses of "bank"
and "If it is raining → then". With templates the generator *knows* which tokens express the same
concept, so token attributions can be scored (:mod:`bifrepro.evaluation.token_metrics`) instead of
only looked at.

Concepts are strings ``"<category>:<item>"`` attached to character spans of the text:

* ``num:3`` — the number 3 as a digit, English word or French word;
* ``pron:she`` / ``pron:he`` — she/elle, he/il (mid-sentence, lower case);
* ``verb:answered`` … — answered/répondu, asked/demandé, ate/mangé, saw/vu;
* ``noun:cat`` … — cats/chats, dogs/chiens, ... (plural nouns counted by the numbers);
* ``country:france`` …, ``city:paris`` …, ``name:alice`` … — linked at category level (any
  country links to any country, see :data:`CATEGORY_LEVEL`);
* ``bank:finance`` / ``bank:river`` — the two senses of "bank";
* ``then:if`` (then/alors closing a conditional), ``then:seq`` (sequential "then") and ``if:if``.

Natural English text comes from a file that ships inside the ``gensim`` wheel
(``gensim/test/test_data/lee_background.cor``: 300 Australian news articles, read without
importing gensim); a local text file or a Hugging Face dataset can replace it (``natural_source``).
Natural text carries no labels; its tokens that look like a labelled word are marked *ambiguous*
(excluded from the benchmark's candidates) when the text is tokenised.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TextCorpusConfig",
    "LabelledText",
    "TextCorpus",
    "TokenizedSequences",
    "ExampleQuery",
    "CATEGORY_LEVEL",
    "POSTER_EXAMPLES",
    "NUMBERS",
    "concept_category",
    "generate_template_corpus",
    "load_natural_text",
    "gensim_lee_path",
    "split_sentences",
    "build_corpus",
    "tokenize_documents",
    "pack_documents",
    "lexicon",
]

AMBIGUOUS = -2
"""Concept id of tokens excluded from the benchmark (subword continuations, unlabelled look-alikes)."""
NO_CONCEPT = -1
"""Concept id of ordinary tokens."""

#: Categories whose members all link to each other ("country names to each other").
CATEGORY_LEVEL: frozenset[str] = frozenset({"country", "city", "name"})

#: number -> (digit, English word, French word)
NUMBERS: dict[int, tuple[str, str, str]] = {
    2: ("2", "two", "deux"),
    3: ("3", "three", "trois"),
    4: ("4", "four", "quatre"),
    5: ("5", "five", "cinq"),
    6: ("6", "six", "six"),
    7: ("7", "seven", "sept"),
    8: ("8", "eight", "huit"),
    9: ("9", "nine", "neuf"),
}
#: noun -> (English plural, French plural)
NOUNS: dict[str, tuple[str, str]] = {
    "cat": ("cats", "chats"),
    "dog": ("dogs", "chiens"),
    "bird": ("birds", "oiseaux"),
    "apple": ("apples", "pommes"),
    "book": ("books", "livres"),
    "horse": ("horses", "chevaux"),
}
#: pronoun -> (English, French)
PRONOUNS: dict[str, tuple[str, str]] = {"she": ("she", "elle"), "he": ("he", "il")}
#: verb -> (English past, French participle, English object, French object)
VERBS: dict[str, tuple[str, str, str, str]] = {
    "answered": ("answered", "répondu", "the question", "à la question"),
    "asked": ("asked", "demandé", "the teacher", "au professeur"),
    "ate": ("ate", "mangé", "the bread", "le pain"),
    "saw": ("saw", "vu", "the sea", "la mer"),
}
#: (English time adverb, French time adverb)
TIMES: tuple[tuple[str, str], ...] = (
    ("Yesterday", "Hier"),
    ("Today", "Aujourd'hui"),
    ("This morning", "Ce matin"),
    ("Last night", "Hier soir"),
)
#: country -> (English, French with article after "de", capital city)
COUNTRIES: dict[str, tuple[str, str, str]] = {
    "france": ("France", "la France", "Paris"),
    "germany": ("Germany", "l'Allemagne", "Berlin"),
    "spain": ("Spain", "l'Espagne", "Madrid"),
    "italy": ("Italy", "l'Italie", "Rome"),
    "japan": ("Japan", "du Japon", "Tokyo"),
    "egypt": ("Egypt", "l'Egypte", "Cairo"),
    "canada": ("Canada", "du Canada", "Ottawa"),
    "brazil": ("Brazil", "du Brésil", "Brasilia"),
}
NAMES: tuple[str, ...] = (
    "Alice", "Bob", "Marie", "Pierre", "Sophie", "Tom", "Emma", "Lucas", "Julie", "Paul",
)  # fmt: skip
#: conditional clauses (English condition, English consequence, French condition, French consequence)
CONDITIONS: tuple[tuple[str, str, str, str], ...] = (
    ("it is raining", "the ground is wet", "il pleut", "le sol est mouillé"),
    ("it is cold", "we wear coats", "il fait froid", "nous portons des manteaux"),
    ("the sun shines", "we go outside", "le soleil brille", "nous sortons"),
    ("the door is open", "the cat runs out", "la porte est ouverte", "le chat sort"),
    ("the water boils", "we make tea", "l'eau bout", "nous faisons du thé"),
)
BANK_FINANCE: tuple[str, ...] = (
    "{name} deposited money at the {bank}.",
    "The {bank} approved the loan for {name}.",
    "{name} opened an account at the {bank}.",
    "The {bank} charged {name} a fee.",
    "{name} asked the {bank} for a loan.",
)
BANK_RIVER: tuple[str, ...] = (
    "{name} sat on the {bank} of the river.",
    "The river {bank} was covered in grass.",
    "Fish swim near the {bank} of the stream.",
    "{name} walked along the muddy {bank} of the river.",
    "Ducks rested on the grassy {bank}.",
)
SEQUENTIAL_THEN: tuple[str, ...] = (
    "{name} ate dinner and {then} went to sleep.",
    "We walked home, {then} we read a book.",
    "{name} opened the door and {then} closed it.",
)


@dataclass
class TextCorpusConfig:
    """Settings of the embedded text corpus (templates + natural text)."""

    #: Dataset name (recorded as the MLflow ``dataset`` tag).
    name: str = "bilingual_templates"
    #: Generated template documents for training (1-3 sentences each).
    num_documents: int = 2000
    #: Held-out generated query sentences (besides the poster examples).
    num_queries: int = 40
    #: Natural text mixed in: "gensim_lee" (ships with gensim), "file", "hf" or "none".
    natural_source: str = "gensim_lee"
    #: For natural_source=file: a UTF-8 text file; for hf: a dataset name, local script/folder,
    #: or a folder written by ``datasets.Dataset.save_to_disk``.
    natural_path: str | None = None
    #: Hugging Face dataset configuration name (natural_source=hf).
    hf_config: str | None = None
    #: Hugging Face split (natural_source=hf).
    hf_split: str = "train"
    #: Text column of the Hugging Face dataset (natural_source=hf).
    text_column: str = "text"
    #: At most this many natural sentences (null: all).
    max_natural_sentences: int | None = 600
    #: Seed of the generator (training and query sentences use separate streams).
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"TextCorpusConfig.{name}={getattr(self, name)!r} is invalid: {why}")

        for name in ("num_documents", "num_queries"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(name, "must be an integer >= 0")
        if self.natural_source not in ("gensim_lee", "file", "hf", "none"):
            bad("natural_source", "must be one of ['gensim_lee', 'file', 'hf', 'none']")
        if self.natural_source in ("file", "hf") and not self.natural_path:
            bad("natural_path", f"is required when natural_source={self.natural_source!r}")
        if self.max_natural_sentences is not None and self.max_natural_sentences < 0:
            bad("max_natural_sentences", "must be >= 0 or null")


@dataclass
class LabelledText:
    """A document with concept labels on character spans ``(start, end, concept)``."""

    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    source: str = "template"

    def concepts(self) -> list[str]:
        return [c for _, _, c in self.spans]

    def __add__(self, other: LabelledText) -> LabelledText:
        """Concatenate with one space between (spans shifted)."""
        off = len(self.text) + 1
        return LabelledText(
            self.text + " " + other.text,
            self.spans + [(a + off, b + off, c) for a, b, c in other.spans],
            self.source if self.source == other.source else "template",
        )


@dataclass(frozen=True)
class ExampleQuery:
    """A poster-style query: a sentence and the word whose token is attributed."""

    name: str
    text: LabelledText
    focus_concept: str
    description: str


@dataclass
class TextCorpus:
    """Training documents, held-out queries and the poster examples."""

    train: list[LabelledText]
    queries: list[LabelledText]
    examples: list[ExampleQuery]

    def all_texts(self) -> list[str]:
        """Every text (for training a tokenizer)."""
        return [d.text for d in self.train] + [q.text for q in self.queries]


def concept_category(concept: str) -> str:
    """``"num:3"`` → ``"num"``."""
    return concept.split(":", 1)[0]


def _fill(template: str, slots: dict[str, tuple[str, str | None]]) -> LabelledText:
    """Fill ``{slot}`` placeholders with ``(text, concept or None)`` and record the spans."""
    out, spans, pos = [], [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(template[pos : m.start()])
        text, concept = slots[m.group(1)]
        start = sum(len(s) for s in out)
        out.append(text)
        if concept is not None:
            spans.append((start, start + len(text), concept))
        pos = m.end()
    out.append(template[pos:])
    return LabelledText("".join(out), spans)


class _Generator:
    """Template sentences with labelled slots; one seeded RNG stream."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def name(self) -> tuple[str, str]:
        n = self.rng.choice(NAMES)
        return n, f"name:{n.lower()}"

    def numbers(self) -> list[LabelledText]:
        r = self.rng
        k = r.choice(sorted(NUMBERS))
        d, en, fr = NUMBERS[k]
        noun = r.choice(sorted(NOUNS))
        n_en, n_fr = NOUNS[noun]
        name = self.name()
        slots = {
            "d": (d, f"num:{k}"),
            "en": (en, f"num:{k}"),
            "fr": (fr, f"num:{k}"),
            "n_en": (n_en, f"noun:{noun}"),
            "n_fr": (n_fr, f"noun:{noun}"),
            "name": name,
        }
        forms = [
            "{name} has {d} {n_en}.",
            "{name} has {en} {n_en}.",
            "{name} a {fr} {n_fr}.",
            "I saw {d} {n_en} in the garden.",
            "I saw {en} {n_en} in the garden.",
            "J'ai vu {fr} {n_fr} dans le jardin.",
            "{name} bought {d} {n_en} today.",
            "{name} a acheté {fr} {n_fr}.",
            "The number {d} is written {en} in English and {fr} in French.",
            "{d} {n_en} means {en} {n_en}, in French {fr} {n_fr}.",
            "{name} counted {en} {n_en}, that is {d}.",
            "{name} a compté {fr} {n_fr}, soit {d}.",
        ]
        if r.random() < 0.5:  # the same count twice, in two forms, in either order
            frame = r.choice(
                [
                    ("{name} has {d} {n_en}.", "{name} has {en} {n_en}.", "{name} a {fr} {n_fr}."),
                    ("I saw {d} {n_en}.", "I saw {en} {n_en}.", "J'ai vu {fr} {n_fr}."),
                ]
            )
            a, b = r.sample(range(3), 2)
            return [_fill(frame[a], slots) + _fill(frame[b], slots)]
        return [_fill(r.choice(forms), slots)]

    def pronoun_verb(self) -> list[LabelledText]:
        r = self.rng
        p = r.choice(sorted(PRONOUNS))
        v = r.choice(sorted(VERBS))
        t_en, t_fr = r.choice(TIMES)
        p_en, p_fr = PRONOUNS[p]
        v_en, v_fr, o_en, o_fr = VERBS[v]
        slots = {
            "t_en": (t_en, None),
            "t_fr": (t_fr, None),
            "p_en": (p_en, f"pron:{p}"),
            "p_fr": (p_fr, f"pron:{p}"),
            "v_en": (v_en, f"verb:{v}"),
            "v_fr": (v_fr, f"verb:{v}"),
            "o_en": (o_en, None),
            "o_fr": (o_fr, None),
        }
        en = _fill("{t_en} {p_en} {v_en} {o_en}.", slots)
        fr = _fill("{t_fr} {p_fr} a {v_fr} {o_fr}.", slots)
        u = r.random()
        if u < 0.5:  # a translation pair, in either order
            return [en + fr] if r.random() < 0.5 else [fr + en]
        return [en] if u < 0.75 else [fr]

    def places(self) -> list[LabelledText]:
        r = self.rng
        c = r.choice(sorted(COUNTRIES))
        en, fr, city = COUNTRIES[c]
        slots = {
            "c": (en, f"country:{c}"),
            "c_fr": (fr.split()[-1].removeprefix("l'"), f"country:{c}"),
            "art": (" ".join(fr.split()[:-1]) or fr[: fr.index("'") + 1], None),
            "city": (city, f"city:{city.lower()}"),
            "name": self.name(),
        }
        forms = [
            "{city} is the capital of {c}.",
            "{name} traveled to {c} last year.",
            "{name} lives in {c}.",
            "{name} visited {city} in {c}.",
        ]
        doc = _fill(r.choice(forms), slots)
        if r.random() < 0.4:
            art = slots["art"][0]
            sep = "" if art.endswith("'") else " "
            fr_doc = _fill("{city} est la capitale de " + art + sep + "{c_fr}.", slots)
            doc = doc + fr_doc if r.random() < 0.5 else fr_doc + doc
        return [doc]

    def bank(self) -> list[LabelledText]:
        r = self.rng
        sense = "finance" if r.random() < 0.5 else "river"
        template = r.choice(BANK_FINANCE if sense == "finance" else BANK_RIVER)
        return [_fill(template, {"name": self.name(), "bank": ("bank", f"bank:{sense}")})]

    def conditional(self) -> list[LabelledText]:
        r = self.rng
        cond_en, cons_en, cond_fr, cons_fr = r.choice(CONDITIONS)
        if r.random() < 0.2:
            t = r.choice(SEQUENTIAL_THEN)
            return [_fill(t, {"name": self.name(), "then": ("then", "then:seq")})]
        slots = {
            "if": ("If", "if:if"),
            "si": ("Si", "if:if"),
            "then": ("then", "then:if"),
            "alors": ("alors", "then:if"),
        }
        en = _fill("{if} " + cond_en + ", {then} " + cons_en + ".", slots)
        fr = _fill("{si} " + cond_fr + ", {alors} " + cons_fr + ".", slots)
        u = r.random()
        if u < 0.4:
            return [en + fr] if r.random() < 0.5 else [fr + en]
        return [en] if u < 0.75 else [fr]

    def document(self) -> LabelledText:
        """One training document: 1-3 template sentences of random kinds."""
        kinds = (self.numbers, self.pronoun_verb, self.places, self.bank, self.conditional)
        weights = (0.34, 0.2, 0.16, 0.14, 0.16)
        parts: list[LabelledText] = []
        for _ in range(self.rng.choice((1, 1, 2, 3))):
            parts.extend(self.rng.choices(kinds, weights)[0]())
        doc = parts[0]
        for p in parts[1:]:
            doc = doc + p
        return doc

    def query(self) -> LabelledText:
        """One held-out query document of one kind (a sentence, or a pair of translations)."""
        kinds = (self.numbers, self.pronoun_verb, self.places, self.bank, self.conditional)
        return self.rng.choice(kinds)()[0]


def _example(
    name: str, template: str, slots: dict[str, tuple[str, str | None]], focus: str, what: str
) -> ExampleQuery:
    return ExampleQuery(name, _fill(template, slots), focus, what)


POSTER_EXAMPLES: tuple[ExampleQuery, ...] = (
    _example(
        "numbers",
        "Marie a trois pommes. Marie has {d} apples.",
        {"d": ("3", "num:3")},
        "num:3",
        '"3" → "three" / "trois"',
    ),
    _example(
        "numbers_five",
        "I saw five birds. I saw {d} birds.",
        {"d": ("5", "num:5")},
        "num:5",
        '"5" → "five" / "cinq"',
    ),
    _example(
        "elle",
        "Yesterday she answered the question. Hier {p} a répondu à la question.",
        {"p": ("elle", "pron:she")},
        "pron:she",
        '"elle" → "she"',
    ),
    _example(
        "repondu",
        "This morning he answered the question. Ce matin il a {v} à la question.",
        {"v": ("répondu", "verb:answered")},
        "verb:answered",
        '"répondu" → "answered"',
    ),
    _example(
        "countries",
        "Tom traveled to {c} last year.",
        {"c": ("Germany", "country:germany")},
        "country:germany",
        "country names → other country names",
    ),
    _example(
        "bank_finance",
        "Paul deposited money at the {b}.",
        {"b": ("bank", "bank:finance")},
        "bank:finance",
        '"bank" (money) → the financial sense',
    ),
    _example(
        "bank_river",
        "Emma sat on the {b} of the river.",
        {"b": ("bank", "bank:river")},
        "bank:river",
        '"bank" (river) → the river sense',
    ),
    _example(
        "if_then",
        "If it is raining, {t} the ground is wet.",
        {"t": ("then", "then:if")},
        "then:if",
        '"If it is raining → then"',
    ),
)
"""The poster's language examples. Translation queries are pairs whose focus word is predicted
from its translation in the first sentence, as in a bilingual text."""


def generate_template_corpus(
    num_documents: int, num_queries: int, seed: int = 0
) -> tuple[list[LabelledText], list[LabelledText]]:
    """Generated training documents and held-out query sentences (separate seeded streams).

    Training documents that contain a query sentence verbatim are dropped, so a query's exact
    sentence is never in the training set.
    """
    train_gen = _Generator(seed * 2 + 1)
    query_gen = _Generator(seed * 2 + 2)
    queries: list[LabelledText] = []
    seen_q: set[str] = set()
    tries = 0
    while len(queries) < num_queries and tries < 100 * (num_queries + 1):
        tries += 1
        q = query_gen.query()
        if q.spans and q.text not in seen_q:
            seen_q.add(q.text)
            queries.append(q)
    held_out = seen_q | {e.text.text for e in POSTER_EXAMPLES}
    train = []
    for _ in range(num_documents):
        doc = train_gen.document()
        if not any(h in doc.text for h in held_out):
            train.append(doc)
    return train, queries


# -- natural text -----------------------------------------------------------------------------


def gensim_lee_path() -> Path:
    """Path of ``lee_background.cor`` inside the installed gensim package (gensim not imported)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "natural_source='gensim_lee' needs the gensim package (it ships the Lee corpus): "
            "pip install gensim, or set data.natural_source=none / file / hf"
        )
    path = (
        Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / "lee_background.cor"
    )
    if not path.exists():
        raise FileNotFoundError(f"gensim is installed but {path} is missing")
    return path


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def split_sentences(text: str, min_chars: int = 20, max_chars: int = 400) -> list[str]:
    """Rough sentence split on ``. ! ?`` followed by a capital; whitespace normalised."""
    out = []
    for s in _SENTENCE_END.split(" ".join(text.split())):
        s = s.strip()
        if min_chars <= len(s) <= max_chars:
            out.append(s)
    return out


def _read_documents(cfg: TextCorpusConfig) -> list[str]:
    if cfg.natural_source == "gensim_lee":
        return gensim_lee_path().read_text(encoding="utf-8", errors="replace").splitlines()
    if cfg.natural_source == "file":
        path = Path(cfg.natural_path or "").expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.natural_path={cfg.natural_path!r}: no such text file")
        return re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace"))
    if cfg.natural_source == "hf":
        try:
            import datasets
        except ImportError as err:  # pragma: no cover - datasets ships with the bench extra
            raise ImportError(
                "data.natural_source=hf needs the `datasets` package (pip install datasets)"
            ) from err
        path = Path(cfg.natural_path or "").expanduser()
        if path.is_dir() and (path / "dataset_info.json").exists():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.hf_split]
        else:
            ds = datasets.load_dataset(cfg.natural_path, cfg.hf_config, split=cfg.hf_split)
        if cfg.text_column not in ds.column_names:
            raise KeyError(
                f"data.text_column={cfg.text_column!r} is not a column of {cfg.natural_path!r} "
                f"(columns: {ds.column_names})"
            )
        return [str(t) for t in ds[cfg.text_column]]
    return []


def load_natural_text(cfg: TextCorpusConfig) -> list[LabelledText]:
    """Natural sentences (unlabelled) from the configured source, in order, capped."""
    sentences: list[str] = []
    cap = cfg.max_natural_sentences
    for doc in _read_documents(cfg):
        sentences.extend(split_sentences(doc))
        if cap is not None and len(sentences) >= cap:
            break
    if cap is not None:
        sentences = sentences[:cap]
    return [LabelledText(s, [], "natural") for s in sentences]


def build_corpus(cfg: TextCorpusConfig) -> TextCorpus:
    """Generated documents mixed with natural sentences (shuffled with the seed), queries, examples."""
    train, queries = generate_template_corpus(cfg.num_documents, cfg.num_queries, cfg.seed)
    natural = load_natural_text(cfg)
    docs = train + natural
    random.Random(cfg.seed).shuffle(docs)
    return TextCorpus(train=docs, queries=queries, examples=list(POSTER_EXAMPLES))


def lexicon() -> set[str]:
    """Lower-cased words that the templates label (for marking unlabelled look-alikes)."""
    words: set[str] = set()
    for d, en, fr in NUMBERS.values():
        words |= {d, en, fr}
    for en, fr in NOUNS.values():
        words |= {en, fr}
    for en, fr in PRONOUNS.values():
        words |= {en, fr}
    for en, fr, _, _ in VERBS.values():
        words |= {en, fr}
    for en, fr, city in COUNTRIES.values():
        words |= {en.lower(), fr.split()[-1].removeprefix("l'").lower(), city.lower()}
    words |= {n.lower() for n in NAMES}
    words |= {"bank", "then", "alors", "if", "si"}
    return words


# -- tokenisation -------------------------------------------------------------------------------


@dataclass
class TokenizedSequences:
    """Fixed-length token sequences with concept labels per token.

    Attributes:
        input_ids: ``[N, T]`` token ids (padded with ``pad_id``).
        attention_mask: ``[N, T]`` 1 for real tokens.
        concepts: ``[N, T]`` concept id per token: ``>= 0`` index into ``concept_names``,
            :data:`NO_CONCEPT` (-1) for ordinary tokens, :data:`AMBIGUOUS` (-2) for tokens the
            benchmark must ignore (subword continuations of a labelled word, unlabelled look-alikes
            in natural text, padding).
        concept_names: the concept strings.
        sources: ``N`` sources ("template", "natural", or mixed "template+natural").
        texts: ``N`` decoded texts (for figures).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    concepts: torch.Tensor
    concept_names: list[str]
    sources: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def subset(self, index: Sequence[int]) -> TokenizedSequences:
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return TokenizedSequences(
            self.input_ids[idx],
            self.attention_mask[idx],
            self.concepts[idx],
            self.concept_names,
            [self.sources[i] for i in idx.tolist()],
            [self.texts[i] for i in idx.tolist()],
        )

    def dataset(self) -> torch.utils.data.TensorDataset:
        """``TensorDataset(input_ids, attention_mask)``: batches ``[ids, mask]`` for causal LMs."""
        return torch.utils.data.TensorDataset(self.input_ids, self.attention_mask)

    def concept_id(self, concept: str) -> int:
        return self.concept_names.index(concept)


def _token_concepts(
    doc: LabelledText,
    offsets: Sequence[tuple[int, int]],
    token_texts: Sequence[str],
    concept_index: dict[str, int],
    words: set[str],
) -> list[int]:
    """Concept id per token: the first token of a labelled span carries it, the rest are ambiguous."""
    out = []
    seen_spans: set[int] = set()
    for (a, b), tok in zip(offsets, token_texts, strict=True):
        cid = NO_CONCEPT
        for k, (s, e, concept) in enumerate(doc.spans):
            if a < e and b > s and doc.text[max(a, s) : min(b, e)].strip():
                if k in seen_spans:
                    cid = AMBIGUOUS
                else:
                    seen_spans.add(k)
                    cid = concept_index.setdefault(concept, len(concept_index))
                break
        whole_word = (a == 0 or not doc.text[a - 1].isalnum()) and (
            b >= len(doc.text) or not doc.text[b].isalnum()
        )
        if cid == NO_CONCEPT and whole_word and tok.strip().lower() in words:
            # an unlabelled token that looks like a labelled word (natural text, "il pleut"):
            # neither a hit nor a miss for the benchmark
            cid = AMBIGUOUS
        out.append(cid)
    return out


def tokenize_documents(
    docs: Iterable[LabelledText],
    tokenizer: Any,
    concept_index: dict[str, int] | None = None,
) -> tuple[list[list[int]], list[list[int]], dict[str, int]]:
    """Token ids and concept ids of each document (no special tokens).

    ``concept_index`` maps concept strings to ids and is extended in place with new concepts.
    """
    concept_index = {} if concept_index is None else concept_index
    words = lexicon()
    ids_out, concepts_out = [], []
    for doc in docs:
        enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        toks = [doc.text[a:b] for a, b in enc["offset_mapping"]]
        ids_out.append(ids)
        concepts_out.append(_token_concepts(doc, enc["offset_mapping"], toks, concept_index, words))
    return ids_out, concepts_out, concept_index


def pack_documents(
    docs: Sequence[LabelledText],
    tokenizer: Any,
    seq_len: int,
    concept_index: dict[str, int] | None = None,
    pack: bool = True,
) -> TokenizedSequences:
    """Tokenise and pack whole documents into ``[N, seq_len]`` sequences.

    Every sequence starts with the BOS token (so its first word has a loss); documents are
    separated by EOS and packed greedily while they fit (``pack=False``: one document per
    sequence). A document longer than ``seq_len - 1`` tokens is cut. Padding uses the tokenizer's
    pad token, masked out by ``attention_mask``.
    """
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if bos is None or pad is None:
        raise ValueError("the tokenizer needs a BOS and a pad token (see bifrepro.data.tokenizer)")
    eos = bos if eos is None else eos
    ids_list, conc_list, concept_index = tokenize_documents(docs, tokenizer, concept_index)
    rows: list[tuple[list[int], list[int], set[str]]] = []
    cur_ids, cur_conc, cur_src = [bos], [AMBIGUOUS], set()
    for ids, conc, doc in zip(ids_list, conc_list, docs, strict=True):
        ids, conc = ids[: seq_len - 1], conc[: seq_len - 1]
        need = len(ids) + (1 if len(cur_ids) > 1 else 0)
        if len(cur_ids) > 1 and (not pack or len(cur_ids) + need > seq_len):
            rows.append((cur_ids, cur_conc, cur_src))
            cur_ids, cur_conc, cur_src = [bos], [AMBIGUOUS], set()
            need = len(ids)
        if len(cur_ids) > 1:
            cur_ids.append(eos)
            cur_conc.append(AMBIGUOUS)
        cur_ids.extend(ids)
        cur_conc.extend(conc)
        cur_src.add(doc.source)
    if len(cur_ids) > 1:
        rows.append((cur_ids, cur_conc, cur_src))
    n = len(rows)
    input_ids = torch.full((n, seq_len), pad, dtype=torch.long)
    mask = torch.zeros((n, seq_len), dtype=torch.long)
    concepts = torch.full((n, seq_len), AMBIGUOUS, dtype=torch.long)
    for i, (ids, conc, _) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        concepts[i, : len(conc)] = torch.tensor(conc)
    names = [""] * len(concept_index)
    for c, k in concept_index.items():
        names[k] = c
    texts = [tokenizer.decode(r[0][1:]) for r in rows]
    sources = ["+".join(sorted(r[2])) for r in rows]
    return TokenizedSequences(input_ids, mask, concepts, names, sources, texts)
