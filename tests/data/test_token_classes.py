"""The token classifier: hand-labelled sequences, the induction rule, a real BPE tokenizer."""

from __future__ import annotations

import pytest
import torch

from bifrepro.data.token_classes import (
    IGNORE,
    TOKEN_CLASSES,
    TokenClassifier,
    induction_targets,
    surface_class,
)

# A hand-built vocabulary: id -> token text (leading space = starts a word)
VOCAB = {
    0: "<bos>",
    1: "<pad>",
    2: " Marie",
    3: " has",
    4: " 3",
    5: " apples",
    6: ".",
    7: " three",
    8: " runn",
    9: "ing",
    10: " the",
    11: ",",
    12: " trois",
    13: "\n",
    14: " cat",
}


def _clf(**kw) -> TokenClassifier:
    return TokenClassifier(VOCAB, special_ids=frozenset({0, 1}), **kw)


def _names(classes: torch.Tensor) -> list[str]:
    return [TOKEN_CLASSES[c] if c >= 0 else "-" for c in classes.tolist()]


def test_hand_labelled_sequence() -> None:
    # <bos> Marie has 3 apples . Marie has three apples , runn ing \n <pad>
    ids = torch.tensor([0, 2, 3, 4, 5, 6, 2, 3, 7, 5, 11, 8, 9, 13, 1])
    mask = torch.tensor([1] * 14 + [0])
    got = _names(_clf().classify(ids, mask))
    want = [
        "-",  # position 0: nothing predicts it
        "other",  # Marie
        "other",  # has
        "number",  # 3
        "other",  # apples
        "delimiter",  # .
        "other",  # Marie (its previous token "." is a delimiter: no induction prefix)
        "induction",  # has: [Marie][has] ... [Marie] -> [has]
        "number",  # three (previous "has" was followed by "3", not "three")
        "other",  # apples: [three] never seen before
        "delimiter",  # ,
        "other",  # runn (first piece of a split word)
        "word_part",  # ing (continues "runn")
        "delimiter",  # newline
        "-",  # padding
    ]
    assert got == want


def test_priority_decides_ties() -> None:
    # [the][3] ... [the][3]: the second "3" is both a number and an induction completion
    ids = torch.tensor([0, 10, 4, 14, 10, 4])
    default = _names(_clf().classify(ids))
    assert default[-1] == "induction"
    numbers_first = _names(
        _clf(priority=("number", "induction", "delimiter", "word_part", "other")).classify(ids)
    )
    assert numbers_first[-1] == "number"
    with pytest.raises(ValueError, match="priority"):
        _clf(priority=("number", "other"))


def test_induction_targets_rule() -> None:
    ids = torch.tensor([[5, 1, 2, 3, 9, 1, 2, 3], [5, 1, 2, 1, 3, 4, 4, 4]])
    got = induction_targets(ids)
    # row 0: "2" after the second "1", "3" after the second "2"
    assert got[0].tolist() == [False, False, False, False, False, False, True, True]
    # row 1: [1][2] then [1][3]: no; [4][4] at positions 5-6, then [4] -> [4] at 7: yes
    assert got[1].tolist() == [False] * 7 + [True]
    # a masked-out earlier occurrence does not count
    mask = torch.ones_like(ids)
    mask[0, 1:3] = 0
    assert not induction_targets(ids, mask)[0].any()
    # excluded prefixes (delimiters) do not count either
    excl = torch.zeros_like(ids, dtype=torch.bool)
    excl[0] = ids[0] == 2
    assert induction_targets(ids, exclude_prefix=excl)[0].tolist() == [False] * 6 + [True, False]


def test_surface_rules() -> None:
    assert "delimiter" in surface_class("  ")
    assert "delimiter" in surface_class("<|endoftext|>", special=True)
    assert "number" in surface_class(" 1,000")
    assert "number" in surface_class(" Trois")
    assert "word_part" in surface_class("ing", prev_text=" runn")
    assert "word_part" not in surface_class(" ing", prev_text=" runn")  # starts a new word
    assert "word_part" not in surface_class("ing", prev_text=".")
    assert "word_part" not in surface_class("ing", prev_text="<bos>", prev_special=True)
    assert surface_class(" apples", prev_text=" 3") == {"other"}


def test_counts_and_1d_input() -> None:
    clf = _clf()
    ids = torch.tensor([0, 2, 3, 6])
    classes = clf.classify(ids)
    assert classes.shape == (4,) and classes[0] == IGNORE
    counts = clf.counts(classes)
    assert counts == {"delimiter": 1, "word_part": 0, "induction": 0, "number": 0, "other": 2}
    assert clf.describe(ids.tolist(), classes.tolist())[3] == (".", "delimiter")


def test_real_bpe_tokenizer() -> None:
    from bifrepro.data.tokenizer import train_bpe_tokenizer

    texts = ["Marie has three apples. Marie has 3 apples.", "The cats were running, quickly."] * 20
    tok = train_bpe_tokenizer(texts + ["zyxwvut qrstponm"], vocab_size=400, min_frequency=1)
    clf = TokenClassifier.from_tokenizer(tok)
    enc = tok("Marie has three apples. Marie has 3 apples.")["input_ids"]
    ids = torch.tensor([tok.bos_token_id, *enc])
    names = _names(clf.classify(ids))
    toks = [clf.text(i) for i in ids.tolist()]
    first = {t: names[i] for i, t in reversed(list(enumerate(toks)))}  # first occurrence wins
    assert first["."] == "delimiter" and first[" three"] == "number"
    # the second "." completes [apples][.] ... [apples] -> [.]: induction outranks delimiter
    assert names[len(toks) - 1] == "induction" and toks[-1] == "."
    # the second " has" completes [Marie][has] ... [Marie] -> [has]
    has = [i for i, t in enumerate(toks) if t == " has"]
    assert len(has) == 2 and names[has[0]] == "other" and names[has[1]] == "induction"
    # a rare word is split into pieces: the pieces after the first are word parts
    enc = tok(" bzyxq")["input_ids"]
    pieces = [clf.text(i) for i in enc]
    kinds = _names(clf.classify(torch.tensor([tok.bos_token_id, *enc])))[1:]
    start = next(i for i, p in enumerate(pieces) if p.strip())  # first piece with letters
    assert len(pieces) - start > 1, pieces
    assert kinds[start] == "other" and set(kinds[start + 1 :]) == {"word_part"}, (pieces, kinds)
