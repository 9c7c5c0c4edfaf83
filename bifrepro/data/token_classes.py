"""Token classes for stagewise attribution in language models (Lee et al., *Influence Dynamics*).

Every predicted token of a sequence gets one class, so token-level influence can be aggregated
class x class and followed over training:

* ``delimiter`` — special tokens (BOS/EOS/pad), whitespace, punctuation and other formatting
  (no letter or digit in the token);
* ``word_part`` — a *word ending*: a piece that continues the word of the previous token
  (``"ing"`` after ``" runn"``); predicting it is mostly bigram statistics inside a word;
* ``induction`` — the token completes an induction pattern ``[A][B] … [A] → [B]``: the previous
  token ``A`` occurred earlier in the sequence and was followed by this very token ``B`` (``A``
  must be a content token: not special, not a delimiter). Copying it needs an induction head;
* ``number`` — digits (``"3"``, ``"1,000"``) and number words (``"three"``, ``"trois"``);
* ``other`` — everything else (whole words, first pieces of split words).

A token can match several rules; the first class of ``priority`` that matches wins (default:
induction, number, delimiter, word_part, other). Position 0 (nothing predicts it) and padding get
:data:`IGNORE`. The classifier only looks at the token strings of a tokenizer (byte-level BPE as
in GPT-2/Pythia, or SentencePiece ``▁`` markers), so it works for the embedded tokenizer and
Pythia's alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "TOKEN_CLASSES",
    "DEFAULT_PRIORITY",
    "IGNORE",
    "NUMBER_WORDS",
    "TokenClassifier",
    "induction_targets",
    "surface_class",
]

#: Class names, in the order of their integer ids.
TOKEN_CLASSES: tuple[str, ...] = ("delimiter", "word_part", "induction", "number", "other")
#: Which class wins when a token matches several rules.
DEFAULT_PRIORITY: tuple[str, ...] = ("induction", "number", "delimiter", "word_part", "other")
#: Class id of tokens that are not classified (position 0, padding).
IGNORE = -1

#: English and French number words (lower case); the embedded corpus uses 2-9 in both languages.
NUMBER_WORDS: frozenset[str] = frozenset(
    """zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty
    ninety hundred thousand million billion
    zéro un une deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze
    seize vingt trente quarante cinquante soixante cent mille""".split()
)

_NUMBER_RE = re.compile(r"^\d+(?:[.,]\d+)*$")
_SPACE_MARKERS = ("Ġ", "▁")  # byte-level BPE / SentencePiece word-start markers


def surface_class(
    text: str,
    prev_text: str | None = None,
    special: bool = False,
    prev_special: bool = False,
    number_words: Iterable[str] = NUMBER_WORDS,
) -> set[str]:
    """The context-free classes a token's text matches (``"other"`` always matches).

    Args:
        text: the token's text, with its leading space if it starts a new word (``" three"``).
        prev_text: the previous token's text (``None`` at the start of a sequence).
        special: the token is a special token (BOS, EOS, pad).
        prev_special: the previous token is a special token.
        number_words: lower-case words that count as numbers.
    """
    out = {"other"}
    stripped = text.strip()
    if special or not any(ch.isalnum() for ch in stripped):
        out.add("delimiter")
        return out
    if _NUMBER_RE.match(stripped) or stripped.lower() in set(number_words):
        out.add("number")
    starts_word = text[:1].isspace() or not text[:1].isalnum()
    if (
        not starts_word
        and prev_text is not None
        and not prev_special
        and prev_text[-1:].isalnum()
        and not _NUMBER_RE.match(prev_text.strip())
    ):
        out.add("word_part")
    return out


def induction_targets(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    exclude_prefix: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[N, T]`` bool: token ``s`` completes an induction pattern ``[A][B] … [A] → [B]``.

    True when some earlier ``j + 1 < s`` has ``x_j = x_{s-1}`` and ``x_{j+1} = x_s`` (both inside
    the attention mask). ``exclude_prefix``: ``[N, T]`` bool of tokens that may not serve as the
    prefix ``A`` (special tokens, delimiters), so ``". The"`` repeated is not an induction.
    """
    ids = input_ids
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be [N, T], got {tuple(ids.shape)}")
    n, t = ids.shape
    valid = (
        torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    )
    out = torch.zeros((n, t), dtype=torch.bool)
    if t < 3:
        return out
    prefix_ok = valid.clone()
    if exclude_prefix is not None:
        prefix_ok &= ~exclude_prefix.bool()
    # pair[s] = (x_{s-1}, x_s) for s >= 1; a match of pair s with an earlier pair j' < s
    cur, prev = ids[:, 1:], ids[:, :-1]  # [N, T-1], index k = position k + 1
    ok = valid[:, 1:] & valid[:, :-1] & prefix_ok[:, :-1]
    same = (cur[:, :, None] == cur[:, None, :]) & (prev[:, :, None] == prev[:, None, :])
    same &= ok[:, :, None] & ok[:, None, :]
    earlier = torch.ones(t - 1, t - 1, dtype=torch.bool).tril(-1)  # [k, k'] with k' < k
    out[:, 1:] = (same & earlier).any(-1)
    return out


@dataclass
class TokenClassifier:
    """Classify the tokens of ``[N, T]`` id sequences into :data:`TOKEN_CLASSES`.

    Args:
        surface: ``id -> token text`` (a mapping or a function), with a leading space when the
            token starts a new word; :meth:`from_tokenizer` builds it from a tokenizer.
        special_ids: ids of special tokens (always delimiters; never an induction prefix).
        number_words: lower-case words that count as numbers.
        priority: class order deciding ties (a permutation of :data:`TOKEN_CLASSES`).
    """

    surface: Mapping[int, str] | Callable[[int], str]
    special_ids: frozenset[int] = frozenset()
    number_words: frozenset[str] = NUMBER_WORDS
    priority: tuple[str, ...] = DEFAULT_PRIORITY
    _cache: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.special_ids = frozenset(int(i) for i in self.special_ids)
        self.number_words = frozenset(w.lower() for w in self.number_words)
        self.priority = tuple(self.priority)
        if sorted(self.priority) != sorted(TOKEN_CLASSES):
            raise ValueError(
                f"priority must order exactly the classes {list(TOKEN_CLASSES)}, got "
                f"{list(self.priority)}"
            )

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> TokenClassifier:
        """A classifier for a Hugging Face tokenizer (token texts decoded lazily, cached)."""

        def text(i: int) -> str:
            s = tokenizer.decode([i], clean_up_tokenization_spaces=False)
            raw = tokenizer.convert_ids_to_tokens(i)
            if isinstance(raw, str) and raw[:1] in _SPACE_MARKERS and not s[:1].isspace():
                s = " " + s  # SentencePiece tokenizers drop the leading space when decoding one id
            return s

        special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
        return cls(text, frozenset(special), **kwargs)

    @property
    def class_names(self) -> tuple[str, ...]:
        return TOKEN_CLASSES

    def text(self, token_id: int) -> str:
        """The token's text (cached)."""
        i = int(token_id)
        if i not in self._cache:
            s = self.surface[i] if isinstance(self.surface, Mapping) else self.surface(i)
            self._cache[i] = s
        return self._cache[i]

    def classify(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[N, T]`` class ids (index into :data:`TOKEN_CLASSES`); :data:`IGNORE` at position 0
        and padding."""
        ids = torch.as_tensor(input_ids)
        if ids.dim() == 1:
            return self.classify(
                ids[None], None if attention_mask is None else attention_mask[None]
            )[0]
        n, t = ids.shape
        mask = (
            torch.ones_like(ids, dtype=torch.bool)
            if attention_mask is None
            else torch.as_tensor(attention_mask).bool()
        )
        rules: dict[str, torch.Tensor] = {
            name: torch.zeros((n, t), dtype=torch.bool) for name in TOKEN_CLASSES
        }
        special = torch.zeros((n, t), dtype=torch.bool)
        ids_list = ids.tolist()
        for r in range(n):
            prev: int | None = None
            for s in range(t):
                i = ids_list[r][s]
                if not mask[r, s]:
                    prev = None
                    continue
                is_special = i in self.special_ids
                special[r, s] = is_special
                matched = surface_class(
                    self.text(i),
                    None if prev is None else self.text(prev),
                    special=is_special,
                    prev_special=prev is not None and prev in self.special_ids,
                    number_words=self.number_words,
                )
                for name in matched:
                    rules[name][r, s] = True
                prev = i
        rules["induction"] = induction_targets(
            ids, mask, exclude_prefix=rules["delimiter"] | special
        )
        rules["induction"] &= ~special
        out = torch.full((n, t), IGNORE, dtype=torch.long)
        for name in reversed(self.priority):  # highest priority written last
            out[rules[name]] = TOKEN_CLASSES.index(name)
        out[~mask] = IGNORE
        out[:, 0] = IGNORE
        return out

    def counts(self, classes: torch.Tensor) -> dict[str, int]:
        """Tokens per class in a ``classify`` result."""
        return {name: int((classes == k).sum()) for k, name in enumerate(TOKEN_CLASSES)}

    def describe(self, input_ids: Sequence[int], classes: Sequence[int]) -> list[tuple[str, str]]:
        """``(token text, class name)`` pairs of one sequence (for figures and debugging)."""
        return [
            (self.text(int(i)), TOKEN_CLASSES[int(c)] if int(c) >= 0 else "-")
            for i, c in zip(input_ids, classes, strict=True)
        ]
